//! Processes run inside a running container (exec probes) and stopping a
//! task while keeping its container (a failed liveness probe).

use super::task::{kill_process, tasks, wait_process};
use super::{status_error, ContainerdRuntime};
use crate::runtime::{ExecOutcome, RuntimeError};
use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::{
    DeleteProcessRequest, ExecProcessRequest, GetContainerRequest, StartRequest,
};
use prost_types::Any;
use std::path::PathBuf;
use std::time::Duration;
use tonic::Code;

const PROCESS_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";
/// What an exec's verdict keeps of its output: enough for a reason line.
const OUTPUT_TAIL: usize = 512;

/// A scratch file the shim writes the exec's output into, removed when
/// dropped.
struct OutputFile(PathBuf);

impl Drop for OutputFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The container's own process (user, env, cwd, capabilities) running
/// `command` instead.
async fn process_spec(
    rt: &ContainerdRuntime,
    id: &str,
    command: &[String],
) -> Result<Vec<u8>, RuntimeError> {
    let container = ContainersClient::new(rt.svc())
        .get(GetContainerRequest { id: id.to_string() })
        .await
        .map_err(|s| match s.code() {
            Code::NotFound => RuntimeError::NotFound(id.to_string()),
            _ => status_error("get container", s),
        })?
        .into_inner()
        .container
        .ok_or_else(|| RuntimeError::NotFound(id.to_string()))?;
    let spec = container
        .spec
        .ok_or_else(|| RuntimeError::InvalidSpec(format!("container {id} has no spec")))?;
    let spec: serde_json::Value = serde_json::from_slice(&spec.value)
        .map_err(|e| RuntimeError::InvalidSpec(format!("container {id}'s spec: {e}")))?;
    let mut process = spec
        .get("process")
        .cloned()
        .ok_or_else(|| RuntimeError::InvalidSpec(format!("container {id} has no process")))?;
    process["args"] = serde_json::json!(command);
    process["terminal"] = serde_json::json!(false);
    serde_json::to_vec(&process)
        .map_err(|e| RuntimeError::InvalidSpec(format!("exec process for {id}: {e}")))
}

pub(crate) async fn exec(
    rt: &ContainerdRuntime,
    id: &str,
    command: &[String],
    timeout: Duration,
) -> Result<ExecOutcome, RuntimeError> {
    if command.is_empty() {
        return Err(RuntimeError::InvalidSpec("an exec needs a command".into()));
    }
    let process = process_spec(rt, id, command).await?;
    let exec_id = format!("probe-{:016x}", rand::random::<u64>());
    let output = OutputFile(rt.config().log_dir.join(format!("{id}.{exec_id}.out")));
    // The shim opens stdio paths without O_CREAT.
    tokio::fs::File::create(&output.0)
        .await
        .map_err(|e| RuntimeError::io(format!("create {}", output.0.display()), e))?;
    let path = output.0.to_string_lossy().into_owned();
    let svc = rt.svc();
    tasks(svc.clone())
        .exec(ExecProcessRequest {
            container_id: id.to_string(),
            stdin: String::new(),
            terminal: false,
            stdout: path.clone(),
            stderr: path,
            spec: Some(Any {
                type_url: PROCESS_TYPE_URL.to_string(),
                value: process,
            }),
            exec_id: exec_id.clone(),
        })
        .await
        .map_err(|s| status_error("exec", s))?;
    let outcome = run_to_end(rt, id, &exec_id, timeout).await;
    // The process's record lives in the shim until deleted.
    let deleted = tasks(svc)
        .delete_process(DeleteProcessRequest {
            container_id: id.to_string(),
            exec_id: exec_id.clone(),
        })
        .await;
    if let Err(s) = deleted {
        if s.code() != Code::NotFound {
            tracing::debug!(container = %id, exec = %exec_id, error = %s, "exec not deleted");
        }
    }
    let exit_code = outcome?;
    let tail = read_tail(&output.0).await.unwrap_or_default();
    Ok(ExecOutcome {
        exit_code,
        output: String::from_utf8_lossy(&tail).trim().to_string(),
    })
}

/// The last `OUTPUT_TAIL` bytes of the file, however much a check wrote.
async fn read_tail(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut file = tokio::fs::File::open(path).await?;
    let len = file.metadata().await?.len();
    file.seek(std::io::SeekFrom::Start(
        len.saturating_sub(OUTPUT_TAIL as u64),
    ))
    .await?;
    let mut tail = Vec::with_capacity(OUTPUT_TAIL);
    file.read_to_end(&mut tail).await?;
    Ok(tail)
}

/// Starts the exec'd process and waits for it, killing it at `timeout`.
async fn run_to_end(
    rt: &ContainerdRuntime,
    id: &str,
    exec_id: &str,
    timeout: Duration,
) -> Result<i32, RuntimeError> {
    let svc = rt.svc();
    tasks(svc.clone())
        .start(StartRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
        })
        .await
        .map_err(|s| status_error("start exec", s))?;
    if let Some(code) = wait_process(svc.clone(), id, exec_id, timeout).await? {
        return Ok(code);
    }
    kill_process(svc.clone(), id, exec_id, 9, false).await?;
    wait_process(svc, id, exec_id, Duration::from_secs(5)).await?;
    Err(RuntimeError::Engine {
        op: "exec".into(),
        message: format!("timed out after {timeout:?}"),
    })
}
