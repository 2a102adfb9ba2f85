//! Trust in the replicated state: the cluster's CA (its key sealed), the
//! key each gateway's certificate is pinned to, and the bearer and join
//! tokens. Only public material, SHA-256 hashes and sealed blobs live here:
//! the Raft log, snapshots and backups hold no secret in clear.
//!
//! The checks that need a secret (a token's hash, a certificate's key)
//! run outside `apply`, in `crate::trust`; here are the records and the
//! deterministic rules that change them.

use serde::{Deserialize, Serialize};

use super::{rejected, ChangeSet, NodeId, NodeStatus, Response, State, StateKey};

/// The cluster's trust anchors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pki {
    /// PEM bundle of the CA certificates every gateway trusts (a list, so a
    /// CA rotation can hold the old and the new one).
    pub ca_certs_pem: String,
    /// SHA-256 (hex) of the CA certificate's DER: the pin inside every token.
    pub ca_sha256: String,
    /// The CA's private key, sealed with the cluster key (hex). Every member
    /// holds the cluster key, so whichever gateway leads can sign.
    pub ca_key_sealed: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    /// Lets a new gateway join (`gantry join-token ...`).
    Join,
    /// A bearer token for the Admin API (`gantry token ...`).
    Admin,
}

/// What an Admin bearer token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Every read verb, `logs` and `events`.
    Viewer,
    /// Everything.
    Admin,
}

impl Role {
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "viewer" => Ok(Role::Viewer),
            "admin" => Ok(Role::Admin),
            other => Err(format!("unknown role '{other}' (viewer or admin)")),
        }
    }

    /// Whether a holder of this role may do what `needed` allows.
    pub fn allows(self, needed: Role) -> bool {
        self >= needed
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Viewer => "viewer",
            Role::Admin => "admin",
        })
    }
}

/// A token as the cluster knows it: never the secret, only its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Public: named in the token text, used to list and revoke.
    pub id: String,
    pub kind: TokenKind,
    #[serde(default)]
    pub name: String,
    /// Admin tokens only.
    #[serde(default)]
    pub role: Option<Role>,
    /// SHA-256 (hex) of the token's 32 secret bytes.
    pub secret_sha256: String,
    pub created_ms: u64,
    #[serde(default)]
    pub expires_ms: Option<u64>,
    /// Join tokens: how many joins are left (None: any number).
    #[serde(default)]
    pub uses_left: Option<u32>,
    /// A gateway's own admin token (its `DATA_DIR/admin-token`): it goes
    /// when the gateway leaves.
    #[serde(default)]
    pub node: Option<NodeId>,
    /// The join token written at init; `join-token rotate` replaces it.
    #[serde(default)]
    pub default: bool,
}

impl TokenRecord {
    pub fn expired_at(&self, now_ms: u64) -> bool {
        self.expires_ms.is_some_and(|at| now_ms >= at)
    }

    pub fn used_up(&self) -> bool {
        self.uses_left == Some(0)
    }
}

/// The key a gateway's certificate must carry, as pinned in the state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeTls {
    /// SHA-256 (hex) of the certificate's SubjectPublicKeyInfo.
    pub spki_sha256: String,
    pub serial: String,
    pub not_after_ms: u64,
    /// The key of the certificate a renewal replaced, valid until that
    /// certificate expires: connections opened before the renewal go on.
    #[serde(default)]
    pub previous: Option<PreviousKey>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviousKey {
    pub spki_sha256: String,
    pub until_ms: u64,
}

impl NodeTls {
    /// Whether a certificate with this key may act for the gateway at `now_ms`.
    pub fn accepts(&self, spki_sha256: &str, now_ms: u64) -> bool {
        self.spki_sha256 == spki_sha256
            || self
                .previous
                .as_ref()
                .is_some_and(|p| p.spki_sha256 == spki_sha256 && now_ms < p.until_ms)
    }

    /// Every key currently accepted (the verifier's pins).
    pub fn pins(&self, now_ms: u64) -> Vec<&str> {
        let mut pins = vec![self.spki_sha256.as_str()];
        if let Some(p) = self.previous.as_ref().filter(|p| now_ms < p.until_ms) {
            pins.push(p.spki_sha256.as_str());
        }
        pins
    }
}

fn hex_digest(text: &str) -> bool {
    text.len() == 64
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A record fit to be stored: hashes where hashes belong, roles only on
/// admin tokens.
fn check_record(record: &TokenRecord) -> Result<(), Response> {
    if record.id.is_empty() || !record.id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(rejected("a token id is hex"));
    }
    if !hex_digest(&record.secret_sha256) {
        return Err(rejected("a token record holds the SHA-256 of its secret"));
    }
    match (record.kind, record.role) {
        (TokenKind::Admin, None) => Err(rejected("an admin token needs a role")),
        (TokenKind::Join, Some(_)) => Err(rejected("a join token has no role")),
        _ => Ok(()),
    }
}

impl State {
    /// The tokens of one kind, oldest first.
    pub fn tokens_of(&self, kind: TokenKind) -> impl Iterator<Item = &TokenRecord> {
        let mut list: Vec<&TokenRecord> = self
            .meta
            .tokens
            .values()
            .filter(|t| t.kind == kind)
            .collect();
        list.sort_by_key(|t| (t.created_ms, t.id.clone()));
        list.into_iter()
    }

