//! The scheduling driver: on the leader, whenever the state changes (and on
//! a slow tick), it finds the instances that need a home, asks the pure
//! `gantry-scheduler` for a plan, and commits the whole plan as one Raft
//! write. Refusal reasons are committed too, so `describe` can show them on
//! every gateway. It also moves instances off draining gateways, holds
//! singletons back until their old copy has surely stopped (`fencing`),
//! and ignores NotReady verdicts from its own first moments as leader.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use gantry_scheduler as sched;
use tokio_util::sync::CancellationToken;

use super::fencing;
use crate::cluster::Cluster;
use crate::state::quantity::format_duration;
use crate::state::spec::{PlacementStrategy, Spread};
use crate::state::{
    Command, Instance, InstanceKey, NodeId, NodeStatus, PlanRecord, State, Workload,
};

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

/// The clock a scheduling round sees: now, since when this gateway has
/// led (0 in dry runs and tests: no settling window), and, on the leader,
/// how long each lost gateway has been silent by this leader's own
/// monotonic clock (`LostClock`). Fences and `reschedule_after` use that
/// measure; the wall-clock `since_ms` of a transition is only the fallback
/// for dry runs (`describe`, drain progress), so that a wall clock stepped
/// by NTP, or another gateway's clock, never decides when a second copy of
/// a singleton may start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Timing {
    pub now_ms: u64,
    pub leading_since_ms: u64,
    /// None in dry runs.
    pub lost_for: Option<BTreeMap<NodeId, Duration>>,
    /// Gateways that heartbeat but cannot store the log (data dir below
    /// the reserve), and for how long the leader has heard so.
    pub cannot_store: BTreeMap<NodeId, Duration>,
}

/// One round's outcome: what to commit, and the instances that must leave
/// their gateway but cannot yet, with why (drain progress shows them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Round {
    pub record: PlanRecord,
    pub stuck: Vec<(InstanceKey, String)>,
}

/// Since when a gateway counts as lost (dry runs only): when it went
/// NotReady (or left), but never earlier than the end of this leader's
/// settling window (see `fencing::leader_settle`).
fn lost_since(state: &State, node: &crate::state::Node, timing: &Timing) -> u64 {
    if timing.leading_since_ms == 0 {
        return node.since_ms;
    }
    let settle = fencing::leader_settle(&state.meta.settings).as_millis() as u64;
    node.since_ms.max(timing.leading_since_ms + settle)
}

/// How long a lost gateway has been lost, as this round knows it (None:
/// not counting yet, inside a new leader's settling window).
fn lost_for(state: &State, node: &crate::state::Node, timing: &Timing) -> Option<Duration> {
    if let Some(measured) = &timing.lost_for {
        return measured.get(&node.id).copied();
    }
    let since = lost_since(state, node, timing);
    (timing.now_ms >= since).then(|| Duration::from_millis(timing.now_ms - since))
}

/// Whether a lost gateway has been lost for `wait` already.
fn waited(state: &State, node: &crate::state::Node, wait: Duration, timing: &Timing) -> bool {
    lost_for(state, node, timing).is_some_and(|d| d >= wait)
}

/// Whether `key` may be placed, as far as copies of a deleted singleton of
/// that name go: Ok with the retired copies that have surely stopped (their
/// gateway is gone, or was silent for the copy's fence), or Err with why it
/// waits: a copy whose gateway has not confirmed its stop yet.
fn retired_copies(
    state: &State,
    key: &InstanceKey,
    timing: &Timing,
) -> Result<Vec<(InstanceKey, NodeId, u64)>, String> {
    let mut gone = Vec::new();
    for copy in state.retired_copies(key) {
        let Some(id) = copy.node else { continue };
        let Some(node) = state.nodes.get(&id) else {
            gone.push((key.clone(), id, copy.updated_ms));
            continue;
        };
        let silent = is_lost(node.status) && !node.runtime_down;
        let fenced_out =
            silent && fence_of(copy, state).is_some_and(|fence| waited(state, node, fence, timing));
        if !fenced_out {
            return Err(format!(
                "singleton: waits for gateway {} to report the copy of the deleted workload stopped",
                node.name
            ));
        }
        gone.push((key.clone(), id, copy.updated_ms));
    }
    Ok(gone)
}

/// What the driver does with one instance this round.
enum Fate {
    /// Stays where it is (counts against its gateway's capacity).
    Stays(NodeId),
    /// Needs a home; `moving` when it still has one it must leave.
    Pending { moving: bool },
    /// Must leave but may not yet (singleton fence, old copy not stopped).
    Waits(String),
    /// Must leave, and its gateway must stop it first (`stopping`), then
    /// confirm; until then it waits, for the reason given.
    Stop(String),
}

/// How long after its gateway went silent a singleton placed with the
/// isolation limit `fence_ms` may start elsewhere; None: never by time (the
/// placement has no fence its gateway acknowledged: `singleton: true` was
/// turned on while it ran there).
fn fence_of(instance: &Instance, state: &State) -> Option<Duration> {
    instance
        .fence_ms
        .map(|ms| fencing::singleton_fence_ms(ms, &state.meta.settings))
}

