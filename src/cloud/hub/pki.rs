//! The hub's own trust, separate from any site's: a CA made at first start
//! (or the operator's certificate), a server certificate naming `hub.gantry`
//! plus `--tls-san` names and addresses, and an admin token. Sites pin the
//! hub CA through the fingerprint in their site token.
//!
//! ```text
//! HUB_DATA/        0700
//!   pki/ca.crt     0644   the hub CA (public; its fingerprint is in site tokens)
//!   pki/ca.key     0600
//!   pki/server.pem 0600   server key + chain [leaf, CA], issued at every start
//!   admin-token    0600   the hub admin credential (`gantry hub ... --data-dir`)
//!   hub-db/               RocksDB: site records, token hashes, reports
//! ```

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use gantry_pki::{CertificateAuthority, Credentials, Fingerprint, LeafProfile, NodeKey};

use crate::trust::files::{private_dir, write_secret_file};

pub const CA_FILE: &str = "pki/ca.crt";
pub const CA_KEY_FILE: &str = "pki/ca.key";
pub const SERVER_FILE: &str = "pki/server.pem";
pub const ADMIN_TOKEN_FILE: &str = "admin-token";

const SERVER_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

/// Where the hub's server identity comes from.
#[derive(Debug, Clone, Default)]
pub struct HubTlsOptions {
    /// Extra DNS names or IP addresses for the server certificate.
    pub sans: Vec<String>,
    /// The operator's certificate chain (leaf first, ending with its CA)
    /// and key, instead of the hub's own CA.
    pub cert: Option<std::path::PathBuf>,
    pub key: Option<std::path::PathBuf>,
}

/// The hub's TLS server config and the fingerprint sites pin.
pub struct HubTls {
    pub server: Arc<rustls::ServerConfig>,
    pub ca: Fingerprint,
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Loads (or makes, on first start) the hub's CA and server certificate.
pub fn load_or_create(data_dir: &Path, listen: &str, options: &HubTlsOptions) -> Result<HubTls> {
    private_dir(data_dir)?;
    private_dir(&data_dir.join("pki"))?;
    let creds = match (&options.cert, &options.key) {
        (Some(cert), Some(key)) => {
            let chain = gantry_pki::certs_from_pem(&read(cert)?)
                .with_context(|| format!("{}", cert.display()))?;
            let key =
                NodeKey::from_pem(&read(key)?).with_context(|| format!("{}", key.display()))?;
            if chain.len() < 2 {
                bail!(
                    "--tls-cert {}: give the chain, the server certificate then its CA, so sites can pin the CA",
                    cert.display()
                );
            }
            Credentials { key, chain }
        }
        (None, None) => own_server_cert(data_dir, listen, &options.sans)?,
        _ => bail!("--tls-cert and --tls-key go together"),
    };
    let ca_der = creds
        .chain
        .last()
        .context("the server certificate chain is empty")?;
    let ca = Fingerprint::of(ca_der);
    let server = gantry_pki::server_config(&creds, None, crate::trust::server_alpn())?;
    Ok(HubTls { server, ca })
}

fn hub_names(listen: &str, sans: &[String]) -> (Vec<String>, Vec<IpAddr>) {
    let mut dns = vec![gantry_pki::HUB_NAME.to_string()];
    let mut ips = Vec::new();
    let listen_ip = listen
        .parse::<std::net::SocketAddr>()
        .ok()
        .map(|a| a.ip())
        .filter(|ip| !ip.is_unspecified());
    for name in sans.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        match name.parse::<IpAddr>() {
            Ok(ip) => ips.push(ip),
            Err(_) => dns.push(name.to_string()),
        }
    }
    if let Some(ip) = listen_ip {
        ips.push(ip);
    }
    dns.sort();
    dns.dedup();
    ips.sort();
    ips.dedup();
    (dns, ips)
}

fn own_server_cert(data_dir: &Path, listen: &str, sans: &[String]) -> Result<Credentials> {
    let ca_path = data_dir.join(CA_FILE);
    let key_path = data_dir.join(CA_KEY_FILE);
    let ca = if ca_path.exists() {
        CertificateAuthority::from_pem(&read(&ca_path)?, &read(&key_path)?)
            .context("the hub CA in the data dir")?
    } else {
        let ca = CertificateAuthority::generate("gantry hub CA", crate::trust::CA_LIFETIME)?;
        write_secret_file(&key_path, &ca.key_pem())?;
        crate::config::write_durably(&ca_path, ca.cert_pem().as_bytes(), 0o644)?;
        println!("hub CA created: sha256 {}", ca.fingerprint());
        ca
    };
    // A fresh server certificate at every start: names follow the flags,
    // and a hub that restarts at least yearly never serves an expired one.
    let (dns, ips) = hub_names(listen, sans);
    let server_path = data_dir.join(SERVER_FILE);
    let key = NodeKey::generate()?;
    let issued = ca.issue(
        &key,
        &LeafProfile {
            common_name: gantry_pki::HUB_NAME.to_string(),
            dns_names: dns,
            ip_addresses: ips,
            lifetime: SERVER_LIFETIME,
            server: true,
            client: false,
        },
    )?;
    let creds = Credentials {
        key,
        chain: vec![issued.cert_der, ca.cert_der().to_vec()],
    };
    write_secret_file(&server_path, &creds.to_pem())?;
    Ok(creds)
}
