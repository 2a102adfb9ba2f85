//! Table-style tests of the pure apply: each checks the answer and that a
//! refusal leaves the state exactly as it was.

use super::spec::parse_manifest;
use super::*;

fn req(at: u64, command: Command) -> Request {
    Request::new(at, command)
}

fn register(state: &mut State, name: &str) -> Response {
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
            },
        ),
        &mut ChangeSet::new(),
    )
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
        join_secret_sha256: "00".into(),
        settings: ClusterSettings::default(),
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
