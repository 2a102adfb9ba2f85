//! The containerd adapter behind [`Runtime`]: one gRPC channel, every call
//! scoped to our namespace through an interceptor.

mod cgroup;
mod content;
mod exec;
mod export;
mod images;
mod import;
mod oci;
mod pull;
mod task;
mod unpack;

pub use import::ImportedImage;
pub use pull::PullProgress;

use crate::registry::RegistryConfig;
use crate::runtime::{ActualContainer, ExitEvent, Runtime, RuntimeError, Started};
use crate::spec::ContainerSpec;
use containerd_client::services::v1::version_client::VersionClient;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

/// containerd's own default; the snapshotter we unpack into.
pub(crate) const SNAPSHOTTER: &str = "overlayfs";
/// gRPC messages up to containerd's default 16 MiB limit.
pub(crate) const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// Where and how to reach containerd.
#[derive(Debug, Clone)]
pub struct ContainerdConfig {
    pub socket: PathBuf,
    /// Several gateways can share one containerd through distinct namespaces.
    pub namespace: String,
    /// Container stdout/stderr files live here as `<container id>.log`.
    pub log_dir: PathBuf,
    /// A log larger than this is copied to `<id>.log.1` and truncated.
    pub max_log_bytes: u64,
    /// runc state directory; `None` keeps runc's default
    /// (`/run/containerd/runc`). Tests point it into their temp dir.
    pub runc_root: Option<PathBuf>,
}

impl ContainerdConfig {
    /// The namespace gateways use unless told otherwise; it also names
    /// their containers' cgroups (`/<namespace>/<id>`).
    pub const DEFAULT_NAMESPACE: &'static str = "gantry";

    pub fn new(log_dir: impl Into<PathBuf>) -> Self {
        ContainerdConfig {
            socket: PathBuf::from("/run/containerd/containerd.sock"),
            namespace: Self::DEFAULT_NAMESPACE.to_string(),
            log_dir: log_dir.into(),
            max_log_bytes: 10 * 1024 * 1024,
            runc_root: None,
        }
    }
}

/// Adds the namespace (and, during imports, the lease) header to every call,
/// which is what containerd's Go client does with its context.
#[derive(Clone)]
pub(crate) struct Headers {
    namespace: MetadataValue<Ascii>,
    lease: Option<MetadataValue<Ascii>>,
}

impl tonic::service::Interceptor for Headers {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        req.metadata_mut()
            .insert("containerd-namespace", self.namespace.clone());
        if let Some(lease) = &self.lease {
            req.metadata_mut().insert("containerd-lease", lease.clone());
        }
        Ok(req)
    }
}

pub(crate) type Svc = InterceptedService<Channel, Headers>;

/// The containerd implementation of [`Runtime`].
#[derive(Clone)]
pub struct ContainerdRuntime {
    channel: Channel,
    headers: Headers,
    config: ContainerdConfig,
}

impl ContainerdRuntime {
    /// Builds a client without contacting containerd: the channel connects
    /// on first use and reconnects after a daemon restart, so an agent can
    /// start before containerd does.
    pub fn new(config: ContainerdConfig) -> Result<Self, RuntimeError> {
        let namespace = config.namespace.parse().map_err(|_| {
            RuntimeError::InvalidSpec(format!("bad namespace {:?}", config.namespace))
        })?;
        let socket = config.socket.clone();
        let endpoint = Endpoint::try_from("http://[::]").map_err(|e| RuntimeError::Engine {
            op: "endpoint".into(),
            message: e.to_string(),
        })?;
        let channel = endpoint.connect_with_connector_lazy(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }));
        Ok(ContainerdRuntime {
            channel,
            headers: Headers {
                namespace,
                lease: None,
            },
            config,
        })
    }

    /// [`new`](Self::new), then checks that the daemon answers with a
    /// supported version.
    pub async fn connect(config: ContainerdConfig) -> Result<Self, RuntimeError> {
        let rt = Self::new(config)?;
        rt.version().await?;
        Ok(rt)
    }

    pub fn config(&self) -> &ContainerdConfig {
        &self.config
    }

    /// The file a container's stdout and stderr go to.
    pub fn log_path(&self, container_id: &str) -> PathBuf {
        crate::logs::log_path(&self.config.log_dir, container_id)
    }

    /// The daemon's version; refuses versions older than 1.6, whose API
    /// lacks what we use.
    pub async fn version(&self) -> Result<String, RuntimeError> {
        let mut client = VersionClient::new(self.channel.clone());
        let v = client
            .version(())
            .await
            .map_err(|s| status_error("version", s))?
            .into_inner();
        check_version(&v.version)?;
        Ok(v.version)
    }

    /// Imports an OCI image-layout tar (as `skopeo copy oci-archive:` writes)
    /// and unpacks it; a malformed archive leaves no image behind.
    pub async fn import_archive(&self, path: &Path) -> Result<Vec<ImportedImage>, RuntimeError> {
        import::import_archive(self, path).await
    }

    /// Pulls `reference` from its registry (plain HTTP only if the
    /// registry is listed in `registry.insecure`), storing the exact
    /// registry bytes, streaming missing layers with their digests checked,
    /// and unpacking; a failed pull leaves no image record behind.
    pub async fn pull(
        &self,
        reference: &str,
        registry: &RegistryConfig,
    ) -> Result<ImportedImage, RuntimeError> {
        pull::pull(self, reference, registry, Default::default()).await
    }

    /// [`pull`](Self::pull), counting its layer bytes into `progress` as
    /// they arrive.
    pub async fn pull_with_progress(
        &self,
        reference: &str,
        registry: &RegistryConfig,
        progress: std::sync::Arc<PullProgress>,
    ) -> Result<ImportedImage, RuntimeError> {
        pull::pull(self, reference, registry, progress).await
    }

    /// Writes an OCI image-layout tar of `image_name` (this platform only)
    /// to `dest`, which [`import_archive`](Self::import_archive) on another
    /// containerd turns into the same image (same digests). Blobs are
    /// streamed, never held whole in memory.
    pub async fn export_archive(&self, image_name: &str, dest: &Path) -> Result<(), RuntimeError> {
        export::export_archive(self, image_name, dest).await
    }

    /// Whether an image record exists under `name` (normalised), without
    /// fetching or unpacking anything.
    pub async fn has_image(&self, name: &str) -> Result<bool, RuntimeError> {
        Ok(images::image_target(self, name).await?.is_some())
    }

    /// The digest the image name points at (index or manifest), if any.
    pub async fn image_digest(&self, name: &str) -> Result<Option<String>, RuntimeError> {
        Ok(images::image_target(self, name).await?.map(|d| d.digest))
    }

    pub(crate) fn svc(&self) -> Svc {
        InterceptedService::new(self.channel.clone(), self.headers.clone())
    }

    /// A client context that also holds `lease`, so GC spares what we write.
    pub(crate) fn svc_with_lease(&self, lease: &str) -> Result<Svc, RuntimeError> {
        let lease = lease
            .parse()
            .map_err(|_| RuntimeError::InvalidSpec(format!("bad lease id {lease:?}")))?;
        let mut headers = self.headers.clone();
        headers.lease = Some(lease);
        Ok(InterceptedService::new(self.channel.clone(), headers))
    }

    pub(crate) fn namespace(&self) -> &str {
        &self.config.namespace
    }
}

