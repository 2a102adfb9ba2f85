//! Image archives: received over gRPC into a scratch file, imported into
//! this gateway's containerd, and (for `--all`) pushed to every other
//! gateway over the cluster's own connections.

use std::path::{Path, PathBuf};

use gantry_proto::v1::ImageChunk;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::{Status, Streaming};

use super::NodeRuntime;
use crate::cluster::Cluster;

/// A gateway is small: refuse archives beyond this rather than fill the disk.
pub const MAX_ARCHIVE_BYTES: u64 = 4 << 30;
const CHUNK_BYTES: usize = 1 << 20;

/// A file removed when dropped, so a failed upload leaves nothing behind.
pub struct ScratchFile(pub PathBuf);

impl Drop for ScratchFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Receives an archive; returns the file and the first chunk's metadata.
pub async fn receive(
    stream: &mut Streaming<ImageChunk>,
    scratch: &Path,
) -> Result<(ScratchFile, ImageChunk), Status> {
    let name = format!("upload-{:016x}.tar", rand::random::<u64>());
    let file = ScratchFile(scratch.join(name));
    let mut out = tokio::fs::File::create(&file.0)
        .await
        .map_err(|e| Status::internal(format!("cannot create a scratch file: {e}")))?;
    let mut meta: Option<ImageChunk> = None;
    let mut total: u64 = 0;
    while let Some(mut chunk) = stream.message().await? {
        total += chunk.data.len() as u64;
        if total > MAX_ARCHIVE_BYTES {
            return Err(Status::resource_exhausted(format!(
                "archive larger than {MAX_ARCHIVE_BYTES} bytes"
            )));
        }
        out.write_all(&chunk.data).await.map_err(|e| {
            Status::resource_exhausted(format!("cannot store the archive (disk full?): {e}"))
        })?;
        if meta.is_none() {
            chunk.data.clear();
            meta = Some(chunk);
        }
    }
    out.flush()
        .await
        .map_err(|e| Status::resource_exhausted(format!("cannot store the archive: {e}")))?;
    let meta = meta.ok_or_else(|| Status::invalid_argument("empty upload"))?;
    if total == 0 {
        return Err(Status::invalid_argument("the archive is empty"));
    }
    Ok((file, meta))
}

/// Imports into this gateway's containerd; the JSON lists the images.
pub async fn import_local(node: &NodeRuntime, path: &Path) -> Result<Value, String> {
    let images = node
        .runtime
        .import_archive(path)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Value::Array(
        images
            .iter()
            .map(|i| json!({"name": i.name, "digest": i.digest}))
            .collect(),
    ))
}

/// Streams the archive at `path` to `address`'s Cluster.PushImage.
pub async fn push(
    cluster: &Cluster,
    node: crate::state::NodeId,
    path: &Path,
    file_name: &str,
) -> Result<Value, String> {
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|e| e.to_string())?;
    let (tx, rx) = tokio::sync::mpsc::channel::<ImageChunk>(4);
    let cluster_id = cluster.cluster_id().to_string();
    let file_name = file_name.to_string();
    let reader = tokio::spawn(async move {
        let mut first = true;
        loop {
            let mut data = vec![0u8; CHUNK_BYTES];
            let read = file.read(&mut data).await?;
            if read == 0 {
                return Ok::<_, std::io::Error>(());
            }
            data.truncate(read);
            let chunk = ImageChunk {
                cluster_id: if first {
                    cluster_id.clone()
                } else {
                    String::new()
                },
                all: false,
                file_name: if first {
                    file_name.clone()
                } else {
                    String::new()
                },
                data,
            };
            first = false;
            if tx.send(chunk).await.is_err() {
                return Ok(());
            }
        }
    });
    let mut client = cluster.member_client(node)?;
    let reply = client
        .push_image(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await;
    match reader.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(format!("cannot read the archive: {e}")),
        Err(e) => return Err(format!("archive reader failed: {e}")),
    }
    let reply = reply.map_err(|status| status.message().to_string())?;
    serde_json::from_str(&reply.into_inner().json).map_err(|e| e.to_string())
}

