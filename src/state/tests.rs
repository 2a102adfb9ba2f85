//! Table-style tests of the pure apply: each checks the answer and that a
//! refusal leaves the state exactly as it was.

use super::spec::parse_manifest;
use super::*;

fn req(at: u64, command: Command) -> Request {
    Request::new(at, command)
}

fn register(state: &mut State, name: &str) -> Response {
    // Each registration with a key of its own.
    let key = state.nodes.len() as u8 + 1;
    register_with(state, name, key, None)
}

fn register_with(state: &mut State, name: &str, key: u8, join_token: Option<&str>) -> Response {
    state.apply(
        &req(
            10,
            Command::RegisterNode {
                name: name.into(),
                address: format!("127.0.0.1:{}", 7000 + state.nodes.len()),
                labels: BTreeMap::new(),
                capacity: Capacity {
                    cpu_millis: 2000,
                    memory_bytes: 1 << 30,
                },
                devices: BTreeSet::new(),
                tls: Some(crate::state::trust::fixtures::tls_for(key)),
                join_token: join_token.map(String::from),
            },
        ),
        &mut ChangeSet::new(),
    )
}

#[test]
fn a_retried_join_of_the_same_gateway_registers_nothing_twice() {
    let mut state = initialised();
    let mut once = crate::state::trust::fixtures::join_token("0b");
    once.uses_left = Some(1);
    let create = Command::CreateToken { record: once };
    assert_eq!(
        state.apply(&req(2, create), &mut ChangeSet::new()),
        Response::Ok
    );
    assert_eq!(
        register_with(&mut state, "gw-a", 7, Some("0b")),
        Response::NodeRegistered { node: 1 }
    );
    // The answer was lost and the joiner asks again: same name, same key.
    let before = state.clone();
    assert_eq!(
        register_with(&mut state, "gw-a", 7, Some("0b")),
        Response::NodeRegistered { node: 1 }
    );
    assert_eq!(state, before, "no second use, no second gateway");
    // Another gateway with the used-up token is refused and changes nothing.
    let refused = register_with(&mut state, "gw-b", 8, Some("0b"));
    assert!(
        matches!(&refused, Response::Rejected { reason } if reason.contains("used up")),
        "{refused:?}"
    );
    assert_eq!(state, before);
    // Without a certificate pin nobody joins a cluster that has a CA.
    let bare = Command::RegisterNode {
        name: "gw-c".into(),
        address: "127.0.0.1:1".into(),
        labels: BTreeMap::new(),
        capacity: Capacity::default(),
        devices: BTreeSet::new(),
        tls: None,
        join_token: None,
    };
    assert!(matches!(
        state.apply(&req(3, bare), &mut ChangeSet::new()),
        Response::Rejected { .. }
    ));
    assert_eq!(state, before);
}

