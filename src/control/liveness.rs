//! Liveness: gateways heartbeat the leader; the leader keeps when it last
//! heard from each in memory (soft state) and commits only transitions
//! (Ready -> NotReady -> Ready) through Raft. A heartbeat also says whether
//! the gateway's container runtime answers: a gateway whose containerd is
//! down is NotReady with that reason, flagged `runtime_down` so its
//! instances are not duplicated at once. It also says whether the gateway
//! can store the log (its data dir above its disk reserve): one that
//! cannot stays Ready, keeps its containers, gets its heartbeats answered
//! unaccepted (so its fence counts), and loses only the copies its fence
//! kills, once that fence has passed (`control::scheduling`). A new leader
//! starts with an empty
//! table and gives every gateway a full grace period, except its
//! predecessor: an election happens because that leader fell silent, so it
//! is judged by when this gateway last heard from it through Raft.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gantry_proto::v1::{HeartbeatRequest, InstanceUsage};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::agent::RuntimeHealth;
use crate::cluster::{Cluster, NodeId};
use crate::state::quantity::format_duration;
use crate::state::{Command, Node, NodeStatus};

/// When the leader last heard from each gateway, and what its container
/// runtime said then.
#[derive(Default)]
pub struct Liveness {
    seen: Mutex<BTreeMap<NodeId, (Instant, Option<String>)>>,
    /// Gateways whose silence this leader witnessed before it led (its
    /// predecessor), and since when: they get no fresh grace period.
    witnessed: Mutex<BTreeMap<NodeId, Instant>>,
    /// What each gateway's instances used, as its last heartbeat said.
    usage: Mutex<BTreeMap<NodeId, (Instant, Vec<InstanceUsage>)>>,
    /// Gateways whose heartbeats say they cannot store the log, since when
    /// this leader has heard so without a break.
    storage: Mutex<BTreeMap<NodeId, (Instant, String)>>,
}

impl Liveness {
    pub fn record(&self, node: NodeId, runtime_problem: Option<String>) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.insert(node, (Instant::now(), runtime_problem));
    }

    /// What a heartbeat said of the gateway's storage: a problem starts
    /// (or continues) the count of `cannot_store`, its absence ends it.
    pub fn record_storage(&self, node: NodeId, problem: Option<String>) {
        let mut table = self.storage.lock().unwrap_or_else(|p| p.into_inner());
        match problem {
            Some(problem) => {
                let since = table.get(&node).map_or_else(Instant::now, |(at, _)| *at);
                table.insert(node, (since, problem));
            }
            None => {
                table.remove(&node);
            }
        }
    }

    /// Gateways that cannot store the log, and for how long this leader
    /// has heard so.
    pub fn cannot_store(&self) -> BTreeMap<NodeId, Duration> {
        let table = self.storage.lock().unwrap_or_else(|p| p.into_inner());
        table
            .iter()
            .map(|(node, (since, _))| (*node, since.elapsed()))
            .collect()
    }

    pub fn record_usage(&self, node: NodeId, usage: Vec<InstanceUsage>) {
        let mut table = self.usage.lock().unwrap_or_else(|p| p.into_inner());
        table.insert(node, (Instant::now(), usage));
    }

    /// Usage reported within `max_age`, with the gateway that reported it.
    pub fn fresh_usage(&self, max_age: Duration) -> Vec<(NodeId, InstanceUsage)> {
        let table = self.usage.lock().unwrap_or_else(|p| p.into_inner());
        table
            .iter()
            .filter(|(_, (at, _))| at.elapsed() <= max_age)
            .flat_map(|(node, (_, usage))| usage.iter().map(|u| (*node, u.clone())))
            .collect()
    }

    fn last_seen(&self, node: NodeId) -> Option<(Instant, Option<String>)> {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&node)
            .cloned()
    }

    fn witnessed_since(&self, node: NodeId) -> Option<Instant> {
        self.witnessed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&node)
            .copied()
    }

    /// A new leader's table: empty, but for the predecessor it last heard
    /// from (`leader`, at `at`).
    fn reset(&self, predecessor: Option<(NodeId, Instant)>) {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.usage.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.storage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        let mut witnessed = self.witnessed.lock().unwrap_or_else(|p| p.into_inner());
        witnessed.clear();
        witnessed.extend(predecessor);
    }
}

