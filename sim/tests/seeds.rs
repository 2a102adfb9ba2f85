//! The simulation in CI: a fixed range of seeds must keep every invariant
//! and replay identically, and deliberately broken builds (mutations) must
//! be caught within the same budget, or the silence of the first means
//! nothing.

use gantry_sim::{run_seed, summary, Config, Mutation, RunReport};

/// Simulated fault phase per seed in CI (the soak runs the default 60 s).
const CI_FAULT_MS: u64 = 30_000;

/// Seeds that once found a bug (see the commit that fixed each); they
/// always run.
const REGRESSIONS: &[u64] = &[];

fn config(mutation: Mutation) -> Config {
    Config {
        fault_ms: CI_FAULT_MS,
        mutation,
        ..Config::default()
    }
}

/// Runs `seeds`, reruns every `rerun_every`-th and compares trace hashes.
fn run(name: &str, seeds: impl IntoIterator<Item = u64>, rerun_every: usize) {
    let config = config(Mutation::None);
    let started = std::time::Instant::now();
    let mut reports: Vec<RunReport> = Vec::new();
    let mut nondeterministic = 0;
    let mut failures = Vec::new();
    for (n, seed) in seeds.into_iter().enumerate() {
        let report = run_seed(seed, &config);
        for v in report.violations() {
            failures.push(format!("seed {seed}: {v}"));
        }
        if n.is_multiple_of(rerun_every) {
            let again = run_seed(seed, &config);
            if again.trace_hash != report.trace_hash {
                nondeterministic += 1;
                failures.push(format!("seed {seed}: nondeterministic"));
            }
        }
        reports.push(report);
    }
    println!("{}", summary(&reports, nondeterministic));
    println!("{name}: wall_s={:.1}", started.elapsed().as_secs_f64());
    for f in &failures {
        println!("{f}");
        if let Some(seed) = f.strip_prefix("seed ").and_then(|s| s.split(':').next()) {
            println!("  replay: cargo run -p gantry-sim -- --seed {seed} --fault-ms {CI_FAULT_MS} --trace");
        }
    }
    assert!(failures.is_empty(), "{} violations", failures.len());
}

#[test]
fn seeds_0_to_99_keep_every_invariant() {
    run(
        "seeds 0..100",
        REGRESSIONS.iter().copied().chain(0..100),
        10,
    );
}

#[test]
fn seeds_100_to_199_keep_every_invariant() {
    run("seeds 100..200", 100..200, 10);
}

/// Seeds are tried in order until one finds a violation.
fn caught(mutation: Mutation, budget: u64, wanted: fn(&RunReport) -> bool) {
    let config = config(mutation);
    for seed in 0..budget {
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
fn a_fence_without_margin_is_caught() {
    caught(Mutation::FenceMarginZero, 200, |r| !r.overlaps.is_empty());
}

#[test]
fn a_node_that_stops_late_is_caught() {
    caught(Mutation::NodeStopsLate, 200, |r| !r.overlaps.is_empty());
}

#[test]
fn an_fsync_skipped_before_acknowledging_is_caught() {
    caught(Mutation::SkipFsync, 200, |r| {
        !r.lost.is_empty() || !r.divergent.is_empty() || !r.duplicated.is_empty()
    });
}

#[test]
fn a_cloud_ack_before_the_commit_is_caught() {
    caught(Mutation::CloudAckBeforeCommit, 200, |r| !r.lost.is_empty());
}
