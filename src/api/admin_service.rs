//! The public operator API, used by the CLI and scripts. Reads are served
//! from this gateway's replica; writes go through `Cluster::write`, which
//! forwards to the leader.

use gantry_proto::v1::admin_server::Admin;
use gantry_proto::v1::{
    ApplyRequest, CloudAttachRequest, CloudDetachRequest, CreateJoinTokenRequest,
    CreateTokenRequest, DeleteWorkloadRequest, DescribeRequest, GetRequest, ImageChunk,
    JsonDocument, LeaveRequest, LogsRequest, NodeRequest, RevokeTokenRequest, SetSettingsRequest,
    StatusRequest,
};
use serde_json::json;
use tonic::{Request, Response, Status, Streaming};

use super::{json_document, status_from, views};
use crate::agent::logs::LogStream;
use crate::agent::{images, logs, pull, NodeRuntime};
use crate::cluster::node::now_ms;
use crate::cluster::node::{LeaderOp, LeaderReply};
use crate::cluster::Cluster;
use crate::state::settings::SettingsChange;
use crate::state::{Command, NodeId, Response as Answer, Role, Source, TokenKind};
use crate::trust::renewal::Renewals;

/// The largest manifest one `apply` takes. It becomes one Raft entry, which
/// openraft must send to each follower within one heartbeat interval (its
/// AppendEntries timeout): a 7.5 MB entry never committed on loopback in
/// the dev profile and cost the leader its term. etcd caps a request at
/// 1.5 MiB for the same reason.
pub const MAX_MANIFEST_BYTES: usize = 1 << 20;

pub struct AdminService {
    pub cluster: Cluster,
    pub node: NodeRuntime,
    /// The leader's live cloud link state, for `status`.
    pub link: crate::cloud::link::LinkHandle,
    /// `pki renew` and the renewal loop take turns.
    pub renewals: Renewals,
}

