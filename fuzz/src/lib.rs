//! Fuzz targets for everything gantry reads from outside its own memory:
//! manifests and the quantities in them, `settings set` and the other
//! operator strings, every protobuf message on the Admin, Cluster,
//! Bootstrap and hub services, the JSON payloads inside the Cluster RPCs,
//! what RocksDB and snapshots hand back, and command sequences applied to
//! the state machine.
//!
//! Why: these inputs come from peers, from the hub, from files on disk
//! that a crash or a bad disk may have mangled, and from people. A panic
//! on any of them takes a gateway down (or, in `State::apply`, every
//! gateway at once, since they all apply the same log), so each must be an
//! error instead. Where the code makes a promise beyond "no panic" (a
//! spec written back reads back equal, apply is deterministic, a refusal
//! changes nothing), the target checks that too.
//!
//! Each target is one `pub fn <target>(data: &[u8])` that takes any bytes.
//! A panic inside it is a finding: either gantry panicked or an oracle
//! failed (its message says which). The same functions run in two places:
//! `tests/smoke.rs`, the CI smoke (the corpus under `corpus/<target>/` plus
//! seeded mutations, on stable with no tools), and `campaign/`, a
//! cargo-fuzz project for long coverage-guided runs (`scripts/fuzz.sh`).

mod machine;

use std::fmt::Debug;

use gantry::cloud::site_view::SiteView;
use gantry::cluster::node::{LeaderFailure, LeaderOp, LeaderReply};
use gantry::cluster::{NodeId, TypeConfig};
use gantry::state::quantity::{
    format_cpu, format_duration, format_memory, format_memory_exact, parse_cpu, parse_duration,
    parse_memory, HumanDuration,
};
use gantry::state::settings::SettingsChange;
use gantry::state::State;
use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Entry, LogId, SnapshotMeta, StoredMembership, Vote};
use prost::Message;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use machine::state_machine;

/// A fuzz target: takes any bytes, panics only on a finding.
pub type Target = fn(&[u8]);

/// The targets by name, as the smoke test and `campaign/` know them.
pub const TARGETS: [(&str, Target); 7] = [
    ("manifest", manifest),
    ("quantity", quantity),
    ("settings", settings),
    ("proto", proto),
    ("cluster_payloads", cluster_payloads),
    ("records", records),
    ("state_machine", state_machine),
];

/// Input text as the parsers would see it: invalid UTF-8 cannot reach them
/// (gRPC strings and `read_to_string` refuse it first), so it is replaced
/// rather than skipped, which keeps the rest of the input useful.
fn text(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}

/// Manifests: `state::spec::parse_manifest` (gantry's format) and
/// `manifest::parse` (also Compose and Kubernetes). Oracles: a manifest
/// gantry's parser takes, the general one takes as the same specs (no
/// gantry document has `services`, `kind` or `apiVersion`); specs written
/// back with `manifest::to_yaml` (`gantry convert`) parse back equal; and
/// specs survive the JSON round trip they make inside every Raft log entry
/// (`Command::ApplyWorkloads`).
pub fn manifest(data: &[u8]) {
    let text = text(data);
    let own = gantry::state::spec::parse_manifest(&text);
    let any = gantry::manifest::parse(&text);
    if let Ok(specs) = &own {
        match &any {
            Ok(again) if again == specs => {}
            other => panic!(
                "parse_manifest took the manifest but manifest::parse gave {other:?}, not {specs:?}"
            ),
        }
    }
    let Ok(specs) = any else { return };
    let yaml = match gantry::manifest::to_yaml(&specs) {
        Ok(yaml) => yaml,
        Err(e) => panic!("parsed specs cannot be written back as YAML: {e}"),
    };
    match gantry::manifest::parse(&yaml) {
        Ok(again) if again == specs => {}
        other => panic!("to_yaml wrote\n{yaml}\nwhich parses as {other:?}, not {specs:?}"),
    }
    specs_json_round_trip("manifest", &specs);
}

