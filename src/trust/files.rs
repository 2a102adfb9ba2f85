//! Where a gateway keeps its keys and credentials, and with which modes:
//!
//! ```text
//! DATA_DIR/             0700
//!   gantry.json         0600  config (no secret but registry credentials)
//!   join-token          0600  init only: the default join token to hand out
//!   admin-token         0600  this gateway's own admin token (local root)
//!   pki/ca.crt          0644  the cluster's CA bundle (public)
//!   pki/node.pem        0600  key + certificate chain, replaced atomically
//!   pki/cluster.key     0600  seals the secrets kept in the replicated state
//!   raft/               0700  RocksDB: hashes, pins and sealed blobs only
//! ```
//!
//! Every write goes through `write_durably` (temp file, fsync, rename,
//! fsync the directory), so a crash leaves the old file or the new one.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use gantry_pki::{ClusterKey, Credentials};

use crate::config::{write_durably, ConfigError};

pub const PKI_DIR: &str = "pki";
pub const CA_FILE: &str = "pki/ca.crt";
pub const NODE_FILE: &str = "pki/node.pem";
pub const CLUSTER_KEY_FILE: &str = "pki/cluster.key";
/// The CA key of a cluster whose `init` has not committed it yet (sealed
/// in the state afterwards, then this file goes).
pub const PENDING_CA_KEY_FILE: &str = "pki/ca.key.pending";
pub const ADMIN_TOKEN_FILE: &str = "admin-token";

#[derive(Debug, thiserror::Error)]
pub enum TrustFileError {
    #[error(transparent)]
    Io(#[from] ConfigError),
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("{path} is missing: {hint}")]
    Missing { path: PathBuf, hint: String },
}

fn read(path: &Path) -> Result<Option<String>, TrustFileError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(TrustFileError::Io(ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })),
    }
}

fn invalid(path: &Path, e: impl std::fmt::Display) -> TrustFileError {
    TrustFileError::Invalid {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Creates `dir` (and parents) and makes it 0700.
pub fn private_dir(dir: &Path) -> Result<(), ConfigError> {
    let err = |source| ConfigError::Write {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)
}

pub fn write_ca_bundle(data_dir: &Path, ca_certs_der: &[Vec<u8>]) -> Result<(), TrustFileError> {
    private_dir(&data_dir.join(PKI_DIR))?;
    let pem = gantry_pki::certs_to_pem(ca_certs_der);
    Ok(write_durably(
        &data_dir.join(CA_FILE),
        pem.as_bytes(),
        0o644,
    )?)
}

pub fn read_ca_bundle(data_dir: &Path) -> Result<Vec<Vec<u8>>, TrustFileError> {
    let path = data_dir.join(CA_FILE);
    let text = read(&path)?.ok_or_else(|| missing(&path))?;
    gantry_pki::certs_from_pem(&text).map_err(|e| invalid(&path, e))
}

pub fn write_credentials(data_dir: &Path, creds: &Credentials) -> Result<(), TrustFileError> {
    private_dir(&data_dir.join(PKI_DIR))?;
    Ok(write_durably(
        &data_dir.join(NODE_FILE),
        creds.to_pem().as_bytes(),
        0o600,
    )?)
}

pub fn read_credentials(data_dir: &Path) -> Result<Credentials, TrustFileError> {
    let path = data_dir.join(NODE_FILE);
    let text = read(&path)?.ok_or_else(|| missing(&path))?;
    Credentials::from_pem(&text).map_err(|e| invalid(&path, e))
}

pub fn write_cluster_key(data_dir: &Path, key: &ClusterKey) -> Result<(), TrustFileError> {
    private_dir(&data_dir.join(PKI_DIR))?;
    Ok(write_durably(
        &data_dir.join(CLUSTER_KEY_FILE),
        format!("{}\n", key.to_hex()).as_bytes(),
        0o600,
    )?)
}

/// None until the gateway became a member (the key comes with AddMember).
pub fn read_cluster_key(data_dir: &Path) -> Result<Option<ClusterKey>, TrustFileError> {
    let path = data_dir.join(CLUSTER_KEY_FILE);
    match read(&path)? {
        Some(text) => ClusterKey::from_hex(text.trim())
            .map(Some)
            .map_err(|e| invalid(&path, e)),
        None => Ok(None),
    }
}

pub fn write_secret_file(path: &Path, text: &str) -> Result<(), TrustFileError> {
    Ok(write_durably(path, format!("{text}\n").as_bytes(), 0o600)?)
}

pub fn read_secret_file(path: &Path) -> Result<Option<String>, TrustFileError> {
    Ok(read(path)?.map(|t| t.trim().to_string()))
}

pub fn remove_file(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot remove"),
    }
}

fn missing(path: &Path) -> TrustFileError {
    TrustFileError::Missing {
        path: path.to_path_buf(),
        hint: "this data dir holds no TLS identity; it was made by a gantry without TLS, \
               or it is damaged: make a new gateway (`gantry leave NAME` on a member, then \
               `gantry join` with a join token into an empty data dir)"
            .into(),
    }
}
