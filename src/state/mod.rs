//! The replicated state machine: the cluster's nodes, workloads, instances
//! and events, and the one pure function that changes them.
//!
//! `State::apply` is deterministic: no clock, no randomness, no I/O. Time
//! arrives inside each `Request`. Every apply records which records it
//! touched in a `ChangeSet`, so the storage layer can persist exactly those
//! (see `cluster::state_machine`) without knowing what they mean.

pub mod cloud;
pub mod command;
pub mod model;
pub mod quantity;
pub mod rollout;
pub mod settings;
pub mod spec;
pub mod trust;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

pub use command::{AppliedWorkload, Command, InstanceReport, PlanRecord, Request, Response};
pub use model::*;
use spec::{is_dns_label, WorkloadSpec};
pub use trust::{NodeTls, Pki, PreviousKey, Role, TokenKind, TokenRecord};

/// How many events the ring keeps; older ones fall off.
pub const MAX_EVENTS: usize = 512;

/// One persisted record of the state; the storage layer maps it to a key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum StateKey {
    Meta,
    Node(NodeId),
    Workload(String),
    Instance(InstanceKey),
    Event(u64),
    /// A client request id already applied (`Request::id`).
    Request(String),
}

/// The records one or more applies touched.
pub type ChangeSet = BTreeSet<StateKey>;

/// Small singletons persisted together under `StateKey::Meta`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Meta {
    pub identity: Option<ClusterIdentity>,
    pub settings: ClusterSettings,
    pub next_node_id: NodeId,
    pub next_event_seq: u64,
    /// Added with cloud sync; absent in older records.
    #[serde(default)]
    pub cloud: CloudState,
    /// The cluster CA (its key sealed); set by `InitCluster`.
    #[serde(default)]
    pub pki: Option<Pki>,
    /// Admin and join tokens by id (hashes only).
    #[serde(default)]
    pub tokens: BTreeMap<String, TokenRecord>,
    /// Orders the remembered request ids (oldest go first).
    #[serde(default)]
    pub next_request_seq: u64,
    /// Copies of deleted singletons that may still run where they were
    /// placed (`stopping`; `updated_ms` is when the workload was deleted).
    /// A singleton of the same name and replica is placed only once each is
    /// confirmed stopped or its gateway fenced out, so deleting and
    /// re-creating a singleton never runs two copies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired: Vec<Instance>,
    /// The last `Instance::stop_mark` handed out: marks are unique across
    /// instances, so a report about a deleted singleton's copy cannot
    /// confirm the stop of a new instance of the same name, replica and
    /// generation (same container id).
    #[serde(default)]
    pub last_stop_mark: u64,
}

/// A client request id the state machine has applied, and its answer: a
/// retry of the same request (its reply was lost to a broken connection or
/// a leader change) gets the same answer and changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedRequest {
    pub id: String,
    pub seq: u64,
    pub at_ms: u64,
    pub response: Response,
}

/// How many request ids are remembered at least, and for how long at least
/// (far more than the retries of one 10-second write can need), and the
/// most kept however young they are (memory stays bounded under any load).
pub const REMEMBERED_REQUESTS: usize = 4096;
pub const REMEMBER_REQUESTS_MS: u64 = 10 * 60 * 1000;
pub const MAX_REMEMBERED_REQUESTS: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct State {
    pub meta: Meta,
    pub nodes: BTreeMap<NodeId, Node>,
    pub workloads: BTreeMap<String, Workload>,
    /// Serialised as a list: JSON object keys must be strings.
    #[serde(with = "instances_as_list")]
    pub instances: BTreeMap<InstanceKey, Instance>,
    pub events: VecDeque<Event>,
    /// Applied client request ids (see `AppliedRequest`).
    #[serde(default)]
    pub requests: BTreeMap<String, AppliedRequest>,
}

mod instances_as_list {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serializer};

    use super::{Instance, InstanceKey};

    pub fn serialize<S: Serializer>(
        map: &BTreeMap<InstanceKey, Instance>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(map.values())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<InstanceKey, Instance>, D::Error> {
        let list = Vec::<Instance>::deserialize(d)?;
        Ok(list.into_iter().map(|i| (i.key(), i)).collect())
    }
}

/// What `RegisterNode` carries, by reference.
#[derive(Clone, Copy)]
struct Joiner<'a> {
    name: &'a str,
    address: &'a str,
    labels: &'a BTreeMap<String, String>,
    capacity: Capacity,
    devices: &'a BTreeSet<String>,
    tls: Option<&'a NodeTls>,
    join_token: Option<&'a str>,
}

fn rejected(reason: impl Into<String>) -> Response {
    Response::Rejected {
        reason: reason.into(),
    }
}

impl State {
    /// Applies one request. Refusals change nothing and touch nothing. A
    /// request whose id was applied before is answered as it was then.
    pub fn apply(&mut self, req: &Request, changes: &mut ChangeSet) -> Response {
        let Some(id) = &req.id else {
            return self.apply_command(req, changes);
        };
        if let Some(done) = self.requests.get(id) {
            return done.response.clone();
        }
        let response = self.apply_command(req, changes);
        if !matches!(response, Response::Rejected { .. }) {
            self.remember_request(id, req.at_ms, &response, changes);
        }
        response
    }

