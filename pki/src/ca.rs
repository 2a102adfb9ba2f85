//! The cluster certificate authority: creating it, loading an operator's own, and
//! issuing leaf certificates.
//!
//! The CA decides everything in a leaf certificate except its public key. A CSR
//! only proves possession of a key; the names, usages, validity and serial come
//! from a [`LeafProfile`] that gantry builds from what it knows about the joiner,
//! so a joiner cannot ask for a CA certificate or for another node's name.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber, SubjectPublicKeyInfo,
    PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::CertificateDer;
use time::OffsetDateTime;

use crate::csr::verified_spki;
use crate::fingerprint::Fingerprint;
use crate::identity::{cert_info, parse_cert};
use crate::key::{keypair_from_pem, NodeKey, CA_KEY_ALGS};
use crate::pem::{certs_from_pem, encode};
use crate::rng::random_bytes;
use crate::{node_dns_name, PkiError, GATEWAY_NAME};

/// How far `not_before` is set in the past, so that a peer whose clock is a little
/// behind ours does not see a brand-new certificate as "not yet valid".
const CLOCK_SLOP: Duration = Duration::from_secs(3600);

/// What goes into a leaf certificate besides its public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafProfile {
    /// Subject CN; informational only, since verification uses the SANs. Empty means no CN.
    pub common_name: String,
    /// DNS subject alternative names.
    pub dns_names: Vec<String>,
    /// IP address subject alternative names.
    pub ip_addresses: Vec<IpAddr>,
    /// `not_after` = now + lifetime (`not_before` = now - 1 h, for clock slop).
    pub lifetime: Duration,
    /// Extended key usage serverAuth.
    pub server: bool,
    /// Extended key usage clientAuth.
    pub client: bool,
}

impl LeafProfile {
    /// The usual profile of a gateway: names [`GATEWAY_NAME`] and its node name, and
    /// serves as both TLS server and client.
    pub fn node(node_id: u64, cluster_id: &str, lifetime: Duration) -> Self {
        LeafProfile {
            common_name: format!("gantry node {node_id}"),
            dns_names: vec![GATEWAY_NAME.to_owned(), node_dns_name(node_id, cluster_id)],
            ip_addresses: Vec::new(),
            lifetime,
            server: true,
            client: true,
        }
    }
}

/// A certificate the CA has just issued, with the facts callers store about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCert {
    /// The certificate DER.
    pub cert_der: Vec<u8>,
    /// Lowercase hex of the serial.
    pub serial_hex: String,
    /// Start of validity, unix seconds.
    pub not_before: i64,
    /// End of validity, unix seconds.
    pub not_after: i64,
    /// SHA-256 of the certificate's SubjectPublicKeyInfo.
    pub spki_sha256: Fingerprint,
}

/// A CA certificate with its private key. `Debug` shows the subject and fingerprint,
/// never the key.
pub struct CertificateAuthority {
    cert_der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
    subject: String,
    fingerprint: Fingerprint,
    not_before: i64,
    not_after: i64,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("subject", &self.subject)
            .field("fingerprint", &self.fingerprint)
            .field("not_after", &self.not_after)
            .field("key", &"***")
            .finish()
    }
}

