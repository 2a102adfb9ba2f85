//! End-to-end test of the plain HTTP routes on a gateway's port: a scrape
//! of `/metrics` over HTTPS with a viewer token, as Prometheus makes it
//! (curl, the cluster CA, the `gateway.gantry` name every gateway
//! certificate carries), linted by `promtool check metrics`; the figures
//! follow the cluster (Ready gateways, Running containers, a leader change
//! and a heal after kill -9 of the leader); `/healthz` and `/readyz` need no
//! credential, `/metrics` refuses a missing or wrong token with 401.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{wait_for, TestCluster, DEADLINE};

const IMAGE: &str = "127.0.0.1:5000/gantry/busybox:test";
const LONG: Duration = Duration::from_secs(120);

/// `GET path` on gateway `index` over HTTPS: (status code, body).
fn get(cluster: &TestCluster, index: usize, path: &str, token: Option<&str>) -> (u16, String) {
    let ca = cluster.gateways[index].dir.join("pki/ca.crt");
    https_get(&cluster.addr(index), "gateway.gantry", &ca, path, token)
}

/// `GET path` from `addr` as curl (or Prometheus) makes it: the server
/// checked against `ca` under `name`, the token as bearer.
fn https_get(
    addr: &str,
    name: &str,
    ca: &std::path::Path,
    path: &str,
    token: Option<&str>,
) -> (u16, String) {
    let port = addr.rsplit(':').next().expect("host:port");
    let mut curl = Command::new("curl");
    curl.args(["-sS", "--max-time", "10", "--cacert"])
        .arg(ca)
        .args(["--resolve", &format!("{name}:{port}:127.0.0.1")])
        .args(["-w", "\n%{http_code}"]);
    if let Some(token) = token {
        curl.args(["-H", &format!("Authorization: Bearer {token}")]);
    }
    let out = curl
        .arg(format!("https://{name}:{port}{path}"))
        .output()
        .expect("curl (install curl: scripts/setup.sh)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// The value of the sample `series` (name with its labels, as printed).
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

fn scrape(cluster: &TestCluster, index: usize, token: &str) -> Option<String> {
    let (code, body) = get(cluster, index, "/metrics", Some(token));
    (code == 200).then_some(body)
}

fn promtool_check(body: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package: scripts/setup.sh installs it)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(body.as_bytes())
        .expect("feed promtool");
    let out = child.wait_with_output().expect("promtool");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics: {said}\n{body}"
    );
}

