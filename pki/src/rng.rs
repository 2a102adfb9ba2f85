//! Random bytes from aws-lc's system RNG, as the one source of randomness in the crate.
//!
//! Keys, serials, nonces, token ids and secrets all come from here, so there is a
//! single place to audit and no second RNG crate in the dependency tree.

use crate::PkiError;

/// `N` random bytes, or an error if the system RNG failed (it does not in practice,
/// but the failure is reported rather than turned into a panic).
pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N], PkiError> {
    let mut out = [0u8; N];
    aws_lc_rs::rand::fill(&mut out)
        .map_err(|_| PkiError::Crypto("the system random number generator failed"))?;
    Ok(out)
}
