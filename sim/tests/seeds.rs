//! The simulation in CI: a fixed range of seeds must keep every invariant
//! and replay identically, and deliberately broken builds (mutations) must
//! be caught within the same budget, or the silence of the first means
//! nothing.

use gantry_sim::{run_seed, summary, Config, Mutation, RunReport};

/// Simulated fault phase per seed in CI (the soak runs the default 60 s).
const CI_FAULT_MS: u64 = 30_000;

/// Seeds that once found a bug (see the commit that fixed each); they
/// always run.
const REGRESSIONS: &[u64] = &[
    // Cluster::on_leader spun on a gateway that was shutting down: the
    // paused clock stopped and the run never ended.
    26,
    // A singleton deleted and applied again was placed while the old copy
    // ran out its stop grace (Meta::retired).
    25, 46, 106, 117, 165, 181, 190,
    // A drained or preempted singleton moved while its start was under
    // way on the old gateway (placed Pending counts as maybe running).
    59, 123, 127, 180,
    // A plan that placed a stopped singleton on its own gateway again was
    // committed over and over (a write loop).
    31,
    // A gateway that came back as the fence ended started its stale copy
    // (heartbeats from a silent gateway are not accepted).
    139,
    // A 30 s cap on the runtime retry kept a gateway NotReady 14 s after
    // containerd came back.
    45,
];

/// Seeds that found a bug only with the soak's 60 s of faults; they run
/// with those.
const SOAK_REGRESSIONS: &[u64] = &[
    // A drain cancelled between a plan and its commit: the stale plan
    // moved the singleton on its copy's old Exited report (two copies).
    1045,
    // A start queued behind a long remove ran after the instance had to
    // stop, and the fence confirmed the stop of an older generation it
    // killed while that start was still to come (two copies).
    110, 506, 725, 880, 5020, 5089, 5419, 5809,
    // An isolated leader counted its isolation from when it noticed the
    // lost quorum, not from the last ack, and the reporter, blocked in a
    // write that could not commit, left the fence without the pid of a
    // copy started meanwhile: it outlived its limit by 8 s.
    64,
    // An uncordon reset a confirmed stop while a plan that moves the copy
    // off its NotReady gateway was on its way: the gateway started it
    // again as the plan placed it elsewhere.
    5314, 1377, 6713,
    // The fence confirmed a stop while a start already under way on the
    // slot completed once containerd was back (7150); a copy stopped to
    // move, with no home left on a full site, counted as not converged
    // (1985).
    7150, 1985,
    // A daemon restarted on an older replica started a singleton whose
    // stop its previous process had confirmed (held until caught up).
    312,
    // The control plane counted as unsettled whenever a follower was an
    // entry behind (instance reports after the heal), and was measured
    // only once the clients' last operations and the uncordons were done.
    1028, 1070, 5065, 5308,
    // A daemon died within 100 ms of starting a singleton, before the
    // fence had handed the guard a lease with the new pid: the copy ran on
    // unfenced beside the one started elsewhere (now leased by container id
    // before it starts).
    6099, 6582, 9892,
    // The graceful stop dropped a singleton from the desired set while the
    // reporter, waiting on a write the cut-off gateway could not commit,
    // had not handed its pid over: the lease named it no more, and the
    // daemon died before its SIGKILL (containers the agent was told of
    // now stay leased by id while placed here).
    5001, 149, 401, 5625, 5942,
    // A copy restarted since the fence learnt its pid was not in the guard's
    // lease once that pid was gone (entries now also kill by container id).
    7597,
    // A report held by the reporter through writes that could not commit
    // was stamped with the replica's stop mark on its way out: made before a
    // drain was cancelled and begun again, or about a deleted singleton's
    // copy, it confirmed a later stop while the agent ran the copy (stop
    // marks now come from the agent, stamped when it makes the report).
    1166, 3015, 6368, 7572, 8568,
    // Dropping held reports about an earlier instance of the same name
    // left a re-created workload Pending on a container that ran (the
    // report was right: same container id, running; no longer dropped).
    522, 533, 5336, 5480,
    // A leader purged logs while its replication read them for a lagging
    // follower and sent the entries found past the hole as if they followed
    // the follower's last one: its Raft core panicked (log reads now stop
    // at a hole).
    862,
    // A leader cut off from its quorum proposed plans from the same applied
    // state, each placing onto one gateway with room for one of them (plans
    // are now checked against capacity at commit).
    5570,
];

/// Open findings: seeds of the CI range whose violation is known and not
/// fixed yet, each with the start of the line it prints (README,
/// "Simulation"). Any other violation fails the run, and so does one of
/// these that stops showing, so the list stays true: when a fix lands, its
/// seeds move to `REGRESSIONS`. Empty: every finding so far is fixed.
const KNOWN_OPEN: &[(u64, &str)] = &[];

fn known_open(seed: u64, violation: &str) -> bool {
    KNOWN_OPEN
        .iter()
        .any(|(s, prefix)| *s == seed && violation.starts_with(prefix))
}

fn config(mutation: Mutation) -> Config {
    Config {
        fault_ms: CI_FAULT_MS,
        mutation,
        ..Config::default()
    }
}

/// What one worker found.
#[derive(Default)]
struct Found {
    reports: Vec<RunReport>,
    nondeterministic: usize,
    failures: Vec<String>,
    open_seen: Vec<u64>,
}

