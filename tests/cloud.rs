//! Cloud sync end to end: a real `gantry hub` process and real gateways on
//! loopback, attached through the CLI, with the hub and leaders killed.

mod support;

const BUSYBOX: &str = "127.0.0.1:5000/gantry/busybox:test";

use serde_json::Value;
use support::{wait_for, TestCluster, DEADLINE};

const SITE: &str = "site-1";

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// A site token from the hub.
fn token(cluster: &TestCluster, site: &str) -> String {
    let out = cluster.hub_cli(&["site-token", "--site", site]);
    assert!(out.status.success(), "site-token: {}", stderr(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn attach(cluster: &TestCluster, gateway: &str, token: &str) {
    attach_through(cluster, gateway, &cluster.hub_addr(), token);
}

/// Attaches through `hub`: the hub itself, or a proxy in front of it.
fn attach_through(cluster: &TestCluster, gateway: &str, hub: &str, token: &str) {
    let out = cluster.cli(
        gateway,
        &[
            "cloud", "attach", "--hub", hub, "--site", SITE, "--token", token,
        ],
    );
    assert!(out.status.success(), "attach: {}", stderr(&out));
}

/// Each workload the hub knows of the site, with its source.
fn sources(site: &Value) -> std::collections::BTreeMap<String, String> {
    site["workloads"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|w| Some((w["name"].as_str()?.into(), w["source"].as_str()?.into())))
                .collect()
        })
        .unwrap_or_default()
}

fn workload<'a>(workloads: &'a Value, name: &str) -> Option<&'a Value> {
    workloads.as_array()?.iter().find(|w| w["name"] == name)
}

/// Waits until the site's hub entry satisfies `check`.
fn wait_hub(cluster: &TestCluster, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    wait_for(what, DEADLINE, || {
        let site = cluster.hub_site(SITE);
        check(&site).then_some(site)
    })
}

fn names(list: &Value, field: &str) -> Vec<String> {
    let mut names: Vec<String> = list
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v[field].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names.dedup();
    names
}

/// One attached gateway and its hub.
fn attached_site() -> (TestCluster, String) {
    let mut cluster = TestCluster::new();
    cluster.start_hub();
    cluster.init("gw-a", &[]);
    let addr = cluster.addr(0);
    let token = token(&cluster, SITE);
    attach(&cluster, &addr, &token);
    wait_for("the link to connect", DEADLINE, || {
        let status = cluster.try_json(&addr, &["status"])?;
        (status["cloud"]["connected"] == true).then_some(())
    });
    (cluster, addr)
}

#[test]
fn hub_apply_reaches_the_site_and_is_scheduled_and_hub_delete_removes_it() {
    let (cluster, addr) = attached_site();
    let status = cluster.json(&addr, &["status"]);
    let cloud = &status["cloud"];
    assert_eq!(cloud["attached"], true);
    assert_eq!(cloud["site"], SITE);
    assert_eq!(cloud["hub"], cluster.hub_addr().as_str());
    assert!(cloud["since"].is_string());

    let out = cluster.hub_apply(
        SITE,
        "name: web\nimage: 127.0.0.1:5000/gantry/img:1\nreplicas: 2\n",
        &[],
    );
    assert!(out.status.success(), "hub apply: {}", stderr(&out));
    let web = wait_for("the cloud workload to be placed", DEADLINE, || {
        let workloads = cluster.try_json(&addr, &["get", "workloads"])?;
        let web = workload(&workloads, "web")?.clone();
        (web["placed"] == 2).then_some(web)
    });
    assert_eq!(web["source"], "cloud");
    assert_eq!(web["generation"], 1);
    let instances = cluster.json(&addr, &["get", "instances"]);
    assert_eq!(
        instances
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["workload"] == "web" && i["node"] == "gw-a")
            .count(),
        2
    );
    let site = wait_hub(&cluster, "the hub to see the instances", |s| {
        s["acked_revision"] == 1
            && s["instances"]
                .as_array()
                .is_some_and(|i| i.len() == 2 && i.iter().all(|i| i["node"] == "gw-a"))
    });
    assert_eq!(site["connected"], true);
    assert_eq!(site["desired_revision"], 1);
    assert_eq!(names(&site["nodes"], "name"), ["gw-a"]);
    assert!(site["last_seen"].is_string());
    assert_eq!(site["instances"][0]["workload"], "web");
    assert!(site["instances"][0]["state"].is_string());
    let local_status = cluster.json(&addr, &["status"]);
    assert_eq!(local_status["cloud"]["acked_revision"], 1);

    let out = cluster.hub_cli(&["delete", "--site", SITE, "workload", "web"]);
    assert!(out.status.success(), "hub delete: {}", stderr(&out));
    wait_for("the cloud workload to go", DEADLINE, || {
        let workloads = cluster.try_json(&addr, &["get", "workloads"])?;
        workload(&workloads, "web").is_none().then_some(())
    });
    let instances = cluster.json(&addr, &["get", "instances"]);
    assert_eq!(instances.as_array().map(Vec::len), Some(0));
    wait_hub(&cluster, "the hub to see the site empty", |s| {
        s["acked_revision"] == 2 && s["instances"].as_array().is_some_and(Vec::is_empty)
    });
}

