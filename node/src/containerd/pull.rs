//! Registry pull into containerd, the same steps as archive import (B.3)
//! with a registry instead of a tar as the blob source: resolve the
//! manifest from the exact registry bytes, stream missing layers into
//! Content.Write with our own digest check, unpack, and only then name
//! the image, all under one lease.

use super::content::{create_lease, delete_lease, exists, read_blob, update_labels, write_blob};
use super::images::put_image;
use super::import::{ImportedImage, MAX_METADATA};
use super::unpack::{chain_ids, unpack_layers, UnpackPlan};
use super::{ContainerdRuntime, Svc, SNAPSHOTTER};
use crate::image::{
    is_index, is_manifest, pick_platform, Descriptor, ImageConfig, Index, Manifest,
    MEDIA_OCI_INDEX, MEDIA_OCI_MANIFEST,
};
use crate::registry::{describe_error, parse_reference, RegistryConfig};
use crate::runtime::RuntimeError;
use crate::spec::normalize_image_ref;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use oci_client::{Client, Reference};
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, ReadBuf};

/// Manifest media types we ask registries for.
const ACCEPT: &[&str] = &[
    MEDIA_OCI_INDEX,
    MEDIA_OCI_MANIFEST,
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// How far a pull has come, readable while it runs: `gantry image pull`
/// samples it for its bars, since the pull itself runs on the gateway.
/// Layers already in the content store count as done at once.
#[derive(Debug, Default)]
pub struct PullProgress {
    total: AtomicU64,
    done: AtomicU64,
}

impl PullProgress {
    /// The image's layer bytes; 0 until the manifest is resolved.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Layer bytes present or downloaded so far.
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    fn advance(&self, by: u64) {
        self.done.fetch_add(by, Ordering::Relaxed);
    }
}

/// One registry conversation about one image.
struct Remote<'a> {
    client: Client,
    config: &'a RegistryConfig,
    reference: Reference,
    name: String,
    registry: String,
    progress: Arc<PullProgress>,
}

impl Remote<'_> {
    fn fail(&self, message: impl Into<String>) -> RuntimeError {
        RuntimeError::Pull {
            image: self.name.clone(),
            message: message.into(),
        }
    }

    fn registry_error(&self, e: &oci_client::errors::OciDistributionError) -> RuntimeError {
        self.fail(describe_error(self.config, &self.registry, e))
    }

    /// Fetches a manifest or index by tag or digest; oci-client checks the
    /// body against the requested digest and the registry's digest header.
    async fn manifest(&self, reference: &Reference) -> Result<(Bytes, String), RuntimeError> {
        let auth = self.config.auth_for(&self.registry);
        let (bytes, digest) = self
            .client
            .pull_manifest_raw(reference, &auth, ACCEPT)
            .await
            .map_err(|e| self.registry_error(&e))?;
        if bytes.len() as u64 > MAX_METADATA {
            return Err(self.fail(format!("manifest {digest} is too large")));
        }
        Ok((bytes, digest))
    }

    /// A small blob (config), from the content store when we already have
    /// it, else from the registry with its digest checked.
    async fn small_blob(&self, svc: Svc, desc: &Descriptor) -> Result<Vec<u8>, RuntimeError> {
        if desc.size < 0 || desc.size as u64 > MAX_METADATA {
            return Err(self.fail(format!("config {} is too large", desc.digest)));
        }
        if exists(svc.clone(), &desc.digest).await? {
            return read_blob(svc, &desc.digest).await;
        }
        let mut out = Vec::with_capacity(desc.size as usize);
        self.client
            .pull_blob(&self.reference, desc.digest.as_str(), &mut out)
            .await
            .map_err(|e| self.registry_error(&e))?;
        if out.len() as i64 != desc.size {
            return Err(self.fail(format!(
                "config {} has {} bytes, its descriptor says {}",
                desc.digest,
                out.len(),
                desc.size
            )));
        }
        Ok(out)
    }

    /// Streams one layer into the content store unless it is there already.
    async fn layer(
        &self,
        svc: Svc,
        desc: &Descriptor,
        labels: HashMap<String, String>,
    ) -> Result<u64, RuntimeError> {
        let size = u64::try_from(desc.size)
            .map_err(|_| self.fail(format!("layer {} has a negative size", desc.digest)))?;
        if exists(svc.clone(), &desc.digest).await? {
            tracing::debug!(layer = %desc.digest, "layer already present");
            update_labels(svc, &desc.digest, labels).await?;
            self.progress.advance(size);
            return Ok(0);
        }
        let stream = self
            .client
            .pull_blob_stream(&self.reference, desc.digest.as_str())
            .await
            .map_err(|e| self.registry_error(&e))?;
        tracing::info!(image = %self.name, layer = %desc.digest, size, "downloading layer");
        let body = VerifiedBody::new(stream.stream, &desc.digest, size)
            .counting_into(self.progress.clone());
        write_blob(svc, &desc.digest, size, labels, body)
            .await
            .map_err(|e| match e {
                // Our reader's verdict reaches us as an I/O error.
                RuntimeError::Io { source, .. } => self.fail(format!(
                    "layer {} from registry {}: {source}",
                    desc.digest, self.registry
                )),
                other => other,
            })?;
        Ok(size)
    }
}

