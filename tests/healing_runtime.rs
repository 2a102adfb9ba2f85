//! Healing with real containers: power cuts (kill -9 of a gateway and of
//! its containers), a partition (fault injection cutting every
//! gateway-to-gateway call of one gateway) with a singleton that must never
//! run twice, quorum loss, and a gateway returning after its work moved.

mod support;

use std::time::{Duration, Instant};

use gantry_node::testing::busybox_oci_archive;
use serde_json::Value;
use support::{node, wait_for, TestCluster};

const IMAGE: &str = "127.0.0.1:5000/gantry/busybox:test";
const LONG: Duration = Duration::from_secs(90);

fn three_gateways_with_image() -> TestCluster {
    let mut cluster = TestCluster::new();
    cluster.init("gw-a", &[]);
    cluster.join("gw-b", &[]);
    cluster.join("gw-c", &[]);
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
    cluster
}

fn instances(cluster: &TestCluster, addr: &str, workload: &str) -> Option<Vec<Value>> {
    let all = cluster.try_json(addr, &["get", "instances"])?;
    Some(
        all.as_array()?
            .iter()
            .filter(|i| i["workload"] == workload)
            .cloned()
            .collect(),
    )
}

/// Every replica Running on a gateway other than `avoid`.
fn all_running_elsewhere(
    cluster: &TestCluster,
    addr: &str,
    workload: &str,
    replicas: usize,
    avoid: &str,
) -> bool {
    instances(cluster, addr, workload).is_some_and(|list| {
        list.len() == replicas
            && list
                .iter()
                .all(|i| i["state"] == "Running" && i["node"] != avoid)
    })
}

fn power_cut(victim_is_leader: bool) {
    let mut cluster = three_gateways_with_image();
    let addr = cluster.addr(0);
    cluster.apply_ok(
        &addr,
        &format!("name: web\nimage: {IMAGE}\nreplicas: 4\ncommand: [sleep, '100000']\n"),
    );
    wait_for("4 replicas Running", LONG, || {
        instances(&cluster, &addr, "web")
            .filter(|l| l.len() == 4 && l.iter().all(|i| i["state"] == "Running"))
    });
    let status = cluster.status_with_leader();
    let leader = status["leader"].as_str().unwrap().to_string();
    let list = instances(&cluster, &addr, "web").unwrap();
    let victim = if victim_is_leader {
        leader.clone()
    } else {
        let busy_follower = list
            .iter()
            .filter_map(|i| i["node"].as_str())
            .find(|n| *n != leader);
        busy_follower
            .expect("a follower runs a replica")
            .to_string()
    };
    let index = cluster.index_of(&victim);
    let survivor = cluster.addr((index + 1) % 3);
    let doomed = cluster.running_containers(&victim, "web");
    assert!(!doomed.is_empty());

    // Power cut: the gateway and its containers die at once.
    let started = Instant::now();
    cluster.gateways[index].kill();
    for (_, pid) in doomed {
        let pid = pid.expect("running tasks have pids").to_string();
        let _ = std::process::Command::new("kill")
            .args(["-9", &pid])
            .status();
    }
    wait_for("every replica Running elsewhere", LONG, || {
        all_running_elsewhere(&cluster, &survivor, "web", 4, &victim).then_some(())
    });
    let healed = started.elapsed();
    let role = if victim_is_leader {
        "leader"
    } else {
        "follower"
    };
    println!("power cut of the {role} {victim}: replacements Running after {healed:?}");
    wait_for("4 running copies on the survivors", LONG, || {
        (cluster.copies("web") == 4).then_some(())
    });
    let status = cluster.try_json(&survivor, &["status"]).unwrap();
    assert_eq!(node(&status, &victim)["status"], "NotReady");
}

#[test]
fn a_follower_power_cut_moves_its_instances() {
    power_cut(false);
}

#[test]
fn a_leader_power_cut_moves_its_instances() {
    power_cut(true);
}

