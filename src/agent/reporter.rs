//! Commits what the node agent reports. Reports are coalesced (latest per
//! instance), batched into one Raft write, kept while the quorum cannot be
//! reached, and re-sent when the replicated state disagrees with what this
//! gateway last saw (e.g. after a leader change lost an in-flight batch).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use gantry_node::{AgentEvent, InstanceReport as AgentReport, InstanceState as AgentState};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::health::RuntimeHealth;
use super::REPORT_TIMEOUT;
use crate::cluster::Cluster;
use crate::state::{Command, InstanceKey, InstanceReport, InstanceState, State};

const FLUSH_EVERY: Duration = Duration::from_millis(100);
const RESYNC_EVERY: Duration = Duration::from_secs(3);

/// The agent's report in the state machine's terms; None for a container
/// that is gone (the state has nothing to say about it).
pub fn convert(report: &AgentReport) -> Option<InstanceReport> {
    let state = match report.state {
        AgentState::Pending => InstanceState::Pending,
        AgentState::Pulling => InstanceState::Pulling,
        AgentState::Starting => InstanceState::Starting,
        AgentState::Running => InstanceState::Running,
        AgentState::Exited => InstanceState::Exited,
        AgentState::Failed => InstanceState::Failed,
        AgentState::Removed => return None,
    };
    Some(InstanceReport {
        instance: InstanceKey {
            workload: report.workload.clone(),
            replica: report.replica,
        },
        generation: report.generation,
        state,
        exit_code: report.exit_code,
        reason: report.reason.clone(),
        restarts: report.restarts,
        container_id: Some(report.container_id.clone()),
        // Under which stop the agent made it (see `DesiredInstance::stop_mark`):
        // stamped by the agent, not here, since a report can wait here
        // through writes that do not commit while a drain is cancelled and
        // begun again (the simulation, seed 7572).
        stopping_seen: report.stop_mark.is_some(),
        stop_mark_seen: report.stop_mark,
        fence_seen: None,
        ready: report.ready,
    })
}

/// The isolation limit this gateway's replica holds for the instance when
/// a report leaves (acknowledging a pending fence).
fn stamp(state: &State, node: u64, report: &mut InstanceReport) {
    if let Some(instance) = state.placed_copy(&report.instance, node) {
        report.fence_seen = instance.stop_after_ms();
    }
}

/// Whether the replicated state still lacks what `report` says.
fn disagrees(state: &State, node: u64, report: &InstanceReport) -> bool {
    let Some(instance) = state.placed_copy(&report.instance, node) else {
        return false;
    };
    if instance.container_generation() != report.generation {
        return false;
    }
    let unconfirmed_stop = instance.stopping
        && !instance.stopped
        && matches!(report.state, InstanceState::Exited | InstanceState::Failed);
    unconfirmed_stop
        || instance.fence_pending.is_some()
        || instance.state != report.state
        || instance.exit_code != report.exit_code
        || instance.restarts != report.restarts
        || instance.reason != report.reason
        || instance.ready != report.ready
        || instance.container_id != report.container_id
}

/// The report that tells the leader a `stopping` instance is down here.
fn stopped_for_move(state: &State, node: u64, removed: &AgentReport) -> Option<InstanceReport> {
    let key = InstanceKey {
        workload: removed.workload.clone(),
        replica: removed.replica,
    };
    let instance = state.placed_copy(&key, node)?;
    let ours = instance.container_generation() == removed.generation;
    let mark = removed.stop_mark?;
    (ours && instance.stopping).then(|| InstanceReport {
        instance: key,
        generation: removed.generation,
        state: InstanceState::Exited,
        exit_code: None,
        reason: Some("stopped so that it can move".into()),
        restarts: removed.restarts,
        container_id: None,
        stopping_seen: true,
        stop_mark_seen: Some(mark),
        fence_seen: instance.stop_after_ms(),
        ready: None,
    })
}

