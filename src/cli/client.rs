//! Client verbs: one Admin RPC each, rendered as a table, JSON or YAML.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use gantry_proto::v1::admin_client::AdminClient;
use gantry_proto::v1::{
    ApplyRequest, CloudAttachRequest, CloudDetachRequest, CreateJoinTokenRequest,
    CreateTokenRequest, DeleteWorkloadRequest, DescribeRequest, GetRequest, ImageChunk,
    JsonDocument, LeaveRequest, LogsRequest, NodeRequest, RevokeTokenRequest, SetSettingsRequest,
    StatusRequest,
};
use serde_json::Value;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use super::args::{
    AttachArgs, AuthFiles, ClientAuth, CloudVerb, DeleteWhat, DescribeWhat, GetWhat, ImageVerb,
    JoinTokenVerb, OutputFormat, PkiVerb, RolloutVerb, SettingsWhat, TokenVerb, Verb,
};
use super::output;

/// Where a gateway installed by the README keeps its data.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/gantry";

/// Adds the bearer token to every call.
#[derive(Clone)]
pub struct Bearer(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl Bearer {
    pub fn new(token: &str) -> Result<Self> {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| anyhow!("not authorized: the token holds characters a header cannot"))?;
        Ok(Self(value))
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// An Admin API client that carries its token.
pub type Admin = AdminClient<InterceptedService<Channel, Bearer>>;

fn read_token_file(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "not authorized: cannot read the token file {}",
            path.display()
        )
    })?;
    let token = text.trim().to_string();
    if token.is_empty() {
        bail!("not authorized: {} is empty", path.display());
    }
    Ok(token)
}

/// The admin or viewer token, first found wins: `--token`/`GANTRY_TOKEN`,
/// `--token-file`, then `admin-token` in `--data-dir`/`GANTRY_DATA_DIR`
/// (default /var/lib/gantry when readable).
pub fn resolve_token(auth: &ClientAuth) -> Result<String> {
    if let Some(token) = auth
        .token
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        return Ok(token.to_string());
    }
    if let Some(file) = &auth.files.token_file {
        return read_token_file(file);
    }
    let dir = auth
        .files
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    let file = dir.join(crate::trust::files::ADMIN_TOKEN_FILE);
    if auth.files.data_dir.is_some() || file.exists() {
        return read_token_file(&file);
    }
    bail!(
        "not authorized: no token; pass --token or GANTRY_TOKEN, --token-file, or --data-dir of a gateway on this machine (make one with `gantry token create`)"
    )
}

/// How to recognise the server: the CA bundle of `--ca-file`, else the CA
/// pinned inside the token.
pub fn server_verifier(
    token: &str,
    ca_file: Option<&Path>,
    parse_pin: impl Fn(&str) -> Option<gantry_pki::Fingerprint>,
) -> Result<std::sync::Arc<dyn rustls::client::danger::ServerCertVerifier>> {
    if let Some(file) = ca_file {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read --ca-file {}", file.display()))?;
        let roots = gantry_pki::certs_from_pem(&text)
            .with_context(|| format!("--ca-file {}", file.display()))?;
        return Ok(gantry_pki::roots_verifier(&roots)?);
    }
    let pin = parse_pin(token).ok_or_else(|| {
        anyhow!(
            "not authorized: the token is malformed (expected gantry-admin-v1.<ca>.<id>.<secret>)"
        )
    })?;
    Ok(gantry_pki::PinnedCaVerifier::new(pin))
}

/// A TLS channel to `server` that checks it with `verifier` as `name`.
pub async fn tls_channel(
    server: &str,
    verifier: std::sync::Arc<dyn rustls::client::danger::ServerCertVerifier>,
    name: &str,
    what: &str,
    hint: &str,
) -> Result<Channel> {
    let config = gantry_pki::client_config(verifier, None, crate::trust::alpn())?;
    let connector = crate::tls::TlsConnector::new(crate::tls::ClientTls::new(config), name)
        .map_err(|e| anyhow!(e))?;
    crate::tls::connect_channel(server, connector, |endpoint| {
        endpoint
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(30))
    })
    .await
    .map_err(|e| anyhow!("cannot reach {what} at {server} ({e}); {hint}"))
}

