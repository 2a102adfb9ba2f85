//! The state machine's storage: the pure `state::State` in memory, every
//! record it touches persisted to RocksDB in the same synced batch as the
//! last-applied log id, and snapshots built from and installed into it.
//!
//! Because records and `last_applied` are written together, a restart
//! resumes from exactly what was applied; openraft then re-applies only the
//! committed entries after it.

// openraft fixes the storage error type (`StorageError`, ~224 bytes);
// boxing it is not ours to choose.
#![allow(clippy::result_large_err)]

use std::io::Cursor;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageIOError,
    StoredMembership,
};
use rocksdb::{IteratorMode, WriteBatch, WriteOptions, DB};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::store::{cf, CF_SM, CF_SM_META};
use super::{NodeId, StorageResult, TypeConfig};
use crate::state::{ChangeSet, Response, State, StateKey};

const KEY_APPLIED: &[u8] = b"applied";
const KEY_MEMBERSHIP: &[u8] = b"membership";
/// The snapshot's meta (JSON) and its data (the state as JSON bytes), under
/// two keys written in one batch: the data stays raw bytes on disk.
const KEY_SNAPSHOT_META: &[u8] = b"snapshot-meta";
const KEY_SNAPSHOT_DATA: &[u8] = b"snapshot-data";
/// Where a data dir written before 2026-11-30 keeps its snapshot: meta and
/// data in one JSON document, the data as an array of numbers (about four
/// bytes of JSON per byte, the main cost of a snapshot). Read, never written.
const KEY_SNAPSHOT_V1: &[u8] = b"snapshot";

type Membership = StoredMembership<NodeId, openraft::BasicNode>;

/// Everything the state machine holds, in memory.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Applied {
    pub state: State,
    pub last_applied: Option<LogId<NodeId>>,
    pub last_membership: Membership,
}

/// Applies committed entries to `applied`: the one apply loop of every
/// state-machine store (RocksDB here, memory in `mem_store`), so that they
/// cannot drift apart. Returns openraft's responses, one per entry, and the
/// records the entries touched (what a store must persist with
/// `last_applied`). Pure: no I/O, no clock.
pub fn apply_entries(
    applied: &mut Applied,
    entries: impl IntoIterator<Item = Entry<TypeConfig>>,
) -> (Vec<Response>, ChangeSet) {
    let mut responses = Vec::new();
    let mut changes = ChangeSet::new();
    for entry in entries {
        applied.last_applied = Some(entry.log_id);
        let response = match entry.payload {
            EntryPayload::Blank => Response::Ok,
            EntryPayload::Normal(request) => applied.state.apply(&request, &mut changes),
            EntryPayload::Membership(membership) => {
                applied.last_membership = StoredMembership::new(Some(entry.log_id), membership);
                Response::Ok
            }
        };
        responses.push(response);
    }
    (responses, changes)
}

#[derive(Serialize, Deserialize)]
pub(super) struct StoredSnapshot {
    pub(super) meta: SnapshotMeta<NodeId, openraft::BasicNode>,
    pub(super) data: Vec<u8>,
}

/// Read access to the applied state for the API and the control loops.
#[derive(Clone)]
pub struct StateReader {
    inner: Arc<RwLock<Applied>>,
    applied_rx: watch::Receiver<u64>,
}

impl StateReader {
    /// For the other stores of this module (`mem_store`).
    pub(super) fn new(inner: Arc<RwLock<Applied>>, applied_rx: watch::Receiver<u64>) -> Self {
        Self { inner, applied_rx }
    }

    pub fn read(&self) -> RwLockReadGuard<'_, Applied> {
        self.inner
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Fires each time entries were applied (carries the last applied index).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.applied_rx.clone()
    }
}

#[derive(Clone)]
pub struct StateMachineStore {
    db: Arc<DB>,
    inner: Arc<RwLock<Applied>>,
    /// Held by `apply` and `install_snapshot` from the change in memory
    /// until its synced write returns, and by `build_snapshot` while it
    /// copies the state. openraft builds snapshots in a spawned task while
    /// the next batch is applied; without this a snapshot could hold state
    /// that is only in memory, and the purge that follows it could delete
    /// logs that a restart needs to re-apply (review M4). While it is held,
    /// memory and disk may differ; whoever holds it sees them equal.
    durable: Arc<tokio::sync::Mutex<()>>,
    /// Held by `build_snapshot` from its copy until its write returns, and
    /// by `install_snapshot` throughout (taken before `durable`): an
    /// installed snapshot is never overwritten by an older one built
    /// meanwhile, and `apply` is not held up while a snapshot serialises.
    snapshot_write: Arc<tokio::sync::Mutex<()>>,
    applied_tx: Arc<watch::Sender<u64>>,
    applied_rx: watch::Receiver<u64>,
    metrics: Arc<crate::metrics::Metrics>,
    /// Holds `apply` between its change in memory and its synced write.
    #[cfg(test)]
    apply_gate: Option<Arc<tests::Gate>>,
}

