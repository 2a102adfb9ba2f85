//! Who is in the cluster and who votes. Leader-side rules:
//!
//! - a gateway joins in two steps: `Join` checks the token and registers it
//!   (the state machine hands out its id); once it serves Raft, `AddMember`
//!   adds it as a learner, waits until it has caught up, then
//!   promotes it (with another Ready learner when needed) so that the voters
//!   stay at most `MAX_VOTERS`;
//! - `leave` removes a gateway from the Raft membership, then marks it Left,
//!   then promotes a Ready learner if that brings the voters back up;
//! - a voter lost for `voter_replace_after` is replaced by a Ready learner,
//!   and a joint config left by a cut-short change is finished
//!   (`repair_membership`, `replace_voter`, driven by `control::voters`).
//!
//! openraft's `change_membership` runs joint consensus then the uniform
//! config in one call; we never return between the two.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::time::Instant;

use openraft::{BasicNode, ChangeMembers};

use super::node::ClusterError;
use super::node::{Cluster, JoinArgs, LeaderFailure, LeaderReply};
use super::NodeId;
use crate::state::{Command, NodeStatus, Response};
use crate::trust::Sensitive;

/// Beyond five voters, quorum writes get slower and availability no better;
/// further gateways keep full replicas as learners.
pub const MAX_VOTERS: usize = 5;

/// How long a new gateway may take to catch up before it stays a learner.
pub const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);

fn failed(e: impl std::fmt::Display) -> LeaderFailure {
    LeaderFailure::Failed(e.to_string())
}

/// The key a certificate request asks for, once its signature checks out
/// (a request that fails here changes nothing).
fn csr_key(csr_der: &[u8]) -> Result<gantry_pki::Fingerprint, LeaderFailure> {
    gantry_pki::csr_spki_sha256(csr_der)
        .map_err(|e| LeaderFailure::Refused(format!("bad certificate request: {e}")))
}

impl Cluster {
    pub(crate) async fn join_as_leader(
        &self,
        args: JoinArgs,
    ) -> Result<LeaderReply, LeaderFailure> {
        if !self.is_leader() {
            return Err(LeaderFailure::NotLeader);
        }
        let token_id = {
            let state = self.state().read();
            if state.state.meta.identity.is_none() {
                return Err(failed("the cluster is not initialised yet"));
            }
            crate::trust::tokens::check_join(&state.state, &args.token.0)
                .map_err(LeaderFailure::Refused)?
        };
        // Sign first (a bad request changes nothing), but for the node id the
        // state machine hands out: sign again once it is known.
        let spki = csr_key(&args.csr_der)?;
        let pin = crate::state::NodeTls {
            spki_sha256: spki.to_hex(),
            serial: String::new(),
            not_after_ms: 0,
            previous: None,
        };
        let command = Command::RegisterNode {
            name: args.name.clone(),
            address: args.address.clone(),
            labels: args.labels,
            capacity: args.capacity,
            devices: args.devices,
            tls: Some(pin),
            join_token: Some(token_id),
        };
        let node = match self
            .propose(crate::state::Request::new(self.now_ms(), command))
            .await?
        {
            Response::NodeRegistered { node } => node,
            Response::Rejected { reason } => return Err(LeaderFailure::Refused(reason)),
            other => return Err(failed(format!("unexpected answer {other:?}"))),
        };
        let (issued, ca_certs_der) = {
            let state = self.state().read();
            let issued = crate::trust::issuer::sign_node(
                self.trust().map_err(failed)?,
                &state.state,
                node,
                &args.address,
                &args.csr_der,
            )
            .map_err(failed)?;
            let cas = crate::trust::issuer::ca_certs_der(&state.state).map_err(failed)?;
            (issued, cas)
        };
        // The pin with the certificate's serial and expiry.
        let tls = crate::trust::issuer::node_tls(&issued, None, self.now_ms());
        self.propose(crate::state::Request::new(
            self.now_ms(),
            Command::SetNodeKey { node, tls },
        ))
        .await?;
        tracing::info!(node, name = %args.name, address = %args.address, serial = %issued.serial_hex, "gateway registered");
        Ok(LeaderReply::Joined {
            cluster_id: self.cluster_id().to_string(),
            node,
            cert_der: issued.cert_der,
            ca_certs_der,
        })
    }

