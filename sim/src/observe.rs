//! What the harness sees of every gateway's state machine: a wrapper
//! around `MemStateMachine` that records, for each applied log index, the
//! client request id it carried and the answer the state machine gave, and
//! checks every newly committed state for capacity (I4).

// openraft fixes the storage error type.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::{Arc, Mutex};

use gantry::cluster::mem_store::MemStateMachine;
use gantry::cluster::state_machine::StateReader;
use gantry::cluster::{NodeId, StorageResult, TypeConfig};
use gantry::state::{Command, InstanceState, Response, State};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{Entry, EntryPayload, LogId, OptionalSend, SnapshotMeta, StoredMembership};

/// One applied entry that carried a client request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedClient {
    pub request_id: String,
    /// The answer, as JSON (compared across indexes).
    pub response: String,
    pub kind: &'static str,
}

#[derive(Default)]
struct Records {
    /// Log index -> client request applied there (first gateway to apply it).
    by_index: BTreeMap<u64, AppliedClient>,
    /// Gateways that applied an index with a different answer than the
    /// first: the replicas diverged.
    divergent: Vec<String>,
    /// Highest index whose committed state was checked for capacity.
    capacity_checked: u64,
    over_capacity: Vec<String>,
    applied: BTreeMap<NodeId, u64>,
    /// Cloud revision -> log indexes where it was committed as new.
    cloud: BTreeMap<u64, std::collections::BTreeSet<u64>>,
}

/// Shared by every gateway's wrapper.
#[derive(Clone, Default)]
pub struct Observer {
    records: Arc<Mutex<Records>>,
}

fn kind(command: &Command) -> &'static str {
    match command {
        Command::ApplyWorkloads { .. } => "apply",
        Command::DeleteWorkload { .. } => "delete",
        Command::DrainNode { .. } => "drain",
        Command::SetCordon { .. } => "cordon",
        Command::ReportInstances { .. } => "report",
        _ => "other",
    }
}

/// Per node, what the instances assigned to it request, against its
/// capacity; the violations as text.
pub fn capacity_violations(state: &State) -> Vec<String> {
    let mut used: BTreeMap<NodeId, (u64, u64)> = BTreeMap::new();
    let mut who: BTreeMap<NodeId, Vec<String>> = BTreeMap::new();
    for instance in state.instances.values() {
        let (Some(node), Some(workload)) = (instance.node, state.workloads.get(&instance.workload))
        else {
            continue;
        };
        // A copy stopped to move holds nothing: Exited or Failed while
        // being stopped, or confirmed stopped whatever its last report (a
        // spec change makes it Pending again). The scheduler counts it the
        // same way (`control::scheduling`, fate of a stopping instance).
        let down = matches!(
            instance.state,
            InstanceState::Exited | InstanceState::Failed
        ) && instance.stopping;
        if down || (instance.stopping && instance.stopped) {
            continue;
        }
        let u = used.entry(node).or_default();
        u.0 += workload.spec.cpu_millis();
        u.1 += workload.spec.memory_bytes();
        who.entry(node).or_default().push(format!(
            "{}-{} {}{} {}m",
            instance.workload,
            instance.replica,
            instance.state,
            match (instance.stopping, instance.stopped) {
                (true, true) => " stopped",
                (true, false) => " stopping",
                _ => "",
            },
            workload.spec.cpu_millis()
        ));
    }
    let mut out = Vec::new();
    for (node, (cpu, mem)) in used {
        if let Some(n) = state.nodes.get(&node) {
            if cpu > n.capacity.cpu_millis || mem > n.capacity.memory_bytes {
                out.push(format!(
                    "gw{node}: {cpu}m cpu / {mem} B placed on {}m / {} B: {}",
                    n.capacity.cpu_millis,
                    n.capacity.memory_bytes,
                    who.get(&node).map(|w| w.join(", ")).unwrap_or_default()
                ));
            }
        }
    }
    out
}

