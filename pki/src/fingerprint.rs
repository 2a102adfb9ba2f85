//! SHA-256 fingerprints of certificates and public keys.
//!
//! A fingerprint is what gantry pins: join/admin/site tokens carry the CA's
//! certificate fingerprint, and gateways pin each other's SubjectPublicKeyInfo
//! hash. Both are plain SHA-256 so an operator can check them with
//! `openssl x509 -outform DER | sha256sum` without gantry.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

use crate::hexstr;
use crate::PkiError;

/// A SHA-256 digest; prints (both `Display` and `Debug`) as 64 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// SHA-256 of `der`. For a certificate's DER this is the value
    /// `openssl x509 -outform DER | sha256sum` prints.
    pub fn of(der: &[u8]) -> Self {
        Fingerprint(Sha256::digest(der).into())
    }

    /// Parses exactly 64 lowercase hex characters (the form [`Fingerprint::to_hex`] writes).
    pub fn parse(hex: &str) -> Result<Self, PkiError> {
        hexstr::decode_lower::<32>(hex)
            .map(Fingerprint)
            .ok_or_else(|| PkiError::InvalidFingerprint(hex.to_owned()))
    }

    /// The 64 lowercase hex characters of the digest.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl FromStr for Fingerprint {
    type Err = PkiError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Fingerprint::parse(s)
    }
}

/// SHA-256 of the SubjectPublicKeyInfo DER of the certificate `cert_der`.
///
/// Pinning the key rather than the certificate lets a pin survive a renewal that
/// keeps the key, and makes a re-issued certificate for a *new* key fail the pin.
pub fn spki_sha256(cert_der: &[u8]) -> Result<Fingerprint, PkiError> {
    let cert = crate::identity::parse_cert(cert_der)?;
    Ok(Fingerprint::of(cert.public_key().raw))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_is_sha256_and_round_trips_as_lowercase_hex() {
        // SHA-256("abc"), the FIPS 180-2 test vector.
        let fp = Fingerprint::of(b"abc");
        let hex = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(fp.to_hex(), hex);
        assert_eq!(fp.to_string(), hex);
        assert_eq!(format!("{fp:?}"), hex);
        assert_eq!(Fingerprint::parse(hex).ok(), Some(fp));
        assert_eq!(hex.parse::<Fingerprint>().ok(), Some(fp));
    }

    #[test]
    fn fingerprint_parse_is_strict() {
        let hex = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert!(Fingerprint::parse(&hex.to_uppercase()).is_err());
        assert!(Fingerprint::parse(&hex[1..]).is_err());
        assert!(Fingerprint::parse(&format!("{hex}0")).is_err());
        assert!(Fingerprint::parse(&format!(" {}", &hex[1..])).is_err());
        assert!(Fingerprint::parse("").is_err());
    }
}
