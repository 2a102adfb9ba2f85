//! Layer unpacking into the snapshotter (Go `rootfs.ApplyLayers`) and image
//! resolution for container creation.

use super::content::{create_lease, delete_lease, read_blob, update_labels};
use super::{status_error, ContainerdRuntime, Svc, SNAPSHOTTER};
use crate::image::{
    is_index, is_manifest, pick_platform, Descriptor, ImageConfig, Index, Manifest, RunConfig,
};
use crate::runtime::RuntimeError;
use crate::spec::normalize_image_ref;
use containerd_client::services::v1::diff_client::DiffClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::{ApplyRequest, GetImageRequest};
use containerd_client::types::Descriptor as PbDescriptor;
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};
use tonic::Code;

/// Layers to apply in order, with the uncompressed digests the config
/// promises for them.
pub(crate) struct UnpackPlan {
    pub layers: Vec<Descriptor>,
    pub diff_ids: Vec<String>,
}

/// What container creation needs from an image.
pub(crate) struct ResolvedImage {
    pub name: String,
    pub config: RunConfig,
    pub chain_id: String,
}

/// OCI identity.ChainID for every prefix of the layer stack.
pub(crate) fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for diff in diff_ids {
        let next = match out.last() {
            None => diff.clone(),
            Some(parent) => format!(
                "sha256:{}",
                hex::encode(Sha256::digest(format!("{parent} {diff}").as_bytes()))
            ),
        };
        out.push(next);
    }
    out
}

fn snapshots(svc: Svc) -> SnapshotsClient<Svc> {
    SnapshotsClient::new(svc)
}

pub(crate) async fn snapshot_exists(svc: Svc, key: &str) -> Result<bool, RuntimeError> {
    match snapshots(svc)
        .stat(StatSnapshotRequest {
            snapshotter: SNAPSHOTTER.to_string(),
            key: key.to_string(),
        })
        .await
    {
        Ok(_) => Ok(true),
        Err(s) if s.code() == Code::NotFound => Ok(false),
        Err(s) => Err(status_error("stat snapshot", s)),
    }
}

pub(crate) async fn remove_snapshot(svc: Svc, key: &str) -> Result<(), RuntimeError> {
    match snapshots(svc)
        .remove(RemoveSnapshotRequest {
            snapshotter: SNAPSHOTTER.to_string(),
            key: key.to_string(),
        })
        .await
    {
        Ok(_) => Ok(()),
        Err(s) if s.code() == Code::NotFound => Ok(()),
        Err(s) => Err(status_error("remove snapshot", s)),
    }
}

/// Applies each missing layer on top of its parent and commits it under
/// its chain id; returns the top chain id. `svc` must carry a lease.
pub(crate) async fn unpack_layers(
    rt: &ContainerdRuntime,
    svc: Svc,
    plan: &UnpackPlan,
) -> Result<String, RuntimeError> {
    let chains = chain_ids(&plan.diff_ids);
    for (i, layer) in plan.layers.iter().enumerate() {
        let chain = &chains[i];
        if snapshot_exists(svc.clone(), chain).await? {
            continue;
        }
        let parent = if i == 0 {
            String::new()
        } else {
            chains[i - 1].clone()
        };
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let key = format!("extract-{nanos}-{:08x} {chain}", rand::random::<u32>());
        let mounts = snapshots(svc.clone())
            .prepare(PrepareSnapshotRequest {
                snapshotter: SNAPSHOTTER.to_string(),
                key: key.clone(),
                parent,
                labels: HashMap::new(),
            })
            .await
            .map_err(|s| status_error("prepare snapshot", s))?
            .into_inner()
            .mounts;
        let applied = DiffClient::new(svc.clone())
            .apply(ApplyRequest {
                diff: Some(PbDescriptor {
                    media_type: layer.media_type.clone(),
                    digest: layer.digest.clone(),
                    size: layer.size,
                    annotations: HashMap::new(),
                }),
                mounts,
                payloads: HashMap::new(),
                sync_fs: false,
            })
            .await;
        let applied = match applied {
            Ok(r) => r.into_inner().applied.map(|d| d.digest).unwrap_or_default(),
            Err(s) => {
                remove_snapshot(svc.clone(), &key).await.ok();
                return Err(status_error(&format!("apply layer {}", layer.digest), s));
            }
        };
        if applied != plan.diff_ids[i] {
            remove_snapshot(svc.clone(), &key).await.ok();
            return Err(RuntimeError::InvalidImage(format!(
                "layer {} unpacks to {applied}, the image config says {}",
                layer.digest, plan.diff_ids[i]
            )));
        }
        let committed = snapshots(svc.clone())
            .commit(CommitSnapshotRequest {
                snapshotter: SNAPSHOTTER.to_string(),
                name: chain.clone(),
                key: key.clone(),
                labels: HashMap::new(),
            })
            .await;
        match committed {
            Ok(_) => {}
            Err(s) if s.code() == Code::AlreadyExists => {
                remove_snapshot(svc.clone(), &key).await.ok();
            }
            Err(s) => {
                remove_snapshot(svc.clone(), &key).await.ok();
                return Err(status_error("commit snapshot", s));
            }
        }
        let labels = HashMap::from([(
            "containerd.io/uncompressed".to_string(),
            plan.diff_ids[i].clone(),
        )]);
        update_labels(svc.clone(), &layer.digest, labels).await?;
        tracing::debug!(layer = %layer.digest, chain = %chain, namespace = rt.namespace(), "layer unpacked");
    }
    chains
        .last()
        .cloned()
        .ok_or_else(|| RuntimeError::InvalidImage("image has no layers".into()))
}

