//! The seeded fault schedule: crashes and power cuts (of leaders and
//! followers), partitions (one gateway or a minority cut off, both ways or
//! one way), message loss and latency, wall-clock skew, container-runtime
//! outages, slow disks and site-wide power cuts; one after another, sometimes two at a time,
//! most short, some outlasting the singleton fences; everything healed at
//! the end of the fault phase.

use std::collections::BTreeSet;

use gantry::cluster::NodeId;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::net::Link;
use crate::world::World;

#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    Crash(NodeId),
    PowerCut(NodeId),
    /// Cut off both ways from everyone.
    Isolate(NodeId),
    /// These gateways (a minority) on one side, the rest on the other.
    Split(Vec<NodeId>),
    /// Hears nothing, still sends.
    Deaf(NodeId),
    /// Sends nothing, still hears.
    Mute(NodeId),
    /// Loses this share of what it sends and receives.
    Lossy(NodeId, f64),
    /// Its links take this long, each way (ms).
    Slow(NodeId, u64, u64),
    /// Its wall clock is off by this much (ms).
    Skew(NodeId, i64),
    RuntimeOutage(NodeId),
    SlowDisk(NodeId),
    /// The whole site loses power at once (these gateways: all of them).
    SitePowerCut(Vec<NodeId>),
}

impl Fault {
    /// The gateways it touches (two faults on one gateway do not overlap).
    pub fn targets(&self) -> Vec<NodeId> {
        match self {
            Fault::Split(side) | Fault::SitePowerCut(side) => side.clone(),
            Fault::Crash(n)
            | Fault::PowerCut(n)
            | Fault::Isolate(n)
            | Fault::Deaf(n)
            | Fault::Mute(n)
            | Fault::Lossy(n, _)
            | Fault::Slow(n, _, _)
            | Fault::Skew(n, _)
            | Fault::RuntimeOutage(n)
            | Fault::SlowDisk(n) => vec![*n],
        }
    }

    fn is_link(&self) -> bool {
        matches!(
            self,
            Fault::Isolate(_)
                | Fault::Split(_)
                | Fault::Deaf(_)
                | Fault::Mute(_)
                | Fault::Lossy(..)
                | Fault::Slow(..)
        )
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Crash(_) => "crash",
            Fault::PowerCut(_) => "power_cut",
            Fault::Isolate(_) => "isolate",
            Fault::Split(_) => "split",
            Fault::Deaf(_) => "one_way_in",
            Fault::Mute(_) => "one_way_out",
            Fault::Lossy(..) => "loss",
            Fault::Slow(..) => "delay",
            Fault::Skew(..) => "skew",
            Fault::RuntimeOutage(_) => "runtime_outage",
            Fault::SlowDisk(_) => "slow_disk",
            Fault::SitePowerCut(_) => "site_power_cut",
        }
    }
}

/// Sets the links `fault` changes, on top of what is there.
fn apply_link(world: &World, fault: &Fault) {
    let ids = world.ids();
    let net = &world.net;
    let edit = |from: NodeId, to: NodeId, f: &dyn Fn(&mut Link)| {
        let mut link = net.link(from, to);
        f(&mut link);
        net.set_link(from, to, link);
    };
    let others = |n: NodeId| ids.iter().copied().filter(move |o| *o != n);
    match fault {
        Fault::Isolate(n) => {
            for o in others(*n) {
                edit(*n, o, &|l| l.cut = true);
                edit(o, *n, &|l| l.cut = true);
            }
        }
        Fault::Split(side) => {
            for a in side {
                for b in ids.iter().filter(|b| !side.contains(b)) {
                    edit(*a, *b, &|l| l.cut = true);
                    edit(*b, *a, &|l| l.cut = true);
                }
            }
        }
        Fault::Deaf(n) => {
            for o in others(*n) {
                edit(o, *n, &|l| l.cut = true);
            }
        }
        Fault::Mute(n) => {
            for o in others(*n) {
                edit(*n, o, &|l| l.cut = true);
            }
        }
        Fault::Lossy(n, p) => {
            for o in others(*n) {
                edit(*n, o, &|l| l.loss = l.loss.max(*p));
                edit(o, *n, &|l| l.loss = l.loss.max(*p));
            }
        }
        Fault::Slow(n, lo, hi) => {
            for o in others(*n) {
                edit(*n, o, &|l| l.delay_ms = (*lo, *hi));
                edit(o, *n, &|l| l.delay_ms = (*lo, *hi));
            }
        }
        _ => {}
    }
}

