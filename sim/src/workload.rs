//! Clients writing through random gateways, as an operator (or a script)
//! would through any gateway's Admin API: applies of uniquely valued
//! workloads (their replica counts change with them), deletes, a few
//! singleton workloads, drains and uncordons. Each operation is recorded
//! with its invocation and completion times and its outcome: ok, fail (a
//! definite refusal) or unknown (an error after which it may still apply).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use gantry::cluster::{Cluster, ClusterError, NodeId};
use gantry::state::spec::parse_manifest;
use gantry::state::{Command, Response, Source};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::clock::sim_ms;
use crate::trace::Trace;

/// Plain workloads: w0..w{PLAIN-1}.
pub const PLAIN: u32 = 5;
/// Singleton workloads: s0 stops 5 s into an isolation, s1 after the
/// default 30 s.
pub const SINGLETONS: [(&str, Option<&str>); 2] = [("s0", Some("5s")), ("s1", None)];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Fail,
    Unknown,
}

/// What an operation wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// A workload named `key` with the unique `value` in its env.
    Apply {
        key: String,
        value: String,
    },
    Delete {
        key: String,
    },
    Drain {
        node: NodeId,
    },
    Uncordon {
        node: NodeId,
    },
}

impl Write {
    pub fn key(&self) -> Option<&str> {
        match self {
            Write::Apply { key, .. } | Write::Delete { key } => Some(key),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Op {
    pub client: u32,
    pub write: Write,
    pub via: NodeId,
    pub invoke_ms: u64,
    /// None while in flight.
    pub complete_ms: Option<u64>,
    pub outcome: Option<Outcome>,
    pub detail: String,
}

/// Every client operation of a run.
#[derive(Clone, Default)]
pub struct History {
    ops: Arc<Mutex<Vec<Op>>>,
}

impl History {
    fn invoke(&self, op: Op) -> usize {
        let mut ops = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        ops.push(op);
        ops.len() - 1
    }

    fn complete(&self, index: usize, outcome: Outcome, detail: String) {
        let mut ops = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(op) = ops.get_mut(index) {
            op.complete_ms = Some(sim_ms());
            op.outcome = Some(outcome);
            op.detail = detail;
        }
    }

    pub fn ops(&self) -> Vec<Op> {
        self.ops.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The manifest of an apply.
pub fn manifest(key: &str, value: &str, replicas: u32) -> String {
    if let Some((_, stop_after)) = SINGLETONS.iter().find(|(name, _)| *name == key) {
        let disconnect = stop_after
            .map(|d| format!("on_disconnect: {{stop_after: {d}}}\n"))
            .unwrap_or_default();
        return format!(
            "name: {key}\nimage: sim/cam:1\nsingleton: true\n{disconnect}resources: {{cpu: 200m, memory: 32Mi}}\nenv: {{SEQ: \"{value}\"}}\n"
        );
    }
    // Resources depend on the name only: an update never changes what a
    // placement costs, so capacity is judged on one figure per workload.
    let cpu = 150 + 100 * key.trim_start_matches('w').parse::<u64>().unwrap_or(0);
    format!(
        "name: {key}\nimage: sim/app:1\nreplicas: {replicas}\nresources: {{cpu: {cpu}m, memory: 64Mi}}\nenv: {{SEQ: \"{value}\"}}\n"
    )
}

fn command(write: &Write, replicas: u32) -> Result<Command, String> {
    Ok(match write {
        Write::Apply { key, value } => Command::ApplyWorkloads {
            workloads: parse_manifest(&manifest(key, value, replicas))
                .map_err(|e| e.to_string())?,
            source: Source::Local,
        },
        Write::Delete { key } => Command::DeleteWorkload {
            name: key.clone(),
            source: Source::Local,
        },
        Write::Drain { node } => Command::DrainNode { node: *node },
        Write::Uncordon { node } => Command::SetCordon {
            node: *node,
            cordoned: false,
        },
    })
}

/// Runs one write through `cluster` and records it.
pub async fn perform(
    history: &History,
    trace: &Trace,
    client: u32,
    via: NodeId,
    cluster: &Cluster,
    write: Write,
    replicas: u32,
) {
    let index = history.invoke(Op {
        client,
        write: write.clone(),
        via,
        invoke_ms: sim_ms(),
        complete_ms: None,
        outcome: None,
        detail: String::new(),
    });
    let (outcome, detail) = match command(&write, replicas) {
        Err(e) => (Outcome::Fail, e),
        Ok(command) => match cluster.write(command).await {
            Ok(Response::Rejected { reason }) => (Outcome::Fail, reason),
            Ok(_) => (Outcome::Ok, String::new()),
            Err(ClusterError::Refused(reason)) => (Outcome::Unknown, reason),
            Err(e) => (Outcome::Unknown, e.to_string()),
        },
    };
    trace.event(format!(
        "client{client} via gw{via} {write:?} -> {outcome:?} {detail}"
    ));
    history.complete(index, outcome, detail);
}

/// Picks the clients' next write.
pub struct Generator {
    rng: StdRng,
    client: u32,
    seq: u64,
}

impl Generator {
    pub fn new(client: u32, seed: u64) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
            client,
            seq: 0,
        }
    }

    pub fn pause(&mut self) -> Duration {
        Duration::from_millis(self.rng.random_range(100..=700))
    }

    pub fn pick<T: Copy>(&mut self, from: &[T]) -> Option<T> {
        if from.is_empty() {
            return None;
        }
        Some(from[self.rng.random_range(0..from.len())])
    }

    /// The next write and the replica count it asks for.
    pub fn next(&mut self, nodes: &[NodeId]) -> (Write, u32) {
        self.seq += 1;
        let value = format!("c{}-{}", self.client, self.seq);
        let roll = self.rng.random_range(0..100);
        let replicas = self.rng.random_range(1..=3);
        let node = self.pick(nodes).unwrap_or(1);
        let write = match roll {
            0..=54 => Write::Apply {
                key: format!("w{}", self.rng.random_range(0..PLAIN)),
                value,
            },
            55..=64 => Write::Delete {
                key: format!("w{}", self.rng.random_range(0..PLAIN)),
            },
            65..=86 => Write::Apply {
                key: SINGLETONS[self.rng.random_range(0..SINGLETONS.len())]
                    .0
                    .to_string(),
                value,
            },
            87..=92 => Write::Drain { node },
            _ => Write::Uncordon { node },
        };
        (write, replicas)
    }
}
