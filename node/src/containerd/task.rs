//! Container and task lifecycle: create, start, restart, stop, list, exits.

use super::content::{create_lease, delete_lease};
use super::oci::{build_spec, HostDevice, HostFacts, SPEC_TYPE_URL};
use super::unpack::{remove_snapshot, resolve_image};
use super::{status_error, ContainerdRuntime, Svc, SNAPSHOTTER};
use crate::logs;
use crate::runtime::{
    ActualContainer, ExitEvent, RuntimeError, Started, TaskState, LABEL_GENERATION, LABEL_REPLICA,
    LABEL_RESTARTS, LABEL_WORKLOAD,
};
use crate::spec::{normalize_image_ref, validate_container_id, ContainerSpec};
use containerd_client::events::TaskExit;
use containerd_client::services::v1::container::Runtime as PbRuntime;
use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::events_client::EventsClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{
    MountsRequest, PrepareSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::{
    Container, CreateContainerRequest, CreateTaskRequest, DeleteContainerRequest,
    DeleteTaskRequest, GetRequest, KillRequest, ListContainersRequest, ListTasksRequest,
    StartRequest, SubscribeRequest, UpdateContainerRequest, WaitRequest,
};
use containerd_client::types::v1::Status as TaskStatus;
use prost::Message;
use prost_types::Any;
use std::collections::HashMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::Code;

const RUNC_V2: &str = "io.containerd.runc.v2";

/// `containerd.runc.v1.Options`, which the crate does not compile; only the
/// field we set.
#[derive(Clone, PartialEq, Message)]
struct RuncOptions {
    #[prost(string, tag = "7")]
    root: String,
}

pub(crate) fn tasks(svc: Svc) -> TasksClient<Svc> {
    TasksClient::new(svc)
}

fn containers(svc: Svc) -> ContainersClient<Svc> {
    ContainersClient::new(svc).max_decoding_message_size(super::MAX_MESSAGE)
}

/// Gathers what the spec needs from the host (device numbers, hostname,
/// cgroup flavour) and checks mount sources, so failures name the path.
fn host_facts(spec: &ContainerSpec) -> Result<HostFacts, RuntimeError> {
    let mut devices = Vec::new();
    for path in &spec.devices {
        let meta =
            std::fs::metadata(path).map_err(|e| RuntimeError::io(format!("device {path}"), e))?;
        let kind = if meta.file_type().is_char_device() {
            "c"
        } else if meta.file_type().is_block_device() {
            "b"
        } else {
            return Err(RuntimeError::InvalidSpec(format!("{path} is not a device")));
        };
        let rdev = meta.rdev();
        devices.push(HostDevice {
            path: path.clone(),
            kind,
            major: (((rdev >> 32) & 0xffff_f000) | ((rdev >> 8) & 0xfff)) as i64,
            minor: (((rdev >> 12) & 0xffff_ff00) | (rdev & 0xff)) as i64,
            mode: meta.mode(),
            uid: meta.uid(),
            gid: meta.gid(),
        });
    }
    for m in &spec.mounts {
        if !Path::new(&m.source).exists() {
            return Err(RuntimeError::InvalidSpec(format!(
                "mount source {} does not exist",
                m.source
            )));
        }
    }
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "gantry".to_string());
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let memsw = Path::new("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists();
    Ok(HostFacts {
        hostname,
        devices,
        swap_limit_supported: v2 || memsw,
        has_hosts_file: Path::new("/etc/hosts").exists(),
        has_resolv_conf: Path::new("/etc/resolv.conf").exists(),
    })
}

pub(crate) async fn create_and_start(
    rt: &ContainerdRuntime,
    spec: &ContainerSpec,
) -> Result<Started, RuntimeError> {
    create_counted(rt, spec, 0).await
}

/// Whether the container's snapshot sits on another layer chain than the
/// image now has: its tag was re-pulled with new content.
pub(crate) async fn image_changed(
    rt: &ContainerdRuntime,
    id: &str,
    image: &str,
) -> Result<bool, RuntimeError> {
    let info = match SnapshotsClient::new(rt.svc())
        .stat(StatSnapshotRequest {
            snapshotter: SNAPSHOTTER.to_string(),
            key: id.to_string(),
        })
        .await
    {
        Ok(r) => r.into_inner().info,
        Err(s) if s.code() == Code::NotFound => return Ok(false),
        Err(s) => return Err(status_error("stat container snapshot", s)),
    };
    let Some(info) = info else { return Ok(false) };
    let current = resolve_image(rt, image).await?;
    Ok(info.parent != current.chain_id)
}

/// Replaces an exited container by one made from the current image, with
/// the same id, log file and restart count.
pub(crate) async fn recreate(
    rt: &ContainerdRuntime,
    spec: &ContainerSpec,
    restarts: u32,
) -> Result<Started, RuntimeError> {
    remove_keeping_logs(rt, &spec.id, Duration::from_secs(1)).await?;
    tracing::info!(container = %spec.id, image = %spec.image, "recreating container from the updated image");
    create_counted(rt, spec, restarts).await
}

async fn create_counted(
    rt: &ContainerdRuntime,
    spec: &ContainerSpec,
    restarts: u32,
) -> Result<Started, RuntimeError> {
    validate_container_id(&spec.id).map_err(RuntimeError::InvalidSpec)?;
    let image = resolve_image(rt, &spec.image).await?;
    let host = host_facts(spec)?;
    let oci = build_spec(spec, &image.config, rt.namespace(), &host)?;
    let spec_json =
        serde_json::to_vec(&oci).map_err(|e| RuntimeError::InvalidSpec(e.to_string()))?;
    let labels = HashMap::from([
        (LABEL_WORKLOAD.to_string(), spec.workload.clone()),
        (LABEL_REPLICA.to_string(), spec.replica.to_string()),
        (LABEL_GENERATION.to_string(), spec.generation.to_string()),
        (LABEL_RESTARTS.to_string(), restarts.to_string()),
    ]);
    let options = rt.config().runc_root.as_ref().map(|root| Any {
        type_url: "containerd.runc.v1.Options".to_string(),
        value: RuncOptions {
            root: root.to_string_lossy().into_owned(),
        }
        .encode_to_vec(),
    });
    let container = Container {
        id: spec.id.clone(),
        labels,
        image: image.name.clone(),
        runtime: Some(PbRuntime {
            name: RUNC_V2.to_string(),
            options,
        }),
        spec: Some(Any {
            type_url: SPEC_TYPE_URL.to_string(),
            value: spec_json,
        }),
        snapshotter: SNAPSHOTTER.to_string(),
        snapshot_key: spec.id.clone(),
        ..Default::default()
    };
    // The lease keeps the fresh snapshot from GC until the container holds it.
    let lease = create_lease(rt, "create").await?;
    let created = create_container(rt, &lease.id, &image.chain_id, container).await;
    delete_lease(rt, lease).await;
    created?;
    tracing::info!(container = %spec.id, workload = %spec.workload, replica = spec.replica, generation = spec.generation, image = %image.name, "container created");
    match start_task(rt, &spec.id).await {
        Ok(started) => Ok(started),
        Err(e) => {
            // Leave nothing behind that the next attempt would trip over.
            remove(rt, &spec.id, Duration::from_secs(1)).await.ok();
            Err(e)
        }
    }
}

async fn create_container(
    rt: &ContainerdRuntime,
    lease: &str,
    parent: &str,
    container: Container,
) -> Result<(), RuntimeError> {
    let svc = rt.svc_with_lease(lease)?;
    let prepare = PrepareSnapshotRequest {
        snapshotter: SNAPSHOTTER.to_string(),
        key: container.id.clone(),
        parent: parent.to_string(),
        labels: HashMap::new(),
    };
    let mut snaps = SnapshotsClient::new(svc.clone());
    if let Err(s) = snaps.prepare(prepare.clone()).await {
        if s.code() != Code::AlreadyExists {
            return Err(status_error("prepare container snapshot", s));
        }
        // A leftover from a crash between prepare and create.
        remove_snapshot(svc.clone(), &container.id).await?;
        snaps
            .prepare(prepare)
            .await
            .map_err(|s| status_error("prepare container snapshot", s))?;
    }
    let id = container.id.clone();
    if let Err(s) = containers(svc.clone())
        .create(CreateContainerRequest {
            container: Some(container),
        })
        .await
    {
        remove_snapshot(svc, &id).await.ok();
        return Err(status_error("create container", s));
    }
    Ok(())
}

/// Creates and starts the task with stdout/stderr appended to the log file
/// (the shim opens existing files without O_CREAT).
async fn start_task(rt: &ContainerdRuntime, id: &str) -> Result<Started, RuntimeError> {
    let svc = rt.svc();
    let log = logs::prepare_log_file(&rt.config().log_dir, id)?;
    let log = log.to_string_lossy().into_owned();
    let mounts = SnapshotsClient::new(svc.clone())
        .mounts(MountsRequest {
            snapshotter: SNAPSHOTTER.to_string(),
            key: id.to_string(),
        })
        .await
        .map_err(|s| status_error("snapshot mounts", s))?
        .into_inner()
        .mounts;
    let created = tasks(svc.clone())
        .create(CreateTaskRequest {
            container_id: id.to_string(),
            rootfs: mounts,
            stdout: log.clone(),
            stderr: log,
            ..Default::default()
        })
        .await
        .map_err(|s| status_error("create task", s))?
        .into_inner();
    if let Err(s) = tasks(svc.clone())
        .start(StartRequest {
            container_id: id.to_string(),
            exec_id: String::new(),
        })
        .await
    {
        delete_task(svc, id).await.ok();
        return Err(status_error("start task", s));
    }
    tracing::info!(container = %id, pid = created.pid, "task started");
    Ok(Started {
        container_id: id.to_string(),
        pid: created.pid,
    })
}

/// Deletes the task; returns its exit code, or None if there was none.
async fn delete_task(svc: Svc, id: &str) -> Result<Option<i32>, RuntimeError> {
    match tasks(svc)
        .delete(DeleteTaskRequest {
            container_id: id.to_string(),
        })
        .await
    {
        Ok(r) => Ok(Some(r.into_inner().exit_status as i32)),
        Err(s) if s.code() == Code::NotFound => Ok(None),
        Err(s) => Err(status_error("delete task", s)),
    }
}

pub(crate) async fn restart(
    rt: &ContainerdRuntime,
    id: &str,
    restarts: u32,
) -> Result<Started, RuntimeError> {
    let svc = rt.svc();
    delete_task(svc.clone(), id).await?;
    let container = Container {
        id: id.to_string(),
        labels: HashMap::from([(LABEL_RESTARTS.to_string(), restarts.to_string())]),
        ..Default::default()
    };
    containers(svc)
        .update(UpdateContainerRequest {
            container: Some(container),
            update_mask: Some(prost_types::FieldMask {
                paths: vec![format!("labels.{LABEL_RESTARTS}")],
            }),
        })
        .await
        .map_err(|s| match s.code() {
            Code::NotFound => RuntimeError::NotFound(id.to_string()),
            _ => status_error("update container", s),
        })?;
    start_task(rt, id).await
}

async fn wait_exit(svc: Svc, id: &str, limit: Duration) -> Result<Option<i32>, RuntimeError> {
    wait_process(svc, id, "", limit).await
}

/// Waits up to `limit` for the task (`exec_id` empty) or an exec'd process
/// to exit; None if it did not (or there is none).
pub(crate) async fn wait_process(
    svc: Svc,
    id: &str,
    exec_id: &str,
    limit: Duration,
) -> Result<Option<i32>, RuntimeError> {
    let mut client = tasks(svc);
    let wait = client.wait(WaitRequest {
        container_id: id.to_string(),
        exec_id: exec_id.to_string(),
    });
    match tokio::time::timeout(limit, wait).await {
        Err(_) => Ok(None),
        Ok(Ok(r)) => Ok(Some(r.into_inner().exit_status as i32)),
        Ok(Err(s)) if s.code() == Code::NotFound => Ok(None),
        Ok(Err(s)) => Err(status_error("wait task", s)),
    }
}

async fn kill(svc: Svc, id: &str, signal: u32, all: bool) -> Result<(), RuntimeError> {
    kill_process(svc, id, "", signal, all).await
}

pub(crate) async fn kill_process(
    svc: Svc,
    id: &str,
    exec_id: &str,
    signal: u32,
    all: bool,
) -> Result<(), RuntimeError> {
    match tasks(svc)
        .kill(KillRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
            signal,
            all,
        })
        .await
    {
        Ok(_) => Ok(()),
        // Already gone or already exited: nothing to signal.
        Err(s) if matches!(s.code(), Code::NotFound | Code::FailedPrecondition) => Ok(()),
        Err(s) => Err(status_error("kill task", s)),
    }
}

