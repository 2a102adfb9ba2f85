//! Manifests people already have, end to end: the example Compose file and
//! Kubernetes documents applied to a 3-gateway cluster run real busybox
//! containers with the replicas, environment and commands they say;
//! `gantry convert` prints what applies as the same workloads; a file with
//! anything gantry cannot honour is refused whole, naming the field.

mod support;

use std::io::Write;
use std::process::{Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::{gantry, wait_for, TestCluster};

const IMAGE: &str = "127.0.0.1:5000/gantry/busybox:test";
const LONG: Duration = Duration::from_secs(120);

/// An example file of `examples/workloads/`, naming the test image.
fn example(file: &str) -> String {
    let path = format!("{}/examples/workloads/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("the example file");
    assert!(
        text.contains("127.0.0.1:5000/gantry/busybox:demo"),
        "{file}"
    );
    text.replace("127.0.0.1:5000/gantry/busybox:demo", IMAGE)
}

/// `gantry convert -f -` with `text` on standard input; no server given.
fn convert(text: &str) -> Output {
    let mut child = gantry()
        .args(["convert", "-f", "-"])
        .env("GANTRY_SERVER", "127.0.0.1:1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run gantry convert");
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(text.as_bytes()).expect("write stdin");
    }
    child.wait_with_output().expect("gantry convert")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
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

fn wait_running(cluster: &TestCluster, addr: &str, workload: &str, replicas: usize) {
    wait_for(
        &format!("{replicas} running replicas of {workload}"),
        LONG,
        || {
            let mine = instances(cluster, addr, workload)?;
            (mine.len() == replicas && mine.iter().all(|i| i["state"] == "Running")).then_some(())
        },
    );
}

fn wait_log(cluster: &TestCluster, addr: &str, workload: &str, line: &str) {
    wait_for(&format!("`{line}` in {workload}'s log"), LONG, || {
        let out = cluster.cli(addr, &["logs", workload]);
        String::from_utf8_lossy(&out.stdout)
            .contains(line)
            .then_some(())
    });
}

/// Names and generations of the cluster's workloads.
fn workloads(cluster: &TestCluster, addr: &str) -> Vec<(String, u64)> {
    let list = cluster.json(addr, &["get", "workloads"]);
    let mut out: Vec<(String, u64)> = list
        .as_array()
        .expect("a list")
        .iter()
        .map(|w| {
            (
                w["name"].as_str().unwrap_or("").to_string(),
                w["generation"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn compose_and_kubernetes_files_run_convert_and_refuse() {
    let mut cluster = TestCluster::new();
    cluster.init("gw-a", &[]);
    cluster.join("gw-b", &[]);
    cluster.join("gw-c", &[]);
    let addr = cluster.addr(0);
    cluster.import_busybox(&addr, IMAGE);

    let compose = example("compose.yaml");
    let kubernetes = example("deployment.yaml");
    for text in [&compose, &kubernetes] {
        let out = cluster.apply(&addr, text);
        assert!(out.status.success(), "apply: {}", stderr(&out));
    }
    wait_running(&cluster, &addr, "greeter", 1);
    wait_running(&cluster, &addr, "counter", 2);
    wait_running(&cluster, &addr, "sensor-reader", 3);
    // `max_replicas_per_node: 1` became spread: node.
    let counters = instances(&cluster, &addr, "counter").unwrap_or_default();
    assert_ne!(counters[0]["node"], counters[1]["node"], "{counters:?}");
    // The Pod's OnFailure: it ran once, succeeded and stays exited.
    wait_for("calibrate exited 0", LONG, || {
        let mine = instances(&cluster, &addr, "calibrate")?;
        (mine.len() == 1 && mine[0]["state"] == "Exited" && mine[0]["exit_code"] == 0).then_some(())
    });
    // Command, args and environment arrived as written.
    wait_log(&cluster, &addr, "sensor-reader", "reader at hall-3: ok");
    wait_log(&cluster, &addr, "counter", "counter tick");
    wait_log(&cluster, &addr, "calibrate", "calibrated");
    let greeter = cluster.json(&addr, &["describe", "workload", "greeter"]);
    let text = greeter.to_string();
    assert!(text.contains("hello from compose"), "{text}");

    // What convert prints applies as the very same workloads.
    let before = workloads(&cluster, &addr);
    for text in [&compose, &kubernetes] {
        let out = convert(text);
        assert!(out.status.success(), "convert: {}", stderr(&out));
        let converted = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(!converted.contains("services:"), "{converted}");
        let path = cluster.tmp.path().join("converted.yaml");
        std::fs::write(&path, &converted).expect("write");
        let applied = cluster.json(&addr, &["apply", "-f", path.to_str().expect("utf-8 path")]);
        for workload in applied["applied"].as_array().expect("applied") {
            assert_eq!(workload["change"], "unchanged", "{applied}\n{converted}");
        }
    }
    assert_eq!(workloads(&cluster, &addr), before);

    // Refused whole, naming the field; nothing changes.
    let refusals = [
        (
            format!(
                "services:\n  fresh:\n    image: {IMAGE}\n  web:\n    image: {IMAGE}\n    depends_on: [db]\n"
            ),
            "field `services.web.depends_on`",
        ),
        (
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: fresh}}\nspec: {{containers: [{{name: a, image: '{IMAGE}'}}]}}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: two}}\nspec:\n  template:\n    spec:\n      containers:\n        - {{name: a, image: '{IMAGE}'}}\n        - {{name: b, image: '{IMAGE}'}}\n"
            ),
            "document 2 (Deployment 'two'): field `spec.template.spec.containers[1]`",
        ),
    ];
    for (text, field) in &refusals {
        let out = cluster.apply(&addr, text);
        assert!(!out.status.success(), "accepted:\n{text}");
        assert!(stderr(&out).contains(field), "{}", stderr(&out));
        let out = convert(text);
        assert!(!out.status.success(), "converted:\n{text}");
        assert!(stderr(&out).contains(field), "{}", stderr(&out));
        assert!(out.stdout.is_empty());
    }
    assert_eq!(workloads(&cluster, &addr), before);
}
