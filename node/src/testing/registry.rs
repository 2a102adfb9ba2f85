//! A throwaway OCI registry on 127.0.0.1 (Debian's `docker-registry`,
//! i.e. distribution 2.8) with filesystem storage in a test directory,
//! filled with `skopeo`. It listens on loopback only and nothing in it
//! reaches the internet.

use super::{io, TestingError};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const REGISTRY_BIN: &str = "docker-registry";
const SKOPEO_BIN: &str = "skopeo";

/// A running registry; killed (by its own pid) on drop.
pub struct LoopbackRegistry {
    dir: PathBuf,
    addr: String,
    child: Option<Child>,
    pushes: u32,
}

impl LoopbackRegistry {
    /// Starts the registry with its storage and log under `dir` on a free
    /// loopback port, and waits until `/v2/` answers.
    pub async fn start(dir: impl AsRef<Path>) -> Result<Self, TestingError> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(dir.join("storage"))
            .map_err(|e| io(format!("creating {}", dir.display()), e))?;
        // The port is free now; a racing process could take it before the
        // registry binds, in which case the registry exits and we retry.
        let mut last = String::new();
        for _ in 0..3 {
            let port = free_port()?;
            let mut this = LoopbackRegistry {
                addr: format!("127.0.0.1:{port}"),
                dir: dir.clone(),
                child: None,
                pushes: 0,
            };
            match this.spawn().await {
                Ok(()) => return Ok(this),
                Err(TestingError::NotReady(m)) => last = m,
                Err(e) => return Err(e),
            }
        }
        Err(TestingError::NotReady(format!(
            "registry did not start: {last}"
        )))
    }

    fn config_yaml(&self) -> String {
        format!(
            r#"version: 0.1
log:
  level: info
  formatter: text
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
http:
  addr: {addr}
  secret: gantry-loopback-test
"#,
            root = self.storage().display(),
            addr = self.addr
        )
    }

    async fn spawn(&mut self) -> Result<(), TestingError> {
        let config = self.dir.join("registry.yml");
        std::fs::write(&config, self.config_yaml())
            .map_err(|e| io("writing registry config", e))?;
        let log =
            std::fs::File::create(self.log_path()).map_err(|e| io("creating registry log", e))?;
        let log2 = log.try_clone().map_err(|e| io("opening registry log", e))?;
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config)
            // No REGISTRY_* variables from the environment may add
            // listeners or storage.
            .env_clear()
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => TestingError::RegistryMissing,
                _ => io("spawning docker-registry", e),
            })?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(TestingError::NotReady(format!(
                        "docker-registry exited with {status}: {}",
                        self.access_log()
                    )));
                }
            }
            if http_status(&self.addr, "/v2/").await == Some(200) {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.stop();
                return Err(TestingError::NotReady(format!(
                    "docker-registry on {} did not answer",
                    self.addr
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `127.0.0.1:<port>`, as written in image references and in
    /// [`RegistryConfig::insecure`](crate::registry::RegistryConfig).
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// A reference to `repo_tag` (e.g. `gantry/busybox:test`) here.
    pub fn reference(&self, repo_tag: &str) -> String {
        format!("{}/{repo_tag}", self.addr)
    }

    pub fn storage(&self) -> PathBuf {
        self.dir.join("storage")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("registry.log")
    }

    /// The registry's log, including one access-log line per request
    /// (`"GET /v2/... HTTP/1.1" 200 ...`).
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// How many requests so far had `needle` in their request line, e.g.
    /// `"GET /v2/gantry/busybox/blobs/"`.
    pub fn requests_matching(&self, needle: &str) -> usize {
        self.access_log()
            .lines()
            .filter(|l| l.contains(needle) && l.contains(" HTTP/1."))
            .count()
    }

    /// Pushes an OCI archive as `repo_tag` with skopeo (plain HTTP) and
    /// returns the manifest digest the registry now serves for it. skopeo
    /// compresses the layers, so this digest differs from the archive's.
    pub async fn push_archive(
        &mut self,
        archive: &Path,
        repo_tag: &str,
    ) -> Result<String, TestingError> {
        self.pushes += 1;
        let digest_file = self.dir.join(format!("push-{}.digest", self.pushes));
        let output = tokio::process::Command::new(SKOPEO_BIN)
            .arg("--insecure-policy")
            .arg("copy")
            .arg("--dest-tls-verify=false")
            .arg("--digestfile")
            .arg(&digest_file)
            .arg(format!("oci-archive:{}", archive.display()))
            .arg(format!("docker://{}", self.reference(repo_tag)))
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => TestingError::SkopeoMissing,
                _ => io("running skopeo", e),
            })?;
        if !output.status.success() {
            return Err(TestingError::Registry(format!(
                "skopeo copy to {} failed: {}",
                self.reference(repo_tag),
                String::from_utf8_lossy(&output.stderr)
            )));
        }
        let digest = std::fs::read_to_string(&digest_file)
            .map_err(|e| io("reading skopeo digest file", e))?;
        Ok(digest.trim().to_string())
    }

    /// Where the registry stores a blob's bytes (to read or damage it).
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.storage()
            .join("docker/registry/v2/blobs/sha256")
            .join(hex.get(..2).unwrap_or("00"))
            .join(hex)
            .join("data")
    }

    pub fn read_blob(&self, digest: &str) -> Result<Vec<u8>, TestingError> {
        let path = self.blob_path(digest);
        std::fs::read(&path).map_err(|e| io(format!("reading {}", path.display()), e))
    }

    /// Layer digests of the manifest `manifest_digest` (a pushed image).
    pub fn layer_digests(&self, manifest_digest: &str) -> Result<Vec<String>, TestingError> {
        let manifest: serde_json::Value = serde_json::from_slice(&self.read_blob(manifest_digest)?)
            .map_err(|e| TestingError::Registry(format!("bad manifest: {e}")))?;
        Ok(manifest["layers"]
            .as_array()
            .map(|layers| {
                layers
                    .iter()
                    .filter_map(|l| l["digest"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Kills the registry (by its pid).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for LoopbackRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> Result<u16, TestingError> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| io("finding a free port", e))?;
    let port = listener
        .local_addr()
        .map_err(|e| io("finding a free port", e))?
        .port();
    Ok(port)
}

/// The status of a plain HTTP GET, or None if nothing answered.
async fn http_status(addr: &str, path: &str) -> Option<u16> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut head = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut head))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&head[..n]);
    text.split_whitespace().nth(1)?.parse().ok()
}
