//! `gantry init`, `gantry join` and `gantry run`: bring a gateway up in the
//! foreground. Every refusal happens before anything is written, so a
//! failed `init` or `join` leaves no half-made data dir behind.
//!
//! Trust is made here: `init` creates the cluster CA (or takes the
//! operator's), the cluster key and the first gateway's certificate, and
//! commits the CA key sealed; `join` checks the CA pin of its token in the
//! TLS handshake before it sends the token, sends a certificate request,
//! and gets its certificate, then the cluster key and its own admin token
//! over mutual TLS.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use gantry_pki::{CertificateAuthority, ClusterKey, Credentials, Fingerprint, JoinToken, NodeKey};
use gantry_proto::v1::bootstrap_client::BootstrapClient;
use gantry_proto::v1::{AddMemberRequest, JoinRequest};
use tokio::net::TcpListener;
use tonic::Code;

use super::args::{InitArgs, JoinArgs, MemberArgs, RunArgs};
use crate::cluster::token::new_cluster_id;
use crate::cluster::RaftTimers;
use crate::config::{GatewayConfig, RAFT_DIR, TOKEN_FILE};
use crate::gateway::{Gateway, Stopped};
use crate::state::spec::is_dns_label;
use crate::state::{Capacity, ClusterSettings, Command, NodeTls, Pki, Response, Role, TokenKind};
use crate::trust::files::{self, private_dir};
use crate::trust::issuer::{node_profile, CA_KEY_FIELD};

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
        member: false,
        containerd_socket: member.containerd_socket.clone(),
        containerd_namespace: member.containerd_namespace.clone(),
        stop_grace: member.stop_grace,
        disk_reserve_bytes: member.disk_reserve,
        registry: gantry_node::RegistryConfig {
            insecure: member.insecure_registries.clone(),
            credentials: Default::default(),
            allowed: member.allowed_registries.clone(),
        },
    }
}

/// What `init` hands the operator.
pub struct Created {
    pub cluster_id: String,
    pub ca: Fingerprint,
    /// None when a resumed `init` had already written it.
    pub join_token: Option<String>,
}

pub async fn init(args: InitArgs) -> Result<ExitCode> {
    let (gateway, created) = start_init(&args).await?;
    let dir = &args.member.data_dir;
    println!("cluster {} created", created.cluster_id);
    println!("CA fingerprint (sha256): {}", created.ca);
    if let Some(token) = &created.join_token {
        println!("join token: {token}");
    }
    println!(
        "(the join token is also in {}; this gateway's admin token in {})",
        dir.join(TOKEN_FILE).display(),
        dir.join(files::ADMIN_TOKEN_FILE).display()
    );
    serve(gateway).await
}

fn read_pem(path: &Path, what: &str) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {what} {}", path.display()))
}

/// The pin of a certificate as the state records it.
fn pin_of(cert_der: &[u8]) -> Result<NodeTls> {
    let info = gantry_pki::cert_info(cert_der)?;
    Ok(NodeTls {
        spki_sha256: info.spki_sha256.to_hex(),
        serial: info.serial_hex,
        not_after_ms: (info.not_after.max(0) as u64).saturating_mul(1000),
        previous: None,
    })
}