#[test]
fn a_gateway_serves_metrics_that_follow_the_cluster_and_pass_promtool() {
    let mut cluster = TestCluster::new();
    cluster.init("gw-a", &[]);
    cluster.join("gw-b", &[]);
    cluster.join("gw-c", &[]);
    let addr = cluster.addr(0);
    cluster.import_busybox(&addr, IMAGE);
    let viewer = cluster.viewer_token(&addr);

    // Health needs no credential; metrics need a token that checks out.
    assert_eq!(get(&cluster, 0, "/healthz", None), (200, "ok\n".into()));
    let (code, body) = wait_for("gw-b ready", DEADLINE, || {
        let got = get(&cluster, 1, "/readyz", None);
        (got.0 == 200).then_some(got)
    });
    assert_eq!((code, body.as_str()), (200, "ready\n"));
    let (code, body) = get(&cluster, 0, "/metrics", None);
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("no token"), "{body}");
    // The last character changed (to one it is not: a token ending in 0
    // "forged" with a 0 would be the token itself).
    let last = if viewer.ends_with('0') { '1' } else { '0' };
    let forged = format!("{}{last}", &viewer[..viewer.len() - 1]);
    assert_eq!(get(&cluster, 0, "/metrics", Some(&forged)).0, 401);
    assert_eq!(get(&cluster, 0, "/nowhere", Some(&viewer)).0, 404);
    // Plain answers are never framed, cached or given a referrer.
    let port = addr.rsplit(':').next().expect("port").to_string();
    let head = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-D",
            "-",
            "--max-time",
            "10",
            "--cacert",
        ])
        .arg(cluster.gateways[0].dir.join("pki/ca.crt"))
        .args(["--resolve", &format!("gateway.gantry:{port}:127.0.0.1")])
        .arg(format!("https://gateway.gantry:{port}/login"))
        .output()
        .expect("curl");
    let head = String::from_utf8_lossy(&head.stdout).to_lowercase();
    for wanted in [
        "x-frame-options: deny",
        "referrer-policy: no-referrer",
        "cache-control: no-store",
        "x-content-type-options: nosniff",
    ] {
        assert!(head.contains(wanted), "{wanted}: {head}");
    }

    let body = wait_for("3 Ready gateways in the metrics", DEADLINE, || {
        let body = scrape(&cluster, 0, &viewer)?;
        (sample(&body, "gantry_gateways{status=\"Ready\"}") == Some(3.0)).then_some(body)
    });
    promtool_check(&body);
    assert!(
        sample(&body, "gantry_raft_term").is_some_and(|t| t >= 1.0),
        "{body}"
    );
    assert_eq!(sample(&body, "gantry_raft_has_leader"), Some(1.0));
    assert!(sample(&body, "gantry_raft_applied_index").is_some_and(|i| i >= 1.0));
    assert!(sample(&body, "gantry_raft_log_fsync_seconds_count").is_some_and(|n| n >= 1.0));
    assert!(sample(&body, "process_resident_memory_bytes").is_some_and(|b| b > 1e6));
    let leaders: Vec<usize> = (0..3)
        .filter(|i| {
            scrape(&cluster, *i, &viewer)
                .is_some_and(|b| sample(&b, "gantry_raft_is_leader") == Some(1.0))
        })
        .collect();
    assert_eq!(leaders.len(), 1, "exactly one gateway says it leads");
    let leader = leaders[0];
    let leader_body = scrape(&cluster, leader, &viewer).expect("the leader's metrics");
    assert!(
        sample(&leader_body, "gantry_raft_commit_index").is_some_and(|c| c >= 1.0),
        "{leader_body}"
    );

    // Three copies of a program that ignores SIGTERM, one per gateway.
    let out = cluster.apply(
        &addr,
        &format!(
            "name: web\nimage: {IMAGE}\nreplicas: 3\ncommand: [sh, -c, \"trap '' TERM; while true; do sleep 1; done\"]\n"
        ),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let survivor = (leader + 1) % 3;
    wait_for("3 Running instances in the metrics", LONG, || {
        let body = scrape(&cluster, survivor, &viewer)?;
        (sample(&body, "gantry_instances{state=\"Running\"}") == Some(3.0)).then_some(())
    });
    let on_leader = cluster.running_containers(&cluster.gateways[leader].name, "web");
    assert_eq!(
        on_leader.len(),
        1,
        "spread placement puts one copy on each gateway"
    );
    let changes_before = sample(
        &scrape(&cluster, survivor, &viewer).expect("metrics"),
        "gantry_raft_leader_changes_seen_total",
    )
    .expect("a leader change counter");

    // The leader's power is cut: a new leader, and its work heals elsewhere.
    cluster.gateways[leader].kill();
    let body = wait_for("a new leader that saw its work heal", LONG, || {
        (0..3).filter(|i| *i != leader).find_map(|i| {
            let body = scrape(&cluster, i, &viewer)?;
            let leads = sample(&body, "gantry_raft_is_leader") == Some(1.0);
            let healed = sample(&body, "gantry_heal_seconds_count").is_some_and(|n| n >= 1.0);
            let lost = sample(&body, "gantry_gateways{status=\"NotReady\"}") == Some(1.0);
            (leads && healed && lost).then_some(body)
        })
    });
    promtool_check(&body);
    let heal = sample(&body, "gantry_heal_seconds_sum").expect("a heal time");
    assert!(heal > 0.0, "{body}");
    let changes_after = sample(
        &scrape(&cluster, survivor, &viewer).expect("metrics"),
        "gantry_raft_leader_changes_seen_total",
    )
    .expect("a leader change counter");
    assert!(
        changes_after > changes_before,
        "{changes_after} after {changes_before}"
    );
    wait_for("3 Running again", LONG, || {
        let body = scrape(&cluster, survivor, &viewer)?;
        (sample(&body, "gantry_instances{state=\"Running\"}") == Some(3.0)).then_some(())
    });
}

