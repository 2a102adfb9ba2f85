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
//!    16 min, keepalive ping 200 ms instead of 60 s, so an hour takes
//!    12 s), then extrapolated to a month; once with keepalive pings off,
//!    once with the default interval, so the pings' own cost shows;
//! 2. one changed workload at a site with 100 workloads;
//! 3. the same idle site through a private Mosquitto broker (TLS and a
//!    password, as `tests/mqtt.rs` runs it; needs Debian's `mosquitto`,
//!    `mosquitto-clients` and `openssl`), keepalive off and then every
//!    second (MQTT counts keepalive in whole seconds, so it cannot be
//!    accelerated like the rest): the cost of one PINGREQ and its answer.
//!
//! On the wire, TCP/IP headers are added from the kernel's segment counts
//! of the proxied connection (`ss -ti`: segs_in + segs_out, 52 bytes each:
//! IPv4 20, TCP 20, timestamps 12; link-layer framing not counted).
//!
//! Run: `cargo run --example bench_link` (about 40 s).

use std::path::Path;

#[path = "../tests/support/broker.rs"]
#[allow(dead_code)]
mod broker;
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
/// The default keepalive (60 s), accelerated like the digests.
const KEEPALIVE_MS: u64 = 200;
/// IPv4 + TCP + the timestamps option, per segment.
const TCP_IP_HEADERS: u64 = 52;
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

