//! The tokens operators copy between machines: join, admin and site tokens.
//!
//! Each token carries the fingerprint of the CA to pin (so the first TLS
//! connection is already authenticated), an id under which the cluster stores only
//! the SHA-256 of the secret, and the secret itself. Parsing is strict (lowercase
//! hex, exact lengths, exact number of parts) so one token has exactly one
//! spelling, and error messages never repeat the token text since it holds a secret.

use std::fmt;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroize;

use crate::fingerprint::Fingerprint;
use crate::hexstr;
use crate::rng::random_bytes;
use crate::PkiError;

const JOIN_PREFIX: &str = "gantry-join-v2";
const ADMIN_PREFIX: &str = "gantry-admin-v1";
const SITE_PREFIX: &str = "gantry-site-v2";
const JOIN_V1_PREFIX: &str = "gantry-join-v1.";

const JOIN_FORM: &str = "gantry-join-v2.<CA fingerprint: 64 hex>.<id: 16 hex>.<secret: 64 hex>";
const ADMIN_FORM: &str = "gantry-admin-v1.<CA fingerprint: 64 hex>.<id: 16 hex>.<secret: 64 hex>";
const SITE_FORM: &str = "gantry-site-v2.<hub CA fingerprint: 64 hex>.<secret: 64 hex>";

const JOIN_V1_MESSAGE: &str = "this join token comes from a gantry without TLS (v1); ask the \
     cluster for a new one with `gantry join-token create`";

/// 16 random lowercase hex characters: the id under which a token's secret hash is stored.
pub fn new_token_id() -> Result<String, PkiError> {
    Ok(hex::encode(random_bytes::<8>()?))
}

/// 32 random bytes that prove possession of a token. `Debug` prints `***`;
/// zeroized on drop. The cluster stores only [`Secret::sha256`].
#[derive(Clone)]
pub struct Secret([u8; 32]);

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl Secret {
    /// A fresh random secret.
    pub fn generate() -> Result<Self, PkiError> {
        Ok(Secret(random_bytes::<32>()?))
    }

    /// Reads 64 lowercase hex characters.
    pub fn from_hex(text: &str) -> Result<Self, PkiError> {
        hexstr::decode_lower::<32>(text).map(Secret).ok_or_else(|| {
            PkiError::MalformedToken("a secret is 64 lowercase hex characters".to_owned())
        })
    }

    /// The 64 lowercase hex characters of the secret.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// SHA-256 of the 32 raw bytes: what the cluster stores instead of the secret.
    pub fn sha256(&self) -> [u8; 32] {
        Sha256::digest(self.0).into()
    }

    /// Whether this secret hashes to `expected_sha256`, compared in constant time so
    /// the comparison leaks nothing about how much of a guess was right.
    pub fn matches(&self, expected_sha256: &[u8; 32]) -> bool {
        self.sha256().ct_eq(expected_sha256).into()
    }
}

/// Splits `text` (already trimmed) as `<prefix>.<part>.<part>...` with parts of
/// the given lowercase-hex lengths. `what` names the token kind for messages.
fn split<'a, const N: usize>(
    text: &'a str,
    prefix: &str,
    form: &str,
    what: &str,
    parts: [(usize, &str); N],
) -> Result<[&'a str; N], PkiError> {
    let malformed = |why: String| PkiError::MalformedToken(format!("{why}; expected {form}"));
    let Some(rest) = text
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('.'))
    else {
        return Err(malformed(wrong_kind(text, what)));
    };
    let fields: Vec<&str> = rest.split('.').collect();
    let found = fields.len();
    let fields: [&str; N] = fields.try_into().map_err(|_| {
        malformed(format!(
            "a {what} has {N} dot-separated parts after the prefix, this one has {found}"
        ))
    })?;
    for (field, (len, name)) in fields.iter().zip(parts) {
        if field.len() != len || !hexstr::is_lower_hex(field) {
            return Err(malformed(format!(
                "the {name} must be {len} lowercase hex characters"
            )));
        }
    }
    Ok(fields)
}

