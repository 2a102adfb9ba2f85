//! Container logs for `gantry logs`: served from the gateway that runs the
//! container, proxied through whichever gateway was asked.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use gantry_proto::v1::{LogChunk, LogsRequest};
use tonic::Status;

use super::NodeRuntime;
use crate::cluster::Cluster;
use crate::state::{NodeId, State};

pub type LogStream = Pin<Box<dyn Stream<Item = Result<LogChunk, Status>> + Send>>;

/// Container ids become file names: only what `desired::container_id` makes.
pub fn valid_container_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Where the log of `workload` (replica, or its lowest replica that ran) is.
pub fn locate(
    state: &State,
    workload: &str,
    replica: Option<u32>,
) -> Result<(NodeId, String), Status> {
    if !state.workloads.contains_key(workload) {
        return Err(Status::not_found(format!("no workload named '{workload}'")));
    }
    let candidates = state
        .instances_of(workload)
        .filter(|i| replica.is_none_or(|r| i.replica == r))
        .filter(|i| i.node.is_some() && i.container_id.is_some());
    let instance = candidates.min_by_key(|i| i.replica).ok_or_else(|| {
        let which = replica
            .map(|r| format!("replica {r} of "))
            .unwrap_or_default();
        Status::not_found(format!("{which}workload '{workload}' has no container yet"))
    })?;
    match (instance.node, instance.container_id.clone()) {
        (Some(node), Some(container)) => Ok((node, container)),
        _ => Err(Status::not_found("no container")),
    }
}

/// The log of a container on this gateway.
pub fn local(node: &NodeRuntime, container_id: &str, follow: bool) -> Result<LogStream, Status> {
    if !valid_container_id(container_id) {
        return Err(Status::invalid_argument(format!(
            "'{container_id}' is not a container id"
        )));
    }
    let rx = gantry_node::logs::stream_log(&node.log_dir, container_id, follow);
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx).map(|item| match item {
        Ok(data) => Ok(LogChunk { data }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(Status::not_found("no log for that container here"))
        }
        Err(e) => Err(Status::internal(format!("cannot read the log: {e}"))),
    });
    Ok(Box::pin(stream))
}

/// The log of a container on another gateway, through its Cluster.Logs.
pub async fn remote(
    cluster: &Cluster,
    node: crate::state::NodeId,
    container_id: String,
    follow: bool,
) -> Result<LogStream, Status> {
    let mut client = cluster.member_client(node).map_err(Status::unavailable)?;
    let request = LogsRequest {
        workload: String::new(),
        replica: None,
        follow,
        cluster_id: cluster.cluster_id().to_string(),
        container_id,
    };
    let stream = client.logs(request).await?.into_inner();
    Ok(Box::pin(stream))
}
