//! At most one copy of a singleton, whatever fails, on real gateways and
//! real containerd with every daemon flag at its default (a 10 s stop grace
//! included). The singleton's program ignores SIGTERM (`sleep` as PID 1 has
//! no handler), so only SIGKILL ends it. Every scenario samples the
//! kernel's process list every 100 ms (`TestCluster::kernel_copies`) and
//! fails at the first instant two copies run.
//!
//! Scenarios (review 2026-11-29): the singleton's gateway (the leader) cut
//! off by a partition; that gateway restarted while still cut off (C1);
//! its containerd down while it still heartbeats (H2); preemption (H3); a
//! shorter `stop_after` applied during a partition (H4); its daemon dying
//! on a full disk (H1); and a rollback that must not restart replicas that
//! never left the good spec (M9).

mod support;

use std::time::{Duration, Instant};

use gantry_node::testing::busybox_oci_archive;
use serde_json::Value;
use support::{node, wait_for, TestCluster, Tmpfs};

const IMAGE: &str = "127.0.0.1:5000/gantry/busybox:test";
/// Generous against hangs; the fences themselves are 30-70 s.
const LONG: Duration = Duration::from_secs(240);

fn import(cluster: &TestCluster) {
    let archive = cluster.tmp.path().join("busybox.tar");
    busybox_oci_archive(&archive, IMAGE).expect("busybox archive (install busybox-static)");
    let out = cluster.cli(
        &cluster.addr(0),
        &["image", "import", archive.to_str().unwrap(), "--all"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn three(extra: &[&str]) -> TestCluster {
    let mut cluster = TestCluster::new();
    cluster.init("gw-a", extra);
    cluster.join("gw-b", extra);
    cluster.join("gw-c", extra);
    import(&cluster);
    cluster
}

fn instance(cluster: &TestCluster, addr: &str, workload: &str, replica: u64) -> Option<Value> {
    let all = cluster.try_json(addr, &["get", "instances"])?;
    all.as_array()?
        .iter()
        .find(|i| i["workload"] == workload && i["replica"] == replica)
        .cloned()
}

/// A singleton running `sleep`, which ignores SIGTERM as PID 1.
fn cam(extra: &str) -> String {
    format!("name: cam\nimage: {IMAGE}\nsingleton: true\ncommand: [sleep, '3601']\n{extra}")
}

/// Where the singleton runs, once Running.
fn running_on(cluster: &TestCluster, addr: &str) -> String {
    let i = wait_for("the singleton Running", LONG, || {
        instance(cluster, addr, "cam", 0).filter(|i| i["state"] == "Running")
    });
    i["node"].as_str().unwrap().to_string()
}

/// Samples the kernel every 100 ms until `done` holds (checked with the
/// copies seen), panicking the moment two copies of `workload` run at once.
fn never_twice(
    cluster: &TestCluster,
    workload: &str,
    what: &str,
    mut done: impl FnMut(&[(String, String)]) -> bool,
) {
    let deadline = Instant::now() + LONG;
    loop {
        let copies = cluster.kernel_copies(workload);
        assert!(
            copies.len() <= 1,
            "{workload} runs twice ({what}): {copies:?}"
        );
        if done(&copies) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Keeps sampling for `span` (nothing may run twice in it either).
fn still_once(cluster: &TestCluster, workload: &str, span: Duration) {
    let until = Instant::now() + span;
    never_twice(cluster, workload, "afterwards", |_| Instant::now() >= until);
}

fn on(copies: &[(String, String)], gateway: &str) -> bool {
    copies.iter().any(|(g, _)| g == gateway)
}

fn elsewhere(copies: &[(String, String)], gateway: &str) -> bool {
    copies.iter().any(|(g, _)| g != gateway)
}

#[test]
fn a_leader_cut_off_by_a_partition_never_runs_its_singleton_beside_the_new_one() {
    let cluster = three(&[]);
    let addr = cluster.addr(0);
    // On the leader (gw-a): the measured case of the review.
    cluster.apply_ok(&addr, &cam("node_selector: {}\n"));
    let first = running_on(&cluster, &addr);
    let index = cluster.index_of(&first);
    let majority = cluster.addr((index + 1) % 3);
    cluster.gateways[index].partition();
    never_twice(&cluster, "cam", "partition", |c| elsewhere(c, &first));
    assert!(!on(&cluster.kernel_copies("cam"), &first));
    cluster.gateways[index].heal();
    wait_for("the cut-off gateway back", LONG, || {
        let status = cluster.try_json(&majority, &["status"])?;
        (node(&status, &first)["status"] == "Ready").then_some(())
    });
    still_once(&cluster, "cam", Duration::from_secs(5));
    assert_eq!(cluster.copies("cam"), 1);
}

#[test]
fn a_gateway_restarted_while_still_cut_off_does_not_restart_its_singleton() {
    let mut cluster = three(&[]);
    let addr = cluster.addr(0);
    cluster.apply_ok(&addr, &cam(""));
    let first = running_on(&cluster, &addr);
    let index = cluster.index_of(&first);
    let other = cluster.addr((index + 1) % 3);
    cluster.gateways[index].partition();
    never_twice(&cluster, "cam", "partition", |c| elsewhere(c, &first));
    // The cut-off gateway restarts (its fault file stays: still cut off)
    // with a replica that says the singleton is its own.
    cluster.gateways[index].kill();
    cluster.gateways[index].restart();
    let until = Instant::now() + Duration::from_secs(20);
    never_twice(&cluster, "cam", "restart while cut off", |c| {
        assert!(
            !on(c, &first),
            "the restarted gateway started its stale singleton"
        );
        Instant::now() >= until
    });
    cluster.gateways[index].heal();
    wait_for("the gateway back", LONG, || {
        let status = cluster.try_json(&other, &["status"])?;
        (node(&status, &first)["status"] == "Ready").then_some(())
    });
    still_once(&cluster, "cam", Duration::from_secs(5));
}

#[test]
fn a_singleton_stranded_by_a_containerd_outage_moves_only_once_killed() {
    let mut cluster = TestCluster::new();
    cluster.init("gw-a", &[]);
    cluster.join("gw-b", &[]);
    cluster.join_with_own_containerd("gw-c", &["--labels", "cam=here"]);
    import(&cluster);
    let addr = cluster.addr(0);
    cluster.apply_ok(&addr, &cam("node_selector: {cam: here}\n"));
    assert_eq!(running_on(&cluster, &addr), "gw-c");
    // Let the singleton go anywhere, then take gw-c's containerd away: the
    // copy keeps running under its shim while gw-c still heartbeats.
    cluster.apply_ok(&addr, &cam(""));
    let c = cluster.index_of("gw-c");
    let pos = cluster
        .own_containerd
        .iter()
        .position(|(n, _)| n == "gw-c")
        .unwrap();
    cluster.own_containerd[pos].1.kill();
    wait_for("gw-c NotReady with its runtime down", LONG, || {
        let status = cluster.try_json(&addr, &["status"])?;
        let n = node(&status, "gw-c");
        (n["status"] == "NotReady").then_some(())
    });
    assert!(cluster.gateways[c].is_running(), "the gateway itself runs");
    never_twice(&cluster, "cam", "containerd outage", |copies| {
        elsewhere(copies, "gw-c")
    });
    let events = cluster.json(&addr, &["events"]).to_string();
    assert!(events.contains("cam/0"), "{events}");
    // containerd returns; nothing runs twice then either.
    cluster
        .tokio
        .block_on(cluster.own_containerd[pos].1.restart())
        .unwrap();
    still_once(&cluster, "cam", Duration::from_secs(10));
}

#[test]
fn a_preempted_singleton_starts_elsewhere_only_after_its_old_copy_is_gone() {
    let mut cluster = TestCluster::new();
    cluster.init(
        "gw-a",
        &["--capacity", "cpu=1000m,memory=1Gi", "--labels", "zone=a"],
    );
    cluster.join("gw-b", &["--capacity", "cpu=1000m,memory=1Gi"]);
    import(&cluster);
    let addr = cluster.addr(0);
    cluster.apply_ok(
        &addr,
        &cam("resources: {cpu: 600m}\nnode_selector: {zone: a}\n"),
    );
    assert_eq!(running_on(&cluster, &addr), "gw-a");
    // Free to move, then a higher priority workload wants gw-a.
    cluster.apply_ok(&addr, &cam("resources: {cpu: 600m}\n"));
    cluster.apply_ok(&addr,
        &format!("name: big\nimage: {IMAGE}\npriority: 10\nresources: {{cpu: 600m}}\nnode_selector: {{zone: a}}\ncommand: [sleep, '3601']\n"),
    );
    never_twice(&cluster, "cam", "preemption", |c| elsewhere(c, "gw-a"));
    assert!(!on(&cluster.kernel_copies("cam"), "gw-a"));
    still_once(&cluster, "cam", Duration::from_secs(3));
}

#[test]
fn a_shorter_stop_after_applied_during_a_partition_does_not_shorten_the_fence() {
    let cluster = three(&[]);
    let addr = cluster.addr(0);
    cluster.apply_ok(&addr, &cam("on_disconnect: {stop_after: 60s}\n"));
    let first = running_on(&cluster, &addr);
    let index = cluster.index_of(&first);
    let majority = cluster.addr((index + 1) % 3);
    cluster.gateways[index].partition();
    // The majority is told the singleton only needs 5 s; the cut-off gateway
    // cannot hear it and keeps its copy for 60 s.
    wait_for("the majority to lead", LONG, || {
        let status = cluster.try_json(&majority, &["status"])?;
        (!status["leader"].is_null() && status["leader"] != first.as_str()).then_some(())
    });
    cluster.apply_ok(&majority, &cam("on_disconnect: {stop_after: 5s}\n"));
    let cut = Instant::now();
    never_twice(&cluster, "cam", "shortened stop_after", |c| {
        elsewhere(c, &first)
    });
    assert!(
        cut.elapsed() >= Duration::from_secs(50),
        "moved after {:?}: the fence must be the 60 s the cut-off gateway knows",
        cut.elapsed()
    );
    cluster.gateways[index].heal();
    still_once(&cluster, "cam", Duration::from_secs(5));
}

#[test]
fn a_daemon_that_dies_on_a_full_disk_exits_non_zero_and_its_singleton_is_still_fenced() {
    let mut cluster = TestCluster::new();
    cluster.init("gw-a", &[]);
    cluster.join("gw-b", &[]);
    let disk = Tmpfs::mount(&cluster.tmp.path().join("gw-c"), "48m");
    // The disk reserve (tests/full_disk.rs) would stop gw-c's writes before
    // the disk is full; this is the path past it, a storage error.
    cluster.join("gw-c", &["--labels", "cam=here", "--disk-reserve", "0"]);
    import(&cluster);
    let addr = cluster.addr(0);
    cluster.apply_ok(&addr, &cam("node_selector: {cam: here}\n"));
    assert_eq!(running_on(&cluster, &addr), "gw-c");
    cluster.apply_ok(&addr, &cam(""));
    // Fill gw-c's data dir: its next Raft write fails.
    let ballast = cluster.tmp.path().join("gw-c/ballast");
    let _ = std::process::Command::new("fallocate")
        .args(["-l", "100m"])
        .arg(&ballast)
        .status();
    let _ = std::process::Command::new("dd")
        .args(["if=/dev/zero", "bs=1M", "count=100"])
        .arg(format!("of={}", ballast.display()))
        .stderr(std::process::Stdio::null())
        .status();
    let c = cluster.index_of("gw-c");
    // Writes keep coming (liveness, reports), but RocksDB may still hold
    // preallocated WAL space on the full disk, and those writes succeed:
    // write big entries (a workload nowhere placeable, 60 KB of env each
    // time) until gw-c's Raft log truly runs out, watching the kernel's
    // process list all along.
    let filler = "x".repeat(60_000);
    let deadline = Instant::now() + LONG;
    let mut n = 0;
    while cluster.gateways[c].is_running() {
        let copies = cluster.kernel_copies("cam");
        assert!(copies.len() <= 1, "cam runs twice (full disk): {copies:?}");
        assert!(Instant::now() < deadline, "gw-c never ran out of disk");
        let _ = cluster.apply(
            &addr,
            &format!(
                "name: poke\nimage: {IMAGE}\nnode_selector: {{nowhere: here}}\nenv: {{FILL: '{filler}{n}'}}\n"
            ),
        );
        n += 1;
    }
    never_twice(&cluster, "cam", "full disk", |copies| {
        elsewhere(copies, "gw-c")
    });
    let gateway = &mut cluster.gateways[c];
    let status = wait_for("gw-c to exit", LONG, || {
        gateway.child.as_mut()?.try_wait().ok().flatten()
    });
    assert!(
        !status.success(),
        "a fatal storage error exits non-zero: {status:?}"
    );
    assert!(
        cluster.gateways[c].log_text().contains("raft stopped"),
        "{}",
        cluster.gateways[c].log_text()
    );
    still_once(&cluster, "cam", Duration::from_secs(3));
    drop(disk);
}

/// The fence's kill by container id (a copy whose pid the daemon had not
/// learnt when it died) finds the container's processes through its cgroup
/// on this machine's cgroup layout, and kills them.
#[test]
fn the_fence_kills_a_container_by_its_id_through_its_cgroup() {
    use gantry::agent::fence::{cgroup_pids, Entry, Killed, Killer, ProcessKiller};
    let mut cluster = TestCluster::new();
    cluster.init("gw-a", &[]);
    import(&cluster);
    let addr = cluster.addr(0);
    cluster.apply_ok(&addr, &cam(""));
    running_on(&cluster, &addr);
    let copy = instance(&cluster, &addr, "cam", 0).expect("the singleton");
    let id = copy["container_id"].as_str().expect("a container id");
    let entry = Entry {
        container_id: id.to_string(),
        pid: 0,
        start_time: 0,
        deadline_ms: 0,
        namespace: Some(cluster.namespace_of("gw-a")),
    };
    let running = cluster.kernel_copies("cam");
    assert_eq!(running, vec![("gw-a".to_string(), id.to_string())]);
    let pids = cgroup_pids(entry.namespace.as_deref(), id);
    assert!(!pids.is_empty(), "no processes found in the cgroup of {id}");
    assert!(ProcessKiller.alive(&entry));
    assert_eq!(ProcessKiller.kill(&entry), Killed::Now);
    // Those processes die (the agent may restart the container meanwhile:
    // new processes, not these).
    wait_for("the container killed by its cgroup", LONG, || {
        pids.iter()
            .all(|p| gantry::agent::fence::start_time(*p).is_none())
            .then_some(())
    });
}

#[test]
fn a_rollback_keeps_the_replicas_that_never_left_the_good_spec() {
    let mut cluster = TestCluster::new();
    cluster.init("gw-a", &[]);
    cluster.join("gw-b", &[]);
    import(&cluster);
    let addr = cluster.addr(0);
    let web = |image: &str| {
        format!("name: web\nimage: {image}\nimage_pull: never\nreplicas: 2\nprogress_deadline: 10s\ncommand: [sleep, '3601']\n")
    };
    cluster.apply_ok(&addr, &web(IMAGE));
    let running = |cluster: &TestCluster| {
        wait_for("both replicas Running", LONG, || {
            let all = cluster.try_json(&addr, &["get", "instances"])?;
            let list: Vec<Value> = all
                .as_array()?
                .iter()
                .filter(|i| i["workload"] == "web" && i["state"] == "Running")
                .cloned()
                .collect();
            (list.len() == 2).then_some(list)
        })
    };
    running(&cluster);
    let before = cluster.kernel_copies("web");
    assert_eq!(before.len(), 2);
    // A bad image: the first upgraded replica fails, the rollout rolls back.
    cluster.apply_ok(&addr, &web("127.0.0.1:5000/gantry/missing:1"));
    wait_for("the rollback", LONG, || {
        let rollout = cluster.try_json(&addr, &["rollout", "status", "web", "--watch=false"])?;
        (!rollout["rolled_back"].is_null()).then_some(())
    });
    running(&cluster);
    let after = cluster.kernel_copies("web");
    let kept: Vec<_> = before.iter().filter(|c| after.contains(c)).collect();
    assert_eq!(
        kept.len(),
        1,
        "the replica that stayed on the good spec keeps its container: before {before:?} after {after:?}"
    );
}