#[test]
fn a_partitioned_singleton_never_runs_twice() {
    let cluster = three_gateways_with_image();
    let addr = cluster.addr(0);
    cluster.apply_ok(&addr,
        &format!(
            "name: lock\nimage: {IMAGE}\nsingleton: true\non_disconnect: {{stop_after: 2s}}\ncommand: [sleep, '100000']\n"
        ),
    );
    let first = wait_for("the singleton Running", LONG, || {
        instances(&cluster, &addr, "lock")
            .and_then(|l| l.into_iter().find(|i| i["state"] == "Running"))
    });
    let isolated = first["node"].as_str().unwrap().to_string();
    let index = cluster.index_of(&isolated);
    let majority = cluster.addr((index + 1) % 3);

    cluster.gateways[index].partition();
    let deadline = Instant::now() + LONG;
    let mut max_copies = 0;
    loop {
        let copies = cluster.copies("lock");
        max_copies = max_copies.max(copies);
        assert!(copies <= 1, "the singleton ran twice during the partition");
        let moved = instances(&cluster, &majority, "lock").is_some_and(|l| {
            l.iter()
                .any(|i| i["state"] == "Running" && i["node"] != isolated.as_str())
        });
        if moved && copies == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the singleton never moved to the majority side"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        cluster.running_containers(&isolated, "lock").is_empty(),
        "the isolated copy stopped"
    );

    cluster.gateways[index].heal();
    wait_for("the isolated gateway back", LONG, || {
        let status = cluster.try_json(&majority, &["status"])?;
        (node(&status, &isolated)["status"] == "Ready").then_some(())
    });
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        if cluster.copies("lock") > 1 {
            let events = cluster.try_json(&majority, &["events"]);
            panic!("the singleton ran twice after the partition healed; events: {events:#?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(cluster.copies("lock"), 1, "exactly one copy after healing");
    assert_eq!(max_copies, 1);
}

#[test]
fn losing_the_quorum_keeps_containers_running_and_says_so() {
    let mut cluster = three_gateways_with_image();
    let addr = cluster.addr(0);
    cluster.apply_ok(
        &addr,
        &format!(
            "name: spread\nimage: {IMAGE}\nreplicas: 3\nspread: node\ncommand: [sleep, '100000']\n"
        ),
    );
    wait_for("3 replicas Running", LONG, || {
        instances(&cluster, &addr, "spread")
            .filter(|l| l.len() == 3 && l.iter().all(|i| i["state"] == "Running"))
    });
    let before = cluster.running_containers("gw-a", "spread");
    assert_eq!(before.len(), 1);

    cluster.gateways[1].kill();
    cluster.gateways[2].kill();
    // The survivor says it cannot commit, and refuses writes clearly...
    let status = wait_for("the survivor to know it is not current", LONG, || {
        let status = cluster.try_json(&addr, &["status"])?;
        (status["current"] == false).then_some(status)
    });
    assert_eq!(status["current"], false);
    let out = cluster.apply(&addr, &format!("name: late\nimage: {IMAGE}\n"));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("quorum"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // ...while its container keeps running, untouched.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(cluster.running_containers("gw-a", "spread"), before);

    cluster.gateways[1].restart();
    cluster.gateways[2].restart();
    cluster.status_with_leader();
    wait_for(
        "3 replicas Running, one per gateway, no duplicates",
        LONG,
        || {
            let list = instances(&cluster, &addr, "spread")?;
            let ok = list.len() == 3
                && list.iter().all(|i| i["state"] == "Running")
                && cluster.copies("spread") == 3;
            ok.then_some(())
        },
    );
    assert_eq!(
        cluster.running_containers("gw-a", "spread"),
        before,
        "never restarted"
    );
}

#[test]
fn a_gateway_returning_after_its_work_moved_stops_its_old_copies() {
    let cluster = three_gateways_with_image();
    let addr = cluster.addr(0);
    cluster.apply_ok(
        &addr,
        &format!("name: svc\nimage: {IMAGE}\ncommand: [sleep, '100000']\n"),
    );
    let first = wait_for("svc Running", LONG, || {
        instances(&cluster, &addr, "svc")
            .and_then(|l| l.into_iter().find(|i| i["state"] == "Running"))
    });
    let away = first["node"].as_str().unwrap().to_string();
    let index = cluster.index_of(&away);
    let majority = cluster.addr((index + 1) % 3);

    cluster.gateways[index].partition();
    wait_for("svc replaced on the majority side", LONG, || {
        all_running_elsewhere(&cluster, &majority, "svc", 1, &away).then_some(())
    });
    // Without a stop_after, the isolated copy keeps running (edge autonomy).
    assert_eq!(cluster.running_containers(&away, "svc").len(), 1);

    cluster.gateways[index].heal();
    wait_for("the old copy stopped; one copy left", LONG, || {
        (cluster.running_containers(&away, "svc").is_empty() && cluster.copies("svc") == 1)
            .then_some(())
    });
    let status = cluster.try_json(&majority, &["status"]).unwrap();
    assert_eq!(node(&status, &away)["status"], "Ready");
}

/// The gateway that runs a SIGTERM-ignoring singleton loses its
/// containerd again and again, for 1 to 4 s at a time with 2 to 40 s
/// between (the runtime outage grace is 60 s, so nothing moves), default
/// flags; after each outage exactly one copy runs, per the kernel, where
/// gantry says it runs. (The first chaos soak saw a singleton's process
/// gone after two containerd restarts within 75 s; this alone does not
/// bring that about.)
#[test]
fn a_singleton_outlives_its_runtime_restarting_again_and_again() {
    let mut cluster = TestCluster::new();
    cluster.init("gw-a", &[]);
    cluster.join_with_own_containerd("gw-b", &[]);
    cluster.join_with_own_containerd("gw-c", &[]);
    let addr = cluster.addr(0);
    cluster.import_busybox(&addr, IMAGE);
    cluster.apply_ok(
        &addr,
        &format!("name: solo\nimage: {IMAGE}\nsingleton: true\ncommand: [sleep, '100000']\n"),
    );
    // (outage, then time until the next one)
    let rounds = [
        (1_000, 5_000),
        (3_000, 40_000),
        (2_000, 2_000),
        (4_000, 20_000),
        (1_500, 10_000),
        (3_500, 30_000),
    ];
    for (round, (outage, gap)) in rounds.into_iter().enumerate() {
        let (node, copies) = wait_for("one Running copy, by gantry and the kernel", LONG, || {
            let running: Vec<Value> = instances(&cluster, &addr, "solo")?
                .into_iter()
                .filter(|i| i["state"] == "Running")
                .collect();
            let copies = cluster.kernel_copies("solo");
            (running.len() == 1 && copies.len() == 1).then(|| {
                (
                    running[0]["node"].as_str().unwrap_or_default().to_string(),
                    copies,
                )
            })
        });
        assert_eq!(
            copies[0].0, node,
            "round {round}: the kernel runs it where gantry says"
        );
        eprintln!("round {round}: solo runs on {node}; its containerd goes for {outage} ms");
        let tokio = cluster.tokio.handle().clone();
        let containerd = cluster.containerd_of_mut(&node);
        containerd.kill();
        std::thread::sleep(Duration::from_millis(outage));
        tokio
            .block_on(containerd.restart())
            .expect("containerd restarts");
        let until = Instant::now() + Duration::from_millis(gap);
        while Instant::now() < until {
            assert!(
                cluster.kernel_copies("solo").len() <= 1,
                "round {round}: the singleton runs twice"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    wait_for("one Running copy at the end", LONG, || {
        let running = instances(&cluster, &addr, "solo")?
            .into_iter()
            .filter(|i| i["state"] == "Running")
            .count();
        (running == 1 && cluster.kernel_copies("solo").len() == 1).then_some(())
    });
}