/// `gantry init` up to a running first gateway (the CLI then serves it).
pub async fn start_init(args: &InitArgs) -> Result<(Gateway, Created)> {
    let member = &args.member;
    check_member_args(member)?;
    let settings = ClusterSettings {
        heartbeat_interval: args.heartbeat_interval,
        node_grace: args.node_grace,
        voter_replace_after: args.voter_replace_after,
    };
    crate::state::settings::check(&settings).map_err(|e| anyhow!("--{e}"))?;
    ensure_fresh(&member.data_dir)?;
    let ca = match (&args.ca_cert, &args.ca_key) {
        (Some(cert), Some(key)) => CertificateAuthority::from_pem(
            &read_pem(cert, "--ca-cert")?,
            &read_pem(key, "--ca-key")?,
        )
        .context("--ca-cert/--ca-key")?,
        _ => CertificateAuthority::generate("gantry cluster CA", crate::trust::CA_LIFETIME)?,
    };
    let (capacity, listener, bound, advertise) = prepare(member).await?;
    let dir = &member.data_dir;
    private_dir(dir)?;

    let cluster_id = new_cluster_id();
    let key = NodeKey::generate()?;
    let issued = ca.issue(&key, &node_profile(1, &cluster_id, &advertise))?;
    files::write_ca_bundle(dir, &[ca.cert_der().to_vec()])?;
    files::write_credentials(
        dir,
        &Credentials {
            key,
            chain: vec![issued.cert_der, ca.cert_der().to_vec()],
        },
    )?;
    files::write_cluster_key(dir, &ClusterKey::generate()?)?;
    // Until InitCluster commits it sealed; then this file goes.
    files::write_secret_file(&dir.join(files::PENDING_CA_KEY_FILE), &ca.key_pem())?;
    let mut config = new_config(member, &cluster_id, 1, bound, advertise);
    config.member = true;
    config.save(dir)?;

    let gateway = Gateway::start(&config, dir, listener, &RaftTimers::default()).await?;
    gateway.cluster.bootstrap(&config.advertise).await?;
    let join_token = finish_init(&gateway, &config, capacity, settings).await?;
    Ok((
        gateway,
        Created {
            cluster_id,
            ca: ca.fingerprint(),
            join_token,
        },
    ))
}

async fn commit(gateway: &Gateway, command: Command, what: &str) -> Result<Response> {
    match gateway.cluster.write(command).await? {
        Response::Rejected { reason } => bail!("cannot {what}: {reason}"),
        other => Ok(other),
    }
}

/// A new default join token: no expiry, any number of uses.
fn default_join_token(
    trust: &crate::trust::NodeTrust,
) -> Result<(JoinToken, crate::state::TokenRecord)> {
    Ok(crate::trust::tokens::new_join(
        trust.ca_pin(),
        "default",
        None,
        None,
        crate::cluster::node::now_ms(),
    )?)
}

/// Commits the cluster identity, its CA and default join token, registers
/// the first gateway and gives it its admin token. Safe to repeat: `run`
/// calls it when `init` died half-way. Returns the join token when it made
/// one.
async fn finish_init(
    gateway: &Gateway,
    config: &GatewayConfig,
    capacity: Capacity,
    settings: ClusterSettings,
) -> Result<Option<String>> {
    let cluster = &gateway.cluster;
    let trust = cluster.trust()?.clone();
    let dir = &gateway.data_dir;
    let pending_key = dir.join(files::PENDING_CA_KEY_FILE);
    let mut join_token = None;
    let initialised = cluster.state().read().state.meta.identity.is_some();
    if !initialised {
        let ca_key = files::read_secret_file(&pending_key)?.ok_or_else(|| {
            anyhow!(
                "init stopped before the cluster was created and its CA key ({}) is gone; start over in an empty data dir",
                pending_key.display()
            )
        })?;
        let (token, record) = default_join_token(&trust)?;
        let pki = Pki {
            ca_certs_pem: gantry_pki::certs_to_pem(trust.ca_bundle()),
            ca_sha256: trust.ca_pin().to_hex(),
            ca_key_sealed: trust.seal(CA_KEY_FIELD, ca_key.as_bytes())?,
        };
        let command = Command::InitCluster {
            cluster_id: config.cluster_id.clone(),
            settings,
            pki,
            join_token: record,
        };
        commit(gateway, command, "initialise the cluster").await?;
        files::write_secret_file(&dir.join(TOKEN_FILE), &token.to_string())?;
        join_token = Some(token.to_string());
    }
    files::remove_file(&pending_key);
    if !dir.join(TOKEN_FILE).exists() {
        // Resumed after the commit but before the file: a new default.
        let (token, record) = default_join_token(&trust)?;
        commit(
            gateway,
            Command::RotateJoinToken { record },
            "make the join token",
        )
        .await?;
        files::write_secret_file(&dir.join(TOKEN_FILE), &token.to_string())?;
        join_token = Some(token.to_string());
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
            tls: Some(pin_of(trust.credentials().leaf_der())?),
            join_token: None,
        };
        match commit(gateway, command, "register the first gateway").await? {
            Response::NodeRegistered { node } if node == config.node_id => {}
            other => bail!("cannot register the first gateway: {other:?}"),
        }
    }
    let token_file = dir.join(files::ADMIN_TOKEN_FILE);
    let has_token = cluster
        .state()
        .read()
        .state
        .tokens_of(TokenKind::Admin)
        .any(|t| t.node == Some(config.node_id));
    if !has_token || !token_file.exists() {
        let (token, record) = crate::trust::tokens::new_admin(
            trust.ca_pin(),
            Role::Admin,
            &format!("{} (local)", config.name),
            None,
            Some(config.node_id),
            crate::cluster::node::now_ms(),
        )?;
        commit(
            gateway,
            Command::CreateToken { record },
            "make the admin token",
        )
        .await?;
        files::write_secret_file(&token_file, &token.to_string())?;
    }
    Ok(join_token)
}

