//! Apply -> Running latency: a one-gateway cluster on a private containerd
//! starts 1, 20 and 100 busybox containers; the same containers are started
//! with `ctr run -d` on the same containerd for comparison, in the same run.
//! Prints one line per size. Run: `cargo run --release --example
//! bench_start` (needs containerd, runc, busybox-static; BENCH_ROUNDS=N,
//! BENCH_SIZES=1,20,100).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use gantry::cli::args::{InitArgs, MemberArgs};
use gantry::cli::daemon::start_init;
use gantry::state::quantity::HumanDuration;
use gantry_node::testing::{busybox_oci_archive, PrivateContainerd};
use gantry_proto::v1::{ApplyRequest, DeleteWorkloadRequest, GetRequest, ImageChunk};

const IMAGE: &str = "127.0.0.1:5000/gantry/busybox:bench";

fn ctr(socket: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("ctr")
        .arg("--address")
        .arg(socket)
        .args(["-n", "bench-ctr"])
        .args(args)
        .output()?;
    if !out.status.success() {
        bail!("ctr {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

async fn running(client: &mut gantry::cli::client::Admin, workload: &str) -> Result<usize> {
    let json = client.get_instances(GetRequest {}).await?.into_inner().json;
    let all: serde_json::Value = serde_json::from_str(&json)?;
    let items = all.as_array().map(Vec::as_slice).unwrap_or(&[]);
    Ok(items
        .iter()
        .filter(|i| i["workload"] == workload && i["state"] == "Running")
        .count())
}

async fn gantry_start(
    client: &mut gantry::cli::client::Admin,
    n: u32,
    round: u32,
) -> Result<Duration> {
    let name = format!("bench-{n}-{round}");
    let manifest =
        format!("name: {name}\nimage: {IMAGE}\nreplicas: {n}\ncommand: [sleep, '100000']\n");
    let started = Instant::now();
    client.apply(ApplyRequest { manifest }).await?;
    while running(client, &name).await? < n as usize {
        if started.elapsed() > Duration::from_secs(120) {
            bail!("{name} did not reach Running");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = started.elapsed();
    client
        .delete_workload(DeleteWorkloadRequest { name })
        .await?;
    Ok(took)
}

fn ctr_start(socket: &Path, n: u32, round: u32) -> Result<Duration> {
    let ids: Vec<String> = (0..n).map(|i| format!("ctr-{n}-{round}-{i}")).collect();
    let started = Instant::now();
    let children: Vec<_> = ids
        .iter()
        .map(|id| {
            Command::new("ctr")
                .arg("--address")
                .arg(socket)
                .args(["-n", "bench-ctr", "run", "-d", IMAGE, id, "sleep", "100000"])
                .spawn()
        })
        .collect::<Result<_, _>>()?;
    for mut child in children {
        if !child.wait()?.success() {
            bail!("ctr run failed");
        }
    }
    let took = started.elapsed();
    for id in &ids {
        ctr(socket, &["task", "kill", "-s", "SIGKILL", id])?;
    }
    for id in &ids {
        for _ in 0..100 {
            if ctr(socket, &["task", "rm", id]).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        ctr(socket, &["container", "rm", id])?;
    }
    Ok(took)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> Result<()> {
    let rounds: u32 = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let tmp = tempfile::Builder::new().prefix("gb").tempdir_in("/tmp")?;
    let containerd = PrivateContainerd::start(tmp.path().join("ctd"))
        .await
        .context("private containerd")?;
    let socket = containerd.socket();
    let archive = tmp.path().join("busybox.tar");
    busybox_oci_archive(&archive, IMAGE)?;
    ctr(
        &socket,
        &["images", "import", archive.to_str().unwrap_or_default()],
    )?;

    let mut member = MemberArgs::loopback(tmp.path().join("gw"), "bench");
    member.containerd_socket = socket.to_string_lossy().into_owned();
    member.containerd_namespace = "bench".into();
    member.stop_grace = HumanDuration(Duration::from_millis(100));
    let init = InitArgs::with_defaults(member);
    let (gateway, _) = start_init(&init).await?;
    let mut client = gantry::cli::client::connect_as_gateway(
        &gateway.local_addr.to_string(),
        &tmp.path().join("gw"),
    )
    .await?;
    let bytes = std::fs::read(&archive)?;
    let chunk = ImageChunk {
        cluster_id: String::new(),
        all: false,
        file_name: "busybox.tar".into(),
        data: bytes,
    };
    client
        .import_image(futures::stream::iter(vec![chunk]))
        .await?;

    let sizes: Vec<u32> = std::env::var("BENCH_SIZES")
        .unwrap_or_else(|_| "1,20,100".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    for n in sizes {
        let mut ours = Vec::new();
        let mut theirs = Vec::new();
        for round in 0..rounds {
            ours.push(gantry_start(&mut client, n, round).await?);
            // Let the previous round's containers go before timing ctr.
            tokio::time::sleep(Duration::from_millis(500)).await;
            theirs.push(ctr_start(&socket, n, round)?);
        }
        let (ours, theirs) = (median(ours), median(theirs));
        println!(
            "start: containers={n} gantry_ms={:.0} ctr_ms={:.0} ratio={:.2}",
            ours.as_secs_f64() * 1e3,
            theirs.as_secs_f64() * 1e3,
            ours.as_secs_f64() / theirs.as_secs_f64()
        );
    }
    println!("(medians of {rounds} rounds; gantry: apply until every instance is reported Running and committed)");
    gateway.shutdown_token().cancel();
    gateway.serve().await?;
    Ok(())
}