/// What the registry says the image is, fetched before touching the
/// content store (except for reading configs we already have).
struct Resolved {
    /// The top-level descriptor the image name will point at.
    top: Descriptor,
    /// Index and manifest documents with their GC labels, parents first.
    documents: Vec<(Descriptor, Bytes, HashMap<String, String>)>,
    manifest: Manifest,
    diff_ids: Vec<String>,
}

fn media_type_of(bytes: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<Probe>(bytes) {
        Ok(Probe {
            media_type: Some(m),
            ..
        }) => m,
        Ok(Probe {
            manifests: Some(_), ..
        }) => MEDIA_OCI_INDEX.to_string(),
        _ => MEDIA_OCI_MANIFEST.to_string(),
    }
}

/// Pulls `reference` from its registry into the runtime's namespace.
pub(crate) async fn pull(
    rt: &ContainerdRuntime,
    reference: &str,
    config: &RegistryConfig,
    progress: Arc<PullProgress>,
) -> Result<ImportedImage, RuntimeError> {
    let name = normalize_image_ref(reference);
    let parsed = parse_reference(&name).map_err(|message| RuntimeError::Pull {
        image: name.clone(),
        message,
    })?;
    if !config.is_allowed(parsed.registry()) {
        return Err(RuntimeError::Pull {
            image: name.clone(),
            message: format!(
                "registry {} is not among this gateway's allowed registries ({})",
                parsed.registry(),
                config.allowed.join(", ")
            ),
        });
    }
    let remote = Remote {
        client: config.client(),
        config,
        registry: parsed.registry().to_string(),
        reference: parsed,
        name: name.clone(),
        progress,
    };
    tracing::info!(image = %name, registry = %remote.registry, insecure = config.is_insecure(&remote.registry), "pulling image");
    let resolved = resolve(&remote, rt.svc()).await?;
    let layer_bytes = resolved
        .manifest
        .layers
        .iter()
        .map(|l| u64::try_from(l.size).unwrap_or(0))
        .sum();
    remote.progress.total.store(layer_bytes, Ordering::Relaxed);
    let lease = create_lease(rt, "pull").await?;
    let result = store_and_unpack(rt, &lease.id, &remote, &resolved).await;
    delete_lease(rt, lease).await;
    let downloaded_bytes = result?;
    tracing::info!(image = %name, digest = %resolved.top.digest, downloaded_bytes, "image pulled");
    Ok(ImportedImage {
        name,
        digest: resolved.top.digest,
        downloaded_bytes,
    })
}

