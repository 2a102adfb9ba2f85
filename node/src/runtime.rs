//! The boundary between the agent and a container engine, in our terms,
//! so the reconcile loop can be tested against a fake.

use crate::registry::RegistryConfig;
use crate::spec::{ContainerSpec, Probe};
use std::future::Future;
use std::path::Path;
use std::time::Duration;
use tokio::sync::mpsc;

/// Labels tying a containerd container to the instance it runs.
pub const LABEL_WORKLOAD: &str = "gantry.workload";
pub const LABEL_REPLICA: &str = "gantry.replica";
pub const LABEL_GENERATION: &str = "gantry.generation";
/// Restarts survive agent restarts by living on the container itself.
pub const LABEL_RESTARTS: &str = "gantry.restarts";

/// The state of a container's task, as the engine reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    /// The container exists but has no task (never started, or deleted).
    Missing,
    Created,
    Running,
    Paused,
    Exited {
        code: i32,
    },
    Unknown,
}

/// One gantry container found in the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActualContainer {
    pub id: String,
    pub workload: String,
    pub replica: u32,
    pub generation: u64,
    pub image: String,
    pub restarts: u32,
    pub task: TaskState,
    pub pid: Option<u32>,
}

/// A task's main process exited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitEvent {
    pub container_id: String,
    pub pid: u32,
    /// 128+signal when killed by a signal.
    pub exit_code: i32,
}

/// A container just started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Started {
    pub container_id: String,
    pub pid: u32,
}

/// What a container's cgroup has used: CPU time since it started, and the
/// memory it holds now (its working set: page cache that can be dropped is
/// not counted, as Kubernetes counts it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub cpu_usec: u64,
    pub memory_bytes: u64,
}

/// How a process run inside a container ended (an exec probe).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutcome {
    pub exit_code: i32,
    /// The end of what it wrote to stdout and stderr.
    pub output: String,
}

/// Why a runtime call failed, sorted by what the caller can do about it.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The engine cannot be reached (not running, restarting): retry later.
    #[error("container runtime unavailable: {0}")]
    Unavailable(String),
    /// The image is not in the engine and cannot be fetched.
    #[error("image {image} not found: {reason}")]
    ImageNotFound { image: String, reason: String },
    /// Fetching the image from its registry failed (unreachable, refused,
    /// unknown tag, corrupted blob); the message carries the registry's
    /// answer. Retried with back-off.
    #[error("pulling image {image}: {message}")]
    Pull { image: String, message: String },
    /// An archive or image is malformed; retrying will not help.
    #[error("invalid image: {0}")]
    InvalidImage(String),
    /// The spec cannot be turned into a container.
    #[error("invalid container spec: {0}")]
    InvalidSpec(String),
    #[error("container {0} not found")]
    NotFound(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// Any other engine error, with the operation that failed.
    #[error("{op}: {message}")]
    Engine { op: String, message: String },
}

impl RuntimeError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        RuntimeError::Io {
            context: context.into(),
            source,
        }
    }

    /// Whether the failure says "come back later" rather than "this is wrong".
    pub fn is_unavailable(&self) -> bool {
        matches!(self, RuntimeError::Unavailable(_))
    }
}