/// Specs as a Raft log entry carries them (JSON) read back equal.
fn specs_json_round_trip(what: &str, specs: &[gantry::state::spec::WorkloadSpec]) {
    let bytes = match serde_json::to_vec(specs) {
        Ok(bytes) => bytes,
        Err(e) => panic!("{what}: specs cannot be written as JSON: {e}"),
    };
    match serde_json::from_slice::<Vec<gantry::state::spec::WorkloadSpec>>(&bytes) {
        Ok(again) if again == specs => {}
        other => panic!(
            "{what}: specs as JSON {} read back as {other:?}",
            String::from_utf8_lossy(&bytes)
        ),
    }
}

/// Cpu, memory and durations: `state::quantity`. Oracles: every parsed
/// value prints (`format_*`, also what JSON and `get` show) as text that
/// parses back to it (memory prints rounded to one decimal, so it reads
/// back within that rounding); the first 8 bytes as a number also go
/// through each formatter, which covers values no text reaches cheaply.
pub fn quantity(data: &[u8]) {
    let text = text(data);
    if let Ok(millis) = parse_cpu(&text) {
        cpu_round_trip(millis);
    }
    if let Ok(bytes) = parse_memory(&text) {
        memory_round_trip(bytes);
    }
    if let Ok(d) = parse_duration(&text) {
        duration_round_trip(d.as_millis());
    }
    if let Ok(d) = text.parse::<HumanDuration>() {
        json_round_trip::<HumanDuration>("duration", &d);
    }
    let mut word = [0u8; 8];
    for (slot, byte) in word.iter_mut().zip(data) {
        *slot = *byte;
    }
    let n = u64::from_le_bytes(word);
    cpu_round_trip(n);
    memory_round_trip(n);
    duration_round_trip(u128::from(n));
}

fn cpu_round_trip(millis: u64) {
    let printed = format_cpu(millis);
    assert_eq!(
        parse_cpu(&printed),
        Ok(millis),
        "cpu {millis}m prints as '{printed}'"
    );
}

fn memory_round_trip(bytes: u64) {
    let printed = format_memory(bytes);
    let back = match parse_memory(&printed) {
        Ok(back) => back,
        Err(e) => panic!("memory {bytes} prints as '{printed}', which does not parse: {e}"),
    };
    if printed.contains('.') {
        // One decimal of the unit: off by at most half a tenth of it.
        let unit = bytes
            .checked_ilog2()
            .map_or(1, |log| 1u64 << (log / 10 * 10));
        assert!(
            back.abs_diff(bytes) <= unit / 20 + 1,
            "memory {bytes} prints as '{printed}', which reads back as {back}"
        );
    } else {
        assert_eq!(back, bytes, "memory {bytes} prints as '{printed}'");
    }
    // What specs are stored as must come back to the byte.
    let exact = format_memory_exact(bytes);
    assert_eq!(
        parse_memory(&exact),
        Ok(bytes),
        "memory {bytes} is stored as '{exact}'"
    );
}

fn duration_round_trip(ms: u128) {
    let Ok(ms) = u64::try_from(ms) else { return };
    let d = std::time::Duration::from_millis(ms);
    let printed = format_duration(d);
    assert_eq!(
        parse_duration(&printed),
        Ok(d),
        "duration {ms}ms prints as '{printed}'"
    );
}

