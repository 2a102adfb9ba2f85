//! The scheduling driver: on the leader, whenever the state changes (and on
//! a slow tick), it finds the instances that need a home, asks the pure
//! `gantry-scheduler` for a plan, and commits the whole plan as one Raft
//! write. Refusal reasons are committed too, so `describe` can show them on
//! every gateway.

use std::collections::BTreeMap;
use std::time::Duration;

use gantry_scheduler as sched;
use tokio_util::sync::CancellationToken;

use crate::cluster::node::now_ms;
use crate::cluster::Cluster;
use crate::state::spec::{PlacementStrategy, Spread};
use crate::state::{Command, Instance, InstanceKey, NodeStatus, PlanRecord, State, Workload};

/// Even with no change, look again this often (time-based rules such as
/// `reschedule_after` need it).
const TICK: Duration = Duration::from_secs(1);

/// How long instances stay on a gateway whose container runtime is down
/// (while the gateway itself still heartbeats) before they move.
pub const RUNTIME_OUTAGE_GRACE_MS: u64 = 60_000;

fn requirements(workload: &Workload) -> sched::WorkloadRequirements {
    let spec = &workload.spec;
    sched::WorkloadRequirements {
        name: spec.name.clone(),
        requests: sched::Resources {
            cpu_millis: spec.cpu_millis(),
            memory_bytes: spec.memory_bytes(),
        },
        node_selector: spec.node_selector.clone(),
        devices: spec.devices.clone(),
        spread_node: spec.spread == Some(Spread::Node),
        placement: match spec.placement {
            PlacementStrategy::Spread => sched::Placement::Spread,
            PlacementStrategy::Binpack => sched::Placement::Binpack,
        },
        priority: spec.priority,
    }
}

/// Whether an instance assigned to a gateway that is no longer Ready has
/// waited long enough (`on_disconnect.reschedule_after`, default 0) to move.
fn lost_long_enough(state: &State, instance: &Instance, now: u64) -> bool {
    let Some(node) = instance.node.and_then(|id| state.nodes.get(&id)) else {
        return true;
    };
    match node.status {
        NodeStatus::Ready | NodeStatus::Draining => false,
        NodeStatus::Left => true,
        NodeStatus::NotReady => {
            let configured = state
                .workloads
                .get(&instance.workload)
                .and_then(|w| w.spec.on_disconnect)
                .and_then(|d| d.reschedule_after)
                .map(|d| d.0.as_millis() as u64)
                .unwrap_or(0);
            // A runtime outage (the gateway still heartbeats) usually ends
            // with the containers adopted: do not duplicate them at once.
            let wait = if node.runtime_down {
                configured.max(RUNTIME_OUTAGE_GRACE_MS)
            } else {
                configured
            };
            now.saturating_sub(node.since_ms) >= wait
        }
    }
}

/// The pure part: the state as the scheduler sees it, and its plan, as the
/// record to commit (None when there is nothing new to say).
pub fn plan_for(state: &State, now: u64) -> Option<PlanRecord> {
    let nodes: Vec<sched::NodeView> = state
        .nodes
        .values()
        .filter(|n| n.status != NodeStatus::Left)
        .map(|n| sched::NodeView {
            id: n.id,
            name: n.name.clone(),
            ready: n.status == NodeStatus::Ready,
            cordoned: n.cordoned,
            labels: n.labels.clone(),
            devices: n.devices.clone(),
            allocatable: sched::Resources {
                cpu_millis: n.capacity.cpu_millis,
                memory_bytes: n.capacity.memory_bytes,
            },
        })
        .collect();
    let requirements: BTreeMap<&str, sched::WorkloadRequirements> = state
        .workloads
        .iter()
        .map(|(name, w)| (name.as_str(), requirements(w)))
        .collect();
    let mut running = Vec::new();
    let mut pending = Vec::new();
    for instance in state.instances.values() {
        let Some(req) = requirements.get(instance.workload.as_str()) else {
            continue;
        };
        let needs_home = instance.node.is_none() || lost_long_enough(state, instance, now);
        if needs_home {
            pending.push(sched::PendingInstance {
                workload: req.clone(),
                replica: instance.replica,
                previous_node: instance.node.or(instance.previous_node),
            });
        } else if let Some(node) = instance.node {
            running.push(sched::RunningInstance {
                instance: sched::InstanceRef {
                    workload: instance.workload.clone(),
                    replica: instance.replica,
                },
                node,
                requests: req.requests,
                priority: req.priority,
            });
        }
    }
    if pending.is_empty() {
        return None;
    }
    let plan = sched::plan(&sched::ClusterView { nodes, running }, &pending);
    let key = |i: &sched::InstanceRef| InstanceKey {
        workload: i.workload.clone(),
        replica: i.replica,
    };
    let record = PlanRecord {
        placements: plan
            .placements
            .iter()
            .map(|a| (key(&a.instance), a.node))
            .collect(),
        evictions: plan
            .evictions
            .iter()
            .map(|e| (key(&e.instance), e.reason.clone()))
            .collect(),
        unplaceable: plan
            .unplaceable
            .iter()
            .map(|u| (key(&u.instance), u.reason.to_string()))
            .filter(|(k, reason)| {
                state
                    .instances
                    .get(k)
                    .is_some_and(|i| i.reason.as_deref() != Some(reason))
            })
            .collect(),
    };
    let nothing_new = record.placements.is_empty()
        && record.evictions.is_empty()
        && record.unplaceable.is_empty();
    (!nothing_new).then_some(record)
}

