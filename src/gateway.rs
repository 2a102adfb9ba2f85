//! The composition root of a gateway daemon: loads its keys and
//! certificates, opens the data dir's database, starts the Raft member,
//! serves the Bootstrap, Cluster and Admin services on one TLS listener
//! behind the policy layer, and runs the control loops until shutdown.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use gantry_proto::v1::admin_server::AdminServer;
use gantry_proto::v1::bootstrap_server::BootstrapServer;
use gantry_proto::v1::cluster_server::ClusterServer;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::api::admin_service::AdminService;
use crate::api::auth::{AuthLayer, GatewayPolicy};
use crate::api::cluster_service::{
    BootstrapService, ClusterHandlers, ClusterService, MAX_JOIN_BYTES,
};
use crate::cluster::network::MAX_MESSAGE_BYTES;
use crate::cluster::{store, Cluster, RaftTimers};
use crate::config::{GatewayConfig, RAFT_DIR};
use crate::control::liveness::{self, Liveness};
use crate::state::NodeStatus;
use crate::trust::NodeTrust;

/// Why a gateway's `serve` returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Ctrl-C, SIGTERM or a caller's cancel.
    Shutdown,
    /// The cluster marked this gateway Left (`gantry leave`).
    LeftCluster,
}

pub struct Gateway {
    pub cluster: Cluster,
    pub local_addr: SocketAddr,
    pub data_dir: PathBuf,
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
}

