//! Voter healing, on the leader: finishes membership changes a crash cut
//! short, and replaces a voter that has been NotReady for
//! `voter_replace_after` by a Ready learner, so that one dead gateway does
//! not leave the cluster one failure away from losing its quorum.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::fencing;
use crate::cluster::membership::MembershipRepair;
use crate::cluster::{Cluster, NodeId};
use crate::state::{Command, NodeStatus, State};

const TICK: Duration = Duration::from_secs(1);

/// A membership change to make: demote `dead`, promoting `learner` if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replacement {
    pub dead: NodeId,
    pub learner: Option<NodeId>,
}

/// The pure decision. A voter is lost when NotReady for
/// `voter_replace_after`, counted from no earlier than the end of this
/// leader's settling window. It is replaced by the lowest-id Ready learner;
/// with no learner, it is only demoted when that turns an even number of
/// voters odd (4 voters with one dead tolerate no further failure, the 3
/// live ones alone tolerate one). The leader never replaces itself.
pub fn pick_replacement(
    state: &State,
    me: NodeId,
    voters: &BTreeSet<NodeId>,
    learners: &BTreeSet<NodeId>,
    now_ms: u64,
    leading_since_ms: u64,
) -> Option<Replacement> {
    let settings = &state.meta.settings;
    // 0: a dry run or a test, with no settling window.
    let settled_at = match leading_since_ms {
        0 => 0,
        since => since + fencing::leader_settle(settings).as_millis() as u64,
    };
    let wait = settings.voter_replace_after.0.as_millis() as u64;
    let dead = voters.iter().copied().find(|id| {
        *id != me
            && state.nodes.get(id).is_some_and(|n| {
                let since = n.since_ms.max(settled_at);
                n.status == NodeStatus::NotReady && now_ms >= since && now_ms - since >= wait
            })
    })?;
    let learner = learners.iter().copied().find(|id| {
        state
            .nodes
            .get(id)
            .is_some_and(|n| n.status == NodeStatus::Ready)
    });
    match learner {
        Some(l) => Some(Replacement {
            dead,
            learner: Some(l),
        }),
        None if voters.len().is_multiple_of(2) && voters.len() > 2 => Some(Replacement {
            dead,
            learner: None,
        }),
        None => None,
    }
}

fn name(cluster: &Cluster, id: NodeId) -> String {
    cluster
        .state()
        .read()
        .state
        .nodes
        .get(&id)
        .map(|n| n.name.clone())
        .unwrap_or_else(|| format!("id {id}"))
}

async fn record(cluster: &Cluster, message: String) {
    tracing::info!(%message, "membership healed");
    let command = Command::RecordEvent {
        kind: "voter-replaced".into(),
        message,
    };
    if let Err(e) = cluster.write_if_leader(command).await {
        tracing::warn!(error = %e, "could not record the membership event");
    }
}

pub async fn run(cluster: Cluster, shutdown: CancellationToken) {
    let mut leading_since: Option<u64> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(TICK) => {}
        }
        if !cluster.is_leader() {
            leading_since = None;
            continue;
        }
        let since = *leading_since.get_or_insert_with(|| cluster.now_ms());
        match cluster.repair_membership().await {
            Ok(Some(MembershipRepair::FinishedJoint)) => {
                record(&cluster, "finished a cut-short membership change".into()).await;
                continue;
            }
            Ok(Some(MembershipRepair::RemovedLeft(id))) => {
                let message = format!(
                    "gateway {} (left) removed from the membership",
                    name(&cluster, id)
                );
                record(&cluster, message).await;
                continue;
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "could not repair the membership");
                continue;
            }
        }
        let choice = {
            let guard = cluster.state().read();
            pick_replacement(
                &guard.state,
                cluster.id(),
                &cluster.voters(),
                &cluster.learners(),
                cluster.now_ms(),
                since,
            )
        };
        let Some(Replacement { dead, learner }) = choice else {
            continue;
        };
        match cluster.replace_voter(dead, learner).await {
            Ok(()) => {
                let message = match learner {
                    Some(l) => format!(
                        "voter {} replaced by {}",
                        name(&cluster, dead),
                        name(&cluster, l)
                    ),
                    None => format!(
                        "voter {} demoted to learner (keeps an odd number of voters)",
                        name(&cluster, dead)
                    ),
                };
                record(&cluster, message).await;
            }
            Err(e) => tracing::warn!(node = dead, error = %e, "could not replace a lost voter"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Capacity, ChangeSet, ClusterSettings, Request};

    fn state_with(statuses: &[NodeStatus]) -> State {
        let mut state = State::default();
        let mut apply = |at, command| {
            state.apply(&Request::new(at, command), &mut ChangeSet::new());
        };
        apply(
            1,
            Command::InitCluster {
                cluster_id: "c".into(),
                settings: ClusterSettings::default(),
                pki: crate::state::trust::fixtures::pki(),
                join_token: crate::state::trust::fixtures::join_token("0a"),
            },
        );
        for (i, status) in statuses.iter().enumerate() {
            apply(
                1,
                Command::RegisterNode {
                    name: format!("gw-{i}"),
                    address: format!("127.0.0.1:{i}"),
                    labels: Default::default(),
                    capacity: Capacity::default(),
                    devices: Default::default(),
                    tls: Some(crate::state::trust::fixtures::tls()),
                    join_token: None,
                },
            );
            apply(
                1_000,
                Command::SetNodeStatus {
                    node: i as u64 + 1,
                    status: *status,
                    reason: None,
                    runtime_down: false,
                },
            );
        }
        state
    }

    #[test]
    fn replaces_a_long_lost_voter_by_a_ready_learner() {
        use NodeStatus::*;
        let state = state_with(&[Ready, NotReady, Ready, Ready]);
        let voters = BTreeSet::from([1, 2, 3]);
        let learners = BTreeSet::from([4]);
        // 30 s default: not yet at 20 s, yes at 31 s.
        assert_eq!(
            pick_replacement(&state, 1, &voters, &learners, 21_000, 0),
            None
        );
        assert_eq!(
            pick_replacement(&state, 1, &voters, &learners, 31_000, 0),
            Some(Replacement {
                dead: 2,
                learner: Some(4)
            })
        );
        // A leader that just took over waits out its settling window too.
        assert_eq!(
            pick_replacement(&state, 1, &voters, &learners, 31_000, 30_000),
            None
        );
        // No learner and three voters: nothing to gain.
        assert_eq!(
            pick_replacement(&state, 1, &voters, &BTreeSet::new(), 31_000, 0),
            None
        );
        // Four voters, one lost, no learner: demote it to make three.
        let four = BTreeSet::from([1, 2, 3, 4]);
        assert_eq!(
            pick_replacement(&state, 1, &four, &BTreeSet::new(), 31_000, 0),
            Some(Replacement {
                dead: 2,
                learner: None
            })
        );
        // The leader never replaces itself.
        assert_eq!(
            pick_replacement(&state, 2, &voters, &learners, 31_000, 0),
            None
        );
    }
}
