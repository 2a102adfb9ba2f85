//! What the side-by-side benches share: child processes killed on drop,
//! their memory as the kernel counts it, the gantry gateways and etcd
//! members they start on loopback, and a closed-loop load of N clients.
//! Each bench uses part of it.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// A field of `/proc/PID/status` in kB (`VmHWM`, `VmRSS`), in MiB.
fn status_mib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map(|kib| kib / 1024.0)
        .unwrap_or(0.0)
}

/// Peak RSS since the process started, in MiB.
pub fn peak_rss_mib(pid: u32) -> f64 {
    status_mib(pid, "VmHWM:")
}

/// RSS now, in MiB.
pub fn rss_mib(pid: u32) -> f64 {
    status_mib(pid, "VmRSS:")
}

/// RSS now split into anonymous memory (heap, stacks) and file pages (the
/// binary's code and data as far as it was touched), in MiB.
pub fn rss_split_mib(pid: u32) -> (f64, f64) {
    (status_mib(pid, "RssAnon:"), status_mib(pid, "RssFile:"))
}

pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Child processes, killed (by pid, ours) when dropped.
pub struct Members(pub Vec<Child>);

impl Members {
    pub fn peak_rss_mib(&self) -> f64 {
        self.0
            .iter()
            .map(|c| peak_rss_mib(c.id()))
            .fold(0.0, f64::max)
    }

    pub fn pids(&self) -> Vec<u32> {
        self.0.iter().map(Child::id).collect()
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

pub fn wait_file(path: &Path) -> Result<String> {
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
pub fn gateway_addr(dir: &Path) -> Result<String> {
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

pub fn spawn(mut command: Command, log: &Path) -> Result<Child> {
    let log = std::fs::File::create(log)?;
    command
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("spawn")
}

/// `n` etcd members (Debian's `etcd-server`) with their default settings
/// (fsync on) on loopback, and a client of all of them.
pub async fn start_etcd(root: &Path, n: usize) -> Result<(Members, etcd_client::Client)> {
    if Command::new("etcd").arg("--version").output().is_err() {
        bail!("etcd is missing: install Debian's etcd-server (apt-get install etcd-server), the anchor this bench compares with");
    }
    let ports: Vec<(u16, u16)> = (0..n)
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
/// Its node selector matches no gateway, so a write is only stored: no
/// gateway pulls or starts anything because of it.
pub fn spec(name: &str, i: u64) -> String {
    format!(
        "name: {name}\nimage: 127.0.0.1:5000/sensors/reader:{i}\nreplicas: 2\n\
         command: [/bin/reader, --bus, /dev/ttyUSB0, --interval, 5s]\n\
         env: {{LOG: info, SITE: plant-7, ZONE: north}}\n\
         resources: {{cpu: 250m, memory: 64Mi}}\n\
         node_selector: {{zigbee: \"true\"}}\nrestart: always\n"
    )
}

pub struct Round {
    pub writes: usize,
    pub per_second: f64,
    pub p50: Duration,
    pub p99: Duration,
}

/// `clients` clients for `seconds`, each with one write in flight, each
/// rewriting its own key: `write(client, i)`.
pub async fn round<F, Fut>(clients: usize, seconds: u64, write: F) -> Result<Round>
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

/// The highest RSS (MiB) of `pid` sampled every 50 ms while `work` runs.
pub async fn rss_peak_during<T>(
    pid: u32,
    work: impl std::future::Future<Output = Result<T>>,
) -> Result<(T, f64)> {
    let mut peak = rss_mib(pid);
    let mut ticker = tokio::time::interval(Duration::from_millis(50));
    tokio::pin!(work);
    loop {
        tokio::select! {
            done = &mut work => return Ok((done?, peak.max(rss_mib(pid)))),
            _ = ticker.tick() => peak = peak.max(rss_mib(pid)),
        }
    }
}
