//! The hub's registry of sites: their records (persisted through `store`
//! before any answer), their last reported view, and which link session is
//! live. Every hub RPC goes through it.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use gantry_pki::{AdminToken, Fingerprint, Secret, SiteToken};
use serde_json::{json, Value};
use tokio::sync::watch;

use super::desired::Delta;
use super::store::{
    fresh_epoch, AdminRecord, HubStore, HubStoreError, PreviousToken, Rejection, SiteRecord,
};
use crate::api::views::timestamp;
use crate::cloud::site_view::SiteView;
use crate::cluster::node::now_ms;
use crate::state::spec::is_dns_label;

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("unknown site or wrong token")]
    Unauthenticated,
    #[error("no site named '{0}'")]
    UnknownSite(String),
    #[error("'{0}' is not a valid site name (a DNS label)")]
    BadSiteName(String),
    #[error("{0}")]
    Refused(String),
    #[error("site '{site}' has no workload named '{name}'")]
    NoWorkload { site: String, name: String },
    #[error(transparent)]
    Store(#[from] HubStoreError),
}

struct Site {
    record: SiteRecord,
    view: SiteView,
    /// The live link session, if any; a newer session supersedes it.
    session: Option<u64>,
    /// Bumped on every desired change or supersede, to wake the session.
    wake: watch::Sender<u64>,
    /// gRPC message bytes on the link (protobuf + 5-byte frame prefix).
    bytes_in: u64,
    bytes_out: u64,
    /// Of `bytes_in`, what the periodic digests cost.
    digest_bytes_in: u64,
}

impl Site {
    fn new(record: SiteRecord, view: SiteView) -> Self {
        Self {
            record,
            view,
            session: None,
            wake: watch::channel(0).0,
            bytes_in: 0,
            bytes_out: 0,
            digest_bytes_in: 0,
        }
    }
}

pub struct Sites {
    store: HubStore,
    sites: Mutex<BTreeMap<String, Site>>,
    next_session: Mutex<u64>,
    /// The hub CA's fingerprint: the pin inside every site and admin token.
    ca: Fingerprint,
    admins: Mutex<BTreeMap<String, AdminRecord>>,
}

/// Whether `secret` hashes to the hex digest `expected`, in constant time.
fn secret_matches(secret: &Secret, expected: &str) -> bool {
    let Ok(bytes) = hex::decode(expected) else {
        return false;
    };
    let Ok(digest) = <[u8; 32]>::try_from(bytes) else {
        return false;
    };
    secret.matches(&digest)
}

/// A site's link as `/metrics` shows it.
pub struct SiteFigures {
    pub site: String,
    pub connected: bool,
    pub desired_revision: u64,
    pub acked_revision: u64,
    pub last_seen_ms: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// What a freshly authenticated session starts from.
pub struct Opened {
    pub session: u64,
    pub wake: watch::Receiver<u64>,
    pub desired_revision: u64,
    /// Deliveries resume from here: the older of what the site says it
    /// committed and what it last acknowledged, so a lost Ack costs a
    /// redelivery (applied once on the site), never a gap; 0 (a full
    /// snapshot) when the site counts in another epoch.
    pub resume_from: u64,
    /// The epoch every delivery of this session carries.
    pub epoch: u64,
}

impl Sites {
    pub fn open(store: HubStore, ca: Fingerprint) -> Result<Self, HubError> {
        let loaded = store.load()?;
        let admins = store.admins()?;
        let mut sites = BTreeMap::new();
        for (name, (mut record, view)) in loaded {
            if record.epoch == 0 {
                record.epoch = fresh_epoch();
                store.save(&name, &record, None)?;
            }
            sites.insert(name, Site::new(record, view));
        }
        Ok(Self {
            store,
            sites: Mutex::new(sites),
            next_session: Mutex::new(0),
            ca,
            admins: Mutex::new(admins),
        })
    }

