//! Private keys: a gateway's own key, and reading keys from PEM.
//!
//! Keys are generated on the node that uses them and never leave it; only a CSR
//! (public key + proof of possession) travels to the CA. Keys read from files are
//! normalised to PKCS#8 so that what gantry writes back is always a
//! `-----BEGIN PRIVATE KEY-----` block, whatever `openssl` produced.

use std::fmt;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature as lc;
use rcgen::{
    CertificateParams, DistinguishedName, DnType, KeyPair, PublicKeyData, SignatureAlgorithm,
    PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_ED25519, PKCS_RSA_SHA256,
};
use rustls::pki_types::pem::SectionKind;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use zeroize::Zeroizing;

use crate::fingerprint::Fingerprint;
use crate::pem::{self, Section};
use crate::PkiError;

/// A gateway's private key (ECDSA P-256 when generated; Ed25519 is accepted when read).
/// `Debug` prints `NodeKey(***)`.
pub struct NodeKey {
    pub(crate) key: KeyPair,
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NodeKey(***)")
    }
}

/// The key algorithms gantry issues leaf certificates for: both are fast, small and
/// supported by every rustls provider, and refusing the rest keeps the set of
/// keys a compromised joiner could smuggle in small.
pub(crate) const LEAF_KEY_ALGS: &[&SignatureAlgorithm] = &[&PKCS_ECDSA_P256_SHA256, &PKCS_ED25519];

/// What an operator's own CA key may be: whatever rcgen can sign with and webpki verifies.
pub(crate) const CA_KEY_ALGS: &[&SignatureAlgorithm] = &[
    &PKCS_ECDSA_P256_SHA256,
    &PKCS_ECDSA_P384_SHA384,
    &PKCS_ED25519,
    &PKCS_RSA_SHA256,
];

impl NodeKey {
    /// A fresh ECDSA P-256 key.
    pub fn generate() -> Result<Self, PkiError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| PkiError::InvalidKey(format!("key generation failed: {e}")))?;
        Ok(NodeKey { key })
    }

    /// Reads the one private key in `pem` (PKCS#8, or SEC1 `EC PRIVATE KEY`);
    /// it must be ECDSA P-256 or Ed25519.
    pub fn from_pem(pem: &str) -> Result<Self, PkiError> {
        let key = keypair_from_pem(pem, LEAF_KEY_ALGS)?;
        Ok(NodeKey { key })
    }

    pub(crate) fn from_section(section: &Section) -> Result<Self, PkiError> {
        let key = keypair_from_section(section, LEAF_KEY_ALGS)?;
        Ok(NodeKey { key })
    }

    /// The key as a PKCS#8 `-----BEGIN PRIVATE KEY-----` block.
    pub fn to_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// The key in the form rustls takes.
    pub fn private_key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()))
    }

    /// SHA-256 of this key's SubjectPublicKeyInfo: the value [`crate::spki_sha256`]
    /// returns for any certificate of this key, known before the certificate exists.
    pub fn spki_sha256(&self) -> Fingerprint {
        Fingerprint::of(&self.key.subject_public_key_info())
    }

    /// A PKCS#10 request with subject CN `common_name` and no extensions, signed by
    /// this key. The CA takes only the public key from it; the signature proves we
    /// hold the private key.
    pub fn csr_der(&self, common_name: &str) -> Result<Vec<u8>, PkiError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        let csr = params
            .serialize_request(&self.key)
            .map_err(|e| PkiError::CertGeneration(format!("CSR: {e}")))?;
        Ok(csr.der().to_vec())
    }
}

/// Reads the single private key of `pem` and checks its algorithm against `allowed`.
pub(crate) fn keypair_from_pem(
    pem: &str,
    allowed: &[&SignatureAlgorithm],
) -> Result<KeyPair, PkiError> {
    let sections = pem::sections(pem)?;
    let mut keys = sections.iter().filter(|s| s.is_private_key());
    match (keys.next(), keys.next()) {
        (Some(key), None) => keypair_from_section(key, allowed),
        (None, _) => Err(PkiError::InvalidKey(
            "no \"-----BEGIN PRIVATE KEY-----\" (or EC/RSA PRIVATE KEY) block found; \
             encrypted keys are not supported, decrypt with `openssl pkey`"
                .to_owned(),
        )),
        (Some(_), Some(_)) => Err(PkiError::InvalidKey(
            "more than one private key in the file".to_owned(),
        )),
    }
}

fn keypair_from_section(
    section: &Section,
    allowed: &[&SignatureAlgorithm],
) -> Result<KeyPair, PkiError> {
    let pkcs8 = to_pkcs8(section)?;
    let key = KeyPair::try_from(&PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        pkcs8.as_slice(),
    )))
    .map_err(|e| PkiError::InvalidKey(format!("unreadable or unsupported key: {e}")))?;
    if !allowed.contains(&key.algorithm()) {
        return Err(PkiError::UnsupportedKeyAlgorithm(alg_name(key.algorithm())));
    }
    Ok(key)
}

