//! `gantry-sim`: runs seeds of the deterministic simulation and prints one
//! summary line.
//!
//! ```text
//! gantry-sim --seeds 10000 [--from S]   # seeds S..S+N, each run twice over a sample
//! gantry-sim --seed S --trace           # one seed, its trace printed
//! ```

use std::process::ExitCode;
use std::time::Instant;

use gantry_sim::{run_seed, summary, Config, Mutation};

fn usage() -> ExitCode {
    eprintln!(
        "usage: gantry-sim [--seeds N] [--from S] [--seed S] [--trace] [--fault-ms MS] [--gateways N] [--rerun-every K] [--mutation none|fence-margin-zero|fence-zero|node-stops-late|skip-fsync|cloud-ack-before-commit]"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut seeds = 1u64;
    let mut from = 0u64;
    let mut config = Config::default();
    let mut rerun_every = 10u64;
    while let Some(arg) = args.next() {
        let mut value = || args.next().and_then(|v| v.parse::<u64>().ok());
        match arg.as_str() {
            "--seeds" => match value() {
                Some(v) => seeds = v,
                None => return usage(),
            },
            "--from" => match value() {
                Some(v) => from = v,
                None => return usage(),
            },
            "--seed" => match value() {
                Some(v) => {
                    from = v;
                    seeds = 1;
                }
                None => return usage(),
            },
            "--fault-ms" => match value() {
                Some(v) => config.fault_ms = v,
                None => return usage(),
            },
            "--gateways" => match value() {
                Some(v) => config.gateways = Some(v),
                None => return usage(),
            },
            "--rerun-every" => match value() {
                Some(v) => rerun_every = v.max(1),
                None => return usage(),
            },
            "--trace" => config.trace = true,
            "--mutation" => {
                config.mutation = match args.next().as_deref().and_then(Mutation::parse) {
                    Some(m) => m,
                    None => return usage(),
                }
            }
            _ => return usage(),
        }
    }
    let started = Instant::now();
    let mut reports = Vec::new();
    let mut nondeterministic = Vec::new();
    for seed in from..from + seeds {
        let report = run_seed(seed, &config);
        for v in report.violations() {
            println!("seed {seed}: {v}");
        }
        if !report.violations().is_empty() {
            println!(
                "replay: cargo run -p gantry-sim -- --seed {seed} --trace{}",
                match config.mutation {
                    Mutation::None => String::new(),
                    m => format!(" --mutation {}", m.name()),
                }
            );
        }
        if seeds == 1 || (seed - from).is_multiple_of(rerun_every) {
            let quiet = Config {
                trace: false,
                ..config.clone()
            };
            let again = run_seed(seed, &quiet);
            if again.trace_hash != report.trace_hash {
                println!(
                    "seed {seed}: nondeterministic: trace {} then {}",
                    report.trace_hash, again.trace_hash
                );
                nondeterministic.push(seed);
            }
        }
        if seeds == 1 {
            println!(
                "seed {seed}: gateways={} faults={} ops={} acked={} converge={:?} events={} trace={}",
                report.gateways,
                report.faults,
                report.ops,
                report.acked,
                report.converge,
                report.events,
                report.trace_hash
            );
        }
        reports.push(report);
    }
    let line = summary(&reports, nondeterministic.len());
    println!("{line}");
    eprintln!("wall_s={:.1}", started.elapsed().as_secs_f64());
    let failed = reports.iter().any(|r| !r.violations().is_empty()) || !nondeterministic.is_empty();
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
