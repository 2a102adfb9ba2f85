//! `gantry image pull`: a pull that someone watches. The node agent pulls
//! on its own when an instance needs an image, and nobody sees its bytes;
//! this verb pulls on request and streams progress documents, sampled from
//! the pull as it runs, so the CLI can draw a bar per gateway.
//!
//! With `--all` the gateway that took the call pulls from the registry
//! first and the others then fetch the image from it over the cluster's
//! own connections: the site's uplink carries each image once.

use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use gantry_node::PullProgress;
use gantry_proto::v1::{JsonDocument, PullImageRequest};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tonic::Status;

use super::images::{fetch_from, ScratchFile};
use super::NodeRuntime;
use crate::cluster::Cluster;
use crate::state::NodeId;

pub type PullStream = Pin<Box<dyn Stream<Item = Result<JsonDocument, Status>> + Send>>;

/// How often a running pull reports its bytes.
const SAMPLE: Duration = Duration::from_millis(250);

/// The normalised reference, or why it is not one.
pub fn check_reference(image: &str) -> Result<String, Status> {
    if image.trim().is_empty() {
        return Err(Status::invalid_argument("give the image to pull"));
    }
    let name = gantry_node::spec::normalize_image_ref(image.trim());
    gantry_node::registry::parse_reference(&name)
        .map_err(|e| Status::invalid_argument(format!("{image}: {e}")))?;
    Ok(name)
}

/// One progress document (the stream's schema, also in gantry.proto).
struct Report<'a> {
    gateway: &'a str,
    image: &'a str,
    source: &'a str,
}

impl Report<'_> {
    fn pulling(&self, bytes: u64, total: Option<u64>) -> Value {
        json!({
            "gateway": self.gateway, "image": self.image, "source": self.source,
            "phase": "pulling", "bytes": bytes, "total": total,
            "digest": null, "downloaded_bytes": null, "error": null,
        })
    }

    fn done(&self, bytes: u64, digest: &str, downloaded: u64) -> Value {
        json!({
            "gateway": self.gateway, "image": self.image, "source": self.source,
            "phase": "done", "bytes": bytes, "total": bytes,
            "digest": digest, "downloaded_bytes": downloaded, "error": null,
        })
    }

    fn failed(&self, error: &str) -> Value {
        json!({
            "gateway": self.gateway, "image": self.image, "source": self.source,
            "phase": "failed", "bytes": 0, "total": null,
            "digest": null, "downloaded_bytes": null, "error": error,
        })
    }
}

/// The name this gateway has in the replicated state.
fn name_of(cluster: &Cluster, id: NodeId) -> String {
    let applied = cluster.state().read();
    applied
        .state
        .nodes
        .get(&id)
        .map(|n| n.name.clone())
        .unwrap_or_else(|| id.to_string())
}

/// Pulls `image` onto this gateway, from the registry or (`from`) from a
/// peer gateway, sending progress documents to the returned receiver and
/// ending with one `done` or `failed`. The pull carries on if the caller
/// goes away: a half-written pull is cleaned up by the pull itself, not by
/// dropping it.
pub fn local(
    node: &NodeRuntime,
    cluster: &Cluster,
    image: String,
    from: Option<NodeId>,
) -> mpsc::Receiver<Value> {
    let (tx, rx) = mpsc::channel(16);
    let node = node.clone();
    let cluster = cluster.clone();
    tokio::spawn(async move {
        let gateway = name_of(&cluster, cluster.id());
        let source = match from {
            Some(peer) => name_of(&cluster, peer),
            None => "registry".to_string(),
        };
        let report = Report {
            gateway: &gateway,
            image: &image,
            source: &source,
        };
        let stats = cluster.telemetry().images.clone();
        let progress = Arc::new(PullProgress::default());
        let scratch = ScratchFile(
            node.scratch_dir
                .join(format!("pull-{:016x}.tar", rand::random::<u64>())),
        );
        let work = async {
            match from {
                None => {
                    let pulled = node
                        .runtime
                        .pull_with_progress(&image, &node.registry, progress.clone())
                        .await;
                    match pulled {
                        Ok(i) => {
                            stats.registry_pulls.fetch_add(1, Ordering::Relaxed);
                            stats
                                .registry_bytes
                                .fetch_add(i.downloaded_bytes, Ordering::Relaxed);
                            Ok((i.digest, i.downloaded_bytes))
                        }
                        Err(e) => {
                            stats.registry_failures.fetch_add(1, Ordering::Relaxed);
                            Err(e.to_string())
                        }
                    }
                }
                Some(peer) => {
                    let (digest, bytes) = from_peer(&node, &cluster, peer, &image, &scratch.0)
                        .await
                        .map_err(|e| format!("from {source}: {e}"))?;
                    stats.peer_fetches.fetch_add(1, Ordering::Relaxed);
                    stats.peer_bytes.fetch_add(bytes, Ordering::Relaxed);
                    Ok((digest, bytes))
                }
            }
        };
        tokio::pin!(work);
        let mut tick = tokio::time::interval(SAMPLE);
        let mut last = None;
        let outcome = loop {
            tokio::select! {
                outcome = &mut work => break outcome,
                _ = tick.tick() => {
                    let (bytes, total) = match from {
                        None => (progress.done(), Some(progress.total()).filter(|t| *t > 0)),
                        // An archive's size is known only once it is written.
                        Some(_) => (file_len(&scratch.0).await, None),
                    };
                    if last != Some(bytes) {
                        last = Some(bytes);
                        let _ = tx.send(report.pulling(bytes, total)).await;
                    }
                }
            }
        };
        let last_doc = match outcome {
            Ok((digest, downloaded)) => {
                let bytes = match from {
                    None => progress.total(),
                    Some(_) => downloaded,
                };
                tracing::info!(image = %image, source = %source, %digest, downloaded, "image pulled on request");
                report.done(bytes, &digest, downloaded)
            }
            Err(error) => {
                tracing::warn!(image = %image, source = %source, %error, "image pull failed");
                report.failed(&error)
            }
        };
        let _ = tx.send(last_doc).await;
    });
    rx
}

