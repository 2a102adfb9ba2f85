//! Reading certificate signing requests: the only thing gantry takes from a CSR is
//! its public key, and only after the request's signature proves the sender holds
//! the matching private key.

use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::fingerprint::Fingerprint;
use crate::PkiError;

/// Parses a DER PKCS#10 request, checks its self-signature and that its key is
/// ECDSA P-256 or Ed25519, and returns the SubjectPublicKeyInfo DER.
pub(crate) fn verified_spki(csr_der: &[u8]) -> Result<Vec<u8>, PkiError> {
    let (rest, csr) = X509CertificationRequest::from_der(csr_der)
        .map_err(|e| PkiError::InvalidCsr(format!("not a DER PKCS#10 request: {e}")))?;
    if !rest.is_empty() {
        return Err(PkiError::InvalidCsr(
            "trailing bytes after the request".to_owned(),
        ));
    }
    csr.verify_signature().map_err(|_| {
        PkiError::InvalidCsr(
            "its signature does not verify with its own public key (corrupted request, \
             or a key of an algorithm gantry cannot check)"
                .to_owned(),
        )
    })?;
    let spki = &csr.certification_request_info.subject_pki;
    check_leaf_key_algorithm(spki)?;
    Ok(spki.raw.to_vec())
}

/// SHA-256 of the SubjectPublicKeyInfo a CSR asks to certify, once its signature
/// checks out and its key is one gantry certifies: the value [`crate::spki_sha256`]
/// will give for the certificate issued from it, known before issuing.
pub fn csr_spki_sha256(csr_der: &[u8]) -> Result<Fingerprint, PkiError> {
    Ok(Fingerprint::of(&verified_spki(csr_der)?))
}

/// Refuses any key but ECDSA P-256 and Ed25519, naming what was found.
fn check_leaf_key_algorithm(spki: &SubjectPublicKeyInfo<'_>) -> Result<(), PkiError> {
    let alg = &spki.algorithm;
    if alg.algorithm == OID_SIG_ED25519 {
        return Ok(());
    }
    if alg.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = alg.parameters.as_ref().and_then(|p| p.as_oid().ok());
        return match curve {
            Some(c) if c == OID_EC_P256 => Ok(()),
            Some(c) if c == OID_NIST_EC_P384 => {
                Err(PkiError::UnsupportedKeyAlgorithm("ECDSA P-384".to_owned()))
            }
            Some(c) => Err(PkiError::UnsupportedKeyAlgorithm(format!(
                "ECDSA on curve {c}"
            ))),
            None => Err(PkiError::UnsupportedKeyAlgorithm(
                "ECDSA without a named curve".to_owned(),
            )),
        };
    }
    if alg.algorithm == OID_PKCS1_RSAENCRYPTION {
        return Err(PkiError::UnsupportedKeyAlgorithm("RSA".to_owned()));
    }
    Err(PkiError::UnsupportedKeyAlgorithm(format!(
        "with OID {}",
        alg.algorithm
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NodeKey;
    use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P384_SHA384};

    #[test]
    fn csr_spki_is_the_key_of_the_request() {
        let key = NodeKey::generate().unwrap();
        let csr = key.csr_der("n1").unwrap();
        assert_eq!(csr_spki_sha256(&csr).unwrap(), key.spki_sha256());
    }

    #[test]
    fn csr_spki_refuses_bad_requests() {
        let key = NodeKey::generate().unwrap();
        let mut csr = key.csr_der("n1").unwrap();
        let last = csr.len() - 1;
        csr[last] ^= 0x01;
        assert!(matches!(
            csr_spki_sha256(&csr),
            Err(PkiError::InvalidCsr(_))
        ));
        let mut trailing = key.csr_der("n1").unwrap();
        trailing.push(0);
        assert!(matches!(
            csr_spki_sha256(&trailing),
            Err(PkiError::InvalidCsr(_))
        ));
        let p384 = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap();
        let csr = CertificateParams::default()
            .serialize_request(&p384)
            .unwrap();
        assert!(matches!(
            csr_spki_sha256(csr.der()),
            Err(PkiError::UnsupportedKeyAlgorithm(_))
        ));
    }
}
