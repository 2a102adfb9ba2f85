//! The Raft log and vote in RocksDB.
//!
//! Durability rule (openraft's contract, and ours to gateways that lose
//! power): the vote is fsynced before `save_vote` returns, and appended
//! entries are fsynced before the flush callback fires. Nothing a leader
//! counts towards a quorum is only in a page cache.

// openraft fixes the storage error type (`StorageError`, ~224 bytes);
// boxing it is not ours to choose.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogReader, StorageIOError, Vote};
use rocksdb::{Direction, IteratorMode, WriteBatch, WriteOptions, DB};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::store::{cf, index_key, key_index, CF_LOGS, CF_META};
use super::{NodeId, StorageResult, TypeConfig};

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_LAST_PURGED: &[u8] = b"last_purged";

#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    metrics: Arc<crate::metrics::Metrics>,
}

fn synced() -> WriteOptions {
    let mut opts = WriteOptions::default();
    opts.set_sync(true);
    opts
}

impl LogStore {
    pub fn new(db: Arc<DB>) -> Self {
        Self {
            db,
            metrics: Default::default(),
        }
    }

    /// Times its synced appends into the gateway's `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    fn get_meta<T: DeserializeOwned>(&self, key: &[u8]) -> StorageResult<Option<T>> {
        let bytes = self
            .db
            .get_cf(cf(&self.db, CF_META), key)
            .map_err(|e| StorageIOError::read(&e))?;
        bytes
            .map(|b| serde_json::from_slice(&b).map_err(|e| StorageIOError::read(&e).into()))
            .transpose()
    }

    /// Not synced: only for what may be lost in a crash.
    fn put_meta_unsynced<T: Serialize>(&self, key: &[u8], value: &T) -> StorageResult<()> {
        let bytes = serde_json::to_vec(value).map_err(|e| StorageIOError::write(&e))?;
        let mut batch = WriteBatch::default();
        batch.put_cf(cf(&self.db, CF_META), key, bytes);
        self.db
            .write(batch)
            .map_err(|e| StorageIOError::write(&e).into())
    }

    fn last_entry(&self) -> StorageResult<Option<Entry<TypeConfig>>> {
        let mut iter = self
            .db
            .iterator_cf(cf(&self.db, CF_LOGS), IteratorMode::End);
        match iter.next() {
            None => Ok(None),
            Some(Err(e)) => Err(StorageIOError::read_logs(&e).into()),
            Some(Ok((_, value))) => serde_json::from_slice(&value)
                .map(Some)
                .map_err(|e| StorageIOError::read_logs(&e).into()),
        }
    }

    /// Runs a blocking RocksDB write off the async workers.
    async fn blocking<F>(&self, f: F) -> StorageResult<()>
    where
        F: FnOnce(&DB) -> Result<(), rocksdb::Error> + Send + 'static,
    {
        let db = self.db.clone();
        match tokio::task::spawn_blocking(move || f(&db)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StorageIOError::write_logs(&e).into()),
            Err(e) => Err(StorageIOError::write_logs(&e).into()),
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let key = index_key(start);
        let iter = self.db.iterator_cf(
            cf(&self.db, CF_LOGS),
            IteratorMode::From(&key, Direction::Forward),
        );
        let mut entries = Vec::new();
        for item in iter {
            let (key, value) = item.map_err(|e| StorageIOError::read_logs(&e))?;
            let Some(index) = key_index(&key) else {
                continue;
            };
            if !range.contains(&index) {
                break;
            }
            let entry: Entry<TypeConfig> =
                serde_json::from_slice(&value).map_err(|e| StorageIOError::read_logs(&e))?;
            entries.push(entry);
        }
        Ok(entries)
    }

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let entries = self.try_get_log_entries(start..end).await?;
        Ok(run_from(start, entries))
    }
}

