//! `gantry dev`: the whole picture on one machine for a newcomer. A private
//! containerd (unless one is given), a cloud hub and a 3-gateway site on
//! loopback, a demo image built from the static busybox, sample workloads
//! pushed from the hub, and the status of both sides; runs until Ctrl-C and
//! cleans up after itself (containers, containerd, its directory).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use gantry_node::testing::{busybox_oci_archive, PrivateContainerd};
use gantry_proto::hub::v1::{
    ApplyRequest as HubApply, SiteTokenRequest, StatusRequest as HubStatus,
};
use gantry_proto::v1::{CloudAttachRequest, GetRequest, StatusRequest};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::args::{InitArgs, JoinArgs, MemberArgs, OutputFormat};
use super::daemon::{start_init, start_join};
use super::output::{self, View};
use crate::config::CapacityOverride;
use crate::gateway::Gateway;

pub const DEMO_IMAGE: &str = "127.0.0.1:5000/gantry/busybox:demo";
const SITE: &str = "demo-site";
const SAMPLE: &str = include_str!("../../examples/workloads/sensors.yaml");

#[derive(Debug, Args)]
pub struct DevArgs {
    /// Use this containerd instead of starting a private one.
    #[arg(long)]
    pub containerd_socket: Option<PathBuf>,
    /// Where the hub listens.
    #[arg(long, default_value = "127.0.0.1:7500")]
    pub hub_listen: String,
    /// The gateways listen on this port and the next two (127.0.0.1).
    #[arg(long, default_value_t = 7400)]
    pub first_port: u16,
    /// Keep the demo's directory (data, logs) after Ctrl-C.
    #[arg(long)]
    pub keep: bool,
}

fn member(dir: &Path, name: &str, port: u16, socket: &Path) -> MemberArgs {
    let mut member = MemberArgs::loopback(dir.join(name), name);
    member.listen = format!("127.0.0.1:{port}");
    member.containerd_socket = socket.to_string_lossy().into_owned();
    member.containerd_namespace = format!("dev-{name}");
    member.stop_grace = "2s".parse().unwrap_or_default();
    member
}

fn capacity(cpu_millis: u64, memory_bytes: u64) -> Option<CapacityOverride> {
    Some(CapacityOverride {
        cpu_millis: Some(cpu_millis),
        memory_bytes: Some(memory_bytes),
    })
}

async fn start_site(dir: &Path, first_port: u16, socket: &Path) -> Result<Vec<Gateway>> {
    let mut a = member(dir, "gw-a", first_port, socket);
    a.labels.insert("zone".into(), "north".into());
    a.capacity = capacity(2000, 1 << 30);
    let (first, _) = start_init(&InitArgs::with_defaults(a)).await?;
    let peer = first.local_addr.to_string();
    let token = std::fs::read_to_string(dir.join("gw-a").join(crate::config::TOKEN_FILE))?
        .trim()
        .to_string();
    let mut gateways = vec![first];
    for (i, name) in ["gw-b", "gw-c"].into_iter().enumerate() {
        let mut m = member(dir, name, first_port + 1 + i as u16, socket);
        if name == "gw-b" {
            m.labels.insert("zigbee".into(), "true".into());
            m.capacity = capacity(1000, 1 << 30);
        } else {
            m.capacity = capacity(1000, 512 << 20);
        }
        let join = JoinArgs {
            member: m,
            peer: peer.clone(),
            token: token.clone(),
            join_timeout: "30s".parse()?,
        };
        gateways.push(start_join(&join).await?);
    }
    Ok(gateways)
}

