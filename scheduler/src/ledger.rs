//! Bookkeeping for one plan: free capacity per gateway, who runs where, replica counts.
//!
//! Built once from the snapshot and updated in place as the plan places and
//! evicts, so each placement costs one pass over the gateways instead of a
//! recount of every instance.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;

use crate::model::{ClusterView, NodeView, Resources, RunningInstance};
use crate::rank::Scale;

/// Capacity still free on a gateway. Signed and wide because running
/// instances may already overcommit a gateway whose allocatable shrank.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Free {
    pub cpu: i128,
    pub memory: i128,
}

impl Free {
    fn of(r: Resources) -> Self {
        Free {
            cpu: i128::from(r.cpu_millis),
            memory: i128::from(r.memory_bytes),
        }
    }

    pub fn fits(self, r: Resources) -> bool {
        self.cpu >= i128::from(r.cpu_millis) && self.memory >= i128::from(r.memory_bytes)
    }

    /// Never more than allocatable, so it fits in `u64` once non-negative.
    pub fn as_resources(self) -> Resources {
        let clamp = |v: i128| u64::try_from(v.max(0)).unwrap_or(u64::MAX);
        Resources::new(clamp(self.cpu), clamp(self.memory))
    }

    pub fn minus(self, r: Resources) -> Self {
        let d = Free::of(r);
        Free {
            cpu: self.cpu - d.cpu,
            memory: self.memory - d.memory,
        }
    }

    pub fn plus(self, r: Resources) -> Self {
        let d = Free::of(r);
        Free {
            cpu: self.cpu + d.cpu,
            memory: self.memory + d.memory,
        }
    }
}

/// Replicas per (workload, gateway), materialised densely only for
/// `spread: node` workloads because only they read it, on the hot path.
#[derive(Default)]
struct Replicas<'a> {
    ids: BTreeMap<&'a str, usize>,
    running: Vec<Vec<usize>>,
    placed: Vec<Vec<usize>>,
    dense: Vec<Option<Vec<u32>>>,
}

impl<'a> Replicas<'a> {
    fn id(&mut self, name: &'a str) -> usize {
        let next = self.ids.len();
        let id = *self.ids.entry(name).or_insert(next);
        if id == next {
            self.running.push(Vec::new());
            self.placed.push(Vec::new());
            self.dense.push(None);
        }
        id
    }
}

/// The mutable view of the cluster while one plan is being built.
pub(crate) struct Ledger<'a> {
    nodes: Vec<&'a NodeView>,
    index: BTreeMap<u64, usize>,
    free: Vec<Free>,
    scale: Vec<Scale>,
    running: &'a [RunningInstance],
    running_at: Vec<Option<usize>>,
    evicted: Vec<bool>,
    /// Running instances per gateway, lowest priority (then largest) first:
    /// the order in which preemption considers them.
    on_node: Vec<Vec<usize>>,
    replicas: Replicas<'a>,
    lowest_priority: Option<i32>,
    /// Instances per gateway (running and not evicted, plus placed): the
    /// tie-break that spreads instances which request nothing.
    load: Vec<u32>,
}

impl<'a> Ledger<'a> {
    /// Gateways with a repeated id are the same gateway listed twice; only
    /// the first is kept so a plan never names an ambiguous target.
    pub fn new(view: &'a ClusterView) -> Self {
        let mut index = BTreeMap::new();
        let mut nodes = Vec::with_capacity(view.nodes.len());
        for node in &view.nodes {
            if let Entry::Vacant(slot) = index.entry(node.id) {
                slot.insert(nodes.len());
                nodes.push(node);
            }
        }
        let mut ledger = Ledger {
            free: nodes.iter().map(|n| Free::of(n.allocatable)).collect(),
            scale: nodes.iter().map(|n| Scale::of(n.allocatable)).collect(),
            on_node: vec![Vec::new(); nodes.len()],
            nodes,
            index,
            running: &view.running,
            running_at: Vec::with_capacity(view.running.len()),
            evicted: vec![false; view.running.len()],
            replicas: Replicas::default(),
            lowest_priority: None,
            load: vec![0; view.nodes.len()],
        };
        ledger.charge_running();
        ledger.sort_for_preemption();
        ledger
    }