    fn remember_request(
        &mut self,
        id: &str,
        at: u64,
        response: &Response,
        changes: &mut ChangeSet,
    ) {
        let seq = self.meta.next_request_seq;
        self.meta.next_request_seq += 1;
        changes.insert(StateKey::Meta);
        self.requests.insert(
            id.to_string(),
            AppliedRequest {
                id: id.to_string(),
                seq,
                at_ms: at,
                response: response.clone(),
            },
        );
        changes.insert(StateKey::Request(id.to_string()));
        // Forget in batches, oldest first: beyond the soft cap those old
        // enough, beyond the hard cap whatever their age.
        if seq % 256 == 255 && self.requests.len() > REMEMBERED_REQUESTS {
            let mut by_age: Vec<(u64, u64, String)> = self
                .requests
                .values()
                .map(|r| (r.seq, r.at_ms, r.id.clone()))
                .collect();
            by_age.sort_unstable();
            let over_soft = self.requests.len() - REMEMBERED_REQUESTS;
            let over_hard = self
                .requests
                .len()
                .saturating_sub(MAX_REMEMBERED_REQUESTS - 256);
            for (i, (_, at_ms, old)) in by_age.into_iter().take(over_soft).enumerate() {
                let old_enough = at.saturating_sub(at_ms) >= REMEMBER_REQUESTS_MS;
                if !old_enough && i >= over_hard {
                    break;
                }
                self.requests.remove(&old);
                changes.insert(StateKey::Request(old));
            }
        }
    }

    fn apply_command(&mut self, req: &Request, changes: &mut ChangeSet) -> Response {
        let at = req.at_ms;
        match &req.command {
            Command::InitCluster {
                cluster_id,
                settings,
                pki,
                join_token,
            } => {
                if self.meta.identity.is_some() {
                    return rejected("the cluster is already initialised");
                }
                if join_token.kind != TokenKind::Join {
                    return rejected("the first token of a cluster is its join token");
                }
                self.meta.identity = Some(ClusterIdentity {
                    cluster_id: cluster_id.clone(),
                    created_ms: at,
                });
                self.meta.pki = Some(pki.clone());
                let mut join_token = join_token.clone();
                join_token.default = true;
                self.meta.tokens.insert(join_token.id.clone(), join_token);
                self.meta.settings = settings.clone();
                self.meta.next_node_id = self.meta.next_node_id.max(1);
                changes.insert(StateKey::Meta);
                self.event(
                    at,
                    "cluster-created",
                    format!("cluster {cluster_id} created"),
                    changes,
                );
                Response::Ok
            }
            Command::RegisterNode {
                name,
                address,
                labels,
                capacity,
                devices,
                tls,
                join_token,
            } => {
                let joiner = Joiner {
                    name,
                    address,
                    labels,
                    capacity: *capacity,
                    devices,
                    tls: tls.as_ref(),
                    join_token: join_token.as_deref(),
                };
                self.register_node(at, &joiner, changes)
            }
            Command::SetNodeKey { node, tls } => self.set_node_key(at, *node, tls, changes),
            Command::CreateToken { record } => self.create_token(at, record, changes),
            Command::RevokeToken { id } => self.revoke_token(at, id, changes),
            Command::RotateJoinToken { record } => self.rotate_join_token(at, record, changes),
            Command::SetNodeStatus {
                node,
                status,
                reason,
                runtime_down,
            } => self.set_node_status(at, *node, *status, reason.clone(), *runtime_down, changes),
            Command::ApplyWorkloads { workloads, source } => {
                self.apply_workloads(at, workloads, *source, changes)
            }
            Command::DeleteWorkload { name, source } => {
                self.delete_workload(at, name, *source, changes)
            }
            Command::ApplyPlan { plan } => self.apply_plan(at, plan, changes),
            Command::ReportInstances { node, reports } => {
                let answer = self.report_instances(at, *node, reports, changes);
                let touched: BTreeSet<String> = reports
                    .iter()
                    .map(|r| r.instance.workload.clone())
                    .collect();
                for name in touched {
                    self.note_good_generation(&name, changes);
                }
                answer
            }
            Command::UpgradeInstances {
                workload,
                generation,
                replicas,
            } => self.upgrade_instances(at, workload, *generation, replicas, changes),
            Command::RollBack {
                workload,
                failed_generation,
                reason,
            } => self.roll_back(at, workload, *failed_generation, reason, changes),
            Command::Scale {
                workload,
                replicas,
                reason,
            } => self.scale(at, workload, *replicas, reason, changes),
            Command::UpdateSettings { change } => self.update_settings(at, change, changes),
            Command::SetCordon { node, cordoned } => self.set_cordon(at, *node, *cordoned, changes),
            Command::DrainNode { node } => self.drain_node(at, *node, changes),
            Command::RecordEvent { kind, message } => {
                if kind.is_empty() {
                    return rejected("an event needs a kind");
                }
                self.event(at, kind, message.clone(), changes);
                Response::Ok
            }
            Command::CloudAttach {
                hub,
                site,
                hub_ca_sha256,
                token_sealed,
                keepalive_ms,
                mqtt,
            } => {
                let link = CloudLink {
                    hub: hub.clone(),
                    site: site.clone(),
                    hub_ca_sha256: hub_ca_sha256.clone(),
                    token_sealed: token_sealed.clone(),
                    keepalive_ms: *keepalive_ms,
                    mqtt: mqtt.clone(),
                };
                self.cloud_attach(at, link, changes)
            }
            Command::CloudDetach => self.cloud_detach(at, changes),
            Command::SetCloudConnection {
                connected,
                node,
                reason,
            } => self.set_cloud_connection(at, *connected, *node, reason.as_deref(), changes),
            Command::ApplyCloudRevision {
                revision,
                full,
                upserts,
                deletes,
                epoch,
                attachment,
            } => self.apply_cloud_revision(
                at,
                cloud::Delivery {
                    revision: *revision,
                    full: *full,
                    epoch: *epoch,
                    attachment: *attachment,
                },
                upserts,
                deletes,
                changes,
            ),
        }
    }