/// Runs its share of `seeds` (every `workers`-th, from `worker`), rerunning
/// every `rerun_every`-th seed to compare trace hashes.
fn work(
    config: &Config,
    seeds: &[u64],
    worker: usize,
    workers: usize,
    rerun_every: usize,
) -> Found {
    let config = config.clone();
    let mut found = Found::default();
    for (n, seed) in seeds.iter().copied().enumerate() {
        if n % workers != worker {
            continue;
        }
        let report = run_seed(seed, &config);
        for v in report.violations() {
            if known_open(seed, &v) {
                println!("seed {seed}: open finding: {v}");
                found.open_seen.push(seed);
            } else {
                found.failures.push(format!("seed {seed}: {v}"));
            }
        }
        if n.is_multiple_of(rerun_every) {
            let again = run_seed(seed, &config);
            if again.trace_hash != report.trace_hash {
                found.nondeterministic += 1;
                found
                    .failures
                    .push(format!("seed {seed}: nondeterministic"));
            }
        }
        found.reports.push(report);
    }
    found
}

/// Runs `seeds` on two threads (each seed alone on its own runtime, so
/// the threads change nothing in any run) and prints one summary line.
fn run(name: &str, config: &Config, seeds: Vec<u64>, rerun_every: usize) {
    let started = std::time::Instant::now();
    const WORKERS: usize = 2;
    let found: Vec<Found> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..WORKERS)
            .map(|w| {
                let seeds = &seeds;
                scope.spawn(move || work(config, seeds, w, WORKERS, rerun_every))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a worker panicked"))
            .collect()
    });
    let mut all = Found::default();
    for f in found {
        all.reports.extend(f.reports);
        all.nondeterministic += f.nondeterministic;
        all.failures.extend(f.failures);
        all.open_seen.extend(f.open_seen);
    }
    all.reports.sort_by_key(|r| r.seed);
    for (seed, prefix) in KNOWN_OPEN {
        if seeds.contains(seed) && !all.open_seen.contains(seed) {
            all.failures.push(format!(
                "seed {seed}: the open finding '{prefix}' no longer shows: move it to REGRESSIONS"
            ));
        }
    }
    println!("{}", summary(&all.reports, all.nondeterministic));
    println!(
        "{name}: open findings (known, not fixed): {} seeds; wall_s={:.1}",
        all.open_seen.len(),
        started.elapsed().as_secs_f64()
    );
    for f in &all.failures {
        println!("{f}");
        if let Some(seed) = f.strip_prefix("seed ").and_then(|s| s.split(':').next()) {
            println!(
                "  replay: cargo run -p gantry-sim -- --seed {seed} --fault-ms {} --trace",
                config.fault_ms
            );
        }
    }
    assert!(all.failures.is_empty(), "{} violations", all.failures.len());
}

#[test]
fn seeds_0_to_199_show_no_new_violation() {
    let seeds: Vec<u64> = (0..200)
        .chain(REGRESSIONS.iter().copied().filter(|s| *s >= 200))
        .collect();
    run("seeds 0..200", &config(Mutation::None), seeds, 10);
}

#[test]
fn soak_seeds_that_once_failed_hold() {
    let soak = Config::default();
    run(
        "soak regressions",
        &soak,
        SOAK_REGRESSIONS.to_vec(),
        usize::MAX,
    );
}

/// Seeds are tried in order until one finds a violation of the kind the
/// mutation should cause, on a seed without an open finding.
fn caught(mutation: Mutation, budget: u64, wanted: fn(&RunReport) -> bool) {
    let config = config(mutation);
    for seed in 0..budget {
        if KNOWN_OPEN.iter().any(|(s, _)| *s == seed) {
            continue;
        }
        let report = run_seed(seed, &config);
        if wanted(&report) {
            println!(
                "mutation: {} caught by seed {seed} ({})",
                mutation.name(),
                report.violations().first().cloned().unwrap_or_default()
            );
            return;
        }
    }
    panic!("mutation {} not caught in {budget} seeds", mutation.name());
}

#[test]
fn a_leader_without_a_fence_is_caught() {
    caught(Mutation::FenceZero, 200, |r| !r.overlaps.is_empty());
}

/// The margin is what covers a kill that takes effect late (the fake
/// runtime's slow kills, up to 3 s).
#[test]
fn a_fence_without_its_margin_is_caught() {
    caught(Mutation::FenceMarginZero, 200, |r| !r.overlaps.is_empty());
}

#[test]
fn a_node_that_stops_late_is_caught() {
    caught(Mutation::NodeStopsLate, 200, |r| !r.overlaps.is_empty());
}

#[test]
fn an_fsync_skipped_before_acknowledging_is_caught() {
    // Lost entries show as lost or divergent writes, or openraft finds its
    // storage inconsistent after a power cut and halts (a panic in its
    // invariant checks).
    caught(Mutation::SkipFsync, 200, |r| {
        !r.lost.is_empty()
            || !r.divergent.is_empty()
            || !r.duplicated.is_empty()
            || r.errors
                .iter()
                .any(|e| e.contains("Raft core stopped") || e.contains("openraft"))
    });
}

#[test]
fn a_cloud_ack_before_the_commit_is_caught() {
    caught(Mutation::CloudAckBeforeCommit, 200, |r| !r.lost.is_empty());
}
