//! Bearer and join tokens against the replicated records: new tokens (the
//! secret returned once, its hash recorded) and the checks, which compare
//! hashes in constant time and give one answer for every kind of wrong
//! token, so a caller learns nothing about which part was wrong.

use std::time::Duration;

use gantry_pki::{AdminToken, Fingerprint, JoinToken, Secret};

use crate::state::{NodeId, Role, State, TokenKind, TokenRecord};

/// The one answer to an unusable admin token.
pub const BAD_ADMIN_TOKEN: &str = "unknown, expired or revoked token";
/// The one answer to an unusable join token.
pub const BAD_JOIN_TOKEN: &str = "unknown or revoked join token";

/// Who a valid admin token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bearer {
    pub id: String,
    pub role: Role,
}

fn digest_of(record: &TokenRecord) -> Option<[u8; 32]> {
    let bytes = hex::decode(&record.secret_sha256).ok()?;
    bytes.try_into().ok()
}

fn secret_matches(secret: &Secret, record: &TokenRecord) -> bool {
    digest_of(record).is_some_and(|digest| secret.matches(&digest))
}

fn cluster_ca(state: &State) -> Option<&str> {
    state.meta.pki.as_ref().map(|p| p.ca_sha256.as_str())
}

/// Checks `text` (an `authorization: Bearer` value) at `now_ms`.
pub fn check_admin(state: &State, text: &str, now_ms: u64) -> Result<Bearer, &'static str> {
    let token = AdminToken::parse(text).map_err(|_| BAD_ADMIN_TOKEN)?;
    if cluster_ca(state) != Some(token.ca.to_hex().as_str()) {
        return Err(BAD_ADMIN_TOKEN);
    }
    let record = state
        .meta
        .tokens
        .get(&token.id)
        .filter(|r| r.kind == TokenKind::Admin)
        .ok_or(BAD_ADMIN_TOKEN)?;
    if !secret_matches(&token.secret, record) || record.expired_at(now_ms) {
        return Err(BAD_ADMIN_TOKEN);
    }
    let role = record.role.ok_or(BAD_ADMIN_TOKEN)?;
    Ok(Bearer {
        id: record.id.clone(),
        role,
    })
}

/// Checks a join token's secret on the leader before anything is proposed;
/// the state machine checks expiry and uses and takes the use
/// (`RegisterNode.join_token`), deterministically, and lets a retried join
/// of the same gateway through without taking another.
pub fn check_join(state: &State, text: &str) -> Result<String, String> {
    let token = JoinToken::parse(text).map_err(|e| e.to_string())?;
    if cluster_ca(state) != Some(token.ca.to_hex().as_str()) {
        return Err(BAD_JOIN_TOKEN.into());
    }
    let record = state
        .meta
        .tokens
        .get(&token.id)
        .filter(|r| r.kind == TokenKind::Join)
        .ok_or_else(|| BAD_JOIN_TOKEN.to_string())?;
    if !secret_matches(&token.secret, record) {
        return Err(BAD_JOIN_TOKEN.into());
    }
    Ok(record.id.clone())
}

fn expiry(now_ms: u64, ttl: Option<Duration>) -> Option<u64> {
    ttl.filter(|t| !t.is_zero())
        .map(|t| now_ms.saturating_add(t.as_millis().min(u128::from(u64::MAX)) as u64))
}

/// A new admin token: the text to hand out once, and the record to commit.
pub fn new_admin(
    ca: Fingerprint,
    role: Role,
    name: &str,
    ttl: Option<Duration>,
    node: Option<NodeId>,
    now_ms: u64,
) -> Result<(AdminToken, TokenRecord), gantry_pki::PkiError> {
    let token = AdminToken::generate(ca)?;
    let record = TokenRecord {
        id: token.id.clone(),
        kind: TokenKind::Admin,
        name: name.to_string(),
        role: Some(role),
        secret_sha256: hex::encode(token.secret.sha256()),
        created_ms: now_ms,
        expires_ms: expiry(now_ms, ttl),
        uses_left: None,
        node,
        default: false,
    };
    Ok((token, record))
}

/// A new join token (`uses`: None for any number).
pub fn new_join(
    ca: Fingerprint,
    name: &str,
    ttl: Option<Duration>,
    uses: Option<u32>,
    now_ms: u64,
) -> Result<(JoinToken, TokenRecord), gantry_pki::PkiError> {
    let token = JoinToken::generate(ca)?;
    let record = TokenRecord {
        id: token.id.clone(),
        kind: TokenKind::Join,
        name: name.to_string(),
        role: None,
        secret_sha256: hex::encode(token.secret.sha256()),
        created_ms: now_ms,
        expires_ms: expiry(now_ms, ttl),
        uses_left: uses,
        node: None,
        default: false,
    };
    Ok((token, record))
}

/// `token list` / `join-token list`: ids, names, roles, expiry, uses;
/// never a secret, never a hash.
pub fn list_view(state: &State, kind: TokenKind) -> serde_json::Value {
    use crate::api::views::timestamp;
    let nodes = &state.nodes;
    let tokens: Vec<serde_json::Value> = state
        .tokens_of(kind)
        .map(|t| {
            serde_json::json!({
                "id": t.id,
                "name": t.name,
                "role": t.role.map(|r| r.to_string()),
                "created": timestamp(t.created_ms),
                "expires": t.expires_ms.map(timestamp),
                "uses_left": t.uses_left,
                "default": t.default,
                "gateway": t.node.and_then(|n| nodes.get(&n)).map(|n| n.name.clone()),
            })
        })
        .collect();
    serde_json::Value::Array(tokens)
}
