//! The hard stop behind `stop_after`: a copy that must not outlive its
//! gateway's isolation is killed by its deadline, whatever it does with
//! SIGTERM, whether containerd answers, and whether the gantry daemon is
//! still alive.
//!
//! The rule: an instance placed here with an isolation limit `L`
//! (`Instance::stop_after_ms`: singletons, and workloads that set
//! `on_disconnect.stop_after`) dies by `last contact + L`, where the last
//! contact is the last heartbeat a leader with a quorum accepted (with this
//! replica caught up), on the boot clock (`crate::clock`). The graceful path
//! is the node agent: `desired::desired_for` drops the instance early enough
//! that SIGTERM, the stop grace and SIGKILL fit before the deadline. This
//! module is the one that cannot be talked out of it: every 100 ms it
//! SIGKILLs, by pid, the container init of any entry whose deadline has
//! passed (checking the process start time, so a reused pid is left alone).
//! Killing a container's init ends its whole pid namespace.
//!
//! The same lease is handed to a separate guard process
//! (`gantry fence-guard`, see `guard`), which keeps enforcing the last one
//! it got if the daemon is killed, crashes or exits: the cluster moves a
//! singleton `L` + a margin after its gateway went silent, and a dead daemon
//! must not leave the old copy running.
//!
//! A container is in the lease before its process runs: the agent asks
//! [`FenceGate`] before each start, and the gate waits until a lease naming
//! the container (by id, its pid not known yet) has been handed to the
//! guard. Such an entry is killed through the container's cgroup. Without
//! this, a daemon that died within the ~100 ms between a start and the
//! next lease left a copy that nobody would stop (the simulation, seeds
//! 6099, 6582 and 9892 of the 10,000-seed soak).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::state::{NodeId, State};

/// How often deadlines are checked (the guard's reaction time).
pub const CHECK_EVERY: Duration = Duration::from_millis(100);

/// One container that must be dead by `deadline_ms` (boot clock).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub container_id: String,
    /// 0: not known yet (a container about to start); it is then killed by
    /// container id, through its cgroup.
    pub pid: u32,
    /// The process's start time (clock ticks since boot, /proc/PID/stat
    /// field 22): a different process that got the same pid is not killed.
    pub start_time: u64,
    pub deadline_ms: u64,
    /// The containerd namespace, which names the container's cgroup
    /// (`/<namespace>/<container id>`, see gantry-node's OCI spec).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

impl Entry {
    /// Killed by container id: no pid is known yet.
    pub fn by_id(&self) -> bool {
        self.pid == 0
    }
}

/// A running container as the fence knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    pub pid: u32,
    pub start_time: u64,
    /// Whose replica it is, whatever its generation: an older generation
    /// being replaced is fenced like the one replacing it.
    pub workload: String,
    pub replica: u32,
}

/// How the fence tells a container's process apart from a later one with
/// the same pid, and kills it: by pid and `/proc` start time on a real
/// machine ([`ProcessKiller`]); the simulation's fake runtime kills the
/// container by id.
pub trait Killer: Send + Sync + 'static {
    /// The start time of `pid`, the init of `container_id`; None when no
    /// such process runs.
    fn start_time(&self, container_id: &str, pid: u32) -> Option<u64>;

    /// SIGKILL to the entry's process if it is still the one that started
    /// at `entry.start_time`; failing that (no pid known, or that process
    /// is gone), to whatever runs in the container now: its pid may not
    /// have reached the fence since a restart.
    fn kill(&self, entry: &Entry) -> Killed;

    /// Whether anything the entry names still runs: its process, or any
    /// process of its container.
    fn alive(&self, entry: &Entry) -> bool;
}

/// Real processes: `/proc/PID/stat` and kill(2); by container id, the
/// processes listed in the container's cgroup.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessKiller;

impl Killer for ProcessKiller {
    fn start_time(&self, _container_id: &str, pid: u32) -> Option<u64> {
        start_time(pid)
    }