async fn resolve(remote: &Remote<'_>, svc: Svc) -> Result<Resolved, RuntimeError> {
    let (bytes, digest) = remote.manifest(&remote.reference).await?;
    let top = Descriptor {
        media_type: media_type_of(&bytes),
        digest,
        size: bytes.len() as i64,
        annotations: None,
        platform: None,
    };
    let mut desc = top.clone();
    let mut bytes = bytes;
    let mut documents = Vec::new();
    for _ in 0..4 {
        if !is_index(&desc.media_type) {
            break;
        }
        let index: Index = serde_json::from_slice(&bytes)
            .map_err(|e| remote.fail(format!("bad index {}: {e}", desc.digest)))?;
        let (i, child) = pick_platform(&index.manifests).ok_or_else(|| {
            remote.fail(format!(
                "index {} has no manifest for linux/{}",
                desc.digest,
                crate::image::goarch()
            ))
        })?;
        let child = child.clone();
        let (child_bytes, child_digest) = remote
            .manifest(&remote.reference.clone_with_digest(child.digest.clone()))
            .await?;
        if child_digest != child.digest || child_bytes.len() as i64 != child.size {
            return Err(remote.fail(format!(
                "manifest {} does not match its index entry",
                child.digest
            )));
        }
        let labels = HashMap::from([(
            format!("containerd.io/gc.ref.content.m.{i}"),
            child.digest.clone(),
        )]);
        documents.push((desc, bytes, labels));
        desc = child;
        bytes = child_bytes;
    }
    if !is_manifest(&desc.media_type) {
        return Err(remote.fail(format!("unsupported media type {}", desc.media_type)));
    }
    let manifest: Manifest = serde_json::from_slice(&bytes)
        .map_err(|e| remote.fail(format!("bad manifest {}: {e}", desc.digest)))?;
    let config_bytes = remote.small_blob(svc, &manifest.config).await?;
    let config: ImageConfig = serde_json::from_slice(&config_bytes)
        .map_err(|e| remote.fail(format!("bad image config {}: {e}", manifest.config.digest)))?;
    let diff_ids = config.rootfs.diff_ids;
    if diff_ids.len() != manifest.layers.len() || diff_ids.is_empty() {
        return Err(remote.fail(format!(
            "manifest {} has {} layers but its config lists {} diff ids",
            desc.digest,
            manifest.layers.len(),
            diff_ids.len()
        )));
    }
    let mut labels = HashMap::from([(
        "containerd.io/gc.ref.content.config".to_string(),
        manifest.config.digest.clone(),
    )]);
    for (i, layer) in manifest.layers.iter().enumerate() {
        labels.insert(
            format!("containerd.io/gc.ref.content.l.{i}"),
            layer.digest.clone(),
        );
    }
    documents.push((desc, bytes, labels));
    // Keep the config bytes for the store step.
    documents.push((
        manifest.config.clone(),
        Bytes::from(config_bytes),
        HashMap::new(),
    ));
    Ok(Resolved {
        top,
        documents,
        manifest,
        diff_ids,
    })
}

async fn store_and_unpack(
    rt: &ContainerdRuntime,
    lease: &str,
    remote: &Remote<'_>,
    resolved: &Resolved,
) -> Result<u64, RuntimeError> {
    let svc = rt.svc_with_lease(lease)?;
    let mut downloaded = 0u64;
    // Children before parents, so every GC reference points at content
    // that already exists.
    for (layer, diff_id) in resolved.manifest.layers.iter().zip(&resolved.diff_ids) {
        let labels = HashMap::from([("containerd.io/uncompressed".to_string(), diff_id.clone())]);
        downloaded += remote.layer(svc.clone(), layer, labels).await?;
    }
    let chains = chain_ids(&resolved.diff_ids);
    for (desc, bytes, labels) in resolved.documents.iter().rev() {
        let mut labels = labels.clone();
        if desc.digest == resolved.manifest.config.digest {
            if let Some(top) = chains.last() {
                labels.insert(
                    format!("containerd.io/gc.ref.snapshot.{SNAPSHOTTER}"),
                    top.clone(),
                );
            }
        }
        write_blob(
            svc.clone(),
            &desc.digest,
            bytes.len() as u64,
            labels,
            bytes.as_ref(),
        )
        .await?;
    }
    let plan = UnpackPlan {
        layers: resolved.manifest.layers.clone(),
        diff_ids: resolved.diff_ids.clone(),
    };
    unpack_layers(rt, svc.clone(), &plan).await?;
    put_image(svc, &remote.name, &resolved.top).await?;
    Ok(downloaded)
}