    /// Signs `node`'s renewal and pins the new key (the old one stays valid
    /// until its certificate expires); answers once every Ready gateway
    /// applied the pin, so no peer refuses the new certificate.
    pub(crate) async fn renew_as_leader(
        &self,
        node: NodeId,
        csr_der: &[u8],
    ) -> Result<LeaderReply, LeaderFailure> {
        if !self.is_leader() {
            return Err(LeaderFailure::NotLeader);
        }
        let now = self.now_ms();
        let (issued, ca_certs_der, tls) = {
            let state = self.state().read();
            let gateway = state
                .state
                .nodes
                .get(&node)
                .filter(|n| n.status != NodeStatus::Left)
                .ok_or_else(|| {
                    LeaderFailure::Refused(format!("no current gateway with id {node}"))
                })?;
            let issued = crate::trust::issuer::sign_node(
                self.trust().map_err(failed)?,
                &state.state,
                node,
                &gateway.address,
                csr_der,
            )
            .map_err(failed)?;
            let tls = crate::trust::issuer::node_tls(&issued, gateway.tls.as_ref(), now);
            let cas = crate::trust::issuer::ca_certs_der(&state.state).map_err(failed)?;
            (issued, cas, tls)
        };
        let (response, index) = self
            .propose_indexed(crate::state::Request::new(
                now,
                Command::SetNodeKey { node, tls },
            ))
            .await?;
        if let Response::Rejected { reason } = response {
            return Err(LeaderFailure::Refused(reason));
        }
        let lagging = self
            .wait_applied_everywhere(index, std::time::Duration::from_secs(10))
            .await;
        if !lagging.is_empty() {
            tracing::warn!(
                node,
                ?lagging,
                "gateways did not confirm the new key in time"
            );
        }
        tracing::info!(node, serial = %issued.serial_hex, "certificate renewed");
        Ok(LeaderReply::Renewed {
            cert_der: issued.cert_der,
            ca_certs_der,
        })
    }

    pub(crate) async fn add_member_as_leader(
        &self,
        id: NodeId,
    ) -> Result<LeaderReply, LeaderFailure> {
        if !self.is_leader() {
            return Err(LeaderFailure::NotLeader);
        }
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
        let cluster_key = self
            .trust()
            .map_err(failed)?
            .cluster_key()
            .ok_or_else(|| failed("the leader holds no cluster key"))?;
        // Its own admin token (DATA_DIR/admin-token), replacing any earlier one.
        let (admin_token, record) = crate::trust::tokens::new_admin(
            self.trust().map_err(failed)?.ca_pin(),
            crate::state::Role::Admin,
            &format!("{name} (local)"),
            None,
            Some(id),
            self.now_ms(),
        )
        .map_err(failed)?;
        match self
            .propose(crate::state::Request::new(
                self.now_ms(),
                Command::CreateToken { record },
            ))
            .await?
        {
            Response::Ok => {}
            Response::Rejected { reason } => return Err(LeaderFailure::Refused(reason)),
            other => return Err(failed(format!("unexpected answer {other:?}"))),
        }
        let role = self.make_member(id, &address, &name).await?;
        Ok(LeaderReply::Member {
            role,
            cluster_key: Sensitive(cluster_key.to_hex()),
            admin_token: Sensitive(admin_token.to_string()),
        })
    }

    /// Adds `id` as a learner, waits for it to catch up, and promotes it
    /// while there are fewer than `MAX_VOTERS` voters.
    async fn make_member(
        &self,
        id: NodeId,
        address: &str,
        name: &str,
    ) -> Result<String, LeaderFailure> {
        let _guard = self.inner.membership_lock.lock().await;
        if self.voters().contains(&id) {
            return Ok("voter".into());
        }
        if !self.learners().contains(&id) {
            self.raft()
                .add_learner(id, BasicNode::new(address), false)
                .await
                .map_err(failed)?;
            tracing::info!(node = id, %name, "added as learner; waiting for it to catch up");
        }
        self.wait_caught_up(id).await?;
        // This gateway first, then other Ready learners while there is room.
        let mut candidates = vec![id];
        candidates.extend(self.ready_learners().into_iter().filter(|l| *l != id));
        let promote = promotions(self.voters().len(), &candidates);
        if promote.contains(&id) {
            self.raft()
                .change_membership(ChangeMembers::AddVoterIds(promote.clone()), false)
                .await
                .map_err(failed)?;
            tracing::info!(node = id, %name, promoted = ?promote, "promoted to voter");
            return Ok("voter".into());
        }
        Ok("learner".into())
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
        if let Ok(peers) = self.peers() {
            peers.forget(id);
        }
        tracing::info!(node = id, %name, "removed from the Raft membership");
        if self.is_leader() {
            self.promote_learners().await;
        }
        Ok(LeaderReply::Left {
            name: name.to_string(),
        })
    }

    /// Learners whose gateway is Ready, lowest id first.
    fn ready_learners(&self) -> Vec<NodeId> {
        let state = self.state().read();
        self.learners()
            .into_iter()
            .filter(|id| {
                state
                    .state
                    .nodes
                    .get(id)
                    .is_some_and(|n| n.status == NodeStatus::Ready)
            })
            .collect()
    }

