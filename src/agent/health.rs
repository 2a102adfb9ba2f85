//! What heartbeats carry to the leader from this gateway's node agent:
//! whether its container runtime answers, and what its running instances
//! use (soft state for the autoscaler, never written to the log).

use std::sync::Mutex;

use gantry_proto::v1::InstanceUsage;

#[derive(Default)]
pub struct RuntimeHealth {
    problem: Mutex<Option<String>>,
    usage: Mutex<Vec<InstanceUsage>>,
}

impl RuntimeHealth {
    pub fn set_problem(&self, problem: Option<String>) {
        *self.problem.lock().unwrap_or_else(|p| p.into_inner()) = problem;
    }

    /// None when the runtime answers.
    pub fn problem(&self) -> Option<String> {
        self.problem
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set_usage(&self, usage: Vec<InstanceUsage>) {
        *self.usage.lock().unwrap_or_else(|p| p.into_inner()) = usage;
    }

    /// The last sample of every running instance here.
    pub fn usage(&self) -> Vec<InstanceUsage> {
        self.usage.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