/// Operator strings: `gantry settings set` (`SettingsChange::parse`, what
/// the Admin `SetSettings` handler runs), token roles (`Role::parse`), the
/// cloud link's `--keepalive` (`keepalive::parse`) and the three token
/// formats (`gantry_pki::{JoinToken, AdminToken, SiteToken}::parse`).
/// Oracles: a settings change printed back as `key=value,...` parses
/// equal, survives its JSON trip through Raft, and merging it into the
/// defaults never panics; a keepalive as `gantry status` shows it parses
/// back to the same interval; a token that parses prints as text that parses
/// to the same token; a role prints as what parsed.
pub fn settings(data: &[u8]) {
    let text = text(data);
    if let Ok(change) = SettingsChange::parse(&text) {
        let printed = print_settings(&change);
        match SettingsChange::parse(&printed) {
            Ok(again) if again == change => {}
            other => panic!("settings {change:?} print as '{printed}', which parse as {other:?}"),
        }
        json_round_trip::<SettingsChange>("settings change", &change);
        let _ = change.merged_into(&Default::default());
    }
    if let Ok(role) = gantry::state::Role::parse(&text) {
        assert_eq!(role.to_string(), text, "role '{text}' prints differently");
    }
    if let Ok(Some(ms)) = gantry::cloud::link::keepalive::parse(&text) {
        // As `gantry status` shows it (`keepalive::describe`).
        let printed = gantry::cloud::link::keepalive::describe(&link_with_keepalive(ms));
        let printed = if printed == "off" {
            "0".into()
        } else {
            printed
        };
        match gantry::cloud::link::keepalive::parse(&printed) {
            Ok(Some(again)) if again == ms => {}
            other => panic!("keepalive {ms} ms shows as '{printed}', which parses as {other:?}"),
        }
    }
    token_round_trip(&text, |t| {
        gantry_pki::JoinToken::parse(t).map(|t| t.to_string())
    });
    token_round_trip(&text, |t| {
        gantry_pki::AdminToken::parse(t).map(|t| t.to_string())
    });
    token_round_trip(&text, |t| {
        gantry_pki::SiteToken::parse(t).map(|t| t.to_string())
    });
}

fn link_with_keepalive(ms: u64) -> gantry::state::CloudLink {
    gantry::state::CloudLink {
        hub: String::new(),
        site: String::new(),
        hub_ca_sha256: String::new(),
        token_sealed: String::new(),
        keepalive_ms: Some(ms),
        mqtt: None,
    }
}

fn print_settings(change: &SettingsChange) -> String {
    let fields = [
        ("heartbeat-interval", change.heartbeat_interval),
        ("node-grace", change.node_grace),
        ("voter-replace-after", change.voter_replace_after),
    ];
    let pairs: Vec<String> = fields
        .iter()
        .filter_map(|(key, value)| value.map(|v| format!("{key}={}", format_duration(v.0))))
        .collect();
    pairs.join(",")
}

fn token_round_trip<E: Debug>(text: &str, parse: impl Fn(&str) -> Result<String, E>) {
    let Ok(printed) = parse(text) else { return };
    match parse(&printed) {
        Ok(again) if again == printed => {}
        other => panic!("token parses and prints as '{printed}', which parses as {other:?}"),
    }
}

/// Decodes `data` as `$ty`; a message that decodes must encode and decode
/// back to an equal message.
macro_rules! decode_each {
    ($data:expr, $($ty:ty),+ $(,)?) => {
        $( proto_round_trip::<$ty>(stringify!($ty), $data); )+
    };
}

fn proto_round_trip<M: Message + Default + PartialEq + Debug>(name: &str, data: &[u8]) {
    let Ok(message) = M::decode(data) else { return };
    let bytes = message.encode_to_vec();
    match M::decode(bytes.as_slice()) {
        Ok(again) if again == message => {}
        other => {
            panic!("{name}: {message:?} re-encodes as {bytes:02x?}, which decodes as {other:?}")
        }
    }
}

/// Every protobuf message of `gantry.v1` (Bootstrap, Cluster, Admin) and
/// `gantry.hub.v1` (the link and the hub admin RPCs), decoded as prost
/// would on a server or client: decode errors only, and a decoded message
/// re-encodes to an equal one. A hub delivery (`Desired`) then goes through
/// the link's own decoding of its specs (`deliver::decode`), and a site's
/// `Report` is applied to a hub `SiteView` (see [`site_view_oracles`]).
pub fn proto(data: &[u8]) {
    use gantry_proto::hub::v1 as hub;
    use gantry_proto::v1;
    decode_each!(
        data,
        v1::ExportImageRequest,
        v1::PullImageRequest,
        v1::RaftMessage,
        v1::JoinRequest,
        v1::JoinReply,
        v1::AddMemberRequest,
        v1::AddMemberReply,
        v1::RenewCertificateRequest,
        v1::RenewCertificateReply,
        v1::HeartbeatRequest,
        v1::InstanceUsage,
        v1::ImageChunk,
        v1::LogsRequest,
        v1::LogChunk,
        v1::HeartbeatReply,
        v1::CreateTokenRequest,
        v1::RevokeTokenRequest,
        v1::CreateJoinTokenRequest,
        v1::SetSettingsRequest,
        v1::NodeRequest,
        v1::StatusRequest,
        v1::GetRequest,
        v1::DescribeRequest,
        v1::ApplyRequest,
        v1::DeleteWorkloadRequest,
        v1::LeaveRequest,
        v1::JsonDocument,
        v1::CloudAttachRequest,
        v1::CloudDetachRequest,
        hub::SiteMessage,
        hub::HubMessage,
        hub::Hello,
        hub::Welcome,
        hub::Desired,
        hub::WorkloadDoc,
        hub::Ack,
        hub::Reject,
        hub::Report,
        hub::NodeStatus,
        hub::InstanceStatus,
        hub::WorkloadStatus,
        hub::Refusal,
        hub::Digest,
        hub::Resync,
        hub::ApplyRequest,
        hub::DeleteRequest,
        hub::StatusRequest,
        hub::SiteTokenRequest,
        hub::SiteTokenReply,
        hub::JsonDocument,
    );
    if let Ok(desired) = hub::Desired::decode(data) {
        if let Ok(specs) = gantry::cloud::link::deliver::decode(&desired) {
            specs_json_round_trip("delivered specs", &specs);
        }
    }
    if let Ok(report) = hub::Report::decode(data) {
        site_view_oracles(&report);
    }
}

