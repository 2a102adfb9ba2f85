//! The reconcile loop: makes the runtime run exactly the desired instances,
//! restarts exited ones per policy with capped exponential back-off, adopts
//! what already runs, and reports every state change.

mod decide;
mod fetch;
mod ops;
mod probe;
mod report;

pub use decide::{decide, Book, DesiredInstance, InstanceKey, SlotPlan, Step};
pub use fetch::{ImageSource, ImageStats};
pub use report::{AgentEvent, InstanceReport, InstanceState};

use crate::registry::RegistryConfig;
use crate::runtime::{ActualContainer, ExitEvent, Runtime, RuntimeError, TaskState};
#[cfg(test)]
use crate::spec::RestartPolicy;
use crate::spec::{ContainerSpec, PullPolicy};
use fetch::Fetcher;
pub use ops::StartGate;
use ops::{run_ops, JobContext, JobResult, Op, Outcome};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
// tokio's clock (the same as std's outside a paused runtime): back-off and
// retries must follow simulated time in the deterministic simulation.
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Timing knobs and image access; the defaults suit a gateway, tests
/// shorten them.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Between SIGTERM and SIGKILL when removing a container.
    pub stop_grace: Duration,
    /// Full relist even without events, since containerd does not replay
    /// events missed while we were not subscribed.
    pub resync_interval: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// A container that ran this long before exiting restarts with the
    /// initial delay again.
    pub backoff_reset_after: Duration,
    /// Cap for the retry delay while the runtime is unreachable. Short: a
    /// refused connect to a local socket costs nothing, and every second
    /// of it after containerd is back is a second the gateway stays
    /// NotReady and its instances wait (the simulation measured 14 s of
    /// convergence after a 17 s outage with a 30 s cap).
    pub runtime_retry_max: Duration,
    /// Registries' insecure list and credentials, for pulls.
    pub registry: RegistryConfig,
    /// Where archives from the [`ImageSource`] are written before import
    /// (deleted afterwards); the system temp dir by default.
    pub scratch_dir: PathBuf,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            stop_grace: Duration::from_secs(10),
            resync_interval: Duration::from_secs(10),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            backoff_reset_after: Duration::from_secs(600),
            runtime_retry_max: Duration::from_secs(5),
            registry: RegistryConfig::default(),
            scratch_dir: std::env::temp_dir(),
        }
    }
}

/// Per-container back-off state.
#[derive(Debug, Clone)]
struct Backoff {
    next: Duration,
    running_since: Option<Instant>,
}

impl Backoff {
    fn new(config: &AgentConfig) -> Self {
        Backoff {
            next: config.backoff_initial,
            running_since: None,
        }
    }

    fn next_delay(&mut self, config: &AgentConfig, now: Instant) -> Duration {
        if self
            .running_since
            .is_some_and(|t| now.duration_since(t) >= config.backoff_reset_after)
        {
            self.next = config.backoff_initial;
        }
        let delay = self.next;
        self.next = (self.next * 2).min(config.backoff_max);
        self.running_since = None;
        delay
    }
}

/// Who a runtime operation is about, for its report.
#[derive(Debug, Clone)]
struct Ident {
    workload: String,
    replica: u32,
    generation: u64,
    container_id: String,
}

impl Ident {
    fn of_spec(s: &ContainerSpec) -> Self {
        Ident {
            workload: s.workload.clone(),
            replica: s.replica,
            generation: s.generation,
            container_id: s.id.clone(),
        }
    }

    fn of_actual(c: &ActualContainer) -> Self {
        Ident {
            workload: c.workload.clone(),
            replica: c.replica,
            generation: c.generation,
            container_id: c.id.clone(),
        }
    }

    fn report(&self, state: InstanceState, restarts: u32) -> InstanceReport {
        InstanceReport {
            workload: self.workload.clone(),
            replica: self.replica,
            generation: self.generation,
            state,
            exit_code: None,
            reason: None,
            restarts,
            container_id: self.container_id.clone(),
            pid: None,
            stop_mark: None,
            ready: None,
        }
    }
}