    fn kill(&self, entry: &Entry) -> Killed {
        let by_pid = if entry.by_id() {
            Killed::Gone
        } else {
            kill_if_same(entry.pid, entry.start_time)
        };
        if by_pid == Killed::Now {
            return Killed::Now;
        }
        // Its known process is gone; the container may have started
        // another since (a restart the fence has not heard of yet).
        let mut killed = Killed::Gone;
        for pid in cgroup_pids(entry.namespace.as_deref(), &entry.container_id) {
            if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                if rustix::process::kill_process(pid, rustix::process::Signal::KILL).is_ok() {
                    killed = Killed::Now;
                }
            }
        }
        killed
    }

    fn alive(&self, entry: &Entry) -> bool {
        (!entry.by_id() && start_time(entry.pid) == Some(entry.start_time))
            || !cgroup_pids(entry.namespace.as_deref(), &entry.container_id).is_empty()
    }
}

/// The processes in container `id`'s cgroup (`/<namespace>/<id>` under the
/// cgroup v2 root, the hybrid `unified` tree or a v1 controller); empty
/// when there is no such cgroup. Names that could leave the cgroup tree
/// (a `/` or `..`) find nothing.
pub fn cgroup_pids(namespace: Option<&str>, id: &str) -> Vec<u32> {
    let namespace = namespace.unwrap_or(gantry_node::ContainerdConfig::DEFAULT_NAMESPACE);
    let safe = |s: &str| !s.is_empty() && !s.contains('/') && s != "." && s != "..";
    if !safe(namespace) || !safe(id) {
        return Vec::new();
    }
    [
        "", "unified/", "pids/", "memory/", "cpu/", "freezer/", "systemd/",
    ]
    .iter()
    .find_map(|tree| {
        std::fs::read_to_string(format!(
            "/sys/fs/cgroup/{tree}{namespace}/{id}/cgroup.procs"
        ))
        .ok()
    })
    .map(|procs| {
        procs
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    })
    .unwrap_or_default()
}

/// The pids of this gateway's running containers, from the agent's
/// reports, with their start times.
#[derive(Clone)]
pub struct Pids {
    inner: Arc<Mutex<BTreeMap<String, Running>>>,
    killer: Arc<dyn Killer>,
}

impl Default for Pids {
    fn default() -> Self {
        Self::with_killer(Arc::new(ProcessKiller))
    }
}

impl Pids {
    /// Pids whose start times (and kills) go through `killer`.
    pub fn with_killer(killer: Arc<dyn Killer>) -> Self {
        Self {
            inner: Arc::default(),
            killer,
        }
    }

    pub fn killer(&self) -> &Arc<dyn Killer> {
        &self.killer
    }

    /// A container of `workload`/`replica` runs as `pid` (None: it does not
    /// run any more).
    pub fn set(&self, container_id: &str, workload: &str, replica: u32, pid: Option<u32>) {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let killer = &self.killer;
        match pid.and_then(|p| killer.start_time(container_id, p).map(|t| (p, t))) {
            Some((pid, start_time)) => {
                map.insert(
                    container_id.to_string(),
                    Running {
                        pid,
                        start_time,
                        workload: workload.to_string(),
                        replica,
                    },
                );
            }
            None => {
                map.remove(container_id);
            }
        }
    }

    pub fn forget(&self, container_id: &str) {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(container_id);
    }

