//! gantry-sim: the deterministic simulation of a gantry site. Several real
//! gateways (`gantry::gateway::InProcessGateway`: openraft, the control
//! loops, the node agent and its fence) run on one current-thread tokio
//! runtime with a paused clock, over in-memory disks, an in-memory network
//! and fake container engines, under a seeded nemesis and seeded clients.
//! One seed fixes every random choice, so a run replays exactly; each run
//! ends with a check of the invariants (see `check`) and a trace hash.

pub mod check;
pub mod clock;
pub mod cloud;
pub mod fake;
pub mod nemesis;
pub mod net;
pub mod observe;
pub mod trace;
pub mod workload;
pub mod world;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use gantry::cluster::{Cluster, NodeId};
use gantry::control::fencing;
use gantry::state::trust::{NodeTls, Pki, TokenKind, TokenRecord};
use gantry::state::{Capacity, ClusterSettings, Command, InstanceState, NodeStatus};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::Mutex;

use crate::clock::{reset_sim_time, sim_ms};
use crate::cloud::SimHub;
use crate::nemesis::{Fault, Nemesis};
use crate::trace::Trace;
use crate::workload::{Generator, History, Outcome, Write};
use crate::world::World;

/// A deliberately broken build, to show the checks can fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutation {
    None,
    /// The leader's singleton fence without its margin (`stop_after`
    /// alone). Caught through the fake runtime's slow kills: a process
    /// SIGKILLed in uninterruptible sleep dies up to 3 s later, which the
    /// margin (2 x node_grace + 1 s) covers and `node_grace` alone does not.
    FenceMarginZero,
    /// No fence: a lost gateway's singleton starts elsewhere at once.
    FenceZero,
    /// Isolated gateways stop their singletons 10 s after their limit.
    NodeStopsLate,
    /// Disks acknowledge log appends before they are durable.
    SkipFsync,
    /// The cloud link acknowledges a delivery before committing it.
    CloudAckBeforeCommit,
}

impl Mutation {
    pub fn name(&self) -> &'static str {
        match self {
            Mutation::None => "none",
            Mutation::FenceMarginZero => "fence-margin-zero",
            Mutation::FenceZero => "fence-zero",
            Mutation::NodeStopsLate => "node-stops-late",
            Mutation::SkipFsync => "skip-fsync",
            Mutation::CloudAckBeforeCommit => "cloud-ack-before-commit",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        [
            Mutation::None,
            Mutation::FenceMarginZero,
            Mutation::FenceZero,
            Mutation::NodeStopsLate,
            Mutation::SkipFsync,
            Mutation::CloudAckBeforeCommit,
        ]
        .into_iter()
        .find(|m| m.name() == name)
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    /// How long faults are injected (simulated ms); a quiet phase follows.
    pub fault_ms: u64,
    /// None: 3 to 5, drawn from the seed.
    pub gateways: Option<u64>,
    pub mutation: Mutation,
    /// Print the trace.
    pub trace: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            fault_ms: 60_000,
            gateways: None,
            mutation: Mutation::None,
            trace: false,
        }
    }
}

/// Convergence must come within this long after the last heal: one
/// leader with a quorum, equal replicas, every gateway Ready. Every placed
/// instance must be Running within this plus `ROLLOUT_STEPS` stop graces:
/// a rolling update that the faults held up replaces one replica at a time
/// (up to 3 replicas), and a container that ignores SIGTERM takes the whole
/// grace to go, whatever the faults did.
pub const CONVERGE_WITHIN_MS: u64 = 10_000;

/// See `CONVERGE_WITHIN_MS`.
pub const ROLLOUT_STEPS: u64 = 3;

/// Clients stop writing this long before the end of the fault phase.
pub const CLIENTS_QUIET_MS: u64 = 12_000;

