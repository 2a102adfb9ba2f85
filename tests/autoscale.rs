//! Autoscaling end to end: busybox replicas that burn CPU (each held to its
//! 100m request by its cgroup) scale a workload up to what the gateway can
//! place, the capped scale-up is said once, and when the load stops the
//! workload shrinks back to its floor after `scale_down_after`. Usage comes
//! from the containers' real cgroups through the heartbeats.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{wait_for, TestCluster};

const IMAGE: &str = "127.0.0.1:5000/gantry/busybox:autoscale";

fn workload(cluster: &TestCluster, name: &str) -> Option<Value> {
    let all = cluster.try_json(&cluster.addr(0), &["get", "workloads"])?;
    all.as_array()?.iter().find(|w| w["name"] == name).cloned()
}

fn events_of(cluster: &TestCluster, kind: &str) -> Vec<String> {
    cluster
        .try_json(&cluster.addr(0), &["events"])
        .and_then(|e| e.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter(|e| e["kind"] == kind)
        .map(|e| e["message"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn a_cpu_burner_scales_up_to_what_fits_and_back_down_when_the_load_stops() {
    let mut cluster = TestCluster::new();
    // Room for four replicas of 100m.
    cluster.init("gw-a", &["--capacity", "cpu=400m,memory=1Gi"]);
    let addr = cluster.addr(0);
    cluster.import_busybox(&addr, IMAGE);
    let control = cluster.tmp.path().join("control");
    std::fs::create_dir_all(&control).unwrap();
    let manifest = format!(
        "name: burner\nimage: {IMAGE}\nresources: {{cpu: 100m, memory: 32Mi}}\n\
         mounts: [{{source: {}, target: /ctl, read_only: true}}]\n\
         command: [sh, -c, 'while [ ! -f /ctl/stop ]; do :; done; exec sleep 100000']\n\
         autoscale: {{min: 1, max: 6, cpu_target: 50%, scale_down_after: 30s}}\n",
        control.display()
    );
    let out = cluster.apply(&addr, &manifest);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first = wait_for("replica 0 Running", Duration::from_secs(60), || {
        let all = cluster.try_json(&addr, &["get", "instances"])?;
        all.as_array()?
            .iter()
            .find(|i| i["workload"] == "burner" && i["state"] == "Running")
            .cloned()
    });
    let first_container = first["container_id"].clone();

    // Up, a doubling at a time, to the four that fit; not beyond.
    let grown = wait_for("four replicas Running", Duration::from_secs(240), || {
        let w = workload(&cluster, "burner")?;
        (w["replicas"] == 4 && w["running"] == 4).then_some(w)
    });
    assert_eq!(grown["placed"], 4, "{grown}");
    let scaled = events_of(&cluster, "scaled");
    assert!(
        scaled
            .iter()
            .any(|m| m.starts_with("scaled burner from 1 to 2: cpu ") && m.contains("% of request")),
        "{scaled:?}"
    );
    let held = wait_for("the cap said", Duration::from_secs(60), || {
        let held = events_of(&cluster, "scale-held");
        (!held.is_empty()).then_some(held)
    });
    assert!(
        held[0].contains("held at 4") && held[0].contains("only 4 fit"),
        "{held:?}"
    );
    // describe shows the reading and the last decision.
    let out = cluster.cli(&addr, &["describe", "workload", "burner"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Autoscale:   1 to 6 replicas, target cpu 50%"),
        "{text}"
    );
    assert!(text.contains("  Usage:     cpu "), "{text}");
    assert!(text.contains("  Last:      "), "{text}");
    // Said once, not in a loop, and still four.
    std::thread::sleep(Duration::from_secs(20));
    assert_eq!(events_of(&cluster, "scale-held").len(), 1);
    let still = workload(&cluster, "burner").unwrap();
    assert_eq!(still["replicas"], 4, "{still}");
    let instances = cluster.json(&addr, &["get", "instances"]);
    let count = instances
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["workload"] == "burner")
        .count();
    assert_eq!(count, 4, "no unplaceable fifth replica");

    // The load stops: after the 30 s window, back to the floor.
    std::fs::write(control.join("stop"), b"").unwrap();
    wait_for("back to one replica", Duration::from_secs(180), || {
        let w = workload(&cluster, "burner")?;
        (w["replicas"] == 1).then_some(())
    });
    let down = events_of(&cluster, "scaled");
    assert!(
        down.iter()
            .any(|m| m.starts_with("scaled burner from 4 to 1")),
        "{down:?}"
    );
    // Scaling replaced nothing: replica 0 is the container it always was.
    let instances = cluster.json(&addr, &["get", "instances"]);
    let zero = instances
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["workload"] == "burner" && i["replica"] == 0)
        .cloned()
        .unwrap();
    assert_eq!(zero["container_id"], first_container);
    assert_eq!(zero["restarts"], 0);
}
