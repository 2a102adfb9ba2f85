//! Chaos on real gateways (issue #11 item 1): five gateways, each in a
//! network namespace of its own on one bridge (`support::netns`), each
//! with its own containerd, its data dir on a tmpfs of its own and a wall
//! clock the harness can step (libfaketime), every daemon flag at its
//! default, attached to a real hub in one more namespace. Clients write
//! through random gateways (applies that also change the replica count,
//! deletes), the hub changes workloads of its own, and a nemesis injects
//! faults, one round after another, a quarter of the rounds two at once:
//! kill -9 of the leader or a follower (restarted 1-4 s later), SIGSTOP
//! of a gateway (at most 2 s), isolation, a gateway that hears nothing but
//! still sends, a 2|3 split, 30 % packet loss, a 256 kbit/s link, a full
//! data dir, kill and restart of a gateway's containerd, a wall-clock jump
//! of up to 20 minutes either way, the uplink to the hub refused (resets)
//! or silently dropped, and a drain of a singleton's gateway. Two
//! singletons run `sleep`, which ignores SIGTERM.
//!
//! What is checked, from the outside:
//! - every acknowledged write is there at the end (an acknowledged apply
//!   with one of the values written since, an acknowledged delete
//!   absent; for the hub's changes, what the hub acknowledged): `lost`;
//! - no write applied twice: a workload's generation never exceeds the
//!   applies sent for it (acknowledged or not): `duplicated`;
//! - at most one running copy of each singleton at every 100 ms sample of
//!   the kernel's process list (cgroups, not gantry's word): `overlaps`;
//! - after each round is healed the site converges (every gateway Ready
//!   under one leader, each singleton Running once, the hub connected and
//!   acknowledged up to its last revision), timed: `converge_s`; and at
//!   the end every gateway holds the same workloads: `diverged`.
//!
//! `CHAOS_FAULTS` (60) and `CHAOS_SEED` set the run; `scripts/chaos.sh
//! --faults 1000` is the soak. The run prints one line:
//! `chaos: gateways=5 faults=60 rounds=.. together=.. by_kind={..} acked=.. lost=0 ...`.

mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{gantry_in, kernel_copies, netns, wait_for, TestCluster, Tmpfs};

const GATEWAYS: usize = 5;
const IMAGE: &str = "127.0.0.1:5000/gantry/busybox:test";
const SINGLETONS: [&str; 2] = ["solo-a", "solo-b"];
/// Against hangs only; convergence is measured, not bounded by this.
const HANG: Duration = Duration::from_secs(180);
/// The hub's namespace on the bridge, after the gateways'.
const HUB: usize = GATEWAYS;
const SITE: &str = "chaos";
/// Workloads each client keeps at most.
const LIVE: usize = 24;

/// A small seeded generator: the same seed gives the same fault schedule.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn millis(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_millis(low + self.next() % (high - low + 1))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    KillLeader,
    KillFollower,
    Pause,
    Isolate,
    Deafen,
    Split,
    Lossy,
    Slow,
    DiskFull,
    ContainerdRestart,
    ClockJump,
    UplinkCut,
    UplinkBlackhole,
    Drain,
}

const FAULTS: [Fault; 14] = [
    Fault::KillLeader,
    Fault::KillFollower,
    Fault::Pause,
    Fault::Isolate,
    Fault::Deafen,
    Fault::Split,
    Fault::Lossy,
    Fault::Slow,
    Fault::DiskFull,
    Fault::ContainerdRestart,
    Fault::ClockJump,
    Fault::UplinkCut,
    Fault::UplinkBlackhole,
    Fault::Drain,
];

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::KillLeader => "kill_leader",
            Fault::KillFollower => "kill_follower",
            Fault::Pause => "pause",
            Fault::Isolate => "isolate",
            Fault::Deafen => "deafen",
            Fault::Split => "split",
            Fault::Lossy => "lossy",
            Fault::Slow => "slow",
            Fault::DiskFull => "disk_full",
            Fault::ContainerdRestart => "containerd_restart",
            Fault::ClockJump => "clock_jump",
            Fault::UplinkCut => "uplink_cut",
            Fault::UplinkBlackhole => "uplink_blackhole",
            Fault::Drain => "drain",
        }
    }

    /// Whether it can be in force together with another fault. A drain
    /// is an operator's action that waits for its moves; it runs alone.
    fn pairs(self) -> bool {
        self != Fault::Drain
    }

    fn touches_uplink(self) -> bool {
        matches!(self, Fault::UplinkCut | Fault::UplinkBlackhole)
    }
}

