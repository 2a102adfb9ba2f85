//! One report write at a time, off the loop that asked for it. The fence
//! must keep killing every 100 ms while a write waits for a quorum it may
//! not reach; waiting out its report writes inline stopped it for up to
//! 5 s at a time while the gateway was cut off (the simulation, seed 64
//! with 60 s of faults: an isolated leader's singleton outlived its limit).

use tokio::task::JoinHandle;

use super::REPORT_TIMEOUT;
use crate::cluster::Cluster;
use crate::state::Command;

/// A write under way, with what it carries (`T`), so that its caller can
/// tell what the commit covered.
pub struct InFlight<T> {
    task: Option<(T, JoinHandle<bool>)>,
}

impl<T> Default for InFlight<T> {
    fn default() -> Self {
        Self { task: None }
    }
}

impl<T> InFlight<T> {
    pub fn idle(&self) -> bool {
        self.task.is_none()
    }

    /// Starts writing `command` (committed within `REPORT_TIMEOUT`, or
    /// counted as not committed); `sent` comes back with the outcome.
    pub fn start(&mut self, cluster: &Cluster, command: Command, sent: T) {
        let cluster = cluster.clone();
        let handle = tokio::spawn(async move {
            matches!(
                tokio::time::timeout(REPORT_TIMEOUT, cluster.write(command)).await,
                Ok(Ok(_))
            )
        });
        if let Some((_, old)) = self.task.replace((sent, handle)) {
            old.abort();
        }
    }

    /// The outcome of the write under way: what it carried and whether it
    /// committed. Pending forever when idle; cancel-safe (for `select!`).
    pub async fn done(&mut self) -> (T, bool) {
        let committed = match self.task.as_mut() {
            Some((_, handle)) => matches!(handle.await, Ok(true)),
            None => std::future::pending().await,
        };
        match self.task.take() {
            Some((sent, _)) => (sent, committed),
            None => std::future::pending().await,
        }
    }
}

impl<T> Drop for InFlight<T> {
    fn drop(&mut self) {
        if let Some((_, handle)) = self.task.take() {
            handle.abort();
        }
    }
}
