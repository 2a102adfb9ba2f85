//! One connection of the edge link, from Hello to its end: deliveries are
//! decoded, committed through Raft and only then acknowledged; status goes
//! upstream as batched changes, the whole truth after connecting, and a
//! periodic digest (its interval doubling while nothing changes, up to a
//! ceiling) so that an idle site costs a few bytes every few minutes.

use std::time::Duration;

use gantry_proto::hub::v1::hub_client::HubClient;
use gantry_proto::hub::v1::hub_message::Msg as In;
use gantry_proto::hub::v1::site_message::Msg as Out;
use gantry_proto::hub::v1::{Digest, Hello, SiteMessage};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use super::{deliver, record_connection, LinkHandle};
use crate::cloud::site_view::SiteView;
use crate::cluster::Cluster;
use crate::state::CloudLink;

/// Test hook: exit the process right after committing this revision and
/// before acknowledging it (a leader crash at the worst moment).
pub const EXIT_BEFORE_ACK_ENV: &str = "GANTRY_TEST_EXIT_BEFORE_ACK";

/// How the link paces its status traffic.
#[derive(Debug, Clone)]
pub struct Tuning {
    /// Changes are collected this long before one report goes up.
    pub report_batch: Duration,
    /// A digest of the reported status goes up this often after a change...
    pub digest_every: Duration,
    /// ...and the interval doubles while the site is idle, up to this.
    pub digest_max: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            report_batch: Duration::from_secs(1),
            digest_every: Duration::from_secs(60),
            digest_max: Duration::from_secs(16 * 60),
        }
    }
}

impl Tuning {
    /// Defaults, or `GANTRY_CLOUD_REPORT_BATCH`, `GANTRY_CLOUD_DIGEST_INTERVAL`
    /// and `GANTRY_CLOUD_DIGEST_MAX` (humantime durations such as `500ms`).
    pub fn from_env() -> Self {
        let read = |name: &str| {
            std::env::var(name)
                .ok()
                .and_then(|v| humantime::parse_duration(&v).ok())
                .filter(|d| !d.is_zero())
        };
        let default = Self::default();
        Self {
            report_batch: read("GANTRY_CLOUD_REPORT_BATCH").unwrap_or(default.report_batch),
            digest_every: read("GANTRY_CLOUD_DIGEST_INTERVAL").unwrap_or(default.digest_every),
            digest_max: read("GANTRY_CLOUD_DIGEST_MAX").unwrap_or(default.digest_max),
        }
    }
}

/// Why a session ended, which decides how soon the next one starts.
#[derive(Debug)]
pub enum SessionEnd {
    Shutdown,
    NotLeader,
    /// Detached, or attached elsewhere.
    LinkChanged,
    /// Never got going (hub unreachable, broken stream).
    Failed(String),
    /// The hub refused the Hello (wrong site or token).
    Refused(String),
    /// Worked for a while, then broke.
    Worked(String),
}

impl SessionEnd {
    pub fn error(&self) -> Option<String> {
        match self {
            SessionEnd::Failed(e) | SessionEnd::Refused(e) | SessionEnd::Worked(e) => {
                Some(e.clone())
            }
            _ => None,
        }
    }
}

struct Link<'a> {
    cluster: &'a Cluster,
    link: &'a CloudLink,
    handle: &'a LinkHandle,
    tx: mpsc::Sender<SiteMessage>,
    /// What the hub has been told (the view both ends share).
    sent: SiteView,
    /// Reports sent so far; an unchanged count means the site was idle.
    reports: u64,
    /// The attachment this link was opened under (`CloudState::attachment`).
    attachment: u64,
}

