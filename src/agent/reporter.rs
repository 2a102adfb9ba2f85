//! Commits what the node agent reports. Reports are coalesced (latest per
//! instance), batched into one Raft write, kept while the quorum cannot be
//! reached, and re-sent when the replicated state disagrees with what this
//! gateway last saw (e.g. after a leader change lost an in-flight batch).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

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

pub async fn run(
    cluster: Cluster,
    mut events: mpsc::Receiver<AgentEvent>,
    health: Arc<RuntimeHealth>,
    pids: super::fence::Pids,
    shutdown: CancellationToken,
) {
    let mut pending: BTreeMap<InstanceKey, InstanceReport> = BTreeMap::new();
    let mut latest: BTreeMap<InstanceKey, InstanceReport> = BTreeMap::new();
    let mut flush = tokio::time::interval(FLUSH_EVERY);
    let mut resync = tokio::time::interval(RESYNC_EVERY);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            event = events.recv() => match event {
                None => return,
                Some(AgentEvent::Instance(report)) => {
                    let alive = matches!(report.state, AgentState::Running | AgentState::Starting);
                    if report.pid.is_some() || !alive {
                        pids.set(
                            &report.container_id,
                            &report.workload,
                            report.replica,
                            report.pid.filter(|_| alive),
                        );
                    }
                    let key = InstanceKey { workload: report.workload.clone(), replica: report.replica };
                    match convert(&report) {
                        Some(converted) => {
                            latest.insert(key.clone(), converted.clone());
                            pending.insert(key, converted);
                        }
                        None => {
                            if latest.get(&key).is_some_and(|r| r.generation == report.generation) {
                                latest.remove(&key);
                            }
                            // A copy stopped so that it can move (drain of a
                            // singleton): the leader waits to hear it stopped.
                            let stopped = {
                                let guard = cluster.state().read();
                                stopped_for_move(&guard.state, cluster.id(), &report)
                            };
                            if let Some(stopped) = stopped {
                                latest.insert(key.clone(), stopped.clone());
                                pending.insert(key, stopped);
                            }
                        }
                    }
                }
                Some(AgentEvent::RuntimeAvailable { version }) => {
                    tracing::info!(%version, "container runtime available");
                    health.set_problem(None);
                }
                Some(AgentEvent::RuntimeUnavailable { reason }) => {
                    tracing::warn!(%reason, "container runtime unavailable");
                    health.set_problem(Some(reason));
                }
            },
            _ = resync.tick() => {
                let guard = cluster.state().read();
                for (key, report) in &latest {
                    if disagrees(&guard.state, cluster.id(), report) {
                        pending.insert(key.clone(), report.clone());
                    }
                }
            }
            _ = flush.tick() => {
                if pending.is_empty() {
                    continue;
                }
                let reports: Vec<InstanceReport> = {
                    let guard = cluster.state().read();
                    pending
                        .values()
                        .cloned()
                        .map(|mut r| {
                            stamp(&guard.state, cluster.id(), &mut r);
                            r
                        })
                        .collect()
                };
                let command = Command::ReportInstances { node: cluster.id(), reports };
                // Inline on purpose: while the write waits, the agent's
                // events queue up and hold the agent back (a reporter that
                // wrote off its loop let the agent churn and slowed a site
                // with a thousand failing instances fourfold). The cost: a
                // copy that starts meanwhile reaches the fence's pid table
                // only after the write; until then the fence leases it by
                // container id (README, findings 11 and 12).
                match tokio::time::timeout(REPORT_TIMEOUT, cluster.write(command)).await {
                    Ok(Ok(_)) => pending.clear(),
                    Ok(Err(e)) => tracing::debug!(error = %e, kept = pending.len(), "instance reports not committed yet"),
                    Err(_) => tracing::debug!(kept = pending.len(), "instance reports not committed yet"),
                }
            }
        }
    }
}
