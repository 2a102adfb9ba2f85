//! The reconcile decision as a pure function: desired + actual + what the
//! agent remembers -> steps, so every rule is unit-testable without I/O.

use crate::runtime::{ActualContainer, TaskState};
use crate::spec::{ContainerSpec, PullPolicy, RestartPolicy};
use std::collections::{BTreeMap, HashMap, HashSet};
// tokio's clock, so that a paused or simulated runtime drives back-off.
use tokio::time::Instant;

/// One instance that should run here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredInstance {
    pub spec: ContainerSpec,
    pub restart: RestartPolicy,
    /// When to fetch the image; `if-not-present` by default.
    pub pull: PullPolicy,
    /// Must not run here (a singleton moving away, or a copy of a deleted
    /// one): removed if present, never started, and reported Exited once
    /// the slot is empty and idle, which is what lets the leader place it
    /// elsewhere. Only `spec`'s id, workload, replica and generation count.
    pub stop: bool,
    /// The caller's tag for this stop, echoed in every report the agent
    /// makes about the slot while it holds: the caller can tell a report
    /// made under this stop from one made under an earlier one that was
    /// cancelled (gantry: `Instance::stop_mark`).
    pub stop_mark: Option<u64>,
    /// Kept if it runs, never started or restarted: the caller cannot vouch
    /// yet that it should run here (a gateway whose replica has not caught
    /// up since the daemon started). A running copy is adopted as usual.
    pub hold: bool,
}

impl DesiredInstance {
    /// An instance with the default pull policy (`if-not-present`).
    pub fn new(spec: ContainerSpec, restart: RestartPolicy) -> Self {
        DesiredInstance {
            spec,
            restart,
            pull: PullPolicy::default(),
            stop: false,
            stop_mark: None,
            hold: false,
        }
    }

    /// Whether the agent may start (or restart) it.
    pub fn may_start(&self) -> bool {
        !self.stop && !self.hold
    }
}

/// An instance slot: a workload's replica, whatever its generation.
pub type InstanceKey = (String, u32);

/// The agent's memory about one container id.
#[derive(Debug, Clone, Default)]
pub struct Book {
    /// A restart is scheduled at this time (back-off after an exit).
    pub restart_at: Option<Instant>,
    /// Creating this container failed; do not retry before this time.
    pub retry_start_at: Option<Instant>,
}

/// One runtime operation, in the order it must happen for its slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Stop and remove a container that is not wanted (any more).
    Remove { container_id: String },
    /// Create and start a wanted container.
    Start { spec: Box<ContainerSpec> },
    /// Start a new task in a container whose task ended.
    Restart { container_id: String, restarts: u32 },
    /// The task exited and policy wants it back: compute the back-off.
    ScheduleRestart {
        container_id: String,
        exit_code: i32,
    },
}

/// Steps for one slot; the agent runs a slot's steps in order, so an old
/// generation is gone before the new one starts (host networking would
/// make them fight over ports).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotPlan {
    pub key: InstanceKey,
    pub steps: Vec<Step>,
}

fn key_of(spec: &ContainerSpec) -> InstanceKey {
    (spec.workload.clone(), spec.replica)
}

/// Decides what to do; slots in `busy` (an operation in flight) are left
/// alone until it finishes.
pub fn decide(
    desired: &[DesiredInstance],
    actual: &[ActualContainer],
    books: &HashMap<String, Book>,
    busy: &HashSet<InstanceKey>,
    now: Instant,
) -> Vec<SlotPlan> {
    let mut wanted: BTreeMap<InstanceKey, &DesiredInstance> = BTreeMap::new();
    for d in desired.iter().filter(|d| !d.stop) {
        wanted.insert(key_of(&d.spec), d);
    }
    let mut present: BTreeMap<InstanceKey, Vec<&ActualContainer>> = BTreeMap::new();
    for c in actual {
        present
            .entry((c.workload.clone(), c.replica))
            .or_default()
            .push(c);
    }
    let keys: std::collections::BTreeSet<InstanceKey> =
        wanted.keys().chain(present.keys()).cloned().collect();
    let mut plans = Vec::new();
    for key in keys {
        if busy.contains(&key) {
            continue;
        }
        let want = wanted.get(&key).copied();
        let have = present.get(&key).map(Vec::as_slice).unwrap_or(&[]);
        let steps = decide_slot(want, have, books, now);
        if !steps.is_empty() {
            plans.push(SlotPlan { key, steps });
        }
    }
    plans
}