/// Fetches missing images from peer gateways (Cluster.ExportImage) before
/// the node agent falls back to the registry: a site pulls each image over
/// its uplink once.
pub struct PeerImages {
    pub cluster: Cluster,
}

#[async_trait::async_trait]
impl gantry_node::agent::ImageSource for PeerImages {
    async fn fetch(&self, image: &str, dest: &Path) -> Result<bool, String> {
        let peers: Vec<(crate::state::NodeId, String)> = {
            let applied = self.cluster.state().read();
            let me = self.cluster.id();
            applied
                .state
                .nodes
                .values()
                .filter(|n| n.id != me && n.status == crate::state::NodeStatus::Ready)
                .map(|n| (n.id, n.name.clone()))
                .collect()
        };
        for (id, name) in peers {
            match fetch_from(&self.cluster, id, image, dest).await {
                Ok(true) => {
                    tracing::info!(%image, peer = %name, "image fetched from a peer gateway");
                    return Ok(true);
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(%image, peer = %name, error = %e, "peer image fetch failed")
                }
            }
        }
        Ok(false)
    }
}

/// Ok(false) when the peer does not hold the image.
pub(crate) async fn fetch_from(
    cluster: &Cluster,
    node: crate::state::NodeId,
    image: &str,
    dest: &Path,
) -> Result<bool, String> {
    let mut client = cluster.member_client(node)?;
    let request = gantry_proto::v1::ExportImageRequest {
        cluster_id: cluster.cluster_id().to_string(),
        image: image.to_string(),
    };
    let mut stream = match client.export_image(request).await {
        Ok(reply) => reply.into_inner(),
        Err(status) if status.code() == tonic::Code::NotFound => return Ok(false),
        Err(status) => return Err(status.message().to_string()),
    };
    let mut out = tokio::fs::File::create(dest)
        .await
        .map_err(|e| e.to_string())?;
    let mut total: u64 = 0;
    while let Some(chunk) = stream
        .message()
        .await
        .map_err(|s| s.message().to_string())?
    {
        total += chunk.data.len() as u64;
        if total > MAX_ARCHIVE_BYTES {
            return Err(format!("archive larger than {MAX_ARCHIVE_BYTES} bytes"));
        }
        out.write_all(&chunk.data)
            .await
            .map_err(|e| e.to_string())?;
    }
    out.flush().await.map_err(|e| e.to_string())?;
    Ok(total > 0)
}

/// Serves Cluster.ExportImage: the image as an archive, streamed from a
/// scratch file removed afterwards.
pub async fn export(
    node: &NodeRuntime,
    image: &str,
) -> Result<tokio::sync::mpsc::Receiver<Result<ImageChunk, Status>>, Status> {
    let present = node
        .runtime
        .has_image(image)
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    if !present {
        return Err(Status::not_found(format!("no image {image} here")));
    }
    let file = ScratchFile(
        node.scratch_dir
            .join(format!("export-{:016x}.tar", rand::random::<u64>())),
    );
    node.runtime
        .export_archive(image, &file.0)
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
    let mut reader = tokio::fs::File::open(&file.0)
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        let _file = file; // removed when the stream ends
        loop {
            let mut data = vec![0u8; CHUNK_BYTES];
            let read = match reader.read(&mut data).await {
                Ok(0) => return,
                Ok(n) => n,
                Err(e) => {
                    let _ = tx.send(Err(Status::internal(e.to_string()))).await;
                    return;
                }
            };
            data.truncate(read);
            let chunk = ImageChunk {
                cluster_id: String::new(),
                all: false,
                file_name: String::new(),
                data,
            };
            if tx.send(Ok(chunk)).await.is_err() {
                return;
            }
        }
    });
    Ok(rx)
}
