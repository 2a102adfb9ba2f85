//! Chaos on real gateways (issue #11 item 1): five gateways, each in a
//! network namespace of its own on one bridge (`support::netns`), each
//! with its own containerd and its data dir on a tmpfs of its own, every
//! daemon flag at its default. Clients write through random gateways
//! while a nemesis injects one fault after another: kill -9 of the leader
//! or a follower (restarted 1-4 s later), SIGSTOP of a gateway (at most
//! 2 s), isolation, a gateway that hears nothing but still sends, a 2|3
//! split, 30 % packet loss, a 256 kbit/s link, a full data dir, and kill
//! and restart of a gateway's containerd. Two singletons run `sleep`, which
//! ignores SIGTERM.
//!
//! What is checked, from the outside:
//! - every acknowledged write is there at the end (an acknowledged apply
//!   with one of the values written since, an acknowledged delete
//!   absent): `lost`;
//! - no write applied twice: a workload's generation never exceeds the
//!   applies sent for it (acknowledged or not): `duplicated`;
//! - at most one running copy of each singleton at every 100 ms sample of
//!   the kernel's process list (cgroups, not gantry's word): `overlaps`;
//! - after each fault is healed the site converges (every gateway Ready
//!   under one leader, each singleton Running once), timed: `converge_s`;
//!   and at the end every gateway holds the same workloads: `diverged`.
//!
//! `CHAOS_FAULTS` (60) and `CHAOS_SEED` set the run; `scripts/chaos.sh
//! --faults 1000` is the soak. The run prints one line:
//! `chaos: gateways=5 faults=60 by_kind={..} acked=.. lost=0 ...`.

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
}

const FAULTS: [Fault; 10] = [
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
        }
    }
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

/// How a client thread reaches gateway `i`: from inside its namespace,
/// with the harness's admin token.
#[derive(Clone)]
struct Reach {
    namespaces: Vec<String>,
    token_file: PathBuf,
    scratch: PathBuf,
}

