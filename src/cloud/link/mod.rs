//! The edge side of cloud sync. The Raft leader keeps one edge-initiated,
//! long-lived gRPC stream to the hub stored in the replicated state
//! (`gantry cloud attach`): it says Hello with the committed revision,
//! commits each delivery through Raft (one write per revision, together
//! with the revision) and only then acknowledges it, and streams status
//! reports upstream. Followers keep no link; a new leader reopens it from
//! the replicated revision. Failures reconnect with back-off and jitter.
//!
//! - `backoff`: reconnect timing.
//! - `keepalive`: noticing a path that silently drops packets.
//! - `session`: one connection to a hub, from Hello to its end.
//! - `mqtt`: one connection through an MQTT broker instead.
//! - this file: the supervisor loop and the soft connection state.

pub mod backoff;
pub mod deliver;
pub mod keepalive;
pub mod mqtt;
pub mod session;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::api::views::timestamp;
use crate::cluster::node::{now_ms, LeaderOp, LeaderReply};
use crate::cluster::Cluster;
use crate::state::{CloudLink, Command, Request, Response};
use backoff::Backoff;
use session::{SessionEnd, Tuning};

/// The field the site token is sealed under (`trust::seal_aad`).
pub const SITE_TOKEN_FIELD: &str = "site-token";

/// The leader's live view of its link: soft state, never replicated as such
/// (only transitions are, see `Command::SetCloudConnection`).
#[derive(Debug, Clone, Default)]
pub struct LinkStatus {
    pub connected: bool,
    pub since_ms: u64,
    pub last_error: Option<String>,
    /// The hub's desired revision for this site, as this leader's link last
    /// heard it (Welcome, then each delivery); 0 before any.
    pub hub_revision: u64,
}

/// Shared between the link loop and the Admin API's `status`.
#[derive(Clone, Default)]
pub struct LinkHandle {
    inner: Arc<Mutex<LinkStatus>>,
}

impl LinkHandle {
    pub fn get(&self) -> LinkStatus {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The hub said its desired revision is (at least) `revision`.
    pub(crate) fn heard_revision(&self, revision: u64) {
        let mut status = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        status.hub_revision = status.hub_revision.max(revision);
    }

    fn set(&self, connected: bool, error: Option<String>) {
        let mut status = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if status.connected != connected || status.since_ms == 0 {
            status.since_ms = now_ms();
        }
        status.connected = connected;
        if error.is_some() || connected {
            status.last_error = error;
        }
    }
}

/// Proposes `command` here, only while this gateway leads: the link must
/// never act through a leader it does not know to be itself.
async fn write_as_leader(cluster: &Cluster, command: Command) -> Result<Response, SessionEnd> {
    let op = LeaderOp::Write(Request::new(cluster.now_ms(), command));
    match cluster.execute_as_leader(op).await {
        Ok(LeaderReply::Write(response)) | Ok(LeaderReply::Written { response, .. }) => {
            Ok(response)
        }
        Ok(other) => Err(SessionEnd::Failed(format!("unexpected reply {other:?}"))),
        Err(crate::cluster::node::LeaderFailure::NotLeader) => Err(SessionEnd::NotLeader),
        Err(e) => Err(SessionEnd::Failed(e.to_string())),
    }
}

/// Commits a connect/disconnect transition when the replica says otherwise.
async fn record_connection(cluster: &Cluster, connected: bool, reason: Option<String>) {
    let needed = {
        let applied = cluster.state().read();
        let cloud = &applied.state.meta.cloud;
        cloud.link.is_some()
            && (cloud.connected != connected || cloud.reported_by != Some(cluster.id()))
    };
    if !needed || !cluster.is_leader() {
        return;
    }
    let command = Command::SetCloudConnection {
        connected,
        node: cluster.id(),
        reason,
    };
    if let Err(e) = write_as_leader(cluster, command).await {
        tracing::debug!(error = ?e, "could not record the cloud link transition");
    }
}

/// The link this gateway should hold now: Some only on the leader of an
/// attached site.
fn wanted(cluster: &Cluster) -> Option<CloudLink> {
    if !cluster.is_leader() {
        return None;
    }
    cluster.state().read().state.meta.cloud.link.clone()
}

/// The supervisor: runs sessions while this gateway leads an attached site.
pub async fn run(cluster: Cluster, handle: LinkHandle, shutdown: CancellationToken) {
    let tuning = Tuning::from_env();
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let mut applied = cluster.state().subscribe();
    let mut metrics = cluster.metrics_watch();
    handle.set(false, None);
    loop {
        let Some(link) = wanted(&cluster) else {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = applied.changed() => {
                // The state machine is gone (its Raft core stopped): waiting
                // on it again would return at once, forever.
                if changed.is_err() {
                    return;
                }
            }
                changed = metrics.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            continue;
        };
        let end = match &link.mqtt {
            Some(mqtt) => mqtt::run(&cluster, &link, mqtt, &handle, &tuning, &shutdown).await,
            None => session::run(&cluster, &link, &handle, &tuning, &shutdown).await,
        };
        handle.set(false, end.error());
        match end {
            SessionEnd::Shutdown => return,
            SessionEnd::NotLeader | SessionEnd::LinkChanged => {
                tracing::info!(reason = ?end, "cloud link closed");
                backoff.reset();
            }
            SessionEnd::Failed(ref error) | SessionEnd::Refused(ref error) => {
                record_connection(&cluster, false, Some(error.clone())).await;
                let wait = backoff.next_wait();
                tracing::warn!(hub = %link.hub, site = %link.site, error = %error, retry_in_ms = wait.as_millis() as u64, "cloud link down");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
            SessionEnd::Worked(ref error) => {
                record_connection(&cluster, false, Some(error.clone())).await;
                backoff.reset();
                let wait = backoff.next_wait();
                tracing::warn!(hub = %link.hub, site = %link.site, error = %error, retry_in_ms = wait.as_millis() as u64, "cloud link lost");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

/// The `cloud` object of `gantry status`. The leader answers from its live
/// link; a follower from the last transition a leader committed, and says
/// connected only if that leader is still the one it knows.
pub fn status_view(cluster: &Cluster, handle: &LinkHandle) -> Value {
    let leader = cluster.metrics().current_leader;
    let applied = cluster.state().read();
    let cloud = &applied.state.meta.cloud;
    let (connected, since_ms, known_by, last_error) = if cluster.is_leader() {
        let live = handle.get();
        (live.connected, live.since_ms, "leader", live.last_error)
    } else {
        let connected =
            cloud.connected && cloud.reported_by.is_some() && cloud.reported_by == leader;
        (connected, cloud.since_ms, "replicated", None)
    };
    json!({
        "attached": cloud.link.is_some(),
        "connected": cloud.link.is_some() && connected,
        "hub": cloud.link.as_ref().map(|l| l.hub.clone()),
        "site": cloud.link.as_ref().map(|l| l.site.clone()),
        "transport": cloud.link.as_ref().map(|l| if l.mqtt.is_some() { "mqtt" } else { "grpc" }),
        "keepalive": cloud.link.as_ref().map(keepalive::describe),
        "acked_revision": cloud.acked_revision,
        "hub_revision": (known_by == "leader").then(|| handle.get().hub_revision),
        "since": (since_ms > 0).then(|| timestamp(since_ms)),
        "since_ms": since_ms,
        "connection_known_by": known_by,
        "last_error": last_error,
        "refused": cloud.refused.iter().map(|(n, r)| json!({"name": n, "reason": r})).collect::<Vec<_>>(),
    })
}
