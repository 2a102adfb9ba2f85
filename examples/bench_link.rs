//! Link traffic benchmark: a real hub and a real one-gateway site in one
//! process on loopback. Counts the bytes on the edge link in both
//! directions twice: as gRPC message bytes (protobuf encoded length + the
//! 5-byte gRPC frame prefix, as the hub meters them), and on the wire, as
//! TCP payload through a counting proxy between site and hub (TLS records,
//! the TLS handshake and HTTP/2 framing included; TCP/IP headers are not),
//! for:
//!
//! 1. an idle site over a simulated hour: time is accelerated 300 times
//!    (digest interval 200 ms instead of 60 s, ceiling 3.2 s instead of
//!    16 min, so an hour takes 12 s), then extrapolated to a month;
//! 2. one changed workload at a site with 100 workloads.
//!
//! Run: `cargo run --example bench_link` (about 40 s).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use gantry::cli::args::{InitArgs, MemberArgs};
use gantry::cli::daemon::start_init;
use gantry_proto::hub::v1::{ApplyRequest, SiteTokenRequest, StatusRequest};
use gantry_proto::v1::CloudAttachRequest;
use serde_json::Value;

const SITE: &str = "bench-site";
const DIGEST_MS: u64 = 200;
/// HTTP/2 DATA frame header per message (not counted in the figures).
const H2_FRAME: u64 = 9;

fn member(root: &Path, name: &str) -> MemberArgs {
    let mut member = MemberArgs::loopback(root.join(name), name);
    member.capacity = Some(gantry::config::CapacityOverride {
        cpu_millis: Some(1_000_000),
        memory_bytes: Some(1 << 40),
    });
    member
}

async fn site_status(hub: &mut gantry::cloud::hub::cli::HubAdmin) -> Result<Value> {
    let doc = hub.status(StatusRequest {}).await?.into_inner();
    let status: Value = serde_json::from_str(&doc.json)?;
    status["sites"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["site"] == SITE).cloned())
        .ok_or_else(|| anyhow!("the hub does not know the site"))
}

/// (in, out) without the periodic digests, which keep flowing meanwhile.
fn bytes(site: &Value) -> (u64, u64) {
    let digests = site["link_bytes"]["digest_in"].as_u64().unwrap_or(0);
    (
        site["link_bytes"]["in"].as_u64().unwrap_or(0) - digests,
        site["link_bytes"]["out"].as_u64().unwrap_or(0),
    )
}

fn all_bytes(site: &Value) -> (u64, u64) {
    (
        site["link_bytes"]["in"].as_u64().unwrap_or(0),
        site["link_bytes"]["out"].as_u64().unwrap_or(0),
    )
}