    /// Instances on gateways missing from the view hold nothing: that
    /// gateway is gone and the driver reschedules them.
    fn charge_running(&mut self) {
        for (i, r) in self.running.iter().enumerate() {
            let at = self.index.get(&r.node).copied();
            self.running_at.push(at);
            let wid = self.replicas.id(&r.instance.workload);
            if let Some(n) = at {
                self.free[n] = self.free[n].minus(r.requests);
                self.load[n] += 1;
                self.on_node[n].push(i);
                self.replicas.running[wid].push(i);
                self.lowest_priority = Some(
                    self.lowest_priority
                        .map_or(r.priority, |p| p.min(r.priority)),
                );
            }
        }
    }

    fn sort_for_preemption(&mut self) {
        let running = self.running;
        for (n, list) in self.on_node.iter_mut().enumerate() {
            let scale = self.scale[n];
            list.sort_by(|&a, &b| {
                let (ra, rb) = (&running[a], &running[b]);
                ra.priority
                    .cmp(&rb.priority)
                    .then_with(|| scale.share(rb.requests).cmp(&scale.share(ra.requests)))
                    .then_with(|| ra.instance.cmp(&rb.instance))
                    .then(a.cmp(&b))
            });
        }
    }

    pub fn nodes(&self) -> &[&'a NodeView] {
        &self.nodes
    }

    pub fn node_id(&self, n: usize) -> u64 {
        self.nodes[n].id
    }

    pub fn position(&self, id: u64) -> Option<usize> {
        self.index.get(&id).copied()
    }

    pub fn free(&self, n: usize) -> Free {
        self.free[n]
    }

    pub fn scale(&self, n: usize) -> Scale {
        self.scale[n]
    }

    pub fn running(&self, i: usize) -> &'a RunningInstance {
        &self.running[i]
    }

    /// A cheap early-out: preemption needs at least one lower-priority instance somewhere.
    pub fn may_preempt(&self, priority: i32) -> bool {
        self.lowest_priority.is_some_and(|p| p < priority)
    }

    /// Running instances on gateway `n` not yet evicted, in preemption order.
    pub fn evictable(&self, n: usize) -> impl Iterator<Item = usize> + '_ {
        self.on_node[n]
            .iter()
            .copied()
            .filter(|&i| !self.evicted[i])
    }

    /// Interns the workload and, for `spread: node` workloads, makes its
    /// per-gateway replica counts readable through [`Ledger::replica_counts`].
    pub fn workload(&mut self, name: &'a str, spread: bool) -> usize {
        let wid = self.replicas.id(name);
        if spread && self.replicas.dense[wid].is_none() {
            let mut counts = vec![0u32; self.nodes.len()];
            for &i in &self.replicas.running[wid] {
                if let (false, Some(n)) = (self.evicted[i], self.running_at[i]) {
                    counts[n] += 1;
                }
            }
            for &n in &self.replicas.placed[wid] {
                counts[n] += 1;
            }
            self.replicas.dense[wid] = Some(counts);
        }
        wid
    }

    pub fn replica_counts(&self, wid: usize) -> Option<&[u32]> {
        self.replicas.dense[wid].as_deref()
    }

    /// How many instances the gateway holds in this plan so far.
    pub fn load(&self, n: usize) -> u32 {
        self.load[n]
    }

    pub fn place(&mut self, n: usize, wid: usize, requests: Resources) {
        self.free[n] = self.free[n].minus(requests);
        self.load[n] += 1;
        self.replicas.placed[wid].push(n);
        if let Some(counts) = self.replicas.dense[wid].as_mut() {
            counts[n] += 1;
        }
    }

    pub fn evict(&mut self, i: usize) {
        let Some(n) = self.running_at[i] else { return };
        if std::mem::replace(&mut self.evicted[i], true) {
            return;
        }
        let r = &self.running[i];
        self.free[n] = self.free[n].plus(r.requests);
        self.load[n] = self.load[n].saturating_sub(1);
        if let Some(&wid) = self.replicas.ids.get(r.instance.workload.as_str()) {
            if let Some(counts) = self.replicas.dense[wid].as_mut() {
                counts[n] = counts[n].saturating_sub(1);
            }
        }
    }
}
