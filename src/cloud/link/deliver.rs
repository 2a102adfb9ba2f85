//! One delivery from the hub: decoded, committed through Raft, and only then
//! answered. The order is the contract: the hub treats an acknowledged
//! revision as the site's for good (it resumes after it), so an Ack sent
//! before the commit is a revision the site may never have had. The
//! simulation drives this same code with a simulated hub, which is why it
//! is apart from the gRPC session.

use gantry_proto::hub::v1::site_message::Msg as Out;
use gantry_proto::hub::v1::{Ack, Desired, Reject};

use super::session::SessionEnd;
use super::write_as_leader;
use crate::cluster::Cluster;
use crate::state::spec::WorkloadSpec;
use crate::state::{Command, Response};

/// Where the site's answers go: the gRPC stream, or a simulated hub.
#[async_trait::async_trait]
pub trait Upstream: Send {
    async fn send(&mut self, msg: Out) -> Result<(), SessionEnd>;
}

/// What became of one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivered {
    /// Committed now (`applied`) or found committed before (a redelivery);
    /// acknowledged either way.
    Committed { revision: u64, applied: bool },
    /// Refused as a whole, and said so.
    Rejected { revision: u64, error: String },
}

/// Deliberate breakage for the simulation's mutation checks; nothing in
/// the daemon's configuration reaches these switches.
pub mod mutation {
    use std::cell::Cell;

    thread_local! {
        static ACK_BEFORE_COMMIT: Cell<bool> = const { Cell::new(false) };
    }

    /// Acknowledge a delivery before committing it.
    pub fn set_ack_before_commit(on: bool) {
        ACK_BEFORE_COMMIT.with(|c| c.set(on));
    }

    pub(super) fn ack_before_commit() -> bool {
        ACK_BEFORE_COMMIT.with(|c| c.get())
    }
}

/// Decodes a delivery into specs, refusing it as a whole on any error
/// (public for the `proto` fuzz target).
pub fn decode(desired: &Desired) -> Result<Vec<WorkloadSpec>, String> {
    desired
        .upserts
        .iter()
        .map(|doc| {
            let spec: WorkloadSpec = serde_json::from_str(&doc.spec_json)
                .map_err(|e| format!("workload '{}': {e}", doc.name))?;
            if spec.name != doc.name {
                return Err(format!(
                    "workload '{}': the spec is named '{}'",
                    doc.name, spec.name
                ));
            }
            spec.validate()
                .map_err(|e| format!("workload '{}': {}", doc.name, e.0))?;
            Ok(spec)
        })
        .collect()
}

/// Commits `desired` as one Raft write (the state machine applies a
/// revision at most once) and then answers the hub. An error ends the
/// session: nothing was acknowledged, so the next leader's Hello resumes
/// from the committed revision.
pub async fn deliver(
    cluster: &Cluster,
    up: &mut impl Upstream,
    desired: Desired,
    attachment: u64,
) -> Result<Delivered, SessionEnd> {
    let revision = desired.revision;
    let upserts = match decode(&desired) {
        Ok(specs) => specs,
        Err(error) => {
            tracing::warn!(revision, error = %error, "refusing a malformed cloud revision as a whole");
            up.send(Out::Reject(Reject {
                revision,
                error: error.clone(),
            }))
            .await?;
            return Ok(Delivered::Rejected { revision, error });
        }
    };
    let early = mutation::ack_before_commit();
    if early {
        up.send(Out::Ack(Ack { revision })).await?;
    }
    let command = Command::ApplyCloudRevision {
        revision,
        full: desired.full,
        upserts,
        deletes: desired.deletes,
        epoch: desired.epoch,
        attachment: Some(attachment),
    };
    match write_as_leader(cluster, command).await? {
        Response::CloudRevision {
            applied, refused, ..
        } => {
            if applied {
                tracing::info!(
                    revision,
                    full = desired.full,
                    refused = refused.len(),
                    "committed cloud revision"
                );
                super::session::exit_if_hooked(revision);
            } else {
                tracing::info!(
                    revision,
                    "cloud revision already committed; acknowledging it again"
                );
            }
            if !early {
                up.send(Out::Ack(Ack { revision })).await?;
            }
            Ok(Delivered::Committed { revision, applied })
        }
        // A new `cloud attach` replaced this link: it says nothing more.
        Response::Rejected { reason } if reason == crate::state::cloud::STALE_LINK => {
            Err(SessionEnd::Failed(reason))
        }
        Response::Rejected { reason } => {
            tracing::warn!(revision, reason = %reason, "the state machine refused a cloud revision");
            up.send(Out::Reject(Reject {
                revision,
                error: reason.clone(),
            }))
            .await?;
            Ok(Delivered::Rejected {
                revision,
                error: reason,
            })
        }
        other => Err(SessionEnd::Failed(format!("unexpected answer {other:?}"))),
    }
}
