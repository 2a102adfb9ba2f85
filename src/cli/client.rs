//! Client verbs: one Admin RPC each, rendered as a table, JSON or YAML.

use std::io::Read;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use gantry_proto::v1::admin_client::AdminClient;
use gantry_proto::v1::{
    ApplyRequest, DeleteWorkloadRequest, DescribeRequest, GetRequest, ImageChunk, JsonDocument,
    LeaveRequest, LogsRequest, StatusRequest,
};
use serde_json::Value;
use tonic::transport::{Channel, Endpoint};

use super::args::{DeleteWhat, DescribeWhat, GetWhat, ImageVerb, OutputFormat, Verb};
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

fn read_manifest(path: &std::path::Path) -> Result<String> {
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
        Verb::Image {
            what: ImageVerb::Import { file, all },
        } => {
            let value = import_image(&mut client, &file, all).await?;
            print!(
                "{}",
                output::render(output::View::Imported, format, &value)?
            );
            let failed = value["gateways"]
                .as_array()
                .is_some_and(|g| g.iter().any(|g| !g["error"].is_null()));
            return Ok(if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            });
        }
        Verb::Logs {
            workload,
            replica,
            follow,
        } => {
            stream_logs(&mut client, workload, replica, follow).await?;
            return Ok(ExitCode::SUCCESS);
        }
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
        Verb::Init(_) | Verb::Join(_) | Verb::Run(_) => return Err(anyhow!("not a client verb")),
    };
    print!("{}", output::render(view, format, &value)?);
    Ok(ExitCode::SUCCESS)
}

/// Streams `file` to the gateway in 1 MiB chunks.
async fn import_image(
    client: &mut AdminClient<Channel>,
    file: &std::path::Path,
    all: bool,
) -> Result<Value> {
    use tokio::io::AsyncReadExt;
    let mut reader = tokio::fs::File::open(file)
        .await
        .with_context(|| format!("cannot read {}", file.display()))?;
    let file_name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (tx, rx) = tokio::sync::mpsc::channel::<ImageChunk>(4);
    let sender = tokio::spawn(async move {
        let mut first = true;
        loop {
            let mut data = vec![0u8; 1 << 20];
            let read = reader.read(&mut data).await?;
            if read == 0 && !first {
                return Ok::<_, std::io::Error>(());
            }
            data.truncate(read);
            let chunk = ImageChunk {
                cluster_id: String::new(),
                all,
                file_name: file_name.clone(),
                data,
            };
            first = false;
            if tx.send(chunk).await.is_err() || read == 0 {
                return Ok(());
            }
        }
    });
    let reply = client
        .import_image(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await;
    sender
        .await
        .context("archive reader")?
        .context("cannot read the archive")?;
    document(reply)
}

async fn stream_logs(
    client: &mut AdminClient<Channel>,
    workload: String,
    replica: Option<u32>,
    follow: bool,
) -> Result<()> {
    use std::io::Write;
    let request = LogsRequest {
        workload,
        replica,
        follow,
        cluster_id: String::new(),
        container_id: String::new(),
    };
    let mut stream = client
        .logs(request)
        .await
        .map_err(|s| anyhow!("{}", s.message()))?
        .into_inner();
    let mut stdout = std::io::stdout();
    while let Some(chunk) = stream
        .message()
        .await
        .map_err(|s| anyhow!("{}", s.message()))?
    {
        if stdout
            .write_all(&chunk.data)
            .and_then(|_| stdout.flush())
            .is_err()
        {
            break; // the reader went away (e.g. `| head`)
        }
    }
    Ok(())
}
