//! The fence guard: a small process beside each gateway daemon that holds
//! the latest fence lease (`fence::Entry` list) and enforces it when the
//! daemon cannot: killed with SIGKILL, out of memory, crashed on a disk
//! error, or stopped for maintenance longer than a singleton may outlive
//! its gateway's contact with the cluster. It is started by the daemon
//! (`gantry fence-guard --data-dir DIR`, hidden), lives in its own process
//! group, and talks to it over `DATA_DIR/fence.sock`: the daemon writes one
//! JSON lease per line whenever it changes and at least every second.
//!
//! One guard per data dir (`DATA_DIR/fence.lock`, flock): a restarted
//! daemon connects to the guard that is already there, whose lease it then
//! replaces. The guard leaves when no daemon is connected and nothing is
//! left to enforce, or when its data dir is gone. Std only, no async
//! runtime: it must stay small and cannot fail in interesting ways.

use std::io::{BufRead, BufReader};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use super::fence::{self, Entry};

pub const SOCKET: &str = "fence.sock";
pub const LOCK: &str = "fence.lock";
/// How long past its deadline a lease entry is still enforced while no
/// newer lease replaced it.
const DUE_WATCH_MS: u64 = 60_000;

/// One lease on the wire.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Lease {
    pub entries: Vec<Entry>,
}

/// `gantry fence-guard --data-dir DIR`.
pub fn main(data_dir: &Path) -> ExitCode {
    let lock_path = data_dir.join(LOCK);
    let Ok(lock) = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
    else {
        eprintln!("fence-guard: cannot open {}", lock_path.display());
        return ExitCode::FAILURE;
    };
    if rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
        // Another guard holds this data dir.
        return ExitCode::SUCCESS;
    }
    let socket = data_dir.join(SOCKET);
    let _ = std::fs::remove_file(&socket);
    let listener = match UnixListener::bind(&socket) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("fence-guard: cannot listen on {}: {e}", socket.display());
            return ExitCode::FAILURE;
        }
    };
    let _ = listener.set_nonblocking(true);
    let mut lease: Vec<Entry> = Vec::new();
    let mut daemon: Option<BufReader<UnixStream>> = None;
    let mut line = String::new();
    // The daemon that started us connects within moments; until it has (or
    // ten seconds passed) an empty lease is no reason to leave.
    let started = std::time::Instant::now();
    let mut ever_connected = false;
    loop {
        if let Ok((stream, _)) = listener.accept() {
            let _ = stream.set_nonblocking(true);
            daemon = Some(BufReader::new(stream));
            ever_connected = true;
        }
        if let Some(reader) = daemon.as_mut() {
            loop {
                line.clear();
                match reader.read_line(&mut line) {
                    Ok(0) => {
                        daemon = None;
                        break;
                    }
                    Ok(_) => {
                        if let Ok(next) = serde_json::from_str::<Lease>(line.trim()) {
                            lease = next.entries;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        daemon = None;
                        break;
                    }
                }
            }
        }
        let now = crate::clock::boot_ms();
        let (keep, killed) = fence::enforce(std::mem::take(&mut lease), now);
        for entry in &killed {
            eprintln!(
                "fence-guard: killed container {} (pid {}): its gateway's fence deadline passed",
                entry.container_id, entry.pid
            );
        }
        // A due entry is watched a while longer (a start may still be under
        // way in containerd), then let go once its container is empty.
        lease = keep
            .into_iter()
            .filter(|e| {
                let lapsed = now > e.deadline_ms.saturating_add(DUE_WATCH_MS);
                !lapsed || fence::Killer::alive(&fence::ProcessKiller, e)
            })
            .collect();
        let waiting = !ever_connected && started.elapsed() < Duration::from_secs(10);
        if !data_dir.exists() || (daemon.is_none() && lease.is_empty() && !waiting) {
            let _ = std::fs::remove_file(&socket);
            return ExitCode::SUCCESS;
        }
        std::thread::sleep(fence::CHECK_EVERY);
    }
}

