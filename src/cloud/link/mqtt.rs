//! One connection of the link through an MQTT broker (`cloud::mqtt` has the
//! topics and documents). The same rules as the gRPC session: the leader
//! alone connects (under the site's one client id, so the broker drops a
//! deposed leader still connected), each `desired` is committed through
//! Raft by the shared `deliver` and only then acknowledged, both on
//! `reported` and by the PUBACK the broker waits for; status goes up as
//! the whole truth after connecting, then batched changes and digests.
//! The retained `desired` comes again on every subscribe; the state
//! machine recognises a revision it has and changes nothing.

use std::time::Duration;

use gantry_proto::hub::v1::site_message::Msg as Out;
use rumqttc::{AsyncClient, Publish, QoS};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::session::{Pacing, SessionEnd, Tuning};
use super::{deliver, record_connection, LinkHandle};
use crate::cloud::hub::desired::LINK_MESSAGE_LIMIT;
use crate::cloud::mqtt::broker::{self, pump, Incoming};
use crate::cloud::mqtt::{wire, Topics};
use crate::cloud::site_view::SiteView;
use crate::cluster::Cluster;
use crate::state::{CloudLink, MqttLink};

fn open(cluster: &Cluster, field: &str, sealed: &str) -> Result<String, String> {
    let plain = cluster
        .trust()
        .map_err(|e| e.to_string())?
        .open_sealed(field, sealed)
        .map_err(|e| format!("cannot open the sealed {field}: {e}"))?;
    String::from_utf8(plain).map_err(|_| format!("the sealed {field} is not text"))
}

/// Connection options, secrets unsealed for this connection only.
fn options(
    cluster: &Cluster,
    link: &CloudLink,
    mqtt: &MqttLink,
    topics: &Topics,
) -> Result<rumqttc::MqttOptions, String> {
    use crate::cloud::mqtt::{CLIENT_KEY_FIELD, PASSWORD_FIELD};
    let url = broker::parse_url(&link.hub, true)?;
    let password = mqtt
        .password_sealed
        .as_deref()
        .map(|sealed| open(cluster, PASSWORD_FIELD, sealed))
        .transpose()?;
    let tls = match (&mqtt.ca_pem, url.tls) {
        (Some(ca), true) => {
            let key = mqtt
                .client_key_sealed
                .as_deref()
                .map(|sealed| open(cluster, CLIENT_KEY_FIELD, sealed))
                .transpose()?;
            let client = match (&mqtt.client_cert_pem, &key) {
                (Some(cert), Some(key)) => Some((cert.as_str(), key.as_str())),
                _ => None,
            };
            Some(broker::tls_config(ca, client)?)
        }
        _ => None,
    };
    broker::options(
        &url,
        broker::Connect {
            client_id: crate::cloud::mqtt::client_id(&link.site),
            username: mqtt.username.as_deref(),
            password: password.as_deref(),
            tls,
            // rumqttc notices a missing PINGRESP only when the next ping
            // is due, two intervals after the last packet: pinging at two
            // thirds of --keepalive notices a dead path as soon as the
            // gRPC link does (--keepalive plus a third).
            keepalive: super::keepalive::interval(link).map(|every| every * 2 / 3),
            will: Some((topics.online.clone(), "false")),
            max_packet: LINK_MESSAGE_LIMIT,
        },
    )
}

struct Session<'a> {
    cluster: &'a Cluster,
    link: &'a CloudLink,
    handle: &'a LinkHandle,
    client: AsyncClient,
    topics: Topics,
    sent: SiteView,
    reports: u64,
    attachment: u64,
}

