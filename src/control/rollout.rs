//! The rollout driver: moves replicas to a workload's newest generation
//! `max_unavailable` at a time (default 1), waiting for Running before the
//! next batch, and rolls back to the last good spec when a replica of the
//! new generation is not Running `progress_deadline` (default 5m) after it
//! was upgraded. Leader only; `steps` is the pure decision.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::cluster::Cluster;
use crate::state::quantity::format_duration;
use crate::state::{Command, Instance, InstanceState, State, Workload};

pub const DEFAULT_PROGRESS_DEADLINE: Duration = Duration::from_secs(300);

fn deadline(workload: &Workload) -> Duration {
    workload
        .spec
        .progress_deadline
        .map(|d| d.0)
        .unwrap_or(DEFAULT_PROGRESS_DEADLINE)
}

/// Running and ready (where it has a readiness probe) on a gateway.
fn available(instance: &Instance) -> bool {
    instance.is_up() && instance.node.is_some()
}

/// The rollout commands worth committing now.
pub fn steps(state: &State, now: u64) -> Vec<Command> {
    let mut commands = Vec::new();
    for (name, workload) in &state.workloads {
        let instances: Vec<&Instance> = state.instances_of(name).collect();
        let target = workload.generation;
        // A replica of the new generation that missed its deadline.
        let late = instances.iter().find(|i| {
            i.generation == target
                && !available(i)
                && now.saturating_sub(i.generation_since_ms)
                    >= deadline(workload).as_millis() as u64
        });
        if let Some(late) = late {
            // Rolling back to the spec it already runs (a rollback's own
            // generation, slow to start) would only loop.
            let rollback_possible = workload
                .last_good
                .is_some_and(|g| g != target && workload.spec_for(g) != workload.spec_for(target));
            if rollback_possible {
                let why = late
                    .reason
                    .as_deref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default();
                let (what, state) = if late.state == InstanceState::Running {
                    ("ready", "Running, not ready".to_string())
                } else {
                    ("Running", late.state.to_string())
                };
                let reason = format!(
                    "instance {}/{} was not {what} {} after its upgrade (state {state}{why})",
                    late.workload,
                    late.replica,
                    format_duration(deadline(workload)),
                );
                commands.push(Command::RollBack {
                    workload: name.clone(),
                    failed_generation: target,
                    reason,
                });
                continue;
            }
        }
        let stale: Vec<&&Instance> = instances
            .iter()
            .filter(|i| i.generation != target)
            .collect();
        if stale.is_empty() {
            continue;
        }
        // Replicas that are down anyway move at once: they cost no availability.
        let mut upgrade: Vec<u32> = stale
            .iter()
            .filter(|i| !available(i))
            .map(|i| i.replica)
            .collect();
        let max_unavailable = workload.spec.max_unavailable.unwrap_or(1) as usize;
        let unavailable = instances.iter().filter(|i| !available(i)).count();
        let budget = max_unavailable.saturating_sub(unavailable);
        let mut running_stale: Vec<&&Instance> =
            stale.iter().copied().filter(|i| available(i)).collect();
        running_stale.sort_by_key(|i| i.replica);
        upgrade.extend(running_stale.iter().take(budget).map(|i| i.replica));
        if !upgrade.is_empty() {
            upgrade.sort_unstable();
            commands.push(Command::UpgradeInstances {
                workload: name.clone(),
                generation: target,
                replicas: upgrade,
            });
        }
    }
    commands
}