#[test]
fn tokens_expire_rotate_and_go_with_their_gateway() {
    let mut state = initialised();
    register(&mut state, "gw-a");
    let mut short = crate::state::trust::fixtures::join_token("0c");
    short.expires_ms = Some(100);
    state.apply(
        &req(2, Command::CreateToken { record: short }),
        &mut ChangeSet::new(),
    );
    let late = state.apply(
        &req(
            200,
            Command::RegisterNode {
                name: "gw-b".into(),
                address: "127.0.0.1:2".into(),
                labels: BTreeMap::new(),
                capacity: Capacity::default(),
                devices: BTreeSet::new(),
                tls: Some(crate::state::trust::fixtures::tls_for(9)),
                join_token: Some("0c".into()),
            },
        ),
        &mut ChangeSet::new(),
    );
    assert!(matches!(&late, Response::Rejected { reason } if reason.contains("expired")));
    // Rotation replaces the default join token.
    let new = crate::state::trust::fixtures::join_token("0d");
    state.apply(
        &req(3, Command::RotateJoinToken { record: new }),
        &mut ChangeSet::new(),
    );
    let defaults: Vec<&str> = state
        .tokens_of(TokenKind::Join)
        .filter(|t| t.default)
        .map(|t| t.id.as_str())
        .collect();
    assert_eq!(defaults, vec!["0d"]);
    assert!(
        !state.meta.tokens.contains_key("0a"),
        "the init default is gone"
    );
    // A gateway's own admin token and its key pin go when it leaves.
    let mut own = crate::state::trust::fixtures::join_token("0e");
    own.kind = TokenKind::Admin;
    own.role = Some(Role::Admin);
    own.node = Some(1);
    assert_eq!(
        state.apply(
            &req(4, Command::CreateToken { record: own }),
            &mut ChangeSet::new()
        ),
        Response::Ok
    );
    register(&mut state, "gw-c");
    let leave = Command::SetNodeStatus {
        node: 1,
        status: NodeStatus::Left,
        reason: None,
        runtime_down: false,
    };
    state.apply(&req(5, leave), &mut ChangeSet::new());
    assert!(!state.meta.tokens.contains_key("0e"));
    assert!(state.nodes[&1].tls.is_none());
    // Records hold hashes only, and a role only on admin tokens.
    let mut bad = crate::state::trust::fixtures::join_token("0f");
    bad.secret_sha256 = "not-a-hash".into();
    assert!(matches!(
        state.apply(
            &req(6, Command::CreateToken { record: bad }),
            &mut ChangeSet::new()
        ),
        Response::Rejected { .. }
    ));
}

fn apply_manifest(state: &mut State, text: &str, source: Source) -> Response {
    let workloads = parse_manifest(text).unwrap();
    state.apply(
        &req(20, Command::ApplyWorkloads { workloads, source }),
        &mut ChangeSet::new(),
    )
}

fn initialised() -> State {
    let mut state = State::default();
    let init = Command::InitCluster {
        cluster_id: "c1".into(),
        settings: ClusterSettings::default(),
        pki: crate::state::trust::fixtures::pki(),
        join_token: crate::state::trust::fixtures::join_token("0a"),
    };
    assert_eq!(
        state.apply(&req(1, init), &mut ChangeSet::new()),
        Response::Ok
    );
    state
}

#[test]
fn nodes_get_sequential_ids_and_names_are_unique() {
    let mut state = initialised();
    assert_eq!(
        register(&mut state, "gw-a"),
        Response::NodeRegistered { node: 1 }
    );
    assert_eq!(
        register(&mut state, "gw-b"),
        Response::NodeRegistered { node: 2 }
    );
    let before = state.clone();
    assert!(matches!(
        register(&mut state, "gw-a"),
        Response::Rejected { .. }
    ));
    assert!(matches!(
        register(&mut state, "Bad_Name"),
        Response::Rejected { .. }
    ));
    assert_eq!(state, before);
}

#[test]
fn a_left_name_can_be_reused_with_a_new_id() {
    let mut state = initialised();
    register(&mut state, "gw-a");
    let left = Command::SetNodeStatus {
        node: 1,
        status: NodeStatus::Left,
        reason: None,
        runtime_down: false,
    };
    state.apply(&req(30, left), &mut ChangeSet::new());
    assert_eq!(
        register(&mut state, "gw-a"),
        Response::NodeRegistered { node: 2 }
    );
}

