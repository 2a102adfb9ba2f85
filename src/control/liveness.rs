//! Liveness: gateways heartbeat the leader; the leader keeps when it last
//! heard from each in memory (soft state) and commits only transitions
//! (Ready -> NotReady -> Ready) through Raft. A new leader starts with an
//! empty table and gives every gateway a full grace period.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gantry_proto::v1::HeartbeatRequest;
use tokio_util::sync::CancellationToken;

use crate::cluster::{Cluster, NodeId};
use crate::state::quantity::format_duration;
use crate::state::{Command, NodeStatus};

/// When the leader last heard from each gateway.
#[derive(Default)]
pub struct Liveness {
    seen: Mutex<HashMap<NodeId, Instant>>,
}

impl Liveness {
    pub fn record(&self, node: NodeId) {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node, Instant::now());
    }

    fn last_seen(&self, node: NodeId) -> Option<Instant> {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&node)
            .copied()
    }

    fn reset(&self) {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

/// How often the leader looks at the table.
const CHECK_EVERY: Duration = Duration::from_millis(100);

/// Leader side: turns silence into NotReady and a heartbeat back into Ready.
pub async fn run_leader(cluster: Cluster, liveness: Arc<Liveness>, shutdown: CancellationToken) {
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
            liveness.reset();
            tracing::info!("leading: every gateway gets a fresh grace period");
            Instant::now()
        });
        liveness.record(cluster.id());
        let transitions = {
            let applied = cluster.state().read();
            let grace = applied.state.meta.settings.node_grace.0;
            applied
                .state
                .nodes
                .values()
                .filter_map(|node| {
                    let seen = liveness.last_seen(node.id).map_or(since, |s| s.max(since));
                    let alive = seen.elapsed() <= grace;
                    match (node.status, alive) {
                        (NodeStatus::Ready | NodeStatus::Draining, false) => Some((
                            node.id,
                            NodeStatus::NotReady,
                            Some(format!("no heartbeat for {}", format_duration(grace))),
                        )),
                        // The state machine turns Ready into Draining for a draining gateway.
                        (NodeStatus::NotReady, true) => Some((node.id, NodeStatus::Ready, None)),
                        _ => None,
                    }
                })
                .collect::<Vec<_>>()
        };
        for (node, status, reason) in transitions {
            tracing::info!(node, %status, reason = reason.as_deref().unwrap_or(""), "gateway liveness changed");
            if let Err(e) = cluster
                .write(Command::SetNodeStatus {
                    node,
                    status,
                    reason,
                })
                .await
            {
                tracing::warn!(node, error = %e, "could not commit a liveness transition");
            }
        }
    }
}

/// Every gateway: tells the leader it is alive.
pub async fn run_heartbeats(
    cluster: Cluster,
    liveness: Arc<Liveness>,
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
            liveness.record(leader);
            continue;
        }
        let Ok(mut client) = cluster.peers().client(&addr) else {
            continue;
        };
        let request = HeartbeatRequest {
            cluster_id: cluster.cluster_id().to_string(),
            node_id: cluster.id(),
        };
        match tokio::time::timeout(Duration::from_secs(1), client.heartbeat(request)).await {
            Ok(Ok(_)) => {}
            Ok(Err(status)) => {
                tracing::debug!(%addr, error = %status.message(), "heartbeat refused")
            }
            Err(_) => tracing::debug!(%addr, "heartbeat timed out"),
        }
    }
}
