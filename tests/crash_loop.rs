//! Crash loop on real processes: a 3-gateway cluster takes a stream of
//! small writes while a nemesis kills one gateway with SIGKILL (the
//! leader about half the time, found from `status`) every 0.5-3 s and
//! restarts it after a short pause, 200 times. Afterwards every write that
//! was acknowledged (the CLI exited 0) must be on every gateway.
//!
//! What this does not test: the disk. SIGKILL ends the process but not the
//! kernel, and the page cache survives it, so a missing fsync would pass
//! here. This checks the Raft and RocksDB logic across abrupt process
//! deaths at any point (mid-append, mid-apply, mid-snapshot, mid-startup).
//! Lost fsyncs are covered by the crash model of
//! `gantry::cluster::mem_store` (`MemDisk::crash`), which drops every
//! write not yet fsynced.
//!
//! The seed of the random choices is printed; set `CRASH_LOOP_SEED` to
//! replay the same schedule (process timing still varies).

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use support::{gantry, wait_for, TestCluster, DEADLINE};

const KILLS: usize = 200;
/// Kill to kill: 0.5-3 s, log-uniform, so short intervals (kills while
/// the previous victim is still catching up) are as likely as long ones.
const MIN_INTERVAL: Duration = Duration::from_millis(500);
const MAX_INTERVAL: Duration = Duration::from_millis(3000);
/// A victim is down for 50-400 ms before it is restarted.
const MIN_DOWN_MS: u64 = 50;
const MAX_DOWN_MS: u64 = 400;
/// A write that has not answered by then counts as unknown.
const WRITE_TIMEOUT: Duration = Duration::from_secs(15);

fn seed() -> u64 {
    match std::env::var("CRASH_LOOP_SEED") {
        Ok(text) => text.parse().expect("CRASH_LOOP_SEED is a number"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
    }
}

fn log_uniform(rng: &mut StdRng, min: Duration, max: Duration) -> Duration {
    let (lo, hi) = (min.as_secs_f64().ln(), max.as_secs_f64().ln());
    Duration::from_secs_f64(rng.random_range(lo..hi).exp())
}

enum Outcome {
    Acked,
    Unknown,
}

/// `gantry --server ADDR apply -f FILE` with the harness's token; exit 0
/// within `WRITE_TIMEOUT` is an acknowledgement, anything else unknown
/// (a failed write may still have been committed).
fn apply_once(addr: &str, token_file: &Path, manifest: &Path) -> Outcome {
    let child = gantry()
        .arg("--server")
        .arg(addr)
        .args(["apply", "-f"])
        .arg(manifest)
        .env("GANTRY_TOKEN_FILE", token_file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut child) = child else {
        return Outcome::Unknown;
    };
    let deadline = Instant::now() + WRITE_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Outcome::Acked,
            Ok(Some(_)) | Err(_) => return Outcome::Unknown,
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Outcome::Unknown;
            }
            Ok(None) => thread::sleep(Duration::from_millis(10)),
        }
    }
}

struct Writes {
    acked: Vec<String>,
    unknown: Vec<String>,
}

/// Applies `cl-NNNNN` workloads one after the other through a random
/// gateway the nemesis has not taken down, until `stop`.
fn writer(
    addrs: Vec<String>,
    live: Arc<Vec<AtomicBool>>,
    stop: Arc<AtomicBool>,
    token_file: PathBuf,
    dir: PathBuf,
    seed: u64,
) -> Writes {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5772_6974_6572);
    let mut writes = Writes {
        acked: Vec::new(),
        unknown: Vec::new(),
    };
    let manifest = dir.join("crash-loop.yaml");
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        let up: Vec<usize> = (0..addrs.len())
            .filter(|i| live[*i].load(Ordering::SeqCst))
            .collect();
        if up.is_empty() {
            thread::sleep(Duration::from_millis(20));
            continue;
        }
        let via = up[rng.random_range(0..up.len())];
        let name = format!("cl-{n:05}");
        n += 1;
        let doc = format!("name: {name}\nimage: 127.0.0.1:5000/gantry/img:{n}\nreplicas: 0\n");
        std::fs::write(&manifest, doc).expect("write manifest");
        match apply_once(&addrs[via], &token_file, &manifest) {
            Outcome::Acked => writes.acked.push(name),
            Outcome::Unknown => writes.unknown.push(name),
        }
    }
    writes
}