/// The entries that follow one another from index `start`, up to the first
/// hole. openraft's replication sends what `limited_get_log_entries` returns
/// as if it followed the entry before `start`; entries found past a hole
/// (logs purged under a lagging follower's read, after a snapshot) made a
/// leader send 400.. as the successors of 383, and the follower's Raft core
/// panicked (the simulation, seed 862). An empty answer is a heartbeat to
/// openraft, which then sends the snapshot. (`try_get_log_entries` keeps
/// returning whatever lies in the range: openraft's own scans ask from
/// below the first entry.)
pub(super) fn run_from(start: u64, entries: Vec<Entry<TypeConfig>>) -> Vec<Entry<TypeConfig>> {
    entries
        .into_iter()
        .zip(start..)
        .take_while(|(entry, index)| entry.log_id.index == *index)
        .map(|(entry, _)| entry)
        .collect()
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let last_purged_log_id: Option<LogId<NodeId>> = self.get_meta(KEY_LAST_PURGED)?;
        let last_log_id = match self.last_entry()? {
            Some(entry) => Some(entry.log_id),
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
        let bytes = serde_json::to_vec(vote).map_err(|e| StorageIOError::write_vote(&e))?;
        self.blocking(move |db| {
            let mut batch = WriteBatch::default();
            batch.put_cf(cf(db, CF_META), KEY_VOTE, bytes);
            db.write_opt(batch, &synced())
        })
        .await
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        self.get_meta(KEY_VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        // Not synced: losing it only means re-applying from the last applied id.
        self.put_meta_unsynced(KEY_COMMITTED, &committed)
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        Ok(self
            .get_meta::<Option<LogId<NodeId>>>(KEY_COMMITTED)?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut encoded = Vec::new();
        for entry in entries {
            let bytes = serde_json::to_vec(&entry).map_err(|e| StorageIOError::write_logs(&e))?;
            encoded.push((entry.log_id.index, bytes));
        }
        let started = std::time::Instant::now();
        let result = self
            .blocking(move |db| {
                let logs = cf(db, CF_LOGS);
                let mut batch = WriteBatch::default();
                for (index, bytes) in encoded {
                    batch.put_cf(logs, index_key(index), bytes);
                }
                db.write_opt(batch, &synced())
            })
            .await;
        match result {
            Ok(()) => {
                self.metrics
                    .log_fsync
                    .observe(started.elapsed().as_secs_f64());
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let from = log_id.index;
        self.blocking(move |db| {
            let mut batch = WriteBatch::default();
            batch.delete_range_cf(cf(db, CF_LOGS), index_key(from), index_key(u64::MAX));
            db.write_opt(batch, &synced())
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let marker = serde_json::to_vec(&log_id).map_err(|e| StorageIOError::write_logs(&e))?;
        let upto = log_id.index;
        // One synced batch: the purge point and the deletion land together
        // (no restart sees entries at or below the purge point), and the
        // fsync runs off the async workers like every other synced write.
        self.blocking(move |db| {
            let mut batch = WriteBatch::default();
            batch.put_cf(cf(db, CF_META), KEY_LAST_PURGED, marker);
            batch.delete_range_cf(
                cf(db, CF_LOGS),
                index_key(0),
                index_key(upto.saturating_add(1)),
            );
            db.write_opt(batch, &synced())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use openraft::testing::blank_ent;

    use super::*;
    use crate::cluster::store;

    /// Found by the simulation (seed 862): a leader purged logs while its
    /// replication read them for a lagging follower, got the entries past
    /// the hole and sent them as if they followed the follower's last one.
    #[tokio::test]
    async fn a_replication_read_returns_only_the_run_that_starts_where_it_was_asked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = store::open(dir.path(), "holes").expect("open");
        for i in [1u64, 2, 3, 6, 7] {
            let entry = serde_json::to_vec(&blank_ent::<TypeConfig>(1, 1, i)).expect("encode");
            db.put_cf(cf(&db, CF_LOGS), index_key(i), entry)
                .expect("put");
        }
        let log = LogStore::new(db);
        let read = |start: u64, end: u64| {
            let mut log = log.clone();
            async move {
                let entries = log.limited_get_log_entries(start, end).await.expect("read");
                entries.iter().map(|e| e.log_id.index).collect::<Vec<_>>()
            }
        };
        assert_eq!(read(2, 8).await, vec![2, 3]);
        assert_eq!(
            read(4, 8).await,
            Vec::<u64>::new(),
            "purged under the reader"
        );
        assert_eq!(read(6, 8).await, vec![6, 7]);
        let all = log.clone().try_get_log_entries(0..8).await.expect("read");
        let all: Vec<u64> = all.iter().map(|e| e.log_id.index).collect();
        assert_eq!(
            all,
            vec![1, 2, 3, 6, 7],
            "the plain read: what lies in the range"
        );
    }
}
