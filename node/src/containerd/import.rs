//! OCI image-layout archive import, following containerd's Go `Import`:
//! verify everything first, write blobs under a lease, unpack, and only
//! then create image records, so a bad archive leaves nothing named behind.

use super::content::{create_lease, delete_lease, write_blob};
use super::images::put_image;
use super::unpack::{chain_ids, unpack_layers, UnpackPlan};
use super::ContainerdRuntime;
use crate::image::{
    is_index, is_manifest, pick_platform, Descriptor, ImageConfig, Index, Manifest,
};
use crate::runtime::RuntimeError;
use crate::spec::normalize_image_ref;
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use tokio::io::AsyncSeekExt;

pub(crate) const REF_NAME: &str = "org.opencontainers.image.ref.name";
pub(crate) const CONTAINERD_NAME: &str = "io.containerd.image.name";
/// Index, manifest and config blobs are read whole; cap them.
pub(crate) const MAX_METADATA: u64 = 4 * 1024 * 1024;

/// An image the import created or updated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedImage {
    pub name: String,
    /// Digest of the image's top-level target (index or manifest).
    pub digest: String,
    /// Layer bytes a pull downloaded (layers already present cost
    /// nothing); 0 for an archive import.
    pub downloaded_bytes: u64,
}

#[derive(Debug, Clone, Copy)]
struct Loc {
    offset: u64,
    size: u64,
}

struct PlannedBlob {
    digest: String,
    loc: Loc,
    labels: HashMap<String, String>,
}

/// Everything to write, decided and verified before touching containerd.
struct Plan {
    blobs: Vec<PlannedBlob>,
    images: Vec<(String, Descriptor)>,
    unpacks: Vec<UnpackPlan>,
}

fn invalid(msg: impl Into<String>) -> RuntimeError {
    RuntimeError::InvalidImage(msg.into())
}

pub(crate) async fn import_archive(
    rt: &ContainerdRuntime,
    path: &Path,
) -> Result<Vec<ImportedImage>, RuntimeError> {
    let owned: PathBuf = path.to_path_buf();
    let plan = tokio::task::spawn_blocking(move || plan_archive(&owned))
        .await
        .map_err(|e| invalid(format!("archive reader failed: {e}")))??;
    tracing::info!(archive = %path.display(), blobs = plan.blobs.len(), images = plan.images.len(), "importing image archive");
    let lease = create_lease(rt, "import").await?;
    let result = write_and_unpack(rt, &lease.id, path, &plan).await;
    delete_lease(rt, lease).await;
    result
}

async fn write_and_unpack(
    rt: &ContainerdRuntime,
    lease: &str,
    path: &Path,
    plan: &Plan,
) -> Result<Vec<ImportedImage>, RuntimeError> {
    let svc = rt.svc_with_lease(lease)?;
    for blob in &plan.blobs {
        let mut file = tokio::fs::File::open(path)
            .await
            .map_err(|e| RuntimeError::io(format!("opening {}", path.display()), e))?;
        file.seek(std::io::SeekFrom::Start(blob.loc.offset))
            .await
            .map_err(|e| RuntimeError::io("seeking in archive", e))?;
        write_blob(
            svc.clone(),
            &blob.digest,
            blob.loc.size,
            blob.labels.clone(),
            file,
        )
        .await?;
    }
    for unpack in &plan.unpacks {
        unpack_layers(rt, svc.clone(), unpack).await?;
    }
    let mut out = Vec::new();
    for (name, target) in &plan.images {
        put_image(svc.clone(), name, target).await?;
        tracing::info!(image = %name, digest = %target.digest, "image imported");
        out.push(ImportedImage {
            name: name.clone(),
            digest: target.digest.clone(),
            downloaded_bytes: 0,
        });
    }
    Ok(out)
}

