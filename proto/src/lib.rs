//! gantry's gRPC contracts, generated from `proto/gantry.proto` and
//! `proto/hub.proto` at build time.
//!
//! The crate holds no logic: `gantry` implements the services and uses the
//! clients. Keeping the contracts in their own crate lets other tools (a
//! dashboard, the cloud hub) speak to gateways without depending on the
//! daemon.
#![allow(clippy::all)]

/// Version 1 of the protocol: Cluster (gateway to gateway) and Admin (public).
pub mod v1 {
    tonic::include_proto!("gantry.v1");
}

/// Version 1 of the cloud hub's contract: the edge link and `gantry hub`.
pub mod hub {
    pub mod v1 {
        tonic::include_proto!("gantry.hub.v1");
    }
}
