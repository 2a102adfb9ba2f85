//! Simulated time: one paused tokio clock for the whole world, and on top
//! of it each gateway's own clocks. Monotonic clocks run at the same rate
//! everywhere; a gateway's wall clock can be skewed by the nemesis, and its
//! boot clock starts again (with a new boot id) after a power cut.

use std::sync::Mutex;

use gantry::clock::Clock;
use tokio::time::Instant;

/// The instant the current run started (per thread: each run owns one
/// thread and one runtime).
fn start_cell() -> &'static std::thread::LocalKey<std::cell::Cell<Option<Instant>>> {
    thread_local! {
        static START: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
    }
    &START
}

/// Marks now as simulated time zero for this thread's run.
pub fn reset_sim_time() {
    start_cell().with(|s| s.set(Some(Instant::now())));
}

/// Simulated ms since the run started.
pub fn sim_ms() -> u64 {
    start_cell().with(|s| {
        s.get()
            .map(|start| Instant::now().saturating_duration_since(start).as_millis() as u64)
            .unwrap_or(0)
    })
}

/// The wall clock of every host before skew: 2026-11-29T00:00:00Z.
pub const WALL_EPOCH_MS: u64 = 1_795_910_400_000;

struct State {
    skew_ms: i64,
    boot_at: Instant,
    boots: u32,
}

/// One simulated machine's clocks.
pub struct HostClock {
    host: u64,
    state: Mutex<State>,
    /// Fixed per host: machines did not all boot at the same moment.
    boot_offset_ms: u64,
}

impl HostClock {
    pub fn new(host: u64, boot_offset_ms: u64) -> Self {
        Self {
            host,
            state: Mutex::new(State {
                skew_ms: 0,
                boot_at: Instant::now(),
                boots: 1,
            }),
            boot_offset_ms,
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The wall clock jumps by `skew_ms` from the true time (0: exact).
    pub fn set_skew(&self, skew_ms: i64) {
        self.with(|s| s.skew_ms = skew_ms);
    }

    /// A reboot: the boot clock starts over under a new boot id.
    pub fn reboot(&self) {
        self.with(|s| {
            s.boot_at = Instant::now();
            s.boots += 1;
        });
    }
}

impl Clock for HostClock {
    fn wall_ms(&self) -> u64 {
        let skew = self.with(|s| s.skew_ms);
        (WALL_EPOCH_MS + sim_ms()).saturating_add_signed(skew)
    }

    fn boot_ms(&self) -> u64 {
        let boot_at = self.with(|s| s.boot_at);
        self.boot_offset_ms
            + Instant::now()
                .saturating_duration_since(boot_at)
                .as_millis() as u64
    }

    fn boot_id(&self) -> Option<String> {
        let boots = self.with(|s| s.boots);
        Some(format!("host{}-boot{}", self.host, boots))
    }
}