/// What one seed did and what the checker found.
#[derive(Debug, Clone, Default)]
pub struct RunReport {
    pub seed: u64,
    pub gateways: u64,
    pub faults: u64,
    pub faults_by_kind: BTreeMap<&'static str, u64>,
    pub ops: u64,
    pub acked: u64,
    /// Cloud revisions the hub made, and the acknowledgements it took.
    pub cloud_revisions: u64,
    pub lost: Vec<String>,
    pub duplicated: Vec<String>,
    pub divergent: Vec<String>,
    pub overlaps: Vec<String>,
    pub over_capacity: Vec<String>,
    /// ms from the last heal to convergence (every placed instance
    /// Running), or why it did not come in time.
    pub converge: Option<Result<u64, String>>,
    /// ms from the last heal until one leader, equal replicas and every
    /// gateway Ready.
    pub control_converge_ms: Option<u64>,
    pub errors: Vec<String>,
    pub trace_hash: String,
    pub events: u64,
    pub sim_ms: u64,
}

impl RunReport {
    /// Every violation, one line each.
    pub fn violations(&self) -> Vec<String> {
        let mut out = Vec::new();
        let tagged = |tag: &str, list: &[String], out: &mut Vec<String>| {
            out.extend(list.iter().map(|l| format!("{tag}: {l}")));
        };
        tagged("lost", &self.lost, &mut out);
        tagged("duplicated", &self.duplicated, &mut out);
        tagged("divergent", &self.divergent, &mut out);
        tagged("overlap", &self.overlaps, &mut out);
        tagged("over_capacity", &self.over_capacity, &mut out);
        if let Some(Err(e)) = &self.converge {
            out.push(format!("no convergence: {e}"));
        }
        tagged("error", &self.errors, &mut out);
        out
    }
}

/// Wall time one seed may take. Simulated time advances only while every
/// task waits, so a task that spins (polls without ever sleeping) stops the
/// clock and the run never ends: that is a bug, reported as such.
pub const SEED_WALL_LIMIT: Duration = Duration::from_secs(300);

/// Runs one seed on its own thread and runtime; a seed that does not end
/// within `SEED_WALL_LIMIT` is reported (its thread is left behind).
pub fn run_seed(seed: u64, config: &Config) -> RunReport {
    let (tx, rx) = std::sync::mpsc::channel();
    let thread_config = config.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("seed-{seed}"))
        .spawn(move || {
            let _ = tx.send(run_seed_here(seed, &thread_config));
        });
    if let Err(e) = spawned {
        return RunReport {
            seed,
            errors: vec![format!("cannot start a thread: {e}")],
            ..RunReport::default()
        };
    }
    match rx.recv_timeout(SEED_WALL_LIMIT) {
        Ok(report) => report,
        Err(_) => RunReport {
            seed,
            errors: vec![format!(
                "did not end within {SEED_WALL_LIMIT:?} of wall time: a task spins without letting simulated time advance"
            )],
            ..RunReport::default()
        },
    }
}

thread_local! {
    /// Panics on this seed's thread (tokio catches a task's panic; the run
    /// must still hear of it).
    static PANICS: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Records panics on seed threads (one line each, in the report) and
/// leaves every other thread's panics to the hook that was there.
fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let on_seed = std::thread::current()
                .name()
                .is_some_and(|n| n.starts_with("seed-"));
            if !on_seed {
                return previous(info);
            }
            let message = info
                .payload()
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| info.payload().downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            let at = info
                .location()
                .map(|l| format!(" at {}:{}", l.file(), l.line()))
                .unwrap_or_default();
            PANICS.with(|p| p.borrow_mut().push(format!("{message}{at}")));
        }));
    });
}