/// A fault in force, and what heals it.
enum Active {
    Killed(usize),
    Paused(u32),
    /// iptables rules or a qdisc in the gateway's namespace.
    Network(usize),
    Split(usize, usize),
    Ballast(PathBuf),
    ContainerdDown(usize),
    Clock(usize),
    Uplink,
    Drained(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    /// Refused before anything happened (a full disk says so).
    Fail,
    /// Failed or timed out: it may or may not have been applied.
    Unknown,
}

#[derive(Debug, Clone)]
enum Op {
    Apply { name: String, value: u64 },
    Delete { name: String },
}

#[derive(Debug, Clone)]
struct Record {
    op: Op,
    outcome: Outcome,
}

/// How a client thread reaches gateway `i` (from inside its namespace,
/// with the harness's admin token) and the hub (from inside its own).
#[derive(Clone)]
struct Reach {
    namespaces: Vec<String>,
    token_file: PathBuf,
    scratch: PathBuf,
    hub_namespace: String,
    hub_addr: String,
    hub_dir: PathBuf,
}

impl Reach {
    /// Runs `gantry ARGS` against gateway `i`, killed after 30 s.
    fn run(&self, i: usize, args: &[&str], stdin: Option<&str>) -> (bool, String) {
        self.run_for(i, args, stdin, Duration::from_secs(30))
    }

    /// `run`, killed after `deadline`.
    fn run_for(
        &self,
        i: usize,
        args: &[&str],
        stdin: Option<&str>,
        deadline: Duration,
    ) -> (bool, String) {
        let mut command = gantry_in(Some(&self.namespaces[i]));
        command
            .arg("--server")
            .arg(format!("127.0.0.1:{}", netns::PORT))
            .args(args)
            .env("GANTRY_TOKEN_FILE", &self.token_file);
        finish(command, stdin, deadline)
    }

    /// Runs `gantry hub VERB --hub ADDR REST` with the hub's admin token.
    fn hub(&self, args: &[&str]) -> (bool, String) {
        let mut command = gantry_in(Some(&self.hub_namespace));
        command
            .args(["hub", args[0], "--hub", &self.hub_addr])
            .args(&args[1..])
            .env("GANTRY_HUB_DATA_DIR", &self.hub_dir);
        finish(command, None, Duration::from_secs(30))
    }

    /// The hub's entry for the site.
    fn hub_site(&self) -> Option<Value> {
        let (ok, out) = self.hub(&["status", "-o", "json"]);
        let status: Value = ok.then(|| serde_json::from_str(&out).ok()).flatten()?;
        status["sites"]
            .as_array()?
            .iter()
            .find(|s| s["site"] == SITE)
            .cloned()
    }

    fn apply(&self, i: usize, manifest: &str) -> (bool, String) {
        let path = self.scratch.join(format!(
            "m-{}-{}.yaml",
            i,
            NEXT_FILE.fetch_add(1, Ordering::Relaxed)
        ));
        if std::fs::write(&path, manifest).is_err() {
            return (false, "cannot write the manifest".into());
        }
        let path = path.to_string_lossy().into_owned();
        let result = self.run(i, &["apply", "-f", &path], None);
        let _ = std::fs::remove_file(&path);
        result
    }

    fn json(&self, i: usize, args: &[&str]) -> Option<Value> {
        let mut full = args.to_vec();
        full.extend_from_slice(&["-o", "json"]);
        let (ok, out) = self.run(i, &full, None);
        ok.then(|| serde_json::from_str(&out).ok()).flatten()
    }
}

/// Runs `command`, feeding it `stdin`, killed after `deadline`; its
/// stdout on success, else its stderr.
fn finish(mut command: Command, stdin: Option<&str>, deadline: Duration) -> (bool, String) {
    command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let Ok(mut child) = command.spawn() else {
        return (false, "cannot spawn gantry".into());
    };
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        let _ = pipe.write_all(text.as_bytes());
    }
    // Drained while it runs: an answer larger than a pipe's buffer
    // would otherwise stall the command until the deadline.
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + deadline;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    match status {
        Some(status) if status.success() => (true, stdout),
        Some(_) => (false, stderr),
        None => (false, "no answer in time".into()),
    }
}

