//! End-to-end tests of healing: cordon and drain, voter replacement, no
//! rescheduling on a mere leader change, and cluster settings. Real
//! `gantry` processes on loopback; no containers (instances stay Pending),
//! so these assert placement, membership and events.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use support::{node, wait_for, TestCluster, DEADLINE};

fn three(extra_init: &[&str]) -> TestCluster {
    let mut cluster = TestCluster::new();
    let mut init = vec!["--labels", "slot=gw-a"];
    init.extend_from_slice(extra_init);
    cluster.init("gw-a", &init);
    cluster.join("gw-b", &["--labels", "slot=gw-b"]);
    cluster.join("gw-c", &["--labels", "slot=gw-c"]);
    let addr = cluster.addr(0);
    wait_for("3 Ready voters", DEADLINE, || {
        let status = cluster.try_json(&addr, &["status"])?;
        let nodes = status["nodes"].as_array()?;
        let ok = nodes.len() == 3
            && nodes
                .iter()
                .all(|n| n["status"] == "Ready" && n["role"] == "voter");
        ok.then_some(())
    });
    cluster
}

/// instance ("web/0") -> gateway name, for the instances placed.
fn placement(cluster: &TestCluster, addr: &str) -> Option<BTreeMap<String, String>> {
    let instances = cluster.try_json(addr, &["get", "instances"])?;
    Some(
        instances
            .as_array()?
            .iter()
            .filter_map(|i| {
                let node = i["node"].as_str()?;
                Some((
                    format!("{}/{}", i["workload"].as_str()?, i["replica"]),
                    node.to_string(),
                ))
            })
            .collect(),
    )
}

/// Waits until all `count` instances of `prefix` are placed.
fn placed(
    cluster: &TestCluster,
    addr: &str,
    prefix: &str,
    count: usize,
) -> BTreeMap<String, String> {
    wait_for(
        &format!("{count} {prefix} instances placed"),
        DEADLINE,
        || {
            let map = placement(cluster, addr)?;
            let mine: BTreeMap<String, String> = map
                .into_iter()
                .filter(|(k, _)| k.starts_with(&format!("{prefix}/")))
                .collect();
            (mine.len() == count).then_some(mine)
        },
    )
}