    pub fn has_admin_token(&self) -> bool {
        !self
            .admins
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    /// A new hub admin token (the text is returned once; its hash is kept).
    pub fn create_admin_token(&self) -> Result<AdminToken, HubError> {
        let token = AdminToken::generate(self.ca).map_err(|e| HubError::Refused(e.to_string()))?;
        let record = AdminRecord {
            secret_sha256: hex::encode(token.secret.sha256()),
            created_ms: now_ms(),
        };
        self.store.save_admin(&token.id, &record)?;
        self.admins
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(token.id.clone(), record);
        Ok(token)
    }

    /// Whether `text` is a hub admin token of this hub.
    pub fn check_admin_token(&self, text: &str) -> bool {
        let Ok(token) = AdminToken::parse(text) else {
            return false;
        };
        if token.ca != self.ca {
            return false;
        }
        let admins = self.admins.lock().unwrap_or_else(|p| p.into_inner());
        admins
            .get(&token.id)
            .is_some_and(|r| secret_matches(&token.secret, &r.secret_sha256))
    }

    /// Whether `text` is the token of site `name` (or its previous one,
    /// within its grace period).
    pub fn check_site_token(&self, name: &str, text: &str) -> bool {
        let Ok(token) = SiteToken::parse(text) else {
            return false;
        };
        if token.hub_ca != self.ca {
            return false;
        }
        let sites = self.lock();
        let Some(site) = sites.get(name) else {
            return false;
        };
        let current = site
            .record
            .token_sha256
            .as_deref()
            .is_some_and(|h| secret_matches(&token.secret, h));
        let previous = site
            .record
            .previous_token
            .as_ref()
            .is_some_and(|p| now_ms() < p.until_ms && secret_matches(&token.secret, &p.sha256));
        current || previous
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Site>> {
        self.sites.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn save(&self, name: &str, site: &Site, with_view: bool) -> Result<(), HubError> {
        self.store
            .save(name, &site.record, with_view.then_some(&site.view))?;
        Ok(())
    }

    /// Creates or updates a site's workloads as one revision. A name the
    /// site reported as a local workload is refused here already.
    pub fn apply(&self, name: &str, docs: &[(String, String)]) -> Result<Value, HubError> {
        if !is_dns_label(name) {
            return Err(HubError::BadSiteName(name.to_string()));
        }
        let mut sites = self.lock();
        let site = sites
            .entry(name.to_string())
            .or_insert_with(|| Site::new(SiteRecord::new(), SiteView::default()));
        for (workload, _) in docs {
            let local = site
                .view
                .workloads
                .get(workload)
                .is_some_and(|w| w.source == "local");
            if local {
                return Err(HubError::Refused(format!(
                    "workload '{workload}' is a local workload on site '{name}' (as last reported); the cloud workload of that name is refused: delete it on the site or pick another name"
                )));
            }
        }
        let bytes = site.record.desired.bytes_with(docs);
        if bytes > super::desired::MAX_SITE_DESIRED_BYTES {
            return Err(HubError::Refused(format!(
                "site '{name}' would hold {} KiB of workload specs; a site's desired state is sent whole and committed as one entry, so it is kept under {} KiB",
                bytes >> 10,
                super::desired::MAX_SITE_DESIRED_BYTES >> 10
            )));
        }
        let before = site.record.clone();
        let revision = site.record.desired.apply(docs);
        if let Err(e) = self.save(name, site, false) {
            site.record = before;
            return Err(e);
        }
        if revision.is_some() {
            site.wake.send_modify(|n| *n += 1);
        }
        Ok(json!({
            "site": name,
            "revision": site.record.desired.revision,
            "changed": revision.is_some(),
            "workloads": docs.iter().map(|(n, _)| n).collect::<Vec<_>>(),
        }))
    }

    pub fn delete(&self, name: &str, workload: &str) -> Result<Value, HubError> {
        let mut sites = self.lock();
        let site = sites
            .get_mut(name)
            .ok_or_else(|| HubError::UnknownSite(name.to_string()))?;
        let before = site.record.clone();
        let Some(revision) = site.record.desired.delete(workload) else {
            return Err(HubError::NoWorkload {
                site: name.to_string(),
                name: workload.to_string(),
            });
        };
        if let Err(e) = self.save(name, site, false) {
            site.record = before;
            return Err(e);
        }
        site.wake.send_modify(|n| *n += 1);
        Ok(json!({"site": name, "deleted": workload, "revision": revision}))
    }

    /// Whether `text` still opens site `name`'s link: `Some(None)` as its
    /// current token, `Some(Some(until))` as the previous one within its
    /// grace, None not any more.
    pub fn token_validity(&self, name: &str, text: &str) -> Option<Option<u64>> {
        let token = SiteToken::parse(text).ok()?;
        let sites = self.lock();
        let record = &sites.get(name)?.record;
        let current = record
            .token_sha256
            .as_deref()
            .is_some_and(|h| secret_matches(&token.secret, h));
        if current {
            return Some(None);
        }
        record
            .previous_token
            .as_ref()
            .filter(|p| now_ms() < p.until_ms && secret_matches(&token.secret, &p.sha256))
            .map(|p| Some(p.until_ms))
    }

    /// Gives the site a new random token, creating the site if needed; only
    /// its hash is kept. With a `grace`, the previous token stays valid
    /// that long beside the new one (and its open link stays up); without,
    /// it stops working at once.
    pub fn set_token(&self, name: &str, grace: std::time::Duration) -> Result<SiteToken, HubError> {
        if !is_dns_label(name) {
            return Err(HubError::BadSiteName(name.to_string()));
        }
        let token = SiteToken::generate(self.ca).map_err(|e| HubError::Refused(e.to_string()))?;
        let mut sites = self.lock();
        let site = sites
            .entry(name.to_string())
            .or_insert_with(|| Site::new(SiteRecord::new(), SiteView::default()));
        let before = site.record.clone();
        let previous = site.record.token_sha256.take();
        site.record.previous_token =
            previous
                .filter(|_| !grace.is_zero())
                .map(|sha256| PreviousToken {
                    sha256,
                    until_ms: now_ms().saturating_add(grace.as_millis() as u64),
                });
        site.record.token_sha256 = Some(hex::encode(token.secret.sha256()));
        if let Err(e) = self.save(name, site, false) {
            site.record = before;
            return Err(e);
        }
        // An open link checks its token again when woken: without a grace
        // it ends now, with one when the grace does.
        site.wake.send_modify(|n| *n += 1);
        Ok(token)
    }

    /// Makes a new session the site's live one; the policy layer has
    /// checked its token before the stream opened.
    pub fn open_session(&self, name: &str, acked: u64, epoch: u64) -> Result<Opened, HubError> {
        let mut sites = self.lock();
        let site = sites.get_mut(name).ok_or(HubError::Unauthenticated)?;
        let session = {
            let mut next = self.next_session.lock().unwrap_or_else(|p| p.into_inner());
            *next += 1;
            *next
        };
        let before = site.record.clone();
        // A site ahead of this hub's history in the same epoch: the hub's
        // store went back (restored from a backup). Its revisions would be
        // taken for redeliveries, so a new epoch starts.
        if epoch == site.record.epoch && acked > site.record.desired.revision {
            tracing::warn!(
                site = name,
                site_acked = acked,
                hub_revision = site.record.desired.revision,
                "the site is ahead of the hub's history; starting a new epoch"
            );
            site.record.epoch = fresh_epoch();
        }
        let same_epoch = epoch == site.record.epoch;
        let (resume_from, acked) = if same_epoch {
            (acked.min(site.record.acked_revision), acked)
        } else {
            (0, 0)
        };
        site.session = Some(session);
        site.record.acked_revision = acked;
        site.record.last_seen_ms = now_ms();
        if let Err(e) = self.save(name, site, false) {
            site.record = before;
            site.session = None;
            return Err(e);
        }
        site.wake.send_modify(|n| *n += 1);
        Ok(Opened {
            session,
            wake: site.wake.subscribe(),
            desired_revision: site.record.desired.revision,
            resume_from,
            epoch: site.record.epoch,
        })
    }

    /// Runs `f` on the site if `session` is still its live one.
    fn with_session<T>(
        &self,
        name: &str,
        session: u64,
        f: impl FnOnce(&mut Site) -> T,
    ) -> Option<T> {
        let mut sites = self.lock();
        let site = sites.get_mut(name)?;
        if site.session != Some(session) {
            return None;
        }
        site.record.last_seen_ms = now_ms();
        Some(f(site))
    }

    pub fn is_live(&self, name: &str, session: u64) -> bool {
        self.with_session(name, session, |_| ()).is_some()
    }

    /// What to deliver next: None when the site has everything, or when the
    /// revision after `from` was rejected and nothing newer exists yet.
    pub fn next_delivery(&self, name: &str, session: u64, from: u64) -> Option<Delta> {
        self.with_session(name, session, |site| {
            let desired = &site.record.desired;
            let rejected_current = site
                .record
                .rejected
                .as_ref()
                .is_some_and(|r| r.revision >= desired.revision);
            (desired.revision > from && !rejected_current).then(|| desired.since(from))
        })
        .flatten()
    }

    /// Changes a live session's site record and saves it before the lock
    /// is let go: a save made outside it could land after a newer one (an
    /// `apply` meanwhile) and put the older record back on disk. On a
    /// failed save the record in memory is put back too.
    fn update_live(
        &self,
        name: &str,
        session: u64,
        with_view: bool,
        change: impl FnOnce(&mut Site),
    ) -> Result<(), HubError> {
        self.with_session(name, session, |site| {
            let before = (site.record.clone(), with_view.then(|| site.view.clone()));
            change(site);
            let saved = self.save(name, site, with_view);
            if saved.is_err() {
                site.record = before.0;
                if let Some(view) = before.1 {
                    site.view = view;
                }
            }
            saved
        })
        .unwrap_or(Ok(()))
    }

    pub fn acked(&self, name: &str, session: u64, revision: u64) -> Result<(), HubError> {
        self.update_live(name, session, false, |site| {
            site.record.acked_revision = revision;
            if site
                .record
                .rejected
                .as_ref()
                .is_some_and(|r| r.revision <= revision)
            {
                site.record.rejected = None;
            }
        })
    }

    pub fn rejected(
        &self,
        name: &str,
        session: u64,
        revision: u64,
        error: String,
    ) -> Result<(), HubError> {
        self.update_live(name, session, false, |site| {
            site.record.rejected = Some(Rejection { revision, error });
        })
    }

    pub fn reported(
        &self,
        name: &str,
        session: u64,
        report: &gantry_proto::hub::v1::Report,
    ) -> Result<(), HubError> {
        self.update_live(name, session, true, |site| site.view.apply(report))
    }

    /// Whether the hub's view still hashes to what the site says it sent.
    pub fn digest_matches(&self, name: &str, session: u64, digest: u64) -> bool {
        self.with_session(name, session, |site| site.view.digest() == digest)
            .unwrap_or(true)
    }

    pub fn count_bytes(&self, name: &str, inbound: usize, outbound: usize) {
        if let Some(site) = self.lock().get_mut(name) {
            site.bytes_in += inbound as u64;
            site.bytes_out += outbound as u64;
        }
    }

    pub fn count_digest_bytes(&self, name: &str, inbound: usize) {
        if let Some(site) = self.lock().get_mut(name) {
            site.digest_bytes_in += inbound as u64;
        }
    }

    /// The session ended: the site is disconnected unless a newer one runs.
    pub fn closed(&self, name: &str, session: u64) {
        let mut sites = self.lock();
        let Some(site) = sites.get_mut(name) else {
            return;
        };
        if site.session != Some(session) {
            return;
        }
        site.session = None;
        site.record.last_seen_ms = now_ms();
        // Under the lock, like every save (see `update_live`).
        if let Err(e) = self.save(name, site, false) {
            tracing::warn!(site = name, error = %e, "could not record the disconnect");
        }
    }

    /// One row per site for `/metrics`.
    pub fn link_figures(&self) -> Vec<SiteFigures> {
        self.lock()
            .iter()
            .map(|(name, site)| SiteFigures {
                site: name.clone(),
                connected: site.session.is_some(),
                desired_revision: site.record.desired.revision,
                acked_revision: site.record.acked_revision,
                last_seen_ms: site.record.last_seen_ms,
                bytes_in: site.bytes_in,
                bytes_out: site.bytes_out,
            })
            .collect()
    }

    /// `gantry hub status -o json`.
    pub fn status(&self) -> Value {
        let sites = self.lock();
        let list: Vec<Value> = sites
            .iter()
            .map(|(name, site)| {
                let record = &site.record;
                json!({
                    "site": name,
                    "connected": site.session.is_some(),
                    "last_seen": (record.last_seen_ms > 0).then(|| timestamp(record.last_seen_ms)),
                    "last_seen_ms": record.last_seen_ms,
                    "token_set": record.token_sha256.is_some(),
                    "previous_token_until": record.previous_token.as_ref().filter(|p| p.until_ms > now_ms()).map(|p| timestamp(p.until_ms)),
                    "desired_revision": record.desired.revision,
                    "acked_revision": record.acked_revision,
                    "desired_workloads": record.desired.workloads.keys().collect::<Vec<_>>(),
                    "rejected": record.rejected,
                    "refused": site.view.refused.iter().map(|(n, r)| json!({"name": n, "reason": r})).collect::<Vec<_>>(),
                    "nodes": site.view.nodes.values().map(|n| json!({"name": n.name, "status": n.status})).collect::<Vec<_>>(),
                    "workloads": site.view.workloads.values().map(|w| json!({"name": w.name, "source": w.source, "generation": w.generation})).collect::<Vec<_>>(),
                    "instances": site.view.instances.values().map(|i| json!({
                        "workload": i.workload,
                        "replica": i.replica,
                        "node": (!i.node.is_empty()).then_some(&i.node),
                        "state": i.state,
                        "ready": i.ready,
                        "generation": i.generation,
                    })).collect::<Vec<_>>(),
                    "link_bytes": {"in": site.bytes_in, "out": site.bytes_out, "digest_in": site.digest_bytes_in},
                })
            })
            .collect();
        json!({ "sites": list })
    }
}