/// The predecessor's last append-entries counts only when it is this
/// recent: an election follows a leader's silence within a few election
/// timeouts, and an older contact says nothing about the gateway now.
const PREDECESSOR_CONTACT_MAX_AGE: Duration = Duration::from_secs(5);

/// How often the leader looks at the table.
const CHECK_EVERY: Duration = Duration::from_millis(100);

/// status, reason, runtime_down
type Wanted = (NodeStatus, Option<String>, bool);

/// The pure rule: what a gateway's status should be, given when we last
/// heard from it and what its runtime said.
pub fn wanted_status(
    silent_for: Duration,
    grace: Duration,
    runtime_problem: Option<String>,
) -> Wanted {
    if silent_for > grace {
        let reason = format!("no heartbeat for {}", format_duration(grace));
        (NodeStatus::NotReady, Some(reason), false)
    } else if let Some(problem) = runtime_problem {
        let reason = format!("container runtime unavailable: {problem}");
        (NodeStatus::NotReady, Some(reason), true)
    } else {
        (NodeStatus::Ready, None, false)
    }
}

fn transition(
    node: &Node,
    liveness: &Liveness,
    since: Instant,
    grace: Duration,
) -> Option<(NodeId, Wanted)> {
    if !matches!(
        node.status,
        NodeStatus::Ready | NodeStatus::NotReady | NodeStatus::Draining
    ) {
        return None;
    }
    // Counted from this leader's first moment (a fresh grace period), or,
    // for the predecessor, from the last append-entries it sent here.
    let counted_from = liveness.witnessed_since(node.id).unwrap_or(since);
    let (seen, problem) = match liveness.last_seen(node.id) {
        Some((at, problem)) => (at.max(counted_from), problem),
        None => (counted_from, None),
    };
    let mut wanted = wanted_status(seen.elapsed(), grace, problem);
    // The state machine shows a draining gateway that heartbeats as Draining.
    if wanted.0 == NodeStatus::Ready && node.draining {
        wanted.0 = NodeStatus::Draining;
    }
    let current = (node.status, node.status_reason.clone(), node.runtime_down);
    (current != wanted).then_some((node.id, wanted))
}

/// Leader side: turns silence into NotReady and a heartbeat back into Ready.
pub async fn run_leader(
    cluster: Cluster,
    liveness: Arc<Liveness>,
    health: Arc<RuntimeHealth>,
    shutdown: CancellationToken,
) {
    let mut leading_since: Option<Instant> = None;
    let mut ticker = tokio::time::interval(CHECK_EVERY);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        if !cluster.is_leader() {
            leading_since = None;
            continue;
        }
        let since = *leading_since.get_or_insert_with(|| {
            let now = Instant::now();
            let predecessor = cluster.last_leader_contact().filter(|(leader, at)| {
                *leader != cluster.id()
                    && now.saturating_duration_since(*at) <= PREDECESSOR_CONTACT_MAX_AGE
            });
            liveness.reset(predecessor);
            match predecessor {
                Some((leader, at)) => tracing::info!(
                    predecessor = leader,
                    silent_ms = now.saturating_duration_since(at).as_millis() as u64,
                    "leading: every gateway gets a fresh grace period but the leader before"
                ),
                None => tracing::info!("leading: every gateway gets a fresh grace period"),
            }
            now
        });
        liveness.record(cluster.id(), health.problem());
        let transitions: Vec<(NodeId, Wanted)> = {
            let applied = cluster.state().read();
            let grace = applied.state.meta.settings.node_grace.0;
            let nodes = applied.state.nodes.values();
            nodes
                .filter_map(|node| transition(node, &liveness, since, grace))
                .collect()
        };
        for (node, (status, reason, runtime_down)) in transitions {
            tracing::info!(node, %status, reason = reason.as_deref().unwrap_or(""), "gateway liveness changed");
            let command = Command::SetNodeStatus {
                node,
                status,
                reason,
                runtime_down,
            };
            if let Err(e) = cluster.write_if_leader(command).await {
                tracing::warn!(node, error = %e, "could not commit a liveness transition");
            }
        }
    }
}