#[test]
fn apply_creates_bumps_and_leaves_unchanged() {
    let mut state = initialised();
    let v1 = "name: web\nimage: img:1\nreplicas: 2\n";
    let Response::Applied { workloads } = apply_manifest(&mut state, v1, Source::Local) else {
        panic!()
    };
    assert_eq!(
        (workloads[0].generation, workloads[0].change.as_str()),
        (1, "created")
    );
    assert_eq!(state.instances_of("web").count(), 2);

    let Response::Applied { workloads } = apply_manifest(&mut state, v1, Source::Local) else {
        panic!()
    };
    assert_eq!(workloads[0].change, "unchanged");

    let v2 = "name: web\nimage: img:2\nreplicas: 1\n";
    let Response::Applied { workloads } = apply_manifest(&mut state, v2, Source::Local) else {
        panic!()
    };
    assert_eq!(
        (workloads[0].generation, workloads[0].change.as_str()),
        (2, "configured")
    );
    let instances: Vec<_> = state.instances_of("web").collect();
    assert_eq!(
        instances.len(),
        1,
        "scale-down removes the highest replica first"
    );
    // The replica keeps generation 1 until the rollout driver moves it.
    assert_eq!((instances[0].replica, instances[0].generation), (0, 1));
    assert_eq!(state.workloads["web"].spec_for(1).image, "img:1");
    assert_eq!(state.workloads["web"].spec_for(2).image, "img:2");
}

#[test]
fn a_manifest_is_refused_whole_when_one_workload_conflicts() {
    let mut state = initialised();
    apply_manifest(&mut state, "name: cam\nimage: img\n", Source::Cloud);
    let before = state.clone();
    let both = "name: web\nimage: img\n---\nname: cam\nimage: img\n";
    let answer = apply_manifest(&mut state, both, Source::Local);
    assert!(
        matches!(answer, Response::Rejected { ref reason } if reason.contains("owned by the cloud"))
    );
    assert_eq!(state, before);
}

#[test]
fn delete_removes_workload_and_instances() {
    let mut state = initialised();
    apply_manifest(
        &mut state,
        "name: web\nimage: img\nreplicas: 3\n",
        Source::Local,
    );
    let mut changes = ChangeSet::new();
    let answer = state.apply(
        &req(
            40,
            Command::DeleteWorkload {
                name: "web".into(),
                source: Source::Local,
            },
        ),
        &mut changes,
    );
    assert_eq!(answer, Response::Deleted { name: "web".into() });
    assert!(state.instances.is_empty());
    assert!(changes.contains(&StateKey::Workload("web".into())));
    let before = state.clone();
    let again = state.apply(
        &req(
            41,
            Command::DeleteWorkload {
                name: "web".into(),
                source: Source::Local,
            },
        ),
        &mut ChangeSet::new(),
    );
    assert!(matches!(again, Response::Rejected { .. }));
    assert_eq!(state, before);
}

#[test]
fn plans_place_and_stale_reports_are_ignored() {
    let mut state = initialised();
    register(&mut state, "gw-a");
    register(&mut state, "gw-b");
    apply_manifest(&mut state, "name: web\nimage: img\n", Source::Local);
    let key = InstanceKey {
        workload: "web".into(),
        replica: 0,
    };
    let plan = PlanRecord {
        placements: vec![(key.clone(), 1)],
        ..Default::default()
    };
    state.apply(&req(50, Command::ApplyPlan { plan }), &mut ChangeSet::new());
    assert_eq!(state.instances[&key].node, Some(1));

    let report = |generation| InstanceReport {
        instance: key.clone(),
        generation,
        state: InstanceState::Running,
        exit_code: None,
        reason: None,
        restarts: 0,
        container_id: Some("c".into()),
        stopping_seen: false,
        stop_mark_seen: None,
        fence_seen: None,
        ready: None,
    };
    // From the wrong node, or for an old generation: ignored.
    state.apply(
        &req(
            60,
            Command::ReportInstances {
                node: 2,
                reports: vec![report(1)],
            },
        ),
        &mut ChangeSet::new(),
    );
    state.apply(
        &req(
            60,
            Command::ReportInstances {
                node: 1,
                reports: vec![report(0)],
            },
        ),
        &mut ChangeSet::new(),
    );
    assert_eq!(state.instances[&key].state, InstanceState::Pending);
    state.apply(
        &req(
            61,
            Command::ReportInstances {
                node: 1,
                reports: vec![report(1)],
            },
        ),
        &mut ChangeSet::new(),
    );
    assert_eq!(state.instances[&key].state, InstanceState::Running);

    // The node leaves: the instance loses its home and remembers it.
    let left = Command::SetNodeStatus {
        node: 1,
        status: NodeStatus::Left,
        reason: None,
        runtime_down: false,
    };
    state.apply(&req(70, left), &mut ChangeSet::new());
    assert_eq!(state.instances[&key].node, None);
    assert_eq!(state.instances[&key].previous_node, Some(1));
}

