//! The `gantry hub` verbs: `serve` runs the hub in the foreground; the
//! admin verbs (`apply`, `delete`, `status`, `site-token`) are clients of
//! the hub at `--hub`, exactly like any script would be, with a hub admin
//! token (`--token`, `GANTRY_HUB_TOKEN`, or the hub's `--data-dir`).

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use gantry_proto::hub::v1::hub_client::HubClient;
use gantry_proto::hub::v1::hub_server::HubServer;
use gantry_proto::hub::v1::{ApplyRequest, DeleteRequest, SiteTokenRequest, StatusRequest};
use serde_json::Value;
use tokio::net::TcpListener;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use super::auth::HubPolicy;
use super::pki::{HubTlsOptions, ADMIN_TOKEN_FILE};
use super::service::HubService;
use super::sites::Sites;
use super::store::HubStore;
use crate::api::auth::AuthLayer;
use crate::cli::args::{DeleteWhat, HubAddr, HubVerb, OutputFormat};
use crate::cli::client::{status_error, Bearer};
use crate::cli::output::{self, View};

/// The file under the data dir holding the address the hub bound.
pub const ADDRESS_FILE: &str = "hub-address";
/// The hub's RocksDB, under the data dir.
pub const DB_DIR: &str = "hub-db";

pub async fn run(verb: HubVerb, format: OutputFormat) -> Result<ExitCode> {
    match verb {
        HubVerb::Serve {
            data_dir,
            listen,
            tls_san,
            tls_cert,
            tls_key,
            keepalive,
            mqtt,
        } => {
            let options = ServeOptions {
                tls: HubTlsOptions {
                    sans: tls_san,
                    cert: tls_cert,
                    key: tls_key,
                },
                mqtt: bridge_options(mqtt)?,
                keepalive: parse_hub_keepalive(&keepalive)?,
            };
            serve(&data_dir, &listen, &options).await?;
            Ok(ExitCode::SUCCESS)
        }
        verb => client_verb(verb, format).await,
    }
}

/// How `hub serve` runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub tls: HubTlsOptions,
    /// `--mqtt`: also serve sites through this broker.
    pub mqtt: Option<super::mqtt::BridgeOptions>,
    /// Kernel TCP keepalive on accepted connections: probes after this long
    /// without a segment from the peer (`link::keepalive`); `None` is off.
    pub keepalive: Option<Duration>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            tls: HubTlsOptions::default(),
            mqtt: None,
            keepalive: Some(crate::cloud::link::keepalive::HUB_DEFAULT_IDLE),
        }
    }
}

/// `hub serve --mqtt ...`, files read and everything checked now.
fn bridge_options(
    args: crate::cli::args::HubMqttArgs,
) -> Result<Option<super::mqtt::BridgeOptions>> {
    let Some(url) = args.url else {
        return Ok(None);
    };
    let read = |path: &Path, what: &str| {
        std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {what} {}", path.display()))
    };
    let ca_pem = match args.ca_file {
        Some(path) => Some(read(&path, "--mqtt-ca-file")?),
        None if url.starts_with("mqtts://") => Some(read(
            Path::new("/etc/ssl/certs/ca-certificates.crt"),
            "the system's CA bundle (give --mqtt-ca-file)",
        )?),
        None => None,
    };
    let client = match (args.client_cert, args.client_key) {
        (Some(cert), Some(key)) => Some((
            read(&cert, "--mqtt-client-cert")?,
            read(&key, "--mqtt-client-key")?,
        )),
        _ => None,
    };
    let prefix = crate::cloud::mqtt::check_prefix(&args.prefix)
        .map_err(|e| anyhow!("--mqtt-prefix: {e}"))?;
    let options = super::mqtt::BridgeOptions {
        url,
        username: args.username,
        password: args.password,
        ca_pem,
        client,
        insecure: args.insecure,
        prefix,
    };
    options.connect_options().map_err(|e| anyhow!(e))?;
    Ok(Some(options))
}