/// Finds the image, reads its config, and unpacks it if its snapshot chain
/// is missing (an image imported by another tool, or GC'd snapshots).
pub(crate) async fn resolve_image(
    rt: &ContainerdRuntime,
    image: &str,
) -> Result<ResolvedImage, RuntimeError> {
    let name = normalize_image_ref(image);
    let svc = rt.svc();
    let record = match ImagesClient::new(svc.clone())
        .get(GetImageRequest { name: name.clone() })
        .await
    {
        Ok(r) => r.into_inner().image,
        Err(s) if s.code() == Code::NotFound => None,
        Err(s) => return Err(status_error("get image", s)),
    };
    let not_found = || {
        RuntimeError::ImageNotFound {
        image: name.clone(),
        reason: format!(
            "not present in containerd namespace {:?}; import its OCI archive or let the agent pull it (pull policy if-not-present or always)",
            rt.namespace()
        ),
    }
    };
    let target = record.and_then(|i| i.target).ok_or_else(not_found)?;
    let mut desc = Descriptor {
        media_type: target.media_type,
        digest: target.digest,
        size: target.size,
        annotations: None,
        platform: None,
    };
    for _ in 0..4 {
        if !is_index(&desc.media_type) {
            break;
        }
        let bytes = read_blob(svc.clone(), &desc.digest).await?;
        let index: Index = serde_json::from_slice(&bytes)
            .map_err(|e| RuntimeError::InvalidImage(format!("bad index {}: {e}", desc.digest)))?;
        desc = pick_platform(&index.manifests)
            .map(|(_, d)| d.clone())
            .ok_or_else(|| {
                RuntimeError::InvalidImage(format!("{name} has no manifest for this platform"))
            })?;
    }
    if !is_manifest(&desc.media_type) {
        return Err(RuntimeError::InvalidImage(format!(
            "{name}: unsupported media type {}",
            desc.media_type
        )));
    }
    let manifest: Manifest = serde_json::from_slice(&read_blob(svc.clone(), &desc.digest).await?)
        .map_err(|e| {
        RuntimeError::InvalidImage(format!("bad manifest {}: {e}", desc.digest))
    })?;
    let config: ImageConfig =
        serde_json::from_slice(&read_blob(svc.clone(), &manifest.config.digest).await?).map_err(
            |e| RuntimeError::InvalidImage(format!("bad config {}: {e}", manifest.config.digest)),
        )?;
    let plan = UnpackPlan {
        layers: manifest.layers.clone(),
        diff_ids: config.rootfs.diff_ids.clone(),
    };
    if plan.layers.len() != plan.diff_ids.len() {
        return Err(RuntimeError::InvalidImage(format!(
            "{name}: layers and diff ids differ in number"
        )));
    }
    let chains = chain_ids(&plan.diff_ids);
    let top = chains
        .last()
        .cloned()
        .ok_or_else(|| RuntimeError::InvalidImage(format!("{name} has no layers")))?;
    if !snapshot_exists(svc.clone(), &top).await? {
        let lease = create_lease(rt, "unpack").await?;
        let result = match rt.svc_with_lease(&lease.id) {
            Ok(leased) => match unpack_layers(rt, leased.clone(), &plan).await {
                // Without this label GC drops the snapshots once the lease ends.
                Ok(top) => {
                    let key = format!("containerd.io/gc.ref.snapshot.{SNAPSHOTTER}");
                    update_labels(
                        leased,
                        &manifest.config.digest,
                        HashMap::from([(key, top.clone())]),
                    )
                    .await
                    .map(|_| top)
                }
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        delete_lease(rt, lease).await;
        result?;
    }
    Ok(ResolvedImage {
        name,
        config: config.config.unwrap_or_default(),
        chain_id: top,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_oci_identity() {
        let a = "sha256:aa".to_string();
        let b = "sha256:bb".to_string();
        let chains = chain_ids(&[a.clone(), b]);
        assert_eq!(chains[0], a);
        let expect = format!(
            "sha256:{}",
            hex::encode(Sha256::digest(b"sha256:aa sha256:bb"))
        );
        assert_eq!(chains[1], expect);
    }
}
