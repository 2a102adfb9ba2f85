//! A gateway's side of trust: its own certificate and key, the cluster's
//! CA bundle and cluster key as files in its data dir, the TLS configs
//! built from them (swapped in place when the certificate renews), the
//! leader's signing of joiners' and renewers' certificates, and the checks
//! of bearer and join tokens against the replicated state.
//!
//! The crypto itself (certificates, pinned verifiers, sealing, token
//! formats) lives in the `gantry-pki` crate; the records in
//! `state::trust`; who may call what in `api::auth`.

pub mod files;
pub mod issuer;
pub mod renewal;
pub mod tokens;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use gantry_pki::{ClusterKey, Credentials, Fingerprint};

use crate::state::NodeId;
use crate::tls::ServerTls;
use files::TrustFileError;

/// ALPN of every gantry client: HTTP/2 for gRPC.
pub fn alpn() -> Vec<Vec<u8>> {
    vec![b"h2".to_vec()]
}

/// ALPN of a gateway's and the hub's listener: HTTP/2 first (gRPC), and
/// HTTP/1.1 for plain clients of the web routes (a Prometheus scrape, curl).
pub fn server_alpn() -> Vec<Vec<u8>> {
    vec![b"h2".to_vec(), b"http/1.1".to_vec()]
}

/// How long certificates the cluster signs last; `GANTRY_TEST_CERT_LIFETIME`
/// (a humantime duration, hidden) shortens it so tests can watch renewals.
pub fn cert_lifetime() -> Duration {
    std::env::var("GANTRY_TEST_CERT_LIFETIME")
        .ok()
        .and_then(|v| humantime::parse_duration(&v).ok())
        .filter(|d| *d >= Duration::from_secs(10))
        .unwrap_or(Duration::from_secs(365 * 24 * 3600))
}

/// The cluster CA's lifetime (K3s and KubeEdge: 10 years).
pub const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// One running gateway's keys and certificates.
pub struct NodeTrust {
    pub data_dir: PathBuf,
    pub cluster_id: String,
    pub node_id: NodeId,
    ca_bundle: Vec<Vec<u8>>,
    ca_pin: Fingerprint,
    creds: RwLock<Arc<Credentials>>,
    cluster_key: RwLock<Option<Arc<ClusterKey>>>,
    /// What the listener presents; swapped by a renewal.
    pub server: ServerTls,
}