/// A hub applies each report a site sends to its `SiteView` (and again
/// from RocksDB at start). Oracles: the view's full report rebuilds the
/// same view, and the diff from nothing rebuilds it too (what a site
/// sends after a reconnect and after each change), and the digest is
/// computed without panic.
fn site_view_oracles(report: &gantry_proto::hub::v1::Report) {
    let mut view = SiteView::default();
    view.apply(report);
    let mut rebuilt = SiteView::default();
    rebuilt.apply(&view.full_report());
    assert_eq!(rebuilt, view, "the full report does not rebuild the view");
    let mut patched = SiteView::default();
    if let Some(diff) = SiteView::default().diff(&view) {
        patched.apply(&diff);
    }
    assert_eq!(
        patched, view,
        "the diff from nothing does not rebuild the view"
    );
    let _ = view.digest();
}

/// The JSON inside `RaftMessage.payload` on the Cluster RPCs, decoded as
/// `api::cluster_service` (requests) and `cluster::network` /
/// `Cluster::forward` (replies) do with `serde_json::from_slice`, plus the
/// documents an MQTT broker hands the link and the hub
/// (`cloud::mqtt::wire`). Errors only; and what decodes encodes back to
/// JSON that decodes to the same value.
pub fn cluster_payloads(data: &[u8]) {
    json_decodes::<VoteRequest<NodeId>>("VoteRequest", data);
    if let Some(req) = json_decodes::<AppendEntriesRequest<TypeConfig>>("AppendEntries", data) {
        // What the handler reads before handing the request to openraft.
        let _ = req.vote.leader_id().voted_for();
    }
    if let Some(req) = json_decodes::<InstallSnapshotRequest<TypeConfig>>("InstallSnapshot", data) {
        let _ = req.vote.leader_id().voted_for();
    }
    json_decodes::<LeaderOp>("LeaderOp", data);
    json_decodes::<Result<VoteResponse<NodeId>, RaftError<NodeId>>>("vote reply", data);
    json_decodes::<Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>>("append reply", data);
    json_decodes::<Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>>(
        "snapshot reply",
        data,
    );
    json_decodes::<Result<LeaderReply, LeaderFailure>>("forward reply", data);
    if let Ok(desired) = gantry::cloud::mqtt::wire::desired_from_json(data) {
        let _ = gantry::cloud::link::deliver::decode(&desired);
    }
    let _ = gantry::cloud::mqtt::wire::reported_from_json(data);
}

/// The snapshot of `KEY_SNAPSHOT_V1` (data dirs before 2026-11-30), as
/// `StateMachineStore::get_current_snapshot` reads it: its own type is
/// private to `cluster::state_machine`, this is the same shape.
#[derive(Serialize, Deserialize)]
struct StoredSnapshotV1 {
    meta: SnapshotMeta<NodeId, BasicNode>,
    data: Vec<u8>,
}

