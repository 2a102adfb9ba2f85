//! The OCI runtime spec for a container: containerd's default unix spec
//! (`oci/spec.go populateDefaultUnixSpec`, v1.6) merged with the image
//! config (as Go's `WithImageConfig`) and our [`ContainerSpec`].

use crate::image::RunConfig;
use crate::runtime::RuntimeError;
use crate::spec::ContainerSpec;
use serde_json::{json, Value};

pub(crate) const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// CFS period used to express millicores as a quota.
const CPU_PERIOD: u64 = 100_000;

const CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// A host device, resolved by the caller (it needs a `stat`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HostDevice {
    pub path: String,
    /// "c" or "b".
    pub kind: &'static str,
    pub major: i64,
    pub minor: i64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// Host facts the spec depends on, gathered once by the caller so that
/// building stays a pure function.
#[derive(Debug, Clone, Default)]
pub(crate) struct HostFacts {
    pub hostname: String,
    pub devices: Vec<HostDevice>,
    /// cgroup v2, or v1 with memsw accounting: a swap limit can be set.
    pub swap_limit_supported: bool,
    pub has_hosts_file: bool,
    pub has_resolv_conf: bool,
}

/// The process to run: command replaces the entrypoint (dropping the
/// image's Cmd, as Kubernetes does), args replace Cmd.
pub(crate) fn process_args(spec: &ContainerSpec, image: &RunConfig) -> Vec<String> {
    if !spec.command.is_empty() {
        return spec.command.iter().chain(&spec.args).cloned().collect();
    }
    let entry = image.entrypoint.clone().unwrap_or_default();
    let cmd = if spec.args.is_empty() {
        image.cmd.clone().unwrap_or_default()
    } else {
        spec.args.clone()
    };
    entry.into_iter().chain(cmd).collect()
}

/// Image env (or a default PATH), then ours, replacing by key.
pub(crate) fn process_env(spec: &ContainerSpec, image: &RunConfig) -> Vec<String> {
    let mut env: Vec<String> = match &image.env {
        Some(e) if !e.is_empty() => e.clone(),
        _ => vec![DEFAULT_PATH.to_string()],
    };
    for (k, v) in &spec.env {
        let entry = format!("{k}={v}");
        match env
            .iter_mut()
            .find(|e| e.split('=').next() == Some(k.as_str()))
        {
            Some(slot) => *slot = entry,
            None => env.push(entry),
        }
    }
    env
}

/// Only numeric users are supported: names need the image's /etc/passwd.
fn process_user(image: &RunConfig) -> Result<(u32, u32), RuntimeError> {
    let user = image.user.as_deref().unwrap_or("").trim();
    if user.is_empty() || user == "root" {
        return Ok((0, 0));
    }
    let (u, g) = user.split_once(':').unwrap_or((user, ""));
    let uid: u32 = u.parse().map_err(|_| {
        RuntimeError::InvalidSpec(format!(
            "image user {user:?} is a name; only numeric uid[:gid] is supported"
        ))
    })?;
    let gid: u32 = if g.is_empty() {
        0
    } else {
        g.parse().map_err(|_| {
            RuntimeError::InvalidSpec(format!("image group in {user:?} is not numeric"))
        })?
    };
    Ok((uid, gid))
}

fn default_mounts() -> Vec<Value> {
    vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}),
        json!({"destination": "/run", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
    ]
}