fn record_key(key: &StateKey) -> Vec<u8> {
    match key {
        StateKey::Meta => b"meta".to_vec(),
        StateKey::Node(id) => format!("node/{id:020}").into_bytes(),
        StateKey::Workload(name) => format!("workload/{name}").into_bytes(),
        StateKey::Instance(k) => format!("instance/{}/{:010}", k.workload, k.replica).into_bytes(),
        StateKey::Event(seq) => format!("event/{seq:020}").into_bytes(),
        StateKey::Request(id) => format!("request/{id}").into_bytes(),
    }
}

/// The current value of a record, or None when it was removed.
fn record_value(state: &State, key: &StateKey) -> Result<Option<Vec<u8>>, serde_json::Error> {
    match key {
        StateKey::Meta => serde_json::to_vec(&state.meta).map(Some),
        StateKey::Node(id) => state.nodes.get(id).map(serde_json::to_vec).transpose(),
        StateKey::Workload(name) => state
            .workloads
            .get(name)
            .map(serde_json::to_vec)
            .transpose(),
        StateKey::Instance(k) => state.instances.get(k).map(serde_json::to_vec).transpose(),
        StateKey::Event(seq) => state
            .events
            .iter()
            .find(|e| e.seq == *seq)
            .map(serde_json::to_vec)
            .transpose(),
        StateKey::Request(id) => state.requests.get(id).map(serde_json::to_vec).transpose(),
    }
}

fn all_keys(state: &State) -> ChangeSet {
    let mut keys = ChangeSet::new();
    keys.insert(StateKey::Meta);
    keys.extend(state.nodes.keys().map(|id| StateKey::Node(*id)));
    keys.extend(
        state
            .workloads
            .keys()
            .map(|n| StateKey::Workload(n.clone())),
    );
    keys.extend(
        state
            .instances
            .keys()
            .map(|k| StateKey::Instance(k.clone())),
    );
    keys.extend(state.events.iter().map(|e| StateKey::Event(e.seq)));
    keys.extend(
        state
            .requests
            .keys()
            .map(|id| StateKey::Request(id.clone())),
    );
    keys
}

/// Loads one `sm` record as read back from RocksDB into `state`: corrupt
/// bytes are an error, never a panic (public for the `records` fuzz target).
pub fn load_record(state: &mut State, key: &[u8], value: &[u8]) -> Result<(), serde_json::Error> {
    if key == b"meta" {
        state.meta = serde_json::from_slice(value)?;
    } else if key.starts_with(b"node/") {
        let node: crate::state::Node = serde_json::from_slice(value)?;
        state.nodes.insert(node.id, node);
    } else if key.starts_with(b"workload/") {
        let workload: crate::state::Workload = serde_json::from_slice(value)?;
        state.workloads.insert(workload.spec.name.clone(), workload);
    } else if key.starts_with(b"instance/") {
        let instance: crate::state::Instance = serde_json::from_slice(value)?;
        state.instances.insert(instance.key(), instance);
    } else if key.starts_with(b"event/") {
        // Keys sort by sequence, so events arrive oldest first.
        state.events.push_back(serde_json::from_slice(value)?);
    } else if key.starts_with(b"request/") {
        let done: crate::state::AppliedRequest = serde_json::from_slice(value)?;
        state.requests.insert(done.id.clone(), done);
    }
    Ok(())
}

