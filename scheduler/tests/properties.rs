//! Property tests: invariants every plan must keep, on random small clusters.

use std::collections::{BTreeMap, BTreeSet};

use gantry_scheduler::testing::{node, running, workload, MI};
use gantry_scheduler::{
    plan, ClusterView, InstanceRef, NodeView, PendingInstance, Placement, Plan, Resources,
    RunningInstance, WorkloadRequirements,
};
use proptest::prelude::*;

const NAMES: [&str; 4] = ["alpha", "beta", "gamma", "delta"];
const DEVICES: [&str; 2] = ["/dev/ttyUSB0", "/dev/ttyACM0"];

fn arb_node(id: u64) -> impl Strategy<Value = NodeView> {
    (
        prop::bool::weighted(0.8),
        prop::bool::weighted(0.15),
        0u8..3,
        any::<bool>(),
        0u8..4,
        0u64..4000,
        0u64..4096,
    )
        .prop_map(move |(ready, cordoned, zone, zigbee, devices, cpu, mem)| {
            let mut n = node(id, cpu, mem * MI);
            n.ready = ready;
            n.cordoned = cordoned;
            if zone > 0 {
                n = n.with_label("zone", if zone == 1 { "a" } else { "b" });
            }
            if zigbee {
                n = n.with_label("zigbee", "true");
            }
            for (i, d) in DEVICES.iter().enumerate() {
                if devices & (1 << i) != 0 {
                    n = n.with_device(*d);
                }
            }
            n
        })
}

fn arb_nodes(max: usize) -> impl Strategy<Value = Vec<NodeView>> {
    (0..=max).prop_flat_map(|count| {
        (0..count)
            .map(|i| arb_node(i as u64 * 3 + 1))
            .collect::<Vec<_>>()
    })
}

fn arb_running() -> impl Strategy<Value = Vec<RunningInstance>> {
    // Replica numbers from 100 up keep running instances distinct from each
    // other and from the pending ones, as in real cluster state.
    let one = (0..NAMES.len(), 0u64..20, 0u64..2000, 0u64..2048, 0i32..4);
    prop::collection::vec(one, 0..12).prop_map(|list| {
        list.into_iter()
            .enumerate()
            .map(|(i, (w, node, cpu, mem, prio))| {
                running(
                    NAMES[w],
                    100 + i as u32,
                    node,
                    Resources::new(cpu, mem * MI),
                    prio,
                )
            })
            .collect()
    })
}

fn arb_workload(name: &'static str) -> impl Strategy<Value = WorkloadRequirements> {
    (
        0u64..1500,
        0u64..1536,
        0u8..3,
        any::<bool>(),
        0u8..4,
        any::<bool>(),
        any::<bool>(),
        0i32..4,
    )
        .prop_map(
            move |(cpu, mem, zone, zigbee, devices, spread, binpack, prio)| {
                let mut w = workload(name, cpu, mem * MI).with_priority(prio);
                if zone > 0 {
                    w = w.with_selector("zone", if zone == 1 { "a" } else { "b" });
                }
                if zigbee {
                    w = w.with_selector("zigbee", "true");
                }
                for (i, d) in DEVICES.iter().enumerate() {
                    if devices & (1 << i) != 0 {
                        w = w.with_device(*d);
                    }
                }
                w.spread_node = spread;
                if binpack {
                    w = w.with_placement(Placement::Binpack);
                }
                w
            },
        )
}

/// Replicas of each workload, each maybe with a previous gateway (known or not).
fn arb_pending() -> impl Strategy<Value = Vec<PendingInstance>> {
    let per_workload = NAMES.map(|name| {
        (
            arb_workload(name),
            prop::collection::vec(prop::option::of(0u64..20), 0..5),
        )
            .prop_map(|(w, prevs)| {
                prevs
                    .into_iter()
                    .enumerate()
                    .map(|(r, prev)| PendingInstance {
                        previous_node: prev,
                        ..w.replica(r as u32)
                    })
                    .collect::<Vec<_>>()
            })
    });
    per_workload.prop_map(|lists| lists.into_iter().flatten().collect())
}

