//! Reading certificates: what a certificate says about who it belongs to.
//!
//! These functions only *read*; they do not verify a chain. Callers use them on
//! certificates that rustls has already verified (a peer's certificate after the
//! handshake) or that gantry itself issued.

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use crate::fingerprint::Fingerprint;
use crate::PkiError;

/// Facts about one certificate, as gantry stores and shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Lowercase hex of the serial number, without leading zero bytes.
    pub serial_hex: String,
    /// Start of validity, unix seconds.
    pub not_before: i64,
    /// End of validity, unix seconds.
    pub not_after: i64,
    /// SHA-256 of the SubjectPublicKeyInfo (what gateways pin).
    pub spki_sha256: Fingerprint,
    /// The DNS subject alternative names, in certificate order.
    pub dns_names: Vec<String>,
    /// Whether basicConstraints says CA:TRUE.
    pub is_ca: bool,
    /// SHA-256 of the whole certificate DER.
    pub fingerprint: Fingerprint,
}

/// Parses one DER certificate and refuses trailing bytes, so that "the certificate"
/// always means exactly the bytes that were fingerprinted.
pub(crate) fn parse_cert(der: &[u8]) -> Result<X509Certificate<'_>, PkiError> {
    let (rest, cert) = X509Certificate::from_der(der)
        .map_err(|e| PkiError::InvalidCertificate(format!("not a DER X.509 certificate: {e}")))?;
    if !rest.is_empty() {
        return Err(PkiError::InvalidCertificate(
            "trailing bytes after the certificate".to_owned(),
        ));
    }
    Ok(cert)
}

/// The serial number as lowercase hex without the sign-padding zero bytes DER adds,
/// so `openssl x509 -serial` and gantry print the same digits.
pub(crate) fn serial_hex(raw: &[u8]) -> String {
    let first = raw.iter().position(|&b| b != 0).unwrap_or(raw.len());
    if first == raw.len() {
        return "00".to_owned();
    }
    hex::encode(&raw[first..])
}

fn dns_names(cert: &X509Certificate<'_>) -> Result<Vec<String>, PkiError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| PkiError::InvalidCertificate(format!("subjectAltName: {e}")))?;
    Ok(san
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::DNSName(dns) => Some((*dns).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}

/// Reads the facts gantry keeps about a certificate.
pub fn cert_info(cert_der: &[u8]) -> Result<CertInfo, PkiError> {
    let cert = parse_cert(cert_der)?;
    let is_ca = cert
        .basic_constraints()
        .map_err(|e| PkiError::InvalidCertificate(format!("basicConstraints: {e}")))?
        .is_some_and(|bc| bc.value.ca);
    Ok(CertInfo {
        serial_hex: serial_hex(cert.raw_serial()),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        spki_sha256: Fingerprint::of(cert.public_key().raw),
        dns_names: dns_names(&cert)?,
        is_ca,
        fingerprint: Fingerprint::of(cert_der),
    })
}

/// The node id a certificate names for `cluster_id`: the one SAN of the form
/// `n{id}.{cluster_id}.gantry` (see [`crate::node_dns_name`]).
///
/// `None` if the certificate is unreadable, names no node of this cluster, or
/// names several (a certificate must identify exactly one node). The id must be
/// written as [`crate::node_dns_name`] writes it: decimal, no sign, no leading zeros.
pub fn node_id_of(cert_der: &[u8], cluster_id: &str) -> Option<u64> {
    let cert = parse_cert(cert_der).ok()?;
    let names = dns_names(&cert).ok()?;
    let suffix = format!(".{cluster_id}.gantry");
    let mut ids = names
        .iter()
        .filter_map(|name| parse_node_label(name.strip_suffix(&suffix)?));
    match (ids.next(), ids.next()) {
        (Some(id), None) => Some(id),
        _ => None,
    }
}

/// Parses `n{id}` exactly as `node_dns_name` formats it.
fn parse_node_label(label: &str) -> Option<u64> {
    let digits = label.strip_prefix('n')?;
    let canonical = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'));
    if !canonical {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{node_dns_name, CertificateAuthority, LeafProfile, NodeKey, GATEWAY_NAME};
    use std::time::Duration;

    fn cert_with_names(ca: &CertificateAuthority, names: &[String]) -> Vec<u8> {
        let key = NodeKey::generate().unwrap();
        ca.issue(
            &key,
            &LeafProfile {
                common_name: "node".into(),
                dns_names: names.to_vec(),
                ip_addresses: vec![],
                lifetime: Duration::from_secs(600),
                server: true,
                client: true,
            },
        )
        .unwrap()
        .cert_der
    }

    #[test]
    fn node_id_of_finds_the_id_for_the_right_cluster_only() {
        let ca = CertificateAuthority::generate("ca", Duration::from_secs(3600)).unwrap();
        let der = cert_with_names(&ca, &[GATEWAY_NAME.to_owned(), node_dns_name(42, "c1")]);
        assert_eq!(node_id_of(&der, "c1"), Some(42));
        assert_eq!(node_id_of(&der, "c2"), None);
        assert_eq!(node_id_of(&der, "1"), None);
        assert_eq!(node_id_of(b"garbage", "c1"), None);
    }

    #[test]
    fn node_id_of_wants_exactly_one_canonical_name() {
        let ca = CertificateAuthority::generate("ca", Duration::from_secs(3600)).unwrap();
        let two = cert_with_names(&ca, &[node_dns_name(1, "c1"), node_dns_name(2, "c1")]);
        assert_eq!(node_id_of(&two, "c1"), None);
        let padded = cert_with_names(&ca, &["n007.c1.gantry".to_owned()]);
        assert_eq!(node_id_of(&padded, "c1"), None);
        let zero = cert_with_names(&ca, &[node_dns_name(0, "c1")]);
        assert_eq!(node_id_of(&zero, "c1"), Some(0));
        let max = cert_with_names(&ca, &[node_dns_name(u64::MAX, "c1")]);
        assert_eq!(node_id_of(&max, "c1"), Some(u64::MAX));
        let other = cert_with_names(
            &ca,
            &["x1.c1.gantry".to_owned(), "n1.c1.gantry.evil".to_owned()],
        );
        assert_eq!(node_id_of(&other, "c1"), None);
    }

    #[test]
    fn cert_info_reads_what_was_issued() {
        let ca = CertificateAuthority::generate("ca", Duration::from_secs(3600)).unwrap();
        let der = cert_with_names(&ca, &[GATEWAY_NAME.to_owned()]);
        let info = cert_info(&der).unwrap();
        assert_eq!(info.dns_names, vec![GATEWAY_NAME.to_owned()]);
        assert!(!info.is_ca);
        assert_eq!(info.fingerprint, Fingerprint::of(&der));
        assert_eq!(info.not_after - info.not_before, 600 + 3600);
        let ca_info = cert_info(ca.cert_der()).unwrap();
        assert!(ca_info.is_ca);
        assert_eq!(ca_info.fingerprint, ca.fingerprint());
        let mut trailing = der.clone();
        trailing.push(0);
        assert!(cert_info(&trailing).is_err());
    }

    #[test]
    fn serial_hex_drops_sign_padding() {
        assert_eq!(serial_hex(&[0x00, 0x80, 0x01]), "8001");
        assert_eq!(serial_hex(&[0x7f]), "7f");
        assert_eq!(serial_hex(&[0x00]), "00");
    }
}
