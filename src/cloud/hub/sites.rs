//! The hub's registry of sites: their records (persisted through `store`
//! before any answer), their last reported view, and which link session is
//! live. Every hub RPC goes through it.
//!
//! Two kinds of lock, so that a thousand sites do not queue behind one
//! another's disk writes:
//!
//! - `Sites::sites`, one mutex over the in-memory map, held only to read or
//!   change memory, never across a disk write or an `.await`;
//! - each site's `order`, an async mutex that orders that site's changes:
//!   a change takes it, copies the record, changes the copy, saves it (a
//!   synced write, on a blocking thread) and only then puts it in memory.
//!   A save can therefore never land after a newer one of the same site
//!   (a disconnect or an Ack writing an older record over an acknowledged
//!   `hub apply`), and nothing is delivered, counted or shown before it is
//!   durable. Saves of different sites run at once, and RocksDB commits
//!   concurrent synced writes together (one fsync for the group).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use gantry_pki::{AdminToken, Fingerprint, Secret, SiteToken};
use serde_json::{json, Value};
use tokio::sync::{watch, OwnedMutexGuard};

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
    /// The thread that writes to the store went away (the hub is stopping).
    #[error("the hub's store writer stopped: {0}")]
    Writer(String),
}

struct Site {
    record: SiteRecord,
    view: SiteView,
    /// The live link session, if any; a newer session supersedes it.
    session: Option<u64>,
    /// Bumped on every desired change or supersede, to wake the session.
    wake: watch::Sender<u64>,
    /// Orders this site's changes (see the module's comment). Sites are
    /// never removed from the map, so a site keeps one lock for good.
    order: Arc<tokio::sync::Mutex<()>>,
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
            order: Arc::new(tokio::sync::Mutex::new(())),
            bytes_in: 0,
            bytes_out: 0,
            digest_bytes_in: 0,
        }
    }

    /// Puts a saved record (and view) in memory; `last_seen_ms` only moves
    /// forward (sessions touch it in memory while a save is under way).
    fn install(&mut self, record: SiteRecord, view: Option<SiteView>) {
        let seen = self.record.last_seen_ms.max(record.last_seen_ms);
        self.record = record;
        self.record.last_seen_ms = seen;
        if let Some(view) = view {
            self.view = view;
        }
    }
}

/// A change to one site, made on a copy until it is saved.
struct Draft {
    record: SiteRecord,
    /// Only when the change touches the view, which is then saved too.
    view: Option<SiteView>,
}

