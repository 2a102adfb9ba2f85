//! The cloud link through a real Mosquitto broker (TLS, a password), with
//! real gateways and containers: the desired state published retained by
//! a plain MQTT client, replayed on subscribe; a broker power cut during
//! which local admin goes on; a leader killed and the link moving with
//! leadership; and bad input refused with the reason.

mod support;

use serde_json::{json, Value};
use support::broker::{Broker, PASSWORD, USER};
use support::{wait_for, TestCluster, DEADLINE};

const IMAGE: &str = "127.0.0.1:5000/gantry/busybox:test";
const SITE: &str = "plant-7";

fn topic(name: &str) -> String {
    format!("gantry/sites/{SITE}/{name}")
}

fn desired(epoch: u64, revision: u64, workloads: &[Value]) -> String {
    json!({"epoch": epoch, "revision": revision, "workloads": workloads}).to_string()
}

fn web(replicas: u32, phase: &str) -> Value {
    json!({
        "name": "web",
        "image": IMAGE,
        "image_pull": "never",
        "command": ["sleep", "100000"],
        "replicas": replicas,
        "env": {"PHASE": phase},
    })
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// `cloud attach --mqtt URL` with the broker's CA and user.
fn attach_via(
    cluster: &TestCluster,
    addr: &str,
    url: &str,
    broker: &Broker,
    password: &str,
) -> std::process::Output {
    let ca = broker.ca.display().to_string();
    cluster.cli(
        addr,
        &[
            "cloud",
            "attach",
            "--mqtt",
            url,
            "--site",
            SITE,
            "--ca-file",
            &ca,
            "--username",
            USER,
            "--password",
            password,
        ],
    )
}

fn attach(cluster: &TestCluster, addr: &str, broker: &Broker) -> std::process::Output {
    attach_via(cluster, addr, &broker.url(), broker, PASSWORD)
}

fn workload<'a>(workloads: &'a Value, name: &str) -> Option<&'a Value> {
    workloads.as_array()?.iter().find(|w| w["name"] == name)
}

/// Instances of `name` that run, with their gateway.
fn running(cluster: &TestCluster, addr: &str, name: &str) -> Option<usize> {
    let instances = cluster.try_json(addr, &["get", "instances"])?;
    Some(
        instances
            .as_array()?
            .iter()
            .filter(|i| i["workload"] == name && i["state"] == "Running")
            .count(),
    )
}

fn docs(payloads: Vec<String>) -> Vec<Value> {
    payloads
        .iter()
        .filter_map(|p| serde_json::from_str(p).ok())
        .collect()
}

/// Every container of `name` on every gateway: (gateway, id, pid).
fn containers(cluster: &TestCluster, name: &str) -> Vec<(String, String, Option<u32>)> {
    let mut all = Vec::new();
    for gateway in ["gw-a", "gw-b", "gw-c"] {
        for (id, pid) in cluster.running_containers(gateway, name) {
            all.push((gateway.to_string(), id, pid));
        }
    }
    all.sort();
    all
}