pub async fn run(cluster: Cluster, shutdown: CancellationToken) {
    let mut applied = cluster.state().subscribe();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = applied.changed() => {
                // The state machine is gone (its Raft core stopped): waiting
                // on it again would return at once, forever.
                if changed.is_err() {
                    return;
                }
            }
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        if !cluster.is_leader() {
            continue;
        }
        let commands = {
            let guard = cluster.state().read();
            steps(&guard.state, cluster.now_ms())
        };
        for command in commands {
            tracing::info!(?command, "rollout step");
            if let Err(e) = cluster.write_if_leader(command).await {
                tracing::warn!(error = %e, "could not commit a rollout step");
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::spec::parse_manifest;
    use crate::state::{ChangeSet, InstanceKey, InstanceReport, Request, Source};

    fn apply(state: &mut State, at: u64, command: Command) {
        state.apply(&Request::new(at, command), &mut ChangeSet::new());
    }

    fn manifest(state: &mut State, at: u64, text: &str) {
        let workloads = parse_manifest(text).unwrap();
        apply(
            state,
            at,
            Command::ApplyWorkloads {
                workloads,
                source: Source::Local,
            },
        );
    }

    /// Three replicas of `web` placed on node 1 and reported Running.
    fn running_web() -> State {
        let mut state = State::default();
        state.meta.next_node_id = 1;
        apply(
            &mut state,
            1,
            Command::RegisterNode {
                name: "gw".into(),
                address: "127.0.0.1:1".into(),
                labels: Default::default(),
                capacity: Default::default(),
                devices: Default::default(),
                tls: Some(crate::state::trust::fixtures::tls()),
                join_token: None,
            },
        );
        manifest(
            &mut state,
            2,
            "name: web\nimage: v1\nreplicas: 3\nprogress_deadline: 10s\n",
        );
        let placements = (0..3)
            .map(|r| {
                (
                    InstanceKey {
                        workload: "web".into(),
                        replica: r,
                    },
                    1,
                )
            })
            .collect();
        let plan = crate::state::PlanRecord {
            placements,
            ..Default::default()
        };
        apply(&mut state, 3, Command::ApplyPlan { plan });
        report_all(&mut state, 4, 1, InstanceState::Running);
        state
    }

    fn report_all(state: &mut State, at: u64, generation: u64, to: InstanceState) {
        let reports = state
            .instances
            .values()
            .filter(|i| i.generation == generation)
            .map(|i| InstanceReport {
                instance: i.key(),
                generation,
                state: to,
                exit_code: None,
                reason: (to == InstanceState::Failed).then(|| "image v2 not found".to_string()),
                restarts: 0,
                container_id: Some(format!("c{}", i.replica)),
                stopping_seen: false,
                stop_mark_seen: None,
                fence_seen: None,
                ready: None,
            })
            .collect();
        apply(state, at, Command::ReportInstances { node: 1, reports });
    }

    fn run_steps(state: &mut State, now: u64) -> Vec<Command> {
        let commands = steps(state, now);
        for c in commands.clone() {
            apply(state, now, c);
        }
        commands
    }

    #[test]
    fn one_replica_at_a_time_waiting_for_running() {
        let mut state = running_web();
        assert_eq!(state.workloads["web"].last_good, Some(1));
        manifest(
            &mut state,
            10,
            "name: web\nimage: v2\nreplicas: 3\nprogress_deadline: 10s\n",
        );
        let first = run_steps(&mut state, 11);
        assert_eq!(first.len(), 1);
        assert!(
            matches!(&first[0], Command::UpgradeInstances { replicas, .. } if replicas == &vec![0])
        );
        // Replica 0 is not Running yet: nothing else moves.
        assert!(run_steps(&mut state, 12).is_empty());
        report_all(&mut state, 13, 2, InstanceState::Running);
        let second = run_steps(&mut state, 14);
        assert!(
            matches!(&second[0], Command::UpgradeInstances { replicas, .. } if replicas == &vec![1])
        );
        // The old spec stays available to the replicas that still run it.
        assert_eq!(state.workloads["web"].spec_for(1).image, "v1");
        assert_eq!(state.workloads["web"].spec_for(2).image, "v2");
    }

    #[test]
    fn a_generation_that_never_runs_is_rolled_back_and_never_takes_all_replicas() {
        let mut state = running_web();
        manifest(
            &mut state,
            10_000,
            "name: web\nimage: v2\nreplicas: 3\nprogress_deadline: 10s\n",
        );
        run_steps(&mut state, 10_001);
        report_all(&mut state, 10_002, 2, InstanceState::Failed);
        // Before the deadline: waits, and two replicas keep running v1.
        assert!(run_steps(&mut state, 15_000).is_empty());
        let running = state
            .instances
            .values()
            .filter(|i| i.state == InstanceState::Running)
            .count();
        assert_eq!(running, 2);
        let rolled = run_steps(&mut state, 20_001);
        assert!(
            matches!(
                &rolled[0],
                Command::RollBack {
                    failed_generation: 2,
                    ..
                }
            ),
            "{rolled:?}"
        );
        let web = &state.workloads["web"];
        assert_eq!((web.generation, web.spec.image.as_str()), (3, "v1"));
        assert!(web
            .rolled_back
            .as_ref()
            .is_some_and(|r| r.reason.contains("web/0")));
        // The failed replica moves to the rolled-back generation at once.
        let next = run_steps(&mut state, 20_002);
        assert!(
            matches!(&next[0], Command::UpgradeInstances { generation: 3, replicas, .. } if replicas.contains(&0))
        );
    }
}
