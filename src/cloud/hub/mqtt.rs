//! `hub serve --mqtt`: the hub's side of the MQTT link, so one hub serves
//! sites over gRPC and through a broker side by side. The bridge publishes
//! each site's whole desired state, retained, under `{prefix}{site}/desired`
//! (again whenever its revision or epoch changes), and reads what sites
//! publish on `{prefix}+/reported` and `{prefix}+/online` into the same
//! site records and views as a gRPC link: a site's first full report opens
//! its session (as a Hello would), acks and rejects are recorded, reports
//! are applied, and a digest that does not match asks for the whole truth
//! on `{prefix}{site}/resync`. Sites authenticate to the broker, not to the
//! hub: confine each to its own topics with the broker's ACLs.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Publish, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::desired::LINK_MESSAGE_LIMIT;
use super::sites::Sites;
use crate::cloud::link::backoff::Backoff;
use crate::cloud::mqtt::broker::{self, pump, Incoming};
use crate::cloud::mqtt::wire::{self, Reported};

/// How the hub reaches the broker (`hub serve --mqtt ...`).
#[derive(Debug, Clone, Default)]
pub struct BridgeOptions {
    pub url: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub ca_pem: Option<String>,
    pub client: Option<(String, String)>,
    pub insecure: bool,
    /// Sites' topics are `{prefix}{site}/...`.
    pub prefix: String,
}

impl BridgeOptions {
    /// Checks everything that can be checked before connecting.
    pub fn connect_options(&self) -> Result<rumqttc::MqttOptions, String> {
        let url = broker::parse_url(&self.url, self.insecure)?;
        let tls = match (&self.ca_pem, url.tls) {
            (Some(ca), true) => Some(broker::tls_config(
                ca,
                self.client.as_ref().map(|(c, k)| (c.as_str(), k.as_str())),
            )?),
            (None, true) => return Err("--mqtt-ca-file: mqtts:// needs the broker's CA".into()),
            (_, false) => None,
        };
        broker::options(
            &url,
            broker::Connect {
                client_id: "gantry-hub".into(),
                username: self.username.as_deref(),
                password: self.password.as_deref(),
                tls,
                keepalive: Some(Duration::from_secs(40)),
                will: None,
                max_packet: LINK_MESSAGE_LIMIT,
            },
        )
    }
}

/// Runs the bridge until `closing`, reconnecting with back-off.
pub async fn run(sites: Arc<Sites>, options: BridgeOptions, closing: CancellationToken) {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    loop {
        let error = match connection(&sites, &options, &closing).await {
            Ok(()) => return,
            Err(e) => e,
        };
        let wait = backoff.next_wait();
        tracing::warn!(broker = %options.url, error = %error, retry_in_ms = wait.as_millis() as u64, "MQTT bridge down");
        tokio::select! {
            _ = closing.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// A site heard through the broker: its hub session and the epoch it
/// opened in.
struct Live {
    session: u64,
    epoch: u64,
}

struct Bridge<'a> {
    sites: &'a Sites,
    client: AsyncClient,
    prefix: &'a str,
    /// (epoch, revision) last published per site.
    published: HashMap<String, (u64, u64)>,
    live: HashMap<String, Live>,
}

impl Bridge<'_> {
    async fn publish(&self, topic: String, retain: bool, payload: Vec<u8>) -> Result<(), String> {
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload)
            .await
            .map_err(|e| format!("broker: {e}"))
    }

    async fn resync(&self, site: &str) -> Result<(), String> {
        self.publish(format!("{}{site}/resync", self.prefix), false, Vec::new())
            .await
    }

    /// Publishes every site's desired state that changed since last time.
    async fn publish_changed(&mut self) -> Result<(), String> {
        for snapshot in self.sites.desired_snapshots() {
            let key = (snapshot.epoch, snapshot.revision);
            if snapshot.revision == 0 || self.published.get(&snapshot.site) == Some(&key) {
                continue;
            }
            let doc = wire::desired_doc(snapshot.epoch, snapshot.revision, &snapshot.specs);
            let payload = doc.to_string().into_bytes();
            self.sites.count_bytes(&snapshot.site, 0, payload.len());
            tracing::info!(site = %snapshot.site, revision = snapshot.revision, epoch = snapshot.epoch, "publishing desired state");
            self.publish(
                format!("{}{}/desired", self.prefix, snapshot.site),
                true,
                payload,
            )
            .await?;
            self.published.insert(snapshot.site, key);
        }
        Ok(())
    }

    /// The session of a site heard through the broker, if still live.
    fn session(&self, site: &str) -> Option<&Live> {
        self.live
            .get(site)
            .filter(|live| self.sites.is_live(site, live.session))
    }

    async fn incoming(&mut self, publish: Publish) -> Result<(), String> {
        let Some(rest) = publish.topic.strip_prefix(self.prefix) else {
            return Ok(());
        };
        let Some((site, kind)) = rest.rsplit_once('/') else {
            return Ok(());
        };
        let site = site.to_string();
        match kind {
            "online" if publish.payload.as_ref() == b"false" => {
                if let Some(live) = self.live.remove(&site) {
                    self.sites.closed(&site, live.session).await;
                    tracing::info!(site = %site, "site offline (MQTT)");
                }
                Ok(())
            }
            "reported" => {
                self.sites.count_bytes(&site, publish.payload.len(), 0);
                match wire::reported_from_json(&publish.payload) {
                    Some(reported) => self.reported(&site, reported).await,
                    None => {
                        tracing::debug!(site = %site, "unreadable report ignored");
                        Ok(())
                    }
                }
            }
            _ => Ok(()),
        }
    }

    async fn reported(&mut self, site: &str, reported: Reported) -> Result<(), String> {
        let hub_error = |e: super::sites::HubError| e.to_string();
        match reported {
            Reported::Report {
                report,
                acked_revision,
                epoch,
            } => {
                let live = match self.session(site) {
                    Some(live) => Live {
                        session: live.session,
                        epoch: live.epoch,
                    },
                    // Only the whole truth can open a session (it is what
                    // the hub's view starts from).
                    None if !report.full => return self.resync(site).await,
                    None => match self.sites.open_session(site, acked_revision, epoch).await {
                        Ok(opened) => {
                            tracing::info!(site, session = opened.session, "site connected (MQTT)");
                            if opened.epoch != epoch {
                                // A new epoch: publish the snapshot again.
                                self.published.remove(site);
                            }
                            Live {
                                session: opened.session,
                                epoch: opened.epoch,
                            }
                        }
                        // Not a site of this hub.
                        Err(_) => return Ok(()),
                    },
                };
                self.sites
                    .reported(site, live.session, &report)
                    .await
                    .map_err(hub_error)?;
                // Acks come as their own documents; a full report carries
                // the count too, for one this hub missed (it was down).
                // Only then: each save is a synced write.
                if report.full && epoch == live.epoch && acked_revision > 0 {
                    self.sites
                        .acked(site, live.session, acked_revision)
                        .await
                        .map_err(hub_error)?;
                }
                self.live.insert(site.to_string(), live);
                Ok(())
            }
            Reported::Ack { revision, epoch } => match self.session(site) {
                Some(live) if live.epoch == epoch => {
                    let session = live.session;
                    self.sites
                        .acked(site, session, revision)
                        .await
                        .map_err(hub_error)
                }
                _ => self.resync(site).await,
            },
            Reported::Reject {
                revision,
                epoch,
                error,
            } => match self.session(site) {
                Some(live) if live.epoch == epoch => {
                    let session = live.session;
                    self.sites
                        .rejected(site, session, revision, error)
                        .await
                        .map_err(hub_error)
                }
                _ => self.resync(site).await,
            },
            Reported::Digest(hash) => match self.session(site) {
                Some(live) if self.sites.digest_matches(site, live.session, hash) => Ok(()),
                _ => self.resync(site).await,
            },
        }
    }
}

