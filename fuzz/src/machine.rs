//! The `state_machine` target: sequences of commands, built from the input
//! by `arbitrary`, applied to `State::apply`. Names, gateways, tokens and
//! workloads come from small pools so that commands meet each other (a
//! report about an instance a plan placed, a drain of a gateway that
//! joined, a token revoked then used).

use std::collections::{BTreeMap, BTreeSet};

use arbitrary::{Arbitrary, Unstructured};
use gantry::state::quantity::HumanDuration;
use gantry::state::settings::SettingsChange;
use gantry::state::spec::WorkloadSpec;
use gantry::state::{
    Capacity, ChangeSet, ClusterSettings, Command, InstanceKey, InstanceReport, InstanceState,
    MqttLink, NodeStatus, NodeTls, Pki, PlanRecord, Request, Response, Source, State, StateKey,
    TokenKind, TokenRecord, MAX_EVENTS,
};
use serde_json::json;

/// Most commands one input applies: enough for joins, applies, plans and
/// reports to meet; more only slows each case down.
const MAX_STEPS: usize = 48;

const WORKLOADS: [&str; 4] = ["web", "db", "cache", "Bad_Name"];
const NODES: [&str; 4] = ["gw-a", "gw-b", "gw-c", "-bad"];
const TOKENS: [&str; 3] = ["t-join", "t-admin", "t-other"];
const IMAGES: [&str; 3] = ["registry.local/web:1", "registry.local/web:2", "bad image"];
/// Memory requests, binary and decimal (`1M` was once stored rounded).
const MEMORY: [&str; 5] = ["64Mi", "1Gi", "512Ki", "1024", "1M"];
const CPU: [&str; 4] = ["100m", "250m", "1", "2"];
const STATES: [InstanceState; 6] = [
    InstanceState::Pending,
    InstanceState::Pulling,
    InstanceState::Starting,
    InstanceState::Running,
    InstanceState::Exited,
    InstanceState::Failed,
];
const STATUSES: [NodeStatus; 4] = [
    NodeStatus::Ready,
    NodeStatus::NotReady,
    NodeStatus::Draining,
    NodeStatus::Left,
];

fn pick<T: Copy>(pool: &[T], i: u8) -> T {
    pool[usize::from(i) % pool.len()]
}

/// A gateway id: 0 (never handed out) to 4 (ids start at 1).
fn node_id(i: u8) -> u64 {
    u64::from(i % 5)
}

#[derive(Debug, Arbitrary)]
struct Step {
    /// Milliseconds since the previous step, in tens.
    advance: u16,
    /// A client request id from a pool of 4, so retries happen.
    id: Option<u8>,
    op: Op,
}

#[derive(Debug, Arbitrary)]
struct Wl {
    name: u8,
    image: u8,
    replicas: u8,
    cpu: Option<u8>,
    memory: Option<u8>,
    singleton: bool,
    selector: bool,
    spread: bool,
    stop_after_s: Option<u8>,
    autoscale: Option<u8>,
}

impl Wl {
    /// The spec, or None when the JSON does not make one (the leader
    /// parses and validates every spec before it proposes it).
    fn spec(&self) -> Option<WorkloadSpec> {
        let mut doc = json!({
            "name": pick(&WORKLOADS, self.name),
            "image": pick(&IMAGES, self.image),
            "replicas": self.replicas % 5,
            "singleton": self.singleton,
        });
        let mut resources = serde_json::Map::new();
        if let Some(c) = self.cpu {
            resources.insert("cpu".into(), pick(&CPU, c).into());
        }
        if let Some(m) = self.memory {
            resources.insert("memory".into(), pick(&MEMORY, m).into());
        }
        doc["resources"] = resources.into();
        if self.selector {
            doc["node_selector"] = json!({"zone": "a"});
        }
        if self.spread {
            doc["spread"] = json!("zone");
        }
        if let Some(s) = self.stop_after_s {
            doc["on_disconnect"] = json!({"stop_after": format!("{}s", s % 40)});
        }
        if let Some(max) = self.autoscale {
            doc["autoscale"] = json!({"max": max % 6 + 1, "cpu_target": "70%"});
        }
        let spec: WorkloadSpec = serde_json::from_value(doc).ok()?;
        spec.validate().ok()?;
        Some(spec)
    }
}