/// `hub serve --keepalive`: a duration of at least 10 s, or off.
fn parse_hub_keepalive(text: &str) -> Result<Option<Duration>> {
    if text.trim() == "off" {
        return Ok(None);
    }
    let idle = humantime::parse_duration(text.trim()).map_err(|e| {
        anyhow!("--keepalive: '{text}' is not a duration such as 2m, nor off ({e})")
    })?;
    if idle < Duration::from_secs(10) {
        return Err(anyhow!(
            "--keepalive: {text} is shorter than 10s (the kernel counts it in seconds); use off for none"
        ));
    }
    Ok(Some(idle))
}

/// Runs a hub until Ctrl-C or SIGTERM.
pub async fn serve(data_dir: &Path, listen: &str, options: &ServeOptions) -> Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    serve_on(data_dir, listener, options, shutdown_signal()).await
}

/// Runs a hub on `listener` until `stop` completes (the benchmark embeds it).
pub async fn serve_on(
    data_dir: &Path,
    listener: TcpListener,
    options: &ServeOptions,
    stop: impl std::future::Future<Output = ()> + Send,
) -> Result<()> {
    let address = listener.local_addr().context("listener address")?;
    let hub_tls = super::pki::load_or_create(data_dir, &address.to_string(), &options.tls)?;
    let store = HubStore::open(&data_dir.join(DB_DIR))?;
    let sites = Arc::new(Sites::open(store, hub_tls.ca)?);
    let token_file = data_dir.join(ADMIN_TOKEN_FILE);
    if !sites.has_admin_token() || !token_file.exists() {
        let token = sites.create_admin_token()?;
        crate::trust::files::write_secret_file(&token_file, &token.to_string())?;
        println!("hub admin token written to {}", token_file.display());
    }
    println!("hub CA fingerprint (sha256): {}", hub_tls.ca);
    std::fs::write(data_dir.join(ADDRESS_FILE), address.to_string())
        .context("cannot write the hub address file")?;
    tracing::info!(address = %address, data_dir = %data_dir.display(), ca = %hub_tls.ca, "hub started");
    crate::cli::systemd::notify(&format!("READY=1\nSTATUS=serving on {address}"));
    // Fed while the server runs (its loop is this task's; a hung runtime
    // starves it and systemd restarts the hub).
    let watchdog = crate::cli::systemd::watchdog_every().map(|every| {
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                crate::cli::systemd::notify("WATCHDOG=1");
            }
        })
    });
    let closing = tokio_util::sync::CancellationToken::new();
    let incoming = crate::tls::incoming(
        listener,
        crate::tls::ServerTls::new(hub_tls.server),
        crate::tls::AcceptLimits {
            keepalive_idle: options.keepalive,
            ..Default::default()
        },
        closing.clone(),
    );
    let policy = AuthLayer::new(HubPolicy {
        sites: sites.clone(),
    });
    let bridge = options
        .mqtt
        .clone()
        .map(|bridge| tokio::spawn(super::mqtt::run(sites.clone(), bridge, closing.clone())));
    let exporter = Arc::new(super::metrics::HubExporter::new(sites.clone()));
    // Live links and pages never end by themselves: close them when asked
    // to stop.
    let routes = tonic::service::Routes::from(crate::web::hub_pages::routes(
        sites.clone(),
        exporter,
        closing.clone(),
    ));
    let service = HubService {
        sites,
        closing: closing.clone(),
    };
    let routes = routes.add_service(
        HubServer::new(service)
            // `hub status` answers as large as every site's report.
            .max_encoding_message_size(usize::MAX)
            .max_decoding_message_size(super::desired::LINK_MESSAGE_LIMIT),
    );
    let stop = async move {
        stop.await;
        closing.cancel();
    };
    let served = tonic::transport::Server::builder()
        .http2_max_header_list_size(16 << 10)
        .accept_http1(true)
        .layer(policy)
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, stop)
        .await
        .context("the hub's gRPC server stopped");
    if let Some(watchdog) = watchdog {
        watchdog.abort();
    }
    if let Some(bridge) = bridge {
        // It disconnects from the broker once `closing` is cancelled.
        let _ = tokio::time::timeout(Duration::from_secs(2), bridge).await;
    }
    served?;
    tracing::info!("hub stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = ctrl_c.await;
}

/// A hub admin client that carries its token.
pub type HubAdmin = HubClient<InterceptedService<Channel, Bearer>>;