pub async fn run(cluster: Cluster, shutdown: CancellationToken) {
    let mut applied = cluster.state().subscribe();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = applied.changed() => {}
            _ = tokio::time::sleep(TICK) => {}
        }
        if !cluster.is_leader() {
            continue;
        }
        let record = {
            let guard = cluster.state().read();
            plan_for(&guard.state, now_ms())
        };
        let Some(plan) = record else { continue };
        tracing::info!(
            placements = plan.placements.len(),
            evictions = plan.evictions.len(),
            unplaceable = plan.unplaceable.len(),
            "committing a scheduling plan"
        );
        if let Err(e) = cluster.write(Command::ApplyPlan { plan }).await {
            tracing::warn!(error = %e, "could not commit the scheduling plan");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::spec::parse_manifest;
    use crate::state::{Capacity, ChangeSet, ClusterSettings, Request, Source};

    fn cluster_state() -> State {
        let mut state = State::default();
        let mut apply = |command| {
            state.apply(&Request::new(1, command), &mut ChangeSet::new());
        };
        apply(Command::InitCluster {
            cluster_id: "c".into(),
            join_secret_sha256: "0".into(),
            settings: ClusterSettings::default(),
        });
        for (name, zigbee) in [("a", true), ("b", false)] {
            let mut labels = BTreeMap::new();
            if zigbee {
                labels.insert("zigbee".to_string(), "true".to_string());
            }
            apply(Command::RegisterNode {
                name: name.into(),
                address: format!("127.0.0.1:1{name}"),
                labels,
                capacity: Capacity {
                    cpu_millis: 1000,
                    memory_bytes: 512 << 20,
                },
                devices: Default::default(),
            });
        }
        state
    }

    fn apply_plan(state: &mut State, plan: PlanRecord) {
        state.apply(
            &Request::new(2, Command::ApplyPlan { plan }),
            &mut ChangeSet::new(),
        );
    }

    #[test]
    fn places_by_selector_and_explains_the_impossible() {
        let mut state = cluster_state();
        let manifest = "name: hub\nimage: i\nnode_selector: {zigbee: \"true\"}\n---\nname: big\nimage: i\nresources: {memory: 4Gi}\n";
        let workloads = parse_manifest(manifest).unwrap();
        state.apply(
            &Request::new(
                2,
                Command::ApplyWorkloads {
                    workloads,
                    source: Source::Local,
                },
            ),
            &mut ChangeSet::new(),
        );
        let plan = plan_for(&state, 10).expect("a plan");
        assert_eq!(
            plan.placements,
            vec![(
                InstanceKey {
                    workload: "hub".into(),
                    replica: 0
                },
                1
            )]
        );
        assert_eq!(plan.unplaceable.len(), 1);
        assert!(
            plan.unplaceable[0].1.contains("0/2 gateways fit"),
            "{}",
            plan.unplaceable[0].1
        );
        apply_plan(&mut state, plan);
        // Nothing new to say: no second write.
        assert_eq!(plan_for(&state, 11), None);
    }

    #[test]
    fn instances_on_a_lost_gateway_move() {
        let mut state = cluster_state();
        let workloads = parse_manifest("name: web\nimage: i\n").unwrap();
        state.apply(
            &Request::new(
                2,
                Command::ApplyWorkloads {
                    workloads,
                    source: Source::Local,
                },
            ),
            &mut ChangeSet::new(),
        );
        let plan = plan_for(&state, 10).unwrap();
        let first = plan.placements[0].1;
        apply_plan(&mut state, plan);
        let down = Command::SetNodeStatus {
            node: first,
            status: NodeStatus::NotReady,
            reason: None,
            runtime_down: false,
        };
        state.apply(&Request::new(20, down), &mut ChangeSet::new());
        let plan = plan_for(&state, 30).unwrap();
        assert_eq!(plan.placements.len(), 1);
        assert_ne!(plan.placements[0].1, first);
    }
}