    pub fn cluster_id(&self) -> Option<&str> {
        self.meta.identity.as_ref().map(|i| i.cluster_id.as_str())
    }

    pub fn node_by_name(&self, name: &str) -> Option<&Node> {
        self.nodes
            .values()
            .find(|n| n.name == name && n.status != NodeStatus::Left)
    }

    /// The copy of `key` placed on `node`: the live instance, or a retired
    /// copy of a deleted singleton that may still run there.
    pub fn placed_copy(&self, key: &InstanceKey, node: NodeId) -> Option<&Instance> {
        self.instances
            .get(key)
            .filter(|i| i.node == Some(node))
            .or_else(|| {
                self.meta.retired.iter().find(|r| {
                    r.node == Some(node) && r.workload == key.workload && r.replica == key.replica
                })
            })
    }

    /// Retired copies of `key` (see `Meta::retired`).
    pub fn retired_copies<'a>(
        &'a self,
        key: &'a InstanceKey,
    ) -> impl Iterator<Item = &'a Instance> + 'a {
        self.meta
            .retired
            .iter()
            .filter(move |r| r.workload == key.workload && r.replica == key.replica)
    }

    pub fn instances_of<'a>(
        &'a self,
        workload: &'a str,
    ) -> impl Iterator<Item = &'a Instance> + 'a {
        self.instances
            .values()
            .filter(move |i| i.workload == workload)
    }

    fn event(&mut self, at: u64, kind: &str, message: String, changes: &mut ChangeSet) {
        let seq = self.meta.next_event_seq;
        self.meta.next_event_seq += 1;
        changes.insert(StateKey::Meta);
        self.events.push_back(Event {
            seq,
            at_ms: at,
            kind: kind.to_string(),
            message,
        });
        changes.insert(StateKey::Event(seq));
        while self.events.len() > MAX_EVENTS {
            if let Some(old) = self.events.pop_front() {
                changes.insert(StateKey::Event(old.seq));
            }
        }
    }

    fn register_node(&mut self, at: u64, joiner: &Joiner, changes: &mut ChangeSet) -> Response {
        let Joiner {
            name,
            address,
            labels,
            capacity,
            devices,
            tls,
            join_token,
        } = *joiner;
        if !is_dns_label(name) {
            return rejected(format!("gateway name '{name}' is not a DNS label"));
        }
        if address.is_empty() {
            return rejected("the gateway has no address");
        }
        if let Some(existing) = self.node_by_name(name) {
            // A retried join (its answer was lost) registers nothing twice:
            // the same name with the same key is the same gateway.
            let same_key = matches!((&existing.tls, tls), (Some(a), Some(b)) if a.spki_sha256 == b.spki_sha256);
            if same_key {
                return Response::NodeRegistered { node: existing.id };
            }
            return rejected(format!(
                "a gateway named '{name}' is already a member; pick another name or run `gantry leave {name}` first"
            ));
        }
        if self.meta.pki.is_some() && tls.is_none() {
            return rejected("a gateway joins with a certificate");
        }
        if let Some(token) = join_token {
            if let Err(refusal) = self.consume_join_token(at, token, changes) {
                return refusal;
            }
        }
        let id = self.meta.next_node_id.max(1);
        self.meta.next_node_id = id + 1;
        changes.insert(StateKey::Meta);
        self.nodes.insert(
            id,
            Node {
                id,
                name: name.to_string(),
                address: address.to_string(),
                labels: labels.clone(),
                capacity,
                devices: devices.clone(),
                status: NodeStatus::Ready,
                status_reason: None,
                cordoned: false,
                runtime_down: false,
                draining: false,
                since_ms: at,
                joined_ms: at,
                tls: tls.cloned(),
            },
        );
        changes.insert(StateKey::Node(id));
        self.event(
            at,
            "node-joined",
            format!("gateway {name} (id {id}) joined at {address}"),
            changes,
        );
        Response::NodeRegistered { node: id }
    }

    /// A gateway that is a member (not Left), or the refusal to answer.
    fn live_node_mut(&mut self, id: NodeId) -> Result<&mut Node, Response> {
        let Some(node) = self.nodes.get_mut(&id) else {
            return Err(rejected(format!("no gateway with id {id}")));
        };
        if node.status == NodeStatus::Left {
            return Err(rejected(format!(
                "gateway {} has left the cluster",
                node.name
            )));
        }
        Ok(node)
    }

    fn set_node_status(
        &mut self,
        at: u64,
        id: NodeId,
        status: NodeStatus,
        reason: Option<String>,
        runtime_down: bool,
        changes: &mut ChangeSet,
    ) -> Response {
        let node = match self.live_node_mut(id) {
            Ok(node) => node,
            Err(refusal) => return refusal,
        };
        // A draining gateway that heartbeats is Draining, not Ready.
        let status = match status {
            NodeStatus::Ready if node.draining => NodeStatus::Draining,
            other => other,
        };
        if status == NodeStatus::Left {
            node.draining = false;
        }
        if node.status == status
            && node.status_reason == reason
            && node.runtime_down == runtime_down
        {
            return Response::Ok;
        }
        let before = node.status;
        let away_ms = at.saturating_sub(node.since_ms);
        node.status = status;
        node.status_reason = reason.clone();
        node.runtime_down = runtime_down;
        if before != status {
            node.since_ms = at;
        }
        let name = node.name.clone();
        changes.insert(StateKey::Node(id));
        if before != status {
            let why = reason.map(|r| format!(": {r}")).unwrap_or_default();
            let (kind, message) = match (before, status) {
                (_, NodeStatus::NotReady) => {
                    ("node-not-ready", format!("gateway {name} NotReady{why}"))
                }
                (NodeStatus::NotReady, NodeStatus::Ready | NodeStatus::Draining) => (
                    "node-back",
                    format!(
                        "gateway {name} back ({status}) after {} NotReady",
                        quantity::format_duration(std::time::Duration::from_millis(away_ms))
                    ),
                ),
                _ => (
                    "node-status",
                    format!("gateway {name}: {before} -> {status}{why}"),
                ),
            };
            self.event(at, kind, message, changes);
        }
        if status == NodeStatus::Left {
            self.forget_credentials_of(id, changes);
            // A gateway that left runs nothing: its instances need a new home.
            let keys: Vec<InstanceKey> = self
                .instances
                .values()
                .filter(|i| i.node == Some(id))
                .map(Instance::key)
                .collect();
            for key in keys {
                self.unassign(
                    at,
                    &key,
                    format!("gateway {name} left the cluster"),
                    changes,
                );
            }
        }
        Response::Ok
    }

    fn apply_workloads(
        &mut self,
        at: u64,
        specs: &[WorkloadSpec],
        source: Source,
        changes: &mut ChangeSet,
    ) -> Response {
        for spec in specs {
            if let Err(e) = spec.validate() {
                return rejected(format!("workload '{}': {}", spec.name, e.0));
            }
            if let Some(existing) = self.workloads.get(&spec.name) {
                if existing.source != source {
                    return rejected(format!(
                        "workload '{}' is owned by the {}; a {} workload of that name is refused",
                        spec.name, existing.source, source
                    ));
                }
            }
        }
        let applied = specs
            .iter()
            .map(|spec| self.upsert_workload(at, spec, source, changes))
            .collect();
        Response::Applied { workloads: applied }
    }

    /// Creates or updates one workload whose ownership was already checked.
    fn upsert_workload(
        &mut self,
        at: u64,
        spec: &WorkloadSpec,
        source: Source,
        changes: &mut ChangeSet,
    ) -> AppliedWorkload {
        {
            let (generation, change) = match self.workloads.get_mut(&spec.name) {
                Some(existing) if existing.spec == *spec => (existing.generation, "unchanged"),
                // Only the count changed: no container is replaced.
                Some(existing) if scale_only(&existing.spec, spec) => {
                    existing.spec = spec.clone();
                    if spec.autoscale.is_none() {
                        existing.autoscaled = None;
                    }
                    existing.updated_ms = at;
                    (existing.generation, "scaled")
                }
                Some(existing) => {
                    let previous = std::mem::replace(&mut existing.spec, spec.clone());
                    existing.history.insert(existing.generation, previous);
                    existing.rolled_back = None;
                    existing.generation += 1;
                    existing.updated_ms = at;
                    (existing.generation, "configured")
                }
                None => {
                    self.workloads.insert(
                        spec.name.clone(),
                        Workload {
                            spec: spec.clone(),
                            source,
                            generation: 1,
                            created_ms: at,
                            updated_ms: at,
                            history: BTreeMap::new(),
                            last_good: None,
                            rolled_back: None,
                            autoscaled: None,
                            last_scale: None,
                        },
                    );
                    (1, "created")
                }
            };
            if change != "unchanged" {
                changes.insert(StateKey::Workload(spec.name.clone()));
                self.sync_instances(at, &spec.name, changes);
                // Not only after a rollout succeeds: a workload that never
                // runs, changed over and over, would keep every spec it
                // ever had (and every write would carry them all).
                self.prune_history(&spec.name, changes);
                let keys: Vec<InstanceKey> =
                    self.instances_of(&spec.name).map(Instance::key).collect();
                for key in keys {
                    self.raise_fence(&key, spec.stop_after_ms(), changes);
                }
                self.event(
                    at,
                    "workload-applied",
                    format!("workload {} {change} (generation {generation})", spec.name),
                    changes,
                );
            }
            AppliedWorkload {
                name: spec.name.clone(),
                generation,
                change: change.to_string(),
            }
        }
    }

    /// Makes the instance set match the workload's replica count and
    /// generation: missing replicas appear unplaced, surplus ones (highest
    /// index first) disappear, and stale ones are marked for replacement.
    fn sync_instances(&mut self, at: u64, name: &str, changes: &mut ChangeSet) {
        let Some(workload) = self.workloads.get(name) else {
            return;
        };
        let (replicas, generation) = (workload.replicas(), workload.generation);
        let existing: Vec<u32> = self.instances_of(name).map(|i| i.replica).collect();
        for replica in existing.iter().copied().filter(|r| *r >= replicas) {
            let key = InstanceKey {
                workload: name.to_string(),
                replica,
            };
            self.instances.remove(&key);
            changes.insert(StateKey::Instance(key));
        }
        for replica in 0..replicas {
            let key = InstanceKey {
                workload: name.to_string(),
                replica,
            };
            // Existing replicas keep their generation: the rollout driver
            // moves them to the new one a batch at a time.
            match self.instances.get_mut(&key) {
                Some(_) => {}
                None => {
                    self.instances.insert(
                        key.clone(),
                        Instance {
                            workload: name.to_string(),
                            replica,
                            generation,
                            node: None,
                            previous_node: None,
                            state: InstanceState::Pending,
                            exit_code: None,
                            reason: None,
                            restarts: 0,
                            container_id: None,
                            stopping: false,
                            stopped: false,
                            stop_mark: 0,
                            fence_ms: None,
                            fence_pending: None,
                            container_generation: None,
                            created_ms: at,
                            updated_ms: at,
                            generation_since_ms: at,
                            ready: None,
                        },
                    );
                    changes.insert(StateKey::Instance(key));
                }
            }
        }
    }

    fn scale(
        &mut self,
        at: u64,
        name: &str,
        replicas: u32,
        reason: &str,
        changes: &mut ChangeSet,
    ) -> Response {
        let Some(workload) = self.workloads.get_mut(name) else {
            return rejected(format!("no workload named '{name}'"));
        };
        if workload.spec.autoscale.is_none() {
            return rejected(format!("workload '{name}' does not autoscale"));
        }
        let from = workload.replicas();
        let before = workload.autoscaled.replace(replicas);
        let to = workload.replicas();
        let (kind, message) = if to == from {
            workload.autoscaled = before;
            // A scale-up that found no room is said once, with why.
            let said = workload.last_scale.as_ref().map(|s| s.reason.as_str());
            if reason.is_empty() || said == Some(reason) {
                return Response::Ok;
            }
            (
                "scale-held",
                format!("autoscale of {name} held at {to}: {reason}"),
            )
        } else {
            (
                "scaled",
                format!("scaled {name} from {from} to {to}: {reason}"),
            )
        };
        workload.last_scale = Some(ScaleRecord {
            at_ms: at,
            from,
            to,
            reason: reason.to_string(),
        });
        changes.insert(StateKey::Workload(name.to_string()));
        if to != from {
            self.sync_instances(at, name, changes);
        }
        self.event(at, kind, message, changes);
        Response::Ok
    }

    fn delete_workload(
        &mut self,
        at: u64,
        name: &str,
        source: Source,
        changes: &mut ChangeSet,
    ) -> Response {
        let Some(existing) = self.workloads.get(name) else {
            return rejected(format!("no workload named '{name}'"));
        };
        if existing.source != source {
            return rejected(format!(
                "workload '{name}' is owned by the {}; it cannot be deleted as {source}",
                existing.source
            ));
        }
        self.remove_workload(at, name, changes);
        Response::Deleted {
            name: name.to_string(),
        }
    }

    /// Removes a workload and its instances, whoever owns it.
    fn remove_workload(&mut self, at: u64, name: &str, changes: &mut ChangeSet) {
        let singleton = self
            .workloads
            .remove(name)
            .is_some_and(|w| w.spec.singleton);
        changes.insert(StateKey::Workload(name.to_string()));
        let keys: Vec<InstanceKey> = self.instances_of(name).map(Instance::key).collect();
        for key in keys {
            let Some(mut instance) = self.instances.remove(&key) else {
                continue;
            };
            changes.insert(StateKey::Instance(key));
            // Its gateway stops it now; until it says so (or is fenced out),
            // a singleton of this name waits.
            if singleton && instance.node.is_some() && instance.may_be_running() {
                instance.stopping = true;
                self.meta.last_stop_mark += 1;
                instance.stop_mark = self.meta.last_stop_mark;
                instance.updated_ms = at;
                self.meta.retired.push(instance);
                changes.insert(StateKey::Meta);
            }
        }
        self.event(
            at,
            "workload-deleted",
            format!("workload {name} deleted"),
            changes,
        );
    }

    fn unassign(&mut self, at: u64, key: &InstanceKey, reason: String, changes: &mut ChangeSet) {
        if let Some(instance) = self.instances.get_mut(key) {
            if instance.node.is_some() {
                instance.previous_node = instance.node;
            }
            instance.node = None;
            instance.state = InstanceState::Pending;
            instance.reason = Some(reason);
            instance.container_id = None;
            instance.container_generation = None;
            instance.stopping = false;
            instance.stopped = false;
            // `fence_ms` stays: it says how long the gateway it left may
            // still run it, which the next placement of a singleton waits out.
            instance.updated_ms = at;
            changes.insert(StateKey::Instance(key.clone()));
        }
    }

    /// A spec change reached a placed instance: its isolation limit only
    /// grows (a gateway with a stale replica may still stop by the longer
    /// one), and one that had none gets it pending until its gateway says
    /// it has seen it.
    fn raise_fence(
        &mut self,
        key: &InstanceKey,
        stop_after_ms: Option<u64>,
        changes: &mut ChangeSet,
    ) {
        let Some(instance) = self.instances.get_mut(key) else {
            return;
        };
        if instance.node.is_none() {
            return;
        }
        let Some(new) = stop_after_ms else {
            return;
        };
        let before = (instance.fence_ms, instance.fence_pending);
        match instance.fence_ms {
            Some(old) => instance.fence_ms = Some(old.max(new)),
            None => instance.fence_pending = Some(instance.fence_pending.unwrap_or(0).max(new)),
        }
        if (instance.fence_ms, instance.fence_pending) != before {
            changes.insert(StateKey::Instance(key.clone()));
        }
    }

    /// Whether `key` fits on `node` beside what is assigned there now, by
    /// the same measure as the scheduler (`Instance::holds_capacity`), so a
    /// placement refused here is not proposed again from the same state.
    fn fits_on(&self, node: NodeId, key: &InstanceKey) -> bool {
        let (Some(target), Some(workload)) =
            (self.nodes.get(&node), self.workloads.get(&key.workload))
        else {
            return false;
        };
        let (mut cpu, mut memory) = (workload.spec.cpu_millis(), workload.spec.memory_bytes());
        for (other, instance) in &self.instances {
            if other == key || instance.node != Some(node) || !instance.holds_capacity() {
                continue;
            }
            if let Some(w) = self.workloads.get(&other.workload) {
                cpu = cpu.saturating_add(w.spec.cpu_millis());
                memory = memory.saturating_add(w.spec.memory_bytes());
            }
        }
        cpu <= target.capacity.cpu_millis && memory <= target.capacity.memory_bytes
    }

    fn apply_plan(&mut self, at: u64, plan: &PlanRecord, changes: &mut ChangeSet) -> Response {
        let before = self.meta.retired.len();
        self.meta.retired.retain(|r| {
            !plan.retired_gone.iter().any(|(key, node, since)| {
                r.workload == key.workload
                    && r.replica == key.replica
                    && r.node == Some(*node)
                    && r.updated_ms == *since
            })
        });
        if self.meta.retired.len() != before {
            changes.insert(StateKey::Meta);
        }
        for (key, reason) in &plan.evictions {
            if self.instances.contains_key(key) {
                self.unassign(at, key, reason.clone(), changes);
                self.event(
                    at,
                    "instance-evicted",
                    format!("instance {key} evicted: {reason}"),
                    changes,
                );
            }
        }
        for (key, node_id) in &plan.placements {
            let Some(node) = self.nodes.get(node_id) else {
                continue;
            };
            if node.status == NodeStatus::Left {
                continue;
            }
            let node_name = node.name.clone();
            let Some(instance) = self.instances.get(key) else {
                continue;
            };
            // Placed again where it is: nothing to do, unless it was stopped
            // there to move and the scheduler found no better home (a
            // preemption that did not happen after all): it starts afresh.
            if instance.node == Some(*node_id) && !instance.stopping {
                continue;
            }
            // A copy of a deleted singleton of this name may still run.
            if self.retired_copies(key).next().is_some() {
                continue;
            }
            // A singleton leaves a gateway only once its copy there is
            // confirmed stopped, or the gateway is silent (the fence); one
            // that came back while this plan was on its way keeps it.
            if let Some(current) = instance.node.filter(|c| c != node_id) {
                let singleton = self
                    .workloads
                    .get(&key.workload)
                    .is_some_and(|w| w.spec_for(instance.generation).singleton);
                let silent = self.nodes.get(&current).is_none_or(|n| {
                    n.status == NodeStatus::Left
                        || (n.status == NodeStatus::NotReady && !n.runtime_down)
                }) || plan.fenced_out.contains(key);
                if singleton && instance.may_be_running() && !silent {
                    continue;
                }
            }
            // Plans are computed on the leader's applied state while earlier
            // plans may still be in flight (a leader that cannot reach its
            // quorum keeps proposing): a placement that no longer fits is
            // dropped here, and the next round plans on the committed state.
            if !self.fits_on(*node_id, key) {
                continue;
            }
            let from = instance.node.or(instance.previous_node);
            let why = self.why_moved(instance);
            let Some(instance) = self.instances.get_mut(key) else {
                continue;
            };
            let fence = self
                .workloads
                .get(&key.workload)
                .and_then(|w| w.spec_for(instance.generation).stop_after_ms());
            let Some(instance) = self.instances.get_mut(key) else {
                continue;
            };
            if instance.node.is_some() {
                instance.previous_node = instance.node;
            }
            instance.node = Some(*node_id);
            instance.state = InstanceState::Pending;
            instance.exit_code = None;
            instance.reason = None;
            instance.container_id = None;
            instance.container_generation = None;
            instance.stopping = false;
            instance.stopped = false;
            // The new gateway learns the fence with the placement itself.
            instance.fence_ms = fence;
            instance.fence_pending = None;
            instance.updated_ms = at;
            changes.insert(StateKey::Instance(key.clone()));
            let (kind, message) = match from.and_then(|f| self.nodes.get(&f)) {
                Some(previous) if previous.id != *node_id => (
                    "instance-rescheduled",
                    format!(
                        "instance {key} rescheduled from {} to {node_name} ({why})",
                        previous.name
                    ),
                ),
                _ => (
                    "instance-placed",
                    format!("instance {key} placed on {node_name}"),
                ),
            };
            self.event(at, kind, message, changes);
        }
        for key in &plan.stop {
            let Some(instance) = self.instances.get_mut(key) else {
                continue;
            };
            let Some(on) = instance.node.filter(|_| !instance.stopping) else {
                continue;
            };
            instance.stopping = true;
            self.meta.last_stop_mark += 1;
            instance.stop_mark = self.meta.last_stop_mark;
            instance.stopped = false;
            instance.updated_ms = at;
            changes.insert(StateKey::Instance(key.clone()));
            changes.insert(StateKey::Meta);
            let on = self
                .nodes
                .get(&on)
                .map(|n| n.name.clone())
                .unwrap_or_default();
            self.event(
                at,
                "drain-progress",
                format!("singleton {key} must stop on {on} before it moves"),
                changes,
            );
        }
        for id in &plan.drained {
            let Some(node) = self.nodes.get_mut(id) else {
                continue;
            };
            if !node.draining {
                continue;
            }
            node.draining = false;
            if node.status == NodeStatus::Draining {
                node.status = NodeStatus::Ready;
                node.status_reason = None;
                node.since_ms = at;
            }
            let name = node.name.clone();
            changes.insert(StateKey::Node(*id));
            self.event(
                at,
                "node-drained",
                format!("gateway {name} drained (stays cordoned)"),
                changes,
            );
        }
        for (key, reason) in &plan.unplaceable {
            if let Some(instance) = self.instances.get_mut(key) {
                if instance.node.is_none() && instance.reason.as_deref() != Some(reason.as_str()) {
                    instance.reason = Some(reason.clone());
                    instance.updated_ms = at;
                    changes.insert(StateKey::Instance(key.clone()));
                }
            }
        }
        Response::Ok
    }

    /// Why an instance is leaving its gateway, for the "rescheduled" event.
    fn why_moved(&self, instance: &Instance) -> String {
        let Some(old) = instance.node.and_then(|id| self.nodes.get(&id)) else {
            // Already unassigned (gateway left, preempted): say why.
            return instance
                .reason
                .clone()
                .unwrap_or_else(|| "it had no gateway".into());
        };
        match old.status {
            NodeStatus::NotReady => format!("gateway {} NotReady", old.name),
            NodeStatus::Left => format!("gateway {} left", old.name),
            _ if old.draining => format!("gateway {} draining", old.name),
            status => format!("gateway {} {status}", old.name),
        }
    }

    fn update_settings(
        &mut self,
        at: u64,
        change: &settings::SettingsChange,
        changes: &mut ChangeSet,
    ) -> Response {
        let next = match change.merged_into(&self.meta.settings) {
            Ok(next) => next,
            Err(reason) => return rejected(reason),
        };
        let before = std::mem::replace(&mut self.meta.settings, next.clone());
        changes.insert(StateKey::Meta);
        let pairs = [
            (
                "heartbeat-interval",
                before.heartbeat_interval,
                next.heartbeat_interval,
            ),
            ("node-grace", before.node_grace, next.node_grace),
            (
                "voter-replace-after",
                before.voter_replace_after,
                next.voter_replace_after,
            ),
        ];
        let diff: Vec<String> = pairs
            .iter()
            .filter(|(_, a, b)| a != b)
            .map(|(k, a, b)| format!("{k} {a} -> {b}"))
            .collect();
        if !diff.is_empty() {
            self.event(
                at,
                "settings-changed",
                format!("settings changed: {}", diff.join(", ")),
                changes,
            );
        }
        Response::Ok
    }

    fn set_cordon(
        &mut self,
        at: u64,
        id: NodeId,
        cordoned: bool,
        changes: &mut ChangeSet,
    ) -> Response {
        let node = match self.live_node_mut(id) {
            Ok(node) => node,
            Err(refusal) => return refusal,
        };
        let cancelled = node.draining && !cordoned;
        if node.cordoned == cordoned && !cancelled {
            return Response::Ok;
        }
        node.cordoned = cordoned;
        if cancelled {
            node.draining = false;
            if node.status == NodeStatus::Draining {
                node.status = NodeStatus::Ready;
                node.status_reason = None;
                node.since_ms = at;
            }
        }
        let name = node.name.clone();
        changes.insert(StateKey::Node(id));
        if cancelled {
            // Copies still being stopped stay. One whose stop is confirmed
            // stays stopped: a plan that moves it may already be on its
            // way, computed on that confirmation, and its gateway (perhaps
            // NotReady, which lets a plan move it) must not start it again
            // meanwhile (the simulation, seed 5419 with 60 s of faults).
            // The scheduler places it again, here if this is its best home.
            let keys: Vec<InstanceKey> = self
                .instances
                .values()
                .filter(|i| i.node == Some(id) && i.stopping && !i.stopped)
                .map(Instance::key)
                .collect();
            for key in keys {
                if let Some(instance) = self.instances.get_mut(&key) {
                    instance.stopping = false;
                    instance.stopped = false;
                    instance.updated_ms = at;
                    changes.insert(StateKey::Instance(key));
                }
            }
        }
        let message = match (cordoned, cancelled) {
            (true, _) => format!("gateway {name} cordoned"),
            (false, true) => format!("gateway {name} uncordoned (drain cancelled)"),
            (false, false) => format!("gateway {name} uncordoned"),
        };
        self.event(at, "node-cordon", message, changes);
        Response::Ok
    }

    fn drain_node(&mut self, at: u64, id: NodeId, changes: &mut ChangeSet) -> Response {
        let node = match self.live_node_mut(id) {
            Ok(node) => node,
            Err(refusal) => return refusal,
        };
        if node.draining {
            return Response::Ok;
        }
        node.cordoned = true;
        node.draining = true;
        if node.status == NodeStatus::Ready {
            node.status = NodeStatus::Draining;
            node.status_reason = Some("gantry drain".into());
            node.since_ms = at;
        }
        let name = node.name.clone();
        changes.insert(StateKey::Node(id));
        let count = self
            .instances
            .values()
            .filter(|i| i.node == Some(id))
            .count();
        self.event(
            at,
            "node-draining",
            format!("gateway {name} cordoned and draining ({count} instances to move)"),
            changes,
        );
        Response::Ok
    }

    fn report_instances(
        &mut self,
        at: u64,
        node: NodeId,
        reports: &[InstanceReport],
        changes: &mut ChangeSet,
    ) -> Response {
        let mut probe_events = Vec::new();
        let node_name = self
            .nodes
            .get(&node)
            .map(|n| n.name.clone())
            .unwrap_or_else(|| node.to_string());
        for report in reports {
            // The copy of a deleted singleton, confirmed stopped here.
            let retired = self.meta.retired.iter().position(|r| {
                r.node == Some(node)
                    && r.workload == report.instance.workload
                    && r.replica == report.instance.replica
                    && r.container_generation() == report.generation
            });
            if let Some(index) = retired {
                let mark = self.meta.retired[index].stop_mark;
                if report.stopping_seen
                    && report.stop_mark_seen.is_none_or(|seen| seen == mark)
                    && matches!(report.state, InstanceState::Exited | InstanceState::Failed)
                {
                    self.meta.retired.remove(index);
                    changes.insert(StateKey::Meta);
                    self.event(
                        at,
                        "retired-copy-stopped",
                        format!(
                            "the copy of deleted singleton {} on gateway {node} stopped",
                            report.instance
                        ),
                        changes,
                    );
                }
                continue;
            }
            let Some(instance) = self.instances.get_mut(&report.instance) else {
                continue;
            };
            // Reports about a replica that moved away or was replaced are stale.
            if instance.node != Some(node) || instance.container_generation() != report.generation {
                continue;
            }
            // The gateway has seen the stop and will not start it again.
            let confirmed = instance.stopping
                && report.stopping_seen
                && report
                    .stop_mark_seen
                    .is_none_or(|mark| mark == instance.stop_mark)
                && matches!(report.state, InstanceState::Exited | InstanceState::Failed);
            if confirmed && !instance.stopped {
                instance.stopped = true;
                changes.insert(StateKey::Instance(report.instance.clone()));
            }
            // The gateway has seen the fence a spec change asked for.
            if instance.fence_pending.is_some() && report.fence_seen == instance.fence_pending {
                instance.fence_ms = instance.fence_pending.take();
                changes.insert(StateKey::Instance(report.instance.clone()));
            }
            let updated = (
                report.state,
                report.exit_code,
                report.reason.clone(),
                report.restarts,
                report.container_id.clone(),
                report.ready,
            );
            let current = (
                instance.state,
                instance.exit_code,
                instance.reason.clone(),
                instance.restarts,
                instance.container_id.clone(),
                instance.ready,
            );
            if updated != current {
                probe_events.extend(probe_event(&node_name, instance, report));
                (
                    instance.state,
                    instance.exit_code,
                    instance.reason,
                    instance.restarts,
                    instance.container_id,
                    instance.ready,
                ) = updated;
                instance.updated_ms = at;
                changes.insert(StateKey::Instance(report.instance.clone()));
            }
        }
        for (kind, message) in probe_events {
            self.event(at, kind, message, changes);
        }
        Response::Ok
    }
}