impl std::fmt::Debug for NodeTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeTrust")
            .field("node_id", &self.node_id)
            .field("ca", &self.ca_pin)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error(transparent)]
    Files(#[from] TrustFileError),
    #[error("{0}")]
    Pki(#[from] gantry_pki::PkiError),
    #[error("{0}")]
    Refused(String),
}

impl NodeTrust {
    /// Reads the data dir's PKI files and checks that they fit together and
    /// that the clock and the certificate allow starting.
    pub fn load(data_dir: &Path, cluster_id: &str, node_id: NodeId) -> Result<Self, TrustError> {
        let ca_bundle = files::read_ca_bundle(data_dir)?;
        let creds = files::read_credentials(data_dir)?;
        let cluster_key = files::read_cluster_key(data_dir)?;
        let ca_pin = ca_bundle
            .first()
            .map(|der| Fingerprint::of(der))
            .ok_or_else(|| TrustError::Refused(format!("{} holds no CA", files::CA_FILE)))?;
        check_startable(&ca_bundle, &creds, cluster_id, node_id)?;
        let server = ServerTls::new(server_config(&creds, &ca_bundle)?);
        Ok(Self {
            data_dir: data_dir.to_path_buf(),
            cluster_id: cluster_id.to_string(),
            node_id,
            ca_bundle,
            ca_pin,
            creds: RwLock::new(Arc::new(creds)),
            cluster_key: RwLock::new(cluster_key.map(Arc::new)),
            server,
        })
    }

    pub fn ca_bundle(&self) -> &[Vec<u8>] {
        &self.ca_bundle
    }

    /// SHA-256 of the cluster CA: the pin inside every token.
    pub fn ca_pin(&self) -> Fingerprint {
        self.ca_pin
    }

    pub fn credentials(&self) -> Arc<Credentials> {
        self.creds.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn cluster_key(&self) -> Option<Arc<ClusterKey>> {
        self.cluster_key
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Stores the cluster key (AddMember's answer) before the gateway counts
    /// itself a member.
    pub fn set_cluster_key(&self, key: ClusterKey) -> Result<(), TrustError> {
        files::write_cluster_key(&self.data_dir, &key)?;
        *self.cluster_key.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(key));
        Ok(())
    }

    /// A renewed certificate: written to disk first, then served to new
    /// connections. Client configs are the caller's (`PeerChannels`).
    pub fn install(&self, creds: Credentials) -> Result<Arc<Credentials>, TrustError> {
        files::write_credentials(&self.data_dir, &creds)?;
        let config = server_config(&creds, &self.ca_bundle)?;
        let creds = Arc::new(creds);
        *self.creds.write().unwrap_or_else(|p| p.into_inner()) = creds.clone();
        self.server.set(config);
        Ok(creds)
    }

    /// Opens a blob sealed in the state (`what` names the field it sits in).
    pub fn open_sealed(&self, what: &str, sealed_hex: &str) -> Result<Vec<u8>, TrustError> {
        let key = self.cluster_key().ok_or_else(|| {
            TrustError::Refused(
                "this gateway holds no cluster key yet (it is not a full member)".into(),
            )
        })?;
        let sealed = hex::decode(sealed_hex)
            .map_err(|e| TrustError::Refused(format!("sealed {what} is not hex: {e}")))?;
        Ok(key.open(&seal_aad(&self.cluster_id, what), &sealed)?)
    }

    pub fn seal(&self, what: &str, plaintext: &[u8]) -> Result<String, TrustError> {
        let key = self
            .cluster_key()
            .ok_or_else(|| TrustError::Refused("this gateway holds no cluster key yet".into()))?;
        Ok(hex::encode(
            key.seal(&seal_aad(&self.cluster_id, what), plaintext)?,
        ))
    }
}

/// A sealed blob is bound to its cluster and its field: copied elsewhere,
/// it does not open.
pub fn seal_aad(cluster_id: &str, what: &str) -> Vec<u8> {
    format!("gantry/{cluster_id}/{what}").into_bytes()
}

pub fn server_config(
    creds: &Credentials,
    ca_bundle: &[Vec<u8>],
) -> Result<Arc<rustls::ServerConfig>, TrustError> {
    Ok(gantry_pki::server_config(
        creds,
        Some(ca_bundle),
        server_alpn(),
    )?)
}

/// Refuses to start with a clock before the CA's validity (a gateway
/// without an RTC boots in 1970), with a certificate that expired while
/// the gateway was off, or with one that names another gateway.
fn check_startable(
    ca_bundle: &[Vec<u8>],
    creds: &Credentials,
    cluster_id: &str,
    node_id: NodeId,
) -> Result<(), TrustError> {
    let now = now_unix();
    if let Some(ca) = ca_bundle.first() {
        let ca = gantry_pki::cert_info(ca)?;
        if now < ca.not_before {
            return Err(TrustError::Refused(format!(
                "this machine's clock ({}) is before the cluster CA's validity ({}): is NTP up?",
                crate::state::quantity::format_epoch_ms((now.max(0) as u64) * 1000),
                crate::state::quantity::format_epoch_ms((ca.not_before.max(0) as u64) * 1000),
            )));
        }
    }
    let leaf = gantry_pki::cert_info(creds.leaf_der())?;
    if gantry_pki::node_id_of(creds.leaf_der(), cluster_id) != Some(node_id) {
        return Err(TrustError::Refused(format!(
            "{} names another gateway than this one (id {node_id})",
            files::NODE_FILE
        )));
    }
    if now >= leaf.not_after {
        return Err(TrustError::Refused(format!(
            "this gateway's certificate expired at {} while it was off; rejoin it: \
             `gantry leave NAME` on a member, then `gantry join` with a join token into an empty data dir",
            crate::state::quantity::format_epoch_ms((leaf.not_after.max(0) as u64) * 1000)
        )));
    }
    Ok(())
}

/// A secret inside a message that gets logged or formatted with `{:?}` on
/// some error path (a forwarded reply, a join request): it serialises as
/// itself but never prints.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
#[serde(transparent)]
pub struct Sensitive(pub String);

impl std::fmt::Debug for Sensitive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// The node id in a server name `n<id>.<cluster>.gantry`.
pub fn node_id_of_name(name: &str, cluster_id: &str) -> Option<NodeId> {
    let rest = name.strip_prefix('n')?;
    let (id, domain) = rest.split_once('.')?;
    let cluster = domain.strip_suffix(".gantry")?;
    if cluster != cluster_id || id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    id.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_parse_only_for_their_cluster() {
        assert_eq!(node_id_of_name("n12.abc.gantry", "abc"), Some(12));
        assert_eq!(node_id_of_name("n12.abd.gantry", "abc"), None);
        assert_eq!(node_id_of_name("gateway.gantry", "abc"), None);
        assert_eq!(node_id_of_name("n.abc.gantry", "abc"), None);
        assert_eq!(node_id_of_name("n1x.abc.gantry", "abc"), None);
        assert_eq!(format!("{:?}", Sensitive("secret".into())), "***");
    }
}
