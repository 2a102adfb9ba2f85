//! Raft for gantry: openraft's type configuration, RocksDB storage for the
//! log and the state machine, the tonic transport between gateways, and the
//! membership rules (join, promote, leave).
//!
//! **Architecture invariant:** openraft's types do not leave this module
//! (plus the thin gRPC handlers in `api::cluster_service` that feed them
//! back in). The rest of the daemon sees `Cluster`, `state::Request` and
//! `state::Response`.

pub mod disk_space;
pub mod fault;
pub mod log_store;
pub mod mem_store;
pub mod membership;
pub mod network;
pub mod node;
pub mod rt;
pub mod state_machine;
pub mod store;
pub mod token;
pub mod transport;

use std::io::Cursor;

use crate::state::{Request, Response};

openraft::declare_raft_types!(
    /// The Raft type configuration of a gantry cluster.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = rt::GantryRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type NodeId = u64;
pub type StorageResult<T> = Result<T, openraft::StorageError<NodeId>>;

pub use node::{Cluster, ClusterDeps, ClusterError, ContactRecord, RaftTimers};
