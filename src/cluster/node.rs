//! `Cluster`: one gateway's Raft member and the only door to it. It starts
//! openraft over our storage and transport, routes every write to the
//! leader (forwarding when this gateway is a follower) and answers the
//! questions the API asks (who leads, am I current, who votes).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gantry_proto::v1::RaftMessage;
use openraft::error::{ClientWriteError, RaftError};
use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::{BasicNode, RaftMetrics, SnapshotPolicy};
use rocksdb::DB;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::log_store::LogStore;
use super::network::{Network, PeerChannels, PinSource};
use super::state_machine::{StateMachineStore, StateReader};
use super::transport::{RaftRpc, TonicTransport, Transport};
use super::{NodeId, Raft, TypeConfig};
use crate::clock::ClockRef;
use crate::state::{Command, Request, Response};
use crate::trust::{NodeTrust, Sensitive};

/// Raft timing and log retention. Defaults suit loopback and site LANs.
/// A follower that knows a leader starts an election only after openraft's
/// leader lease (the maximum election timeout) plus a random election
/// timeout without hearing from it: 1.8-2.4 s here. Half that (300-600 ms
/// timeouts) healed a lost leader in 1.83 s instead of 3.03 s (p99), but deposed
/// a busy leader while a build ran beside the cluster
/// (`a_gateway_away_during_1000_writes...` stalled on elections), and a
/// small ARM gateway is slower than that machine: README, "Performance".
/// The heartbeat interval is also openraft's time limit for every
/// append-entries call. Logs are compacted every 500 entries.
#[derive(Debug, Clone)]
pub struct RaftTimers {
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    pub snapshot_after_logs: u64,
    pub keep_logs: u64,
}

