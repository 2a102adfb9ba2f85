//! Writes the binary and JSON seeds of the corpus from real values, so that
//! they stay in step with the types: `FUZZ_WRITE_SEEDS=1 cargo test -p
//! gantry-fuzz --test seeds` (a no-op without the variable). The text
//! seeds (manifests, quantities, settings) were taken from the repository's
//! examples, tests and README, plus hand-written edge cases.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use gantry::cluster::node::{LeaderFailure, LeaderOp, LeaderReply};
use gantry::cluster::state_machine::Applied;
use gantry::cluster::TypeConfig;
use gantry::state::{ChangeSet, Request, Response, State};
use gantry_proto::hub::v1 as hub;
use gantry_proto::v1;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, VoteRequest, VoteResponse,
};
use openraft::{
    BasicNode, CommittedLeaderId, Entry, EntryPayload, LogId, Membership, SnapshotMeta,
    StoredMembership, Vote,
};
use prost::Message;
use serde_json::json;

fn dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target)
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir(target)).expect("corpus dir");
    std::fs::write(dir(target).join(name), bytes).expect("write seed");
}

fn spec(name: &str, memory: &str) -> serde_json::Value {
    json!({
        "name": name, "image": "registry.local/web:1", "replicas": 2,
        "resources": {"cpu": "250m", "memory": memory},
        "env": {"A": "b"}, "node_selector": {"zone": "a"},
        "on_disconnect": {"stop_after": "30s"},
        "probes": {"readiness": {"http": {"path": "/", "port": 8080}}}
    })
}

/// Requests as a leader would propose them, as JSON (what the log holds).
fn requests() -> Vec<Request> {
    let hex = |b: &str| b.repeat(32);
    let commands = vec![
        json!({"init_cluster": {
            "cluster_id": "c1",
            "settings": {"heartbeat_interval": "300ms", "node_grace": "1s", "voter_replace_after": "30s"},
            "pki": {"ca_certs_pem": "", "ca_sha256": hex("ab"), "ca_key_sealed": ""},
            "join_token": {"id": "t1", "kind": "join", "secret_sha256": hex("cd"), "created_ms": 0}
        }}),
        json!({"register_node": {
            "name": "gw-a", "address": "127.0.0.1:7000", "labels": {"zone": "a"},
            "capacity": {"cpu_millis": 4000, "memory_bytes": 4294967296u64}, "devices": [],
            "tls": {"spki_sha256": hex("ef"), "serial": "01", "not_after_ms": 99999999999999u64},
            "join_token": "t1"
        }}),
        json!({"apply_workloads": {"workloads": [spec("web", "64Mi"), spec("db", "1Gi")], "source": "local"}}),
        json!({"apply_plan": {"plan": {
            "placements": [[{"workload": "web", "replica": 0}, 1], [{"workload": "web", "replica": 1}, 1]],
            "evictions": [], "unplaceable": [[{"workload": "db", "replica": 0}, "no capacity"]]
        }}}),
        json!({"report_instances": {"node": 1, "reports": [{
            "instance": {"workload": "web", "replica": 0}, "generation": 1, "state": "Running",
            "exit_code": null, "reason": null, "restarts": 0, "container_id": "c1", "ready": true
        }]}}),
        json!({"update_settings": {"change": {"node_grace": "2s"}}}),
        json!({"set_cordon": {"node": 1, "cordoned": true}}),
        json!({"record_event": {"kind": "member-added", "message": "gw-b joined"}}),
        json!({"cloud_attach": {"hub": "hub.local:7443", "site": "s1", "hub_ca_sha256": hex("12"), "token_sealed": "00", "keepalive_ms": 60000}}),
        json!({"apply_cloud_revision": {"revision": 1, "full": true, "upserts": [spec("cache", "512Ki")], "deletes": [], "epoch": 7, "attachment": 1}}),
        json!({"create_token": {"record": {"id": "t2", "kind": "admin", "role": "viewer", "secret_sha256": hex("cd"), "created_ms": 5}}}),
        json!({"delete_workload": {"name": "db", "source": "local"}}),
        json!("cloud_detach"),
    ];
    commands
        .into_iter()
        .enumerate()
        .map(|(i, command)| {
            let id = if i % 3 == 0 { json!(format!("req-{i}")) } else { json!(null) };
            let request = json!({"v": 1, "at_ms": 1_700_000_000_000u64 + i as u64 * 1000, "command": command, "id": id});
            serde_json::from_value(request).expect("request JSON")
        })
        .collect()
}