/// What the reconcile loop needs from a container engine. Implementations
/// must only list and touch containers carrying the gantry labels.
pub trait Runtime: Send + Sync + 'static {
    /// Checks that the engine answers; returns its version.
    fn check(&self) -> impl Future<Output = Result<String, RuntimeError>> + Send;

    /// Makes the image usable for containers (present and unpacked), or
    /// says why it cannot be.
    fn ensure_image(&self, image: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Creates the container and starts its task.
    fn start(
        &self,
        spec: &ContainerSpec,
    ) -> impl Future<Output = Result<Started, RuntimeError>> + Send;

    /// Starts a new task in an existing container whose task exited, and
    /// records the restart count on the container.
    fn restart(
        &self,
        container_id: &str,
        restarts: u32,
    ) -> impl Future<Output = Result<Started, RuntimeError>> + Send;

    /// Stops the task (SIGTERM, `grace`, SIGKILL) and removes task,
    /// container and snapshot. Returns the exit code if a task was stopped.
    fn remove(
        &self,
        container_id: &str,
        grace: Duration,
    ) -> impl Future<Output = Result<Option<i32>, RuntimeError>> + Send;

    /// Whether the image is present, without fetching it. The default
    /// asks [`ensure_image`](Self::ensure_image).
    fn has_image(&self, image: &str) -> impl Future<Output = Result<bool, RuntimeError>> + Send {
        async move {
            match self.ensure_image(image).await {
                Ok(()) => Ok(true),
                Err(RuntimeError::ImageNotFound { .. }) => Ok(false),
                Err(e) => Err(e),
            }
        }
    }

    /// Fetches (or refreshes) the image from its registry, transferring
    /// only what the engine does not have yet; the layer bytes it
    /// downloaded. The default cannot pull.
    fn pull_image(
        &self,
        image: &str,
        registry: &RegistryConfig,
    ) -> impl Future<Output = Result<u64, RuntimeError>> + Send {
        let _ = registry;
        async move {
            Err(RuntimeError::Pull {
                image: image.to_string(),
                message: "this runtime cannot pull images".into(),
            })
        }
    }

    /// Imports an OCI image-layout archive (from an
    /// [`ImageSource`](crate::agent::ImageSource)). The default cannot.
    fn import_image(
        &self,
        archive: &Path,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send {
        async move {
            Err(RuntimeError::InvalidImage(format!(
                "this runtime cannot import {}",
                archive.display()
            )))
        }
    }

    /// Whether the container's root filesystem was made from another
    /// version of `image` than the one now stored under that name (the
    /// tag was re-pulled since). The default never knows.
    fn image_changed(
        &self,
        container_id: &str,
        image: &str,
    ) -> impl Future<Output = Result<bool, RuntimeError>> + Send {
        let _ = (container_id, image);
        async { Ok(false) }
    }

    /// Replaces an exited container by a fresh one from the current image,
    /// keeping its restart count where the engine can. The default removes
    /// and starts, so the count starts over.
    fn recreate(
        &self,
        spec: &ContainerSpec,
        restarts: u32,
    ) -> impl Future<Output = Result<Started, RuntimeError>> + Send {
        let _ = restarts;
        async move {
            self.remove(&spec.id, Duration::from_secs(1)).await?;
            self.start(spec).await
        }
    }

    /// Runs `command` inside the running container, killed once `timeout`
    /// passes (then `Err`). The default cannot.
    fn exec(
        &self,
        container_id: &str,
        command: &[String],
        timeout: Duration,
    ) -> impl Future<Output = Result<ExecOutcome, RuntimeError>> + Send {
        let _ = (command, timeout);
        async move {
            Err(RuntimeError::Engine {
                op: "exec".into(),
                message: format!("this runtime cannot exec in {container_id}"),
            })
        }
    }

    /// Stops the container's task (SIGTERM, `grace`, SIGKILL) and keeps the
    /// container, so that it restarts like any exited one (a failed
    /// liveness probe). The exit code if a task stopped. The default
    /// cannot.
    fn stop_task(
        &self,
        container_id: &str,
        grace: Duration,
    ) -> impl Future<Output = Result<Option<i32>, RuntimeError>> + Send {
        let _ = grace;
        async move {
            Err(RuntimeError::Engine {
                op: "stop task".into(),
                message: format!("this runtime cannot stop {container_id}"),
            })
        }
    }

    /// The image's own health check (Docker's `HEALTHCHECK`), as a probe.
    /// The default knows none.
    fn image_health_check(
        &self,
        image: &str,
    ) -> impl Future<Output = Result<Option<Probe>, RuntimeError>> + Send {
        let _ = image;
        async { Ok(None) }
    }

    /// The container's resource usage, read from its cgroup; None when it
    /// has none (not running) or the engine cannot say. The default never
    /// knows.
    fn usage(&self, container_id: &str) -> impl Future<Output = Option<Usage>> + Send {
        let _ = container_id;
        async { None }
    }

    /// All gantry containers with their task state.
    fn list(&self) -> impl Future<Output = Result<Vec<ActualContainer>, RuntimeError>> + Send;

    /// Exit events from now on; the receiver closes when the engine's event
    /// stream breaks, and the caller resubscribes and relists.
    fn exits(&self)
        -> impl Future<Output = Result<mpsc::Receiver<ExitEvent>, RuntimeError>> + Send;
}
