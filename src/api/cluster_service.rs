//! The gateway-to-gateway service: Raft RPCs, forwarded leader operations,
//! membership, renewals, heartbeats, images and logs; and the Bootstrap
//! service, the one door open to a joiner without a certificate. The
//! policy layer (`api::auth`) lets only current members in here; the
//! handlers bind what a request claims (a heartbeat's node id, who is
//! added or renewed) to the certificate that made it. Every message also
//! names its cluster; a message for another cluster is refused before it
//! reaches Raft.

use std::sync::Arc;

use gantry_proto::v1::bootstrap_server::Bootstrap;
use gantry_proto::v1::cluster_server::Cluster as ClusterRpc;
use gantry_proto::v1::{
    AddMemberReply, AddMemberRequest, HeartbeatReply, HeartbeatRequest, ImageChunk, JoinReply,
    JoinRequest, JsonDocument, LogsRequest, RaftMessage, RenewCertificateReply,
    RenewCertificateRequest,
};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Request, Response, Status, Streaming};

use super::auth::caller_node;
use super::status_from;
use crate::agent::logs::LogStream;
use crate::agent::{images, logs, pull, NodeRuntime};
use crate::cluster::node::{JoinArgs, LeaderOp, LeaderReply};
use crate::cluster::{Cluster, NodeId, TypeConfig};
use crate::control::liveness::Liveness;
use crate::state::{Capacity, NodeStatus};
use crate::trust::Sensitive;

/// A join request is small: its limit keeps an unauthenticated caller from
/// making a gateway decode much.
pub const MAX_JOIN_BYTES: usize = 64 << 10;

pub struct BootstrapService {
    pub cluster: Cluster,
}

#[tonic::async_trait]
impl Bootstrap for BootstrapService {
    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<JoinReply>, Status> {
        let req = request.into_inner();
        if req.csr_der.is_empty() {
            return Err(Status::invalid_argument(
                "a join carries a certificate request (csr_der)",
            ));
        }
        let args = JoinArgs {
            token: Sensitive(req.token),
            name: req.name,
            address: req.address,
            labels: req.labels.into_iter().collect(),
            capacity: Capacity {
                cpu_millis: req.cpu_millis,
                memory_bytes: req.memory_bytes,
            },
            devices: req.devices.into_iter().collect(),
            csr_der: req.csr_der,
        };
        match self
            .cluster
            .on_leader(LeaderOp::Join(args))
            .await
            .map_err(status_from)?
        {
            LeaderReply::Joined {
                cluster_id,
                node,
                cert_der,
                ca_certs_der,
            } => Ok(Response::new(JoinReply {
                cluster_id,
                node_id: node,
                node_cert_der: cert_der,
                ca_certs_der,
            })),
            _ => Err(Status::internal("unexpected reply from the leader")),
        }
    }
}

pub struct ClusterService {
    pub handlers: ClusterHandlers,
    pub node: NodeRuntime,
}

/// A member whose identity was checked by the transport that carried its
/// call: from its certificate on the tonic path (`caller_node`), or by an
/// in-process transport that knows which gateway it carries calls for.
/// Nothing a peer sends can make one: a heartbeat's claimed node id is
/// compared with it, never trusted on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller(NodeId);

impl Caller {
    /// From the TLS principal of a tonic request.
    fn of_request<T>(request: &Request<T>) -> Result<Self, Status> {
        caller_node(request).map(Caller)
    }

    /// For an in-process transport (the deterministic simulation), which
    /// hands each gateway a client bound to its own id.
    pub fn in_process(node: NodeId) -> Self {
        Caller(node)
    }

    pub fn node(&self) -> NodeId {
        self.0
    }
}

/// The control-plane half of the Cluster service, independent of tonic:
/// the tonic service below and the simulation's in-memory network both
/// call these, so a simulated message goes through the same decode and
/// execute code as a real one.
#[derive(Clone)]
pub struct ClusterHandlers {
    pub cluster: Cluster,
    pub liveness: Arc<Liveness>,
}

impl ClusterHandlers {
    pub async fn vote(&self, message: &RaftMessage) -> Result<RaftMessage, Status> {
        let req = decode(&self.cluster, message)?;
        let result = self.cluster.raft().vote(req).await;
        encode(&self.cluster, &result)
    }

    pub async fn append_entries(&self, message: &RaftMessage) -> Result<RaftMessage, Status> {
        let req: AppendEntriesRequest<TypeConfig> = decode(&self.cluster, message)?;
        // Entries this gateway may not have room for are refused; a bare
        // heartbeat still counts, so nobody stands for election over a full
        // disk. The leader retries, and we catch up once space is freed.
        if !req.entries.is_empty() {
            low_disk_refuses(&self.cluster)?;
        }
        let leader = req.vote.leader_id().voted_for();
        let result = self.cluster.raft().append_entries(req).await;
        if let Some(leader) = leader.filter(|_| result.as_ref().is_ok_and(|r| r.is_success())) {
            self.cluster.note_leader_contact(leader);
        }
        encode(&self.cluster, &result)
    }