impl StateMachineStore {
    /// Loads the state machine persisted in `db`.
    pub fn open(db: Arc<DB>) -> Result<Self, String> {
        let mut applied = Applied::default();
        for item in db.iterator_cf(cf(&db, CF_SM), IteratorMode::Start) {
            let (key, value) = item.map_err(|e| e.to_string())?;
            load_record(&mut applied.state, &key, &value).map_err(|e| {
                format!(
                    "corrupted state record {}: {e}",
                    String::from_utf8_lossy(&key)
                )
            })?;
        }
        let meta = cf(&db, CF_SM_META);
        if let Some(bytes) = db.get_cf(meta, KEY_APPLIED).map_err(|e| e.to_string())? {
            applied.last_applied =
                serde_json::from_slice(&bytes).map_err(|e| format!("corrupted applied id: {e}"))?;
        }
        if let Some(bytes) = db.get_cf(meta, KEY_MEMBERSHIP).map_err(|e| e.to_string())? {
            applied.last_membership =
                serde_json::from_slice(&bytes).map_err(|e| format!("corrupted membership: {e}"))?;
        }
        let index = applied.last_applied.map(|l| l.index).unwrap_or(0);
        let (applied_tx, applied_rx) = watch::channel(index);
        Ok(Self {
            db,
            inner: Arc::new(RwLock::new(applied)),
            durable: Arc::new(tokio::sync::Mutex::new(())),
            snapshot_write: Arc::new(tokio::sync::Mutex::new(())),
            applied_tx: Arc::new(applied_tx),
            applied_rx,
            metrics: Default::default(),
            #[cfg(test)]
            apply_gate: None,
        })
    }

    pub fn reader(&self) -> StateReader {
        StateReader::new(self.inner.clone(), self.applied_rx.clone())
    }

    fn write_guard(&self) -> RwLockWriteGuard<'_, Applied> {
        self.inner
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Puts `keys` (as they are now in `applied.state`) and the applied
    /// markers into `batch`.
    fn stage(
        db: &DB,
        applied: &Applied,
        keys: &ChangeSet,
        batch: &mut WriteBatch,
    ) -> StorageResult<()> {
        let sm = cf(db, CF_SM);
        for key in keys {
            match record_value(&applied.state, key)
                .map_err(|e| StorageIOError::write_state_machine(&e))?
            {
                Some(value) => batch.put_cf(sm, record_key(key), value),
                None => batch.delete_cf(sm, record_key(key)),
            }
        }
        let meta = cf(db, CF_SM_META);
        let last = serde_json::to_vec(&applied.last_applied)
            .map_err(|e| StorageIOError::write_state_machine(&e))?;
        let membership = serde_json::to_vec(&applied.last_membership)
            .map_err(|e| StorageIOError::write_state_machine(&e))?;
        batch.put_cf(meta, KEY_APPLIED, last);
        batch.put_cf(meta, KEY_MEMBERSHIP, membership);
        Ok(())
    }

    /// Puts a snapshot into `batch`: meta and data together (one batch, so
    /// a crash keeps both or neither), replacing a snapshot in the old
    /// single-key form.
    fn stage_snapshot(
        db: &DB,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        data: &[u8],
        batch: &mut WriteBatch,
    ) -> StorageResult<()> {
        let meta_bytes = serde_json::to_vec(meta)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        let sm_meta = cf(db, CF_SM_META);
        batch.put_cf(sm_meta, KEY_SNAPSHOT_META, meta_bytes);
        batch.put_cf(sm_meta, KEY_SNAPSHOT_DATA, data);
        batch.delete_cf(sm_meta, KEY_SNAPSHOT_V1);
        Ok(())
    }