impl Link<'_> {
    async fn send(&self, msg: Out) -> Result<(), SessionEnd> {
        let message = SiteMessage { msg: Some(msg) };
        self.cluster
            .telemetry()
            .link_bytes("up", prost::Message::encoded_len(&message));
        self.tx
            .send(message)
            .await
            .map_err(|_| SessionEnd::Worked("the link's sender closed".into()))
    }

    fn current_view(&self) -> SiteView {
        SiteView::from_state(&self.cluster.state().read().state)
    }

    async fn send_full_report(&mut self) -> Result<(), SessionEnd> {
        let view = self.current_view();
        let report = view.full_report();
        self.sent = view;
        self.reports += 1;
        self.send(Out::Report(report)).await
    }

    async fn send_changes(&mut self) -> Result<(), SessionEnd> {
        let view = self.current_view();
        if let Some(report) = self.sent.diff(&view) {
            self.sent = view;
            self.reports += 1;
            self.send(Out::Report(report)).await?;
        }
        Ok(())
    }

    /// Still the leader of a site attached to the same hub and site?
    fn still_wanted(&self) -> Result<(), SessionEnd> {
        if !self.cluster.is_leader() {
            return Err(SessionEnd::NotLeader);
        }
        let applied = self.cluster.state().read();
        match &applied.state.meta.cloud.link {
            Some(l) if l == self.link => Ok(()),
            _ => Err(SessionEnd::LinkChanged),
        }
    }
}

#[async_trait::async_trait]
impl deliver::Upstream for Link<'_> {
    async fn send(&mut self, msg: Out) -> Result<(), SessionEnd> {
        Link::send(self, msg).await
    }
}

pub(super) fn exit_if_hooked(revision: u64) {
    let hooked = std::env::var(EXIT_BEFORE_ACK_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok());
    if hooked == Some(revision) {
        tracing::warn!(revision, "test hook: exiting after commit, before Ack");
        std::process::exit(86);
    }
}

/// The site token, unsealed for this connection only.
fn site_token(cluster: &Cluster, link: &CloudLink) -> Result<String, String> {
    let plain = cluster
        .trust()
        .map_err(|e| e.to_string())?
        .open_sealed(super::SITE_TOKEN_FIELD, &link.token_sealed)
        .map_err(|e| format!("cannot open the sealed site token: {e}"))?;
    String::from_utf8(plain).map_err(|_| "the sealed site token is not text".to_string())
}

/// TLS to the hub, which must present the CA the site token pins: the
/// handshake fails before the token is sent to anyone else.
pub fn hub_connector(link: &CloudLink) -> Result<crate::tls::TlsConnector, String> {
    let pin = gantry_pki::Fingerprint::parse(&link.hub_ca_sha256)
        .map_err(|e| format!("the hub CA pin is malformed: {e}"))?;
    let config = gantry_pki::client_config(
        gantry_pki::PinnedCaVerifier::new(pin),
        None,
        crate::trust::alpn(),
    )
    .map_err(|e| e.to_string())?;
    crate::tls::TlsConnector::new(crate::tls::ClientTls::new(config), gantry_pki::HUB_NAME)
}

/// The site names itself and proves it with its token in the request's
/// metadata, which the hub checks before the stream opens.
pub fn site_metadata<T>(
    request: &mut tonic::Request<T>,
    site: &str,
    token: &str,
) -> Result<(), String> {
    let metadata = request.metadata_mut();
    metadata.insert(
        crate::cloud::hub::auth::SITE_HEADER,
        site.parse()
            .map_err(|_| format!("site name '{site}' cannot travel in a header"))?,
    );
    metadata.insert(
        "authorization",
        format!("Bearer {token}")
            .parse()
            .map_err(|_| "the site token cannot travel in a header".to_string())?,
    );
    Ok(())
}

/// A hub that does not answer within 5 s (TCP and TLS) is retried later;
/// an open link pings the hub when it has been quiet (`keepalive`).
/// Public for `examples/bench_hub.rs`, whose simulated sites dial the same
/// way.
pub fn configure(
    endpoint: tonic::transport::Endpoint,
    link: &CloudLink,
) -> tonic::transport::Endpoint {
    let endpoint = endpoint.connect_timeout(Duration::from_secs(5));
    match super::keepalive::interval(link) {
        Some(every) => endpoint
            .http2_keep_alive_interval(every)
            .keep_alive_timeout(super::keepalive::TIMEOUT)
            .keep_alive_while_idle(true),
        None => endpoint,
    }
}

/// What broke, in words: tonic's message for a dead connection is a
/// generic h2 error, the cause (an unanswered keepalive ping, a reset)
/// is at the end of its source chain.
fn hub_error(status: &tonic::Status) -> String {
    let cause = crate::tls::describe_connect_error(status);
    if cause.contains("keep-alive timed out") {
        return format!(
            "the hub did not answer a keepalive ping within {}s: the path is down or drops packets",
            super::keepalive::TIMEOUT.as_secs()
        );
    }
    if cause == status.message() {
        format!("hub: {cause}")
    } else {
        format!("hub: {} ({cause})", status.message())
    }
}