/// Reports of these states are what people and the scheduler wait for (an
/// instance up, or down): one leaves as soon as the last write is a
/// `FLUSH_EVERY` old, so the first after a quiet spell goes at once. The
/// others wait a `FLUSH_EVERY` (or ride along). Writes stay at least a
/// `FLUSH_EVERY` apart either way: a site where a thousand instances churn
/// writes no more often than before (each write is a Raft commit that every
/// gateway applies; at 25 ms apart such a site starved client writes).
fn urgent(report: &InstanceReport) -> bool {
    matches!(
        report.state,
        InstanceState::Running | InstanceState::Exited | InstanceState::Failed
    )
}

/// When the reports waiting here should be written.
#[derive(Debug, Clone, Copy)]
struct Pacing {
    last_write: Instant,
    due: Option<Instant>,
}

impl Pacing {
    fn new(now: Instant) -> Self {
        Self {
            last_write: now.checked_sub(FLUSH_EVERY).unwrap_or(now),
            due: None,
        }
    }

    /// A report joined the batch at `now`.
    fn add(&mut self, now: Instant, urgent: bool) {
        let at = if urgent {
            now.max(self.last_write + FLUSH_EVERY)
        } else {
            now.max(self.last_write) + FLUSH_EVERY
        };
        self.due = Some(self.due.map_or(at, |due| due.min(at)));
    }

    /// A write was tried at `now`; `left` reports are still waiting (it
    /// failed), to be tried again a `FLUSH_EVERY` later.
    fn wrote(&mut self, now: Instant, left: bool) {
        self.last_write = now;
        self.due = left.then_some(now + FLUSH_EVERY);
    }
}

/// What the reporter holds between writes.
struct Batch {
    /// Reports not committed yet, latest per instance.
    pending: BTreeMap<InstanceKey, InstanceReport>,
    /// The last report of every instance, to re-send when the replicated
    /// state disagrees.
    latest: BTreeMap<InstanceKey, InstanceReport>,
    pacing: Pacing,
}

impl Batch {
    fn queue(&mut self, key: InstanceKey, report: InstanceReport) {
        self.pacing.add(Instant::now(), urgent(&report));
        self.latest.insert(key.clone(), report.clone());
        self.pending.insert(key, report);
    }

    /// Takes in one event from the agent.
    fn absorb(
        &mut self,
        event: AgentEvent,
        cluster: &Cluster,
        health: &RuntimeHealth,
        pids: &super::fence::Pids,
    ) {
        match event {
            AgentEvent::Instance(report) => {
                let alive = matches!(report.state, AgentState::Running | AgentState::Starting);
                if report.pid.is_some() || !alive {
                    pids.set(
                        &report.container_id,
                        &report.workload,
                        report.replica,
                        report.pid.filter(|_| alive),
                    );
                }
                let key = InstanceKey {
                    workload: report.workload.clone(),
                    replica: report.replica,
                };
                match convert(&report) {
                    Some(converted) => self.queue(key, converted),
                    None => {
                        if self
                            .latest
                            .get(&key)
                            .is_some_and(|r| r.generation == report.generation)
                        {
                            self.latest.remove(&key);
                        }
                        // A copy stopped so that it can move (drain of a
                        // singleton): the leader waits to hear it stopped.
                        let stopped = {
                            let guard = cluster.state().read();
                            stopped_for_move(&guard.state, cluster.id(), &report)
                        };
                        if let Some(stopped) = stopped {
                            self.queue(key, stopped);
                        }
                    }
                }
            }
            AgentEvent::RuntimeAvailable { version } => {
                tracing::info!(%version, "container runtime available");
                health.set_problem(None);
            }
            AgentEvent::RuntimeUnavailable { reason } => {
                tracing::warn!(%reason, "container runtime unavailable");
                health.set_problem(Some(reason));
            }
        }
    }
}