#[test]
fn the_hub_and_an_attached_site_export_their_link() {
    let mut cluster = TestCluster::new();
    let hub = cluster.start_hub();
    cluster.init("gw-a", &[]);
    let addr = cluster.addr(0);
    let site_token = cluster.attach_with(
        &addr,
        "plant",
        "name: web\nimage: 127.0.0.1:5000/gantry/img:1\n",
    );

    let hub_dir = cluster.hub.as_ref().expect("a hub").dir.clone();
    let admin = cluster.hub_admin_token();
    let ca = hub_dir.join("pki/ca.crt");
    assert_eq!(https_get(&hub, "hub.gantry", &ca, "/healthz", None).0, 200);
    let (code, body) = https_get(&hub, "hub.gantry", &ca, "/metrics", None);
    assert_eq!(code, 401, "{body}");
    // A site token is no admin token.
    assert_eq!(
        https_get(&hub, "hub.gantry", &ca, "/metrics", Some(&site_token)).0,
        401
    );
    let body = wait_for("the site connected and in sync", DEADLINE, || {
        let (code, body) = https_get(&hub, "hub.gantry", &ca, "/metrics", Some(&admin));
        let synced = code == 200
            && sample(&body, "gantry_hub_site_connected{site=\"plant\"}") == Some(1.0)
            && sample(&body, "gantry_hub_site_acked_revision{site=\"plant\"}") == Some(1.0)
            && sample(&body, "gantry_hub_site_revision_lag{site=\"plant\"}") == Some(0.0);
        synced.then_some(body)
    });
    promtool_check(&body);
    assert_eq!(sample(&body, "gantry_hub_sites_connected"), Some(1.0));
    assert!(
        sample(
            &body,
            "gantry_hub_site_link_received_bytes_total{site=\"plant\"}"
        )
        .is_some_and(|b| b > 0.0),
        "{body}"
    );

    let viewer = cluster.viewer_token(&addr);
    let body = wait_for("the gateway's link figures", DEADLINE, || {
        let body = scrape(&cluster, 0, &viewer)?;
        let ok = sample(&body, "gantry_cloud_link_connected") == Some(1.0)
            && sample(&body, "gantry_cloud_acked_revision") == Some(1.0)
            && sample(&body, "gantry_cloud_desired_revision") == Some(1.0)
            && sample(&body, "gantry_cloud_link_bytes_total{direction=\"down\"}")
                .is_some_and(|b| b > 0.0)
            && sample(&body, "gantry_cloud_link_bytes_total{direction=\"up\"}")
                .is_some_and(|b| b > 0.0);
        ok.then_some(body)
    });
    promtool_check(&body);
}

/// A real Prometheus (Debian's) scrapes a gateway and the hub over HTTPS
/// with their CAs, server names and tokens, as the README's config says,
/// and answers queries on what it scraped.
#[test]
fn prometheus_scrapes_a_gateway_and_the_hub() {
    let mut cluster = TestCluster::new();
    let hub = cluster.start_hub();
    cluster.init("gw-a", &[]);
    let addr = cluster.addr(0);
    let viewer = cluster.viewer_token(&addr);
    let dir = cluster.tmp.path().join("prometheus");
    std::fs::create_dir_all(&dir).expect("prometheus dir");
    std::fs::write(dir.join("viewer.token"), viewer).expect("token file");
    let hub_dir = cluster.hub.as_ref().expect("a hub").dir.clone();
    let config = format!(
        "global: {{scrape_interval: 1s, scrape_timeout: 1s}}
scrape_configs:
  - job_name: gantry
    scheme: https
    authorization: {{credentials_file: {viewer}}}
    tls_config: {{ca_file: {gw_ca}, server_name: gateway.gantry}}
    static_configs: [{{targets: ['{addr}']}}]
  - job_name: gantry-hub
    scheme: https
    authorization: {{credentials_file: {hub_token}}}
    tls_config: {{ca_file: {hub_ca}, server_name: hub.gantry}}
    static_configs: [{{targets: ['{hub}']}}]
",
        viewer = dir.join("viewer.token").display(),
        gw_ca = cluster.gateways[0].dir.join("pki/ca.crt").display(),
        hub_token = hub_dir.join("admin-token").display(),
        hub_ca = hub_dir.join("pki/ca.crt").display(),
    );
    std::fs::write(dir.join("prometheus.yml"), config).expect("config");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let mut prometheus = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log")).expect("log"))
        .spawn()
        .expect("prometheus (Debian's prometheus package: scripts/setup.sh installs it)");
    let query = |q: &str| -> Option<Vec<serde_json::Value>> {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "5", "-G"])
            .arg(format!("http://127.0.0.1:{port}/api/v1/query"))
            .args(["--data-urlencode", &format!("query={q}")])
            .output()
            .ok()?;
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        doc["data"]["result"].as_array().cloned()
    };
    let value = |r: &serde_json::Value| r["value"][1].as_str().and_then(|v| v.parse::<f64>().ok());
    let up = wait_for("both targets up in Prometheus", LONG, || {
        let result = query("up")?;
        (result.len() == 2 && result.iter().all(|r| value(r) == Some(1.0))).then_some(result)
    });
    let jobs: Vec<&str> = up
        .iter()
        .filter_map(|r| r["metric"]["job"].as_str())
        .collect();
    assert!(
        jobs.contains(&"gantry") && jobs.contains(&"gantry-hub"),
        "{up:?}"
    );
    let term = wait_for("the gateway's term", LONG, || {
        query("gantry_raft_term")?.first().cloned()
    });
    assert!(value(&term).is_some_and(|t| t >= 1.0), "{term}");
    let sites = wait_for("the hub's sites", LONG, || {
        query("gantry_hub_sites")?.first().cloned()
    });
    assert_eq!(value(&sites), Some(0.0), "{sites}");
    let _ = prometheus.kill();
    let _ = prometheus.wait();
}
