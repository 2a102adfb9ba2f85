//! A hub for a thousand sites: one real hub and `BENCH_SITES` (default
//! 1,000) simulated sites on loopback.
//!
//! The hub runs as a child process, `gantry hub serve` (the `gantry` binary
//! of the same profile, next to this example's directory in the target dir,
//! or `BENCH_GANTRY_BIN`), so its RSS and CPU are its own. The sites are
//! light tasks in this process that speak the real link: TLS pinned to the
//! hub CA their token names (`link::session::hub_connector`), the site
//! token in the request metadata (`site_metadata`), the same endpoint
//! settings (`configure`), Hello with the revision and epoch they
//! acknowledged, a full Report after Welcome, an Ack for each Desired (and
//! a Report of the workloads it brought), and reconnects with the real
//! link's back-off and jitter (`link::backoff`, 0.5 s to 30 s). No Raft and
//! no containerd: a site is its acknowledged revision, epoch and workloads.
//!
//! Measured:
//! - `connect_all_s`: from stopping the hub (SIGTERM) and starting it again
//!   on the same data dir and port, until every site is connected again
//!   (Welcome received, counted on the site side), while every site retries
//!   on its own back-off;
//! - `apply_to_all_sites_p50_s`, `_p99_s`: one `hub apply --all-sites`
//!   (the admin API's `ApplyRequest { all_sites }`), from the request until
//!   each site has received and acknowledged its new revision
//!   (`BENCH_APPLY=each`: one `ApplyRequest` per site instead, 16 in
//!   flight, for hubs without `--all-sites`);
//! - `hub_rss_mb`: the hub process's peak RSS (`VmHWM`), the larger of the
//!   two hub processes;
//! - `cpu_s`: the hub's user + system CPU over the whole run (both hub
//!   processes, from `/proc/PID/stat`).
//!
//! Run: `cargo build --release --bin gantry && cargo run --release
//! --example bench_hub` (about 30 s). The hub's log goes to a file in
//! the temporary directory; `BENCH_KEEP=1` keeps that directory.

