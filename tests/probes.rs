//! Probes end to end, on real containers in a private containerd, with the
//! daemon's default flags (a probe kill of a program that ignores SIGTERM
//! waits out the default 10 s stop grace): a hung container restarted by
//! its liveness probe, a replica that never becomes ready holding back its
//! rollout until the deadline rolls it back, an image's HEALTHCHECK, and a
//! startup probe holding the liveness probe.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{wait_for, TestCluster};

const IMAGE: &str = "127.0.0.1:5000/gantry/busybox:probes";
const LONG: Duration = Duration::from_secs(120);

fn one_gateway() -> TestCluster {
    let mut cluster = TestCluster::new();
    cluster.init("gw-a", &[]);
    cluster
}

fn instance(cluster: &TestCluster, workload: &str) -> Option<Value> {
    let all = cluster.try_json(&cluster.addr(0), &["get", "instances"])?;
    all.as_array()?
        .iter()
        .find(|i| i["workload"] == workload)
        .cloned()
}

fn wait_instance(
    cluster: &TestCluster,
    workload: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    wait_for(&format!("{workload}: {what}"), LONG, || {
        instance(cluster, workload).filter(|i| check(i))
    })
}

fn events(cluster: &TestCluster) -> Vec<Value> {
    cluster
        .try_json(&cluster.addr(0), &["events"])
        .and_then(|e| e.as_array().cloned())
        .unwrap_or_default()
}