/// A client for the Bootstrap service that trusts only the CA the join
/// token pins: a server with any other CA fails the handshake, before the
/// token is sent.
async fn bootstrap_client(
    peer: &str,
    pin: Fingerprint,
) -> Result<BootstrapClient<tonic::transport::Channel>, String> {
    let config = gantry_pki::client_config(
        gantry_pki::PinnedCaVerifier::new(pin),
        None,
        crate::trust::alpn(),
    )
    .map_err(|e| e.to_string())?;
    let connector = crate::tls::TlsConnector::new(
        crate::tls::ClientTls::new(config),
        gantry_pki::GATEWAY_NAME,
    )?;
    let channel = crate::tls::connect_channel(peer, connector, |e| {
        e.connect_timeout(Duration::from_secs(3))
    })
    .await?;
    Ok(BootstrapClient::new(channel)
        .max_decoding_message_size(crate::api::cluster_service::MAX_JOIN_BYTES)
        .max_encoding_message_size(crate::api::cluster_service::MAX_JOIN_BYTES))
}

/// What the leader answered a join.
struct Registered {
    cluster_id: String,
    node_id: u64,
    cert_der: Vec<u8>,
    ca_certs_der: Vec<Vec<u8>>,
}

/// Asks `peer` to register us, retrying with back-off while it is
/// unreachable; a peer that fails the CA pin is never retried (and was
/// never sent the token).
async fn register_with(
    pin: Fingerprint,
    peer: &str,
    request: JoinRequest,
    timeout: Duration,
) -> Result<Registered> {
    let deadline = Instant::now() + timeout;
    let mut delay = Duration::from_millis(200);
    loop {
        let attempt = match bootstrap_client(peer, pin).await {
            Ok(mut client) => {
                match tokio::time::timeout(Duration::from_secs(15), client.join(request.clone()))
                    .await
                {
                    Ok(Ok(reply)) => {
                        let reply = reply.into_inner();
                        return Ok(Registered {
                            cluster_id: reply.cluster_id,
                            node_id: reply.node_id,
                            cert_der: reply.node_cert_der,
                            ca_certs_der: reply.ca_certs_der,
                        });
                    }
                    Ok(Err(status)) if status.code() != Code::Unavailable => {
                        bail!("join refused by {peer}: {}", status.message());
                    }
                    Ok(Err(status)) => status.message().to_string(),
                    Err(_) => "no answer".to_string(),
                }
            }
            Err(e) if e.contains("TLS:") => bail!(
                "{peer} is not a gateway of the cluster this token is for ({e}); the token was not sent"
            ),
            Err(e) => e,
        };
        tracing::warn!(%peer, error = %attempt, retry_in = ?delay, "peer unreachable, retrying");
        if Instant::now() + delay > deadline {
            bail!("cannot reach {peer} after {}s ({attempt}); check the address and that the gateway there is running", timeout.as_secs());
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Asks the cluster (through any known gateway, over mutual TLS) to make
/// us a Raft member; keeps the cluster key and our admin token it answers
/// with before counting as a member.
async fn become_member(gateway: &Gateway, config: &mut GatewayConfig) -> Result<String> {
    let request = AddMemberRequest {
        cluster_id: config.cluster_id.clone(),
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut last = String::new();
        for peer in &config.peers {
            let mut client = match gateway.cluster.peers()?.any_member(peer) {
                Ok(client) => client,
                Err(e) => {
                    last = format!("{peer}: {e}");
                    continue;
                }
            };
            match client.add_member(request.clone()).await {
                Ok(reply) => {
                    let reply = reply.into_inner();
                    let key = ClusterKey::from_hex(&reply.cluster_key)
                        .context("the cluster sent a malformed cluster key")?;
                    gateway.cluster.trust()?.set_cluster_key(key)?;
                    files::write_secret_file(
                        &gateway.data_dir.join(files::ADMIN_TOKEN_FILE),
                        &reply.admin_token,
                    )?;
                    config.member = true;
                    config.save(&gateway.data_dir)?;
                    return Ok(reply.role);
                }
                Err(status)
                    if matches!(
                        status.code(),
                        Code::PermissionDenied | Code::FailedPrecondition | Code::Unauthenticated
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
    let token = JoinToken::parse(&args.token)?;
    let (capacity, listener, bound, advertise) = prepare(member).await?;

    let key = NodeKey::generate()?;
    let request = JoinRequest {
        token: token.to_string(),
        name: member.name.clone(),
        address: advertise.clone(),
        labels: member.labels.clone().into_iter().collect(),
        cpu_millis: capacity.cpu_millis,
        memory_bytes: capacity.memory_bytes,
        devices: member.devices.clone(),
        csr_der: key.csr_der(&member.name)?,
    };
    let joined = register_with(token.ca, &args.peer, request, args.join_timeout.0).await?;
    // What came back must be ours, from the CA the token pins.
    if !joined
        .ca_certs_der
        .iter()
        .any(|der| Fingerprint::of(der) == token.ca)
    {
        bail!("{} answered with another CA than the token pins", args.peer);
    }
    if gantry_pki::cert_info(&joined.cert_der)?.spki_sha256 != key.spki_sha256()
        || gantry_pki::node_id_of(&joined.cert_der, &joined.cluster_id) != Some(joined.node_id)
    {
        bail!(
            "{} answered with a certificate that is not for this gateway",
            args.peer
        );
    }
    let dir = &member.data_dir;
    private_dir(dir)?;
    files::write_ca_bundle(dir, &joined.ca_certs_der)?;
    let mut chain = vec![joined.cert_der];
    chain.extend(joined.ca_certs_der);
    files::write_credentials(dir, &Credentials { key, chain })?;
    let mut config = new_config(member, &joined.cluster_id, joined.node_id, bound, advertise);
    config.peers = vec![args.peer.clone()];
    config.save(dir)?;

    let gateway = Gateway::start(&config, dir, listener, &RaftTimers::default()).await?;
    let role = become_member(&gateway, &mut config).await?;
    println!(
        "joined cluster {} as gateway {} (id {}, {role})",
        joined.cluster_id, config.name, joined.node_id
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
    let unfinished = gateway.cluster.state().read().state.meta.identity.is_none()
        || args.data_dir.join(files::PENDING_CA_KEY_FILE).exists();
    if config.node_id == 1 && unfinished {
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
    let systemd = super::systemd::serving(gateway.cluster.clone());
    let served = gateway.serve().await;
    systemd.abort();
    super::systemd::notify("STOPPING=1");
    match served? {
        Stopped::Shutdown => Ok(ExitCode::SUCCESS),
        Stopped::LeftCluster => {
            println!("this gateway left the cluster; stopping");
            Ok(ExitCode::SUCCESS)
        }
    }
}