/// `ttl_ms` as an optional lifetime (0: none).
fn ttl(ttl_ms: u64) -> Option<std::time::Duration> {
    (ttl_ms > 0).then(|| std::time::Duration::from_millis(ttl_ms))
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
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

impl AdminService {
    /// The id of a current (not Left) gateway, from this replica.
    fn node_id(&self, name: &str) -> Result<NodeId, Status> {
        let applied = self.cluster.state().read();
        applied
            .state
            .node_by_name(name)
            .map(|n| n.id)
            .ok_or_else(|| Status::not_found(format!("no gateway named '{name}' in the cluster")))
    }

    /// Writes `command`; on success answers with the node's description.
    async fn node_write(&self, name: &str, command: Command) -> Reply {
        match self.cluster.write(command).await.map_err(status_from)? {
            Answer::Ok => self.describe(name),
            other => Err(refused(other)),
        }
    }

    /// Commits a new token's record and answers with its text (the only
    /// time it is shown), its id, expiry and `fields`.
    async fn commit_token(
        &self,
        record: crate::state::TokenRecord,
        token: String,
        fields: serde_json::Value,
    ) -> Reply {
        let mut answer = fields;
        answer["id"] = json!(record.id);
        answer["expires"] = json!(record.expires_ms.map(views::timestamp));
        answer["token"] = json!(token);
        match self
            .cluster
            .write(Command::CreateToken { record })
            .await
            .map_err(status_from)?
        {
            Answer::Ok => reply(answer),
            other => Err(refused(other)),
        }
    }

    fn describe(&self, name: &str) -> Reply {
        match views::describe_node(&self.cluster, name, now_ms()) {
            Some(value) => reply(value),
            None => Err(Status::not_found(format!("no gateway named '{name}'"))),
        }
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
        let Some(mut value) = views::describe_workload(&self.cluster, &name) else {
            return Err(Status::not_found(format!("no workload named '{name}'")));
        };
        // Current usage is the leader's soft state.
        if value["workload"]["autoscale"].is_object() {
            let op = LeaderOp::AutoscaleReading { workload: name };
            let reading = match self.cluster.on_leader(op).await {
                Ok(LeaderReply::Reading(reading)) => reading,
                _ => None,
            };
            value["workload"]["autoscale"]["usage"] = reading.into();
        }
        reply(value)
    }

    async fn apply(&self, request: Request<ApplyRequest>) -> Reply {
        let manifest = request.into_inner().manifest;
        if manifest.len() > MAX_MANIFEST_BYTES {
            return Err(Status::invalid_argument(format!(
                "the manifest is {} KiB; one apply takes at most {} KiB (it is one Raft entry, which must reach the other gateways within a heartbeat): apply it in parts",
                manifest.len() >> 10,
                MAX_MANIFEST_BYTES >> 10
            )));
        }
        let workloads =
            crate::manifest::parse(&manifest).map_err(|e| Status::invalid_argument(e.0))?;
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
        let request = request.into_inner();
        let keepalive_ms = crate::cloud::link::keepalive::parse(&request.keepalive)
            .map_err(Status::invalid_argument)?;
        let trust = self.cluster.trust().map_err(status_from)?;
        // Sealed here: the replicated state never holds a secret in clear.
        let seal = |field: &str, secret: &[u8]| {
            trust
                .seal(field, secret)
                .map_err(|e| Status::failed_precondition(e.to_string()))
        };
        let site = request.site.clone();
        let (hub, command) = if !request.mqtt.is_empty() {
            let (url, mqtt) = crate::cloud::mqtt::attach_settings(&request, |field, secret| {
                seal(field, secret).map_err(|s| s.message().to_string())
            })
            .map_err(Status::invalid_argument)?;
            let command = Command::CloudAttach {
                hub: url.clone(),
                site: site.clone(),
                hub_ca_sha256: String::new(),
                token_sealed: String::new(),
                keepalive_ms,
                mqtt: Some(mqtt),
            };
            (url, command)
        } else {
            let token = gantry_pki::SiteToken::parse(&request.token).map_err(|e| {
                Status::invalid_argument(format!(
                    "--token: {e} (a site token from `gantry hub site-token`)"
                ))
            })?;
            let token_sealed = seal(
                crate::cloud::link::SITE_TOKEN_FIELD,
                token.to_string().as_bytes(),
            )?;
            let command = Command::CloudAttach {
                hub: request.hub.clone(),
                site: site.clone(),
                hub_ca_sha256: token.hub_ca.to_hex(),
                token_sealed,
                keepalive_ms,
                mqtt: None,
            };
            (request.hub.clone(), command)
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

    async fn import_image(&self, request: Request<Streaming<ImageChunk>>) -> Reply {
        let mut stream = request.into_inner();
        let (file, meta) = images::receive(&mut stream, &self.node.scratch_dir).await?;
        let file_name = meta.file_name.clone();
        let me = self.cluster.id();
        let (my_name, others) = {
            let applied = self.cluster.state().read();
            let nodes = &applied.state.nodes;
            let my_name = nodes.get(&me).map(|n| n.name.clone()).unwrap_or_default();
            let others: Vec<(NodeId, String)> = nodes
                .values()
                .filter(|n| n.id != me && n.status != crate::state::NodeStatus::Left)
                .map(|n| (n.id, n.name.clone()))
                .collect();
            (my_name, others)
        };
        // The local import first: a broken archive is refused before it
        // travels anywhere.
        let local = images::import_local(&self.node, &file.0)
            .await
            .map_err(Status::invalid_argument)?;
        let mut gateways = vec![json!({"gateway": my_name, "images": local, "error": null})];
        if meta.all {
            for (id, name) in others {
                let entry = match images::push(&self.cluster, id, &file.0, &file_name).await {
                    Ok(reply) => json!({"gateway": name, "images": reply["images"], "error": null}),
                    Err(error) => json!({"gateway": name, "images": [], "error": error}),
                };
                gateways.push(entry);
            }
        }
        reply(json!({ "gateways": gateways }))
    }

    type PullImageStream = pull::PullStream;

    async fn pull_image(
        &self,
        request: Request<gantry_proto::v1::PullImageRequest>,
    ) -> Result<Response<pull::PullStream>, Status> {
        let req = request.into_inner();
        let image = pull::check_reference(&req.image)?;
        Ok(Response::new(pull::serve(
            &self.node,
            &self.cluster,
            image,
            req.all,
        )))
    }

    type LogsStream = LogStream;

    async fn logs(&self, request: Request<LogsRequest>) -> Result<Response<LogStream>, Status> {
        let req = request.into_inner();
        let (node, container_id) = {
            let applied = self.cluster.state().read();
            logs::locate(&applied.state, &req.workload, req.replica)?
        };
        let stream = if node == self.cluster.id() {
            logs::local(&self.node, &container_id, req.follow)?
        } else {
            logs::remote(&self.cluster, node, container_id, req.follow).await?
        };
        Ok(Response::new(stream))
    }

    async fn get_settings(&self, _: Request<GetRequest>) -> Reply {
        reply(views::settings(&self.cluster))
    }

    async fn set_settings(&self, request: Request<SetSettingsRequest>) -> Reply {
        let change = SettingsChange::parse(&request.into_inner().assignments)
            .map_err(Status::invalid_argument)?;
        match self
            .cluster
            .write(Command::UpdateSettings { change })
            .await
            .map_err(status_from)?
        {
            Answer::Ok => reply(views::settings(&self.cluster)),
            other => Err(refused(other)),
        }
    }

    async fn cordon(&self, request: Request<NodeRequest>) -> Reply {
        let name = request.into_inner().name;
        let node = self.node_id(&name)?;
        let command = Command::SetCordon {
            node,
            cordoned: true,
        };
        self.node_write(&name, command).await
    }

    async fn uncordon(&self, request: Request<NodeRequest>) -> Reply {
        let name = request.into_inner().name;
        let node = self.node_id(&name)?;
        let command = Command::SetCordon {
            node,
            cordoned: false,
        };
        self.node_write(&name, command).await
    }

    async fn drain(&self, request: Request<NodeRequest>) -> Reply {
        let name = request.into_inner().name;
        let node = self.node_id(&name)?;
        self.node_write(&name, Command::DrainNode { node }).await
    }

    async fn describe_node(&self, request: Request<DescribeRequest>) -> Reply {
        self.describe(&request.into_inner().name)
    }

    async fn events(&self, _: Request<GetRequest>) -> Reply {
        let applied = self.cluster.state().read();
        reply(views::events(&applied.state, None))
    }

    async fn rollout_status(&self, request: Request<DescribeRequest>) -> Reply {
        let name = request.into_inner().name;
        match views::rollout_status(&self.cluster, &name) {
            Some(value) => reply(value),
            None => Err(Status::not_found(format!("no workload named '{name}'"))),
        }
    }

    async fn create_token(&self, request: Request<CreateTokenRequest>) -> Reply {
        let req = request.into_inner();
        let role = Role::parse(&req.role).map_err(Status::invalid_argument)?;
        let (token, record) = crate::trust::tokens::new_admin(
            self.cluster.trust().map_err(status_from)?.ca_pin(),
            role,
            &req.name,
            ttl(req.ttl_ms),
            None,
            now_ms(),
        )
        .map_err(internal)?;
        let fields = json!({ "name": req.name, "role": role.to_string() });
        self.commit_token(record, token.to_string(), fields).await
    }

    async fn list_tokens(&self, _: Request<GetRequest>) -> Reply {
        let applied = self.cluster.state().read();
        reply(crate::trust::tokens::list_view(
            &applied.state,
            TokenKind::Admin,
        ))
    }

    async fn revoke_token(&self, request: Request<RevokeTokenRequest>) -> Reply {
        let id = request.into_inner().id;
        // Answered once every Ready gateway applied it: the token is refused
        // on the next request wherever it is presented.
        match self
            .cluster
            .write_everywhere(Command::RevokeToken { id: id.clone() })
            .await
            .map_err(status_from)?
        {
            Answer::Ok => reply(json!({ "revoked": id })),
            other => Err(refused(other)),
        }
    }

    async fn create_join_token(&self, request: Request<CreateJoinTokenRequest>) -> Reply {
        let req = request.into_inner();
        let uses = (req.uses > 0).then_some(req.uses);
        let (token, record) = crate::trust::tokens::new_join(
            self.cluster.trust().map_err(status_from)?.ca_pin(),
            &req.name,
            ttl(req.ttl_ms),
            uses,
            now_ms(),
        )
        .map_err(internal)?;
        let fields = json!({ "name": req.name, "uses": uses });
        self.commit_token(record, token.to_string(), fields).await
    }

    async fn list_join_tokens(&self, _: Request<GetRequest>) -> Reply {
        let applied = self.cluster.state().read();
        reply(crate::trust::tokens::list_view(
            &applied.state,
            TokenKind::Join,
        ))
    }

    async fn rotate_join_token(&self, _: Request<GetRequest>) -> Reply {
        let (token, record) = crate::trust::tokens::new_join(
            self.cluster.trust().map_err(status_from)?.ca_pin(),
            "default",
            None,
            None,
            now_ms(),
        )
        .map_err(internal)?;
        let id = record.id.clone();
        match self
            .cluster
            .write_everywhere(Command::RotateJoinToken { record })
            .await
            .map_err(status_from)?
        {
            Answer::Ok => {
                // The file that held the old default on this gateway, if any.
                let file = self
                    .cluster
                    .trust()
                    .map_err(status_from)?
                    .data_dir
                    .join(crate::config::TOKEN_FILE);
                if file.exists() {
                    crate::trust::files::write_secret_file(&file, &token.to_string())
                        .map_err(internal)?;
                }
                reply(json!({ "id": id, "token": token.to_string() }))
            }
            other => Err(refused(other)),
        }
    }

    async fn renew_certificate(&self, _: Request<GetRequest>) -> Reply {
        crate::trust::renewal::renew(&self.cluster, &self.renewals)
            .await
            .map_err(status_from)?;
        reply(views::pki(&self.cluster))
    }

    async fn pki_status(&self, _: Request<GetRequest>) -> Reply {
        reply(views::pki(&self.cluster))
    }
}
