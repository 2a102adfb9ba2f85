//! The simulated container engine of one host, implementing
//! `gantry_node::Runtime`: starts take time, some containers ignore
//! SIGTERM (only SIGKILL stops them), others take a while to stop, and the
//! engine can be down (calls fail) while its containers keep running, as
//! containerd's shims do. Containers outlive the gantry daemon; a power cut
//! ends them. Every running interval is recorded, with its host and
//! instance, in the harness's [`Registry`]: the ground truth for the
//! singleton check.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gantry::agent::fence::{Entry, Killed, Killer};
use gantry::cluster::NodeId;
use gantry_node::{
    ActualContainer, ContainerSpec, ExitEvent, Runtime, RuntimeError, Started, TaskState,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;

use crate::clock::sim_ms;
use crate::trace::Trace;

/// One running interval of one container, in simulated ms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interval {
    pub host: NodeId,
    pub workload: String,
    pub replica: u32,
    pub container_id: String,
    pub start_ms: u64,
    /// None: still running.
    pub stop_ms: Option<u64>,
}

/// Every container that ever ran, on every host.
#[derive(Clone, Default)]
pub struct Registry {
    intervals: Arc<Mutex<Vec<Interval>>>,
}

impl Registry {
    fn open(&self, interval: Interval) -> usize {
        let mut all = self.intervals.lock().unwrap_or_else(|p| p.into_inner());
        all.push(interval);
        all.len() - 1
    }

    fn close(&self, index: usize) {
        let mut all = self.intervals.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = all.get_mut(index) {
            i.stop_ms.get_or_insert(sim_ms());
        }
    }

