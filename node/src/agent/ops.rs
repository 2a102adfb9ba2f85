//! One slot's runtime operations, run as a job off the reconcile loop:
//! remove, fetch the image and start, restart (re-pulling under `always`).

use super::decide::DesiredInstance;
use super::fetch::Fetcher;
use super::{Ident, InstanceKey, InstanceReport, InstanceState};
use crate::runtime::{Runtime, RuntimeError, Started};
use crate::spec::{ContainerSpec, PullPolicy};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

pub(super) enum Op {
    Remove(Ident),
    Start(Box<ContainerSpec>, PullPolicy),
    /// With the spec when the policy is `always`: the registry is asked
    /// again and a changed image replaces the container.
    Restart(Ident, u32, Option<Box<ContainerSpec>>),
    /// Stops the task and keeps the container (a probe gave up on it); the
    /// exit then restarts it under its restart policy and back-off.
    Stop(Ident),
}

/// What a job needs besides the runtime.
pub(super) struct JobContext {
    pub grace: Duration,
    pub fetcher: Fetcher,
    /// `Pulling`/`Starting` reports from inside a job.
    pub progress: mpsc::UnboundedSender<InstanceReport>,
    /// The desired set as it is now, not as it was when the steps were
    /// decided: a remove ahead of a start can take the whole stop grace.
    pub desired: watch::Receiver<Vec<DesiredInstance>>,
    /// Asked right before a container's process is started or restarted.
    pub gate: Option<Arc<dyn StartGate>>,
}

/// Whoever must know of a container before its process runs: the gateway's
/// fence hands it to the guard process that kills it when the daemon cannot
/// (a daemon that dies right after a start must not leave a copy nobody
/// will stop). `Err` keeps the process from starting; the agent retries
/// with back-off.
#[async_trait::async_trait]
pub trait StartGate: Send + Sync + 'static {
    async fn cleared(&self, container_id: &str, workload: &str, replica: u32)
        -> Result<(), String>;
}

impl JobContext {
    /// Whether the container is still to run here. A start queued behind a
    /// long remove must not run once the instance moved away or must stop
    /// (a singleton would run twice: the simulation, seed 110 with 60 s of
    /// faults).
    fn still_wanted(&self, container_id: &str, generation: u64) -> bool {
        self.desired
            .borrow()
            .iter()
            .any(|d| d.may_start() && d.spec.id == container_id && d.spec.generation == generation)
    }

    async fn clear(&self, ident: &Ident) -> Result<(), RuntimeError> {
        let Some(gate) = &self.gate else {
            return Ok(());
        };
        gate.cleared(&ident.container_id, &ident.workload, ident.replica)
            .await
            .map_err(|message| RuntimeError::Engine {
                op: "start gate".into(),
                message,
            })
    }
}

pub(super) enum Outcome {
    Started(Ident, u32),
    Restarted(Ident, u32, u32),
    Removed(Ident, Option<i32>),
    Stopped(Ident, Option<i32>),
    Failed(Ident, Box<RuntimeError>, Op),
}

pub(super) struct JobResult {
    pub key: InstanceKey,
    pub outcomes: Vec<Outcome>,
}