#[derive(Debug, Arbitrary)]
struct Rep {
    workload: u8,
    replica: u8,
    generation: u8,
    state: u8,
    exit_code: Option<i8>,
    restarts: u8,
    container: Option<u8>,
    stopping_seen: bool,
    stop_mark_seen: Option<u8>,
    fence_seen: Option<u8>,
    ready: Option<bool>,
}

#[derive(Debug, Arbitrary)]
enum Op {
    Reinit,
    Register {
        name: u8,
        key: u8,
        token: Option<u8>,
        cpu: u8,
        memory: u8,
        zone: bool,
        no_address: bool,
    },
    SetKey {
        node: u8,
        key: u8,
    },
    CreateToken {
        id: u8,
        admin: bool,
        uses: Option<u8>,
        expires: Option<u16>,
        node: Option<u8>,
    },
    RevokeToken {
        id: u8,
    },
    RotateJoin {
        id: u8,
    },
    SetStatus {
        node: u8,
        status: u8,
        runtime_down: bool,
    },
    Apply {
        workloads: Vec<Wl>,
        cloud: bool,
    },
    Delete {
        name: u8,
        cloud: bool,
    },
    Upgrade {
        name: u8,
        generation: u8,
        replicas: Vec<u8>,
    },
    RollBack {
        name: u8,
        generation: u8,
    },
    Scale {
        name: u8,
        replicas: u8,
    },
    Plan {
        placements: Vec<(u8, u8, u8)>,
        evictions: Vec<(u8, u8)>,
        unplaceable: Vec<(u8, u8)>,
        stop: Vec<(u8, u8)>,
        drained: Vec<u8>,
        retired_gone: Vec<(u8, u8, u8, u16)>,
        fenced_out: Vec<(u8, u8)>,
    },
    Report {
        node: u8,
        reports: Vec<Rep>,
    },
    Settings {
        heartbeat_ms: Option<u16>,
        grace_ms: Option<u16>,
        replace_ms: Option<u16>,
    },
    Cordon {
        node: u8,
        cordoned: bool,
    },
    Drain {
        node: u8,
    },
    Event {
        empty: bool,
    },
    Attach {
        hub: u8,
        keepalive: Option<u8>,
        mqtt: bool,
    },
    Detach,
    Connection {
        connected: bool,
        node: u8,
    },
    CloudRevision {
        revision: u8,
        full: bool,
        upserts: Vec<Wl>,
        deletes: Vec<u8>,
        epoch: u8,
        attachment: Option<u8>,
    },
}

fn key(workload: u8, replica: u8) -> InstanceKey {
    InstanceKey {
        workload: pick(&WORKLOADS, workload).to_string(),
        replica: u32::from(replica % 4),
    }
}

fn tls(seed: u8) -> NodeTls {
    NodeTls {
        spki_sha256: format!("{:02x}", seed % 4).repeat(32),
        serial: "01".into(),
        not_after_ms: u64::MAX,
        previous: None,
    }
}

fn token(id: &str, kind: TokenKind) -> TokenRecord {
    TokenRecord {
        id: id.into(),
        kind,
        name: String::new(),
        role: (kind == TokenKind::Admin).then_some(gantry::state::Role::Admin),
        secret_sha256: "cd".repeat(32),
        created_ms: 0,
        expires_ms: None,
        uses_left: None,
        node: None,
        default: false,
    }
}

fn init() -> Command {
    Command::InitCluster {
        cluster_id: "fuzz".into(),
        settings: ClusterSettings::default(),
        pki: Pki {
            ca_certs_pem: String::new(),
            ca_sha256: "ab".repeat(32),
            ca_key_sealed: String::new(),
        },
        join_token: token(TOKENS[0], TokenKind::Join),
    }
}

fn ms(tens: Option<u16>) -> Option<HumanDuration> {
    tens.map(|t| HumanDuration(std::time::Duration::from_millis(u64::from(t) * 10)))
}