impl Session<'_> {
    async fn publish(&self, topic: &str, retain: bool, doc: &Value) -> Result<(), SessionEnd> {
        self.publish_qos(topic, QoS::AtLeastOnce, retain, doc).await
    }

    async fn publish_qos(
        &self,
        topic: &str,
        qos: QoS,
        retain: bool,
        doc: &Value,
    ) -> Result<(), SessionEnd> {
        let payload = doc.to_string().into_bytes();
        self.cluster.telemetry().link_bytes("up", payload.len());
        self.client
            .publish(topic, qos, retain, payload)
            .await
            .map_err(|e| SessionEnd::Worked(format!("broker: {e}")))
    }

    fn acked(&self) -> (u64, u64) {
        let applied = self.cluster.state().read();
        let cloud = &applied.state.meta.cloud;
        (cloud.acked_revision, cloud.hub_epoch)
    }

    /// The whole truth, retained: a subscriber that comes later gets it.
    async fn send_full_report(&mut self) -> Result<(), SessionEnd> {
        let view = SiteView::from_state(&self.cluster.state().read().state);
        let (acked, epoch) = self.acked();
        let doc = wire::report(&view.full_report(), acked, epoch);
        self.sent = view;
        self.reports += 1;
        let topic = self.topics.reported.clone();
        self.publish(&topic, true, &doc).await
    }

    async fn send_changes(&mut self) -> Result<(), SessionEnd> {
        let view = SiteView::from_state(&self.cluster.state().read().state);
        if let Some(report) = self.sent.diff(&view) {
            let (acked, epoch) = self.acked();
            self.sent = view;
            self.reports += 1;
            let topic = self.topics.reported.clone();
            self.publish(&topic, false, &wire::report(&report, acked, epoch))
                .await?;
        }
        Ok(())
    }

    fn still_wanted(&self) -> Result<(), SessionEnd> {
        if !self.cluster.is_leader() {
            return Err(SessionEnd::NotLeader);
        }
        match &self.cluster.state().read().state.meta.cloud.link {
            Some(l) if l == self.link => Ok(()),
            _ => Err(SessionEnd::LinkChanged),
        }
    }

    /// A `desired` message: committed, then acknowledged; or refused whole.
    async fn desired(&mut self, publish: Publish) -> Result<(), SessionEnd> {
        self.cluster
            .telemetry()
            .link_bytes("down", publish.payload.len());
        match wire::desired_from_json(&publish.payload) {
            Err(unreadable) => {
                tracing::warn!(revision = unreadable.revision, error = %unreadable.error, "refusing an unreadable desired document");
                let topic = self.topics.reported.clone();
                let doc = wire::reject(unreadable.revision, unreadable.epoch, &unreadable.error);
                self.publish(&topic, false, &doc).await?;
                self.puback(&publish).await
            }
            Ok(desired) => {
                self.handle.heard_revision(desired.revision);
                self.still_wanted()?;
                let epoch = desired.epoch;
                let (cluster, attachment) = (self.cluster, self.attachment);
                let mut up = Answer {
                    session: self,
                    publish: Some(publish),
                    epoch,
                };
                deliver::deliver(cluster, &mut up, desired, attachment).await?;
                Ok(())
            }
        }
    }

    async fn puback(&self, publish: &Publish) -> Result<(), SessionEnd> {
        self.client
            .ack(publish)
            .await
            .map_err(|e| SessionEnd::Worked(format!("broker: {e}")))
    }
}

/// Where `deliver` answers one `desired` message: on `reported`, then by
/// the PUBACK (never before the commit: `deliver` answers after it).
struct Answer<'s, 'a> {
    session: &'s mut Session<'a>,
    publish: Option<Publish>,
    epoch: u64,
}

#[async_trait::async_trait]
impl deliver::Upstream for Answer<'_, '_> {
    async fn send(&mut self, msg: Out) -> Result<(), SessionEnd> {
        let doc = match msg {
            Out::Ack(ack) => wire::ack(ack.revision, self.epoch),
            Out::Reject(reject) => wire::reject(reject.revision, self.epoch, &reject.error),
            _ => return Ok(()),
        };
        let topic = self.session.topics.reported.clone();
        self.session.publish(&topic, false, &doc).await?;
        if let Some(publish) = self.publish.take() {
            self.session.puback(&publish).await?;
        }
        Ok(())
    }
}

/// One connection: connect, subscribe, say online, serve until it ends.
pub async fn run(
    cluster: &Cluster,
    link: &CloudLink,
    mqtt: &MqttLink,
    handle: &LinkHandle,
    tuning: &Tuning,
    shutdown: &CancellationToken,
) -> SessionEnd {
    let topics = Topics::new(&mqtt.prefix);
    let options = match options(cluster, link, mqtt, &topics) {
        Ok(options) => options,
        Err(e) => return SessionEnd::Refused(e),
    };
    let attachment = cluster.state().read().state.meta.cloud.attachment;
    let (client, eventloop) = AsyncClient::new(options, 64);
    let (tx, mut events) = mpsc::channel(64);
    let pump = tokio::spawn(pump(eventloop, tx));
    let end = connected(
        cluster,
        link,
        handle,
        client.clone(),
        topics,
        attachment,
        &mut events,
        tuning,
        shutdown,
    )
    .await;
    // A clean end says so; a deposed leader just goes (the new one says
    // online, and the broker's takeover publishes this one's will first).
    if matches!(end, SessionEnd::Shutdown | SessionEnd::LinkChanged) {
        let online = format!("{}online", mqtt.prefix);
        let _ = client
            .publish(online, QoS::AtLeastOnce, true, "false")
            .await;
    }
    let _ = client.disconnect().await;
    // Let the event loop send what is queued, briefly.
    let drained = tokio::time::timeout(Duration::from_secs(2), async {
        while events.recv().await.is_some() {}
    });
    let _ = drained.await;
    pump.abort();
    end
}

