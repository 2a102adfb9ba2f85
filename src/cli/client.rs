//! Client verbs: one Admin RPC each, rendered as a table, JSON or YAML.

use std::io::Read;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use gantry_proto::v1::admin_client::AdminClient;
use gantry_proto::v1::{
    ApplyRequest, CloudAttachRequest, CloudDetachRequest, DeleteWorkloadRequest, DescribeRequest,
    GetRequest, JsonDocument, LeaveRequest, StatusRequest,
};
use serde_json::Value;
use tonic::transport::{Channel, Endpoint};

use super::args::{CloudVerb, DeleteWhat, DescribeWhat, GetWhat, OutputFormat, Verb};
use super::output;

async fn connect(server: &str) -> Result<AdminClient<Channel>> {
    let endpoint = Endpoint::from_shared(format!("http://{server}"))
        .map_err(|e| anyhow!("--server {server} is not HOST:PORT: {e}"))?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(30));
    let channel = endpoint.connect().await.map_err(|e| {
        anyhow!("cannot reach a gateway at {server} ({e}); is it running? set --server or GANTRY_SERVER")
    })?;
    Ok(AdminClient::new(channel))
}

fn document(reply: Result<tonic::Response<JsonDocument>, tonic::Status>) -> Result<Value> {
    let reply = reply.map_err(|status| anyhow!("{}", status.message()))?;
    serde_json::from_str(&reply.into_inner().json).context("the gateway sent malformed JSON")
}

pub fn read_manifest(path: &std::path::Path) -> Result<String> {
    if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read the manifest from standard input")?;
        return Ok(text);
    }
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

pub async fn run(server: &str, format: OutputFormat, verb: Verb) -> Result<ExitCode> {
    // Read local input before connecting, so a bad path fails first.
    let manifest = match &verb {
        Verb::Apply { file } => Some(read_manifest(file)?),
        _ => None,
    };
    let mut client = connect(server).await?;
    let (view, value) = match verb {
        Verb::Status => (
            output::View::Status,
            document(client.status(StatusRequest {}).await)?,
        ),
        Verb::Get {
            what: GetWhat::Nodes,
        } => (
            output::View::Nodes,
            document(client.get_nodes(GetRequest {}).await)?,
        ),
        Verb::Get {
            what: GetWhat::Workloads,
        } => (
            output::View::Workloads,
            document(client.get_workloads(GetRequest {}).await)?,
        ),
        Verb::Get {
            what: GetWhat::Instances,
        } => (
            output::View::Instances,
            document(client.get_instances(GetRequest {}).await)?,
        ),
        Verb::Describe {
            what: DescribeWhat::Workload { name },
        } => (
            output::View::DescribeWorkload,
            document(client.describe_workload(DescribeRequest { name }).await)?,
        ),
        Verb::Apply { .. } => {
            let manifest = manifest.unwrap_or_default();
            (
                output::View::Applied,
                document(client.apply(ApplyRequest { manifest }).await)?,
            )
        }
        Verb::Delete {
            what: DeleteWhat::Workload { name },
        } => (
            output::View::Deleted,
            document(client.delete_workload(DeleteWorkloadRequest { name }).await)?,
        ),
        Verb::Leave { name } => (
            output::View::Left,
            document(client.leave(LeaveRequest { name }).await)?,
        ),
        Verb::Cloud {
            what: CloudVerb::Attach { hub, site, token },
        } => (
            output::View::CloudAttached,
            document(
                client
                    .cloud_attach(CloudAttachRequest { hub, site, token })
                    .await,
            )?,
        ),
        Verb::Cloud {
            what: CloudVerb::Detach,
        } => (
            output::View::CloudDetached,
            document(client.cloud_detach(CloudDetachRequest {}).await)?,
        ),
        Verb::Init(_) | Verb::Join(_) | Verb::Run(_) | Verb::Hub { .. } => {
            return Err(anyhow!("not a client verb"))
        }
    };
    print!("{}", output::render(view, format, &value)?);
    Ok(ExitCode::SUCCESS)
}
