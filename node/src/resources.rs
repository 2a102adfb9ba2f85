//! What this gateway can offer to workloads, as the scheduler counts it.

use serde::{Deserialize, Serialize};
use std::path::Path;

/// Capacity of one gateway, in the units the scheduler places by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// CPU in millicores (1000 = one core).
    pub cpu_millis: u64,
    /// Total memory in bytes.
    pub memory_bytes: u64,
}

/// Why the gateway's capacity could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ResourcesError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no MemTotal line in /proc/meminfo")]
    NoMemTotal,
    #[error("cannot count CPUs: {0}")]
    Cpu(#[source] std::io::Error),
}

/// Reads the real capacity: CPUs (bounded by a cgroup CPU quota when one is
/// set, since a gateway agent may itself run confined) and memory (MemTotal,
/// bounded by a cgroup memory limit for the same reason).
pub fn discover() -> Result<Resources, ResourcesError> {
    let cpus = std::thread::available_parallelism().map_err(ResourcesError::Cpu)?;
    let mut cpu_millis = cpus.get() as u64 * 1000;
    if let Some(quota) = cgroup_cpu_millis() {
        cpu_millis = cpu_millis.min(quota.max(1));
    }
    let meminfo_path = "/proc/meminfo";
    let meminfo = std::fs::read_to_string(meminfo_path).map_err(|source| ResourcesError::Read {
        path: meminfo_path.to_string(),
        source,
    })?;
    let mut memory_bytes = parse_mem_total(&meminfo).ok_or(ResourcesError::NoMemTotal)?;
    if let Some(limit) = cgroup_memory_limit() {
        memory_bytes = memory_bytes.min(limit);
    }
    Ok(Resources {
        cpu_millis,
        memory_bytes,
    })
}

/// `MemTotal:  16303460 kB` -> bytes.
fn parse_mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut parts = line["MemTotal:".len()..].split_whitespace();
    let value: u64 = parts.next()?.parse().ok()?;
    let factor = match parts.next() {
        Some("kB") | Some("KB") => 1024,
        Some("mB") | Some("MB") => 1024 * 1024,
        None => 1,
        Some(_) => return None,
    };
    value.checked_mul(factor)
}

/// Own-process CPU quota, v2 (`cpu.max`) or v1 (`cpu.cfs_quota_us`).
fn cgroup_cpu_millis() -> Option<u64> {
    if let Ok(s) = std::fs::read_to_string("/sys/fs/cgroup/cpu.max") {
        return parse_cpu_max(&s);
    }
    let quota = read_i64(Path::new("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"))?;
    let period = read_i64(Path::new("/sys/fs/cgroup/cpu/cpu.cfs_period_us"))?;
    if quota <= 0 || period <= 0 {
        return None;
    }
    Some((quota as u64 * 1000).div_ceil(period as u64))
}

/// `cpu.max` is `"max 100000"` (no limit) or `"50000 100000"`.
fn parse_cpu_max(s: &str) -> Option<u64> {
    let mut it = s.split_whitespace();
    let quota: u64 = it.next()?.parse().ok()?;
    let period: u64 = it.next()?.parse().ok()?;
    if period == 0 {
        return None;
    }
    Some((quota * 1000).div_ceil(period))
}

/// Own-process memory limit; "max" and v1's huge sentinel mean none.
fn cgroup_memory_limit() -> Option<u64> {
    let v2 = std::fs::read_to_string("/sys/fs/cgroup/memory.max");
    let raw = match v2 {
        Ok(s) => s,
        Err(_) => std::fs::read_to_string("/sys/fs/cgroup/memory/memory.limit_in_bytes").ok()?,
    };
    let v: u64 = raw.trim().parse().ok()?;
    // cgroup v1 reports "unlimited" as a page-aligned i64::MAX.
    (v < (1 << 62)).then_some(v)
}

fn read_i64(path: &Path) -> Option<i64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_total_in_kib_becomes_bytes() {
        let s = "MemTotal:       16303460 kB\nMemFree:  1 kB\n";
        assert_eq!(parse_mem_total(s), Some(16303460 * 1024));
        assert_eq!(parse_mem_total("MemFree: 1 kB"), None);
    }

    #[test]
    fn cpu_max_parses_quota_and_unlimited() {
        assert_eq!(parse_cpu_max("50000 100000\n"), Some(500));
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cpu_max("150000 100000"), Some(1500));
    }

    #[test]
    fn discover_reports_this_machine() {
        let r = discover().unwrap();
        assert!(r.cpu_millis >= 1000 || r.cpu_millis > 0);
        assert!(r.memory_bytes > 64 * 1024 * 1024);
    }
}