/// A port nothing listens on now (bound, then released).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[test]
fn a_hung_container_is_restarted_by_its_liveness_probe_with_the_reason_and_backs_off() {
    let cluster = one_gateway();
    cluster.import_busybox(&cluster.addr(0), IMAGE);
    // Healthy for 3 s, then it hangs ignoring SIGTERM, as a deadlocked
    // bridge would: the process lives, the check fails.
    cluster.apply_ok(&cluster.addr(0), &format!(
            "name: bridge\nimage: {IMAGE}\n\
             command: [sh, -c, \"trap '' TERM; touch /healthy; sleep 3; rm /healthy; while :; do sleep 1; done\"]\n\
             probes:\n  liveness: {{exec: [sh, -c, 'test -f /healthy || {{ echo serial port wedged; exit 1; }}'], period: 1s, failure_threshold: 2}}\n"
        ),
    );
    let first = wait_instance(&cluster, "bridge", "Running", |i| i["state"] == "Running");
    assert_eq!(first["restarts"], 0);
    let restarted = wait_instance(&cluster, "bridge", "restarted by its probe", |i| {
        i["restarts"].as_u64().is_some_and(|r| r >= 1)
    });
    let reason = restarted["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("liveness probe failed: exit code 1: serial port wedged"),
        "{restarted}"
    );
    // It hangs again after each restart: the count goes on, the restarts
    // back off (1 s, then 2 s), and each stop is an event.
    wait_instance(&cluster, "bridge", "restarted twice", |i| {
        i["restarts"].as_u64().is_some_and(|r| r >= 2)
    });
    let log = cluster.gateways[0].log_text();
    assert!(log.contains("delay_ms=1000"), "first restart after 1 s");
    assert!(log.contains("delay_ms=2000"), "second restart after 2 s");
    // The probe waited out the stop grace before SIGKILL: the program
    // ignores SIGTERM.
    assert!(log.contains("grace period over, killing"));
    let probe_events: Vec<Value> = events(&cluster)
        .into_iter()
        .filter(|e| e["kind"] == "probe-restart")
        .collect();
    assert!(probe_events.len() >= 2, "{probe_events:?}");
    assert!(
        probe_events[0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("bridge/0") && m.contains("liveness probe failed")),
        "{probe_events:?}"
    );
    // describe shows the reason beside the restarts.
    let out = cluster.cli(&cluster.addr(0), &["describe", "workload", "bridge"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("liveness probe failed"), "{text}");
}

#[test]
fn a_replica_that_never_becomes_ready_blocks_its_rollout_until_the_deadline_rolls_it_back() {
    let cluster = one_gateway();
    cluster.import_busybox(&cluster.addr(0), IMAGE);
    let port = free_port();
    let manifest = |generation: &str, probe_port: u16| {
        format!(
            "name: web\nimage: {IMAGE}\nprogress_deadline: 20s\nenv: {{GEN: '{generation}'}}\n\
             command: [sh, -c, 'mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 127.0.0.1:{port} -h /www']\n\
             probes:\n  readiness: {{http: {{port: {probe_port}, path: /}}, period: 1s}}\n"
        )
    };
    cluster.apply_ok(&cluster.addr(0), &manifest("one", port));
    let up = wait_instance(&cluster, "web", "Running and ready", |i| {
        i["state"] == "Running" && i["ready"] == true
    });
    assert_eq!(up["generation"], 1);
    let workloads = cluster.json(&cluster.addr(0), &["get", "workloads"]);
    assert_eq!(workloads[0]["ready"], 1, "{workloads}");

    // Generation 2 probes a port nothing serves: Running, never ready.
    let dead = free_port();
    cluster.apply_ok(&cluster.addr(0), &manifest("two", dead));
    // Not ready from its start; the reason comes with the third failure.
    let stuck = wait_instance(&cluster, "web", "generation 2 Running, not ready", |i| {
        i["generation"] == 2
            && i["state"] == "Running"
            && i["ready"] == false
            && !i["reason"].is_null()
    });
    assert!(
        stuck["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("readiness probe failed: GET / on port")),
        "{stuck}"
    );
    let status = cluster.json(
        &cluster.addr(0),
        &["rollout", "status", "web", "--watch=false"],
    );
    assert_eq!(status["complete"], false, "{status}");
    assert_eq!(status["running"], 1);
    assert_eq!(status["ready"], 0);
    let table = cluster.cli(&cluster.addr(0), &["get", "instances"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("READY"), "{text}");

    // The deadline passes: rolled back to generation 1's spec, ready again.
    let out = cluster.cli(
        &cluster.addr(0),
        &["rollout", "status", "web", "--timeout", "2m"],
    );
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a rolled back rollout fails: {said}");
    assert!(said.contains("rolled back"), "{said}");
    assert!(
        said.contains("was not ready 20s after its upgrade"),
        "{said}"
    );
    let back = wait_instance(&cluster, "web", "rolled back and ready", |i| {
        i["generation"].as_u64().is_some_and(|g| g >= 3) && i["ready"] == true
    });
    assert_eq!(back["state"], "Running");
    let described = cluster.json(&cluster.addr(0), &["describe", "workload", "web"]);
    assert_eq!(
        described["workload"]["spec"]["env"]["GEN"], "one",
        "{described}"
    );
}

#[test]
fn an_images_healthcheck_is_the_liveness_probe_and_a_startup_probe_holds_probes_back() {
    let cluster = one_gateway();
    let archive = cluster.tmp.path().join("healthcheck.tar");
    let image = "127.0.0.1:5000/gantry/busybox:healthcheck";
    gantry_node::testing::busybox_oci_archive_with_healthcheck(
        &archive,
        image,
        "test -f /healthy",
        1,
    )
    .expect("busybox archive (install busybox-static)");
    let out = cluster.cli(
        &cluster.addr(0),
        &["image", "import", archive.to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // No probe in the spec: the image's HEALTHCHECK restarts it once
    // /healthy is gone.
    cluster.apply_ok(&cluster.addr(0), &format!(
            "name: checked\nimage: {image}\ncommand: [sh, -c, 'touch /healthy; sleep 2; rm /healthy; exec sleep 100000']\n"
        ),
    );
    let restarted = wait_instance(&cluster, "checked", "restarted by HEALTHCHECK", |i| {
        i["restarts"].as_u64().is_some_and(|r| r >= 1)
    });
    assert!(
        restarted["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("liveness probe failed: exit code 1")),
        "{restarted}"
    );

    // A slow starter: its liveness check fails until it has started (6 s),
    // which would restart it at once; the startup probe holds it back.
    cluster.import_busybox(&cluster.addr(0), IMAGE);
    cluster.apply_ok(&cluster.addr(0), &format!(
            "name: slow\nimage: {IMAGE}\ncommand: [sh, -c, 'sleep 6; touch /started; exec sleep 100000']\n\
             probes:\n  startup: {{exec: [test, -f, /started], period: 1s, failure_threshold: 30}}\n  \
             liveness: {{exec: [test, -f, /started], period: 1s, failure_threshold: 1}}\n  \
             readiness: {{exec: [test, -f, /started], period: 1s}}\n"
        ),
    );
    let ready = wait_instance(&cluster, "slow", "ready", |i| i["ready"] == true);
    assert_eq!(ready["restarts"], 0, "{ready}");
    assert!(ready["reason"].is_null(), "{ready}");
    // And it stays up: liveness passes from then on.
    std::thread::sleep(Duration::from_secs(4));
    let later = instance(&cluster, "slow").unwrap();
    assert_eq!(later["restarts"], 0, "{later}");
    assert_eq!(later["ready"], true, "{later}");
}

#[test]
fn tcp_readiness_follows_a_listener_that_comes_and_goes() {
    let cluster = one_gateway();
    cluster.import_busybox(&cluster.addr(0), IMAGE);
    let port = free_port();
    let serve = || {
        cluster.tokio.spawn(async move {
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
                .await
                .expect("the probed port");
            while listener.accept().await.is_ok() {}
        })
    };
    let server = serve();
    // Eight replicas start at once: each one's first verdict comes while
    // its start is still being reported, and must not be lost.
    cluster.apply_ok(
        &cluster.addr(0),
        &format!(
            "name: mqtt\nimage: {IMAGE}\nreplicas: 8\ncommand: [sleep, '100000']\n\
             probes:\n  readiness: {{tcp: {{port: {port}}}, period: 1s}}\n"
        ),
    );
    let ready_count = |want: bool| {
        let all = cluster.try_json(&cluster.addr(0), &["get", "instances"])?;
        let n = all
            .as_array()?
            .iter()
            .filter(|i| i["workload"] == "mqtt" && i["state"] == "Running" && i["ready"] == want)
            .count();
        Some(n)
    };
    wait_for("eight ready replicas", LONG, || {
        (ready_count(true)? == 8).then_some(())
    });
    // The broker goes: all unready, with the reason, nothing restarted.
    server.abort();
    wait_for("eight unready replicas", LONG, || {
        (ready_count(false)? == 8).then_some(())
    });
    let one = instance(&cluster, "mqtt").unwrap();
    assert!(
        one["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with(&format!("readiness probe failed: tcp port {port}"))),
        "{one}"
    );
    assert_eq!(one["restarts"], 0);
    assert!(events(&cluster).iter().any(|e| e["kind"] == "not-ready"));
    // And comes back.
    let _server = serve();
    wait_for("ready again", LONG, || {
        (ready_count(true)? == 8).then_some(())
    });
}
