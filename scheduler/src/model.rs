//! Plain-data snapshot types the scheduler reads and the plan it writes back.
//!
//! The caller (gantry's scheduling driver) converts its replicated state into
//! these types, so the scheduler never depends on Raft, RocksDB or the proto
//! crate and can be tested and benchmarked alone.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::refusal::Refusal;

/// A cpu and memory amount: both what a gateway offers and what an instance asks for.
///
/// Millicores and bytes are integers so that sums and comparisons are exact
/// and the plan never depends on floating-point rounding.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Resources {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
}

impl Resources {
    pub const ZERO: Resources = Resources {
        cpu_millis: 0,
        memory_bytes: 0,
    };

    pub const fn new(cpu_millis: u64, memory_bytes: u64) -> Self {
        Resources {
            cpu_millis,
            memory_bytes,
        }
    }
}

/// What the scheduler needs to know about one gateway.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    pub id: u64,
    pub name: String,
    /// Only Ready gateways take new work; NotReady, Draining and Left ones map to `false`.
    pub ready: bool,
    /// An admin's "no new work here", kept separate from readiness so a
    /// healthy gateway can be emptied on purpose.
    #[serde(default)]
    pub cordoned: bool,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Host device paths present, e.g. `/dev/ttyUSB0`.
    #[serde(default)]
    pub devices: BTreeSet<String>,
    /// Capacity left for workloads after the system's own reservation.
    pub allocatable: Resources,
}

impl NodeView {
    /// A Ready, uncordoned gateway without labels or devices; chain `with_*` to add them.
    pub fn new(id: u64, name: impl Into<String>, allocatable: Resources) -> Self {
        NodeView {
            id,
            name: name.into(),
            ready: true,
            cordoned: false,
            labels: BTreeMap::new(),
            devices: BTreeSet::new(),
            allocatable,
        }
    }

    pub fn with_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    pub fn with_device(mut self, path: impl Into<String>) -> Self {
        self.devices.insert(path.into());
        self
    }
}

/// How to rank the gateways that can take an instance.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    /// Prefer the emptiest gateway, so a lost gateway takes fewer instances with it.
    #[default]
    Spread,
    /// Prefer the fullest gateway that still fits, keeping whole gateways free
    /// for large workloads.
    Binpack,
}

/// The part of a workload spec that decides where its instances may go.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadRequirements {
    pub name: String,
    #[serde(default)]
    pub requests: Resources,
    /// Every key must be present on the gateway with exactly this value.
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    /// Every path must be present on the gateway.
    #[serde(default)]
    pub devices: Vec<String>,
    /// `spread: node`: never two replicas of this workload on one gateway.
    #[serde(default)]
    pub spread_node: bool,
    #[serde(default)]
    pub placement: Placement,
    /// Higher runs first and may preempt strictly lower.
    #[serde(default)]
    pub priority: i32,
}

impl WorkloadRequirements {
    /// Default placement, priority 0, no selector, devices or spread.
    pub fn new(name: impl Into<String>, requests: Resources) -> Self {
        WorkloadRequirements {
            name: name.into(),
            requests,
            node_selector: BTreeMap::new(),
            devices: Vec::new(),
            spread_node: false,
            placement: Placement::Spread,
            priority: 0,
        }
    }

    pub fn with_selector(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.node_selector.insert(key.into(), value.into());
        self
    }

    pub fn with_device(mut self, path: impl Into<String>) -> Self {
        self.devices.push(path.into());
        self
    }

    pub fn with_spread_node(mut self) -> Self {
        self.spread_node = true;
        self
    }

    pub fn with_placement(mut self, placement: Placement) -> Self {
        self.placement = placement;
        self
    }

    pub fn with_priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// Replica `replica` of this workload, waiting for a gateway.
    pub fn replica(&self, replica: u32) -> PendingInstance {
        PendingInstance {
            workload: self.clone(),
            replica,
            previous_node: None,
        }
    }
}

/// Names one replica of one workload; stable across reschedules.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct InstanceRef {
    pub workload: String,
    pub replica: u32,
}

impl InstanceRef {
    pub fn new(workload: impl Into<String>, replica: u32) -> Self {
        InstanceRef {
            workload: workload.into(),
            replica,
        }
    }
}

/// Renders as `web/0`, the form operators see in events and `gantry describe`.
impl fmt::Display for InstanceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.workload, self.replica)
    }
}

/// An instance already assigned to a gateway; it holds capacity and may be preempted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningInstance {
    pub instance: InstanceRef,
    pub node: u64,
    pub requests: Resources,
    pub priority: i32,
}

/// An instance that needs a gateway.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingInstance {
    pub workload: WorkloadRequirements,
    pub replica: u32,
    /// Where it ran before; preferred because the image is likely cached there.
    #[serde(default)]
    pub previous_node: Option<u64>,
}

impl PendingInstance {
    pub fn instance(&self) -> InstanceRef {
        InstanceRef::new(self.workload.name.clone(), self.replica)
    }

    pub fn with_previous_node(mut self, node: u64) -> Self {
        self.previous_node = Some(node);
        self
    }
}

/// The whole input snapshot besides the pending list.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterView {
    pub nodes: Vec<NodeView>,
    pub running: Vec<RunningInstance>,
}

/// Put this instance on this gateway.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub instance: InstanceRef,
    pub node: u64,
}

/// Stop this running instance to make room for a higher-priority one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Eviction {
    pub instance: InstanceRef,
    pub node: u64,
    /// Shown to operators, e.g. `preempted by web/0 (priority 100)`.
    pub reason: String,
}

/// An instance no gateway can take, with the reasons per constraint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unplaceable {
    pub instance: InstanceRef,
    pub reason: Refusal,
}

/// The scheduler's whole answer; the driver proposes it through Raft as is.
///
/// Evicted instances are not re-placed in the same plan: the driver sees them
/// as pending in its next round, where they compete like any other instance.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub placements: Vec<Assignment>,
    pub evictions: Vec<Eviction>,
    pub unplaceable: Vec<Unplaceable>,
}

impl Plan {
    /// The gateway chosen for `instance`, if it was placed.
    pub fn node_of(&self, instance: &InstanceRef) -> Option<u64> {
        self.placements
            .iter()
            .find(|a| &a.instance == instance)
            .map(|a| a.node)
    }
}
