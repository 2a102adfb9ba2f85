//! PEM files: certificate bundles and the credentials file.
//!
//! A gateway keeps its private key and certificate chain in *one* file, so a
//! renewal replaces both with a single atomic rename and a crash can never leave a
//! new certificate next to an old key.

use pem::{EncodeConfig, LineEnding, Pem};
use rustls::pki_types::pem::SectionKind;
use rustls::pki_types::CertificateDer;
use zeroize::Zeroizing;

use crate::key::NodeKey;
use crate::PkiError;

/// LF line endings everywhere: the files are written by gantry on Linux and read
/// back by gantry, `openssl` and humans.
fn encode_config() -> EncodeConfig {
    EncodeConfig::new().set_line_ending(LineEnding::LF)
}

/// PEM-encodes one DER object under `tag` (`CERTIFICATE`, `PRIVATE KEY`, ...).
pub(crate) fn encode(tag: &str, der: &[u8]) -> String {
    pem::encode_config(&Pem::new(tag, der), encode_config())
}

/// One section of a PEM text: its kind and DER contents (zeroized on drop, as it may be a key).
pub(crate) struct Section {
    pub(crate) kind: SectionKind,
    pub(crate) der: Zeroizing<Vec<u8>>,
}

impl Section {
    pub(crate) fn is_private_key(&self) -> bool {
        matches!(
            self.kind,
            SectionKind::PrivateKey | SectionKind::EcPrivateKey | SectionKind::RsaPrivateKey
        )
    }
}

/// All sections rustls-pki-types knows of, in file order. Sections it does not know
/// (for example the `EC PARAMETERS` block `openssl ecparam -genkey` writes before the
/// key) are skipped, text outside sections is ignored.
pub(crate) fn sections(text: &str) -> Result<Vec<Section>, PkiError> {
    let mut rest = text.as_bytes();
    let mut out = Vec::new();
    loop {
        match rustls::pki_types::pem::from_buf(&mut rest) {
            Ok(Some((kind, der))) => out.push(Section {
                kind,
                der: Zeroizing::new(der),
            }),
            Ok(None) => return Ok(out),
            Err(e) => return Err(PkiError::Pem(e.to_string())),
        }
    }
}

/// PEM text of `ders`, one `CERTIFICATE` block each, in order.
pub fn certs_to_pem(ders: &[Vec<u8>]) -> String {
    ders.iter().map(|der| encode("CERTIFICATE", der)).collect()
}

/// The DER of every `-----BEGIN CERTIFICATE-----` block in `text`, in order.
/// Other blocks are ignored; no certificate at all is an error, since every caller
/// needs at least one.
pub fn certs_from_pem(text: &str) -> Result<Vec<Vec<u8>>, PkiError> {
    let certs: Vec<Vec<u8>> = sections(text)?
        .into_iter()
        .filter(|s| s.kind == SectionKind::Certificate)
        .map(|s| s.der.to_vec())
        .collect();
    if certs.is_empty() {
        return Err(PkiError::Pem(
            "no \"-----BEGIN CERTIFICATE-----\" block found".to_owned(),
        ));
    }
    Ok(certs)
}

/// A private key with its certificate chain: what a gateway presents in TLS.
#[derive(Debug)]
pub struct Credentials {
    /// The private key of the leaf certificate.
    pub key: NodeKey,
    /// DER certificates, leaf first, then the CA (servers send both so that
    /// clients pinning the CA fingerprint find it in the handshake).
    pub chain: Vec<Vec<u8>>,
}

impl Credentials {
    /// The key PEM followed by each certificate's PEM, leaf first.
    pub fn to_pem(&self) -> String {
        let mut out = self.key.to_pem();
        out.push_str(&certs_to_pem(&self.chain));
        out
    }

    /// Reads the text [`Credentials::to_pem`] writes: exactly one private key and at
    /// least one certificate (the first is the leaf).
    pub fn from_pem(text: &str) -> Result<Self, PkiError> {
        let sections = sections(text)?;
        let mut keys = sections.iter().filter(|s| s.is_private_key());
        let (Some(key), None) = (keys.next(), keys.next()) else {
            return Err(PkiError::Pem(
                "a credentials file must hold exactly one private key".to_owned(),
            ));
        };
        let key = NodeKey::from_section(key)?;
        let chain: Vec<Vec<u8>> = sections
            .iter()
            .filter(|s| s.kind == SectionKind::Certificate)
            .map(|s| s.der.to_vec())
            .collect();
        if chain.is_empty() {
            return Err(PkiError::Pem(
                "a credentials file must hold at least one certificate after the key".to_owned(),
            ));
        }
        Ok(Credentials { key, chain })
    }

    /// The DER of the leaf certificate (the first of the chain).
    pub fn leaf_der(&self) -> &[u8] {
        self.chain.first().map_or(&[], Vec::as_slice)
    }

    /// The chain in the form rustls takes.
    pub fn cert_chain(&self) -> Vec<CertificateDer<'static>> {
        self.chain
            .iter()
            .map(|der| CertificateDer::from(der.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CertificateAuthority, LeafProfile};
    use std::time::Duration;

    fn creds() -> (Credentials, CertificateAuthority) {
        let ca = CertificateAuthority::generate("test CA", Duration::from_secs(3600)).unwrap();
        let key = NodeKey::generate().unwrap();
        let issued = ca
            .issue(
                &key,
                &LeafProfile {
                    common_name: "n1".into(),
                    dns_names: vec!["gateway.gantry".into()],
                    ip_addresses: vec![],
                    lifetime: Duration::from_secs(600),
                    server: true,
                    client: true,
                },
            )
            .unwrap();
        let chain = vec![issued.cert_der, ca.cert_der().to_vec()];
        (Credentials { key, chain }, ca)
    }

    #[test]
    fn credentials_round_trip_through_pem() {
        let (creds, ca) = creds();
        let text = creds.to_pem();
        assert!(text.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        assert_eq!(text.matches("-----BEGIN CERTIFICATE-----").count(), 2);
        let back = Credentials::from_pem(&text).unwrap();
        assert_eq!(back.chain, creds.chain);
        assert_eq!(back.key.spki_sha256(), creds.key.spki_sha256());
        assert_eq!(back.leaf_der(), creds.chain[0].as_slice());
        assert_eq!(back.cert_chain().len(), 2);
        assert_eq!(back.cert_chain()[1].as_ref(), ca.cert_der());
    }

    #[test]
    fn credentials_need_one_key_and_a_cert() {
        let (creds, _) = creds();
        let key_only = creds.key.to_pem();
        assert!(Credentials::from_pem(&key_only).is_err());
        let certs_only = certs_to_pem(&creds.chain);
        assert!(Credentials::from_pem(&certs_only).is_err());
        let two_keys = format!("{}{}", creds.key.to_pem(), creds.to_pem());
        assert!(Credentials::from_pem(&two_keys).is_err());
        assert!(Credentials::from_pem("").is_err());
    }

    #[test]
    fn cert_bundles_round_trip_and_need_a_cert() {
        let (creds, _) = creds();
        let text = certs_to_pem(&creds.chain);
        assert_eq!(certs_from_pem(&text).unwrap(), creds.chain);
        assert!(certs_from_pem(&creds.key.to_pem()).is_err());
        assert!(certs_from_pem("not pem at all").is_err());
    }
}
