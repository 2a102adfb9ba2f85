//! The simulated site: gateways ("hosts"), each with its own disk, clock,
//! container engine and fence guard, on one in-memory network. A host's
//! daemon can crash (its containers and guard live on, its disk keeps
//! what it wrote) or lose power (disk writes not yet synced are gone, and
//! its containers, guard and boot clock with them).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gantry::agent::fence::{self, Entry, LeaseSink};
use gantry::agent::guard::Lease;
use gantry::agent::NodeParts;
use gantry::clock::Clock;
use gantry::cluster::mem_store::{MemDisk, MemLogStore, MemStateMachine, SharedDisk};
use gantry::cluster::{Cluster, ClusterDeps, ContactRecord, NodeId, RaftTimers};
use gantry::gateway::InProcessGateway;
use gantry_node::AgentConfig;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::task::JoinHandle;

use crate::clock::HostClock;
use crate::fake::{FakeEngine, Registry};
use crate::net::{Net, SimTransport};
use crate::observe::{ObservedSm, Observer};
use crate::trace::Trace;

pub const CLUSTER_ID: &str = "sim";

/// The fence guard of one host: a separate process that keeps the last
/// lease the daemon handed it and enforces it every 100 ms, so a copy that
/// must die by its deadline dies even when the daemon is dead. It lives as
/// long as the machine has power.
#[derive(Clone, Default)]
pub struct GuardSlot {
    lease: Arc<Mutex<Vec<Entry>>>,
}

#[async_trait::async_trait]
impl LeaseSink for GuardSlot {
    async fn send(&mut self, lease: &Lease) -> bool {
        *self.lease.lock().unwrap_or_else(|p| p.into_inner()) = lease.entries.clone();
        true
    }
}

async fn guard_actor(slot: GuardSlot, engine: FakeEngine, clock: Arc<HostClock>) {
    loop {
        tokio::time::sleep(fence::CHECK_EVERY).await;
        let entries = std::mem::take(&mut *slot.lease.lock().unwrap_or_else(|p| p.into_inner()));
        let (keep, _killed) = fence::enforce_with(&engine, entries, clock.boot_ms());
        let mut lease = slot.lease.lock().unwrap_or_else(|p| p.into_inner());
        // A lease the daemon sent meanwhile replaces what was kept.
        if lease.is_empty() {
            *lease = keep;
        }
    }
}

/// One simulated machine.
pub struct Host {
    pub id: NodeId,
    pub disk: SharedDisk,
    pub clock: Arc<HostClock>,
    pub engine: FakeEngine,
    contact: Arc<Mutex<Option<String>>>,
    guard: GuardSlot,
    guard_task: Option<JoinHandle<()>>,
    pub gateway: Option<InProcessGateway>,
    pub powered: bool,
    incarnation: u64,
    /// Seeded fsync delays, reset by `set_slow_disk`.
    disk_rng: Arc<Mutex<StdRng>>,
}

/// The whole site.
pub struct World {
    pub hosts: BTreeMap<NodeId, Host>,
    pub net: Net,
    pub registry: Registry,
    pub observer: Observer,
    pub trace: Trace,
    pub timers: RaftTimers,
    pub stop_grace: Duration,
    pub lie_about_fsync: bool,
}

fn fsync_delays(rng: Arc<Mutex<StdRng>>, slow: bool) -> impl FnMut() -> Duration + Send {
    move || {
        let mut rng = rng.lock().unwrap_or_else(|p| p.into_inner());
        let us = if slow {
            rng.random_range(5_000..=150_000)
        } else {
            rng.random_range(100..=2_000)
        };
        Duration::from_micros(us)
    }
}

