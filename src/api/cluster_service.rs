//! The gateway-to-gateway service: Raft RPCs, joins, forwarded leader
//! operations and heartbeats. Every message names its cluster; a message
//! for another cluster is refused before it reaches Raft.

use std::sync::Arc;

use gantry_proto::v1::cluster_server::Cluster as ClusterRpc;
use gantry_proto::v1::{
    AddMemberReply, AddMemberRequest, HeartbeatReply, HeartbeatRequest, ImageChunk, JoinReply,
    JoinRequest, JsonDocument, LogsRequest, RaftMessage,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Request, Response, Status, Streaming};

use super::status_from;
use crate::agent::logs::LogStream;
use crate::agent::{images, logs, NodeRuntime};
use crate::cluster::node::{JoinArgs, LeaderOp, LeaderReply};
use crate::cluster::Cluster;
use crate::control::liveness::Liveness;
use crate::state::Capacity;

pub struct ClusterService {
    pub cluster: Cluster,
    pub liveness: Arc<Liveness>,
    pub node: NodeRuntime,
}

fn decode<T: DeserializeOwned>(cluster: &Cluster, message: &RaftMessage) -> Result<T, Status> {
    if message.cluster_id != cluster.cluster_id() {
        return Err(Status::permission_denied(format!(
            "this gateway belongs to cluster {}, the message is for cluster {}",
            cluster.cluster_id(),
            message.cluster_id
        )));
    }
    serde_json::from_slice(&message.payload)
        .map_err(|e| Status::invalid_argument(format!("undecodable payload: {e}")))
}

fn encode<T: Serialize>(cluster: &Cluster, value: &T) -> Result<Response<RaftMessage>, Status> {
    let payload = serde_json::to_vec(value).map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(RaftMessage {
        cluster_id: cluster.cluster_id().to_string(),
        payload,
    }))
}

#[tonic::async_trait]
impl ClusterRpc for ClusterService {
    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let req = decode(&self.cluster, request.get_ref())?;
        let result = self.cluster.raft().vote(req).await;
        encode(&self.cluster, &result)
    }

    async fn append_entries(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let req = decode(&self.cluster, request.get_ref())?;
        let result = self.cluster.raft().append_entries(req).await;
        if result.as_ref().is_ok_and(|r| r.is_success()) {
            self.cluster.note_leader_contact();
        }
        encode(&self.cluster, &result)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let req = decode(&self.cluster, request.get_ref())?;
        let result = self.cluster.raft().install_snapshot(req).await;
        self.cluster.note_leader_contact();
        encode(&self.cluster, &result)
    }

    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<JoinReply>, Status> {
        let req = request.into_inner();
        let args = JoinArgs {
            token: req.token,
            name: req.name,
            address: req.address,
            labels: req.labels.into_iter().collect(),
            capacity: Capacity {
                cpu_millis: req.cpu_millis,
                memory_bytes: req.memory_bytes,
            },
            devices: req.devices.into_iter().collect(),
        };
        match self
            .cluster
            .on_leader(LeaderOp::Join(args))
            .await
            .map_err(status_from)?
        {
            LeaderReply::Joined { cluster_id, node } => Ok(Response::new(JoinReply {
                cluster_id,
                node_id: node,
            })),
            other => Err(Status::internal(format!("unexpected reply {other:?}"))),
        }
    }

    async fn add_member(
        &self,
        request: Request<AddMemberRequest>,
    ) -> Result<Response<AddMemberReply>, Status> {
        let req = request.into_inner();
        if req.cluster_id != self.cluster.cluster_id() {
            return Err(Status::permission_denied(
                "the gateway belongs to another cluster",
            ));
        }
        let op = LeaderOp::AddMember {
            token: req.token,
            node: req.node_id,
        };
        match self.cluster.on_leader(op).await.map_err(status_from)? {
            LeaderReply::Member { role } => Ok(Response::new(AddMemberReply { role })),
            other => Err(Status::internal(format!("unexpected reply {other:?}"))),
        }
    }

    async fn forward(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let op: LeaderOp = decode(&self.cluster, request.get_ref())?;
        let result = self.cluster.execute_as_leader(op).await;
        encode(&self.cluster, &result)
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatReply>, Status> {
        let req = request.into_inner();
        if req.cluster_id != self.cluster.cluster_id() {
            return Err(Status::permission_denied(
                "the gateway belongs to another cluster",
            ));
        }
        let leading = self.cluster.is_leader();
        if leading {
            let problem = Some(req.runtime_problem).filter(|p| !p.is_empty());
            self.liveness.record(req.node_id, problem);
        }
        // `accepted` tells the gateway it is in touch with a leader that
        // still hears from a quorum: a leader cut off in a minority must not
        // keep an isolated gateway's singletons alive (see `control::fencing`).
        let accepted = leading && self.cluster.leader_has_quorum();
        let applied_index = self
            .cluster
            .state()
            .read()
            .last_applied
            .map(|l| l.index)
            .unwrap_or(0);
        Ok(Response::new(HeartbeatReply {
            accepted,
            applied_index,
        }))
    }

    async fn push_image(
        &self,
        request: Request<Streaming<ImageChunk>>,
    ) -> Result<Response<JsonDocument>, Status> {
        let mut stream = request.into_inner();
        let (file, meta) = images::receive(&mut stream, &self.node.scratch_dir).await?;
        if meta.cluster_id != self.cluster.cluster_id() {
            return Err(Status::permission_denied(
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
        if req.cluster_id != self.cluster.cluster_id() {
            return Err(Status::permission_denied(
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
        if req.cluster_id != self.cluster.cluster_id() {
            return Err(Status::permission_denied(
                "the gateway belongs to another cluster",
            ));
        }
        let rx = images::export(&self.node, &req.image).await?;
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}
