//! Prometheus metrics of one gateway, served at `/metrics` on its own port
//! (`web`). Each gateway owns its registry: `gantry dev` and the benchmarks
//! run several gateways in one process, and a process-global recorder
//! would mix their numbers.
//!
//! Two kinds of figures. Events the code sees happen (an fsync, a failed
//! proposal, a scheduling round, a heal) are counted where they happen, in
//! `Metrics`, which the cluster carries (`Cluster::telemetry`). Everything
//! that is a reading of current state (Raft term and indexes, gateways by
//! status, instances by state, the cloud link) is read on each scrape by
//! `Live` from openraft's metrics and the local replica: no loop keeps a
//! copy that could go stale. Names follow etcd's where there is one, in base
//! units (seconds, bytes), `_total` on counters.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::cloud::link::LinkHandle;
use crate::cluster::{Cluster, NodeId};
use crate::state::{InstanceKey, InstanceState, NodeStatus, State};

/// The `Content-Type` of what `render` returns (text format 0.0.4, the one
/// `promtool check metrics` lints).
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

type Labels = [(&'static str, &'static str); 1];

/// What the gateway counts as it happens.
#[derive(Debug)]
pub struct Metrics {
    /// Leaders seen to take over (`etcd_server_leader_changes_seen_total`).
    pub leader_changes: Counter,
    /// Writes that did not commit, by reason.
    pub proposals_failed: Family<Labels, Counter>,
    /// Synced log appends (`etcd_disk_wal_fsync_duration_seconds`).
    pub log_fsync: Histogram,
    /// Synced state-machine batches (`etcd_disk_backend_commit_duration_seconds`).
    pub apply_commit: Histogram,
    pub snapshots_built: Counter,
    /// Size of the last snapshot built or installed, in bytes.
    pub snapshot_bytes: prometheus_client::metrics::gauge::Gauge,
    /// One leader scheduling round, from reading the state to the plan.
    pub scheduler_round: Histogram,
    /// From a gateway's NotReady commit to its work's replacement Running,
    /// observed by the leader.
    pub heal: Histogram,
    /// Bytes of the cloud link's messages (protobuf, before HTTP/2 and TLS
    /// framing), by direction.
    pub link_bytes: Family<Labels, Counter>,
    /// What this gateway's agent pulled and fetched from peers.
    pub images: std::sync::Arc<gantry_node::agent::ImageStats>,
    /// The leader's autoscaler's last reading of each autoscaled workload
    /// (soft state, empty on followers), for `describe` and `/metrics`.
    pub autoscale: std::sync::Mutex<std::collections::BTreeMap<String, serde_json::Value>>,
}

/// 1 ms doubling to about 8 s: etcd's disk buckets.
fn disk_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 14))
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            leader_changes: Counter::default(),
            proposals_failed: Family::default(),
            log_fsync: disk_buckets(),
            apply_commit: disk_buckets(),
            snapshots_built: Counter::default(),
            snapshot_bytes: Default::default(),
            scheduler_round: Histogram::new(exponential_buckets(0.0001, 2.0, 14)),
            heal: Histogram::new([
                0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0,
            ]),
            link_bytes: Family::default(),
            images: Default::default(),
            autoscale: Default::default(),
        }
    }
}

impl Metrics {
    pub fn proposal_failed(&self, reason: &'static str) {
        self.proposals_failed
            .get_or_create(&[("reason", reason)])
            .inc();
    }

    pub fn set_autoscale_readings(
        &self,
        readings: std::collections::BTreeMap<String, serde_json::Value>,
    ) {
        *self.autoscale.lock().unwrap_or_else(|p| p.into_inner()) = readings;
    }

    pub fn autoscale_reading(&self, workload: &str) -> Option<serde_json::Value> {
        self.autoscale
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(workload)
            .cloned()
    }

    pub fn link_bytes(&self, direction: &'static str, bytes: usize) {
        self.link_bytes
            .get_or_create(&[("direction", direction)])
            .inc_by(bytes as u64);
    }
}

/// A gateway's registry: the counted figures and the live readings.
pub struct Exporter {
    registry: Registry,
}

