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

#[path = "support/procs.rs"]
mod procs;
use procs::{gateway_addr, round, spawn, spec, start_etcd, wait_file, Members};

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use gantry_proto::v1::{ApplyRequest, StatusRequest};

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

async fn raft_term(client: &gantry::cli::client::Admin) -> Result<u64> {
    let status = client
        .clone()
        .status(StatusRequest {})
        .await?
        .into_inner()
        .json;
    let status: serde_json::Value = serde_json::from_str(&status)?;
    Ok(status["term"].as_u64().unwrap_or(0))
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
    let (etcd_members, etcd) = start_etcd(tmp.path(), 3).await?;
    let (gantry_members, gantry) = start_gantry(tmp.path()).await?;
    let term_before = raft_term(&gantry).await?;
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
    // A leader starved by the load would be deposed: each election
    // raises the term.
    println!(
        "elections: during_load={}",
        raft_term(&gantry).await?.saturating_sub(term_before)
    );
    println!(
        "peak: gantry_member_rss_mb={:.1} etcd_member_rss_mb={:.1}",
        gantry_members.peak_rss_mib(),
        etcd_members.peak_rss_mib()
    );
    Ok(())
}
