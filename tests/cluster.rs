//! End-to-end tests of the cluster foundation: real `gantry` processes on
//! loopback, killed with SIGKILL, restarted from their data dirs.

mod support;

use std::time::Duration;

use support::{node, wait_for, TestCluster, DEADLINE};

fn three_gateways() -> TestCluster {
    let mut cluster = TestCluster::new();
    cluster.init(
        "gw-a",
        &[
            "--labels",
            "zone=north",
            "--capacity",
            "cpu=2000m,memory=1Gi",
        ],
    );
    cluster.join("gw-b", &["--capacity", "cpu=1,memory=512Mi"]);
    cluster.join("gw-c", &[]);
    cluster
}

fn workload_names(cluster: &TestCluster, addr: &str) -> Vec<String> {
    let workloads = cluster.json(addr, &["get", "workloads"]);
    let mut names: Vec<String> = workloads
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

#[test]
fn three_gateways_form_a_cluster_of_ready_voters() {
    let cluster = three_gateways();
    let addr = cluster.addr(1);
    let status = wait_for("3 Ready voters", DEADLINE, || {
        let status = cluster.try_json(&addr, &["status"])?;
        let nodes = status["nodes"].as_array()?;
        let ok = nodes.len() == 3
            && nodes
                .iter()
                .all(|n| n["status"] == "Ready" && n["role"] == "voter");
        ok.then_some(status)
    });
    assert!(status["leader"].is_string(), "one leader: {status}");
    assert!(status["term"].as_u64().unwrap() >= 1);
    assert!(status["cluster"].is_string());
    assert_eq!(status["workloads"], serde_json::json!([]));
    let a = node(&status, "gw-a");
    assert_eq!(a["labels"]["zone"], "north");
    assert_eq!(a["capacity"]["cpu_millis"], 2000);
    assert_eq!(a["capacity"]["memory_bytes"], 1u64 << 30);
    // Without --capacity the gateway reports what it really has.
    let c = node(&status, "gw-c");
    assert!(c["capacity"]["cpu_millis"].as_u64().unwrap() >= 1000);
    assert!(c["capacity"]["memory_bytes"].as_u64().unwrap() > 64 << 20);

    // get X -o json is an array; the table is aligned and has a header.
    let nodes = cluster.json(&addr, &["get", "nodes"]);
    assert_eq!(nodes.as_array().unwrap().len(), 3);
    assert_eq!(
        cluster.json(&addr, &["get", "instances"]),
        serde_json::json!([])
    );
    let table = cluster.cli(&addr, &["get", "nodes"]);
    let text = String::from_utf8_lossy(&table.stdout).to_string();
    assert!(text.starts_with("NAME"), "{text}");
    assert_eq!(text.lines().count(), 4, "{text}");
    let yaml = cluster.cli(&addr, &["status", "-o", "yaml"]);
    assert!(String::from_utf8_lossy(&yaml.stdout).contains("leader:"));
    // -o wide: the same rows with allocation and more.
    let wide = cluster.cli(&addr, &["get", "nodes", "-o", "wide"]);
    let text = String::from_utf8_lossy(&wide.stdout).to_string();
    assert!(
        text.lines().next().is_some_and(|h| h.contains("INSTANCES")),
        "{text}"
    );
    assert!(
        text.contains("0/2"),
        "gw-a: nothing allocated of 2 CPUs: {text}"
    );
    assert_eq!(nodes[0]["allocated"]["cpu_millis"], 0, "{nodes}");
    assert_eq!(nodes[0]["instances"], 0, "{nodes}");
}

#[test]
fn killing_the_leader_elects_another_and_loses_nothing() {
    let mut cluster = three_gateways();
    let any = cluster.addr(2);
    let applied = cluster.apply(&any, "name: web\nimage: 127.0.0.1:5000/web:1\nreplicas: 2\n---\nname: cam\nimage: 127.0.0.1:5000/cam:1\n");
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );

    let status = cluster.status_with_leader();
    let old_leader = status["leader"].as_str().unwrap().to_string();
    let victim = cluster.index_of(&old_leader);
    cluster.gateways[victim].kill();

    let survivor = cluster.addr((victim + 1) % 3);
    let status = wait_for("a new leader", DEADLINE, || {
        let status = cluster.try_json(&survivor, &["status"])?;
        let leader = status["leader"].as_str()?;
        (leader != old_leader).then_some(status)
    });
    assert_ne!(status["leader"], old_leader.as_str());
    assert_eq!(workload_names(&cluster, &survivor), vec!["cam", "web"]);
    // The dead gateway is noticed.
    wait_for("the old leader to be NotReady", DEADLINE, || {
        let status = cluster.try_json(&survivor, &["status"])?;
        (node(&status, &old_leader)["status"] == "NotReady").then_some(())
    });

    cluster.gateways[victim].restart();
    let back = cluster.addr(victim);
    wait_for("the old leader back as a Ready voter", DEADLINE, || {
        let status = cluster.try_json(&back, &["status"])?;
        let me = node(&status, &old_leader);
        (me["status"] == "Ready" && me["role"] == "voter" && status["current"] == true)
            .then_some(())
    });
    assert_eq!(workload_names(&cluster, &back), vec!["cam", "web"]);
}

