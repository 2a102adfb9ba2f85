//! Raft storage in memory with a model of what a crash loses, for the
//! deterministic simulation (several gateways in one process, simulated
//! time). `MemLogStore` and `MemStateMachine` implement the same openraft
//! v2 traits as the RocksDB stores and apply entries with the same
//! `apply_entries`; their data lives in a [`MemDisk`] that the caller owns,
//! so a simulated gateway can be dropped ("the process died") and started
//! again on the same disk.
//!
//! The model, two files on one disk:
//! - The log file (vote, committed, entries, purge point): every write is
//!   visible to reads at once (the page cache) and durable only after an
//!   fsync, an awaitable step that takes `fsync_delay` (a `tokio::time`
//!   sleep, deterministic under a paused or simulated clock). `append`
//!   calls openraft's flush callback after its fsync; `save_vote`,
//!   `truncate` and `purge` return after theirs. `save_committed` is not
//!   synced, as in RocksDB. An fsync makes durable every write made before
//!   it started.
//! - The state-machine file: the persisted copy equals the applied copy
//!   each time `apply` (or `install_snapshot`) returns, as in RocksDB, and
//!   snapshots are built from the persisted copy, so they never hold state
//!   that is not durable (review M4).
//!
//! [`MemDisk::crash`] is a power cut: unsynced log writes are gone, and a
//! write whose fsync was under way fails. A process crash that keeps the
//! page cache is just dropping the Raft instance without calling it.
//! [`MemDisk::set_lie_about_fsync`] makes `append` call the flush callback
//! before any fsync, like a disk that acknowledges writes from a volatile
//! cache: a checker must then be able to catch acknowledged writes that a
//! crash loses.
//!
//! One Raft instance per disk at a time.

// openraft fixes the storage error type (`StorageError`, ~224 bytes);
// boxing it is not ours to choose.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    Entry, LogId, OptionalSend, RaftLogReader, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership, Vote,
};
use tokio::sync::watch;

use super::state_machine::{apply_entries, Applied, StateReader, StoredSnapshot};
use super::{NodeId, StorageResult, TypeConfig};
use crate::state::Response;

type Membership = StoredMembership<NodeId, openraft::BasicNode>;

/// A disk shared between the caller and the stores opened on it.
pub type SharedDisk = Arc<Mutex<MemDisk>>;

/// The log file's content.
#[derive(Clone, Default)]
struct LogFile {
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
    last_purged: Option<LogId<NodeId>>,
    entries: BTreeMap<u64, Entry<TypeConfig>>,
}

/// One write to the log file.
enum LogWrite {
    Vote(Vote<NodeId>),
    Committed(Option<LogId<NodeId>>),
    Append(Vec<Entry<TypeConfig>>),
    /// Removes entries from this index on.
    Truncate(u64),
    /// Removes entries up to and including this one.
    Purge(LogId<NodeId>),
}

impl LogFile {
    fn write(&mut self, write: &LogWrite) {
        match write {
            LogWrite::Vote(vote) => self.vote = Some(*vote),
            LogWrite::Committed(committed) => self.committed = *committed,
            LogWrite::Append(entries) => {
                for entry in entries {
                    self.entries.insert(entry.log_id.index, entry.clone());
                }
            }
            LogWrite::Truncate(from) => {
                self.entries.split_off(from);
            }
            LogWrite::Purge(upto) => {
                self.last_purged = Some(*upto);
                self.entries = self.entries.split_off(&upto.index.saturating_add(1));
            }
        }
    }
}

/// One simulated gateway's disk; see the module documentation.
pub struct MemDisk {
    /// The log file as the running process sees it.
    log: LogFile,
    /// The log file as a power cut now would leave it.
    synced: LogFile,
    /// Writes in `log` but not yet in `synced`, with their sequence
    /// numbers, oldest first.
    unsynced: VecDeque<(u64, LogWrite)>,
    /// Sequence number of the last log write.
    written: u64,
    /// The state machine's persisted copy.
    sm: Applied,
    snapshot: Option<StoredSnapshot>,
    /// Bumped by each crash: an fsync that started before it fails.
    epoch: u64,
    fsync_delay: Box<dyn FnMut() -> Duration + Send>,
    lie_about_fsync: bool,
}