/// Explains a prefix mismatch, naming the kind of token it is if it is one.
fn wrong_kind(text: &str, what: &str) -> String {
    let head = text.split('.').next().unwrap_or_default();
    if head.starts_with("gantry-") && head.len() <= 32 && text.contains('.') {
        format!("this is a {head} token, not a {what}")
    } else {
        format!("this is not a gantry {what}")
    }
}

fn fingerprint_part(hex: &str) -> Result<Fingerprint, PkiError> {
    Fingerprint::parse(hex).map_err(|_| {
        PkiError::MalformedToken(
            "the CA fingerprint must be 64 lowercase hex characters".to_owned(),
        )
    })
}

/// Admits a new gateway: pins the cluster CA and proves the operator let it in.
/// Text form: `gantry-join-v2.<ca>.<id>.<secret>`.
#[derive(Clone)]
pub struct JoinToken {
    /// Fingerprint of the cluster CA certificate.
    pub ca: Fingerprint,
    /// 16 lowercase hex characters.
    pub id: String,
    /// The secret whose hash the cluster stores under `id`.
    pub secret: Secret,
}

impl JoinToken {
    /// A new token for the CA `ca`, with a random id and secret.
    pub fn generate(ca: Fingerprint) -> Result<Self, PkiError> {
        Ok(JoinToken {
            ca,
            id: new_token_id()?,
            secret: Secret::generate()?,
        })
    }

    /// Parses the text form (surrounding whitespace ignored).
    pub fn parse(text: &str) -> Result<Self, PkiError> {
        let text = text.trim();
        if text.starts_with(JOIN_V1_PREFIX) {
            return Err(PkiError::MalformedToken(JOIN_V1_MESSAGE.to_owned()));
        }
        let [ca, id, secret] = split(
            text,
            JOIN_PREFIX,
            JOIN_FORM,
            "join token",
            [(64, "CA fingerprint"), (16, "id"), (64, "secret")],
        )?;
        Ok(JoinToken {
            ca: fingerprint_part(ca)?,
            id: id.to_owned(),
            secret: Secret::from_hex(secret)?,
        })
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{JOIN_PREFIX}.{}.{}.{}",
            self.ca,
            self.id,
            self.secret.to_hex()
        )
    }
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JoinToken({JOIN_PREFIX}.{}.{}.***)", self.ca, self.id)
    }
}

/// Authorises an operator's CLI: pins the cluster CA and authenticates the admin.
/// Text form: `gantry-admin-v1.<ca>.<id>.<secret>`.
#[derive(Clone)]
pub struct AdminToken {
    /// Fingerprint of the cluster CA certificate.
    pub ca: Fingerprint,
    /// 16 lowercase hex characters.
    pub id: String,
    /// The secret whose hash the cluster stores under `id`.
    pub secret: Secret,
}

impl AdminToken {
    /// A new token for the CA `ca`, with a random id and secret.
    pub fn generate(ca: Fingerprint) -> Result<Self, PkiError> {
        Ok(AdminToken {
            ca,
            id: new_token_id()?,
            secret: Secret::generate()?,
        })
    }

    /// Parses the text form (surrounding whitespace ignored).
    pub fn parse(text: &str) -> Result<Self, PkiError> {
        let [ca, id, secret] = split(
            text.trim(),
            ADMIN_PREFIX,
            ADMIN_FORM,
            "admin token",
            [(64, "CA fingerprint"), (16, "id"), (64, "secret")],
        )?;
        Ok(AdminToken {
            ca: fingerprint_part(ca)?,
            id: id.to_owned(),
            secret: Secret::from_hex(secret)?,
        })
    }
}

impl fmt::Display for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{ADMIN_PREFIX}.{}.{}.{}",
            self.ca,
            self.id,
            self.secret.to_hex()
        )
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AdminToken({ADMIN_PREFIX}.{}.{}.***)", self.ca, self.id)
    }
}

/// Lets a site dial its hub: pins the hub's CA and authenticates the site.
/// Text form: `gantry-site-v2.<hub ca>.<secret>`.
#[derive(Clone)]
pub struct SiteToken {
    /// Fingerprint of the hub's CA certificate.
    pub hub_ca: Fingerprint,
    /// The secret whose hash the hub stores.
    pub secret: Secret,
}

