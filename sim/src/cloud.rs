//! The cloud, simulated: a hub that keeps the site's desired workloads as
//! revisions (the real `cloud::hub::desired::SiteDesired`) and follows the
//! real hub's session rules (a Hello resumes from the lower of the site's and
//! the hub's acknowledged revision; the newest session wins; an Ack counts
//! only on the live session), and per gateway a link that behaves like the
//! daemon's: only while its gateway leads, one delivery at a time, through
//! the daemon's own `cloud::link::deliver`.
//!
//! The uplink is its own path: partitions inside the site do not cut it, so
//! a leader cut off from its peers still hears the hub, the case where an
//! early Ack hurts. A crashed or powered-off gateway has no link.
//!
//! Checked here: an Ack leaves only for a revision that the answering
//! gateway has applied (so Raft committed it: the hub will never send it
//! again, so it must survive any failure), and at the end every replica holds exactly the hub's desired cloud workloads at the
//! hub's revision. Exactly-once application is the observer's (a revision
//! committed as applied at two log indexes).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use gantry::cloud::hub::desired::SiteDesired;
use gantry::cloud::link::deliver::{self, Delivered, Upstream};
use gantry::cloud::link::session::SessionEnd;
use gantry::cluster::{Cluster, NodeId};
use gantry::state::{Source, State};
use gantry_proto::hub::v1::site_message::Msg as Out;
use gantry_proto::hub::v1::Desired;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::Mutex;

use crate::clock::sim_ms;
use crate::trace::Trace;
use crate::world::World;

/// The cloud workloads the hub moves around.
pub const CLOUD_WORKLOADS: &[&str] = &["cloud-a", "cloud-b", "cloud-cam"];

/// The cloud's singleton (its copies are checked like the local ones).
pub const CLOUD_SINGLETON: &str = "cloud-cam";

/// How long a delivery may take before the link gives the session up.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

fn spec_json(name: &str, seq: u64) -> String {
    let singleton = name == CLOUD_SINGLETON;
    serde_json::json!({
        "name": name,
        "image": "sim/cloud:1",
        "singleton": singleton,
        "resources": {"cpu": "50m", "memory": "16Mi"},
        "env": {"SEQ": seq.to_string()},
    })
    .to_string()
}

#[derive(Default)]
struct HubState {
    desired: SiteDesired,
    acked: u64,
    session: Option<(u64, NodeId)>,
    sessions: u64,
    /// Revisions acknowledged before they were committed.
    forgotten: Vec<String>,
    /// Revisions the site refused (the hub sends only valid ones).
    rejected: Vec<String>,
    acks: u64,
}

/// The hub's side.
#[derive(Clone)]
pub struct SimHub {
    state: Arc<StdMutex<HubState>>,
    trace: Trace,
}