#[test]
fn six_gateways_make_five_voters_and_one_learner() {
    let mut cluster = TestCluster::new();
    cluster.init("gw-1", &[]);
    for i in 2..=6 {
        cluster.join(&format!("gw-{i}"), &[]);
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

    // The learner holds a full replica: it answers with everything.
    let learner = cluster.addr(5);
    assert!(cluster
        .apply(
            &learner,
            "name: via-learner\nimage: 127.0.0.1:5000/gantry/img\n"
        )
        .status
        .success());
    wait_for("the write on every gateway", DEADLINE, || {
        (0..6)
            .all(|i| workload_names(&cluster, &cluster.addr(i)) == vec!["via-learner"])
            .then_some(())
    });

    // A voter leaves: the learner is promoted so that five still vote.
    let out = cluster.cli(&addr, &["leave", "gw-2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = wait_for("gw-6 promoted", DEADLINE, || {
        let status = cluster.try_json(&addr, &["status"])?;
        (node(&status, "gw-6")["role"] == "voter" && node(&status, "gw-2")["status"] == "Left")
            .then_some(status)
    });
    let voters = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["role"] == "voter")
        .count();
    assert_eq!(voters, 5);
    // The gateway that left stops by itself.
    let left = cluster.index_of("gw-2");
    wait_for("gw-2 to exit", DEADLINE, || {
        (!cluster.gateways[left].is_running()).then_some(())
    });
}

#[test]
fn acknowledged_writes_survive_kill_of_every_gateway() {
    let mut cluster = three_gateways();
    let mut acknowledged = Vec::new();
    for i in 0..12 {
        let addr = cluster.addr(i % 3);
        let name = format!("w{i:02}");
        let out = cluster.apply(
            &addr,
            &format!("name: {name}\nimage: 127.0.0.1:5000/gantry/img:{i}\n"),
        );
        if out.status.success() {
            acknowledged.push(name);
        }
    }
    assert_eq!(acknowledged.len(), 12);
    for gateway in &mut cluster.gateways {
        gateway.kill();
    }
    for gateway in &mut cluster.gateways {
        gateway.restart();
    }
    let addr = cluster.addr(0);
    wait_for(
        "every acknowledged write after a restart of all",
        DEADLINE,
        || {
            let names: Vec<String> = cluster
                .try_json(&addr, &["get", "workloads"])?
                .as_array()?
                .iter()
                .filter_map(|w| w["name"].as_str().map(String::from))
                .collect();
            acknowledged.iter().all(|a| names.contains(a)).then_some(())
        },
    );
    cluster.status_with_leader();
}

