//! The bridge between the replicated state and gantry-node: it tells the
//! node agent which instances this gateway should run (from the local
//! replica), commits what the agent reports, carries images between
//! gateways and serves container logs. gantry-node itself knows nothing of
//! Raft.

pub mod desired;
pub mod fence;
pub mod guard;
pub mod health;
pub mod images;
mod in_flight;
pub mod logs;
pub mod pull;
pub mod reporter;
pub mod usage;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use gantry_node::{Agent, AgentConfig, ContainerdConfig, ContainerdRuntime, ImageSource, Runtime};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::cluster::Cluster;
use crate::config::GatewayConfig;
pub use health::RuntimeHealth;

/// What the API needs of this gateway's runtime.
#[derive(Clone)]
pub struct NodeRuntime {
    pub runtime: Arc<ContainerdRuntime>,
    pub health: Arc<RuntimeHealth>,
    pub log_dir: PathBuf,
    /// Where uploaded archives wait for their import.
    pub scratch_dir: PathBuf,
    /// The registries this gateway may pull from (`gantry image pull`).
    pub registry: gantry_node::RegistryConfig,
}

/// Starts the node agent and the loops around it.
pub fn start(
    cluster: &Cluster,
    config: &GatewayConfig,
    data_dir: &Path,
    external_guard: bool,
    tasks: &mut JoinSet<()>,
    shutdown: &CancellationToken,
) -> Result<NodeRuntime> {
    let log_dir = data_dir.join("logs");
    let scratch_dir = data_dir.join("tmp");
    for dir in [&log_dir, &scratch_dir] {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut containerd = ContainerdConfig::new(&log_dir);
    containerd.socket = PathBuf::from(&config.containerd_socket);
    containerd.namespace = config.containerd_namespace.clone();
    let runtime = Arc::new(ContainerdRuntime::new(containerd).context("containerd runtime")?);

    let agent_config = AgentConfig {
        stop_grace: config.stop_grace.0,
        registry: config.registry.clone(),
        scratch_dir: scratch_dir.clone(),
        ..AgentConfig::default()
    };
    let peers = images::PeerImages {
        cluster: cluster.clone(),
    };
    let health = start_node(
        cluster,
        NodeParts {
            runtime: runtime.clone(),
            config: agent_config,
            image_source: Some(Arc::new(peers)),
            killer: Arc::new(fence::ProcessKiller),
            guard: Box::new(guard::GuardLink::new(data_dir, external_guard)),
            namespace: Some(config.containerd_namespace.clone()),
        },
        tasks,
        shutdown,
    );
    tasks.spawn(usage::run(
        runtime.clone(),
        health.clone(),
        shutdown.clone(),
    ));
    Ok(NodeRuntime {
        runtime,
        health,
        log_dir,
        scratch_dir,
        registry: config.registry.clone(),
    })
}

/// What the node agent and its loops run on.
pub struct NodeParts<R: Runtime> {
    pub runtime: Arc<R>,
    pub config: AgentConfig,
    /// Where missing images come from before the registry (peer gateways).
    pub image_source: Option<Arc<dyn ImageSource>>,
    /// How the fence kills a container that outlived its deadline.
    pub killer: Arc<dyn fence::Killer>,
    /// Who keeps enforcing the fence lease if the daemon dies.
    pub guard: Box<dyn fence::LeaseSink>,
    /// The containerd namespace (it names the containers' cgroups, through
    /// which the fence kills a container whose pid it does not know yet).
    pub namespace: Option<String>,
}

/// Starts gantry-node's agent on `parts.runtime` and the loops that tie it
/// to the replica: the desired-set feed, the reporter and the fence. The
/// production gateway runs it on containerd (`start`); the simulation on
/// its fake runtime. Returns the runtime's health, which heartbeats carry.
pub fn start_node<R: Runtime>(
    cluster: &Cluster,
    parts: NodeParts<R>,
    tasks: &mut JoinSet<()>,
    shutdown: &CancellationToken,
) -> Arc<RuntimeHealth> {
    let health = Arc::new(RuntimeHealth::default());
    let stop_grace = parts.config.stop_grace;
    let (desired_tx, desired_rx) = watch::channel(Vec::new());
    // The fence confirms a stop only once the agent has been told of it.
    let told = desired_tx.subscribe();
    let (agent, events) = Agent::new(parts.runtime, parts.config, desired_rx);
    let agent = match parts.image_source {
        Some(source) => agent.with_image_source(source),
        None => agent,
    };
    let (gate, gate_link) = fence::gate(cluster);
    let agent = agent
        .wait_for_desired()
        .with_start_gate(gate)
        .with_image_stats(cluster.telemetry().images.clone());
    let stop = shutdown.clone();
    tasks.spawn(async move { agent.run(stop.cancelled_owned()).await });
    tasks.spawn(desired::feed(
        cluster.clone(),
        desired_tx,
        stop_grace,
        shutdown.clone(),
    ));
    let pids = fence::Pids::with_killer(parts.killer);
    tasks.spawn(reporter::run(
        cluster.clone(),
        events,
        health.clone(),
        pids.clone(),
        shutdown.clone(),
    ));
    tasks.spawn(fence::run(
        cluster.clone(),
        fence::FenceParts {
            pids,
            health: health.clone(),
            guard: parts.guard,
            desired: told,
            gate: gate_link,
            namespace: parts.namespace,
        },
        shutdown.clone(),
    ));
    health
}

/// How long a write may wait before the reporter keeps its reports for later.
pub(crate) const REPORT_TIMEOUT: Duration = Duration::from_secs(5);
