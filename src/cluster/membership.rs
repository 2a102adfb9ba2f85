//! Who is in the cluster and who votes. Leader-side rules:
//!
//! - a gateway joins in two steps: `Join` checks the token and registers it
//!   (the state machine hands out its id); once it serves Raft, `AddMember`
//!   adds it as a learner, waits until it has caught up, then promotes it
//!   while the cluster has fewer than `MAX_VOTERS` voters;
//! - `leave` removes a gateway from the Raft membership, then marks it Left,
//!   then promotes a Ready learner if that brings the voters back up.
//!
//! openraft's `change_membership` runs joint consensus then the uniform
//! config in one call; we never return between the two.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use openraft::{BasicNode, ChangeMembers};

use super::node::{Cluster, JoinArgs, LeaderFailure, LeaderReply};
use super::token::JoinToken;
use super::NodeId;
use crate::state::{Command, NodeStatus, Response};

/// Beyond five voters, quorum writes get slower and availability no better;
/// further gateways keep full replicas as learners.
pub const MAX_VOTERS: usize = 5;

/// How long a new gateway may take to catch up before it stays a learner.
pub const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);

fn failed(e: impl std::fmt::Display) -> LeaderFailure {
    LeaderFailure::Failed(e.to_string())
}

impl Cluster {
    fn check_token(&self, token: &str) -> Result<(), LeaderFailure> {
        let token = JoinToken::parse(token).map_err(LeaderFailure::Refused)?;
        let state = self.state().read();
        let Some(identity) = state.state.meta.identity.as_ref() else {
            return Err(failed("the cluster is not initialised yet"));
        };
        if token.cluster_id != identity.cluster_id {
            return Err(LeaderFailure::Refused(format!(
                "the token is for cluster {}, this is cluster {}",
                token.cluster_id, identity.cluster_id
            )));
        }
        if !token.matches(&identity.cluster_id, &identity.join_secret_sha256) {
            return Err(LeaderFailure::Refused("wrong join token".into()));
        }
        Ok(())
    }

    pub(crate) async fn join_as_leader(
        &self,
        args: JoinArgs,
    ) -> Result<LeaderReply, LeaderFailure> {
        if !self.is_leader() {
            return Err(LeaderFailure::NotLeader);
        }
        self.check_token(&args.token)?;
        let command = Command::RegisterNode {
            name: args.name.clone(),
            address: args.address.clone(),
            labels: args.labels,
            capacity: args.capacity,
            devices: args.devices,
        };
        match self
            .propose(crate::state::Request::new(super::node::now_ms(), command))
            .await?
        {
            Response::NodeRegistered { node } => {
                tracing::info!(node, name = %args.name, address = %args.address, "gateway registered");
                Ok(LeaderReply::Joined {
                    cluster_id: self.cluster_id().to_string(),
                    node,
                })
            }
            Response::Rejected { reason } => Err(LeaderFailure::Refused(reason)),
            other => Err(failed(format!("unexpected answer {other:?}"))),
        }
    }

    pub(crate) async fn add_member_as_leader(
        &self,
        token: &str,
        id: NodeId,
    ) -> Result<LeaderReply, LeaderFailure> {
        if !self.is_leader() {
            return Err(LeaderFailure::NotLeader);
        }
        self.check_token(token)?;
        let (address, name) = {
            let state = self.state().read();
            match state.state.nodes.get(&id) {
                Some(node) if node.status != NodeStatus::Left => {
                    (node.address.clone(), node.name.clone())
                }
                Some(node) => {
                    return Err(LeaderFailure::Refused(format!(
                        "gateway {} has left the cluster",
                        node.name
                    )))
                }
                None => {
                    return Err(LeaderFailure::Refused(format!(
                        "no registered gateway with id {id}"
                    )))
                }
            }
        };
        let _guard = self.inner.membership_lock.lock().await;
        if self.voters().contains(&id) {
            return Ok(LeaderReply::Member {
                role: "voter".into(),
            });
        }
        if !self.learners().contains(&id) {
            self.raft()
                .add_learner(id, BasicNode::new(&address), false)
                .await
                .map_err(failed)?;
            tracing::info!(node = id, %name, "added as learner; waiting for it to catch up");
        }
        self.wait_caught_up(id).await?;
        if self.voters().len() < MAX_VOTERS {
            self.raft()
                .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                .await
                .map_err(failed)?;
            tracing::info!(node = id, %name, "promoted to voter");
            return Ok(LeaderReply::Member {
                role: "voter".into(),
            });
        }
        Ok(LeaderReply::Member {
            role: "learner".into(),
        })
    }

