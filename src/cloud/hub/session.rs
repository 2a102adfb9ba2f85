//! One site's live link at the hub: after the Hello was accepted it sends
//! the desired state (stop-and-wait: one delivery in flight, coalescing
//! every change made meanwhile), records Acks, Rejects and status reports,
//! and answers a digest that does not match with a resync request.

use std::sync::Arc;

use gantry_proto::hub::v1::hub_message::Msg as Out;
use gantry_proto::hub::v1::site_message::Msg as In;
use gantry_proto::hub::v1::{Desired, HubMessage, Resync, SiteMessage, Welcome};
use prost::Message;
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use super::sites::{Opened, Sites};

/// gRPC frames each message with a 5-byte prefix (flag + length).
pub const FRAME_PREFIX: usize = 5;

pub fn wire_len<M: Message>(message: &M) -> usize {
    message.encoded_len() + FRAME_PREFIX
}

pub struct Session {
    pub sites: Arc<Sites>,
    pub site: String,
    pub opened: Opened,
    pub inbound: Streaming<SiteMessage>,
    pub outbound: mpsc::Sender<Result<HubMessage, Status>>,
    /// Cancelled when the hub stops, so links do not hold its shutdown.
    pub closing: tokio_util::sync::CancellationToken,
    /// The site token the link opened with: a rotation with a grace lets
    /// the link run until the grace ends; without one it ends at once.
    pub token: String,
}

impl Session {
    async fn send(&self, msg: Out) -> bool {
        let message = HubMessage { msg: Some(msg) };
        self.sites.count_bytes(&self.site, 0, wire_len(&message));
        self.outbound.send(Ok(message)).await.is_ok()
    }

    /// Runs until the site goes away, a newer session replaces this one, or
    /// the hub stops.
    pub async fn run(mut self) {
        let (site, session) = (self.site.clone(), self.opened.session);
        let welcome = Welcome {
            desired_revision: self.opened.desired_revision,
            epoch: self.opened.epoch,
        };
        if self.send(Out::Welcome(welcome)).await {
            if let Err(e) = self.serve().await {
                tracing::info!(site = %site, session, error = %e, "site link ended");
            }
        }
        self.sites.closed(&site, session).await;
        tracing::info!(site = %site, session, "site disconnected");
    }

    async fn serve(&mut self) -> Result<(), String> {
        let (site, session) = (self.site.clone(), self.opened.session);
        let mut from = self.opened.resume_from;
        let mut in_flight: Option<u64> = None;
        loop {
            if !self.sites.is_live(&site, session) {
                return Err("superseded by a newer link or a new token".into());
            }
            let valid_until_ms = match self.sites.token_validity(&site, &self.token) {
                Some(until) => until,
                None => return Err("the token this link opened with was replaced".into()),
            };
            if in_flight.is_none() {
                if let Some(delta) = self.sites.next_delivery(&site, session, from) {
                    let mut desired = Desired::from(delta);
                    desired.epoch = self.opened.epoch;
                    tracing::info!(site = %site, revision = desired.revision, full = desired.full, upserts = desired.upserts.len(), deletes = desired.deletes.len(), from, "delivering desired state");
                    in_flight = Some(desired.revision);
                    if !self.send(Out::Desired(desired)).await {
                        return Err("the site stopped listening".into());
                    }
                }
            }
            let expiry = async {
                match valid_until_ms {
                    Some(until) => {
                        let left = until.saturating_sub(crate::clock::wall_ms());
                        tokio::time::sleep(std::time::Duration::from_millis(left)).await
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.closing.cancelled() => return Err("hub stopping".into()),
                _ = expiry => return Err("the token this link opened with is past its grace".into()),
                changed = self.opened.wake.changed() => {
                    if changed.is_err() {
                        return Err("hub stopping".into());
                    }
                }
                message = self.inbound.message() => {
                    let message = message.map_err(|s| s.message().to_string())?;
                    let Some(message) = message else {
                        return Ok(());
                    };
                    self.sites.count_bytes(&site, wire_len(&message), 0);
                    if matches!(message.msg, Some(In::Digest(_))) {
                        self.sites.count_digest_bytes(&site, wire_len(&message));
                    }
                    match message.msg {
                        Some(In::Ack(ack)) => {
                            tracing::info!(site = %site, revision = ack.revision, "site acknowledged");
                            from = from.max(ack.revision);
                            if in_flight.is_some_and(|r| r <= ack.revision) {
                                in_flight = None;
                            }
                            self.sites.acked(&site, session, ack.revision).await.map_err(|e| e.to_string())?;
                        }
                        Some(In::Reject(reject)) => {
                            tracing::warn!(site = %site, revision = reject.revision, error = %reject.error, "site rejected a revision");
                            if in_flight.is_some_and(|r| r <= reject.revision) {
                                in_flight = None;
                            }
                            self.sites
                                .rejected(&site, session, reject.revision, reject.error)
                                .await
                                .map_err(|e| e.to_string())?;
                        }
                        Some(In::Report(report)) => {
                            self.sites.reported(&site, session, &report).await.map_err(|e| e.to_string())?;
                        }
                        Some(In::Digest(digest))
                            if !self.sites.digest_matches(&site, session, digest.hash) =>
                        {
                            tracing::info!(site = %site, "status digest differs; asking for the whole truth");
                            if !self.send(Out::Resync(Resync {})).await {
                                return Err("the site stopped listening".into());
                            }
                        }
                        Some(In::Digest(_)) => {}
                        Some(In::Hello(_)) => return Err("a second Hello on one link".into()),
                        None => {}
                    }
                }
            }
        }
    }
}