    pub async fn install_snapshot(&self, message: &RaftMessage) -> Result<RaftMessage, Status> {
        let req: InstallSnapshotRequest<TypeConfig> = decode(&self.cluster, message)?;
        low_disk_refuses(&self.cluster)?;
        let leader = req.vote.leader_id().voted_for();
        let result = self.cluster.raft().install_snapshot(req).await;
        if let Some(leader) = leader {
            self.cluster.note_leader_contact(leader);
        }
        encode(&self.cluster, &result)
    }

    pub async fn forward(&self, message: &RaftMessage) -> Result<RaftMessage, Status> {
        let op: LeaderOp = decode(&self.cluster, message)?;
        let result = self.cluster.execute_as_leader(op).await;
        encode(&self.cluster, &result)
    }

    pub fn heartbeat(
        &self,
        caller: Caller,
        req: HeartbeatRequest,
    ) -> Result<HeartbeatReply, Status> {
        let caller = caller.node();
        if req.cluster_id != self.cluster.cluster_id() {
            return Err(Status::failed_precondition(
                "the gateway belongs to another cluster",
            ));
        }
        if req.node_id != caller {
            return Err(Status::permission_denied(format!(
                "gateway {caller} cannot heartbeat for gateway {}",
                req.node_id
            )));
        }
        let leading = self.cluster.is_leader();
        let cannot_store = !req.storage_problem.is_empty();
        if leading {
            let problem = Some(req.runtime_problem).filter(|p| !p.is_empty());
            self.liveness.record(req.node_id, problem);
            let storage = Some(req.storage_problem).filter(|p| !p.is_empty());
            self.liveness.record_storage(req.node_id, storage);
            self.liveness.record_usage(req.node_id, req.usage);
            self.cluster
                .note_member_applied(req.node_id, req.applied_index);
        }
        // `accepted` tells the gateway it is in touch with a leader that
        // still hears from a quorum: a leader cut off in a minority must not
        // keep an isolated gateway's singletons alive (see `control::fencing`).
        // Nor does a gateway the replicated state still holds silent: its
        // singletons may be moving elsewhere by the fence right now, so it
        // goes on counting its isolation until it is Ready again, and the
        // index it must reach before counting contact then includes every
        // move decided while it was lost (the simulation found a gateway
        // that came back at the fence's end start its stale copy).
        let (silent, applied_index) = {
            let applied = self.cluster.state().read();
            let silent = applied.state.nodes.get(&caller).is_none_or(|n| {
                n.status == NodeStatus::Left
                    || (n.status == NodeStatus::NotReady && !n.runtime_down)
            });
            (silent, applied.last_applied.map(|l| l.index).unwrap_or(0))
        };
        // A gateway that cannot store the log cannot learn of a move either:
        // no contact counts for it, so its fence runs from the leader's
        // first word of the problem on (`control::scheduling` moves its
        // fenced copies by that same count).
        let accepted = leading && self.cluster.leader_has_quorum() && !silent && !cannot_store;
        Ok(HeartbeatReply {
            accepted,
            applied_index,
        })
    }
}

fn decode<T: DeserializeOwned>(cluster: &Cluster, message: &RaftMessage) -> Result<T, Status> {
    if message.cluster_id != cluster.cluster_id() {
        return Err(Status::failed_precondition(format!(
            "this gateway belongs to cluster {}, the message is for cluster {}",
            cluster.cluster_id(),
            message.cluster_id
        )));
    }
    serde_json::from_slice(&message.payload)
        .map_err(|e| Status::invalid_argument(format!("undecodable payload: {e}")))
}

fn encode<T: Serialize>(cluster: &Cluster, value: &T) -> Result<RaftMessage, Status> {
    let payload = serde_json::to_vec(value).map_err(|e| Status::internal(e.to_string()))?;
    Ok(RaftMessage {
        cluster_id: cluster.cluster_id().to_string(),
        payload,
    })
}

fn low_disk_refuses(cluster: &Cluster) -> Result<(), Status> {
    cluster
        .disk_space()
        .check()
        .map_err(|low| Status::resource_exhausted(low.to_string()))
}

/// Runs a Raft RPC's handler to the end even when the caller stops waiting.
/// openraft gives every append-entries call one heartbeat interval (150 ms);
/// on a loaded small box decoding and appending a batch can take longer, and
/// a handler dropped half-way wastes the work, so the leader sends the same
/// batch again and again while the follower, hearing nothing it finished,
/// stands for election: a livelock under load. Finished in its own task, the
/// batch is in the follower's log and the next attempt is a quick match.
async fn to_completion(
    handler: impl std::future::Future<Output = Result<RaftMessage, Status>> + Send + 'static,
) -> Result<Response<RaftMessage>, Status> {
    match tokio::spawn(handler).await {
        Ok(reply) => reply.map(Response::new),
        Err(e) => Err(Status::internal(format!("raft handler failed: {e}"))),
    }
}