pub struct Sites {
    store: Arc<HubStore>,
    /// Memory only: never held across a disk write or an `.await`.
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

/// One site's desired state as a whole (`Sites::desired_snapshots`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredSnapshot {
    pub site: String,
    pub epoch: u64,
    pub revision: u64,
    pub specs: Vec<String>,
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

/// Why `apply` refuses `docs` for a site, if it does: a name the site
/// reported as a local workload, or a desired state past the size limit.
fn apply_refusal(name: &str, site: &Site, docs: &[(String, String)]) -> Option<String> {
    for (workload, _) in docs {
        let local = site
            .view
            .workloads
            .get(workload)
            .is_some_and(|w| w.source == "local");
        if local {
            return Some(format!(
                "workload '{workload}' is a local workload on site '{name}' (as last reported); the cloud workload of that name is refused: delete it on the site or pick another name"
            ));
        }
    }
    let bytes = site.record.desired.bytes_with(docs);
    if bytes > super::desired::MAX_SITE_DESIRED_BYTES {
        return Some(format!(
            "site '{name}' would hold {} KiB of workload specs; a site's desired state is sent whole and committed as one entry, so it is kept under {} KiB",
            bytes >> 10,
            super::desired::MAX_SITE_DESIRED_BYTES >> 10
        ));
    }
    None
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
            store: Arc::new(store),
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

    /// Runs `f` on the site in memory, if it exists.
    fn with_site<T>(&self, name: &str, f: impl FnOnce(&mut Site) -> T) -> Option<T> {
        self.lock().get_mut(name).map(f)
    }

    /// Takes the lock that orders `name`'s changes (creating the site in
    /// memory first when `create`); None for an unknown site.
    async fn order(&self, name: &str, create: bool) -> Option<OwnedMutexGuard<()>> {
        let order = {
            let mut sites = self.lock();
            let site = if create {
                sites
                    .entry(name.to_string())
                    .or_insert_with(|| Site::new(SiteRecord::new(), SiteView::default()))
            } else {
                sites.get_mut(name)?
            };
            site.order.clone()
        };
        Some(order.lock_owned().await)
    }

    /// Saves a draft in one synced batch, on a blocking thread so that the
    /// disk holds up no task; the caller holds the site's `order` lock.
    async fn persist(&self, name: &str, draft: Draft) -> Result<Draft, HubError> {
        let store = self.store.clone();
        let name = name.to_string();
        tokio::task::spawn_blocking(move || {
            store.save(&name, &draft.record, draft.view.as_ref())?;
            Ok(draft)
        })
        .await
        .map_err(|e| HubError::Writer(e.to_string()))?
    }

    /// Creates or updates a site's workloads as one revision. A name the
    /// site reported as a local workload is refused here already.
    pub async fn apply(&self, name: &str, docs: &[(String, String)]) -> Result<Value, HubError> {
        if !is_dns_label(name) {
            return Err(HubError::BadSiteName(name.to_string()));
        }
        let _order = self
            .order(name, true)
            .await
            .ok_or_else(|| HubError::UnknownSite(name.to_string()))?;
        let mut record = self
            .with_site(name, |site| match apply_refusal(name, site, docs) {
                Some(refusal) => Err(HubError::Refused(refusal)),
                None => Ok(site.record.clone()),
            })
            .ok_or_else(|| HubError::UnknownSite(name.to_string()))??;
        let changed = record.desired.apply(docs).is_some();
        let draft = self.persist(name, Draft { record, view: None }).await?;
        let revision = draft.record.desired.revision;
        self.with_site(name, |site| {
            site.install(draft.record, None);
            if changed {
                site.wake.send_modify(|n| *n += 1);
            }
        });
        Ok(json!({
            "site": name,
            "revision": revision,
            "changed": changed,
            "workloads": docs.iter().map(|(n, _)| n).collect::<Vec<_>>(),
        }))
    }

    /// `hub apply --all-sites`: the same workloads to every site the hub
    /// knows, each as a revision of its own, all saved in one synced batch.
    /// All or nothing: a site that would refuse them (a local workload of
    /// that name, or past the size limit) refuses the whole apply, so a
    /// fleet never ends up half changed by one command.
    pub async fn apply_all(&self, docs: &[(String, String)]) -> Result<Value, HubError> {
        let names: Vec<String> = self.lock().keys().cloned().collect();
        if names.is_empty() {
            return Err(HubError::Refused(
                "the hub knows no site yet: create one with `hub site-token` or `hub apply --site`"
                    .into(),
            ));
        }
        // In name order; every other change takes one site's lock at most,
        // so this cannot deadlock with them. Held for one batched write.
        let mut orders = Vec::with_capacity(names.len());
        for name in &names {
            if let Some(order) = self.order(name, false).await {
                orders.push(order);
            }
        }
        let mut drafts = Vec::with_capacity(names.len());
        let mut refusals = Vec::new();
        {
            let sites = self.lock();
            for name in &names {
                let Some(site) = sites.get(name) else {
                    continue;
                };
                match apply_refusal(name, site, docs) {
                    Some(refusal) => refusals.push(refusal),
                    None => {
                        let mut record = site.record.clone();
                        let changed = record.desired.apply(docs).is_some();
                        drafts.push((name.clone(), record, changed));
                    }
                }
            }
        }
        if !refusals.is_empty() {
            let more = refusals.len().saturating_sub(3);
            refusals.truncate(3);
            let mut text = format!("refused, no site changed: {}", refusals.join("; "));
            if more > 0 {
                text.push_str(&format!(" (and {more} more sites)"));
            }
            return Err(HubError::Refused(text));
        }
        let store = self.store.clone();
        let drafts = tokio::task::spawn_blocking(move || {
            let records: Vec<(&str, &SiteRecord)> =
                drafts.iter().map(|(n, r, _)| (n.as_str(), r)).collect();
            store.save_records(&records)?;
            Ok::<_, HubError>(drafts)
        })
        .await
        .map_err(|e| HubError::Writer(e.to_string()))??;
        let mut applied = Vec::with_capacity(drafts.len());
        {
            let mut sites = self.lock();
            for (name, record, changed) in drafts {
                let revision = record.desired.revision;
                if let Some(site) = sites.get_mut(&name) {
                    site.install(record, None);
                    if changed {
                        site.wake.send_modify(|n| *n += 1);
                    }
                }
                applied.push(json!({"site": name, "revision": revision, "changed": changed}));
            }
        }
        drop(orders);
        Ok(json!({
            "sites": applied,
            "workloads": docs.iter().map(|(n, _)| n).collect::<Vec<_>>(),
        }))
    }

    pub async fn delete(&self, name: &str, workload: &str) -> Result<Value, HubError> {
        let unknown = || HubError::UnknownSite(name.to_string());
        let _order = self.order(name, false).await.ok_or_else(unknown)?;
        let mut record = self
            .with_site(name, |site| site.record.clone())
            .ok_or_else(unknown)?;
        let Some(revision) = record.desired.delete(workload) else {
            return Err(HubError::NoWorkload {
                site: name.to_string(),
                name: workload.to_string(),
            });
        };
        let draft = self.persist(name, Draft { record, view: None }).await?;
        self.with_site(name, |site| {
            site.install(draft.record, None);
            site.wake.send_modify(|n| *n += 1);
        });
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
    pub async fn set_token(
        &self,
        name: &str,
        grace: std::time::Duration,
    ) -> Result<SiteToken, HubError> {
        if !is_dns_label(name) {
            return Err(HubError::BadSiteName(name.to_string()));
        }
        let token = SiteToken::generate(self.ca).map_err(|e| HubError::Refused(e.to_string()))?;
        let unknown = || HubError::UnknownSite(name.to_string());
        let _order = self.order(name, true).await.ok_or_else(unknown)?;
        let mut record = self
            .with_site(name, |site| site.record.clone())
            .ok_or_else(unknown)?;
        let previous = record.token_sha256.take();
        record.previous_token = previous
            .filter(|_| !grace.is_zero())
            .map(|sha256| PreviousToken {
                sha256,
                until_ms: now_ms().saturating_add(grace.as_millis() as u64),
            });
        record.token_sha256 = Some(hex::encode(token.secret.sha256()));
        let draft = self.persist(name, Draft { record, view: None }).await?;
        // An open link checks its token again when woken: without a grace
        // it ends now, with one when the grace does.
        self.with_site(name, |site| {
            site.install(draft.record, None);
            site.wake.send_modify(|n| *n += 1);
        });
        Ok(token)
    }

    /// Makes a new session the site's live one; the policy layer has
    /// checked its token before the stream opened.
    pub async fn open_session(
        &self,
        name: &str,
        acked: u64,
        epoch: u64,
    ) -> Result<Opened, HubError> {
        let _order = self
            .order(name, false)
            .await
            .ok_or(HubError::Unauthenticated)?;
        let mut record = self
            .with_site(name, |site| site.record.clone())
            .ok_or(HubError::Unauthenticated)?;
        let session = {
            let mut next = self.next_session.lock().unwrap_or_else(|p| p.into_inner());
            *next += 1;
            *next
        };
        // A site ahead of this hub's history in the same epoch: the hub's
        // store went back (restored from a backup). Its revisions would be
        // taken for redeliveries, so a new epoch starts.
        if epoch == record.epoch && acked > record.desired.revision {
            tracing::warn!(
                site = name,
                site_acked = acked,
                hub_revision = record.desired.revision,
                "the site is ahead of the hub's history; starting a new epoch"
            );
            record.epoch = fresh_epoch();
        }
        let same_epoch = epoch == record.epoch;
        let (resume_from, acked) = if same_epoch {
            (acked.min(record.acked_revision), acked)
        } else {
            (0, 0)
        };
        record.acked_revision = acked;
        record.last_seen_ms = now_ms();
        let draft = self.persist(name, Draft { record, view: None }).await?;
        let (desired_revision, epoch) = (draft.record.desired.revision, draft.record.epoch);
        self.with_site(name, |site| {
            site.install(draft.record, None);
            site.session = Some(session);
            site.wake.send_modify(|n| *n += 1);
            Opened {
                session,
                wake: site.wake.subscribe(),
                desired_revision,
                resume_from,
                epoch,
            }
        })
        .ok_or(HubError::Unauthenticated)
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

    /// Changes a live session's site record (and view, `with_view`) under
    /// the site's order lock: a save made outside it could land after a
    /// newer one (an `apply` meanwhile) and put the older record back on
    /// disk. Memory changes only once the save succeeded.
    async fn update_live(
        &self,
        name: &str,
        session: u64,
        with_view: bool,
        change: impl FnOnce(&mut Draft),
    ) -> Result<(), HubError> {
        let Some(_order) = self.order(name, false).await else {
            return Ok(());
        };
        let Some(mut draft) = self.with_session(name, session, |site| Draft {
            record: site.record.clone(),
            view: with_view.then(|| site.view.clone()),
        }) else {
            return Ok(());
        };
        change(&mut draft);
        let draft = self.persist(name, draft).await?;
        self.with_site(name, |site| site.install(draft.record, draft.view));
        Ok(())
    }

    pub async fn acked(&self, name: &str, session: u64, revision: u64) -> Result<(), HubError> {
        self.update_live(name, session, false, |draft| {
            draft.record.acked_revision = revision;
            if draft
                .record
                .rejected
                .as_ref()
                .is_some_and(|r| r.revision <= revision)
            {
                draft.record.rejected = None;
            }
        })
        .await
    }

    pub async fn rejected(
        &self,
        name: &str,
        session: u64,
        revision: u64,
        error: String,
    ) -> Result<(), HubError> {
        self.update_live(name, session, false, |draft| {
            draft.record.rejected = Some(Rejection { revision, error });
        })
        .await
    }

    pub async fn reported(
        &self,
        name: &str,
        session: u64,
        report: &gantry_proto::hub::v1::Report,
    ) -> Result<(), HubError> {
        self.update_live(name, session, true, |draft| {
            if let Some(view) = draft.view.as_mut() {
                view.apply(report);
            }
        })
        .await
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
    pub async fn closed(&self, name: &str, session: u64) {
        let Some(_order) = self.order(name, false).await else {
            return;
        };
        let Some(record) = self.with_session(name, session, |site| {
            site.session = None;
            site.record.clone()
        }) else {
            return;
        };
        // Under the order lock, like every save (see `update_live`).
        match self.persist(name, Draft { record, view: None }).await {
            Ok(draft) => {
                self.with_site(name, |site| site.install(draft.record, None));
            }
            Err(e) => tracing::warn!(site = name, error = %e, "could not record the disconnect"),
        }
    }

    /// Every site's desired state as a whole, with its epoch and revision
    /// (the MQTT bridge publishes it as one retained document per site).
    pub fn desired_snapshots(&self) -> Vec<DesiredSnapshot> {
        self.lock()
            .iter()
            .map(|(name, site)| DesiredSnapshot {
                site: name.clone(),
                epoch: site.record.epoch,
                revision: site.record.desired.revision,
                specs: site
                    .record
                    .desired
                    .workloads
                    .values()
                    .map(|entry| entry.spec_json.clone())
                    .collect(),
            })
            .collect()
    }

    /// The live session of `name`, if any (gRPC or MQTT).
    pub fn live_session(&self, name: &str) -> Option<u64> {
        self.lock().get(name).and_then(|site| site.session)
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use gantry_proto::hub::v1::{Report, WorkloadStatus};

    use super::*;

    fn open(dir: &std::path::Path) -> Sites {
        let store = HubStore::open(&dir.join("db")).expect("store");
        Sites::open(store, Fingerprint::of(b"test hub ca")).expect("sites")
    }

    fn doc(name: &str, tag: u32) -> (String, String) {
        (
            name.to_string(),
            format!("{{\"name\":\"{name}\",\"tag\":{tag}}}"),
        )
    }

    /// The records on disk, as a restarted hub would load them.
    fn on_disk(sites: &Sites) -> BTreeMap<String, SiteRecord> {
        sites
            .store
            .load()
            .expect("load")
            .into_iter()
            .map(|(name, (record, _))| (name, record))
            .collect()
    }

    fn in_memory(sites: &Sites, name: &str) -> SiteRecord {
        sites
            .with_site(name, |site| site.record.clone())
            .expect("site")
    }

    #[tokio::test]
    async fn apply_to_all_sites_gives_each_its_own_revision_in_one_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sites = open(dir.path());
        sites.apply("a", &[doc("web", 1)]).await.expect("apply a");
        sites.apply("a", &[doc("web", 2)]).await.expect("apply a");
        sites.set_token("b", Duration::ZERO).await.expect("token b");
        let wake_a = sites.with_site("a", |s| s.wake.subscribe()).expect("a");
        let applied = sites
            .apply_all(&[doc("agent", 1)])
            .await
            .expect("apply all");
        let revisions: Vec<(String, u64)> = applied["sites"]
            .as_array()
            .expect("sites")
            .iter()
            .map(|s| {
                (
                    s["site"].as_str().unwrap_or("").to_string(),
                    s["revision"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        assert_eq!(revisions, vec![("a".to_string(), 3), ("b".to_string(), 1)]);
        assert!(wake_a.has_changed().expect("wake"), "the session is woken");
        let disk = on_disk(&sites);
        for name in ["a", "b"] {
            assert_eq!(disk[name], in_memory(&sites, name), "{name}");
            assert!(disk[name].desired.workloads.contains_key("agent"));
        }
        // Applied again unchanged: no new revision anywhere.
        let again = sites.apply_all(&[doc("agent", 1)]).await.expect("again");
        assert!(again["sites"]
            .as_array()
            .expect("sites")
            .iter()
            .all(|s| s["changed"] == false));
    }

    #[tokio::test]
    async fn apply_to_all_sites_is_refused_whole_when_one_site_refuses() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sites = open(dir.path());
        assert!(matches!(
            sites.apply_all(&[doc("agent", 1)]).await,
            Err(HubError::Refused(_))
        ));
        sites.apply("a", &[doc("web", 1)]).await.expect("a");
        sites.apply("b", &[doc("web", 1)]).await.expect("b");
        let opened = sites.open_session("b", 0, 0).await.expect("session");
        let report = Report {
            full: true,
            workloads: vec![WorkloadStatus {
                name: "agent".into(),
                source: "local".into(),
                generation: 1,
            }],
            ..Report::default()
        };
        sites
            .reported("b", opened.session, &report)
            .await
            .expect("report");
        let before = on_disk(&sites);
        let refused = sites.apply_all(&[doc("agent", 1)]).await;
        match refused {
            Err(HubError::Refused(text)) => assert!(text.contains("site 'b'"), "{text}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert_eq!(on_disk(&sites), before, "no site changed");
        assert_eq!(in_memory(&sites, "a").desired.revision, 1);
    }

    /// Acks, reports and disconnects of one site racing applies to it: the
    /// record on disk is always the one in memory (no older save lands
    /// last), and every apply got a revision of its own.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_sites_changes_racing_each_other_leave_the_newest_record_on_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sites = Arc::new(open(dir.path()));
        sites.apply("a", &[doc("web", 0)]).await.expect("apply");
        sites.apply("other", &[doc("web", 0)]).await.expect("apply");
        let mut tasks = Vec::new();
        for round in 1..=20u32 {
            let s = sites.clone();
            tasks.push(tokio::spawn(async move {
                s.apply("a", &[doc("web", round)]).await.map(|_| ())
            }));
            let s = sites.clone();
            tasks.push(tokio::spawn(async move {
                s.apply("other", &[doc("web", round)]).await.map(|_| ())
            }));
            let s = sites.clone();
            tasks.push(tokio::spawn(async move {
                let opened = s.open_session("a", 0, 0).await?;
                s.acked("a", opened.session, u64::from(round)).await?;
                s.reported("a", opened.session, &Report::default()).await?;
                s.closed("a", opened.session).await;
                Ok(())
            }));
        }
        for task in tasks {
            task.await.expect("task").expect("change");
        }
        let disk = on_disk(&sites);
        for name in ["a", "other"] {
            let memory = in_memory(&sites, name);
            assert_eq!(memory.desired.revision, 21, "{name}");
            assert_eq!(disk[name].desired, memory.desired, "{name}");
            assert_eq!(disk[name].acked_revision, memory.acked_revision, "{name}");
        }
    }
}