fn fate(state: &State, instance: &Instance, workload: &Workload, timing: &Timing) -> Fate {
    let spec = &workload.spec;
    let reschedule = fencing::reschedule_after(spec);
    let Some(node) = instance.node.and_then(|id| state.nodes.get(&id)) else {
        // Unassigned. A singleton whose last gateway was lost waits out the
        // fence first: that gateway may still run it in isolation.
        let previous = instance.previous_node.and_then(|id| state.nodes.get(&id));
        if let Some(p) = previous.filter(|p| spec.singleton && is_lost(p.status)) {
            let Some(fence) = fence_of(instance, state) else {
                return Fate::Waits(format!(
                    "singleton: gateway {} may still run its copy (it was placed before singleton was set); waits for it to come back",
                    p.name
                ));
            };
            if !waited(state, p, fence, timing) {
                return Fate::Waits(format!(
                    "singleton: waits {} after gateway {} was lost, until its copy there has surely stopped",
                    format_duration(fence),
                    p.name
                ));
            }
        }
        return Fate::Pending { moving: false };
    };
    // A copy asked to stop moves once its gateway confirmed the stop; a
    // gateway that went silent meanwhile is fenced like any lost one.
    if instance.stopping {
        if instance.stopped {
            return Fate::Pending { moving: true };
        }
        let silent = is_lost(node.status) && !node.runtime_down;
        let fenced_out = silent
            && fence_of(instance, state).is_some_and(|fence| waited(state, node, fence, timing));
        if fenced_out {
            return Fate::Pending { moving: true };
        }
        return Fate::Waits(format!(
            "singleton: waits for gateway {} to report its copy stopped",
            node.name
        ));
    }
    // A gateway that heartbeats but cannot store the log cannot learn of
    // a move, and no contact counts for it meanwhile (the leader answers
    // its heartbeats unaccepted), so its fence kills every copy with an
    // isolation limit by that limit. Those copies move once their fence
    // has passed since the leader first heard of the problem, as from a
    // silent gateway; everything else stays there, running.
    if let Some(out) = fenced_out_by_storage(state, node, instance, timing) {
        return if out {
            Fate::Pending { moving: true }
        } else {
            Fate::Stays(node.id)
        };
    }
    match node.status {
        NodeStatus::NotReady if node.runtime_down => {
            // A runtime outage (the gateway still heartbeats) usually ends
            // with the containers adopted: do not duplicate them early, and a
            // singleton never by time: its gateway kills its copy and says so.
            let grace = Duration::from_millis(RUNTIME_OUTAGE_GRACE_MS);
            if !waited(state, node, grace.max(reschedule), timing) {
                Fate::Stays(node.id)
            } else if spec.singleton && instance.may_be_running() {
                Fate::Stop(format!(
                    "singleton: gateway {}'s container runtime is down; waits for it to kill its copy and report it",
                    node.name
                ))
            } else {
                Fate::Pending { moving: true }
            }
        }
        NodeStatus::NotReady | NodeStatus::Left => {
            if !spec.singleton {
                return if waited(state, node, reschedule, timing) {
                    Fate::Pending { moving: true }
                } else {
                    Fate::Stays(node.id)
                };
            }
            match fence_of(instance, state) {
                None if instance.may_be_running() => Fate::Waits(format!(
                    "singleton: gateway {} may run its copy with no isolation limit (placed before singleton was set); waits for it to come back",
                    node.name
                )),
                None => Fate::Pending { moving: true },
                Some(fence) if waited(state, node, fence.max(reschedule), timing) => {
                    Fate::Pending { moving: true }
                }
                Some(_) => Fate::Stays(node.id),
            }
        }
        _ if node.draining => {
            if spec.singleton && instance.may_be_running() {
                Fate::Stop(format!(
                    "singleton: waits for gateway {} to report its copy stopped",
                    node.name
                ))
            } else {
                Fate::Pending { moving: true }
            }
        }
        _ => Fate::Stays(node.id),
    }
}

/// For a copy with an isolation limit on a gateway that heartbeats but
/// cannot store the log: whether its fence has passed since the leader
/// first heard so (None: not such a copy, or not such a gateway).
fn fenced_out_by_storage(
    state: &State,
    node: &crate::state::Node,
    instance: &Instance,
    timing: &Timing,
) -> Option<bool> {
    if is_lost(node.status) {
        return None;
    }
    let lagging = timing.cannot_store.get(&node.id)?;
    let fence = fence_of(instance, state)?;
    let spec = &state.workloads.get(&instance.workload)?.spec;
    Some(*lagging >= fence.max(fencing::reschedule_after(spec)))
}

fn is_lost(status: NodeStatus) -> bool {
    matches!(status, NodeStatus::NotReady | NodeStatus::Left)
}

/// The pure part: the state as the scheduler sees it, and its plan, as the
/// record to commit (None when there is nothing new to say).
pub fn plan_for(state: &State, now: u64) -> Option<PlanRecord> {
    let round = round(
        state,
        &Timing {
            now_ms: now,
            ..Timing::default()
        },
    );
    worth_committing(&round.record).then_some(round.record)
}

fn worth_committing(record: &PlanRecord) -> bool {
    !(record.placements.is_empty()
        && record.evictions.is_empty()
        && record.unplaceable.is_empty()
        && record.stop.is_empty()
        && record.drained.is_empty()
        && record.retired_gone.is_empty())
}

