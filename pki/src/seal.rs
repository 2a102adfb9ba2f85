//! Sealing secrets that live in replicated cluster state (the CA key, the hub's
//! site token) under a cluster key that lives only in files on the gateways.
//!
//! A copy of the Raft log or a snapshot alone therefore does not reveal the CA key.
//! The associated data binds each blob to its place, so a blob moved to another
//! field or cluster does not open there.

use std::fmt;

use aws_lc_rs::aead::{Aad, Nonce, RandomizedNonceKey, AES_256_GCM, NONCE_LEN};
use zeroize::Zeroize;

use crate::hexstr;
use crate::rng::random_bytes;
use crate::PkiError;

/// A 256-bit AES-GCM key. `Debug` prints `ClusterKey(***)`; zeroized on drop.
#[derive(Clone)]
pub struct ClusterKey([u8; 32]);

impl Drop for ClusterKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterKey(***)")
    }
}

impl ClusterKey {
    /// A fresh random key.
    pub fn generate() -> Result<Self, PkiError> {
        Ok(ClusterKey(random_bytes::<32>()?))
    }

    /// Reads 64 lowercase hex characters; surrounding whitespace (a file's trailing
    /// newline) is ignored.
    pub fn from_hex(text: &str) -> Result<Self, PkiError> {
        let text = text.trim();
        hexstr::decode_lower::<32>(text)
            .map(ClusterKey)
            .ok_or_else(|| PkiError::InvalidClusterKey(format!("found {} characters", text.len())))
    }

    /// The 64 lowercase hex characters of the key (what the key file holds).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    fn aead(&self) -> Result<RandomizedNonceKey, PkiError> {
        RandomizedNonceKey::new(&AES_256_GCM, &self.0)
            .map_err(|_| PkiError::Crypto("AES-256-GCM key setup failed"))
    }

    /// AES-256-GCM with a random 96-bit nonce; returns `nonce || ciphertext || tag`.
    /// `aad` should name the blob's place (cluster id and field name).
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, PkiError> {
        let key = self.aead()?;
        let mut body = plaintext.to_vec();
        let nonce = key
            .seal_in_place_append_tag(Aad::from(aad), &mut body)
            .map_err(|_| PkiError::Crypto("AES-256-GCM sealing failed"))?;
        let mut out = Vec::with_capacity(NONCE_LEN + body.len());
        out.extend_from_slice(nonce.as_ref());
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Opens what [`ClusterKey::seal`] produced with the same key and `aad`; any
    /// other key, aad or modified byte gives [`PkiError::SealedDataInvalid`].
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, PkiError> {
        if sealed.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(PkiError::SealedDataInvalid);
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce =
            Nonce::try_assume_unique_for_key(nonce).map_err(|_| PkiError::SealedDataInvalid)?;
        let mut body = body.to_vec();
        let plain = self
            .aead()?
            .open_in_place(nonce, Aad::from(aad), &mut body)
            .map_err(|_| PkiError::SealedDataInvalid)?
            .to_vec();
        body.zeroize();
        Ok(plain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_round_trip() {
        let key = ClusterKey::generate().unwrap();
        let sealed = key.seal(b"c1/ca_key", b"secret CA key").unwrap();
        assert_eq!(sealed.len(), 12 + 13 + 16);
        assert_eq!(key.open(b"c1/ca_key", &sealed).unwrap(), b"secret CA key");
        let empty = key.seal(b"c1/x", b"").unwrap();
        assert_eq!(key.open(b"c1/x", &empty).unwrap(), b"");
        // Fresh nonce each time.
        assert_ne!(
            key.seal(b"a", b"same").unwrap(),
            key.seal(b"a", b"same").unwrap()
        );
    }

    #[test]
    fn any_flipped_bit_fails() {
        let key = ClusterKey::generate().unwrap();
        let sealed = key.seal(b"aad", b"plaintext bytes").unwrap();
        // nonce, ciphertext and tag regions.
        for i in [0, 11, 12, 20, sealed.len() - 16, sealed.len() - 1] {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert!(
                matches!(key.open(b"aad", &bad), Err(PkiError::SealedDataInvalid)),
                "byte {i}"
            );
        }
        assert!(key.open(b"aad", &sealed[..sealed.len() - 1]).is_err());
        assert!(key.open(b"aad", &sealed[..27]).is_err());
        assert!(key.open(b"aad", &[]).is_err());
    }

    #[test]
    fn wrong_aad_or_key_fails() {
        let key = ClusterKey::generate().unwrap();
        let sealed = key.seal(b"c1/ca_key", b"x").unwrap();
        assert!(matches!(
            key.open(b"c2/ca_key", &sealed),
            Err(PkiError::SealedDataInvalid)
        ));
        assert!(key.open(b"", &sealed).is_err());
        let other = ClusterKey::generate().unwrap();
        assert!(matches!(
            other.open(b"c1/ca_key", &sealed),
            Err(PkiError::SealedDataInvalid)
        ));
    }

    #[test]
    fn cluster_key_hex_is_strict_and_debug_hides_it() {
        let key = ClusterKey::generate().unwrap();
        let hex = key.to_hex();
        assert_eq!(hex.len(), 64);
        let back = ClusterKey::from_hex(&format!("{hex}\n")).unwrap();
        assert_eq!(back.to_hex(), hex);
        assert!(ClusterKey::from_hex(&"ab".repeat(32)).is_ok());
        assert!(ClusterKey::from_hex(&"AB".repeat(32)).is_err());
        assert!(ClusterKey::from_hex(&hex[..62]).is_err());
        assert!(ClusterKey::from_hex("").is_err());
        let debug = format!("{key:?}");
        assert_eq!(debug, "ClusterKey(***)");
        assert!(!debug.contains(&hex[..8]));
    }
}