/// Rewrites SEC1 (`EC PRIVATE KEY`) and PKCS#1 (`RSA PRIVATE KEY`) keys as PKCS#8,
/// because rcgen keeps the input bytes and would otherwise label them `PRIVATE KEY`.
fn to_pkcs8(section: &Section) -> Result<Zeroizing<Vec<u8>>, PkiError> {
    let der = section.der.as_slice();
    match section.kind {
        SectionKind::PrivateKey => Ok(Zeroizing::new(der.to_vec())),
        SectionKind::EcPrivateKey => {
            let key =
                lc::EcdsaKeyPair::from_private_key_der(&lc::ECDSA_P256_SHA256_ASN1_SIGNING, der)
                    .or_else(|_| {
                        lc::EcdsaKeyPair::from_private_key_der(
                            &lc::ECDSA_P384_SHA384_ASN1_SIGNING,
                            der,
                        )
                    })
                    .map_err(|_| {
                        PkiError::InvalidKey(
                            "EC key unreadable or not on curve P-256/P-384".to_owned(),
                        )
                    })?;
            let doc = key
                .to_pkcs8v1()
                .map_err(|_| PkiError::Crypto("could not re-encode EC key as PKCS#8"))?;
            Ok(Zeroizing::new(doc.as_ref().to_vec()))
        }
        SectionKind::RsaPrivateKey => {
            let key = lc::RsaKeyPair::from_der(der)
                .map_err(|e| PkiError::InvalidKey(format!("RSA key unreadable: {e}")))?;
            let doc: aws_lc_rs::encoding::Pkcs8V1Der<'static> = key
                .as_der()
                .map_err(|_| PkiError::Crypto("could not re-encode RSA key as PKCS#8"))?;
            Ok(Zeroizing::new(doc.as_ref().to_vec()))
        }
        _ => Err(PkiError::InvalidKey("not a private key block".to_owned())),
    }
}

/// A name an operator recognises for a key algorithm.
pub(crate) fn alg_name(alg: &SignatureAlgorithm) -> String {
    if alg == &PKCS_ECDSA_P256_SHA256 {
        "ECDSA P-256".to_owned()
    } else if alg == &PKCS_ECDSA_P384_SHA384 {
        "ECDSA P-384".to_owned()
    } else if alg == &PKCS_ED25519 {
        "Ed25519".to_owned()
    } else {
        format!("{alg:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_key_pem_round_trip_keeps_the_key() {
        let key = NodeKey::generate().unwrap();
        let pem = key.to_pem();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        let back = NodeKey::from_pem(&pem).unwrap();
        assert_eq!(back.spki_sha256(), key.spki_sha256());
        assert_eq!(format!("{key:?}"), "NodeKey(***)");
    }

    #[test]
    fn node_key_refuses_other_algorithms_and_garbage() {
        let p384 = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap();
        assert!(matches!(
            NodeKey::from_pem(&p384.serialize_pem()),
            Err(PkiError::UnsupportedKeyAlgorithm(_))
        ));
        assert!(NodeKey::from_pem("").is_err());
        assert!(NodeKey::from_pem(
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
        )
        .is_err());
        let ed = KeyPair::generate_for(&PKCS_ED25519).unwrap();
        assert!(NodeKey::from_pem(&ed.serialize_pem()).is_ok());
    }

    #[test]
    fn sec1_keys_are_rewritten_as_pkcs8() {
        // What `openssl ecparam -name prime256v1 -genkey` writes: parameters, then SEC1.
        let key = lc::EcdsaKeyPair::generate(&lc::ECDSA_P256_SHA256_ASN1_SIGNING).unwrap();
        let sec1 = key.private_key().as_der().unwrap();
        let text = format!(
            "{}{}",
            pem::encode(
                "EC PARAMETERS",
                &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]
            ),
            pem::encode("EC PRIVATE KEY", sec1.as_ref())
        );
        let node = NodeKey::from_pem(&text).unwrap();
        assert!(node.to_pem().starts_with("-----BEGIN PRIVATE KEY-----\n"));
        let again = NodeKey::from_pem(&node.to_pem()).unwrap();
        assert_eq!(again.spki_sha256(), node.spki_sha256());
    }

    #[test]
    fn csr_is_signed_by_the_key() {
        let key = NodeKey::generate().unwrap();
        let der = key.csr_der("n1").unwrap();
        let params =
            rcgen::CertificateSigningRequestParams::from_der(&der.as_slice().into()).unwrap();
        assert_eq!(
            Fingerprint::of(&params.public_key.subject_public_key_info()),
            key.spki_sha256()
        );
    }
}
