//! Raft's transport and every other gateway-to-gateway call: one unary
//! gRPC call per openraft message over the Cluster service, payloads
//! serde-encoded, one cached HTTP/2 channel per peer, all over mutual TLS.
//! A peer's certificate must chain to the cluster CA, name the gateway we
//! meant to reach (`n<id>.<cluster>.gantry`) and carry the key the state
//! pins for it, so a gateway that left (or anyone holding the CA key) cannot
//! stand in for a member.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gantry_pki::{Credentials, Fingerprint};
use gantry_proto::v1::cluster_client::ClusterClient;
use gantry_proto::v1::RaftMessage;
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use prost::Message as _;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::Channel;

use super::transport::{RaftRpc, Transport, TransportError};
use super::{NodeId, TypeConfig};
use crate::tls::{ClientTls, TlsConnector};
use crate::trust::{NodeTrust, TrustError};

/// Snapshot chunks and big appends must fit; JSON inflates bytes.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// The keys the state pins for the gateway a server name stands for.
pub type PinSource = Arc<dyn Fn(&str) -> Vec<Fingerprint> + Send + Sync>;

/// Lazily connected channels to peers, shared by Raft, write forwarding,
/// heartbeats, images and logs.
#[derive(Clone)]
pub struct PeerChannels {
    inner: Arc<PeerInner>,
}

struct PeerInner {
    cluster_id: String,
    trust: Arc<NodeTrust>,
    pins: PinSource,
    /// To a known member: chain, its own name, and its pinned key.
    member_tls: ClientTls,
    /// To an address only (a joiner finishing its join knows no pins yet):
    /// chain and the name every gateway carries.
    any_tls: ClientTls,
    channels: Mutex<HashMap<(Option<NodeId>, String), Channel>>,
}

fn member_config(
    trust: &NodeTrust,
    pins: &PinSource,
    creds: &Credentials,
) -> Result<Arc<rustls::ClientConfig>, TrustError> {
    let verifier = gantry_pki::MemberServerVerifier::new(trust.ca_bundle(), pins.clone())?;
    Ok(gantry_pki::client_config(
        verifier,
        Some(creds),
        crate::trust::alpn(),
    )?)
}

fn any_config(
    trust: &NodeTrust,
    creds: &Credentials,
) -> Result<Arc<rustls::ClientConfig>, TrustError> {
    let verifier = gantry_pki::roots_verifier(trust.ca_bundle())?;
    Ok(gantry_pki::client_config(
        verifier,
        Some(creds),
        crate::trust::alpn(),
    )?)
}

impl PeerChannels {
    pub fn new(trust: Arc<NodeTrust>, pins: PinSource) -> Result<Self, TrustError> {
        let creds = trust.credentials();
        let member_tls = ClientTls::new(member_config(&trust, &pins, &creds)?);
        let any_tls = ClientTls::new(any_config(&trust, &creds)?);
        Ok(Self {
            inner: Arc::new(PeerInner {
                cluster_id: trust.cluster_id.clone(),
                trust,
                pins,
                member_tls,
                any_tls,
                channels: Mutex::new(HashMap::new()),
            }),
        })
    }

    fn channel(&self, node: Option<NodeId>, addr: &str) -> Result<Channel, String> {
        let mut map = self
            .inner
            .channels
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let key = (node, addr.to_string());
        if let Some(channel) = map.get(&key) {
            return Ok(channel.clone());
        }
        let connector = match node {
            Some(id) => TlsConnector::new(
                self.inner.member_tls.clone(),
                &gantry_pki::node_dns_name(id, &self.inner.cluster_id),
            )?,
            None => TlsConnector::new(self.inner.any_tls.clone(), gantry_pki::GATEWAY_NAME)?,
        };
        let channel = crate::tls::lazy_channel(addr, connector, |endpoint| {
            endpoint
                .connect_timeout(Duration::from_secs(1))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(5))
        })?;
        map.insert(key, channel.clone());
        Ok(channel)
    }

    fn client_on(&self, channel: Channel) -> ClusterClient<Channel> {
        ClusterClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// A client for member `node` at `addr`.
    pub fn member(&self, node: NodeId, addr: &str) -> Result<ClusterClient<Channel>, String> {
        if super::fault::partitioned() {
            return Err(format!(
                "cannot reach {addr}: partitioned (fault injection)"
            ));
        }
        Ok(self.client_on(self.channel(Some(node), addr)?))
    }

    /// A client for whichever gateway serves `addr` (its certificate must
    /// come from the cluster CA); for a joiner that knows no pins yet.
    pub fn any_member(&self, addr: &str) -> Result<ClusterClient<Channel>, String> {
        if super::fault::partitioned() {
            return Err(format!(
                "cannot reach {addr}: partitioned (fault injection)"
            ));
        }
        Ok(self.client_on(self.channel(None, addr)?))
    }

    /// Drops cached channels to `node` (it left).
    pub fn forget(&self, node: NodeId) {
        self.inner
            .channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(id, _), _| *id != Some(node));
    }

    /// After our own renewal: new connections present the new certificate;
    /// calls in flight finish on the channels they hold.
    pub fn set_identity(&self, creds: &Credentials) -> Result<(), TrustError> {
        let inner = &self.inner;
        inner
            .member_tls
            .set(member_config(&inner.trust, &inner.pins, creds)?);
        inner.any_tls.set(any_config(&inner.trust, creds)?);
        inner
            .channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        Ok(())
    }
}

