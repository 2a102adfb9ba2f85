//! Container log files: one per container, written by the containerd shim,
//! rotated copytruncate-style (the shim keeps the file open), read and
//! followed for `gantry logs`.

use crate::runtime::RuntimeError;
use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;

/// How often a follower checks for new output.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// Where a container's stdout and stderr are appended.
pub fn log_path(log_dir: &Path, container_id: &str) -> PathBuf {
    log_dir.join(format!("{container_id}.log"))
}

fn rotated_path(log_dir: &Path, container_id: &str) -> PathBuf {
    log_dir.join(format!("{container_id}.log.1"))
}

/// Creates the directory and the (possibly existing) log file.
pub(crate) fn prepare_log_file(
    log_dir: &Path,
    container_id: &str,
) -> Result<PathBuf, RuntimeError> {
    std::fs::create_dir_all(log_dir)
        .map_err(|e| RuntimeError::io(format!("creating {}", log_dir.display()), e))?;
    let path = log_path(log_dir, container_id);
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| RuntimeError::io(format!("creating {}", path.display()), e))?;
    Ok(path)
}

pub(crate) fn remove_log_files(log_dir: &Path, container_id: &str) {
    for path in [
        log_path(log_dir, container_id),
        rotated_path(log_dir, container_id),
    ] {
        if let Err(e) = std::fs::remove_file(&path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %path.display(), error = %e, "could not remove log file");
            }
        }
    }
}

/// Keeps one previous generation (`.log.1`) and truncates the live file in
/// place; a few lines written between copy and truncate can be lost, the
/// usual copytruncate trade-off.
pub fn rotate_if_needed(log_dir: &Path, container_id: &str, max_bytes: u64) {
    let path = log_path(log_dir, container_id);
    let Ok(meta) = std::fs::metadata(&path) else {
        return;
    };
    if meta.len() <= max_bytes {
        return;
    }
    let rotated = rotated_path(log_dir, container_id);
    let result = std::fs::copy(&path, &rotated).and_then(|_| {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_len(0))
    });
    match result {
        Ok(()) => tracing::info!(container = %container_id, bytes = meta.len(), "log rotated"),
        Err(e) => tracing::warn!(container = %container_id, error = %e, "log rotation failed"),
    }
}

/// Streams a container's log: the rotated part and the current file, then,
/// with `follow`, new output as it arrives (surviving truncation). The
/// stream ends when the receiver is dropped, or at end of file without
/// `follow`, or when the log file is removed.
pub fn stream_log(
    log_dir: &Path,
    container_id: &str,
    follow: bool,
) -> mpsc::Receiver<std::io::Result<Vec<u8>>> {
    let (tx, rx) = mpsc::channel(16);
    let path = log_path(log_dir, container_id);
    let rotated = rotated_path(log_dir, container_id);
    tokio::spawn(async move {
        if let Ok(old) = tokio::fs::read(&rotated).await {
            if !old.is_empty() && tx.send(Ok(old)).await.is_err() {
                return;
            }
        }
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        let mut pos = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match file.read(&mut buf).await {
                Ok(n) => n,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            if n > 0 {
                pos += n as u64;
                if tx.send(Ok(buf[..n].to_vec())).await.is_err() {
                    return;
                }
                continue;
            }
            if !follow {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(FOLLOW_POLL) => {}
                _ = tx.closed() => return,
            }
            match tokio::fs::metadata(&path).await {
                Ok(meta) if meta.len() < pos => {
                    // Truncated by rotation: start over from the top.
                    pos = 0;
                    if file.seek(SeekFrom::Start(0)).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    rx
}

/// The whole current log, for a one-shot `gantry logs`.
pub async fn read_log(log_dir: &Path, container_id: &str) -> std::io::Result<Vec<u8>> {
    let mut rx = stream_log(log_dir, container_id, false);
    let mut out = Vec::new();
    while let Some(chunk) = rx.recv().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rotation_keeps_old_output_readable() {
        let dir = tempfile::tempdir().unwrap();
        let path = prepare_log_file(dir.path(), "c1").unwrap();
        std::fs::write(&path, b"0123456789").unwrap();
        rotate_if_needed(dir.path(), "c1", 5);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        std::fs::write(&path, b"new").unwrap();
        assert_eq!(read_log(dir.path(), "c1").await.unwrap(), b"0123456789new");
    }

    #[tokio::test]
    async fn follow_sees_appended_output() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = prepare_log_file(dir.path(), "c1").unwrap();
        let mut rx = stream_log(dir.path(), "c1", true);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"hello\n").unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(got, b"hello\n");
    }
}