#[allow(clippy::too_many_arguments)]
async fn connected(
    cluster: &Cluster,
    link: &CloudLink,
    handle: &LinkHandle,
    client: AsyncClient,
    topics: Topics,
    attachment: u64,
    events: &mut mpsc::Receiver<Incoming>,
    tuning: &Tuning,
    shutdown: &CancellationToken,
) -> SessionEnd {
    let first = tokio::select! {
        _ = shutdown.cancelled() => return SessionEnd::Shutdown,
        first = tokio::time::timeout(Duration::from_secs(10), events.recv()) => first,
    };
    match first {
        Ok(Some(Incoming::Connected)) => {}
        Ok(Some(Incoming::Failed {
            error,
            refused: true,
        })) => return SessionEnd::Refused(error),
        Ok(Some(Incoming::Failed { error, .. })) => {
            return SessionEnd::Failed(format!("cannot reach the broker at {}: {error}", link.hub))
        }
        Ok(_) => return SessionEnd::Failed("the broker connection closed".into()),
        Err(_) => {
            return SessionEnd::Failed(format!(
                "the broker at {} did not answer within 10s",
                link.hub
            ))
        }
    }
    for topic in [&topics.desired, &topics.resync] {
        if let Err(e) = client.subscribe(topic.as_str(), QoS::AtLeastOnce).await {
            return SessionEnd::Failed(format!("broker: {e}"));
        }
    }
    tracing::info!(broker = %link.hub, site = %link.site, "cloud link connected through MQTT");
    handle.set(true, None);
    record_connection(cluster, true, None).await;
    let mut session = Session {
        cluster,
        link,
        handle,
        client,
        topics,
        sent: SiteView::default(),
        reports: 0,
        attachment,
    };
    let online = session.topics.online.clone();
    let served = async {
        session.publish(&online, true, &Value::Bool(true)).await?;
        serve(&mut session, events, tuning, shutdown).await
    };
    match served.await {
        Err(SessionEnd::Failed(e)) => SessionEnd::Worked(e),
        Err(end) => end,
        Ok(()) => SessionEnd::Worked("the broker closed the connection".into()),
    }
}

async fn serve(
    session: &mut Session<'_>,
    events: &mut mpsc::Receiver<Incoming>,
    tuning: &Tuning,
    shutdown: &CancellationToken,
) -> Result<(), SessionEnd> {
    session.send_full_report().await?;
    let mut applied = session.cluster.state().subscribe();
    let mut pacing = Pacing::new(tuning, session.reports);
    let mut check = tokio::time::interval(Duration::from_secs(1));
    let started = Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Err(SessionEnd::Shutdown),
            incoming = events.recv() => match incoming {
                None => return Ok(()),
                Some(Incoming::Failed { error, .. }) => {
                    return Err(SessionEnd::Failed(format!(
                        "{error} (after {}s connected)",
                        started.elapsed().as_secs()
                    )))
                }
                Some(Incoming::Connected) => {}
                Some(Incoming::Publish(publish)) if publish.topic == session.topics.desired => {
                    session.desired(publish).await?;
                }
                Some(Incoming::Publish(publish)) => {
                    // `resync`: anyone may ask for the whole truth.
                    session.puback(&publish).await?;
                    if publish.topic == session.topics.resync {
                        session.send_full_report().await?;
                    }
                }
            },
            changed = applied.changed() => {
                if changed.is_err() {
                    return Err(SessionEnd::Shutdown);
                }
                session.still_wanted()?;
                pacing.changed();
            }
            _ = pacing.batch_due() => {
                session.send_changes().await?;
                pacing.batch_sent(session.reports);
            }
            _ = pacing.digest_due() => {
                session.send_changes().await?;
                pacing.digest_sent(session.reports);
                let topic = session.topics.reported.clone();
                // A lost digest costs nothing (the next one comes), so
                // no PUBACK round trip for it.
                let digest = wire::digest(session.sent.digest());
                session.publish_qos(&topic, QoS::AtMostOnce, false, &digest).await?;
            }
            _ = check.tick() => session.still_wanted()?,
        }
    }
}
