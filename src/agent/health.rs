//! Whether this gateway's container runtime answers, as last reported by
//! the node agent; heartbeats carry it to the leader.

use std::sync::Mutex;

#[derive(Default)]
pub struct RuntimeHealth {
    problem: Mutex<Option<String>>,
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
}