fn log_id(term: u64, index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn membership() -> Membership<u64, BasicNode> {
    let nodes: BTreeMap<u64, BasicNode> = (1..=3)
        .map(|id| (id, BasicNode::new(format!("127.0.0.1:700{id}"))))
        .collect();
    Membership::new(vec![BTreeSet::from([1, 2, 3])], nodes)
}

fn entries() -> Vec<Entry<TypeConfig>> {
    let mut entries = vec![
        Entry {
            log_id: log_id(1, 1),
            payload: EntryPayload::Blank,
        },
        Entry {
            log_id: log_id(1, 2),
            payload: EntryPayload::Membership(membership()),
        },
    ];
    for (i, request) in requests().into_iter().enumerate() {
        entries.push(Entry {
            log_id: log_id(1, 3 + i as u64),
            payload: EntryPayload::Normal(request),
        });
    }
    entries
}

fn applied_state() -> State {
    let mut state = State::default();
    for request in requests() {
        let mut changes = ChangeSet::new();
        state.apply(&request, &mut changes);
    }
    state
}

fn json_seed(target: &str, name: &str, value: &impl serde::Serialize) {
    write(
        target,
        &format!("{name}.json"),
        &serde_json::to_vec(value).expect("seed JSON"),
    );
}

fn cluster_payload_seeds() {
    let t = "cluster_payloads";
    let vote = Vote::new(2, 1);
    json_seed(
        t,
        "vote-request",
        &VoteRequest::new(vote, Some(log_id(1, 9))),
    );
    let all = entries();
    for (i, chunk) in all.chunks(4).enumerate() {
        let req = AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(2, 1),
            prev_log_id: Some(log_id(1, i as u64 * 4)),
            entries: chunk.to_vec(),
            leader_commit: Some(log_id(1, 2)),
        };
        json_seed(t, &format!("append-{i}"), &req);
    }
    let heartbeat = AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(2, 1),
        prev_log_id: None,
        entries: vec![],
        leader_commit: None,
    };
    json_seed(t, "append-empty", &heartbeat);
    let meta = SnapshotMeta::<u64, BasicNode> {
        last_log_id: Some(log_id(1, 15)),
        last_membership: StoredMembership::new(Some(log_id(1, 2)), membership()),
        snapshot_id: "1-15-abc".into(),
    };
    let data = serde_json::to_vec(&Applied {
        state: applied_state(),
        last_applied: Some(log_id(1, 15)),
        last_membership: StoredMembership::new(Some(log_id(1, 2)), membership()),
    })
    .expect("snapshot");
    let install = InstallSnapshotRequest::<TypeConfig> {
        vote: Vote::new_committed(2, 1),
        meta,
        offset: 0,
        data: data[..data.len().min(600)].to_vec(),
        done: false,
    };
    json_seed(t, "install-snapshot", &install);
    for (i, request) in requests().into_iter().take(4).enumerate() {
        json_seed(
            t,
            &format!("leader-op-write-{i}"),
            &LeaderOp::Write(request),
        );
    }
    json_seed(t, "leader-op-add-member", &LeaderOp::AddMember { node: 2 });
    json_seed(
        t,
        "leader-op-leave",
        &LeaderOp::Leave {
            name: "gw-b".into(),
        },
    );
    json_seed(
        t,
        "leader-op-renew",
        &LeaderOp::Renew {
            node: 2,
            csr_der: vec![0x30, 0x82, 1, 0],
        },
    );
    let vote_reply: Result<VoteResponse<u64>, openraft::error::RaftError<u64>> =
        Ok(VoteResponse::new(vote, Some(log_id(1, 9)), true));
    json_seed(t, "vote-reply", &vote_reply);
    let append_reply: Result<AppendEntriesResponse<u64>, openraft::error::RaftError<u64>> =
        Ok(AppendEntriesResponse::Success);
    json_seed(t, "append-reply", &append_reply);
    let conflict: Result<AppendEntriesResponse<u64>, openraft::error::RaftError<u64>> =
        Ok(AppendEntriesResponse::HigherVote(Vote::new(3, 2)));
    json_seed(t, "append-reply-higher", &conflict);
    let written: Result<LeaderReply, LeaderFailure> = Ok(LeaderReply::Written {
        response: Response::Ok,
        index: 12,
    });
    json_seed(t, "forward-reply", &written);
    let failure: Result<LeaderReply, LeaderFailure> = Err(LeaderFailure::Timeout(10_000));
    json_seed(t, "forward-failure", &failure);
    let desired = json!({"epoch": 3, "revision": 4, "workloads": [spec("web", "64Mi")]});
    json_seed(t, "mqtt-desired", &desired);
    let reported = json!({"epoch": 3, "acked_revision": 4, "full": true,
        "nodes": [{"name": "gw-a", "status": "Ready"}],
        "instances": [{"workload": "web", "replica": 0, "node": "gw-a", "state": "Running", "generation": 1, "ready": true}]});
    json_seed(t, "mqtt-reported", &reported);
}