async fn connection(
    sites: &Sites,
    options: &BridgeOptions,
    closing: &CancellationToken,
) -> Result<(), String> {
    let (client, eventloop) = AsyncClient::new(options.connect_options()?, 256);
    let (tx, mut events) = mpsc::channel(256);
    let pump = tokio::spawn(pump(eventloop, tx));
    let result = bridge(sites, options, client, &mut events, closing).await;
    pump.abort();
    result
}

async fn bridge(
    sites: &Sites,
    options: &BridgeOptions,
    client: AsyncClient,
    events: &mut mpsc::Receiver<Incoming>,
    closing: &CancellationToken,
) -> Result<(), String> {
    match tokio::time::timeout(Duration::from_secs(10), events.recv()).await {
        Ok(Some(Incoming::Connected)) => {}
        Ok(Some(Incoming::Failed { error, .. })) => return Err(error),
        Ok(_) => return Err("the broker connection closed".into()),
        Err(_) => return Err("the broker did not answer within 10s".into()),
    }
    for kind in ["reported", "online"] {
        client
            .subscribe(format!("{}+/{kind}", options.prefix), QoS::AtLeastOnce)
            .await
            .map_err(|e| format!("broker: {e}"))?;
    }
    tracing::info!(broker = %options.url, prefix = %options.prefix, "MQTT bridge connected");
    let mut bridge = Bridge {
        sites,
        client,
        prefix: &options.prefix,
        published: HashMap::new(),
        live: HashMap::new(),
    };
    bridge.publish_changed().await?;
    // Whatever the hub knew of its MQTT sites is from before this
    // connection: ask each for the whole truth.
    for snapshot in sites.desired_snapshots() {
        bridge.resync(&snapshot.site).await?;
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = closing.cancelled() => {
                let _ = bridge.client.disconnect().await;
                return Ok(());
            }
            _ = tick.tick() => bridge.publish_changed().await?,
            incoming = events.recv() => match incoming {
                Some(Incoming::Publish(publish)) => {
                    bridge.incoming(publish.clone()).await?;
                    bridge.client.ack(&publish).await.map_err(|e| format!("broker: {e}"))?;
                }
                Some(Incoming::Connected) => {}
                Some(Incoming::Failed { error, .. }) => return Err(error),
                None => return Err("the broker connection closed".into()),
            },
        }
    }
}
