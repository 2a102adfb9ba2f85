//! Heal benchmark: a power cut (kill -9 of a gateway and of its
//! containers) on a gateway running 10 instances, N trials, for a follower
//! and for the leader as the victim; prints p50 and p99 of the time until
//! every replacement is Running elsewhere. Real gateway processes on
//! loopback and a private containerd.
//!
//! Run: `cargo bench --bench heal` (release, what users run;
//! BENCH_TRIALS=N, default 10). Prints one line per victim:
//! `heal: victim=leader trials=10 p50=..s p99=..s max=..s`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use gantry_node::testing::busybox_oci_archive;
use support::{wait_for, TestCluster};

const IMAGE: &str = "127.0.0.1:5000/gantry/busybox:bench";
const LONG: Duration = Duration::from_secs(120);

fn running_elsewhere(cluster: &TestCluster, addr: &str, victim: &str) -> Option<usize> {
    let all = cluster.try_json(addr, &["get", "instances"])?;
    let list = all.as_array()?;
    let ok = list.len() == 30
        && list
            .iter()
            .all(|i| i["state"] == "Running" && i["node"] != victim);
    ok.then_some(list.len())
}

fn trial(victim_is_leader: bool) -> Duration {
    let mut cluster = TestCluster::new();
    cluster.init("gw-a", &[]);
    cluster.join("gw-b", &[]);
    cluster.join("gw-c", &[]);
    let archive = cluster.tmp.path().join("busybox.tar");
    busybox_oci_archive(&archive, IMAGE).expect("busybox archive");
    let addr = cluster.addr(0);
    let out = cluster.cli(
        &addr,
        &[
            "image",
            "import",
            archive.to_str().unwrap_or_default(),
            "--all",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // 30 replicas spread over 3 gateways: 10 on each.
    let manifest =
        format!("name: load\nimage: {IMAGE}\nreplicas: 30\ncommand: [sleep, '100000']\n");
    assert!(cluster.apply(&addr, &manifest).status.success());
    wait_for("30 replicas Running", LONG, || {
        let all = cluster.try_json(&addr, &["get", "instances"])?;
        let list = all.as_array()?;
        (list.len() == 30 && list.iter().all(|i| i["state"] == "Running")).then_some(())
    });
    let status = cluster.status_with_leader();
    let leader = status["leader"].as_str().unwrap_or_default().to_string();
    let victim = if victim_is_leader {
        leader
    } else {
        ["gw-a", "gw-b", "gw-c"]
            .into_iter()
            .find(|n| *n != leader)
            .unwrap_or("gw-c")
            .to_string()
    };
    let index = cluster.index_of(&victim);
    let survivor = cluster.addr((index + 1) % 3);
    let doomed = cluster.running_containers(&victim, "load");

    let started = Instant::now();
    cluster.gateways[index].kill();
    for (_, pid) in doomed {
        if let Some(pid) = pid {
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
        }
    }
    wait_for("every replacement Running", LONG, || {
        running_elsewhere(&cluster, &survivor, &victim)
    });
    let took = started.elapsed();
    // BENCH_LOGS=DIR keeps the gateways' logs of the last trial, to see
    // where the time went.
    if let Some(dir) = std::env::var_os("BENCH_LOGS") {
        let dir = std::path::PathBuf::from(dir);
        let _ = std::fs::create_dir_all(&dir);
        for gateway in &cluster.gateways {
            if let Some(name) = gateway.log.file_name() {
                let _ = std::fs::copy(&gateway.log, dir.join(name));
            }
        }
        eprintln!(
            "power cut at {:?} (unix), healed after {took:?}",
            unix_now_minus(took)
        );
    }
    took
}

fn unix_now_minus(ago: Duration) -> Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .saturating_sub(ago)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len().saturating_sub(1))]
}

fn main() {
    let trials: usize = std::env::var("BENCH_TRIALS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    println!("power cut of a gateway running 10 of 30 instances, {trials} trials each");
    for (label, leader) in [("follower", false), ("leader", true)] {
        let mut times: Vec<Duration> = (0..trials).map(|_| trial(leader)).collect();
        times.sort();
        println!(
            "heal: victim={label} trials={trials} p50={:.2}s p99={:.2}s max={:.2}s",
            percentile(&times, 0.5).as_secs_f64(),
            percentile(&times, 0.99).as_secs_f64(),
            times.last().copied().unwrap_or_default().as_secs_f64()
        );
    }
    println!("defaults elsewhere: Kubernetes ~350 s (40 s node-monitor grace + 300 s eviction), Nomad ~20 s");
}
