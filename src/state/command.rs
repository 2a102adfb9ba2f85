//! What can be proposed to the state machine, and what it answers.
//!
//! Commands are a serde enum stored in the Raft log for as long as the log is
//! kept: variants and fields may be added (with defaults), never renamed or
//! re-purposed. Every command carries its wall-clock time in `Request::at_ms`
//! so that apply stays deterministic.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::model::{
    Capacity, ClusterSettings, InstanceKey, InstanceState, NodeId, NodeStatus, Source,
};
use super::settings::SettingsChange;
use super::spec::WorkloadSpec;
use super::trust::{NodeTls, Pki, TokenRecord};

/// The envelope in every log entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Format version of `command`; bumped only on an incompatible change.
    #[serde(default = "v1")]
    pub v: u16,
    /// The leader's wall clock when it proposed the request.
    pub at_ms: u64,
    pub command: Command,
    /// Set by the gateway a client's write came in through, the same on
    /// every retry: the state machine applies a request id once and answers
    /// a repeat with the first answer (a retry after a lost reply).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

fn v1() -> u16 {
    1
}

impl Request {
    pub fn new(at_ms: u64, command: Command) -> Self {
        Self {
            v: 1,
            at_ms,
            command,
            id: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// First entry of every cluster: its identity, its CA and the default
    /// join token (as a hash).
    InitCluster {
        cluster_id: String,
        settings: ClusterSettings,
        pki: Pki,
        join_token: TokenRecord,
    },
    /// A gateway asks to join; the state machine hands out its id. `tls`
    /// pins its certificate's key; `join_token` names the token it used,
    /// which loses one use.
    RegisterNode {
        name: String,
        address: String,
        labels: BTreeMap<String, String>,
        capacity: Capacity,
        devices: BTreeSet<String>,
        #[serde(default)]
        tls: Option<NodeTls>,
        #[serde(default)]
        join_token: Option<String>,
    },
    /// A gateway renewed its certificate: the new key, and the old one for
    /// as long as the old certificate is valid.
    SetNodeKey {
        node: NodeId,
        tls: NodeTls,
    },
    /// An admin or join token (its hash); a gateway-bound admin token
    /// replaces that gateway's previous one.
    CreateToken {
        record: TokenRecord,
    },
    RevokeToken {
        id: String,
    },
    /// A new default join token; the old default stops working.
    RotateJoinToken {
        record: TokenRecord,
    },
    SetNodeStatus {
        node: NodeId,
        status: NodeStatus,
        reason: Option<String>,
        /// NotReady because the container runtime is down, not the gateway.
        #[serde(default)]
        runtime_down: bool,
    },
    /// Applies a whole manifest: all workloads or none.
    ApplyWorkloads {
        workloads: Vec<WorkloadSpec>,
        source: Source,
    },
    DeleteWorkload {
        name: String,
        source: Source,
    },
    /// Rollout step: these replicas move to `generation`.
    UpgradeInstances {
        workload: String,
        generation: u64,
        replicas: Vec<u32>,
    },
    /// Rollout failure: back to the spec of the last good generation.
    RollBack {
        workload: String,
        failed_generation: u64,
        reason: String,
    },
    /// The autoscaler's choice of replica count for an autoscaled workload
    /// (kept between its floor and max), with why.
    Scale {
        workload: String,
        replicas: u32,
        reason: String,
    },
    /// One scheduler plan, committed as one write.
    ApplyPlan {
        plan: PlanRecord,
    },
    /// A gateway reports what its instances are doing.
    ReportInstances {
        node: NodeId,
        reports: Vec<InstanceReport>,
    },
    /// `gantry settings set`: some cluster-wide settings, validated as a whole.
    UpdateSettings {
        change: SettingsChange,
    },
    /// `gantry cordon` / `uncordon`; uncordoning also ends a drain.
    SetCordon {
        node: NodeId,
        cordoned: bool,
    },
    /// `gantry drain`: cordons the gateway and marks it draining; the
    /// scheduling driver then moves its instances away.
    DrainNode {
        node: NodeId,
    },
    /// Something the leader did outside the state machine (membership).
    RecordEvent {
        kind: String,
        message: String,
    },
    /// `gantry cloud attach`: every future leader opens this link. Attaching
    /// to another hub or site starts again from revision 0.
    CloudAttach {
        hub: String,
        site: String,
        hub_ca_sha256: String,
        token_sealed: String,
        /// Keepalive ping interval; absent means the default, 0 none.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        keepalive_ms: Option<u64>,
        /// An MQTT link instead of the hub's gRPC one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mqtt: Option<crate::state::MqttLink>,
    },
    /// `gantry cloud detach`: the link closes; cloud workloads stay.
    CloudDetach,
    /// A leader's link went up or down (transitions only), so followers
    /// can say something sensible about it.
    SetCloudConnection {
        connected: bool,
        node: NodeId,
        #[serde(default)]
        reason: Option<String>,
    },
    /// One hub revision, committed as one write together with the revision
    /// itself. `full` replaces every cloud workload (local ones stay);
    /// otherwise `upserts` and `deletes` are the changes since the last one.
    ApplyCloudRevision {
        revision: u64,
        full: bool,
        upserts: Vec<WorkloadSpec>,
        deletes: Vec<String>,
        /// The hub's epoch for this site (0: a hub that has none).
        #[serde(default)]
        epoch: u64,
        /// `CloudState::attachment` when the link that carried it opened
        /// (None: from before attachments were counted).
        #[serde(default)]
        attachment: Option<u64>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PlanRecord {
    pub placements: Vec<(InstanceKey, NodeId)>,
    pub evictions: Vec<(InstanceKey, String)>,
    pub unplaceable: Vec<(InstanceKey, String)>,
    /// Singletons on a draining gateway whose old copy must stop first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<InstanceKey>,
    /// Draining gateways that have nothing left on them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drained: Vec<NodeId>,
    /// Retired singleton copies (key, gateway, retired at) that have surely
    /// stopped: their gateway was fenced out or is gone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired_gone: Vec<(InstanceKey, NodeId, u64)>,
    /// Copies whose gateway still heartbeats but has not been able to
    /// store the log for their whole fence, on the leader's word (soft
    /// state the log cannot hold): their gateway's fence has killed them,
    /// so they may leave it as they would leave a silent gateway.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fenced_out: Vec<InstanceKey>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceReport {
    pub instance: InstanceKey,
    /// The generation of the container (see `Instance::container_generation`).
    pub generation: u64,
    pub state: InstanceState,
    pub exit_code: Option<i32>,
    pub reason: Option<String>,
    pub restarts: u32,
    pub container_id: Option<String>,
    /// The reporting gateway's replica marked the instance `stopping` when
    /// it made this report (it will not start it again).
    #[serde(default)]
    pub stopping_seen: bool,
    /// The `Instance::stop_mark` that replica held with `stopping` (None
    /// in reports from before marks were counted: any mark).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_mark_seen: Option<u64>,
    /// The isolation limit the reporting gateway's replica holds for the
    /// instance (`Instance::stop_after_ms`): acknowledges a pending fence.
    #[serde(default)]
    pub fence_seen: Option<u64>,
    /// The readiness probe's verdict; None when the instance has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<bool>,
}

/// The answer to a command. A refusal is an answer too: it is deterministic,
/// replicated like any other, and changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Ok,
    NodeRegistered {
        node: NodeId,
    },
    Applied {
        workloads: Vec<AppliedWorkload>,
    },
    Deleted {
        name: String,
    },
    Rejected {
        reason: String,
    },
    /// The answer to `ApplyCloudRevision`: `applied` is false for a revision
    /// committed before (a redelivery); `refused` names the cloud workloads
    /// not taken because a local one owns the name, with the reason.
    CloudRevision {
        revision: u64,
        applied: bool,
        refused: Vec<(String, String)>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedWorkload {
    pub name: String,
    pub generation: u64,
    /// `created`, `configured` or `unchanged`, as kubectl says it.
    pub change: String,
}