#[tonic::async_trait]
impl ClusterRpc for ClusterService {
    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let handlers = self.handlers.clone();
        to_completion(async move { handlers.vote(request.get_ref()).await }).await
    }

    async fn append_entries(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let handlers = self.handlers.clone();
        to_completion(async move { handlers.append_entries(request.get_ref()).await }).await
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let handlers = self.handlers.clone();
        to_completion(async move { handlers.install_snapshot(request.get_ref()).await }).await
    }

    async fn add_member(
        &self,
        request: Request<AddMemberRequest>,
    ) -> Result<Response<AddMemberReply>, Status> {
        let node = caller_node(&request)?;
        if request.get_ref().cluster_id != self.handlers.cluster.cluster_id() {
            return Err(Status::failed_precondition(
                "the gateway belongs to another cluster",
            ));
        }
        let op = LeaderOp::AddMember { node };
        match self
            .handlers
            .cluster
            .on_leader(op)
            .await
            .map_err(status_from)?
        {
            LeaderReply::Member {
                role,
                cluster_key,
                admin_token,
            } => Ok(Response::new(AddMemberReply {
                role,
                cluster_key: cluster_key.0,
                admin_token: admin_token.0,
            })),
            _ => Err(Status::internal("unexpected reply from the leader")),
        }
    }

    async fn renew_certificate(
        &self,
        request: Request<RenewCertificateRequest>,
    ) -> Result<Response<RenewCertificateReply>, Status> {
        let node = caller_node(&request)?;
        let csr_der = request.into_inner().csr_der;
        match self
            .handlers
            .cluster
            .on_leader(LeaderOp::Renew { node, csr_der })
            .await
            .map_err(status_from)?
        {
            LeaderReply::Renewed {
                cert_der,
                ca_certs_der,
            } => Ok(Response::new(RenewCertificateReply {
                node_cert_der: cert_der,
                ca_certs_der,
            })),
            _ => Err(Status::internal("unexpected reply from the leader")),
        }
    }

    async fn forward(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        self.handlers
            .forward(request.get_ref())
            .await
            .map(Response::new)
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatReply>, Status> {
        let caller = Caller::of_request(&request)?;
        self.handlers
            .heartbeat(caller, request.into_inner())
            .map(Response::new)
    }

    async fn push_image(
        &self,
        request: Request<Streaming<ImageChunk>>,
    ) -> Result<Response<JsonDocument>, Status> {
        let mut stream = request.into_inner();
        let (file, meta) = images::receive(&mut stream, &self.node.scratch_dir).await?;
        if meta.cluster_id != self.handlers.cluster.cluster_id() {
            return Err(Status::failed_precondition(
                "the archive comes from another cluster",
            ));
        }
        let imported = images::import_local(&self.node, &file.0)
            .await
            .map_err(Status::invalid_argument)?;
        Ok(Response::new(super::json_document(
            &serde_json::json!({ "images": imported }),
        )))
    }

    type LogsStream = LogStream;

    async fn logs(&self, request: Request<LogsRequest>) -> Result<Response<LogStream>, Status> {
        let req = request.into_inner();
        if req.cluster_id != self.handlers.cluster.cluster_id() {
            return Err(Status::failed_precondition(
                "the gateway belongs to another cluster",
            ));
        }
        Ok(Response::new(logs::local(
            &self.node,
            &req.container_id,
            req.follow,
        )?))
    }

    type ExportImageStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<ImageChunk, Status>> + Send>>;

    async fn export_image(
        &self,
        request: Request<gantry_proto::v1::ExportImageRequest>,
    ) -> Result<Response<Self::ExportImageStream>, Status> {
        let req = request.into_inner();
        if req.cluster_id != self.handlers.cluster.cluster_id() {
            return Err(Status::failed_precondition(
                "the gateway belongs to another cluster",
            ));
        }
        let rx = images::export(&self.node, &req.image).await?;
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    type PullImageStream = pull::PullStream;

    async fn pull_image(
        &self,
        request: Request<gantry_proto::v1::PullImageRequest>,
    ) -> Result<Response<pull::PullStream>, Status> {
        let req = request.into_inner();
        if req.cluster_id != self.handlers.cluster.cluster_id() {
            return Err(Status::failed_precondition(
                "the gateway belongs to another cluster",
            ));
        }
        let image = pull::check_reference(&req.image)?;
        Ok(Response::new(pull::serve_member(
            &self.node,
            &self.handlers.cluster,
            image,
            req.from_node,
        )))
    }
}
