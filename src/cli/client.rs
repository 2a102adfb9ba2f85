//! Client verbs: one Admin RPC each, rendered as a table, JSON or YAML.

use std::io::Read;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use gantry_proto::v1::admin_client::AdminClient;
use gantry_proto::v1::{
    ApplyRequest, CloudAttachRequest, CloudDetachRequest, DeleteWorkloadRequest, DescribeRequest,
    GetRequest, ImageChunk, JsonDocument, LeaveRequest, LogsRequest, NodeRequest,
    SetSettingsRequest, StatusRequest,
};
use serde_json::Value;
use tonic::transport::{Channel, Endpoint};

use super::args::{
    CloudVerb, DeleteWhat, DescribeWhat, GetWhat, ImageVerb, OutputFormat, RolloutVerb,
    SettingsWhat, Verb,
};
use super::output;

pub(crate) async fn connect(server: &str) -> Result<AdminClient<Channel>> {
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
        Verb::Rollout {
            what: RolloutVerb::Status { name },
        } => (
            output::View::Rollout,
            document(client.rollout_status(DescribeRequest { name }).await)?,
        ),
        Verb::Leave { name } => (
            output::View::Left,
            document(client.leave(LeaveRequest { name }).await)?,
        ),
        Verb::Describe {
            what: DescribeWhat::Node { name },
        } => (
            output::View::DescribeNode,
            document(client.describe_node(DescribeRequest { name }).await)?,
        ),
        Verb::Settings {
            what: SettingsWhat::Get,
        } => (
            output::View::Settings,
            document(client.get_settings(GetRequest {}).await)?,
        ),
        Verb::Settings {
            what: SettingsWhat::Set { assignments },
        } => (
            output::View::Settings,
            document(
                client
                    .set_settings(SetSettingsRequest { assignments })
                    .await,
            )?,
        ),
        Verb::Cordon { name } => (
            output::View::Cordoned,
            document(client.cordon(NodeRequest { name }).await)?,
        ),
        Verb::Uncordon { name } => (
            output::View::Cordoned,
            document(client.uncordon(NodeRequest { name }).await)?,
        ),
        Verb::Events => (
            output::View::Events,
            document(client.events(GetRequest {}).await)?,
        ),
        Verb::Drain { name, timeout } => return drain(&mut client, format, name, timeout.0).await,
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
        Verb::Init(_) | Verb::Join(_) | Verb::Run(_) | Verb::Dev(_) | Verb::Hub { .. } => {
            return Err(anyhow!("not a client verb"))
        }
    };
    print!("{}", output::render(view, format, &value)?);
    Ok(ExitCode::SUCCESS)
}

/// Streams `file` to the gateway in 1 MiB chunks.
pub(crate) async fn import_image(
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

/// `gantry drain`: starts the drain, then follows it, printing each move
/// and each new reason an instance cannot move yet, until nothing is left
/// on the gateway or `timeout` passes (then it says what is stuck and
/// fails).
async fn drain(
    client: &mut AdminClient<Channel>,
    format: OutputFormat,
    name: String,
    timeout: Duration,
) -> Result<ExitCode> {
    use std::collections::BTreeMap;
    let table = format == OutputFormat::Table;
    let start = document(client.drain(NodeRequest { name: name.clone() }).await)?;
    if table {
        println!("gateway {name} cordoned; draining");
    }
    let deadline = std::time::Instant::now() + timeout;
    // Every instance seen on the gateway, and whether its move was printed.
    let mut seen: BTreeMap<String, bool> = BTreeMap::new();
    let mut reasons: BTreeMap<String, String> = BTreeMap::new();
    let mut moved: Vec<Value> = Vec::new();
    let key = |i: &Value| {
        format!(
            "{}/{}",
            output::text(&i["workload"]),
            output::text(&i["replica"])
        )
    };
    let mut described = start;
    loop {
        for i in output::items(&described["instances"]) {
            seen.entry(key(i)).or_insert(false);
        }
        let everywhere = document(client.get_instances(GetRequest {}).await)?;
        for i in output::items(&everywhere) {
            let k = key(i);
            let Some(printed) = seen.get_mut(&k) else {
                continue;
            };
            let to = output::text(&i["node"]);
            if !*printed && i["node"].is_string() && to != name {
                *printed = true;
                reasons.remove(&k);
                if table {
                    println!("moved {k} to {to}");
                }
                moved.push(serde_json::json!({"instance": k, "to": to}));
            }
        }
        let waiting = output::items(&described["drain"]["waiting"]).to_vec();
        for w in &waiting {
            let (k, reason) = (output::text(&w["instance"]), output::text(&w["reason"]));
            if reasons.get(&k) != Some(&reason) {
                if table {
                    println!("waiting: {k} {reason}");
                }
                reasons.insert(k, reason);
            }
        }
        let left_on_it = output::items(&described["instances"]).len();
        let done = left_on_it == 0;
        if done || std::time::Instant::now() >= deadline {
            let stuck: Vec<Value> = output::items(&described["instances"])
                .iter()
                .map(|i| {
                    let k = key(i);
                    let reason = reasons
                        .get(&k)
                        .cloned()
                        .unwrap_or_else(|| "not moved yet".into());
                    serde_json::json!({"instance": k, "reason": reason})
                })
                .collect();
            let summary =
                serde_json::json!({"node": name, "drained": done, "moved": moved, "stuck": stuck});
            if !table {
                print!(
                    "{}",
                    output::render(output::View::Drained, format, &summary)?
                );
            }
            if done {
                if table {
                    println!("gateway {name} drained");
                }
                return Ok(ExitCode::SUCCESS);
            }
            let list: Vec<String> = stuck
                .iter()
                .map(|s| {
                    format!(
                        "{} ({})",
                        output::text(&s["instance"]),
                        output::text(&s["reason"])
                    )
                })
                .collect();
            return Err(anyhow!(
                "drain of {name} not finished after {}: still on it: {}",
                crate::state::quantity::format_duration(timeout),
                list.join("; ")
            ));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        described = document(
            client
                .describe_node(DescribeRequest { name: name.clone() })
                .await,
        )?;
    }
}