#[path = "support/gantry_bin.rs"]
mod gantry_bin;
use gantry_bin::gantry_binary;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures::StreamExt;
use gantry::cloud::hub::cli::HubAdmin;
use gantry::cloud::hub::desired::LINK_MESSAGE_LIMIT;
use gantry::cloud::link::backoff::Backoff;
use gantry::cloud::link::session::{configure, hub_connector, site_metadata};
use gantry::state::CloudLink;
use gantry_proto::hub::v1::hub_client::HubClient;
use gantry_proto::hub::v1::hub_message::Msg as In;
use gantry_proto::hub::v1::site_message::Msg as Out;
use gantry_proto::hub::v1::{
    Ack, ApplyRequest, Desired, Hello, NodeStatus, Reject, Report, SiteMessage, SiteTokenRequest,
    StatusRequest, WorkloadStatus,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// Linux reports CPU time in ticks of 1/100 s (USER_HZ) on every platform
/// we run on.
const TICKS_PER_SECOND: f64 = 100.0;
/// How long any one phase may take before the bench gives up.
const PHASE_LIMIT: Duration = Duration::from_secs(300);

/// What the bench reads of one simulated site.
#[derive(Default)]
struct Probe {
    connected: AtomicBool,
    /// When the site last got a Welcome, in µs since the bench started.
    welcomed_us: AtomicU64,
    /// The revision it acknowledged last, and when that grew.
    acked: AtomicU64,
    acked_us: AtomicU64,
}

struct Shared {
    start: Instant,
    probes: Vec<Probe>,
    /// Why a site's connection last ended, for a bench that times out.
    last_end: std::sync::Mutex<Option<String>>,
}

impl Shared {
    fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    fn connected(&self) -> usize {
        self.probes
            .iter()
            .filter(|p| p.connected.load(Ordering::Relaxed))
            .count()
    }
}

/// A site's committed state, kept across its connections like the
/// replicated `Meta::cloud` of a real site.
#[derive(Default)]
struct Committed {
    revision: u64,
    epoch: u64,
    /// Cloud workload -> the revision that last changed it.
    workloads: BTreeMap<String, u64>,
}

impl Committed {
    /// The site's status as a real site reports it: one Ready gateway and
    /// its cloud workloads (`full` after a connect, else the workloads).
    fn report(&self, site: &str, full: bool) -> Report {
        Report {
            full,
            nodes: if full {
                vec![NodeStatus {
                    name: format!("{site}-gw1"),
                    status: "Ready".into(),
                }]
            } else {
                Vec::new()
            },
            workloads: self
                .workloads
                .iter()
                .map(|(name, revision)| WorkloadStatus {
                    name: name.clone(),
                    source: "cloud".into(),
                    generation: *revision,
                })
                .collect(),
            ..Report::default()
        }
    }

    /// The state machine's rules for a delivery (`state::cloud`): a full
    /// snapshot is taken whatever the count, a delta only in the same
    /// epoch; a revision already held is acknowledged again unchanged.
    fn deliver(&mut self, desired: &Desired) -> std::result::Result<bool, String> {
        let same_epoch = desired.epoch == self.epoch;
        if !desired.full && !same_epoch {
            return Err(format!(
                "a delta of epoch {} for a site in epoch {}",
                desired.epoch, self.epoch
            ));
        }
        if same_epoch && desired.revision <= self.revision {
            return Ok(false);
        }
        if desired.full {
            self.workloads.clear();
        }
        for doc in &desired.upserts {
            self.workloads.insert(doc.name.clone(), desired.revision);
        }
        for name in &desired.deletes {
            self.workloads.remove(name);
        }
        self.revision = desired.revision;
        self.epoch = desired.epoch;
        Ok(true)
    }
}

/// Why a connection ended: as in the real link, one that never got a
/// Welcome keeps growing the back-off, one that worked starts it again.
enum End {
    Failed(String),
    Worked(String),
}

struct SimSite {
    index: usize,
    link: CloudLink,
    token: String,
}

impl SimSite {
    fn new(index: usize, hub: &str, token: String) -> Result<Self> {
        let parsed = gantry_pki::SiteToken::parse(&token).context("site token")?;
        // Built from its serde form, so fields the link grows keep their
        // defaults here.
        let link: CloudLink = serde_json::from_value(serde_json::json!({
            "hub": hub,
            "site": site_name(index),
            "hub_ca_sha256": parsed.hub_ca.to_hex(),
            "token_sealed": "",
        }))
        .context("a CloudLink for a simulated site")?;
        Ok(Self { index, link, token })
    }

    /// Connects, reconnects with back-off and jitter, forever.
    async fn run(self, shared: Arc<Shared>) {
        let mut committed = Committed::default();
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        loop {
            let end = self.session(&mut committed, &shared).await;
            shared.probes[self.index]
                .connected
                .store(false, Ordering::Relaxed);
            let (wait, why) = match end {
                End::Failed(why) => (backoff.next_wait(), why),
                End::Worked(why) => {
                    backoff.reset();
                    (backoff.next_wait(), why)
                }
            };
            *shared.last_end.lock().unwrap_or_else(|p| p.into_inner()) =
                Some(format!("{}: {why}", self.link.site));
            tokio::time::sleep(wait).await;
        }
    }

    async fn session(&self, committed: &mut Committed, shared: &Shared) -> End {
        let site = &self.link.site;
        let connector = match hub_connector(&self.link) {
            Ok(c) => c,
            Err(e) => return End::Failed(e),
        };
        let channel = match gantry::tls::connect_channel(&self.link.hub, connector, |e| {
            configure(e, &self.link)
        })
        .await
        {
            Ok(c) => c,
            Err(e) => return End::Failed(e),
        };
        let (tx, rx) = mpsc::channel(16);
        let hello = Hello {
            site: site.clone(),
            acked_revision: committed.revision,
            epoch: committed.epoch,
        };
        if tx.send(message(Out::Hello(hello))).await.is_err() {
            return End::Failed("sender closed".into());
        }
        let mut client = HubClient::new(channel)
            .max_decoding_message_size(LINK_MESSAGE_LIMIT)
            .max_encoding_message_size(LINK_MESSAGE_LIMIT);
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        if let Err(e) = site_metadata(&mut request, site, &self.token) {
            return End::Failed(e);
        }
        let mut inbound = match client.link(request).await {
            Ok(response) => response.into_inner(),
            Err(status) => return End::Failed(status.message().to_string()),
        };
        match inbound.message().await {
            Ok(Some(m)) if matches!(m.msg, Some(In::Welcome(_))) => {}
            Ok(_) => return End::Failed("no Welcome".into()),
            Err(status) => return End::Failed(status.message().to_string()),
        }
        let probe = &shared.probes[self.index];
        probe.welcomed_us.store(shared.now_us(), Ordering::Relaxed);
        probe.connected.store(true, Ordering::Relaxed);
        if tx
            .send(message(Out::Report(committed.report(site, true))))
            .await
            .is_err()
        {
            return End::Worked("sender closed".into());
        }
        loop {
            let next = match inbound.message().await {
                Ok(Some(m)) => m,
                Ok(None) => return End::Worked("the hub closed the link".into()),
                Err(status) => return End::Worked(status.message().to_string()),
            };
            let answers = match next.msg {
                Some(In::Desired(desired)) => match committed.deliver(&desired) {
                    Ok(changed) => {
                        let mut answers = vec![Out::Ack(Ack {
                            revision: desired.revision,
                        })];
                        if changed {
                            answers.push(Out::Report(committed.report(site, false)));
                        }
                        answers
                    }
                    Err(error) => vec![Out::Reject(Reject {
                        revision: desired.revision,
                        error,
                    })],
                },
                Some(In::Resync(_)) => vec![Out::Report(committed.report(site, true))],
                Some(In::Welcome(_)) | None => Vec::new(),
            };
            for answer in answers {
                let acked = match &answer {
                    Out::Ack(ack) => Some(ack.revision),
                    _ => None,
                };
                if tx.send(message(answer)).await.is_err() {
                    return End::Worked("sender closed".into());
                }
                if let Some(revision) = acked {
                    if revision > probe.acked.load(Ordering::Relaxed) {
                        probe.acked_us.store(shared.now_us(), Ordering::Relaxed);
                        probe.acked.store(revision, Ordering::Relaxed);
                    }
                }
            }
        }
    }
}

fn message(msg: Out) -> SiteMessage {
    SiteMessage { msg: Some(msg) }
}

fn site_name(index: usize) -> String {
    format!("site-{index:04}")
}

/// `gantry hub serve` as a child process.
struct HubProcess {
    child: tokio::process::Child,
    pid: rustix::process::Pid,
}

impl HubProcess {
    fn start(binary: &Path, data_dir: &Path, listen: &str, log: &Path) -> Result<Self> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .context("the hub's log file")?;
        let child = tokio::process::Command::new(binary)
            .args(["hub", "serve", "--data-dir"])
            .arg(data_dir)
            .args(["--listen", listen])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let pid = child
            .id()
            .and_then(|id| rustix::process::Pid::from_raw(id as i32))
            .ok_or_else(|| anyhow!("the hub has no pid"))?;
        Ok(Self { child, pid })
    }

    /// (peak RSS in KiB, CPU seconds so far).
    fn figures(&self) -> Result<(u64, f64)> {
        let id = self.pid.as_raw_nonzero();
        let status = std::fs::read_to_string(format!("/proc/{id}/status"))?;
        let hwm = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .ok_or_else(|| anyhow!("no VmHWM in /proc/{id}/status"))?;
        let stat = std::fs::read_to_string(format!("/proc/{id}/stat"))?;
        // Fields after the command name (which may hold spaces): state is
        // the 3rd field, utime and stime the 14th and 15th.
        let after = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest)
            .ok_or_else(|| anyhow!("malformed /proc/{id}/stat"))?;
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks = |i: usize| -> Result<u64> {
            fields
                .get(i - 3)
                .and_then(|f| f.parse().ok())
                .ok_or_else(|| anyhow!("malformed /proc/{id}/stat"))
        };
        Ok((hwm, (ticks(14)? + ticks(15)?) as f64 / TICKS_PER_SECOND))
    }

    /// SIGTERM, then waits for it to exit; returns its last figures.
    async fn stop(mut self) -> Result<(u64, f64)> {
        let figures = self.figures()?;
        rustix::process::kill_process(self.pid, rustix::process::Signal::TERM)
            .context("SIGTERM to the hub")?;
        match tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await {
            Ok(status) => {
                status?;
            }
            Err(_) => bail!("the hub did not stop within 30 s of SIGTERM"),
        }
        Ok(figures)
    }
}