    /// Times its synced batches and counts its snapshots into the gateway's
    /// `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    async fn write_synced(&self, batch: WriteBatch) -> StorageResult<()> {
        let db = self.db.clone();
        let result = tokio::task::spawn_blocking(move || {
            let mut opts = WriteOptions::default();
            opts.set_sync(true);
            db.write_opt(batch, &opts)
        })
        .await;
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StorageIOError::write_state_machine(&e).into()),
            Err(e) => Err(StorageIOError::write_state_machine(&e).into()),
        }
    }

    fn notify(&self, index: Option<LogId<NodeId>>) {
        let index = index.map(|l| l.index).unwrap_or(0);
        self.applied_tx.send_replace(index);
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let _snapshot_write = self.snapshot_write.lock().await;
        // Copy under `durable` and serialise outside it, off the async
        // workers: `apply` waits for `durable`, and a site with thousands of
        // remembered request ids takes milliseconds to serialise.
        let copy = {
            let _durable = self.durable.lock().await;
            self.inner.read().unwrap_or_else(|p| p.into_inner()).clone()
        };
        let (last_applied, last_membership) = (copy.last_applied, copy.last_membership.clone());
        let data = tokio::task::spawn_blocking(move || serde_json::to_vec(&copy))
            .await
            .map_err(|e| StorageIOError::read_state_machine(&e))?
            .map_err(|e| StorageIOError::read_state_machine(&e))?;
        let snapshot_id = match last_applied {
            Some(log_id) => format!("{}-{}-{}", log_id.leader_id, log_id.index, data.len()),
            None => format!("empty-{}", data.len()),
        };
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership,
            snapshot_id,
        };
        let mut batch = WriteBatch::default();
        Self::stage_snapshot(&self.db, &meta, &data, &mut batch)?;
        self.write_synced(batch).await?;
        tracing::info!(snapshot = %meta.snapshot_id, bytes = data.len(), "built snapshot");
        self.metrics.snapshots_built.inc();
        self.metrics.snapshot_bytes.set(data.len() as i64);
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> StorageResult<(Option<LogId<NodeId>>, Membership)> {
        let applied = self.inner.read().unwrap_or_else(|p| p.into_inner());
        Ok((applied.last_applied, applied.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<Response>>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let _durable = self.durable.lock().await;
        let mut batch = WriteBatch::default();
        let (responses, last_applied) = {
            let mut guard = self.write_guard();
            let (responses, changes) = apply_entries(&mut guard, entries);
            Self::stage(&self.db, &guard, &changes, &mut batch)?;
            (responses, guard.last_applied)
        };
        #[cfg(test)]
        if let Some(gate) = &self.apply_gate {
            gate.hold().await;
        }
        let started = std::time::Instant::now();
        self.write_synced(batch).await?;
        self.metrics
            .apply_commit
            .observe(started.elapsed().as_secs_f64());
        self.notify(last_applied);
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let data = snapshot.into_inner();
        self.metrics.snapshot_bytes.set(data.len() as i64);
        let incoming: Applied = serde_json::from_slice(&data)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        let _snapshot_write = self.snapshot_write.lock().await;
        let _durable = self.durable.lock().await;
        let mut batch = WriteBatch::default();
        // Replace every record: the snapshot is the whole truth.
        batch.delete_range_cf(
            cf(&self.db, CF_SM),
            b"".as_slice(),
            b"\xff\xff\xff\xff".as_slice(),
        );
        let last_applied = {
            let mut guard = self.write_guard();
            *guard = Applied {
                state: incoming.state,
                last_applied: meta.last_log_id,
                last_membership: meta.last_membership.clone(),
            };
            let keys = all_keys(&guard.state);
            Self::stage(&self.db, &guard, &keys, &mut batch)?;
            guard.last_applied
        };
        Self::stage_snapshot(&self.db, meta, &data, &mut batch)?;
        self.write_synced(batch).await?;
        tracing::info!(snapshot = %meta.snapshot_id, "installed snapshot");
        self.notify(last_applied);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let read = |key: &[u8]| {
            self.db
                .get_cf(cf(&self.db, CF_SM_META), key)
                .map_err(|e| StorageIOError::read_snapshot(None, &e))
        };
        let stored = match (read(KEY_SNAPSHOT_META)?, read(KEY_SNAPSHOT_DATA)?) {
            (Some(meta), Some(data)) => StoredSnapshot {
                meta: serde_json::from_slice(&meta)
                    .map_err(|e| StorageIOError::read_snapshot(None, &e))?,
                data,
            },
            (None, None) => match read(KEY_SNAPSHOT_V1)? {
                Some(bytes) => serde_json::from_slice(&bytes)
                    .map_err(|e| StorageIOError::read_snapshot(None, &e))?,
                None => return Ok(None),
            },
            _ => {
                let e =
                    std::io::Error::other("snapshot meta without its data, or data without meta");
                return Err(StorageIOError::read_snapshot(None, &e).into());
            }
        };
        Ok(Some(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use openraft::testing::{blank_ent, membership_ent};
    use tokio::sync::{Notify, Semaphore};

    use super::*;
    use crate::cluster::store;

    /// Stops `apply` after its change in memory and before its synced
    /// write, until the test releases it.
    pub(super) struct Gate {
        reached: Notify,
        release: Semaphore,
    }

    impl Gate {
        fn new() -> Self {
            Self {
                reached: Notify::new(),
                release: Semaphore::new(0),
            }
        }

        pub(super) async fn hold(&self) {
            self.reached.notify_one();
            if let Ok(permit) = self.release.acquire().await {
                permit.forget();
            }
        }
    }

    /// What a restart would load as the last applied log id.
    fn durable_applied(db: &DB) -> Option<LogId<NodeId>> {
        let bytes = db
            .get_cf(cf(db, CF_SM_META), KEY_APPLIED)
            .expect("read sm_meta");
        bytes.and_then(|b| serde_json::from_slice(&b).expect("applied id"))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_snapshot_never_holds_state_that_is_not_yet_on_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = store::open(dir.path(), "m4").expect("open");
        let mut sm = StateMachineStore::open(db.clone()).expect("state machine");
        let gate = Arc::new(Gate::new());
        sm.apply_gate = Some(gate.clone());

        let mut applier = sm.clone();
        let apply = tokio::spawn(async move {
            applier
                .apply([
                    blank_ent::<TypeConfig>(1, 1, 1),
                    membership_ent::<TypeConfig>(1, 1, 2, vec![[1u64].into()]),
                    blank_ent::<TypeConfig>(1, 1, 3),
                ])
                .await
        });
        // `apply` has changed memory; its synced write is held back.
        gate.reached.notified().await;
        assert_eq!(sm.reader().read().last_applied.map(|l| l.index), Some(3));
        assert_eq!(durable_applied(&db), None);

        // openraft spawns the builder concurrently with apply; the write
        // completes a little later.
        let release = {
            let gate = gate.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                gate.release.add_permits(1);
            })
        };
        let mut builder = sm.get_snapshot_builder().await;
        let snapshot = builder.build_snapshot().await.expect("build");
        let on_disk = durable_applied(&db);
        assert!(
            snapshot.meta.last_log_id <= on_disk,
            "the snapshot reaches {:?} while the disk holds only {:?}",
            snapshot.meta.last_log_id,
            on_disk
        );
        release.await.expect("release");
        apply.await.expect("apply task").expect("apply");
        assert_eq!(snapshot.meta.last_log_id.map(|l| l.index), Some(3));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_built_snapshot_is_read_back_after_a_restart_and_the_old_form_still_reads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let built = {
            let db = store::open(dir.path(), "snap").expect("open");
            let mut sm = StateMachineStore::open(db).expect("state machine");
            sm.apply([
                blank_ent::<TypeConfig>(1, 1, 1),
                membership_ent::<TypeConfig>(1, 1, 2, vec![[1u64].into()]),
            ])
            .await
            .expect("apply");
            let mut builder = sm.get_snapshot_builder().await;
            let snapshot = builder.build_snapshot().await.expect("build");
            (snapshot.meta, snapshot.snapshot.into_inner())
        };
        let db = store::open(dir.path(), "snap").expect("reopen");
        let mut sm = StateMachineStore::open(db.clone()).expect("state machine");
        let current = sm
            .get_current_snapshot()
            .await
            .expect("read")
            .expect("a snapshot");
        assert_eq!(current.meta, built.0);
        assert_eq!(current.snapshot.into_inner(), built.1);

        // A data dir from before the split keeps meta and data in one key.
        let v1 = serde_json::to_vec(&StoredSnapshot {
            meta: built.0.clone(),
            data: built.1.clone(),
        })
        .expect("encode");
        let sm_meta = cf(&db, CF_SM_META);
        db.delete_cf(sm_meta, KEY_SNAPSHOT_META).expect("delete");
        db.delete_cf(sm_meta, KEY_SNAPSHOT_DATA).expect("delete");
        db.put_cf(sm_meta, KEY_SNAPSHOT_V1, v1).expect("put");
        let current = sm
            .get_current_snapshot()
            .await
            .expect("read")
            .expect("a snapshot");
        assert_eq!(current.meta, built.0);
        assert_eq!(current.snapshot.into_inner(), built.1);

        // Half a snapshot is an error, not an empty one.
        db.delete_cf(sm_meta, KEY_SNAPSHOT_V1).expect("delete");
        db.put_cf(sm_meta, KEY_SNAPSHOT_DATA, b"{}").expect("put");
        assert!(sm.get_current_snapshot().await.is_err());
    }

    #[test]
    fn apply_entries_tracks_last_applied_and_membership() {
        let mut applied = Applied::default();
        let (responses, changes) = apply_entries(
            &mut applied,
            [
                blank_ent::<TypeConfig>(1, 1, 1),
                membership_ent::<TypeConfig>(1, 1, 2, vec![[1u64, 2].into()]),
                blank_ent::<TypeConfig>(2, 1, 3),
            ],
        );
        assert_eq!(responses, vec![Response::Ok, Response::Ok, Response::Ok]);
        assert!(changes.is_empty());
        assert_eq!(applied.last_applied.map(|l| l.index), Some(3));
        assert_eq!(applied.last_membership.log_id().map(|l| l.index), Some(2));
    }
}