    /// Promotes Ready learners towards `MAX_VOTERS` (see `promotions`).
    pub(crate) async fn promote_learners(&self) {
        let _guard = self.inner.membership_lock.lock().await;
        let promote = promotions(self.voters().len(), &self.ready_learners());
        if promote.is_empty() {
            return;
        }
        match self
            .raft()
            .change_membership(ChangeMembers::AddVoterIds(promote.clone()), false)
            .await
        {
            Ok(_) => tracing::info!(promoted = ?promote, "learners promoted to voters"),
            Err(e) => tracing::warn!(error = %e, "could not promote learners"),
        }
    }
}

/// What `Cluster::heal_membership_step` did, for the caller to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipRepair {
    /// A joint config left by a cut-short change was completed.
    FinishedJoint,
    /// A gateway marked Left was still a (learner) member and was removed.
    RemovedLeft(NodeId),
}

impl Cluster {
    /// Leader only: completes what a crash or a leadership change may have
    /// cut short. A joint config (a `change_membership` whose second,
    /// uniform step never committed) is finished by re-issuing its target;
    /// a gateway marked Left that is still a learner is removed.
    pub async fn repair_membership(&self) -> Result<Option<MembershipRepair>, ClusterError> {
        if !self.is_leader() {
            return Ok(None);
        }
        let _guard = self.inner.membership_lock.lock().await;
        if let Some(joint) = self.joint_config() {
            let Some(target) = joint.last().cloned() else {
                return Ok(None);
            };
            tracing::warn!(?joint, "membership is joint; finishing the change");
            self.raft()
                .change_membership(ChangeMembers::ReplaceAllVoters(target), true)
                .await
                .map_err(|e| ClusterError::Raft(e.to_string()))?;
            return Ok(Some(MembershipRepair::FinishedJoint));
        }
        let left = {
            let state = self.state().read();
            self.learners().into_iter().find(|id| {
                state
                    .state
                    .nodes
                    .get(id)
                    .is_some_and(|n| n.status == NodeStatus::Left)
            })
        };
        if let Some(id) = left {
            self.raft()
                .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                .await
                .map_err(|e| ClusterError::Raft(e.to_string()))?;
            return Ok(Some(MembershipRepair::RemovedLeft(id)));
        }
        Ok(None)
    }

    /// Leader only: `learner` (Ready, caught up) becomes a voter, then `dead`
    /// stops voting (it stays a learner, so it can catch up if it returns).
    /// One `change_membership` each, under the membership lock; the voter
    /// count is unchanged. With no learner (`None`), `dead` is only demoted,
    /// which callers do only to turn an even voter count odd.
    pub async fn replace_voter(
        &self,
        dead: NodeId,
        learner: Option<NodeId>,
    ) -> Result<(), ClusterError> {
        let _guard = self.inner.membership_lock.lock().await;
        if !self.is_leader() {
            return Err(ClusterError::Refused("not the leader".into()));
        }
        let voters = self.voters();
        if !voters.contains(&dead) || dead == self.id() {
            return Ok(());
        }
        if let Some(learner) = learner {
            if !self.learners().contains(&learner) {
                return Err(ClusterError::Refused(format!(
                    "gateway {learner} is not a learner"
                )));
            }
            self.raft()
                .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([learner])), false)
                .await
                .map_err(|e| ClusterError::Raft(e.to_string()))?;
            tracing::info!(node = learner, "learner promoted to replace a lost voter");
        }
        self.raft()
            .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([dead])), true)
            .await
            .map_err(|e| ClusterError::Raft(e.to_string()))?;
        tracing::info!(node = dead, "lost voter demoted to learner");
        Ok(())
    }
}

/// Which of `candidates` (in order of preference) to make voters, given
/// `voters` today: as many as bring the count up to `MAX_VOTERS`. Beyond
/// five, quorum writes get slower and availability no better, so further
/// gateways stay learners with full replicas.
pub fn promotions(voters: usize, candidates: &[NodeId]) -> BTreeSet<NodeId> {
    candidates
        .iter()
        .copied()
        .take(MAX_VOTERS.saturating_sub(voters))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn promotions_fill_up_to_five_voters() {
        assert_eq!(promotions(1, &[2]), BTreeSet::from([2]));
        assert_eq!(promotions(3, &[5, 4, 6]), BTreeSet::from([4, 5]));
        assert_eq!(promotions(4, &[6, 7]), BTreeSet::from([6]));
        assert_eq!(promotions(5, &[6, 7]), BTreeSet::new());
        assert_eq!(promotions(2, &[]), BTreeSet::new());
    }
}