/// The per-gateway reconcile loop over a [`Runtime`].
pub struct Agent<R: Runtime> {
    runtime: Arc<R>,
    config: AgentConfig,
    desired: watch::Receiver<Vec<DesiredInstance>>,
    events: mpsc::Sender<AgentEvent>,
    source: Option<Arc<dyn ImageSource>>,
    gate: Option<Arc<dyn StartGate>>,
    image_stats: Arc<ImageStats>,
    progress_tx: mpsc::UnboundedSender<InstanceReport>,
    progress_rx: mpsc::UnboundedReceiver<InstanceReport>,
    books: HashMap<String, Book>,
    backoffs: HashMap<String, Backoff>,
    failures: HashMap<String, String>,
    last: HashMap<String, InstanceReport>,
    busy: HashSet<InstanceKey>,
    available: Option<bool>,
    unavailable_delay: Duration,
    retry_runtime_at: Option<Instant>,
    subscribed_at: Option<Instant>,
    probe_tx: mpsc::UnboundedSender<probe::ProbeEvent>,
    probe_rx: mpsc::UnboundedReceiver<probe::ProbeEvent>,
    /// One probe watcher per running task: (pid, its handle) by container.
    watchers: HashMap<String, (u32, tokio::task::AbortHandle)>,
    watcher_tasks: JoinSet<()>,
    /// The readiness verdict of each probed task, with why when not ready.
    readiness: HashMap<String, (bool, Option<String>)>,
    /// Why a probe had a container restarted; kept as its reason.
    probe_kills: HashMap<String, String>,
    /// False until the caller published a desired set, when it asked to be
    /// waited for (`wait_for_desired`): until then nothing is removed, so
    /// an agent that starts before its caller knows what should run does
    /// not stop containers it is about to adopt.
    desired_known: bool,
}

impl<R: Runtime> Agent<R> {
    /// `desired` carries the full desired set for this gateway; replace it
    /// with `send` whenever assignments change. Returns the agent and the
    /// stream of everything it reports.
    pub fn new(
        runtime: Arc<R>,
        config: AgentConfig,
        desired: watch::Receiver<Vec<DesiredInstance>>,
    ) -> (Self, mpsc::Receiver<AgentEvent>) {
        let (events, rx) = mpsc::channel(1024);
        let unavailable_delay = config.backoff_initial;
        let (progress_tx, progress_rx) = mpsc::unbounded_channel();
        let (probe_tx, probe_rx) = mpsc::unbounded_channel();
        let agent = Agent {
            probe_tx,
            probe_rx,
            watchers: HashMap::new(),
            watcher_tasks: JoinSet::new(),
            readiness: HashMap::new(),
            probe_kills: HashMap::new(),
            runtime,
            config,
            desired,
            desired_known: true,
            events,
            source: None,
            gate: None,
            image_stats: Arc::default(),
            progress_tx,
            progress_rx,
            books: HashMap::new(),
            backoffs: HashMap::new(),
            failures: HashMap::new(),
            last: HashMap::new(),
            busy: HashSet::new(),
            available: None,
            unavailable_delay,
            retry_runtime_at: None,
            subscribed_at: None,
        };
        (agent, rx)
    }

    /// Removes nothing until the desired set has been sent once (the
    /// channel's initial value is a placeholder, not knowledge).
    pub fn wait_for_desired(mut self) -> Self {
        self.desired_known = false;
        self
    }

    /// Asks `source` (e.g. peer gateways) for missing images before the
    /// registry.
    pub fn with_image_source(mut self, source: Arc<dyn ImageSource>) -> Self {
        self.source = Some(source);
        self
    }

    /// Asks `gate` before each start and restart (see `StartGate`).
    /// Counts what it pulls and fetches into `stats` (the gateway's
    /// metrics read them).
    pub fn with_image_stats(mut self, stats: Arc<ImageStats>) -> Self {
        self.image_stats = stats;
        self
    }

    pub fn with_start_gate(mut self, gate: Arc<dyn StartGate>) -> Self {
        self.gate = Some(gate);
        self
    }