static NEXT_FILE: AtomicUsize = AtomicUsize::new(0);

/// A workload that records `value`; its replica count changes with it, so
/// updates are also scale changes. It fits no gateway, so nothing starts.
fn record_of(name: &str, value: u64) -> String {
    format!(
        "name: {name}\nimage: {IMAGE}\nreplicas: {}\nnode_selector: {{nowhere: here}}\nenv: {{V: '{value}'}}\n",
        1 + value % 3
    )
}

fn outcome(ok: bool, message: &str) -> Outcome {
    if ok {
        Outcome::Ok
    } else if message.contains("reserve") {
        Outcome::Fail
    } else {
        Outcome::Unknown
    }
}

/// One client: applies new workloads, updates and deletes acknowledged
/// ones, through random gateways, until `stop`.
fn client(
    id: usize,
    reach: Reach,
    seed: u64,
    stop: Arc<AtomicBool>,
    history: Arc<Mutex<Vec<Record>>>,
) {
    let mut rng = Rng(seed | 1);
    let mut live: Vec<String> = Vec::new();
    let mut next = 0u64;
    let mut value = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let gateway = rng.below(GATEWAYS);
        value += 1;
        let roll = rng.below(10);
        // A site's workloads come and go: each client keeps at most
        // `LIVE` of its own, as an unbounded set would grow the state (and
        // every gateway's data dir) for as long as the soak runs.
        let op = if (roll < 2 || live.len() >= LIVE) && !live.is_empty() {
            // Names are never applied again once a delete was sent.
            let name = live.swap_remove(rng.below(live.len()));
            Op::Delete { name }
        } else if roll < 5 && !live.is_empty() {
            let name = live[rng.below(live.len())].clone();
            Op::Apply { name, value }
        } else {
            next += 1;
            Op::Apply {
                name: format!("c{id}-{next}"),
                value,
            }
        };
        let (ok, message) = match &op {
            Op::Apply { name, value } => reach.apply(gateway, &record_of(name, *value)),
            Op::Delete { name } => reach.run(gateway, &["delete", "workload", name], None),
        };
        let outcome = outcome(ok, &message);
        if let (Op::Apply { name, .. }, Outcome::Ok | Outcome::Unknown) = (&op, outcome) {
            if !live.contains(name) {
                live.push(name.clone());
            }
        }
        if let Ok(mut history) = history.lock() {
            history.push(Record { op, outcome });
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The cloud's side: changes four workloads at the hub, one every 2 s,
/// until `stop`; records what the hub acknowledged.
fn hub_client(reach: Reach, stop: Arc<AtomicBool>, history: Arc<Mutex<Vec<Record>>>) {
    let mut value = 0u64;
    while !stop.load(Ordering::Relaxed) {
        value += 1;
        let name = format!("hub-{}", value % 4);
        let path = reach.scratch.join(format!("hub-{value}.yaml"));
        let written = std::fs::write(&path, record_of(&name, value)).is_ok();
        let (ok, _) = if written {
            reach.hub(&["apply", "--site", SITE, "-f", &path.to_string_lossy()])
        } else {
            (false, String::new())
        };
        let _ = std::fs::remove_file(&path);
        if let Ok(mut history) = history.lock() {
            history.push(Record {
                op: Op::Apply { name, value },
                outcome: if ok { Outcome::Ok } else { Outcome::Unknown },
            });
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// Samples the kernel's process list every 100 ms; counts the samples in
/// which a singleton ran more than once.
fn sampler(
    namespaces: Vec<(String, String)>,
    stop: Arc<AtomicBool>,
    overlaps: Arc<Mutex<Vec<String>>>,
) {
    while !stop.load(Ordering::Relaxed) {
        for singleton in SINGLETONS {
            let copies = kernel_copies(&namespaces, singleton);
            if copies.len() > 1 {
                if let Ok(mut overlaps) = overlaps.lock() {
                    overlaps.push(format!("{singleton}: {copies:?}"));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn free_bytes(dir: &Path) -> u64 {
    rustix::fs::statvfs(dir)
        .map(|s| s.f_bavail * s.f_frsize)
        .unwrap_or(0)
}

struct Site {
    cluster: TestCluster,
    disks: Vec<Tmpfs>,
    reach: Reach,
}

impl Site {
    fn start() -> Self {
        let mut cluster = TestCluster::with_network(GATEWAYS + 1);
        cluster.with_fake_clocks();
        let mut disks = Vec::new();
        for i in 0..GATEWAYS {
            disks.push(Tmpfs::mount(
                &cluster.tmp.path().join(format!("g{i}")),
                "160m",
            ));
        }
        cluster.init("g0", &[]);
        for i in 1..GATEWAYS {
            cluster.join_with_own_containerd(&format!("g{i}"), &[]);
        }
        let addr = cluster.addr(0);
        cluster.import_busybox(&addr, IMAGE);
        let network = cluster.network.as_ref().expect("a network");
        let (hub_namespace, hub_listen) = (network.ns(HUB), network.addr(HUB));
        let namespaces = (0..GATEWAYS).map(|i| network.ns(i)).collect();
        let hub_addr = cluster.start_hub_in(Some(&hub_namespace), &hub_listen, &[]);
        let token = cluster.site_token(SITE);
        let out = cluster.cli(
            &addr,
            &[
                "cloud", "attach", "--hub", &hub_addr, "--site", SITE, "--token", &token,
            ],
        );
        assert!(
            out.status.success(),
            "attach: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let reach = Reach {
            namespaces,
            token_file: cluster.token_file.clone(),
            scratch: cluster.tmp.path().to_path_buf(),
            hub_namespace,
            hub_addr,
            hub_dir: cluster.hub.as_ref().expect("a hub").dir.clone(),
        };
        for singleton in SINGLETONS {
            let manifest = format!(
                "name: {singleton}\nimage: {IMAGE}\nsingleton: true\ncommand: [sleep, '3601']\n"
            );
            let out = cluster.apply(&addr, &manifest);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Site {
            cluster,
            disks,
            reach,
        }
    }

    fn network(&self) -> &netns::Topology {
        self.cluster.network.as_ref().expect("a network")
    }

    /// The leader's index, as some gateway that answers sees it.
    fn leader(&self) -> Option<usize> {
        self.find_leader().ok()
    }

    /// The leader's index, or what each gateway answered instead.
    fn find_leader(&self) -> Result<usize, String> {
        let mut answers = Vec::new();
        for i in 0..GATEWAYS {
            let (ok, out) = self.reach.run(i, &["status", "-o", "json"], None);
            let status: Option<Value> = ok.then(|| serde_json::from_str(&out).ok()).flatten();
            let leader = status.as_ref().and_then(|s| s["leader"].as_str());
            match leader.and_then(|name| name.strip_prefix('g')?.parse().ok()) {
                Some(index) => return Ok(index),
                None => answers.push(format!(
                    "g{i}: {}",
                    leader
                        .unwrap_or(out.trim())
                        .chars()
                        .take(160)
                        .collect::<String>()
                )),
            }
        }
        Err(answers.join("; "))
    }

    /// Every gateway Ready under one leader, each singleton Running once
    /// (by gantry and by the kernel); otherwise what is not yet so.
    fn converged(&self, namespaces: &[(String, String)]) -> Result<(), String> {
        let leader = self
            .find_leader()
            .map_err(|answers| format!("no gateway knows a leader: {answers}"))?;
        let status = self
            .reach
            .json(leader, &["status"])
            .ok_or(format!("g{leader} (the leader) gives no status"))?;
        let nodes: Vec<String> = status["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|n| {
                format!(
                    "{}={}",
                    n["name"].as_str().unwrap_or("?"),
                    n["status"].as_str().unwrap_or("?")
                )
            })
            .collect();
        if nodes.len() != GATEWAYS || nodes.iter().any(|n| !n.ends_with("=Ready")) {
            return Err(format!("gateways: {nodes:?}"));
        }
        let instances = self
            .reach
            .json(leader, &["get", "instances"])
            .ok_or("the leader lists no instances")?;
        let hub = self.reach.hub_site().ok_or("the hub lists no site")?;
        if hub["connected"] != true || hub["acked_revision"] != hub["desired_revision"] {
            return Err(format!(
                "the hub: connected={} acked {} of {}",
                hub["connected"], hub["acked_revision"], hub["desired_revision"]
            ));
        }
        for singleton in SINGLETONS {
            let states: Vec<String> = instances
                .as_array()
                .into_iter()
                .flatten()
                .filter(|i| i["workload"] == singleton)
                .map(|i| {
                    format!(
                        "{}@{}",
                        i["state"].as_str().unwrap_or("?"),
                        i["node"].as_str().unwrap_or("-")
                    )
                })
                .collect();
            let copies = kernel_copies(namespaces, singleton);
            if states.iter().filter(|s| s.starts_with("Running@")).count() != 1 || copies.len() != 1
            {
                return Err(format!(
                    "{singleton}: gantry says {states:?}, the kernel runs {copies:?}"
                ));
            }
        }
        Ok(())
    }

    /// A gateway no fault in force already touches.
    fn pick(&self, rng: &mut Rng, busy: &[usize]) -> Option<usize> {
        let free: Vec<usize> = (0..GATEWAYS).filter(|i| !busy.contains(i)).collect();
        (!free.is_empty()).then(|| free[rng.below(free.len())])
    }

    /// Puts `fault` in force; `busy` holds the gateways faults in force
    /// already touch (a second fault picks others). `None` when no gateway
    /// fits.
    fn begin(&mut self, fault: Fault, rng: &mut Rng, busy: &mut Vec<usize>) -> Option<Active> {
        let active = match fault {
            Fault::KillLeader | Fault::KillFollower => {
                let leader = self.leader().filter(|l| !busy.contains(l));
                let victim = match (fault, leader) {
                    (Fault::KillLeader, Some(leader)) => leader,
                    (_, leader) => {
                        let mut busy = busy.clone();
                        busy.extend(leader);
                        self.pick(rng, &busy)?
                    }
                };
                eprintln!("chaos: {} g{victim}", fault.name());
                self.cluster.gateways[victim].kill();
                busy.push(victim);
                Active::Killed(victim)
            }
            Fault::Pause => {
                let victim = self.pick(rng, busy)?;
                let pid = self.cluster.gateways[victim].child.as_ref()?.id();
                eprintln!("chaos: pause g{victim}");
                signal(pid, "-STOP");
                busy.push(victim);
                Active::Paused(pid)
            }
            Fault::Isolate | Fault::Deafen | Fault::Lossy | Fault::Slow => {
                let victim = self.pick(rng, busy)?;
                let network = self.network();
                eprintln!("chaos: {} g{victim}", fault.name());
                match fault {
                    Fault::Isolate => network.isolate(victim),
                    Fault::Deafen => network.deafen(victim),
                    Fault::Lossy => network.lossy(victim, 0.3),
                    _ => network.slow(victim, "256kbit"),
                }
                busy.push(victim);
                Active::Network(victim)
            }
            Fault::Split => {
                let first = self.pick(rng, busy)?;
                let mut with_first = busy.clone();
                with_first.push(first);
                let second = self.pick(rng, &with_first)?;
                let network = self.network();
                eprintln!("chaos: split g{first} g{second} from the rest");
                for minority in [first, second] {
                    for other in (0..GATEWAYS).filter(|o| *o != first && *o != second) {
                        network.cut(minority, other);
                    }
                }
                busy.extend([first, second]);
                Active::Split(first, second)
            }
            Fault::DiskFull => {
                let victim = self.pick(rng, busy)?;
                let dir = self.cluster.gateways[victim].dir.clone();
                let ballast = dir.join("ballast");
                let size = free_bytes(&dir).saturating_sub(16 << 20);
                eprintln!("chaos: disk_full g{victim}");
                let _ = Command::new("fallocate")
                    .args(["-l", &size.to_string()])
                    .arg(&ballast)
                    .status();
                busy.push(victim);
                Active::Ballast(ballast)
            }
            Fault::ContainerdRestart => {
                let victim = self.pick(rng, busy)?;
                eprintln!("chaos: containerd_restart g{victim}");
                self.cluster.containerd_of_mut(&format!("g{victim}")).kill();
                busy.push(victim);
                Active::ContainerdDown(victim)
            }
            Fault::ClockJump => {
                let victim = self.pick(rng, busy)?;
                // Up to 20 minutes either way: within the hour certificates
                // are backdated by, as a gateway without NTP drifts.
                let seconds = 30 + rng.below(1_170) as i64;
                let seconds = if rng.below(2) == 0 { seconds } else { -seconds };
                eprintln!("chaos: clock_jump g{victim} by {seconds:+} s");
                self.cluster.gateways[victim].set_clock_offset(seconds);
                busy.push(victim);
                Active::Clock(victim)
            }
            Fault::UplinkCut | Fault::UplinkBlackhole => {
                let network = self.network();
                eprintln!("chaos: {}", fault.name());
                if fault == Fault::UplinkCut {
                    network.refuse(HUB);
                } else {
                    network.isolate(HUB);
                }
                Active::Uplink
            }
            Fault::Drain => {
                // The gateway one singleton runs on: the drain moves it.
                let namespaces = self.cluster.namespaces();
                let singleton = SINGLETONS[rng.below(SINGLETONS.len())];
                let copies = kernel_copies(&namespaces, singleton);
                let victim = copies
                    .first()
                    .and_then(|(gateway, _)| gateway.strip_prefix('g')?.parse().ok())
                    .filter(|v| !busy.contains(v))
                    .or_else(|| self.pick(rng, busy))?;
                let via = self.pick(rng, &[])?;
                let name = format!("g{victim}");
                eprintln!("chaos: drain {name} (runs {singleton}: {copies:?})");
                let (ok, out) =
                    self.reach
                        .run_for(via, &["drain", &name], None, Duration::from_secs(150));
                eprintln!(
                    "chaos: drain {name}: {}",
                    if ok { "done" } else { out.trim() }
                );
                busy.push(victim);
                Active::Drained(victim)
            }
        };
        Some(active)
    }

    /// Heals what `begin` put in force.
    fn end(&mut self, active: Active) {
        match active {
            Active::Killed(victim) => self.cluster.gateways[victim].restart(),
            Active::Paused(pid) => signal(pid, "-CONT"),
            Active::Network(victim) => self.network().heal(victim),
            Active::Split(first, second) => {
                let network = self.network();
                for i in (0..GATEWAYS).filter(|i| *i != first && *i != second) {
                    network.heal(i);
                }
                network.heal(first);
                network.heal(second);
            }
            Active::Ballast(ballast) => {
                let _ = std::fs::remove_file(&ballast);
            }
            Active::ContainerdDown(victim) => {
                let tokio = self.cluster.tokio.handle().clone();
                tokio
                    .block_on(
                        self.cluster
                            .containerd_of_mut(&format!("g{victim}"))
                            .restart(),
                    )
                    .expect("containerd restarts");
            }
            Active::Clock(victim) => self.cluster.gateways[victim].set_clock_offset(0),
            Active::Uplink => self.network().heal(HUB),
            Active::Drained(victim) => {
                // Until it answers: a gateway left cordoned would starve
                // the singletons of room for the rest of the run.
                let name = format!("g{victim}");
                wait_for(&format!("{name} to be uncordoned"), HANG, || {
                    (0..GATEWAYS).find(|via| self.reach.run(*via, &["uncordon", &name], None).0)
                });
            }
        }
    }
}

/// Waits until the site converged; on a hang, says what was still amiss
/// (the last few different reasons, oldest first: the very last one may
/// be a race with the moment the wait ended).
fn settle(site: &Site, namespaces: &[(String, String)], what: &str) {
    let mut reasons: Vec<String> = Vec::new();
    let start = Instant::now();
    while start.elapsed() < HANG {
        match site.converged(namespaces) {
            Ok(()) => return,
            Err(reason) => {
                if reasons.last() != Some(&reason) {
                    reasons.push(reason);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let from = reasons.len().saturating_sub(4);
    panic!(
        "timed out after {HANG:?} waiting for {what}: {}",
        reasons[from..].join(" | then: ")
    );
}

fn signal(pid: u32, which: &str) {
    let _ = Command::new("kill")
        .arg(which)
        .arg(pid.to_string())
        .status();
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// What the history says each workload must look like at the end.
struct Verdict {
    acked: usize,
    lost: Vec<String>,
    duplicated: Vec<String>,
}

fn check(history: &[Record], workloads: &Value) -> Verdict {
    let mut found: BTreeMap<String, (String, u64)> = BTreeMap::new();
    for w in workloads.as_array().into_iter().flatten() {
        let Some(name) = w["name"].as_str() else {
            continue;
        };
        let value = w["spec"]["env"]["V"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let generation = w["generation"].as_u64().unwrap_or(0);
        found.insert(name.to_string(), (value, generation));
    }
    let mut by_name: BTreeMap<&str, Vec<&Record>> = BTreeMap::new();
    for record in history {
        let name = match &record.op {
            Op::Apply { name, .. } | Op::Delete { name } => name.as_str(),
        };
        by_name.entry(name).or_default().push(record);
    }
    let mut verdict = Verdict {
        acked: history.iter().filter(|r| r.outcome == Outcome::Ok).count(),
        lost: Vec::new(),
        duplicated: Vec::new(),
    };
    for (name, records) in by_name {
        let last_ok = records.iter().rposition(|r| r.outcome == Outcome::Ok);
        let deleted_since = |from: usize| {
            records[from..]
                .iter()
                .any(|r| matches!(r.op, Op::Delete { .. }) && r.outcome != Outcome::Fail)
        };
        match (last_ok.map(|at| (at, &records[at].op)), found.get(name)) {
            (Some((at, Op::Apply { .. })), Some((value, _))) => {
                // The acknowledged value or one sent after it.
                let allowed = records[at..].iter().any(|r| {
                    matches!(&r.op, Op::Apply { value: v, .. } if v.to_string() == *value)
                        && r.outcome != Outcome::Fail
                });
                if !allowed && !deleted_since(at) {
                    verdict.lost.push(format!("{name}: holds V={value}"));
                }
            }
            (Some((at, Op::Apply { .. })), None) if !deleted_since(at) => {
                verdict.lost.push(format!("{name}: acknowledged, missing"));
            }
            (Some((_, Op::Delete { .. })), Some(_)) => {
                verdict
                    .lost
                    .push(format!("{name}: deletion acknowledged, present"));
            }
            _ => {}
        }
        if let Some((_, generation)) = found.get(name) {
            let sent = records
                .iter()
                .filter(|r| matches!(r.op, Op::Apply { .. }) && r.outcome != Outcome::Fail)
                .count() as u64;
            if *generation > sent {
                verdict.duplicated.push(format!(
                    "{name}: generation {generation}, {sent} applies sent"
                ));
            }
        }
    }
    verdict
}

#[test]
fn five_gateways_under_a_nemesis_lose_no_acknowledged_write_and_never_run_a_singleton_twice() {
    let faults: usize = std::env::var("CHAOS_FAULTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let seed: u64 = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(25_482_250_757);
    let started = Instant::now();
    let mut site = Site::start();
    let namespaces = site.cluster.namespaces();
    settle(
        &site,
        &namespaces,
        "the site to settle before the first fault",
    );

    let stop = Arc::new(AtomicBool::new(false));
    let history = Arc::new(Mutex::new(Vec::new()));
    let overlaps = Arc::new(Mutex::new(Vec::new()));
    let mut threads = Vec::new();
    for id in 0..3 {
        let (reach, stop, history) = (site.reach.clone(), stop.clone(), history.clone());
        threads.push(std::thread::spawn(move || {
            client(
                id,
                reach,
                seed.wrapping_add(id as u64 * 7919),
                stop,
                history,
            )
        }));
    }
    {
        let (namespaces, stop, overlaps) = (namespaces.clone(), stop.clone(), overlaps.clone());
        threads.push(std::thread::spawn(move || {
            sampler(namespaces, stop, overlaps)
        }));
    }

    {
        let (reach, stop, history) = (site.reach.clone(), stop.clone(), history.clone());
        threads.push(std::thread::spawn(move || hub_client(reach, stop, history)));
    }

    let mut rng = Rng(seed);
    let mut by_kind: BTreeMap<&str, usize> = BTreeMap::new();
    let mut converge = Vec::new();
    let (mut injected, mut together, mut round) = (0, 0, 0);
    while injected < faults {
        let first = FAULTS[rng.below(FAULTS.len())];
        let mut kinds = vec![first];
        // One round in four, a second fault joins the first.
        if first.pairs() && injected + 1 < faults && rng.below(4) == 0 {
            let second = FAULTS[rng.below(FAULTS.len())];
            if second.pairs() && !(first.touches_uplink() && second.touches_uplink()) {
                kinds.push(second);
            }
        }
        let mut span = rng.millis(1_000, 4_000);
        let mut busy = Vec::new();
        let mut active = Vec::new();
        for kind in &kinds {
            if let Some(fault) = site.begin(*kind, &mut rng, &mut busy) {
                *by_kind.entry(kind.name()).or_default() += 1;
                injected += 1;
                active.push(fault);
            }
        }
        if active.iter().any(|a| matches!(a, Active::Paused(_))) {
            // A frozen process, not a dead one.
            span = span.min(Duration::from_secs(2));
        }
        together += usize::from(active.len() > 1);
        let names: Vec<&str> = kinds.iter().map(|k| k.name()).collect();
        eprintln!("chaos: round {round}: {names:?} for {span:?}");
        std::thread::sleep(span);
        for fault in active.into_iter().rev() {
            site.end(fault);
        }
        let healed = Instant::now();
        settle(
            &site,
            &namespaces,
            &format!("the site to converge after round {round} ({names:?})"),
        );
        converge.push(healed.elapsed().as_secs_f64());
        round += 1;
    }

    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        thread.join().expect("a client or the sampler panicked");
    }
    // The last writes, the hub's included, have reached everyone.
    settle(&site, &namespaces, "the site to converge at the end");
    let history = history.lock().map(|h| h.clone()).unwrap_or_default();
    let leader = site.leader().expect("a leader at the end");
    let workloads = wait_for("the leader's workloads", HANG, || {
        site.reach.json(leader, &["get", "workloads"])
    });
    let verdict = check(&history, &workloads);
    // Every gateway ends with the same workloads as the leader.
    let names = |doc: &Value| -> Vec<(String, String)> {
        let mut all: Vec<(String, String)> = doc
            .as_array()
            .into_iter()
            .flatten()
            .map(|w| {
                (
                    w["name"].as_str().unwrap_or_default().to_string(),
                    w["spec"]["env"]["V"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                )
            })
            .collect();
        all.sort();
        all
    };
    let expected = names(&workloads);
    let mut diverged = Vec::new();
    for i in 0..GATEWAYS {
        let same = (0..100).any(|_| {
            let same = site
                .reach
                .json(i, &["get", "workloads"])
                .is_some_and(|doc| names(&doc) == expected);
            if !same {
                std::thread::sleep(Duration::from_millis(100));
            }
            same
        });
        if !same {
            diverged.push(format!("g{i}"));
        }
    }
    let overlaps = overlaps.lock().map(|o| o.clone()).unwrap_or_default();
    converge.sort_by(|a, b| a.total_cmp(b));
    let kinds: Vec<String> = by_kind.iter().map(|(k, n)| format!("{k}:{n}")).collect();
    let unknown = history
        .iter()
        .filter(|r| r.outcome == Outcome::Unknown)
        .count();
    println!(
        "chaos: gateways={GATEWAYS} faults={injected} rounds={round} together={together} by_kind={{{}}} ops={} acked={} indeterminate={unknown} lost={} duplicated={} overlaps={} diverged={} converge_s p50={:.2} p99={:.2} max={:.2} over_10s={} seed={seed} wall_min={:.1}",
        kinds.join(","),
        history.len(),
        verdict.acked,
        verdict.lost.len(),
        verdict.duplicated.len(),
        overlaps.len(),
        diverged.len(),
        percentile(&converge, 50.0),
        percentile(&converge, 99.0),
        converge.last().copied().unwrap_or(0.0),
        converge.iter().filter(|s| **s > 10.0).count(),
        started.elapsed().as_secs_f64() / 60.0,
    );
    assert!(verdict.acked > 0, "no write was acknowledged at all");
    assert!(verdict.lost.is_empty(), "lost: {:?}", verdict.lost);
    assert!(
        verdict.duplicated.is_empty(),
        "applied twice: {:?}",
        verdict.duplicated
    );
    assert!(
        overlaps.is_empty(),
        "a singleton ran twice: {:?}",
        &overlaps[..overlaps.len().min(5)]
    );
    assert!(
        diverged.is_empty(),
        "gateways differ from the leader: {diverged:?}"
    );
    for gateway in &mut site.cluster.gateways {
        gateway.kill();
    }
    drop(site.disks);
}
