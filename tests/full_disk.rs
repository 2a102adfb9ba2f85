//! A gateway whose data dir fills up, on real gateways, real RocksDB and
//! real containerd with every flag at its default (the 64 MiB disk reserve
//! included): it refuses writes saying why, hands over leadership, keeps
//! its containers, loses nothing acknowledged, and comes back by itself
//! once space is freed, with a database that still opens after kill -9.
//! The path past the reserve (a storage error, the daemon exiting non-zero
//! for systemd to restart it) is `tests/fencing.rs`
//! `a_daemon_that_dies_on_a_full_disk...`.

mod support;

use std::path::Path;
use std::time::Duration;

use support::{wait_for, TestCluster, Tmpfs};

const IMAGE: &str = "127.0.0.1:5000/gantry/busybox:test";
const LONG: Duration = Duration::from_secs(180);

fn free_bytes(dir: &Path) -> u64 {
    let stat = rustix::fs::statvfs(dir).expect("statvfs");
    stat.f_bavail * stat.f_frsize
}

/// Fills the file system of `dir` to 16 MiB free, below the 64 MiB
/// reserve; returns the ballast file, whose removal frees the space.
fn fill(dir: &Path) -> std::path::PathBuf {
    let ballast = dir.join("ballast");
    let size = free_bytes(dir).saturating_sub(16 << 20);
    let out = std::process::Command::new("fallocate")
        .args(["-l", &size.to_string()])
        .arg(&ballast)
        .output()
        .expect("fallocate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ballast
}

fn leader(cluster: &mut TestCluster) -> String {
    cluster.status_with_leader()["leader"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn workload_names(cluster: &TestCluster, addr: &str) -> Option<Vec<String>> {
    Some(
        cluster
            .try_json(addr, &["get", "workloads"])?
            .as_array()?
            .iter()
            .filter_map(|w| w["name"].as_str().map(String::from))
            .collect(),
    )
}

/// A workload no gateway can place: a write and nothing else.
fn record(name: &str) -> String {
    format!("name: {name}\nimage: {IMAGE}\nnode_selector: {{nowhere: here}}\n")
}

#[test]
fn a_full_data_dir_refuses_writes_keeps_its_containers_and_recovers_once_space_is_freed() {
    let mut cluster = TestCluster::new();
    let dir = cluster.tmp.path().join("gw-a");
    let disk = Tmpfs::mount(&dir, "160m");
    // gw-a starts the cluster, so it leads when its disk fills.
    cluster.init("gw-a", &["--labels", "disk=small"]);
    cluster.join("gw-b", &[]);
    cluster.join("gw-c", &[]);
    cluster.import_busybox(&cluster.addr(0), IMAGE);
    let (a, b) = (cluster.addr(0), cluster.addr(1));
    // `sleep` as PID 1 ignores SIGTERM.
    cluster.apply_ok(&a, &format!("name: keeper\nimage: {IMAGE}\ncommand: [sleep, '3601']\nnode_selector: {{disk: small}}\n"));
    let keeper = wait_for("keeper running on gw-a", LONG, || {
        let running = cluster.running_containers("gw-a", "keeper");
        (running.len() == 1 && running[0].1.is_some()).then(|| running[0].clone())
    });
    assert_eq!(leader(&mut cluster), "gw-a");

    // Fill gw-a's disk to 16 MiB free, below the 64 MiB reserve.
    let ballast = fill(&dir);

    // A write through gw-a is refused, saying where and why (writes in
    // the half second before gw-a reads its free space again may pass).
    let mut attempt = 0;
    let (refused, refusal) = wait_for("gw-a to refuse a write", LONG, || {
        attempt += 1;
        let name = format!("refused-{attempt}");
        let out = cluster.apply(&a, &record(&name));
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        (!out.status.success() && stderr.contains("reserve")).then_some((name, stderr))
    });
    for said in [
        "gw-a",
        "MiB free",
        "--disk-reserve",
        "running containers are kept",
    ] {
        assert!(
            refusal.contains(said),
            "the refusal says {said:?}: {refusal}"
        );
    }
    // The others elect a leader that can write, and acknowledge writes.
    wait_for("a leader other than gw-a", LONG, || {
        let status = cluster.try_json(&b, &["status"])?;
        let leader = status["leader"].as_str()?;
        (leader != "gw-a").then_some(())
    });
    let mut acknowledged = Vec::new();
    for i in 0..20 {
        let name = format!("while-full-{i}");
        wait_for("a write through gw-b", LONG, || {
            cluster
                .apply(&b, &record(&name))
                .status
                .success()
                .then_some(())
        });
        acknowledged.push(name);
    }
    assert!(
        cluster.gateways[0].is_running(),
        "gw-a stays up with a full disk"
    );
    assert_eq!(
        cluster.running_containers("gw-a", "keeper"),
        vec![keeper.clone()],
        "gw-a's container runs on, untouched"
    );
    let names = workload_names(&cluster, &b).expect("workloads through gw-b");
    assert!(!names.contains(&refused), "a refused write changed nothing");
    assert!(cluster.gateways[0]
        .log_text()
        .contains("data dir below its reserve"));

    // Space comes back: gw-a takes writes again and catches up by itself.
    std::fs::remove_file(&ballast).expect("remove the ballast");
    wait_for("gw-a to take writes again", LONG, || {
        cluster
            .apply(&a, &record("after-free"))
            .status
            .success()
            .then_some(())
    });
    acknowledged.push("after-free".into());
    wait_for("gw-a holding every acknowledged write", LONG, || {
        let names = workload_names(&cluster, &a)?;
        acknowledged.iter().all(|n| names.contains(n)).then_some(())
    });
    assert_eq!(
        cluster.running_containers("gw-a", "keeper"),
        vec![keeper.clone()]
    );

    // Its RocksDB took no damage: kill -9 every gateway, restart them all,
    // and gw-a answers from its own database with everything acknowledged.
    for gateway in &mut cluster.gateways {
        gateway.kill();
    }
    for gateway in &mut cluster.gateways {
        gateway.restart();
    }
    wait_for(
        "every acknowledged write on gw-a after kill -9 of all",
        LONG,
        || {
            let names = workload_names(&cluster, &a)?;
            acknowledged.iter().all(|n| names.contains(n)).then_some(())
        },
    );
    leader(&mut cluster);
    assert_eq!(
        cluster.running_containers("gw-a", "keeper"),
        vec![keeper],
        "the container is adopted after the restart, not started again"
    );
    for gateway in &mut cluster.gateways {
        gateway.kill();
    }
    drop(disk);
}

/// What the chaos soaks ran into (README, "Chaos on real gateways"): a
/// follower whose data dir stays below its reserve refuses the log's
/// entries, so it cannot learn of a move, and its fence kills its
/// singleton by the isolation limit. It still heartbeats, and the leader
/// used to keep it Ready and the singleton placed there: it ran nowhere
/// while gantry said Running. Now the leader moves it once the fence has
/// passed; one copy at a time, per the kernel, and the gateway's other
/// containers keep running.
#[test]
fn a_singleton_on_a_gateway_whose_disk_stays_full_runs_again_elsewhere() {
    let mut cluster = TestCluster::new();
    let dir = cluster.tmp.path().join("gw-b");
    let disk = Tmpfs::mount(&dir, "160m");
    cluster.init("gw-a", &[]);
    cluster.join("gw-b", &["--labels", "disk=small"]);
    cluster.join("gw-c", &[]);
    let a = cluster.addr(0);
    cluster.import_busybox(&a, IMAGE);
    // Placed on gw-b first (the selector), then free to go anywhere.
    cluster.apply_ok(&a, &format!("name: solo\nimage: {IMAGE}\nsingleton: true\ncommand: [sleep, '3601']\nnode_selector: {{disk: small}}\n"));
    cluster.apply_ok(&a, &format!("name: keeper\nimage: {IMAGE}\ncommand: [sleep, '3601']\nnode_selector: {{disk: small}}\n"));
    wait_for("solo running on gw-b", LONG, || {
        (cluster.running_containers("gw-b", "solo").len() == 1).then_some(())
    });
    let keeper = wait_for("keeper running on gw-b", LONG, || {
        let running = cluster.running_containers("gw-b", "keeper");
        (running.len() == 1 && running[0].1.is_some()).then(|| running[0].clone())
    });
    cluster.apply_ok(
        &a,
        &format!("name: solo\nimage: {IMAGE}\nsingleton: true\ncommand: [sleep, '3601']\n"),
    );

    let ballast = fill(&dir);
    // Writes go on through gw-a; gw-b cannot store them.
    for i in 0..5 {
        let _ = cluster.apply(&a, &record(&format!("after-{i}")));
    }
    let mut max_copies = 0;
    let moved = wait_for("solo running on a gateway other than gw-b", LONG, || {
        let copies = cluster.kernel_copies("solo");
        max_copies = max_copies.max(copies.len());
        copies
            .iter()
            .find(|(gateway, _)| gateway != "gw-b")
            .map(|(gateway, _)| gateway.clone())
    });
    assert_eq!(max_copies, 1, "solo ran twice");
    eprintln!("solo moved to {moved}");
    let status = cluster.json(&a, &["status"]);
    assert_eq!(
        support::node(&status, "gw-b")["status"],
        "Ready",
        "gw-b heartbeats: {status}"
    );
    assert_eq!(
        cluster.running_containers("gw-b", "keeper"),
        vec![keeper],
        "gw-b's other container runs on, untouched"
    );
    let _ = std::fs::remove_file(&ballast);
    for gateway in &mut cluster.gateways {
        gateway.kill();
    }
    drop(disk);
}