impl Gateway {
    /// Starts everything but does not wait; `serve` waits.
    pub async fn start(
        config: &GatewayConfig,
        data_dir: &Path,
        listener: TcpListener,
        timers: &RaftTimers,
    ) -> Result<Self> {
        let local_addr = listener.local_addr().context("listener address")?;
        // A data dir without a TLS identity is refused before anything in it
        // is opened (or created); then the database, so that a data dir of
        // another cluster says so.
        crate::trust::files::read_credentials(data_dir)
            .context("cannot load this gateway's TLS identity")?;
        let db = store::open(&data_dir.join(RAFT_DIR), &config.cluster_id)?;
        let trust = Arc::new(
            NodeTrust::load(data_dir, &config.cluster_id, config.node_id)
                .context("cannot load this gateway's TLS identity")?,
        );
        let cluster = Cluster::start(
            config.node_id,
            &config.cluster_id,
            db,
            timers,
            trust.clone(),
        )
        .await?;
        let liveness = Arc::new(Liveness::default());
        let shutdown = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let node = crate::agent::start(
            &cluster,
            config,
            data_dir,
            guard_available(),
            &mut tasks,
            &shutdown,
        )?;

        let cluster_service = ClusterServer::new(ClusterService {
            handlers: ClusterHandlers {
                cluster: cluster.clone(),
                liveness: liveness.clone(),
            },
            node: node.clone(),
        })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let cluster_service = tonic::service::interceptor::InterceptedService::new(
            cluster_service,
            crate::cluster::fault::inbound,
        );
        tasks.spawn(crate::cluster::fault::watch(shutdown.clone()));
        tasks.spawn(crate::cluster::disk_space::watch(
            cluster.clone(),
            config.name.clone(),
            data_dir.to_path_buf(),
            config.disk_reserve_bytes,
            shutdown.clone(),
        ));
        let link = crate::cloud::link::LinkHandle::default();
        let renewals = crate::trust::renewal::Renewals::default();
        // A manifest is at most one Raft message; an answer is as large as
        // the state it shows.
        let admin_service = AdminServer::new(AdminService {
            cluster: cluster.clone(),
            node: node.clone(),
            link: link.clone(),
            renewals: renewals.clone(),
        })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(usize::MAX);
        let bootstrap_service = BootstrapServer::new(BootstrapService {
            cluster: cluster.clone(),
        })
        .max_decoding_message_size(MAX_JOIN_BYTES);
        let incoming = crate::tls::incoming(
            listener,
            trust.server.clone(),
            crate::tls::AcceptLimits::default(),
            shutdown.clone(),
        );
        let stop = shutdown.clone();
        let policy = AuthLayer::new(GatewayPolicy {
            cluster: cluster.clone(),
        });
        let exporter = Arc::new(crate::metrics::Exporter::new(cluster.clone(), link.clone()));
        let routes = tonic::service::Routes::from(crate::web::gateway_routes(crate::web::Site {
            cluster: cluster.clone(),
            link: link.clone(),
            exporter,
            shutdown: shutdown.clone(),
        }))
        .add_service(bootstrap_service)
        .add_service(cluster_service)
        .add_service(admin_service);
        tasks.spawn(crate::metrics::watch(cluster.clone(), shutdown.clone()));
        tasks.spawn(async move {
            let served = tonic::transport::Server::builder()
                .http2_max_header_list_size(16 << 10)
                .accept_http1(true)
                .layer(policy)
                .add_routes(routes)
                .serve_with_incoming_shutdown(incoming, stop.cancelled())
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "gRPC server stopped");
                stop.cancel();
            }
        });
        spawn_control_loops(
            &cluster,
            liveness,
            node.health.clone(),
            &mut tasks,
            &shutdown,
        );
        tasks.spawn(crate::cloud::link::run(
            cluster.clone(),
            link,
            shutdown.clone(),
        ));
        tasks.spawn(crate::trust::renewal::run(
            cluster.clone(),
            renewals,
            shutdown.clone(),
        ));
        tracing::info!(node = config.node_id, name = %config.name, cluster = %config.cluster_id, address = %local_addr, "gateway started");
        Ok(Self {
            cluster,
            local_addr,
            data_dir: data_dir.to_path_buf(),
            shutdown,
            tasks,
        })
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Runs until a signal, a cancel, or until this gateway has left; an
    /// error when Raft stopped on its own (a fatal storage error: the disk
    /// is full or failing), so that the process exits non-zero and systemd
    /// restarts it. The fence guard keeps enforcing singleton deadlines
    /// meanwhile.
    pub async fn serve(mut self) -> Result<Stopped> {
        let mut applied = self.cluster.state().subscribe();
        // Made once: a signal must not fall between two listeners.
        let signal = shutdown_signal();
        tokio::pin!(signal);
        let reason = loop {
            if self.has_left() {
                // Its own admin token was revoked with the leave: the file
                // holds nothing usable any more.
                crate::trust::files::remove_file(
                    &self.data_dir.join(crate::trust::files::ADMIN_TOKEN_FILE),
                );
                break Stopped::LeftCluster;
            }
            if let Err(fatal) = &self.cluster.metrics().running_state {
                let fatal = fatal.to_string();
                tracing::error!(error = %fatal, "raft stopped; exiting so that the gateway is restarted");
                self.stop().await;
                anyhow::bail!("raft stopped: {fatal}");
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => break Stopped::Shutdown,
                _ = &mut signal => break Stopped::Shutdown,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                changed = applied.changed() => {
                    if changed.is_err() {
                        // The state machine went away without a shutdown.
                        self.stop().await;
                        anyhow::bail!("raft stopped: its state machine is gone");
                    }
                }
            }
        };
        self.stop().await;
        Ok(reason)
    }

    /// Marked Left, and either out of the Raft membership or no longer
    /// hearing from a leader (which stops replicating to removed members).
    fn has_left(&self) -> bool {
        let marked = {
            let applied = self.cluster.state().read();
            applied
                .state
                .nodes
                .get(&self.cluster.id())
                .is_some_and(|n| n.status == NodeStatus::Left)
        };
        if !marked {
            return false;
        }
        let id = self.cluster.id();
        let member = self.cluster.voters().contains(&id) || self.cluster.learners().contains(&id);
        let (_, contact_age) = self.cluster.believes_current();
        !member || contact_age.is_none_or(|ms| ms > 5_000)
    }

    async fn stop(&mut self) {
        self.shutdown.cancel();
        let drain = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(5), drain)
            .await
            .is_err()
        {
            self.tasks.abort_all();
        }
        self.cluster.shutdown().await;
    }
}

