//! gantry: a lightweight, Raft-backed edge orchestrator. A few IoT gateways
//! on one site form a mini-cluster that replicates its state with Raft and
//! keeps running its containers when a gateway dies or the uplink drops.
//!
//! # Brief overview
//! - [`state`]: the replicated state machine, pure (`State::apply`).
//! - [`manifest`]: Compose files and Kubernetes manifests read as gantry
//!   workloads (pure).
//! - [`cluster`]: openraft on RocksDB, the gRPC transport, membership.
//! - [`api`]: the Cluster (gateway-to-gateway) and Admin (public) services.
//! - [`control`]: leader-only loops (liveness, scheduling).
//! - [`agent`]: bridges the local replica and the containerd node agent.
//! - [`cloud`]: cloud sync: the edge link and the `gantry hub` server.
//! - [`gateway`]: the composition root of one daemon.
//! - [`metrics`] and [`web`]: what a gateway counts, and the plain HTTP
//!   routes (`/metrics`, `/healthz`, `/readyz`) on its gRPC port.
//! - [`cli`]: the `gantry` command line.
//! - [`trust`]: a gateway's keys and certificates, signing, renewal and
//!   token checks; [`tls`]: the TLS acceptor and connector every listener
//!   and client uses (the crypto itself is the `gantry-pki` crate).

pub mod agent;
pub mod api;
pub mod cli;
pub mod clock;
pub mod cloud;
pub mod cluster;
pub mod config;
pub mod control;
pub mod gateway;
pub mod manifest;
pub mod metrics;
pub mod state;
pub mod tls;
pub mod trust;
pub mod web;