/// Polls `check` every 200 ms for up to a minute.
async fn wait_until<F, Fut>(what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check().await.unwrap_or(false) {
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

fn json(document: &str) -> Result<Value> {
    serde_json::from_str(document).context("malformed JSON")
}

pub async fn run(args: DevArgs) -> Result<ExitCode> {
    let dir = std::env::temp_dir().join(format!("gantry-dev-{:08x}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    println!("working in {}", dir.display());
    let result = run_in(&args, &dir).await;
    if args.keep {
        println!("kept {}", dir.display());
    } else if let Err(e) = std::fs::remove_dir_all(&dir) {
        tracing::warn!(dir = %dir.display(), error = %e, "could not remove the demo directory");
    }
    result
}

async fn run_in(args: &DevArgs, dir: &Path) -> Result<ExitCode> {
    // Declared first so it is dropped last: it removes the demo's
    // containers from its namespaces when the demo ends.
    let private = match &args.containerd_socket {
        Some(_) => None,
        None => Some(
            PrivateContainerd::start(dir.join("ctd"))
                .await
                .context("cannot start a private containerd (apt install containerd runc)")?,
        ),
    };
    let socket = match (&args.containerd_socket, &private) {
        (Some(socket), _) => socket.clone(),
        (None, Some(ctd)) => ctd.socket(),
        (None, None) => bail!("no containerd"),
    };
    let archive = dir.join("busybox.tar");
    busybox_oci_archive(&archive, DEMO_IMAGE)
        .context("cannot build the demo image (apt install busybox-static)")?;

    let stop = CancellationToken::new();
    let hub_listener = tokio::net::TcpListener::bind(&args.hub_listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.hub_listen))?;
    let hub_addr = hub_listener.local_addr()?.to_string();
    let hub_stop = stop.clone();
    let hub_dir = dir.join("hub");
    let hub_options = crate::cloud::hub::cli::ServeOptions::default();
    let hub = tokio::spawn(async move {
        crate::cloud::hub::cli::serve_on(
            &hub_dir,
            hub_listener,
            &hub_options,
            hub_stop.cancelled_owned(),
        )
        .await
    });

    let gateways = start_site(dir, args.first_port, &socket).await?;
    let server = gateways[0].local_addr.to_string();
    let site_dir = dir.join("gw-a");
    let hub_dir = dir.join("hub");
    let outcome = demo(&server, &site_dir, &hub_addr, &hub_dir, &archive).await;
    if let Err(e) = &outcome {
        eprintln!("error: {e:#}");
    } else {
        println!(
            "\nA hub on {hub_addr} and 3 gateways on 127.0.0.1:{}-{}, all over TLS with tokens. In another shell:",
            args.first_port,
            args.first_port + 2
        );
        println!(
            "  export GANTRY_DATA_DIR={} GANTRY_HUB_DATA_DIR={}",
            site_dir.display(),
            hub_dir.display()
        );
        println!("  gantry status                           # the site (GANTRY_SERVER defaults to 127.0.0.1:7400)");
        println!("  gantry hub status --hub {hub_addr}");
        println!("  gantry logs zigbee-bridge --follow");
        println!("  gantry describe workload historian      # why it has no home");
        if let Ok(token) = admin_token(&site_dir) {
            println!(
                "In a browser (it warns about the demo's own CA; accept it): https://{server}/login?token={token}"
            );
        }
        println!("Ctrl-C stops everything and cleans up.");
        let _ = tokio::signal::ctrl_c().await;
    }
    for gateway in gateways {
        gateway.shutdown_token().cancel();
        gateway.serve().await?;
    }
    stop.cancel();
    let _ = hub.await;
    drop(private);
    outcome.map(|_| ExitCode::SUCCESS)
}

/// The admin token a data dir holds.
fn admin_token(dir: &Path) -> Result<String> {
    let file = dir.join(crate::trust::files::ADMIN_TOKEN_FILE);
    Ok(std::fs::read_to_string(&file)
        .with_context(|| format!("cannot read {}", file.display()))?
        .trim()
        .to_string())
}

async fn demo(
    server: &str,
    site_dir: &Path,
    hub_addr: &str,
    hub_dir: &Path,
    archive: &Path,
) -> Result<()> {
    let auth = super::args::ClientAuth {
        token: Some(admin_token(site_dir)?),
        ..Default::default()
    };
    let mut site = super::client::connect(server, &auth).await?;
    wait_until("3 voters", || {
        let mut site = site.clone();
        async move {
            let status = json(&site.status(StatusRequest {}).await?.into_inner().json)?;
            let voters = status["nodes"]
                .as_array()
                .map_or(0, |n| n.iter().filter(|n| n["role"] == "voter").count());
            Ok(voters == 3)
        }
    })
    .await?;
    let imported =
        super::client::import_image(&mut site, archive, true, OutputFormat::Table).await?;
    print!(
        "{}",
        output::render(View::Imported, OutputFormat::Table, &imported)?
    );

    let hub_token = crate::cloud::hub::cli::admin_token_of(hub_dir).await?;
    let mut hub = crate::cloud::hub::cli::connect(hub_addr, &hub_token).await?;
    let token = hub
        .site_token(SiteTokenRequest {
            site: SITE.into(),
            grace_ms: 0,
        })
        .await?
        .into_inner()
        .token;
    let attach = CloudAttachRequest {
        hub: hub_addr.to_string(),
        site: SITE.into(),
        token,
        ..Default::default()
    };
    site.cloud_attach(attach).await?;
    hub.apply(HubApply {
        site: SITE.into(),
        manifest: SAMPLE.into(),
        unchecked: false,
        all_sites: false,
    })
    .await?;
    println!("sample workloads pushed from the hub to site {SITE}");
    wait_until("the sample workloads Running", || {
        let mut site = site.clone();
        async move {
            let instances = json(&site.get_instances(GetRequest {}).await?.into_inner().json)?;
            let running = instances
                .as_array()
                .map_or(0, |i| i.iter().filter(|i| i["state"] == "Running").count());
            Ok(running >= 3)
        }
    })
    .await?;
    // Give the status report a moment to reach the hub.
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!("\n== the site ==");
    let status = json(&site.status(StatusRequest {}).await?.into_inner().json)?;
    print!(
        "{}",
        output::render(View::Status, OutputFormat::Table, &status)?
    );
    let instances = json(&site.get_instances(GetRequest {}).await?.into_inner().json)?;
    print!(
        "\n{}",
        output::render(View::Instances, OutputFormat::Table, &instances)?
    );
    println!("\n== the hub ==");
    let hub_status = json(&hub.status(HubStatus {}).await?.into_inner().json)?;
    print!(
        "{}",
        output::render(View::HubStatus, OutputFormat::Table, &hub_status)?
    );
    Ok(())
}
