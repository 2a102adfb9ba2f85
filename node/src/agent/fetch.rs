//! Getting an instance's image before its container starts, per its
//! [`PullPolicy`]: from a peer gateway ([`ImageSource`]) when the image is
//! missing, since peers sit on the LAN and the uplink is scarce, then
//! from the registry.

use crate::registry::RegistryConfig;
use crate::runtime::{Runtime, RuntimeError};
use crate::spec::PullPolicy;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Somewhere other than the registry that may have an image, typically
/// the other gateways of the cluster. Implemented by the gateway (peer
/// gRPC); the agent asks it before the registry whenever an image is
/// missing.
#[async_trait::async_trait]
pub trait ImageSource: Send + Sync + 'static {
    /// Writes an OCI image-layout archive holding `image` (a normalised
    /// reference) to `dest`. `Ok(true)`: the archive is there, import it;
    /// `Ok(false)`: this source has no such image; `Err`: it failed (the
    /// agent logs it and falls back to the registry).
    async fn fetch(&self, image: &str, dest: &Path) -> Result<bool, String>;
}

/// What a gateway's agent fetched, for its metrics: pulls from registries
/// and archives from peer gateways, by outcome, and the bytes each brought.
#[derive(Debug, Default)]
pub struct ImageStats {
    pub registry_pulls: AtomicU64,
    pub registry_failures: AtomicU64,
    pub registry_bytes: AtomicU64,
    pub peer_fetches: AtomicU64,
    pub peer_bytes: AtomicU64,
}

/// What the agent's jobs need to fetch images.
#[derive(Clone)]
pub(crate) struct Fetcher {
    pub registry: RegistryConfig,
    pub source: Option<Arc<dyn ImageSource>>,
    /// Where peer archives are written before import.
    pub scratch_dir: PathBuf,
    pub stats: Arc<ImageStats>,
}

impl Fetcher {
    /// Whether starting a container under `policy` needs the network at
    /// all (so the caller can report `Pulling`).
    pub async fn needs_fetch<R: Runtime>(
        &self,
        runtime: &R,
        image: &str,
        policy: PullPolicy,
    ) -> Result<bool, RuntimeError> {
        match policy {
            PullPolicy::Never => Ok(false),
            PullPolicy::Always => Ok(true),
            PullPolicy::IfNotPresent => Ok(!runtime.has_image(image).await?),
        }
    }

    /// Brings the image in: a missing one from the peer source if it has
    /// it, else (and always under `Always`) from the registry.
    pub async fn fetch<R: Runtime>(
        &self,
        runtime: &R,
        image: &str,
        policy: PullPolicy,
    ) -> Result<(), RuntimeError> {
        if policy == PullPolicy::Never {
            return Ok(());
        }
        let present = runtime.has_image(image).await?;
        if present && policy == PullPolicy::IfNotPresent {
            return Ok(());
        }
        let from_peer = !present && self.try_source(runtime, image).await?;
        if from_peer && policy == PullPolicy::IfNotPresent {
            return Ok(());
        }
        match runtime.pull_image(image, &self.registry).await {
            Ok(bytes) => {
                self.stats.registry_pulls.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .registry_bytes
                    .fetch_add(bytes, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                self.stats.registry_failures.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// Tries the peer source; true when the image is now present.
    async fn try_source<R: Runtime>(&self, runtime: &R, image: &str) -> Result<bool, RuntimeError> {
        let Some(source) = &self.source else {
            return Ok(false);
        };
        let image = crate::spec::normalize_image_ref(image);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dest = self.scratch_dir.join(format!(
            "gantry-fetch-{nanos}-{:08x}.tar",
            rand::random::<u32>()
        ));
        let result = match source.fetch(&image, &dest).await {
            Ok(true) => match runtime.import_image(&dest).await {
                Ok(()) => {
                    let present = runtime.has_image(&image).await;
                    if matches!(present, Ok(true)) {
                        let bytes = tokio::fs::metadata(&dest)
                            .await
                            .map(|m| m.len())
                            .unwrap_or(0);
                        self.stats.peer_fetches.fetch_add(1, Ordering::Relaxed);
                        self.stats.peer_bytes.fetch_add(bytes, Ordering::Relaxed);
                    }
                    present
                }
                Err(e) if e.is_unavailable() => Err(e),
                Err(e) => {
                    tracing::warn!(image = %image, error = %e, "archive from image source not importable; trying the registry");
                    Ok(false)
                }
            },
            Ok(false) => {
                tracing::debug!(image = %image, "image source does not have the image");
                Ok(false)
            }
            Err(e) => {
                tracing::warn!(image = %image, error = %e, "image source failed; trying the registry");
                Ok(false)
            }
        };
        if let Err(e) = tokio::fs::remove_file(&dest).await {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %dest.display(), error = %e, "could not remove fetched archive");
            }
        }
        if matches!(result, Ok(true)) {
            tracing::info!(image = %image, "image fetched from image source");
        }
        result
    }
}
