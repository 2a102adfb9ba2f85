//! rustls configurations for gantry's servers and clients.
//!
//! Both sides allow TLS 1.3 and 1.2 only, with the AEAD suites of the aws-lc-rs
//! provider, and always name that provider explicitly: several gateways share one
//! process and none may depend on (or install) a process-wide default.
//!
//! Session resumption is off on both sides. A resumed session skips certificate
//! verification, so a client would keep trusting a peer whose key the cluster has
//! since unpinned (see [`crate::MemberServerVerifier`]); gantry's connections are
//! long-lived gRPC channels, where a full handshake per connection costs nothing
//! that matters.

use std::sync::Arc;

use rustls::client::danger::ServerCertVerifier;
use rustls::client::Resumption;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::version::{TLS12, TLS13};
use rustls::{ClientConfig, ServerConfig, SupportedProtocolVersion};

use crate::pem::Credentials;
use crate::verify::root_store;
use crate::{provider, PkiError};

/// The protocol versions gantry speaks, newest first. TLS 1.0/1.1 are not
/// implemented by rustls at all; listing the two we want keeps a future rustls
/// version from being enabled by a dependency bump without review.
pub const PROTOCOL_VERSIONS: &[&SupportedProtocolVersion] = &[&TLS13, &TLS12];

/// A server presenting `creds` (leaf first, then the CA, so pinning clients find it).
///
/// With `client_roots`, clients *may* present a certificate, and one that is
/// presented must chain to those roots (the handshake fails otherwise); whether an
/// anonymous client may do anything is for the application to decide from
/// `peer_certificates()`. With `None`, no client certificate is requested.
pub fn server_config(
    creds: &Credentials,
    client_roots: Option<&[Vec<u8>]>,
    alpn: Vec<Vec<u8>>,
) -> Result<Arc<ServerConfig>, PkiError> {
    let verifier: Arc<dyn ClientCertVerifier> = match client_roots {
        Some(roots) => WebPkiClientVerifier::builder_with_provider(root_store(roots)?, provider())
            .allow_unauthenticated()
            .build()
            .map_err(|e| PkiError::Verifier(e.to_string()))?,
        None => WebPkiClientVerifier::no_client_auth(),
    };
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(creds.cert_chain(), creds.key.private_key_der())?;
    config.alpn_protocols = alpn;
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// A client verifying servers with `verifier`, presenting `identity` (mutual TLS)
/// when given.
pub fn client_config(
    verifier: Arc<dyn ServerCertVerifier>,
    identity: Option<&Credentials>,
    alpn: Vec<Vec<u8>>,
) -> Result<Arc<ClientConfig>, PkiError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match identity {
        Some(creds) => {
            builder.with_client_auth_cert(creds.cert_chain(), creds.key.private_key_der())?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn;
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}
