//! Trust end to end, on real gateway and hub processes: pinned joins and
//! links that send nothing to an impostor, bootstrap tokens, certificate
//! renewal under load, revocation at leave, clear errors for missing and
//! wrong credentials, and no secret at rest or in any output.

mod support;

use std::io::Read;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use gantry_node::testing::busybox_oci_archive;
use gantry_pki::{CertificateAuthority, Credentials, LeafProfile, NodeKey};
use serde_json::Value;
use support::{gantry, stdout_of, wait_for, TestCluster, DEADLINE};

const IMAGE: &str = "127.0.0.1:5000/gantry/busybox:test";

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// A TLS server with a CA of its own, named like a gateway and a hub. It
/// counts connections whose handshake completed and bytes of application
/// data received: a client that pins another CA must give it neither.
struct Impostor {
    addr: String,
    handshakes: Arc<AtomicUsize>,
    app_bytes: Arc<AtomicUsize>,
    attempts: Arc<AtomicUsize>,
}

fn impostor() -> Impostor {
    let ca =
        CertificateAuthority::generate("gantry cluster CA", Duration::from_secs(86400)).unwrap();
    let key = NodeKey::generate().unwrap();
    let issued = ca
        .issue(
            &key,
            &LeafProfile {
                common_name: "impostor".into(),
                dns_names: vec![gantry_pki::GATEWAY_NAME.into(), gantry_pki::HUB_NAME.into()],
                ip_addresses: vec!["127.0.0.1".parse().unwrap()],
                lifetime: Duration::from_secs(3600),
                server: true,
                client: true,
            },
        )
        .unwrap();
    let creds = Credentials {
        key,
        chain: vec![issued.cert_der, ca.cert_der().to_vec()],
    };
    let config = gantry_pki::server_config(&creds, None, vec![b"h2".to_vec()]).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let handshakes = Arc::new(AtomicUsize::new(0));
    let app_bytes = Arc::new(AtomicUsize::new(0));
    let attempts = Arc::new(AtomicUsize::new(0));
    let (h, b, a) = (handshakes.clone(), app_bytes.clone(), attempts.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut tcp) = stream else { continue };
            a.fetch_add(1, Ordering::SeqCst);
            let Ok(mut conn) = rustls::ServerConnection::new(config.clone()) else {
                continue;
            };
            let _ = tcp.set_read_timeout(Some(Duration::from_secs(5)));
            let (h, b) = (h.clone(), b.clone());
            std::thread::spawn(move || {
                let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
                let mut buf = [0u8; 4096];
                // Reading drives the handshake; any plaintext is application data.
                loop {
                    match tls.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            b.fetch_add(n, Ordering::SeqCst);
                        }
                        Err(_) => break,
                    }
                }
                if !conn.is_handshaking() {
                    h.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
    });
    Impostor {
        addr,
        handshakes,
        app_bytes,
        attempts,
    }
}

