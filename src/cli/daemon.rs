//! `gantry init`, `gantry join` and `gantry run`: bring a gateway up in the
//! foreground. Every refusal happens before anything is written, so a
//! failed `init` or `join` leaves no half-made data dir behind.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use gantry_proto::v1::{AddMemberRequest, JoinRequest};
use tokio::net::TcpListener;
use tonic::Code;

use super::args::{InitArgs, JoinArgs, MemberArgs, RunArgs};
use crate::cluster::network::PeerChannels;
use crate::cluster::token::{new_cluster_id, JoinToken};
use crate::cluster::RaftTimers;
use crate::config::{write_durably, GatewayConfig, RAFT_DIR, TOKEN_FILE};
use crate::gateway::{Gateway, Stopped};
use crate::state::spec::is_dns_label;
use crate::state::{Capacity, ClusterSettings, Command, Response};

/// Refuses a data dir that already holds a gateway.
fn ensure_fresh(data_dir: &Path) -> Result<()> {
    if GatewayConfig::path(data_dir).exists() || data_dir.join(RAFT_DIR).exists() {
        bail!(
            "{} already holds a gateway; restart it with `gantry run --data-dir {}` or choose an empty directory",
            data_dir.display(),
            data_dir.display()
        );
    }
    Ok(())
}

async fn bind(listen: &str) -> Result<TcpListener> {
    TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))
}

fn advertised(requested: Option<&str>, bound: SocketAddr) -> Result<String> {
    if let Some(addr) = requested {
        return Ok(addr.to_string());
    }
    if bound.ip().is_unspecified() {
        bail!("listening on {bound} (all interfaces): give --advertise HOST:PORT so others know where to reach this gateway");
    }
    Ok(bound.to_string())
}

fn discovered_capacity() -> Result<Capacity> {
    let found = gantry_node::resources::discover()
        .context("cannot discover this gateway's cpu and memory")?;
    Ok(Capacity {
        cpu_millis: found.cpu_millis,
        memory_bytes: found.memory_bytes,
    })
}

/// Capacity (flags over discovery), the bound listener, its address and
/// the address to advertise: what `init` and `join` both need first.
async fn prepare(member: &MemberArgs) -> Result<(Capacity, TcpListener, SocketAddr, String)> {
    let capacity = member
        .capacity
        .unwrap_or_default()
        .resolve(discovered_capacity()?);
    let listener = bind(&member.listen).await?;
    let bound = listener.local_addr()?;
    let advertise = advertised(member.advertise.as_deref(), bound)?;
    Ok((capacity, listener, bound, advertise))
}

fn check_member_args(member: &MemberArgs) -> Result<()> {
    if !is_dns_label(&member.name) {
        bail!(
            "--name '{}' is not a DNS label (1-63 of a-z, 0-9 and '-')",
            member.name
        );
    }
    for device in &member.devices {
        if !device.starts_with("/dev/") {
            bail!("--devices: '{device}' must be a path under /dev/");
        }
    }
    Ok(())
}

fn new_config(
    member: &MemberArgs,
    cluster_id: &str,
    node_id: u64,
    listen: SocketAddr,
    advertise: String,
    token: &JoinToken,
) -> GatewayConfig {
    GatewayConfig {
        cluster_id: cluster_id.to_string(),
        node_id,
        name: member.name.clone(),
        listen: listen.to_string(),
        advertise,
        labels: member.labels.clone(),
        capacity_override: member.capacity,
        devices: member.devices.clone(),
        peers: Vec::new(),
        token: token.to_string(),
        member: false,
        containerd_socket: member.containerd_socket.clone(),
        containerd_namespace: member.containerd_namespace.clone(),
        stop_grace: member.stop_grace,
        registry: gantry_node::RegistryConfig {
            insecure: member.insecure_registries.clone(),
            credentials: Default::default(),
            allowed: member.allowed_registries.clone(),
        },
    }
}

fn write_token(data_dir: &Path, token: &str) -> Result<()> {
    write_durably(
        &data_dir.join(TOKEN_FILE),
        format!("{token}\n").as_bytes(),
        0o600,
    )?;
    Ok(())
}

pub async fn init(args: InitArgs) -> Result<ExitCode> {
    let gateway = start_init(&args).await?;
    println!(
        "cluster {} created; join token in {}",
        gateway.cluster.cluster_id(),
        args.member.data_dir.join(TOKEN_FILE).display()
    );
    serve(gateway).await
}

