//! openraft's async runtime for gantry: tokio, exactly as
//! `openraft::TokioRuntime`, except for the random source openraft draws
//! its election timeouts from. `TokioRuntime` hands out `rand::thread_rng()`,
//! which cannot be seeded, so a deterministic simulation (`gantry-sim`)
//! could never replay a run: ours is a thread-local `StdRng`, seeded from
//! the OS in production and by the simulation per run ([`seed_thread_rng`]).
//!
//! The same thread-local source backs [`random_bytes`], gantry's own
//! randomness on paths the simulation runs (client request ids): one seed
//! then fixes every random choice of a run.

use std::cell::RefCell;
use std::future::Future;
use std::time::Duration;

use openraft::async_runtime::TokioOneShotSender;
use openraft::{AsyncRuntime, OptionalSend, TokioInstant};
use rand08::rngs::StdRng;
use rand08::{RngCore, SeedableRng};

thread_local! {
    static RNG: RefCell<StdRng> = RefCell::new(StdRng::from_entropy());
}

/// Reseeds this thread's source. Only the simulation calls it (on the one
/// thread its runtime runs on), before it starts any gateway.
pub fn seed_thread_rng(seed: u64) {
    RNG.with(|rng| *rng.borrow_mut() = StdRng::seed_from_u64(seed));
}

/// `N` random bytes from this thread's source.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    RNG.with(|rng| rng.borrow_mut().fill_bytes(&mut out));
    out
}

/// A handle on this thread's source; what openraft's `thread_rng()` returns.
/// Not `Send` (like `rand::rngs::ThreadRng`): openraft uses it on the spot.
#[derive(Debug, Default, Clone, Copy)]
pub struct ThreadRng {
    _not_send: std::marker::PhantomData<*const ()>,
}

impl RngCore for ThreadRng {
    fn next_u32(&mut self) -> u32 {
        RNG.with(|rng| rng.borrow_mut().next_u32())
    }

    fn next_u64(&mut self) -> u64 {
        RNG.with(|rng| rng.borrow_mut().next_u64())
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        RNG.with(|rng| rng.borrow_mut().fill_bytes(dest))
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand08::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

/// tokio, with a seedable random source (see the module documentation).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct GantryRuntime;

impl AsyncRuntime for GantryRuntime {
    type JoinError = tokio::task::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = tokio::task::JoinHandle<T>;
    type Sleep = tokio::time::Sleep;
    type Instant = TokioInstant;
    type TimeoutError = tokio::time::error::Elapsed;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = tokio::time::Timeout<T>;
    type ThreadLocalRng = ThreadRng;
    type OneshotSender<T: OptionalSend> = TokioOneShotSender<T>;
    type OneshotReceiver<T: OptionalSend> = tokio::sync::oneshot::Receiver<T>;
    type OneshotReceiverError = tokio::sync::oneshot::error::RecvError;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        tokio::task::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        tokio::time::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        tokio::time::sleep_until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        tokio::time::timeout(duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        tokio::time::timeout_at(deadline, future)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        join_error.is_panic()
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        ThreadRng::default()
    }

    fn oneshot<T>() -> (Self::OneshotSender<T>, Self::OneshotReceiver<T>)
    where
        T: OptionalSend,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (TokioOneShotSender(tx), rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_fixes_the_sequence() {
        seed_thread_rng(7);
        let a: [u8; 16] = random_bytes();
        let t = ThreadRng::default().next_u64();
        seed_thread_rng(7);
        assert_eq!(random_bytes::<16>(), a);
        assert_eq!(ThreadRng::default().next_u64(), t);
    }
}
