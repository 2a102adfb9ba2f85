//! Rolling upgrades in the state machine: a changed spec keeps the old
//! generation's spec in `Workload::history`; the rollout driver
//! (`control::rollout`) moves replicas to the new generation a batch at a
//! time (`UpgradeInstances`) and, when a new generation does not reach
//! Running in time, rolls back to the last good spec (`RollBack`).

use super::model::{Instance, InstanceKey, InstanceState, RolledBack, Workload};
use super::spec::WorkloadSpec;
use super::{rejected, ChangeSet, Response, State, StateKey};

impl Workload {
    /// The spec an instance of `generation` runs.
    pub fn spec_for(&self, generation: u64) -> &WorkloadSpec {
        if generation == self.generation {
            return &self.spec;
        }
        self.history.get(&generation).unwrap_or(&self.spec)
    }
}

impl State {
    pub(super) fn upgrade_instances(
        &mut self,
        at: u64,
        name: &str,
        generation: u64,
        replicas: &[u32],
        changes: &mut ChangeSet,
    ) -> Response {
        match self.workloads.get(name) {
            Some(w) if w.generation == generation => {}
            Some(w) => {
                return rejected(format!(
                    "workload '{name}' is at generation {}, not {generation}",
                    w.generation
                ))
            }
            None => return rejected(format!("no workload named '{name}'")),
        }
        for replica in replicas {
            let key = InstanceKey {
                workload: name.to_string(),
                replica: *replica,
            };
            let Some(instance) = self.instances.get_mut(&key) else {
                continue;
            };
            if instance.generation == generation {
                continue;
            }
            let from = instance.generation;
            instance.generation = generation;
            instance.container_generation = None;
            instance.generation_since_ms = at;
            instance.state = InstanceState::Pending;
            instance.exit_code = None;
            instance.reason = None;
            instance.updated_ms = at;
            changes.insert(StateKey::Instance(key.clone()));
            self.event(
                at,
                "rollout",
                format!("instance {key}: generation {from} -> {generation}"),
                changes,
            );
        }
        self.prune_history(name, changes);
        Response::Ok
    }

    pub(super) fn roll_back(
        &mut self,
        at: u64,
        name: &str,
        failed: u64,
        reason: &str,
        changes: &mut ChangeSet,
    ) -> Response {
        let Some(workload) = self.workloads.get_mut(name) else {
            return rejected(format!("no workload named '{name}'"));
        };
        if workload.generation != failed {
            return rejected(format!(
                "workload '{name}' is no longer at generation {failed}"
            ));
        }
        let Some(good) = workload.last_good.filter(|g| *g != failed) else {
            return rejected(format!(
                "workload '{name}' has no earlier good generation to roll back to"
            ));
        };
        let Some(good_spec) = workload.history.get(&good).cloned() else {
            return rejected(format!("the spec of generation {good} of '{name}' is gone"));
        };
        let failed_spec = std::mem::replace(&mut workload.spec, good_spec);
        workload.history.insert(failed, failed_spec);
        workload.generation += 1;
        workload.updated_ms = at;
        workload.rolled_back = Some(RolledBack {
            generation: failed,
            to_spec_of: good,
            at_ms: at,
            reason: reason.to_string(),
        });
        let now_at = workload.generation;
        let good_spec = workload.spec.clone();
        // Replicas that run the good spec already (they never left it) are
        // the new generation as they are: their containers stay.
        let keep: Vec<InstanceKey> = self
            .instances_of(name)
            .filter(|i| {
                self.workloads
                    .get(name)
                    .is_some_and(|w| *w.spec_for(i.generation) == good_spec)
            })
            .map(Instance::key)
            .collect();
        for key in keep {
            if let Some(instance) = self.instances.get_mut(&key) {
                instance.container_generation = Some(instance.container_generation());
                instance.generation = now_at;
                instance.generation_since_ms = at;
                instance.updated_ms = at;
                changes.insert(StateKey::Instance(key));
            }
        }
        changes.insert(StateKey::Workload(name.to_string()));
        self.event(
            at,
            "rollback",
            format!(
                "workload {name}: generation {failed} rolled back to the spec of generation {good} (now generation {now_at}): {reason}"
            ),
            changes,
        );
        Response::Ok
    }

    /// Records the current generation as good once every replica runs it.
    pub(super) fn note_good_generation(&mut self, name: &str, changes: &mut ChangeSet) {
        let Some(workload) = self.workloads.get(name) else {
            return;
        };
        let (generation, replicas) = (workload.generation, workload.replicas() as usize);
        if workload.last_good == Some(generation) {
            return;
        }
        let instances: Vec<&Instance> = self.instances_of(name).collect();
        let all_running = instances.len() == replicas
            && instances
                .iter()
                .all(|i| i.generation == generation && i.is_up());
        if all_running {
            if let Some(workload) = self.workloads.get_mut(name) {
                workload.last_good = Some(generation);
                changes.insert(StateKey::Workload(name.to_string()));
            }
            self.prune_history(name, changes);
        }
    }

    /// Keeps only the specs that instances still run, plus the last good.
    pub(super) fn prune_history(&mut self, name: &str, changes: &mut ChangeSet) {
        let in_use: std::collections::BTreeSet<u64> =
            self.instances_of(name).map(|i| i.generation).collect();
        let Some(workload) = self.workloads.get_mut(name) else {
            return;
        };
        let last_good = workload.last_good;
        let before = workload.history.len();
        workload
            .history
            .retain(|g, _| in_use.contains(g) || Some(*g) == last_good);
        if workload.history.len() != before {
            changes.insert(StateKey::Workload(name.to_string()));
        }
    }
}