/// Runs one slot's operations in order, stopping at the first failure.
pub(super) async fn run_ops<R: Runtime>(
    runtime: Arc<R>,
    context: JobContext,
    key: InstanceKey,
    ops: Vec<Op>,
) -> JobResult {
    let mut outcomes = Vec::new();
    for op in ops {
        let (id, generation) = match &op {
            Op::Remove(_) | Op::Stop(_) => (None, 0),
            Op::Start(spec, _) => (Some(spec.id.as_str()), spec.generation),
            Op::Restart(ident, ..) => (Some(ident.container_id.as_str()), ident.generation),
        };
        if let Some(id) = id.filter(|id| !context.still_wanted(id, generation)) {
            tracing::info!(container = %id, "start dropped: no longer wanted here");
            break;
        }
        let outcome = match op {
            Op::Remove(ident) => match runtime.remove(&ident.container_id, context.grace).await {
                Ok(code) => Outcome::Removed(ident, code),
                Err(e) => Outcome::Failed(ident.clone(), Box::new(e), Op::Remove(ident)),
            },
            Op::Stop(ident) => match runtime.stop_task(&ident.container_id, context.grace).await {
                Ok(code) => Outcome::Stopped(ident, code),
                Err(e) => Outcome::Failed(ident.clone(), Box::new(e), Op::Stop(ident)),
            },
            Op::Start(spec, policy) => {
                let ident = Ident::of_spec(&spec);
                let started = match prepare_image(&*runtime, &context, &ident, &spec, policy, 0)
                    .await
                {
                    Ok(()) => match context.clear(&ident).await {
                        // The image and the gate take time: ask again.
                        Ok(()) if !context.still_wanted(&spec.id, spec.generation) => {
                            tracing::info!(container = %spec.id, "start dropped: no longer wanted here");
                            break;
                        }
                        Ok(()) => runtime.start(&spec).await,
                        Err(e) => Err(e),
                    },
                    Err(e) => Err(e),
                };
                match started {
                    Ok(s) => Outcome::Started(ident, s.pid),
                    Err(e) => Outcome::Failed(ident, Box::new(e), Op::Start(spec, policy)),
                }
            }
            Op::Restart(ident, restarts, refresh) => {
                let cleared = context.clear(&ident).await;
                if cleared.is_ok() && !context.still_wanted(&ident.container_id, ident.generation) {
                    tracing::info!(container = %ident.container_id, "restart dropped: no longer wanted here");
                    break;
                }
                let result = match (cleared, &refresh) {
                    (Err(e), _) => Err(e),
                    (Ok(()), None) => runtime.restart(&ident.container_id, restarts).await,
                    (Ok(()), Some(spec)) => {
                        refresh_and_restart(&*runtime, &context, &ident, spec, restarts).await
                    }
                };
                match result {
                    Ok(s) => Outcome::Restarted(ident, s.pid, restarts),
                    Err(e) => Outcome::Failed(
                        ident.clone(),
                        Box::new(e),
                        Op::Restart(ident, restarts, refresh),
                    ),
                }
            }
        };
        let failed = matches!(outcome, Outcome::Failed(..));
        outcomes.push(outcome);
        if failed {
            break;
        }
    }
    JobResult { key, outcomes }
}

/// Fetches the image as `policy` says, reporting `Pulling` while the
/// network is involved, then makes sure it is usable.
async fn prepare_image<R: Runtime>(
    runtime: &R,
    context: &JobContext,
    ident: &Ident,
    spec: &ContainerSpec,
    policy: PullPolicy,
    restarts: u32,
) -> Result<(), RuntimeError> {
    if context
        .fetcher
        .needs_fetch(runtime, &spec.image, policy)
        .await?
    {
        let _ = context
            .progress
            .send(ident.report(InstanceState::Pulling, restarts));
        context.fetcher.fetch(runtime, &spec.image, policy).await?;
        let _ = context
            .progress
            .send(ident.report(InstanceState::Starting, restarts));
    }
    runtime.ensure_image(&spec.image).await
}

/// `always` on a restart: ask the registry again, and if the tag now
/// names other content, replace the container instead of restarting the
/// old root filesystem.
async fn refresh_and_restart<R: Runtime>(
    runtime: &R,
    context: &JobContext,
    ident: &Ident,
    spec: &ContainerSpec,
    restarts: u32,
) -> Result<Started, RuntimeError> {
    prepare_image(runtime, context, ident, spec, PullPolicy::Always, restarts).await?;
    if runtime.image_changed(&spec.id, &spec.image).await? {
        runtime.recreate(spec, restarts).await
    } else {
        runtime.restart(&spec.id, restarts).await
    }
}
