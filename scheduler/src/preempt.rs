//! Preemption: make room for an instance that fits nowhere by evicting
//! strictly lower-priority running instances from one gateway.
//!
//! Per gateway the victims are found like Kubernetes does: start from every
//! lower-priority instance, then reprieve them one by one, highest priority
//! (then smallest) first, while the preemptor still fits. What is left are
//! the lowest-priority instances that are actually needed. Among gateways,
//! the one needing the fewest evictions wins. This is greedy, not an exact
//! minimum, which would be a knapsack problem per gateway.

use crate::feasible;
use crate::ledger::{Free, Ledger};
use crate::model::Resources;

/// The gateway to free and the running instances (ledger indices) to evict
/// there, lowest priority first.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Preemption {
    pub node: usize,
    pub victims: Vec<usize>,
}

/// Fewer evictions first, then the mildest victims, then the lower gateway id.
type Cost = (usize, i32, i64, u64);

/// The cheapest preemption among `candidates` (gateways past the static
/// checks), or `None` when no gateway can be freed enough.
pub(crate) fn find(
    ledger: &Ledger<'_>,
    candidates: &[usize],
    requests: Resources,
    priority: i32,
    spread: Option<&[u32]>,
) -> Option<Preemption> {
    if !ledger.may_preempt(priority) {
        return None;
    }
    let mut best: Option<(Cost, Preemption)> = None;
    for &n in candidates {
        // Evicting never helps spread: same-workload replicas share the
        // preemptor's priority, so they are never victims.
        if !feasible::spread_allows(spread, n) {
            continue;
        }
        let Some(victims) = victims_on(ledger, n, requests, priority) else {
            continue;
        };
        let cost = cost(ledger, n, &victims);
        if best.as_ref().is_none_or(|(c, _)| cost < *c) {
            best = Some((cost, Preemption { node: n, victims }));
        }
    }
    best.map(|(_, p)| p)
}

fn cost(ledger: &Ledger<'_>, n: usize, victims: &[usize]) -> Cost {
    let priorities = victims.iter().map(|&i| ledger.running(i).priority);
    let highest = priorities.clone().max().unwrap_or(i32::MIN);
    let sum = priorities.map(i64::from).sum();
    (victims.len(), highest, sum, ledger.node_id(n))
}