/// The daemon's end: connects to the data dir's guard (starting one when
/// none answers) and hands it each lease.
pub struct GuardLink {
    data_dir: PathBuf,
    stream: Option<tokio::net::UnixStream>,
    /// Start the guard if none answers (the `gantry` binary); embedded
    /// gateways (benchmarks) enforce in-process only.
    spawn: bool,
}

impl GuardLink {
    pub fn new(data_dir: &Path, spawn: bool) -> Self {
        Self {
            data_dir: data_dir.to_path_buf(),
            stream: None,
            spawn,
        }
    }

    async fn connect(&mut self) -> Option<&mut tokio::net::UnixStream> {
        if self.stream.is_none() {
            let socket = self.data_dir.join(SOCKET);
            let mut stream = tokio::net::UnixStream::connect(&socket).await.ok();
            if stream.is_none() && self.spawn {
                self.start_guard();
                for _ in 0..40 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    stream = tokio::net::UnixStream::connect(&socket).await.ok();
                    if stream.is_some() {
                        break;
                    }
                }
            }
            self.stream = stream;
        }
        self.stream.as_mut()
    }

    fn start_guard(&self) {
        let Ok(exe) = std::env::current_exe() else {
            return;
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data_dir.join("fence-guard.log"));
        let mut command = std::process::Command::new(exe);
        command
            .arg("fence-guard")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(match log {
                Ok(file) => std::process::Stdio::from(file),
                Err(_) => std::process::Stdio::null(),
            });
        // Its own process group: Ctrl-C on the daemon's terminal, or a kill
        // of the daemon's group, must not take the guard along.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        match command.spawn() {
            Ok(mut child) => {
                tracing::info!(pid = child.id(), "fence guard started");
                // Reap it whenever it leaves.
                std::thread::spawn(move || {
                    let _ = child.wait();
                });
            }
            Err(e) => tracing::warn!(error = %e, "cannot start the fence guard"),
        }
    }

    /// Hands `lease` to the guard; false when it did not reach one (retried
    /// with the next lease). A line written to the socket reaches the guard
    /// even if the daemon dies right after. Embedded gateways, which start
    /// no guard, count a lease no guard took as reached.
    pub async fn send(&mut self, lease: &Lease) -> bool {
        use tokio::io::AsyncWriteExt;
        let Ok(mut line) = serde_json::to_vec(lease) else {
            return false;
        };
        line.push(b'\n');
        let spawn = self.spawn;
        let Some(stream) = self.connect().await else {
            return !spawn;
        };
        if stream.write_all(&line).await.is_err() {
            self.stream = None;
            return !spawn;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_survives_the_wire() {
        let lease = Lease {
            entries: vec![Entry {
                namespace: None,
                container_id: "cam-0-g1".into(),
                pid: 7,
                start_time: 9,
                deadline_ms: 11,
            }],
        };
        let text = serde_json::to_string(&lease).unwrap();
        assert_eq!(serde_json::from_str::<Lease>(&text).unwrap(), lease);
    }

    /// Std write for the test: what the daemon's async writer sends.
    fn send_line(stream: &mut UnixStream, lease: &Lease) {
        use std::io::Write;
        let mut line = serde_json::to_vec(lease).unwrap();
        line.push(b'\n');
        stream.write_all(&line).unwrap();
    }

    #[test]
    fn the_guard_kills_what_is_due_after_its_daemon_went_away() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let guard = std::thread::spawn(move || main(&path));
        let socket = dir.path().join(SOCKET);
        let mut stream = loop {
            if let Ok(s) = UnixStream::connect(&socket) {
                break s;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        let start_time = fence::start_time(pid).unwrap();
        send_line(
            &mut stream,
            &Lease {
                entries: vec![Entry {
                    namespace: None,
                    container_id: "c".into(),
                    pid,
                    start_time,
                    deadline_ms: crate::clock::boot_ms() + 500,
                }],
            },
        );
        // The daemon dies; the guard keeps the lease and enforces it.
        drop(stream);
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9), "killed by the guard");
        // It goes on watching the container a while (a start may still be
        // under way), and leaves with its data dir.
        std::thread::sleep(Duration::from_millis(300));
        assert!(!guard.is_finished(), "left while the entry is watched");
        drop(dir);
        assert_eq!(guard.join().unwrap(), ExitCode::SUCCESS);
    }
}
