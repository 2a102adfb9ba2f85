//! The gRPC surface: thin handlers that decode, call into `cluster` and
//! `state`, and encode. Domain errors become gRPC codes here and nowhere
//! else.

pub mod admin_service;
pub mod auth;
pub mod cluster_service;
pub mod views;

use tonic::{Code, Status};

use crate::cluster::ClusterError;

/// The one mapping from our errors to gRPC status codes.
pub fn status_from(error: ClusterError) -> Status {
    let code = match &error {
        ClusterError::NoLeader(_) | ClusterError::Timeout(_) | ClusterError::Unreachable { .. } => {
            Code::Unavailable
        }
        ClusterError::Refused(_) => Code::FailedPrecondition,
        ClusterError::DiskLow(_) => Code::ResourceExhausted,
        ClusterError::Raft(_) | ClusterError::Start(_) => Code::Internal,
        ClusterError::NoIdentity => Code::Unimplemented,
    };
    Status::new(code, error.to_string())
}

pub(crate) fn json_document(value: &serde_json::Value) -> gantry_proto::v1::JsonDocument {
    gantry_proto::v1::JsonDocument {
        json: value.to_string(),
    }
}