#[test]
fn joins_and_links_to_a_server_of_another_ca_send_nothing() {
    let fake = impostor();
    let mut cluster = TestCluster::new();
    cluster.start_hub();
    cluster.init("gw-a", &[]);
    let addr = cluster.addr(0);
    let token = cluster.token();
    let dir = cluster.tmp.path().join("joiner");
    let out = gantry()
        .args([
            "join",
            "--data-dir",
            dir.to_str().unwrap(),
            "--name",
            "joiner",
            "--listen",
            "127.0.0.1:0",
            "--peer",
            &fake.addr,
            "--token",
            &token,
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("the token was not sent"),
        "{}",
        stderr(&out)
    );
    assert!(!dir.join("gantry.json").exists());

    // The site token pins the real hub; the link is pointed at the impostor.
    let site_token = cluster.site_token("site-1");
    let out = cluster.cli(
        &addr,
        &[
            "cloud",
            "attach",
            "--hub",
            &fake.addr,
            "--site",
            "site-1",
            "--token",
            &site_token,
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    wait_for("the link to try the impostor", DEADLINE, || {
        let status = cluster.try_json(&addr, &["status"])?;
        let error = status["cloud"]["last_error"].as_str()?.to_string();
        (fake.attempts.load(Ordering::SeqCst) >= 3 && !error.is_empty()).then_some(())
    });
    assert!(
        fake.attempts.load(Ordering::SeqCst) >= 3,
        "the joiner and the link dialled it"
    );
    assert_eq!(
        fake.handshakes.load(Ordering::SeqCst),
        0,
        "no handshake completed"
    );
    assert_eq!(
        fake.app_bytes.load(Ordering::SeqCst),
        0,
        "no HTTP/2 byte reached it"
    );
    let status = cluster.json(&addr, &["status"]);
    assert_eq!(status["cloud"]["connected"], false);
}

#[test]
fn a_single_use_join_token_works_once_and_rotation_retires_the_default() {
    let mut cluster = TestCluster::new();
    cluster.init("gw-a", &[]);
    let addr = cluster.addr(0);
    let out = cluster.cli(
        &addr,
        &["join-token", "create", "--uses", "1", "--ttl", "1h"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let once = stdout(&out).trim().to_string();
    assert!(once.starts_with("gantry-join-v2."), "{once}");
    let join = |name: &str, token: &str| {
        let dir = cluster.tmp.path().join(name);
        gantry()
            .args([
                "join",
                "--data-dir",
                dir.to_str().unwrap(),
                "--name",
                name,
                "--listen",
                "127.0.0.1:0",
                "--peer",
                &addr,
                "--token",
                token,
                "--join-timeout",
                "5s",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut first = join("gw-b", &once);
    wait_for("gw-b to join", DEADLINE, || {
        let nodes = cluster.try_json(&addr, &["get", "nodes"])?;
        nodes
            .as_array()?
            .iter()
            .any(|n| n["name"] == "gw-b")
            .then_some(())
    });
    let second = join("gw-c", &once).wait_with_output().unwrap();
    assert!(!second.status.success());
    assert!(stderr(&second).contains("used up"), "{}", stderr(&second));
    let listed = cluster.json(&addr, &["join-token", "list"]);
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["uses_left"] == 0),
        "{listed}"
    );

    // Rotation: the old default stops working, the new one works.
    let old = cluster.token();
    let out = cluster.cli(&addr, &["join-token", "rotate"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let new = stdout(&out).trim().to_string();
    assert_ne!(new, old);
    assert_eq!(
        cluster.token(),
        new,
        "the init gateway's join-token file follows"
    );
    let refused = join("gw-d", &old).wait_with_output().unwrap();
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("unknown or revoked join token"),
        "{}",
        stderr(&refused)
    );
    let mut fine = join("gw-e", &new);
    wait_for("gw-e to join with the new token", DEADLINE, || {
        let nodes = cluster.try_json(&addr, &["get", "nodes"])?;
        nodes
            .as_array()?
            .iter()
            .any(|n| n["name"] == "gw-e")
            .then_some(())
    });
    let _ = first.kill();
    let _ = fine.kill();
    let _ = first.wait();
    let _ = fine.wait();
}

#[test]
fn missing_wrong_and_weak_credentials_get_one_clear_line() {
    let mut cluster = TestCluster::new();
    cluster.init("gw-a", &[]);
    let addr = cluster.addr(0);
    let none = cluster.cli_as(&addr, &[("GANTRY_DATA_DIR", "/nonexistent")], &["status"]);
    assert!(!none.status.success());
    assert!(
        stderr(&none).starts_with("error: not authorized: "),
        "{}",
        stderr(&none)
    );
    assert_eq!(stderr(&none).lines().count(), 1);

    let real = std::fs::read_to_string(&cluster.token_file).unwrap();
    let parts: Vec<&str> = real.trim().split('.').collect();
    let forged = format!("{}.{}.{}.{}", parts[0], parts[1], parts[2], "0".repeat(64));
    let wrong = cluster.cli_as(&addr, &[("GANTRY_TOKEN", &forged)], &["status"]);
    assert!(!wrong.status.success());
    assert_eq!(
        stderr(&wrong).trim(),
        "error: not authorized: unknown, expired or revoked token"
    );

    let viewer = stdout(&cluster.cli(&addr, &["token", "create", "--role", "viewer"]))
        .trim()
        .to_string();
    let manifest = cluster.tmp.path().join("m.yaml");
    std::fs::write(&manifest, "name: web\nimage: 127.0.0.1:5000/x:1\n").unwrap();
    let read = cluster.cli_as(&addr, &[("GANTRY_TOKEN", &viewer)], &["get", "nodes"]);
    assert!(read.status.success(), "{}", stderr(&read));
    let write = cluster.cli_as(
        &addr,
        &[("GANTRY_TOKEN", &viewer)],
        &["apply", "-f", manifest.to_str().unwrap()],
    );
    assert!(!write.status.success());
    assert_eq!(
        stderr(&write).trim(),
        "error: permission denied: apply needs the admin role"
    );
    // --token-file and --data-dir work as well.
    let file = cluster.tmp.path().join("viewer.token");
    std::fs::write(&file, &viewer).unwrap();
    let by_file = cluster.cli_as(
        &addr,
        &[],
        &["status", "--token-file", file.to_str().unwrap()],
    );
    assert!(by_file.status.success(), "{}", stderr(&by_file));
    let dir = cluster.gateways[0].dir.to_str().unwrap().to_string();
    let by_dir = cluster.cli_as(&addr, &[], &["status", "--data-dir", &dir]);
    assert!(by_dir.status.success(), "{}", stderr(&by_dir));

    // A revoked token is refused on the next request, on every gateway.
    cluster.join("gw-b", &[]);
    let b = cluster.addr(1);
    let id = viewer.split('.').nth(2).unwrap().to_string();
    assert!(cluster
        .cli_as(&b, &[("GANTRY_TOKEN", &viewer)], &["status"])
        .status
        .success());
    let out = cluster.cli(&addr, &["token", "revoke", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    for server in [&addr, &b] {
        let after = cluster.cli_as(server, &[("GANTRY_TOKEN", &viewer)], &["status"]);
        assert!(!after.status.success());
        assert!(
            stderr(&after).contains("not authorized"),
            "{}",
            stderr(&after)
        );
    }
    let list = cluster.json(&addr, &["token", "list"]);
    assert!(!list.to_string().contains(&id));
}

#[test]
fn a_gateway_that_left_is_refused_by_every_member_and_loses_its_token() {
    let mut cluster = TestCluster::new();
    cluster.init("gw-a", &[]);
    cluster.join("gw-b", &[]);
    cluster.join("gw-c", &[]);
    let addr = cluster.addr(0);
    let c_dir = cluster.gateways[2].dir.clone();
    let c_addr = cluster.addr(2);
    let c_token = std::fs::read_to_string(c_dir.join("admin-token")).unwrap();
    assert!(cluster
        .cli_as(&c_addr, &[("GANTRY_TOKEN", c_token.trim())], &["status"])
        .status
        .success());
    let out = cluster.cli(&addr, &["leave", "gw-c"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_for("gw-c to stop", DEADLINE, || {
        (!cluster.gateways[2].is_running()).then_some(())
    });
    assert!(
        !c_dir.join("admin-token").exists(),
        "its own admin token file is gone"
    );
    // Its certificate opens nothing on the members, its token nothing anywhere.
    let status = cluster.json(&addr, &["status"]);
    let cluster_id = status["cluster"].as_str().unwrap().to_string();
    let creds =
        Credentials::from_pem(&std::fs::read_to_string(c_dir.join("pki/node.pem")).unwrap())
            .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    for index in [0, 1] {
        let member = cluster.addr(index);
        let code = rt.block_on(heartbeat_as(&member, &creds, &cluster_id));
        assert_eq!(code, tonic::Code::Unauthenticated, "gateway {index}");
        let out = cluster.cli_as(&member, &[("GANTRY_TOKEN", c_token.trim())], &["status"]);
        assert!(stderr(&out).contains("not authorized"), "{}", stderr(&out));
    }
    // A heartbeat naming another gateway, with a member's own certificate.
    let b_creds = Credentials::from_pem(
        &std::fs::read_to_string(cluster.gateways[1].dir.join("pki/node.pem")).unwrap(),
    )
    .unwrap();
    let code = rt.block_on(heartbeat_for(&addr, &b_creds, &cluster_id, 1));
    assert_eq!(code, tonic::Code::PermissionDenied);
}

async fn heartbeat_for(
    addr: &str,
    creds: &Credentials,
    cluster_id: &str,
    node_id: u64,
) -> tonic::Code {
    let pin = gantry_pki::Fingerprint::of(creds.chain.last().unwrap());
    let config = gantry_pki::client_config(
        gantry_pki::PinnedCaVerifier::new(pin),
        Some(creds),
        vec![b"h2".to_vec()],
    )
    .unwrap();
    let connector = gantry::tls::TlsConnector::new(
        gantry::tls::ClientTls::new(config),
        gantry_pki::GATEWAY_NAME,
    )
    .unwrap();
    let channel = gantry::tls::connect_channel(addr, connector, |e| e)
        .await
        .unwrap();
    let mut client = gantry_proto::v1::cluster_client::ClusterClient::new(channel);
    let request = gantry_proto::v1::HeartbeatRequest {
        cluster_id: cluster_id.to_string(),
        node_id,
        runtime_problem: String::new(),
        applied_index: 0,
        usage: Vec::new(),
        storage_problem: String::new(),
    };
    match client.heartbeat(request).await {
        Ok(_) => tonic::Code::Ok,
        Err(status) => status.code(),
    }
}

async fn heartbeat_as(addr: &str, creds: &Credentials, cluster_id: &str) -> tonic::Code {
    let id = gantry_pki::node_id_of(creds.leaf_der(), cluster_id).unwrap();
    heartbeat_for(addr, creds, cluster_id, id).await
}

fn serial(cluster: &TestCluster, addr: &str) -> Option<String> {
    let pki = cluster.try_json(addr, &["pki", "status"])?;
    pki["certificate"]["serial"].as_str().map(String::from)
}

#[test]
fn certificates_renew_by_themselves_under_load_with_no_failed_request() {
    let mut cluster = TestCluster::new();
    // A hidden test knob: 40 s certificates renew every 28-36 s.
    cluster
        .env
        .push(("GANTRY_TEST_CERT_LIFETIME".into(), "40s".into()));
    let archive = cluster.tmp.path().join("busybox.tar");
    busybox_oci_archive(&archive, IMAGE).unwrap();
    cluster.init("gw-a", &[]);
    cluster.join("gw-b", &[]);
    cluster.join("gw-c", &[]);
    let addr = cluster.addr(0);
    let out = cluster.cli(
        &addr,
        &["image", "import", archive.to_str().unwrap(), "--all"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let manifest = format!(
        "name: ticker\nimage: {IMAGE}\nnode_selector: {{}}\ncommand: [sh, -c, 'i=0; while true; do echo tick-$i; i=$((i+1)); sleep 0.2; done']\n"
    );
    assert!(cluster.apply(&addr, &manifest).status.success());
    let ticker = wait_for("ticker Running", DEADLINE, || {
        let all = cluster.try_json(&addr, &["get", "instances"])?;
        all.as_array()?
            .iter()
            .find(|i| i["workload"] == "ticker" && i["state"] == "Running")
            .cloned()
    });
    // Follow the log through a gateway that does not run it (a proxied stream).
    let runs_on = cluster.index_of(ticker["node"].as_str().unwrap());
    let other = cluster.addr((runs_on + 1) % 3);
    let mut follow = gantry()
        .args(["--server", &other, "logs", "ticker", "--follow"])
        .env("GANTRY_TOKEN_FILE", &cluster.token_file)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let out_pipe = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(out_pipe)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let addrs: Vec<String> = (0..3).map(|i| cluster.addr(i)).collect();
    let mut serials: Vec<Vec<String>> = addrs
        .iter()
        .map(|a| vec![serial(&cluster, a).expect("a serial")])
        .collect();
    // A write loop through every gateway, until each gateway has renewed 3 times.
    let mut writes = 0;
    let mut failures = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    while serials.iter().any(|s| s.len() < 4) {
        assert!(
            std::time::Instant::now() < deadline,
            "renewals seen: {serials:?}"
        );
        let server = &addrs[writes % 3];
        let doc = format!("name: pulse\nimage: {IMAGE}\nreplicas: 0\nenv: {{N: '{writes}'}}\n");
        let out = cluster.apply(server, &doc);
        if !out.status.success() {
            failures.push(format!("apply via {server}: {}", stderr(&out)));
        }
        writes += 1;
        for (i, a) in addrs.iter().enumerate() {
            match serial(&cluster, a) {
                Some(s) if serials[i].last() != Some(&s) => serials[i].push(s),
                Some(_) => {}
                None => failures.push(format!("pki status via {a} failed")),
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        failures.is_empty(),
        "{} failed requests of {writes}: {failures:?}",
        failures.len()
    );
    // The stream opened before the renewals still delivers new lines.
    let _backlog: Vec<String> = rx.try_iter().collect();
    let fresh = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the follow stream still runs");
    assert!(fresh.starts_with("tick-"), "{fresh}");
    assert!(
        follow.try_wait().unwrap().is_none(),
        "logs --follow never ended"
    );
    let _ = follow.kill();
    let _ = follow.wait();
    // Every renewal gave a new serial, and `pki renew` forces one.
    for s in &serials {
        let mut unique = s.clone();
        unique.dedup();
        assert_eq!(unique.len(), s.len());
    }
    let before = serial(&cluster, &addr).unwrap();
    let out = cluster.cli(&addr, &["pki", "renew", "-o", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let after: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_ne!(after["certificate"]["serial"].as_str().unwrap(), before);
    println!("renewals: {serials:?} over {writes} writes, 0 failed");
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// The files that hold a credential by design (each checked to be 0600).
const CREDENTIAL_FILES: &[&str] = &[
    "join-token",
    "admin-token",
    "node.pem",
    "cluster.key",
    "ca.key",
    "server.pem",
];

#[test]
fn no_secret_at_rest_in_logs_or_in_output_and_modes_are_tight() {
    let mut cluster = TestCluster::new();
    cluster.start_hub();
    cluster.init("gw-a", &[]);
    cluster.join("gw-b", &[]);
    let addr = cluster.addr(0);
    let site_token = cluster.site_token("site-1");
    let hub = cluster.hub_addr();
    let out = cluster.cli(
        &addr,
        &[
            "cloud",
            "attach",
            "--hub",
            &hub,
            "--site",
            "site-1",
            "--token",
            &site_token,
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    wait_for("the link", DEADLINE, || {
        let s = cluster.try_json(&addr, &["status"])?;
        (s["cloud"]["connected"] == true).then_some(())
    });
    let viewer = stdout(&cluster.cli(&addr, &["token", "create", "--role", "viewer"]))
        .trim()
        .to_string();
    let bootstrap = stdout(&cluster.cli(&addr, &["join-token", "create"]))
        .trim()
        .to_string();
    // Exercise the paths that might print a secret: failures included.
    let mut outputs = Vec::new();
    for args in [
        vec!["status", "-o", "json"],
        vec!["events", "-o", "json"],
        vec!["settings", "get", "-o", "json"],
        vec!["get", "nodes", "-o", "json"],
        vec!["token", "list", "-o", "json"],
        vec!["join-token", "list", "-o", "json"],
        vec!["pki", "status", "-o", "json"],
        vec!["describe", "node", "gw-a", "-o", "json"],
    ] {
        let out = cluster.cli(&addr, &args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        outputs.push(stdout(&out) + &stderr(&out));
    }
    let wrong = cluster.cli_as(
        &addr,
        &[("GANTRY_TOKEN", &format!("{}0", &viewer[..viewer.len() - 1]))],
        &["status"],
    );
    outputs.push(stdout(&wrong) + &stderr(&wrong));
    outputs.push(stdout(&cluster.hub_cli(&["status", "-o", "json"])));
    // Stop everything so RocksDB files are complete, then read them all.
    for g in &mut cluster.gateways {
        g.kill();
    }
    if let Some(h) = &mut cluster.hub {
        h.kill();
    }

    let secret_of = |token: &str| token.trim().rsplit('.').next().unwrap().to_string();
    let admin = std::fs::read_to_string(&cluster.token_file).unwrap();
    let join = cluster.token();
    let a_local = std::fs::read_to_string(cluster.gateways[0].dir.join("admin-token")).unwrap();
    let cluster_key =
        std::fs::read_to_string(cluster.gateways[0].dir.join("pki/cluster.key")).unwrap();
    let secrets = vec![
        ("join token", secret_of(&join)),
        ("bootstrap join token", secret_of(&bootstrap)),
        ("admin token", secret_of(&admin)),
        ("gateway admin token", secret_of(&a_local)),
        ("viewer token", secret_of(&viewer)),
        ("site token", secret_of(&site_token)),
        ("cluster key", cluster_key.trim().to_string()),
    ];
    let mut haystacks: Vec<(String, Vec<u8>)> = Vec::new();
    let mut dirs: Vec<PathBuf> = cluster.gateways.iter().map(|g| g.dir.clone()).collect();
    dirs.push(cluster.hub.as_ref().unwrap().dir.clone());
    for dir in &dirs {
        assert_eq!(mode(dir), 0o700, "{}", dir.display());
        assert_eq!(mode(&dir.join("pki")), 0o700);
        for file in files_under(dir) {
            let name = file.file_name().unwrap().to_string_lossy().to_string();
            if CREDENTIAL_FILES.contains(&name.as_str()) {
                assert_eq!(mode(&file), 0o600, "{}", file.display());
                continue;
            }
            if name == "gantry.json" {
                assert_eq!(mode(&file), 0o600, "{}", file.display());
            }
            haystacks.push((
                file.display().to_string(),
                std::fs::read(&file).unwrap_or_default(),
            ));
        }
    }
    // Logs (stderr) of every daemon; their stdout holds only what init and
    // the hub print for the operator on purpose.
    for g in &cluster.gateways {
        haystacks.push((g.log.display().to_string(), std::fs::read(&g.log).unwrap()));
    }
    let hub_log = cluster.hub.as_ref().unwrap().log.clone();
    haystacks.push((
        hub_log.display().to_string(),
        std::fs::read(&hub_log).unwrap(),
    ));
    for (i, o) in outputs.iter().enumerate() {
        haystacks.push((format!("cli output {i}"), o.clone().into_bytes()));
    }
    // Every value in the gateways' RocksDB, decompressed by RocksDB itself.
    for g in &cluster.gateways {
        let db_path = g.dir.join("raft");
        let cfs = rocksdb::DB::list_cf(&rocksdb::Options::default(), &db_path).unwrap();
        let db =
            rocksdb::DB::open_cf_for_read_only(&rocksdb::Options::default(), &db_path, &cfs, false)
                .unwrap();
        let mut all = Vec::new();
        for cf in &cfs {
            let handle = db.cf_handle(cf).unwrap();
            for item in db.iterator_cf(handle, rocksdb::IteratorMode::Start) {
                let (k, v) = item.unwrap();
                all.extend_from_slice(&k);
                all.extend_from_slice(&v);
            }
        }
        haystacks.push((format!("{} (decoded)", db_path.display()), all));
    }
    let mut found = Vec::new();
    for (what, secret) in &secrets {
        assert!(secret.len() >= 32, "{what}");
        for (place, bytes) in &haystacks {
            if bytes.windows(secret.len()).any(|w| w == secret.as_bytes()) {
                found.push(format!("{what} in {place}"));
            }
        }
    }
    assert!(found.is_empty(), "secrets found: {found:#?}");
    // What init printed for the operator is the only place the join token went.
    let init_out = std::fs::read_to_string(stdout_of(&cluster.gateways[0].log)).unwrap();
    assert!(
        init_out.contains(join.trim()),
        "init printed the join token"
    );
    assert!(!init_out.contains(&secret_of(&admin)));
}

#[test]
fn a_site_token_rotated_with_a_grace_works_until_the_grace_ends_then_the_link_closes() {
    let mut cluster = TestCluster::new();
    cluster.start_hub();
    cluster.init("gw-a", &[]);
    let addr = cluster.addr(0);
    let old = cluster.site_token("site-1");
    let hub = cluster.hub_addr();
    let out = cluster.cli(
        &addr,
        &[
            "cloud", "attach", "--hub", &hub, "--site", "site-1", "--token", &old,
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let connected = |cluster: &TestCluster| {
        cluster
            .try_json(&addr, &["status"])
            .is_some_and(|s| s["cloud"]["connected"] == true)
    };
    wait_for("the link", DEADLINE, || connected(&cluster).then_some(()));
    // A new token with a grace: the link on the old one stays up meanwhile.
    let out = cluster.hub_cli(&["site-token", "--site", "site-1", "--grace", "4s"]);
    assert!(out.status.success(), "{}", stderr(&out));
    std::thread::sleep(Duration::from_secs(2));
    assert!(connected(&cluster), "the old token works within its grace");
    // Past the grace the hub closes the link, and the old token opens nothing.
    let status = wait_for("the old token refused", DEADLINE, || {
        let s = cluster.try_json(&addr, &["status"])?;
        let error = s["cloud"]["last_error"].as_str()?.to_string();
        (s["cloud"]["connected"] == false && error.contains("wrong token")).then_some(s)
    });
    assert_eq!(status["cloud"]["connected"], false);
}
