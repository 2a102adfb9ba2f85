//! openraft's storage conformance suite (`openraft::testing::Suite`) on
//! gantry's stores: the RocksDB `LogStore` + `StateMachineStore` the
//! daemon runs on, each case on a fresh database in its own temp dir, and
//! the in-memory `MemLogStore` + `MemStateMachine` of the simulation, each
//! case on a fresh `MemDisk` whose fsyncs take 1 ms.
//!
//! The suite applies only blank and membership entries (openraft cannot
//! build an application `Request`), so it checks the log, vote, purge,
//! truncate, applied-state and snapshot contracts, not `State::apply`.
//! It runs each case on its own Tokio runtime, so the tests here are plain
//! `#[test]`s.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use std::time::Duration;

use gantry::cluster::log_store::LogStore;
use gantry::cluster::mem_store::{MemDisk, MemLogStore, MemStateMachine};
use gantry::cluster::state_machine::StateMachineStore;
use gantry::cluster::{store, NodeId, TypeConfig};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{StorageError, StorageIOError};

/// Every case builds one store, except `transfer_snapshot`, which builds
/// two (a leader's and a follower's); counting builds counts the cases
/// without keeping a copy of openraft's list.
fn cases(builds: usize) -> usize {
    builds.saturating_sub(1)
}

fn build_error(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::read(&std::io::Error::other(e.to_string())).into()
}

/// Fresh RocksDB stores in a temp dir (the guard: dropped after the case).
/// `test_all` consumes the builder, so the count of builds is shared.
#[derive(Default)]
struct RocksBuilder {
    builds: Arc<AtomicUsize>,
}

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for RocksBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError<NodeId>> {
        self.builds.fetch_add(1, Ordering::Relaxed);
        let dir = tempfile::tempdir().map_err(build_error)?;
        let db = store::open(dir.path(), "storage-suite").map_err(build_error)?;
        let log = LogStore::new(db.clone());
        let sm = StateMachineStore::open(db).map_err(build_error)?;
        Ok((dir, log, sm))
    }
}

#[test]
fn rocksdb_stores_pass_openraft_suite() {
    let builder = RocksBuilder::default();
    let builds = builder.builds.clone();
    let started = Instant::now();
    if let Err(e) = Suite::test_all(builder) {
        panic!("openraft's storage suite failed on the RocksDB stores: {e}");
    }
    let n = cases(builds.load(Ordering::Relaxed));
    assert!(n >= 35, "openraft 0.9.25's suite has 35 cases; ran {n}");
    println!(
        "storage: suite_cases={n} passed (rocksdb, {:.1} s)",
        started.elapsed().as_secs_f64()
    );
}

/// A fresh `MemDisk` per case, with a real (1 ms) wait in every fsync.
#[derive(Default)]
struct MemBuilder {
    builds: Arc<AtomicUsize>,
}

impl StoreBuilder<TypeConfig, MemLogStore, MemStateMachine> for MemBuilder {
    async fn build(&self) -> Result<((), MemLogStore, MemStateMachine), StorageError<NodeId>> {
        self.builds.fetch_add(1, Ordering::Relaxed);
        let disk = MemDisk::shared();
        disk.lock()
            .map_err(build_error)?
            .set_fsync_delay(Duration::from_millis(1));
        Ok((
            (),
            MemLogStore::new(disk.clone()),
            MemStateMachine::new(disk),
        ))
    }
}

#[test]
fn memory_stores_pass_openraft_suite() {
    let builder = MemBuilder::default();
    let builds = builder.builds.clone();
    let started = Instant::now();
    if let Err(e) = Suite::test_all(builder) {
        panic!("openraft's storage suite failed on the memory stores: {e}");
    }
    let n = cases(builds.load(Ordering::Relaxed));
    assert!(n >= 35, "openraft 0.9.25's suite has 35 cases; ran {n}");
    println!(
        "storage: suite_cases={n} passed (memory, {:.1} s)",
        started.elapsed().as_secs_f64()
    );
}
