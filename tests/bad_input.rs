//! Bad input gets a clear error and changes nothing.

mod support;

use std::process::Stdio;

use support::{gantry, TestCluster};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

fn run(args: &[&str]) -> std::process::Output {
    gantry()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run gantry")
}

#[test]
fn bad_manifests_are_refused_naming_the_field_and_change_nothing() {
    let mut cluster = TestCluster::new();
    cluster.init("gw-a", &[]);
    let addr = cluster.addr(0);
    assert!(cluster
        .apply(&addr, "name: web\nimage: 127.0.0.1:5000/gantry/img:1\n")
        .status
        .success());
    let before = cluster.json(&addr, &["get", "workloads"]);

    let cases = [
        ("name: web\nimage: [unclosed\n", "malformed YAML"),
        (
            "name: web\nimage: 127.0.0.1:5000/gantry/img:2\ncolour: blue\n",
            "unknown field `colour`",
        ),
        (
            "name: web\nimage: 127.0.0.1:5000/gantry/img:2\nresources: {memory: 12Q}\n",
            "resources.memory",
        ),
        (
            "name: web\nimage: 127.0.0.1:5000/gantry/img:2\nresources: {cpu: lots}\n",
            "resources.cpu",
        ),
        ("name: Web!\nimage: 127.0.0.1:5000/gantry/img:2\n", "field `name`"),
        (
            "name: web\nimage: 127.0.0.1:5000/gantry/img:2\n---\nname: web\nimage: 127.0.0.1:5000/gantry/img:3\n",
            "defined twice",
        ),
        // Probes: no port, a negative period, an unknown kind, none at all.
        (
            "name: web\nimage: 127.0.0.1:5000/gantry/img:2\nprobes: {liveness: {http: {path: /healthz}}}\n",
            "field `probes.liveness.http`: missing field `port`",
        ),
        (
            "name: web\nimage: 127.0.0.1:5000/gantry/img:2\nprobes: {readiness: {tcp: {port: 1883}, period: -2s}}\n",
            "field `probes.readiness.period`",
        ),
        (
            "name: web\nimage: 127.0.0.1:5000/gantry/img:2\nprobes: {liveness: {grpc: {port: 80}}}\n",
            "unknown field `grpc`",
        ),
        (
            "name: web\nimage: 127.0.0.1:5000/gantry/img:2\nprobes: {startup: {period: 2s}}\n",
            "field `probes.startup`: give one of exec, http or tcp",
        ),
        // One good and one bad document: neither is applied.
        (
            "name: fresh\nimage: 127.0.0.1:5000/gantry/img\n---\nname: web\nimage: 127.0.0.1:5000/gantry/img\nrestart: sometimes\n",
            "restart",
        ),
    ];
    for (manifest, expected) in cases {
        let out = cluster.apply(&addr, manifest);
        assert!(!out.status.success(), "accepted: {manifest}");
        assert!(
            stderr(&out).contains(expected),
            "for {manifest:?}: {}",
            stderr(&out)
        );
    }
    let missing = cluster.cli(&addr, &["apply", "-f", "/nonexistent/manifest.yaml"]);
    assert!(!missing.status.success());
    assert!(stderr(&missing).contains("cannot read"));
    let unknown = cluster.cli(&addr, &["delete", "workload", "nope"]);
    assert!(
        stderr(&unknown).contains("no workload named 'nope'"),
        "{}",
        stderr(&unknown)
    );
    assert_eq!(cluster.json(&addr, &["get", "workloads"]), before);
}