/// A link that broke after a long silence most likely lost its path: the
/// cause at the end of tonic's chain is whatever the closing connection
/// hit first (the unanswered ping, or a write into it), so say the facts.
fn broken_link(status: &tonic::Status, silent: Duration, link: &CloudLink) -> String {
    let cause = hub_error(status);
    match super::keepalive::interval(link) {
        Some(every) if silent >= every && !cause.contains("keepalive ping") => format!(
            "the link broke after {}s without a word from the hub, keepalive pinging every {}: {cause}",
            silent.as_secs(),
            humantime::format_duration(every)
        ),
        _ => cause,
    }
}

/// One connection: Hello, then deliveries and reports until it ends.
pub async fn run(
    cluster: &Cluster,
    link: &CloudLink,
    handle: &LinkHandle,
    tuning: &Tuning,
    shutdown: &CancellationToken,
) -> SessionEnd {
    let token = match site_token(cluster, link) {
        Ok(token) => token,
        Err(e) => return SessionEnd::Refused(e),
    };
    let connector = match hub_connector(link) {
        Ok(c) => c,
        Err(e) => return SessionEnd::Refused(e),
    };
    let channel = tokio::select! {
        _ = shutdown.cancelled() => return SessionEnd::Shutdown,
        connected = crate::tls::connect_channel(&link.hub, connector, |e| configure(e, link)) => match connected {
            Ok(c) => c,
            Err(e) => return SessionEnd::Failed(format!("cannot reach the hub at {}: {e}", link.hub)),
        },
    };
    let (acked, epoch, attachment) = {
        let applied = cluster.state().read();
        let cloud = &applied.state.meta.cloud;
        (cloud.acked_revision, cloud.hub_epoch, cloud.attachment)
    };
    let (tx, rx) = mpsc::channel(16);
    let hello = Hello {
        site: link.site.clone(),
        acked_revision: acked,
        epoch,
    };
    if tx
        .send(SiteMessage {
            msg: Some(Out::Hello(hello)),
        })
        .await
        .is_err()
    {
        return SessionEnd::Failed("the link's sender closed".into());
    }
    // A full snapshot can be as large as the hub lets a site's desired
    // state grow; tonic's default 4 MiB would break the link for good.
    let mut client = HubClient::new(channel)
        .max_decoding_message_size(crate::cloud::hub::desired::LINK_MESSAGE_LIMIT)
        .max_encoding_message_size(crate::cloud::hub::desired::LINK_MESSAGE_LIMIT);
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    if let Err(e) = site_metadata(&mut request, &link.site, &token) {
        return SessionEnd::Refused(e);
    }
    let opened = tokio::select! {
        _ = shutdown.cancelled() => return SessionEnd::Shutdown,
        opened = client.link(request) => opened,
    };
    let mut inbound = match opened {
        Ok(response) => response.into_inner(),
        Err(status) if status.code() == tonic::Code::Unauthenticated => {
            return SessionEnd::Refused(format!(
                "the hub refused site '{}': {}",
                link.site,
                status.message()
            ))
        }
        Err(status) => return SessionEnd::Failed(hub_error(&status)),
    };
    match inbound.message().await {
        Ok(Some(message)) if matches!(message.msg, Some(In::Welcome(_))) => {
            if let Some(In::Welcome(welcome)) = &message.msg {
                handle.heard_revision(welcome.desired_revision);
            }
        }
        Ok(_) => return SessionEnd::Failed("the hub did not welcome the link".into()),
        Err(status) if status.code() == tonic::Code::Unauthenticated => {
            return SessionEnd::Refused(format!(
                "the hub refused site '{}': {}",
                link.site,
                status.message()
            ))
        }
        Err(status) => return SessionEnd::Failed(hub_error(&status)),
    }
    tracing::info!(hub = %link.hub, site = %link.site, acked, "cloud link connected");
    handle.set(true, None);
    record_connection(cluster, true, None).await;
    let mut session = Link {
        cluster,
        link,
        handle,
        tx,
        sent: SiteView::default(),
        reports: 0,
        attachment,
    };
    match serve(&mut session, &mut inbound, tuning, shutdown).await {
        Err(SessionEnd::Failed(e)) => SessionEnd::Worked(e),
        Err(end) => end,
        Ok(()) => SessionEnd::Worked("the hub closed the link".into()),
    }
}