    pub fn snapshot(&self) -> BTreeMap<String, Running> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The pure rule: which of this gateway's containers must die by when.
///
/// `last_contact_ms` is the boot-clock time of the last accepted contact
/// with a quorum (None: none since this boot, so every fenced copy is past
/// its deadline). `runtime_down`: containerd does not answer, so a copy the
/// leader asked to stop (`stopping`) cannot be stopped the graceful way and
/// is killed at once, which the gateway then reports.
///
/// `starting`: the containers the agent may start or run here (its desired
/// set) by id, with their instance; those without a known pid get entries
/// by id, so that the guard knows them before their process runs.
pub fn lease(
    state: &State,
    node: NodeId,
    last_contact_ms: Option<u64>,
    runtime_down: bool,
    now_ms: u64,
    pids: &BTreeMap<String, Running>,
    starting: &BTreeMap<String, crate::state::InstanceKey>,
) -> Vec<Entry> {
    let known = pids.iter().map(|(id, r)| {
        let key = crate::state::InstanceKey {
            workload: r.workload.clone(),
            replica: r.replica,
        };
        (id, key, r.pid, r.start_time)
    });
    let by_id = starting
        .iter()
        .filter(|(id, _)| !pids.contains_key(*id))
        .map(|(id, key)| (id, key.clone(), 0, 0));
    let mut entries = Vec::new();
    for (container_id, key, pid, start_time) in known.chain(by_id) {
        let Some(instance) = state.placed_copy(&key, node) else {
            continue;
        };
        let container_id = container_id.clone();
        let by_isolation = instance
            .stop_after_ms()
            .map(crate::control::fencing::node_limit_ms)
            .map(|limit| last_contact_ms.map_or(0, |c| c.saturating_add(limit)));
        let by_stop = (runtime_down && instance.stopping).then_some(now_ms);
        let Some(deadline_ms) = [by_isolation, by_stop].into_iter().flatten().min() else {
            continue;
        };
        entries.push(Entry {
            container_id,
            pid,
            start_time,
            deadline_ms,
            namespace: None,
        });
    }
    entries
}

/// /proc/PID/stat field 22 (start time in clock ticks since boot); None
/// when no such process runs, a zombie included (it is dead, only not
/// reaped yet: after SIGKILL that is what the fence waits to see).
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count
    // from the last ')'.
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    if matches!(fields.next()?, "Z" | "X" | "x") {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

/// What `kill_if_same` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Killed {
    /// SIGKILL sent.
    Now,
    /// The process is gone already.
    Gone,
    /// The pid belongs to another process now: left alone.
    Reused,
}

/// SIGKILL to `pid` if it is still the process that started at `start`.
pub fn kill_if_same(pid: u32, start: u64) -> Killed {
    match start_time(pid) {
        None => Killed::Gone,
        Some(t) if t != start => Killed::Reused,
        Some(_) => {
            let Some(pid) = rustix::process::Pid::from_raw(pid as i32) else {
                return Killed::Gone;
            };
            match rustix::process::kill_process(pid, rustix::process::Signal::KILL) {
                Ok(()) => Killed::Now,
                Err(_) => Killed::Gone,
            }
        }
    }
}

/// Kills what is due; returns the entries still to watch and what was
/// killed now. A due entry stays to watch: its container may yet start
/// again (a start or restart the daemon asked for just before it died).
pub fn enforce(entries: Vec<Entry>, now_ms: u64) -> (Vec<Entry>, Vec<Entry>) {
    enforce_with(&ProcessKiller, entries, now_ms)
}

/// `enforce` through any `Killer`.
pub fn enforce_with(
    killer: &dyn Killer,
    entries: Vec<Entry>,
    now_ms: u64,
) -> (Vec<Entry>, Vec<Entry>) {
    let mut keep = Vec::new();
    let mut killed = Vec::new();
    for entry in entries {
        if entry.deadline_ms > now_ms {
            keep.push(entry);
            continue;
        }
        if killer.kill(&entry) == Killed::Now {
            killed.push(entry.clone());
        }
        keep.push(entry);
    }
    (keep, killed)
}

/// Where the daemon hands each lease so that it outlives the daemon: the
/// guard process (`guard::GuardLink`), or the simulation's guard actor.
#[async_trait::async_trait]
pub trait LeaseSink: Send + 'static {
    /// Whether the lease reached whoever enforces it when the daemon is
    /// gone (a guard that is not wanted counts as reached).
    async fn send(&mut self, lease: &super::guard::Lease) -> bool;
}

#[async_trait::async_trait]
impl LeaseSink for super::guard::GuardLink {
    async fn send(&mut self, lease: &super::guard::Lease) -> bool {
        super::guard::GuardLink::send(self, lease).await
    }
}

/// How long a container the agent is no longer told of stays leased by id
/// although nothing runs in it: longer than any start under way takes.
const FORGET_TOLD_MS: u64 = 60_000;

/// How long a start waits for the guard to take a lease naming it before
/// it fails (and is retried with back-off).
pub const GATE_TIMEOUT: Duration = Duration::from_secs(5);