impl Default for RaftTimers {
    fn default() -> Self {
        Self {
            heartbeat_ms: 150,
            election_min_ms: 600,
            election_max_ms: 1200,
            snapshot_after_logs: 500,
            keep_logs: 100,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("no leader is known: the cluster may have lost its quorum ({0})")]
    NoLeader(String),
    #[error("not committed within {0:?}: the cluster may have lost its quorum; the change may still be applied once it recovers")]
    Timeout(Duration),
    #[error("{0}")]
    Refused(String),
    #[error("cannot reach the leader at {addr}: {message}")]
    Unreachable { addr: String, message: String },
    /// A gateway on the write's path is below its disk reserve
    /// (`disk_space`).
    #[error("{0}")]
    DiskLow(String),
    #[error("raft: {0}")]
    Raft(String),
    #[error("cannot start the Raft member: {0}")]
    Start(String),
    /// A gateway started without a TLS identity (the in-process gateways
    /// of the deterministic simulation) cannot sign, renew or dial peers
    /// over TLS.
    #[error("this gateway has no TLS identity")]
    NoIdentity,
}

/// Operations only the leader may carry out; followers forward them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum LeaderOp {
    Write(Request),
    /// A write that must have reached every Ready gateway before it is
    /// answered (a revoked token, a new key pin).
    WriteEverywhere(Request),
    Join(JoinArgs),
    /// The gateway's identity comes from its certificate, checked by the
    /// gateway that received the call.
    AddMember {
        node: NodeId,
    },
    /// Signs a renewal for `node` and pins its new key.
    Renew {
        node: NodeId,
        csr_der: Vec<u8>,
    },
    Leave {
        name: String,
    },
    /// The leader's autoscaler's last reading of a workload (soft state).
    AutoscaleReading {
        workload: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinArgs {
    pub token: Sensitive,
    pub name: String,
    pub address: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub capacity: crate::state::Capacity,
    pub devices: BTreeSet<String>,
    pub csr_der: Vec<u8>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum LeaderReply {
    Write(Response),
    /// A committed write and its log index, so that the gateway that
    /// forwarded it can wait until its own replica has applied it.
    Written {
        response: Response,
        index: u64,
    },
    Joined {
        cluster_id: String,
        node: NodeId,
        cert_der: Vec<u8>,
        ca_certs_der: Vec<Vec<u8>>,
    },
    Member {
        role: String,
        cluster_key: Sensitive,
        admin_token: Sensitive,
    },
    Renewed {
        cert_der: Vec<u8>,
        ca_certs_der: Vec<Vec<u8>>,
    },
    Left {
        name: String,
    },
    Reading(Option<serde_json::Value>),
}

/// Why the leader did not carry out an operation, as sent back over the wire.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
pub enum LeaderFailure {
    #[error("not the leader")]
    NotLeader,
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Failed(String),
    #[error("timed out after {0} ms")]
    Timeout(u64),
    /// The leader is below its disk reserve (`disk_space`).
    #[error("{0}")]
    DiskLow(String),
}

/// When this gateway was last in touch with a quorum and caught up, on the
/// boot clock (`crate::clock::boot_ms`).
#[derive(Default)]
struct QuorumSync {
    last_synced: Option<u64>,
    /// The latest accepted heartbeat: when, and the leader's applied index.
    pending: Option<(u64, u64)>,
    /// When `last_synced` was last written to the data dir.
    persisted: Option<u64>,
    /// Whether this process has been in touch and caught up at least once.
    /// `last_synced` may come from the data dir (the previous process on
    /// this boot), but the replica this process loaded may be older than
    /// what that process had applied when it confirmed a stop.
    caught_up: bool,
}

/// The file that carries the last contact across a daemon restart on the
/// same boot: `<boot id> <boot ms>`. Written at most every 2 s and without
/// fsync: an older value only makes a restarted gateway count itself
/// isolated for longer (it stops fenced copies sooner), and a reboot makes
/// the file worthless anyway (its boot id no longer matches).
pub const LAST_CONTACT_FILE: &str = "last-contact";

/// Where the last contact is kept across daemon restarts.
#[derive(Clone)]
pub enum ContactRecord {
    /// `DATA_DIR/last-contact` (`LAST_CONTACT_FILE`).
    File(PathBuf),
    /// Kept by the caller: the simulation holds it for a simulated gateway
    /// across its daemon restarts, as the file would be.
    Memory(Arc<Mutex<Option<String>>>),
}

impl ContactRecord {
    /// The file in `data_dir`.
    pub fn in_dir(data_dir: &std::path::Path) -> Self {
        Self::File(data_dir.join(LAST_CONTACT_FILE))
    }

    fn read(&self) -> Option<String> {
        match self {
            Self::File(path) => std::fs::read_to_string(path).ok(),
            Self::Memory(text) => text.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        }
    }

    fn write(&self, text: String) -> std::io::Result<()> {
        match self {
            Self::File(path) => std::fs::write(path, text),
            Self::Memory(slot) => {
                *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(text);
                Ok(())
            }
        }
    }
}

fn read_last_contact(record: &ContactRecord, clock: &ClockRef) -> Option<u64> {
    let text = record.read()?;
    let (boot, ms) = text.trim().split_once(' ')?;
    (Some(boot) == clock.boot_id().as_deref())
        .then(|| ms.parse().ok())
        .flatten()
}

/// What a production gateway has and a simulated one does not: its TLS
/// identity and the channels dialled with it (images, logs, joins).
pub(crate) struct Identity {
    pub(crate) peers: PeerChannels,
    pub(crate) trust: Arc<NodeTrust>,
}

/// What `Cluster::start_with` is built on besides the Raft storage.
pub struct ClusterDeps {
    /// Gateway-to-gateway calls.
    pub transport: Arc<dyn Transport>,
    /// The clocks every time read of the cluster and its loops goes through.
    pub clock: ClockRef,
    /// Where the last quorum contact survives a daemon restart.
    pub contact: ContactRecord,
}

pub(crate) struct Inner {
    pub(crate) id: NodeId,
    pub(crate) cluster_id: String,
    pub(crate) raft: Raft,
    pub(crate) state: StateReader,
    pub(crate) identity: Option<Identity>,
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) clock: ClockRef,
    contact: ContactRecord,
    /// Leader: how far each gateway said (in its heartbeats) it has applied.
    member_applied: Mutex<std::collections::BTreeMap<NodeId, u64>>,
    /// The last accepted append-entries (or snapshot) and the leader that
    /// sent it.
    leader_contact: Mutex<Option<(NodeId, Instant)>>,
    /// Last heartbeat a leader with a quorum accepted (or our own quorum).
    quorum_contact: Mutex<QuorumSync>,
    pub(crate) write_timeout: Duration,
    /// Membership changes are serialised: openraft refuses overlapping ones.
    pub(crate) membership_lock: tokio::sync::Mutex<()>,
    /// What this gateway counts for `/metrics` (`crate::metrics`).
    pub(crate) telemetry: Arc<crate::metrics::Metrics>,
    /// Free space in the data dir, kept by `disk_space::watch`.
    disk: super::disk_space::DiskSpace,
}

#[derive(Clone)]
pub struct Cluster {
    pub(crate) inner: Arc<Inner>,
}

/// A write on behalf of a client: its id stays the same on every retry
/// (`on_leader` resends it after a broken connection), so the state machine
/// applies it once. The id comes from `rt::random_bytes`, which the
/// simulation seeds.
fn client_request(now_ms: u64, command: Command) -> Request {
    let mut request = Request::new(now_ms, command);
    request.id = Some(hex::encode(super::rt::random_bytes::<16>()));
    request
}

/// The keys the state pins for the gateway a server name stands for.
fn pin_source(state: StateReader, cluster_id: &str) -> PinSource {
    let cluster_id = cluster_id.to_string();
    Arc::new(move |name: &str| {
        let Some(id) = crate::trust::node_id_of_name(name, &cluster_id) else {
            return Vec::new();
        };
        let applied = state.read();
        applied
            .state
            .nodes
            .get(&id)
            .and_then(|n| n.tls.as_ref())
            .map(|tls| {
                tls.pins(now_ms())
                    .into_iter()
                    .filter_map(|pin| gantry_pki::Fingerprint::parse(pin).ok())
                    .collect()
            })
            .unwrap_or_default()
    })
}

/// The wall clock in ms (see `crate::clock`).
pub fn now_ms() -> u64 {
    crate::clock::wall_ms()
}

fn raft_config(cluster_id: &str, timers: &RaftTimers) -> Result<openraft::Config, ClusterError> {
    openraft::Config {
        cluster_name: cluster_id.to_string(),
        heartbeat_interval: timers.heartbeat_ms,
        election_timeout_min: timers.election_min_ms,
        election_timeout_max: timers.election_max_ms,
        install_snapshot_timeout: 10_000,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(timers.snapshot_after_logs),
        max_in_snapshot_log_to_keep: timers.keep_logs,
        purge_batch_size: 64,
        // openraft gives each append-entries call one heartbeat interval;
        // a smaller batch than the default 300 keeps a catching-up
        // follower's calls inside it on a loaded small box.
        max_payload_entries: 64,
        snapshot_max_chunk_size: 256 << 10,
        ..Default::default()
    }
    .validate()
    .map_err(|e| ClusterError::Start(e.to_string()))
}

impl Cluster {
    /// A production gateway: RocksDB storage, tonic over mutual TLS, the
    /// machine's clocks, the last contact in the data dir.
    pub async fn start(
        id: NodeId,
        cluster_id: &str,
        db: Arc<DB>,
        timers: &RaftTimers,
        trust: Arc<NodeTrust>,
    ) -> Result<Self, ClusterError> {
        let telemetry = Arc::new(crate::metrics::Metrics::default());
        let log = LogStore::new(db.clone()).with_metrics(telemetry.clone());
        let sm = StateMachineStore::open(db)
            .map_err(ClusterError::Start)?
            .with_metrics(telemetry.clone());
        let state = sm.reader();
        let data_dir = trust.data_dir.clone();
        let peers = PeerChannels::new(trust.clone(), pin_source(state.clone(), cluster_id))
            .map_err(|e| ClusterError::Start(e.to_string()))?;
        let deps = ClusterDeps {
            transport: Arc::new(TonicTransport {
                peers: peers.clone(),
            }),
            clock: crate::clock::system(),
            contact: ContactRecord::in_dir(&data_dir),
        };
        let identity = Identity { peers, trust };
        Self::start_inner(
            id,
            cluster_id,
            log,
            sm,
            state,
            timers,
            deps,
            Some(identity),
            telemetry,
        )
        .await
    }

    /// A gateway on any openraft storage, transport and clock, without a
    /// TLS identity: the deterministic simulation's in-process gateways
    /// (memory stores from `mem_store`, an in-memory network, simulated
    /// clocks). `state` must read `sm`'s applied state.
    pub async fn start_with<L, S>(
        id: NodeId,
        cluster_id: &str,
        log: L,
        sm: S,
        state: StateReader,
        timers: &RaftTimers,
        deps: ClusterDeps,
    ) -> Result<Self, ClusterError>
    where
        L: RaftLogStorage<TypeConfig>,
        S: RaftStateMachine<TypeConfig>,
    {
        Self::start_inner(
            id,
            cluster_id,
            log,
            sm,
            state,
            timers,
            deps,
            None,
            Default::default(),
        )
        .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn start_inner<L, S>(
        id: NodeId,
        cluster_id: &str,
        log: L,
        sm: S,
        state: StateReader,
        timers: &RaftTimers,
        deps: ClusterDeps,
        identity: Option<Identity>,
        telemetry: Arc<crate::metrics::Metrics>,
    ) -> Result<Self, ClusterError>
    where
        L: RaftLogStorage<TypeConfig>,
        S: RaftStateMachine<TypeConfig>,
    {
        let config = raft_config(cluster_id, timers)?;
        let network = Network {
            cluster_id: cluster_id.to_string(),
            transport: deps.transport.clone(),
        };
        let raft = Raft::new(id, Arc::new(config), network, log, sm)
            .await
            .map_err(|e| ClusterError::Start(e.to_string()))?;
        let last_synced = read_last_contact(&deps.contact, &deps.clock);
        Ok(Self {
            inner: Arc::new(Inner {
                id,
                cluster_id: cluster_id.to_string(),
                raft,
                state,
                identity,
                transport: deps.transport,
                clock: deps.clock,
                contact: deps.contact,
                member_applied: Mutex::new(Default::default()),
                leader_contact: Mutex::new(None),
                quorum_contact: Mutex::new(QuorumSync {
                    last_synced,
                    pending: None,
                    persisted: None,
                    caught_up: false,
                }),
                write_timeout: Duration::from_secs(10),
                membership_lock: tokio::sync::Mutex::new(()),
                telemetry,
                disk: Default::default(),
            }),
        })
    }

    /// Makes this gateway the single voter of a new cluster.
    pub async fn bootstrap(&self, address: &str) -> Result<(), ClusterError> {
        let members = std::collections::BTreeMap::from([(self.inner.id, BasicNode::new(address))]);
        match self.inner.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(ClusterError::Raft(e.to_string())),
        }
    }

    /// Makes these gateways the voters of a new cluster (each with its Raft
    /// address). `bootstrap` with more than one member: the simulation
    /// starts its clusters whole, where production ones grow by joins.
    pub async fn initialize(
        &self,
        members: std::collections::BTreeMap<NodeId, String>,
    ) -> Result<(), ClusterError> {
        let members: std::collections::BTreeMap<NodeId, BasicNode> = members
            .into_iter()
            .map(|(id, addr)| (id, BasicNode::new(addr)))
            .collect();
        match self.inner.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(ClusterError::Raft(e.to_string())),
        }
    }

    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    pub fn cluster_id(&self) -> &str {
        &self.inner.cluster_id
    }

    pub fn state(&self) -> &StateReader {
        &self.inner.state
    }

    /// The TLS channels to peers (images, logs, joins, renewals).
    pub fn peers(&self) -> Result<&PeerChannels, ClusterError> {
        self.inner
            .identity
            .as_ref()
            .map(|i| &i.peers)
            .ok_or(ClusterError::NoIdentity)
    }

    /// This gateway's keys and certificates.
    pub fn trust(&self) -> Result<&Arc<NodeTrust>, ClusterError> {
        self.inner
            .identity
            .as_ref()
            .map(|i| &i.trust)
            .ok_or(ClusterError::NoIdentity)
    }

    /// The gateway-to-gateway transport of the control plane.
    pub fn transport(&self) -> &Arc<dyn Transport> {
        &self.inner.transport
    }

    /// The clocks this gateway's decisions read.
    pub fn clock(&self) -> &ClockRef {
        &self.inner.clock
    }

    /// The wall clock in ms, through this gateway's clock.
    pub fn now_ms(&self) -> u64 {
        self.inner.clock.wall_ms()
    }

    /// A client for member `node`, at the address the state knows for it.
    pub fn member_client(
        &self,
        node: NodeId,
    ) -> Result<gantry_proto::v1::cluster_client::ClusterClient<tonic::transport::Channel>, String>
    {
        let address = self
            .state()
            .read()
            .state
            .nodes
            .get(&node)
            .map(|n| n.address.clone())
            .ok_or_else(|| format!("no gateway with id {node}"))?;
        self.peers()
            .map_err(|e| e.to_string())?
            .member(node, &address)
    }

    /// Leader: a gateway's heartbeat said how far it has applied.
    pub fn note_member_applied(&self, node: NodeId, index: u64) {
        self.inner
            .member_applied
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node, index);
    }

