//! Fault injection for partition tests: when `GANTRY_FAULT_FILE` names a
//! file, the gateway polls it, and while it contains `partition` every
//! gateway-to-gateway call in or out of this process fails as if the
//! network were cut (the Admin API keeps answering, so a test can watch
//! the isolated side). Unset, nothing here does anything.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

static PARTITIONED: AtomicBool = AtomicBool::new(false);

pub const ENV: &str = "GANTRY_FAULT_FILE";

/// Whether this gateway is cut off from its peers by fault injection.
pub fn partitioned() -> bool {
    PARTITIONED.load(Ordering::Relaxed)
}

/// Watches the fault file named by `GANTRY_FAULT_FILE`, if any.
pub async fn watch(shutdown: CancellationToken) {
    let Some(path) = std::env::var_os(ENV).map(PathBuf::from) else {
        return;
    };
    tracing::warn!(file = %path.display(), "fault injection enabled (testing only)");
    loop {
        let wanted = std::fs::read_to_string(&path).is_ok_and(|s| s.trim() == "partition");
        if PARTITIONED.swap(wanted, Ordering::Relaxed) != wanted {
            tracing::warn!(partitioned = wanted, "fault injection changed");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
}

/// Inbound side: refuses every Cluster call while partitioned.
#[allow(clippy::result_large_err)]
pub fn inbound<T>(request: tonic::Request<T>) -> Result<tonic::Request<T>, tonic::Status> {
    if partitioned() {
        return Err(tonic::Status::unavailable("partitioned (fault injection)"));
    }
    Ok(request)
}