fn workload_names(cluster: &TestCluster, addr: &str) -> Option<BTreeSet<String>> {
    let list = cluster.try_json(addr, &["get", "workloads"])?;
    Some(
        list.as_array()?
            .iter()
            .filter_map(|w| w["name"].as_str().map(String::from))
            .collect(),
    )
}

#[test]
fn acknowledged_writes_survive_200_kill_9s_of_leaders_and_followers() {
    let started = Instant::now();
    let seed = seed();
    println!("crash-loop: seed={seed} (CRASH_LOOP_SEED replays the schedule)");
    let mut rng = StdRng::seed_from_u64(seed);

    let mut cluster = TestCluster::new();
    cluster.init("gw-a", &[]);
    cluster.join("gw-b", &[]);
    cluster.join("gw-c", &[]);
    let names: Vec<String> = cluster.gateways.iter().map(|g| g.name.clone()).collect();
    let addrs: Vec<String> = (0..names.len()).map(|i| cluster.addr(i)).collect();
    wait_for("3 voters", DEADLINE, || {
        let status = cluster.try_json(&addrs[0], &["status"])?;
        let nodes = status["nodes"].as_array()?;
        let voters = nodes.iter().filter(|n| n["role"] == "voter").count();
        (voters == 3 && status["leader"].is_string()).then_some(())
    });

    let live: Arc<Vec<AtomicBool>> =
        Arc::new(names.iter().map(|_| AtomicBool::new(true)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (addrs, live, stop) = (addrs.clone(), live.clone(), stop.clone());
        let token_file = cluster.token_file.clone();
        let dir = cluster.tmp.path().to_path_buf();
        thread::spawn(move || writer(addrs, live, stop, token_file, dir, seed))
    };

    let chaos_started = Instant::now();
    let mut leader_kills = 0;
    let mut next_kill = Instant::now() + log_uniform(&mut rng, MIN_INTERVAL, MAX_INTERVAL);
    for _ in 0..KILLS {
        thread::sleep(next_kill.saturating_duration_since(Instant::now()));
        next_kill = Instant::now() + log_uniform(&mut rng, MIN_INTERVAL, MAX_INTERVAL);
        let leader = if rng.random_bool(0.5) {
            let via = &addrs[rng.random_range(0..addrs.len())];
            cluster
                .try_json(via, &["status"])
                .and_then(|s| s["leader"].as_str().map(String::from))
                .and_then(|name| names.iter().position(|n| *n == name))
        } else {
            None
        };
        let victim = leader.unwrap_or_else(|| rng.random_range(0..names.len()));
        if leader.is_some() {
            leader_kills += 1;
        }
        live[victim].store(false, Ordering::SeqCst);
        cluster.gateways[victim].kill();
        thread::sleep(Duration::from_millis(
            rng.random_range(MIN_DOWN_MS..=MAX_DOWN_MS),
        ));
        cluster.gateways[victim].restart();
        live[victim].store(true, Ordering::SeqCst);
    }
    let chaos = chaos_started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let writes = writer.join().expect("the writer thread");

    // Settle: every gateway answers and knows a leader, then holds every
    // acknowledged write (or the deadline says which it lacks).
    cluster.status_with_leader();
    let mut lost = BTreeSet::new();
    for (index, addr) in addrs.iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(120);
        let missing = loop {
            let missing: Vec<&String> = match workload_names(&cluster, addr) {
                Some(present) => writes
                    .acked
                    .iter()
                    .filter(|a| !present.contains(*a))
                    .collect(),
                None => writes.acked.iter().collect(),
            };
            if missing.is_empty() || Instant::now() > deadline {
                break missing;
            }
            thread::sleep(Duration::from_millis(250));
        };
        lost.extend(
            missing
                .into_iter()
                .map(|name| format!("{name} on {}", names[index])),
        );
    }
    println!(
        "crash-loop: kills={KILLS} acked={} unknown={} lost={}",
        writes.acked.len(),
        writes.unknown.len(),
        lost.len()
    );
    println!(
        "crash-loop: leader_kills={leader_kills} chaos={:.0}s total={:.0}s",
        chaos.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        lost.is_empty(),
        "acknowledged writes missing after {KILLS} kills (seed {seed}): {lost:?}"
    );
    assert!(
        writes.acked.len() >= KILLS,
        "the writer got too few acknowledgements to mean anything: {}",
        writes.acked.len()
    );
}