#[test]
fn joins_with_a_wrong_token_or_a_taken_name_are_refused() {
    let mut cluster = TestCluster::new();
    cluster.init("gw-a", &[]);
    let addr = cluster.addr(0);
    let dir = cluster.tmp.path().join("intruder");
    let dir = dir.to_str().unwrap();
    let real = cluster.token();
    let parts: Vec<&str> = real.split('.').collect();
    let (ca, id) = (parts[1], parts[2]);
    let wrong = format!("gantry-join-v2.{ca}.{id}.{}", "0".repeat(64));
    let join = |name: &str, token: &str| {
        run(&[
            "join",
            "--data-dir",
            dir,
            "--name",
            name,
            "--listen",
            "127.0.0.1:0",
            "--peer",
            &addr,
            "--token",
            token,
        ])
    };
    let out = join("gw-x", &wrong);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("unknown or revoked join token"),
        "{}",
        stderr(&out)
    );
    // A token pinning another CA: the handshake fails, the token is never sent.
    let other_cluster = format!("gantry-join-v2.{}.{id}.{}", "0".repeat(64), "0".repeat(64));
    let out = join("gw-x", &other_cluster);
    assert!(
        stderr(&out).contains("not a gateway of the cluster this token is for"),
        "{}",
        stderr(&out)
    );
    let out = join("gw-x", "garbage");
    assert!(stderr(&out).contains("join token"), "{}", stderr(&out));
    let v1 = format!("gantry-join-v1.0000000000000000.{}", "0".repeat(64));
    let out = join("gw-x", &v1);
    assert!(stderr(&out).contains("without TLS"), "{}", stderr(&out));
    let taken = join("gw-a", &real);
    assert!(!taken.status.success());
    assert!(
        stderr(&taken).contains("already a member"),
        "{}",
        stderr(&taken)
    );
    // Nothing changed: still one gateway, and the refused joins left no data dir.
    let nodes = cluster.json(&addr, &["get", "nodes"]);
    assert_eq!(nodes.as_array().unwrap().len(), 1);
    assert!(!std::path::Path::new(dir).join("gantry.json").exists());
}

#[test]
fn an_unreachable_peer_is_retried_then_reported() {
    let tmp = tempfile::tempdir().unwrap();
    // Bind and drop: nothing listens there any more.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let peer = format!("127.0.0.1:{port}");
    let token = format!(
        "gantry-join-v2.{}.0011223344556677.{}",
        "b".repeat(64),
        "a".repeat(64)
    );
    let dir = tmp.path().join("gw");
    let out = run(&[
        "join",
        "--data-dir",
        dir.to_str().unwrap(),
        "--name",
        "gw",
        "--listen",
        "127.0.0.1:0",
        "--peer",
        &peer,
        "--token",
        &token,
        "--join-timeout",
        "2s",
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("retrying"), "logs each retry: {err}");
    assert!(err.contains(&format!("cannot reach {peer}")), "{err}");
    assert!(!dir.join("gantry.json").exists());
}

#[test]
fn data_dirs_that_are_not_fresh_or_not_ours_are_refused() {
    let mut cluster = TestCluster::new();
    cluster.init("gw-a", &[]);
    let dir = cluster.gateways[0].dir.clone();
    let dir_str = dir.to_str().unwrap();

    let again = run(&[
        "init",
        "--data-dir",
        dir_str,
        "--name",
        "gw-b",
        "--listen",
        "127.0.0.1:0",
    ]);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("already holds a gateway"),
        "{}",
        stderr(&again)
    );

    cluster.gateways[0].kill();
    // A config that names another cluster than the database's.
    let config_path = dir.join("gantry.json");
    let original = std::fs::read_to_string(&config_path).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&original).unwrap();
    config["cluster_id"] = "ffffffffffffffff".into();
    std::fs::write(&config_path, config.to_string()).unwrap();
    let out = run(&["run", "--data-dir", dir_str]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("belongs to cluster"),
        "{}",
        stderr(&out)
    );

    std::fs::write(&config_path, "{ not json").unwrap();
    let out = run(&["run", "--data-dir", dir_str]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("corrupted"), "{}", stderr(&out));

    let empty = cluster.tmp.path().join("empty");
    let out = run(&["run", "--data-dir", empty.to_str().unwrap()]);
    assert!(
        stderr(&out).contains("holds no gateway"),
        "{}",
        stderr(&out)
    );

    // The original config brings the gateway back.
    std::fs::write(&config_path, original).unwrap();
    cluster.gateways[0].restart();
    cluster.status_with_leader();
}

