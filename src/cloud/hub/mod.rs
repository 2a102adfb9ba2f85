//! `gantry hub`: the cloud side of cloud sync. It keeps each site's desired
//! workloads (with a revision that only grows) and the status each site
//! last reported, serves the edge links sites open, and the admin verbs.
//!
//! - `desired`: per-site revisions, deltas and snapshots (pure).
//! - `store`: the hub's RocksDB.
//! - `sites`: the in-memory registry every RPC goes through.
//! - `session`: one site's live link.
//! - `mqtt`: the bridge to an MQTT broker for sites attached through one.
//! - `service`: the tonic `Hub` service; `cli`: the `gantry hub` verbs.
//! - `auth`: who may call what; `pki`: the hub's CA, certificate and admin
//!   token in its data dir; `metrics`: its `/metrics`.

pub mod auth;
pub mod cli;
pub mod desired;
pub mod metrics;
pub mod mqtt;
pub mod pki;
pub mod service;
pub mod session;
pub mod sites;
pub mod store;

pub use sites::{HubError, Sites};