/// Room for every site's socket, here and in the hub (which inherits it).
fn raise_fd_limit(sites: usize) -> Result<()> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let needed = sites as u64 * 2 + 1024;
    let limit = getrlimit(Resource::Nofile);
    if limit.current.is_some_and(|c| c < needed) {
        if limit.maximum.is_some_and(|m| m < needed) {
            bail!(
                "{sites} sites need {needed} file descriptors; the hard limit is {:?} (raise it, e.g. ulimit -Hn)",
                limit.maximum
            );
        }
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(needed),
                maximum: limit.maximum,
            },
        )
        .context("raising the open-file limit")?;
    }
    Ok(())
}

async fn wait_for(shared: &Shared, what: &str, mut check: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    while !check() {
        if start.elapsed() > PHASE_LIMIT {
            let last = shared
                .last_end
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            bail!(
                "timed out waiting for {what}; {} of {} sites connected; a link last ended: {}",
                shared.connected(),
                shared.probes.len(),
                last.unwrap_or_else(|| "none did".into())
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

async fn read_file_when_written(path: &Path) -> Result<String> {
    let start = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if !text.trim().is_empty() {
                return Ok(text.trim().to_string());
            }
        }
        if start.elapsed() > Duration::from_secs(60) {
            bail!("{} was not written", path.display());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn admin(hub: &str, data_dir: &Path) -> Result<HubAdmin> {
    let token = gantry::cloud::hub::cli::admin_token_of(data_dir).await?;
    let start = Instant::now();
    loop {
        match gantry::cloud::hub::cli::connect(hub, &token).await {
            Ok(client) => return Ok(client),
            Err(e) if start.elapsed() > Duration::from_secs(60) => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

const MANIFEST: &str = "name: node-exporter\nimage: 127.0.0.1:5000/monitoring/node-exporter:1\nreplicas: 1\nresources: {cpu: 50m, memory: 32Mi}\nenv: {LOG: info}\n";

#[tokio::main]
async fn main() -> Result<()> {
    let sites: usize = match std::env::var("BENCH_SITES") {
        Ok(text) => text.parse().context("BENCH_SITES")?,
        Err(_) => 1000,
    };
    raise_fd_limit(sites)?;
    let binary = gantry_binary()?;
    let tmp = tempfile::tempdir()?;
    let data_dir = tmp.path().join("hub");
    std::fs::create_dir_all(&data_dir)?;
    let log = tmp.path().join("hub.log");

    // The first hub picks a free port; the restart reuses it.
    let hub = HubProcess::start(&binary, &data_dir, "127.0.0.1:0", &log)?;
    let address =
        read_file_when_written(&data_dir.join(gantry::cloud::hub::cli::ADDRESS_FILE)).await?;
    let client = admin(&address, &data_dir).await?;
    let tokens: Vec<String> = futures::stream::iter(0..sites)
        .map(|index| {
            let mut client = client.clone();
            async move {
                let reply = client
                    .site_token(SiteTokenRequest {
                        site: site_name(index),
                        grace_ms: 0,
                    })
                    .await?;
                Ok::<_, anyhow::Error>(reply.into_inner().token)
            }
        })
        .buffered(16)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_>>()?;

    let shared = Arc::new(Shared {
        start: Instant::now(),
        probes: (0..sites).map(|_| Probe::default()).collect(),
        last_end: std::sync::Mutex::new(None),
    });
    for (index, token) in tokens.into_iter().enumerate() {
        let site = SimSite::new(index, &address, token)?;
        tokio::spawn(site.run(shared.clone()));
    }
    let first = Instant::now();
    wait_for(&shared, "every site's first connection", || {
        shared.connected() == sites
    })
    .await?;
    eprintln!(
        "bench_hub: {sites} sites connected to a fresh hub in {:.2} s",
        first.elapsed().as_secs_f64()
    );
    // Let the first reports land before the restart.
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Restart: stop the hub, start it again on the same data dir and port.
    let stopped_us = shared.now_us();
    let (rss_first, cpu_first) = hub.stop().await?;
    let restarted_us = shared.now_us();
    let hub = HubProcess::start(&binary, &data_dir, &address, &log)?;
    wait_for(&shared, "every site back after the restart", || {
        shared.probes.iter().all(|p| {
            p.connected.load(Ordering::Relaxed)
                && p.welcomed_us.load(Ordering::Relaxed) > stopped_us
        })
    })
    .await?;
    let last_welcome_us = shared
        .probes
        .iter()
        .map(|p| p.welcomed_us.load(Ordering::Relaxed))
        .max()
        .unwrap_or(stopped_us);
    let connect_all_s = (last_welcome_us - stopped_us) as f64 / 1e6;
    eprintln!(
        "bench_hub: the old hub took {:.2} s to stop; every site back {connect_all_s:.2} s after the stop, {:.2} s after the new hub was started",
        (restarted_us - stopped_us) as f64 / 1e6,
        (last_welcome_us.saturating_sub(restarted_us)) as f64 / 1e6
    );
    tokio::time::sleep(Duration::from_secs(3)).await;

    // One change to every site: one `hub apply --all-sites`, or with
    // BENCH_APPLY=each one ApplyRequest per site, 16 in flight.
    let client = admin(&address, &data_dir).await?;
    let each = std::env::var("BENCH_APPLY").is_ok_and(|v| v == "each");
    let applied_us = shared.now_us();
    let answers: Vec<serde_json::Value> = if each {
        futures::stream::iter(0..sites)
            .map(|index| {
                let mut client = client.clone();
                async move {
                    let reply = client
                        .apply(ApplyRequest {
                            site: site_name(index),
                            manifest: MANIFEST.into(),
                            unchecked: false,
                            all_sites: false,
                        })
                        .await?
                        .into_inner();
                    Ok::<_, anyhow::Error>(serde_json::from_str(&reply.json)?)
                }
            })
            .buffer_unordered(16)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_>>()?
    } else {
        let reply = client
            .clone()
            .apply(ApplyRequest {
                site: String::new(),
                manifest: MANIFEST.into(),
                unchecked: false,
                all_sites: true,
            })
            .await?
            .into_inner();
        let reply: serde_json::Value = serde_json::from_str(&reply.json)?;
        reply["sites"].as_array().cloned().unwrap_or_default()
    };
    let answered_us = shared.now_us();
    let mut targets = vec![0u64; sites];
    for site in &answers {
        let name = site["site"].as_str().unwrap_or_default();
        if let Some(index) = name
            .strip_prefix("site-")
            .and_then(|n| n.parse::<usize>().ok())
        {
            if let Some(target) = targets.get_mut(index) {
                *target = site["revision"].as_u64().unwrap_or(0);
            }
        }
    }
    if targets.contains(&0) {
        bail!("the apply did not name every site");
    }
    wait_for(&shared, "every site to acknowledge the apply", || {
        shared
            .probes
            .iter()
            .zip(&targets)
            .all(|(p, t)| p.acked.load(Ordering::Relaxed) >= *t)
    })
    .await?;
    let mut latencies: Vec<f64> = shared
        .probes
        .iter()
        .map(|p| {
            p.acked_us
                .load(Ordering::Relaxed)
                .saturating_sub(applied_us) as f64
                / 1e6
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    eprintln!(
        "bench_hub: the apply{} answered in {:.2} s; the last site acked after {:.2} s",
        if each { " (one request per site)" } else { "" },
        (answered_us - applied_us) as f64 / 1e6,
        latencies.last().copied().unwrap_or(f64::NAN)
    );
    // The hub's view agrees once the Acks are saved: every site connected
    // and at its revision.
    let agreed = Instant::now();
    loop {
        let status: serde_json::Value = serde_json::from_str(
            &client
                .clone()
                .status(StatusRequest {})
                .await?
                .into_inner()
                .json,
        )?;
        let count = status["sites"].as_array().map_or(0, |list| {
            list.iter()
                .filter(|s| s["connected"] == true && s["acked_revision"] == s["desired_revision"])
                .count()
        });
        if count == sites {
            eprintln!(
                "bench_hub: the hub's status agrees {:.2} s later",
                agreed.elapsed().as_secs_f64()
            );
            break;
        }
        if agreed.elapsed() > Duration::from_secs(60) {
            bail!("hub status shows {count} of {sites} sites connected and acked");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (rss_second, cpu_second) = hub.stop().await?;

    println!(
        "hub: sites={sites} connect_all_s={connect_all_s:.2} apply_to_all_sites_p50_s={:.3} apply_to_all_sites_p99_s={:.3} hub_rss_mb={:.0} cpu_s={:.1}",
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0),
        rss_first.max(rss_second) as f64 / 1024.0,
        cpu_first + cpu_second
    );
    if std::env::var_os("BENCH_KEEP").is_some() {
        let kept = tmp.keep();
        eprintln!("bench_hub: kept {}", kept.display());
    }
    Ok(())
}