impl CertificateAuthority {
    /// A new self-signed ECDSA P-256 CA named `common_name`, valid from an hour ago
    /// until now + `lifetime`. Its path length is 0: it signs leaves only, so a
    /// leaf key that leaks can never mint certificates.
    pub fn generate(common_name: &str, lifetime: Duration) -> Result<Self, PkiError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| PkiError::CertGeneration(format!("CA key generation: {e}")))?;
        let (not_before, not_after) = validity(lifetime)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name_dn(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial()?);
        params.not_before = not_before;
        params.not_after = not_after;
        let cert = params
            .self_signed(&key)
            .map_err(|e| PkiError::CertGeneration(format!("CA certificate: {e}")))?;
        Self::from_parts(cert.der().to_vec(), key)
    }

    /// Loads an operator's own CA from PEM: the certificate (exactly one) and its
    /// private key (PKCS#8, SEC1 or PKCS#1; ECDSA P-256/P-384, Ed25519 or RSA).
    ///
    /// Refuses a certificate without basicConstraints CA:TRUE (or whose keyUsage
    /// lacks keyCertSign), a key that is not the certificate's, and a CA whose
    /// subject name rcgen cannot reproduce exactly (leaves would not chain to it).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let certs = certs_from_pem(cert_pem)?;
        let [cert_der] = <[Vec<u8>; 1]>::try_from(certs).map_err(|certs| {
            PkiError::Pem(format!(
                "the CA certificate file holds {} certificates; give only the CA's own",
                certs.len()
            ))
        })?;
        let key = keypair_from_pem(key_pem, CA_KEY_ALGS)?;
        Self::from_parts(cert_der, key)
    }

    /// Checks that `cert_der` is a CA whose key is `key`, and that certificates we
    /// sign with it verify against it.
    fn from_parts(cert_der: Vec<u8>, key: KeyPair) -> Result<Self, PkiError> {
        let cert = parse_cert(&cert_der)?;
        let subject = cert.subject().to_string();
        let basic = cert
            .basic_constraints()
            .map_err(|e| PkiError::InvalidCertificate(format!("basicConstraints: {e}")))?;
        if !basic.is_some_and(|bc| bc.value.ca) {
            return Err(PkiError::NotACa {
                subject,
                detail: String::new(),
            });
        }
        let usage = cert
            .key_usage()
            .map_err(|e| PkiError::InvalidCertificate(format!("keyUsage: {e}")))?;
        if usage.is_some_and(|ku| !ku.value.key_cert_sign()) {
            return Err(PkiError::NotACa {
                subject,
                detail: ", or its keyUsage lacks keyCertSign".to_owned(),
            });
        }
        if key.der_bytes() != cert.public_key().subject_public_key.data.as_ref() {
            return Err(PkiError::KeyMismatch { subject });
        }
        let not_before = cert.validity().not_before.timestamp();
        let not_after = cert.validity().not_after.timestamp();
        let issuer = Issuer::from_ca_cert_der(&CertificateDer::from(cert_der.as_slice()), key)
            .map_err(|e| {
                PkiError::InvalidCertificate(format!(
                    "cannot use {subject:?} as issuer ({e}); gantry supports CA subjects made \
                     of single-valued attributes, such as /O=org/CN=name"
                ))
            })?;
        let ca = CertificateAuthority {
            fingerprint: Fingerprint::of(&cert_der),
            cert_der,
            issuer,
            subject,
            not_before,
            not_after,
        };
        ca.self_check()?;
        Ok(ca)
    }

    /// Signs a throwaway certificate and checks that its issuer name is byte-for-byte
    /// the CA's subject and that the CA's public key verifies it. webpki compares
    /// names as bytes, so a CA subject that rcgen re-encodes differently (a
    /// multi-valued RDN, a repeated attribute) would issue leaves that never chain.
    fn self_check(&self) -> Result<(), PkiError> {
        let mut params = CertificateParams::default();
        params.serial_number = Some(random_serial()?);
        let probe = params
            .signed_by(self.issuer.key(), &self.issuer)
            .map_err(|e| PkiError::CertGeneration(format!("CA self-check: {e}")))?;
        let probe = parse_cert(probe.der())?;
        let ca = parse_cert(&self.cert_der)?;
        if probe.issuer().as_raw() != ca.subject().as_raw() {
            return Err(PkiError::InvalidCertificate(format!(
                "the CA subject {:?} cannot be reproduced exactly (multi-valued or repeated \
                 name attributes); create the CA with a simple subject such as /CN=name",
                self.subject
            )));
        }
        probe
            .verify_signature(Some(ca.public_key()))
            .map_err(|_| PkiError::KeyMismatch {
                subject: self.subject.clone(),
            })
    }

    /// The CA certificate DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The CA certificate as one PEM block.
    pub fn cert_pem(&self) -> String {
        encode("CERTIFICATE", &self.cert_der)
    }

    /// PKCS#8 PEM of the CA key. The caller must store it sealed or in a 0600 file.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// SHA-256 of the CA certificate DER: the value tokens carry and clients pin.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// Start of the CA's validity, unix seconds.
    pub fn not_before(&self) -> i64 {
        self.not_before
    }

    /// End of the CA's validity, unix seconds.
    pub fn not_after(&self) -> i64 {
        self.not_after
    }

    /// Issues a leaf certificate for the public key of `csr_der` (a DER PKCS#10
    /// request). The request's signature must verify and its key must be ECDSA P-256
    /// or Ed25519; everything else in the request (subject, SANs, basicConstraints,
    /// usages) is ignored and taken from `profile` instead.
    pub fn sign_csr(&self, csr_der: &[u8], profile: &LeafProfile) -> Result<IssuedCert, PkiError> {
        let spki = verified_spki(csr_der)?;
        let public_key = SubjectPublicKeyInfo::from_der(&spki)
            .map_err(|e| PkiError::InvalidCsr(format!("public key: {e}")))?;
        self.sign(&public_key, profile)
    }

    /// Issues a leaf certificate for a key we hold ourselves (the first gateway's
    /// own certificate at init, the hub's server certificate).
    pub fn issue(&self, key: &NodeKey, profile: &LeafProfile) -> Result<IssuedCert, PkiError> {
        self.sign(&key.key, profile)
    }

    /// Like [`CertificateAuthority::issue`] with an explicit validity window
    /// (unix seconds) instead of the profile's lifetime: for tests of expired
    /// and not-yet-valid certificates, and of clocks that are off.
    pub fn issue_valid_between(
        &self,
        key: &NodeKey,
        profile: &LeafProfile,
        not_before: i64,
        not_after: i64,
    ) -> Result<IssuedCert, PkiError> {
        let at = |t: i64| {
            OffsetDateTime::from_unix_timestamp(t)
                .map_err(|_| PkiError::InvalidProfile(format!("time {t} is out of range")))
        };
        if not_after <= not_before {
            return Err(PkiError::InvalidProfile(
                "not_after must come after not_before".to_owned(),
            ));
        }
        let mut params = leaf_params(profile)?;
        params.not_before = at(not_before)?;
        params.not_after = at(not_after)?;
        self.sign_params(&key.key, params)
    }

    fn sign(
        &self,
        public_key: &impl PublicKeyData,
        profile: &LeafProfile,
    ) -> Result<IssuedCert, PkiError> {
        self.sign_params(public_key, leaf_params(profile)?)
    }

    fn sign_params(
        &self,
        public_key: &impl PublicKeyData,
        params: CertificateParams,
    ) -> Result<IssuedCert, PkiError> {
        let cert = params
            .signed_by(public_key, &self.issuer)
            .map_err(|e| PkiError::CertGeneration(e.to_string()))?;
        let cert_der = cert.der().to_vec();
        let info = cert_info(&cert_der)?;
        Ok(IssuedCert {
            cert_der,
            serial_hex: info.serial_hex,
            not_before: info.not_before,
            not_after: info.not_after,
            spki_sha256: info.spki_sha256,
        })
    }
}

