//! Join tokens: `gantry-join-v1.<cluster id>.<secret>`. The secret is 32
//! random bytes; the cluster replicates only its sha256, so a stolen data
//! dir of a follower does not hold a usable token.

use rand::RngCore;
use sha2::{Digest, Sha256};

const PREFIX: &str = "gantry-join-v1";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub cluster_id: String,
    pub secret: String,
}

impl JoinToken {
    /// A fresh token for `cluster_id`.
    pub fn generate(cluster_id: &str) -> Self {
        let mut secret = [0u8; 32];
        rand::rng().fill_bytes(&mut secret);
        Self {
            cluster_id: cluster_id.to_string(),
            secret: hex::encode(secret),
        }
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = text.trim().split('.');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(PREFIX), Some(cluster), Some(secret), None) if !cluster.is_empty() && secret.len() == 64 => {
                Ok(Self { cluster_id: cluster.to_string(), secret: secret.to_string() })
            }
            _ => Err("malformed join token (expected gantry-join-v1.<cluster>.<secret>, as written to DATA_DIR/join-token)".into()),
        }
    }

    pub fn secret_sha256(&self) -> String {
        hex::encode(Sha256::digest(self.secret.as_bytes()))
    }

    /// Constant-time comparison against the replicated hash.
    pub fn matches(&self, cluster_id: &str, secret_sha256: &str) -> bool {
        let ours = self.secret_sha256();
        let same_len = ours.len() == secret_sha256.len();
        let diff = ours
            .bytes()
            .zip(secret_sha256.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        same_len && diff == 0 && self.cluster_id == cluster_id
    }
}

impl std::fmt::Display for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{PREFIX}.{}.{}", self.cluster_id, self.secret)
    }
}

/// A new random cluster id: short enough to read in logs.
pub fn new_cluster_id() -> String {
    let mut bytes = [0u8; 8];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_verification() {
        let token = JoinToken::generate("abc");
        let parsed = JoinToken::parse(&token.to_string()).unwrap();
        assert_eq!(parsed, token);
        assert!(parsed.matches("abc", &token.secret_sha256()));
        assert!(!parsed.matches("other", &token.secret_sha256()));
        let wrong = JoinToken::generate("abc");
        assert!(!wrong.matches("abc", &token.secret_sha256()));
        assert!(JoinToken::parse("nonsense").is_err());
        assert!(JoinToken::parse("gantry-join-v1.abc.short").is_err());
    }
}