/// Connects to the gateway at `server` with the caller's credentials.
pub async fn connect(server: &str, auth: &ClientAuth) -> Result<Admin> {
    let token = resolve_token(auth)?;
    let verifier = server_verifier(&token, auth.files.ca_file.as_deref(), |t| {
        gantry_pki::AdminToken::parse(t).ok().map(|t| t.ca)
    })?;
    let channel = tls_channel(
        server,
        verifier,
        gantry_pki::GATEWAY_NAME,
        "a gateway",
        "is it running? set --server or GANTRY_SERVER",
    )
    .await?;
    // Answers are as large as the cluster's state (150 workloads with 50 KB
    // of env each pass gRPC's default 4 MiB); requests as large as one
    // Raft message.
    Ok(AdminClient::with_interceptor(channel, Bearer::new(&token)?)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(crate::cluster::network::MAX_MESSAGE_BYTES))
}

/// For programs that embed gateways (benchmarks, `gantry dev`): connects
/// with the admin token of the gateway whose data dir is `data_dir`.
pub async fn connect_as_gateway(server: &str, data_dir: &Path) -> Result<Admin> {
    let auth = ClientAuth {
        token: None,
        files: AuthFiles {
            data_dir: Some(data_dir.to_path_buf()),
            ..Default::default()
        },
    };
    connect(server, &auth).await
}

/// A gRPC error as the one line a person reads.
pub fn status_error(status: tonic::Status) -> anyhow::Error {
    match status.code() {
        tonic::Code::Unauthenticated => anyhow!("not authorized: {}", status.message()),
        tonic::Code::PermissionDenied => anyhow!("permission denied: {}", status.message()),
        _ => anyhow!("{}", status.message()),
    }
}

fn document(reply: Result<tonic::Response<JsonDocument>, tonic::Status>) -> Result<Value> {
    let reply = reply.map_err(status_error)?;
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

/// The credentials a client verb carries.
fn auth_of(verb: &Verb) -> Option<ClientAuth> {
    let auth = match verb {
        Verb::Status { auth }
        | Verb::Get { auth, .. }
        | Verb::Describe { auth, .. }
        | Verb::Apply { auth, .. }
        | Verb::Delete { auth, .. }
        | Verb::Image { auth, .. }
        | Verb::Logs { auth, .. }
        | Verb::Rollout { auth, .. }
        | Verb::Leave { auth, .. }
        | Verb::Settings { auth, .. }
        | Verb::Cordon { auth, .. }
        | Verb::Uncordon { auth, .. }
        | Verb::Drain { auth, .. }
        | Verb::Events { auth }
        | Verb::Token { auth, .. }
        | Verb::JoinToken { auth, .. }
        | Verb::Pki { auth, .. } => auth.clone(),
        Verb::Cloud {
            what: CloudVerb::Detach { auth },
        } => auth.clone(),
        Verb::Cloud {
            what: CloudVerb::Attach(attach),
        } => ClientAuth {
            // `--token` is the site token here; the admin one comes from
            // the environment or the files.
            token: std::env::var("GANTRY_TOKEN").ok(),
            files: AuthFiles {
                // With --mqtt, --ca-file is the broker's.
                ca_file: if attach.mqtt.is_some() {
                    None
                } else {
                    attach.files.ca_file.clone()
                },
                ..AuthFiles::clone(&attach.files)
            },
        },
        Verb::Init(_)
        | Verb::Join(_)
        | Verb::Run(_)
        | Verb::Dev(_)
        | Verb::Hub { .. }
        | Verb::FenceGuard { .. }
        | Verb::Completion { .. }
        | Verb::Check { .. }
        | Verb::Convert { .. }
        | Verb::Man { .. } => return None,
    };
    Some(auth)
}

/// The list `what` names, its table view, and each item's key.
async fn list(client: &mut Admin, what: &GetWhat) -> Result<(output::View, Value)> {
    Ok(match what {
        GetWhat::Nodes => (
            output::View::Nodes,
            document(client.get_nodes(GetRequest {}).await)?,
        ),
        GetWhat::Workloads => (
            output::View::Workloads,
            document(client.get_workloads(GetRequest {}).await)?,
        ),
        GetWhat::Instances => (
            output::View::Instances,
            document(client.get_instances(GetRequest {}).await)?,
        ),
    })
}

/// What identifies an item of a list across polls.
fn item_key(item: &Value) -> String {
    match (item["workload"].as_str(), item["name"].as_str()) {
        (Some(workload), _) => format!("{workload}/{}", item["replica"]),
        (None, Some(name)) => name.to_string(),
        _ => item.to_string(),
    }
}

/// The items of `now` that are new or differ from `before`.
pub fn changed_items(before: &Value, now: &Value) -> Vec<Value> {
    let old: std::collections::BTreeMap<String, &Value> = output::items(before)
        .iter()
        .map(|i| (item_key(i), i))
        .collect();
    output::items(now)
        .iter()
        .filter(|i| old.get(&item_key(i)) != Some(i))
        .cloned()
        .collect()
}

/// `get -w`, like `kubectl get -w`: the list, then each item that appears
/// or changes, polled twice a second; tables print rows under the first
/// header, JSON one object per line, YAML one document each.
async fn watch_list(client: &mut Admin, format: OutputFormat, what: GetWhat) -> Result<ExitCode> {
    use std::io::Write;
    let mut before = Value::Array(Vec::new());
    let mut first = true;
    loop {
        let (view, now) = list(client, &what).await?;
        let changed = changed_items(&before, &now);
        if !changed.is_empty() || first {
            let text = match format {
                OutputFormat::Json => changed.iter().map(|i| format!("{i}\n")).collect::<String>(),
                OutputFormat::Yaml => changed
                    .iter()
                    .map(|i| serde_yaml_ng::to_string(i).map(|y| format!("---\n{y}")))
                    .collect::<Result<String, _>>()?,
                _ => {
                    let table = output::render(view, format, &Value::Array(changed))?;
                    if first {
                        table
                    } else {
                        // The header was printed with the first list.
                        table.lines().skip(1).map(|l| format!("{l}\n")).collect()
                    }
                }
            };
            print!("{text}");
            std::io::stdout().flush().context("stdout")?;
        }
        first = false;
        before = now;
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
        }
    }
}