fn arb_case() -> impl Strategy<Value = (ClusterView, Vec<PendingInstance>)> {
    (arb_nodes(7), arb_running(), arb_pending())
        .prop_map(|(nodes, running, pending)| (ClusterView { nodes, running }, pending))
}

/// Checks every invariant a plan must keep, whatever the input.
fn check_plan(
    view: &ClusterView,
    pending: &[PendingInstance],
    p: &Plan,
) -> Result<(), TestCaseError> {
    let nodes: BTreeMap<u64, &NodeView> = view.nodes.iter().map(|n| (n.id, n)).collect();
    let specs: BTreeMap<InstanceRef, &WorkloadRequirements> = pending
        .iter()
        .map(|pi| (pi.instance(), &pi.workload))
        .collect();

    // Every pending instance is answered exactly once.
    let mut answered: Vec<&InstanceRef> = p.placements.iter().map(|a| &a.instance).collect();
    answered.extend(p.unplaceable.iter().map(|u| &u.instance));
    answered.sort();
    let mut asked: Vec<InstanceRef> = pending.iter().map(|pi| pi.instance()).collect();
    asked.sort();
    prop_assert_eq!(answered, asked.iter().collect::<Vec<_>>());

    // A refusal is about every gateway and admits none fits.
    for u in &p.unplaceable {
        prop_assert_eq!(u.reason.nodes_fit, 0);
        prop_assert_eq!(u.reason.nodes_total as usize, nodes.len());
        prop_assert!(!u.reason.rejections.is_empty() || nodes.is_empty());
    }

    // Evictions: running instances, each once, strictly below a preemptor placed on that gateway.
    let evicted: BTreeSet<&InstanceRef> = p.evictions.iter().map(|e| &e.instance).collect();
    prop_assert_eq!(evicted.len(), p.evictions.len());
    for e in &p.evictions {
        let r = view
            .running
            .iter()
            .find(|r| r.instance == e.instance && r.node == e.node);
        prop_assert!(
            r.is_some(),
            "evicted {} is not running on {}",
            e.instance,
            e.node
        );
        let prio = r.map_or(i32::MAX, |r| r.priority);
        let preemptor = p
            .placements
            .iter()
            .any(|a| a.node == e.node && specs[&a.instance].priority > prio);
        prop_assert!(
            preemptor,
            "no higher-priority placement justifies evicting {}",
            e.instance
        );
    }
    let still_running: Vec<&RunningInstance> = view
        .running
        .iter()
        .filter(|r| !evicted.contains(&r.instance))
        .collect();

    for a in &p.placements {
        let w = specs[&a.instance];
        let n = nodes.get(&a.node).copied();
        prop_assert!(n.is_some(), "placed on unknown gateway {}", a.node);
        let Some(n) = n else { continue };
        prop_assert!(
            n.ready && !n.cordoned,
            "{} placed on unavailable {}",
            a.instance,
            n.id
        );
        for (k, v) in &w.node_selector {
            prop_assert_eq!(
                n.labels.get(k),
                Some(v),
                "{} breaks selector on {}",
                &a.instance,
                n.id
            );
        }
        for d in &w.devices {
            prop_assert!(
                n.devices.contains(d),
                "{} lacks {} on {}",
                a.instance,
                d,
                n.id
            );
        }
        if w.spread_node {
            let same = |name: &str, node: u64| name == w.name && node == n.id;
            let replicas = still_running
                .iter()
                .filter(|r| same(&r.instance.workload, r.node))
                .count()
                + p.placements
                    .iter()
                    .filter(|b| same(&b.instance.workload, b.node))
                    .count();
            prop_assert_eq!(
                replicas,
                1,
                "{} shares gateway {} with a replica",
                &a.instance,
                n.id
            );
        }
    }

    // No gateway that received work ends up overcommitted.
    for id in p.placements.iter().map(|a| a.node).collect::<BTreeSet<_>>() {
        let (mut cpu, mut mem) = (0u128, 0u128);
        for r in still_running.iter().filter(|r| r.node == id) {
            cpu += u128::from(r.requests.cpu_millis);
            mem += u128::from(r.requests.memory_bytes);
        }
        for a in p.placements.iter().filter(|a| a.node == id) {
            cpu += u128::from(specs[&a.instance].requests.cpu_millis);
            mem += u128::from(specs[&a.instance].requests.memory_bytes);
        }
        let alloc = nodes[&id].allocatable;
        prop_assert!(
            cpu <= u128::from(alloc.cpu_millis),
            "cpu overcommitted on {}",
            id
        );
        prop_assert!(
            mem <= u128::from(alloc.memory_bytes),
            "memory overcommitted on {}",
            id
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn plans_keep_every_invariant((view, pending) in arb_case()) {
        let p = plan(&view, &pending);
        check_plan(&view, &pending, &p)?;
    }

    #[test]
    fn identical_input_gives_an_identical_plan((view, pending) in arb_case()) {
        prop_assert_eq!(plan(&view, &pending), plan(&view, &pending.clone()));
    }

    #[test]
    fn input_order_does_not_matter(
        (view, pending, shuffled, nodes_shuffled, running_shuffled) in arb_case().prop_flat_map(|(v, p)| {
            let (n, r) = (v.nodes.clone(), v.running.clone());
            (Just(v), Just(p.clone()), Just(p).prop_shuffle(), Just(n).prop_shuffle(), Just(r).prop_shuffle())
        })
    ) {
        let reordered = ClusterView { nodes: nodes_shuffled, running: running_shuffled };
        prop_assert_eq!(plan(&view, &pending), plan(&reordered, &shuffled));
    }

    #[test]
    fn trivially_feasible_instances_are_all_placed((view, pending) in arb_roomy_case()) {
        let p = plan(&view, &pending);
        prop_assert!(p.unplaceable.is_empty(), "{:#?}", p.unplaceable);
        prop_assert!(p.evictions.is_empty());
        prop_assert_eq!(p.placements.len(), pending.len());
        check_plan(&view, &pending, &p)?;
    }
}

/// Ready, uncordoned gateways each large enough for every instance at once,
/// no selectors or devices, and spread workloads with at most one replica
/// per gateway: nothing may be refused.
fn arb_roomy_case() -> impl Strategy<Value = (ClusterView, Vec<PendingInstance>)> {
    let nodes = (1usize..6).prop_flat_map(|count| {
        (0..count)
            .map(|i| {
                (4000u64..8000, 4096u64..8192)
                    .prop_map(move |(cpu, mem)| node(i as u64 + 1, cpu, mem * MI))
            })
            .collect::<Vec<_>>()
    });
    let background = prop::collection::vec((0u64..6, 0u64..100, 0u64..100), 0..5);
    (nodes, background).prop_flat_map(|(nodes, background)| {
        let count = nodes.len() as u32;
        let running = background
            .into_iter()
            .enumerate()
            .map(|(i, (n, cpu, mem))| {
                running(
                    "background",
                    i as u32,
                    n + 1,
                    Resources::new(cpu, mem * MI),
                    9,
                )
            })
            .collect::<Vec<_>>();
        let view = ClusterView { nodes, running };
        let per_workload = NAMES.map(|name| {
            (
                0u64..100,
                0u64..100,
                any::<bool>(),
                any::<bool>(),
                0i32..4,
                0..=count,
                prop::option::of(0u64..8),
            )
                .prop_map(move |(cpu, mem, spread, binpack, prio, replicas, prev)| {
                    let mut w = workload(name, cpu, mem * MI).with_priority(prio);
                    w.spread_node = spread;
                    if binpack {
                        w = w.with_placement(Placement::Binpack);
                    }
                    (0..replicas)
                        .map(|r| PendingInstance {
                            previous_node: prev,
                            ..w.replica(r)
                        })
                        .collect::<Vec<_>>()
                })
        });
        (
            Just(view),
            per_workload.prop_map(|l| l.into_iter().flatten().collect::<Vec<_>>()),
        )
    })
}
