//! Server certificate verifiers for gantry's three kinds of TLS client.
//!
//! * A client that knows only the CA fingerprint from a token (a joiner, the CLI,
//!   a site dialling its hub) uses [`PinnedCaVerifier`]: the pinned certificate
//!   must be among those the server sends, and becomes the only trust anchor.
//! * A client with a CA bundle (`--ca-file`) uses [`roots_verifier`].
//! * Gateways talking to each other use [`MemberServerVerifier`]: a normal chain
//!   check, and then the server's key must be one the cluster state lists for
//!   that name, so a stolen-but-unrevoked certificate of a removed node fails.
//!
//! Every verifier uses [`crate::provider`]'s algorithms, never the process default.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{
    verify_server_cert_signed_by_trust_anchor, verify_server_name, WebPkiServerVerifier,
};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::fingerprint::{spki_sha256, Fingerprint};
use crate::{provider, PkiError};

/// The signature algorithms of the crate's provider.
fn algorithms() -> WebPkiSupportedAlgorithms {
    provider().signature_verification_algorithms
}

/// A root store of `roots`, refusing an empty set or an unusable certificate.
pub(crate) fn root_store(roots: &[Vec<u8>]) -> Result<Arc<RootCertStore>, PkiError> {
    if roots.is_empty() {
        return Err(PkiError::Verifier("no CA certificate to trust".to_owned()));
    }
    let mut store = RootCertStore::empty();
    for der in roots {
        store
            .add(CertificateDer::from(der.as_slice()))
            .map_err(|e| PkiError::Verifier(format!("unusable CA certificate: {e}")))?;
    }
    Ok(Arc::new(store))
}

fn webpki_verifier(roots: &[Vec<u8>]) -> Result<Arc<WebPkiServerVerifier>, PkiError> {
    WebPkiServerVerifier::builder_with_provider(root_store(roots)?, provider())
        .build()
        .map_err(|e| PkiError::Verifier(e.to_string()))
}

/// Ordinary chain verification against `roots` (a `--ca-file` bundle), with rustls'
/// normal server name check.
pub fn roots_verifier(roots: &[Vec<u8>]) -> Result<Arc<dyn ServerCertVerifier>, PkiError> {
    let verifier: Arc<dyn ServerCertVerifier> = webpki_verifier(roots)?;
    Ok(verifier)
}

/// Trusts exactly one CA, known by the SHA-256 of its certificate.
///
/// The server must send that CA certificate in its chain (gantry servers send
/// `[leaf, CA]`); it is then used as the only trust anchor for a normal webpki
/// verification of the leaf, including expiry and the server name. If no
/// presented certificate matches the pin the handshake fails with
/// `InvalidCertificate(UnknownIssuer)` before the client sends any data.
pub struct PinnedCaVerifier {
    pin: Fingerprint,
}

impl PinnedCaVerifier {
    /// A verifier that trusts only the CA whose certificate hashes to `pin`.
    pub fn new(pin: Fingerprint) -> Arc<Self> {
        Arc::new(PinnedCaVerifier { pin })
    }
}

impl fmt::Debug for PinnedCaVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinnedCaVerifier")
            .field("pin", &self.pin)
            .finish()
    }
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let pinned = std::iter::once(end_entity)
            .chain(intermediates)
            .find(|der| Fingerprint::of(der) == self.pin)
            .ok_or(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            ))?;
        let mut roots = RootCertStore::empty();
        roots.add(pinned.clone())?;
        let others: Vec<CertificateDer<'_>> = intermediates
            .iter()
            .filter(|der| *der != pinned)
            .cloned()
            .collect();
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(&cert, &roots, &others, now, algorithms().all)?;
        verify_server_name(&cert, server_name)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        algorithms().supported_schemes()
    }
}

/// The SPKI pins a [`MemberServerVerifier`] accepts for a server name.
pub type PinLookup = Arc<dyn Fn(&str) -> Vec<Fingerprint> + Send + Sync>;

/// Gateway-to-gateway verification: webpki chain to the cluster CA(s) and the name
/// rustls passes in, then the leaf's SubjectPublicKeyInfo SHA-256 must be one of
/// `pins(server_name)`. No pins for the name means refusal.
pub struct MemberServerVerifier {
    inner: Arc<WebPkiServerVerifier>,
    pins: PinLookup,
}

impl MemberServerVerifier {
    /// `roots` are the trusted CA certificates (DER); `pins` maps a server name
    /// (the string form of the rustls `ServerName`) to the keys it may present.
    pub fn new(roots: &[Vec<u8>], pins: PinLookup) -> Result<Arc<Self>, PkiError> {
        Ok(Arc::new(MemberServerVerifier {
            inner: webpki_verifier(roots)?,
            pins,
        }))
    }
}

impl fmt::Debug for MemberServerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemberServerVerifier")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl ServerCertVerifier for MemberServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        let name = server_name.to_str();
        let pins = (self.pins)(&name);
        if pins.is_empty() {
            return Err(rustls::Error::General(format!(
                "no pinned key for {name}: the cluster does not list this server"
            )));
        }
        let presented = spki_sha256(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        if !pins.contains(&presented) {
            return Err(rustls::Error::General(format!(
                "the key of {name} ({presented}) is not the one the cluster lists for it"
            )));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