impl SiteToken {
    /// A new token for the hub CA `hub_ca`, with a random secret.
    pub fn generate(hub_ca: Fingerprint) -> Result<Self, PkiError> {
        Ok(SiteToken {
            hub_ca,
            secret: Secret::generate()?,
        })
    }

    /// Parses the text form (surrounding whitespace ignored).
    pub fn parse(text: &str) -> Result<Self, PkiError> {
        let [hub_ca, secret] = split(
            text.trim(),
            SITE_PREFIX,
            SITE_FORM,
            "site token",
            [(64, "hub CA fingerprint"), (64, "secret")],
        )?;
        Ok(SiteToken {
            hub_ca: fingerprint_part(hub_ca)?,
            secret: Secret::from_hex(secret)?,
        })
    }
}

impl fmt::Display for SiteToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SITE_PREFIX}.{}.{}", self.hub_ca, self.secret.to_hex())
    }
}

impl fmt::Debug for SiteToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SiteToken({SITE_PREFIX}.{}.***)", self.hub_ca)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca() -> Fingerprint {
        Fingerprint::of(b"some CA certificate")
    }

    fn message(err: PkiError) -> String {
        match err {
            PkiError::MalformedToken(m) => m,
            other => panic!("expected MalformedToken, got {other:?}"),
        }
    }

    #[test]
    fn join_token_round_trip() {
        let t = JoinToken::generate(ca()).unwrap();
        let text = t.to_string();
        assert!(text.starts_with("gantry-join-v2."));
        assert_eq!(text.len(), "gantry-join-v2".len() + 3 + 64 + 16 + 64);
        let back = JoinToken::parse(&format!("  {text}\n")).unwrap();
        assert_eq!(back.ca, t.ca);
        assert_eq!(back.id, t.id);
        assert_eq!(back.secret.to_hex(), t.secret.to_hex());
        assert_eq!(back.to_string(), text);
        assert_eq!(t.id.len(), 16);
    }

    #[test]
    fn admin_token_round_trip() {
        let t = AdminToken::generate(ca()).unwrap();
        let text = t.to_string();
        assert!(text.starts_with("gantry-admin-v1."));
        let back = AdminToken::parse(&text).unwrap();
        assert_eq!((back.ca, &back.id), (t.ca, &t.id));
        assert_eq!(back.to_string(), text);
    }

    #[test]
    fn site_token_round_trip() {
        let t = SiteToken::generate(ca()).unwrap();
        let text = t.to_string();
        assert!(text.starts_with("gantry-site-v2."));
        let back = SiteToken::parse(&format!("{text}\r\n")).unwrap();
        assert_eq!(back.hub_ca, t.hub_ca);
        assert_eq!(back.to_string(), text);
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let good = JoinToken::generate(ca()).unwrap().to_string();
        let (ca_hex, id, secret) = {
            let p: Vec<&str> = good.split('.').collect();
            (p[1].to_owned(), p[2].to_owned(), p[3].to_owned())
        };
        let bad = [
            String::new(),
            "garbage".to_owned(),
            format!("gantry-join-v2.{ca_hex}.{id}"),
            format!("gantry-join-v2.{ca_hex}.{id}.{secret}."),
            format!("gantry-join-v2.{ca_hex}.{id}.{secret}.00"),
            format!("gantry-join-v2..{ca_hex}.{id}.{secret}"),
            format!("gantry-join-v2.{}.{id}.{secret}", ca_hex.to_uppercase()),
            format!("gantry-join-v2.{ca_hex}.{}.{secret}", "AB".repeat(8)),
            format!("gantry-join-v2.{ca_hex}.{id}.{}", "CD".repeat(32)),
            format!("gantry-join-v2.{}.{id}.{secret}", &ca_hex[1..]),
            format!("gantry-join-v2.{ca_hex}0.{id}.{secret}"),
            format!("gantry-join-v2.{ca_hex}.{}.{secret}", &id[1..]),
            format!("gantry-join-v2.{ca_hex}.{id}0.{secret}"),
            format!("gantry-join-v2.{ca_hex}.{id}.{}", &secret[1..]),
            format!("gantry-join-v2.{ca_hex}.{id}.{secret}0"),
            format!("gantry-join-v2.{ca_hex}.{id}.{}g", &secret[1..]),
            format!("gantry-join-v3.{ca_hex}.{id}.{secret}"),
            format!("gantry-join-v2{ca_hex}.{id}.{secret}"),
            format!("GANTRY-JOIN-V2.{ca_hex}.{id}.{secret}"),
            format!("gantry-admin-v1.{ca_hex}.{id}.{secret}"),
            format!("gantry-join-v2.{ca_hex}.{id}.{secret} x"),
        ];
        for text in &bad {
            let err = JoinToken::parse(text).expect_err(text);
            let msg = message(err);
            assert!(msg.contains("expected gantry-join-v2."), "{msg}");
            assert!(
                !msg.contains(&secret),
                "error message leaks the secret: {msg}"
            );
        }
        assert!(message(
            JoinToken::parse(&format!("gantry-admin-v1.{ca_hex}.{id}.{secret}")).unwrap_err()
        )
        .contains("this is a gantry-admin-v1 token, not a join token"));
        assert!(AdminToken::parse(&good).is_err());
        assert!(SiteToken::parse(&good).is_err());
        assert!(SiteToken::parse(&format!("gantry-site-v2.{ca_hex}.{id}.{secret}")).is_err());
        assert!(SiteToken::parse(&format!("gantry-site-v2.{ca_hex}")).is_err());
        assert!(SiteToken::parse(&format!("gantry-site-v1.{ca_hex}.{secret}")).is_err());
        assert!(AdminToken::parse(&format!(
            "gantry-admin-v1.{ca_hex}.{id}.{}",
            secret.to_uppercase()
        ))
        .is_err());
    }

    #[test]
    fn v1_join_token_gets_its_own_message() {
        let msg = message(JoinToken::parse("gantry-join-v1.abcdef.0123456789").unwrap_err());
        assert_eq!(
            msg,
            "this join token comes from a gantry without TLS (v1); ask the cluster for a new one \
             with `gantry join-token create`"
        );
        let err = JoinToken::parse("  gantry-join-v1.x \n").unwrap_err();
        assert!(err.to_string().contains("without TLS (v1)"));
    }

    #[test]
    fn debug_hides_secrets() {
        let join = JoinToken::generate(ca()).unwrap();
        let admin = AdminToken::generate(ca()).unwrap();
        let site = SiteToken::generate(ca()).unwrap();
        for (debug, secret) in [
            (format!("{join:?}"), join.secret.to_hex()),
            (format!("{admin:?}"), admin.secret.to_hex()),
            (format!("{site:?}"), site.secret.to_hex()),
            (format!("{:?}", join.secret), join.secret.to_hex()),
        ] {
            assert!(!debug.contains(&secret[..16]), "{debug}");
            assert!(debug.contains("***"), "{debug}");
        }
        assert_eq!(
            format!("{join:?}"),
            format!("JoinToken(gantry-join-v2.{}.{}.***)", join.ca, join.id)
        );
        assert!(format!("{admin:?}").contains(&admin.id));
        assert!(format!("{site:?}").contains(&site.hub_ca.to_hex()));
        assert_eq!(format!("{:?}", join.secret), "***");
    }

    #[test]
    fn secret_matches_its_hash_only() {
        let s = Secret::generate().unwrap();
        let h = s.sha256();
        assert!(s.matches(&h));
        let other = Secret::generate().unwrap();
        assert!(!other.matches(&h));
        let mut near = h;
        near[31] ^= 1;
        assert!(!s.matches(&near));
        // SHA-256 of the raw bytes, not of the hex text.
        let zero = Secret::from_hex(&"00".repeat(32)).unwrap();
        assert_eq!(
            hex::encode(zero.sha256()),
            "66687aadf862bd776c8fc18b8e9f8e20089714856ee233b3902a591d0d5f2925"
        );
    }

    #[test]
    fn token_ids_are_16_lowercase_hex() {
        let a = new_token_id().unwrap();
        assert_eq!(a.len(), 16);
        assert!(hexstr::is_lower_hex(&a));
        assert_ne!(a, new_token_id().unwrap());
    }
}