impl Op {
    fn command(&self, now: u64) -> Command {
        match self {
            Op::Reinit => init(),
            Op::Register {
                name,
                key,
                token,
                cpu,
                memory,
                zone,
                no_address,
            } => Command::RegisterNode {
                name: pick(&NODES, *name).into(),
                address: if *no_address { "" } else { "127.0.0.1:7000" }.into(),
                labels: if *zone {
                    BTreeMap::from([("zone".to_string(), "a".to_string())])
                } else {
                    BTreeMap::new()
                },
                capacity: Capacity {
                    cpu_millis: u64::from(*cpu) * 50,
                    memory_bytes: u64::from(*memory) << 24,
                },
                devices: BTreeSet::new(),
                tls: Some(tls(*key)),
                join_token: token.map(|t| pick(&TOKENS, t).to_string()),
            },
            Op::SetKey { node, key } => Command::SetNodeKey {
                node: node_id(*node),
                tls: tls(*key),
            },
            Op::CreateToken {
                id,
                admin,
                uses,
                expires,
                node,
            } => {
                let kind = if *admin {
                    TokenKind::Admin
                } else {
                    TokenKind::Join
                };
                let mut record = token(pick(&TOKENS, *id), kind);
                record.created_ms = now;
                record.uses_left = uses.map(|u| u32::from(u % 3));
                record.expires_ms = expires.map(|e| now + u64::from(e) * 10);
                record.node = node.map(node_id);
                Command::CreateToken { record }
            }
            Op::RevokeToken { id } => Command::RevokeToken {
                id: pick(&TOKENS, *id).into(),
            },
            Op::RotateJoin { id } => Command::RotateJoinToken {
                record: token(pick(&TOKENS, *id), TokenKind::Join),
            },
            Op::SetStatus {
                node,
                status,
                runtime_down,
            } => Command::SetNodeStatus {
                node: node_id(*node),
                status: pick(&STATUSES, *status),
                reason: Some("fuzz".into()),
                runtime_down: *runtime_down,
            },
            Op::Apply { workloads, cloud } => Command::ApplyWorkloads {
                workloads: workloads.iter().take(3).filter_map(Wl::spec).collect(),
                source: if *cloud { Source::Cloud } else { Source::Local },
            },
            Op::Delete { name, cloud } => Command::DeleteWorkload {
                name: pick(&WORKLOADS, *name).into(),
                source: if *cloud { Source::Cloud } else { Source::Local },
            },
            Op::Upgrade {
                name,
                generation,
                replicas,
            } => Command::UpgradeInstances {
                workload: pick(&WORKLOADS, *name).into(),
                generation: u64::from(generation % 5),
                replicas: replicas.iter().take(4).map(|r| u32::from(r % 5)).collect(),
            },
            Op::RollBack { name, generation } => Command::RollBack {
                workload: pick(&WORKLOADS, *name).into(),
                failed_generation: u64::from(generation % 5),
                reason: "fuzz".into(),
            },
            Op::Scale { name, replicas } => Command::Scale {
                workload: pick(&WORKLOADS, *name).into(),
                replicas: u32::from(replicas % 8),
                reason: "fuzz".into(),
            },
            Op::Plan {
                placements,
                evictions,
                unplaceable,
                stop,
                drained,
                retired_gone,
                fenced_out,
            } => Command::ApplyPlan {
                plan: PlanRecord {
                    placements: placements
                        .iter()
                        .take(6)
                        .map(|(w, r, n)| (key(*w, *r), node_id(*n)))
                        .collect(),
                    evictions: evictions
                        .iter()
                        .take(3)
                        .map(|(w, r)| (key(*w, *r), "fuzz".into()))
                        .collect(),
                    unplaceable: unplaceable
                        .iter()
                        .take(3)
                        .map(|(w, r)| (key(*w, *r), "fuzz".into()))
                        .collect(),
                    stop: stop.iter().take(3).map(|(w, r)| key(*w, *r)).collect(),
                    drained: drained.iter().take(3).map(|n| node_id(*n)).collect(),
                    fenced_out: fenced_out
                        .iter()
                        .take(2)
                        .map(|(w, r)| key(*w, *r))
                        .collect(),
                    retired_gone: retired_gone
                        .iter()
                        .take(3)
                        .map(|(w, r, n, at)| (key(*w, *r), node_id(*n), u64::from(*at) * 10))
                        .collect(),
                },
            },
            Op::Report { node, reports } => Command::ReportInstances {
                node: node_id(*node),
                reports: reports.iter().take(4).map(Rep::report).collect(),
            },
            Op::Settings {
                heartbeat_ms,
                grace_ms,
                replace_ms,
            } => Command::UpdateSettings {
                change: SettingsChange {
                    heartbeat_interval: ms(*heartbeat_ms),
                    node_grace: ms(*grace_ms),
                    voter_replace_after: ms(*replace_ms),
                },
            },
            Op::Cordon { node, cordoned } => Command::SetCordon {
                node: node_id(*node),
                cordoned: *cordoned,
            },
            Op::Drain { node } => Command::DrainNode {
                node: node_id(*node),
            },
            Op::Event { empty } => Command::RecordEvent {
                kind: if *empty { "" } else { "fuzz" }.into(),
                message: "fuzz".into(),
            },
            Op::Attach {
                hub,
                keepalive,
                mqtt,
            } => Command::CloudAttach {
                hub: format!("hub-{}.local:7443", hub % 2),
                site: "site".into(),
                hub_ca_sha256: "ef".repeat(32),
                token_sealed: "00".into(),
                keepalive_ms: keepalive.map(|k| u64::from(k) * 1000),
                mqtt: mqtt.then(|| MqttLink {
                    prefix: "gantry/site/".into(),
                    username: None,
                    password_sealed: None,
                    ca_pem: None,
                    client_cert_pem: None,
                    client_key_sealed: None,
                }),
            },
            Op::Detach => Command::CloudDetach,
            Op::Connection { connected, node } => Command::SetCloudConnection {
                connected: *connected,
                node: node_id(*node),
                reason: None,
            },
            Op::CloudRevision {
                revision,
                full,
                upserts,
                deletes,
                epoch,
                attachment,
            } => Command::ApplyCloudRevision {
                revision: u64::from(revision % 8),
                full: *full,
                upserts: upserts.iter().take(3).filter_map(Wl::spec).collect(),
                deletes: deletes
                    .iter()
                    .take(3)
                    .map(|d| pick(&WORKLOADS, *d).to_string())
                    .collect(),
                epoch: u64::from(epoch % 3),
                attachment: attachment.map(|a| u64::from(a % 3)),
            },
        }
    }
}

