//! What the agent tells its caller: instance state changes and whether the
//! container runtime is reachable.

use serde::{Deserialize, Serialize};

/// Lifecycle of one instance as the control plane shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InstanceState {
    /// Wanted, not started yet.
    Pending,
    /// Its image is being fetched.
    Pulling,
    /// Being created or (re)started.
    Starting,
    Running,
    /// The task ended; `exit_code` says how. A restart may follow.
    Exited,
    /// Could not be started; `reason` says why. Retried with back-off.
    Failed,
    /// Stopped and removed because it is no longer wanted here.
    Removed,
}

/// One state change of one instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceReport {
    pub workload: String,
    pub replica: u32,
    pub generation: u64,
    pub state: InstanceState,
    pub exit_code: Option<i32>,
    pub reason: Option<String>,
    pub restarts: u32,
    pub container_id: String,
    pub pid: Option<u32>,
    /// The `DesiredInstance::stop_mark` of the slot's stop entry when the
    /// report was made (None: the slot was not to stop).
    #[serde(default)]
    pub stop_mark: Option<u64>,
    /// The readiness probe's verdict; None when the container has none.
    #[serde(default)]
    pub ready: Option<bool>,
}

/// Everything the agent reports, in the order it happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentEvent {
    Instance(InstanceReport),
    /// The runtime answers (again); running containers were adopted.
    RuntimeAvailable {
        version: String,
    },
    /// The runtime cannot be reached; the gateway should show NotReady with
    /// this reason. Containers keep running; the agent retries.
    RuntimeUnavailable {
        reason: String,
    },
}