/// Builds the runtime spec as JSON, checked by parsing it into
/// `oci_spec::runtime::Spec`, which is also what containerd stores.
pub(crate) fn build_spec(
    spec: &ContainerSpec,
    image: &RunConfig,
    namespace: &str,
    host: &HostFacts,
) -> Result<Value, RuntimeError> {
    let args = process_args(spec, image);
    if args.is_empty() {
        return Err(RuntimeError::InvalidSpec(format!(
            "{}: neither the spec nor image {} gives a command",
            spec.id, spec.image
        )));
    }
    let (uid, gid) = process_user(image)?;
    let cwd = image
        .working_dir
        .clone()
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| "/".to_string());
    let mut mounts = default_mounts();
    if spec.host_network {
        if host.has_hosts_file {
            mounts.push(json!({"destination": "/etc/hosts", "type": "bind", "source": "/etc/hosts", "options": ["rbind", "ro"]}));
        }
        if host.has_resolv_conf {
            mounts.push(json!({"destination": "/etc/resolv.conf", "type": "bind", "source": "/etc/resolv.conf", "options": ["rbind", "ro"]}));
        }
    }
    for m in &spec.mounts {
        if !m.target.starts_with('/') {
            return Err(RuntimeError::InvalidSpec(format!(
                "mount target {:?} is not absolute",
                m.target
            )));
        }
        let mode = if m.read_only { "ro" } else { "rw" };
        mounts.push(json!({"destination": m.target, "type": "bind", "source": m.source, "options": ["rbind", mode]}));
    }
    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
    ];
    if !spec.host_network {
        namespaces.push(json!({"type": "network"}));
    }
    let mut cgroup_devices = vec![json!({"allow": false, "access": "rwm"})];
    let mut devices = Vec::new();
    for d in &host.devices {
        cgroup_devices.push(json!({"allow": true, "type": d.kind, "major": d.major, "minor": d.minor, "access": "rwm"}));
        devices.push(json!({"path": d.path, "type": d.kind, "major": d.major, "minor": d.minor, "fileMode": d.mode & 0o7777, "uid": d.uid, "gid": d.gid}));
    }
    let mut resources = json!({"devices": cgroup_devices});
    if let Some(bytes) = spec.memory_bytes {
        let limit = i64::try_from(bytes)
            .map_err(|_| RuntimeError::InvalidSpec("memory limit too large".into()))?;
        resources["memory"] = if host.swap_limit_supported {
            json!({"limit": limit, "swap": limit})
        } else {
            json!({"limit": limit})
        };
    }
    if let Some(millis) = spec.cpu_millis {
        let shares = (millis * 1024 / 1000).max(2);
        let quota = i64::try_from(millis * CPU_PERIOD / 1000)
            .map_err(|_| RuntimeError::InvalidSpec("cpu limit too large".into()))?
            .max(1000);
        resources["cpu"] = json!({"shares": shares, "quota": quota, "period": CPU_PERIOD});
    }
    let hostname = if spec.host_network {
        host.hostname.clone()
    } else {
        spec.id.clone()
    };
    let value = json!({
        "ociVersion": "1.0.2-dev",
        "process": {
            "terminal": false,
            "user": {"uid": uid, "gid": gid},
            "args": args,
            "env": process_env(spec, image),
            "cwd": cwd,
            "capabilities": {"bounding": CAPS, "effective": CAPS, "permitted": CAPS},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": spec.read_only},
        "hostname": hostname,
        "mounts": mounts,
        "linux": {
            "resources": resources,
            "cgroupsPath": format!("/{namespace}/{}", spec.id),
            "namespaces": namespaces,
            "devices": devices,
            "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
        }
    });
    let typed: oci_spec::runtime::Spec = serde_json::from_value(value.clone()).map_err(|e| {
        RuntimeError::InvalidSpec(format!("generated runtime spec is invalid: {e}"))
    })?;
    serde_json::to_value(&typed)
        .map_err(|e| RuntimeError::InvalidSpec(format!("runtime spec: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> RunConfig {
        RunConfig {
            entrypoint: Some(vec!["/entry".into()]),
            cmd: Some(vec!["serve".into()]),
            env: Some(vec!["PATH=/bin".into(), "A=1".into()]),
            ..Default::default()
        }
    }

    #[test]
    fn args_follow_image_config_rules() {
        let mut s = ContainerSpec::new("c1", "w", 0, 1, "img");
        assert_eq!(process_args(&s, &image()), ["/entry", "serve"]);
        s.args = vec!["other".into()];
        assert_eq!(process_args(&s, &image()), ["/entry", "other"]);
        s.command = vec!["sh".into(), "-c".into()];
        s.args = vec!["echo hi".into()];
        assert_eq!(process_args(&s, &image()), ["sh", "-c", "echo hi"]);
    }

    #[test]
    fn env_overrides_by_key() {
        let mut s = ContainerSpec::new("c1", "w", 0, 1, "img");
        s.env.insert("A".into(), "2".into());
        s.env.insert("B".into(), "3".into());
        assert_eq!(process_env(&s, &image()), ["PATH=/bin", "A=2", "B=3"]);
    }

    #[test]
    fn spec_has_limits_cgroup_path_and_host_network() {
        let mut s = ContainerSpec::new("c1", "w", 0, 1, "img");
        s.cpu_millis = Some(500);
        s.memory_bytes = Some(64 << 20);
        s.read_only = true;
        let host = HostFacts {
            hostname: "gw1".into(),
            swap_limit_supported: true,
            ..Default::default()
        };
        let v = build_spec(&s, &image(), "gantry", &host).unwrap();
        assert_eq!(v["linux"]["cgroupsPath"], "/gantry/c1");
        assert_eq!(v["linux"]["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(v["linux"]["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(v["root"]["readonly"], true);
        assert_eq!(v["hostname"], "gw1");
        let ns = v["linux"]["namespaces"].as_array().unwrap();
        assert!(ns.iter().all(|n| n["type"] != "network"));
    }

    #[test]
    fn named_users_are_refused() {
        let img = RunConfig {
            user: Some("nobody".into()),
            cmd: Some(vec!["x".into()]),
            ..Default::default()
        };
        let s = ContainerSpec::new("c1", "w", 0, 1, "img");
        assert!(build_spec(&s, &img, "gantry", &HostFacts::default()).is_err());
    }
}
