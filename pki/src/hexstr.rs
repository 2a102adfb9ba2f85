//! Strict lowercase-hex decoding.
//!
//! `hex::decode` also accepts uppercase digits. gantry prints every fingerprint,
//! token and key in lowercase and compares their *texts* in places (config files,
//! replicated state), so accepting two spellings of one value would let the same
//! secret or pin exist under two names. Everything parsed here is lowercase only.

/// Decodes exactly `2 * N` lowercase hex characters, or returns `None`.
pub(crate) fn decode_lower<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N || !is_lower_hex(text) {
        return None;
    }
    let mut out = [0u8; N];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

/// Whether every character is one of `0-9a-f` (an empty string is lowercase hex).
pub(crate) fn is_lower_hex(text: &str) -> bool {
    text.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_lowercase_of_exact_length_only() {
        assert_eq!(decode_lower::<2>("0aff"), Some([0x0a, 0xff]));
        assert_eq!(decode_lower::<2>("0AFF"), None);
        assert_eq!(decode_lower::<2>("0af"), None);
        assert_eq!(decode_lower::<2>("0aff0"), None);
        assert_eq!(decode_lower::<2>("0agf"), None);
        assert_eq!(decode_lower::<2>("+aff"), None);
    }
}