impl Rep {
    fn report(&self) -> InstanceReport {
        InstanceReport {
            instance: key(self.workload, self.replica),
            generation: u64::from(self.generation % 4),
            state: pick(&STATES, self.state),
            exit_code: self.exit_code.map(i32::from),
            reason: None,
            restarts: u32::from(self.restarts),
            container_id: self.container.map(|c| format!("c{}", c % 4)),
            stopping_seen: self.stopping_seen,
            stop_mark_seen: self.stop_mark_seen.map(|m| u64::from(m % 8)),
            fence_seen: self.fence_seen.map(|f| u64::from(f) * 1000),
            ready: self.ready,
        }
    }
}

/// The records that differ between `before` and `after`, by the keys the
/// storage layer persists them under.
fn changed_records(before: &State, after: &State) -> ChangeSet {
    let mut keys = ChangeSet::new();
    if before.meta != after.meta {
        keys.insert(StateKey::Meta);
    }
    diff_maps(
        &before.nodes,
        &after.nodes,
        |k| StateKey::Node(*k),
        &mut keys,
    );
    diff_maps(
        &before.workloads,
        &after.workloads,
        |k| StateKey::Workload(k.clone()),
        &mut keys,
    );
    diff_maps(
        &before.instances,
        &after.instances,
        |k| StateKey::Instance(k.clone()),
        &mut keys,
    );
    let events = |s: &State| -> BTreeMap<u64, gantry::state::Event> {
        s.events.iter().map(|e| (e.seq, e.clone())).collect()
    };
    diff_maps(
        &events(before),
        &events(after),
        |k| StateKey::Event(*k),
        &mut keys,
    );
    diff_maps(
        &before.requests,
        &after.requests,
        |k| StateKey::Request(k.clone()),
        &mut keys,
    );
    keys
}

fn diff_maps<K: Ord, V: PartialEq>(
    before: &BTreeMap<K, V>,
    after: &BTreeMap<K, V>,
    key: impl Fn(&K) -> StateKey,
    keys: &mut ChangeSet,
) {
    for (k, v) in before {
        if after.get(k) != Some(v) {
            keys.insert(key(k));
        }
    }
    for k in after.keys() {
        if !before.contains_key(k) {
            keys.insert(key(k));
        }
    }
}

