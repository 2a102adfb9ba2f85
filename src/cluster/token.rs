//! Cluster ids. (Tokens themselves are `gantry_pki::{JoinToken,
//! AdminToken}`, checked in `trust::tokens`.)

use rand::RngCore;

/// A new random cluster id: short enough to read in logs and in node names
/// (`n<id>.<cluster>.gantry`).
pub fn new_cluster_id() -> String {
    let mut bytes = [0u8; 8];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}