/// Runs one seed on its own runtime, on the calling thread.
fn run_seed_here(seed: u64, config: &Config) -> RunReport {
    install_panic_hook();
    PANICS.with(|p| p.borrow_mut().clear());
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .rng_seed(tokio::runtime::RngSeed::from_bytes(&seed_bytes))
        .build();
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            return RunReport {
                seed,
                errors: vec![format!("cannot build a runtime: {e}")],
                ..RunReport::default()
            }
        }
    };
    gantry::cluster::rt::seed_thread_rng(seed);
    fencing::mutation::set_zero_margin(config.mutation == Mutation::FenceMarginZero);
    fencing::mutation::set_no_fence(config.mutation == Mutation::FenceZero);
    fencing::mutation::set_node_stop_delay_ms(if config.mutation == Mutation::NodeStopsLate {
        10_000
    } else {
        0
    });
    gantry::cloud::link::deliver::mutation::set_ack_before_commit(
        config.mutation == Mutation::CloudAckBeforeCommit,
    );
    let mut report = runtime.block_on(simulate(seed, config.clone()));
    drop(runtime);
    for panic in PANICS.with(|p| std::mem::take(&mut *p.borrow_mut())) {
        report.errors.push(format!("a task panicked: {panic}"));
    }
    gantry::cloud::link::deliver::mutation::set_ack_before_commit(false);
    fencing::mutation::set_zero_margin(false);
    fencing::mutation::set_no_fence(false);
    fencing::mutation::set_node_stop_delay_ms(0);
    report
}

fn init_commands(ids: &[NodeId]) -> Vec<Command> {
    let mut commands = vec![Command::InitCluster {
        cluster_id: world::CLUSTER_ID.into(),
        settings: ClusterSettings::default(),
        pki: Pki {
            ca_certs_pem: String::new(),
            ca_sha256: "ab".repeat(32),
            ca_key_sealed: String::new(),
        },
        join_token: TokenRecord {
            id: "0a".into(),
            kind: TokenKind::Join,
            name: String::new(),
            role: None,
            secret_sha256: "cd".repeat(32),
            created_ms: 0,
            expires_ms: None,
            uses_left: None,
            node: None,
            default: false,
        },
    }];
    commands.push(Command::CloudAttach {
        // Never dialled: the simulated link calls the simulated hub.
        hub: "127.0.0.1:7443".into(),
        site: "sim".into(),
        hub_ca_sha256: "ef".repeat(32),
        token_sealed: "00".into(),
        keepalive_ms: None,
        mqtt: None,
    });
    for id in ids {
        commands.push(Command::RegisterNode {
            name: format!("gw{id}"),
            address: net::addr_of(*id),
            labels: Default::default(),
            capacity: Capacity {
                cpu_millis: 1000,
                memory_bytes: 1 << 30,
            },
            devices: Default::default(),
            tls: Some(NodeTls {
                spki_sha256: format!("{id:02x}").repeat(32),
                serial: "01".into(),
                not_after_ms: u64::MAX,
                previous: None,
            }),
            join_token: None,
        });
    }
    commands
}

