//! gantry-scheduler decides which gateway runs each workload instance.
//!
//! It is a pure function from a snapshot to a plan: no I/O, no async, no
//! clocks, no randomness, so the leader can call it inside its scheduling
//! loop, tests can drive it with plain values, and the same input always
//! yields the same plan. Like Nomad's scheduler it first filters gateways
//! (feasibility), then scores the survivors (ranking), then picks the best;
//! when nothing fits, a higher-priority instance may preempt lower ones, and
//! otherwise the instance comes back with a [`Refusal`] that says, per
//! constraint, on how many gateways it failed.
//!
//! # Brief overview
//!
//! * [`plan`] is the entry point: [`ClusterView`] + [`PendingInstance`]s in,
//!   [`Plan`] out.
//! * [`ClusterView`] holds the gateways ([`NodeView`]) and what already runs
//!   on them ([`RunningInstance`]).
//! * [`WorkloadRequirements`] is the placement-relevant part of a workload
//!   spec: [`Resources`] requests, node selector, devices, `spread: node`,
//!   [`Placement`] (spread or binpack) and priority.
//! * [`Plan`] lists [`Assignment`]s, [`Eviction`]s (preemptions) and
//!   [`Unplaceable`] instances, each with a [`Refusal`] built from
//!   [`RejectReason`] counts whose `Display` is what `gantry describe` shows.
//! * [`testing`] has fixture builders for tests and benchmarks.

mod feasible;
mod ledger;
mod model;
mod preempt;
mod rank;
mod refusal;
#[doc(hidden)]
pub mod testing;

pub use model::{
    Assignment, ClusterView, Eviction, InstanceRef, NodeView, PendingInstance, Placement, Plan,
    Resources, RunningInstance, Unplaceable, WorkloadRequirements,
};
pub use refusal::{Cpu, Memory, Refusal, RejectReason};

use feasible::StaticCache;
use ledger::Ledger;
use rank::Ask;

/// Places `pending` on the gateways of `view`, preempting lower-priority
/// running instances where a higher-priority one fits nowhere else.
///
/// Instances are handled one at a time, higher priority first, then by
/// workload name and replica; each sees the capacity the previous ones took.
/// Cost is about one pass over the feasible gateways per instance.
pub fn plan(view: &ClusterView, pending: &[PendingInstance]) -> Plan {
    // Index the snapshot once: free capacity per gateway, running instances
    // per gateway (in preemption order) and per workload.
    let mut ledger = Ledger::new(view);
    let mut statics = StaticCache::default();
    let mut plan = Plan::default();
    for p in processing_order(pending) {
        place_one(&mut ledger, &mut statics, p, &mut plan);
    }
    plan
}

/// Higher priority first so that it gets the pick of the room; then name and
/// replica so the plan does not depend on the order the caller listed them.
/// The sort is stable, so even exact duplicates keep a fixed order.
fn processing_order(pending: &[PendingInstance]) -> Vec<&PendingInstance> {
    let mut order: Vec<&PendingInstance> = pending.iter().collect();
    order.sort_by(|a, b| {
        b.workload
            .priority
            .cmp(&a.workload.priority)
            .then_with(|| a.workload.name.cmp(&b.workload.name))
            .then(a.replica.cmp(&b.replica))
    });
    order
}

/// The pipeline for one instance.
fn place_one<'a>(
    ledger: &mut Ledger<'a>,
    statics: &mut StaticCache<'a>,
    p: &'a PendingInstance,
    plan: &mut Plan,
) {
    let w = &p.workload;
    // 1. Static feasibility: ready, not cordoned, selector labels, devices.
    //    Cached per (selector, devices), so replicas reuse one pass.
    let fit = statics.get(ledger.nodes(), w);
    // 2. Replica counts per gateway, only materialised for `spread: node`.
    let wid = ledger.workload(&w.name, w.spread_node);
    let spread = ledger.replica_counts(wid);
    // 3. Dynamic feasibility (cpu, memory, spread) and ranking (spread or
    //    binpack score, stickiness bonus, lower id on ties) in one pass.
    let ask = Ask {
        requests: w.requests,
        placement: w.placement,
        spread,
        sticky: p.previous_node.and_then(|id| ledger.position(id)),
    };
    if let Some(n) = rank::best_node(ledger, &fit.nodes, &ask) {
        return assign(ledger, wid, p, n, plan);
    }
    // 4. Preemption: free one gateway by evicting strictly lower priorities.
    if let Some(pre) = preempt::find(ledger, &fit.nodes, w.requests, w.priority, spread) {
        let reason = format!("preempted by {} (priority {})", p.instance(), w.priority);
        for &i in &pre.victims {
            let victim = ledger.running(i);
            plan.evictions.push(Eviction {
                instance: victim.instance.clone(),
                node: victim.node,
                reason: reason.clone(),
            });
            ledger.evict(i);
        }
        return assign(ledger, wid, p, pre.node, plan);
    }
    // 5. Refusal: re-run every check on every gateway to explain the failure.
    let reason = feasible::explain(ledger, fit, w, spread);
    plan.unplaceable.push(Unplaceable {
        instance: p.instance(),
        reason,
    });
}

fn assign(ledger: &mut Ledger<'_>, wid: usize, p: &PendingInstance, n: usize, plan: &mut Plan) {
    ledger.place(n, wid, p.workload.requests);
    plan.placements.push(Assignment {
        instance: p.instance(),
        node: ledger.node_id(n),
    });
}