/// The agent's [`gantry_node::StartGate`]: a container with an isolation
/// limit starts only once the guard holds a lease naming it.
pub struct FenceGate {
    cluster: crate::cluster::Cluster,
    delivered: tokio::sync::watch::Receiver<std::collections::BTreeSet<String>>,
    wake: Arc<tokio::sync::Notify>,
}

#[async_trait::async_trait]
impl gantry_node::StartGate for FenceGate {
    async fn cleared(
        &self,
        container_id: &str,
        workload: &str,
        replica: u32,
    ) -> Result<(), String> {
        let key = crate::state::InstanceKey {
            workload: workload.to_string(),
            replica,
        };
        let fenced = {
            let applied = self.cluster.state().read();
            applied
                .state
                .placed_copy(&key, self.cluster.id())
                .is_some_and(|i| i.stop_after_ms().is_some())
        };
        if !fenced {
            return Ok(());
        }
        let mut delivered = self.delivered.clone();
        let wait = async {
            loop {
                if delivered.borrow_and_update().contains(container_id) {
                    return Ok(());
                }
                self.wake.notify_one();
                if delivered.changed().await.is_err() {
                    return Err("the fence has stopped".to_string());
                }
            }
        };
        match tokio::time::timeout(GATE_TIMEOUT, wait).await {
            Ok(result) => result,
            Err(_) => Err(format!(
                "the fence guard has not taken a lease naming container {container_id} within {GATE_TIMEOUT:?}"
            )),
        }
    }
}

/// The fence's ends that the rest of the agent holds: the start gate, and
/// what `run` publishes to it.
pub struct GateLink {
    delivered: tokio::sync::watch::Sender<std::collections::BTreeSet<String>>,
    wake: Arc<tokio::sync::Notify>,
}

/// A gate for the agent and the link `run` feeds it through.
pub fn gate(cluster: &crate::cluster::Cluster) -> (Arc<FenceGate>, GateLink) {
    let (tx, rx) = tokio::sync::watch::channel(Default::default());
    let wake = Arc::new(tokio::sync::Notify::new());
    (
        Arc::new(FenceGate {
            cluster: cluster.clone(),
            delivered: rx,
            wake: wake.clone(),
        }),
        GateLink {
            delivered: tx,
            wake,
        },
    )
}

/// What the fence loop works with besides the cluster.
pub struct FenceParts {
    pub pids: Pids,
    pub health: Arc<super::health::RuntimeHealth>,
    pub guard: Box<dyn LeaseSink>,
    /// The agent's desired set: what it may start (leased by id before it
    /// runs) and whether it has been told not to start a slot.
    pub desired: tokio::sync::watch::Receiver<Vec<gantry_node::DesiredInstance>>,
    pub gate: GateLink,
    /// The containerd namespace, which names the containers' cgroups.
    pub namespace: Option<String>,
}

