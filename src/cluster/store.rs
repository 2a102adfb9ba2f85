//! The one RocksDB database under `DATA_DIR/raft`, shared by the log store
//! and the state machine through column families:
//!
//! - `meta`: vote, committed and last-purged log ids, the cluster id this
//!   database belongs to.
//! - `logs`: Raft entries keyed by big-endian index so that key order is log
//!   order.
//! - `sm`: one key per state-machine record (`state::StateKey`).
//! - `sm_meta`: last applied log id, last membership, the current snapshot.

use std::path::Path;
use std::sync::Arc;

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DBRecoveryMode, ErrorKind,
    Options, DB,
};

pub const CF_META: &str = "meta";
pub const CF_LOGS: &str = "logs";
pub const CF_SM: &str = "sm";
pub const CF_SM_META: &str = "sm_meta";

const KEY_CLUSTER_ID: &[u8] = b"cluster_id";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the Raft database at {path}: {source}")]
    Open {
        path: String,
        source: rocksdb::Error,
    },
    /// RocksDB found a record that fails its checksum before the end of its
    /// write-ahead log (or a damaged table file). What follows it may hold
    /// votes and entries this gateway acknowledged, so starting on what
    /// precedes it could vote twice in a term or lose a committed entry.
    #[error(
        "the Raft database at {path} is damaged, so this gateway will not start on it: {source}. \
         Votes or log entries it acknowledged to the cluster may be lost, which is why it does not \
         skip the damage. Move the directory aside (keep it for diagnosis) and bring the gateway \
         back with an empty data dir: `gantry leave` it from a healthy gateway, then `gantry join` \
         again"
    )]
    Corrupted {
        path: String,
        source: rocksdb::Error,
    },
    #[error("the Raft database at {path} belongs to cluster {found}, not to {expected}; refusing to start")]
    WrongCluster {
        path: String,
        found: String,
        expected: String,
    },
    #[error("Raft database error: {0}")]
    Db(#[from] rocksdb::Error),
}

/// One memtable of a column family (RocksDB's default is 64 MiB).
const MEMTABLE_BYTES: usize = 4 << 20;
/// All memtables together; past it RocksDB flushes the largest.
const ALL_MEMTABLES_BYTES: usize = 16 << 20;
/// The block cache the column families share (each would otherwise get
/// RocksDB's default cache of its own).
const BLOCK_CACHE_BYTES: usize = 8 << 20;

fn family_options(cache: &Cache) -> Options {
    let mut opts = Options::default();
    opts.set_write_buffer_size(MEMTABLE_BYTES);
    opts.set_max_write_buffer_number(2);
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    opts.set_block_based_table_factory(&table);
    opts
}

/// Opens (or creates) the database and checks it belongs to `cluster_id`.
pub fn open(path: &Path, cluster_id: &str) -> Result<Arc<DB>, StoreError> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    // Small boxes: keep RocksDB's memory modest. Every column family gets
    // these (RocksDB's default is 64 MiB of memtable per family, up to two
    // of them: under load the four families held hundreds of MiB), and
    // all memtables together are capped, as is the one shared block cache.
    opts.set_write_buffer_size(MEMTABLE_BYTES);
    opts.set_max_write_buffer_number(2);
    opts.set_db_write_buffer_size(ALL_MEMTABLES_BYTES);
    opts.set_keep_log_file_num(4);
    let cache = Cache::new_lru_cache(BLOCK_CACHE_BYTES);
    // A torn record at the very end of the WAL is a write that was cut by
    // a crash and never acknowledged: dropping it is right. Damage before
    // the end is not; RocksDB's default (point-in-time recovery) would stop
    // there silently and drop the synced votes and appends after it
    // (review L1). This mode refuses to open instead.
    opts.set_wal_recovery_mode(DBRecoveryMode::TolerateCorruptedTailRecords);
    let cfs = [CF_META, CF_LOGS, CF_SM, CF_SM_META]
        .into_iter()
        .map(|name| ColumnFamilyDescriptor::new(name, family_options(&cache)));
    let db = DB::open_cf_descriptors(&opts, path, cfs).map_err(|source| {
        let path = path.display().to_string();
        match source.kind() {
            ErrorKind::Corruption => StoreError::Corrupted { path, source },
            _ => StoreError::Open { path, source },
        }
    })?;
    let meta = cf(&db, CF_META);
    match db.get_cf(meta, KEY_CLUSTER_ID)? {
        Some(found) if found != cluster_id.as_bytes() => {
            return Err(StoreError::WrongCluster {
                path: path.display().to_string(),
                found: String::from_utf8_lossy(&found).into_owned(),
                expected: cluster_id.to_string(),
            })
        }
        Some(_) => {}
        None => {
            db.put_cf(meta, KEY_CLUSTER_ID, cluster_id.as_bytes())?;
            db.flush_wal(true)?;
        }
    }
    Ok(Arc::new(db))
}