    /// Leader: waits (at most `limit`) until every Ready gateway but this
    /// one has reported applying `index`; returns the names of those that
    /// did not in time.
    pub async fn wait_applied_everywhere(&self, index: u64, limit: Duration) -> Vec<String> {
        let deadline = Instant::now() + limit;
        loop {
            let lagging: Vec<String> = {
                let applied = self.state().read();
                let reported = self
                    .inner
                    .member_applied
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                applied
                    .state
                    .nodes
                    .values()
                    .filter(|n| n.id != self.id())
                    .filter(|n| {
                        matches!(
                            n.status,
                            crate::state::NodeStatus::Ready | crate::state::NodeStatus::Draining
                        )
                    })
                    .filter(|n| reported.get(&n.id).is_none_or(|at| *at < index))
                    .map(|n| n.name.clone())
                    .collect()
            };
            if lagging.is_empty() || Instant::now() >= deadline {
                return lagging;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub(crate) fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    pub fn metrics(&self) -> RaftMetrics<NodeId, BasicNode> {
        self.inner.raft.metrics().borrow().clone()
    }

    /// The gateway's own counters and histograms, for `/metrics`.
    pub fn telemetry(&self) -> &Arc<crate::metrics::Metrics> {
        &self.inner.telemetry
    }

    pub fn metrics_watch(&self) -> tokio::sync::watch::Receiver<RaftMetrics<NodeId, BasicNode>> {
        self.inner.raft.metrics()
    }

    /// The leader's id and Raft address, as this gateway believes.
    pub fn leader(&self) -> Option<(NodeId, String)> {
        let metrics = self.metrics();
        let leader = metrics.current_leader?;
        let addr = metrics
            .membership_config
            .membership()
            .get_node(&leader)?
            .addr
            .clone();
        Some((leader, addr))
    }

    pub fn is_leader(&self) -> bool {
        self.metrics().current_leader == Some(self.inner.id)
    }

    /// Whether this gateway leads and a quorum acknowledged it within one
    /// `node_grace` (a leader cut off in a minority soon stops claiming it).
    pub fn leader_has_quorum(&self) -> bool {
        let metrics = self.metrics();
        let grace = self.state().read().state.meta.settings.node_grace.0;
        metrics.current_leader == Some(self.inner.id)
            && metrics
                .millis_since_quorum_ack
                .is_some_and(|ms| u128::from(ms) <= grace.as_millis())
    }

    /// Voters of every config when the membership is joint (a change that
    /// was cut short); None when it is uniform.
    pub fn joint_config(&self) -> Option<Vec<BTreeSet<NodeId>>> {
        let metrics = self.metrics();
        let joint = metrics.membership_config.membership().get_joint_config();
        (joint.len() > 1).then(|| joint.clone())
    }

    pub fn voters(&self) -> BTreeSet<NodeId> {
        self.metrics()
            .membership_config
            .membership()
            .voter_ids()
            .collect()
    }

    pub fn learners(&self) -> BTreeSet<NodeId> {
        self.metrics()
            .membership_config
            .membership()
            .learner_ids()
            .collect()
    }

    /// Called by the transport whenever the leader replicates to us.
    pub fn note_leader_contact(&self, leader: NodeId) {
        *self
            .inner
            .leader_contact
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some((leader, Instant::now()));
    }

    /// The leader this gateway last heard from through Raft, and when. A
    /// new leader uses it to judge its predecessor at once: the election
    /// itself says that leader fell silent (see `liveness::run_leader`).
    pub fn last_leader_contact(&self) -> Option<(NodeId, Instant)> {
        *self
            .inner
            .leader_contact
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Called when a leader that hears from a quorum accepted our heartbeat
    /// and said how far it had applied (`leader_applied`). We count as in
    /// touch once our own replica reached what the leader had applied at
    /// that or the previous heartbeat: a gateway back from a partition must
    /// not act on its stale replica (e.g. restart a singleton that moved).
    pub fn note_quorum_contact(&self, leader_applied: u64) {
        self.note_quorum_contact_at(self.inner.clock.boot_ms(), leader_applied)
    }

    /// A leader's own contact: a quorum acknowledged it `acked_ms_ago`
    /// (openraft's `millis_since_quorum_ack`). Counted from the ack, not
    /// from when it was noticed, so a leader cut off counts its isolation
    /// from the same instant its followers stop hearing it.
    pub fn note_own_quorum_ack(&self, acked_ms_ago: u64) {
        let at = self.inner.clock.boot_ms().saturating_sub(acked_ms_ago);
        self.note_quorum_contact_at(at, 0)
    }

    fn note_quorum_contact_at(&self, now: u64, leader_applied: u64) {
        let applied = self
            .state()
            .read()
            .last_applied
            .map(|l| l.index)
            .unwrap_or(0);
        let mut sync = self
            .inner
            .quorum_contact
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some((at, needed)) = sync.pending {
            if applied >= needed {
                sync.last_synced = Some(sync.last_synced.map_or(at, |s| s.max(at)));
                sync.caught_up = true;
            }
        }
        if applied >= leader_applied {
            sync.last_synced = Some(sync.last_synced.map_or(now, |s| s.max(now)));
            sync.caught_up = true;
        }
        sync.pending = Some((now, leader_applied));
        let due = sync
            .persisted
            .is_none_or(|at| now.saturating_sub(at) >= 2_000);
        if let (Some(last), true, Some(boot)) = (sync.last_synced, due, self.inner.clock.boot_id())
        {
            sync.persisted = Some(now);
            if let Err(e) = self.inner.contact.write(format!("{boot} {last}\n")) {
                tracing::debug!(error = %e, "cannot record the last contact");
            }
        }
    }

    /// Whether this process has caught up with a leader that has a quorum
    /// at least once. Until then the replica may predate what the previous
    /// process confirmed (a stop the leader acted on), so the agent starts
    /// no fenced copy from it (`agent::desired`).
    pub fn caught_up_since_start(&self) -> bool {
        self.inner
            .quorum_contact
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .caught_up
    }

    /// The boot-clock time of the last contact with a quorum (see
    /// `isolated_for`); None when there was none since this boot.
    pub fn last_contact_ms(&self) -> Option<u64> {
        self.inner
            .quorum_contact
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last_synced
    }

    /// How long this gateway has been cut off from a quorum, if it is (more
    /// than one `node_grace` since it was last in touch and caught up). A
    /// leader is in touch while a quorum acknowledges it; a follower counts
    /// from its last heartbeat accepted by a leader that has a quorum, once
    /// its replica reached what that leader had applied, so neither a
    /// deposed leader stranded in a minority nor a stale replica can make it
    /// act as if connected.
    pub fn isolated_for(&self) -> Option<Duration> {
        let grace = self.state().read().state.meta.settings.node_grace.0;
        // Leaders too: a leader counts as in touch only while a quorum acks
        // it (see `run_heartbeats`); a deposed leader back from a partition
        // then waits, as a follower, until its replica caught up.
        // No contact since this boot (a gateway restarted while cut off, or
        // one whose replica never caught up): isolated since forever, so no
        // fenced copy runs from a replica nobody confirmed.
        let Some(last) = self.last_contact_ms() else {
            return Some(Duration::MAX);
        };
        let age = Duration::from_millis(self.inner.clock.boot_ms().saturating_sub(last));
        (age > grace).then_some(age)
    }

    /// Whether this gateway believes its replica is current: it leads, or it
    /// heard from a leader within a couple of election timeouts. The second
    /// value is the age of that contact.
    pub fn believes_current(&self) -> (bool, Option<u64>) {
        if self.is_leader() {
            // A leader cut off from its quorum is not current either.
            return (self.leader_has_quorum(), Some(0));
        }
        let contact = self.last_leader_contact();
        let age = contact.map(|(_, at)| at.elapsed().as_millis() as u64);
        let fresh = age.is_some_and(|ms| ms < 3_000) && self.metrics().current_leader.is_some();
        (fresh, age)
    }

    /// Proposes a state-machine command wherever the leader is.
    pub async fn write(&self, command: Command) -> Result<Response, ClusterError> {
        self.write_op(LeaderOp::Write(client_request(self.now_ms(), command)))
            .await
    }

    /// Like `write`, and answered only once every Ready gateway applied it
    /// (or a few seconds passed): for changes that must hold everywhere at
    /// once, like a revoked token.
    pub async fn write_everywhere(&self, command: Command) -> Result<Response, ClusterError> {
        self.write_op(LeaderOp::WriteEverywhere(client_request(
            self.now_ms(),
            command,
        )))
        .await
    }

    /// The free space of this gateway's data dir, as last read.
    pub fn disk_space(&self) -> &super::disk_space::DiskSpace {
        &self.inner.disk
    }

    async fn write_op(&self, op: LeaderOp) -> Result<Response, ClusterError> {
        // A write this gateway cannot keep is refused before it goes
        // anywhere: it would count on a quorum this gateway is not part of.
        let reply = match self.inner.disk.check() {
            Ok(()) => self.on_leader(op).await,
            Err(low) => Err(ClusterError::DiskLow(low.to_string())),
        };
        if let Err(e) = &reply {
            self.count_failure(e);
        }
        match reply? {
            LeaderReply::Write(response) => Ok(response),
            LeaderReply::Written { response, index } => {
                self.wait_applied(index).await;
                Ok(response)
            }
            other => Err(ClusterError::Raft(format!(
                "unexpected leader reply {other:?}"
            ))),
        }
    }

    /// Proposes `command` only if this gateway leads, and never forwards it:
    /// for the leader's control loops, whose decisions are made from the
    /// leader's own view and its clock. A deposed leader's verdict (say, a
    /// gateway it could not hear from while partitioned) must die with its
    /// leadership, not be replayed through the new leader.
    pub async fn write_if_leader(&self, command: Command) -> Result<Response, ClusterError> {
        if !self.is_leader() {
            return Err(ClusterError::Refused("not the leader".into()));
        }
        if let Err(low) = self.inner.disk.check() {
            return Err(ClusterError::DiskLow(low.to_string()));
        }
        let request = Request::new(self.now_ms(), command);
        let result =
            match tokio::time::timeout(self.inner.write_timeout, self.propose(request)).await {
                Ok(Ok(response)) => Ok(response),
                Ok(Err(LeaderFailure::NotLeader)) => {
                    Err(ClusterError::Refused("no longer the leader".into()))
                }
                Ok(Err(e)) => Err(ClusterError::Raft(e.to_string())),
                Err(_) => Err(ClusterError::Timeout(self.inner.write_timeout)),
            };
        if let Err(e) = &result {
            self.count_failure(e);
        }
        result
    }

    fn count_failure(&self, e: &ClusterError) {
        let reason = match e {
            ClusterError::Timeout(_) => "timeout",
            ClusterError::NoLeader(_) => "no_leader",
            ClusterError::Refused(_) => "refused",
            ClusterError::Unreachable { .. } => "unreachable",
            ClusterError::DiskLow(_) => "disk_low",
            _ => "error",
        };
        self.inner.telemetry.proposal_failed(reason);
    }

    /// Runs `op` on the leader: here when we lead, else forwarded. Retries
    /// while leadership moves, within the write timeout.
    pub async fn on_leader(&self, op: LeaderOp) -> Result<LeaderReply, ClusterError> {
        let deadline = Instant::now() + self.inner.write_timeout;
        let mut last_error = String::from("no leader elected yet");
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(match self.leader() {
                    None => ClusterError::NoLeader(last_error),
                    Some(_) => ClusterError::Timeout(self.inner.write_timeout),
                });
            }
            let Some((leader, addr)) = self.leader() else {
                let wait = self
                    .inner
                    .raft
                    .wait(Some(remaining.min(Duration::from_millis(500))));
                // A leader this replica has no address for (its membership
                // lags) counts as none: waiting for `current_leader` alone
                // would return at once and spin. So would a Raft member that
                // is shutting down, whose metrics can no longer change.
                let waited = wait
                    .metrics(
                        |m| {
                            m.current_leader.is_some_and(|l| {
                                m.membership_config.membership().get_node(&l).is_some()
                            })
                        },
                        "a leader with an address",
                    )
                    .await;
                if let Err(openraft::metrics::WaitError::ShuttingDown) = waited {
                    return Err(ClusterError::Raft("this gateway is shutting down".into()));
                }
                continue;
            };
            let outcome = if leader == self.inner.id {
                match tokio::time::timeout(remaining, self.execute_as_leader(op.clone())).await {
                    Ok(result) => result,
                    Err(_) => Err(LeaderFailure::Timeout(
                        self.inner.write_timeout.as_millis() as u64
                    )),
                }
            } else {
                match tokio::time::timeout(remaining, self.forward(leader, &addr, &op)).await {
                    Ok(Ok(result)) => result,
                    Ok(Err(message)) => {
                        last_error = format!("leader {leader} at {addr}: {message}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                    Err(_) => Err(LeaderFailure::Timeout(
                        self.inner.write_timeout.as_millis() as u64
                    )),
                }
            };
            match outcome {
                Ok(reply) => return Ok(reply),
                Err(LeaderFailure::NotLeader) => {
                    last_error = "leadership moved".into();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(LeaderFailure::Refused(reason)) => return Err(ClusterError::Refused(reason)),
                Err(LeaderFailure::DiskLow(reason)) => return Err(ClusterError::DiskLow(reason)),
                Err(LeaderFailure::Failed(reason)) => return Err(ClusterError::Raft(reason)),
                Err(LeaderFailure::Timeout(_)) => {
                    return Err(ClusterError::Timeout(self.inner.write_timeout))
                }
            }
        }
    }

    /// Sends `op` to the leader's Forward RPC. The outer error is a
    /// transport problem worth retrying; the inner one is the leader's answer.
    async fn forward(
        &self,
        leader: NodeId,
        addr: &str,
        op: &LeaderOp,
    ) -> Result<Result<LeaderReply, LeaderFailure>, String> {
        let payload = serde_json::to_vec(op).map_err(|e| e.to_string())?;
        let message = RaftMessage {
            cluster_id: self.inner.cluster_id.clone(),
            payload,
        };
        let reply = self
            .inner
            .transport
            .raft(leader, addr, RaftRpc::Forward, message)
            .await
            .map_err(|e| e.to_string())?;
        serde_json::from_slice(&reply.payload).map_err(|e| format!("undecodable reply: {e}"))
    }

    /// Carries out `op` here, refusing with `NotLeader` when we do not lead.
    pub async fn execute_as_leader(&self, op: LeaderOp) -> Result<LeaderReply, LeaderFailure> {
        if !matches!(op, LeaderOp::AutoscaleReading { .. }) {
            self.inner
                .disk
                .check()
                .map_err(|low| LeaderFailure::DiskLow(low.to_string()))?;
        }
        match op {
            LeaderOp::Write(request) => {
                let (response, index) = self.propose_indexed(self.stamped(request)).await?;
                Ok(LeaderReply::Written { response, index })
            }
            LeaderOp::WriteEverywhere(request) => {
                let (response, index) = self.propose_indexed(self.stamped(request)).await?;
                let lagging = self
                    .wait_applied_everywhere(index, Duration::from_secs(5))
                    .await;
                if !lagging.is_empty() {
                    tracing::warn!(?lagging, index, "gateways did not confirm a change in time; they apply it when they catch up");
                }
                Ok(LeaderReply::Written { response, index })
            }
            LeaderOp::Join(args) => self.join_as_leader(args).await,
            LeaderOp::AddMember { node } => self.add_member_as_leader(node).await,
            LeaderOp::Renew { node, csr_der } => self.renew_as_leader(node, &csr_der).await,
            LeaderOp::Leave { name } => self.leave_as_leader(&name).await,
            LeaderOp::AutoscaleReading { workload } => {
                if !self.is_leader() {
                    return Err(LeaderFailure::NotLeader);
                }
                Ok(LeaderReply::Reading(
                    self.telemetry().autoscale_reading(&workload),
                ))
            }
        }
    }

    /// The leader stamps its own clock on what it proposes: the gateway a
    /// write came in through may be off, and times drive rollouts.
    fn stamped(&self, mut request: Request) -> Request {
        request.at_ms = self.now_ms();
        request
    }

    pub(crate) async fn propose(&self, request: Request) -> Result<Response, LeaderFailure> {
        self.propose_indexed(request)
            .await
            .map(|(response, _)| response)
    }

    /// Read-your-writes: a client that wrote through this gateway and reads
    /// from it next sees its write. Bounded, since a lagging replica must
    /// not turn a committed write into an error.
    async fn wait_applied(&self, index: u64) {
        let mut applied = self.state().subscribe();
        let reached = applied.wait_for(|at| *at >= index);
        let _ = tokio::time::timeout(Duration::from_secs(2), reached).await;
    }

    pub(crate) async fn propose_indexed(
        &self,
        request: Request,
    ) -> Result<(Response, u64), LeaderFailure> {
        match self.inner.raft.client_write(request).await {
            Ok(written) => Ok((written.data, written.log_id.index)),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                Err(LeaderFailure::NotLeader)
            }
            Err(e) => Err(LeaderFailure::Failed(e.to_string())),
        }
    }

    /// Stops Raft; used on shutdown so RocksDB closes cleanly.
    pub async fn shutdown(&self) {
        if let Err(e) = self.inner.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
    }
}
