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
pub mod logs;
pub mod reporter;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use gantry_node::{Agent, AgentConfig, ContainerdConfig, ContainerdRuntime};
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
    let health = Arc::new(RuntimeHealth::default());

    let agent_config = AgentConfig {
        stop_grace: config.stop_grace.0,
        registry: config.registry.clone(),
        scratch_dir: scratch_dir.clone(),
        ..AgentConfig::default()
    };
    let (desired_tx, desired_rx) = watch::channel(Vec::new());
    let (agent, events) = Agent::new(runtime.clone(), agent_config, desired_rx);
    let peers = images::PeerImages {
        cluster: cluster.clone(),
    };
    let agent = agent.with_image_source(Arc::new(peers)).wait_for_desired();
    let stop = shutdown.clone();
    tasks.spawn(async move { agent.run(stop.cancelled_owned()).await });
    tasks.spawn(desired::feed(
        cluster.clone(),
        desired_tx,
        config.stop_grace.0,
        shutdown.clone(),
    ));
    let pids = fence::Pids::default();
    tasks.spawn(reporter::run(
        cluster.clone(),
        events,
        health.clone(),
        pids.clone(),
        shutdown.clone(),
    ));
    tasks.spawn(fence::run(
        cluster.clone(),
        pids,
        health.clone(),
        guard::GuardLink::new(data_dir, external_guard),
        shutdown.clone(),
    ));
    Ok(NodeRuntime {
        runtime,
        health,
        log_dir,
        scratch_dir,
    })
}

/// How long a write may wait before the reporter keeps its reports for later.
pub(crate) const REPORT_TIMEOUT: Duration = Duration::from_secs(5);