#[test]
fn a_gateway_away_during_1000_writes_catches_up_by_snapshot() {
    let mut cluster = three_gateways();
    cluster.gateways[2].kill();
    let addr = cluster.addr(0);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        use gantry::cli::args::{AuthFiles, ClientAuth};
        use gantry_proto::v1::ApplyRequest;
        let auth = ClientAuth {
            token: None,
            files: AuthFiles {
                token_file: Some(cluster.token_file.clone()),
                ..Default::default()
            },
        };
        let client = gantry::cli::client::connect(&addr, &auth).await.unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for worker in 0..8 {
            let mut client = client.clone();
            tasks.spawn(async move {
                for i in 0..130 {
                    let manifest =
                        format!("name: w-{worker}-{i}\nimage: 127.0.0.1:5000/gantry/img\n");
                    client
                        .apply(ApplyRequest { manifest })
                        .await
                        .expect("acknowledged write");
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
    });
    cluster.gateways[2].restart();
    let away = cluster.addr(2);
    wait_for(
        "the returning gateway to hold all 1040 workloads",
        Duration::from_secs(120),
        || {
            let count = cluster
                .try_json(&away, &["get", "workloads"])?
                .as_array()?
                .len();
            (count == 1040).then_some(())
        },
    );
    assert!(
        cluster.gateways[2]
            .log_text()
            .contains("installed snapshot"),
        "the log had been purged, so catching up must have gone through a snapshot"
    );
}

/// 150 workloads with 50 KB of env each. As one 7.5 MB manifest it is
/// refused, saying why, and changes nothing (one Raft entry that size never
/// reaches the followers within a heartbeat); applied in parts through a
/// follower it goes in, and the answers, past gRPC's default 4 MiB, are read
/// back whole from every gateway.
#[test]
fn large_manifests_are_refused_whole_and_answers_larger_than_four_mib_arrive() {
    let cluster = three_gateways();
    let addr = cluster.addr(0);
    wait_for("3 Ready gateways", DEADLINE, || {
        let status = cluster.try_json(&addr, &["status"])?;
        let nodes = status["nodes"].as_array()?;
        (nodes.len() == 3 && nodes.iter().all(|n| n["status"] == "Ready")).then_some(())
    });
    let filler = "x".repeat(50_000);
    let manifest: Vec<String> = (0..150)
        .map(|i| {
            format!(
                "name: big-{i:03}\nimage: 127.0.0.1:5000/gantry/i\nreplicas: 0\nenv: {{FILLER: {filler}}}\n"
            )
        })
        .collect();
    let out = cluster.apply(&cluster.addr(1), &manifest.join("---\n"));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("apply it in parts"), "{stderr}");
    assert!(workload_names(&cluster, &addr).is_empty());
    for part in manifest.chunks(15) {
        let out = cluster.apply(&cluster.addr(1), &part.join("---\n"));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for i in 0..3 {
        let server = cluster.addr(i);
        let names = wait_for("150 workloads everywhere", DEADLINE, || {
            let names = workload_names(&cluster, &server);
            (names.len() == 150).then_some(names)
        });
        assert_eq!(names[0], "big-000");
        let out = cluster.cli(&server, &["get", "workloads"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `get instances -w -o json`: one JSON object per line for each instance
/// that appears or changes, as `kubectl get -w` does.
#[test]
fn get_watch_prints_each_change_as_it_happens() {
    use std::io::{BufRead, BufReader};
    let cluster = three_gateways();
    let addr = cluster.addr(0);
    let mut watch = support::gantry()
        .args(["--server", &addr, "get", "instances", "-w", "-o", "json"])
        .env("GANTRY_TOKEN_FILE", &cluster.token_file)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("gantry get -w");
    let stdout = watch.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let out = cluster.apply(
        &addr,
        "name: watched\nimage: 127.0.0.1:5000/gantry/i\nreplicas: 2\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut placed = std::collections::BTreeSet::new();
    let deadline = std::time::Instant::now() + DEADLINE;
    while placed.len() < 2 {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = rx.recv_timeout(left).expect("a line for each instance");
        let item: serde_json::Value =
            serde_json::from_str(&line).expect("one JSON object per line");
        assert_eq!(item["workload"], "watched", "{line}");
        if item["node"].is_string() {
            placed.insert(item["replica"].to_string());
        }
    }
    let _ = watch.kill();
    let _ = watch.wait();
}