async fn file_len(path: &Path) -> u64 {
    tokio::fs::metadata(path)
        .await
        .map(|m| m.len())
        .unwrap_or(0)
}

/// Fetches `image` as an archive from `peer` and imports it; its digest
/// and the archive's bytes.
async fn from_peer(
    node: &NodeRuntime,
    cluster: &Cluster,
    peer: NodeId,
    image: &str,
    dest: &Path,
) -> Result<(String, u64), String> {
    if !fetch_from(cluster, peer, image, dest).await? {
        return Err(format!("the gateway does not hold {image}"));
    }
    let bytes = file_len(dest).await;
    let imported = node
        .runtime
        .import_archive(dest)
        .await
        .map_err(|e| e.to_string())?;
    imported
        .into_iter()
        .find(|i| i.name == image)
        .map(|i| (i.digest, bytes))
        .ok_or_else(|| format!("the archive did not hold {image}"))
}

/// Asks gateway `id` to pull `image` from `from` and relays its progress
/// documents; a gateway that cannot be reached ends in one `failed`.
pub fn remote(cluster: &Cluster, id: NodeId, image: String, from: NodeId) -> mpsc::Receiver<Value> {
    let (tx, rx) = mpsc::channel(16);
    let cluster = cluster.clone();
    tokio::spawn(async move {
        let gateway = name_of(&cluster, id);
        let source = name_of(&cluster, from);
        let report = Report {
            gateway: &gateway,
            image: &image,
            source: &source,
        };
        let request = PullImageRequest {
            image: image.clone(),
            all: false,
            cluster_id: cluster.cluster_id().to_string(),
            from_node: from,
        };
        let stream = match cluster.member_client(id) {
            Ok(mut client) => client
                .pull_image(request)
                .await
                .map(|r| r.into_inner())
                .map_err(|s| s.message().to_string()),
            Err(e) => Err(e),
        };
        let mut stream = match stream {
            Ok(stream) => stream,
            Err(error) => {
                let _ = tx.send(report.failed(&error)).await;
                return;
            }
        };
        let mut ended = false;
        loop {
            match stream.message().await {
                Ok(Some(doc)) => {
                    let Ok(value) = serde_json::from_str::<Value>(&doc.json) else {
                        continue;
                    };
                    ended = matches!(value["phase"].as_str(), Some("done" | "failed"));
                    if tx.send(value).await.is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(status) => {
                    let _ = tx.send(report.failed(status.message())).await;
                    return;
                }
            }
        }
        if !ended {
            let _ = tx
                .send(report.failed("the gateway ended the pull without a verdict"))
                .await;
        }
    });
    rx
}

/// Admin.PullImage: this gateway first, then (with `all`) every other
/// gateway at once, each fetching from this one.
pub fn serve(node: &NodeRuntime, cluster: &Cluster, image: String, all: bool) -> PullStream {
    let (tx, rx) = mpsc::channel::<Result<JsonDocument, Status>>(32);
    let node = node.clone();
    let cluster = cluster.clone();
    tokio::spawn(async move {
        let me = cluster.id();
        let mut pulled_here = false;
        let mut here = local(&node, &cluster, image.clone(), None);
        while let Some(doc) = here.recv().await {
            pulled_here |= doc["phase"] == "done";
            if tx.send(Ok(crate::api::json_document(&doc))).await.is_err() {
                return;
            }
        }
        if !all {
            return;
        }
        let others: Vec<NodeId> = {
            let applied = cluster.state().read();
            applied
                .state
                .nodes
                .values()
                .filter(|n| n.id != me && n.status != crate::state::NodeStatus::Left)
                .map(|n| n.id)
                .collect()
        };
        if !pulled_here {
            for id in others {
                let gateway = name_of(&cluster, id);
                let source = name_of(&cluster, me);
                let skipped = Report {
                    gateway: &gateway,
                    image: &image,
                    source: &source,
                }
                .failed("not attempted: the pull from the registry failed");
                let _ = tx.send(Ok(crate::api::json_document(&skipped))).await;
            }
            return;
        }
        let streams = others.into_iter().map(|id| {
            tokio_stream::wrappers::ReceiverStream::new(remote(&cluster, id, image.clone(), me))
        });
        let mut merged = futures::stream::select_all(streams);
        while let Some(doc) = merged.next().await {
            if tx.send(Ok(crate::api::json_document(&doc))).await.is_err() {
                return;
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// Cluster.PullImage: this gateway alone, as the admin's gateway asked.
pub fn serve_member(node: &NodeRuntime, cluster: &Cluster, image: String, from: u64) -> PullStream {
    let rx = local(node, cluster, image, (from != 0).then_some(from));
    Box::pin(
        tokio_stream::wrappers::ReceiverStream::new(rx)
            .map(|doc| Ok(crate::api::json_document(&doc))),
    )
}