async fn serve(
    link: &mut Link<'_>,
    inbound: &mut tonic::Streaming<gantry_proto::hub::v1::HubMessage>,
    tuning: &Tuning,
    shutdown: &CancellationToken,
) -> Result<(), SessionEnd> {
    link.send_full_report().await?;
    let mut applied = link.cluster.state().subscribe();
    let mut pacing = Pacing::new(tuning, link.reports);
    let mut check = tokio::time::interval(Duration::from_secs(1));
    let mut heard = Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Err(SessionEnd::Shutdown),
            message = inbound.message() => {
                let message = message.map_err(|s| SessionEnd::Failed(broken_link(&s, heard.elapsed(), link.link)))?;
                heard = Instant::now();
                let Some(message) = message else { return Ok(()) };
                link.cluster
                    .telemetry()
                    .link_bytes("down", prost::Message::encoded_len(&message));
                match message.msg {
                    Some(In::Desired(desired)) => {
                        link.handle.heard_revision(desired.revision);
                        link.still_wanted()?;
                        let (cluster, attachment) = (link.cluster, link.attachment);
                        deliver::deliver(cluster, link, desired, attachment).await?;
                    }
                    Some(In::Resync(_)) => link.send_full_report().await?,
                    Some(In::Welcome(_)) | None => {}
                }
            }
            changed = applied.changed() => {
                if changed.is_err() {
                    return Err(SessionEnd::Shutdown);
                }
                link.still_wanted()?;
                pacing.changed();
            }
            _ = pacing.batch_due() => {
                link.send_changes().await?;
                pacing.batch_sent(link.reports);
            }
            _ = pacing.digest_due() => {
                link.send_changes().await?;
                pacing.digest_sent(link.reports);
                let hash = link.sent.digest();
                link.send(Out::Digest(Digest { hash })).await?;
            }
            _ = check.tick() => link.still_wanted()?,
        }
    }
}

/// When status goes upstream, shared by both forms of the link: changes
/// are batched for `report_batch`; a digest follows `digest_every` after a
/// change, its interval doubling while nothing is reported, up to
/// `digest_max`.
pub(super) struct Pacing {
    tuning: Tuning,
    report_at: Option<Instant>,
    digest_wait: Duration,
    next_digest: Instant,
    reports_at_digest: u64,
}

impl Pacing {
    pub(super) fn new(tuning: &Tuning, reports: u64) -> Self {
        Self {
            tuning: tuning.clone(),
            report_at: None,
            digest_wait: tuning.digest_every,
            next_digest: Instant::now() + tuning.digest_every,
            reports_at_digest: reports,
        }
    }

    /// The replica changed: a report is due after the batch window.
    pub(super) fn changed(&mut self) {
        if self.report_at.is_none() {
            self.report_at = Some(Instant::now() + self.tuning.report_batch);
        }
    }

    pub(super) async fn batch_due(&self) {
        match self.report_at {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    }

    /// A batch went out (`reports` counts every report sent so far).
    pub(super) fn batch_sent(&mut self, reports: u64) {
        self.report_at = None;
        if reports != self.reports_at_digest {
            self.digest_wait = self.tuning.digest_every;
            self.next_digest = self.next_digest.min(Instant::now() + self.digest_wait);
        }
    }

    pub(super) async fn digest_due(&self) {
        tokio::time::sleep_until(self.next_digest).await
    }

    /// The digest is going out now; the next one waits longer if nothing
    /// was reported since the last.
    pub(super) fn digest_sent(&mut self, reports: u64) {
        self.digest_wait = if reports == self.reports_at_digest {
            (self.digest_wait * 2).min(self.tuning.digest_max.max(self.tuning.digest_every))
        } else {
            self.tuning.digest_every
        };
        self.reports_at_digest = reports;
        self.next_digest = Instant::now() + self.digest_wait;
    }
}
