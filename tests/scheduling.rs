//! End-to-end placement through the CLI: gateways with different labels
//! and capacities; selectors, resource requests and spread land where they
//! must; an impossible workload stays unplaced and `describe` says why.

mod support;

use serde_json::Value;
use support::{wait_for, TestCluster, DEADLINE};

fn placements(cluster: &TestCluster, addr: &str, workload: &str) -> Option<Vec<Value>> {
    let instances = cluster.try_json(addr, &["get", "instances"])?;
    let mut mine: Vec<Value> = instances
        .as_array()?
        .iter()
        .filter(|i| i["workload"] == workload)
        .cloned()
        .collect();
    mine.sort_by_key(|i| i["replica"].as_u64());
    Some(mine)
}

fn nodes_of(instances: &[Value]) -> Vec<String> {
    instances
        .iter()
        .map(|i| i["node"].as_str().unwrap_or("-").to_string())
        .collect()
}

#[test]
fn workloads_land_where_their_constraints_say_and_refusals_are_explained() {
    let mut cluster = TestCluster::new();
    cluster.init(
        "gw-a",
        &[
            "--labels",
            "zigbee=true",
            "--capacity",
            "cpu=1,memory=512Mi",
        ],
    );
    cluster.join("gw-b", &["--capacity", "cpu=2,memory=1Gi"]);
    cluster.join(
        "gw-c",
        &[
            "--capacity",
            "cpu=500m,memory=256Mi",
            "--devices",
            "/dev/ttyUSB0",
        ],
    );
    let addr = cluster.addr(1);
    let manifest = r#"
name: zigbee-bridge
image: 127.0.0.1:5000/gantry/bridge:1
node_selector: {zigbee: "true"}
---
name: modbus
image: 127.0.0.1:5000/gantry/modbus:1
devices: [/dev/ttyUSB0]
---
name: telemetry
image: 127.0.0.1:5000/gantry/telemetry:1
replicas: 3
spread: node
resources: {cpu: 100m, memory: 32Mi}
---
name: historian
image: 127.0.0.1:5000/gantry/historian:1
resources: {memory: 768Mi}
---
name: impossible
image: 127.0.0.1:5000/gantry/huge:1
resources: {memory: 4Gi}
node_selector: {zigbee: "true"}
"#;
    let out = cluster.apply(&addr, manifest);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let bridge = wait_for("the bridge placed", DEADLINE, || {
        placements(&cluster, &addr, "zigbee-bridge")
            .filter(|p| p.len() == 1 && p[0]["node"].is_string())
    });
    assert_eq!(nodes_of(&bridge), vec!["gw-a"]);
    let modbus = wait_for("modbus placed", DEADLINE, || {
        placements(&cluster, &addr, "modbus").filter(|p| p[0]["node"].is_string())
    });
    assert_eq!(nodes_of(&modbus), vec!["gw-c"]);
    let historian = wait_for("historian placed", DEADLINE, || {
        placements(&cluster, &addr, "historian").filter(|p| p[0]["node"].is_string())
    });
    assert_eq!(nodes_of(&historian), vec!["gw-b"], "only gw-b has 768Mi");
    let telemetry = wait_for("telemetry placed", DEADLINE, || {
        placements(&cluster, &addr, "telemetry")
            .filter(|p| p.len() == 3 && p.iter().all(|i| i["node"].is_string()))
    });
    let mut spread = nodes_of(&telemetry);
    spread.sort();
    assert_eq!(
        spread,
        vec!["gw-a", "gw-b", "gw-c"],
        "spread: node puts one replica on each gateway"
    );

    // The impossible one stays unplaced, and says why in words.
    let impossible = wait_for("a reason for the impossible workload", DEADLINE, || {
        placements(&cluster, &addr, "impossible").filter(|p| p[0]["reason"].is_string())
    });
    assert!(impossible[0]["node"].is_null());
    let reason = impossible[0]["reason"].as_str().unwrap();
    assert!(reason.starts_with("0/3 gateways fit"), "{reason}");
    assert!(reason.contains("lack label zigbee=true"), "{reason}");
    assert!(reason.contains("too little memory (needs 4Gi"), "{reason}");
    let describe = cluster.cli(&addr, &["describe", "workload", "impossible"]);
    let text = String::from_utf8_lossy(&describe.stdout);
    assert!(text.contains("0/3 gateways fit"), "{text}");
    let json = cluster.json(&addr, &["describe", "workload", "impossible"]);
    assert_eq!(json["workload"]["name"], "impossible");

    // Scale down removes the highest replicas first.
    let out = cluster.apply(
        &addr,
        "name: telemetry\nimage: 127.0.0.1:5000/gantry/telemetry:1\nreplicas: 1\nspread: node\nresources: {cpu: 100m, memory: 32Mi}\n",
    );
    assert!(out.status.success());
    let left = wait_for("one telemetry replica", DEADLINE, || {
        placements(&cluster, &addr, "telemetry").filter(|p| p.len() == 1)
    });
    assert_eq!(left[0]["replica"], 0);
    assert_eq!(
        left[0]["node"], telemetry[0]["node"],
        "the kept replica did not move"
    );

    // Delete removes every instance.
    assert!(cluster
        .cli(&addr, &["delete", "workload", "telemetry"])
        .status
        .success());
    wait_for("no telemetry instance", DEADLINE, || {
        placements(&cluster, &addr, "telemetry").filter(|p| p.is_empty())
    });
    let table = cluster.cli(&addr, &["get", "instances"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.starts_with("WORKLOAD"), "{text}");
}