fn check_version(version: &str) -> Result<(), RuntimeError> {
    let v = version.trim_start_matches('v');
    let mut parts = v.split(['.', '~', '-', '+']);
    let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    if (major, minor) < (1, 6) {
        return Err(RuntimeError::Engine {
            op: "version".into(),
            message: format!("containerd {version} is too old; 1.6 or newer is required"),
        });
    }
    Ok(())
}

/// Maps a gRPC status to our error, separating "daemon not there" (retry)
/// from real refusals.
pub(crate) fn status_error(op: &str, status: Status) -> RuntimeError {
    use tonic::Code;
    let transport = status.code() == Code::Unknown
        && (status.message().contains("transport") || status.message().contains("connect"));
    match status.code() {
        Code::Unavailable | Code::Cancelled => {
            RuntimeError::Unavailable(format!("{op}: {}", status.message()))
        }
        _ if transport => RuntimeError::Unavailable(format!("{op}: {}", status.message())),
        _ => RuntimeError::Engine {
            op: op.to_string(),
            message: format!("{:?}: {}", status.code(), status.message()),
        },
    }
}

impl Runtime for ContainerdRuntime {
    async fn check(&self) -> Result<String, RuntimeError> {
        self.version().await
    }

    async fn ensure_image(&self, image: &str) -> Result<(), RuntimeError> {
        unpack::resolve_image(self, image).await.map(|_| ())
    }

    async fn start(&self, spec: &ContainerSpec) -> Result<Started, RuntimeError> {
        task::create_and_start(self, spec).await
    }

    async fn has_image(&self, image: &str) -> Result<bool, RuntimeError> {
        ContainerdRuntime::has_image(self, image).await
    }

    async fn pull_image(
        &self,
        image: &str,
        registry: &RegistryConfig,
    ) -> Result<u64, RuntimeError> {
        self.pull(image, registry).await.map(|i| i.downloaded_bytes)
    }

    async fn exec(
        &self,
        container_id: &str,
        command: &[String],
        timeout: Duration,
    ) -> Result<crate::runtime::ExecOutcome, RuntimeError> {
        exec::exec(self, container_id, command, timeout).await
    }

    async fn stop_task(
        &self,
        container_id: &str,
        grace: Duration,
    ) -> Result<Option<i32>, RuntimeError> {
        task::stop_task(self, container_id, grace).await
    }

    async fn image_health_check(
        &self,
        image: &str,
    ) -> Result<Option<crate::spec::Probe>, RuntimeError> {
        let resolved = unpack::resolve_image(self, image).await?;
        Ok(resolved
            .config
            .healthcheck
            .as_ref()
            .and_then(|h| h.as_probe()))
    }

    async fn usage(&self, container_id: &str) -> Option<crate::runtime::Usage> {
        cgroup::usage(&self.config().namespace, container_id)
    }

    async fn import_image(&self, archive: &Path) -> Result<(), RuntimeError> {
        self.import_archive(archive).await.map(|_| ())
    }

    async fn image_changed(&self, container_id: &str, image: &str) -> Result<bool, RuntimeError> {
        task::image_changed(self, container_id, image).await
    }

    async fn recreate(&self, spec: &ContainerSpec, restarts: u32) -> Result<Started, RuntimeError> {
        task::recreate(self, spec, restarts).await
    }

    async fn restart(&self, container_id: &str, restarts: u32) -> Result<Started, RuntimeError> {
        task::restart(self, container_id, restarts).await
    }

    async fn remove(
        &self,
        container_id: &str,
        grace: Duration,
    ) -> Result<Option<i32>, RuntimeError> {
        task::remove(self, container_id, grace).await
    }

    async fn list(&self) -> Result<Vec<ActualContainer>, RuntimeError> {
        task::list(self).await
    }

    async fn exits(&self) -> Result<mpsc::Receiver<ExitEvent>, RuntimeError> {
        task::exits(self).await
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn versions_before_1_6_are_refused() {
        assert!(super::check_version("1.6.20~ds1").is_ok());
        assert!(super::check_version("v2.0.0").is_ok());
        assert!(super::check_version("1.5.9").is_err());
    }
}
