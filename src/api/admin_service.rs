//! The public operator API, used by the CLI and scripts. Reads are served
//! from this gateway's replica; writes go through `Cluster::write`, which
//! forwards to the leader.

use gantry_proto::v1::admin_server::Admin;
use gantry_proto::v1::{
    ApplyRequest, CloudAttachRequest, CloudDetachRequest, DeleteWorkloadRequest, DescribeRequest,
    GetRequest, JsonDocument, LeaveRequest, StatusRequest,
};
use serde_json::json;
use tonic::{Request, Response, Status};

use super::{json_document, status_from, views};
use crate::cluster::node::{LeaderOp, LeaderReply};
use crate::cluster::Cluster;
use crate::state::spec::parse_manifest;
use crate::state::{Command, Response as Answer, Source};

pub struct AdminService {
    pub cluster: Cluster,
    /// The leader's live cloud link state, for `status`.
    pub link: crate::cloud::link::LinkHandle,
}

type Reply = Result<Response<JsonDocument>, Status>;

fn reply(value: serde_json::Value) -> Reply {
    Ok(Response::new(json_document(&value)))
}

fn refused(answer: Answer) -> Status {
    match answer {
        Answer::Rejected { reason } => Status::failed_precondition(reason),
        other => Status::internal(format!("unexpected answer {other:?}")),
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn status(&self, _: Request<StatusRequest>) -> Reply {
        let mut status = views::status(&self.cluster);
        status["cloud"] = crate::cloud::link::status_view(&self.cluster, &self.link);
        reply(status)
    }

    async fn get_nodes(&self, _: Request<GetRequest>) -> Reply {
        reply(views::nodes(&self.cluster))
    }

    async fn get_workloads(&self, _: Request<GetRequest>) -> Reply {
        reply(views::workloads(&self.cluster))
    }

    async fn get_instances(&self, _: Request<GetRequest>) -> Reply {
        reply(views::instances(&self.cluster))
    }

    async fn describe_workload(&self, request: Request<DescribeRequest>) -> Reply {
        let name = request.into_inner().name;
        match views::describe_workload(&self.cluster, &name) {
            Some(value) => reply(value),
            None => Err(Status::not_found(format!("no workload named '{name}'"))),
        }
    }

    async fn apply(&self, request: Request<ApplyRequest>) -> Reply {
        let workloads = parse_manifest(&request.into_inner().manifest)
            .map_err(|e| Status::invalid_argument(e.0))?;
        let command = Command::ApplyWorkloads {
            workloads,
            source: Source::Local,
        };
        match self.cluster.write(command).await.map_err(status_from)? {
            Answer::Applied { workloads } => reply(json!({ "applied": workloads })),
            other => Err(refused(other)),
        }
    }

    async fn delete_workload(&self, request: Request<DeleteWorkloadRequest>) -> Reply {
        let name = request.into_inner().name;
        match self
            .cluster
            .write(Command::DeleteWorkload {
                name,
                source: Source::Local,
            })
            .await
            .map_err(status_from)?
        {
            Answer::Deleted { name } => reply(json!({ "deleted": name })),
            other => Err(refused(other)),
        }
    }

    async fn cloud_attach(&self, request: Request<CloudAttachRequest>) -> Reply {
        let CloudAttachRequest { hub, site, token } = request.into_inner();
        let command = Command::CloudAttach {
            hub: hub.clone(),
            site: site.clone(),
            token,
        };
        match self.cluster.write(command).await.map_err(status_from)? {
            Answer::Ok => reply(json!({ "hub": hub, "site": site })),
            other => Err(refused(other)),
        }
    }

    async fn cloud_detach(&self, _: Request<CloudDetachRequest>) -> Reply {
        match self
            .cluster
            .write(Command::CloudDetach)
            .await
            .map_err(status_from)?
        {
            Answer::Ok => reply(json!({ "detached": true })),
            other => Err(refused(other)),
        }
    }

    async fn leave(&self, request: Request<LeaveRequest>) -> Reply {
        let name = request.into_inner().name;
        match self
            .cluster
            .on_leader(LeaderOp::Leave { name })
            .await
            .map_err(status_from)?
        {
            LeaderReply::Left { name } => reply(json!({ "left": name })),
            other => Err(Status::internal(format!("unexpected reply {other:?}"))),
        }
    }
}
