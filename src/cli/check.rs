//! `gantry check`: what an installer asks before and after `gantry init`
//! or `join` on a box, answered on the box itself, one verdict line per
//! check (ok, warn, FAIL) and a summary: is containerd reachable, are the
//! cgroup controllers there that limits need, is the clock synchronised
//! and inside the certificates' validity, is there disk space, is the port
//! free or served by this gateway, when do the certificates expire. Exit 1
//! when anything failed. The verdict rules are pure functions; the probes
//! around them read the machine.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use serde_json::{json, Value};

use super::args::OutputFormat;
use crate::config::GatewayConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    Warn,
    Fail,
}

impl Verdict {
    fn word(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Warn => "warn",
            Verdict::Fail => "FAIL",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Check {
    pub name: &'static str,
    pub verdict: Verdict,
    pub detail: String,
}

fn check(name: &'static str, verdict: Verdict, detail: impl Into<String>) -> Check {
    Check {
        name,
        verdict,
        detail: detail.into(),
    }
}

const MIB: u64 = 1 << 20;

/// Free space under the data dir: RocksDB stops writing (and the gateway
/// refuses writes) when it runs out.
pub fn disk_verdict(free: u64) -> (Verdict, String) {
    let text = format!("{} MiB free for the data dir", free / MIB);
    if free < 100 * MIB {
        (
            Verdict::Fail,
            format!("{text}: under 100 MiB, writes will fail"),
        )
    } else if free < 1024 * MIB {
        (Verdict::Warn, format!("{text}: under 1 GiB"))
    } else {
        (Verdict::Ok, text)
    }
}

/// A certificate's remaining life: a running gateway renews its own at
/// 70-90 % of its life, so a short one on a stopped gateway is the risk.
pub fn certificate_verdict(
    what: &str,
    not_before: i64,
    not_after: i64,
    now: i64,
) -> (Verdict, String) {
    let days = (not_after - now) / 86_400;
    if now < not_before {
        return (
            Verdict::Fail,
            format!("{what} is not valid yet: this machine's clock is behind (set the time)"),
        );
    }
    if now >= not_after {
        return (Verdict::Fail, format!("{what} expired"));
    }
    let text = format!("{what} valid for {days} more days");
    if days < 30 {
        (
            Verdict::Warn,
            format!("{text} (a running gateway renews it by itself)"),
        )
    } else {
        (Verdict::Ok, text)
    }
}

/// The cgroup controllers container limits need, from
/// `/sys/fs/cgroup/cgroup.controllers` (v2), or whether v1 is mounted.
pub fn cgroup_verdict(v2_controllers: Option<&str>, v1_memory: bool) -> (Verdict, String) {
    match v2_controllers {
        Some(list) => {
            let have: Vec<&str> = list.split_whitespace().collect();
            let missing: Vec<&str> = ["cpu", "memory", "pids"]
                .into_iter()
                .filter(|c| !have.contains(c))
                .collect();
            if missing.is_empty() {
                (Verdict::Ok, "cgroup v2 with cpu, memory and pids".into())
            } else {
                (
                    Verdict::Warn,
                    format!(
                        "cgroup v2 without {}: those limits are not enforced",
                        missing.join(", ")
                    ),
                )
            }
        }
        None if v1_memory => (Verdict::Warn, "cgroup v1: works, v2 is recommended".into()),
        None => (
            Verdict::Fail,
            "no cgroup hierarchy found under /sys/fs/cgroup".into(),
        ),
    }
}

fn data_dir_check(dir: &Path, config: &Option<GatewayConfig>) -> Check {
    match config {
        Some(c) => check(
            "data dir",
            Verdict::Ok,
            format!(
                "{}: gateway {} (id {}) of cluster {}",
                dir.display(),
                c.name,
                c.node_id,
                c.cluster_id
            ),
        ),
        None => check(
            "data dir",
            Verdict::Warn,
            format!(
                "{} holds no gateway yet (gantry init or gantry join)",
                dir.display()
            ),
        ),
    }
}

async fn containerd_check(socket: &str) -> Check {
    let mut config = gantry_node::ContainerdConfig::new(std::env::temp_dir());
    config.socket = PathBuf::from(socket);
    let reached = match gantry_node::ContainerdRuntime::new(config) {
        Ok(runtime) => tokio::time::timeout(Duration::from_secs(5), runtime.version())
            .await
            .map_err(|_| "no answer within 5 s".to_string())
            .and_then(|v| v.map_err(|e| e.to_string())),
        Err(e) => Err(e.to_string()),
    };
    match reached {
        Ok(version) => check("containerd", Verdict::Ok, format!("{version} at {socket}")),
        Err(e) => check(
            "containerd",
            Verdict::Fail,
            format!("cannot reach {socket}: {e} (is containerd installed and running? --containerd-socket)"),
        ),
    }
}

fn cgroup_check() -> Check {
    let v2 = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers").ok();
    let v1 = Path::new("/sys/fs/cgroup/memory").exists();
    let (verdict, detail) = cgroup_verdict(v2.as_deref(), v1);
    check("cgroups", verdict, detail)
}

fn clock_check() -> Check {
    let out = std::process::Command::new("timedatectl")
        .args(["show", "--property=NTPSynchronized", "--value"])
        .output();
    match out {
        Ok(out) if out.status.success() => {
            if String::from_utf8_lossy(&out.stdout).trim() == "yes" {
                check("clock", Verdict::Ok, "synchronised (NTP)")
            } else {
                check(
                    "clock",
                    Verdict::Warn,
                    "not synchronised: certificates, tokens and events use the wall clock (fencing does not)",
                )
            }
        }
        _ => check(
            "clock",
            Verdict::Warn,
            "cannot tell whether it is synchronised (no timedatectl answer)",
        ),
    }
}

fn disk_check(dir: &Path) -> Check {
    // The data dir, or the nearest parent that exists (before `init`).
    let mut at = dir;
    while !at.exists() {
        match at.parent() {
            Some(parent) => at = parent,
            None => break,
        }
    }
    match rustix::fs::statvfs(at) {
        Ok(s) => {
            let (verdict, detail) = disk_verdict(s.f_bavail.saturating_mul(s.f_frsize));
            check("disk", verdict, detail)
        }
        Err(e) => check(
            "disk",
            Verdict::Fail,
            format!("cannot read free space of {}: {e}", at.display()),
        ),
    }
}

async fn port_check(listen: Option<&str>) -> Check {
    let Some(listen) = listen else {
        return check(
            "port",
            Verdict::Ok,
            "no listen address to check (no gateway here yet)",
        );
    };
    let answered = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect(listen),
    )
    .await
    .is_ok_and(|c| c.is_ok());
    if answered {
        return check(
            "port",
            Verdict::Ok,
            format!("{listen}: a gateway serves on it"),
        );
    }
    match tokio::net::TcpListener::bind(listen).await {
        Ok(_) => check("port", Verdict::Ok, format!("{listen} is free")),
        Err(e) => check(
            "port",
            Verdict::Fail,
            format!("cannot listen on {listen}: {e} (another program holds it?)"),
        ),
    }
}

fn certificate_checks(dir: &Path, now: i64) -> Vec<Check> {
    let mut out = Vec::new();
    if let Ok(creds) = crate::trust::files::read_credentials(dir) {
        if let Ok(info) = gantry_pki::cert_info(creds.leaf_der()) {
            let (v, d) = certificate_verdict(
                "the gateway certificate",
                info.not_before,
                info.not_after,
                now,
            );
            out.push(check("certificate", v, d));
        }
    }
    if let Ok(bundle) = crate::trust::files::read_ca_bundle(dir) {
        if let Some(info) = bundle
            .first()
            .and_then(|der| gantry_pki::cert_info(der).ok())
        {
            let (v, d) =
                certificate_verdict("the cluster CA", info.not_before, info.not_after, now);
            out.push(check("ca", v, d));
        }
    }
    out
}

/// Runs every check and prints them; exit 1 when one failed.
pub async fn run(
    data_dir: Option<PathBuf>,
    socket: Option<String>,
    format: OutputFormat,
) -> ExitCode {
    let dir = data_dir.unwrap_or_else(|| PathBuf::from("/var/lib/gantry"));
    let config = GatewayConfig::load(&dir).ok().flatten();
    let socket = socket
        .or_else(|| config.as_ref().map(|c| c.containerd_socket.clone()))
        .unwrap_or_else(|| crate::config::DEFAULT_CONTAINERD_SOCKET.to_string());
    let now = (crate::clock::wall_ms() / 1000) as i64;
    let mut checks = vec![
        data_dir_check(&dir, &config),
        containerd_check(&socket).await,
        cgroup_check(),
        clock_check(),
        disk_check(&dir),
        port_check(config.as_ref().map(|c| c.listen.as_str())).await,
    ];
    checks.extend(certificate_checks(&dir, now));
    let count = |v: Verdict| checks.iter().filter(|c| c.verdict == v).count();
    let (ok, warn, fail) = (
        count(Verdict::Ok),
        count(Verdict::Warn),
        count(Verdict::Fail),
    );
    match format {
        OutputFormat::Table | OutputFormat::Wide => {
            for c in &checks {
                println!("{:<5} {:<12} {}", c.verdict.word(), c.name, c.detail);
            }
            println!("verdict: {ok} ok, {warn} warnings, {fail} failed");
        }
        _ => {
            let doc: Value = json!({
                "checks": checks.iter().map(|c| json!({"check": c.name, "verdict": c.verdict.word(), "detail": c.detail})).collect::<Vec<_>>(),
                "ok": ok, "warnings": warn, "failed": fail,
            });
            let text = match format {
                OutputFormat::Yaml => serde_yaml_ng::to_string(&doc).map_err(|e| e.to_string()),
                _ => serde_json::to_string_pretty(&doc)
                    .map(|t| format!("{t}\n"))
                    .map_err(|e| e.to_string()),
            };
            match text {
                Ok(text) => print!("{text}"),
                Err(e) => eprintln!("error: {e}"),
            }
        }
    }
    if fail > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_follow_the_thresholds() {
        assert_eq!(disk_verdict(50 * MIB).0, Verdict::Fail);
        assert_eq!(disk_verdict(500 * MIB).0, Verdict::Warn);
        assert_eq!(disk_verdict(5000 * MIB).0, Verdict::Ok);
        let day = 86_400;
        assert_eq!(
            certificate_verdict("c", 0, 100 * day, 200 * day).0,
            Verdict::Fail
        );
        assert_eq!(
            certificate_verdict("c", 10 * day, 100 * day, 5 * day).0,
            Verdict::Fail
        );
        assert_eq!(
            certificate_verdict("c", 0, 100 * day, 90 * day).0,
            Verdict::Warn
        );
        assert_eq!(certificate_verdict("c", 0, 100 * day, day).0, Verdict::Ok);
        assert_eq!(
            cgroup_verdict(Some("cpuset cpu io memory pids"), false).0,
            Verdict::Ok
        );
        let (v, d) = cgroup_verdict(Some("cpu io"), false);
        assert_eq!(v, Verdict::Warn);
        assert!(d.contains("memory, pids"), "{d}");
        assert_eq!(cgroup_verdict(None, true).0, Verdict::Warn);
        assert_eq!(cgroup_verdict(None, false).0, Verdict::Fail);
    }
}