/// Reads the tar's table of contents, then resolves and verifies every blob
/// the named images need.
fn plan_archive(path: &Path) -> Result<Plan, RuntimeError> {
    let file =
        File::open(path).map_err(|e| RuntimeError::io(format!("opening {}", path.display()), e))?;
    let archive_len = file
        .metadata()
        .map_err(|e| RuntimeError::io("reading archive size", e))?
        .len();
    let mut archive = tar::Archive::new(file);
    let mut layout: Option<Vec<u8>> = None;
    let mut index: Option<Vec<u8>> = None;
    let mut blobs: BTreeMap<String, Loc> = BTreeMap::new();
    let entries = archive
        .entries_with_seek()
        .map_err(|e| invalid(format!("not a tar archive: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| invalid(format!("corrupt tar archive: {e}")))?;
        let name = entry
            .path()
            .map_err(|e| invalid(format!("bad path in archive: {e}")))?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        let size = entry.size();
        match name.as_str() {
            "oci-layout" | "index.json" => {
                if size > MAX_METADATA {
                    return Err(invalid(format!("{name} is too large")));
                }
                let mut buf = Vec::new();
                entry
                    .read_to_end(&mut buf)
                    .map_err(|e| invalid(format!("reading {name}: {e}")))?;
                if name == "oci-layout" {
                    layout = Some(buf);
                } else {
                    index = Some(buf);
                }
            }
            _ => {
                if let Some(hex) = name.strip_prefix("blobs/sha256/") {
                    let offset = entry.raw_file_position();
                    if offset + size > archive_len {
                        return Err(invalid(format!(
                            "archive is truncated: blob sha256:{hex} ends past the end of the file"
                        )));
                    }
                    blobs.insert(format!("sha256:{hex}"), Loc { offset, size });
                }
            }
        }
    }
    let layout = layout.ok_or_else(|| {
        invalid("no oci-layout file: not an OCI image-layout archive (Docker-save archives are not supported)")
    })?;
    let layout: serde_json::Value =
        serde_json::from_slice(&layout).map_err(|e| invalid(format!("bad oci-layout: {e}")))?;
    if layout.get("imageLayoutVersion").and_then(|v| v.as_str()) != Some("1.0.0") {
        return Err(invalid("oci-layout imageLayoutVersion is not 1.0.0"));
    }
    let index: Index =
        serde_json::from_slice(&index.ok_or_else(|| invalid("no index.json in archive"))?)
            .map_err(|e| invalid(format!("bad index.json: {e}")))?;
    let mut reader = BlobReader {
        file: File::open(path).map_err(|e| RuntimeError::io("reopening archive", e))?,
        blobs,
        planned: Vec::new(),
    };
    let mut plan = Plan {
        blobs: Vec::new(),
        images: Vec::new(),
        unpacks: Vec::new(),
    };
    for desc in &index.manifests {
        let Some(name) = image_name(desc) else {
            tracing::warn!(digest = %desc.digest, "manifest in archive has no image name; skipped");
            continue;
        };
        let unpack = reader.resolve(desc, 0)?;
        plan.images.push((name, desc.clone()));
        plan.unpacks.push(unpack);
    }
    if plan.images.is_empty() {
        return Err(invalid(format!(
            "archive names no image (no {CONTAINERD_NAME} or {REF_NAME} annotation with a full reference)"
        )));
    }
    plan.blobs = reader.planned;
    Ok(plan)
}

fn image_name(desc: &Descriptor) -> Option<String> {
    let ann = desc.annotations.as_ref()?;
    if let Some(name) = ann.get(CONTAINERD_NAME).filter(|n| !n.is_empty()) {
        return Some(normalize_image_ref(name));
    }
    let name = ann.get(REF_NAME)?;
    // A bare tag such as "latest" names no repository.
    (name.contains('/') || name.contains(':')).then(|| normalize_image_ref(name))
}

struct BlobReader {
    file: File,
    blobs: BTreeMap<String, Loc>,
    planned: Vec<PlannedBlob>,
}

impl BlobReader {
    fn loc(&self, desc: &Descriptor) -> Result<Loc, RuntimeError> {
        let loc = *self
            .blobs
            .get(&desc.digest)
            .ok_or_else(|| invalid(format!("blob {} is missing from the archive", desc.digest)))?;
        if i64::try_from(loc.size).ok() != Some(desc.size) {
            return Err(invalid(format!(
                "blob {} has {} bytes, its descriptor says {}",
                desc.digest, loc.size, desc.size
            )));
        }
        Ok(loc)
    }

    /// Hashes the blob (reading it back if it is small metadata) and
    /// refuses it when its content does not match its name.
    fn verify(&mut self, desc: &Descriptor, keep: bool) -> Result<Vec<u8>, RuntimeError> {
        let loc = self.loc(desc)?;
        if keep && loc.size > MAX_METADATA {
            return Err(invalid(format!(
                "metadata blob {} is too large",
                desc.digest
            )));
        }
        self.file
            .seek(SeekFrom::Start(loc.offset))
            .map_err(|e| RuntimeError::io("seeking in archive", e))?;
        let mut hasher = Sha256::new();
        let mut kept = Vec::new();
        let mut left = loc.size;
        let mut buf = vec![0u8; 1024 * 1024];
        while left > 0 {
            let want = buf.len().min(left as usize);
            let n = self
                .file
                .read(&mut buf[..want])
                .map_err(|e| RuntimeError::io("reading archive", e))?;
            if n == 0 {
                return Err(invalid(format!(
                    "archive is truncated inside blob {}",
                    desc.digest
                )));
            }
            hasher.update(&buf[..n]);
            if keep {
                kept.extend_from_slice(&buf[..n]);
            }
            left -= n as u64;
        }
        let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
        if actual != desc.digest {
            return Err(invalid(format!(
                "blob {} is corrupted: its content hashes to {actual}",
                desc.digest
            )));
        }
        Ok(kept)
    }

    fn add(
        &mut self,
        desc: &Descriptor,
        labels: HashMap<String, String>,
    ) -> Result<(), RuntimeError> {
        let loc = self.loc(desc)?;
        if let Some(existing) = self.planned.iter_mut().find(|b| b.digest == desc.digest) {
            existing.labels.extend(labels);
        } else {
            self.planned.push(PlannedBlob {
                digest: desc.digest.clone(),
                loc,
                labels,
            });
        }
        Ok(())
    }

    /// Walks index -> platform manifest -> config and layers, queueing
    /// children before parents with the GC labels that keep them alive.
    fn resolve(&mut self, desc: &Descriptor, depth: u32) -> Result<UnpackPlan, RuntimeError> {
        if depth > 4 {
            return Err(invalid("image indexes nest too deeply"));
        }
        let bytes = self.verify(desc, true)?;
        if is_index(&desc.media_type) {
            let index: Index = serde_json::from_slice(&bytes)
                .map_err(|e| invalid(format!("bad index {}: {e}", desc.digest)))?;
            let (i, child) = pick_platform(&index.manifests).ok_or_else(|| {
                invalid(format!(
                    "index {} has no manifest for this platform",
                    desc.digest
                ))
            })?;
            let child = child.clone();
            let plan = self.resolve(&child, depth + 1)?;
            let labels =
                HashMap::from([(format!("containerd.io/gc.ref.content.m.{i}"), child.digest)]);
            self.add(desc, labels)?;
            return Ok(plan);
        }
        if !is_manifest(&desc.media_type) {
            return Err(invalid(format!(
                "unsupported media type {}",
                desc.media_type
            )));
        }
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| invalid(format!("bad manifest {}: {e}", desc.digest)))?;
        let config_bytes = self.verify(&manifest.config, true)?;
        let config: ImageConfig = serde_json::from_slice(&config_bytes)
            .map_err(|e| invalid(format!("bad image config {}: {e}", manifest.config.digest)))?;
        let diff_ids = config.rootfs.diff_ids.clone();
        if diff_ids.len() != manifest.layers.len() {
            return Err(invalid(format!(
                "manifest {} has {} layers but its config lists {} diff ids",
                desc.digest,
                manifest.layers.len(),
                diff_ids.len()
            )));
        }
        let chains = chain_ids(&diff_ids);
        let mut manifest_labels = HashMap::new();
        manifest_labels.insert(
            "containerd.io/gc.ref.content.config".to_string(),
            manifest.config.digest.clone(),
        );
        for (i, (layer, diff_id)) in manifest.layers.iter().zip(&diff_ids).enumerate() {
            self.verify(layer, false)?;
            let labels =
                HashMap::from([("containerd.io/uncompressed".to_string(), diff_id.clone())]);
            self.add(layer, labels)?;
            manifest_labels.insert(
                format!("containerd.io/gc.ref.content.l.{i}"),
                layer.digest.clone(),
            );
        }
        let mut config_labels = HashMap::new();
        if let Some(top) = chains.last() {
            config_labels.insert(
                format!("containerd.io/gc.ref.snapshot.{}", super::SNAPSHOTTER),
                top.clone(),
            );
        }
        self.add(&manifest.config, config_labels)?;
        self.add(desc, manifest_labels)?;
        Ok(UnpackPlan {
            layers: manifest.layers,
            diff_ids,
        })
    }
}