/// Every gateway: tells the leader it is alive (and how its runtime is).
pub async fn run_heartbeats(
    cluster: Cluster,
    liveness: Arc<Liveness>,
    health: Arc<RuntimeHealth>,
    shutdown: CancellationToken,
) {
    loop {
        let interval = cluster
            .state()
            .read()
            .state
            .meta
            .settings
            .heartbeat_interval
            .0;
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval.max(Duration::from_millis(50))) => {}
        }
        let Some((leader, addr)) = cluster.leader() else {
            continue;
        };
        if leader == cluster.id() {
            liveness.record(leader, health.problem());
            liveness.record_usage(leader, health.usage());
            let alone = cluster.voters().into_iter().eq([cluster.id()]);
            if alone {
                cluster.note_quorum_contact(0);
            } else if cluster.leader_has_quorum() {
                let acked_ms_ago = cluster.metrics().millis_since_quorum_ack.unwrap_or(0);
                cluster.note_own_quorum_ack(acked_ms_ago);
            }
            continue;
        }
        let applied_index = cluster
            .state()
            .read()
            .last_applied
            .map(|l| l.index)
            .unwrap_or(0);
        let request = HeartbeatRequest {
            cluster_id: cluster.cluster_id().to_string(),
            node_id: cluster.id(),
            runtime_problem: health.problem().unwrap_or_default(),
            applied_index,
            usage: health.usage(),
            storage_problem: cluster
                .disk_space()
                .check()
                .err()
                .map(|low| low.to_string())
                .unwrap_or_default(),
        };
        match tokio::time::timeout(
            crate::control::fencing::HEARTBEAT_TIMEOUT,
            cluster.transport().heartbeat(leader, &addr, request),
        )
        .await
        {
            Ok(Ok(reply)) => {
                if reply.accepted {
                    cluster.note_quorum_contact(reply.applied_index);
                }
            }
            Ok(Err(error)) => {
                tracing::debug!(%addr, %error, "heartbeat refused")
            }
            Err(_) => tracing::debug!(%addr, "heartbeat timed out"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_beats_runtime_state_and_both_give_reasons() {
        let grace = Duration::from_secs(1);
        let ok = wanted_status(Duration::from_millis(200), grace, None);
        assert_eq!(ok, (NodeStatus::Ready, None, false));
        let down = wanted_status(
            Duration::from_millis(200),
            grace,
            Some("connection refused".into()),
        );
        assert_eq!(down.0, NodeStatus::NotReady);
        assert!(down
            .1
            .as_deref()
            .is_some_and(|r| r.contains("connection refused")));
        assert!(down.2);
        let silent = wanted_status(Duration::from_secs(2), grace, Some("x".into()));
        assert_eq!(
            silent,
            (
                NodeStatus::NotReady,
                Some("no heartbeat for 1s".into()),
                false
            )
        );
    }

    fn ready_node(id: NodeId) -> Node {
        Node {
            id,
            name: format!("gw-{id}"),
            address: "127.0.0.1:1".into(),
            labels: Default::default(),
            capacity: Default::default(),
            devices: Default::default(),
            status: NodeStatus::Ready,
            status_reason: None,
            cordoned: false,
            runtime_down: false,
            draining: false,
            since_ms: 0,
            joined_ms: 0,
            tls: None,
        }
    }

    #[test]
    fn a_new_leader_judges_its_predecessor_by_the_election_not_a_fresh_grace() {
        let grace = Duration::from_secs(1);
        let now = Instant::now();
        let Some(last_append) = now.checked_sub(Duration::from_millis(1_100)) else {
            return; // a clock this young cannot express the past
        };
        let liveness = Liveness::default();
        liveness.reset(Some((1, last_append)));

        // The predecessor fell silent 1.1 s ago: NotReady on the first look.
        let predecessor = transition(&ready_node(1), &liveness, now, grace);
        assert_eq!(
            predecessor.map(|(id, w)| (id, w.0)),
            Some((1, NodeStatus::NotReady))
        );
        // Any other gateway gets its full grace from the first moment.
        assert_eq!(transition(&ready_node(2), &liveness, now, grace), None);

        // The predecessor heartbeats the new leader: Ready again.
        liveness.record(1, None);
        assert_eq!(transition(&ready_node(1), &liveness, now, grace), None);

        // The next leader forgets it.
        liveness.reset(None);
        assert_eq!(transition(&ready_node(1), &liveness, now, grace), None);
    }
}