fn record_seeds() {
    let t = "records";
    let state = applied_state();
    json_seed(t, "meta", &state.meta);
    for (id, node) in &state.nodes {
        json_seed(t, &format!("node-{id}"), node);
    }
    for (name, w) in &state.workloads {
        json_seed(t, &format!("workload-{name}"), w);
    }
    for (i, instance) in state.instances.values().enumerate().take(3) {
        json_seed(t, &format!("instance-{i}"), instance);
    }
    for (i, event) in state.events.iter().enumerate().take(3) {
        json_seed(t, &format!("event-{i}"), event);
    }
    for (i, request) in state.requests.values().enumerate().take(2) {
        json_seed(t, &format!("request-{i}"), request);
    }
    let mut keyed = b"node/00000000000000000001\0".to_vec();
    keyed.extend(serde_json::to_vec(&state.nodes.values().next()).expect("node"));
    write(t, "keyed-node", &keyed);
    write(t, "keyed-meta-garbage", b"meta\0{\"identity\":");
    let applied = Applied {
        state,
        last_applied: Some(log_id(1, 15)),
        last_membership: StoredMembership::new(Some(log_id(1, 2)), membership()),
    };
    json_seed(t, "snapshot", &applied);
    json_seed(t, "applied", &Some(log_id(1, 15)));
    json_seed(
        t,
        "membership",
        &StoredMembership::new(Some(log_id(1, 2)), membership()),
    );
    json_seed(t, "vote", &Vote::new_committed(2, 1));
    for (i, entry) in entries().iter().enumerate().take(5) {
        json_seed(t, &format!("log-entry-{i}"), entry);
    }
    let site = json!({"token_sha256": "ab".repeat(32), "desired": {"revision": 2, "compacted": 0,
        "workloads": {"web": {"revision": 2, "spec_json": spec("web", "64Mi").to_string()}},
        "tombstones": {"db": 1}}, "acked_revision": 1, "last_seen_ms": 5, "epoch": 9,
        "rejected": {"revision": 2, "error": "bad"}});
    json_seed(t, "hub-site", &site);
    json_seed(
        t,
        "hub-admin",
        &json!({"secret_sha256": "ab".repeat(32), "created_ms": 1}),
    );
    write(t, "hub-report.pb", &report().encode_to_vec());
}

fn report() -> hub::Report {
    hub::Report {
        full: true,
        nodes: vec![hub::NodeStatus {
            name: "gw-a".into(),
            status: "Ready".into(),
        }],
        instances: vec![hub::InstanceStatus {
            workload: "web".into(),
            replica: 0,
            node: "gw-a".into(),
            state: "Running".into(),
            generation: 1,
            ready: true,
        }],
        workloads: vec![hub::WorkloadStatus {
            name: "web".into(),
            source: "cloud".into(),
            generation: 1,
        }],
        refused: vec![hub::Refusal {
            name: "db".into(),
            reason: "local".into(),
        }],
        removed_nodes: vec!["gw-z".into()],
        ..Default::default()
    }
}

