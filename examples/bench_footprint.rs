//! Footprint of one gateway beside one etcd member, in one run: a
//! release `gantry init` (Raft member and node agent in one process) with
//! its own private containerd and 10 running busybox instances, idle and
//! then under 64 clients rewriting workloads through the Admin API; one
//! etcd member (Debian's `etcd-server`, default flags) idle and under the
//! same 64 clients writing values of the same size. RSS is the gateway's
//! own process, sampled every 50 ms (containerd and its shims are their
//! own processes, as they are beside K3s). Then the stripped binary and
//! what each big dependency adds to it, read from the symbol table.
//!
//! Run: `cargo build --release --bin gantry && cargo run --release
//! --example bench_footprint` (BENCH_SECONDS=N of load, default 10;
//! BENCH_IDLE_SECONDS=N to sample idle, default 10). Needs containerd,
//! runc, `etcd` and binutils (`strip`, `nm`); it installs nothing.

#[path = "support/gantry_bin.rs"]
mod gantry_bin;
#[path = "support/procs.rs"]
mod procs;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use gantry_node::testing::{busybox_oci_archive, PrivateContainerd};
use gantry_proto::v1::{ApplyRequest, GetRequest, ImageChunk};
use procs::{
    gateway_addr, round, rss_mib, rss_peak_during, rss_split_mib, spawn, spec, start_etcd,
    wait_file, Members,
};

const IMAGE: &str = "127.0.0.1:5000/gantry/busybox:bench";
const CLIENTS: usize = 64;
const INSTANCES: usize = 10;