/// Where a watched rollout stands.
#[derive(Debug, PartialEq, Eq)]
pub enum RolloutProgress {
    Waiting(String),
    Complete,
    /// Rolled back: the generation being watched failed.
    Failed(String),
}

/// Reads a `rollout status` document against the generation the watch
/// began with: a rollback of that generation (or a later one) is a
/// failure, even though the rollback's own generation then completes.
pub fn rollout_progress(value: &Value, watched: u64) -> RolloutProgress {
    if let Some(r) = value["rolled_back"].as_object() {
        if r["generation"].as_u64().is_some_and(|g| g >= watched) {
            return RolloutProgress::Failed(format!(
                "rollout of {} generation {} failed and was rolled back to the spec of generation {}: {}",
                value["workload"].as_str().unwrap_or(""),
                r["generation"],
                r["to_spec_of"],
                r["reason"].as_str().unwrap_or("")
            ));
        }
    }
    if value["complete"] == true {
        return RolloutProgress::Complete;
    }
    // Replicas of the new generation still bringing their image in.
    let pulling = output::items(&value["instances"])
        .iter()
        .filter(|i| i["generation"] == value["generation"] && i["state"] == "Pulling")
        .count();
    let mut line = format!(
        "waiting for the rollout of {} to generation {}: {} of {} replicas updated, {} running",
        value["workload"].as_str().unwrap_or(""),
        value["generation"],
        value["updated"],
        value["replicas"],
        value["running"]
    );
    let running = value["running"].as_u64().unwrap_or(0);
    // Documents from before readiness have no count: all running are up.
    let ready = value["ready"].as_u64().unwrap_or(running);
    let unready = running.saturating_sub(ready);
    if unready > 0 {
        line.push_str(&format!(" ({unready} not ready)"));
    }
    if pulling > 0 {
        line.push_str(&format!(", {pulling} pulling the image"));
    }
    RolloutProgress::Waiting(line)
}