/// The rcgen parameters of a leaf certificate, from the profile alone.
fn leaf_params(profile: &LeafProfile) -> Result<CertificateParams, PkiError> {
    let (not_before, not_after) = validity(profile.lifetime)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name_dn(&profile.common_name);
    for name in &profile.dns_names {
        if name.is_empty() {
            return Err(PkiError::InvalidProfile("empty DNS name".to_owned()));
        }
        let ia5 = name
            .clone()
            .try_into()
            .map_err(|_| PkiError::InvalidProfile(format!("DNS name {name:?} is not ASCII")))?;
        params.subject_alt_names.push(SanType::DnsName(ia5));
    }
    params.subject_alt_names.extend(
        profile
            .ip_addresses
            .iter()
            .map(|ip| SanType::IpAddress(*ip)),
    );
    // basicConstraints CA:FALSE written out, not just omitted, so no verifier can
    // mistake a leaf for a CA.
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    if profile.server {
        params.insert_extended_key_usage(ExtendedKeyUsagePurpose::ServerAuth);
    }
    if profile.client {
        params.insert_extended_key_usage(ExtendedKeyUsagePurpose::ClientAuth);
    }
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial()?);
    params.not_before = not_before;
    params.not_after = not_after;
    Ok(params)
}

fn common_name_dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    if !common_name.is_empty() {
        dn.push(DnType::CommonName, common_name);
    }
    dn
}