/// `gantry init` up to a running first gateway (the CLI then serves it).
pub async fn start_init(args: &InitArgs) -> Result<Gateway> {
    let member = &args.member;
    check_member_args(member)?;
    let settings = ClusterSettings {
        heartbeat_interval: args.heartbeat_interval,
        node_grace: args.node_grace,
        voter_replace_after: args.voter_replace_after,
    };
    crate::state::settings::check(&settings).map_err(|e| anyhow!("--{e}"))?;
    ensure_fresh(&member.data_dir)?;
    let (capacity, listener, bound, advertise) = prepare(member).await?;
    std::fs::create_dir_all(&member.data_dir)
        .with_context(|| format!("cannot create {}", member.data_dir.display()))?;

    let cluster_id = new_cluster_id();
    let token = JoinToken::generate(&cluster_id);
    let mut config = new_config(member, &cluster_id, 1, bound, advertise, &token);
    config.member = true;
    config.save(&member.data_dir)?;
    write_token(&member.data_dir, &token.to_string())?;

    let gateway =
        Gateway::start(&config, &member.data_dir, listener, &RaftTimers::default()).await?;
    gateway.cluster.bootstrap(&config.advertise).await?;
    finish_init(&gateway, &config, capacity, settings).await?;
    Ok(gateway)
}

/// Commits the cluster identity and registers the first gateway. Safe to
/// repeat: `run` calls it when `init` died half-way.
async fn finish_init(
    gateway: &Gateway,
    config: &GatewayConfig,
    capacity: Capacity,
    settings: ClusterSettings,
) -> Result<()> {
    let cluster = &gateway.cluster;
    let token = JoinToken::parse(&config.token).map_err(|e| anyhow!(e))?;
    let initialised = cluster.state().read().state.meta.identity.is_some();
    if !initialised {
        let command = Command::InitCluster {
            cluster_id: config.cluster_id.clone(),
            join_secret_sha256: token.secret_sha256(),
            settings,
        };
        if let Response::Rejected { reason } = cluster.write(command).await? {
            bail!("cannot initialise the cluster: {reason}");
        }
    }
    let registered = cluster
        .state()
        .read()
        .state
        .nodes
        .contains_key(&config.node_id);
    if !registered {
        let command = Command::RegisterNode {
            name: config.name.clone(),
            address: config.advertise.clone(),
            labels: config.labels.clone(),
            capacity,
            devices: config.devices.iter().cloned().collect(),
        };
        match cluster.write(command).await? {
            Response::NodeRegistered { node } if node == config.node_id => {}
            other => bail!("cannot register the first gateway: {other:?}"),
        }
    }
    Ok(())
}