#[test]
fn a_site_attached_through_mosquitto_follows_desired_through_broker_and_leader_loss() {
    let mut cluster = TestCluster::new();
    let mut broker = Broker::start(&cluster.tmp.path().join("broker"));
    // Published before the site exists: the broker replays it on subscribe.
    broker.publish(&topic("desired"), &desired(41, 1, &[web(2, "one")]), true);
    cluster.init("gw-a", &[]);
    cluster.join("gw-b", &[]);
    cluster.join("gw-c", &[]);
    let addr = cluster.addr(0);
    cluster.import_busybox(&addr, IMAGE);
    let online = broker.subscribe(&topic("online"), "online");
    let reported = broker.subscribe(&topic("reported"), "reported");

    let out = attach(&cluster, &addr, &broker);
    assert!(out.status.success(), "attach: {}", stderr(&out));
    wait_for("the retained desired state to run", DEADLINE, || {
        (running(&cluster, &addr, "web")? == 2).then_some(())
    });
    let status = cluster.json(&addr, &["status"]);
    assert_eq!(status["cloud"]["transport"], "mqtt");
    assert_eq!(status["cloud"]["hub"], broker.url().as_str());
    let workloads = cluster.json(&addr, &["get", "workloads"]);
    let w = workload(&workloads, "web").unwrap();
    assert_eq!(w["source"], "cloud");
    assert_eq!(w["generation"], 1);
    wait_for("the ack of revision 1 on reported", DEADLINE, || {
        docs(reported.payloads(&topic("reported")))
            .iter()
            .any(|d| d["type"] == "ack" && d["revision"] == 1 && d["epoch"] == 41)
            .then_some(())
    });
    wait_for("online true", DEADLINE, || {
        online
            .payloads(&topic("online"))
            .contains(&"true".to_string())
            .then_some(())
    });
    // A plain MQTT client asks for the whole truth and gets it.
    broker.publish(&topic("resync"), "", false);
    let full = wait_for("a full report with both replicas Running", DEADLINE, || {
        docs(reported.payloads(&topic("reported")))
            .into_iter()
            .rev()
            .find(|d| {
                d["type"] == "full"
                    && d["instances"].as_array().is_some_and(|i| {
                        i.iter()
                            .filter(|i| i["workload"] == "web" && i["state"] == "Running")
                            .count()
                            == 2
                    })
            })
    });
    assert_eq!(full["acked_revision"], 1);
    assert_eq!(full["nodes"].as_array().unwrap().len(), 3);
    let retained: Value = serde_json::from_str(
        &broker
            .retained(&topic("reported"))
            .expect("a retained report"),
    )
    .unwrap();
    assert_eq!(
        retained["type"], "full",
        "the retained report is the whole truth"
    );
    let before = containers(&cluster, "web");
    assert_eq!(before.len(), 2);

    // The broker's power is cut; local admin goes on meanwhile.
    broker.kill();
    wait_for("the site to notice the broker is gone", DEADLINE, || {
        let status = cluster.try_json(&addr, &["status"])?;
        (status["cloud"]["connected"] == false).then_some(())
    });
    let mine =
        format!("name: mine\nimage: {IMAGE}\nimage_pull: never\ncommand: [sleep, '100000']\n");
    let out = cluster.apply(&addr, &mine);
    assert!(
        out.status.success(),
        "local apply while offline: {}",
        stderr(&out)
    );
    wait_for("the local workload to run", DEADLINE, || {
        (running(&cluster, &addr, "mine")? == 1).then_some(())
    });
    broker.restart();
    // The clients' subscriptions died with the broker: new ones.
    drop((online, reported));
    let online = broker.subscribe(&topic("online"), "online-2");
    let reported = broker.subscribe(&topic("reported"), "reported-2");
    wait_for("the link to come back", DEADLINE, || {
        let status = cluster.try_json(&addr, &["status"])?;
        (status["cloud"]["connected"] == true).then_some(())
    });
    // The retained desired came again (persisted by the broker) and
    // changed nothing: same generation, same containers, no restart.
    wait_for(
        "the full report after reconnecting, local workload included",
        DEADLINE,
        || {
            let d: Value = serde_json::from_str(&broker.retained(&topic("reported"))?).ok()?;
            let has_mine = d["workloads"].as_array().is_some_and(|w| {
                w.iter()
                    .any(|w| w["name"] == "mine" && w["source"] == "local")
            });
            (d["type"] == "full" && has_mine).then_some(())
        },
    );
    let workloads = cluster.json(&addr, &["get", "workloads"]);
    assert_eq!(workload(&workloads, "web").unwrap()["generation"], 1);
    assert_eq!(
        containers(&cluster, "web"),
        before,
        "no restart on reconnect"
    );
    let instances = cluster.json(&addr, &["get", "instances"]);
    for i in instances
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["workload"] == "web")
    {
        assert_eq!(i["restarts"], 0, "{i}");
    }

    // A change from the cloud, then the leader dies.
    broker.publish(&topic("desired"), &desired(41, 2, &[web(3, "one")]), true);
    wait_for("revision 2: a third replica", DEADLINE, || {
        (running(&cluster, &addr, "web")? == 3).then_some(())
    });
    let status = cluster.status_with_leader();
    let leader = status["leader"].as_str().unwrap().to_string();
    let index = cluster.index_of(&leader);
    let trues_before = online
        .payloads(&topic("online"))
        .iter()
        .filter(|p| *p == "true")
        .count();
    cluster.gateways[index].kill();
    let survivor = (0..3).find(|i| *i != index).unwrap();
    let survivor_addr = cluster.addr(survivor);
    wait_for("a new leader to hold the link", DEADLINE + DEADLINE, || {
        let status = cluster.try_json(&survivor_addr, &["status"])?;
        (status["leader"].as_str()? != leader && status["cloud"]["connected"] == true).then_some(())
    });
    // The broker published the dead leader's will, then the new one said online.
    wait_for("online: false, then true again", DEADLINE, || {
        let seen = online.payloads(&topic("online"));
        let last_false = seen.iter().rposition(|p| p == "false")?;
        let trues = seen.iter().filter(|p| *p == "true").count();
        (trues > trues_before && seen[last_false..].contains(&"true".to_string())).then_some(())
    });
    broker.publish(&topic("desired"), &desired(41, 3, &[web(3, "three")]), true);
    wait_for("revision 3 through the new leader", DEADLINE, || {
        let workloads = cluster.try_json(&survivor_addr, &["get", "workloads"])?;
        (workload(&workloads, "web")?["spec"]["env"]["PHASE"] == "three").then_some(())
    });
    wait_for("the ack of revision 3", DEADLINE, || {
        docs(reported.payloads(&topic("reported")))
            .iter()
            .any(|d| d["type"] == "ack" && d["revision"] == 3)
            .then_some(())
    });
    let status = cluster.json(&survivor_addr, &["status"]);
    assert_eq!(status["cloud"]["acked_revision"], 3);
}

