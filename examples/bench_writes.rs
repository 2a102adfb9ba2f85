//! Replicated write benchmark: a 3-gateway cluster on loopback (in one
//! process, real gRPC between gateways, fsync on), driven through the Admin
//! API by 1 and by 64 concurrent clients. Prints writes/s and latency
//! percentiles. Run: `cargo run --example bench_writes` (BENCH_SECONDS=N to
//! change the 10 s per round).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use gantry::cli::args::{InitArgs, JoinArgs, MemberArgs};
use gantry::cli::daemon::{start_init, start_join};
use gantry_proto::v1::{ApplyRequest, StatusRequest};

fn member(root: &Path, name: &str) -> MemberArgs {
    MemberArgs::loopback(root.join(name), name)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).map(String::from))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> Result<()> {
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let tmp = tempfile::tempdir()?;
    let init = InitArgs::with_defaults(member(tmp.path(), "bench-a"));
    let (a, _) = start_init(&init).await?;
    let leader = a.local_addr.to_string();
    let token = std::fs::read_to_string(tmp.path().join("bench-a/join-token"))?
        .trim()
        .to_string();
    let mut gateways = vec![a];
    for name in ["bench-b", "bench-c"] {
        let join = JoinArgs {
            member: member(tmp.path(), name),
            peer: leader.clone(),
            token: token.clone(),
            join_timeout: "30s".parse()?,
        };
        gateways.push(start_join(&join).await?);
    }
    let client = gantry::cli::client::connect_as_gateway(&leader, &tmp.path().join("bench-a"))
        .await
        .context("connect")?;
    let status = client
        .clone()
        .status(StatusRequest {})
        .await?
        .into_inner()
        .json;
    let status: serde_json::Value = serde_json::from_str(&status)?;
    println!(
        "cluster {} with {} voters, leader {}",
        status["cluster"], status["voters"], status["leader"]
    );
    println!(
        "idle RSS of the process holding 3 gateways: {} KiB",
        rss_kib("VmRSS:")
    );
    println!();
    println!(
        "{:>8}  {:>10}  {:>9}  {:>9}  {:>9}  {:>8}",
        "clients", "writes", "writes/s", "p50", "p99", "max"
    );
    for clients in [1usize, 64] {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let mut tasks = tokio::task::JoinSet::new();
        for c in 0..clients {
            let mut client = client.clone();
            tasks.spawn(async move {
                let mut latencies = Vec::new();
                let mut i = 0u64;
                while Instant::now() < deadline {
                    // Each client rewrites its own workload: the state stays
                    // small and every write is a real change (a new generation).
                    let manifest =
                        format!("name: bench-{clients}-{c}\nimage: 127.0.0.1:5000/bench:{i}\n");
                    let started = Instant::now();
                    client.apply(ApplyRequest { manifest }).await?;
                    latencies.push(started.elapsed());
                    i += 1;
                }
                Ok::<_, tonic::Status>(latencies)
            });
        }
        let started = Instant::now();
        let mut all = Vec::new();
        while let Some(done) = tasks.join_next().await {
            all.extend(done??);
        }
        let elapsed = started.elapsed().as_secs_f64();
        all.sort();
        println!(
            "{:>8}  {:>10}  {:>9.0}  {:>7.2}ms  {:>7.2}ms  {:>6.1}ms",
            clients,
            all.len(),
            all.len() as f64 / elapsed,
            percentile(&all, 0.50).as_secs_f64() * 1e3,
            percentile(&all, 0.99).as_secs_f64() * 1e3,
            all.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        );
    }
    println!();
    println!(
        "peak RSS of the process holding 3 gateways: {} KiB",
        rss_kib("VmHWM:")
    );
    for gateway in gateways {
        gateway.shutdown_token().cancel();
        gateway.serve().await?;
    }
    Ok(())
}
