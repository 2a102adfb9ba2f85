//! Replicated writes, gantry beside etcd (the store under K3s and
//! Kubernetes), in one run: a 3-gateway gantry cluster and a 3-member
//! etcd cluster, each member its own process on loopback, each with its
//! default durability (every write fsynced on a quorum before it is
//! acknowledged). Both are driven the same way: N clients, each rewriting
//! its own key in a loop with a value the size of a workload spec, one
//! request in flight per client: for gantry an `apply` through the Admin
//! API (TLS, an admin token), for etcd a `Put` through its gRPC API (the
//! `etcd-client` crate, on tonic like gantry's client). Rounds alternate
//! gantry and etcd at 1, 16 and 64 clients. Prints one line per level
//! and the peak RSS of the busiest member of each.
//!
//! Run: `cargo build --release --bin gantry && cargo run --release
//! --example bench_writes` (BENCH_SECONDS=N per round, default 10;
//! BENCH_CLIENTS=1,16,64; BENCH_GANTRY_BIN to test another binary). Needs
//! Debian's `etcd-server` (`etcd` on the PATH); it installs nothing.

#[path = "support/gantry_bin.rs"]
mod gantry_bin;
use gantry_bin::gantry_binary;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use gantry_proto::v1::{ApplyRequest, StatusRequest};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// `VmHWM` (peak RSS) of a process, in MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map(|kib| kib / 1024.0)
        .unwrap_or(0.0)
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Child processes, killed (by pid, ours) when dropped.
struct Members(Vec<Child>);

impl Members {
    fn peak_rss_mib(&self) -> f64 {
        self.0
            .iter()
            .map(|c| peak_rss_mib(c.id()))
            .fold(0.0, f64::max)
    }
}