async fn wait_until(
    hub: &mut gantry::cloud::hub::cli::HubAdmin,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Result<Value> {
    let start = Instant::now();
    loop {
        let site = site_status(hub).await?;
        if check(&site) {
            return Ok(site);
        }
        if start.elapsed() > Duration::from_secs(60) {
            return Err(anyhow!("timed out waiting for {what}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the counters (digests aside) stop moving for a few report batches.
async fn settle(hub: &mut gantry::cloud::hub::cli::HubAdmin) -> Result<(u64, u64)> {
    let mut last = bytes(&site_status(hub).await?);
    loop {
        tokio::time::sleep(Duration::from_millis(600)).await;
        let now = bytes(&site_status(hub).await?);
        if now == last {
            return Ok(now);
        }
        last = now;
    }
}

fn manifest(count: usize, changed: Option<usize>) -> String {
    (0..count)
        .map(|i| {
            let tag = if Some(i) == changed { 2 } else { 1 };
            format!(
                "name: sensor-{i:03}\nimage: 127.0.0.1:5000/sensors/sensor:{tag}\nreplicas: 1\nresources: {{cpu: 50m, memory: 32Mi}}\nenv: {{LOG: info, SENSOR: \"{i}\"}}\n"
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

/// A TCP proxy on loopback that counts the bytes it carries each way.
struct CountingProxy {
    addr: String,
    up: Arc<AtomicU64>,
    down: Arc<AtomicU64>,
}

impl CountingProxy {
    async fn start(to: String) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let (up, down) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (u, d) = (up.clone(), down.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(&to).await else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(copy_counted(cr, sw, u.clone()));
                tokio::spawn(copy_counted(sr, cw, d.clone()));
            }
        });
        Ok(Self { addr, up, down })
    }

    fn bytes(&self) -> (u64, u64) {
        (
            self.up.load(Ordering::Relaxed),
            self.down.load(Ordering::Relaxed),
        )
    }
}

async fn copy_counted(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    counter: Arc<AtomicU64>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                counter.fetch_add(n as u64, Ordering::Relaxed);
                if to.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown().await;
}

fn human(bytes: f64) -> String {
    if bytes >= 1024.0 * 1024.0 {
        format!("{:.2} MiB", bytes / 1024.0 / 1024.0)
    } else if bytes >= 1024.0 {
        format!("{:.1} KiB", bytes / 1024.0)
    } else {
        format!("{bytes:.0} B")
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    // Read by the link loop when the gateway starts.
    std::env::set_var("GANTRY_CLOUD_DIGEST_INTERVAL", format!("{DIGEST_MS}ms"));
    std::env::set_var("GANTRY_CLOUD_DIGEST_MAX", format!("{}ms", DIGEST_MS * 16));
    std::env::set_var("GANTRY_CLOUD_REPORT_BATCH", "100ms");
    let tmp = tempfile::tempdir()?;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let hub_addr = listener.local_addr()?.to_string();
    let hub_dir = tmp.path().join("hub");
    let stop = tokio_util::sync::CancellationToken::new();
    let hub_stop = stop.clone();
    let hub_task = tokio::spawn(async move {
        let tls = gantry::cloud::hub::pki::HubTlsOptions::default();
        gantry::cloud::hub::cli::serve_on(&hub_dir, listener, &tls, hub_stop.cancelled_owned())
            .await
    });
    let hub_token = gantry::cloud::hub::cli::admin_token_of(&tmp.path().join("hub")).await?;
    let mut hub = gantry::cloud::hub::cli::connect(&hub_addr, &hub_token)
        .await
        .context("connect to the hub")?;
    let token = hub
        .site_token(SiteTokenRequest {
            site: SITE.into(),
            grace_ms: 0,
        })
        .await?
        .into_inner()
        .token;

    let init = InitArgs::with_defaults(member(tmp.path(), "bench-gw"));
    let (gateway, _) = start_init(&init).await?;
    let mut admin = gantry::cli::client::connect_as_gateway(
        &gateway.local_addr.to_string(),
        &tmp.path().join("bench-gw"),
    )
    .await?;
    // The site reaches the hub through the counting proxy (the admin
    // client above goes direct, so its traffic is not counted).
    let proxy = CountingProxy::start(hub_addr.clone()).await?;
    admin
        .cloud_attach(CloudAttachRequest {
            hub: proxy.addr.clone(),
            site: SITE.into(),
            token,
        })
        .await?;
    wait_until(&mut hub, "the link", |s| s["connected"] == true).await?;
    let connect = settle(&mut hub).await?;
    let wire_connect = proxy.bytes();

    // 1. Idle site: two simulated hours (the first one after a change,
    // while the digest interval grows, then a steady one).
    let hour = Duration::from_millis(3600 * 1000 * DIGEST_MS / 60_000);
    let mut hours = Vec::new();
    let mut wire_hours = Vec::new();
    for _ in 0..2 {
        let wire_start = proxy.bytes();
        let start = all_bytes(&site_status(&mut hub).await?);
        let digests_before = site_status(&mut hub).await?["link_bytes"]["digest_in"]
            .as_u64()
            .unwrap_or(0);
        tokio::time::sleep(hour).await;
        let site = site_status(&mut hub).await?;
        let end = all_bytes(&site);
        let digests = (site["link_bytes"]["digest_in"].as_u64().unwrap_or(0) - digests_before) / 16;
        hours.push((end.0 - start.0 + end.1 - start.1, digests));
        let wire_end = proxy.bytes();
        wire_hours.push(wire_end.0 - wire_start.0 + wire_end.1 - wire_start.1);
    }
    let wire_month = wire_hours[1] as f64 * 24.0 * 30.0;
    let wire_after_idle = proxy.bytes();
    let (steady, steady_messages) = hours[1];
    let per_month = steady as f64 * 24.0 * 30.0;
    let framed_month = (steady + steady_messages * H2_FRAME) as f64 * 24.0 * 30.0;

    // 2. One changed workload among 100.
    let full = manifest(100, None);
    hub.apply(ApplyRequest {
        site: SITE.into(),
        manifest: full,
        unchecked: false,
    })
    .await?;
    wait_until(&mut hub, "100 workloads acked and placed", |s| {
        s["acked_revision"] == 1 && s["instances"].as_array().is_some_and(|i| i.len() == 100)
    })
    .await?;
    let before_100 = settle(&mut hub).await?;
    let first_delivery = (before_100.0 - connect.0, before_100.1 - connect.1);
    let wire_before_100 = proxy.bytes();
    let wire_first = (
        wire_before_100.0 - wire_after_idle.0,
        wire_before_100.1 - wire_after_idle.1,
    );
    hub.apply(ApplyRequest {
        site: SITE.into(),
        manifest: manifest(100, Some(42)),
        unchecked: false,
    })
    .await?;
    wait_until(&mut hub, "the change acked and reported", |s| {
        s["acked_revision"] == 2
            && s["instances"]
                .as_array()
                .is_some_and(|i| i.iter().any(|i| i["generation"] == 2))
    })
    .await?;
    let after = settle(&mut hub).await?;
    let change = (after.0 - before_100.0, after.1 - before_100.1);
    let wire_after = proxy.bytes();
    let wire_change = (
        wire_after.0 - wire_before_100.0,
        wire_after.1 - wire_before_100.1,
    );

    println!(
        "gantry edge link traffic (gRPC message bytes: protobuf + 5-byte prefix, both directions)"
    );
    println!(
        "  connect (Hello, Welcome, full status of 1 gateway): site->hub {} B, hub->site {} B",
        connect.0, connect.1
    );
    println!(
        "  idle, first hour after a change: {} B in {} digests; a steady idle hour: {} B in {} digests",
        hours[0].0, hours[0].1, steady, steady_messages
    );
    println!(
        "  idle, per 30-day month: {} ({} with a 9 B HTTP/2 frame header per message; TCP/IP/TLS not counted)",
        human(per_month),
        human(framed_month)
    );
    println!(
        "  first delivery of 100 workloads (snapshot + ack + status of 100 instances): up {}, down {}",
        human(first_delivery.0 as f64),
        human(first_delivery.1 as f64)
    );
    println!(
        "  one changed workload among 100 (delta + ack + status changes): up {} B, down {} B, total {} B",
        change.0,
        change.1,
        change.0 + change.1
    );
    println!("on the wire (TCP payload through a counting proxy: TLS records and handshake, HTTP/2 framing; TCP/IP headers not counted)");
    println!(
        "  connect (TLS handshake, HTTP/2 setup, Hello, Welcome, full status): site->hub {} B, hub->site {} B",
        wire_connect.0, wire_connect.1
    );
    println!(
        "  a steady idle hour: {} B; per 30-day month: {}",
        wire_hours[1],
        human(wire_month)
    );
    println!(
        "  first delivery of 100 workloads: up {}, down {}",
        human(wire_first.0 as f64),
        human(wire_first.1 as f64)
    );
    println!(
        "  one changed workload among 100: up {} B, down {} B, total {} B",
        wire_change.0,
        wire_change.1,
        wire_change.0 + wire_change.1
    );

    gateway.shutdown_token().cancel();
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), hub_task).await;
    Ok(())
}