/// The sm records' key prefixes as `cluster::state_machine` writes them.
const RECORD_KEYS: [&[u8]; 7] = [
    b"meta",
    b"node/00000000000000000001",
    b"workload/web",
    b"instance/web/0000000000",
    b"event/00000000000000000001",
    b"request/r1",
    b"other/key",
];

/// What RocksDB and snapshots hand back: state records through
/// `state_machine::load_record`, the snapshot a peer installs
/// (`state_machine::Applied`), snapshot meta and the v1 snapshot, the
/// applied log id and membership (`sm_meta`), log entries and the log's
/// vote and purge id (`log_store`), and the hub's site and admin records
/// and stored reports (`cloud::hub::store`). Input: `key\0value` loads one
/// record under that key; bytes without a NUL are tried under every record
/// key and as every other kind. Oracles: corrupt bytes are errors; a state
/// that loads survives the snapshot round trip (JSON out and back in);
/// the other kinds decode back equal.
pub fn records(data: &[u8]) {
    if let Some(split) = data.iter().position(|b| *b == 0) {
        load_one(&data[..split], &data[split + 1..]);
        return;
    }
    for key in RECORD_KEYS {
        load_one(key, data);
    }
    if let Some(applied) =
        json_decodes::<gantry::cluster::state_machine::Applied>("snapshot data", data)
    {
        snapshot_round_trip(&applied.state);
    }
    json_decodes::<SnapshotMeta<NodeId, BasicNode>>("snapshot meta", data);
    json_decodes::<StoredSnapshotV1>("snapshot v1", data);
    json_decodes::<Option<LogId<NodeId>>>("applied log id", data);
    json_decodes::<StoredMembership<NodeId, BasicNode>>("membership", data);
    json_decodes::<Entry<TypeConfig>>("log entry", data);
    json_decodes::<Vote<NodeId>>("vote", data);
    json_decodes::<LogId<NodeId>>("last purged", data);
    json_decodes::<gantry::cloud::hub::store::SiteRecord>("hub site record", data);
    json_decodes::<gantry::cloud::hub::store::AdminRecord>("hub admin record", data);
    if let Ok(report) = gantry_proto::hub::v1::Report::decode(data) {
        site_view_oracles(&report);
    }
}

fn load_one(key: &[u8], value: &[u8]) {
    let mut state = State::default();
    if gantry::cluster::state_machine::load_record(&mut state, key, value).is_ok() {
        snapshot_round_trip(&state);
    }
}

/// A state written as a snapshot (JSON) reads back equal.
fn snapshot_round_trip(state: &State) {
    let bytes = match serde_json::to_vec(state) {
        Ok(bytes) => bytes,
        Err(e) => panic!("a loaded state cannot be written as a snapshot: {e}"),
    };
    match serde_json::from_slice::<State>(&bytes) {
        Ok(again) if &again == state => {}
        Ok(again) => panic!("snapshot round trip changed the state: {state:?} -> {again:?}"),
        Err(e) => panic!("a snapshot of a loaded state does not load: {e}"),
    }
}

/// Decodes `data` as `T` with serde_json; on success checks that the value
/// encodes and decodes back to the same JSON (`T` need not be `PartialEq`).
fn json_decodes<T: Serialize + DeserializeOwned>(what: &str, data: &[u8]) -> Option<T> {
    let value: T = serde_json::from_slice(data).ok()?;
    json_round_trip(what, &value);
    Some(value)
}

/// `value` to JSON and back gives the same JSON again.
fn json_round_trip<T: Serialize + DeserializeOwned>(what: &str, value: &T) {
    let first = match serde_json::to_vec(value) {
        Ok(bytes) => bytes,
        Err(e) => panic!("{what}: decoded but cannot be encoded: {e}"),
    };
    let again: T = match serde_json::from_slice(&first) {
        Ok(again) => again,
        Err(e) => panic!(
            "{what}: {} does not decode back: {e}",
            String::from_utf8_lossy(&first)
        ),
    };
    let (Ok(a), Ok(b)) = (serde_json::to_value(value), serde_json::to_value(&again)) else {
        panic!("{what}: decoded but cannot be encoded as a JSON value");
    };
    assert_eq!(a, b, "{what}: the JSON round trip changed the value");
}
