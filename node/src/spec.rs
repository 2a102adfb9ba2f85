//! The instance description the agent receives, in gantry's terms rather
//! than containerd's, so callers never see OCI or gRPC types.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// One replica of a workload, as it should run on this gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// containerd container id; must be unique in the namespace and stable
    /// for a (workload, replica, generation), e.g. `web-0-g3`.
    pub id: String,
    pub workload: String,
    pub replica: u32,
    /// Bumped by the control plane when the workload spec changes; a
    /// container of another generation is replaced.
    pub generation: u64,
    /// Image reference; short names are normalised like Docker does.
    pub image: String,
    /// Replaces the image's Entrypoint (and then drops the image's Cmd, as
    /// Kubernetes does) when not empty.
    #[serde(default)]
    pub command: Vec<String>,
    /// Replaces the image's Cmd when not empty.
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub cpu_millis: Option<u64>,
    #[serde(default)]
    pub memory_bytes: Option<u64>,
    #[serde(default)]
    pub mounts: Vec<MountSpec>,
    /// Host device paths (e.g. `/dev/ttyUSB0`) passed through to the container.
    #[serde(default)]
    pub devices: Vec<String>,
    /// There is no CNI in this design, so host networking is the default.
    #[serde(default = "default_true")]
    pub host_network: bool,
    /// Makes the root filesystem read-only.
    #[serde(default)]
    pub read_only: bool,
    /// Health checks the agent runs against the running container.
    #[serde(default)]
    pub probes: Probes,
}

/// Kubernetes' three probes. A startup probe holds the other two until it
/// passes; liveness failures restart the container; readiness only marks
/// it ready or not.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Probes {
    #[serde(default)]
    pub startup: Option<Probe>,
    #[serde(default)]
    pub liveness: Option<Probe>,
    #[serde(default)]
    pub readiness: Option<Probe>,
}

impl Probes {
    pub fn is_empty(&self) -> bool {
        self.startup.is_none() && self.liveness.is_none() && self.readiness.is_none()
    }
}

/// One probe: what to check and how often, with Kubernetes' defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    pub check: ProbeCheck,
    pub period: Duration,
    pub timeout: Duration,
    /// Consecutive failures that make the verdict "failed".
    pub failure_threshold: u32,
    /// Consecutive successes that make it "passed" again (readiness).
    pub success_threshold: u32,
    pub initial_delay: Duration,
}

impl Probe {
    /// A probe with Kubernetes' defaults: every 10 s, 1 s to answer, 3
    /// failures, 1 success, no initial delay.
    pub fn new(check: ProbeCheck) -> Self {
        Probe {
            check,
            period: Duration::from_secs(10),
            timeout: Duration::from_secs(1),
            failure_threshold: 3,
            success_threshold: 1,
            initial_delay: Duration::ZERO,
        }
    }
}

/// How a probe asks. `Http` and `Tcp` target the container's network,
/// which is the host's (there is no CNI), so they connect to loopback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProbeCheck {
    /// Runs inside the container (containerd exec); exit code 0 passes.
    Exec { command: Vec<String> },
    /// A GET; a status from 200 to 399 passes.
    Http { port: u16, path: String },
    /// A TCP connect passes.
    Tcp { port: u16 },
}

fn default_true() -> bool {
    true
}

/// A host path bind-mounted into the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountSpec {
    pub source: String,
    pub target: String,
    #[serde(default)]
    pub read_only: bool,
}

/// What to do when a container's main process exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    #[default]
    Always,
    OnFailure,
    Never,
}

/// When to fetch an instance's image (Kubernetes' `imagePullPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PullPolicy {
    /// Fetch only when the image is missing (from a peer first, then the
    /// registry).
    #[default]
    IfNotPresent,
    /// Ask the registry before every container start, so a re-pushed tag
    /// is picked up; only changed blobs are transferred.
    Always,
    /// Never fetch: the image must have been imported.
    Never,
}

impl RestartPolicy {
    /// Whether an exit with `code` should be followed by a restart.
    pub fn wants_restart(self, code: i32) -> bool {
        match self {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => code != 0,
            RestartPolicy::Never => false,
        }
    }
}

impl ContainerSpec {
    /// A spec with defaults for everything but identity and image; handy
    /// for callers and tests that only set a few fields.
    pub fn new(
        id: impl Into<String>,
        workload: impl Into<String>,
        replica: u32,
        generation: u64,
        image: impl Into<String>,
    ) -> Self {
        ContainerSpec {
            id: id.into(),
            workload: workload.into(),
            replica,
            generation,
            image: image.into(),
            command: Vec::new(),
            args: Vec::new(),
            env: BTreeMap::new(),
            cpu_millis: None,
            memory_bytes: None,
            mounts: Vec::new(),
            devices: Vec::new(),
            host_network: true,
            read_only: false,
            probes: Probes::default(),
        }
    }
}

/// containerd accepts `[A-Za-z0-9]` then `[A-Za-z0-9._-]`, up to 76 chars;
/// checking here gives the caller a readable reason instead of a gRPC one.
pub fn validate_container_id(id: &str) -> Result<(), String> {
    let mut chars = id.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !first_ok || !rest_ok || id.len() > 76 {
        return Err(format!(
            "invalid container id {id:?}: use [A-Za-z0-9][A-Za-z0-9._-]*, at most 76 characters"
        ));
    }
    Ok(())
}

/// Normalises an image reference as Docker and containerd's `refdocker` do,
/// so `busybox` and `docker.io/library/busybox:latest` name one image.
pub fn normalize_image_ref(reference: &str) -> String {
    let (name, suffix) = match reference.find('@') {
        Some(i) => (&reference[..i], &reference[i..]),
        None => (reference, ""),
    };
    let (first, rest) = match name.split_once('/') {
        Some((f, r)) => (f, Some(r)),
        None => (name, None),
    };
    let is_host =
        rest.is_some() && (first.contains('.') || first.contains(':') || first == "localhost");
    let mut full = if is_host {
        name.to_string()
    } else if rest.is_some() {
        format!("docker.io/{name}")
    } else {
        format!("docker.io/library/{name}")
    };
    let last = full.rsplit('/').next().unwrap_or("");
    if suffix.is_empty() && !last.contains(':') {
        full.push_str(":latest");
    }
    full.push_str(suffix);
    full
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_refs_are_normalised() {
        assert_eq!(
            normalize_image_ref("busybox"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(normalize_image_ref("me/app:1"), "docker.io/me/app:1");
        assert_eq!(
            normalize_image_ref("127.0.0.1:5000/gantry/busybox:test"),
            "127.0.0.1:5000/gantry/busybox:test"
        );
        assert_eq!(normalize_image_ref("localhost/x"), "localhost/x:latest");
        assert_eq!(
            normalize_image_ref("reg.io/x@sha256:00"),
            "reg.io/x@sha256:00"
        );
    }

    #[test]
    fn container_ids_are_checked() {
        assert!(validate_container_id("web-0-g3").is_ok());
        assert!(validate_container_id("-x").is_err());
        assert!(validate_container_id("a/b").is_err());
    }

    #[test]
    fn restart_policy_decides_on_exit_code() {
        assert!(RestartPolicy::Always.wants_restart(0));
        assert!(!RestartPolicy::OnFailure.wants_restart(0));
        assert!(RestartPolicy::OnFailure.wants_restart(137));
        assert!(!RestartPolicy::Never.wants_restart(1));
    }
}
