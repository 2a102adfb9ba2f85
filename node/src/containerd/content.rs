//! Content store and lease helpers shared by import, unpack and create.

use super::{status_error, ContainerdRuntime, Svc, MAX_MESSAGE};
use crate::runtime::RuntimeError;
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::{
    AbortRequest, CreateRequest, DeleteRequest, Info, InfoRequest, ReadContentRequest,
    ReadContentResponse, UpdateRequest, WriteAction, WriteContentRequest,
};
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

/// 1 MiB, like Go's `content.WriteBlob` copy buffer.
const CHUNK: usize = 1024 * 1024;

/// A lease that holds everything written through it until it is deleted.
pub(crate) struct Lease {
    pub id: String,
}

/// Creates a lease expiring in 24 h (Go's default), so even a crashed
/// import is eventually collected.
pub(crate) async fn create_lease(
    rt: &ContainerdRuntime,
    purpose: &str,
) -> Result<Lease, RuntimeError> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let id = format!("gantry-{purpose}-{nanos}-{:08x}", rand::random::<u32>());
    let expire = rfc3339(SystemTime::now() + Duration::from_secs(24 * 3600));
    let mut labels = HashMap::new();
    labels.insert("containerd.io/gc.expire".to_string(), expire);
    LeasesClient::new(rt.svc())
        .create(CreateRequest {
            id: id.clone(),
            labels,
        })
        .await
        .map_err(|s| status_error("create lease", s))?;
    Ok(Lease { id })
}

/// Deletes the lease; failures are only logged because the lease expires
/// by itself.
pub(crate) async fn delete_lease(rt: &ContainerdRuntime, lease: Lease) {
    let res = LeasesClient::new(rt.svc())
        .delete(DeleteRequest {
            id: lease.id.clone(),
            sync: false,
        })
        .await;
    if let Err(status) = res {
        tracing::warn!(lease = %lease.id, error = %status, "could not delete lease");
    }
}

fn content(svc: Svc) -> ContentClient<Svc> {
    ContentClient::new(svc)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE)
}

/// Whether the content store already has `digest`.
pub(crate) async fn exists(svc: Svc, digest: &str) -> Result<bool, RuntimeError> {
    match content(svc)
        .info(InfoRequest {
            digest: digest.to_string(),
        })
        .await
    {
        Ok(_) => Ok(true),
        Err(s) if s.code() == Code::NotFound => Ok(false),
        Err(s) => Err(status_error("content info", s)),
    }
}