    pub fn all(&self) -> Vec<Interval> {
        self.intervals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

struct Container {
    actual: ActualContainer,
    /// Only SIGKILL ends it.
    ignores_term: bool,
    /// Its open interval in the registry while its task runs.
    interval: Option<usize>,
    /// When the task started (the pid's "start time").
    started_ms: u64,
    /// The pid a fence SIGKILL is on its way to: a process in
    /// uninterruptible sleep dies when it wakes, however many more
    /// SIGKILLs it gets meanwhile.
    kill_pending: Option<u32>,
}

struct State {
    outage: bool,
    containers: BTreeMap<String, Container>,
    next_pid: u32,
    exits: Vec<mpsc::Sender<ExitEvent>>,
    rng: StdRng,
}

/// One host's engine; cloned into the daemon (as its `Runtime`) and its
/// fence (as its `Killer`), and kept by the harness across daemon restarts.
#[derive(Clone)]
pub struct FakeEngine {
    host: NodeId,
    state: Arc<Mutex<State>>,
    registry: Registry,
    trace: Trace,
}

fn down() -> RuntimeError {
    RuntimeError::Unavailable("connection refused (simulated outage)".into())
}

impl FakeEngine {
    pub fn new(host: NodeId, seed: u64, registry: Registry, trace: Trace) -> Self {
        Self {
            host,
            state: Arc::new(Mutex::new(State {
                outage: false,
                containers: BTreeMap::new(),
                next_pid: 1000,
                exits: Vec::new(),
                rng: StdRng::seed_from_u64(seed),
            })),
            registry,
            trace,
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn up(&self) -> Result<(), RuntimeError> {
        if self.with(|s| s.outage) {
            Err(down())
        } else {
            Ok(())
        }
    }

    /// The engine stops answering (its containers keep running) or comes back.
    pub fn set_outage(&self, outage: bool) {
        self.with(|s| s.outage = outage);
    }

    /// The machine loses power: every container ends, the engine's state
    /// with them.
    pub fn power_off(&self) {
        let ids: Vec<String> = self.with(|s| s.containers.keys().cloned().collect());
        for id in ids {
            self.end_task(&id, None, 137, "power cut");
        }
        self.with(|s| {
            s.containers.clear();
            s.exits.clear();
        });
    }

    /// The containers whose task runs: (container id, workload, replica).
    pub fn running(&self) -> Vec<(String, String, u32)> {
        self.with(|s| {
            s.containers
                .values()
                .filter(|c| c.actual.task == TaskState::Running)
                .map(|c| {
                    (
                        c.actual.id.clone(),
                        c.actual.workload.clone(),
                        c.actual.replica,
                    )
                })
                .collect()
        })
    }

    fn delay(&self, range: std::ops::RangeInclusive<u64>) -> Duration {
        Duration::from_millis(self.with(|s| s.rng.random_range(range)))
    }

    /// How long a SIGKILLed process takes to die: at once mostly, but one
    /// in five is in uninterruptible sleep (a slow disk, a large memory to
    /// free) and dies only when it wakes, up to 3 s later (the leader's
    /// fence margin covers 3.4 s, README). A stop counts once it is seen,
    /// not once the signal is sent.
    fn kill_delay(&self) -> Duration {
        let slow = self.with(|s| s.rng.random_bool(0.2));
        if slow {
            self.delay(200..=3_000)
        } else {
            self.delay(0..=50)
        }
    }

    /// Starts the task of an existing container record.
    fn begin_task(&self, id: &str) -> Option<u32> {
        let now = sim_ms();
        let (pid, workload, replica) = self.with(|s| {
            s.next_pid += 1;
            let pid = s.next_pid;
            let c = s.containers.get_mut(id)?;
            c.actual.task = TaskState::Running;
            c.actual.pid = Some(pid);
            c.started_ms = now;
            Some((pid, c.actual.workload.clone(), c.actual.replica))
        })?;
        let index = self.registry.open(Interval {
            host: self.host,
            workload,
            replica,
            container_id: id.to_string(),
            start_ms: now,
            stop_ms: None,
        });
        self.with(|s| {
            if let Some(c) = s.containers.get_mut(id) {
                c.interval = Some(index);
            }
        });
        self.trace
            .event(format!("gw{} container {id} started pid {pid}", self.host));
        Some(pid)
    }

    fn is_running(&self, id: &str, pid: Option<u32>) -> bool {
        self.with(|s| {
            s.containers
                .get(id)
                .is_some_and(|c| c.actual.task == TaskState::Running && c.actual.pid == pid)
        })
    }

    /// Ends the task of `id` (only if it is still `pid`, when given).
    fn end_task(&self, id: &str, pid: Option<u32>, code: i32, why: &str) -> bool {
        let ended = self.with(|s| {
            let c = s.containers.get_mut(id)?;
            if c.actual.task != TaskState::Running || (pid.is_some() && c.actual.pid != pid) {
                return None;
            }
            let old_pid = c.actual.pid.take().unwrap_or(0);
            c.actual.task = TaskState::Exited { code };
            let interval = c.interval.take();
            let event = ExitEvent {
                container_id: id.to_string(),
                pid: old_pid,
                exit_code: code,
            };
            s.exits.retain(|tx| tx.try_send(event.clone()).is_ok());
            Some(interval)
        });
        let Some(interval) = ended else {
            return false;
        };
        if let Some(index) = interval {
            self.registry.close(index);
        }
        self.trace.event(format!(
            "gw{} container {id} stopped code {code} ({why})",
            self.host
        ));
        true
    }
}

impl Runtime for FakeEngine {
    async fn check(&self) -> Result<String, RuntimeError> {
        self.up().map(|_| "fake 1.0".to_string())
    }

    async fn ensure_image(&self, _image: &str) -> Result<(), RuntimeError> {
        self.up()
    }

    async fn start(&self, spec: &ContainerSpec) -> Result<Started, RuntimeError> {
        self.up()?;
        let delay = self.delay(10..=400);
        tokio::time::sleep(delay).await;
        self.up()?;
        let ignores_term = self.with(|s| s.rng.random_bool(0.5));
        let exists = self.with(|s| {
            if s.containers.contains_key(&spec.id) {
                return true;
            }
            s.containers.insert(
                spec.id.clone(),
                Container {
                    actual: ActualContainer {
                        id: spec.id.clone(),
                        workload: spec.workload.clone(),
                        replica: spec.replica,
                        generation: spec.generation,
                        image: spec.image.clone(),
                        restarts: 0,
                        task: TaskState::Created,
                        pid: None,
                    },
                    ignores_term,
                    interval: None,
                    started_ms: 0,
                    kill_pending: None,
                },
            );
            false
        });
        if exists {
            return Err(RuntimeError::Engine {
                op: "create".into(),
                message: format!("container {} already exists", spec.id),
            });
        }
        let pid = self
            .begin_task(&spec.id)
            .ok_or_else(|| RuntimeError::NotFound(spec.id.clone()))?;
        Ok(Started {
            container_id: spec.id.clone(),
            pid,
        })
    }

    async fn restart(&self, container_id: &str, restarts: u32) -> Result<Started, RuntimeError> {
        self.up()?;
        let delay = self.delay(10..=400);
        tokio::time::sleep(delay).await;
        self.up()?;
        let ready = self.with(|s| match s.containers.get_mut(container_id) {
            Some(c) if c.actual.task != TaskState::Running => {
                c.actual.restarts = restarts;
                true
            }
            _ => false,
        });
        if !ready {
            return Err(RuntimeError::NotFound(container_id.to_string()));
        }
        let pid = self
            .begin_task(container_id)
            .ok_or_else(|| RuntimeError::NotFound(container_id.to_string()))?;
        Ok(Started {
            container_id: container_id.to_string(),
            pid,
        })
    }

    async fn remove(
        &self,
        container_id: &str,
        grace: Duration,
    ) -> Result<Option<i32>, RuntimeError> {
        self.up()?;
        let running = self.with(|s| {
            s.containers
                .get(container_id)
                .filter(|c| c.actual.task == TaskState::Running)
                .map(|c| (c.actual.pid, c.ignores_term))
        });
        let mut code = None;
        if let Some((pid, ignores_term)) = running {
            // SIGTERM. A container that honours it exits after its own
            // shutdown time, whether or not the daemon waits for it.
            if !ignores_term {
                let exit_after = self.delay(0..=3000);
                let engine = self.clone();
                let id = container_id.to_string();
                tokio::spawn(async move {
                    tokio::time::sleep(exit_after).await;
                    engine.end_task(&id, pid, 143, "SIGTERM");
                });
            }
            // The caller waits out the grace, then SIGKILL: if it dies
            // meanwhile (a daemon crash), nobody sends the SIGKILL.
            let deadline = tokio::time::Instant::now() + grace;
            while tokio::time::Instant::now() < deadline {
                if !self.is_running(container_id, pid) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // SIGKILL; containerd's remove waits for the task to exit.
            if self.is_running(container_id, pid) {
                tokio::time::sleep(self.kill_delay()).await;
            }
            self.end_task(container_id, pid, 137, "SIGKILL after the stop grace");
            code = Some(137);
        }
        self.with(|s| s.containers.remove(container_id));
        Ok(code)
    }

    async fn list(&self) -> Result<Vec<ActualContainer>, RuntimeError> {
        self.up()?;
        Ok(self.with(|s| s.containers.values().map(|c| c.actual.clone()).collect()))
    }

    async fn exits(&self) -> Result<mpsc::Receiver<ExitEvent>, RuntimeError> {
        self.up()?;
        let (tx, rx) = mpsc::channel(64);
        self.with(|s| s.exits.push(tx));
        Ok(rx)
    }
}

impl FakeEngine {
    /// The pid of the container's running task, if one runs.
    fn running_pid(&self, container_id: &str) -> Option<u32> {
        self.with(|s| {
            s.containers
                .get(container_id)
                .filter(|c| c.actual.task == TaskState::Running)
                .and_then(|c| c.actual.pid)
        })
    }
}

impl Killer for FakeEngine {
    fn start_time(&self, container_id: &str, pid: u32) -> Option<u64> {
        self.with(|s| {
            s.containers
                .get(container_id)
                .filter(|c| c.actual.task == TaskState::Running && c.actual.pid == Some(pid))
                .map(|c| c.started_ms)
        })
    }

    fn kill(&self, entry: &Entry) -> Killed {
        let same = !entry.by_id()
            && self.start_time(&entry.container_id, entry.pid) == Some(entry.start_time);
        // Its known process, or failing that whatever runs in the container
        // now (restarted since the fence learnt its pid).
        let pid = if same {
            entry.pid
        } else {
            match self.running_pid(&entry.container_id) {
                Some(pid) => pid,
                None => return Killed::Gone,
            }
        };
        // The process dies when the signal takes effect; the fence watches
        // for that through `alive`. A signal already on its way decides.
        let pending = self.with(|s| {
            let c = s.containers.get_mut(&entry.container_id)?;
            let pending = c.kill_pending == Some(pid);
            c.kill_pending = Some(pid);
            Some(pending)
        });
        if pending == Some(true) {
            return Killed::Now;
        }
        let delay = self.kill_delay();
        let engine = self.clone();
        let id = entry.container_id.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            engine.end_task(&id, Some(pid), 137, "fence SIGKILL");
        });
        Killed::Now
    }

    fn alive(&self, entry: &Entry) -> bool {
        self.running_pid(&entry.container_id).is_some()
    }
}