pub async fn run(
    cluster: Cluster,
    mut events: mpsc::Receiver<AgentEvent>,
    health: Arc<RuntimeHealth>,
    pids: super::fence::Pids,
    shutdown: CancellationToken,
) {
    let mut batch = Batch {
        pending: BTreeMap::new(),
        latest: BTreeMap::new(),
        pacing: Pacing::new(Instant::now()),
    };
    let mut resync = tokio::time::interval(RESYNC_EVERY);
    loop {
        let due = batch.pacing.due;
        tokio::select! {
            _ = shutdown.cancelled() => return,
            event = events.recv() => match event {
                None => return,
                Some(event) => batch.absorb(event, &cluster, &health, &pids),
            },
            _ = resync.tick() => {
                let guard = cluster.state().read();
                let stale: Vec<(InstanceKey, InstanceReport)> = batch
                    .latest
                    .iter()
                    .filter(|(_, report)| disagrees(&guard.state, cluster.id(), report))
                    .map(|(key, report)| (key.clone(), report.clone()))
                    .collect();
                drop(guard);
                for (key, report) in stale {
                    batch.pending.insert(key, report);
                    batch.pacing.add(Instant::now(), false);
                }
            }
            _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                // Everything the agent said meanwhile goes in the same write.
                while let Ok(event) = events.try_recv() {
                    batch.absorb(event, &cluster, &health, &pids);
                }
                if batch.pending.is_empty() {
                    batch.pacing.due = None;
                    continue;
                }
                let reports: Vec<InstanceReport> = {
                    let guard = cluster.state().read();
                    batch
                        .pending
                        .values()
                        .cloned()
                        .map(|mut r| {
                            stamp(&guard.state, cluster.id(), &mut r);
                            r
                        })
                        .collect()
                };
                let command = Command::ReportInstances { node: cluster.id(), reports };
                let started = Instant::now();
                // Inline on purpose: while the write waits, the agent's
                // events queue up and hold the agent back (a reporter that
                // wrote off its loop let the agent churn and slowed a site
                // with a thousand failing instances fourfold). The cost: a
                // copy that starts meanwhile reaches the fence's pid table
                // only after the write; until then the fence leases it by
                // container id (README, findings 11 and 12).
                match tokio::time::timeout(REPORT_TIMEOUT, cluster.write(command)).await {
                    Ok(Ok(_)) => batch.pending.clear(),
                    Ok(Err(e)) => tracing::debug!(error = %e, kept = batch.pending.len(), "instance reports not committed yet"),
                    Err(_) => tracing::debug!(kept = batch.pending.len(), "instance reports not committed yet"),
                }
                batch.pacing.wrote(started, !batch.pending.is_empty());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_report_after_quiet_leaves_at_once_and_writes_stay_apart() {
        let start = Instant::now();
        let mut pacing = Pacing::new(start);
        assert_eq!(pacing.due, None);

        // A Starting report waits; the Running one after it goes at once
        // (quiet until now) and takes the Starting one along.
        pacing.add(start, false);
        assert_eq!(pacing.due, Some(start + FLUSH_EVERY));
        let running = start + Duration::from_millis(40);
        pacing.add(running, true);
        assert_eq!(pacing.due, Some(running));
        pacing.wrote(running, false);
        assert_eq!(pacing.due, None);

        // Right after a write, even an urgent report waits until the last
        // write is a FLUSH_EVERY old.
        let soon = running + Duration::from_millis(5);
        pacing.add(soon, true);
        assert_eq!(pacing.due, Some(running + FLUSH_EVERY));
        pacing.add(soon, false);
        assert_eq!(pacing.due, Some(running + FLUSH_EVERY));

        // A write that did not commit is tried again a FLUSH_EVERY later.
        let later = running + FLUSH_EVERY;
        pacing.wrote(later, true);
        assert_eq!(pacing.due, Some(later + FLUSH_EVERY));
    }
}
