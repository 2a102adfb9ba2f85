//! The autoscaler: sets an autoscaled workload's replica count from what
//! its instances use, the way Kubernetes' HorizontalPodAutoscaler does:
//! `ceil(sum of usage / (request × target))`, nothing within 10 % of the
//! target, up at once (then a cool-down while the new replicas start), down
//! only once every recommendation over `scale_down_after` asked for fewer,
//! and never past what the scheduler can place (a capped scale-up is said
//! once, not retried in a loop). Leader only; usage is soft state from the
//! heartbeats. `Tracker` is the pure decision, `run` the loop around it.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use gantry_proto::v1::InstanceUsage;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::cluster::{Cluster, NodeId};
use crate::control::liveness::Liveness;
use crate::state::spec::WorkloadSpec;
use crate::state::{ChangeSet, Command, InstanceState, Request, State, Workload};

/// How often the leader looks.
pub const EVERY: Duration = Duration::from_secs(5);
/// Usage older than this is not trusted (a gateway that stopped
/// heartbeating).
const FRESH: Duration = Duration::from_secs(30);
/// After a scale-up, new replicas need time to start and report.
pub const UP_COOLDOWN_MS: u64 = 15_000;
/// Within this share of the target nothing changes.
const TOLERANCE: f64 = 0.10;

/// One instance's usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
}

/// What the load asks for: a count and the reading that drove it.
#[derive(Debug, Clone, PartialEq)]
pub struct Wanted {
    pub replicas: u32,
    pub reason: String,
    pub cpu_percent: Option<u64>,
    pub memory_percent: Option<u64>,
}

/// The replica count `samples` ask for, before the floor, max and
/// capacity; None without an autoscale block or samples.
pub fn wanted(spec: &WorkloadSpec, current: u32, samples: &[Sample]) -> Option<Wanted> {
    let autoscale = spec.autoscale?;
    if samples.is_empty() {
        return None;
    }
    let n = samples.len() as u64;
    let mut best: Option<(u32, String)> = None;
    let mut percents = (None, None);
    let metrics = [
        (
            "cpu",
            autoscale.cpu_target,
            spec.cpu_millis(),
            samples.iter().map(|s| s.cpu_millis).sum::<u64>(),
        ),
        (
            "memory",
            autoscale.memory_target,
            spec.memory_bytes(),
            samples.iter().map(|s| s.memory_bytes).sum::<u64>(),
        ),
    ];
    for (name, target, request, used) in metrics {
        let (Some(target), true) = (target, request > 0) else {
            continue;
        };
        let percent = used.saturating_mul(100) / (request * n);
        if name == "cpu" {
            percents.0 = Some(percent);
        } else {
            percents.1 = Some(percent);
        }
        let ratio = percent as f64 / f64::from(target.0);
        let replicas = if (ratio - 1.0).abs() <= TOLERANCE {
            current
        } else {
            (used as f64 / (request as f64 * f64::from(target.0) / 100.0)).ceil() as u32
        };
        let reason = format!("{name} {percent}% of request");
        if best.as_ref().is_none_or(|(r, _)| replicas > *r) {
            best = Some((replicas, reason));
        }
    }
    let (replicas, reason) = best?;
    Some(Wanted {
        replicas,
        reason,
        cpu_percent: percents.0,
        memory_percent: percents.1,
    })
}

/// The leader's memory between rounds (soft: a new leader starts afresh).
#[derive(Debug, Default)]
pub struct Tracker {
    /// Recommendations within the scale-down window, oldest first.
    history: BTreeMap<String, VecDeque<(u64, u32)>>,
    /// When this leader first had a recommendation for the workload.
    since: BTreeMap<String, u64>,
    last_up: BTreeMap<String, u64>,
    /// The count a capped scale-up was last reported at.
    capped: BTreeMap<String, u32>,
}

