//! The `gantry hub` verbs: `serve` runs the hub in the foreground; the
//! admin verbs (`apply`, `delete`, `status`, `site-token`) are clients of
//! the hub at `--hub`, exactly like any script would be.

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
use tonic::transport::{Channel, Endpoint};

use super::service::HubService;
use super::sites::Sites;
use super::store::HubStore;
use crate::cli::args::{DeleteWhat, HubVerb, OutputFormat};
use crate::cli::output::{self, View};

/// The file under the data dir holding the address the hub bound.
pub const ADDRESS_FILE: &str = "hub-address";
/// The hub's RocksDB, under the data dir.
pub const DB_DIR: &str = "hub-db";

pub async fn run(verb: HubVerb, format: OutputFormat) -> Result<ExitCode> {
    match verb {
        HubVerb::Serve { data_dir, listen } => {
            serve(&data_dir, &listen).await?;
            Ok(ExitCode::SUCCESS)
        }
        verb => client_verb(verb, format).await,
    }
}

/// Runs a hub until Ctrl-C or SIGTERM.
pub async fn serve(data_dir: &Path, listen: &str) -> Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    serve_on(data_dir, listener, shutdown_signal()).await
}

/// Runs a hub on `listener` until `stop` completes (the benchmark embeds it).
pub async fn serve_on(
    data_dir: &Path,
    listener: TcpListener,
    stop: impl std::future::Future<Output = ()> + Send,
) -> Result<()> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let store = HubStore::open(&data_dir.join(DB_DIR))?;
    let sites = Arc::new(Sites::open(store)?);
    let address = listener.local_addr().context("listener address")?;
    std::fs::write(data_dir.join(ADDRESS_FILE), address.to_string())
        .context("cannot write the hub address file")?;
    tracing::info!(address = %address, data_dir = %data_dir.display(), "hub started");
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let closing = tokio_util::sync::CancellationToken::new();
    let service = HubService {
        sites,
        closing: closing.clone(),
    };
    // Live links never end by themselves: close them when asked to stop.
    let stop = async move {
        stop.await;
        closing.cancel();
    };
    tonic::transport::Server::builder()
        .add_service(HubServer::new(service))
        .serve_with_incoming_shutdown(incoming, stop)
        .await
        .context("the hub's gRPC server stopped")?;
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

pub(crate) async fn connect(hub: &str) -> Result<HubClient<Channel>> {
    let endpoint = Endpoint::from_shared(format!("http://{hub}"))
        .map_err(|e| anyhow!("--hub {hub} is not HOST:PORT: {e}"))?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(30));
    let channel = endpoint.connect().await.map_err(|e| {
        anyhow!("cannot reach a hub at {hub} ({e}); is it running? set --hub or GANTRY_HUB")
    })?;
    Ok(HubClient::new(channel))
}

fn document(
    reply: Result<tonic::Response<gantry_proto::hub::v1::JsonDocument>, tonic::Status>,
) -> Result<Value> {
    let reply = reply.map_err(|status| anyhow!("{}", status.message()))?;
    serde_json::from_str(&reply.into_inner().json).context("the hub sent malformed JSON")
}

async fn client_verb(verb: HubVerb, format: OutputFormat) -> Result<ExitCode> {
    let (view, value) = match verb {
        HubVerb::Serve { .. } => return Err(anyhow!("not a client verb")),
        HubVerb::Apply {
            hub,
            site,
            file,
            unchecked,
        } => {
            let manifest = crate::cli::client::read_manifest(&file)?;
            let mut client = connect(&hub.hub).await?;
            let request = ApplyRequest {
                site,
                manifest,
                unchecked,
            };
            (View::HubApplied, document(client.apply(request).await)?)
        }
        HubVerb::Delete {
            hub,
            site,
            what: DeleteWhat::Workload { name },
        } => {
            let mut client = connect(&hub.hub).await?;
            let request = DeleteRequest { site, name };
            (View::HubDeleted, document(client.delete(request).await)?)
        }
        HubVerb::Status { hub } => {
            let mut client = connect(&hub.hub).await?;
            (
                View::HubStatus,
                document(client.status(StatusRequest {}).await)?,
            )
        }
        HubVerb::SiteToken { hub, site, token } => {
            let mut client = connect(&hub.hub).await?;
            let request = SiteTokenRequest {
                site,
                token: token.unwrap_or_default(),
            };
            let reply = client
                .site_token(request)
                .await
                .map_err(|status| anyhow!("{}", status.message()))?
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
