//! Test support shared with the workspace's end-to-end tests: a private
//! containerd per test and a busybox OCI archive built from the host's
//! busybox-static, and a loopback registry. Never uses the system
//! containerd or any network beyond 127.0.0.1.

mod archive;
mod registry;

pub use archive::{
    busybox_oci_archive, busybox_oci_archive_marked, busybox_oci_archive_with_healthcheck,
    BusyboxArchive,
};
pub use registry::LoopbackRegistry;

use crate::containerd::{ContainerdConfig, ContainerdRuntime};
use crate::runtime::{Runtime, RuntimeError};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Why a test fixture could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TestingError {
    #[error("the `containerd` binary was not found on PATH; install containerd (Debian: apt-get install containerd) to run these tests")]
    ContainerdMissing,
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the `docker-registry` binary was not found on PATH; install it (Debian: apt-get install docker-registry) to run the registry tests")]
    RegistryMissing,
    #[error("the `skopeo` binary was not found on PATH; install it (Debian: apt-get install skopeo) to run the registry tests")]
    SkopeoMissing,
    #[error("loopback registry: {0}")]
    Registry(String),
    #[error("test fixture did not come up: {0}")]
    NotReady(String),
    #[error("{0}")]
    Archive(String),
}

fn io(context: impl Into<String>, source: std::io::Error) -> TestingError {
    TestingError::Io {
        context: context.into(),
        source,
    }
}

/// A containerd daemon of our own, rooted in a test directory. On drop it
/// removes every gantry container in every namespace, then kills the daemon
/// by its own pid. Drop it before deleting its directory (declare it before
/// the `TempDir` in a struct), or the cleanup cannot reach its socket.
pub struct PrivateContainerd {
    dir: PathBuf,
    child: Option<Child>,
}

impl PrivateContainerd {
    /// Starts containerd with root, state and every socket under `dir`, and
    /// waits until its API answers.
    pub async fn start(dir: impl AsRef<Path>) -> Result<Self, TestingError> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| io(format!("creating {}", dir.display()), e))?;
        let mut this = PrivateContainerd { dir, child: None };
        this.spawn().await?;
        Ok(this)
    }

    fn config_toml(&self) -> String {
        let d = self.dir.display();
        format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.internal.v1.opt",
  "io.containerd.internal.v1.restart",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = "{d}/containerd.sock"
  tcp_address = ""

[ttrpc]
  address = "{d}/containerd.sock.ttrpc"

[debug]
  address = "{d}/debug.sock"
  level = "info"

[metrics]
  address = ""
"#
        )
    }

    async fn spawn(&mut self) -> Result<(), TestingError> {
        let config = self.dir.join("config.toml");
        std::fs::write(&config, self.config_toml())
            .map_err(|e| io("writing containerd config", e))?;
        let log_path = self.dir.join("containerd.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| io("opening containerd log", e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| io("opening containerd log", e))?;
        // Its own process group: a Ctrl-C at the terminal (`gantry dev`)
        // must not kill containerd before we have removed our containers.
        use std::os::unix::process::CommandExt;
        let child = Command::new("containerd")
            .process_group(0)
            .arg("--config")
            .arg(&config)
            .arg("--root")
            .arg(self.dir.join("root"))
            .arg("--state")
            .arg(self.dir.join("state"))
            .arg("--address")
            .arg(self.socket())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => TestingError::ContainerdMissing,
                _ => io("spawning containerd", e),
            })?;
        self.child = Some(child);
        let rt = ContainerdRuntime::new(self.config("gantry-probe"))
            .map_err(|e| TestingError::NotReady(e.to_string()))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
                    let tail: String = tail.lines().rev().take(20).collect::<Vec<_>>().join("\n");
                    return Err(TestingError::NotReady(format!(
                        "containerd exited with {status}; log (last lines first):\n{tail}"
                    )));
                }
            }
            match rt.check().await {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    self.kill();
                    return Err(TestingError::NotReady(e.to_string()));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    /// The daemon's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// A runtime config for `namespace`, with logs and runc state in the
    /// test directory.
    pub fn config(&self, namespace: &str) -> ContainerdConfig {
        config_for(&self.dir, namespace)
    }

    /// Kills the daemon (SIGKILL, by pid) like a crash: shims and their
    /// containers keep running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the daemon again on the same directories.
    pub async fn restart(&mut self) -> Result<(), TestingError> {
        self.kill();
        self.spawn().await
    }
}

impl Drop for PrivateContainerd {
    /// Removes every gantry container in every namespace first, so that no
    /// shim or container outlives a test, even a failed one.
    fn drop(&mut self) {
        if self.child.is_none() {
            // A test killed the daemon and ended before restarting it: its
            // containers still run under their shims, so bring it back to
            // remove them.
            std::thread::scope(|scope| {
                let _ = scope
                    .spawn(|| {
                        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                        else {
                            return;
                        };
                        let _ = rt.block_on(self.spawn());
                    })
                    .join();
            });
        }
        if self.child.is_some() {
            let socket = self.socket();
            let dir = self.dir.clone();
            let _ = std::thread::spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                rt.block_on(remove_everything(socket, dir));
            })
            .join();
        }
        self.kill();
    }
}

fn config_for(dir: &Path, namespace: &str) -> ContainerdConfig {
    let mut config = ContainerdConfig::new(dir.join("logs").join(namespace));
    config.socket = dir.join("containerd.sock");
    config.namespace = namespace.to_string();
    config.runc_root = Some(dir.join("runc"));
    config
}

async fn remove_everything(socket: PathBuf, dir: PathBuf) {
    use containerd_client::services::v1::namespaces_client::NamespacesClient;
    use containerd_client::services::v1::ListNamespacesRequest;
    let Ok(channel) = containerd_client::connect(&socket).await else {
        return;
    };
    let Ok(list) = NamespacesClient::new(channel)
        .list(ListNamespacesRequest {
            filter: String::new(),
        })
        .await
    else {
        return;
    };
    for ns in list.into_inner().namespaces {
        if let Ok(rt) = ContainerdRuntime::new(config_for(&dir, &ns.name)) {
            if let Err(e) = remove_all(&rt).await {
                tracing::warn!(namespace = %ns.name, error = %e, "test cleanup failed");
            }
        }
    }
}

/// Stops and removes every gantry container in the runtime's namespace, so
/// tests leave no shims behind.
pub async fn remove_all(rt: &ContainerdRuntime) -> Result<(), RuntimeError> {
    for c in rt.list().await? {
        rt.remove(&c.id, Duration::from_millis(100)).await?;
    }
    Ok(())
}
