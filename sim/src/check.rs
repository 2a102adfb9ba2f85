//! The checker: from the recorded history, the container intervals and the
//! final states, the invariants every run must keep.
//! - I1 no acknowledged write lost: for each key, the final value of every
//!   gateway was written by an operation that did not complete before an
//!   acknowledged write of that key began (an unknown outcome never
//!   completed, as far as ordering goes).
//! - I3 at most one running copy of each singleton at every instant (closed
//!   intervals: a stop and a start in the same millisecond overlap).
//!
//! I2 (applied twice), I4 (capacity) and replica divergence come from the
//! `observe::Observer`; I5 (convergence) from the run itself.

use std::collections::BTreeMap;

use gantry::cluster::NodeId;
use gantry::state::State;

use crate::fake::Interval;
use crate::workload::{Op, Outcome, Write, SINGLETONS};

fn strictly_before(a: &Op, b: &Op) -> bool {
    // An unknown outcome may take effect at any later time.
    a.outcome == Some(Outcome::Ok) && a.complete_ms.is_some_and(|c| c < b.invoke_ms)
}

/// I1 on one gateway's final state.
pub fn lost_writes(host: NodeId, state: &State, ops: &[Op]) -> Vec<String> {
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in ops {
        if let Some(key) = op.write.key() {
            if matches!(
                op.outcome,
                Some(Outcome::Ok) | Some(Outcome::Unknown) | None
            ) {
                by_key.entry(key).or_default().push(op);
            }
        }
    }
    let mut lost = Vec::new();
    for (key, writes) in by_key {
        let acked: Vec<&&Op> = writes
            .iter()
            .filter(|o| o.outcome == Some(Outcome::Ok))
            .collect();
        let value = state
            .workloads
            .get(key)
            .map(|w| w.spec.env.get("SEQ").cloned().unwrap_or_default());
        // The operations that could have left what the state shows.
        let writers: Vec<&&Op> = writes
            .iter()
            .filter(|o| match (&o.write, &value) {
                (Write::Apply { value: v, .. }, Some(now)) => v == now,
                (Write::Delete { .. }, None) => true,
                _ => false,
            })
            .collect();
        if writers.is_empty() {
            if value.is_some() || !acked.is_empty() {
                lost.push(format!(
                    "gw{host}: {key} is {value:?}, which no write of it explains (acknowledged: {})",
                    acked.len()
                ));
            }
            continue;
        }
        // Some writer must not precede any acknowledged write it does not
        // equal.
        let explained = writers.iter().any(|f| {
            acked
                .iter()
                .all(|w| std::ptr::eq(**f, **w) || !strictly_before(f, w))
        });
        if !explained {
            let newest = acked.iter().max_by_key(|w| w.invoke_ms);
            lost.push(format!(
                "gw{host}: {key} is {value:?}, but the acknowledged {:?} (client{} via gw{}, {}..{:?} ms) came later",
                newest.map(|w| &w.write),
                newest.map(|w| w.client).unwrap_or(0),
                newest.map(|w| w.via).unwrap_or(0),
                newest.map(|w| w.invoke_ms).unwrap_or(0),
                newest.and_then(|w| w.complete_ms),
            ));
        }
    }
    lost
}

/// I3: overlapping copies of a singleton, from every container interval.
pub fn overlaps(intervals: &[Interval], end_ms: u64) -> Vec<String> {
    let mut out = Vec::new();
    let names = SINGLETONS
        .iter()
        .map(|(name, _)| *name)
        .chain([crate::cloud::CLOUD_SINGLETON]);
    for name in names {
        let mut copies: Vec<&Interval> = intervals.iter().filter(|i| i.workload == name).collect();
        copies.sort_by_key(|i| (i.start_ms, i.host));
        for (n, a) in copies.iter().enumerate() {
            let a_end = a.stop_ms.unwrap_or(end_ms);
            for b in copies.iter().skip(n + 1) {
                if b.start_ms > a_end {
                    break;
                }
                out.push(format!(
                    "{name}: {} on gw{} ran {}..{} ms while {} on gw{} ran {}..{} ms",
                    a.container_id,
                    a.host,
                    a.start_ms,
                    a_end,
                    b.container_id,
                    b.host,
                    b.start_ms,
                    b.stop_ms.unwrap_or(end_ms)
                ));
            }
        }
    }
    out
}