fn env_secs(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// The highest RSS (MiB) of `pid` over `seconds` of doing nothing.
async fn idle_rss(pid: u32, seconds: u64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut peak = 0.0f64;
    while Instant::now() < deadline {
        peak = peak.max(rss_mib(pid));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    peak
}

async fn running(client: &mut gantry::cli::client::Admin) -> Result<usize> {
    let json = client.get_instances(GetRequest {}).await?.into_inner().json;
    let all: serde_json::Value = serde_json::from_str(&json)?;
    let items = all.as_array().map(Vec::as_slice).unwrap_or(&[]);
    Ok(items.iter().filter(|i| i["state"] == "Running").count())
}

/// One gateway as an installer starts it, on a private containerd, with
/// 10 instances Running.
async fn start_gateway(
    root: &Path,
    containerd: &PrivateContainerd,
) -> Result<(Members, gantry::cli::client::Admin)> {
    let binary = gantry_bin::gantry_binary()?;
    let dir = root.join("gw");
    let mut command = Command::new(&binary);
    command.args(["init", "--data-dir"]).arg(&dir).args([
        "--name",
        "gw",
        "--listen",
        "127.0.0.1:0",
        "--containerd-namespace",
        "footprint",
        "--allowed-registry",
        "127.0.0.1",
    ]);
    command.arg("--containerd-socket").arg(containerd.socket());
    let members = Members(vec![spawn(command, &root.join("gw.log"))?]);
    let addr = gateway_addr(&dir)?;
    wait_file(&dir.join("admin-token"))?;
    let mut client = gantry::cli::client::connect_as_gateway(&addr, &dir).await?;

    let archive = root.join("busybox.tar");
    busybox_oci_archive(&archive, IMAGE)?;
    let chunk = ImageChunk {
        cluster_id: String::new(),
        all: false,
        file_name: "busybox.tar".into(),
        data: std::fs::read(&archive)?,
    };
    client
        .import_image(futures::stream::iter(vec![chunk]))
        .await
        .context("image import")?;
    let manifest =
        format!("name: idle\nimage: {IMAGE}\nreplicas: {INSTANCES}\ncommand: [sleep, '100000']\n");
    client.apply(ApplyRequest { manifest }).await?;
    let started = Instant::now();
    while running(&mut client).await? < INSTANCES {
        if started.elapsed() > Duration::from_secs(120) {
            bail!(
                "{INSTANCES} instances did not reach Running: see {}",
                root.join("gw.log").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok((members, client))
}

/// Bytes of the symbols each crate (or C/C++ library) defines in an
/// unstripped binary: a coarse `cargo bloat --crates` from `nm`.
fn symbol_sizes(binary: &Path) -> Result<BTreeMap<String, u64>> {
    let list = |demangle: bool| -> Result<Vec<(u64, String)>> {
        let mut command = Command::new("nm");
        command.args(["--defined-only", "--print-size", "--no-sort"]);
        if demangle {
            command.arg("--demangle");
        }
        let out = command.arg(binary).output().context("nm (binutils)")?;
        if !out.status.success() {
            bail!("nm: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| {
                let mut parts = line.splitn(4, ' ');
                let _address = parts.next()?;
                let size = u64::from_str_radix(parts.next()?, 16).ok()?;
                let _kind = parts.next()?;
                Some((size, parts.next()?.to_string()))
            })
            .collect())
    };
    let mangled = list(false)?;
    let demangled = list(true)?;
    if mangled.len() != demangled.len() {
        bail!("nm listed the symbols differently with and without demangling");
    }
    let mut sizes = BTreeMap::new();
    for ((size, raw), (_, name)) in mangled.iter().zip(&demangled) {
        *sizes.entry(owner(raw, name)).or_insert(0) += size;
    }
    Ok(sizes)
}

/// Which library a symbol belongs to, from its mangled and demangled names.
fn owner(raw: &str, name: &str) -> String {
    let first_segment = |name: &str| -> String {
        let trimmed = name.trim_start_matches(['<', '&', '*', '(', '[', ' ']);
        let trimmed = ["mut ", "const ", "dyn ", "impl "]
            .iter()
            .fold(trimmed, |t, p| t.strip_prefix(p).unwrap_or(t));
        trimmed
            .split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .next()
            .unwrap_or("")
            .to_string()
    };
    let rust_legacy = raw.starts_with("_ZN")
        && raw.len() > 20
        && raw.ends_with('E')
        && raw[raw.len() - 20..].starts_with("17h");
    if raw.starts_with("_R") || rust_legacy {
        return first_segment(name);
    }
    // The only C++ linked in is RocksDB (libstdc++ itself is a shared
    // library): its templates from `std` are RocksDB's too.
    if raw.starts_with("_Z") || name.starts_with("rocksdb_") {
        return "rocksdb (C++)".into();
    }
    if name.starts_with("LZ4") {
        "lz4 (C)".into()
    } else if name.starts_with("anon.") {
        "Rust constants".into()
    } else {
        // aws-lc's and ring's C and assembly, and their tables.
        "crypto (C, asm)".into()
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let load_seconds = env_secs("BENCH_SECONDS", 10);
    let idle_seconds = env_secs("BENCH_IDLE_SECONDS", 10);
    let tmp = tempfile::Builder::new().prefix("gf").tempdir_in("/tmp")?;
    let containerd = PrivateContainerd::start(tmp.path().join("ctd"))
        .await
        .context("private containerd (needs containerd and runc)")?;

    let (gateway, client) = start_gateway(tmp.path(), &containerd).await?;
    let gantry_pid = gateway.pids()[0];
    // Let start-up work (image import, ten starts) settle first.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let gantry_idle = idle_rss(gantry_pid, idle_seconds).await;
    let gantry_split = rss_split_mib(gantry_pid);
    let (gantry_load, gantry_peak) = rss_peak_during(
        gantry_pid,
        round(CLIENTS, load_seconds, move |c, i| {
            let mut client = client.clone();
            async move {
                let manifest = spec(&format!("load-{c}"), i);
                client.apply(ApplyRequest { manifest }).await?;
                Ok(())
            }
        }),
    )
    .await?;
    drop(gateway);

    let (etcd, etcd_client) = start_etcd(tmp.path(), 1).await?;
    let etcd_pid = etcd.pids()[0];
    tokio::time::sleep(Duration::from_secs(5)).await;
    let etcd_idle = idle_rss(etcd_pid, idle_seconds).await;
    let etcd_split = rss_split_mib(etcd_pid);
    let kv = etcd_client.kv_client();
    let (etcd_load, etcd_peak) = rss_peak_during(
        etcd_pid,
        round(CLIENTS, load_seconds, move |c, i| {
            let mut kv = kv.clone();
            async move {
                let name = format!("load-{c}");
                kv.put(format!("/gantry-bench/{name}"), spec(&name, i), None)
                    .await?;
                Ok(())
            }
        }),
    )
    .await?;
    drop(etcd);

    println!(
        "footprint: rss_idle_mb gantry={gantry_idle:.1} etcd={etcd_idle:.1} ratio={:.2} (gantry with {INSTANCES} running instances)",
        gantry_idle / etcd_idle.max(f64::EPSILON)
    );
    println!(
        "footprint: rss_idle_split_mb gantry_anon={:.1} gantry_file={:.1} etcd_anon={:.1} etcd_file={:.1}",
        gantry_split.0, gantry_split.1, etcd_split.0, etcd_split.1
    );
    println!(
        "footprint: rss_under_{CLIENTS}_clients_mb gantry={gantry_peak:.1} etcd={etcd_peak:.1} ratio={:.2} (writes/s gantry={:.0} etcd={:.0})",
        gantry_peak / etcd_peak.max(f64::EPSILON),
        gantry_load.per_second,
        etcd_load.per_second
    );

    let binary = gantry_bin::gantry_binary()?;
    let stripped = tmp.path().join("gantry-stripped");
    let status = Command::new("strip")
        .arg("-o")
        .arg(&stripped)
        .arg(&binary)
        .status()
        .context("strip (binutils)")?;
    if !status.success() {
        bail!("strip {} failed", binary.display());
    }
    let mib = |bytes: u64| bytes as f64 / 1_048_576.0;
    let ours = std::fs::metadata(&stripped)?.len();
    let etcd_binary = which_etcd()?;
    let theirs = std::fs::metadata(&etcd_binary)?.len();
    println!(
        "footprint: binary_stripped_mb gantry={:.1} etcd={:.1} ratio={:.2} ({})",
        mib(ours),
        mib(theirs),
        ours as f64 / theirs as f64,
        etcd_binary.display()
    );
    let mut sizes: Vec<(String, u64)> = symbol_sizes(&binary)?.into_iter().collect();
    sizes.sort_by_key(|entry| std::cmp::Reverse(entry.1));
    let total: u64 = sizes.iter().map(|(_, s)| s).sum();
    for (name, size) in sizes.iter().take(15) {
        println!(
            "footprint: dependency={name} code_and_data_mb={:.2} share={:.0}%",
            mib(*size),
            100.0 * *size as f64 / total.max(1) as f64
        );
    }
    Ok(())
}

fn which_etcd() -> Result<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("etcd"))
        .find(|candidate| candidate.is_file())
        .context("etcd is not on the PATH")
}