impl Default for MemDisk {
    fn default() -> Self {
        Self {
            log: LogFile::default(),
            synced: LogFile::default(),
            unsynced: VecDeque::new(),
            written: 0,
            sm: Applied::default(),
            snapshot: None,
            epoch: 0,
            fsync_delay: Box::new(|| Duration::ZERO),
            lie_about_fsync: false,
        }
    }
}

impl MemDisk {
    /// An empty disk whose fsyncs take no time.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty disk, ready to share with stores.
    pub fn shared() -> SharedDisk {
        Arc::new(Mutex::new(Self::new()))
    }

    /// Every fsync takes `delay`.
    pub fn set_fsync_delay(&mut self, delay: Duration) {
        self.fsync_delay = Box::new(move || delay);
    }

    /// Each fsync takes the next duration `next` returns (a seeded random
    /// source keeps a simulation replayable).
    pub fn set_fsync_delays(&mut self, next: impl FnMut() -> Duration + Send + 'static) {
        self.fsync_delay = Box::new(next);
    }

    /// When true, `append` calls the flush callback at once, before its
    /// entries are durable; they become durable at the next fsync of the
    /// log file (a vote, truncate or purge) or are lost in a crash. For
    /// mutation tests only.
    pub fn set_lie_about_fsync(&mut self, lie: bool) {
        self.lie_about_fsync = lie;
    }

    /// A power cut: every log write not yet fsynced is gone, and fsyncs
    /// under way fail. Drop the Raft instance using this disk first.
    pub fn crash(&mut self) {
        self.log = self.synced.clone();
        self.unsynced.clear();
        self.epoch += 1;
    }

    /// How many log writes a crash now would lose.
    pub fn unsynced_writes(&self) -> usize {
        self.unsynced.len()
    }

    fn write(&mut self, write: LogWrite) {
        self.log.write(&write);
        self.written += 1;
        self.unsynced.push_back((self.written, write));
    }

    fn synced_upto(&mut self, upto: u64) {
        while let Some((seq, _)) = self.unsynced.front() {
            if *seq > upto {
                break;
            }
            if let Some((_, write)) = self.unsynced.pop_front() {
                self.synced.write(&write);
            }
        }
    }
}

fn lock(disk: &SharedDisk) -> MutexGuard<'_, MemDisk> {
    disk.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn crashed() -> std::io::Error {
    std::io::Error::other("the disk crashed during this write")
}

/// Waits for an fsync to start now; returns the epoch it started in.
async fn fsync_wait(disk: &SharedDisk) -> u64 {
    let (epoch, delay) = {
        let mut d = lock(disk);
        let delay = (d.fsync_delay)();
        (d.epoch, delay)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    epoch
}

/// An fsync of the log file: makes every write made before it durable.
async fn fsync_log(disk: &SharedDisk) -> Result<(), std::io::Error> {
    let upto = lock(disk).written;
    let epoch = fsync_wait(disk).await;
    let mut d = lock(disk);
    if d.epoch != epoch {
        return Err(crashed());
    }
    d.synced_upto(upto);
    Ok(())
}

/// The Raft log and vote of one gateway, on a [`MemDisk`].
#[derive(Clone)]
pub struct MemLogStore {
    disk: SharedDisk,
}

impl MemLogStore {
    pub fn new(disk: SharedDisk) -> Self {
        Self { disk }
    }

    /// `append` with any completion callback: openraft's `LogFlushed` can
    /// only be made inside openraft, so the tests call this.
    async fn append_then(
        &mut self,
        entries: Vec<Entry<TypeConfig>>,
        flushed: impl FnOnce(Result<(), std::io::Error>),
    ) -> StorageResult<()> {
        let lie = {
            let mut d = lock(&self.disk);
            d.write(LogWrite::Append(entries));
            d.lie_about_fsync
        };
        if lie {
            flushed(Ok(()));
            return Ok(());
        }
        match fsync_log(&self.disk).await {
            Ok(()) => {
                flushed(Ok(()));
                Ok(())
            }
            Err(e) => {
                let error = StorageIOError::write_logs(&e).into();
                flushed(Err(e));
                Err(error)
            }
        }
    }
}

impl RaftLogReader<TypeConfig> for MemLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let d = lock(&self.disk);
        Ok(d.log
            .entries
            .range(start..)
            .take_while(|(index, _)| range.contains(*index))
            .map(|(_, entry)| entry.clone())
            .collect())
    }

    /// Only the run from `start` without a hole (see `log_store::run_from`).
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let entries = self.try_get_log_entries(start..end).await?;
        Ok(super::log_store::run_from(start, entries))
    }
}

