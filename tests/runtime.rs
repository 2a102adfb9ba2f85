//! End-to-end tests of gateways running real containers: a private
//! containerd shared by the gateways (a namespace each), a busybox OCI
//! archive built in the test, `gantry image import`, apply, logs, restarts,
//! replacement, adoption after a gateway restart and a containerd restart.

mod support;

use std::time::Duration;

use gantry_node::testing::busybox_oci_archive;
use gantry_node::{ContainerdConfig, ContainerdRuntime, Runtime};
use serde_json::Value;
use support::{wait_for, TestCluster};

const IMAGE: &str = "127.0.0.1:5000/gantry/busybox:test";
const LONG: Duration = Duration::from_secs(90);

/// The gateways share the test cluster's private containerd.
struct Site {
    cluster: TestCluster,
    archive: std::path::PathBuf,
}

fn site(gateways: &[&str]) -> Site {
    let mut cluster = TestCluster::new();
    let archive = cluster.tmp.path().join("busybox.tar");
    busybox_oci_archive(&archive, IMAGE).expect("busybox archive (install busybox-static)");
    for (i, name) in gateways.iter().enumerate() {
        if i == 0 {
            cluster.init(name, &[]);
        } else {
            cluster.join(name, &[]);
        }
    }
    Site { cluster, archive }
}

impl Site {
    fn addr(&self, i: usize) -> String {
        self.cluster.addr(i)
    }

    fn runtime(&self, namespace: &str) -> ContainerdRuntime {
        let mut config = ContainerdConfig::new(self.cluster.tmp.path().join("unused-logs"));
        config.socket = self.cluster.containerd.socket();
        config.namespace = self.cluster.namespace_of(namespace);
        // The channel is made lazily and needs a reactor.
        let _entered = self.cluster.tokio.enter();
        ContainerdRuntime::new(config).unwrap()
    }

    /// (container id, pid) of the workload's running containers in `namespace`.
    fn containers(&self, namespace: &str, workload: &str) -> Vec<(String, Option<u32>)> {
        let rt = self.runtime(namespace);
        let list = self.cluster.tokio.block_on(rt.list()).unwrap_or_default();
        list.into_iter()
            .filter(|c| c.workload == workload)
            .map(|c| (c.id, c.pid))
            .collect()
    }