/// SIGTERM, `grace`, then SIGKILL to every process of the task; the task
/// and the container stay (exited), to be restarted or removed.
async fn stop_live_task(svc: Svc, id: &str, grace: Duration) -> Result<Option<i32>, RuntimeError> {
    kill(svc.clone(), id, 15, false).await?;
    let mut code = wait_exit(svc.clone(), id, grace).await?;
    if code.is_none() {
        tracing::info!(container = %id, grace_secs = grace.as_secs(), "grace period over, killing");
        kill(svc.clone(), id, 9, true).await?;
        code = wait_exit(svc, id, Duration::from_secs(30)).await?;
    }
    Ok(code)
}

/// Stops the task if it is live, keeping the container.
pub(crate) async fn stop_task(
    rt: &ContainerdRuntime,
    id: &str,
    grace: Duration,
) -> Result<Option<i32>, RuntimeError> {
    let svc = rt.svc();
    if task_is_live(svc.clone(), id).await? {
        let code = stop_live_task(svc, id, grace).await?;
        tracing::info!(container = %id, exit_code = ?code, "task stopped");
        return Ok(code);
    }
    Ok(None)
}

/// Whether the container has a task that has not exited.
async fn task_is_live(svc: Svc, id: &str) -> Result<bool, RuntimeError> {
    let status = match tasks(svc)
        .get(GetRequest {
            container_id: id.to_string(),
            exec_id: String::new(),
        })
        .await
    {
        Ok(r) => r.into_inner().process.map(|p| p.status),
        Err(s) if s.code() == Code::NotFound => None,
        Err(s) => return Err(status_error("get task", s)),
    };
    Ok(status.is_some_and(|status| {
        [
            TaskStatus::Running,
            TaskStatus::Created,
            TaskStatus::Paused,
            TaskStatus::Pausing,
        ]
        .iter()
        .any(|s| *s as i32 == status)
    }))
}

