//! What probes cost an idle gateway: a one-gateway cluster on a private
//! containerd runs 10 busybox containers without probes, then with exec
//! probes every 10 s (Kubernetes' default period), exec every 1 s, and TCP
//! every 1 s, and measures over a quiet minute the CPU of the gateway's
//! process and of the whole machine (exec probes also cost runc and the
//! shim, outside our process). One line per figure. Run:
//! `cargo run --release --example bench_probes` (`BENCH_SECONDS=N`).

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use gantry::cli::args::{InitArgs, MemberArgs};
use gantry::cli::daemon::start_init;
use gantry_node::testing::{busybox_oci_archive, PrivateContainerd};
use gantry_proto::v1::{ApplyRequest, DeleteWorkloadRequest, GetRequest, ImageChunk};

const IMAGE: &str = "127.0.0.1:5000/gantry/busybox:bench";
const CONTAINERS: usize = 10;
/// Linux reports process and machine times in USER_HZ ticks, 100 per second.
const TICKS_PER_SECOND: f64 = 100.0;

/// utime + stime of this process, in ticks.
fn own_ticks() -> Result<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the command name, which ends with the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("bad /proc/self/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11).context("utime")?.parse()?;
    let stime: u64 = fields.get(12).context("stime")?.parse()?;
    Ok(utime + stime)
}

/// Busy ticks of the whole machine, all cores.
fn machine_busy_ticks() -> Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy = [0usize, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|i| values.get(*i))
        .sum();
    Ok(busy)
}

async fn wait_running(client: &mut gantry::cli::client::Admin, workload: &str) -> Result<()> {
    let started = Instant::now();
    loop {
        let json = client.get_instances(GetRequest {}).await?.into_inner().json;
        let all: serde_json::Value = serde_json::from_str(&json)?;
        let up = all
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[])
            .iter()
            .filter(|i| i["workload"] == workload && i["state"] == "Running" && i["ready"] == true)
            .count();
        if up == CONTAINERS {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(180) {
            let states: Vec<String> = all
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or(&[])
                .iter()
                .filter(|i| i["workload"] == workload)
                .map(|i| {
                    format!(
                        "{}/{}: {} ready={} {}",
                        i["workload"], i["replica"], i["state"], i["ready"], i["reason"]
                    )
                })
                .collect();
            bail!("{workload} did not come up: {states:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let tmp = tempfile::Builder::new().prefix("gb").tempdir_in("/tmp")?;
    let containerd = PrivateContainerd::start(tmp.path().join("ctd"))
        .await
        .context("private containerd")?;
    let archive = tmp.path().join("busybox.tar");
    busybox_oci_archive(&archive, IMAGE)?;
    let mut member = MemberArgs::loopback(tmp.path().join("gw"), "bench");
    member.containerd_socket = containerd.socket().to_string_lossy().into_owned();
    member.containerd_namespace = "bench".into();
    let (gateway, _) = start_init(&InitArgs::with_defaults(member)).await?;
    let mut client = gantry::cli::client::connect_as_gateway(
        &gateway.local_addr.to_string(),
        &tmp.path().join("gw"),
    )
    .await?;
    client
        .import_image(futures::stream::iter(vec![ImageChunk {
            cluster_id: String::new(),
            all: false,
            file_name: "busybox.tar".into(),
            data: std::fs::read(&archive)?,
        }]))
        .await?;
    // Something for the TCP probes to reach.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            drop(socket);
        }
    });

    let scenarios = [
        ("none", String::new()),
        (
            "exec-10s",
            "probes: {liveness: {exec: [\"true\"], period: 10s}}\n".to_string(),
        ),
        (
            "exec-1s",
            "probes: {liveness: {exec: [\"true\"], period: 1s}}\n".to_string(),
        ),
        (
            "tcp-1s",
            format!("probes: {{readiness: {{tcp: {{port: {port}}}, period: 1s}}}}\n"),
        ),
    ];
    // `BENCH_ONLY=tcp-1s` (with `none`, the baseline, always first).
    let only = std::env::var("BENCH_ONLY").ok();
    let mut baseline = None;
    for (round, (kind, probes)) in scenarios.iter().enumerate() {
        if only
            .as_deref()
            .is_some_and(|o| *kind != "none" && o != *kind)
        {
            continue;
        }
        let name = format!("probed-{round}");
        let manifest = format!(
            "name: {name}\nimage: {IMAGE}\nreplicas: {CONTAINERS}\ncommand: [sleep, '100000']\n{probes}"
        );
        client.apply(ApplyRequest { manifest }).await?;
        wait_running(&mut client, &name).await?;
        tokio::time::sleep(Duration::from_secs(10)).await;
        let (own0, machine0, t0) = (own_ticks()?, machine_busy_ticks()?, Instant::now());
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        let wall = t0.elapsed().as_secs_f64();
        let own = (own_ticks()? - own0) as f64 / TICKS_PER_SECOND / wall * 100.0;
        let machine = (machine_busy_ticks()? - machine0) as f64 / TICKS_PER_SECOND / wall * 100.0;
        let (base_own, base_machine) = *baseline.get_or_insert((own, machine));
        println!(
            "probes: containers={CONTAINERS} kind={kind} gantry_cpu_pct_of_core={own:.2} machine_cpu_pct_of_core={machine:.2} over_none_gantry={:+.2} over_none_machine={:+.2}",
            own - base_own,
            machine - base_machine
        );
        client
            .delete_workload(DeleteWorkloadRequest { name })
            .await?;
        tokio::time::sleep(Duration::from_secs(15)).await;
    }
    println!(
        "(percent of one core, measured over {seconds} s, after 10 s of settling; stop grace 10 s)"
    );
    gateway.shutdown_token().cancel();
    gateway.serve().await?;
    Ok(())
}