/// The hub admin token: `--token`/`GANTRY_HUB_TOKEN`, else the hub's
/// `--data-dir`/admin-token.
fn hub_token(addr: &HubAddr) -> Result<String> {
    if let Some(token) = addr
        .token
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        return Ok(token.to_string());
    }
    if let Some(dir) = &addr.data_dir {
        let file = dir.join(ADMIN_TOKEN_FILE);
        let text = std::fs::read_to_string(&file).with_context(|| {
            format!(
                "not authorized: cannot read the hub admin token {}",
                file.display()
            )
        })?;
        return Ok(text.trim().to_string());
    }
    Err(anyhow!(
        "not authorized: no hub admin token; pass --token or GANTRY_HUB_TOKEN, or --data-dir of the hub"
    ))
}

/// Connects to the hub with an admin token, pinning the CA it names.
pub async fn connect(hub: &str, token: &str) -> Result<HubAdmin> {
    let verifier = crate::cli::client::server_verifier(token, None, |t| {
        gantry_pki::AdminToken::parse(t).ok().map(|t| t.ca)
    })?;
    let channel = crate::cli::client::tls_channel(
        hub,
        verifier,
        gantry_pki::HUB_NAME,
        "a hub",
        "is it running? set --hub or GANTRY_HUB",
    )
    .await?;
    // `hub status` is as large as every site's report.
    Ok(HubClient::with_interceptor(channel, Bearer::new(token)?)
        .max_decoding_message_size(usize::MAX))
}

/// For programs that embed a hub (benchmarks, `gantry dev`): its admin
/// token, once `serve_on` has written it.
pub async fn admin_token_of(data_dir: &Path) -> Result<String> {
    let file = data_dir.join(ADMIN_TOKEN_FILE);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(&file) {
            if !text.trim().is_empty() {
                return Ok(text.trim().to_string());
            }
        }
        if std::time::Instant::now() > deadline {
            return Err(anyhow!(
                "the hub wrote no admin token to {}",
                file.display()
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn connect_with(addr: &HubAddr) -> Result<HubAdmin> {
    connect(&addr.hub, &hub_token(addr)?).await
}

fn document(
    reply: Result<tonic::Response<gantry_proto::hub::v1::JsonDocument>, tonic::Status>,
) -> Result<Value> {
    let reply = reply.map_err(status_error)?;
    serde_json::from_str(&reply.into_inner().json).context("the hub sent malformed JSON")
}

async fn client_verb(verb: HubVerb, format: OutputFormat) -> Result<ExitCode> {
    let (view, value) = match verb {
        HubVerb::Serve { .. } => return Err(anyhow!("not a client verb")),
        HubVerb::Apply {
            hub,
            site,
            all_sites,
            file,
            unchecked,
        } => {
            let manifest = crate::cli::client::read_manifest(&file)?;
            let mut client = connect_with(&hub).await?;
            let request = ApplyRequest {
                site: site.unwrap_or_default(),
                manifest,
                unchecked,
                all_sites,
            };
            (View::HubApplied, document(client.apply(request).await)?)
        }
        HubVerb::Delete {
            hub,
            site,
            what: DeleteWhat::Workload { name },
        } => {
            let mut client = connect_with(&hub).await?;
            let request = DeleteRequest { site, name };
            (View::HubDeleted, document(client.delete(request).await)?)
        }
        HubVerb::Status { hub } => {
            let mut client = connect_with(&hub).await?;
            (
                View::HubStatus,
                document(client.status(StatusRequest {}).await)?,
            )
        }
        HubVerb::SiteToken { hub, site, grace } => {
            let mut client = connect_with(&hub).await?;
            let request = SiteTokenRequest {
                site,
                grace_ms: grace
                    .map(|g| g.0.as_millis().min(u128::from(u64::MAX)) as u64)
                    .unwrap_or(0),
            };
            let reply = client
                .site_token(request)
                .await
                .map_err(status_error)?
                .into_inner();
            (
                View::HubToken,
                serde_json::json!({"site": reply.site, "token": reply.token}),
            )
        }
    };
    print!("{}", output::render(view, format, &value)?);
    Ok(ExitCode::SUCCESS)
}