pub(crate) async fn remove(
    rt: &ContainerdRuntime,
    id: &str,
    grace: Duration,
) -> Result<Option<i32>, RuntimeError> {
    let code = remove_keeping_logs(rt, id, grace).await?;
    logs::remove_log_files(&rt.config().log_dir, id);
    tracing::info!(container = %id, exit_code = ?code, "container removed");
    Ok(code)
}

async fn remove_keeping_logs(
    rt: &ContainerdRuntime,
    id: &str,
    grace: Duration,
) -> Result<Option<i32>, RuntimeError> {
    let svc = rt.svc();
    let mut code = None;
    if task_is_live(svc.clone(), id).await? {
        code = stop_live_task(svc.clone(), id, grace).await?;
    }
    let deleted = delete_task(svc.clone(), id).await?;
    code = code.or(deleted);
    match containers(svc.clone())
        .delete(DeleteContainerRequest { id: id.to_string() })
        .await
    {
        Ok(_) => {}
        Err(s) if s.code() == Code::NotFound => {}
        Err(s) => return Err(status_error("delete container", s)),
    }
    remove_snapshot(svc, id).await?;
    Ok(code)
}

pub(crate) async fn list(rt: &ContainerdRuntime) -> Result<Vec<ActualContainer>, RuntimeError> {
    let svc = rt.svc();
    let all = containers(svc.clone())
        .list(ListContainersRequest { filters: vec![] })
        .await
        .map_err(|s| status_error("list containers", s))?
        .into_inner()
        .containers;
    let procs = tasks(svc)
        .list(ListTasksRequest {
            filter: String::new(),
        })
        .await
        .map_err(|s| status_error("list tasks", s))?
        .into_inner()
        .tasks;
    // containerd 1.6 fills only `id` (the init process id is the container id).
    let procs: HashMap<String, _> = procs
        .into_iter()
        .map(|p| {
            let id = if p.container_id.is_empty() {
                p.id.clone()
            } else {
                p.container_id.clone()
            };
            (id, p)
        })
        .collect();
    let mut out = Vec::new();
    for c in all {
        let Some(workload) = c.labels.get(LABEL_WORKLOAD) else {
            continue;
        };
        let num = |key: &str| {
            c.labels
                .get(key)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let (task, pid) = match procs.get(&c.id) {
            None => (TaskState::Missing, None),
            Some(p) => {
                let state = match TaskStatus::try_from(p.status).unwrap_or(TaskStatus::Unknown) {
                    TaskStatus::Created => TaskState::Created,
                    TaskStatus::Running => TaskState::Running,
                    TaskStatus::Paused | TaskStatus::Pausing => TaskState::Paused,
                    TaskStatus::Stopped => TaskState::Exited {
                        code: p.exit_status as i32,
                    },
                    TaskStatus::Unknown => TaskState::Unknown,
                };
                (state, (p.pid != 0).then_some(p.pid))
            }
        };
        logs::rotate_if_needed(&rt.config().log_dir, &c.id, rt.config().max_log_bytes);
        out.push(ActualContainer {
            id: c.id.clone(),
            workload: workload.clone(),
            replica: num(LABEL_REPLICA) as u32,
            generation: num(LABEL_GENERATION),
            image: normalize_image_ref(&c.image),
            restarts: num(LABEL_RESTARTS) as u32,
            task,
            pid,
        });
    }
    Ok(out)
}

/// Subscribes to `/tasks/exit` in our namespace and forwards init-process
/// exits; the channel closes when containerd's stream ends or cannot be
/// opened. The call runs in the background because containerd sends the
/// response headers only with the first event, so awaiting it here would
/// block until something exits.
pub(crate) async fn exits(
    rt: &ContainerdRuntime,
) -> Result<mpsc::Receiver<ExitEvent>, RuntimeError> {
    let filter = format!("namespace=={},topic==\"/tasks/exit\"", rt.namespace());
    let mut client = EventsClient::new(rt.svc());
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let mut stream = match client
            .subscribe(SubscribeRequest {
                filters: vec![filter],
            })
            .await
        {
            Ok(s) => s.into_inner(),
            Err(status) => {
                tracing::debug!(error = %status, "event subscription failed");
                return;
            }
        };
        loop {
            let envelope = match stream.message().await {
                Ok(Some(e)) => e,
                Ok(None) => break,
                Err(status) => {
                    tracing::debug!(error = %status, "event stream ended");
                    break;
                }
            };
            let Some(any) = envelope.event else { continue };
            let Ok(exit) = TaskExit::decode(any.value.as_slice()) else {
                tracing::warn!(topic = %envelope.topic, "undecodable task exit event");
                continue;
            };
            if !exit.id.is_empty() && exit.id != exit.container_id {
                continue; // an exec'd process, not the container's init
            }
            let event = ExitEvent {
                container_id: exit.container_id,
                pid: exit.pid,
                exit_code: exit.exit_status as i32,
            };
            if tx.send(event).await.is_err() {
                break;
            }
        }
    });
    Ok(rx)
}