/// The fewest-and-lowest lower-priority instances on gateway `n` whose
/// eviction lets `requests` fit, or `None` if evicting all of them is not enough.
fn victims_on(
    ledger: &Ledger<'_>,
    n: usize,
    requests: Resources,
    priority: i32,
) -> Option<Vec<usize>> {
    let lower: Vec<usize> = ledger
        .evictable(n)
        .take_while(|&i| ledger.running(i).priority < priority)
        .collect();
    let mut freed = lower
        .iter()
        .fold(ledger.free(n), |f, &i| f.plus(ledger.running(i).requests));
    if !freed.fits(requests) {
        return None;
    }
    let mut reprieved = vec![false; lower.len()];
    for (k, &i) in lower.iter().enumerate().rev() {
        let without: Free = freed.minus(ledger.running(i).requests);
        if without.fits(requests) {
            freed = without;
            reprieved[k] = true;
        }
    }
    Some(
        lower
            .into_iter()
            .zip(reprieved)
            .filter_map(|(i, kept)| (!kept).then_some(i))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use crate::testing::{node, running, workload, GI};
    use crate::{plan, ClusterView, Eviction, InstanceRef, Resources};

    fn r(cpu: u64) -> Resources {
        Resources::new(cpu, GI / 4)
    }

    fn evicted(evictions: &[Eviction]) -> Vec<(String, u64)> {
        evictions
            .iter()
            .map(|e| (e.instance.to_string(), e.node))
            .collect()
    }

    /// Both gateways full; gateway 1 needs two evictions, gateway 2 one.
    #[test]
    fn picks_the_gateway_needing_fewest_evictions() {
        let view = ClusterView {
            nodes: vec![node(1, 1000, 4 * GI), node(2, 1000, 4 * GI)],
            running: vec![
                running("a", 0, 1, r(500), 0),
                running("a", 1, 1, r(500), 0),
                running("b", 0, 2, r(1000), 5),
            ],
        };
        let web = workload("web", 800, GI).with_priority(100);
        let p = plan(&view, &[web.replica(0)]);
        assert_eq!(evicted(&p.evictions), [("b/0".to_string(), 2)]);
        assert_eq!(p.evictions[0].reason, "preempted by web/0 (priority 100)");
        assert_eq!(p.node_of(&InstanceRef::new("web", 0)), Some(2));
    }

    #[test]
    fn evicts_lowest_priority_first_and_no_more_than_needed() {
        let view = ClusterView {
            nodes: vec![node(1, 1000, 4 * GI)],
            running: vec![
                running("mid", 0, 1, r(400), 5),
                running("low", 0, 1, r(400), 1),
                running("high", 0, 1, r(200), 50),
            ],
        };
        let web = workload("web", 400, GI).with_priority(10);
        let p = plan(&view, &[web.replica(0)]);
        assert_eq!(evicted(&p.evictions), [("low/0".to_string(), 1)]);
        assert_eq!(p.node_of(&InstanceRef::new("web", 0)), Some(1));
    }

    #[test]
    fn never_evicts_equal_or_higher_priority() {
        let view = ClusterView {
            nodes: vec![node(1, 1000, 4 * GI)],
            running: vec![
                running("same", 0, 1, r(600), 10),
                running("higher", 0, 1, r(400), 11),
            ],
        };
        let web = workload("web", 500, GI).with_priority(10);
        let p = plan(&view, &[web.replica(0)]);
        assert!(p.evictions.is_empty());
        assert!(p.placements.is_empty());
        assert_eq!(p.unplaceable.len(), 1);
    }

    #[test]
    fn skips_victims_that_free_the_wrong_dimension() {
        let view = ClusterView {
            nodes: vec![node(1, 1000, GI)],
            running: vec![
                running("cpu-hog", 0, 1, Resources::new(900, 0), 0),
                running("mem-hog", 0, 1, Resources::new(0, GI), 1),
            ],
        };
        let web = workload("web", 0, GI / 2).with_priority(10);
        let p = plan(&view, &[web.replica(0)]);
        assert_eq!(evicted(&p.evictions), [("mem-hog/0".to_string(), 1)]);
    }

    #[test]
    fn respects_the_preemptors_other_constraints() {
        let view = ClusterView {
            nodes: vec![
                node(1, 1000, 4 * GI),
                node(2, 1000, 4 * GI).with_label("zigbee", "true"),
            ],
            running: vec![
                running("low", 0, 1, r(1000), 0),
                running("low", 1, 2, r(1000), 0),
                running("low", 2, 2, r(0), 0),
            ],
        };
        let web = workload("web", 500, GI)
            .with_priority(10)
            .with_selector("zigbee", "true");
        let p = plan(&view, &[web.replica(0)]);
        assert_eq!(evicted(&p.evictions), [("low/1".to_string(), 2)]);
    }

    #[test]
    fn equal_counts_prefer_milder_victims_then_lower_id() {
        let view = ClusterView {
            nodes: vec![
                node(1, 1000, 4 * GI),
                node(2, 1000, 4 * GI),
                node(3, 1000, 4 * GI),
            ],
            running: vec![
                running("x", 0, 1, r(1000), 3),
                running("y", 0, 2, r(1000), 2),
                running("z", 0, 3, r(1000), 2),
            ],
        };
        let web = workload("web", 500, GI).with_priority(10);
        let p = plan(&view, &[web.replica(0)]);
        assert_eq!(evicted(&p.evictions), [("y/0".to_string(), 2)]);
    }

    #[test]
    fn evicted_room_is_reused_within_the_plan() {
        let view = ClusterView {
            nodes: vec![node(1, 1000, 4 * GI)],
            running: vec![running("low", 0, 1, r(1000), 0)],
        };
        let web = workload("web", 400, GI).with_priority(10);
        let p = plan(&view, &[web.replica(0), web.replica(1)]);
        assert_eq!(p.evictions.len(), 1);
        assert_eq!(p.placements.len(), 2);
    }
}