/// 16 random bytes with the top bit clear (a positive INTEGER without padding) and
/// the next bit set (always 16 bytes long, never zero): 126 random bits, well above
/// the 64 that CA/B rules ask for to make serials unpredictable.
fn random_serial() -> Result<SerialNumber, PkiError> {
    let mut bytes = random_bytes::<16>()?;
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

/// `(now - CLOCK_SLOP, now + lifetime)`, to whole seconds (what a certificate holds).
fn validity(lifetime: Duration) -> Result<(OffsetDateTime, OffsetDateTime), PkiError> {
    if lifetime.is_zero() {
        return Err(PkiError::InvalidProfile(
            "certificate lifetime must be positive".to_owned(),
        ));
    }
    let too_long =
        || PkiError::InvalidProfile(format!("certificate lifetime {lifetime:?} is too long"));
    let now = OffsetDateTime::from_unix_timestamp(OffsetDateTime::now_utc().unix_timestamp())
        .map_err(|_| PkiError::CertGeneration("the system clock is out of range".to_owned()))?;
    let not_before = now - CLOCK_SLOP;
    let lifetime = time::Duration::try_from(lifetime).map_err(|_| too_long())?;
    let not_after = now.checked_add(lifetime).ok_or_else(too_long)?;
    // Four-digit years only: GeneralizedTime cannot hold more.
    if not_after.year() > 9999 {
        return Err(too_long());
    }
    Ok((not_before, not_after))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::cert_info;
    use crate::spki_sha256;
    use rcgen::{KeyPair, PKCS_ECDSA_P384_SHA384, PKCS_RSA_SHA256};

    const HOUR: Duration = Duration::from_secs(3600);

    fn profile(names: &[&str]) -> LeafProfile {
        LeafProfile {
            common_name: "n7".into(),
            dns_names: names.iter().map(|s| s.to_string()).collect(),
            ip_addresses: vec![],
            lifetime: 2 * HOUR,
            server: true,
            client: false,
        }
    }

    /// A CSR that asks for everything a joiner should not get.
    fn greedy_csr(key: &KeyPair) -> Vec<u8> {
        let mut params = CertificateParams::new(vec!["n1.x.gantry".to_owned()]).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        params.distinguished_name = common_name_dn("n1");
        params.serialize_request(key).unwrap().der().to_vec()
    }

    fn now() -> i64 {
        OffsetDateTime::now_utc().unix_timestamp()
    }

    #[test]
    fn generated_ca_is_a_constrained_ca() {
        let ca = CertificateAuthority::generate("gantry test CA", 24 * HOUR).unwrap();
        let cert = parse_cert(ca.cert_der()).unwrap();
        let bc = cert.basic_constraints().unwrap().unwrap();
        assert!(bc.critical && bc.value.ca);
        assert_eq!(bc.value.path_len_constraint, Some(0));
        let ku = cert.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign() && ku.crl_sign() && ku.digital_signature());
        assert_eq!(cert.raw_serial().len(), 16);
        assert_eq!(cert.subject().to_string(), "CN=gantry test CA");
        assert!((ca.not_before() - (now() - 3600)).abs() <= 2);
        assert!((ca.not_after() - (now() + 24 * 3600)).abs() <= 2);
        assert_eq!(ca.fingerprint(), Fingerprint::of(ca.cert_der()));
        cert.verify_signature(None).unwrap();
    }

    #[test]
    fn ca_pem_round_trip_keeps_the_fingerprint_and_key() {
        let ca = CertificateAuthority::generate("round trip", HOUR).unwrap();
        assert!(ca.key_pem().starts_with("-----BEGIN PRIVATE KEY-----\n"));
        let back = CertificateAuthority::from_pem(&ca.cert_pem(), &ca.key_pem()).unwrap();
        assert_eq!(back.fingerprint(), ca.fingerprint());
        assert_eq!(back.not_after(), ca.not_after());
        // Certificates issued by the reloaded CA verify with the original.
        let key = NodeKey::generate().unwrap();
        let issued = back.issue(&key, &profile(&["gateway.gantry"])).unwrap();
        let leaf = parse_cert(&issued.cert_der).unwrap();
        let orig = parse_cert(ca.cert_der()).unwrap();
        leaf.verify_signature(Some(orig.public_key())).unwrap();
    }

    #[test]
    fn ca_debug_holds_no_key() {
        let ca = CertificateAuthority::generate("debug", HOUR).unwrap();
        let debug = format!("{ca:?}");
        let key_pem = ca.key_pem();
        let body: String = key_pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        assert!(!debug.contains(&body[..40]));
        assert!(debug.contains(&ca.fingerprint().to_hex()));
        let der = ca.issuer.key().serialize_der();
        assert!(!debug.contains(&hex::encode(&der)[..32]));
    }

    /// What `openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -subj /CN=... \
    /// -addext basicConstraints=critical,CA:TRUE` makes: a P-256 self-signed CA with the
    /// subject in Country/Org/CN form, SKI and AKI, no keyUsage, PKCS#8 key.
    #[test]
    fn openssl_style_ca_is_accepted() {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CountryName,
            rcgen::DnValue::PrintableString("DE".try_into().unwrap()),
        );
        dn.push(DnType::OrganizationName, "Example Ops");
        dn.push(DnType::CommonName, "Example Edge Root");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(SerialNumber::from_slice(&[0x01, 0x23, 0x45]));
        let (nb, na) = validity(24 * HOUR).unwrap();
        params.not_before = nb;
        params.not_after = na;
        let cert = params.self_signed(&key).unwrap();

        let ca = CertificateAuthority::from_pem(&cert.pem(), &key.serialize_pem()).unwrap();
        assert_eq!(ca.fingerprint(), Fingerprint::of(cert.der()));
        let node = NodeKey::generate().unwrap();
        let issued = ca.issue(&node, &profile(&["gateway.gantry"])).unwrap();
        let leaf = parse_cert(&issued.cert_der).unwrap();
        assert_eq!(
            leaf.issuer().as_raw(),
            parse_cert(cert.der()).unwrap().subject().as_raw()
        );
        // SEC1 ("EC PRIVATE KEY") keys, as older openssl writes them, load too and are
        // written back as PKCS#8.
        let sec1 = {
            use aws_lc_rs::encoding::AsDer;
            let lc = aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
                &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
                key.serialized_der(),
            )
            .unwrap();
            encode(
                "EC PRIVATE KEY",
                lc.private_key().as_der().unwrap().as_ref(),
            )
        };
        let ca2 = CertificateAuthority::from_pem(&cert.pem(), &sec1).unwrap();
        assert!(ca2.key_pem().starts_with("-----BEGIN PRIVATE KEY-----\n"));
        assert_eq!(ca2.fingerprint(), ca.fingerprint());
    }

    /// CAs made by the openssl CLI (see testdata/README.md).
    #[test]
    fn openssl_made_cas_load_and_issue() {
        let cert = include_str!("../testdata/openssl_p256_ca.crt");
        let ca =
            CertificateAuthority::from_pem(cert, include_str!("../testdata/openssl_p256_ca.key"))
                .unwrap();
        // `openssl x509 -outform DER | sha256sum` of the file.
        assert_eq!(
            ca.fingerprint().to_hex(),
            "e202608530442f6b3b6bb2f72397b6197ffa7303f574cf118036a0e3647921f4"
        );
        let node = NodeKey::generate().unwrap();
        let issued = ca.issue(&node, &profile(&["gateway.gantry"])).unwrap();
        let leaf = parse_cert(&issued.cert_der).unwrap();
        let root = parse_cert(ca.cert_der()).unwrap();
        assert_eq!(leaf.issuer().as_raw(), root.subject().as_raw());
        leaf.verify_signature(Some(root.public_key())).unwrap();

        let sec1 = CertificateAuthority::from_pem(
            include_str!("../testdata/openssl_sec1_ca.crt"),
            include_str!("../testdata/openssl_sec1_ca.key"),
        )
        .unwrap();
        assert!(sec1.key_pem().starts_with("-----BEGIN PRIVATE KEY-----\n"));
        let reloaded = CertificateAuthority::from_pem(&sec1.cert_pem(), &sec1.key_pem()).unwrap();
        assert_eq!(reloaded.fingerprint(), sec1.fingerprint());

        assert!(matches!(
            CertificateAuthority::from_pem(
                include_str!("../testdata/openssl_not_ca.crt"),
                include_str!("../testdata/openssl_not_ca.key"),
            ),
            Err(PkiError::NotACa { .. })
        ));
        let err = CertificateAuthority::from_pem(
            include_str!("../testdata/openssl_repeated_ou_ca.crt"),
            include_str!("../testdata/openssl_repeated_ou_ca.key"),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("cannot be reproduced exactly"),
            "{err}"
        );
        assert!(matches!(
            CertificateAuthority::from_pem(cert, include_str!("../testdata/openssl_sec1_ca.key")),
            Err(PkiError::KeyMismatch { .. })
        ));
    }

    #[test]
    fn non_ca_certificate_is_refused_as_ca() {
        let ca = CertificateAuthority::generate("real CA", HOUR).unwrap();
        let key = NodeKey::generate().unwrap();
        let leaf = ca.issue(&key, &profile(&["gateway.gantry"])).unwrap();
        let err =
            CertificateAuthority::from_pem(&encode("CERTIFICATE", &leaf.cert_der), &key.to_pem())
                .unwrap_err();
        assert!(matches!(err, PkiError::NotACa { .. }), "{err}");
        assert!(err.to_string().contains("CA:TRUE"));

        // A self-signed certificate without any basicConstraints is no CA either.
        let kp = KeyPair::generate().unwrap();
        let plain = CertificateParams::new(vec!["x".to_owned()])
            .unwrap()
            .self_signed(&kp)
            .unwrap();
        assert!(matches!(
            CertificateAuthority::from_pem(&plain.pem(), &kp.serialize_pem()),
            Err(PkiError::NotACa { .. })
        ));

        // A CA whose keyUsage forbids certificate signing.
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let no_sign = params.self_signed(&kp).unwrap();
        assert!(matches!(
            CertificateAuthority::from_pem(&no_sign.pem(), &kp.serialize_pem()),
            Err(PkiError::NotACa { .. })
        ));
    }

    #[test]
    fn mismatched_ca_key_is_refused() {
        let ca = CertificateAuthority::generate("one", HOUR).unwrap();
        let other = CertificateAuthority::generate("two", HOUR).unwrap();
        let err = CertificateAuthority::from_pem(&ca.cert_pem(), &other.key_pem()).unwrap_err();
        assert!(matches!(err, PkiError::KeyMismatch { .. }), "{err}");
        // Another algorithm is a mismatch too, not a crash.
        let p384 = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap();
        assert!(matches!(
            CertificateAuthority::from_pem(&ca.cert_pem(), &p384.serialize_pem()),
            Err(PkiError::KeyMismatch { .. })
        ));
    }

    #[test]
    fn unreadable_ca_pem_is_refused() {
        let ca = CertificateAuthority::generate("one", HOUR).unwrap();
        assert!(matches!(
            CertificateAuthority::from_pem("", &ca.key_pem()),
            Err(PkiError::Pem(_))
        ));
        assert!(CertificateAuthority::from_pem(&ca.cert_pem(), "").is_err());
        assert!(CertificateAuthority::from_pem(
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            &ca.key_pem()
        )
        .is_err());
        let two = format!("{}{}", ca.cert_pem(), ca.cert_pem());
        assert!(CertificateAuthority::from_pem(&two, &ca.key_pem()).is_err());
    }

    #[test]
    fn csr_signing_takes_only_the_key() {
        let ca = CertificateAuthority::generate("ca", 24 * HOUR).unwrap();
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let csr = greedy_csr(&key);
        let issued = ca.sign_csr(&csr, &profile(&["n7.x.gantry"])).unwrap();

        let info = cert_info(&issued.cert_der).unwrap();
        assert_eq!(info.dns_names, vec!["n7.x.gantry".to_owned()]);
        assert!(!info.is_ca);
        let cert = parse_cert(&issued.cert_der).unwrap();
        assert_eq!(cert.subject().to_string(), "CN=n7");
        let bc = cert.basic_constraints().unwrap().unwrap();
        assert!(!bc.value.ca);
        let ku = cert.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature() && !ku.key_cert_sign());
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && !eku.client_auth);
        assert!(cert
            .iter_extensions()
            .any(|e| e.oid == x509_parser::oid_registry::OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER));
        assert_eq!(issued.not_after - issued.not_before, 3 * 3600);
        assert!((issued.not_after - (now() + 2 * 3600)).abs() <= 2);
        assert_eq!(issued.not_before, info.not_before);
        assert_eq!(issued.serial_hex, info.serial_hex);
        assert_eq!(issued.serial_hex.len(), 32);

        let csr_spki = Fingerprint::of(&key.subject_public_key_info());
        assert_eq!(issued.spki_sha256, csr_spki);
        assert_eq!(spki_sha256(&issued.cert_der).unwrap(), csr_spki);
        cert.verify_signature(Some(parse_cert(ca.cert_der()).unwrap().public_key()))
            .unwrap();
    }

    #[test]
    fn csr_of_ed25519_key_is_accepted() {
        let ca = CertificateAuthority::generate("ca", HOUR).unwrap();
        let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let issued = ca
            .sign_csr(&greedy_csr(&key), &profile(&["n7.x.gantry"]))
            .unwrap();
        assert_eq!(
            issued.spki_sha256,
            Fingerprint::of(&key.subject_public_key_info())
        );
    }

    #[test]
    fn csr_of_other_key_types_is_refused() {
        let ca = CertificateAuthority::generate("ca", HOUR).unwrap();
        let p384 = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap();
        let err = ca
            .sign_csr(&greedy_csr(&p384), &profile(&["n7.x.gantry"]))
            .unwrap_err();
        assert!(
            matches!(err, PkiError::UnsupportedKeyAlgorithm(ref a) if a == "ECDSA P-384"),
            "{err}"
        );

        let rsa = KeyPair::generate_rsa_for(&PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048).unwrap();
        let err = ca
            .sign_csr(&greedy_csr(&rsa), &profile(&["n7.x.gantry"]))
            .unwrap_err();
        assert!(
            matches!(err, PkiError::UnsupportedKeyAlgorithm(ref a) if a == "RSA"),
            "{err}"
        );
    }

    #[test]
    fn csr_with_broken_signature_is_refused() {
        let ca = CertificateAuthority::generate("ca", HOUR).unwrap();
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut csr = greedy_csr(&key);
        let last = csr.len() - 1;
        csr[last] ^= 0x01;
        assert!(matches!(
            ca.sign_csr(&csr, &profile(&["n7.x.gantry"])),
            Err(PkiError::InvalidCsr(_))
        ));
        // A changed request body (here: the requested name) breaks the signature too.
        let mut csr = greedy_csr(&key);
        let pos = csr.windows(11).position(|w| w == b"n1.x.gantry").unwrap();
        csr[pos + 1] = b'9';
        assert!(matches!(
            ca.sign_csr(&csr, &profile(&["n7.x.gantry"])),
            Err(PkiError::InvalidCsr(_))
        ));
        assert!(matches!(
            ca.sign_csr(b"not a csr", &profile(&["n7.x.gantry"])),
            Err(PkiError::InvalidCsr(_))
        ));
    }

    #[test]
    fn node_key_csr_round_trip() {
        let ca = CertificateAuthority::generate("ca", HOUR).unwrap();
        let key = NodeKey::generate().unwrap();
        let csr = key.csr_der("n3").unwrap();
        let issued = ca
            .sign_csr(&csr, &LeafProfile::node(3, "c9", HOUR))
            .unwrap();
        assert_eq!(issued.spki_sha256, key.spki_sha256());
        assert_eq!(crate::node_id_of(&issued.cert_der, "c9"), Some(3));
        let info = cert_info(&issued.cert_der).unwrap();
        assert_eq!(
            info.dns_names,
            vec!["gateway.gantry".to_owned(), "n3.c9.gantry".to_owned()]
        );
    }

    #[test]
    fn profiles_are_validated() {
        let ca = CertificateAuthority::generate("ca", HOUR).unwrap();
        let key = NodeKey::generate().unwrap();
        let mut p = profile(&["gateway.gantry"]);
        p.lifetime = Duration::ZERO;
        assert!(matches!(
            ca.issue(&key, &p),
            Err(PkiError::InvalidProfile(_))
        ));
        p.lifetime = Duration::from_secs(u64::MAX);
        assert!(matches!(
            ca.issue(&key, &p),
            Err(PkiError::InvalidProfile(_))
        ));
        let p = profile(&["gätewäy.gantry"]);
        assert!(matches!(
            ca.issue(&key, &p),
            Err(PkiError::InvalidProfile(_))
        ));
        let mut p = profile(&[]);
        p.ip_addresses = vec!["127.0.0.1".parse().unwrap()];
        assert!(ca.issue(&key, &p).is_ok());
    }
}
