//! The records the replicated state machine holds. They are plain data,
//! serialised with serde both in RocksDB and in snapshots, so a field added
//! later must carry `#[serde(default)]` to read old records.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use super::quantity::HumanDuration;
use super::spec::WorkloadSpec;

pub type NodeId = u64;

/// cpu in millicores and memory in bytes, as the scheduler counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Capacity {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeStatus {
    Ready,
    NotReady,
    Draining,
    Left,
}

impl fmt::Display for NodeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            NodeStatus::Ready => "Ready",
            NodeStatus::NotReady => "NotReady",
            NodeStatus::Draining => "Draining",
            NodeStatus::Left => "Left",
        };
        f.write_str(s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub id: NodeId,
    pub name: String,
    /// Where other gateways and clients reach it (the Cluster and Admin port).
    pub address: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub capacity: Capacity,
    #[serde(default)]
    pub devices: BTreeSet<String>,
    pub status: NodeStatus,
    #[serde(default)]
    pub status_reason: Option<String>,
    #[serde(default)]
    pub cordoned: bool,
    /// NotReady because its container runtime does not answer (heartbeats
    /// still arrive): its containers most likely still run.
    #[serde(default)]
    pub runtime_down: bool,
    /// `gantry drain` is moving its instances away; it shows as `Draining`
    /// while it heartbeats, and the flag survives a NotReady spell.
    #[serde(default)]
    pub draining: bool,
    /// When the status last changed (ms since the epoch, from the command).
    pub since_ms: u64,
    pub joined_ms: u64,
    /// The key its certificate must carry; None once it left.
    #[serde(default)]
    pub tls: Option<super::trust::NodeTls>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Cloud,
    Local,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Cloud => "cloud",
            Source::Local => "local",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workload {
    pub spec: WorkloadSpec,
    pub source: Source,
    /// Grows by one each time the spec changes; instances carry the
    /// generation they run so the agent can replace stale ones.
    pub generation: u64,
    pub created_ms: u64,
    pub updated_ms: u64,
    /// Specs of older generations that instances may still run during a
    /// rollout, and of the last good one (to roll back to).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub history: BTreeMap<u64, WorkloadSpec>,
    /// The newest generation that had every replica Running.
    #[serde(default)]
    pub last_good: Option<u64>,
    /// Set when a generation was rolled back: which, when and why.
    #[serde(default)]
    pub rolled_back: Option<RolledBack>,
    /// The replica count the autoscaler chose (see `Workload::replicas`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaled: Option<u32>,
    /// The autoscaler's last change, for `describe`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale: Option<ScaleRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScaleRecord {
    pub at_ms: u64,
    pub from: u32,
    pub to: u32,
    pub reason: String,
}

impl Workload {
    /// How many replicas run: the spec's count, or, under `autoscale`, the
    /// autoscaler's choice, kept between the floor and `max`.
    pub fn replicas(&self) -> u32 {
        let Some(autoscale) = &self.spec.autoscale else {
            return self.spec.replicas;
        };
        let floor = self.scale_floor();
        self.autoscaled
            .unwrap_or(self.spec.replicas)
            .clamp(floor, autoscale.max.max(floor))
    }

    /// The fewest replicas the autoscaler may leave: `autoscale.min`, else
    /// 1 for a local workload and the cloud's `replicas` for a cloud one
    /// (the hub's count is a floor unless the hub sets `min`).
    pub fn scale_floor(&self) -> u32 {
        match (self.spec.autoscale.and_then(|a| a.min), &self.source) {
            (Some(min), _) => min,
            (None, Source::Cloud) => self.spec.replicas.max(1),
            (None, Source::Local) => 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolledBack {
    pub generation: u64,
    pub to_spec_of: u64,
    pub at_ms: u64,
    pub reason: String,
}

/// Where an instance is in its life, as last reported by its gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InstanceState {
    Pending,
    Pulling,
    Starting,
    Running,
    Exited,
    Failed,
}

impl fmt::Display for InstanceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// One replica of a workload and the gateway it is assigned to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    pub workload: String,
    pub replica: u32,
    /// The workload generation this instance should run.
    pub generation: u64,
    pub node: Option<NodeId>,
    /// The gateway it ran on before it lost its home (stickiness, describe).
    #[serde(default)]
    pub previous_node: Option<NodeId>,
    pub state: InstanceState,
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// Why it failed, or why the scheduler could not place it.
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub restarts: u32,
    #[serde(default)]
    pub container_id: Option<String>,
    /// The gateway must stop this copy (and not start it) before it moves:
    /// a drained, preempted or runtime-stranded singleton waits for its old
    /// copy to be reported stopped.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stopping: bool,
    /// The gateway confirmed the `stopping` copy is down: it reported it
    /// Exited or Failed after it had seen `stopping` (so it will not start
    /// it again). Cleared with `stopping`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stopped: bool,
    /// Identifies the last time `stopping` was set (`Meta::last_stop_mark`,
    /// unique in the cluster): a report confirms the stop only if it was
    /// made under the current mark. A drain cancelled and begun again
    /// would otherwise take a report made under the first mark as
    /// confirming the second; and a report about a deleted singleton's copy
    /// (a re-sent "stopped so that it can move") confirmed the stop of the
    /// new instance of that name, whose container has the same id, while
    /// it ran (the simulation, seed 6368).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub stop_mark: u64,
    /// How long (ms) the gateway this instance is placed on keeps running it
    /// when cut off from the quorum, as that gateway is known to have seen
    /// it: set with the placement, only ever raised while it stays, so the
    /// leader's fence is never shorter than what an isolated gateway with a
    /// stale replica stops by. None: it keeps running when isolated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence_ms: Option<u64>,
    /// A fence that a spec change asked for on a placement that had none
    /// (`singleton: true` turned on), until the gateway reports that it has
    /// seen it; the leader does not count on it before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence_pending: Option<u64>,
    /// The generation whose container this instance keeps running when a
    /// rollback moved it to a newer generation with the same spec (so the
    /// container is not replaced). None: its own generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_generation: Option<u64>,
    pub created_ms: u64,
    pub updated_ms: u64,
    /// When it was given its current generation (rollout progress deadline).
    #[serde(default)]
    pub generation_since_ms: u64,
    /// The readiness probe's verdict as its gateway last reported it; None
    /// when it has no readiness probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<bool>,
}

impl Instance {
    /// Whether this instance still takes its requests on its gateway: all
    /// but a copy stopped to move (confirmed stopped, or seen exited while
    /// being stopped). The scheduler counts at least these (it also holds
    /// the room of a stopping copy that exited but is not yet confirmed).
    pub fn holds_capacity(&self) -> bool {
        let down = matches!(self.state, InstanceState::Exited | InstanceState::Failed);
        !(self.stopping && (self.stopped || down))
    }

    /// Whether its gateway may still run (or be about to run) this copy.
    /// A placed copy may, whatever its last report says, until its gateway
    /// confirmed a stop (`stopped`): an Exited or Failed copy is restarted
    /// by its restart policy or a retried start, and a cancelled drain
    /// starts it again (the simulation, seed 1045 with 60 s of faults,
    /// found a singleton moved off a gateway on its stale Exited report
    /// while an uncordon had just told that gateway to run it). An unplaced
    /// instance was started nowhere unless it still names a container.
    pub fn may_be_running(&self) -> bool {
        if self.node.is_some() {
            return !self.stopped;
        }
        match self.state {
            InstanceState::Exited | InstanceState::Failed => false,
            InstanceState::Pending => self.container_id.is_some(),
            _ => true,
        }
    }

    /// The generation its container was created from (and is labelled with).
    pub fn container_generation(&self) -> u64 {
        self.container_generation.unwrap_or(self.generation)
    }

    /// The isolation limit this gateway stops the instance by: what it has
    /// seen, the pending fence included (it is in this replica).
    pub fn stop_after_ms(&self) -> Option<u64> {
        self.fence_ms.or(self.fence_pending)
    }

    /// Running, and ready where it has a readiness probe: what a rollout
    /// waits for and what counts as serving.
    pub fn is_up(&self) -> bool {
        self.state == InstanceState::Running && self.ready != Some(false)
    }

    pub fn key(&self) -> InstanceKey {
        InstanceKey {
            workload: self.workload.clone(),
            replica: self.replica,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct InstanceKey {
    pub workload: String,
    pub replica: u32,
}

impl fmt::Display for InstanceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.workload, self.replica)
    }
}

/// Something worth telling an operator, kept in a bounded ring.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub seq: u64,
    pub at_ms: u64,
    pub kind: String,
    pub message: String,
}

/// Cluster-wide knobs every gateway must agree on, so they live in Raft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSettings {
    pub heartbeat_interval: HumanDuration,
    pub node_grace: HumanDuration,
    /// A voter NotReady this long is replaced by a Ready learner.
    #[serde(default = "default_voter_replace_after")]
    pub voter_replace_after: HumanDuration,
}