#[test]
fn readiness_and_probe_restarts_are_recorded_once_with_their_events() {
    let mut state = initialised();
    register(&mut state, "gw-a");
    apply_manifest(&mut state, "name: web\nimage: img\n", Source::Local);
    let key = InstanceKey {
        workload: "web".into(),
        replica: 0,
    };
    let plan = PlanRecord {
        placements: vec![(key.clone(), 1)],
        ..Default::default()
    };
    state.apply(&req(50, Command::ApplyPlan { plan }), &mut ChangeSet::new());
    let report = |state: InstanceState, ready: Option<bool>, reason: Option<&str>| {
        Command::ReportInstances {
            node: 1,
            reports: vec![InstanceReport {
                instance: key.clone(),
                generation: 1,
                state,
                exit_code: None,
                reason: reason.map(String::from),
                restarts: 0,
                container_id: Some("web-0-g1".into()),
                stopping_seen: false,
                stop_mark_seen: None,
                fence_seen: None,
                ready,
            }],
        }
    };
    let kinds =
        |state: &State| -> Vec<String> { state.events.iter().map(|e| e.kind.clone()).collect() };
    // A new container starts unready: no event, but the state says so.
    state.apply(
        &req(60, report(InstanceState::Running, Some(false), None)),
        &mut ChangeSet::new(),
    );
    assert_eq!(state.instances[&key].ready, Some(false));
    assert!(!state.instances[&key].is_up());
    assert!(!kinds(&state).contains(&"not-ready".to_string()));
    state.apply(
        &req(61, report(InstanceState::Running, Some(true), None)),
        &mut ChangeSet::new(),
    );
    assert!(state.instances[&key].is_up());
    // The same report again changes nothing (a probe that keeps passing).
    let mut changes = ChangeSet::new();
    state.apply(
        &req(62, report(InstanceState::Running, Some(true), None)),
        &mut changes,
    );
    assert!(changes.is_empty(), "{changes:?}");
    // Losing readiness is an event with the reason.
    let why = "readiness probe failed: tcp port 1883: refused";
    state.apply(
        &req(63, report(InstanceState::Running, Some(false), Some(why))),
        &mut ChangeSet::new(),
    );
    let last = state.events.back().unwrap();
    assert_eq!(last.kind, "not-ready");
    assert!(last.message.contains(why), "{}", last.message);
    // A liveness stop: one event when it exits, none while it restarts.
    let killed = "liveness probe failed: exit code 1";
    state.apply(
        &req(64, report(InstanceState::Exited, Some(false), Some(killed))),
        &mut ChangeSet::new(),
    );
    state.apply(
        &req(
            65,
            report(InstanceState::Starting, Some(false), Some(killed)),
        ),
        &mut ChangeSet::new(),
    );
    let restarts = kinds(&state)
        .iter()
        .filter(|k| *k == "probe-restart")
        .count();
    assert_eq!(restarts, 1);
    // Without a readiness probe an instance is up when Running.
    state.apply(
        &req(66, report(InstanceState::Running, None, None)),
        &mut ChangeSet::new(),
    );
    assert!(state.instances[&key].is_up());
}

#[test]
fn the_event_ring_is_bounded() {
    let mut state = initialised();
    register(&mut state, "gw-a");
    for i in 0..(MAX_EVENTS as u64 + 20) {
        let status = if i % 2 == 0 {
            NodeStatus::NotReady
        } else {
            NodeStatus::Ready
        };
        state.apply(
            &req(
                100 + i,
                Command::SetNodeStatus {
                    node: 1,
                    status,
                    reason: None,
                    runtime_down: false,
                },
            ),
            &mut ChangeSet::new(),
        );
    }
    assert_eq!(state.events.len(), MAX_EVENTS);
}

