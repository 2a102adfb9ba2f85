//! A gateway's own configuration, kept in `DATA_DIR/gantry.json` (0600: it
//! may hold registry credentials) so that `gantry run --data-dir DIR`
//! restarts it from the data dir alone. It holds no token: the join token
//! is not needed once joined, and keys live under `pki/` (`trust::files`).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::state::quantity::HumanDuration;
use crate::state::Capacity;

pub const CONFIG_FILE: &str = "gantry.json";
pub const TOKEN_FILE: &str = "join-token";
pub const RAFT_DIR: &str = "raft";
pub const DEFAULT_CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";
pub const DEFAULT_CONTAINERD_NAMESPACE: &str = "gantry";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path} is not readable: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is corrupted ({source}); refusing to start")]
    Corrupted {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} was made by a gantry without TLS (before trust was added); it cannot start: make a new cluster with `gantry init`, or join this gateway with a new join token into an empty data dir")]
    PreTls { path: PathBuf },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    pub cluster_id: String,
    pub node_id: u64,
    pub name: String,
    /// The address actually bound (a requested port 0 resolved).
    pub listen: String,
    /// The address other gateways and clients use.
    pub advertise: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// `--capacity`, when given; otherwise discovered at every start.
    #[serde(default)]
    pub capacity_override: Option<CapacityOverride>,
    #[serde(default)]
    pub devices: Vec<String>,
    /// Gateways to ask when this one needs the leader and knows nobody yet.
    #[serde(default)]
    pub peers: Vec<String>,
    /// False until the leader added it to the Raft membership.
    pub member: bool,
    #[serde(default = "default_socket")]
    pub containerd_socket: String,
    #[serde(default = "default_namespace")]
    pub containerd_namespace: String,
    /// Between SIGTERM and SIGKILL when a container is stopped.
    #[serde(default = "default_stop_grace")]
    pub stop_grace: HumanDuration,
    /// Below this many free bytes in the data dir the gateway refuses
    /// writes (`cluster::disk_space`); 0 turns the watch off.
    #[serde(default = "default_disk_reserve")]
    pub disk_reserve_bytes: u64,
    /// Registries allowed over plain HTTP and credentials per registry
    /// (edit `registry.credentials` here: `{"host:port": ["user", "pass"]}`).
    #[serde(default)]
    pub registry: gantry_node::RegistryConfig,
}

fn default_stop_grace() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(10))
}

fn default_disk_reserve() -> u64 {
    crate::cluster::disk_space::DEFAULT_RESERVE_BYTES
}

fn default_socket() -> String {
    DEFAULT_CONTAINERD_SOCKET.into()
}

fn default_namespace() -> String {
    DEFAULT_CONTAINERD_NAMESPACE.into()
}

/// Either part may be given alone; the other is discovered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CapacityOverride {
    pub cpu_millis: Option<u64>,
    pub memory_bytes: Option<u64>,
}

impl CapacityOverride {
    pub fn resolve(&self, discovered: Capacity) -> Capacity {
        Capacity {
            cpu_millis: self.cpu_millis.unwrap_or(discovered.cpu_millis),
            memory_bytes: self.memory_bytes.unwrap_or(discovered.memory_bytes),
        }
    }
}

impl GatewayConfig {
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(CONFIG_FILE)
    }

    /// The gateway's config, or None when the data dir holds none.
    pub fn load(data_dir: &Path) -> Result<Option<Self>, ConfigError> {
        let path = Self::path(data_dir);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        // A config from before TLS carried the join token.
        let pre_tls = serde_json::from_slice::<serde_json::Value>(&bytes)
            .is_ok_and(|v| v.get("token").is_some());
        if pre_tls {
            return Err(ConfigError::PreTls { path });
        }
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| ConfigError::Corrupted { path, source })
    }

    /// Atomic and durable: temp file, fsync, rename, fsync the directory.
    pub fn save(&self, data_dir: &Path) -> Result<(), ConfigError> {
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| ConfigError::Write {
            path: Self::path(data_dir),
            source: std::io::Error::other(e),
        })?;
        write_durably(&Self::path(data_dir), &bytes, 0o600)
    }
}

pub fn write_durably(path: &Path, bytes: &[u8], mode: u32) -> Result<(), ConfigError> {
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| ConfigError::Write {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    file.write_all(bytes).map_err(err)?;
    file.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(err)?;
    }
    Ok(())
}
