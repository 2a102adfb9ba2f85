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

use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, Options, DB};

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
    #[error("the Raft database at {path} belongs to cluster {found}, not to {expected}; refusing to start")]
    WrongCluster {
        path: String,
        found: String,
        expected: String,
    },
    #[error("Raft database error: {0}")]
    Db(#[from] rocksdb::Error),
}

/// Opens (or creates) the database and checks it belongs to `cluster_id`.
pub fn open(path: &Path, cluster_id: &str) -> Result<Arc<DB>, StoreError> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    // Small boxes: keep RocksDB's memory modest.
    opts.set_write_buffer_size(8 << 20);
    opts.set_max_write_buffer_number(2);
    opts.set_keep_log_file_num(4);
    let cfs = [CF_META, CF_LOGS, CF_SM, CF_SM_META]
        .into_iter()
        .map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
    let db = DB::open_cf_descriptors(&opts, path, cfs).map_err(|source| StoreError::Open {
        path: path.display().to_string(),
        source,
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