impl Observer {
    fn with<T>(&self, f: impl FnOnce(&mut Records) -> T) -> T {
        f(&mut self.records.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn record(&self, host: NodeId, index: u64, applied: Option<AppliedClient>) {
        self.with(|r| {
            let last = r.applied.entry(host).or_default();
            *last = (*last).max(index);
            let Some(applied) = applied else { return };
            match r.by_index.get(&index) {
                None => {
                    r.by_index.insert(index, applied);
                }
                Some(first) if *first != applied => r.divergent.push(format!(
                    "index {index}: gw{host} applied {applied:?}, another gateway {first:?}"
                )),
                Some(_) => {}
            }
        });
    }

    fn check_capacity(&self, index: u64, state: &State) {
        let due = self.with(|r| {
            let due = index > r.capacity_checked;
            r.capacity_checked = r.capacity_checked.max(index);
            due
        });
        if !due {
            return;
        }
        let violations = capacity_violations(state);
        if !violations.is_empty() {
            self.with(|r| {
                r.over_capacity
                    .push(format!("at index {index}: {}", violations.join("; ")))
            });
        }
    }

    /// Client request ids that took effect at two or more indexes with
    /// different answers: applied twice (a retry that was not
    /// deduplicated). A refusal changes nothing, so a retry after one is
    /// a first application, not a second; the same answer again is the
    /// state machine replaying its remembered answer.
    pub fn duplicates(&self) -> Vec<String> {
        self.with(|r| {
            let mut by_id: BTreeMap<&str, Vec<(u64, &AppliedClient)>> = BTreeMap::new();
            for (index, a) in &r.by_index {
                if a.response.starts_with("{\"rejected\"") {
                    continue;
                }
                by_id.entry(&a.request_id).or_default().push((*index, a));
            }
            by_id
                .into_iter()
                .filter(|(_, at)| {
                    at.len() > 1 && at.iter().any(|(_, a)| a.response != at[0].1.response)
                })
                .map(|(id, at)| {
                    let indexes: Vec<String> = at
                        .iter()
                        .map(|(i, a)| format!("{i} ({}: {})", a.kind, a.response))
                        .collect();
                    format!("request {id} took effect at indexes {}", indexes.join(", "))
                })
                .collect()
        })
    }

    fn record_cloud(&self, index: u64, revision: u64) {
        self.with(|r| {
            r.cloud.entry(revision).or_default().insert(index);
        });
    }

    /// Cloud revisions that took effect at two or more log indexes.
    pub fn cloud_duplicates(&self) -> Vec<String> {
        self.with(|r| {
            r.cloud
                .iter()
                .filter(|(_, at)| at.len() > 1)
                .map(|(revision, at)| {
                    format!("cloud revision {revision} took effect at indexes {at:?}")
                })
                .collect()
        })
    }

    pub fn divergent(&self) -> Vec<String> {
        self.with(|r| r.divergent.clone())
    }

    pub fn over_capacity(&self) -> Vec<String> {
        self.with(|r| r.over_capacity.clone())
    }

    /// The highest index each gateway applied.
    pub fn applied(&self) -> BTreeMap<NodeId, u64> {
        self.with(|r| r.applied.clone())
    }
}

/// A gateway's state machine, observed.
#[derive(Clone)]
pub struct ObservedSm {
    pub inner: MemStateMachine,
    pub host: NodeId,
    pub observer: Observer,
}

impl ObservedSm {
    pub fn reader(&self) -> StateReader {
        self.inner.reader()
    }
}

type Membership = StoredMembership<NodeId, openraft::BasicNode>;

impl RaftStateMachine<TypeConfig> for ObservedSm {
    type SnapshotBuilder = MemStateMachine;

    async fn applied_state(&mut self) -> StorageResult<(Option<LogId<NodeId>>, Membership)> {
        self.inner.applied_state().await
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<Response>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        let seen: Vec<(u64, Option<(String, &'static str)>)> = entries
            .iter()
            .map(|e| {
                let client = match &e.payload {
                    EntryPayload::Normal(request) => {
                        request.id.clone().map(|id| (id, kind(&request.command)))
                    }
                    _ => None,
                };
                (e.log_id.index, client)
            })
            .collect();
        let responses = self.inner.apply(entries).await?;
        for ((index, _), response) in seen.iter().zip(&responses) {
            if let Response::CloudRevision {
                revision,
                applied: true,
                ..
            } = response
            {
                self.observer.record_cloud(*index, *revision);
            }
        }
        for ((index, client), response) in seen.into_iter().zip(&responses) {
            let applied = client.map(|(request_id, kind)| AppliedClient {
                request_id,
                response: serde_json::to_string(response).unwrap_or_default(),
                kind,
            });
            self.observer.record(self.host, index, applied);
        }
        let reader = self.inner.reader();
        let applied = reader.read();
        if let Some(last) = applied.last_applied {
            self.observer.check_capacity(last.index, &applied.state);
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.inner.get_snapshot_builder().await
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        self.inner.begin_receiving_snapshot().await
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        self.inner.install_snapshot(meta, snapshot).await?;
        if let Some(last) = meta.last_log_id {
            self.observer.record(self.host, last.index, None);
        }
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        self.inner.get_current_snapshot().await
    }
}