/// `rollout status` with `--watch`: polls until the rollout completes,
/// fails or `timeout` passes, saying each change of progress on a table
/// output, then prints the last document.
async fn rollout_watch(
    client: &mut Admin,
    format: OutputFormat,
    name: String,
    timeout: Duration,
) -> Result<ExitCode> {
    let until = tokio::time::Instant::now() + timeout;
    let mut watched = None;
    let mut said = String::new();
    let spinner = super::progress::Progress::spinner(format, &format!("rollout of {name}"));
    loop {
        let value = document(
            client
                .rollout_status(DescribeRequest { name: name.clone() })
                .await,
        )?;
        let start = *watched.get_or_insert(value["generation"].as_u64().unwrap_or(0));
        let progress = rollout_progress(&value, start);
        let finished = |code: ExitCode| -> Result<ExitCode> {
            spinner.clear();
            print!("{}", output::render(output::View::Rollout, format, &value)?);
            Ok(code)
        };
        match progress {
            RolloutProgress::Complete => return finished(ExitCode::SUCCESS),
            RolloutProgress::Failed(why) => {
                let code = finished(ExitCode::FAILURE);
                eprintln!("error: {why}");
                return code;
            }
            RolloutProgress::Waiting(line) => {
                if tokio::time::Instant::now() >= until {
                    let code = finished(ExitCode::FAILURE);
                    eprintln!(
                        "error: the rollout of {name} did not finish within {}",
                        crate::state::quantity::format_duration(timeout)
                    );
                    return code;
                }
                if line != said && format.is_table() {
                    spinner.say(&line);
                    said = line;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn ttl_ms(ttl: Option<crate::state::quantity::HumanDuration>) -> u64 {
    ttl.map(|d| d.0.as_millis().min(u128::from(u64::MAX)) as u64)
        .unwrap_or(0)
}

pub async fn run(server: &str, format: OutputFormat, verb: Verb) -> Result<ExitCode> {
    // Read local input before connecting, so a bad path fails first.
    let manifest = match &verb {
        Verb::Apply { file, .. } => Some(read_manifest(file)?),
        _ => None,
    };
    let auth = auth_of(&verb).ok_or_else(|| anyhow!("not a client verb"))?;
    let mut client = connect(server, &auth).await?;
    let (view, value) = match verb {
        Verb::Image {
            what: ImageVerb::Pull { image, all },
            ..
        } => return super::image_pull::run(&mut client, image, all, format).await,
        Verb::Image {
            what: ImageVerb::Import { file, all },
            ..
        } => {
            let value = import_image(&mut client, &file, all, format).await?;
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
            ..
        } => {
            stream_logs(&mut client, workload, replica, follow).await?;
            return Ok(ExitCode::SUCCESS);
        }
        Verb::Status { .. } => (
            output::View::Status,
            document(client.status(StatusRequest {}).await)?,
        ),
        Verb::Get {
            what, watch: true, ..
        } => return watch_list(&mut client, format, what).await,
        Verb::Get {
            what: GetWhat::Nodes,
            ..
        } => (
            output::View::Nodes,
            document(client.get_nodes(GetRequest {}).await)?,
        ),
        Verb::Get {
            what: GetWhat::Workloads,
            ..
        } => (
            output::View::Workloads,
            document(client.get_workloads(GetRequest {}).await)?,
        ),
        Verb::Get {
            what: GetWhat::Instances,
            ..
        } => (
            output::View::Instances,
            document(client.get_instances(GetRequest {}).await)?,
        ),
        Verb::Describe {
            what: DescribeWhat::Workload { name },
            ..
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
            ..
        } => (
            output::View::Deleted,
            document(client.delete_workload(DeleteWorkloadRequest { name }).await)?,
        ),
        Verb::Rollout {
            what: RolloutVerb::Status {
                name, watch: false, ..
            },
            ..
        } => (
            output::View::Rollout,
            document(client.rollout_status(DescribeRequest { name }).await)?,
        ),
        Verb::Rollout {
            what:
                RolloutVerb::Status {
                    name,
                    watch: true,
                    timeout,
                },
            ..
        } => return rollout_watch(&mut client, format, name, timeout.0).await,
        Verb::Leave { name, .. } => (
            output::View::Left,
            document(client.leave(LeaveRequest { name }).await)?,
        ),
        Verb::Describe {
            what: DescribeWhat::Node { name },
            ..
        } => (
            output::View::DescribeNode,
            document(client.describe_node(DescribeRequest { name }).await)?,
        ),
        Verb::Settings {
            what: SettingsWhat::Get,
            ..
        } => (
            output::View::Settings,
            document(client.get_settings(GetRequest {}).await)?,
        ),
        Verb::Settings {
            what: SettingsWhat::Set { assignments },
            ..
        } => (
            output::View::Settings,
            document(
                client
                    .set_settings(SetSettingsRequest { assignments })
                    .await,
            )?,
        ),
        Verb::Cordon { name, .. } => (
            output::View::Cordoned,
            document(client.cordon(NodeRequest { name }).await)?,
        ),
        Verb::Uncordon { name, .. } => (
            output::View::Cordoned,
            document(client.uncordon(NodeRequest { name }).await)?,
        ),
        Verb::Events { .. } => (
            output::View::Events,
            document(client.events(GetRequest {}).await)?,
        ),
        Verb::Drain { name, timeout, .. } => {
            return drain(&mut client, format, name, timeout.0).await
        }
        Verb::Cloud {
            what: CloudVerb::Attach(attach),
        } => (
            output::View::CloudAttached,
            document(client.cloud_attach(attach_request(*attach)?).await)?,
        ),
        Verb::Cloud {
            what: CloudVerb::Detach { .. },
        } => (
            output::View::CloudDetached,
            document(client.cloud_detach(CloudDetachRequest {}).await)?,
        ),
        Verb::Token { what, .. } => match what {
            TokenVerb::Create { role, name, ttl } => (
                output::View::NewToken,
                document(
                    client
                        .create_token(CreateTokenRequest {
                            role,
                            name,
                            ttl_ms: ttl_ms(ttl),
                        })
                        .await,
                )?,
            ),
            TokenVerb::List => (
                output::View::Tokens,
                document(client.list_tokens(GetRequest {}).await)?,
            ),
            TokenVerb::Revoke { id } => (
                output::View::Revoked,
                document(client.revoke_token(RevokeTokenRequest { id }).await)?,
            ),
        },
        Verb::JoinToken { what, .. } => match what {
            JoinTokenVerb::Create { ttl, uses, name } => (
                output::View::NewToken,
                document(
                    client
                        .create_join_token(CreateJoinTokenRequest {
                            ttl_ms: ttl_ms(Some(ttl)),
                            uses: uses.unwrap_or(0),
                            name,
                        })
                        .await,
                )?,
            ),
            JoinTokenVerb::List => (
                output::View::JoinTokens,
                document(client.list_join_tokens(GetRequest {}).await)?,
            ),
            JoinTokenVerb::Rotate => (
                output::View::NewToken,
                document(client.rotate_join_token(GetRequest {}).await)?,
            ),
        },
        Verb::Pki { what, .. } => match what {
            PkiVerb::Status => (
                output::View::Pki,
                document(client.pki_status(GetRequest {}).await)?,
            ),
            PkiVerb::Renew => (
                output::View::Pki,
                document(client.renew_certificate(GetRequest {}).await)?,
            ),
        },
        Verb::Init(_)
        | Verb::Join(_)
        | Verb::Run(_)
        | Verb::Dev(_)
        | Verb::Hub { .. }
        | Verb::FenceGuard { .. }
        | Verb::Completion { .. }
        | Verb::Check { .. }
        | Verb::Convert { .. }
        | Verb::Man { .. } => return Err(anyhow!("not a client verb")),
    };
    print!("{}", output::render(view, format, &value)?);
    Ok(ExitCode::SUCCESS)
}

/// Streams `file` to the gateway in 1 MiB chunks.
pub(crate) async fn import_image(
    client: &mut Admin,
    file: &std::path::Path,
    all: bool,
    format: OutputFormat,
) -> Result<Value> {
    use tokio::io::AsyncReadExt;
    let mut reader = tokio::fs::File::open(file)
        .await
        .with_context(|| format!("cannot read {}", file.display()))?;
    let total = reader.metadata().await.map(|m| m.len()).unwrap_or(0);
    let progress =
        std::sync::Arc::new(super::progress::Progress::bytes(format, total, "uploading"));
    let uploaded = progress.clone();
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
                uploaded.then_wait(if all {
                    "importing on every gateway"
                } else {
                    "importing"
                });
                return Ok(());
            }
            uploaded.advance(read as u64);
        }
    });
    let reply = client
        .import_image(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await;
    drop(progress);
    sender
        .await
        .context("archive reader")?
        .context("cannot read the archive")?;
    document(reply)
}

async fn stream_logs(
    client: &mut Admin,
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
        .map_err(status_error)?
        .into_inner();
    let mut stdout = std::io::stdout();
    while let Some(chunk) = stream.message().await.map_err(status_error)? {
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
    client: &mut Admin,
    format: OutputFormat,
    name: String,
    timeout: Duration,
) -> Result<ExitCode> {
    use std::collections::BTreeMap;
    let table = format.is_table();
    let start = document(client.drain(NodeRequest { name: name.clone() }).await)?;
    let progress = super::progress::Progress::spinner(format, &format!("draining {name}"));
    if table {
        progress.say(&format!("gateway {name} cordoned; draining"));
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
                    progress.say(&format!("moved {k} to {to}"));
                }
                moved.push(serde_json::json!({"instance": k, "to": to}));
            }
        }
        let waiting = output::items(&described["drain"]["waiting"]).to_vec();
        for w in &waiting {
            let (k, reason) = (output::text(&w["instance"]), output::text(&w["reason"]));
            if reasons.get(&k) != Some(&reason) {
                if table {
                    progress.say(&format!("waiting: {k} {reason}"));
                }
                reasons.insert(k, reason);
            }
        }
        let left_on_it = output::items(&described["instances"]).len();
        progress.message(&format!("draining {name}: {left_on_it} left on it"));
        let done = left_on_it == 0;
        if done || std::time::Instant::now() >= deadline {
            progress.clear();
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

/// The site's side of `cloud attach`: files are read here, so the gateway
/// asked need not have them.
fn attach_request(attach: AttachArgs) -> Result<CloudAttachRequest> {
    let AttachArgs {
        hub,
        mqtt,
        site,
        token,
        username,
        password,
        client_cert,
        client_key,
        insecure,
        topic_prefix,
        keepalive,
        files,
    } = attach;
    let read = |path: &std::path::Path, what: &str| {
        std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {what} {}", path.display()))
    };
    let mut request = CloudAttachRequest {
        hub: hub.unwrap_or_default(),
        site,
        keepalive,
        ..Default::default()
    };
    match mqtt {
        Some(url) => {
            let ca = match files.ca_file {
                Some(path) => read(&path, "--ca-file")?,
                // A public broker's certificate chains to a public CA.
                None if url.starts_with("mqtts://") => {
                    let system = std::path::Path::new(SYSTEM_CA_BUNDLE);
                    read(system, "the system's CA bundle (give --ca-file)")?
                }
                None => String::new(),
            };
            request.mqtt = url;
            request.mqtt_username = username.unwrap_or_default();
            request.mqtt_password = password.unwrap_or_default();
            request.mqtt_ca_pem = ca;
            if let Some(path) = client_cert {
                request.mqtt_client_cert_pem = read(&path, "--client-cert")?;
            }
            if let Some(path) = client_key {
                request.mqtt_client_key_pem = read(&path, "--client-key")?;
            }
            request.mqtt_insecure = insecure;
            request.mqtt_topic_prefix = topic_prefix.unwrap_or_default();
        }
        None => request.token = token.unwrap_or_default(),
    }
    Ok(request)
}

/// Debian's bundle of the public CAs (package ca-certificates).
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_watch_prints_what_appeared_or_changed() {
        let before = json!([
            {"workload": "web", "replica": 0, "state": "Pending"},
            {"workload": "web", "replica": 1, "state": "Running"},
            {"name": "gw-a", "status": "Ready"}
        ]);
        let now = json!([
            {"workload": "web", "replica": 0, "state": "Running"},
            {"workload": "web", "replica": 1, "state": "Running"},
            {"workload": "web", "replica": 2, "state": "Pending"},
            {"name": "gw-a", "status": "Ready"}
        ]);
        let changed = changed_items(&before, &now);
        assert_eq!(changed.len(), 2, "{changed:?}");
        assert_eq!(changed[0]["replica"], 0);
        assert_eq!(changed[1]["replica"], 2);
        assert!(changed_items(&now, &now).is_empty());
    }

    #[test]
    fn a_watched_rollout_fails_only_on_a_rollback_of_what_it_watched() {
        let doc = |generation: u64, complete: bool, rolled_back: Value| {
            json!({"workload": "web", "generation": generation, "updated": 1, "replicas": 3,
                   "running": 1, "complete": complete, "rolled_back": rolled_back})
        };
        let old = json!({"generation": 2, "to_spec_of": 1, "reason": "r"});
        // An earlier rollback does not fail a later rollout.
        assert_eq!(
            rollout_progress(&doc(4, true, old.clone()), 4),
            RolloutProgress::Complete
        );
        assert!(matches!(
            rollout_progress(&doc(4, false, old.clone()), 4),
            RolloutProgress::Waiting(_)
        ));
        let mut pulling = doc(4, false, Value::Null);
        pulling["instances"] = json!([
            {"generation": 4, "state": "Pulling"},
            {"generation": 3, "state": "Pulling"},
            {"generation": 4, "state": "Running"}
        ]);
        match rollout_progress(&pulling, 4) {
            RolloutProgress::Waiting(line) => {
                assert!(line.ends_with("1 running, 1 pulling the image"), "{line}")
            }
            other => panic!("{other:?}"),
        }
        // The watched generation rolled back: failed, though the rollback's
        // own generation completes.
        let failed = json!({"generation": 4, "to_spec_of": 3, "reason": "not Running"});
        match rollout_progress(&doc(5, true, failed), 4) {
            RolloutProgress::Failed(why) => assert!(why.contains("generation 4 failed"), "{why}"),
            other => panic!("{other:?}"),
        }
    }
}