impl SimHub {
    pub fn new(trace: Trace) -> Self {
        Self {
            state: Arc::default(),
            trace,
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut HubState) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// An operator changes the site's desired cloud workloads.
    pub fn change(&self, rng: &mut StdRng, seq: u64) {
        let name = CLOUD_WORKLOADS[rng.random_range(0..CLOUD_WORKLOADS.len())];
        let revision = self.with(|h| {
            if h.desired.workloads.contains_key(name) && rng.random_bool(0.3) {
                h.desired.delete(name)
            } else {
                h.desired.apply(&[(name.to_string(), spec_json(name, seq))])
            }
        });
        if let Some(revision) = revision {
            self.trace
                .event(format!("hub: revision {revision} changes {name}"));
        }
    }

    /// A Hello: the newest session wins; deliveries resume from the lower of
    /// the two acknowledged revisions.
    fn hello(&self, node: NodeId, site_acked: u64) -> (u64, u64) {
        let (session, from) = self.with(|h| {
            let from = site_acked.min(h.acked);
            h.acked = site_acked;
            h.sessions += 1;
            h.session = Some((h.sessions, node));
            (h.sessions, from)
        });
        self.trace.event(format!(
            "hub: session {session} from gw{node} (site has {site_acked}, resuming from {from})"
        ));
        (session, from)
    }

    fn live(&self, session: u64) -> bool {
        self.with(|h| h.session.map(|(s, _)| s) == Some(session))
    }

    fn next_delivery(&self, session: u64, from: u64) -> Option<Desired> {
        self.with(|h| {
            if h.session.map(|(s, _)| s) != Some(session) || h.desired.revision <= from {
                return None;
            }
            Some(Desired::from(h.desired.since(from)))
        })
    }

    /// An answer on `session`; `committed` is the revision the answering
    /// gateway has applied, so committed, at this instant.
    fn answer(&self, session: u64, node: NodeId, committed: u64, msg: Out) {
        let text = self.with(|h| {
            if h.session.map(|(s, _)| s) != Some(session) {
                return None;
            }
            match msg {
                Out::Ack(ack) => {
                    if committed < ack.revision {
                        h.forgotten.push(format!(
                            "cloud: gw{node} acknowledged revision {} while it had committed only {committed}",
                            ack.revision
                        ));
                    }
                    h.acked = h.acked.max(ack.revision);
                    h.acks += 1;
                    Some(format!("hub: gw{node} acknowledged {}", ack.revision))
                }
                Out::Reject(reject) => {
                    h.rejected.push(format!(
                        "cloud: gw{node} rejected revision {}: {}",
                        reject.revision, reject.error
                    ));
                    Some(format!("hub: gw{node} rejected {}", reject.revision))
                }
                _ => None,
            }
        });
        if let Some(text) = text {
            self.trace.event(text);
        }
    }

    pub fn revision(&self) -> u64 {
        self.with(|h| h.desired.revision)
    }

    pub fn acked(&self) -> u64 {
        self.with(|h| h.acked)
    }

    pub fn forgotten(&self) -> Vec<String> {
        self.with(|h| h.forgotten.clone())
    }

    pub fn rejected(&self) -> Vec<String> {
        self.with(|h| h.rejected.clone())
    }

    /// Why `state` does not hold exactly the hub's desired cloud workloads
    /// at its revision (None: it does).
    pub fn differs(&self, state: &State) -> Option<String> {
        self.with(|h| {
            if state.meta.cloud.acked_revision != h.desired.revision {
                return Some(format!(
                    "at cloud revision {}, the hub at {}",
                    state.meta.cloud.acked_revision, h.desired.revision
                ));
            }
            let held: BTreeMap<&str, String> = state
                .workloads
                .iter()
                .filter(|(_, w)| w.source == Source::Cloud)
                .map(|(name, w)| {
                    (
                        name.as_str(),
                        w.spec.env.get("SEQ").cloned().unwrap_or_default(),
                    )
                })
                .collect();
            let wanted: BTreeMap<&str, String> = h
                .desired
                .workloads
                .iter()
                .map(|(name, e)| {
                    let seq = serde_json::from_str::<serde_json::Value>(&e.spec_json)
                        .ok()
                        .and_then(|v| v["env"]["SEQ"].as_str().map(str::to_string))
                        .unwrap_or_default();
                    (name.as_str(), seq)
                })
                .collect();
            (held != wanted).then(|| format!("holds {held:?}, the hub wants {wanted:?}"))
        })
    }
}

/// The site's answers, straight to the hub on this session.
struct SimUp {
    hub: SimHub,
    cluster: Cluster,
    session: u64,
    node: NodeId,
}

#[async_trait::async_trait]
impl Upstream for SimUp {
    async fn send(&mut self, msg: Out) -> Result<(), SessionEnd> {
        if !self.hub.live(self.session) {
            return Err(SessionEnd::Worked("superseded at the hub".into()));
        }
        let committed = self.cluster.state().read().state.meta.cloud.acked_revision;
        self.hub.answer(self.session, self.node, committed, msg);
        Ok(())
    }
}

/// The link of gateway `id`, for the whole run.
pub async fn link(world: Arc<Mutex<World>>, hub: SimHub, id: NodeId) {
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (cluster, incarnation) = {
            let w = world.lock().await;
            match (w.running().remove(&id), w.incarnation(id)) {
                (Some(c), Some(i)) => (c, i),
                _ => continue,
            }
        };
        if !cluster.is_leader() {
            continue;
        }
        let (site_acked, attachment) = {
            let applied = cluster.state().read();
            let cloud = &applied.state.meta.cloud;
            (cloud.acked_revision, cloud.attachment)
        };
        let (session, mut from) = hub.hello(id, site_acked);
        let mut up = SimUp {
            hub: hub.clone(),
            cluster: cluster.clone(),
            session,
            node: id,
        };
        loop {
            let same_daemon = world.lock().await.incarnation(id) == Some(incarnation)
                && world.lock().await.running().contains_key(&id);
            if !same_daemon || !cluster.is_leader() || !hub.live(session) {
                break;
            }
            if let Some(desired) = hub.next_delivery(session, from) {
                let at = sim_ms();
                match tokio::time::timeout(
                    DELIVERY_TIMEOUT,
                    deliver::deliver(&cluster, &mut up, desired, attachment),
                )
                .await
                {
                    Ok(Ok(Delivered::Committed { revision, .. })) => from = revision,
                    Ok(Ok(Delivered::Rejected { revision, .. })) => from = revision,
                    Ok(Err(end)) => {
                        hub.trace
                            .event(format!("gw{id} link: session ended ({end:?})"));
                        break;
                    }
                    Err(_) => {
                        hub.trace.event(format!(
                            "gw{id} link: delivery stuck since {at} ms, session given up"
                        ));
                        break;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The operator at the hub: a change every few seconds until `until`.
pub async fn operator(hub: SimHub, seed: u64, until: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut seq = 0;
    while sim_ms() < until {
        tokio::time::sleep(Duration::from_millis(rng.random_range(1_000..=5_000))).await;
        seq += 1;
        hub.change(&mut rng, seq);
    }
}
