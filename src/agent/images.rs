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
    address: &str,
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
    let mut client = cluster.peers().client(address)?;
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