impl Exporter {
    pub fn new(cluster: Cluster, link: LinkHandle) -> Self {
        let m = cluster.telemetry().clone();
        let mut r = Registry::default();
        r.register(
            "gantry_raft_leader_changes_seen",
            "Leader changes this gateway has seen",
            m.leader_changes.clone(),
        );
        r.register(
            "gantry_raft_proposals_failed",
            "Writes that did not commit, by reason (timeout, no_leader, refused, error)",
            m.proposals_failed.clone(),
        );
        r.register(
            "gantry_raft_log_fsync_seconds",
            "Latency of synced Raft log appends",
            m.log_fsync.clone(),
        );
        r.register(
            "gantry_state_commit_seconds",
            "Latency of synced state-machine batches",
            m.apply_commit.clone(),
        );
        r.register(
            "gantry_raft_snapshots_built",
            "Snapshots this gateway built",
            m.snapshots_built.clone(),
        );
        r.register(
            "gantry_raft_snapshot_bytes",
            "Size of the last snapshot built or installed",
            m.snapshot_bytes.clone(),
        );
        r.register(
            "gantry_scheduler_round_seconds",
            "Duration of one leader scheduling round",
            m.scheduler_round.clone(),
        );
        r.register(
            "gantry_heal_seconds",
            "From a gateway's NotReady commit to its work's replacement Running, seen by the leader",
            m.heal.clone(),
        );
        r.register(
            "gantry_cloud_link_bytes",
            "Bytes of cloud link messages, by direction (up, down)",
            m.link_bytes.clone(),
        );
        r.register_collector(Box::new(Live { cluster, link }));
        Self { registry: r }
    }
}

/// What `/metrics` serves: a gateway's or the hub's registry as text.
pub trait Render: Send + Sync + 'static {
    fn render(&self) -> Result<String, fmt::Error>;
}

impl Render for Exporter {
    fn render(&self) -> Result<String, fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// Read on each scrape.
struct Live {
    cluster: Cluster,
    link: LinkHandle,
}

impl fmt::Debug for Live {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Live")
            .field("node", &self.cluster.id())
            .finish()
    }
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), fmt::Error> {
    let g = ConstGauge::new(value);
    g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
}