impl World {
    pub fn new(seed: u64, gateways: u64, trace: Trace, lie_about_fsync: bool) -> Self {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5157_4f52_4c44);
        let registry = Registry::default();
        let mut hosts = BTreeMap::new();
        for id in 1..=gateways {
            let disk = MemDisk::shared();
            let disk_rng = Arc::new(Mutex::new(StdRng::seed_from_u64(rng.random())));
            {
                let mut d = disk.lock().unwrap_or_else(|p| p.into_inner());
                d.set_fsync_delays(fsync_delays(disk_rng.clone(), false));
                d.set_lie_about_fsync(lie_about_fsync);
            }
            let clock = Arc::new(HostClock::new(id, rng.random_range(10_000..=60_000)));
            let engine = FakeEngine::new(id, rng.random(), registry.clone(), trace.clone());
            hosts.insert(
                id,
                Host {
                    id,
                    disk,
                    clock,
                    engine,
                    contact: Arc::new(Mutex::new(None)),
                    guard: GuardSlot::default(),
                    guard_task: None,
                    gateway: None,
                    powered: true,
                    incarnation: 0,
                    disk_rng,
                },
            );
        }
        Self {
            hosts,
            net: Net::new(rng.random()),
            registry,
            observer: Observer::default(),
            trace,
            timers: RaftTimers::default(),
            stop_grace: Duration::from_secs(10),
            lie_about_fsync,
        }
    }

    pub fn ids(&self) -> Vec<NodeId> {
        self.hosts.keys().copied().collect()
    }

    /// How many times the daemon of `id` has started (None: no such host).
    pub fn incarnation(&self, id: NodeId) -> Option<u64> {
        self.hosts.get(&id).map(|h| h.incarnation)
    }

    /// The clusters of the running daemons.
    pub fn running(&self) -> BTreeMap<NodeId, Cluster> {
        self.hosts
            .iter()
            .filter_map(|(id, h)| h.gateway.as_ref().map(|g| (*id, g.cluster.clone())))
            .collect()
    }

    /// Starts the daemon of `id` (powering the machine on if needed).
    pub async fn start(&mut self, id: NodeId) -> Result<(), String> {
        let trace = self.trace.clone();
        let observer = self.observer.clone();
        let net = self.net.clone();
        let timers = self.timers.clone();
        let stop_grace = self.stop_grace;
        let Some(host) = self.hosts.get_mut(&id) else {
            return Err(format!("no host {id}"));
        };
        if host.gateway.is_some() {
            return Ok(());
        }
        if !host.powered {
            host.powered = true;
            host.clock.reboot();
            trace.event(format!("gw{id} power on"));
        }
        if host.guard_task.is_none() {
            host.guard = GuardSlot::default();
            host.guard_task = Some(tokio::spawn(guard_actor(
                host.guard.clone(),
                host.engine.clone(),
                host.clock.clone(),
            )));
        }
        host.incarnation += 1;
        let log = MemLogStore::new(host.disk.clone());
        let sm = ObservedSm {
            inner: MemStateMachine::new(host.disk.clone()),
            host: id,
            observer,
        };
        let state = sm.reader();
        let deps = ClusterDeps {
            transport: Arc::new(SimTransport {
                net: net.clone(),
                node: id,
                incarnation: host.incarnation,
            }),
            clock: host.clock.clone(),
            contact: ContactRecord::Memory(host.contact.clone()),
        };
        let node = NodeParts {
            runtime: Arc::new(host.engine.clone()),
            config: AgentConfig {
                stop_grace,
                ..AgentConfig::default()
            },
            image_source: None,
            killer: Arc::new(host.engine.clone()),
            guard: Box::new(host.guard.clone()),
            namespace: None,
        };
        let gateway = InProcessGateway::start(id, CLUSTER_ID, log, sm, state, &timers, deps, node)
            .await
            .map_err(|e| format!("gw{id} did not start: {e}"))?;
        net.attach(id, host.incarnation, gateway.handlers.clone());
        host.gateway = Some(gateway);
        trace.event(format!("gw{id} daemon started"));
        Ok(())
    }

    /// The daemon of `id` dies (kill -9): containers and guard live on.
    pub async fn crash(&mut self, id: NodeId) {
        let Some(host) = self.hosts.get_mut(&id) else {
            return;
        };
        let Some(gateway) = host.gateway.take() else {
            return;
        };
        self.net.detach(id, false);
        gateway.kill().await;
        self.trace.event(format!("gw{id} daemon crashed"));
    }

    /// `id` loses power: the daemon dies, unsynced disk writes are lost,
    /// containers and the guard end, and the boot clock will start over.
    pub async fn power_cut(&mut self, id: NodeId) {
        let Some(host) = self.hosts.get_mut(&id) else {
            return;
        };
        self.net.detach(id, true);
        if let Some(gateway) = host.gateway.take() {
            gateway.kill().await;
        }
        if let Some(guard) = host.guard_task.take() {
            guard.abort();
        }
        host.disk.lock().unwrap_or_else(|p| p.into_inner()).crash();
        host.engine.power_off();
        host.powered = false;
        self.trace.event(format!("gw{id} power cut"));
    }

    /// Slow (or normal again) fsyncs on `id`.
    pub fn set_slow_disk(&mut self, id: NodeId, slow: bool) {
        if let Some(host) = self.hosts.get(&id) {
            host.disk
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .set_fsync_delays(fsync_delays(host.disk_rng.clone(), slow));
        }
    }

    /// Stops everything at the end of a run (nothing is checked after).
    pub async fn shutdown(&mut self) {
        let ids = self.ids();
        for id in ids {
            if let Some(host) = self.hosts.get_mut(&id) {
                self.net.detach(id, false);
                if let Some(gateway) = host.gateway.take() {
                    gateway.kill().await;
                }
                if let Some(guard) = host.guard_task.take() {
                    guard.abort();
                }
            }
        }
    }
}