fn run_ok(cluster: &TestCluster, addr: &str, args: &[&str]) -> String {
    let out = cluster.cli(addr, args);
    assert!(
        out.status.success(),
        "gantry {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn events(cluster: &TestCluster, addr: &str) -> Vec<Value> {
    cluster
        .json(addr, &["events"])
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn a_cordoned_gateway_gets_nothing_new_until_uncordoned() {
    let cluster = three(&[]);
    let addr = cluster.addr(1);
    let out = run_ok(&cluster, &addr, &["cordon", "gw-c"]);
    assert!(out.contains("gw-c cordoned"), "{out}");
    wait_for("gw-c cordoned everywhere", DEADLINE, || {
        let status = cluster.try_json(&cluster.addr(0), &["status"])?;
        (node(&status, "gw-c")["cordoned"] == true).then_some(())
    });
    cluster.apply_ok(
        &addr,
        "name: fresh\nimage: 127.0.0.1:5000/gantry/i\nreplicas: 4\n",
    );
    let map = placed(&cluster, &addr, "fresh", 4);
    assert!(map.values().all(|n| n != "gw-c"), "{map:?}");

    run_ok(&cluster, &addr, &["uncordon", "gw-c"]);
    cluster.apply_ok(
        &addr,
        "name: wide\nimage: 127.0.0.1:5000/gantry/i\nreplicas: 3\nspread: node\n",
    );
    let map = placed(&cluster, &addr, "wide", 3);
    assert!(map.values().any(|n| n == "gw-c"), "{map:?}");
    let kinds: Vec<String> = events(&cluster, &addr)
        .iter()
        .map(|e| e["message"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(
        kinds.iter().any(|m| m == "gateway gw-c cordoned"),
        "{kinds:?}"
    );
    assert!(
        kinds.iter().any(|m| m == "gateway gw-c uncordoned"),
        "{kinds:?}"
    );
}

#[test]
fn drain_moves_instances_respecting_spread_and_reports_what_is_stuck() {
    let cluster = three(&[]);
    let addr = cluster.addr(0);
    cluster.apply_ok(
        &addr,
        "name: web\nimage: 127.0.0.1:5000/gantry/i\nreplicas: 2\nspread: node\n",
    );
    let before = placed(&cluster, &addr, "web", 2);
    let drained = before["web/0"].clone();
    let kept = before["web/1"].clone();
    let third = ["gw-a", "gw-b", "gw-c"]
        .into_iter()
        .find(|n| *n != drained && *n != kept)
        .unwrap()
        .to_string();

    let out = run_ok(&cluster, &addr, &["drain", &drained]);
    assert!(out.contains(&format!("moved web/0 to {third}")), "{out}");
    assert!(out.contains(&format!("gateway {drained} drained")), "{out}");
    let after = placed(&cluster, &addr, "web", 2);
    assert_eq!(after["web/0"], third);
    assert_eq!(after["web/1"], kept);
    let described = cluster.json(&addr, &["describe", "node", &drained]);
    assert_eq!(described["instances"], serde_json::json!([]));
    assert_eq!(described["node"]["cordoned"], true);
    let messages: Vec<&str> = described["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["message"].as_str())
        .collect();
    assert!(
        messages.contains(
            &format!(
                "instance web/0 rescheduled from {drained} to {third} (gateway {drained} draining)"
            )
            .as_str()
        ),
        "{messages:?}"
    );
    // describe workload keeps showing the move.
    let workload = cluster.json(&addr, &["describe", "workload", "web"]);
    assert!(workload["events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["message"].as_str().unwrap_or("").contains("rescheduled")));

    // One replica on every gateway: the one on `kept` has no other home.
    run_ok(&cluster, &addr, &["uncordon", &drained]);
    cluster.apply_ok(
        &addr,
        "name: pin\nimage: 127.0.0.1:5000/gantry/i\nreplicas: 3\nspread: node\n",
    );
    let pins = placed(&cluster, &addr, "pin", 3);
    let stuck = pins.iter().find(|(_, n)| **n == kept).unwrap().0.clone();
    let out = cluster.cli(&addr, &["drain", &kept, "--timeout", "3s"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains(&format!("waiting: {stuck} has no other home: ")),
        "{stdout}"
    );
    assert!(
        stderr.contains("not finished") && stderr.contains(&stuck),
        "{stderr}"
    );
    // It stays where it is, and the gateway shows as Draining.
    let status = cluster.json(&addr, &["status"]);
    assert_eq!(node(&status, &kept)["status"], "Draining");
    assert_eq!(placed(&cluster, &addr, "pin", 3)[&stuck], kept);
}

#[test]
fn a_lost_voter_is_replaced_by_a_ready_learner() {
    let mut cluster = TestCluster::new();
    cluster.init("gw-1", &["--voter-replace-after", "2s"]);
    for name in ["gw-2", "gw-3", "gw-4", "gw-5", "gw-6"] {
        cluster.join(name, &[]);
    }
    let addr = cluster.addr(0);
    let status = wait_for("5 voters and 1 learner", DEADLINE, || {
        let status = cluster.try_json(&addr, &["status"])?;
        let nodes = status["nodes"].as_array()?;
        let voters = nodes.iter().filter(|n| n["role"] == "voter").count();
        let learners = nodes.iter().filter(|n| n["role"] == "learner").count();
        (nodes.len() == 6 && voters == 5 && learners == 1).then_some(status)
    });
    assert_eq!(node(&status, "gw-6")["role"], "learner");
    let leader = cluster.status_with_leader()["leader"]
        .as_str()
        .unwrap()
        .to_string();
    let victim = ["gw-2", "gw-3", "gw-4", "gw-5", "gw-1"]
        .into_iter()
        .find(|n| *n != leader && node(&status, n)["role"] == "voter")
        .unwrap();
    let index = cluster.index_of(victim);
    cluster.gateways[index].kill();
    let survivor = cluster.addr(cluster.index_of(&leader));
    wait_for(
        "the learner promoted and the lost voter demoted",
        DEADLINE,
        || {
            let status = cluster.try_json(&survivor, &["status"])?;
            (node(&status, "gw-6")["role"] == "voter" && node(&status, victim)["role"] != "voter")
                .then_some(())
        },
    );
    let wanted = format!("voter {victim} replaced by gw-6");
    wait_for("the replacement event", DEADLINE, || {
        events(&cluster, &survivor)
            .iter()
            .any(|e| e["message"] == wanted.as_str() && e["kind"] == "voter-replaced")
            .then_some(())
    });
    let status = cluster.json(&survivor, &["status"]);
    assert_eq!(status["voters"], 5, "{status}");
}

#[test]
fn a_leader_change_moves_no_instance() {
    let mut cluster = three(&[]);
    let leader = cluster.status_with_leader()["leader"]
        .as_str()
        .unwrap()
        .to_string();
    let followers: Vec<&str> = ["gw-a", "gw-b", "gw-c"]
        .into_iter()
        .filter(|n| *n != leader)
        .collect();
    let addr = cluster.addr(cluster.index_of(followers[0]));
    // Everything lives on the followers, except `patient`, which may sit on
    // the leader but waits an hour before it moves anywhere.
    cluster.apply_ok(&addr,
        &format!(
            "name: one\nimage: 127.0.0.1:5000/gantry/i\nreplicas: 2\nnode_selector: {{slot: {}}}\n---\nname: two\nimage: 127.0.0.1:5000/gantry/i\nnode_selector: {{slot: {}}}\n---\nname: patient\nimage: 127.0.0.1:5000/gantry/i\nreplicas: 3\nspread: node\non_disconnect: {{reschedule_after: 1h}}\n",
            followers[0], followers[1]
        ),
    );
    let before = wait_for("6 instances placed", DEADLINE, || {
        let map = placement(&cluster, &addr)?;
        (map.len() == 6).then_some(map)
    });
    let victim = cluster.index_of(&leader);
    cluster.gateways[victim].kill();
    wait_for(
        "a new leader that sees the old one NotReady",
        DEADLINE,
        || {
            let status = cluster.try_json(&addr, &["status"])?;
            let new = status["leader"].as_str()?;
            (new != leader && node(&status, &leader)["status"] == "NotReady").then_some(())
        },
    );
    // A few grace periods (and the new leader's settling window) later,
    // nothing has moved.
    std::thread::sleep(Duration::from_secs(5));
    let after = placement(&cluster, &addr).expect("instances");
    assert_eq!(before, after);
    let moved: Vec<Value> = events(&cluster, &addr)
        .into_iter()
        .filter(|e| e["kind"] == "instance-rescheduled")
        .collect();
    assert!(moved.is_empty(), "{moved:?}");
}

#[test]
fn settings_change_cluster_wide_and_bad_values_change_nothing() {
    let mut cluster = TestCluster::new();
    cluster.init("gw-a", &[]);
    cluster.join("gw-b", &[]);
    // A third voter, so that losing one keeps a quorum.
    cluster.join("gw-c", &[]);
    let (a, b) = (cluster.addr(0), cluster.addr(1));
    let settings = cluster.json(&a, &["settings", "get"]);
    assert_eq!(settings["node_grace"], "1s");
    assert_eq!(settings["voter_replace_after"], "30s");

    run_ok(
        &cluster,
        &b,
        &["settings", "set", "node-grace=3s,voter-replace-after=1m"],
    );
    wait_for("the new settings on every gateway", DEADLINE, || {
        [&a, &b]
            .iter()
            .all(|addr| {
                cluster
                    .try_json(addr, &["settings", "get"])
                    .is_some_and(|s| s["node_grace"] == "3s" && s["voter_replace_after"] == "1m")
            })
            .then_some(())
    });

    for (bad, key) in [
        ("node-grace=100ms", "node-grace"),
        ("heartbeat-interval=abc,node-grace=5s", "heartbeat-interval"),
        ("bogus=1s", "bogus"),
        ("voter-replace-after=1s", "voter-replace-after"),
    ] {
        let out = cluster.cli(&a, &["settings", "set", bad]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bad} was accepted");
        assert!(stderr.contains(key), "{bad}: {stderr}");
    }
    let settings = cluster.json(&a, &["settings", "get"]);
    assert_eq!(settings["node_grace"], "3s");
    assert_eq!(settings["heartbeat_interval"], "300ms");

    // The new grace is what the leader applies.
    let leader = cluster.status_with_leader()["leader"]
        .as_str()
        .unwrap()
        .to_string();
    let other = if leader == "gw-a" { "gw-b" } else { "gw-a" };
    let survivor = cluster.addr(cluster.index_of(&leader));
    let index = cluster.index_of(other);
    cluster.gateways[index].kill();
    let status = wait_for("the killed gateway NotReady", DEADLINE, || {
        let status = cluster.try_json(&survivor, &["status"])?;
        (node(&status, other)["status"] == "NotReady").then_some(status)
    });
    assert_eq!(node(&status, other)["status_reason"], "no heartbeat for 3s");
    let messages: Vec<String> = events(&cluster, &survivor)
        .iter()
        .map(|e| e["message"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(
        messages
            .iter()
            .any(|m| m == "settings changed: node-grace 1s -> 3s, voter-replace-after 30s -> 1m"),
        "{messages:?}"
    );
}