/// One gauge per label value, every value present (zeros included), so a
/// state that empties shows 0 instead of vanishing.
fn gauges<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &'static str,
    values: impl IntoIterator<Item = (&'a str, i64)>,
) -> Result<(), fmt::Error> {
    let mut family = encoder.encode_descriptor(
        name,
        help,
        None,
        prometheus_client::metrics::MetricType::Gauge,
    )?;
    for (value, count) in values {
        let labels = [(label, value)];
        ConstGauge::new(count).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for Live {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), fmt::Error> {
        let raft = self.cluster.metrics();
        let leader = raft.current_leader;
        let me = self.cluster.id();
        let last_log = raft.last_log_index.unwrap_or(0);
        let applied = raft.last_applied.map(|l| l.index).unwrap_or(0);
        gauge(
            &mut e,
            "gantry_raft_term",
            "Current Raft term",
            raft.current_term as i64,
        )?;
        gauge(
            &mut e,
            "gantry_raft_leader_id",
            "Id of the gateway this one follows (0: none known)",
            leader.unwrap_or(0) as i64,
        )?;
        gauge(
            &mut e,
            "gantry_raft_has_leader",
            "1 when a leader is known",
            i64::from(leader.is_some()),
        )?;
        gauge(
            &mut e,
            "gantry_raft_is_leader",
            "1 on the leader",
            i64::from(leader == Some(me)),
        )?;
        gauge(
            &mut e,
            "gantry_raft_last_log_index",
            "Index of the last entry in this gateway's log",
            last_log as i64,
        )?;
        if let Some(commit) = commit_index(&raft) {
            gauge(
                &mut e,
                "gantry_raft_commit_index",
                "Highest index a quorum holds (on the leader, which alone knows it)",
                commit as i64,
            )?;
        }
        gauge(
            &mut e,
            "gantry_raft_applied_index",
            "Index of the last entry applied to the local replica",
            applied as i64,
        )?;
        gauge(
            &mut e,
            "gantry_raft_apply_lag_entries",
            "Entries in the log not yet applied here",
            last_log.saturating_sub(applied) as i64,
        )?;
        gauge(
            &mut e,
            "gantry_raft_snapshot_index",
            "Last index in this gateway's snapshot",
            raft.snapshot.map(|l| l.index).unwrap_or(0) as i64,
        )?;
        if let Some(ack) = raft.millis_since_quorum_ack {
            let g = ConstGauge::new(ack as f64 / 1000.0);
            g.encode(e.encode_descriptor(
                "gantry_raft_quorum_ack_age_seconds",
                "Since a quorum last acknowledged the leader (leader only)",
                None,
                g.metric_type(),
            )?)?;
        }
        if let Some(replication) = &raft.replication {
            let mut family = e.encode_descriptor(
                "gantry_raft_follower_lag_entries",
                "Entries a follower is behind the leader's log (leader only)",
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for (id, matched) in replication.iter() {
                if *id == me {
                    continue;
                }
                let behind = last_log.saturating_sub(matched.map(|l| l.index).unwrap_or(0));
                let follower = id.to_string();
                let labels = [("follower", follower.as_str())];
                ConstGauge::new(behind as i64).encode(family.encode_family(&labels)?)?;
            }
        }
        {
            let applied = self.cluster.state().read();
            encode_state(&mut e, &applied.state)?;
        }
        let link = self.link.get();
        gauge(
            &mut e,
            "gantry_cloud_link_connected",
            "1 while this gateway holds the cloud link (the leader of an attached site)",
            i64::from(link.connected),
        )?;
        if link.hub_revision > 0 {
            gauge(
                &mut e,
                "gantry_cloud_desired_revision",
                "The hub's desired revision for this site, as this gateway's link last heard it",
                link.hub_revision as i64,
            )?;
        }
        encode_images(&mut e, &self.cluster.telemetry().images)?;
        if let Some(rss) = resident_bytes() {
            gauge(
                &mut e,
                "process_resident_memory_bytes",
                "Resident memory of the whole process (several gateways in `gantry dev`)",
                rss as i64,
            )?;
        }
        Ok(())
    }
}

/// On the leader: the highest index held by a majority of the voters.
fn commit_index(raft: &openraft::RaftMetrics<NodeId, openraft::BasicNode>) -> Option<u64> {
    let replication = raft.replication.as_ref()?;
    let voters: Vec<NodeId> = raft.membership_config.membership().voter_ids().collect();
    let mut matched: Vec<u64> = voters
        .iter()
        .map(|id| {
            if *id == raft.id {
                raft.last_log_index.unwrap_or(0)
            } else {
                replication
                    .get(id)
                    .and_then(|m| m.as_ref())
                    .map(|l| l.index)
                    .unwrap_or(0)
            }
        })
        .collect();
    if matched.is_empty() {
        return None;
    }
    matched.sort_unstable_by(|a, b| b.cmp(a));
    matched.get(voters.len() / 2).copied()
}

const NODE_STATUSES: [NodeStatus; 4] = [
    NodeStatus::Ready,
    NodeStatus::NotReady,
    NodeStatus::Draining,
    NodeStatus::Left,
];
const INSTANCE_STATES: [InstanceState; 6] = [
    InstanceState::Pending,
    InstanceState::Pulling,
    InstanceState::Starting,
    InstanceState::Running,
    InstanceState::Exited,
    InstanceState::Failed,
];

/// Fails to compile when a status or state is added and the lists above
/// are not: a state missing from them would vanish from the metrics.
#[allow(dead_code)]
fn listed(status: NodeStatus, state: InstanceState) {
    use InstanceState::*;
    use NodeStatus::*;
    match status {
        Ready | NotReady | Draining | Left => {}
    }
    match state {
        Pending | Pulling | Starting | Running | Exited | Failed => {}
    }
}

fn encode_state(e: &mut DescriptorEncoder, state: &State) -> Result<(), fmt::Error> {
    let statuses: Vec<(String, i64)> = NODE_STATUSES
        .iter()
        .map(|s| {
            let n = state.nodes.values().filter(|n| n.status == *s).count();
            (s.to_string(), n as i64)
        })
        .collect();
    gauges(
        e,
        "gantry_gateways",
        "Gateways of the cluster by status",
        "status",
        statuses.iter().map(|(s, n)| (s.as_str(), *n)),
    )?;
    let states: Vec<(String, i64)> = INSTANCE_STATES
        .iter()
        .map(|s| {
            let n = state.instances.values().filter(|i| i.state == *s).count();
            (s.to_string(), n as i64)
        })
        .collect();
    gauges(
        e,
        "gantry_instances",
        "Instances by state",
        "state",
        states.iter().map(|(s, n)| (s.as_str(), *n)),
    )?;
    let unplaced = state
        .instances
        .values()
        .filter(|i| i.node.is_none() && i.reason.is_some())
        .count();
    gauge(
        e,
        "gantry_scheduler_unplaceable_instances",
        "Instances no gateway can take, with the scheduler's reason",
        unplaced as i64,
    )?;
    let mut restarts: BTreeMap<&str, u64> = BTreeMap::new();
    for instance in state.instances.values() {
        *restarts.entry(instance.workload.as_str()).or_default() += u64::from(instance.restarts);
    }
    let mut family = e.encode_descriptor(
        "gantry_instance_restarts",
        "Container restarts of a workload's current instances, as their gateways report them",
        None,
        prometheus_client::metrics::MetricType::Counter,
    )?;
    for (workload, n) in restarts {
        let labels = [("workload", workload)];
        ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
    }
    if state.meta.cloud.link.is_some() {
        gauge(
            e,
            "gantry_cloud_acked_revision",
            "Last hub revision committed on this site",
            state.meta.cloud.acked_revision as i64,
        )?;
        gauge(
            e,
            "gantry_cloud_refused_workloads",
            "Cloud workloads not taken because a local workload owns the name",
            state.meta.cloud.refused.len() as i64,
        )?;
    }
    Ok(())
}

/// Image pulls (registry) and fetches (peer gateways' archives), by
/// source and result, and their bytes.
fn encode_images(
    e: &mut DescriptorEncoder,
    images: &gantry_node::agent::ImageStats,
) -> Result<(), fmt::Error> {
    use std::sync::atomic::Ordering::Relaxed;
    let mut family = e.encode_descriptor(
        "gantry_image_pulls",
        "Images brought in by this gateway's agent, by source (registry, peer) and result",
        None,
        prometheus_client::metrics::MetricType::Counter,
    )?;
    for (source, result, n) in [
        ("registry", "ok", images.registry_pulls.load(Relaxed)),
        ("registry", "failed", images.registry_failures.load(Relaxed)),
        ("peer", "ok", images.peer_fetches.load(Relaxed)),
    ] {
        let labels = [("source", source), ("result", result)];
        ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
    }
    let mut family = e.encode_descriptor(
        "gantry_image_pull_bytes",
        "Bytes those images brought: downloaded layers (registry), archives (peer)",
        None,
        prometheus_client::metrics::MetricType::Counter,
    )?;
    for (source, n) in [
        ("registry", images.registry_bytes.load(Relaxed)),
        ("peer", images.peer_bytes.load(Relaxed)),
    ] {
        let labels = [("source", source)];
        ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// VmRSS of this process, from /proc (prometheus-client has no process
/// collector).
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Counts leader changes and, on the leader, heals: the time from a gateway's
/// NotReady commit to a replacement of its work Running elsewhere, once per
/// replacement. What was already healed when this gateway began to lead is
/// not counted again.
pub async fn watch(cluster: Cluster, shutdown: CancellationToken) {
    let metrics = cluster.telemetry().clone();
    let mut raft = cluster.metrics_watch();
    let mut applied = cluster.state().subscribe();
    let mut leader = raft.borrow().current_leader;
    let mut healed: Option<BTreeSet<(InstanceKey, String)>> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = raft.changed() => {
                if changed.is_err() {
                    return;
                }
                let now = raft.borrow().current_leader;
                if now.is_some() && now != leader {
                    metrics.leader_changes.inc();
                }
                if now.is_some() {
                    leader = now;
                }
            }
            changed = applied.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        if !cluster.is_leader() {
            healed = None;
            continue;
        }
        let guard = cluster.state().read();
        let current = replacements(&guard.state);
        match &mut healed {
            None => healed = Some(current.into_keys().collect()),
            Some(seen) => {
                for (id, seconds) in &current {
                    if !seen.contains(id) {
                        metrics.heal.observe(*seconds);
                    }
                }
                *seen = current.into_keys().collect();
            }
        }
    }
}

/// Instances Running on a new gateway whose previous one is lost, with the
/// seconds from that gateway's NotReady commit to their Running report.
fn replacements(state: &State) -> BTreeMap<(InstanceKey, String), f64> {
    state
        .instances
        .iter()
        .filter(|(_, i)| i.state == InstanceState::Running)
        .filter_map(|(key, i)| {
            let previous = state.nodes.get(&i.previous_node?)?;
            let lost = matches!(previous.status, NodeStatus::NotReady | NodeStatus::Left);
            if !lost || i.node == Some(previous.id) || i.updated_ms < previous.since_ms {
                return None;
            }
            let seconds = (i.updated_ms - previous.since_ms) as f64 / 1000.0;
            Some(((key.clone(), i.container_id.clone()?), seconds))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_in_the_text_format() {
        let m = Metrics::default();
        m.proposal_failed("timeout");
        m.log_fsync.observe(0.003);
        let mut r = Registry::default();
        r.register(
            "gantry_raft_proposals_failed",
            "help",
            m.proposals_failed.clone(),
        );
        r.register("gantry_raft_log_fsync_seconds", "help", m.log_fsync.clone());
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &r).unwrap();
        assert!(
            out.contains("gantry_raft_proposals_failed_total{reason=\"timeout\"} 1"),
            "{out}"
        );
        assert!(
            out.contains("gantry_raft_log_fsync_seconds_bucket{le=\"0.004\"} 1"),
            "{out}"
        );
    }
}
