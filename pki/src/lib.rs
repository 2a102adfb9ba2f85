//! gantry's public-key infrastructure: the cluster CA and the certificates it
//! issues, the rustls configurations and certificate verifiers gateways use for
//! mutual TLS, the tokens operators pass around, and sealing of secrets kept in
//! replicated state.
//!
//! It is pure cryptography and parsing: no Raft, no sockets, no files. Callers
//! decide where keys and certificates live. All of it runs on one crypto provider,
//! aws-lc-rs, passed explicitly everywhere (see [`provider`]) because several
//! gateways may share a process and none may depend on a process-wide default.
//!
//! Trust model in short: a cluster has one CA. Every gateway certificate names
//! [`GATEWAY_NAME`] plus its own [`node_dns_name`]. Clients that only hold a token
//! pin the CA by fingerprint ([`PinnedCaVerifier`]); gateways additionally pin each
//! other's keys ([`MemberServerVerifier`]).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;

mod ca;
mod csr;
mod error;
mod fingerprint;
mod hexstr;
mod identity;
mod key;
mod pem;
mod rng;
mod seal;
mod tls;
mod token;
mod verify;

#[cfg(test)]
mod handshake_tests;

pub use ca::{CertificateAuthority, IssuedCert, LeafProfile};
pub use csr::csr_spki_sha256;
pub use error::PkiError;
pub use fingerprint::{spki_sha256, Fingerprint};
pub use identity::{cert_info, node_id_of, CertInfo};
pub use key::NodeKey;
pub use pem::{certs_from_pem, certs_to_pem, Credentials};
pub use seal::ClusterKey;
pub use tls::{client_config, server_config, PROTOCOL_VERSIONS};
pub use token::{new_token_id, AdminToken, JoinToken, Secret, SiteToken};
pub use verify::{roots_verifier, MemberServerVerifier, PinLookup, PinnedCaVerifier};

/// The SAN every gateway certificate carries; what the CLI and joiners verify,
/// since they dial an address and do not know which node answers.
pub const GATEWAY_NAME: &str = "gateway.gantry";

/// The SAN of a hub's server certificate, verified by the sites that dial it.
pub const HUB_NAME: &str = "hub.gantry";

/// The DNS name that identifies node `node_id` of cluster `cluster_id` in its
/// certificate: `n{id}.{cluster_id}.gantry`. See [`node_id_of`] for the reverse.
pub fn node_dns_name(node_id: u64, cluster_id: &str) -> String {
    format!("n{node_id}.{cluster_id}.gantry")
}

/// The aws-lc-rs provider with its default (AEAD-only) cipher suites, built once.
/// Every config and verifier of this crate uses it, so no code path depends on the
/// process-wide default provider being installed (or installs one).
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_dns_name_format() {
        assert_eq!(node_dns_name(7, "c1"), "n7.c1.gantry");
    }

    #[test]
    fn provider_is_shared_and_offers_only_aead_suites() {
        assert!(Arc::ptr_eq(&provider(), &provider()));
        // Every suite of the aws-lc-rs default provider is AES-GCM or ChaCha20-Poly1305.
        for suite in &provider().cipher_suites {
            let name = format!("{:?}", suite.suite());
            assert!(
                name.contains("GCM") || name.contains("CHACHA20_POLY1305"),
                "{name}"
            );
        }
    }
}
