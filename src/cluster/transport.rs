//! The gateway-to-gateway calls the control plane makes (Raft's vote,
//! append and snapshot, forwarded leader operations, heartbeats), behind a
//! trait so that the same client code runs over tonic and mutual TLS in
//! production ([`TonicTransport`]) and over an in-memory network in the
//! deterministic simulation (`gantry-sim`). Images and logs keep using
//! tonic directly: they are outside what the simulation models.
//!
//! On the receiving side, both transports call the same handlers
//! (`api::cluster_service::ClusterHandlers`), so a simulated message goes
//! through the same decode and execute code as a real one.

use async_trait::async_trait;
use gantry_proto::v1::{HeartbeatReply, HeartbeatRequest, RaftMessage};

use super::network::PeerChannels;
use super::NodeId;

/// Which Cluster RPC carries a `RaftMessage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RaftRpc {
    Vote,
    Append,
    Snapshot,
    /// A leader operation forwarded by a follower (`LeaderOp`).
    Forward,
}

/// Why a call did not get an answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    /// No connection could be made (or the peer is down): openraft backs
    /// off before it tries again.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The call went out and failed (refused, broken connection, an error
    /// status from the peer): the peer may or may not have acted on it.
    #[error("{0}")]
    Failed(String),
}

/// The client side of the Cluster calls; `target` is the member's id and
/// `addr` its Raft address as the membership knows it.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    async fn raft(
        &self,
        target: NodeId,
        addr: &str,
        rpc: RaftRpc,
        message: RaftMessage,
    ) -> Result<RaftMessage, TransportError>;

    async fn heartbeat(
        &self,
        target: NodeId,
        addr: &str,
        request: HeartbeatRequest,
    ) -> Result<HeartbeatReply, TransportError>;
}

/// Production: tonic over the cached, mutually authenticated channels.
pub struct TonicTransport {
    pub peers: PeerChannels,
}

/// Unavailable (no connection) and ResourceExhausted (a peer below its
/// disk reserve, `disk_space`) did nothing and will not succeed at once:
/// openraft backs off instead of resending every few milliseconds.
fn failed(status: tonic::Status) -> TransportError {
    if matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::ResourceExhausted
    ) {
        TransportError::Unreachable(status.message().to_string())
    } else {
        TransportError::Failed(status.message().to_string())
    }
}

#[async_trait]
impl Transport for TonicTransport {
    async fn raft(
        &self,
        target: NodeId,
        addr: &str,
        rpc: RaftRpc,
        message: RaftMessage,
    ) -> Result<RaftMessage, TransportError> {
        let mut client = self
            .peers
            .member(target, addr)
            .map_err(TransportError::Unreachable)?;
        let reply = match rpc {
            RaftRpc::Vote => client.vote(message).await,
            RaftRpc::Append => client.append_entries(message).await,
            RaftRpc::Snapshot => client.install_snapshot(message).await,
            RaftRpc::Forward => client.forward(message).await,
        };
        reply.map(|r| r.into_inner()).map_err(failed)
    }

    async fn heartbeat(
        &self,
        target: NodeId,
        addr: &str,
        request: HeartbeatRequest,
    ) -> Result<HeartbeatReply, TransportError> {
        let mut client = self
            .peers
            .member(target, addr)
            .map_err(TransportError::Unreachable)?;
        client
            .heartbeat(request)
            .await
            .map(|r| r.into_inner())
            .map_err(failed)
    }
}
