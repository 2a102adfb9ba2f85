//! Export of one image, for this platform, as an OCI image-layout tar that
//! [`import_archive`](super::ContainerdRuntime::import_archive) accepts, so a
//! gateway can hand an image to a peer instead of both using the uplink.
//! Blobs are streamed out of Content.Read and written as they come; the
//! tar framing is written by hand because the `tar` crate wants a
//! blocking reader per entry.

use super::content::{copy_blob_to, read_blob};
use super::images::image_target;
use super::import::{CONTAINERD_NAME, MAX_METADATA, REF_NAME};
use super::ContainerdRuntime;
use crate::image::{is_index, is_manifest, pick_platform, Descriptor, Index, Manifest};
use crate::runtime::RuntimeError;
use crate::spec::normalize_image_ref;
use serde_json::json;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};

const BLOCK: usize = 512;

/// Writes `image_name`'s archive to `dest` (via a temporary file renamed
/// at the end, so a failed export leaves no half archive under `dest`).
pub(crate) async fn export_archive(
    rt: &ContainerdRuntime,
    image_name: &str,
    dest: &Path,
) -> Result<(), RuntimeError> {
    let name = normalize_image_ref(image_name);
    let top = image_target(rt, &name)
        .await?
        .ok_or_else(|| RuntimeError::ImageNotFound {
            image: name.clone(),
            reason: format!(
                "not present in containerd namespace {:?}, nothing to export",
                rt.namespace()
            ),
        })?;
    let blobs = platform_blobs(rt, &name, &top).await?;
    let partial = partial_path(dest);
    let result = write_archive(rt, &name, &top, &blobs, &partial).await;
    match result {
        Ok(()) => tokio::fs::rename(&partial, dest)
            .await
            .map_err(|e| RuntimeError::io(format!("renaming to {}", dest.display()), e)),
        Err(e) => {
            let _ = tokio::fs::remove_file(&partial).await;
            Err(e)
        }
    }?;
    tracing::info!(image = %name, digest = %top.digest, blobs = blobs.len(), archive = %dest.display(), "image exported");
    Ok(())
}

fn partial_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    dest.with_file_name(name)
}

/// Every blob this platform needs: the top index (if any), the chosen
/// manifest, its config and layers. Other platforms' manifests are left
/// out; import only follows the chosen one.
async fn platform_blobs(
    rt: &ContainerdRuntime,
    name: &str,
    top: &Descriptor,
) -> Result<Vec<Descriptor>, RuntimeError> {
    let svc = rt.svc();
    let mut out = Vec::new();
    let mut desc = top.clone();
    for _ in 0..4 {
        if !is_index(&desc.media_type) {
            break;
        }
        let bytes = read_blob(svc.clone(), &desc.digest).await?;
        let index: Index = serde_json::from_slice(&bytes)
            .map_err(|e| RuntimeError::InvalidImage(format!("bad index {}: {e}", desc.digest)))?;
        let child = pick_platform(&index.manifests)
            .map(|(_, d)| d.clone())
            .ok_or_else(|| {
                RuntimeError::InvalidImage(format!("{name} has no manifest for this platform"))
            })?;
        out.push(desc);
        desc = child;
    }
    if !is_manifest(&desc.media_type) {
        return Err(RuntimeError::InvalidImage(format!(
            "{name}: unsupported media type {}",
            desc.media_type
        )));
    }
    let bytes = read_blob(svc, &desc.digest).await?;
    let manifest: Manifest = serde_json::from_slice(&bytes)
        .map_err(|e| RuntimeError::InvalidImage(format!("bad manifest {}: {e}", desc.digest)))?;
    out.push(desc);
    out.push(manifest.config);
    out.extend(manifest.layers);
    // A layer shared twice in one manifest is stored once.
    let mut seen = std::collections::HashSet::new();
    out.retain(|d| seen.insert(d.digest.clone()));
    Ok(out)
}

async fn write_archive(
    rt: &ContainerdRuntime,
    name: &str,
    top: &Descriptor,
    blobs: &[Descriptor],
    path: &Path,
) -> Result<(), RuntimeError> {
    let file = tokio::fs::File::create(path)
        .await
        .map_err(|e| RuntimeError::io(format!("creating {}", path.display()), e))?;
    let mut out = BufWriter::with_capacity(1024 * 1024, file);
    let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
    write_entry_header(&mut out, "oci-layout", layout.len() as u64).await?;
    write_body(&mut out, layout).await?;
    for blob in blobs {
        let size = u64::try_from(blob.size)
            .map_err(|_| RuntimeError::InvalidImage(format!("blob {} has no size", blob.digest)))?;
        let hex = blob
            .digest
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| {
                RuntimeError::InvalidImage(format!("unsupported digest {}", blob.digest))
            })?;
        write_entry_header(&mut out, &format!("blobs/sha256/{hex}"), size).await?;
        copy_blob_to(rt.svc(), &blob.digest, size, &mut out).await?;
        pad(&mut out, size).await?;
    }
    let tag = name
        .rsplit_once(':')
        .map(|(_, t)| t)
        .filter(|t| !t.contains('/'))
        .unwrap_or(name);
    let annotations = HashMap::from([
        (CONTAINERD_NAME.to_string(), name.to_string()),
        (REF_NAME.to_string(), tag.to_string()),
    ]);
    let entry = Descriptor {
        annotations: Some(annotations),
        platform: None,
        ..top.clone()
    };
    let index = serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [entry]}))
        .map_err(|e| RuntimeError::InvalidImage(format!("encoding index.json: {e}")))?;
    if index.len() as u64 > MAX_METADATA {
        return Err(RuntimeError::InvalidImage("index.json too large".into()));
    }
    write_entry_header(&mut out, "index.json", index.len() as u64).await?;
    write_body(&mut out, &index).await?;
    // Two zero blocks end a tar archive.
    out.write_all(&[0u8; BLOCK * 2])
        .await
        .map_err(|e| RuntimeError::io("writing archive", e))?;
    out.flush()
        .await
        .map_err(|e| RuntimeError::io("writing archive", e))?;
    out.get_mut()
        .sync_all()
        .await
        .map_err(|e| RuntimeError::io("syncing archive", e))
}

async fn write_entry_header<W: AsyncWrite + Unpin>(
    out: &mut W,
    path: &str,
    size: u64,
) -> Result<(), RuntimeError> {
    let mut header = tar::Header::new_ustar();
    header
        .set_path(path)
        .map_err(|e| RuntimeError::io(format!("tar path {path}"), e))?;
    header.set_size(size);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    out.write_all(header.as_bytes())
        .await
        .map_err(|e| RuntimeError::io("writing archive", e))
}

async fn write_body<W: AsyncWrite + Unpin>(out: &mut W, data: &[u8]) -> Result<(), RuntimeError> {
    out.write_all(data)
        .await
        .map_err(|e| RuntimeError::io("writing archive", e))?;
    pad(out, data.len() as u64).await
}

/// Entries are padded to whole 512-byte blocks.
async fn pad<W: AsyncWrite + Unpin>(out: &mut W, size: u64) -> Result<(), RuntimeError> {
    let rest = (size % BLOCK as u64) as usize;
    if rest != 0 {
        out.write_all(&[0u8; BLOCK][..BLOCK - rest])
            .await
            .map_err(|e| RuntimeError::io("writing archive", e))?;
    }
    Ok(())
}