/// The registry's body as an `AsyncRead` that hashes what passes through
/// and fails the read that completes the blob if the digest is wrong, so a
/// corrupted layer never reaches the commit.
struct VerifiedBody {
    stream: BoxStream<'static, Result<Bytes, std::io::Error>>,
    pending: Bytes,
    hasher: Sha256,
    expected: String,
    size: u64,
    seen: u64,
    progress: Option<Arc<PullProgress>>,
}

impl VerifiedBody {
    fn new(
        stream: BoxStream<'static, Result<Bytes, std::io::Error>>,
        expected: &str,
        size: u64,
    ) -> Self {
        VerifiedBody {
            stream,
            pending: Bytes::new(),
            hasher: Sha256::new(),
            expected: expected.to_string(),
            size,
            seen: 0,
            progress: None,
        }
    }

    fn counting_into(mut self, progress: Arc<PullProgress>) -> Self {
        self.progress = Some(progress);
        self
    }
}

impl AsyncRead for VerifiedBody {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        while this.pending.is_empty() {
            if this.seen >= this.size {
                return Poll::Ready(Ok(()));
            }
            match this.stream.poll_next_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(Some(Ok(chunk))) => {
                    // Anything past the declared size is not part of the blob.
                    let room = (this.size - this.seen).min(chunk.len() as u64) as usize;
                    this.pending = chunk.slice(..room);
                }
            }
        }
        let n = this.pending.len().min(buf.remaining());
        let chunk = this.pending.split_to(n);
        this.hasher.update(&chunk);
        this.seen += n as u64;
        if let Some(progress) = &this.progress {
            progress.advance(n as u64);
        }
        if this.seen == this.size {
            let actual = format!("sha256:{}", hex::encode(this.hasher.clone().finalize()));
            if actual != this.expected {
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "digest mismatch: the blob's content hashes to {actual}, not {}",
                        this.expected
                    ),
                )));
            }
        }
        buf.put_slice(&chunk);
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn body(data: &'static [u8], digest: &str) -> VerifiedBody {
        let chunks: Vec<Result<Bytes, std::io::Error>> =
            data.chunks(3).map(|c| Ok(Bytes::from_static(c))).collect();
        VerifiedBody::new(
            futures::stream::iter(chunks).boxed(),
            digest,
            data.len() as u64,
        )
    }

    #[tokio::test]
    async fn verified_body_passes_good_and_refuses_bad_content() {
        let data: &'static [u8] = b"hello, registry";
        let good = format!("sha256:{}", hex::encode(Sha256::digest(data)));
        let mut out = Vec::new();
        body(data, &good).read_to_end(&mut out).await.unwrap();
        assert_eq!(out, data);
        let bad = format!("sha256:{}", hex::encode(Sha256::digest(b"other")));
        let err = body(data, &bad).read_to_end(&mut out).await.unwrap_err();
        assert!(err.to_string().contains("digest mismatch"), "{err}");
    }

    #[test]
    fn media_type_is_read_or_inferred() {
        assert_eq!(
            media_type_of(br#"{"mediaType":"application/x"}"#),
            "application/x"
        );
        assert_eq!(media_type_of(br#"{"manifests":[]}"#), MEDIA_OCI_INDEX);
        assert_eq!(media_type_of(br#"{"layers":[]}"#), MEDIA_OCI_MANIFEST);
    }
}