#[test]
fn bad_flags_are_refused_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("gw");
    let d = dir.to_str().unwrap();
    let cases: [(&[&str], &str); 4] = [
        (
            &[
                "init",
                "--data-dir",
                d,
                "--name",
                "Bad_Name",
                "--listen",
                "127.0.0.1:0",
            ],
            "not a DNS label",
        ),
        (
            &[
                "init",
                "--data-dir",
                d,
                "--name",
                "gw",
                "--listen",
                "127.0.0.1:0",
                "--capacity",
                "cpu=lots",
            ],
            "invalid cpu",
        ),
        (
            &[
                "init",
                "--data-dir",
                d,
                "--name",
                "gw",
                "--listen",
                "127.0.0.1:0",
                "--labels",
                "novalue",
            ],
            "key=value",
        ),
        (
            &[
                "init",
                "--data-dir",
                d,
                "--name",
                "gw",
                "--listen",
                "not-an-address",
            ],
            "cannot listen",
        ),
    ];
    for (args, expected) in cases {
        let out = run(args);
        assert!(!out.status.success(), "{args:?}");
        assert!(
            stderr(&out).contains(expected),
            "{args:?}: {}",
            stderr(&out)
        );
        assert!(!dir.join("gantry.json").exists());
    }
    let token = format!(
        "gantry-admin-v1.{}.0011223344556677.{}",
        "b".repeat(64),
        "a".repeat(64)
    );
    let unreachable = run(&["--server", "127.0.0.1:1", "status", "--token", &token]);
    assert!(stderr(&unreachable).contains("cannot reach a gateway at 127.0.0.1:1"));
}

#[test]
fn a_data_dir_made_before_tls_refuses_to_start_and_says_why() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("old");
    std::fs::create_dir_all(&dir).unwrap();
    // What a gateway without TLS wrote: the join token in its config.
    std::fs::write(
        dir.join("gantry.json"),
        r#"{"cluster_id":"0011223344556677","node_id":1,"name":"gw-a","listen":"127.0.0.1:0","advertise":"127.0.0.1:1","token":"gantry-join-v1.0011223344556677.00","member":true}"#,
    )
    .unwrap();
    let out = run(&["run", "--data-dir", dir.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("without TLS"), "{}", stderr(&out));
    // A config without the token but with no TLS identity either.
    std::fs::write(
        dir.join("gantry.json"),
        r#"{"cluster_id":"0011223344556677","node_id":1,"name":"gw-a","listen":"127.0.0.1:0","advertise":"127.0.0.1:1","member":true}"#,
    )
    .unwrap();
    let out = run(&["run", "--data-dir", dir.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("holds no TLS identity"),
        "{}",
        stderr(&out)
    );
    assert!(!dir.join("raft").exists(), "nothing was created");
}

/// `--config`: keys are the daemon's long flags, a flag given on the
/// command line wins, and a file's bad key or bad value is refused before
/// anything is written, naming the key, the way the flag would be.
#[test]
fn a_config_file_gives_flags_a_flag_beats_it_and_its_mistakes_are_refused() {
    let mut cluster = TestCluster::new();
    let file = cluster.tmp.path().join("config.toml");
    std::fs::write(
        &file,
        "name = \"from-the-file\"\nlabels = {room = \"cellar\"}\ncapacity = \"cpu=1500m\"\nnode-grace = \"2s\"\npeer = \"only-join-reads-this:1\"\n",
    )
    .unwrap();
    let path = file.to_str().unwrap().to_string();
    // The harness passes --name gw-a: it beats the file's name.
    cluster.init("gw-a", &["--config", &path]);
    let addr = cluster.addr(0);
    let node = cluster.json(&addr, &["describe", "node", "gw-a"]);
    assert_eq!(node["node"]["labels"]["room"], "cellar", "{node}");
    assert_eq!(node["node"]["capacity"]["cpu_millis"], 1500, "{node}");
    let settings = cluster.json(&addr, &["settings", "get"]);
    assert_eq!(settings["node_grace"], "2s", "{settings}");

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("gw");
    let d = dir.to_str().unwrap();
    for (text, wanted) in [
        ("listen-port = 7400\n", "unknown key 'listen-port'"),
        ("labels = \n", "not valid TOML"),
        ("capacity = \"cpu=lots\"\n", "cpu"),
    ] {
        let bad = tmp.path().join("bad.toml");
        std::fs::write(&bad, text).unwrap();
        let out = run(&[
            "init",
            "--config",
            bad.to_str().unwrap(),
            "--data-dir",
            d,
            "--name",
            "gw",
            "--listen",
            "127.0.0.1:0",
        ]);
        assert!(!out.status.success(), "{text}");
        assert!(stderr(&out).contains(wanted), "{text}: {}", stderr(&out));
        assert!(!dir.exists(), "{text}: nothing written");
    }
}
