//! Free space in the data dir, watched so that a filling disk becomes
//! refused writes instead of a dead gateway.
//!
//! RocksDB answers a full disk with an I/O error, openraft stops on any
//! storage error, and the daemon exits (systemd restarts it). That is the
//! right answer to a disk that fails, but a poor one to a disk that merely
//! fills up: the gateway would flap while logs or images grow. So each
//! gateway keeps a reserve (`--disk-reserve`, 64 MiB by default). Below it:
//!
//! - writes through this gateway are refused with `RESOURCE_EXHAUSTED`,
//!   saying which directory and how much is free;
//! - as leader it refuses proposals and stops its idle heartbeats, so the
//!   others elect a leader that can still write, and it does not stand for
//!   election itself;
//! - as follower it refuses append-entries that carry entries (heartbeats
//!   pass, so nobody stands for election over it) and snapshots; the leader
//!   retries, and the gateway catches up once space is back.
//!
//! Nothing running is touched: containers live in containerd, not here.
//! Everything resumes by itself once space is freed. The reserve leaves
//! RocksDB room to flush a memtable and compact, so the refused state is
//! reached before the database's own writes fail.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// The default `--disk-reserve`.
pub const DEFAULT_RESERVE_BYTES: u64 = 64 << 20;

/// How often free space is read: a statvfs call, cheap enough to make the
/// window between two readings small next to the reserve.
const POLL: Duration = Duration::from_millis(500);

/// Why this gateway refuses a write.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "gateway {gateway}: its data dir {dir} has {free_mib:.1} MiB free, below its {reserve_mib:.1} MiB \
     reserve (--disk-reserve), so it refuses writes until space is freed; its running containers are kept"
)]
pub struct DiskLow {
    pub gateway: String,
    pub dir: String,
    pub free_mib: f64,
    pub reserve_mib: f64,
}

/// The last reading of the data dir, shared by the watcher and every path
/// that writes. A gateway that never started a watcher (the simulation's
/// in-memory gateways) is never low.
#[derive(Debug, Default)]
pub struct DiskSpace {
    low: AtomicBool,
    free: AtomicU64,
    reserve: AtomicU64,
    /// The gateway's name and data dir, for the error.
    place: Mutex<(String, String)>,
}

impl DiskSpace {
    /// Records a reading; returns the new state when it changed.
    pub fn observe(&self, free: u64, reserve: u64) -> Option<bool> {
        self.free.store(free, Ordering::Relaxed);
        self.reserve.store(reserve, Ordering::Relaxed);
        let low = reserve > 0 && free < reserve;
        let was = self.low.swap(low, Ordering::Relaxed);
        (was != low).then_some(low)
    }

    pub fn is_low(&self) -> bool {
        self.low.load(Ordering::Relaxed)
    }

    /// `Err` with what to tell the client while below the reserve.
    pub fn check(&self) -> Result<(), DiskLow> {
        if !self.is_low() {
            return Ok(());
        }
        let (gateway, dir) = self
            .place
            .lock()
            .map(|place| place.clone())
            .unwrap_or_default();
        Err(DiskLow {
            gateway,
            dir,
            free_mib: mib(self.free.load(Ordering::Relaxed)),
            reserve_mib: mib(self.reserve.load(Ordering::Relaxed)),
        })
    }

    fn place(&self, gateway: &str, dir: &Path) {
        if let Ok(mut place) = self.place.lock() {
            *place = (gateway.to_string(), dir.display().to_string());
        }
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

/// Bytes an unprivileged writer may still use on the file system of `dir`.
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let stat = rustix::fs::statvfs(dir)?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// Reads the free space of `dir` until shutdown and acts on each change
/// (see the module doc). A reserve of 0 turns the watch off.
pub async fn watch(
    cluster: super::Cluster,
    gateway: String,
    dir: PathBuf,
    reserve: u64,
    shutdown: CancellationToken,
) {
    if reserve == 0 {
        tracing::info!("--disk-reserve 0: free space in the data dir is not watched");
        return;
    }
    let space = cluster.disk_space();
    space.place(&gateway, &dir);
    let mut unreadable = false;
    loop {
        match free_bytes(&dir) {
            Ok(free) => {
                unreadable = false;
                if let Some(low) = space.observe(free, reserve) {
                    let raft = cluster.raft();
                    raft.runtime_config().elect(!low);
                    raft.runtime_config().heartbeat(!low);
                    if low {
                        tracing::warn!(dir = %dir.display(), free_mib = mib(free), reserve_mib = mib(reserve), leader = cluster.is_leader(), "data dir below its reserve: refusing writes and leadership until space is freed");
                    } else {
                        tracing::info!(dir = %dir.display(), free_mib = mib(free), "data dir has space again: writes resume");
                    }
                }
            }
            Err(e) if !unreadable => {
                unreadable = true;
                tracing::warn!(dir = %dir.display(), error = %e, "cannot read the data dir's free space");
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(POLL) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn low_below_the_reserve_and_back_once_freed_reporting_only_changes() {
        let space = DiskSpace::default();
        assert_eq!(space.observe(100 << 20, 64 << 20), None);
        assert!(space.check().is_ok());
        assert_eq!(space.observe(10 << 20, 64 << 20), Some(true));
        assert_eq!(space.observe(9 << 20, 64 << 20), None);
        let refused = space.check().expect_err("low");
        assert_eq!(refused.free_mib, 9.0);
        assert!(refused.to_string().contains("below its 64.0 MiB reserve"));
        assert_eq!(space.observe(65 << 20, 64 << 20), Some(false));
        assert!(space.check().is_ok());
    }

    #[test]
    fn a_reserve_of_zero_is_never_low() {
        let space = DiskSpace::default();
        assert_eq!(space.observe(0, 0), None);
        assert!(!space.is_low());
    }

    #[test]
    fn free_bytes_reads_a_real_directory() {
        let dir = std::env::temp_dir();
        assert!(free_bytes(&dir).is_ok());
        assert!(free_bytes(Path::new("/nonexistent/gantry")).is_err());
    }
}