impl RaftLogStorage<TypeConfig> for MemLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let d = lock(&self.disk);
        let last_purged_log_id = d.log.last_purged;
        let last_log_id = match d.log.entries.last_key_value() {
            Some((_, entry)) => Some(entry.log_id),
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        lock(&self.disk).write(LogWrite::Vote(*vote));
        fsync_log(&self.disk)
            .await
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        Ok(lock(&self.disk).log.vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        // Not synced, as in RocksDB: losing it only means re-applying from
        // the last applied id.
        lock(&self.disk).write(LogWrite::Committed(committed));
        Ok(())
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        Ok(lock(&self.disk).log.committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        self.append_then(entries, |result| callback.log_io_completed(result))
            .await
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        lock(&self.disk).write(LogWrite::Truncate(log_id.index));
        fsync_log(&self.disk)
            .await
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        lock(&self.disk).write(LogWrite::Purge(log_id));
        fsync_log(&self.disk)
            .await
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }
}

/// The state machine of one gateway, on a [`MemDisk`].
#[derive(Clone)]
pub struct MemStateMachine {
    disk: SharedDisk,
    /// The applied copy, which the API reads.
    inner: Arc<RwLock<Applied>>,
    applied_tx: Arc<watch::Sender<u64>>,
    applied_rx: watch::Receiver<u64>,
}

impl MemStateMachine {
    /// Loads the state machine persisted on `disk`.
    pub fn new(disk: SharedDisk) -> Self {
        let applied = lock(&disk).sm.clone();
        let index = applied.last_applied.map(|l| l.index).unwrap_or(0);
        let (applied_tx, applied_rx) = watch::channel(index);
        Self {
            disk,
            inner: Arc::new(RwLock::new(applied)),
            applied_tx: Arc::new(applied_tx),
            applied_rx,
        }
    }

    pub fn reader(&self) -> StateReader {
        StateReader::new(self.inner.clone(), self.applied_rx.clone())
    }

    fn notify(&self, last_applied: Option<LogId<NodeId>>) {
        self.applied_tx
            .send_replace(last_applied.map(|l| l.index).unwrap_or(0));
    }
}

fn sm_crashed(e: std::io::Error) -> StorageError<NodeId> {
    StorageIOError::write_state_machine(&e).into()
}

impl RaftSnapshotBuilder<TypeConfig> for MemStateMachine {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        // From the persisted copy: never ahead of the disk.
        let stored = {
            let d = lock(&self.disk);
            let data =
                serde_json::to_vec(&d.sm).map_err(|e| StorageIOError::read_state_machine(&e))?;
            let last_log_id = d.sm.last_applied;
            let snapshot_id = match last_log_id {
                Some(log_id) => format!("{}-{}-{}", log_id.leader_id, log_id.index, data.len()),
                None => format!("empty-{}", data.len()),
            };
            StoredSnapshot {
                meta: SnapshotMeta {
                    last_log_id,
                    last_membership: d.sm.last_membership.clone(),
                    snapshot_id,
                },
                data,
            }
        };
        let epoch = fsync_wait(&self.disk).await;
        {
            let mut d = lock(&self.disk);
            if d.epoch != epoch {
                return Err(sm_crashed(crashed()));
            }
            // An install that ran meanwhile stays the current snapshot.
            let newer = d
                .snapshot
                .as_ref()
                .is_some_and(|s| s.meta.last_log_id > stored.meta.last_log_id);
            if !newer {
                d.snapshot = Some(StoredSnapshot {
                    meta: stored.meta.clone(),
                    data: stored.data.clone(),
                });
            }
        }
        Ok(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for MemStateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> StorageResult<(Option<LogId<NodeId>>, Membership)> {
        let applied = self.inner.read().unwrap_or_else(|p| p.into_inner());
        Ok((applied.last_applied, applied.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<Response>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        let (responses, last_applied) = {
            let mut applied = self.inner.write().unwrap_or_else(|p| p.into_inner());
            let (responses, _changes) = apply_entries(&mut applied, entries.iter().cloned());
            (responses, applied.last_applied)
        };
        // The synced write of the records: apply is deterministic, so
        // applying the same entries to the persisted copy makes it equal to
        // the applied one without copying the whole state.
        let epoch = fsync_wait(&self.disk).await;
        {
            let mut d = lock(&self.disk);
            if d.epoch != epoch {
                return Err(sm_crashed(crashed()));
            }
            apply_entries(&mut d.sm, entries);
        }
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
        let incoming: Applied = serde_json::from_slice(&data)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        let applied = Applied {
            state: incoming.state,
            last_applied: meta.last_log_id,
            last_membership: meta.last_membership.clone(),
        };
        let epoch = fsync_wait(&self.disk).await;
        {
            let mut d = lock(&self.disk);
            if d.epoch != epoch {
                return Err(sm_crashed(crashed()));
            }
            d.sm = applied.clone();
            d.snapshot = Some(StoredSnapshot {
                meta: meta.clone(),
                data,
            });
        }
        *self.inner.write().unwrap_or_else(|p| p.into_inner()) = applied;
        self.notify(meta.last_log_id);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let d = lock(&self.disk);
        Ok(d.snapshot.as_ref().map(|s| Snapshot {
            meta: s.meta.clone(),
            snapshot: Box::new(Cursor::new(s.data.clone())),
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use openraft::testing::{blank_ent, membership_ent};

    use super::*;

    fn indexes(entries: &[Entry<TypeConfig>]) -> Vec<u64> {
        entries.iter().map(|e| e.log_id.index).collect()
    }

    async fn read_all(disk: &SharedDisk) -> Vec<u64> {
        let mut log = MemLogStore::new(disk.clone());
        indexes(&log.try_get_log_entries(0..).await.expect("read"))
    }

    /// As `log_store`'s test of the same name (the simulation, seed 862).
    #[tokio::test(start_paused = true)]
    async fn a_replication_read_returns_only_the_run_that_starts_where_it_was_asked() {
        let disk = MemDisk::shared();
        let mut log = MemLogStore::new(disk.clone());
        let entries = (1..=3).map(|i| blank_ent(1, 1, i)).collect();
        log.append_then(entries, |_| {}).await.expect("append");
        log.purge(openraft::LogId::new(
            openraft::CommittedLeaderId::new(1, 1),
            5,
        ))
        .await
        .expect("purge");
        let entries = (6..=7).map(|i| blank_ent(1, 1, i)).collect();
        log.append_then(entries, |_| {}).await.expect("append");
        let got = log.limited_get_log_entries(4, 8).await.expect("read");
        assert!(got.is_empty(), "purged under the reader");
        let got = log.limited_get_log_entries(6, 8).await.expect("read");
        assert_eq!(indexes(&got), vec![6, 7]);
        let got = log.try_get_log_entries(0..8).await.expect("read");
        assert_eq!(
            indexes(&got),
            vec![6, 7],
            "the plain read: what lies in the range"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_crash_loses_the_entry_not_yet_flushed_and_keeps_the_flushed_one() {
        let disk = MemDisk::shared();
        lock(&disk).set_fsync_delay(Duration::from_millis(5));
        let mut log = MemLogStore::new(disk.clone());

        let flushed_1 = Arc::new(AtomicBool::new(false));
        let seen = flushed_1.clone();
        log.append_then(vec![blank_ent(1, 1, 1)], move |r| {
            seen.store(r.is_ok(), Ordering::SeqCst)
        })
        .await
        .expect("append 1");
        assert!(flushed_1.load(Ordering::SeqCst));

        let flushed_2 = Arc::new(AtomicBool::new(false));
        let seen = flushed_2.clone();
        let mut writer = log.clone();
        let append_2 = tokio::spawn(async move {
            writer
                .append_then(vec![blank_ent(1, 1, 2)], move |r| {
                    seen.store(r.is_ok(), Ordering::SeqCst)
                })
                .await
        });
        // Entry 2 is written and its fsync is under way.
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(!flushed_2.load(Ordering::SeqCst));
        assert_eq!(read_all(&disk).await, vec![1, 2], "the page cache has it");
        assert_eq!(lock(&disk).unsynced_writes(), 1);

        lock(&disk).crash();
        assert_eq!(read_all(&disk).await, vec![1]);
        assert!(append_2.await.expect("task").is_err(), "its fsync fails");
        assert!(!flushed_2.load(Ordering::SeqCst), "never acknowledged");
        assert_eq!(read_all(&disk).await, vec![1]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_disk_that_lies_about_fsync_loses_acknowledged_entries() {
        let disk = MemDisk::shared();
        lock(&disk).set_fsync_delay(Duration::from_millis(5));
        lock(&disk).set_lie_about_fsync(true);
        let mut log = MemLogStore::new(disk.clone());
        let flushed = Arc::new(AtomicBool::new(false));
        let seen = flushed.clone();
        log.append_then(vec![blank_ent(1, 1, 1)], move |r| {
            seen.store(r.is_ok(), Ordering::SeqCst)
        })
        .await
        .expect("append");
        assert!(flushed.load(Ordering::SeqCst), "acknowledged");
        lock(&disk).crash();
        assert_eq!(read_all(&disk).await, Vec::<u64>::new(), "and lost");

        // A later fsync of the log file makes earlier writes durable.
        log.append_then(vec![blank_ent(1, 1, 1)], |_| {})
            .await
            .expect("append");
        log.save_vote(&Vote::new(1, 1)).await.expect("vote");
        lock(&disk).crash();
        assert_eq!(read_all(&disk).await, vec![1]);
    }

    #[tokio::test(start_paused = true)]
    async fn votes_truncates_and_purges_survive_a_crash_committed_may_not() {
        let disk = MemDisk::shared();
        lock(&disk).set_fsync_delay(Duration::from_millis(2));
        let mut log = MemLogStore::new(disk.clone());
        let entries = (1..=6).map(|i| blank_ent(1, 1, i)).collect();
        log.append_then(entries, |_| {}).await.expect("append");
        log.save_vote(&Vote::new(3, 1)).await.expect("vote");
        log.truncate(blank_ent::<TypeConfig>(1, 1, 5).log_id)
            .await
            .expect("truncate");
        log.purge(blank_ent::<TypeConfig>(1, 1, 2).log_id)
            .await
            .expect("purge");
        log.save_committed(Some(blank_ent::<TypeConfig>(1, 1, 4).log_id))
            .await
            .expect("committed");
        lock(&disk).crash();

        let mut log = MemLogStore::new(disk.clone());
        assert_eq!(log.read_vote().await.expect("vote"), Some(Vote::new(3, 1)));
        assert_eq!(read_all(&disk).await, vec![3, 4]);
        let state = log.get_log_state().await.expect("state");
        assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(2));
        assert_eq!(state.last_log_id.map(|l| l.index), Some(4));
        assert_eq!(log.read_committed().await.expect("committed"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_state_machine_persists_what_apply_returned_and_nothing_more() {
        let disk = MemDisk::shared();
        lock(&disk).set_fsync_delay(Duration::from_millis(5));
        let mut sm = MemStateMachine::new(disk.clone());
        sm.apply([
            blank_ent(1, 1, 1),
            membership_ent(1, 1, 2, vec![[1u64].into()]),
        ])
        .await
        .expect("apply");

        lock(&disk).set_fsync_delay(Duration::from_millis(50));
        let mut applier = sm.clone();
        let apply_3 = tokio::spawn(async move { applier.apply([blank_ent(1, 1, 3)]).await });
        tokio::time::sleep(Duration::from_millis(1)).await;
        lock(&disk).set_fsync_delay(Duration::from_millis(1));
        // Applied in memory, not yet on disk: a snapshot stays at 2.
        assert_eq!(sm.reader().read().last_applied.map(|l| l.index), Some(3));
        let snapshot = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .expect("snapshot");
        assert_eq!(snapshot.meta.last_log_id.map(|l| l.index), Some(2));

        lock(&disk).crash();
        assert!(apply_3.await.expect("task").is_err());
        let mut restarted = MemStateMachine::new(disk.clone());
        let (applied, membership) = restarted.applied_state().await.expect("state");
        assert_eq!(applied.map(|l| l.index), Some(2));
        assert_eq!(membership.log_id().map(|l| l.index), Some(2));
        let current = restarted
            .get_current_snapshot()
            .await
            .expect("read")
            .expect("a snapshot");
        assert_eq!(current.meta, snapshot.meta);
    }
}
