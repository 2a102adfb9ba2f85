//! A container's usage from the cgroup runc made for it (`cgroupsPath`
//! `/<namespace>/<id>`): the same files containerd's task metrics read,
//! without decoding its cgroups protobufs. Both cgroup v2 (one tree) and
//! v1 (a tree per controller) are read.

use crate::runtime::Usage;
use std::path::Path;

const ROOT: &str = "/sys/fs/cgroup";

/// None when the container has no cgroup here (not running) or its names
/// could walk out of the tree.
pub(crate) fn usage(namespace: &str, id: &str) -> Option<Usage> {
    let safe = |s: &str| !s.is_empty() && !s.contains('/') && s != "." && s != "..";
    if !safe(namespace) || !safe(id) {
        return None;
    }
    usage_under(Path::new(ROOT), namespace, id)
}

fn usage_under(root: &Path, namespace: &str, id: &str) -> Option<Usage> {
    let v2 = root.join(namespace).join(id);
    if v2.join("cpu.stat").exists() {
        let cpu_usec = field(&read(&v2.join("cpu.stat"))?, "usage_usec")?;
        let current = read(&v2.join("memory.current"))?
            .trim()
            .parse::<u64>()
            .ok()?;
        let inactive = read(&v2.join("memory.stat"))
            .and_then(|s| field(&s, "inactive_file"))
            .unwrap_or(0);
        return Some(Usage {
            cpu_usec,
            memory_bytes: current.saturating_sub(inactive),
        });
    }
    let cpuacct = ["cpuacct", "cpu,cpuacct", "cpuacct,cpu"]
        .iter()
        .map(|tree| {
            root.join(tree)
                .join(namespace)
                .join(id)
                .join("cpuacct.usage")
        })
        .find_map(|p| read(&p))?;
    let cpu_nanos = cpuacct.trim().parse::<u64>().ok()?;
    let memory = root.join("memory").join(namespace).join(id);
    let used = read(&memory.join("memory.usage_in_bytes"))?
        .trim()
        .parse::<u64>()
        .ok()?;
    let inactive = read(&memory.join("memory.stat"))
        .and_then(|s| field(&s, "total_inactive_file"))
        .unwrap_or(0);
    Some(Usage {
        cpu_usec: cpu_nanos / 1000,
        memory_bytes: used.saturating_sub(inactive),
    })
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// `key value` lines, as cpu.stat and memory.stat hold them.
fn field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn v2_and_v1_trees_are_read_and_page_cache_is_not_counted() {
        let dir = tempfile::tempdir().unwrap();
        let v2 = dir.path().join("v2");
        write(
            &v2.join("gantry/c1/cpu.stat"),
            "usage_usec 2500000\nuser_usec 2000000\n",
        );
        write(&v2.join("gantry/c1/memory.current"), "10485760\n");
        write(
            &v2.join("gantry/c1/memory.stat"),
            "anon 8388608\ninactive_file 2097152\n",
        );
        assert_eq!(
            usage_under(&v2, "gantry", "c1"),
            Some(Usage {
                cpu_usec: 2_500_000,
                memory_bytes: 8_388_608
            })
        );
        let v1 = dir.path().join("v1");
        write(&v1.join("cpuacct/gantry/c1/cpuacct.usage"), "3000000000\n");
        write(
            &v1.join("memory/gantry/c1/memory.usage_in_bytes"),
            "4096000\n",
        );
        write(
            &v1.join("memory/gantry/c1/memory.stat"),
            "cache 100\ntotal_inactive_file 96000\n",
        );
        assert_eq!(
            usage_under(&v1, "gantry", "c1"),
            Some(Usage {
                cpu_usec: 3_000_000,
                memory_bytes: 4_000_000
            })
        );
        assert_eq!(usage_under(&v1, "gantry", "absent"), None);
        assert_eq!(usage("gantry", "../etc"), None);
    }
}