    fn import_all(&self) {
        let out = self.cluster.cli(
            &self.addr(0),
            &[
                "image",
                "import",
                self.archive.to_str().unwrap(),
                "--all",
                "-o",
                "json",
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let result: Value = serde_json::from_slice(&out.stdout).unwrap();
        for gateway in result["gateways"].as_array().unwrap() {
            assert!(gateway["error"].is_null(), "{gateway}");
            assert_eq!(gateway["images"][0]["name"], IMAGE);
        }
    }

    fn instance(&self, addr: &str, workload: &str, replica: u64) -> Option<Value> {
        let all = self.cluster.try_json(addr, &["get", "instances"])?;
        all.as_array()?
            .iter()
            .find(|i| i["workload"] == workload && i["replica"] == replica)
            .cloned()
    }

    fn wait_instance(&self, workload: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let addr = self.addr(0);
        wait_for(&format!("{workload}: {what}"), LONG, || {
            self.instance(&addr, workload, 0).filter(|i| check(i))
        })
    }

    fn apply(&self, manifest: &str) {
        let out = self.cluster.apply(&self.addr(0), manifest);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn running(i: &Value) -> bool {
    i["state"] == "Running"
}

#[test]
fn containers_run_log_exit_and_restart() {
    let site = site(&["gw-a", "gw-b"]);
    site.import_all();
    site.apply(&format!(
        "name: hello\nimage: {IMAGE}\ncommand: [sh, -c, 'echo hello-from-gantry; exec sleep 100000']\n"
    ));
    let hello = site.wait_instance("hello", "Running", running);
    let node = hello["node"].as_str().unwrap().to_string();
    assert_eq!(site.containers(&node, "hello").len(), 1);

    // Logs come from the gateway that runs it, whichever gateway is asked.
    for i in 0..2 {
        let addr = site.addr(i);
        let text = wait_for("the log line", LONG, || {
            let out = site.cluster.cli(&addr, &["logs", "hello"]);
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            text.contains("hello-from-gantry").then_some(text)
        });
        assert!(text.contains("hello-from-gantry"));
    }

    // An exit code is reported; `restart: never` leaves it exited.
    site.apply(&format!(
        "name: exiter\nimage: {IMAGE}\nrestart: never\ncommand: [sh, -c, 'exit 3']\n"
    ));
    let exited = site.wait_instance("exiter", "Exited(3)", |i| i["state"] == "Exited");
    assert_eq!(exited["exit_code"], 3);
    assert_eq!(exited["restarts"], 0);

    // Killed from outside: `restart: always` brings it back, counted.
    let (_, pid) = site.containers(&node, "hello")[0].clone();
    let pid = pid.expect("a running task has a pid");
    let killed = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let back = site.wait_instance("hello", "restarted", |i| {
        running(i) && i["restarts"].as_u64() >= Some(1)
    });
    assert_eq!(back["node"], node.as_str());
    let (_, new_pid) = site.containers(&node, "hello")[0].clone();
    assert_ne!(new_pid, Some(pid));
}

#[test]
fn new_generations_replace_and_delete_removes() {
    let site = site(&["gw-a", "gw-b"]);
    site.import_all();
    let manifest = |v: &str| {
        format!("name: svc\nimage: {IMAGE}\nenv: {{VERSION: '{v}'}}\ncommand: [sleep, '100000']\n")
    };
    site.apply(&manifest("1"));
    let first = site.wait_instance("svc", "Running", running);
    let node = first["node"].as_str().unwrap().to_string();
    assert_eq!(first["container_id"], "svc-0-g1");

    site.apply(&manifest("2"));
    let second = site.wait_instance("svc", "generation 2 Running", |i| {
        running(i) && i["generation"] == 2
    });
    let now_on = second["node"].as_str().unwrap().to_string();
    wait_for("only the new generation's container", LONG, || {
        let ids: Vec<String> = site
            .containers(&now_on, "svc")
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        (ids == vec!["svc-0-g2".to_string()]).then_some(())
    });
    assert!(node == now_on || site.containers(&node, "svc").is_empty());

    let out = site
        .cluster
        .cli(&site.addr(1), &["delete", "workload", "svc"]);
    assert!(out.status.success());
    wait_for("the container removed", LONG, || {
        site.containers(&now_on, "svc").is_empty().then_some(())
    });
}

#[test]
fn a_restarted_gateway_adopts_its_containers_without_restarting_them() {
    let mut site = site(&["gw-a", "gw-b"]);
    site.import_all();
    site.apply(&format!(
        "name: keep\nimage: {IMAGE}\ncommand: [sleep, '100000']\n"
    ));
    let before = site.wait_instance("keep", "Running", running);
    let node = before["node"].as_str().unwrap().to_string();
    let (id, pid) = site.containers(&node, "keep")[0].clone();

    // kill -9 the gateway (its agent); the container lives on.
    let index = site.cluster.index_of(&node);
    site.cluster.gateways[index].kill();
    assert_eq!(site.containers(&node, "keep"), vec![(id.clone(), pid)]);
    site.cluster.gateways[index].restart();
    let addr = site.addr(index);
    wait_for("the gateway back", LONG, || {
        let status = site.cluster.try_json(&addr, &["status"])?;
        (support::node(&status, &node)["status"] == "Ready").then_some(())
    });
    let after = site.wait_instance("keep", "Running", running);
    assert_eq!(after["restarts"], 0);
    assert_eq!(
        site.containers(&node, "keep"),
        vec![(id, pid)],
        "same container, same pid"
    );
}

#[test]
fn containerd_restart_is_survived_without_restarting_containers() {
    let mut site = site(&["gw-a"]);
    site.import_all();
    site.apply(&format!(
        "name: steady\nimage: {IMAGE}\ncommand: [sleep, '100000']\n"
    ));
    site.wait_instance("steady", "Running", running);
    let before = site.containers("gw-a", "steady");

    site.cluster.containerd.kill();
    let addr = site.addr(0);
    let status = wait_for("NotReady with the runtime's reason", LONG, || {
        let status = site.cluster.try_json(&addr, &["status"])?;
        let me = support::node(&status, "gw-a").clone();
        (me["status"] == "NotReady").then_some(me)
    });
    assert!(
        status["status_reason"]
            .as_str()
            .unwrap()
            .contains("container runtime unavailable"),
        "{status}"
    );

    site.cluster
        .tokio
        .block_on(site.cluster.containerd.restart())
        .unwrap();
    wait_for("Ready again", LONG, || {
        let status = site.cluster.try_json(&addr, &["status"])?;
        (support::node(&status, "gw-a")["status"] == "Ready").then_some(())
    });
    let after = site.wait_instance("steady", "Running", running);
    assert_eq!(after["restarts"], 0);
    assert_eq!(
        site.containers("gw-a", "steady"),
        before,
        "adopted: same container, same pid"
    );
}

#[test]
fn absent_images_and_broken_archives_are_reported() {
    let site = site(&["gw-a"]);
    site.apply("name: ghost\nimage: 127.0.0.1:5000/gantry/absent:1\n");
    let failed = site.wait_instance("ghost", "Failed", |i| i["state"] == "Failed");
    assert!(
        failed["reason"]
            .as_str()
            .unwrap()
            .contains("127.0.0.1:5000/gantry/absent:1"),
        "{failed}"
    );

    // A truncated archive is refused with a reason, and nothing is imported.
    let bytes = std::fs::read(&site.archive).unwrap();
    let truncated = site.archive.with_file_name("truncated.tar");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let out = site.cluster.cli(
        &site.addr(0),
        &["image", "import", truncated.to_str().unwrap()],
    );
    assert!(!out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).trim().is_empty());
    let out = site
        .cluster
        .cli(&site.addr(0), &["image", "import", "/nonexistent.tar"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));

    // Nothing of the broken archive can run: the image is still absent.
    site.apply(&format!(
        "name: probe\nimage: {IMAGE}\ncommand: [sleep, '100000']\n"
    ));
    let probe = site.wait_instance("probe", "Failed", |i| i["state"] == "Failed");
    assert!(probe["reason"].as_str().unwrap().contains(IMAGE));
    // Importing the good archive lets it start (the agent retries).
    let out = site.cluster.cli(
        &site.addr(0),
        &["image", "import", site.archive.to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    site.wait_instance("probe", "Running after import", running);
}

/// A loopback registry holding the busybox image as `repo_tag`, with the
/// runtime it runs on, its directory and the archive pushed.
fn registry_with_busybox(
    repo_tag: &str,
) -> (
    tokio::runtime::Runtime,
    tempfile::TempDir,
    gantry_node::testing::LoopbackRegistry,
    std::path::PathBuf,
) {
    let tokio = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::Builder::new()
        .prefix("gr")
        .tempdir_in("/tmp")
        .unwrap();
    let mut registry = tokio
        .block_on(gantry_node::testing::LoopbackRegistry::start(
            dir.path().join("registry"),
        ))
        .expect("a loopback registry (install docker-registry and skopeo)");
    let archive = dir.path().join("busybox.tar");
    busybox_oci_archive(&archive, IMAGE).unwrap();
    tokio
        .block_on(registry.push_archive(&archive, repo_tag))
        .expect("push to the loopback registry");
    (tokio, dir, registry, archive)
}

#[test]
fn images_come_from_a_registry_once_then_from_peer_gateways() {
    // The registry and the gateways are set up before the site is built so
    // that the gateways can be told it is an allowed plain-HTTP registry.
    let (_tokio, _dir, mut registry, archive) = registry_with_busybox("gantry/busybox:pulled");
    let reference = registry.reference("gantry/busybox:pulled");

    let mut cluster = TestCluster::new();
    let insecure = ["--insecure-registry", registry.addr()];
    cluster.init(
        "gw-a",
        &[&insecure[..], &["--labels", "uplink=true"]].concat(),
    );
    cluster.join("gw-b", &insecure);
    let site = Site { cluster, archive };

    // First gateway: pulled from the registry (the site's uplink).
    site.apply(&format!(
        "name: first\nimage: {reference}\nnode_selector: {{uplink: \"true\"}}\ncommand: [sleep, '100000']\n"
    ));
    let first = site.wait_instance("first", "Running from the registry", running);
    assert_eq!(first["node"], "gw-a");
    let manifests_before = registry.requests_matching("/manifests/");
    assert!(manifests_before >= 1, "gw-a asked the registry");

    // Second gateway: fetched from gw-a over the cluster, not the uplink.
    site.apply(&format!(
        "name: second\nimage: {reference}\nreplicas: 2\nspread: node\ncommand: [sleep, '100000']\n"
    ));
    let addr = site.addr(0);
    wait_for("both replicas Running", LONG, || {
        let all = site.cluster.try_json(&addr, &["get", "instances"])?;
        let running = all
            .as_array()?
            .iter()
            .filter(|i| i["workload"] == "second" && i["state"] == "Running");
        (running.count() == 2).then_some(())
    });
    let log = site.cluster.gateways[1].log_text();
    assert!(
        log.contains("image fetched from a peer gateway"),
        "gw-b got the image from gw-a"
    );
    assert_eq!(
        registry.requests_matching("/manifests/"),
        manifests_before,
        "no second pull over the uplink"
    );
    // Each gateway's metrics say where its image came from and its bytes.
    let viewer = site.cluster.viewer_token(&addr);
    let metric = |index: usize, series: &str| -> Option<f64> {
        let gateway = site.addr(index);
        let port = gateway.rsplit(':').next()?.to_string();
        let ca = site.cluster.gateways[index].dir.join("pki/ca.crt");
        let out = std::process::Command::new("curl")
            .args(["-sS", "--max-time", "10", "--cacert"])
            .arg(&ca)
            .args(["--resolve", &format!("gateway.gantry:{port}:127.0.0.1")])
            .args(["-H", &format!("Authorization: Bearer {viewer}")])
            .arg(format!("https://gateway.gantry:{port}/metrics"))
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    };
    let registry_ok = "gantry_image_pulls_total{source=\"registry\",result=\"ok\"}";
    let peer_ok = "gantry_image_pulls_total{source=\"peer\",result=\"ok\"}";
    assert_eq!(metric(0, registry_ok), Some(1.0));
    assert!(
        metric(0, "gantry_image_pull_bytes_total{source=\"registry\"}")
            .is_some_and(|b| b > 100_000.0),
        "busybox's layer came down"
    );
    assert_eq!(metric(1, registry_ok), Some(0.0));
    assert_eq!(metric(1, peer_ok), Some(1.0));
    assert!(
        metric(1, "gantry_image_pull_bytes_total{source=\"peer\"}").is_some_and(|b| b > 100_000.0)
    );

    // `image_pull: never` with an image nobody has: Failed, no registry request.
    site.apply(&format!(
        "name: never\nimage: {}\nimage_pull: never\n",
        registry.reference("gantry/absent:1")
    ));
    let never = site.wait_instance("never", "Failed", |i| i["state"] == "Failed");
    assert!(never["reason"]
        .as_str()
        .unwrap()
        .contains("gantry/absent:1"));
    assert_eq!(registry.requests_matching("gantry/absent"), 0);
    drop(site);
    registry.stop();
}

#[test]
fn image_pull_shows_progress_and_fans_out_over_the_cluster_with_all() {
    let (tokio, _dir, mut registry, archive) = registry_with_busybox("gantry/busybox:pull");
    let reference = registry.reference("gantry/busybox:pull");
    let mut cluster = TestCluster::new();
    let insecure = ["--insecure-registry", registry.addr()];
    cluster.init("gw-a", &insecure);
    cluster.join("gw-b", &[&insecure[..], &["--labels", "spot=b"]].concat());
    let site = Site { cluster, archive };
    let addr = site.addr(0);

    // Not a terminal: one line as each gateway starts, one as it ends.
    let out = site
        .cluster
        .cli(&addr, &["image", "pull", &reference, "--all"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("gw-a: pulling {reference} from registry")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("gw-a: pulled {reference} sha256:")),
        "{stdout}"
    );
    assert!(stdout.contains("downloaded)"), "{stdout}");
    assert!(
        stdout.contains(&format!("gw-b: pulled {reference} sha256:"))
            && stdout.contains("from gw-a)"),
        "gw-b fetched it from gw-a: {stdout}"
    );
    assert!(!stdout.contains('\r'), "no bar drawn into a pipe");
    // The uplink carried the layer once: gw-b's copy came over the cluster.
    let layer_requests = registry.requests_matching("/blobs/sha256:");
    for gateway in ["gw-a", "gw-b"] {
        assert!(
            tokio
                .block_on(site.runtime(gateway).has_image(&reference))
                .unwrap(),
            "{gateway} holds the image"
        );
    }
    // gw-b runs it without any pull of its own.
    site.apply(&format!(
        "name: pinned\nimage: {reference}\nimage_pull: never\nnode_selector: {{spot: b}}\ncommand: [sleep, '100000']\n"
    ));
    let pinned = site.wait_instance("pinned", "Running on gw-b", running);
    assert_eq!(pinned["node"], "gw-b");

    // Again, as JSON: every layer is present, nothing comes down.
    let again = site.cluster.json(&addr, &["image", "pull", &reference]);
    assert_eq!(again["image"], reference.as_str());
    let gateways = again["gateways"].as_array().unwrap();
    assert_eq!(gateways.len(), 1, "{again}");
    assert_eq!(gateways[0]["gateway"], "gw-a");
    assert_eq!(gateways[0]["source"], "registry");
    assert_eq!(gateways[0]["downloaded_bytes"], 0, "{again}");
    assert!(gateways[0]["error"].is_null());
    assert!(
        gateways[0]["digest"]
            .as_str()
            .unwrap()
            .starts_with("sha256:"),
        "{again}"
    );
    assert_eq!(
        registry.requests_matching("/blobs/sha256:"),
        layer_requests,
        "no blob fetched again"
    );

    // An image the registry does not have: a clear failure, non-zero exit,
    // and with --all the other gateways are not asked.
    let absent = registry.reference("gantry/absent:1");
    let out = site
        .cluster
        .cli(&addr, &["image", "pull", &absent, "--all"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(stdout.contains("gw-a: failed:"), "{stdout}");
    assert!(stdout.contains("gw-b: failed: not attempted"), "{stdout}");
    // A registry this gateway may not use is refused before any traffic.
    let out = site
        .cluster
        .cli(&addr, &["image", "pull", "registry.example.com/app:1"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        stdout.contains("not among this gateway's allowed registries"),
        "{stdout}"
    );
    // No reference at all.
    let out = site.cluster.cli(&addr, &["image", "pull", " "]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("give the image to pull"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(site);
    registry.stop();
}

#[test]
fn a_rollout_to_an_image_that_never_starts_is_rolled_back_never_taking_all_replicas_down() {
    let site = site(&["gw-a", "gw-b"]);
    site.import_all();
    let manifest = |image: &str| {
        format!("name: roll\nimage: {image}\nreplicas: 3\nprogress_deadline: 3s\ncommand: [sleep, '100000']\n")
    };
    site.apply(&manifest(IMAGE));
    let addr = site.addr(0);
    wait_for("generation 1 complete", LONG, || {
        let status = site
            .cluster
            .try_json(&addr, &["rollout", "status", "roll", "--watch=false"])?;
        (status["complete"] == true && status["last_good"] == 1).then_some(())
    });

    // Generation 2 names an image nobody has: it never starts. A watch
    // begun now (like kubectl's) ends in failure with the rollback.
    site.apply(&manifest("127.0.0.1:5000/gantry/never-there:1"));
    let watcher = {
        let mut watch = support::gantry();
        watch
            .args(["--server", &addr, "rollout", "status", "roll"])
            .env("GANTRY_TOKEN_FILE", &site.cluster.token_file);
        std::thread::spawn(move || watch.output().expect("rollout status"))
    };
    let deadline = std::time::Instant::now() + LONG;
    let status = loop {
        let copies = site.cluster.copies("roll");
        assert!(
            copies >= 2,
            "max_unavailable 1: at most one replica down, saw {copies} running"
        );
        if let Some(status) = site
            .cluster
            .try_json(&addr, &["rollout", "status", "roll", "--watch=false"])
        {
            if status["rolled_back"].is_object() && status["complete"] == true {
                break status;
            }
        }
        assert!(std::time::Instant::now() < deadline, "never rolled back");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status["rolled_back"]["generation"], 2);
    assert_eq!(status["rolled_back"]["to_spec_of"], 1);
    assert_eq!(status["generation"], 3);
    assert!(status["rolled_back"]["reason"]
        .as_str()
        .unwrap()
        .contains("not Running 3s after its upgrade"));
    let workloads = site.cluster.json(&addr, &["get", "workloads"]);
    assert_eq!(
        workloads[0]["image"], IMAGE,
        "the spec is the last good one again"
    );
    let events = site.cluster.json(&addr, &["events"]);
    assert!(events
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["message"].as_str().unwrap_or("").contains("rolled back")));
    assert_eq!(site.cluster.copies("roll"), 3);
    let watched = watcher.join().expect("the watch");
    let said = String::from_utf8_lossy(&watched.stderr);
    assert!(
        !watched.status.success(),
        "a rolled back rollout fails the watch"
    );
    assert!(
        said.contains("generation 2 failed and was rolled back to the spec of generation 1"),
        "{said}"
    );
    let progress = String::from_utf8_lossy(&watched.stdout);
    assert!(
        progress.contains("waiting for the rollout of roll to generation 2"),
        "{progress}"
    );
    // Watching now: the rollback's generation is complete, exit 0.
    let table = site.cluster.cli(&addr, &["rollout", "status", "roll"]);
    assert!(table.status.success());
    assert!(String::from_utf8_lossy(&table.stdout).contains("rolled back: generation 2"));
}

#[test]
fn logs_follow_new_output_through_any_gateway() {
    use std::io::{BufRead, BufReader};
    let site = site(&["gw-a", "gw-b"]);
    site.import_all();
    site.apply(&format!(
        "name: ticker\nimage: {IMAGE}\ncommand: [sh, -c, 'i=0; while true; do echo tick-$i; i=$((i+1)); sleep 0.2; done']\n"
    ));
    let ticker = site.wait_instance("ticker", "Running", running);
    // Ask the gateway that does not run it: the stream is proxied.
    let runs_on = site.cluster.index_of(ticker["node"].as_str().unwrap());
    let other = site.addr(1 - runs_on);
    let mut child = support::gantry()
        .args(["--server", &other, "logs", "ticker", "--follow"])
        .env("GANTRY_TOKEN_FILE", &site.cluster.token_file)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    rx.recv_timeout(LONG).expect("a first log line");
    // Without --follow the command would have printed the file and ended;
    // following, it is still running and new lines keep arriving.
    std::thread::sleep(Duration::from_secs(2));
    let backlog: Vec<String> = rx.try_iter().collect();
    assert!(child.try_wait().unwrap().is_none(), "still following");
    let next = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("a line written after the backlog");
    let n = |line: &str| line.trim_start_matches("tick-").parse::<u64>().unwrap_or(0);
    let last_backlog = backlog.last().map(|l| n(l)).unwrap_or(0);
    assert!(n(&next) > last_backlog, "{next} after {backlog:?}");
    let _ = child.kill();
    let _ = child.wait();
}