#[test]
fn with_the_hub_down_local_admin_works_and_after_its_restart_nothing_is_lost() {
    let (mut cluster, addr) = attached_site();
    // A real container, so that the outage can be seen not to touch it.
    let archive = cluster.tmp.path().join("busybox.tar");
    gantry_node::testing::busybox_oci_archive(&archive, BUSYBOX).expect("busybox archive");
    let out = cluster.cli(&addr, &["image", "import", archive.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let web = format!("name: web\nimage: {BUSYBOX}\ncommand: [sleep, '100000']\n");
    assert!(cluster.hub_apply(SITE, &web, &[]).status.success());
    let before = wait_hub(
        &cluster,
        "the first revision acked and reported Running",
        |s| {
            s["acked_revision"] == 1
                && s["instances"]
                    .as_array()
                    .is_some_and(|i| i.len() == 1 && i[0]["state"] == "Running")
        },
    );
    let running = cluster.running_containers("gw-a", "web");
    assert_eq!(running.len(), 1, "hub apply -> Running on the site");

    cluster.hub.as_mut().unwrap().kill();
    wait_for("the site to notice", DEADLINE, || {
        let status = cluster.try_json(&addr, &["status"])?;
        (status["cloud"]["connected"] == false).then_some(())
    });
    let out = cluster.apply(&addr, "name: mine\nimage: 127.0.0.1:5000/gantry/local:1\n");
    assert!(out.status.success(), "local apply: {}", stderr(&out));
    let out = cluster.cli(&addr, &["delete", "workload", "mine"]);
    assert!(out.status.success(), "local delete: {}", stderr(&out));
    assert!(cluster
        .apply(&addr, "name: mine\nimage: 127.0.0.1:5000/gantry/local:2\n")
        .status
        .success());

    cluster.hub.as_mut().unwrap().restart();
    // Nothing the hub knew is lost: desired state, revisions, token, status.
    let after = cluster.hub_site(SITE);
    assert_eq!(after["desired_revision"], before["desired_revision"]);
    assert_eq!(after["desired_workloads"], before["desired_workloads"]);
    assert!(after["acked_revision"].as_u64() >= Some(1));
    assert_eq!(after["nodes"], before["nodes"]);
    assert_eq!(after["token_set"], true);

    assert!(cluster
        .hub_apply(SITE, "name: db\nimage: 127.0.0.1:5000/gantry/db:1\n", &[])
        .status
        .success());
    wait_for(
        "the change made after the restart to arrive",
        DEADLINE,
        || {
            let workloads = cluster.try_json(&addr, &["get", "workloads"])?;
            let db = workload(&workloads, "db")?;
            (db["source"] == "cloud").then_some(())
        },
    );
    // After the reconnect the hub has the whole truth, local workloads included.
    let site = wait_hub(&cluster, "the whole status at the hub", |s| {
        s["connected"] == true
            && s["acked_revision"] == 2
            && names(&s["instances"], "workload") == ["db", "mine", "web"]
    });
    let sources = sources(&site);
    assert_eq!(sources.get("mine").map(String::as_str), Some("local"));
    assert_eq!(sources.get("web").map(String::as_str), Some("cloud"));
    assert_eq!(names(&site["nodes"], "name"), ["gw-a"]);
    let workloads = cluster.json(&addr, &["get", "workloads"]);
    assert_eq!(
        workload(&workloads, "mine").unwrap()["image"],
        "127.0.0.1:5000/gantry/local:2"
    );
    // The cloud's container ran through the whole outage: same pid, no restart.
    assert_eq!(cluster.running_containers("gw-a", "web"), running);
    let instances = cluster.json(&addr, &["get", "instances"]);
    let web = instances
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["workload"] == "web")
        .unwrap();
    assert_eq!(web["restarts"], 0);
    assert_eq!(web["state"], "Running");
}

#[test]
fn a_leader_killed_between_commit_and_ack_gets_the_revision_again_and_applies_it_once() {
    let mut cluster = TestCluster::new();
    cluster.start_hub();
    // Every gateway exits right after committing revision 2, before its Ack.
    cluster.env = vec![("GANTRY_TEST_EXIT_BEFORE_ACK".into(), "2".into())];
    cluster.init("gw-a", &[]);
    cluster.join("gw-b", &[]);
    cluster.join("gw-c", &[]);
    let addr = cluster.addr(0);
    let token = token(&cluster, SITE);
    attach(&cluster, &addr, &token);
    assert!(cluster
        .hub_apply(SITE, "name: web\nimage: 127.0.0.1:5000/gantry/img:1\n", &[])
        .status
        .success());
    wait_hub(&cluster, "revision 1 acked", |s| s["acked_revision"] == 1);

    let leader = cluster.status_with_leader()["leader"]
        .as_str()
        .unwrap()
        .to_string();
    let leader_index = cluster.index_of(&leader);
    assert!(cluster
        .hub_apply(SITE, "name: web\nimage: 127.0.0.1:5000/gantry/img:2\n", &[])
        .status
        .success());
    wait_for("the leader to exit before acking", DEADLINE, || {
        (!cluster.gateways[leader_index].is_running()).then_some(())
    });
    assert!(cluster.gateways[leader_index]
        .log_text()
        .contains("exiting after commit, before Ack"));

    // A new leader reopens the link; the hub delivers revision 2 again.
    let site = wait_hub(&cluster, "revision 2 acked by the new leader", |s| {
        s["acked_revision"] == 2 && s["connected"] == true
    });
    assert_eq!(site["desired_revision"], 2);
    let redelivered = wait_for("a gateway to log the redelivery", DEADLINE, || {
        cluster
            .gateways
            .iter()
            .find(|g| {
                g.log_text()
                    .contains("already committed; acknowledging it again")
            })
            .map(|g| g.name.clone())
    });
    assert_ne!(redelivered, leader);
    let status = cluster.status_with_leader();
    assert_ne!(status["leader"], leader.as_str());
    let web = workload(&status["workloads"], "web").unwrap();
    assert_eq!(web["generation"], 2, "applied exactly once");
    assert_eq!(web["spec"]["image"], "127.0.0.1:5000/gantry/img:2");
    assert_eq!(status["cloud"]["acked_revision"], 2);
    assert_eq!(status["cloud"]["connected"], true);
    // A follower says something sensible about the leader's link.
    let follower = cluster
        .gateways
        .iter()
        .find(|g| g.name != leader && g.name != status["leader"])
        .unwrap()
        .addr();
    let seen = wait_for("a follower to see the link", DEADLINE, || {
        let s = cluster.try_json(&follower, &["status"])?;
        (s["cloud"]["connected"] == true).then_some(s)
    });
    assert_eq!(seen["cloud"]["connection_known_by"], "replicated");
}

#[test]
fn a_wrong_site_token_is_refused() {
    let mut cluster = TestCluster::new();
    cluster.start_hub();
    cluster.init("gw-a", &[]);
    let addr = cluster.addr(0);
    let real = token(&cluster, SITE);
    assert!(cluster
        .hub_apply(SITE, "name: web\nimage: 127.0.0.1:5000/gantry/img:1\n", &[])
        .status
        .success());
    // Not a site token at all: refused by `cloud attach`, nothing stored.
    let hub = cluster.hub_addr();
    let out = cluster.cli(
        &addr,
        &[
            "cloud",
            "attach",
            "--hub",
            &hub,
            "--site",
            SITE,
            "--token",
            "not-the-token",
        ],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("site token"), "{}", stderr(&out));
    // The right hub, a wrong secret: the hub refuses the link.
    let (prefix, _) = real.rsplit_once('.').unwrap();
    let wrong = format!("{prefix}.{}", "0".repeat(64));
    attach(&cluster, &addr, &wrong);
    let status = wait_for("the link to be refused", DEADLINE, || {
        let s = cluster.try_json(&addr, &["status"])?;
        let error = s["cloud"]["last_error"].as_str()?;
        error.contains("wrong token").then_some(s)
    });
    assert_eq!(status["cloud"]["connected"], false);
    assert_eq!(status["cloud"]["acked_revision"], 0);
    assert!(workload(&status["workloads"], "web").is_none());
    let site = cluster.hub_site(SITE);
    assert_eq!(site["connected"], false);
    assert_eq!(site["acked_revision"], 0);
}

#[test]
fn malformed_desired_state_is_rejected_whole_and_name_clashes_are_refused_on_the_second_side() {
    let (cluster, addr) = attached_site();
    assert!(cluster
        .hub_apply(SITE, "name: web\nimage: 127.0.0.1:5000/gantry/img:1\n", &[])
        .status
        .success());
    wait_hub(&cluster, "revision 1 acked", |s| s["acked_revision"] == 1);
    let before = cluster.json(&addr, &["get", "workloads"]);

    // Malformed: one good and one bad document; the site takes neither.
    let out = cluster.hub_apply(
        SITE,
        "name: web\nimage: 127.0.0.1:5000/gantry/img:2\n---\nname: db\nimage: 127.0.0.1:5000/gantry/db:1\ncolour: blue\n",
        &["--unchecked"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let site = wait_hub(&cluster, "the rejection at the hub", |s| {
        s["rejected"]["revision"] == 2
    });
    let error = site["rejected"]["error"].as_str().unwrap();
    assert!(error.contains("db") && error.contains("colour"), "{error}");
    assert_eq!(site["acked_revision"], 1);
    let table = String::from_utf8_lossy(&cluster.hub_cli(&["status"]).stdout).to_string();
    assert!(table.contains("colour"), "{table}");
    assert_eq!(cluster.json(&addr, &["get", "workloads"]), before);

    // The site comes second: a local workload of a cloud name is refused.
    let out = cluster.apply(&addr, "name: web\nimage: 127.0.0.1:5000/gantry/local:1\n");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("workload 'web' is owned by the cloud"),
        "{}",
        stderr(&out)
    );
    let out = cluster.cli(&addr, &["delete", "workload", "web"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("owned by the cloud"),
        "{}",
        stderr(&out)
    );

    // The hub comes second, knowing the local name: refused at the hub.
    assert!(cluster
        .apply(&addr, "name: mine\nimage: 127.0.0.1:5000/gantry/local:1\n")
        .status
        .success());
    wait_hub(&cluster, "the hub to see the local workload", |s| {
        names(&s["workloads"], "name").contains(&"mine".to_string())
    });
    let out = cluster.hub_apply(
        SITE,
        "name: mine\nimage: 127.0.0.1:5000/gantry/cloud:1\n",
        &[],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("'mine' is a local workload on site"),
        "{}",
        stderr(&out)
    );

    // The hub comes second without knowing (the site was detached when the
    // local workload appeared): the site commits the rest and reports why
    // it refused the clashing name.
    let out = cluster.cli(&addr, &["cloud", "detach"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_hub(&cluster, "the hub to see the site go", |s| {
        s["connected"] == false
    });
    assert!(cluster
        .apply(&addr, "name: other\nimage: 127.0.0.1:5000/gantry/local:1\n")
        .status
        .success());
    let out = cluster.hub_apply(
        SITE,
        "name: web\nimage: 127.0.0.1:5000/gantry/img:3\n---\nname: other\nimage: 127.0.0.1:5000/gantry/cloud:1\n---\nname: db\nimage: 127.0.0.1:5000/gantry/db:1\n",
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let token = token(&cluster, SITE);
    attach(&cluster, &addr, &token);
    let site = wait_hub(&cluster, "the refusal reported to the hub", |s| {
        s["acked_revision"] == 3 && !s["refused"].as_array().is_none_or(Vec::is_empty)
    });
    assert_eq!(site["refused"][0]["name"], "other");
    assert!(site["refused"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("owned by a local workload"));
    assert!(site["rejected"].is_null());
    let workloads = cluster.json(&addr, &["get", "workloads"]);
    assert_eq!(workload(&workloads, "other").unwrap()["source"], "local");
    assert_eq!(workload(&workloads, "db").unwrap()["source"], "cloud");
    assert_eq!(
        workload(&workloads, "web").unwrap()["spec"]["image"],
        "127.0.0.1:5000/gantry/img:3"
    );
    let status = cluster.json(&addr, &["status"]);
    assert_eq!(status["cloud"]["refused"][0]["name"], "other");
}

/// Copies a directory tree (the hub's data dir, while the hub is stopped).
fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[test]
fn a_hub_restored_from_an_older_backup_starts_a_new_epoch_and_the_site_follows_it() {
    let (mut cluster, addr) = attached_site();
    assert!(cluster
        .hub_apply(
            SITE,
            "name: kept\nimage: 127.0.0.1:5000/gantry/kept:1\n",
            &[]
        )
        .status
        .success());
    wait_hub(&cluster, "revision 1 acked", |s| s["acked_revision"] == 1);
    // A backup of the hub at revision 1.
    let hub_dir = cluster.hub.as_ref().unwrap().dir.clone();
    let backup = cluster.tmp.path().join("hub-backup");
    cluster.hub.as_mut().unwrap().kill();
    copy_tree(&hub_dir, &backup);
    cluster.hub.as_mut().unwrap().restart();
    // Revisions 2 and 3 after the backup, committed on the site.
    for name in ["later-a", "later-b"] {
        let manifest = format!("name: {name}\nimage: 127.0.0.1:5000/gantry/later:1\n");
        assert!(cluster.hub_apply(SITE, &manifest, &[]).status.success());
    }
    wait_hub(&cluster, "revision 3 acked", |s| s["acked_revision"] == 3);

    // The hub's disk is restored from the backup: its history is back at
    // revision 1, and its next change is revision 2 again, with other
    // content than the site committed as revision 2.
    cluster.hub.as_mut().unwrap().kill();
    std::fs::remove_dir_all(&hub_dir).unwrap();
    copy_tree(&backup, &hub_dir);
    cluster.hub.as_mut().unwrap().restart();
    assert!(cluster
        .hub_apply(
            SITE,
            "name: after-restore\nimage: 127.0.0.1:5000/gantry/new:1\n",
            &[]
        )
        .status
        .success());

    // The site takes the hub's word, not its own count: exactly the
    // restored hub's workloads, the new one included.
    wait_for("the site to follow the restored hub", DEADLINE, || {
        let workloads = cluster.try_json(&addr, &["get", "workloads"])?;
        let mut cloud: Vec<String> = workloads
            .as_array()?
            .iter()
            .filter(|w| w["source"] == "cloud")
            .filter_map(|w| w["name"].as_str().map(String::from))
            .collect();
        cloud.sort();
        (cloud == ["after-restore", "kept"]).then_some(())
    });
    let site = wait_hub(&cluster, "the hub sees the site in sync", |s| {
        s["connected"] == true && s["acked_revision"] == s["desired_revision"]
    });
    assert_eq!(site["desired_revision"], 2, "{site}");
    let log = cluster.hub.as_ref().unwrap().log_text();
    assert!(
        log.contains("the site is ahead of the hub's history; starting a new epoch"),
        "the hub said why it resynced"
    );
}

/// A carrier NAT that forgets the link's mapping, then a path that drops
/// everything for a while: no reset reaches either end, so only the
/// link's own keepalive can notice. Default flags throughout (a 60 s ping
/// interval, 20 s to answer), so this takes a few minutes.
#[test]
fn a_link_whose_packets_vanish_is_noticed_and_a_hub_change_made_meanwhile_arrives() {
    use std::time::{Duration, Instant};
    use support::blackhole::BlackholeProxy;

    const NOTICE: Duration = Duration::from_secs(120);
    let mut cluster = TestCluster::new();
    cluster.start_hub();
    cluster.init("gw-a", &[]);
    let addr = cluster.addr(0);
    let proxy = BlackholeProxy::start(&cluster.hub_addr());
    let token = token(&cluster, SITE);
    attach_through(&cluster, &addr, &proxy.addr, &token);
    let connected_since = |cluster: &TestCluster| -> Option<u64> {
        let status = cluster.try_json(&addr, &["status"])?;
        (status["cloud"]["connected"] == true).then(|| status["cloud"]["since_ms"].as_u64())?
    };
    let first = wait_for("the link to connect", DEADLINE, || {
        connected_since(&cluster)
    });
    assert_eq!(cluster.json(&addr, &["status"])["cloud"]["keepalive"], "1m");
    let apply = |env: &str| {
        let manifest =
            format!("name: web\nimage: 127.0.0.1:5000/gantry/img:1\nenv: {{PHASE: {env}}}\n");
        let out = cluster.hub_apply(SITE, &manifest, &[]);
        assert!(out.status.success(), "hub apply: {}", stderr(&out));
    };
    let site_phase = |cluster: &TestCluster| -> Option<String> {
        let workloads = cluster.try_json(&addr, &["get", "workloads"])?;
        workload(&workloads, "web")?["spec"]["env"]["PHASE"]
            .as_str()
            .map(String::from)
    };
    apply("one");
    wait_for("the first hub change", DEADLINE, || {
        (site_phase(&cluster)? == "one").then_some(())
    });

    // The NAT forgets: the open connection goes silent, a new one would pass.
    let accepted = proxy.accepted();
    proxy.forget_existing();
    let cut = Instant::now();
    let again = wait_for(
        "the site to notice and reconnect",
        NOTICE + DEADLINE,
        || connected_since(&cluster).filter(|since| *since > first),
    );
    let noticed = cut.elapsed();
    eprintln!("forgotten mapping noticed and reconnected after {noticed:?}");
    assert!(
        noticed < NOTICE,
        "a silent link took {noticed:?} to be replaced"
    );
    assert!(
        proxy.accepted() > accepted,
        "the site opened a new connection"
    );
    wait_hub(&cluster, "the hub to see the new link", |s| {
        s["connected"] == true
    });

    // The whole path drops packets; the hub changes the site meanwhile.
    proxy.blackhole();
    apply("two");
    wait_for(
        "the site to notice the dead path",
        NOTICE + DEADLINE,
        || {
            let status = cluster.try_json(&addr, &["status"])?;
            (status["cloud"]["connected"] == false).then_some(())
        },
    );
    let status = cluster.json(&addr, &["status"]);
    let error = status["cloud"]["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    eprintln!("dead path noticed: {error}");
    assert!(
        error.contains("keepalive ping"),
        "the site says why the link ended: {error}"
    );
    assert_eq!(status["cloud"]["connected"], false);
    assert_eq!(site_phase(&cluster).as_deref(), Some("one"));
    // Stay down long enough for the reconnect back-off to grow (and for
    // the attempts to be swallowed mid-handshake, as on a dead path).
    let attempts = proxy.accepted();
    std::thread::sleep(Duration::from_secs(45));
    assert!(
        proxy.accepted() > attempts,
        "the site kept trying during the blackhole"
    );
    assert_eq!(
        cluster.json(&addr, &["status"])["cloud"]["connected"],
        false
    );
    proxy.restore();
    let back = Instant::now();
    wait_for(
        "the change made during the blackhole",
        NOTICE + DEADLINE,
        || (site_phase(&cluster)? == "two").then_some(()),
    );
    let arrived = back.elapsed();
    eprintln!("hub change arrived {arrived:?} after the path returned");
    assert!(
        arrived < NOTICE,
        "the change took {arrived:?} after the path returned"
    );
    let again2 = wait_for("the link to be up", DEADLINE, || connected_since(&cluster));
    assert!(again2 > again);
    wait_hub(&cluster, "the hub to hear the acknowledgement", |s| {
        s["connected"] == true && s["acked_revision"] == 2
    });
}

/// Edge autonomy (issue #11): three gateways keep working while their
/// uplink is cut. During the cut a gateway is lost and its work moves, an
/// admin applies a local change, and the hub queues a change of its own.
/// When the uplink returns, both changes are in force, nothing that was
/// not on the lost gateway restarted (same container ids and pids), and
/// the hub holds the whole truth: every workload, where it runs, and the
/// lost gateway as not Ready. Default flags throughout; the cut drops
/// packets without a reset, as a dead mobile uplink does.
#[test]
fn an_uplink_cut_while_a_gateway_dies_loses_neither_the_local_nor_the_cloud_change() {
    use std::collections::BTreeMap;
    use std::time::Duration;
    use support::blackhole::BlackholeProxy;

    const NOTICE: Duration = Duration::from_secs(120);
    let mut cluster = TestCluster::new();
    cluster.start_hub();
    cluster.init("gw-a", &[]);
    cluster.join("gw-b", &[]);
    cluster.join("gw-c", &[]);
    let addr = cluster.addr(0);
    let archive = cluster.tmp.path().join("busybox.tar");
    gantry_node::testing::busybox_oci_archive(&archive, BUSYBOX).expect("busybox archive");
    let out = cluster.cli(
        &addr,
        &["image", "import", archive.to_str().unwrap(), "--all"],
    );
    assert!(out.status.success(), "import: {}", stderr(&out));

    let proxy = BlackholeProxy::start(&cluster.hub_addr());
    let token = token(&cluster, SITE);
    attach_through(&cluster, &addr, &proxy.addr, &token);

    let sleeper = |name: &str, replicas: u32| {
        format!(
            "name: {name}\nimage: {BUSYBOX}\nreplicas: {replicas}\ncommand: [sleep, '100000']\n"
        )
    };
    assert!(cluster
        .hub_apply(SITE, &sleeper("web", 6), &[])
        .status
        .success());
    assert!(cluster
        .apply(&addr, &sleeper("local-1", 3))
        .status
        .success());
    let all_running = |cluster: &TestCluster, expected: usize| -> Option<Value> {
        let status = cluster.try_json(&addr, &["status"])?;
        let leader = status["leader"].as_str()?.to_string();
        let leader_addr = cluster.addr(cluster.index_of(&leader));
        let instances = cluster.try_json(&leader_addr, &["get", "instances"])?;
        let list = instances.as_array()?;
        (list.len() == expected && list.iter().all(|i| i["state"] == "Running"))
            .then_some(instances)
    };
    wait_for("9 instances Running", DEADLINE, || all_running(&cluster, 9));
    wait_hub(
        &cluster,
        "the hub to hold revision 1 and every instance",
        |s| s["acked_revision"] == 1 && s["instances"].as_array().is_some_and(|i| i.len() == 9),
    );

    // The victim: a gateway that does not hold the uplink (only the leader
    // does), so that the cut and the loss are two separate faults.
    let leader = cluster.status_with_leader()["leader"]
        .as_str()
        .unwrap()
        .to_string();
    let victim = ["gw-a", "gw-b", "gw-c"]
        .into_iter()
        .find(|n| *n != leader)
        .unwrap()
        .to_string();
    let survivors: Vec<String> = ["gw-a", "gw-b", "gw-c"]
        .into_iter()
        .filter(|n| *n != victim)
        .map(String::from)
        .collect();
    let survivor_addr = cluster.addr(cluster.index_of(&leader));
    let before: BTreeMap<String, Vec<(String, Option<u32>)>> = survivors
        .iter()
        .flat_map(|gw| {
            ["web", "local-1"].map(|w| (format!("{gw}/{w}"), cluster.running_containers(gw, w)))
        })
        .collect();

    // The uplink goes dead; the site notices by its keepalive.
    proxy.blackhole();
    wait_for(
        "the site to notice the dead uplink",
        NOTICE + DEADLINE,
        || {
            let status = cluster.try_json(&survivor_addr, &["status"])?;
            (status["cloud"]["connected"] == false).then_some(())
        },
    );

    // Meanwhile: a gateway is lost (with its containers), the admin adds
    // a workload, the hub queues one.
    let doomed = cluster.running_containers(&victim, "web");
    let doomed_local = cluster.running_containers(&victim, "local-1");
    let index = cluster.index_of(&victim);
    cluster.gateways[index].kill();
    for (_, pid) in doomed.into_iter().chain(doomed_local) {
        if let Some(pid) = pid {
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
        }
    }
    let out = cluster.apply(&survivor_addr, &sleeper("local-2", 1));
    assert!(
        out.status.success(),
        "local apply during the cut: {}",
        stderr(&out)
    );
    assert!(cluster
        .hub_apply(SITE, &sleeper("db", 1), &[])
        .status
        .success());
    wait_for(
        "the lost gateway's work to run on the others",
        DEADLINE,
        || {
            let instances = all_running(&cluster, 10)?;
            instances
                .as_array()?
                .iter()
                .all(|i| i["node"] != victim.as_str())
                .then_some(())
        },
    );
    let site = cluster.hub_site(SITE);
    assert_eq!(site["acked_revision"], 1, "nothing crossed the dead uplink");

    // The uplink returns.
    proxy.restore();
    wait_for("the hub's change to arrive", NOTICE + DEADLINE, || {
        let workloads = cluster.try_json(&survivor_addr, &["get", "workloads"])?;
        (workload(&workloads, "db")?["source"] == "cloud").then_some(())
    });
    wait_for("11 instances Running", DEADLINE, || {
        all_running(&cluster, 11)
    });
    let site = wait_hub(&cluster, "the whole truth at the hub", |s| {
        s["connected"] == true
            && s["acked_revision"] == 2
            && names(&s["instances"], "workload") == ["db", "local-1", "local-2", "web"]
            && s["instances"].as_array().is_some_and(|i| {
                i.len() == 11
                    && i.iter()
                        .all(|x| x["state"] == "Running" && x["node"] != victim.as_str())
            })
            && s["nodes"].as_array().is_some_and(|nodes| {
                nodes
                    .iter()
                    .any(|n| n["name"] == victim.as_str() && n["status"] != "Ready")
            })
    });
    let sources = sources(&site);
    assert_eq!(sources.get("local-2").map(String::as_str), Some("local"));
    assert_eq!(sources.get("db").map(String::as_str), Some("cloud"));

    // What ran on the survivors before the cut still runs: same ids, same
    // pids, no restart.
    for gw in &survivors {
        for w in ["web", "local-1"] {
            let now = cluster.running_containers(gw, w);
            let then = &before[&format!("{gw}/{w}")];
            for container in then {
                assert!(
                    now.contains(container),
                    "{gw}: {w}'s container {container:?} restarted or went away: now {now:?}"
                );
            }
        }
    }
    let instances = cluster.json(&survivor_addr, &["get", "instances"]);
    for instance in instances.as_array().unwrap() {
        assert_eq!(instance["restarts"], 0, "no restarts: {instance}");
    }
}