/// The state rebuilt from its records one by one, as a restart loads it
/// from RocksDB (`state_machine::load_record`, keys in RocksDB's order).
fn reloaded(state: &State) -> State {
    let mut records: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut put = |key: String, value: Result<Vec<u8>, serde_json::Error>| match value {
        Ok(value) => records.push((key.into_bytes(), value)),
        Err(e) => panic!("record {key} cannot be written: {e}"),
    };
    put("meta".into(), serde_json::to_vec(&state.meta));
    for (id, node) in &state.nodes {
        put(format!("node/{id:020}"), serde_json::to_vec(node));
    }
    for (name, w) in &state.workloads {
        put(format!("workload/{name}"), serde_json::to_vec(w));
    }
    for (k, i) in &state.instances {
        put(
            format!("instance/{}/{:010}", k.workload, k.replica),
            serde_json::to_vec(i),
        );
    }
    for e in &state.events {
        put(format!("event/{:020}", e.seq), serde_json::to_vec(e));
    }
    for (id, r) in &state.requests {
        put(format!("request/{id}"), serde_json::to_vec(r));
    }
    records.sort();
    let mut loaded = State::default();
    for (key, value) in records {
        if let Err(e) = gantry::cluster::state_machine::load_record(&mut loaded, &key, &value) {
            panic!(
                "record {} does not load back: {e}",
                String::from_utf8_lossy(&key)
            );
        }
    }
    loaded
}

/// Command sequences applied to `State::apply`. Oracles, at every step:
/// applying the same request (after its JSON trip through the log) to a
/// twin gives the same answer, the same touched records and the same
/// state (apply is deterministic); a refusal changes nothing and touches
/// nothing; every record that changed is in the change set (the storage
/// layer persists only those); the event ring stays within `MAX_EVENTS`.
/// At the end: the state read back from its records, as a restart does,
/// and from a snapshot, is the same state.
pub fn state_machine(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let mut steps = Vec::new();
    while steps.len() < MAX_STEPS && !u.is_empty() {
        match Step::arbitrary(&mut u) {
            Ok(step) => steps.push(step),
            Err(_) => break,
        }
    }
    let mut state = State::default();
    let mut twin = State::default();
    let mut now: u64 = 1_700_000_000_000;
    let first = Request::new(now, init());
    let mut ignored = ChangeSet::new();
    state.apply(&first, &mut ignored);
    twin.apply(&first, &mut ignored);
    for step in &steps {
        now += u64::from(step.advance) * 10;
        let mut request = Request::new(now, step.op.command(now));
        request.id = step.id.map(|i| format!("req-{}", i % 4));
        apply_checked(&mut state, &mut twin, &request);
    }
    let reloaded = reloaded(&state);
    assert!(
        reloaded == state,
        "the state read back from its records differs"
    );
    match serde_json::to_vec(&state).map(|b| serde_json::from_slice::<State>(&b)) {
        Ok(Ok(again)) if again == state => {}
        _ => panic!("the state does not survive a snapshot round trip"),
    }
}

fn apply_checked(state: &mut State, twin: &mut State, request: &Request) {
    let logged: Request = match serde_json::to_vec(request).map(|b| serde_json::from_slice(&b)) {
        Ok(Ok(logged)) => logged,
        _ => panic!("request does not survive the log: {request:?}"),
    };
    assert!(
        &logged == request,
        "request changed in the log: {request:?}"
    );
    let before = state.clone();
    let mut changes = ChangeSet::new();
    let response = state.apply(request, &mut changes);
    let mut twin_changes = ChangeSet::new();
    let twin_response = twin.apply(&logged, &mut twin_changes);
    assert_eq!(
        response, twin_response,
        "nondeterministic answer to {request:?}"
    );
    assert_eq!(
        changes, twin_changes,
        "nondeterministic changes for {request:?}"
    );
    assert!(state == twin, "nondeterministic state after {request:?}");
    if let Response::Rejected { reason } = &response {
        assert!(
            *state == before && changes.is_empty(),
            "refusal '{reason}' of {request:?} changed the state or touched {changes:?}"
        );
    }
    let changed = changed_records(&before, state);
    let missing: Vec<&StateKey> = changed.difference(&changes).collect();
    assert!(
        missing.is_empty(),
        "{request:?} changed records {missing:?} without saying so"
    );
    assert!(
        state.events.len() <= MAX_EVENTS,
        "{} events kept",
        state.events.len()
    );
}