#[test]
fn apply_is_deterministic() {
    let run = || {
        let mut state = initialised();
        register(&mut state, "gw-a");
        apply_manifest(
            &mut state,
            "name: web\nimage: img\nreplicas: 4\n",
            Source::Local,
        );
        serde_json::to_string(&state).unwrap()
    };
    let first = run();
    assert_eq!(first, run());
    // What snapshots carry reads back as the same state.
    let back: State = serde_json::from_str(&first).unwrap();
    assert_eq!(serde_json::to_string(&back).unwrap(), first);
}

#[test]
fn a_request_id_is_applied_once_and_its_retry_gets_the_first_answer() {
    let mut state = initialised();
    register(&mut state, "gw-a");
    let workloads = parse_manifest("name: web\nimage: i\n").unwrap();
    let mut first = req(
        5,
        Command::ApplyWorkloads {
            workloads,
            source: Source::Local,
        },
    );
    first.id = Some("r1".into());
    let answer = state.apply(&first, &mut ChangeSet::new());
    assert!(matches!(answer, Response::Applied { .. }));
    let after_first = state.clone();
    // Another client changes the workload in between (A, then B, then A's retry).
    let other = req(
        6,
        Command::ApplyWorkloads {
            workloads: parse_manifest("name: web\nimage: j\n").unwrap(),
            source: Source::Local,
        },
    );
    state.apply(&other, &mut ChangeSet::new());
    let after_other = state.clone();
    assert_ne!(after_other, after_first);
    let mut retry = first.clone();
    retry.at_ms = 7;
    assert_eq!(state.apply(&retry, &mut ChangeSet::new()), answer);
    assert_eq!(state, after_other, "the retry changed nothing");
    assert_eq!(state.workloads["web"].spec.image, "j");
    // The memory is bounded: old ids go once there are too many, and
    // young ones too past the hard cap.
    for i in 0..(MAX_REMEMBERED_REQUESTS + 300) {
        let mut r = req(
            REMEMBER_REQUESTS_MS * 2 + i as u64,
            Command::RecordEvent {
                kind: "k".into(),
                message: String::new(),
            },
        );
        r.id = Some(format!("bulk-{i}"));
        state.apply(&r, &mut ChangeSet::new());
    }
    assert!(state.requests.len() <= MAX_REMEMBERED_REQUESTS + 256);
    assert!(!state.requests.contains_key("r1"));
    assert!(state
        .requests
        .contains_key(&format!("bulk-{}", MAX_REMEMBERED_REQUESTS + 299)));
}

#[test]
fn a_workload_changed_over_and_over_without_running_keeps_no_pile_of_old_specs() {
    let mut state = initialised();
    register(&mut state, "gw-a");
    for i in 0..50u64 {
        let workloads = parse_manifest(&format!("name: web\nimage: i:{i}\n")).unwrap();
        let answer = state.apply(
            &req(
                10 + i,
                Command::ApplyWorkloads {
                    workloads,
                    source: Source::Local,
                },
            ),
            &mut ChangeSet::new(),
        );
        assert!(matches!(answer, Response::Applied { .. }), "{answer:?}");
    }
    let web = &state.workloads["web"];
    assert_eq!(web.generation, 50);
    // Only the generations instances still run are kept (none of them
    // ever ran, so no last good one either).
    let in_use: BTreeSet<u64> = state.instances_of("web").map(|i| i.generation).collect();
    assert!(
        web.history.keys().all(|g| in_use.contains(g)),
        "history {:?} beyond the generations in use {in_use:?}",
        web.history.keys().collect::<Vec<_>>()
    );
    assert!(
        web.history.len() <= 1,
        "{} old specs kept",
        web.history.len()
    );
}