fn proto_seeds() {
    let t = "proto";
    let pb = |name: &str, m: &dyn Fn() -> Vec<u8>| write(t, &format!("{name}.pb"), &m());
    let payload = serde_json::to_vec(&VoteRequest::new(Vote::new(2, 1), None)).expect("vote");
    pb("raft-message", &|| {
        v1::RaftMessage {
            cluster_id: "c1".into(),
            payload: payload.clone(),
        }
        .encode_to_vec()
    });
    pb("join-request", &|| {
        v1::JoinRequest {
            token: "gantry-join-v2.x".into(),
            name: "gw-b".into(),
            address: "127.0.0.1:7001".into(),
            labels: [("zone".to_string(), "a".to_string())].into(),
            cpu_millis: 4000,
            memory_bytes: 1 << 32,
            devices: vec!["/dev/ttyUSB0".into()],
            csr_der: vec![0x30, 0x82, 0x01, 0x0a],
        }
        .encode_to_vec()
    });
    pb("heartbeat", &|| {
        v1::HeartbeatRequest {
            cluster_id: "c1".into(),
            node_id: 2,
            runtime_problem: String::new(),
            applied_index: 77,
            storage_problem: String::new(),
            usage: vec![v1::InstanceUsage {
                workload: "web".into(),
                replica: 1,
                cpu_millis: 120,
                memory_bytes: 1 << 24,
            }],
        }
        .encode_to_vec()
    });
    pb("join-reply", &|| {
        v1::JoinReply {
            cluster_id: "c1".into(),
            node_id: 3,
            node_cert_der: vec![1, 2, 3],
            ca_certs_der: vec![vec![4, 5], vec![6]],
        }
        .encode_to_vec()
    });
    pb("set-settings", &|| {
        v1::SetSettingsRequest {
            assignments: "node-grace=2s".into(),
        }
        .encode_to_vec()
    });
    let doc = hub::WorkloadDoc {
        name: "web".into(),
        spec_json: spec("web", "64Mi").to_string(),
    };
    let desired = hub::Desired {
        revision: 4,
        full: true,
        upserts: vec![doc],
        deletes: vec!["db".into()],
        epoch: 3,
    };
    pb("desired", &|| desired.encode_to_vec());
    pb("hub-desired", &|| {
        hub::HubMessage {
            msg: Some(hub::hub_message::Msg::Desired(desired.clone())),
        }
        .encode_to_vec()
    });
    pb("hub-welcome", &|| {
        hub::HubMessage {
            msg: Some(hub::hub_message::Msg::Welcome(hub::Welcome {
                desired_revision: 4,
                epoch: 3,
            })),
        }
        .encode_to_vec()
    });
    pb("site-hello", &|| {
        hub::SiteMessage {
            msg: Some(hub::site_message::Msg::Hello(hub::Hello {
                site: "s1".into(),
                acked_revision: 3,
                epoch: 3,
            })),
        }
        .encode_to_vec()
    });
    pb("site-report", &|| {
        hub::SiteMessage {
            msg: Some(hub::site_message::Msg::Report(report())),
        }
        .encode_to_vec()
    });
    pb("site-digest", &|| {
        hub::SiteMessage {
            msg: Some(hub::site_message::Msg::Digest(hub::Digest {
                hash: u64::MAX,
            })),
        }
        .encode_to_vec()
    });
    pb("site-reject", &|| {
        hub::SiteMessage {
            msg: Some(hub::site_message::Msg::Reject(hub::Reject {
                revision: 4,
                error: "workload 'web': bad".into(),
            })),
        }
        .encode_to_vec()
    });
    pb("report", &|| report().encode_to_vec());
    write(t, "empty.pb", b"");
    // Hand-written edge cases: a length past the end, a 10-byte varint, a
    // deprecated group tag, an unknown field, a field number of 0.
    write(
        t,
        "edge-long-length.pb",
        &[0x0a, 0xff, 0xff, 0xff, 0x0f, b'a'],
    );
    write(
        t,
        "edge-varint-overflow.pb",
        &[
            0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
        ],
    );
    write(t, "edge-group.pb", &[0x0b, 0x08, 0x01, 0x0c]);
    write(
        t,
        "edge-unknown-field.pb",
        &[0xf8, 0x07, 0x01, 0x0a, 0x01, b'x'],
    );
    write(t, "edge-field-zero.pb", &[0x00, 0x01]);
    write(t, "edge-nested-deep.pb", &[0x22; 64]);
}

fn token_seeds() {
    let ca = gantry_pki::Fingerprint([0xab; 32]);
    let join = gantry_pki::JoinToken::generate(ca).expect("join token");
    write("settings", "token-join", join.to_string().as_bytes());
    let admin = gantry_pki::AdminToken::generate(ca).expect("admin token");
    write("settings", "token-admin", admin.to_string().as_bytes());
    let site = gantry_pki::SiteToken::generate(ca).expect("site token");
    write("settings", "token-site", site.to_string().as_bytes());
}

fn state_machine_seeds() {
    // Arbitrary bytes: the generator reads any of them as commands.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for (i, len) in [16usize, 64, 128, 256, 384, 512, 768, 1024]
        .iter()
        .cycle()
        .take(24)
        .enumerate()
    {
        let bytes: Vec<u8> = (0..*len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        write("state_machine", &format!("seed-{i:03}"), &bytes);
    }
}

#[test]
fn write_seeds() {
    if std::env::var_os("FUZZ_WRITE_SEEDS").is_none() {
        return;
    }
    cluster_payload_seeds();
    record_seeds();
    proto_seeds();
    token_seeds();
    state_machine_seeds();
}