/// Starts `fault`.
pub async fn inject(world: &mut World, fault: &Fault) {
    world.trace.event(format!("fault start {fault:?}"));
    match fault {
        Fault::Crash(n) => world.crash(*n).await,
        Fault::PowerCut(n) => world.power_cut(*n).await,
        Fault::SitePowerCut(all) => {
            for n in all {
                world.power_cut(*n).await;
            }
        }
        Fault::Skew(n, ms) => {
            if let Some(h) = world.hosts.get(n) {
                h.clock.set_skew(*ms);
            }
        }
        Fault::RuntimeOutage(n) => {
            if let Some(h) = world.hosts.get(n) {
                h.engine.set_outage(true);
            }
        }
        Fault::SlowDisk(n) => world.set_slow_disk(*n, true),
        link => apply_link(world, link),
    }
}

/// Ends `fault`; `still` are the faults that stay.
pub async fn heal(world: &mut World, fault: &Fault, still: &[Fault]) -> Result<(), String> {
    world.trace.event(format!("fault end {fault:?}"));
    match fault {
        Fault::Crash(n) | Fault::PowerCut(n) => world.start(*n).await?,
        Fault::SitePowerCut(all) => {
            for n in all {
                world.start(*n).await?;
            }
        }
        Fault::Skew(n, _) => {
            if let Some(h) = world.hosts.get(n) {
                h.clock.set_skew(0);
            }
        }
        Fault::RuntimeOutage(n) => {
            if let Some(h) = world.hosts.get(n) {
                h.engine.set_outage(false);
            }
        }
        Fault::SlowDisk(n) => world.set_slow_disk(*n, false),
        _ => {
            world.net.heal_all();
            for other in still.iter().filter(|f| f.is_link()) {
                apply_link(world, other);
            }
        }
    }
    Ok(())
}

/// Draws faults.
pub struct Nemesis {
    rng: StdRng,
}

impl Nemesis {
    pub fn new(seed: u64) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
        }
    }

    pub fn gap_ms(&mut self) -> u64 {
        self.rng.random_range(500..=4_000)
    }

    /// How long the next fault lasts: mostly 1-10 s, one in five past the
    /// singleton fences (s0's 8 s, s1's 33 s).
    pub fn duration_ms(&mut self) -> u64 {
        if self.rng.random_bool(0.8) {
            self.rng.random_range(1_000..=10_000)
        } else {
            self.rng.random_range(10_000..=40_000)
        }
    }

    /// A fault on gateways not in `busy`: a third of the time on the
    /// gateway that runs the singleton with the shortest fence
    /// (`singleton_host`), where the fence's timing is what stands between
    /// two copies; otherwise half of the time on the `leader`.
    pub fn pick(
        &mut self,
        ids: &[NodeId],
        busy: &BTreeSet<NodeId>,
        leader: Option<NodeId>,
        singleton_host: Option<NodeId>,
    ) -> Option<Fault> {
        let free: Vec<NodeId> = ids.iter().copied().filter(|n| !busy.contains(n)).collect();
        if free.is_empty() {
            return None;
        }
        let hot = singleton_host.filter(|h| free.contains(h));
        let lead = leader.filter(|l| free.contains(l));
        let target = match (hot, lead) {
            (Some(h), _) if self.rng.random_bool(0.33) => h,
            (_, Some(l)) if self.rng.random_bool(0.5) => l,
            _ => free[self.rng.random_range(0..free.len())],
        };
        let fault = match self.rng.random_range(0..100) {
            0..=14 => Fault::Crash(target),
            15..=24 => Fault::PowerCut(target),
            25..=36 => Fault::Isolate(target),
            37..=44 => {
                let mut side = free.clone();
                side.shuffle(&mut self.rng);
                let max = (ids.len() - 1) / 2;
                let size = self.rng.random_range(1..=max.max(1));
                side.truncate(size);
                side.sort_unstable();
                Fault::Split(side)
            }
            45..=51 => Fault::Deaf(target),
            52..=58 => Fault::Mute(target),
            59..=66 => Fault::Lossy(target, self.rng.random_range(0.1..0.6)),
            67..=74 => {
                let lo = self.rng.random_range(20..=300);
                Fault::Slow(target, lo, lo + self.rng.random_range(0..=300))
            }
            75..=84 => {
                let ms = self.rng.random_range(1_000..=5_000) as i64;
                Fault::Skew(target, if self.rng.random_bool(0.5) { ms } else { -ms })
            }
            85..=92 => Fault::RuntimeOutage(target),
            // A site-wide power cut only when nothing else is under way.
            97..=99 if busy.is_empty() => Fault::SitePowerCut(ids.to_vec()),
            _ => Fault::SlowDisk(target),
        };
        Some(fault)
    }
}
