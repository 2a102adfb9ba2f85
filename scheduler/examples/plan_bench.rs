//! Throughput benchmark for `plan()` on synthetic clusters (not a test).
//!
//! Run: `cargo run --release -p gantry-scheduler --example plan_bench`
//!
//! Clusters of 50 and 500 gateways with mixed capacities, zone labels, some
//! zigbee gateways and serial devices, a few NotReady or cordoned ones. The
//! pending set mixes priorities, selectors, devices, `spread: node` and
//! binpack. Gateway capacity is scaled so that the 10,000-instance set
//! fills about 80% of the cluster; the 1,000 set is its first tenth. A last
//! row adds low-priority running instances so that preemption kicks in.
//! The inputs are generated from a fixed seed, so runs are comparable.

use std::hint::black_box;
use std::time::{Duration, Instant};

use gantry_scheduler::testing::{node, running, workload, GI, MI};
use gantry_scheduler::{
    plan, ClusterView, NodeView, PendingInstance, Placement, Plan, Resources, RunningInstance,
};

/// xorshift64*: a fixed-seed generator so every run plans the same input.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

const CLASSES: [(u64, u64); 4] = [
    (2000, 2 * GI),
    (4000, 4 * GI),
    (8000, 8 * GI),
    (4000, 16 * GI),
];
const ZONES: [&str; 3] = ["a", "b", "c"];

fn pending_set(count: usize, nodes: usize, rng: &mut Rng) -> Vec<PendingInstance> {
    let mut out = Vec::with_capacity(count);
    let mut k = 0;
    while out.len() < count {
        let mut w = workload(
            &format!("w{k:05}"),
            50 * (1 + rng.below(10)),
            32 * MI * (1 + rng.below(16)),
        );
        k += 1;
        w.priority = [0, 0, 0, 10, 100][rng.below(5) as usize];
        if rng.chance(15) {
            w = w.with_selector("zone", ZONES[rng.below(3) as usize]);
        }
        if rng.chance(5) {
            w = w.with_selector("zigbee", "true");
        }
        if rng.chance(3) {
            w = w.with_device("/dev/ttyUSB0");
        }
        if rng.chance(25) {
            w = w.with_placement(Placement::Binpack);
        }
        let mut replicas = 1 + rng.below(20) as usize;
        if rng.chance(20) {
            w = w.with_spread_node();
            replicas = replicas.min(nodes / 10);
        }
        for r in 0..replicas.min(count - out.len()) {
            out.push(w.replica(r as u32));
        }
    }
    out
}

fn cluster(count: usize, multiplier: u64, rng: &mut Rng) -> Vec<NodeView> {
    (0..count)
        .map(|i| {
            let (cpu, mem) = CLASSES[rng.below(4) as usize];
            let mut n = node(i as u64 + 1, cpu * multiplier, mem * multiplier)
                .with_label("zone", ZONES[i % 3]);
            if rng.chance(20) {
                n = n.with_label("zigbee", "true");
            }
            if rng.chance(10) {
                n = n.with_device("/dev/ttyUSB0");
            }
            n.ready = !rng.chance(2);
            n.cordoned = rng.chance(2);
            n
        })
        .collect()
}

/// The smallest whole multiplier of the base capacities that leaves the
/// full pending set at or below 80% of the cluster in both dimensions.
fn multiplier(nodes: &[NodeView], pending: &[PendingInstance]) -> u64 {
    let sum = |f: &dyn Fn(Resources) -> u64| -> (u64, u64) {
        let need = pending.iter().map(|p| f(p.workload.requests)).sum::<u64>();
        let have = nodes.iter().map(|n| f(n.allocatable)).sum::<u64>();
        (need, have)
    };
    let factor = |(need, have): (u64, u64)| (need * 10).div_ceil(have * 8).max(1);
    factor(sum(&|r| r.cpu_millis)).max(factor(sum(&|r| r.memory_bytes)))
}

/// Low-priority instances filling about 60% of every Ready gateway.
fn background(nodes: &[NodeView]) -> Vec<RunningInstance> {
    let mut out = Vec::new();
    for n in nodes {
        let slice = Resources::new(
            n.allocatable.cpu_millis / 10,
            n.allocatable.memory_bytes / 10,
        );
        for r in 0..6 {
            out.push(running(&format!("bg{}", n.id), r, n.id, slice, -1));
        }
    }
    out
}

fn median_time(view: &ClusterView, pending: &[PendingInstance], runs: usize) -> (Duration, Plan) {
    let mut times = Vec::with_capacity(runs);
    let mut last = Plan::default();
    for _ in 0..runs {
        let start = Instant::now();
        last = black_box(plan(black_box(view), black_box(pending)));
        times.push(start.elapsed());
    }
    times.sort();
    (times[runs / 2], last)
}

fn row(label: &str, view: &ClusterView, pending: &[PendingInstance]) -> Duration {
    let runs = if pending.len() > 5000 { 7 } else { 21 };
    let (t, p) = median_time(view, pending, runs);
    let secs = t.as_secs_f64();
    println!(
        "{:>5} {:>9} {:>7} {:>7} {:>7} {:>10.3} {:>13.0} {:>13.0}  {label}",
        view.nodes.len(),
        pending.len(),
        p.placements.len(),
        p.evictions.len(),
        p.unplaceable.len(),
        secs * 1e3,
        p.placements.len() as f64 / secs,
        pending.len() as f64 / secs,
    );
    t
}

fn main() {
    println!(
        "{:>5} {:>9} {:>7} {:>7} {:>7} {:>10} {:>13} {:>13}",
        "nodes",
        "instances",
        "placed",
        "evicted",
        "refused",
        "median ms",
        "placements/s",
        "instances/s"
    );
    let mut ratios = Vec::new();
    for nodes in [50usize, 500] {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ nodes as u64);
        let all = pending_set(10_000, nodes, &mut rng);
        let base = cluster(nodes, 1, &mut Rng(nodes as u64 + 1));
        let view = ClusterView {
            nodes: cluster(nodes, multiplier(&base, &all), &mut Rng(nodes as u64 + 1)),
            running: Vec::new(),
        };
        let small = row("", &view, &all[..1000]);
        let large = row("", &view, &all);
        ratios.push((nodes, large.as_secs_f64() / small.as_secs_f64()));
        if nodes == 500 {
            let contended = ClusterView {
                running: background(&view.nodes),
                nodes: view.nodes.clone(),
            };
            let label = format!("+{} running at priority -1", contended.running.len());
            row(&label, &contended, &all);
        }
    }
    println!();
    for (nodes, ratio) in ratios {
        println!("{nodes} nodes: 1k -> 10k instances costs x{ratio:.1} (linear would be x10)");
    }
}
