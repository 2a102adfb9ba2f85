//! The clocks safety decisions use, in one place.
//!
//! - `boot_ms`: milliseconds of `CLOCK_BOOTTIME`, a monotonic clock that
//!   keeps counting through suspend and is shared by every process of the
//!   machine until it reboots. Isolation (how long a gateway has been cut
//!   off from a quorum) and fence deadlines are measured with it, so a
//!   daemon that restarts on the same boot resumes the count instead of
//!   starting from zero, and the fence guard process agrees with the daemon
//!   on when a deadline falls. NTP steps and a wrong wall clock do not move
//!   it.
//! - `boot_id`: tells whether a boot-clock reading written earlier is from
//!   this boot (`/proc/sys/kernel/random/boot_id`).
//! - `wall_ms`: the wall clock, for timestamps people read and for
//!   `Request::at_ms`, stamped by the leader; never for a safety decision.
//!
//! The code that makes safety decisions reads them through a [`Clock`]
//! handle (`Cluster::clock`): [`SystemClock`] reads the functions below; the
//! deterministic simulation gives each simulated gateway its own clock on
//! simulated time, with a wall clock it can skew and a boot clock that
//! restarts at a power cut.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// The three clocks of one machine.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the epoch (wall clock).
    fn wall_ms(&self) -> u64;
    /// Milliseconds of the boot clock (monotonic, shared by the machine's
    /// processes, restarts at a reboot).
    fn boot_ms(&self) -> u64;
    /// This boot's id.
    fn boot_id(&self) -> Option<String>;
}

/// A shared clock handle.
pub type ClockRef = Arc<dyn Clock>;

/// The machine's real clocks.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn wall_ms(&self) -> u64 {
        wall_ms()
    }

    fn boot_ms(&self) -> u64 {
        boot_ms()
    }

    fn boot_id(&self) -> Option<String> {
        boot_id()
    }
}

/// The real clocks as a handle.
pub fn system() -> ClockRef {
    Arc::new(SystemClock)
}

/// Milliseconds since the epoch (wall clock).
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Milliseconds of CLOCK_BOOTTIME.
pub fn boot_ms() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    (ts.tv_sec.max(0) as u64)
        .saturating_mul(1000)
        .saturating_add((ts.tv_nsec.max(0) as u64) / 1_000_000)
}

/// This boot's id, if the kernel tells it.
pub fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_boot_clock_moves_forward_and_the_boot_id_is_stable() {
        let a = boot_ms();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let b = boot_ms();
        assert!(b >= a + 15, "{a} -> {b}");
        assert!(a > 0);
        assert_eq!(boot_id(), boot_id());
    }
}