impl Tracker {
    /// The command for one workload this round, if any. `fits(n)` says how
    /// many of `n` replicas the scheduler could place, and why not more.
    pub fn decide(
        &mut self,
        workload: &Workload,
        samples: &[Sample],
        now_ms: u64,
        fits: impl FnOnce(u32) -> (u32, Option<String>),
    ) -> Option<Command> {
        let name = workload.spec.name.clone();
        let autoscale = workload.spec.autoscale?;
        let current = workload.replicas();
        let wanted = wanted(&workload.spec, current, samples)?;
        let floor = workload.scale_floor();
        let want = wanted.replicas.clamp(floor, autoscale.max.max(floor));
        let window = autoscale.scale_down_after().as_millis() as u64;
        let history = self.history.entry(name.clone()).or_default();
        history.push_back((now_ms, want));
        while history
            .front()
            .is_some_and(|(at, _)| now_ms.saturating_sub(*at) > window)
        {
            history.pop_front();
        }
        let since = *self.since.entry(name.clone()).or_insert(now_ms);
        if want > current {
            let cooling = self
                .last_up
                .get(&name)
                .is_some_and(|at| now_ms.saturating_sub(*at) < UP_COOLDOWN_MS);
            if cooling {
                return None;
            }
            let (placeable, why_not) = fits(want);
            let target = want.min(placeable.max(current));
            if target < want && self.capped.get(&name) == Some(&target) {
                // Said already; wait for room (or less load) instead.
                if target == current {
                    return None;
                }
            }
            let capped = (target < want).then(|| {
                format!(
                    "; wanted {want}, only {target} fit{}",
                    why_not.map(|w| format!(": {w}")).unwrap_or_default()
                )
            });
            match &capped {
                Some(_) => self.capped.insert(name.clone(), target),
                None => self.capped.remove(&name),
            };
            if target > current {
                self.last_up.insert(name.clone(), now_ms);
            }
            return Some(Command::Scale {
                workload: name,
                replicas: target,
                reason: format!("{}{}", wanted.reason, capped.unwrap_or_default()),
            });
        }
        self.capped.remove(&name);
        // Down only when the whole window asked for fewer.
        let covered = now_ms.saturating_sub(since) >= window;
        let highest = history.iter().map(|(_, r)| *r).max().unwrap_or(current);
        if want < current && covered && highest < current {
            return Some(Command::Scale {
                workload: name,
                replicas: highest.max(floor),
                reason: wanted.reason,
            });
        }
        None
    }

    /// One round over every autoscaled workload.
    pub fn round(
        &mut self,
        state: &State,
        usage: &[(NodeId, InstanceUsage)],
        now_ms: u64,
    ) -> (Vec<Command>, BTreeMap<String, serde_json::Value>) {
        let mut commands = Vec::new();
        let mut readings = BTreeMap::new();
        for (name, workload) in &state.workloads {
            if workload.spec.autoscale.is_none() {
                continue;
            }
            let samples = samples_of(state, name, usage);
            if let Some(w) = wanted(&workload.spec, workload.replicas(), &samples) {
                readings.insert(
                    name.clone(),
                    json!({
                        "cpu_percent": w.cpu_percent,
                        "memory_percent": w.memory_percent,
                        "reporting": samples.len(),
                        "cpu_millis": samples.iter().map(|s| s.cpu_millis).sum::<u64>(),
                        "memory_bytes": samples.iter().map(|s| s.memory_bytes).sum::<u64>(),
                        "wanted": w.replicas,
                        "reason": w.reason,
                    }),
                );
            }
            let fits = |n: u32| placeable(state, name, n, now_ms);
            if let Some(command) = self.decide(workload, &samples, now_ms, fits) {
                commands.push(command);
            }
        }
        (commands, readings)
    }
}

/// The usage of a workload's Running instances, each as reported by the
/// gateway it is placed on.
fn samples_of(state: &State, name: &str, usage: &[(NodeId, InstanceUsage)]) -> Vec<Sample> {
    state
        .instances_of(name)
        .filter(|i| i.state == InstanceState::Running)
        .filter_map(|i| {
            usage
                .iter()
                .find(|(node, u)| {
                    Some(*node) == i.node && u.workload == i.workload && u.replica == i.replica
                })
                .map(|(_, u)| Sample {
                    cpu_millis: u.cpu_millis,
                    memory_bytes: u.memory_bytes,
                })
        })
        .collect()
}