/// Why each instance still on `node` cannot leave it yet (drain progress),
/// as a dry run on this replica.
pub fn drain_blockers(state: &State, node: NodeId, now: u64) -> Vec<(InstanceKey, String)> {
    let round = round(
        state,
        &Timing {
            now_ms: now,
            ..Timing::default()
        },
    );
    round
        .stuck
        .into_iter()
        .filter(|(k, _)| state.instances.get(k).and_then(|i| i.node) == Some(node))
        .collect()
}

/// One scheduling round over the whole state.
pub fn round(state: &State, timing: &Timing) -> Round {
    let nodes: Vec<sched::NodeView> = state
        .nodes
        .values()
        .filter(|n| n.status != NodeStatus::Left)
        .map(|n| sched::NodeView {
            id: n.id,
            name: n.name.clone(),
            // One that cannot store the log would never learn of a new copy.
            ready: n.status == NodeStatus::Ready && !timing.cannot_store.contains_key(&n.id),
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
    let mut out = Round::default();
    let mut running = Vec::new();
    let mut pending = Vec::new();
    let mut moving = BTreeSet::new();
    for instance in state.instances.values() {
        let (Some(req), Some(workload)) = (
            requirements.get(instance.workload.as_str()),
            state.workloads.get(&instance.workload),
        ) else {
            continue;
        };
        if instance.node.is_none() {
            match retired_copies(state, &instance.key(), timing) {
                Ok(gone) => out.record.retired_gone.extend(gone),
                Err(reason) => {
                    if instance.reason.as_deref() != Some(reason.as_str()) {
                        out.record.unplaceable.push((instance.key(), reason));
                    }
                    continue;
                }
            }
        }
        match fate(state, instance, workload, timing) {
            Fate::Pending { moving: m } => {
                if m {
                    moving.insert(instance.key());
                    let node = instance.node.and_then(|id| state.nodes.get(&id));
                    if node.is_some_and(|node| {
                        fenced_out_by_storage(state, node, instance, timing) == Some(true)
                    }) {
                        out.record.fenced_out.push(instance.key());
                    }
                }
                pending.push(sched::PendingInstance {
                    workload: req.clone(),
                    replica: instance.replica,
                    previous_node: instance.node.or(instance.previous_node),
                });
            }
            Fate::Stop(reason) => {
                if let Some(node) = instance.node {
                    if !instance.stopping {
                        out.record.stop.push(instance.key());
                    }
                    running.push(running_ref(instance, node, req));
                    out.stuck.push((instance.key(), reason));
                }
            }
            Fate::Waits(reason) => {
                if let Some(node) = instance.node {
                    running.push(running_ref(instance, node, req));
                    out.stuck.push((instance.key(), reason));
                } else if instance.reason.as_deref() != Some(reason.as_str()) {
                    out.record.unplaceable.push((instance.key(), reason));
                }
            }
            Fate::Stays(node) => running.push(running_ref(instance, node, req)),
        }
    }
    for node in state.nodes.values().filter(|n| n.draining) {
        if !state.instances.values().any(|i| i.node == Some(node.id)) {
            out.record.drained.push(node.id);
        }
    }
    if pending.is_empty() {
        return out;
    }
    let plan = sched::plan(&sched::ClusterView { nodes, running }, &pending);
    let key = |i: &sched::InstanceRef| InstanceKey {
        workload: i.workload.clone(),
        replica: i.replica,
    };
    // Gateways where a preempted singleton must stop before its room is
    // free: what the plan puts there waits (the state machine would refuse
    // it at commit, since the stopping copy still holds its requests).
    let mut held = BTreeSet::new();
    for e in &plan.evictions {
        let k = key(&e.instance);
        let victim = state.instances.get(&k);
        let singleton = state
            .workloads
            .get(&k.workload)
            .is_some_and(|w| w.spec.singleton);
        if singleton && victim.is_some_and(Instance::may_be_running) {
            // A preempted singleton leaves the drain way: its gateway stops
            // it and confirms before it is placed again.
            if victim.is_some_and(|v| !v.stopping) {
                out.record.stop.push(k.clone());
            }
            held.insert(e.node);
            out.stuck.push((
                k,
                format!(
                    "singleton: preempted ({}); waits for its copy to stop",
                    e.reason
                ),
            ));
        } else {
            out.record.evictions.push((k, e.reason.clone()));
        }
    }
    for a in &plan.placements {
        let k = key(&a.instance);
        if held.contains(&a.node) {
            out.stuck.push((
                k,
                "waits for a preempted singleton to stop and free its room".to_string(),
            ));
        } else {
            out.record.placements.push((k, a.node));
        }
    }
    for u in &plan.unplaceable {
        let k = key(&u.instance);
        let reason = u.reason.to_string();
        if moving.contains(&k) {
            // Still assigned: the reason is progress, not state.
            out.stuck.push((k, format!("has no other home: {reason}")));
        } else if state
            .instances
            .get(&k)
            .is_some_and(|i| i.reason.as_deref() != Some(reason.as_str()))
        {
            out.record.unplaceable.push((k, reason));
        }
    }
    out
}

fn running_ref(
    instance: &Instance,
    node: NodeId,
    req: &sched::WorkloadRequirements,
) -> sched::RunningInstance {
    sched::RunningInstance {
        instance: sched::InstanceRef {
            workload: instance.workload.clone(),
            replica: instance.replica,
        },
        node,
        requests: req.requests,
        priority: req.priority,
    }
}

/// The leader's own monotonic record of since when each gateway has been
/// lost: silent (NotReady without a runtime problem, or Left) or with its
/// runtime down (counted apart: a gateway that stops heartbeating after a
/// runtime outage starts a new count). A gateway already lost when this
/// gateway began to lead counts from the end of its settling window.
#[derive(Default)]
pub struct LostClock {
    lost_at: BTreeMap<NodeId, (tokio::time::Instant, bool)>,
}

impl LostClock {
    pub fn observe(
        &mut self,
        state: &State,
        leading_since: tokio::time::Instant,
    ) -> BTreeMap<NodeId, Duration> {
        let now = tokio::time::Instant::now();
        let settle = fencing::leader_settle(&state.meta.settings);
        let floor = leading_since + settle;
        let lost: BTreeMap<NodeId, bool> = state
            .nodes
            .values()
            .filter(|n| is_lost(n.status))
            .map(|n| (n.id, n.runtime_down && n.status == NodeStatus::NotReady))
            .collect();
        self.lost_at
            .retain(|id, (_, runtime)| lost.get(id) == Some(runtime));
        for (id, runtime) in &lost {
            self.lost_at
                .entry(*id)
                .or_insert((now.max(floor), *runtime));
        }
        self.lost_at
            .iter()
            .map(|(id, (at, _))| (*id, now.saturating_duration_since(*at)))
            .collect()
    }
}

pub async fn run(
    cluster: Cluster,
    liveness: std::sync::Arc<crate::control::liveness::Liveness>,
    shutdown: CancellationToken,
) {
    let mut applied = cluster.state().subscribe();
    let mut leading_since: Option<(u64, tokio::time::Instant)> = None;
    let mut clock = LostClock::default();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = applied.changed() => {
                // The state machine is gone (its Raft core stopped): waiting
                // on it again would return at once, forever.
                if changed.is_err() {
                    return;
                }
            }
            _ = tokio::time::sleep(TICK) => {}
        }
        if !cluster.is_leader() {
            leading_since = None;
            clock = LostClock::default();
            continue;
        }
        let (since, since_instant) =
            *leading_since.get_or_insert_with(|| (cluster.now_ms(), tokio::time::Instant::now()));
        let started = std::time::Instant::now();
        let record = {
            let guard = cluster.state().read();
            let timing = Timing {
                now_ms: cluster.now_ms(),
                leading_since_ms: since,
                lost_for: Some(clock.observe(&guard.state, since_instant)),
                cannot_store: liveness.cannot_store(),
            };
            round(&guard.state, &timing).record
        };
        cluster
            .telemetry()
            .scheduler_round
            .observe(started.elapsed().as_secs_f64());
        if !worth_committing(&record) {
            continue;
        }
        let plan = record;
        tracing::info!(
            placements = plan.placements.len(),
            evictions = plan.evictions.len(),
            unplaceable = plan.unplaceable.len(),
            stop = plan.stop.len(),
            drained = plan.drained.len(),
            "committing a scheduling plan"
        );
        if let Err(e) = cluster.write_if_leader(Command::ApplyPlan { plan }).await {
            tracing::warn!(error = %e, "could not commit the scheduling plan");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::spec::parse_manifest;
    use crate::state::{Capacity, ChangeSet, ClusterSettings, InstanceState, Request, Source};

    fn cluster_state() -> State {
        let mut state = State::default();
        let mut apply = |command| {
            state.apply(&Request::new(1, command), &mut ChangeSet::new());
        };
        apply(Command::InitCluster {
            cluster_id: "c".into(),
            settings: ClusterSettings::default(),
            pki: crate::state::trust::fixtures::pki(),
            join_token: crate::state::trust::fixtures::join_token("0a"),
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
                tls: Some(crate::state::trust::fixtures::tls()),
                join_token: None,
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

    fn key(w: &str, r: u32) -> InstanceKey {
        InstanceKey {
            workload: w.into(),
            replica: r,
        }
    }

    fn with_manifest(manifest: &str) -> State {
        let mut state = cluster_state();
        // A third gateway, so that spread has somewhere to go.
        state.apply(
            &Request::new(
                1,
                Command::RegisterNode {
                    name: "c".into(),
                    address: "127.0.0.1:1c".into(),
                    labels: BTreeMap::new(),
                    capacity: Capacity {
                        cpu_millis: 1000,
                        memory_bytes: 512 << 20,
                    },
                    devices: Default::default(),
                    tls: Some(crate::state::trust::fixtures::tls()),
                    join_token: None,
                },
            ),
            &mut ChangeSet::new(),
        );
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
        let plan = plan_for(&state, 3).unwrap();
        apply_plan(&mut state, plan);
        state
    }

    fn set(state: &mut State, at: u64, command: Command) -> crate::state::Response {
        state.apply(&Request::new(at, command), &mut ChangeSet::new())
    }

    /// Gateway `node` reports replica 0 of `cam` (generation 1) in `state`.
    fn cam_report(node: NodeId, state: InstanceState, stopping_seen: bool) -> Command {
        Command::ReportInstances {
            node,
            reports: vec![crate::state::InstanceReport {
                instance: key("cam", 0),
                generation: 1,
                state,
                exit_code: None,
                reason: None,
                restarts: 0,
                container_id: Some("c1".into()),
                stopping_seen,
                stop_mark_seen: None,
                fence_seen: None,
                ready: None,
            }],
        }
    }

    fn node_of(state: &State, k: &InstanceKey) -> Option<NodeId> {
        state.instances[k].node
    }

    fn down(node: NodeId) -> Command {
        Command::SetNodeStatus {
            node,
            status: NodeStatus::NotReady,
            reason: Some("no heartbeat for 1s".into()),
            runtime_down: false,
        }
    }

    #[test]
    fn reschedule_after_is_honoured() {
        let mut state =
            with_manifest("name: web\nimage: i\non_disconnect: {reschedule_after: 10s}\n");
        let k = key("web", 0);
        let first = node_of(&state, &k).unwrap();
        set(&mut state, 1_000, down(first));
        assert_eq!(plan_for(&state, 10_999), None);
        let plan = plan_for(&state, 11_000).unwrap();
        assert_ne!(plan.placements[0].1, first);
        apply_plan(&mut state, plan);
        let event = state.events.back().unwrap();
        assert_eq!(event.kind, "instance-rescheduled");
        assert!(
            event
                .message
                .ends_with(&format!("(gateway {} NotReady)", state.nodes[&first].name)),
            "{}",
            event.message
        );
    }

    #[test]
    fn a_singleton_waits_out_its_fence() {
        let mut state = with_manifest(
            "name: cam\nimage: i\nsingleton: true\non_disconnect: {stop_after: 5s}\n",
        );
        let k = key("cam", 0);
        let first = node_of(&state, &k).unwrap();
        set(&mut state, 1_000, down(first));
        // Fence: 5 s + 2 x 1 s + 1 s = 8 s after NotReady.
        assert_eq!(plan_for(&state, 8_999), None);
        assert_eq!(node_of(&state, &k), Some(first));
        let plan = plan_for(&state, 9_000).unwrap();
        assert_ne!(plan.placements[0].1, first);

        // Unassigned because its gateway was marked Left: the fence counts
        // from then, and the reason says why it waits.
        let mut state = with_manifest("name: cam\nimage: i\nsingleton: true\n");
        let first = node_of(&state, &k).unwrap();
        set(
            &mut state,
            1_000,
            Command::SetNodeStatus {
                node: first,
                status: NodeStatus::Left,
                reason: None,
                runtime_down: false,
            },
        );
        let plan = plan_for(&state, 2_000).unwrap();
        assert!(plan.placements.is_empty());
        assert!(
            plan.unplaceable[0].1.contains("singleton: waits 33s"),
            "{plan:?}"
        );
        apply_plan(&mut state, plan);
        assert_eq!(plan_for(&state, 3_000), None, "the reason is said once");
        assert_eq!(plan_for(&state, 34_000).unwrap().placements.len(), 1);
    }

    #[test]
    fn a_gateway_that_cannot_store_the_log_loses_only_its_fenced_copies_after_the_fence() {
        let mut state = with_manifest(
            "name: cam\nimage: i\nsingleton: true\non_disconnect: {stop_after: 5s}\n",
        );
        let k = key("cam", 0);
        let first = node_of(&state, &k).unwrap();
        let lagging = |d: Duration| Timing {
            now_ms: 1_000,
            cannot_store: BTreeMap::from([(first, d)]),
            ..Timing::default()
        };
        // Fence: 5 s + 2 x 1 s + 1 s = 8 s since the leader heard of it.
        let early = round(&state, &lagging(Duration::from_millis(7_999))).record;
        assert!(early.placements.is_empty(), "{early:?}");
        let plan = round(&state, &lagging(Duration::from_secs(8))).record;
        assert_eq!(plan.fenced_out, vec![k.clone()]);
        let to = plan.placements[0].1;
        assert_ne!(to, first, "never back onto the gateway that cannot store");
        // Without the leader's word the state machine keeps it where it is
        // (its gateway is Ready in the log); with it, it moves.
        let unvouched = PlanRecord {
            fenced_out: Vec::new(),
            ..plan.clone()
        };
        let mut copy = state.clone();
        apply_plan(&mut copy, unvouched);
        assert_eq!(node_of(&copy, &k), Some(first));
        apply_plan(&mut state, plan);
        assert_eq!(node_of(&state, &k), Some(to));

        // A copy without an isolation limit stays, running, however long.
        let state = with_manifest("name: web\nimage: i\n");
        let k = key("web", 0);
        let first = node_of(&state, &k).unwrap();
        let timing = Timing {
            now_ms: 1_000,
            cannot_store: BTreeMap::from([(first, Duration::from_secs(3_600))]),
            ..Timing::default()
        };
        let plan = round(&state, &timing).record;
        assert!(
            plan.placements.is_empty() && plan.fenced_out.is_empty(),
            "{plan:?}"
        );
    }

    #[test]
    fn a_new_leader_does_not_trust_its_first_not_ready_verdicts() {
        let mut state = with_manifest("name: web\nimage: i\n");
        let k = key("web", 0);
        let first = node_of(&state, &k).unwrap();
        // Marked NotReady 1.1 s into a leadership that began at 100 s.
        set(&mut state, 101_100, down(first));
        let timing = |now_ms| Timing {
            now_ms,
            leading_since_ms: 100_000,
            ..Timing::default()
        };
        // Settling window: grace 1 s + interval 300 ms + heartbeat timeout 500 ms.
        assert!(round(&state, &timing(101_799)).record.placements.is_empty());
        assert_eq!(round(&state, &timing(101_800)).record.placements.len(), 1);
        // Back in time: nothing moves at all.
        set(
            &mut state,
            102_000,
            Command::SetNodeStatus {
                node: first,
                status: NodeStatus::Ready,
                reason: None,
                runtime_down: false,
            },
        );
        assert!(round(&state, &timing(103_000)).record.placements.is_empty());
        assert!(state
            .events
            .iter()
            .any(|e| e.kind == "node-back" && e.message.contains("back (Ready)")));
    }

    #[test]
    fn draining_moves_instances_respecting_spread() {
        let mut state = with_manifest("name: web\nimage: i\nreplicas: 2\nspread: node\n");
        let (k0, k1) = (key("web", 0), key("web", 1));
        let (n0, n1) = (node_of(&state, &k0).unwrap(), node_of(&state, &k1).unwrap());
        let third = (1..=3).find(|n| *n != n0 && *n != n1).unwrap();
        set(&mut state, 10, Command::DrainNode { node: n0 });
        assert_eq!(state.nodes[&n0].status, NodeStatus::Draining);
        let plan = plan_for(&state, 11).unwrap();
        assert_eq!(plan.placements, vec![(k0.clone(), third)]);
        apply_plan(&mut state, plan);
        assert!(state.events.back().unwrap().message.contains("draining"));
        // Nothing left on it: drained, stays cordoned.
        let plan = plan_for(&state, 12).unwrap();
        assert_eq!(plan.drained, vec![n0]);
        apply_plan(&mut state, plan);
        assert_eq!(state.nodes[&n0].status, NodeStatus::Ready);
        assert!(state.nodes[&n0].cordoned);
        assert_eq!(plan_for(&state, 13), None);
    }

    #[test]
    fn a_drain_with_nowhere_to_go_is_stuck_without_writes() {
        let mut state = with_manifest("name: web\nimage: i\nreplicas: 3\nspread: node\n");
        let k = key("web", 0);
        let n = node_of(&state, &k).unwrap();
        set(&mut state, 10, Command::DrainNode { node: n });
        // Nothing to commit (no write loop), but the blocker is explained.
        assert_eq!(plan_for(&state, 11), None);
        let blockers = drain_blockers(&state, n, 11);
        assert_eq!(blockers.len(), 1);
        assert!(
            blockers[0].1.starts_with("has no other home: "),
            "{blockers:?}"
        );
        assert_eq!(node_of(&state, &k), Some(n));
        // Uncordon cancels the drain.
        set(
            &mut state,
            12,
            Command::SetCordon {
                node: n,
                cordoned: false,
            },
        );
        assert_eq!(state.nodes[&n].status, NodeStatus::Ready);
        assert!(drain_blockers(&state, n, 13).is_empty());
    }

    #[test]
    fn a_drained_singleton_moves_only_once_reported_stopped() {
        let mut state = with_manifest("name: cam\nimage: i\nsingleton: true\n");
        let k = key("cam", 0);
        let n = node_of(&state, &k).unwrap();
        let report = |s: InstanceState| cam_report(n, s, false);
        let confirmed = |s: InstanceState| cam_report(n, s, true);
        set(&mut state, 5, report(InstanceState::Running));
        set(&mut state, 10, Command::DrainNode { node: n });
        let plan = plan_for(&state, 11).unwrap();
        assert!(plan.placements.is_empty());
        assert_eq!(plan.stop, vec![k.clone()]);
        apply_plan(&mut state, plan);
        assert!(state.instances[&k].stopping);
        assert_eq!(plan_for(&state, 12), None);
        assert!(drain_blockers(&state, n, 12)[0]
            .1
            .contains("report its copy stopped"));
        // Exited, but reported before its gateway saw the stop: a restart
        // policy may start it again there.
        set(&mut state, 13, report(InstanceState::Exited));
        assert_eq!(plan_for(&state, 14), None);
        set(&mut state, 15, confirmed(InstanceState::Exited));
        let plan = plan_for(&state, 16).unwrap();
        assert_eq!(plan.placements.len(), 1);
        apply_plan(&mut state, plan);
        assert!(!state.instances[&k].stopping);
    }

    /// Found by the simulation (seeds 1045 and 5419, 60 s of faults): a
    /// drain was cancelled between the plan that moves its
    /// confirmed-stopped singleton and that plan's commit. The uncordon
    /// told the gateway to run the copy again while the stale plan moved
    /// it. A confirmed stop now survives the uncordon (the gateway is never
    /// told to start it), so the stale plan is safe; and a plan that would
    /// move a copy that may run off a live gateway is refused.
    #[test]
    fn a_cancelled_drain_cannot_race_a_stale_plan() {
        let mut state = with_manifest("name: cam\nimage: i\nsingleton: true\n");
        let k = key("cam", 0);
        let n = node_of(&state, &k).unwrap();
        let uncordon = Command::SetCordon {
            node: n,
            cordoned: false,
        };
        set(&mut state, 5, cam_report(n, InstanceState::Running, false));
        set(&mut state, 10, Command::DrainNode { node: n });
        let stop = plan_for(&state, 11).unwrap();
        apply_plan(&mut state, stop.clone());
        set(&mut state, 12, cam_report(n, InstanceState::Exited, true));
        let stale = plan_for(&state, 13).unwrap();
        assert_eq!(stale.placements.len(), 1);
        set(&mut state, 14, uncordon.clone());
        let i = &state.instances[&k];
        assert!(i.stopping && i.stopped, "the confirmed stop stays");
        apply_plan(&mut state, stale);
        assert_ne!(state.instances[&k].node, Some(n));

        // Cancelled before the stop was confirmed: the copy stays where it
        // runs, and a plan computed on an Exited report made before the
        // gateway saw the stop cannot move it.
        let mut state = with_manifest("name: cam\nimage: i\nsingleton: true\n");
        let n = node_of(&state, &k).unwrap();
        set(&mut state, 5, cam_report(n, InstanceState::Running, false));
        set(&mut state, 10, Command::DrainNode { node: n });
        let stop_again = plan_for(&state, 11).unwrap();
        apply_plan(&mut state, stop_again);
        set(&mut state, 12, uncordon);
        assert!(!state.instances[&k].stopping);
        set(&mut state, 13, cam_report(n, InstanceState::Exited, false));
        let mut forced = stop;
        forced.stop.clear();
        let other = *state.nodes.keys().find(|id| **id != n).unwrap();
        forced.placements = vec![(k.clone(), other)];
        apply_plan(&mut state, forced);
        assert_eq!(state.instances[&k].node, Some(n));
        assert!(state.instances[&k].may_be_running());
    }

    /// Found by the simulation (seed 1166): a drain cancelled and begun
    /// again. A gateway that had yet to apply the cancel reported the copy
    /// stopped under the first mark; taken as confirming the second, the
    /// copy moved while that gateway, applying the cancel, started it again.
    #[test]
    fn a_stop_is_confirmed_only_under_the_current_mark() {
        let mut state = with_manifest("name: cam\nimage: i\nsingleton: true\n");
        let k = key("cam", 0);
        let n = node_of(&state, &k).unwrap();
        let stopped_under = |mark: u64| {
            let mut c = cam_report(n, InstanceState::Exited, true);
            if let Command::ReportInstances { reports, .. } = &mut c {
                reports[0].stop_mark_seen = Some(mark);
            }
            c
        };
        set(&mut state, 5, cam_report(n, InstanceState::Running, false));
        set(&mut state, 10, Command::DrainNode { node: n });
        let stop = plan_for(&state, 11).unwrap();
        apply_plan(&mut state, stop);
        let first = state.instances[&k].stop_mark;
        set(
            &mut state,
            12,
            Command::SetCordon {
                node: n,
                cordoned: false,
            },
        );
        set(&mut state, 13, Command::DrainNode { node: n });
        let stop = plan_for(&state, 14).unwrap();
        apply_plan(&mut state, stop);
        let second = state.instances[&k].stop_mark;
        assert!(second > first);
        set(&mut state, 15, stopped_under(first));
        assert!(!state.instances[&k].stopped, "a report under the old mark");
        assert_eq!(plan_for(&state, 16), None);
        set(&mut state, 17, stopped_under(second));
        assert!(state.instances[&k].stopped);
        let plan = plan_for(&state, 18).unwrap();
        assert_eq!(plan.placements.len(), 1);
    }

    /// Found by the simulation (seeds 25 and 46): a singleton deleted and
    /// applied again was placed at once while its old copy, one that
    /// ignores SIGTERM, ran out its stop grace.
    #[test]
    fn a_recreated_singleton_waits_for_the_deleted_copy() {
        let manifest = "name: cam\nimage: i\nsingleton: true\n";
        let mut state = with_manifest(manifest);
        let k = key("cam", 0);
        let n = node_of(&state, &k).unwrap();
        let report = |s: InstanceState, seen: bool| cam_report(n, s, seen);
        set(&mut state, 5, report(InstanceState::Running, false));
        set(
            &mut state,
            10,
            Command::DeleteWorkload {
                name: "cam".into(),
                source: Source::Local,
            },
        );
        assert_eq!(state.meta.retired.len(), 1);
        assert!(state.placed_copy(&k, n).is_some_and(|c| c.stopping));
        set(
            &mut state,
            11,
            Command::ApplyWorkloads {
                workloads: parse_manifest(manifest).unwrap(),
                source: Source::Local,
            },
        );
        let plan = plan_for(&state, 12).unwrap();
        assert!(plan.placements.is_empty(), "{plan:?}");
        assert!(
            plan.unplaceable[0]
                .1
                .contains("copy of the deleted workload"),
            "{plan:?}"
        );
        // A placement decided elsewhere is refused by the state machine too.
        let mut forced = plan.clone();
        forced.placements.push((k.clone(), n));
        apply_plan(&mut state, forced);
        assert_eq!(node_of(&state, &k), None);
        // Exited without having seen the stop confirms nothing.
        set(&mut state, 13, report(InstanceState::Exited, false));
        assert_eq!(state.meta.retired.len(), 1);
        set(&mut state, 14, report(InstanceState::Exited, true));
        assert!(state.meta.retired.is_empty());
        let plan = plan_for(&state, 15).unwrap();
        assert_eq!(plan.placements.len(), 1);
        apply_plan(&mut state, plan);
        assert!(node_of(&state, &k).is_some());

        // A gateway that went silent is fenced out instead.
        let mut state = with_manifest(manifest);
        let n = node_of(&state, &k).unwrap();
        set(&mut state, 5, report(InstanceState::Running, false));
        set(
            &mut state,
            10,
            Command::DeleteWorkload {
                name: "cam".into(),
                source: Source::Local,
            },
        );
        set(
            &mut state,
            11,
            Command::ApplyWorkloads {
                workloads: parse_manifest(manifest).unwrap(),
                source: Source::Local,
            },
        );
        set(&mut state, 1_000, down(n));
        // Fence of the default 30 s: 30 s + 2 x 1 s + 1 s after NotReady.
        let waiting = plan_for(&state, 33_999).unwrap();
        assert!(waiting.placements.is_empty());
        apply_plan(&mut state, waiting);
        let plan = plan_for(&state, 34_000).unwrap();
        assert_eq!(plan.retired_gone.len(), 1);
        assert_eq!(plan.placements.len(), 1);
        apply_plan(&mut state, plan);
        assert!(state.meta.retired.is_empty());
        assert!(node_of(&state, &k).is_some_and(|p| p != n));
    }

    /// Found by the simulation (seed 5570): a leader that could not reach
    /// its quorum proposed two plans from the same applied state, each
    /// placing onto the same gateway, which had room for one. The commit
    /// of the second drops its placement; the next round places it on the
    /// state it sees, once, and has nothing more to say.
    #[test]
    fn a_placement_that_no_longer_fits_is_dropped_at_commit() {
        let mut state = cluster_state();
        let workloads =
            parse_manifest("name: a\nimage: i\nresources: {cpu: 600m}\n---\nname: b\nimage: i\nresources: {cpu: 600m}\n")
                .unwrap();
        set(
            &mut state,
            2,
            Command::ApplyWorkloads {
                workloads,
                source: Source::Local,
            },
        );
        let plan = |k: InstanceKey| PlanRecord {
            placements: vec![(k, 1)],
            ..PlanRecord::default()
        };
        apply_plan(&mut state, plan(key("a", 0)));
        apply_plan(&mut state, plan(key("b", 0)));
        assert_eq!(node_of(&state, &key("a", 0)), Some(1));
        assert_eq!(node_of(&state, &key("b", 0)), None, "1,200m on 1,000m");
        let next = plan_for(&state, 3).unwrap();
        assert_eq!(next.placements, vec![(key("b", 0), 2)]);
        apply_plan(&mut state, next);
        assert_eq!(node_of(&state, &key("b", 0)), Some(2));
        assert_eq!(plan_for(&state, 4), None);
    }

    /// A singleton preempted by a higher priority keeps its room until its
    /// gateway confirms the stop: the preemptor is placed after that, not
    /// beside a copy that may ignore SIGTERM for its whole stop grace.
    #[test]
    fn a_preemptor_waits_for_the_singleton_it_stops() {
        let mut state = with_manifest(
            "name: cam\nimage: i\nsingleton: true\nnode_selector: {zigbee: \"true\"}\nresources: {cpu: 800m}\n",
        );
        let k = key("cam", 0);
        let n = node_of(&state, &k).unwrap();
        set(&mut state, 4, cam_report(n, InstanceState::Running, false));
        let workloads = parse_manifest(
            "name: hub\nimage: i\npriority: 100\nnode_selector: {zigbee: \"true\"}\nresources: {cpu: 500m}\n",
        )
        .unwrap();
        set(
            &mut state,
            5,
            Command::ApplyWorkloads {
                workloads,
                source: Source::Local,
            },
        );
        let stop = plan_for(&state, 6).unwrap();
        assert_eq!(stop.stop, vec![k.clone()]);
        assert!(stop.placements.is_empty(), "{stop:?}");
        apply_plan(&mut state, stop);
        // Still stopping: nothing to write, nothing placed.
        assert_eq!(plan_for(&state, 7), None);
        let mark = state.instances[&k].stop_mark;
        let mut stopped = cam_report(n, InstanceState::Exited, true);
        if let Command::ReportInstances { reports, .. } = &mut stopped {
            reports[0].stop_mark_seen = Some(mark);
        }
        set(&mut state, 8, stopped);
        let place = plan_for(&state, 9).unwrap();
        assert_eq!(place.placements, vec![(key("hub", 0), n)]);
        apply_plan(&mut state, place);
        assert_eq!(node_of(&state, &key("hub", 0)), Some(n));
    }
}