/// Sets labels on an existing blob (GC references, uncompressed digest).
pub(crate) async fn update_labels(
    svc: Svc,
    digest: &str,
    labels: HashMap<String, String>,
) -> Result<(), RuntimeError> {
    if labels.is_empty() {
        return Ok(());
    }
    let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
    content(svc)
        .update(UpdateRequest {
            info: Some(Info {
                digest: digest.to_string(),
                labels,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask { paths }),
        })
        .await
        .map_err(|s| status_error("content update", s))?;
    Ok(())
}

/// Streams `size` bytes from `reader` into the content store with the
/// Content.Write protocol; the server verifies size and digest at commit.
pub(crate) async fn write_blob<R: AsyncRead + Unpin>(
    svc: Svc,
    digest: &str,
    size: u64,
    labels: HashMap<String, String>,
    mut reader: R,
) -> Result<(), RuntimeError> {
    if exists(svc.clone(), digest).await? {
        return update_labels(svc, digest, labels).await;
    }
    let reference = format!("import-{}", digest.replace(':', "-"));
    let result = write_stream(
        svc.clone(),
        &reference,
        digest,
        size,
        labels.clone(),
        &mut reader,
    )
    .await;
    match result {
        Ok(()) => Ok(()),
        Err(WriteError::Exists) => update_labels(svc, digest, labels).await,
        Err(WriteError::Runtime(e)) => {
            let _ = content(svc)
                .abort(AbortRequest {
                    r#ref: reference.clone(),
                })
                .await;
            Err(e)
        }
    }
}

enum WriteError {
    Exists,
    Runtime(RuntimeError),
}

impl From<RuntimeError> for WriteError {
    fn from(e: RuntimeError) -> Self {
        WriteError::Runtime(e)
    }
}

fn write_status(op: &str, s: tonic::Status) -> WriteError {
    if s.code() == Code::AlreadyExists {
        WriteError::Exists
    } else {
        WriteError::Runtime(status_error(op, s))
    }
}

async fn write_stream<R: AsyncRead + Unpin>(
    svc: Svc,
    reference: &str,
    digest: &str,
    size: u64,
    labels: HashMap<String, String>,
    reader: &mut R,
) -> Result<(), WriteError> {
    let total =
        i64::try_from(size).map_err(|_| RuntimeError::InvalidImage("blob too large".into()))?;
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let closed = || RuntimeError::Unavailable("content write stream closed".into());
    // gRPC-Go sends response headers only with the first reply, so the
    // first request must be queued before awaiting the call.
    tx.send(WriteContentRequest {
        action: WriteAction::Stat as i32,
        r#ref: reference.to_string(),
        total,
        expected: digest.to_string(),
        ..Default::default()
    })
    .await
    .map_err(|_| closed())?;
    let mut replies = content(svc)
        .write(ReceiverStream::new(rx))
        .await
        .map_err(|s| write_status("content write", s))?
        .into_inner();
    let stat = replies
        .message()
        .await
        .map_err(|s| write_status("content write stat", s))?
        .ok_or_else(closed)?;
    let mut offset = stat.offset;
    if offset > total {
        return Err(RuntimeError::InvalidImage(format!(
            "ingest {reference} is larger than {digest}"
        ))
        .into());
    }
    // Resume a partial ingest by skipping what the store already has.
    let skipped = tokio::io::copy(
        &mut (&mut *reader).take(offset as u64),
        &mut tokio::io::sink(),
    )
    .await
    .map_err(|e| RuntimeError::io("reading blob", e))?;
    if skipped as i64 != offset {
        return Err(RuntimeError::InvalidImage(format!("blob {digest} is truncated")).into());
    }
    let mut buf = vec![0u8; CHUNK];
    while offset < total {
        let want = CHUNK.min((total - offset) as usize);
        let n = reader
            .read(&mut buf[..want])
            .await
            .map_err(|e| RuntimeError::io("reading blob", e))?;
        if n == 0 {
            return Err(RuntimeError::InvalidImage(format!("blob {digest} is truncated")).into());
        }
        tx.send(WriteContentRequest {
            action: WriteAction::Write as i32,
            r#ref: reference.to_string(),
            offset,
            data: buf[..n].to_vec(),
            ..Default::default()
        })
        .await
        .map_err(|_| closed())?;
        let reply = replies
            .message()
            .await
            .map_err(|s| write_status("content write", s))?
            .ok_or_else(closed)?;
        offset += n as i64;
        if reply.offset != offset {
            return Err(RuntimeError::Engine {
                op: "content write".into(),
                message: format!(
                    "store is at offset {}, we sent up to {offset}",
                    reply.offset
                ),
            }
            .into());
        }
    }
    tx.send(WriteContentRequest {
        action: WriteAction::Commit as i32,
        r#ref: reference.to_string(),
        total,
        expected: digest.to_string(),
        offset,
        labels,
        ..Default::default()
    })
    .await
    .map_err(|_| closed())?;
    replies
        .message()
        .await
        .map_err(|s| write_status("content commit", s))?
        .ok_or_else(closed)?;
    drop(tx);
    Ok(())
}

/// The stream of a whole blob from the content store.
async fn open_read(
    svc: Svc,
    digest: &str,
) -> Result<tonic::Streaming<ReadContentResponse>, RuntimeError> {
    let stream = content(svc)
        .read(ReadContentRequest {
            digest: digest.to_string(),
            offset: 0,
            size: 0,
        })
        .await
        .map_err(|s| status_error("content read", s))?
        .into_inner();
    Ok(stream)
}

/// Reads a small blob (manifest, index, config) whole.
pub(crate) async fn read_blob(svc: Svc, digest: &str) -> Result<Vec<u8>, RuntimeError> {
    let mut stream = open_read(svc, digest).await?;
    let mut out = Vec::new();
    while let Some(chunk) = stream
        .message()
        .await
        .map_err(|s| status_error("content read", s))?
    {
        out.extend_from_slice(&chunk.data);
        if out.len() > MAX_MESSAGE {
            return Err(RuntimeError::InvalidImage(format!(
                "blob {digest} is too large to be metadata"
            )));
        }
    }
    Ok(out)
}

/// Streams a blob of any size out of the content store into `out`,
/// checking its size and digest on the way, so a damaged store never
/// leaks into an export.
pub(crate) async fn copy_blob_to<W: AsyncWrite + Unpin>(
    svc: Svc,
    digest: &str,
    size: u64,
    out: &mut W,
) -> Result<(), RuntimeError> {
    let mut stream = open_read(svc, digest).await?;
    let mut hasher = Sha256::new();
    let mut copied: u64 = 0;
    while let Some(chunk) = stream
        .message()
        .await
        .map_err(|s| status_error("content read", s))?
    {
        copied += chunk.data.len() as u64;
        if copied > size {
            break;
        }
        hasher.update(&chunk.data);
        out.write_all(&chunk.data)
            .await
            .map_err(|e| RuntimeError::io("writing blob", e))?;
    }
    let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
    if copied != size || actual != digest {
        return Err(RuntimeError::InvalidImage(format!(
            "blob {digest} in the content store is damaged ({copied} bytes hashing to {actual}, expected {size} bytes)"
        )));
    }
    Ok(())
}

/// RFC 3339 in UTC without a date crate (days-to-civil, H. Hinnant).
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20Z");
    }
}