/// Segments in and out on the proxy's accepted sockets (the site's side),
/// as the kernel counts them.
fn segments(proxy_addr: &str) -> Result<u64> {
    let port = proxy_addr
        .rsplit(':')
        .next()
        .ok_or_else(|| anyhow!("no port in {proxy_addr}"))?;
    let out = std::process::Command::new("ss")
        .args([
            "-tinH",
            "state",
            "established",
            &format!("( sport = :{port} )"),
        ])
        .output()
        .context("cannot run ss (iproute2) to count TCP segments")?;
    if !out.status.success() {
        return Err(anyhow!(
            "ss failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut total = 0;
    for word in text.split_whitespace() {
        for key in ["segs_in:", "segs_out:"] {
            if let Some(n) = word.strip_prefix(key) {
                total += n.parse::<u64>().context("ss segment count")?;
            }
        }
    }
    Ok(total)
}

/// A steady idle hour of the link: message bytes, messages, and bytes on
/// the wire (payload through the proxy plus TCP/IP headers).
struct IdleHour {
    message_bytes: u64,
    messages: u64,
    wire: u64,
    segments: u64,
}

/// Two simulated hours (the first after a (re)connect, while the digest
/// interval grows, then a steady one); returns the steady one.
async fn idle_hours(
    hub: &mut gantry::cloud::hub::cli::HubAdmin,
    proxy: &CountingProxy,
) -> Result<(IdleHour, IdleHour)> {
    let hour = Duration::from_millis(3600 * 1000 * DIGEST_MS / 60_000);
    let mut hours = Vec::new();
    for _ in 0..2 {
        let wire_start = proxy.bytes();
        let segments_start = segments(&proxy.addr)?;
        let start = all_bytes(&site_status(hub).await?);
        let digests_before = site_status(hub).await?["link_bytes"]["digest_in"]
            .as_u64()
            .unwrap_or(0);
        tokio::time::sleep(hour).await;
        let site = site_status(hub).await?;
        let end = all_bytes(&site);
        let messages =
            (site["link_bytes"]["digest_in"].as_u64().unwrap_or(0) - digests_before) / 16;
        let wire_end = proxy.bytes();
        let segments = segments(&proxy.addr)?.saturating_sub(segments_start);
        hours.push(IdleHour {
            message_bytes: end.0 - start.0 + end.1 - start.1,
            messages,
            wire: wire_end.0 - wire_start.0 + wire_end.1 - wire_start.1 + segments * TCP_IP_HEADERS,
            segments,
        });
    }
    let steady = hours.pop().ok_or_else(|| anyhow!("no hour"))?;
    let first = hours.pop().ok_or_else(|| anyhow!("no hour"))?;
    Ok((first, steady))
}

/// Bytes on the wire through `proxy` (payload both ways plus TCP/IP
/// headers) over `window`, and the segments.
async fn wire_window(proxy: &CountingProxy, window: Duration) -> Result<(u64, u64)> {
    let bytes_start = proxy.bytes();
    let segments_start = segments(&proxy.addr)?;
    tokio::time::sleep(window).await;
    let bytes_end = proxy.bytes();
    let segments = segments(&proxy.addr)?.saturating_sub(segments_start);
    let payload = bytes_end.0 - bytes_start.0 + bytes_end.1 - bytes_start.1;
    Ok((payload + segments * TCP_IP_HEADERS, segments))
}

/// Waits until the site says it is connected over its `n`th connection
/// through `proxy`.
async fn wait_site_connected(
    admin: &mut gantry::cli::client::Admin,
    proxy: &CountingProxy,
    n: u64,
) -> Result<()> {
    let start = Instant::now();
    loop {
        let doc = admin
            .status(gantry_proto::v1::StatusRequest {})
            .await?
            .into_inner();
        let status: Value = serde_json::from_str(&doc.json)?;
        if status["cloud"]["connected"] == true && proxy.connections.load(Ordering::Relaxed) >= n {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(60) {
            return Err(anyhow!(
                "the site did not connect through the broker: {}",
                status["cloud"]
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn count_lines(path: &Path, needle: &str) -> usize {
    std::fs::read_to_string(path)
        .map(|text| text.lines().filter(|l| l.contains(needle)).count())
        .unwrap_or(0)
}

/// A TCP proxy on loopback that counts the bytes it carries each way.
struct CountingProxy {
    addr: String,
    connections: Arc<AtomicU64>,
    up: Arc<AtomicU64>,
    down: Arc<AtomicU64>,
}

impl CountingProxy {
    async fn start(to: String) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let (up, down) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (u, d) = (up.clone(), down.clone());
        let connections = Arc::new(AtomicU64::new(0));
        let accepted = connections.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::Relaxed);
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
        Ok(Self {
            addr,
            connections,
            up,
            down,
        })
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
        let options = gantry::cloud::hub::cli::ServeOptions::default();
        gantry::cloud::hub::cli::serve_on(&hub_dir, listener, &options, hub_stop.cancelled_owned())
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
    let attach = |keepalive: &str| CloudAttachRequest {
        hub: proxy.addr.clone(),
        site: SITE.into(),
        token: token.clone(),
        keepalive: keepalive.into(),
        ..Default::default()
    };
    admin.cloud_attach(attach("off")).await?;
    wait_until(&mut hub, "the link", |s| s["connected"] == true).await?;
    let connect = settle(&mut hub).await?;
    let wire_connect = proxy.bytes();

    // 1. Idle site, keepalive pings off, then at the default interval.
    let (first_hour, steady_hour) = idle_hours(&mut hub, &proxy).await?;
    let month = 24.0 * 30.0;
    let wire_month = steady_hour.wire as f64 * month;
    let per_month = steady_hour.message_bytes as f64 * month;
    let framed_month = (steady_hour.message_bytes + steady_hour.messages * H2_FRAME) as f64 * month;
    admin
        .cloud_attach(attach(&format!("{KEEPALIVE_MS}ms")))
        .await?;
    let start = Instant::now();
    while proxy.connections.load(Ordering::Relaxed) < 2 {
        if start.elapsed() > Duration::from_secs(60) {
            return Err(anyhow!("timed out waiting for the link with keepalive"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_until(&mut hub, "the link with keepalive", |s| {
        s["connected"] == true
    })
    .await?;
    let baseline = settle(&mut hub).await?;
    let (_, pinging_hour) = idle_hours(&mut hub, &proxy).await?;
    // The default pings once a minute: 60 in an hour.
    let per_ping = pinging_hour.wire.saturating_sub(steady_hour.wire) as f64 / 60.0;
    let wire_after_idle = proxy.bytes();

    // 2. One changed workload among 100.
    let full = manifest(100, None);
    hub.apply(ApplyRequest {
        site: SITE.into(),
        manifest: full,
        unchecked: false,
        all_sites: false,
    })
    .await?;
    wait_until(&mut hub, "100 workloads acked and placed", |s| {
        s["acked_revision"] == 1 && s["instances"].as_array().is_some_and(|i| i.len() == 100)
    })
    .await?;
    let before_100 = settle(&mut hub).await?;
    let first_delivery = (before_100.0 - baseline.0, before_100.1 - baseline.1);
    let wire_before_100 = proxy.bytes();
    let wire_first = (
        wire_before_100.0 - wire_after_idle.0,
        wire_before_100.1 - wire_after_idle.1,
    );
    hub.apply(ApplyRequest {
        site: SITE.into(),
        manifest: manifest(100, Some(42)),
        unchecked: false,
        all_sites: false,
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
        first_hour.message_bytes, first_hour.messages, steady_hour.message_bytes, steady_hour.messages
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
    println!("on the wire (TCP payload through a counting proxy: TLS records and handshake, HTTP/2 framing; plus 52 B of TCP/IP headers per segment)");
    println!(
        "  connect (TLS handshake, HTTP/2 setup, Hello, Welcome, full status): site->hub {} B, hub->site {} B (payload)",
        wire_connect.0, wire_connect.1
    );
    println!(
        "  a steady idle hour, keepalive off: {} B in {} segments; per 30-day month: {}",
        steady_hour.wire,
        steady_hour.segments,
        human(wire_month)
    );
    println!(
        "  a steady idle hour, keepalive every 60s (the default): {} B in {} segments; one ping and its answer: {:.0} B",
        pinging_hour.wire, pinging_hour.segments, per_ping
    );
    for (label, every_s) in [
        ("60s (default)", 60.0),
        ("5m", 300.0),
        ("20m", 1200.0),
        ("30m", 1800.0),
    ] {
        let pings = 30.0 * 24.0 * 3600.0 / every_s;
        println!(
            "  idle per 30-day month with --keepalive {label}: {} (dead path noticed within {}s)",
            human(wire_month + pings * per_ping),
            every_s as u64 + 20
        );
    }
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

    // 3. The same idle site through an MQTT broker.
    let mosquitto = broker::Broker::start(&tmp.path().join("broker"));
    let mproxy = CountingProxy::start(format!("127.0.0.1:{}", mosquitto.port)).await?;
    let ca = std::fs::read_to_string(&mosquitto.ca)?;
    let attach_mqtt = |keepalive: &str| CloudAttachRequest {
        mqtt: format!("mqtts://{}", mproxy.addr),
        site: SITE.into(),
        keepalive: keepalive.into(),
        mqtt_username: broker::USER.into(),
        mqtt_password: broker::PASSWORD.into(),
        mqtt_ca_pem: ca.clone(),
        ..Default::default()
    };
    admin.cloud_attach(attach_mqtt("off")).await?;
    wait_site_connected(&mut admin, &mproxy, 1).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let hour = Duration::from_millis(3600 * 1000 * DIGEST_MS / 60_000);
    // The first hour lets the digest interval grow; the second is steady.
    wire_window(&mproxy, hour).await?;
    let (mqtt_idle, mqtt_segments) = wire_window(&mproxy, hour).await?;
    admin.cloud_attach(attach_mqtt("1s")).await?;
    wait_site_connected(&mut admin, &mproxy, 2).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    wire_window(&mproxy, hour).await?;
    let log = mosquitto.dir.join("mosquitto.log");
    let pings_before = count_lines(&log, "Received PINGREQ");
    let (mqtt_pinging, _) = wire_window(&mproxy, hour).await?;
    let pings = count_lines(&log, "Received PINGREQ").saturating_sub(pings_before);
    let per_mqtt_ping = mqtt_pinging.saturating_sub(mqtt_idle) as f64 / pings.max(1) as f64;
    let mqtt_month = mqtt_idle as f64 * month;
    println!("through MQTT (Mosquitto, TLS, a password; same counting as above)");
    println!(
        "  a steady idle hour, keepalive off: {} B in {} segments; per 30-day month: {}",
        mqtt_idle,
        mqtt_segments,
        human(mqtt_month)
    );
    println!(
        "  one PINGREQ and its PINGRESP: {:.0} B ({} pings in {:.0} s)",
        per_mqtt_ping,
        pings,
        hour.as_secs_f64()
    );
    // The MQTT link pings at two thirds of --keepalive (see link::mqtt).
    for (label, every_s) in [("60s (default)", 60.0), ("5m", 300.0), ("20m", 1200.0)] {
        let pings = 30.0 * 24.0 * 3600.0 / (every_s * 2.0 / 3.0);
        println!(
            "  idle per 30-day month with --keepalive {label}: {} (dead path noticed within {}s)",
            human(mqtt_month + pings * per_mqtt_ping),
            every_s as u64 * 4 / 3
        );
    }

    gateway.shutdown_token().cancel();
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), hub_task).await;
    Ok(())
}
