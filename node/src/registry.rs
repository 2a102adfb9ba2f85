//! Registry access for image pulls: which registries may be reached over
//! plain HTTP, which credentials to present, and a client built from that.
//! The containerd side (content store, unpack) lives in
//! `containerd::pull`; this module only talks to registries.

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

/// How this gateway reaches image registries. Part of the gateway config.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// Registries (`host:port`, as written in image references) that are
    /// reached over plain HTTP. Every other registry is reached over HTTPS
    /// only: a TLS failure is an error, never a reason to retry in clear.
    pub insecure: Vec<String>,
    /// Basic-auth credentials per registry (`host:port` -> (user, password)).
    /// Registries without an entry are accessed anonymously.
    pub credentials: BTreeMap<String, (String, String)>,
    /// When not empty, the only registries this gateway may contact: a
    /// `host:port` entry matches exactly, a bare `host` any port of it. A
    /// gateway on a site network can be kept off the internet this way.
    pub allowed: Vec<String>,
}

/// Passwords must not end up in logs.
impl std::fmt::Debug for RegistryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let users: BTreeMap<&String, &String> = self
            .credentials
            .iter()
            .map(|(reg, (user, _))| (reg, user))
            .collect();
        f.debug_struct("RegistryConfig")
            .field("insecure", &self.insecure)
            .field("allowed", &self.allowed)
            .field("credentials (users)", &users)
            .finish()
    }
}

/// Docker Hub is written `docker.io` in references but served from
/// `index.docker.io`; config entries may use either.
fn aliases(registry: &str) -> Vec<&str> {
    match registry {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" => {
            vec!["docker.io", "index.docker.io", "registry-1.docker.io"]
        }
        other => vec![other],
    }
}

impl RegistryConfig {
    /// Whether this gateway may contact `registry` at all.
    pub fn is_allowed(&self, registry: &str) -> bool {
        if self.allowed.is_empty() {
            return true;
        }
        aliases(registry).iter().any(|a| {
            let host = a.rsplit_once(':').map_or(*a, |(h, _)| h);
            self.allowed.iter().any(|entry| entry == a || entry == host)
        })
    }

    /// Whether `registry` may be contacted over plain HTTP.
    pub fn is_insecure(&self, registry: &str) -> bool {
        aliases(registry)
            .iter()
            .any(|a| self.insecure.iter().any(|i| i == a))
    }

    pub(crate) fn auth_for(&self, registry: &str) -> RegistryAuth {
        aliases(registry)
            .iter()
            .find_map(|a| self.credentials.get(*a))
            .map(|(user, pass)| RegistryAuth::Basic(user.clone(), pass.clone()))
            .unwrap_or(RegistryAuth::Anonymous)
    }

    /// A client that uses HTTP for the insecure registries only. The
    /// client's own platform resolver is unused: we resolve indexes
    /// ourselves so the exact registry bytes reach the content store.
    ///
    /// Building one loads and parses the system's CA bundle (some 150 PEM
    /// certificates). Built for every pull, hundreds of instances retrying
    /// an unreachable registry kept a 2-core gateway so busy parsing PEM
    /// that Raft went unserved for seconds; so clients are kept, one per
    /// set of plain-HTTP registries (its connection pool and registry
    /// tokens are then shared too).
    pub(crate) fn client(&self) -> Client {
        static CLIENTS: Mutex<Vec<(Vec<String>, Client)>> = Mutex::new(Vec::new());
        let mut plain: Vec<String> = Vec::new();
        for reg in &self.insecure {
            plain.extend(aliases(reg).into_iter().map(str::to_string));
        }
        let mut clients = CLIENTS.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, client)) = clients.iter().find(|(key, _)| *key == plain) {
            return client.clone();
        }
        let client = Client::new(ClientConfig {
            protocol: ClientProtocol::HttpsExcept(plain.clone()),
            platform_resolver: None,
            connect_timeout: Some(Duration::from_secs(10)),
            read_timeout: Some(Duration::from_secs(60)),
            ..ClientConfig::default()
        });
        // Configs change rarely; a handful of them is all a process sees.
        if clients.len() >= 8 {
            clients.remove(0);
        }
        clients.push((plain, client.clone()));
        client
    }
}

/// Parses a normalised image reference for the registry client.
pub fn parse_reference(name: &str) -> Result<Reference, String> {
    name.parse::<Reference>()
        .map_err(|e| format!("not a valid image reference: {e}"))
}

/// Flattens an error and its sources: reqwest hides the interesting part
/// (refused connection, TLS alert) in the source chain.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// Explains a registry failure; a transport failure against a registry we
/// only reach over HTTPS says so, since the usual cause on a LAN is a
/// plain-HTTP registry that is missing from `insecure`.
pub(crate) fn describe_error(
    config: &RegistryConfig,
    registry: &str,
    error: &oci_client::errors::OciDistributionError,
) -> String {
    use oci_client::errors::OciDistributionError as E;
    let mut message = format!("registry {registry}: {}", error_chain(error));
    if matches!(error, E::RequestError(_)) && !config.is_insecure(registry) {
        message.push_str(&format!(
            " (contacted over HTTPS; {registry} is not listed as an insecure registry, so plain HTTP is refused)"
        ));
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_parses_and_hides_passwords() {
        let config: RegistryConfig = serde_json::from_str(
            r#"{"insecure":["127.0.0.1:5000"],"credentials":{"reg.example:443":["me","secret"]}}"#,
        )
        .unwrap();
        assert!(
            config.is_allowed("anything.example"),
            "no list: everything allowed"
        );
        assert!(config.is_insecure("127.0.0.1:5000"));
        assert!(!config.is_insecure("reg.example:443"));
        assert!(matches!(
            config.auth_for("reg.example:443"),
            RegistryAuth::Basic(u, p) if u == "me" && p == "secret"
        ));
        assert!(matches!(
            config.auth_for("127.0.0.1:5000"),
            RegistryAuth::Anonymous
        ));
        let shown = format!("{config:?}");
        assert!(shown.contains("me") && !shown.contains("secret"), "{shown}");
        let empty: RegistryConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(empty, RegistryConfig::default());
    }

    #[test]
    fn docker_hub_aliases_match() {
        let config = RegistryConfig {
            insecure: vec!["docker.io".into()],
            ..Default::default()
        };
        assert!(config.is_insecure("index.docker.io"));
    }

    #[test]
    fn an_allow_list_keeps_pulls_on_the_listed_registries() {
        let config = RegistryConfig {
            allowed: vec!["127.0.0.1".into(), "reg.site:5000".into()],
            ..Default::default()
        };
        assert!(config.is_allowed("127.0.0.1:5000"));
        assert!(config.is_allowed("127.0.0.1:41234"));
        assert!(config.is_allowed("reg.site:5000"));
        assert!(!config.is_allowed("reg.site:443"));
        assert!(!config.is_allowed("docker.io"));
    }
}