    pub(super) fn create_token(
        &mut self,
        at: u64,
        record: &TokenRecord,
        changes: &mut ChangeSet,
    ) -> Response {
        if let Err(refusal) = check_record(record) {
            return refusal;
        }
        if self.meta.tokens.contains_key(&record.id) {
            return rejected(format!("a token with id {} exists", record.id));
        }
        if let Some(node) = record.node {
            if self.live_node_mut(node).is_err() {
                return rejected(format!("no current gateway with id {node}"));
            }
            // One local admin token per gateway: a new one replaces it.
            self.meta.tokens.retain(|_, t| t.node != Some(node));
        }
        let mut record = record.clone();
        record.default = false;
        self.meta.tokens.insert(record.id.clone(), record.clone());
        changes.insert(StateKey::Meta);
        let what = match (record.kind, record.role) {
            (TokenKind::Join, _) => "join token".to_string(),
            (TokenKind::Admin, Some(role)) => format!("{role} token"),
            (TokenKind::Admin, None) => "token".to_string(),
        };
        let name = if record.name.is_empty() {
            String::new()
        } else {
            format!(" '{}'", record.name)
        };
        self.event(
            at,
            "token-created",
            format!("{what}{name} created (id {})", record.id),
            changes,
        );
        Response::Ok
    }

    pub(super) fn revoke_token(&mut self, at: u64, id: &str, changes: &mut ChangeSet) -> Response {
        let Some(record) = self.meta.tokens.remove(id) else {
            return rejected(format!("no token with id {id}"));
        };
        changes.insert(StateKey::Meta);
        self.event(
            at,
            "token-revoked",
            format!("{:?} token {id} revoked", record.kind).to_lowercase(),
            changes,
        );
        Response::Ok
    }

    pub(super) fn rotate_join_token(
        &mut self,
        at: u64,
        record: &TokenRecord,
        changes: &mut ChangeSet,
    ) -> Response {
        if let Err(refusal) = check_record(record) {
            return refusal;
        }
        if record.kind != TokenKind::Join {
            return rejected("only a join token can be the default join token");
        }
        if self.meta.tokens.contains_key(&record.id) {
            return rejected(format!("a token with id {} exists", record.id));
        }
        self.meta
            .tokens
            .retain(|_, t| !(t.kind == TokenKind::Join && t.default));
        let mut record = record.clone();
        record.default = true;
        record.node = None;
        self.meta.tokens.insert(record.id.clone(), record.clone());
        changes.insert(StateKey::Meta);
        self.event(
            at,
            "join-token-rotated",
            format!(
                "the default join token was replaced (new id {}); the old one no longer works",
                record.id
            ),
            changes,
        );
        Response::Ok
    }

    /// Takes one use of join token `id` at `at`, or says why it cannot.
    pub(super) fn consume_join_token(
        &mut self,
        at: u64,
        id: &str,
        changes: &mut ChangeSet,
    ) -> Result<(), Response> {
        let Some(record) = self.meta.tokens.get_mut(id) else {
            return Err(rejected("unknown or revoked join token"));
        };
        if record.kind != TokenKind::Join {
            return Err(rejected("not a join token"));
        }
        if record.expired_at(at) {
            return Err(rejected(
                "the join token has expired; create another with `gantry join-token create`",
            ));
        }
        if let Some(left) = record.uses_left.as_mut() {
            if *left == 0 {
                return Err(rejected(
                    "the join token has been used up; create another with `gantry join-token create`",
                ));
            }
            *left -= 1;
            changes.insert(StateKey::Meta);
        }
        Ok(())
    }

    pub(super) fn set_node_key(
        &mut self,
        at: u64,
        id: NodeId,
        tls: &NodeTls,
        changes: &mut ChangeSet,
    ) -> Response {
        if !hex_digest(&tls.spki_sha256) {
            return rejected("a key pin is a SHA-256");
        }
        let node = match self.live_node_mut(id) {
            Ok(node) => node,
            Err(refusal) => return refusal,
        };
        node.tls = Some(tls.clone());
        let name = node.name.clone();
        changes.insert(StateKey::Node(id));
        self.event(
            at,
            "certificate-renewed",
            format!(
                "gateway {name} renewed its certificate (serial {}, valid until {})",
                tls.serial,
                crate::state::quantity::format_epoch_ms(tls.not_after_ms)
            ),
            changes,
        );
        Response::Ok
    }

    /// A gateway that left can no longer act: its key pins and its own
    /// admin token go at once, on every replica.
    pub(super) fn forget_credentials_of(&mut self, id: NodeId, changes: &mut ChangeSet) {
        if let Some(node) = self.nodes.get_mut(&id) {
            if node.status == NodeStatus::Left && node.tls.take().is_some() {
                changes.insert(StateKey::Node(id));
            }
        }
        let before = self.meta.tokens.len();
        self.meta.tokens.retain(|_, t| t.node != Some(id));
        if self.meta.tokens.len() != before {
            changes.insert(StateKey::Meta);
        }
    }
}

/// Records for tests elsewhere in the crate: a CA that signs nothing and
/// key pins that no certificate carries.
#[cfg(test)]
pub mod fixtures {
    use super::*;

    pub fn pki() -> Pki {
        Pki {
            ca_certs_pem: String::new(),
            ca_sha256: "ab".repeat(32),
            ca_key_sealed: String::new(),
        }
    }

    pub fn join_token(id: &str) -> TokenRecord {
        TokenRecord {
            id: id.into(),
            kind: TokenKind::Join,
            name: String::new(),
            role: None,
            secret_sha256: "cd".repeat(32),
            created_ms: 0,
            expires_ms: None,
            uses_left: None,
            node: None,
            default: false,
        }
    }

    pub fn tls() -> NodeTls {
        tls_for(0xef)
    }

    /// A pin of its own for each `seed`.
    pub fn tls_for(seed: u8) -> NodeTls {
        NodeTls {
            spki_sha256: format!("{seed:02x}").repeat(32),
            serial: "01".into(),
            not_after_ms: u64::MAX,
            previous: None,
        }
    }
}