/// How many of `n` replicas the scheduler would place, by a dry run on a
/// copy of the state, and the first reason it gives for one it would not.
fn placeable(state: &State, name: &str, n: u32, now_ms: u64) -> (u32, Option<String>) {
    let mut copy = state.clone();
    let scale = Command::Scale {
        workload: name.to_string(),
        replicas: n,
        reason: String::new(),
    };
    copy.apply(&Request::new(now_ms, scale), &mut ChangeSet::new());
    let round = super::scheduling::round(
        &copy,
        &super::scheduling::Timing {
            now_ms,
            ..Default::default()
        },
    );
    let placed_now = copy.instances_of(name).filter(|i| i.node.is_some()).count();
    let placed_next = round
        .record
        .placements
        .iter()
        .filter(|(k, _)| k.workload == name)
        .count();
    let why = round
        .record
        .unplaceable
        .iter()
        .find(|(k, _)| k.workload == name)
        .map(|(_, reason)| reason.clone());
    ((placed_now + placed_next) as u32, why)
}

pub async fn run(cluster: Cluster, liveness: Arc<Liveness>, shutdown: CancellationToken) {
    let mut tracker = Tracker::default();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(EVERY) => {}
        }
        if !cluster.is_leader() {
            tracker = Tracker::default();
            cluster.telemetry().set_autoscale_readings(BTreeMap::new());
            continue;
        }
        let usage = liveness.fresh_usage(FRESH);
        let (commands, readings) = {
            let guard = cluster.state().read();
            tracker.round(&guard.state, &usage, cluster.now_ms())
        };
        cluster.telemetry().set_autoscale_readings(readings);
        for command in commands {
            tracing::info!(?command, "autoscale");
            if let Err(e) = cluster.write_if_leader(command).await {
                tracing::warn!(error = %e, "could not commit a scale change");
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::spec::parse_manifest;
    use crate::state::{Source, Workload};

    fn workload(extra: &str) -> Workload {
        let spec = parse_manifest(&format!(
            "name: web\nimage: x\nresources: {{cpu: 100m, memory: 100Mi}}\n{extra}"
        ))
        .unwrap()
        .remove(0);
        Workload {
            spec,
            source: Source::Local,
            generation: 1,
            created_ms: 0,
            updated_ms: 0,
            history: Default::default(),
            last_good: None,
            rolled_back: None,
            autoscaled: None,
            last_scale: None,
        }
    }

    fn cpu(millis: &[u64]) -> Vec<Sample> {
        millis
            .iter()
            .map(|m| Sample {
                cpu_millis: *m,
                memory_bytes: 10 << 20,
            })
            .collect()
    }

    fn scaled_to(command: Option<Command>) -> Option<u32> {
        match command {
            Some(Command::Scale { replicas, .. }) => Some(replicas),
            _ => None,
        }
    }

    fn room(n: u32) -> (u32, Option<String>) {
        (n, None)
    }

    const SPEC: &str = "autoscale: {min: 1, max: 6, cpu_target: 50%, scale_down_after: 60s}\n";

    #[test]
    fn the_load_asks_for_usage_over_target_within_a_tolerance() {
        let w = workload(SPEC);
        let want = wanted(&w.spec, 1, &cpu(&[100])).unwrap();
        assert_eq!(want.replicas, 2);
        assert_eq!(want.reason, "cpu 100% of request");
        assert_eq!(
            wanted(&w.spec, 4, &cpu(&[90, 90, 90, 90]))
                .unwrap()
                .replicas,
            8
        );
        // 52% of a 50% target: within 10 %, stay.
        assert_eq!(wanted(&w.spec, 3, &cpu(&[52, 52, 52])).unwrap().replicas, 3);
        assert_eq!(wanted(&w.spec, 3, &cpu(&[10, 10, 10])).unwrap().replicas, 1);
        assert!(wanted(&w.spec, 3, &[]).is_none());
        // Memory drives when it asks for more.
        let both = workload("autoscale: {max: 6, cpu_target: 50%, memory_target: 50%}\n");
        let heavy = [Sample {
            cpu_millis: 10,
            memory_bytes: 300 << 20,
        }];
        let want = wanted(&both.spec, 1, &heavy).unwrap();
        assert_eq!(want.replicas, 6);
        assert_eq!(want.reason, "memory 300% of request");
    }

    #[test]
    fn up_at_once_within_min_and_max_then_a_cooldown() {
        let mut w = workload(SPEC);
        let mut t = Tracker::default();
        assert_eq!(scaled_to(t.decide(&w, &cpu(&[100]), 0, room)), Some(2));
        w.autoscaled = Some(2);
        // Still hot, but the new replica is starting: wait.
        assert_eq!(
            scaled_to(t.decide(&w, &cpu(&[100, 100]), 5_000, room)),
            None
        );
        assert_eq!(
            scaled_to(t.decide(&w, &cpu(&[100, 100]), UP_COOLDOWN_MS + 1, room)),
            Some(4)
        );
        w.autoscaled = Some(4);
        // Never past max.
        let later = 2 * UP_COOLDOWN_MS + 2;
        assert_eq!(
            scaled_to(t.decide(&w, &cpu(&[100, 100, 100, 100]), later, room)),
            Some(6)
        );
    }

    #[test]
    fn down_only_after_a_whole_window_of_low_load_and_never_below_min() {
        let mut w = workload(SPEC);
        w.autoscaled = Some(4);
        let mut t = Tracker::default();
        let mut downs = Vec::new();
        for second in (0..=70).step_by(5) {
            let at = second * 1000;
            let load = vec![5; w.replicas() as usize];
            if let Some(n) = scaled_to(t.decide(&w, &cpu(&load), at, room)) {
                downs.push((second, n));
                w.autoscaled = Some(n);
            }
        }
        assert_eq!(downs, vec![(60, 1)], "after the 60 s window, to the floor");
    }

    #[test]
    fn a_bursty_load_does_not_flap() {
        let mut w = workload(SPEC);
        let mut t = Tracker::default();
        let mut changes = 0;
        // Ten minutes: 20 s at 100 %, 20 s at 5 %, repeating.
        for step in 0..120u64 {
            let at = step * 5_000;
            let hot = (step / 4) % 2 == 0;
            let n = w.replicas() as usize;
            let load = if hot { 100 } else { 5 };
            if let Some(to) = scaled_to(t.decide(&w, &cpu(&vec![load; n]), at, room)) {
                w.autoscaled = Some(to);
                changes += 1;
            }
        }
        // Up to what the bursts need, and it stays there: the quiet spells
        // are shorter than the window.
        assert!(changes <= 3, "{changes} changes");
        assert!(w.replicas() >= 2);
    }

    #[test]
    fn a_scale_up_that_does_not_fit_is_capped_and_said_once() {
        let mut w = workload(SPEC);
        w.autoscaled = Some(2);
        let mut t = Tracker::default();
        let full = |_: u32| (3, Some("no gateway has 100m CPU free".to_string()));
        let first = t.decide(&w, &cpu(&[100, 100]), 0, full);
        match first {
            Some(Command::Scale {
                replicas, reason, ..
            }) => {
                assert_eq!(replicas, 3);
                assert!(
                    reason.contains("wanted 4, only 3 fit: no gateway"),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
        w.autoscaled = Some(3);
        let later = UP_COOLDOWN_MS + 1;
        assert_eq!(
            scaled_to(t.decide(&w, &cpu(&[100, 100, 100]), later, full)),
            None,
            "said once"
        );
        assert_eq!(
            scaled_to(t.decide(&w, &cpu(&[100, 100, 100]), later + 5_000, full)),
            None,
            "not retried in a loop"
        );
        // Room again: it goes on.
        assert_eq!(
            scaled_to(t.decide(&w, &cpu(&[100, 100, 100]), later + 10_000, room)),
            Some(6)
        );
    }

    #[test]
    fn a_cloud_workload_keeps_the_clouds_count_as_its_floor() {
        let mut w =
            workload("replicas: 3\nautoscale: {max: 6, cpu_target: 50%, scale_down_after: 10s}\n");
        w.source = Source::Cloud;
        assert_eq!(w.scale_floor(), 3);
        assert_eq!(w.replicas(), 3);
        let mut t = Tracker::default();
        for second in (0..=30).step_by(5) {
            let d = scaled_to(t.decide(&w, &cpu(&[1, 1, 1]), second * 1000, room));
            assert_eq!(d, None, "never below the cloud's 3");
        }
        // Unless the hub sets min.
        let mut own_min = workload("replicas: 3\nautoscale: {min: 1, max: 6, cpu_target: 50%}\n");
        own_min.source = Source::Cloud;
        assert_eq!(own_min.scale_floor(), 1);
    }
}