    /// Runs until `shutdown` completes. Containers keep running afterwards;
    /// a new agent adopts them. In-flight operations are abandoned and
    /// finished by the next agent's reconcile.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut jobs: JoinSet<JobResult> = JoinSet::new();
        let mut exits: Option<mpsc::Receiver<ExitEvent>> = None;
        let mut desired_open = true;
        let mut tick = tokio::time::interval(self.config.resync_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let wake = self.next_wake();
            tokio::select! {
                _ = &mut shutdown => break,
                changed = self.desired.changed(), if desired_open => {
                    // The caller went away: keep running what we last knew.
                    desired_open = changed.is_ok();
                    self.desired_known |= desired_open;
                }
                event = recv_exit(&mut exits) => match event {
                    Some(e) => tracing::debug!(container = %e.container_id, exit_code = e.exit_code, "task exited"),
                    None => exits = None,
                },
                Some(report) = self.progress_rx.recv() => {
                    self.report(report).await;
                    continue;
                }
                Some(event) = self.probe_rx.recv() => {
                    self.probed(event, &mut jobs).await;
                    continue;
                }
                Some(done) = jobs.join_next(), if !jobs.is_empty() => match done {
                    Ok(result) => self.finish(result).await,
                    Err(e) => tracing::error!(error = %e, "agent job panicked"),
                },
                _ = tick.tick() => {}
                _ = sleep_until(wake) => {}
            }
            self.reconcile(&mut jobs, &mut exits).await;
        }
        tracing::info!("agent stopped");
    }

    fn next_wake(&self) -> Option<Instant> {
        self.books
            .values()
            .flat_map(|b| [b.restart_at, b.retry_start_at])
            .chain([self.retry_runtime_at])
            .flatten()
            .filter(|t| *t > Instant::now())
            .min()
    }

    async fn emit(&self, event: AgentEvent) {
        // A caller that stopped listening does not stop the agent.
        let _ = self.events.send(event).await;
    }

    async fn report(&mut self, mut report: InstanceReport) {
        // Stamped now, as the agent sees its desired set: a report waiting
        // in the caller's queue must not vouch for a stop made later.
        report.stop_mark = self
            .desired
            .borrow()
            .iter()
            .find(|d| {
                d.stop && d.spec.workload == report.workload && d.spec.replica == report.replica
            })
            .and_then(|d| d.stop_mark);
        self.add_probe_verdicts(&mut report);
        if self.last.get(&report.container_id) == Some(&report) {
            return;
        }
        tracing::info!(
            workload = %report.workload, replica = report.replica, generation = report.generation,
            container = %report.container_id, state = ?report.state, exit_code = ?report.exit_code,
            restarts = report.restarts, pid = ?report.pid, reason = ?report.reason, "instance state"
        );
        self.last
            .insert(report.container_id.clone(), report.clone());
        self.emit(AgentEvent::Instance(report)).await;
    }

    async fn runtime_down(&mut self, error: &RuntimeError) {
        let now = Instant::now();
        if self.available != Some(false) {
            tracing::warn!(error = %error, "container runtime unavailable");
            self.emit(AgentEvent::RuntimeUnavailable {
                reason: error.to_string(),
            })
            .await;
            self.unavailable_delay = self.config.backoff_initial;
        } else {
            self.unavailable_delay =
                (self.unavailable_delay * 2).min(self.config.runtime_retry_max);
        }
        self.available = Some(false);
        self.retry_runtime_at = Some(now + self.unavailable_delay);
    }

    async fn reconcile(
        &mut self,
        jobs: &mut JoinSet<JobResult>,
        exits: &mut Option<mpsc::Receiver<ExitEvent>>,
    ) {
        if self.retry_runtime_at.is_some_and(|t| Instant::now() < t) {
            return;
        }
        // Subscribe before listing so no exit falls between the two; at most
        // once a second, in case the stream keeps breaking.
        let resubscribe = self
            .subscribed_at
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
        if exits.is_none() && resubscribe {
            self.subscribed_at = Some(Instant::now());
            match self.runtime.exits().await {
                Ok(rx) => *exits = Some(rx),
                Err(e) => return self.runtime_down(&e).await,
            }
        }
        let actual = match self.runtime.list().await {
            Ok(a) => a,
            Err(e) => {
                *exits = None;
                return self.runtime_down(&e).await;
            }
        };
        if self.available != Some(true) {
            match self.runtime.check().await {
                Ok(version) => {
                    tracing::info!(version = %version, containers = actual.len(), "container runtime available");
                    self.emit(AgentEvent::RuntimeAvailable { version }).await;
                }
                Err(e) => return self.runtime_down(&e).await,
            }
            self.available = Some(true);
            self.retry_runtime_at = None;
        }
        let desired = self.desired.borrow().clone();
        self.observe(&desired, &actual).await;
        self.watch_probes(&desired, &actual);
        let now = Instant::now();
        let mut plans = decide(&desired, &actual, &self.books, &self.busy, now);
        if !self.desired_known {
            for plan in &mut plans {
                plan.steps.retain(|s| !matches!(s, Step::Remove { .. }));
            }
        }
        for plan in plans {
            let mut ops = Vec::new();
            for step in plan.steps {
                match step {
                    Step::ScheduleRestart {
                        container_id,
                        exit_code,
                    } => {
                        let backoff = self
                            .backoffs
                            .entry(container_id.clone())
                            .or_insert_with(|| Backoff::new(&self.config));
                        let delay = backoff.next_delay(&self.config, now);
                        tracing::info!(container = %container_id, exit_code, delay_ms = delay.as_millis() as u64, "restart scheduled");
                        self.books.entry(container_id).or_default().restart_at = Some(now + delay);
                    }
                    Step::Remove { container_id } => {
                        if let Some(c) = actual.iter().find(|c| c.id == container_id) {
                            ops.push(Op::Remove(Ident::of_actual(c)));
                        }
                    }
                    Step::Start { spec } => {
                        self.report(Ident::of_spec(&spec).report(InstanceState::Starting, 0))
                            .await;
                        let policy = desired
                            .iter()
                            .find(|d| d.spec.id == spec.id)
                            .map(|d| d.pull)
                            .unwrap_or_default();
                        ops.push(Op::Start(spec, policy));
                    }
                    Step::Restart {
                        container_id,
                        restarts,
                    } => {
                        if let Some(c) = actual.iter().find(|c| c.id == container_id) {
                            let ident = Ident::of_actual(c);
                            self.report(ident.report(InstanceState::Starting, restarts))
                                .await;
                            let refresh = desired
                                .iter()
                                .find(|d| d.spec.id == container_id && d.pull == PullPolicy::Always)
                                .map(|d| Box::new(d.spec.clone()));
                            ops.push(Op::Restart(ident, restarts, refresh));
                        }
                    }
                }
            }
            if ops.is_empty() {
                continue;
            }
            self.busy.insert(plan.key.clone());
            jobs.spawn(run_ops(
                self.runtime.clone(),
                self.job_context(),
                plan.key,
                ops,
            ));
        }
        // Forget containers that are neither wanted nor present.
        let known: HashSet<&str> = desired
            .iter()
            .map(|d| d.spec.id.as_str())
            .chain(actual.iter().map(|c| c.id.as_str()))
            .collect();
        self.books.retain(|id, _| known.contains(id.as_str()));
        self.backoffs.retain(|id, _| known.contains(id.as_str()));
        self.failures.retain(|id, _| known.contains(id.as_str()));
        self.last.retain(|id, _| known.contains(id.as_str()));
        self.readiness.retain(|id, _| known.contains(id.as_str()));
        self.probe_kills.retain(|id, _| known.contains(id.as_str()));
    }

    /// Reports what the runtime shows, skipping slots with an operation in
    /// flight (their reports come from the operation).
    async fn observe(&mut self, desired: &[DesiredInstance], actual: &[ActualContainer]) {
        for c in actual {
            if self.busy.contains(&(c.workload.clone(), c.replica)) {
                continue;
            }
            let ident = Ident::of_actual(c);
            let mut report = ident.report(InstanceState::Pending, c.restarts);
            match c.task {
                TaskState::Running | TaskState::Paused => {
                    report.state = InstanceState::Running;
                    report.pid = c.pid;
                    let backoff = self
                        .backoffs
                        .entry(c.id.clone())
                        .or_insert_with(|| Backoff::new(&self.config));
                    backoff.running_since.get_or_insert_with(Instant::now);
                    self.failures.remove(&c.id);
                }
                TaskState::Exited { code } => {
                    report.state = InstanceState::Exited;
                    report.exit_code = Some(code);
                }
                TaskState::Created => report.state = InstanceState::Starting,
                TaskState::Missing => {}
                TaskState::Unknown => continue,
            }
            if let Some(reason) = self.failures.get(&c.id) {
                if report.state != InstanceState::Running {
                    report.state = InstanceState::Failed;
                    report.reason = Some(reason.clone());
                }
            }
            self.report(report).await;
        }
        for d in desired {
            let slot = (d.spec.workload.clone(), d.spec.replica);
            if d.stop {
                // Nothing here and nothing under way: it is not running and
                // will not be started (this same pass decided so).
                let any = actual
                    .iter()
                    .any(|c| c.workload == d.spec.workload && c.replica == d.spec.replica);
                if !any && !self.busy.contains(&slot) {
                    let mut report = Ident::of_spec(&d.spec).report(InstanceState::Exited, 0);
                    report.reason = Some("not running here".into());
                    self.report(report).await;
                }
                continue;
            }
            let present = actual
                .iter()
                .any(|c| c.id == d.spec.id && c.generation == d.spec.generation);
            // Held and absent: nothing to say until it may start.
            if present
                || d.hold
                || self
                    .busy
                    .contains(&(d.spec.workload.clone(), d.spec.replica))
            {
                continue;
            }
            let mut report = Ident::of_spec(&d.spec).report(InstanceState::Pending, 0);
            if let Some(reason) = self.failures.get(&d.spec.id) {
                report.state = InstanceState::Failed;
                report.reason = Some(reason.clone());
            }
            self.report(report).await;
        }
    }

    async fn finish(&mut self, result: JobResult) {
        // Progress the job sent comes before its outcome.
        while let Ok(report) = self.progress_rx.try_recv() {
            self.report(report).await;
        }
        self.busy.remove(&result.key);
        let now = Instant::now();
        for outcome in result.outcomes {
            match outcome {
                Outcome::Started(ident, pid) => {
                    self.started(&ident, now);
                    let mut r = ident.report(InstanceState::Running, 0);
                    r.pid = Some(pid);
                    self.report(r).await;
                }
                Outcome::Restarted(ident, pid, restarts) => {
                    self.started(&ident, now);
                    let mut r = ident.report(InstanceState::Running, restarts);
                    r.pid = Some(pid);
                    self.report(r).await;
                }
                Outcome::Removed(ident, code) => {
                    let mut r = ident.report(InstanceState::Removed, 0);
                    r.exit_code = code;
                    self.report(r).await;
                }
                // The next reconcile sees the exit and restarts it as the
                // restart policy says.
                Outcome::Stopped(ident, code) => {
                    tracing::info!(container = %ident.container_id, exit_code = ?code, "task stopped for a failed probe");
                }
                Outcome::Failed(ident, error, op) => {
                    if error.is_unavailable() {
                        // Not the instance's fault; the next reconcile
                        // notices the runtime state and retries.
                        tracing::warn!(container = %ident.container_id, error = %error, "operation interrupted");
                        continue;
                    }
                    let id = ident.container_id.clone();
                    let backoff = self
                        .backoffs
                        .entry(id.clone())
                        .or_insert_with(|| Backoff::new(&self.config));
                    let delay = backoff.next_delay(&self.config, now);
                    let book = self.books.entry(id.clone()).or_default();
                    let restarts = match op {
                        Op::Start(..) => {
                            book.retry_start_at = Some(now + delay);
                            0
                        }
                        Op::Restart(_, restarts, _) => {
                            book.restart_at = Some(now + delay);
                            restarts
                        }
                        Op::Remove(_) => {
                            tracing::warn!(container = %id, error = %error, "remove failed; will retry");
                            continue;
                        }
                        Op::Stop(_) => {
                            // The watcher is gone; the next reconcile starts
                            // a new one, which asks again.
                            tracing::warn!(container = %id, error = %error, "stop for a failed probe failed");
                            self.watchers.remove(&id);
                            continue;
                        }
                    };
                    self.failures.insert(id, error.to_string());
                    let mut r = ident.report(InstanceState::Failed, restarts);
                    r.reason = Some(error.to_string());
                    self.report(r).await;
                }
            }
        }
    }

    /// The probes' verdicts on a report: readiness where the container has
    /// a readiness probe, and why a probe restarted it.
    fn add_probe_verdicts(&self, report: &mut InstanceReport) {
        let probed = self
            .desired
            .borrow()
            .iter()
            .any(|d| d.spec.id == report.container_id && d.spec.probes.readiness.is_some());
        if report.reason.is_none() {
            report.reason = self.probe_kills.get(&report.container_id).cloned();
        }
        if !probed {
            return;
        }
        let running = report.state == InstanceState::Running;
        let verdict = self.readiness.get(&report.container_id);
        let ready = running && verdict.is_some_and(|(ready, _)| *ready);
        report.ready = Some(ready);
        if running && !ready && report.reason.is_none() {
            report.reason = verdict.and_then(|(_, why)| why.clone());
        }
    }

    /// Keeps one probe watcher per running task of a wanted container, and
    /// none for anything else.
    fn watch_probes(&mut self, desired: &[DesiredInstance], actual: &[ActualContainer]) {
        while self.watcher_tasks.try_join_next().is_some() {}
        let mut live = HashSet::new();
        for c in actual {
            let (TaskState::Running, Some(pid)) = (c.task, c.pid) else {
                continue;
            };
            let Some(d) = desired.iter().find(|d| d.spec.id == c.id && !d.stop) else {
                continue;
            };
            live.insert(c.id.clone());
            if self.watchers.get(&c.id).is_some_and(|(p, _)| *p == pid) {
                continue;
            }
            if let Some((_, old)) = self.watchers.remove(&c.id) {
                old.abort();
            }
            // A new task starts unready.
            self.readiness.remove(&c.id);
            let handle = self.watcher_tasks.spawn(probe::watch(
                self.runtime.clone(),
                c.id.clone(),
                pid,
                d.spec.probes.clone(),
                d.spec.image.clone(),
                self.probe_tx.clone(),
            ));
            self.watchers.insert(c.id.clone(), (pid, handle));
        }
        self.watchers.retain(|id, (_, handle)| {
            let keep = live.contains(id);
            if !keep {
                handle.abort();
            }
            keep
        });
    }

    /// A watcher's verdict about a task that still runs: a new readiness
    /// report, or the task stopped so that it restarts.
    async fn probed(&mut self, event: probe::ProbeEvent, jobs: &mut JoinSet<JobResult>) {
        let current =
            self.watchers.get(&event.container_id).map(|(pid, _)| *pid) == Some(event.pid);
        if !current {
            return;
        }
        let last = self.last.get(&event.container_id).cloned();
        let running = last.as_ref().map(|l| l.state) == Some(InstanceState::Running);
        match event.verdict {
            // Kept even while the start's own report is still on its way
            // (a watcher starts as soon as the task runs): a watcher says a
            // verdict once, and the next Running report carries it.
            probe::Verdict::Ready(ready, why) => {
                self.readiness
                    .insert(event.container_id.clone(), (ready, why));
                if let Some(mut report) = last.filter(|_| running) {
                    report.reason = None;
                    report.ready = None;
                    self.report(report).await;
                }
            }
            probe::Verdict::Restart(why) => {
                // The watcher has ended; if the task is left running, the
                // next reconcile starts a new one.
                self.watchers.remove(&event.container_id);
                let Some(last) = last.filter(|_| running) else {
                    return;
                };
                let key = (last.workload.clone(), last.replica);
                if self.busy.contains(&key) {
                    return;
                }
                self.readiness.remove(&event.container_id);
                self.probe_kills.insert(event.container_id.clone(), why);
                let ident = Ident {
                    workload: last.workload.clone(),
                    replica: last.replica,
                    generation: last.generation,
                    container_id: last.container_id.clone(),
                };
                self.busy.insert(key.clone());
                jobs.spawn(run_ops(
                    self.runtime.clone(),
                    self.job_context(),
                    key,
                    vec![Op::Stop(ident)],
                ));
            }
        }
    }

    fn job_context(&self) -> JobContext {
        JobContext {
            grace: self.config.stop_grace,
            fetcher: Fetcher {
                registry: self.config.registry.clone(),
                source: self.source.clone(),
                scratch_dir: self.config.scratch_dir.clone(),
                stats: self.image_stats.clone(),
            },
            progress: self.progress_tx.clone(),
            desired: self.desired.clone(),
            gate: self.gate.clone(),
        }
    }

    fn started(&mut self, ident: &Ident, now: Instant) {
        let id = &ident.container_id;
        self.failures.remove(id);
        let book = self.books.entry(id.clone()).or_default();
        book.restart_at = None;
        book.retry_start_at = None;
        self.backoffs
            .entry(id.clone())
            .or_insert_with(|| Backoff::new(&self.config))
            .running_since = Some(now);
    }
}

async fn recv_exit(exits: &mut Option<mpsc::Receiver<ExitEvent>>) -> Option<ExitEvent> {
    match exits {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod fake_tests;
