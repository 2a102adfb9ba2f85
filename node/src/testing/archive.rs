//! Builds an OCI image-layout tar holding one uncompressed layer with the
//! host's static busybox, the way `skopeo copy ... oci-archive:` lays it out.

use super::TestingError;
use crate::image::{goarch, MEDIA_OCI_CONFIG, MEDIA_OCI_LAYER, MEDIA_OCI_MANIFEST};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

const BUSYBOX: &str = "/bin/busybox";
const APPLETS: &[&str] = &[
    "sh", "sleep", "echo", "cat", "ls", "true", "false", "env", "id", "ps", "kill", "date",
    "touch", "mkdir", "rm", "test", "httpd", "nc",
];

/// What was built, for assertions.
#[derive(Debug, Clone)]
pub struct BusyboxArchive {
    pub path: PathBuf,
    pub name: String,
    pub manifest_digest: String,
    pub config_digest: String,
    pub layer_digest: String,
    /// The layer's chain id, i.e. the committed snapshot's name.
    pub chain_id: String,
}

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn archive_err(e: impl std::fmt::Display) -> TestingError {
    TestingError::Archive(e.to_string())
}

fn append(
    builder: &mut tar::Builder<impl std::io::Write>,
    path: &str,
    data: &[u8],
    mode: u32,
) -> Result<(), TestingError> {
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(mode);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    builder
        .append_data(&mut header, path, data)
        .map_err(archive_err)
}

fn layer(marker: Option<&str>) -> Result<Vec<u8>, TestingError> {
    let busybox = std::fs::read(BUSYBOX).map_err(|e| {
        TestingError::Archive(format!(
            "cannot read {BUSYBOX} ({e}); install busybox-static"
        ))
    })?;
    let mut b = tar::Builder::new(Vec::new());
    for dir in ["bin/", "etc/", "tmp/", "proc/", "sys/", "dev/", "run/"] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(if dir == "tmp/" { 0o1777 } else { 0o755 });
        h.set_size(0);
        h.set_mtime(0);
        b.append_data(&mut h, dir, std::io::empty())
            .map_err(archive_err)?;
    }
    append(&mut b, "bin/busybox", &busybox, 0o755)?;
    append(
        &mut b,
        "etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\n",
        0o644,
    )?;
    if let Some(marker) = marker {
        append(&mut b, "etc/gantry-marker", marker.as_bytes(), 0o644)?;
    }
    for applet in APPLETS {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_size(0);
        h.set_mtime(0);
        b.append_link(&mut h, format!("bin/{applet}"), "busybox")
            .map_err(archive_err)?;
    }
    b.into_inner().map_err(archive_err)
}

/// Writes the archive to `path`; `image_name` should look like a loopback
/// registry (`127.0.0.1:5000/gantry/busybox:test`) so that even a pull
/// attempt stays on the machine.
pub fn busybox_oci_archive(
    path: impl AsRef<Path>,
    image_name: &str,
) -> Result<BusyboxArchive, TestingError> {
    build(path.as_ref(), image_name, None, None)
}

/// The same image with `/etc/gantry-marker` holding `marker`, so tests can
/// publish a different version of a tag and see which one a container
/// runs.
pub fn busybox_oci_archive_marked(
    path: impl AsRef<Path>,
    image_name: &str,
    marker: &str,
) -> Result<BusyboxArchive, TestingError> {
    build(path.as_ref(), image_name, Some(marker), None)
}

/// The image with a Docker `HEALTHCHECK` in its config: `test` as
/// `CMD-SHELL`, run every `interval_secs`, 2 retries.
pub fn busybox_oci_archive_with_healthcheck(
    path: impl AsRef<Path>,
    image_name: &str,
    test: &str,
    interval_secs: u64,
) -> Result<BusyboxArchive, TestingError> {
    let seconds = 1_000_000_000u64;
    let healthcheck = json!({
        "Test": ["CMD-SHELL", test],
        "Interval": interval_secs * seconds,
        "Timeout": 2 * seconds,
        "Retries": 2
    });
    build(path.as_ref(), image_name, None, Some(healthcheck))
}

fn build(
    path: &Path,
    image_name: &str,
    marker: Option<&str>,
    healthcheck: Option<serde_json::Value>,
) -> Result<BusyboxArchive, TestingError> {
    let layer = layer(marker)?;
    let layer_digest = digest(&layer);
    let mut run_config = json!({
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        "Cmd": ["sh"]
    });
    if let Some(healthcheck) = healthcheck {
        run_config["Healthcheck"] = healthcheck;
    }
    let config = serde_json::to_vec(&json!({
        "architecture": goarch(),
        "os": "linux",
        "config": run_config,
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]}
    }))
    .map_err(archive_err)?;
    let config_digest = digest(&config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_OCI_MANIFEST,
        "config": {"mediaType": MEDIA_OCI_CONFIG, "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": MEDIA_OCI_LAYER, "digest": layer_digest, "size": layer.len()}]
    }))
    .map_err(archive_err)?;
    let manifest_digest = digest(&manifest);
    let tag = image_name
        .rsplit_once(':')
        .map(|(_, t)| t)
        .filter(|t| !t.contains('/'))
        .unwrap_or("latest");
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": MEDIA_OCI_MANIFEST,
            "digest": manifest_digest,
            "size": manifest.len(),
            "annotations": {
                "io.containerd.image.name": image_name,
                "org.opencontainers.image.ref.name": tag
            }
        }]
    }))
    .map_err(archive_err)?;
    let path = path.to_path_buf();
    let file = std::fs::File::create(&path)
        .map_err(|e| super::io(format!("creating {}", path.display()), e))?;
    let mut b = tar::Builder::new(file);
    append(
        &mut b,
        "oci-layout",
        br#"{"imageLayoutVersion":"1.0.0"}"#,
        0o644,
    )?;
    for (d, bytes) in [
        (&layer_digest, &layer),
        (&config_digest, &config),
        (&manifest_digest, &manifest),
    ] {
        let hex = d.trim_start_matches("sha256:");
        append(&mut b, &format!("blobs/sha256/{hex}"), bytes, 0o644)?;
    }
    append(&mut b, "index.json", &index, 0o644)?;
    b.into_inner().map_err(archive_err)?;
    Ok(BusyboxArchive {
        path,
        name: image_name.to_string(),
        manifest_digest,
        config_digest,
        chain_id: layer_digest.clone(),
        layer_digest,
    })
}