/// The loops every gateway runs (each acts only while this gateway leads,
/// except the heartbeats): liveness, scheduling, rollouts, autoscaling, voters. Shared
/// by `Gateway::start` and `InProcessGateway::start`, so the simulation runs
/// exactly the production set.
fn spawn_control_loops(
    cluster: &Cluster,
    liveness: Arc<Liveness>,
    health: Arc<crate::agent::RuntimeHealth>,
    tasks: &mut JoinSet<()>,
    shutdown: &CancellationToken,
) {
    tasks.spawn(liveness::run_leader(
        cluster.clone(),
        liveness.clone(),
        health.clone(),
        shutdown.clone(),
    ));
    tasks.spawn(crate::control::autoscale::run(
        cluster.clone(),
        liveness.clone(),
        shutdown.clone(),
    ));
    tasks.spawn(liveness::run_heartbeats(
        cluster.clone(),
        liveness.clone(),
        health,
        shutdown.clone(),
    ));
    tasks.spawn(crate::control::scheduling::run(
        cluster.clone(),
        liveness,
        shutdown.clone(),
    ));
    tasks.spawn(crate::control::rollout::run(
        cluster.clone(),
        shutdown.clone(),
    ));
    tasks.spawn(crate::control::voters::run(
        cluster.clone(),
        shutdown.clone(),
    ));
}

/// A gateway without sockets, TLS or a cloud link, for the deterministic
/// simulation (`gantry-sim`): the same Raft member (`Cluster::start_with`
/// on the storage, transport and clock it is given), the same control
/// loops and the same node agent with its feed, reporter and fence as
/// `Gateway::start`, on any `gantry_node::Runtime`. Its Cluster calls are
/// answered by `handlers`, which the caller's in-memory network invokes.
pub struct InProcessGateway {
    pub cluster: Cluster,
    pub handlers: ClusterHandlers,
    pub health: Arc<crate::agent::RuntimeHealth>,
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
}

impl InProcessGateway {
    #[allow(clippy::too_many_arguments)]
    pub async fn start<L, S, R>(
        id: crate::cluster::NodeId,
        cluster_id: &str,
        log: L,
        sm: S,
        state: crate::cluster::state_machine::StateReader,
        timers: &RaftTimers,
        deps: crate::cluster::ClusterDeps,
        node: crate::agent::NodeParts<R>,
    ) -> Result<Self, crate::cluster::ClusterError>
    where
        L: openraft::storage::RaftLogStorage<crate::cluster::TypeConfig>,
        S: openraft::storage::RaftStateMachine<crate::cluster::TypeConfig>,
        R: gantry_node::Runtime,
    {
        let cluster = Cluster::start_with(id, cluster_id, log, sm, state, timers, deps).await?;
        let liveness = Arc::new(Liveness::default());
        let shutdown = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let health = crate::agent::start_node(&cluster, node, &mut tasks, &shutdown);
        spawn_control_loops(
            &cluster,
            liveness.clone(),
            health.clone(),
            &mut tasks,
            &shutdown,
        );
        let handlers = ClusterHandlers {
            cluster: cluster.clone(),
            liveness,
        };
        Ok(Self {
            cluster,
            handlers,
            health,
            shutdown,
            tasks,
        })
    }

    /// The daemon dies: every loop stops where it is (no graceful path),
    /// then the Raft core is stopped without further ado. What it wrote
    /// stays on its disk as the caller's disk model says.
    pub async fn kill(mut self) {
        self.shutdown.cancel();
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        if tokio::time::timeout(Duration::from_secs(5), self.cluster.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("raft did not stop within 5 s of a simulated crash");
        }
    }
}

/// The fence guard is a verb of the `gantry` binary; a program that embeds
/// gateways (a benchmark) is not that binary, and enforces fences in-process
/// only.
fn guard_available() -> bool {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.file_name().map(|n| n == "gantry"))
        .unwrap_or(false)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