impl Reach {
    /// Runs `gantry ARGS` against gateway `i`, killed after 30 s.
    fn run(&self, i: usize, args: &[&str], stdin: Option<&str>) -> (bool, String) {
        let mut command = gantry_in(Some(&self.namespaces[i]));
        command
            .arg("--server")
            .arg(format!("127.0.0.1:{}", netns::PORT))
            .args(args)
            .env("GANTRY_TOKEN_FILE", &self.token_file)
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
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
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
            None => (false, "no answer within 30 s".into()),
        }
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

static NEXT_FILE: AtomicUsize = AtomicUsize::new(0);

fn record_of(name: &str, value: u64) -> String {
    format!(
        "name: {name}\nimage: {IMAGE}\nnode_selector: {{nowhere: here}}\nenv: {{V: '{value}'}}\n"
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
        let op = if roll < 2 && !live.is_empty() {
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
        let mut cluster = TestCluster::with_network(GATEWAYS);
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
        let reach = Reach {
            namespaces: (0..GATEWAYS).map(|i| network.ns(i)).collect(),
            token_file: cluster.token_file.clone(),
            scratch: cluster.tmp.path().to_path_buf(),
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

    /// Injects `fault` for about `span`, then heals it.
    fn inject(&mut self, fault: Fault, rng: &mut Rng) {
        let span = rng.millis(1_000, 4_000);
        match fault {
            Fault::KillLeader | Fault::KillFollower => {
                let leader = self.leader().unwrap_or(0);
                let victim = if fault == Fault::KillLeader {
                    leader
                } else {
                    (leader + 1 + rng.below(GATEWAYS - 1)) % GATEWAYS
                };
                eprintln!("chaos: {} g{victim} for {span:?}", fault.name());
                self.cluster.gateways[victim].kill();
                std::thread::sleep(span);
                self.cluster.gateways[victim].restart();
            }
            Fault::Pause => {
                let victim = rng.below(GATEWAYS);
                let pid = self.cluster.gateways[victim]
                    .child
                    .as_ref()
                    .map(|c| c.id())
                    .expect("a running gateway");
                eprintln!(
                    "chaos: pause g{victim} for {:?}",
                    span.min(Duration::from_secs(2))
                );
                signal(pid, "-STOP");
                std::thread::sleep(span.min(Duration::from_secs(2)));
                signal(pid, "-CONT");
            }
            Fault::Isolate | Fault::Deafen | Fault::Lossy | Fault::Slow => {
                let victim = rng.below(GATEWAYS);
                let network = self.network();
                eprintln!("chaos: {} g{victim} for {span:?}", fault.name());
                match fault {
                    Fault::Isolate => network.isolate(victim),
                    Fault::Deafen => network.deafen(victim),
                    Fault::Lossy => network.lossy(victim, 0.3),
                    _ => network.slow(victim, "256kbit"),
                }
                std::thread::sleep(span);
                network.heal(victim);
            }
            Fault::Split => {
                let first = rng.below(GATEWAYS);
                let second = (first + 1 + rng.below(GATEWAYS - 1)) % GATEWAYS;
                let network = self.network();
                eprintln!("chaos: split g{first} g{second} from the rest for {span:?}");
                for minority in [first, second] {
                    for other in (0..GATEWAYS).filter(|o| *o != first && *o != second) {
                        network.cut(minority, other);
                    }
                }
                std::thread::sleep(span);
                for i in 0..GATEWAYS {
                    network.heal(i);
                }
            }
            Fault::DiskFull => {
                let victim = rng.below(GATEWAYS);
                let dir = self.cluster.gateways[victim].dir.clone();
                let ballast = dir.join("ballast");
                let size = free_bytes(&dir).saturating_sub(16 << 20);
                eprintln!("chaos: disk_full g{victim} for {span:?}");
                let _ = Command::new("fallocate")
                    .args(["-l", &size.to_string()])
                    .arg(&ballast)
                    .status();
                std::thread::sleep(span);
                let _ = std::fs::remove_file(&ballast);
            }
            Fault::ContainerdRestart => {
                // g0 uses the cluster's first containerd, the others their own.
                let victim = rng.below(GATEWAYS);
                let cluster = &mut self.cluster;
                let containerd = if victim == 0 {
                    &mut cluster.containerd
                } else {
                    let name = format!("g{victim}");
                    &mut cluster
                        .own_containerd
                        .iter_mut()
                        .find(|(n, _)| *n == name)
                        .expect("its own containerd")
                        .1
                };
                eprintln!("chaos: containerd_restart g{victim} after {span:?}");
                containerd.kill();
                std::thread::sleep(span);
                cluster
                    .tokio
                    .block_on(containerd.restart())
                    .expect("containerd restarts");
            }
        }
    }
}

/// Waits until the site converged; on a hang, says what was still amiss.
fn settle(site: &Site, namespaces: &[(String, String)], what: &str) {
    let mut last = String::new();
    let start = Instant::now();
    while start.elapsed() < HANG {
        match site.converged(namespaces) {
            Ok(()) => return,
            Err(reason) => last = reason,
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out after {HANG:?} waiting for {what}: {last}");
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

    let mut rng = Rng(seed);
    let mut by_kind: BTreeMap<&str, usize> = BTreeMap::new();
    let mut converge = Vec::new();
    for n in 0..faults {
        let fault = FAULTS[rng.below(FAULTS.len())];
        *by_kind.entry(fault.name()).or_default() += 1;
        site.inject(fault, &mut rng);
        let healed = Instant::now();
        settle(
            &site,
            &namespaces,
            &format!("the site to converge after fault {n} ({})", fault.name()),
        );
        converge.push(healed.elapsed().as_secs_f64());
    }

    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        thread.join().expect("a client or the sampler panicked");
    }
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
        "chaos: gateways={GATEWAYS} faults={faults} by_kind={{{}}} ops={} acked={} indeterminate={unknown} lost={} duplicated={} overlaps={} diverged={} converge_s p50={:.2} p99={:.2} max={:.2} over_10s={} seed={seed} wall_min={:.1}",
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