impl Drop for Members {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn wait_file(path: &Path) -> Result<String> {
    let start = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if !text.trim().is_empty() {
                return Ok(text);
            }
        }
        if start.elapsed() > Duration::from_secs(60) {
            bail!("{} did not appear", path.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The address a gateway serves on, from the config it writes.
fn gateway_addr(dir: &Path) -> Result<String> {
    let start = Instant::now();
    loop {
        let text = wait_file(&dir.join("gantry.json"))?;
        let config: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        if let Some(addr) = config["advertise"].as_str() {
            return Ok(addr.to_string());
        }
        if start.elapsed() > Duration::from_secs(60) {
            bail!("no address in {}/gantry.json", dir.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn spawn(mut command: Command, log: &Path) -> Result<Child> {
    let log = std::fs::File::create(log)?;
    command
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("spawn")
}

/// Three gateways, `gantry init` and two `gantry join`s, as users run them.
async fn start_gantry(root: &Path) -> Result<(Members, gantry::cli::client::Admin)> {
    let binary = gantry_binary()?;
    let run = |args: &[&str], name: &str| -> Result<Child> {
        let mut command = Command::new(&binary);
        command.args(args).env("GANTRY_LOG", "warn");
        spawn(command, &root.join(format!("{name}.log")))
    };
    let dir = |name: &str| root.join(name).display().to_string();
    let mut members = Members(Vec::new());
    let a = dir("gantry-a");
    members.0.push(run(
        &[
            "init",
            "--data-dir",
            &a,
            "--name",
            "gantry-a",
            "--listen",
            "127.0.0.1:0",
            "--allowed-registry",
            "127.0.0.1",
        ],
        "gantry-a",
    )?);
    let leader = gateway_addr(Path::new(&a))?;
    let token = wait_file(&Path::new(&a).join("join-token"))?
        .trim()
        .to_string();
    for name in ["gantry-b", "gantry-c"] {
        let d = dir(name);
        members.0.push(run(
            &[
                "join",
                "--data-dir",
                &d,
                "--name",
                name,
                "--listen",
                "127.0.0.1:0",
                "--peer",
                &leader,
                "--token",
                &token,
                "--allowed-registry",
                "127.0.0.1",
            ],
            name,
        )?);
        gateway_addr(Path::new(&d))?;
    }
    let mut client = gantry::cli::client::connect_as_gateway(&leader, Path::new(&a)).await?;
    let start = Instant::now();
    loop {
        let status = client.status(StatusRequest {}).await?.into_inner().json;
        let status: serde_json::Value = serde_json::from_str(&status)?;
        if status["voters"].as_array().map_or(0, Vec::len) == 3
            || status["voters"].as_u64() == Some(3)
        {
            break;
        }
        if start.elapsed() > Duration::from_secs(60) {
            bail!(
                "the gantry cluster did not reach 3 voters: {}",
                status["voters"]
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok((members, client))
}

/// A 3-member etcd with its default settings (fsync on) on loopback.
async fn start_etcd(root: &Path) -> Result<(Members, etcd_client::Client)> {
    if Command::new("etcd").arg("--version").output().is_err() {
        bail!("etcd is missing: install Debian's etcd-server (apt-get install etcd-server), the anchor this bench compares with");
    }
    let ports: Vec<(u16, u16)> = (0..3)
        .map(|_| Ok((free_port()?, free_port()?)))
        .collect::<Result<_>>()?;
    let cluster = ports
        .iter()
        .enumerate()
        .map(|(i, (_, peer))| format!("etcd-{i}=http://127.0.0.1:{peer}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut members = Members(Vec::new());
    for (i, (client, peer)) in ports.iter().enumerate() {
        let mut command = Command::new("etcd");
        command.args([
            "--name",
            &format!("etcd-{i}"),
            "--data-dir",
            &root.join(format!("etcd-{i}")).display().to_string(),
            "--listen-client-urls",
            &format!("http://127.0.0.1:{client}"),
            "--advertise-client-urls",
            &format!("http://127.0.0.1:{client}"),
            "--listen-peer-urls",
            &format!("http://127.0.0.1:{peer}"),
            "--initial-advertise-peer-urls",
            &format!("http://127.0.0.1:{peer}"),
            "--initial-cluster",
            &cluster,
            "--initial-cluster-state",
            "new",
            "--initial-cluster-token",
            "gantry-bench",
        ]);
        members
            .0
            .push(spawn(command, &root.join(format!("etcd-{i}.log")))?);
    }
    let endpoints: Vec<String> = ports
        .iter()
        .map(|(client, _)| format!("http://127.0.0.1:{client}"))
        .collect();
    let start = Instant::now();
    loop {
        if let Ok(mut client) = etcd_client::Client::connect(&endpoints, None).await {
            if client.put("bench-ready", "1", None).await.is_ok() {
                return Ok((members, client));
            }
        }
        if start.elapsed() > Duration::from_secs(60) {
            bail!("etcd did not start: see {}/etcd-0.log", root.display());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A workload spec of the usual size: what each write carries, to both.
fn spec(name: &str, i: u64) -> String {
    format!(
        "name: {name}\nimage: 127.0.0.1:5000/sensors/reader:{i}\nreplicas: 2\n\
         command: [/bin/reader, --bus, /dev/ttyUSB0, --interval, 5s]\n\
         env: {{LOG: info, SITE: plant-7, ZONE: north}}\n\
         resources: {{cpu: 250m, memory: 64Mi}}\n\
         node_selector: {{zigbee: \"true\"}}\nrestart: always\n"
    )
}

struct Round {
    writes: usize,
    per_second: f64,
    p50: Duration,
    p99: Duration,
}

async fn round<F, Fut>(clients: usize, seconds: u64, write: F) -> Result<Round>
where
    F: Fn(usize, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..clients {
        let write = write.clone();
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            let mut i = 0u64;
            while Instant::now() < deadline {
                let started = Instant::now();
                write(c, i).await?;
                latencies.push(started.elapsed());
                i += 1;
            }
            Ok::<_, anyhow::Error>(latencies)
        });
    }
    let started = Instant::now();
    let mut all = Vec::new();
    while let Some(done) = tasks.join_next().await {
        all.extend(done??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort();
    Ok(Round {
        writes: all.len(),
        per_second: all.len() as f64 / elapsed,
        p50: percentile(&all, 0.50),
        p99: percentile(&all, 0.99),
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let levels: Vec<usize> = std::env::var("BENCH_CLIENTS")
        .unwrap_or_else(|_| "1,16,64".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let tmp = tempfile::tempdir()?;
    let (etcd_members, etcd) = start_etcd(tmp.path()).await?;
    let (gantry_members, gantry) = start_gantry(tmp.path()).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!(
        "idle: gantry_member_rss_mb={:.1} etcd_member_rss_mb={:.1}",
        gantry_members.peak_rss_mib(),
        etcd_members.peak_rss_mib()
    );
    for clients in levels {
        let client = gantry.clone();
        let g = round(clients, seconds, move |c, i| {
            let mut client = client.clone();
            async move {
                let manifest = spec(&format!("bench-{clients}-{c}"), i);
                client.apply(ApplyRequest { manifest }).await?;
                Ok(())
            }
        })
        .await?;
        let kv = etcd.kv_client();
        let e = round(clients, seconds, move |c, i| {
            let mut kv = kv.clone();
            async move {
                let name = format!("bench-{clients}-{c}");
                kv.put(format!("/gantry-bench/{name}"), spec(&name, i), None)
                    .await?;
                Ok(())
            }
        })
        .await?;
        println!(
            "writes: clients={clients} gantry={:.0}/s etcd={:.0}/s ratio={:.2} gantry_p50_ms={:.2} etcd_p50_ms={:.2} gantry_p99_ms={:.2} etcd_p99_ms={:.2} (writes: gantry={} etcd={})",
            g.per_second,
            e.per_second,
            g.per_second / e.per_second.max(f64::EPSILON),
            g.p50.as_secs_f64() * 1e3,
            e.p50.as_secs_f64() * 1e3,
            g.p99.as_secs_f64() * 1e3,
            e.p99.as_secs_f64() * 1e3,
            g.writes,
            e.writes,
        );
    }
    println!(
        "peak: gantry_member_rss_mb={:.1} etcd_member_rss_mb={:.1}",
        gantry_members.peak_rss_mib(),
        etcd_members.peak_rss_mib()
    );
    Ok(())
}
