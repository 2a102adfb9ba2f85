//! gantry-node: the per-gateway agent. It knows nothing of Raft: it is told
//! which container instances should run on this gateway and reports what
//! actually runs.
//!
//! # Brief overview
//!
//! - [`resources::discover`] reports the gateway's capacity (millicores,
//!   memory bytes).
//! - [`spec::ContainerSpec`] describes one instance in gantry's terms; a
//!   [`spec::RestartPolicy`] says what to do when it exits.
//! - [`runtime::Runtime`] is the engine boundary; [`containerd::ContainerdRuntime`]
//!   implements it over containerd's gRPC API (image import and unpack,
//!   OCI runtime spec, tasks, exit events), each gateway in its own
//!   containerd namespace.
//! - [`agent::Agent`] reconciles desired instances against the runtime,
//!   restarts with back-off, adopts running containers after a restart, and
//!   reports [`agent::InstanceReport`]s.
//! - [`logs`] reads and follows container log files.
//! - Images reach a gateway three ways: [`containerd::ContainerdRuntime::import_archive`]
//!   (an OCI archive), [`containerd::ContainerdRuntime::pull`] (a registry,
//!   HTTPS unless the registry is listed in [`registry::RegistryConfig::insecure`]),
//!   or a peer gateway through an [`agent::ImageSource`] fed by
//!   [`containerd::ContainerdRuntime::export_archive`]. Each instance's
//!   [`spec::PullPolicy`] says when the agent fetches; a missing image is
//!   asked of the peer source before the registry, to spare the uplink.
//! - `testing` (feature `testing`): a private containerd, a busybox OCI
//!   archive and a loopback registry (Debian's `docker-registry`, pushed to
//!   with `skopeo`) for end-to-end tests.

pub mod agent;
pub mod containerd;
pub mod image;
pub mod logs;
pub mod registry;
pub mod resources;
pub mod runtime;
pub mod spec;
#[cfg(feature = "testing")]
pub mod testing;

pub use agent::{
    Agent, AgentConfig, AgentEvent, DesiredInstance, ImageSource, InstanceReport, InstanceState,
    StartGate,
};
pub use containerd::{ContainerdConfig, ContainerdRuntime, ImportedImage, PullProgress};
pub use registry::RegistryConfig;
pub use runtime::{
    ActualContainer, ExecOutcome, ExitEvent, Runtime, RuntimeError, Started, TaskState, Usage,
};
pub use spec::{ContainerSpec, MountSpec, Probe, ProbeCheck, Probes, PullPolicy, RestartPolicy};
