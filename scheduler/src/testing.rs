//! Fixture builders for tests and benchmarks, like Nomad's `mock` package.
//!
//! Short positional constructors keep table tests readable; chain the
//! `with_*` builders on the returned model types for the rest.

use crate::model::{InstanceRef, NodeView, Resources, RunningInstance, WorkloadRequirements};

pub const KI: u64 = 1 << 10;
pub const MI: u64 = 1 << 20;
pub const GI: u64 = 1 << 30;

/// A Ready gateway `gw-<id>` with `cpu_millis` and `memory_bytes` allocatable.
pub fn node(id: u64, cpu_millis: u64, memory_bytes: u64) -> NodeView {
    NodeView::new(
        id,
        format!("gw-{id}"),
        Resources::new(cpu_millis, memory_bytes),
    )
}

/// A workload with default placement and priority 0.
pub fn workload(name: &str, cpu_millis: u64, memory_bytes: u64) -> WorkloadRequirements {
    WorkloadRequirements::new(name, Resources::new(cpu_millis, memory_bytes))
}

/// Replica `replica` of `workload`, already running on gateway `node`.
pub fn running(
    workload: &str,
    replica: u32,
    node: u64,
    requests: Resources,
    priority: i32,
) -> RunningInstance {
    RunningInstance {
        instance: InstanceRef::new(workload, replica),
        node,
        requests,
        priority,
    }
}