/// Builds a `PeerClient` per replication target.
#[derive(Clone)]
pub struct Network {
    pub cluster_id: String,
    pub transport: Arc<dyn Transport>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        PeerClient {
            target,
            addr: node.addr.clone(),
            cluster_id: self.cluster_id.clone(),
            transport: self.transport.clone(),
        }
    }
}

pub struct PeerClient {
    target: NodeId,
    addr: String,
    cluster_id: String,
    transport: Arc<dyn Transport>,
}

#[derive(Clone, Copy)]
enum Rpc {
    Vote,
    /// With the number of entries it carries.
    Append(usize),
    Snapshot,
}

/// An AppendEntries message over the transport's cap is refused before it
/// is sent, with a hint of how many entries fit: openraft then retries at
/// once with fewer (`update_hint` in its `replication/mod.rs`), where a
/// network error would resend the same batch forever (review L4). Snapshot
/// chunks are sized by `snapshot_max_chunk_size`, votes are small, and a
/// single entry cannot be split, so those go out and fail as before.
fn too_large<E: std::error::Error>(
    rpc: Rpc,
    encoded_len: usize,
) -> Option<RPCError<NodeId, BasicNode, E>> {
    let Rpc::Append(entries) = rpc else {
        return None;
    };
    if encoded_len <= MAX_MESSAGE_BYTES || entries <= 1 {
        return None;
    }
    // Proportional, rounded down: entries of one burst are of similar size.
    let fit = (entries as u128 * MAX_MESSAGE_BYTES as u128 / encoded_len as u128) as u64;
    Some(RPCError::PayloadTooLarge(
        PayloadTooLarge::new_entries_hint(fit.clamp(1, entries as u64 - 1)),
    ))
}

impl PeerClient {
    async fn call<Req, Resp, E>(
        &self,
        rpc: Rpc,
        req: &Req,
        ttl: Duration,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let payload =
            serde_json::to_vec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let message = RaftMessage {
            cluster_id: self.cluster_id.clone(),
            payload,
        };
        if let Some(too_large) = too_large(rpc, message.encoded_len()) {
            return Err(too_large);
        }
        let kind = match rpc {
            Rpc::Vote => RaftRpc::Vote,
            Rpc::Append(_) => RaftRpc::Append,
            Rpc::Snapshot => RaftRpc::Snapshot,
        };
        let call = self.transport.raft(self.target, &self.addr, kind, message);
        let reply = match tokio::time::timeout(ttl, call).await {
            Err(elapsed) => return Err(RPCError::Network(NetworkError::new(&elapsed))),
            Ok(Err(TransportError::Unreachable(message))) => {
                return Err(RPCError::Unreachable(Unreachable::new(
                    &std::io::Error::other(message),
                )))
            }
            Ok(Err(TransportError::Failed(message))) => {
                return Err(RPCError::Network(NetworkError::new(
                    &std::io::Error::other(message),
                )))
            }
            Ok(Ok(reply)) => reply,
        };
        let result: Result<Resp, E> = serde_json::from_slice(&reply.payload)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let entries = rpc.entries.len();
        self.call(Rpc::Append(entries), &rpc, option.hard_ttl())
            .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(Rpc::Snapshot, &rpc, option.hard_ttl()).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(Rpc::Vote, &rpc, option.hard_ttl()).await
    }

    /// Unreachable peers are retried every 250 ms: on loopback and site
    /// LANs a gateway that restarts is back within a second.
    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(Duration::from_millis(250)))
    }
}

#[cfg(test)]
mod tests {
    use openraft::RPCTypes;

    use super::*;

    fn hint(rpc: Rpc, encoded_len: usize) -> Option<PayloadTooLarge> {
        match too_large::<RaftError<NodeId>>(rpc, encoded_len)? {
            RPCError::PayloadTooLarge(hint) => Some(hint),
            other => panic!("expected PayloadTooLarge, got {other}"),
        }
    }

    #[test]
    fn an_append_over_the_cap_asks_openraft_for_fewer_entries() {
        let three_times = hint(Rpc::Append(300), 3 * MAX_MESSAGE_BYTES).expect("too large");
        assert_eq!(three_times.action(), RPCTypes::AppendEntries);
        assert_eq!(three_times.entries_hint(), 100);
        // Just over the cap: one entry fewer at least.
        let just_over = hint(Rpc::Append(300), MAX_MESSAGE_BYTES + 1).expect("too large");
        assert_eq!(just_over.entries_hint(), 299);
        // Far over: never zero entries.
        let far_over = hint(Rpc::Append(2), 1000 * MAX_MESSAGE_BYTES).expect("too large");
        assert_eq!(far_over.entries_hint(), 1);
    }

    #[test]
    fn what_fits_or_cannot_shrink_is_sent_as_before() {
        assert!(hint(Rpc::Append(300), MAX_MESSAGE_BYTES).is_none());
        assert!(hint(Rpc::Append(1), 2 * MAX_MESSAGE_BYTES).is_none());
        assert!(hint(Rpc::Append(0), 2 * MAX_MESSAGE_BYTES).is_none());
        assert!(hint(Rpc::Snapshot, 2 * MAX_MESSAGE_BYTES).is_none());
        assert!(hint(Rpc::Vote, 2 * MAX_MESSAGE_BYTES).is_none());
    }
}