fn decide_slot(
    want: Option<&DesiredInstance>,
    have: &[&ActualContainer],
    books: &HashMap<String, Book>,
    now: Instant,
) -> Vec<Step> {
    let is_current = |c: &ActualContainer| {
        want.is_some_and(|d| d.spec.id == c.id && d.spec.generation == c.generation)
    };
    let mut steps: Vec<Step> = have
        .iter()
        .filter(|c| !is_current(c))
        .map(|c| Step::Remove {
            container_id: c.id.clone(),
        })
        .collect();
    let Some(want) = want else { return steps };
    let current = have.iter().find(|c| is_current(c));
    if want.hold {
        return steps;
    }
    let book = books.get(&want.spec.id);
    match current {
        None => {
            let blocked = book.and_then(|b| b.retry_start_at).is_some_and(|t| now < t);
            if !blocked {
                steps.push(Step::Start {
                    spec: Box::new(want.spec.clone()),
                });
            }
        }
        Some(c) => match c.task {
            TaskState::Running | TaskState::Paused | TaskState::Unknown => {}
            // Created-but-not-started or task gone: an interrupted start.
            TaskState::Created | TaskState::Missing => steps.push(Step::Restart {
                container_id: c.id.clone(),
                restarts: c.restarts,
            }),
            TaskState::Exited { code } => {
                if want.restart.wants_restart(code) {
                    match book.and_then(|b| b.restart_at) {
                        None => steps.push(Step::ScheduleRestart {
                            container_id: c.id.clone(),
                            exit_code: code,
                        }),
                        Some(at) if now >= at => steps.push(Step::Restart {
                            container_id: c.id.clone(),
                            restarts: c.restarts + 1,
                        }),
                        Some(_) => {}
                    }
                }
            }
        },
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn want(id: &str, w: &str, gen: u64, restart: RestartPolicy) -> DesiredInstance {
        DesiredInstance::new(ContainerSpec::new(id, w, 0, gen, "img"), restart)
    }

    fn have(id: &str, w: &str, gen: u64, task: TaskState) -> ActualContainer {
        ActualContainer {
            id: id.into(),
            workload: w.into(),
            replica: 0,
            generation: gen,
            image: "img".into(),
            restarts: 2,
            task,
            pid: Some(7),
        }
    }

    fn steps(plans: &[SlotPlan]) -> Vec<Step> {
        plans.iter().flat_map(|p| p.steps.clone()).collect()
    }

    #[test]
    fn missing_instance_is_started_and_unwanted_removed() {
        let now = Instant::now();
        let d = [want("a-g1", "a", 1, RestartPolicy::Always)];
        let a = [have("b-g1", "b", 1, TaskState::Running)];
        let plans = decide(&d, &a, &HashMap::new(), &HashSet::new(), now);
        assert_eq!(
            steps(&plans),
            vec![
                Step::Start {
                    spec: Box::new(d[0].spec.clone())
                },
                Step::Remove {
                    container_id: "b-g1".into()
                }
            ]
        );
    }

    #[test]
    fn running_instance_is_adopted_untouched() {
        let now = Instant::now();
        let d = [want("a-g1", "a", 1, RestartPolicy::Always)];
        let a = [have("a-g1", "a", 1, TaskState::Running)];
        assert!(decide(&d, &a, &HashMap::new(), &HashSet::new(), now).is_empty());
    }

    #[test]
    fn new_generation_replaces_old_in_order() {
        let now = Instant::now();
        let d = [want("a-g2", "a", 2, RestartPolicy::Always)];
        let a = [have("a-g1", "a", 1, TaskState::Running)];
        let plans = decide(&d, &a, &HashMap::new(), &HashSet::new(), now);
        assert_eq!(plans.len(), 1);
        assert_eq!(
            plans[0].steps,
            vec![
                Step::Remove {
                    container_id: "a-g1".into()
                },
                Step::Start {
                    spec: Box::new(d[0].spec.clone())
                }
            ]
        );
    }

    #[test]
    fn exits_follow_policy_and_back_off() {
        let now = Instant::now();
        let exited = [have("a-g1", "a", 1, TaskState::Exited { code: 0 })];
        let never = [want("a-g1", "a", 1, RestartPolicy::Never)];
        let on_failure = [want("a-g1", "a", 1, RestartPolicy::OnFailure)];
        let always = [want("a-g1", "a", 1, RestartPolicy::Always)];
        let none = HashMap::new();
        let idle = HashSet::new();
        assert!(decide(&never, &exited, &none, &idle, now).is_empty());
        assert!(decide(&on_failure, &exited, &none, &idle, now).is_empty());
        assert_eq!(
            steps(&decide(&always, &exited, &none, &idle, now)),
            vec![Step::ScheduleRestart {
                container_id: "a-g1".into(),
                exit_code: 0
            }]
        );
        let later = HashMap::from([(
            "a-g1".to_string(),
            Book {
                restart_at: Some(now + Duration::from_secs(5)),
                ..Default::default()
            },
        )]);
        assert!(decide(&always, &exited, &later, &idle, now).is_empty());
        assert_eq!(
            steps(&decide(
                &always,
                &exited,
                &later,
                &idle,
                now + Duration::from_secs(5)
            )),
            vec![Step::Restart {
                container_id: "a-g1".into(),
                restarts: 3
            }]
        );
        let failed = [have("a-g1", "a", 1, TaskState::Exited { code: 1 })];
        assert_eq!(decide(&on_failure, &failed, &none, &idle, now).len(), 1);
    }

    #[test]
    fn failed_start_waits_for_its_retry_time_and_busy_slots_wait() {
        let now = Instant::now();
        let d = [want("a-g1", "a", 1, RestartPolicy::Always)];
        let books = HashMap::from([(
            "a-g1".to_string(),
            Book {
                retry_start_at: Some(now + Duration::from_secs(1)),
                ..Default::default()
            },
        )]);
        assert!(decide(&d, &[], &books, &HashSet::new(), now).is_empty());
        assert_eq!(
            decide(
                &d,
                &[],
                &books,
                &HashSet::new(),
                now + Duration::from_secs(1)
            )
            .len(),
            1
        );
        let busy = HashSet::from([("a".to_string(), 0)]);
        assert!(decide(&d, &[], &HashMap::new(), &busy, now).is_empty());
    }

    #[test]
    fn a_held_instance_is_kept_but_never_started() {
        let now = Instant::now();
        let held = [DesiredInstance {
            hold: true,
            ..want("a-g2", "a", 2, RestartPolicy::Always)
        }];
        let none = HashMap::new();
        let idle = HashSet::new();
        assert!(decide(&held, &[], &none, &idle, now).is_empty());
        let running = [have("a-g2", "a", 2, TaskState::Running)];
        assert!(decide(&held, &running, &none, &idle, now).is_empty());
        let exited = [have("a-g2", "a", 2, TaskState::Exited { code: 1 })];
        assert!(decide(&held, &exited, &none, &idle, now).is_empty());
        // An older generation still goes.
        let old = [have("a-g1", "a", 1, TaskState::Running)];
        assert_eq!(
            steps(&decide(&held, &old, &none, &idle, now)),
            vec![Step::Remove {
                container_id: "a-g1".into()
            }]
        );
    }

    #[test]
    fn interrupted_start_is_completed_without_counting_a_restart() {
        let now = Instant::now();
        let d = [want("a-g1", "a", 1, RestartPolicy::Never)];
        let a = [have("a-g1", "a", 1, TaskState::Missing)];
        assert_eq!(
            steps(&decide(&d, &a, &HashMap::new(), &HashSet::new(), now)),
            vec![Step::Restart {
                container_id: "a-g1".into(),
                restarts: 2
            }]
        );
    }
}