#[test]
fn bad_broker_settings_and_unreadable_documents_are_refused_with_the_reason() {
    let mut cluster = TestCluster::new();
    let broker = Broker::start(&cluster.tmp.path().join("broker"));
    cluster.init("gw-a", &[]);
    let addr = cluster.addr(0);

    // Refused before anything is stored.
    let plain = format!("mqtt://127.0.0.1:{}", broker.port);
    let out = cluster.cli(
        &addr,
        &["cloud", "attach", "--mqtt", &plain, "--site", SITE],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--insecure"), "{}", stderr(&out));
    let bogus = cluster.tmp.path().join("bogus-ca.pem");
    std::fs::write(&bogus, "not a certificate").unwrap();
    let url = broker.url();
    let out = cluster.cli(
        &addr,
        &[
            "cloud",
            "attach",
            "--mqtt",
            &url,
            "--site",
            SITE,
            "--ca-file",
            bogus.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--ca-file"), "{}", stderr(&out));
    let out = cluster.cli(
        &addr,
        &[
            "cloud",
            "attach",
            "--mqtt",
            &url,
            "--site",
            "a+b",
            "--ca-file",
            broker.ca.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("wildcard"), "{}", stderr(&out));
    assert_eq!(cluster.json(&addr, &["status"])["cloud"]["attached"], false);

    // A wrong password: stored (the broker is the judge), refused, said.
    let out = attach_via(&cluster, &addr, &url, &broker, "wrong");
    assert!(out.status.success(), "attach: {}", stderr(&out));
    let error = wait_for("the refusal to show", DEADLINE, || {
        let status = cluster.try_json(&addr, &["status"])?;
        status["cloud"]["last_error"].as_str().map(String::from)
    });
    assert!(error.contains("refused"), "{error}");

    // The right one, then documents the site cannot take.
    let out = attach(&cluster, &addr, &broker);
    assert!(out.status.success(), "attach: {}", stderr(&out));
    wait_for("the link", DEADLINE, || {
        let status = cluster.try_json(&addr, &["status"])?;
        (status["cloud"]["connected"] == true).then_some(())
    });
    let reported = broker.subscribe(&topic("reported"), "reported");
    let ok = json!({"name": "ok", "image": IMAGE, "image_pull": "never"});
    broker.publish(&topic("desired"), &desired(5, 1, &[ok]), true);
    wait_for("revision 1", DEADLINE, || {
        let workloads = cluster.try_json(&addr, &["get", "workloads"])?;
        workload(&workloads, "ok").map(|_| ())
    });
    let bad_cases = [
        ("{not json".to_string(), "not JSON"),
        (
            json!({"epoch": 5, "revision": 2, "surprise": true}).to_string(),
            "unknown field",
        ),
        (
            desired(5, 3, &[json!({"name": "Bad_Name", "image": IMAGE})]),
            "Bad_Name",
        ),
        (
            desired(
                5,
                4,
                &[
                    json!({"name": "twice", "image": IMAGE}),
                    json!({"name": "twice", "image": IMAGE}),
                ],
            ),
            "twice",
        ),
    ];
    for (payload, fragment) in &bad_cases {
        broker.publish(&topic("desired"), payload, true);
        wait_for(&format!("a reject naming {fragment}"), DEADLINE, || {
            docs(reported.payloads(&topic("reported")))
                .iter()
                .any(|d| {
                    d["type"] == "reject"
                        && d["error"].as_str().is_some_and(|e| e.contains(fragment))
                })
                .then_some(())
        });
    }
    // Nothing changed.
    let workloads = cluster.json(&addr, &["get", "workloads"]);
    let names: Vec<&str> = workloads
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|w| w["name"].as_str())
        .collect();
    assert_eq!(names, ["ok"]);
    assert_eq!(
        cluster.json(&addr, &["status"])["cloud"]["acked_revision"],
        1
    );
}

#[test]
fn a_leader_that_dies_between_commit_and_puback_gets_the_document_again_and_applies_it_once() {
    let mut cluster = TestCluster::new();
    let broker = Broker::start(&cluster.tmp.path().join("broker"));
    // Every gateway exits right after committing revision 2, before the PUBACK.
    cluster.env = vec![("GANTRY_TEST_EXIT_BEFORE_ACK".into(), "2".into())];
    cluster.init("gw-a", &[]);
    cluster.join("gw-b", &[]);
    cluster.join("gw-c", &[]);
    let addr = cluster.addr(0);
    let image =
        |tag: u32| json!({"name": "web", "image": format!("127.0.0.1:5000/gantry/img:{tag}")});
    broker.publish(&topic("desired"), &desired(9, 1, &[image(1)]), true);
    let out = attach(&cluster, &addr, &broker);
    assert!(out.status.success(), "attach: {}", stderr(&out));
    wait_for("revision 1", DEADLINE, || {
        let status = cluster.try_json(&addr, &["status"])?;
        (status["cloud"]["acked_revision"] == 1).then_some(())
    });
    let leader = cluster.status_with_leader()["leader"]
        .as_str()
        .unwrap()
        .to_string();
    let leader_index = cluster.index_of(&leader);
    let reported = broker.subscribe(&topic("reported"), "reported");
    broker.publish(&topic("desired"), &desired(9, 2, &[image(2)]), true);
    wait_for("the leader to exit before its PUBACK", DEADLINE, || {
        (!cluster.gateways[leader_index].is_running()).then_some(())
    });
    assert!(cluster.gateways[leader_index]
        .log_text()
        .contains("exiting after commit, before Ack"));
    let redelivered = wait_for(
        "a new leader to get revision 2 again",
        DEADLINE + DEADLINE,
        || {
            cluster
                .gateways
                .iter()
                .find(|g| {
                    g.log_text()
                        .contains("already committed; acknowledging it again")
                })
                .map(|g| g.name.clone())
        },
    );
    assert_ne!(redelivered, leader);
    wait_for(
        "the ack of revision 2 from the new leader",
        DEADLINE,
        || {
            docs(reported.payloads(&topic("reported")))
                .iter()
                .any(|d| d["type"] == "ack" && d["revision"] == 2)
                .then_some(())
        },
    );
    let status = cluster.status_with_leader();
    let web = workload(&status["workloads"], "web").unwrap();
    assert_eq!(web["generation"], 2, "applied exactly once");
    assert_eq!(web["spec"]["image"], "127.0.0.1:5000/gantry/img:2");
    assert_eq!(status["cloud"]["acked_revision"], 2);
}

/// The path to the broker goes silent (no reset): the MQTT keepalive, at
/// its default, notices within 80 s and the leader reconnects.
#[test]
fn a_silent_path_to_the_broker_is_noticed_and_the_link_reconnects() {
    use std::time::{Duration, Instant};
    use support::blackhole::BlackholeProxy;

    let mut cluster = TestCluster::new();
    let broker = Broker::start(&cluster.tmp.path().join("broker"));
    cluster.init("gw-a", &[]);
    let addr = cluster.addr(0);
    let proxy = BlackholeProxy::start(&format!("127.0.0.1:{}", broker.port));
    let url = format!("mqtts://{}", proxy.addr);
    let out = attach_via(&cluster, &addr, &url, &broker, PASSWORD);
    assert!(out.status.success(), "attach: {}", stderr(&out));
    let connected_since = |cluster: &TestCluster| -> Option<u64> {
        let status = cluster.try_json(&addr, &["status"])?;
        (status["cloud"]["connected"] == true).then(|| status["cloud"]["since_ms"].as_u64())?
    };
    let first = wait_for("the link", DEADLINE, || connected_since(&cluster));
    proxy.forget_existing();
    let cut = Instant::now();
    wait_for("the site to reconnect", Duration::from_secs(180), || {
        connected_since(&cluster).filter(|since| *since > first)
    });
    let noticed = cut.elapsed();
    eprintln!("silent broker path noticed and reconnected after {noticed:?}");
    assert!(noticed < Duration::from_secs(120), "took {noticed:?}");
    broker.publish(
        &topic("desired"),
        &desired(3, 1, &[json!({"name": "after", "image": IMAGE})]),
        true,
    );
    wait_for("a document through the new connection", DEADLINE, || {
        let workloads = cluster.try_json(&addr, &["get", "workloads"])?;
        workload(&workloads, "after").map(|_| ())
    });
}

/// `hub serve --mqtt`: the hub publishes a site's desired state to the
/// broker and reads its reports, as it does for a gRPC site.
#[test]
fn a_hub_serves_a_site_through_the_broker() {
    let mut cluster = TestCluster::new();
    let broker = Broker::start(&cluster.tmp.path().join("broker"));
    let url = broker.url();
    let ca = broker.ca.display().to_string();
    cluster.start_hub_with(&[
        "--mqtt",
        &url,
        "--mqtt-ca-file",
        &ca,
        "--mqtt-username",
        USER,
        "--mqtt-password",
        PASSWORD,
    ]);
    let manifest = |phase: &str| {
        format!("name: web\nimage: {IMAGE}\nimage_pull: never\ncommand: [sleep, '100000']\nenv: {{PHASE: {phase}}}\n")
    };
    let out = cluster.hub_apply(SITE, &manifest("one"), &[]);
    assert!(out.status.success(), "hub apply: {}", stderr(&out));
    cluster.init("gw-a", &[]);
    let addr = cluster.addr(0);
    cluster.import_busybox(&addr, IMAGE);
    let out = attach(&cluster, &addr, &broker);
    assert!(out.status.success(), "attach: {}", stderr(&out));
    wait_for("the hub's workload to run on the site", DEADLINE, || {
        (running(&cluster, &addr, "web")? == 1).then_some(())
    });
    let seen = wait_for(
        "the hub to see the site through the broker",
        DEADLINE,
        || {
            let site = cluster.hub_site(SITE);
            (site["connected"] == true
                && site["acked_revision"] == 1
                && site["instances"]
                    .as_array()
                    .is_some_and(|i| i.len() == 1 && i[0]["state"] == "Running"))
            .then_some(site)
        },
    );
    assert_eq!(seen["nodes"][0]["name"], "gw-a");
    let desired: Value = serde_json::from_str(
        &broker
            .retained(&topic("desired"))
            .expect("retained desired"),
    )
    .unwrap();
    assert_eq!(desired["revision"], 1);
    assert_eq!(desired["workloads"][0]["env"]["PHASE"], "one");

    // A change at the hub reaches the site; the hub hears the ack.
    let out = cluster.hub_apply(SITE, &manifest("two"), &[]);
    assert!(out.status.success(), "hub apply: {}", stderr(&out));
    wait_for("revision 2 acknowledged at the hub", DEADLINE, || {
        (cluster.hub_site(SITE)["acked_revision"] == 2).then_some(())
    });
    let workloads = cluster.json(&addr, &["get", "workloads"]);
    assert_eq!(
        workload(&workloads, "web").unwrap()["spec"]["env"]["PHASE"],
        "two"
    );

    // Side by side: a second site on its own cluster, attached over gRPC
    // to the same hub, is served as before (and takes no notice of the
    // broker, where its desired state is published too).
    let mut other = TestCluster::new();
    other.init("gw-x", &[]);
    let other_addr = other.addr(0);
    let token = cluster.site_token("grpc-site");
    let hub_addr = cluster.hub_addr();
    let out = other.cli(
        &other_addr,
        &[
            "cloud",
            "attach",
            "--hub",
            &hub_addr,
            "--site",
            "grpc-site",
            "--token",
            &token,
        ],
    );
    assert!(out.status.success(), "gRPC attach: {}", stderr(&out));
    let out = cluster.hub_apply(
        "grpc-site",
        "name: api\nimage: 127.0.0.1:5000/gantry/img:1\n",
        &[],
    );
    assert!(out.status.success(), "hub apply: {}", stderr(&out));
    wait_for("both sites acknowledged at the hub", DEADLINE, || {
        let grpc = cluster.hub_site("grpc-site");
        let mqtt = cluster.hub_site(SITE);
        (grpc["connected"] == true
            && grpc["acked_revision"] == 1
            && mqtt["connected"] == true
            && mqtt["acked_revision"] == 2)
            .then_some(())
    });
    let workloads = other.json(&other_addr, &["get", "workloads"]);
    assert_eq!(workload(&workloads, "api").unwrap()["source"], "cloud");
    assert_eq!(
        other.json(&other_addr, &["status"])["cloud"]["transport"],
        "grpc"
    );

    // A restarted hub asks for the whole truth again.
    let hub = cluster.hub.as_mut().unwrap();
    hub.kill();
    hub.restart();
    wait_for("the restarted hub to see the site again", DEADLINE, || {
        let site = cluster.hub_site(SITE);
        (site["connected"] == true && site["instances"].as_array().is_some_and(|i| i.len() == 1))
            .then_some(())
    });

    // Detached: the site says it is offline, and the hub shows it.
    let out = cluster.cli(&addr, &["cloud", "detach"]);
    assert!(out.status.success(), "detach: {}", stderr(&out));
    wait_for("the hub to see the site go", DEADLINE, || {
        (cluster.hub_site(SITE)["connected"] == false).then_some(())
    });
    assert_eq!(broker.retained(&topic("online")).as_deref(), Some("false"));
}
