//! Which containers this gateway should run, derived from its local replica.
//!
//! The local replica, not the leader, is the source: a gateway cut off from
//! the quorum keeps running what it last knew (edge autonomy), except the
//! instances whose `on_disconnect.stop_after` has passed.

use std::time::Duration;

use gantry_node::{
    ContainerSpec, DesiredInstance, MountSpec, ProbeCheck, PullPolicy, RestartPolicy,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::cluster::{Cluster, NodeId};
use crate::control::fencing;
use crate::state::spec::{ImagePull, ProbeSpec, RestartPolicy as SpecRestart};
use crate::state::{Instance, NodeStatus, State, Workload};

/// containerd container id: unique per generation so a replacement never
/// collides with the container it replaces (a rollback that keeps a
/// container keeps its id: `Instance::container_generation`).
pub fn container_id(instance: &Instance) -> String {
    format!(
        "{}-{}-g{}",
        instance.workload,
        instance.replica,
        instance.container_generation()
    )
}

fn container_spec(instance: &Instance, workload: &Workload) -> ContainerSpec {
    // During a rollout, replicas of older generations keep their spec.
    let spec = workload.spec_for(instance.generation);
    let mut container = ContainerSpec::new(
        container_id(instance),
        instance.workload.clone(),
        instance.replica,
        instance.container_generation(),
        spec.image.clone(),
    );
    container.command = spec.command.clone();
    container.args = spec.args.clone();
    container.env = spec.env.clone();
    container.cpu_millis = Some(spec.cpu_millis()).filter(|c| *c > 0);
    container.memory_bytes = Some(spec.memory_bytes()).filter(|m| *m > 0);
    container.mounts = spec
        .mounts
        .iter()
        .map(|m| MountSpec {
            source: m.source.clone(),
            target: m.target.clone(),
            read_only: m.read_only,
        })
        .collect();
    container.devices = spec.devices.clone();
    container.read_only = spec.read_only;
    container.probes = gantry_node::Probes {
        startup: spec.probes.startup.as_ref().map(probe),
        liveness: spec.probes.liveness.as_ref().map(probe),
        readiness: spec.probes.readiness.as_ref().map(probe),
    };
    container
}

/// A validated manifest probe in the agent's terms, defaults filled in.
fn probe(spec: &ProbeSpec) -> gantry_node::Probe {
    let check = if let Some(command) = &spec.exec {
        ProbeCheck::Exec {
            command: command.clone(),
        }
    } else if let Some(http) = &spec.http {
        ProbeCheck::Http {
            port: http.port,
            path: http.path.clone(),
        }
    } else {
        ProbeCheck::Tcp {
            port: spec.tcp.as_ref().map(|t| t.port).unwrap_or(0),
        }
    };
    let mut probe = gantry_node::Probe::new(check);
    if let Some(d) = spec.period {
        probe.period = d.0;
    }
    if let Some(d) = spec.timeout {
        probe.timeout = d.0;
    }
    if let Some(d) = spec.initial_delay {
        probe.initial_delay = d.0;
    }
    if let Some(n) = spec.failure_threshold {
        probe.failure_threshold = n;
    }
    if let Some(n) = spec.success_threshold {
        probe.success_threshold = n;
    }
    probe
}

fn restart_policy(policy: SpecRestart) -> RestartPolicy {
    match policy {
        SpecRestart::Always => RestartPolicy::Always,
        SpecRestart::OnFailure => RestartPolicy::OnFailure,
        SpecRestart::Never => RestartPolicy::Never,
    }
}

/// The pure part: this gateway's desired containers, given how long it has
/// been cut off from the quorum (None when it is not), whether this process
/// has caught up with a leader yet, and its stop grace. An instance with
/// an isolation limit (`Instance::stop_after_ms`, the one this replica
/// holds) leaves the set early enough that its stop, grace included, ends
/// by the limit (`fencing::stop_begins`). Until the replica has caught up
/// once, such an instance is held: kept if it runs, never started (the
/// simulation, seed 312: a daemon restarted on its older replica started a
/// singleton whose stop its previous process had confirmed).
pub fn desired_for(
    state: &State,
    node: NodeId,
    isolated_for: Option<Duration>,
    caught_up: bool,
    stop_grace: Duration,
) -> Vec<DesiredInstance> {
    if state
        .nodes
        .get(&node)
        .is_some_and(|n| n.status == NodeStatus::Left)
    {
        return Vec::new();
    }
    // Copies of deleted singletons still placed here: stop them and say so.
    let retired = state
        .meta
        .retired
        .iter()
        .filter(|r| r.node == Some(node))
        .map(|r| {
            let spec = ContainerSpec::new(
                container_id(r),
                r.workload.clone(),
                r.replica,
                r.container_generation(),
                String::new(),
            );
            must_stop(spec, r.stop_mark)
        });
    let live = state
        .instances
        .values()
        .filter(|i| i.node == Some(node))
        .filter_map(|instance| {
            let workload = state.workloads.get(&instance.workload)?;
            // Moving away (drain, preemption of a singleton): stop it here
            // first, and say when nothing is left.
            if instance.stopping {
                return Some(must_stop(
                    container_spec(instance, workload),
                    instance.stop_mark,
                ));
            }
            let limit = instance
                .stop_after_ms()
                .map(|ms| Duration::from_millis(fencing::node_limit_ms(ms)));
            let stop_now = match (isolated_for, limit) {
                (Some(isolated), Some(limit)) => {
                    isolated >= fencing::stop_begins(limit, stop_grace)
                }
                _ => false,
            };
            if stop_now {
                return None;
            }
            let mut desired = DesiredInstance::new(
                container_spec(instance, workload),
                restart_policy(workload.spec_for(instance.generation).restart),
            );
            let fenced = limit.is_some() || workload.spec_for(instance.generation).singleton;
            desired.hold = fenced && !caught_up;
            desired.pull = match workload.spec_for(instance.generation).image_pull {
                ImagePull::IfNotPresent => PullPolicy::IfNotPresent,
                ImagePull::Always => PullPolicy::Always,
                ImagePull::Never => PullPolicy::Never,
            };
            Some(desired)
        });
    retired.chain(live).collect()
}

fn must_stop(spec: ContainerSpec, mark: u64) -> DesiredInstance {
    DesiredInstance {
        stop: true,
        stop_mark: Some(mark),
        ..DesiredInstance::new(spec, RestartPolicy::Never)
    }
}

/// Keeps the agent's desired set equal to `desired_for` as the replica
/// changes (and re-checks isolation every 100 ms). The first set is always
/// sent: until then the agent removes nothing (`Agent::wait_for_desired`).
pub async fn feed(
    cluster: Cluster,
    desired: watch::Sender<Vec<DesiredInstance>>,
    stop_grace: Duration,
    shutdown: CancellationToken,
) {
    let mut applied = cluster.state().subscribe();
    let mut first = true;
    loop {
        let next = {
            let isolated = cluster.isolated_for();
            let caught_up = cluster.caught_up_since_start();
            let guard = cluster.state().read();
            desired_for(&guard.state, cluster.id(), isolated, caught_up, stop_grace)
        };
        if std::mem::take(&mut first) {
            desired.send_replace(next);
        } else {
            desired.send_if_modified(|current| {
                if *current == next {
                    return false;
                }
                *current = next;
                true
            });
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = applied.changed() => {
                // The state machine is gone (its Raft core stopped): waiting
                // on it again would return at once, forever.
                if changed.is_err() {
                    return;
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}