/// Asks `peer` to register us, retrying with back-off while it is unreachable.
async fn register_with(
    peers: &PeerChannels,
    peer: &str,
    request: JoinRequest,
    timeout: Duration,
) -> Result<(String, u64)> {
    let deadline = Instant::now() + timeout;
    let mut delay = Duration::from_millis(200);
    loop {
        let mut client = peers.client(peer).map_err(|e| anyhow!(e))?;
        match tokio::time::timeout(Duration::from_secs(15), client.join(request.clone())).await {
            Ok(Ok(reply)) => {
                let reply = reply.into_inner();
                return Ok((reply.cluster_id, reply.node_id));
            }
            Ok(Err(status)) if status.code() != Code::Unavailable => {
                bail!("join refused by {peer}: {}", status.message());
            }
            Ok(Err(status)) => {
                tracing::warn!(%peer, error = %status.message(), retry_in = ?delay, "peer unreachable, retrying");
            }
            Err(_) => tracing::warn!(%peer, retry_in = ?delay, "peer did not answer, retrying"),
        }
        if Instant::now() + delay > deadline {
            bail!("cannot reach {peer} after {}s; check the address and that the gateway there is running", timeout.as_secs());
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Asks the cluster (through any known gateway) to make us a Raft member.
async fn become_member(gateway: &Gateway, config: &mut GatewayConfig) -> Result<String> {
    let request = AddMemberRequest {
        token: config.token.clone(),
        cluster_id: config.cluster_id.clone(),
        node_id: config.node_id,
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut last = String::new();
        for peer in &config.peers {
            let mut client = gateway
                .cluster
                .peers()
                .client(peer)
                .map_err(|e| anyhow!(e))?;
            match client.add_member(request.clone()).await {
                Ok(reply) => {
                    config.member = true;
                    config.save(&gateway.data_dir)?;
                    return Ok(reply.into_inner().role);
                }
                Err(status)
                    if matches!(
                        status.code(),
                        Code::PermissionDenied | Code::FailedPrecondition
                    ) =>
                {
                    bail!("the cluster refused this gateway: {}", status.message());
                }
                Err(status) => last = format!("{peer}: {}", status.message()),
            }
        }
        if Instant::now() > deadline {
            bail!("could not become a member: {last}");
        }
        tracing::warn!(error = %last, "membership not confirmed yet, retrying");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

pub async fn join(args: JoinArgs) -> Result<ExitCode> {
    let gateway = start_join(&args).await?;
    serve(gateway).await
}

/// `gantry join` up to a running member (the CLI then serves it).
pub async fn start_join(args: &JoinArgs) -> Result<Gateway> {
    let member = &args.member;
    check_member_args(member)?;
    ensure_fresh(&member.data_dir)?;
    let token = JoinToken::parse(&args.token).map_err(|e| anyhow!(e))?;
    let (capacity, listener, bound, advertise) = prepare(member).await?;

    let request = JoinRequest {
        token: token.to_string(),
        name: member.name.clone(),
        address: advertise.clone(),
        labels: member.labels.clone().into_iter().collect(),
        cpu_millis: capacity.cpu_millis,
        memory_bytes: capacity.memory_bytes,
        devices: member.devices.clone(),
    };
    let peers = PeerChannels::default();
    let (cluster_id, node_id) =
        register_with(&peers, &args.peer, request, args.join_timeout.0).await?;
    if cluster_id != token.cluster_id {
        bail!(
            "{} belongs to cluster {cluster_id}, the token to cluster {}",
            args.peer,
            token.cluster_id
        );
    }
    std::fs::create_dir_all(&member.data_dir)
        .with_context(|| format!("cannot create {}", member.data_dir.display()))?;
    let mut config = new_config(member, &cluster_id, node_id, bound, advertise, &token);
    config.peers = vec![args.peer.clone()];
    config.save(&member.data_dir)?;
    write_token(&member.data_dir, &token.to_string())?;

    let gateway =
        Gateway::start(&config, &member.data_dir, listener, &RaftTimers::default()).await?;
    let role = become_member(&gateway, &mut config).await?;
    println!(
        "joined cluster {cluster_id} as gateway {} (id {node_id}, {role})",
        config.name
    );
    Ok(gateway)
}

pub async fn run(args: RunArgs) -> Result<ExitCode> {
    let gateway = start_run(&args).await?;
    serve(gateway).await
}

/// `gantry run` up to a running gateway (the CLI then serves it).
pub async fn start_run(args: &RunArgs) -> Result<Gateway> {
    let mut config = GatewayConfig::load(&args.data_dir)?.ok_or_else(|| {
        anyhow!(
            "{} holds no gateway; create one with `gantry init` or `gantry join`",
            args.data_dir.display()
        )
    })?;
    let listener = bind(&config.listen).await?;
    let gateway = Gateway::start(&config, &args.data_dir, listener, &RaftTimers::default()).await?;
    if config.node_id == 1 && gateway.cluster.state().read().state.meta.identity.is_none() {
        // `init` died before committing the cluster's identity.
        gateway.cluster.bootstrap(&config.advertise).await?;
        let capacity = config
            .capacity_override
            .unwrap_or_default()
            .resolve(discovered_capacity()?);
        finish_init(&gateway, &config, capacity, ClusterSettings::default()).await?;
    }
    if !config.member {
        let role = become_member(&gateway, &mut config).await?;
        tracing::info!(%role, "membership confirmed");
    }
    Ok(gateway)
}

async fn serve(gateway: Gateway) -> Result<ExitCode> {
    match gateway.serve().await? {
        Stopped::Shutdown => Ok(ExitCode::SUCCESS),
        Stopped::LeftCluster => {
            println!("this gateway left the cluster; stopping");
            Ok(ExitCode::SUCCESS)
        }
    }
}