    /// Waits until the leader has replicated to `id` what it had when asked.
    async fn wait_caught_up(&self, id: NodeId) -> Result<(), LeaderFailure> {
        let target = self.metrics().last_log_index.unwrap_or(0);
        let deadline = Instant::now() + CATCH_UP_TIMEOUT;
        loop {
            let metrics = self.metrics();
            let matched = metrics
                .replication
                .as_ref()
                .and_then(|r| r.get(&id).cloned().flatten())
                .map(|log_id| log_id.index);
            if matched.is_some_and(|m| m >= target) {
                return Ok(());
            }
            if metrics.current_leader != Some(self.id()) {
                return Err(LeaderFailure::NotLeader);
            }
            if Instant::now() >= deadline {
                return Err(LeaderFailure::Failed(format!(
                    "gateway {id} did not catch up within {}s (at {:?} of {target}); it stays a learner until it does",
                    CATCH_UP_TIMEOUT.as_secs(),
                    matched
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub(crate) async fn leave_as_leader(&self, name: &str) -> Result<LeaderReply, LeaderFailure> {
        if !self.is_leader() {
            return Err(LeaderFailure::NotLeader);
        }
        // A gateway already marked Left may still be in the Raft membership
        // when an earlier `leave` failed half-way: finish the job.
        let (id, already_left) = {
            let state = self.state().read();
            let nodes = &state.state.nodes;
            let found = state
                .state
                .node_by_name(name)
                .or_else(|| nodes.values().rev().find(|n| n.name == name));
            match found {
                Some(node) => (node.id, node.status == NodeStatus::Left),
                None => {
                    return Err(LeaderFailure::Refused(format!(
                        "no gateway named '{name}' in the cluster"
                    )))
                }
            }
        };
        let voters = self.voters();
        if voters.contains(&id) && voters.len() == 1 {
            return Err(LeaderFailure::Refused(format!(
                "'{name}' is the last voter; it cannot leave"
            )));
        }
        if !already_left {
            // Marked Left first, while the gateway still receives the log: it
            // learns it is leaving, and its instances get a new home at once.
            let status = Command::SetNodeStatus {
                node: id,
                status: NodeStatus::Left,
                reason: Some("left the cluster".into()),
                runtime_down: false,
            };
            // Boxed: `write` may route back into `execute_as_leader`.
            match Box::pin(self.write(status)).await {
                Ok(Response::Rejected { reason }) => return Err(LeaderFailure::Failed(reason)),
                Ok(_) => {}
                Err(e) => return Err(failed(e)),
            }
        }
        let guard = self.inner.membership_lock.lock().await;
        if self.voters().contains(&id) {
            self.raft()
                .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
                .await
                .map_err(failed)?;
        } else if self.learners().contains(&id) {
            self.raft()
                .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                .await
                .map_err(failed)?;
        }
        drop(guard);
        tracing::info!(node = id, %name, "removed from the Raft membership");
        if self.is_leader() {
            self.promote_learners().await;
        }
        Ok(LeaderReply::Left {
            name: name.to_string(),
        })
    }

    /// Promotes Ready learners while voters are fewer than `MAX_VOTERS`.
    pub(crate) async fn promote_learners(&self) {
        let _guard = self.inner.membership_lock.lock().await;
        loop {
            if self.voters().len() >= MAX_VOTERS {
                return;
            }
            let candidate = {
                let state = self.state().read();
                self.learners().into_iter().find(|id| {
                    state
                        .state
                        .nodes
                        .get(id)
                        .is_some_and(|n| n.status == NodeStatus::Ready)
                })
            };
            let Some(id) = candidate else { return };
            match self
                .raft()
                .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                .await
            {
                Ok(_) => tracing::info!(node = id, "learner promoted to voter"),
                Err(e) => {
                    tracing::warn!(node = id, error = %e, "could not promote learner");
                    return;
                }
            }
        }
    }
}