fn default_voter_replace_after() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(30))
}

impl Default for ClusterSettings {
    fn default() -> Self {
        Self {
            heartbeat_interval: HumanDuration(std::time::Duration::from_millis(300)),
            node_grace: HumanDuration(std::time::Duration::from_secs(1)),
            voter_replace_after: default_voter_replace_after(),
        }
    }
}

/// Identity of the cluster, fixed by `gantry init`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ClusterIdentity {
    pub cluster_id: String,
    pub created_ms: u64,
}

/// The site's link to the cloud hub, as replicated: where to connect, what
/// was committed from it, and the last connect/disconnect transition the
/// leader reported. The live connection itself is soft state of the leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct CloudState {
    /// None while the site is not attached (`gantry cloud attach`).
    #[serde(default)]
    pub link: Option<CloudLink>,
    /// The last hub revision committed here; committed in the same write as
    /// the workloads it carried, so an acknowledged revision is never lost.
    #[serde(default)]
    pub acked_revision: u64,
    /// Last transition reported by a leader (followers show it).
    #[serde(default)]
    pub connected: bool,
    /// The gateway that reported `connected`.
    #[serde(default)]
    pub reported_by: Option<NodeId>,
    /// When `connected` last changed (ms since the epoch).
    #[serde(default)]
    pub since_ms: u64,
    /// Cloud workloads not taken because a local workload owns the name.
    #[serde(default)]
    pub refused: BTreeMap<String, String>,
    /// The hub's history `acked_revision` counts in (its epoch for this
    /// site): a delivery from another epoch starts the count again. 0:
    /// none seen yet.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub hub_epoch: u64,
    /// Counts `cloud attach`es: a delivery names the attachment its link
    /// was opened under and is refused under any other.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attachment: u64,
}

/// Where the site's leader connects and how it authenticates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloudLink {
    pub hub: String,
    pub site: String,
    /// SHA-256 (hex) of the hub's CA certificate, from the site token: the
    /// link pins it in the TLS handshake before it sends the token.
    pub hub_ca_sha256: String,
    /// The site token, sealed with the cluster key (hex): replicated so
    /// every future leader can use it, never in clear.
    pub token_sealed: String,
    /// `cloud attach --keepalive`: replicated so that every future leader
    /// pings the hub the same way. Absent means the default, 0 none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive_ms: Option<u64>,
    /// Set when the link goes through an MQTT broker (`cloud attach
    /// --mqtt`): `hub` is then the broker's URL and the hub fields are empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mqtt: Option<MqttLink>,
}

/// How the leader reaches an MQTT broker. Secrets are sealed with the
/// cluster key, like the site token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MqttLink {
    /// Topics live under it: `{prefix}desired`, `{prefix}reported`, ...
    pub prefix: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_sealed: Option<String>,
    /// PEM bundle the broker's certificate must chain to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_pem: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key_sealed: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}
