//! Control loops. Leader-only loops check leadership on every tick and start
//! afresh when it changes, so a new leader never acts on a predecessor's
//! soft state.

pub mod autoscale;
pub mod fencing;
pub mod liveness;
pub mod rollout;
pub mod scheduling;
pub mod voters;