/// Writes `command` through whichever daemon runs, until it is acknowledged
/// (or `limit_ms` passed).
async fn write_until_ok(world: &Arc<Mutex<World>>, command: Command, limit_ms: u64) -> bool {
    let deadline = sim_ms() + limit_ms;
    while sim_ms() < deadline {
        let clusters: Vec<Cluster> = world.lock().await.running().into_values().collect();
        for cluster in clusters {
            if let Ok(response) = cluster.write(command.clone()).await {
                if !matches!(response, gantry::state::Response::Rejected { .. }) {
                    return true;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

/// Why the control plane has not converged yet (None: it has): one leader
/// with a quorum, every replica equal, every gateway Ready (or draining).
fn not_converged(world: &World) -> Option<Unsettled> {
    let lag = |why: String| Unsettled {
        why,
        only_lag: true,
    };
    let other = |why: String| Unsettled {
        why,
        only_lag: false,
    };
    let running = world.running();
    if running.len() != world.hosts.len() {
        return Some(other("a daemon is not running".into()));
    }
    let leaders: BTreeSet<Option<NodeId>> = running
        .values()
        .map(|c| c.metrics().current_leader)
        .collect();
    let leader = match leaders.into_iter().collect::<Vec<_>>().as_slice() {
        [Some(l)] => *l,
        seen => return Some(other(format!("leaders seen: {seen:?}"))),
    };
    let Some(lead) = running.get(&leader) else {
        return Some(other(format!("leader gw{leader} is not running")));
    };
    if !lead.leader_has_quorum() {
        return Some(other(format!("leader gw{leader} has no quorum")));
    }
    let first = lead.state().read().clone();
    let state = &first.state;
    // Draining is a verdict of the operator's, not of liveness: the
    // drains end when the operator uncordons, after the clients finish.
    for node in state.nodes.values() {
        if !matches!(node.status, NodeStatus::Ready | NodeStatus::Draining) {
            return Some(other(format!("gw{} is {}", node.id, node.status)));
        }
    }
    for (id, cluster) in &running {
        let applied = cluster.state().read();
        if applied.last_applied != first.last_applied || applied.state != first.state {
            return Some(lag(format!(
                "gw{id} is at {:?}, the leader at {:?}",
                applied.last_applied.map(|l| l.index),
                first.last_applied.map(|l| l.index)
            )));
        }
    }
    None
}

/// Why the control plane is not settled, and whether it is only a
/// follower behind the leader: once the plane has converged, the writes
/// that follow (instance reports) keep a follower an entry behind now and
/// then, which is replication at work, not a plane that fell apart.
struct Unsettled {
    why: String,
    only_lag: bool,
}

/// Why not every placed instance runs yet, or the site does not hold the
/// hub's revision (None: all is done).
fn not_running(world: &World, hub: &SimHub) -> Option<String> {
    let running = world.running();
    let leader = running.values().find(|c| c.is_leader())?;
    let first = leader.state().read().clone();
    let state = &first.state;
    if let Some(why) = hub.differs(state) {
        return Some(format!("cloud: the site is {why}"));
    }
    if hub.acked() != hub.revision() {
        return Some(format!(
            "cloud: the hub has {} acknowledged of {}",
            hub.acked(),
            hub.revision()
        ));
    }
    for instance in state.instances.values() {
        let Some(node) = instance.node else { continue };
        // A copy stopped to move waits for a home like an unplaced one:
        // when the site is full it may find none (the scheduler says so).
        if instance.stopping && instance.stopped {
            continue;
        }
        if instance.state != InstanceState::Running {
            return Some(format!(
                "{}-{} on gw{node} is {}",
                instance.workload, instance.replica, instance.state
            ));
        }
        let runs = world.hosts.get(&node).is_some_and(|h| {
            h.engine
                .running()
                .iter()
                .any(|(_, w, r)| *w == instance.workload && *r == instance.replica)
        });
        if !runs {
            return Some(format!(
                "{}-{} is Running on gw{node} in the state but not in its engine",
                instance.workload, instance.replica
            ));
        }
    }
    None
}

async fn simulate(seed: u64, config: Config) -> RunReport {
    reset_sim_time();
    let trace = Trace::new(config.trace);
    let mut rng = StdRng::seed_from_u64(seed);
    let gateways = config
        .gateways
        .unwrap_or_else(|| [3, 4, 5, 5][rng.random_range(0..4)]);
    let mut report = RunReport {
        seed,
        gateways,
        ..RunReport::default()
    };
    let world = World::new(
        rng.random(),
        gateways,
        trace.clone(),
        config.mutation == Mutation::SkipFsync,
    );
    let ids = world.ids();
    let world = Arc::new(Mutex::new(world));
    {
        let mut w = world.lock().await;
        for id in &ids {
            if let Err(e) = w.start(*id).await {
                report.errors.push(e);
            }
        }
        let members = ids.iter().map(|id| (*id, net::addr_of(*id))).collect();
        if let Some(first) = w.running().get(&1) {
            if let Err(e) = first.initialize(members).await {
                report.errors.push(format!("initialize: {e}"));
            }
        }
    }
    for command in init_commands(&ids) {
        if !write_until_ok(&world, command, 20_000).await {
            report.errors.push("the cluster could not be set up".into());
            world.lock().await.shutdown().await;
            return report;
        }
    }
    trace.event("cluster set up");
    let fault_end = sim_ms() + config.fault_ms;
    // Clients stop this long before the faults do: a rollout of their last
    // writes (old copies that ignore SIGTERM take the whole stop grace) is
    // then over by the heal, and the convergence time measures recovery
    // from the faults, not the length of a rollout.
    let clients_end = fault_end.saturating_sub(CLIENTS_QUIET_MS);

    // What every daemon believes (leader, term, applied index), into the
    // trace whenever it changes.
    let monitor = {
        let world = world.clone();
        let trace = trace.clone();
        tokio::spawn(async move {
            let mut last: BTreeMap<NodeId, (Option<NodeId>, u64, Option<u64>)> = BTreeMap::new();
            let mut singletons: BTreeMap<String, String> = BTreeMap::new();
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let running = world.lock().await.running();
                // Where the leader's replica places each singleton copy.
                if let Some(leader) = running.values().find(|c| c.is_leader()) {
                    let applied = leader.state().read();
                    for i in applied.state.instances.values() {
                        let singleton = applied
                            .state
                            .workloads
                            .get(&i.workload)
                            .is_some_and(|w| w.spec.singleton);
                        if !singleton {
                            continue;
                        }
                        let now = format!(
                            "node {:?} {} g{} stopping {} stopped {}",
                            i.node,
                            i.state,
                            i.container_generation(),
                            i.stopping,
                            i.stopped
                        );
                        let key = format!("{}-{}", i.workload, i.replica);
                        if singletons.get(&key) != Some(&now) {
                            trace.event(format!("leader: {key} {now}"));
                            singletons.insert(key, now);
                        }
                    }
                }
                for (id, cluster) in running {
                    let m = cluster.metrics();
                    let now = (
                        m.current_leader,
                        m.current_term,
                        m.last_applied.map(|l| l.index),
                    );
                    if last.get(&id) != Some(&now) {
                        trace.event(format!(
                            "gw{id} leader {:?} term {} applied {:?}",
                            now.0, now.1, now.2
                        ));
                        last.insert(id, now);
                    }
                }
            }
        })
    };

    // The cloud: an operator changing desired workloads at the hub while
    // the clients write, and each gateway's link.
    let hub = SimHub::new(trace.clone());
    let mut cloud_tasks = vec![tokio::spawn(cloud::operator(
        hub.clone(),
        rng.random(),
        clients_end,
    ))];
    for id in &ids {
        cloud_tasks.push(tokio::spawn(cloud::link(world.clone(), hub.clone(), *id)));
    }

    // Clients.
    let history = History::default();
    let mut clients = Vec::new();
    for client in 1..=3u32 {
        let world = world.clone();
        let history = history.clone();
        let trace = trace.clone();
        let ids = ids.clone();
        let mut generator = Generator::new(client, rng.random());
        clients.push(tokio::spawn(async move {
            while sim_ms() < clients_end {
                tokio::time::sleep(generator.pause()).await;
                let running: Vec<(NodeId, Cluster)> =
                    world.lock().await.running().into_iter().collect();
                let Some(index) = generator.pick(&(0..running.len()).collect::<Vec<_>>()) else {
                    continue;
                };
                let (via, cluster) = running[index].clone();
                let (write, replicas) = generator.next(&ids);
                workload::perform(&history, &trace, client, via, &cluster, write, replicas).await;
            }
        }));
    }

    // Nemesis.
    let mut nemesis = Nemesis::new(rng.random());
    let mut active: Vec<(u64, Fault)> = Vec::new();
    let mut next_fault = sim_ms() + 2_000;
    while sim_ms() < fault_end {
        let next_heal = active.iter().map(|(at, _)| *at).min();
        let wake = next_heal
            .map_or(next_fault, |h| h.min(next_fault))
            .min(fault_end);
        let now = sim_ms();
        if wake > now {
            tokio::time::sleep(Duration::from_millis(wake - now)).await;
        }
        let now = sim_ms();
        let mut w = world.lock().await;
        // Heal what is due.
        while let Some(pos) = active.iter().position(|(at, _)| *at <= now) {
            let (_, fault) = active.remove(pos);
            let still: Vec<Fault> = active.iter().map(|(_, f)| f.clone()).collect();
            if let Err(e) = nemesis::heal(&mut w, &fault, &still).await {
                report.errors.push(e);
            }
        }
        if now >= next_fault && active.len() < 2 && now < fault_end {
            let busy: BTreeSet<NodeId> = active.iter().flat_map(|(_, f)| f.targets()).collect();
            let running = w.running();
            let lead = running.values().find(|c| c.is_leader());
            let leader = lead.map(|c| c.id());
            let singleton_host = lead.and_then(|c| {
                let applied = c.state().read();
                applied
                    .state
                    .instances
                    .values()
                    .find(|i| i.workload == workload::SINGLETONS[0].0)
                    .and_then(|i| i.node)
            });
            if let Some(fault) = nemesis.pick(&ids, &busy, leader, singleton_host) {
                nemesis::inject(&mut w, &fault).await;
                report.faults += 1;
                *report.faults_by_kind.entry(fault.kind()).or_default() += 1;
                let until = (now + nemesis.duration_ms()).min(fault_end);
                active.push((until, fault));
            }
            next_fault = sim_ms() + nemesis.gap_ms();
        } else if now >= next_fault {
            next_fault = now + nemesis.gap_ms();
        }
    }
    // Heal everything, then let the clients finish.
    {
        let mut w = world.lock().await;
        while let Some((_, fault)) = active.pop() {
            let still: Vec<Fault> = active.iter().map(|(_, f)| f.clone()).collect();
            if let Err(e) = nemesis::heal(&mut w, &fault, &still).await {
                report.errors.push(e);
            }
        }
    }
    let healed_at = sim_ms();
    trace.event("all faults healed");
    // The clients finish their last operations (one may wait out its
    // 10 s commit timeout) and an operator ends the drains, while the
    // convergence below is measured from the heal itself.
    let settle = {
        let world = world.clone();
        let ids = ids.clone();
        tokio::spawn(async move {
            for client in clients {
                let _ = client.await;
            }
            let mut errors = Vec::new();
            for id in &ids {
                let uncordon = Command::SetCordon {
                    node: *id,
                    cordoned: false,
                };
                if !write_until_ok(&world, uncordon, CONVERGE_WITHIN_MS).await {
                    errors.push(format!("could not uncordon gw{id}"));
                }
            }
            errors
        })
    };
    // Convergence: first the control plane, then every placed instance.
    let mut reason = String::new();
    let mut control_at: Option<u64> = None;
    loop {
        let w = world.lock().await;
        let why = match not_converged(&w) {
            Some(unsettled) => {
                if !unsettled.only_lag {
                    control_at = None;
                }
                Some(unsettled.why)
            }
            None => {
                control_at.get_or_insert(sim_ms() - healed_at);
                if settle.is_finished() {
                    not_running(&w, &hub)
                } else {
                    Some("the clients' last operations and the uncordons are under way".into())
                }
            }
        };
        drop(w);
        match why {
            None => {
                let took = sim_ms() - healed_at;
                trace.event(format!("converged after {took} ms"));
                report.converge = Some(Ok(took));
                break;
            }
            Some(why) => {
                if why != reason {
                    trace.event(format!("not converged: {why}"));
                }
                reason = why
            }
        }
        if sim_ms() - healed_at > CONVERGE_WITHIN_MS + 60_000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    match settle.await {
        Ok(errors) => report.errors.extend(errors),
        Err(e) => report
            .errors
            .push(format!("the clients or the uncordons failed: {e}")),
    }
    report.control_converge_ms = control_at;
    let stop_grace = world.lock().await.stop_grace.as_millis() as u64;
    match (report.converge.clone(), control_at) {
        (_, Some(control)) if control > CONVERGE_WITHIN_MS => {
            report.converge = Some(Err(format!(
                "one leader, equal replicas and every gateway Ready only {control} ms after the last heal"
            )));
        }
        (Some(Ok(took)), _) if took > CONVERGE_WITHIN_MS + ROLLOUT_STEPS * stop_grace => {
            report.converge = Some(Err(format!(
                "every placed instance Running only {took} ms after the last heal"
            )));
        }
        (None, _) => {
            report.converge = Some(Err(format!(
                "not converged {} ms after the last heal: {reason}",
                sim_ms() - healed_at
            )));
        }
        _ => {}
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    monitor.abort();
    for task in cloud_tasks {
        task.abort();
    }
    // Checks.
    let mut w = world.lock().await;
    let end = sim_ms();
    let ops = history.ops();
    report.ops = ops.len() as u64;
    report.acked = ops
        .iter()
        .filter(|o| {
            o.outcome == Some(Outcome::Ok)
                && matches!(o.write, Write::Apply { .. } | Write::Delete { .. })
        })
        .count() as u64;
    for (id, cluster) in w.running() {
        let state = cluster.state().read().state.clone();
        report.lost.extend(check::lost_writes(id, &state, &ops));
    }
    // A Raft core that stopped (openraft checks its storage's invariants
    // and halts on a broken one) is an error, whatever else happened.
    for (id, cluster) in w.running() {
        if let Err(fatal) = &cluster.metrics().running_state {
            report
                .errors
                .push(format!("gw{id}: its Raft core stopped: {fatal}"));
        }
    }
    report.cloud_revisions = hub.revision();
    report.lost.extend(hub.forgotten());
    report.errors.extend(hub.rejected());
    if matches!(report.converge, Some(Ok(_))) {
        for (id, cluster) in w.running() {
            if let Some(why) = hub.differs(&cluster.state().read().state) {
                report.lost.push(format!("gw{id}: cloud: {why}"));
            }
        }
    }
    report.duplicated = w.observer.duplicates();
    report.duplicated.extend(w.observer.cloud_duplicates());
    report.divergent = w.observer.divergent();
    report.over_capacity = w.observer.over_capacity();
    report.overlaps = check::overlaps(&w.registry.all(), end);
    report.sim_ms = end;
    w.shutdown().await;
    report.trace_hash = trace.hash();
    report.events = trace.events();
    report
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// The one summary line of a batch of runs.
pub fn summary(reports: &[RunReport], nondeterministic: usize) -> String {
    let mut converge: Vec<u64> = reports
        .iter()
        .filter_map(|r| match &r.converge {
            Some(Ok(ms)) => Some(*ms),
            _ => None,
        })
        .collect();
    converge.sort_unstable();
    let mut control: Vec<u64> = reports
        .iter()
        .filter_map(|r| r.control_converge_ms)
        .collect();
    control.sort_unstable();
    let count = |f: fn(&RunReport) -> usize| reports.iter().map(f).sum::<usize>();
    let not_converged = reports
        .iter()
        .filter(|r| matches!(r.converge, Some(Err(_)) | None))
        .count();
    format!(
        "sim: seeds={} faults={} acked={} cloud_revisions={} lost={} duplicated={} overlaps={} over_capacity={} divergent={} not_converged={} errors={} converge_ms p50/p99/max={}/{}/{} control_ms p50/p99/max={}/{}/{} nondeterministic={}",
        reports.len(),
        reports.iter().map(|r| r.faults).sum::<u64>(),
        reports.iter().map(|r| r.acked).sum::<u64>(),
        reports.iter().map(|r| r.cloud_revisions).sum::<u64>(),
        count(|r| r.lost.len()),
        count(|r| r.duplicated.len()),
        count(|r| r.overlaps.len()),
        count(|r| r.over_capacity.len()),
        count(|r| r.divergent.len()),
        not_converged,
        count(|r| r.errors.len()),
        percentile(&converge, 50.0),
        percentile(&converge, 99.0),
        converge.last().copied().unwrap_or(0),
        percentile(&control, 50.0),
        percentile(&control, 99.0),
        control.last().copied().unwrap_or(0),
        nondeterministic
    )
}
