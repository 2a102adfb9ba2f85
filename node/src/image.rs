//! The few OCI image JSON documents we read, with only the fields we use,
//! and platform selection.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::Duration;

use crate::spec::{Probe, ProbeCheck};

pub const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<HashMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Index {
    pub manifests: Vec<Descriptor>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ImageConfig {
    #[serde(default)]
    pub config: Option<RunConfig>,
    pub rootfs: RootFs,
}

/// The image's defaults for the process; Docker's PascalCase names.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub working_dir: Option<String>,
    /// Docker's `HEALTHCHECK`.
    #[serde(default)]
    pub healthcheck: Option<HealthConfig>,
}

/// Docker's health check in an image config; durations in nanoseconds.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthConfig {
    #[serde(default)]
    pub test: Option<Vec<String>>,
    #[serde(default)]
    pub interval: Option<i64>,
    #[serde(default)]
    pub timeout: Option<i64>,
    #[serde(default)]
    pub start_period: Option<i64>,
    #[serde(default)]
    pub retries: Option<i64>,
}

impl HealthConfig {
    /// As a probe, with Docker's defaults (every 30 s, 30 s to answer, 3
    /// retries); None for `NONE`, an empty test or one we cannot run.
    pub fn as_probe(&self) -> Option<Probe> {
        let test = self.test.as_ref()?;
        let command = match test.first().map(String::as_str) {
            Some("CMD") if test.len() > 1 => test[1..].to_vec(),
            Some("CMD-SHELL") if test.len() == 2 => {
                vec!["/bin/sh".into(), "-c".into(), test[1].clone()]
            }
            _ => return None,
        };
        let nanos = |v: Option<i64>, default: Duration| match v {
            Some(n) if n > 0 => Duration::from_nanos(n as u64),
            _ => default,
        };
        let mut probe = Probe::new(ProbeCheck::Exec { command });
        probe.period = nanos(self.interval, Duration::from_secs(30));
        probe.timeout = nanos(self.timeout, Duration::from_secs(30));
        probe.initial_delay = nanos(self.start_period, Duration::ZERO);
        probe.failure_threshold = match self.retries {
            Some(n) if n > 0 => u32::try_from(n).unwrap_or(u32::MAX),
            _ => 3,
        };
        Some(probe)
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct RootFs {
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

pub fn is_index(media_type: &str) -> bool {
    media_type == MEDIA_OCI_INDEX || media_type == MEDIA_DOCKER_LIST
}

pub fn is_manifest(media_type: &str) -> bool {
    media_type == MEDIA_OCI_MANIFEST || media_type == MEDIA_DOCKER_MANIFEST
}

/// Go's GOARCH for this build, which is how image platforms are named.
pub fn goarch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// Picks this machine's linux manifest from an index, skipping attestation
/// entries (`unknown/unknown`); entries without a platform match anything.
pub fn pick_platform(manifests: &[Descriptor]) -> Option<(usize, &Descriptor)> {
    let arch = goarch();
    let matches = |d: &Descriptor| match &d.platform {
        Some(p) => p.os == "linux" && p.architecture == arch,
        None => true,
    };
    let preferred_variant = match arch {
        "arm" => Some("v7"),
        "arm64" => Some("v8"),
        _ => None,
    };
    let candidates: Vec<(usize, &Descriptor)> = manifests
        .iter()
        .enumerate()
        .filter(|(_, d)| matches(d))
        .collect();
    candidates
        .iter()
        .find(|(_, d)| {
            preferred_variant.is_some()
                && d.platform.as_ref().and_then(|p| p.variant.as_deref()) == preferred_variant
        })
        .or_else(|| candidates.first())
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(os: &str, arch: &str) -> Descriptor {
        Descriptor {
            media_type: MEDIA_OCI_MANIFEST.into(),
            digest: format!("sha256:{os}{arch}"),
            size: 1,
            annotations: None,
            platform: Some(Platform {
                os: os.into(),
                architecture: arch.into(),
                variant: None,
            }),
        }
    }

    #[test]
    fn platform_skips_attestations_and_other_arches() {
        let list = vec![
            desc("unknown", "unknown"),
            desc("linux", "s390x"),
            desc("linux", goarch()),
        ];
        let (i, _) = pick_platform(&list).unwrap();
        assert_eq!(i, 2);
        assert!(pick_platform(&list[..2]).is_none());
    }
}