/// Whether `next` differs from `current` only in how many replicas run
/// (`replicas`, `autoscale`), which replaces no container.
fn scale_only(current: &WorkloadSpec, next: &WorkloadSpec) -> bool {
    let mut scaled = current.clone();
    scaled.replicas = next.replicas;
    scaled.autoscale = next.autoscale;
    scaled == *next
}

/// The event a report makes when a probe changed something people look
/// for: a container stopped by its liveness or startup probe, or an
/// instance that was ready and is no longer.
fn probe_event(
    node: &str,
    before: &Instance,
    report: &InstanceReport,
) -> Option<(&'static str, String)> {
    let reason = report.reason.as_deref().unwrap_or("");
    let probe_stop =
        reason.starts_with("liveness probe failed") || reason.starts_with("startup probe failed");
    if probe_stop && report.state == InstanceState::Exited && before.state != InstanceState::Exited
    {
        return Some((
            "probe-restart",
            format!(
                "{} on gateway {node} stopped for a restart: {reason}",
                report.instance
            ),
        ));
    }
    // The same container losing its readiness (a new container starts
    // unready, which says nothing).
    let same = before.container_id == report.container_id;
    if same && before.ready == Some(true) && report.ready == Some(false) {
        let why = if reason.is_empty() {
            String::new()
        } else {
            format!(": {reason}")
        };
        return Some((
            "not-ready",
            format!("{} on gateway {node} is not ready{why}", report.instance),
        ));
    }
    None
}

#[cfg(test)]
mod tests;