/// The daemon's side: recomputes the lease every `CHECK_EVERY`, enforces
/// it here, hands it to the guard, and reports a stop the leader is
/// waiting for when the kill was the only way to do it (runtime down).
pub async fn run(
    cluster: crate::cluster::Cluster,
    parts: FenceParts,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let FenceParts {
        pids,
        health,
        mut guard,
        desired,
        gate,
        namespace,
    } = parts;
    let mut sent: Option<(Vec<Entry>, u64)> = None;
    let mut told_of: BTreeMap<String, (crate::state::InstanceKey, u64)> = BTreeMap::new();
    let mut to_report: BTreeMap<crate::state::InstanceKey, crate::state::InstanceReport> =
        BTreeMap::new();
    // Killed, not yet seen gone; gone, stop not yet reportable.
    let mut dying: Vec<(Entry, crate::state::InstanceKey)> = Vec::new();
    let mut gone: BTreeMap<crate::state::InstanceKey, String> = BTreeMap::new();
    let mut writing: super::in_flight::InFlight<Vec<crate::state::InstanceReport>> =
        Default::default();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            (sent, committed) = writing.done(), if !writing.idle() => {
                if committed {
                    tracing::info!(reports = sent.len(), "the kill reports are committed");
                    to_report.retain(|_, report| !sent.contains(report));
                } else {
                    tracing::debug!("the kill report waits for the quorum");
                }
            }
            _ = tokio::time::sleep(CHECK_EVERY) => {}
            _ = gate.wake.notified() => {}
        }
        let now = cluster.clock().boot_ms();
        let runtime_down = health.problem().is_some();
        // Every container the agent was told of stays leased by id while
        // its instance is placed here, until it has been out of the desired
        // set for a while and nothing runs in it: the graceful stop drops
        // an instance from that set before it is dead, and the reporter may
        // not have handed over its pid yet (it waits on its writes while
        // the gateway is cut off; the simulation, seed 5001).
        for d in desired.borrow().iter() {
            let key = crate::state::InstanceKey {
                workload: d.spec.workload.clone(),
                replica: d.spec.replica,
            };
            told_of.insert(d.spec.id.clone(), (key, now));
        }
        {
            let applied = cluster.state().read();
            let known = pids.snapshot();
            let killer = pids.killer();
            told_of.retain(|id, (key, seen)| {
                if applied.state.placed_copy(key, cluster.id()).is_none() {
                    return false;
                }
                now.saturating_sub(*seen) < FORGET_TOLD_MS
                    || known.contains_key(id)
                    || killer.alive(&Entry {
                        container_id: id.clone(),
                        pid: 0,
                        start_time: 0,
                        deadline_ms: 0,
                        namespace: namespace.clone(),
                    })
            });
        }
        let starting: BTreeMap<String, crate::state::InstanceKey> = told_of
            .iter()
            .map(|(id, (key, _))| (id.clone(), key.clone()))
            .collect();
        let mut entries = {
            let applied = cluster.state().read();
            lease(
                &applied.state,
                cluster.id(),
                cluster.last_contact_ms(),
                runtime_down,
                now,
                &pids.snapshot(),
                &starting,
            )
        };
        for entry in &mut entries {
            entry.namespace.clone_from(&namespace);
        }
        let fresh = sent
            .as_ref()
            .is_none_or(|(last, at)| *last != entries || now.saturating_sub(*at) >= 1_000);
        if fresh {
            let lease = super::guard::Lease {
                entries: entries.clone(),
            };
            // Retried when the lease changes and every second, not every
            // tick: starting a guard that does not answer takes up to 2 s.
            if guard.send(&lease).await {
                gate.delivered
                    .send_replace(entries.iter().map(|e| e.container_id.clone()).collect());
            }
            sent = Some((entries.clone(), now));
        }
        let (_, killed) = enforce_with(pids.killer().as_ref(), entries, now);
        for entry in killed.into_iter().filter(|e| !e.by_id()) {
            tracing::warn!(container = %entry.container_id, pid = entry.pid, "fence deadline passed: container killed");
            let running = pids.snapshot().remove(&entry.container_id);
            pids.forget(&entry.container_id);
            if let Some(r) = running {
                let key = crate::state::InstanceKey {
                    workload: r.workload,
                    replica: r.replica,
                };
                dying.push((entry, key));
            }
        }
        // A stop counts once it is seen: SIGKILL sent is not a process
        // gone (one in uninterruptible sleep dies when it wakes).
        let killer = pids.killer();
        let (dead, still): (Vec<_>, Vec<_>) = std::mem::take(&mut dying)
            .into_iter()
            .partition(|(entry, _)| !killer.alive(entry));
        dying = still;
        for (entry, key) in dead {
            tracing::info!(container = %entry.container_id, pid = entry.pid, "the killed container is gone");
            gone.insert(key, entry.container_id);
        }
        // A stop is confirmed once the copy is gone and the agent has been
        // told not to start the slot (every start re-reads that set, so
        // none can follow): a start queued behind a remove, or the current
        // generation replacing the older one killed here, would otherwise
        // run after the confirmation (the simulation, seed 110 with 60 s
        // of faults).
        // And only while containerd is still down: a start already under
        // way when the stop arrived cannot complete then, and once
        // containerd is back the agent confirms the stop itself, after its
        // operations on the slot (the simulation, seed 7150).
        let still_down = health.problem().is_some();
        let applied = cluster.state().read();
        let told = desired.borrow();
        gone.retain(|key, container_id| {
            let Some(i) = applied
                .state
                .placed_copy(key, cluster.id())
                .filter(|i| i.stopping)
            else {
                return false;
            };
            if !still_down {
                return false;
            }
            let may_start = told.iter().any(|d| {
                d.may_start() && d.spec.workload == key.workload && d.spec.replica == key.replica
            });
            if may_start {
                return true;
            }
            to_report.insert(
                i.key(),
                crate::state::InstanceReport {
                    instance: i.key(),
                    generation: i.container_generation(),
                    state: crate::state::InstanceState::Exited,
                    exit_code: Some(137),
                    reason: Some("killed: it had to stop and the container runtime is down".into()),
                    restarts: i.restarts,
                    container_id: Some(container_id.clone()),
                    stopping_seen: true,
                    stop_mark_seen: Some(i.stop_mark),
                    fence_seen: i.stop_after_ms(),
                    ready: None,
                },
            );
            false
        });
        drop(told);
        drop(applied);
        // Written off this loop: kills go on while the quorum is away.
        if !to_report.is_empty() && writing.idle() {
            let reports: Vec<_> = to_report.values().cloned().collect();
            let command = crate::state::Command::ReportInstances {
                node: cluster.id(),
                reports: reports.clone(),
            };
            writing.start(&cluster, command, reports);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::trust::fixtures;
    use crate::state::{Capacity, ChangeSet, Command, PlanRecord, Request};

    fn state_with(singleton: bool) -> State {
        let mut state = State::default();
        let mut apply = |command| {
            let r = state.apply(&Request::new(1, command), &mut ChangeSet::new());
            assert!(
                !matches!(r, crate::state::Response::Rejected { .. }),
                "{r:?}"
            );
        };
        apply(Command::InitCluster {
            cluster_id: "c".into(),
            settings: Default::default(),
            pki: fixtures::pki(),
            join_token: fixtures::join_token("0a"),
        });
        apply(Command::RegisterNode {
            name: "gw".into(),
            address: "127.0.0.1:1".into(),
            labels: Default::default(),
            capacity: Capacity {
                cpu_millis: 1000,
                memory_bytes: 1 << 30,
            },
            devices: Default::default(),
            tls: Some(fixtures::tls()),
            join_token: None,
        });
        let yaml = format!("name: cam\nimage: i\nsingleton: {singleton}\n");
        apply(Command::ApplyWorkloads {
            workloads: crate::state::spec::parse_manifest(&yaml).unwrap(),
            source: crate::state::Source::Local,
        });
        let key = crate::state::InstanceKey {
            workload: "cam".into(),
            replica: 0,
        };
        apply(Command::ApplyPlan {
            plan: PlanRecord {
                placements: vec![(key, 1)],
                ..Default::default()
            },
        });
        state
    }

    fn running_cam(container_id: &str) -> BTreeMap<String, Running> {
        BTreeMap::from([(
            container_id.to_string(),
            Running {
                pid: 4242,
                start_time: 7,
                workload: "cam".into(),
                replica: 0,
            },
        )])
    }

    #[test]
    fn an_older_generation_being_replaced_is_fenced_too() {
        let state = state_with(true);
        // The replica moved to generation 2 in the state; generation 1 still runs.
        let pids = running_cam("cam-0-g0");
        let entries = lease(
            &state,
            1,
            Some(10_000),
            false,
            11_000,
            &pids,
            &BTreeMap::new(),
        );
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].container_id, "cam-0-g0");
        assert_eq!(entries[0].deadline_ms, 40_000);
    }

    #[test]
    fn a_fenced_copy_dies_by_its_limit_after_the_last_contact() {
        let state = state_with(true);
        let pids = running_cam("cam-0-g1");
        let entries = lease(
            &state,
            1,
            Some(10_000),
            false,
            11_000,
            &pids,
            &BTreeMap::new(),
        );
        assert_eq!(entries.len(), 1);
        assert_eq!(
            entries[0].deadline_ms,
            10_000 + 30_000,
            "30 s default for a singleton"
        );
        // No contact since this boot: past due at once.
        assert_eq!(
            lease(&state, 1, None, false, 11_000, &pids, &BTreeMap::new())[0].deadline_ms,
            0
        );
        // Another gateway's copy, or one without a known pid, is not ours.
        assert!(lease(&state, 2, Some(0), false, 0, &pids, &BTreeMap::new()).is_empty());
        assert!(lease(
            &state,
            1,
            Some(0),
            false,
            0,
            &BTreeMap::new(),
            &BTreeMap::new()
        )
        .is_empty());
        // A plain workload without stop_after keeps running when isolated.
        let plain = state_with(false);
        assert!(lease(&plain, 1, None, false, 0, &pids, &BTreeMap::new()).is_empty());
    }

    #[test]
    fn a_container_about_to_start_is_leased_by_id_and_watched_past_its_deadline() {
        let state = state_with(true);
        let key = crate::state::InstanceKey {
            workload: "cam".into(),
            replica: 0,
        };
        let starting = BTreeMap::from([("cam-0-g1".to_string(), key)]);
        let entries = lease(
            &state,
            1,
            Some(10_000),
            false,
            11_000,
            &BTreeMap::new(),
            &starting,
        );
        assert_eq!(entries.len(), 1);
        assert!(entries[0].by_id());
        assert_eq!(entries[0].deadline_ms, 40_000);
        // Once its pid is known, the pid entry replaces it.
        let pids = running_cam("cam-0-g1");
        let entries = lease(&state, 1, Some(10_000), false, 11_000, &pids, &starting);
        assert_eq!((entries.len(), entries[0].pid), (1, 4242));
        // Due, with nothing running: kept to watch (a start may be under
        // way), never reported as a kill.
        let entry = lease(
            &state,
            1,
            Some(10_000),
            false,
            0,
            &BTreeMap::new(),
            &starting,
        );
        let (keep, killed) = enforce_with(&ProcessKiller, entry, 50_000);
        assert_eq!((keep.len(), killed.len()), (1, 0));
        // A plain workload's container needs no lease.
        let plain = state_with(false);
        assert!(lease(&plain, 1, None, false, 0, &BTreeMap::new(), &starting).is_empty());
    }

    #[test]
    fn a_cgroup_name_cannot_leave_the_cgroup_tree() {
        for (namespace, id) in [("..", "x"), ("gantry", ".."), ("a/b", "c"), ("gantry", "")] {
            assert!(
                cgroup_pids(Some(namespace), id).is_empty(),
                "{namespace}/{id}"
            );
        }
        assert!(cgroup_pids(None, "no-such-container-here").is_empty());
    }

    #[test]
    fn a_stopping_copy_dies_at_once_while_the_runtime_is_down() {
        let mut state = state_with(true);
        let key = crate::state::InstanceKey {
            workload: "cam".into(),
            replica: 0,
        };
        state.instances.get_mut(&key).unwrap().stopping = true;
        let pids = running_cam("cam-0-g1");
        assert_eq!(
            lease(
                &state,
                1,
                Some(10_000),
                true,
                12_345,
                &pids,
                &BTreeMap::new()
            )[0]
            .deadline_ms,
            12_345
        );
        assert_eq!(
            lease(
                &state,
                1,
                Some(10_000),
                false,
                12_345,
                &pids,
                &BTreeMap::new()
            )[0]
            .deadline_ms,
            40_000
        );
    }

    #[test]
    fn only_the_process_that_started_then_is_killed() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        let start = start_time(pid).expect("a start time");
        assert_eq!(
            kill_if_same(pid, start + 1),
            Killed::Reused,
            "another process"
        );
        let (keep, killed) = enforce(
            vec![Entry {
                container_id: "c".into(),
                pid,
                start_time: start,
                deadline_ms: 100,
                namespace: None,
            }],
            99,
        );
        assert_eq!((keep.len(), killed.len()), (1, 0), "not due yet");
        let (keep, killed) = enforce(keep, 100);
        assert_eq!(
            (keep.len(), killed.len()),
            (1, 1),
            "killed, and still watched"
        );
        // Killed and not reaped yet: a zombie, which the fence sees as gone
        // (its stop is confirmed only then).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while start_time(pid).is_some() {
            assert!(std::time::Instant::now() < deadline, "still alive");
            std::thread::sleep(Duration::from_millis(10));
        }
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9));
        assert_eq!(kill_if_same(pid, start), Killed::Gone);
    }
}