/// The column families are created at open, so a missing one is a bug in
/// this file, never a run-time condition.
pub fn cf<'a>(db: &'a DB, name: &str) -> &'a ColumnFamily {
    match db.cf_handle(name) {
        Some(handle) => handle,
        None => panic!("column family {name} is created at open"),
    }
}

/// Big-endian so that RocksDB's byte order is numeric order.
pub fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

pub fn key_index(key: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = key.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use rocksdb::{WriteBatch, WriteOptions};

    use super::*;

    const RECORDS: u64 = 200;

    /// A closed database whose WAL holds `RECORDS` synced writes (RocksDB
    /// does not flush memtables on close while the WAL is on, so they are
    /// only in the WAL). Returns the WAL file.
    fn closed_db_with_wal(path: &Path) -> PathBuf {
        let db = open(path, "wal-test").expect("open");
        let mut sync = WriteOptions::default();
        sync.set_sync(true);
        for index in 0..RECORDS {
            let mut batch = WriteBatch::default();
            batch.put_cf(cf(&db, CF_LOGS), index_key(index), vec![b'x'; 200]);
            db.write_opt(batch, &sync).expect("write");
        }
        drop(db);
        let mut wals: Vec<(u64, PathBuf)> = std::fs::read_dir(path)
            .expect("read dir")
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .map(|p| (std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0), p))
            .collect();
        wals.sort();
        let (len, wal) = wals.pop().expect("a WAL file");
        assert!(
            len > RECORDS * 200,
            "the writes are in {wal:?} ({len} bytes)"
        );
        wal
    }

    #[test]
    fn damage_in_the_middle_of_the_wal_refuses_to_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wal = closed_db_with_wal(dir.path());
        let mut bytes = std::fs::read(&wal).expect("read WAL");
        let middle = bytes.len() / 2;
        for byte in &mut bytes[middle..middle + 64] {
            *byte ^= 0x5a;
        }
        std::fs::write(&wal, bytes).expect("write WAL");

        let err = match open(dir.path(), "wal-test") {
            Ok(_) => panic!("a WAL damaged in the middle must not open"),
            Err(e) => e,
        };
        assert!(matches!(err, StoreError::Corrupted { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.contains("is damaged"), "{message}");
        assert!(
            message.contains(&dir.path().display().to_string()),
            "{message}"
        );
    }

    #[test]
    fn a_torn_tail_of_the_wal_is_dropped_and_the_rest_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wal = closed_db_with_wal(dir.path());
        let len = std::fs::metadata(&wal).expect("WAL size").len();
        // Cut the last record in half, as a crash during its write would.
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&wal)
            .expect("open WAL");
        file.set_len(len - 100).expect("truncate WAL");
        drop(file);

        let db = open(dir.path(), "wal-test").expect("a torn tail opens");
        let logs = cf(&db, CF_LOGS);
        assert!(db.get_cf(logs, index_key(0)).expect("read first").is_some());
        assert!(db
            .get_cf(logs, index_key(RECORDS - 2))
            .expect("read second to last")
            .is_some());
        assert!(db
            .get_cf(logs, index_key(RECORDS - 1))
            .expect("read last")
            .is_none());
    }
}
