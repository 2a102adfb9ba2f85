//! Probes: one watcher per running task, asking the container the way its
//! spec says (exec, HTTP, TCP) and telling the agent only when a verdict
//! changes: ready or not, or "restart it". The agent turns verdicts into
//! reports, so a probe that keeps passing costs no Raft write.

use super::Runtime;
use crate::spec::{Probe, ProbeCheck, Probes};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// What a watcher tells the agent about one task (`container_id`, `pid`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProbeEvent {
    pub container_id: String,
    pub pid: u32,
    pub verdict: Verdict,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The readiness probe's verdict changed; the reason when not ready.
    Ready(bool, Option<String>),
    /// The startup or liveness probe gave up: the task must be restarted.
    Restart(String),
}

/// Consecutive results of one probe, turned into verdict changes by its
/// thresholds (Kubernetes' semantics).
#[derive(Debug, Clone, Default)]
pub(crate) struct Streak {
    successes: u32,
    failures: u32,
    passing: Option<bool>,
}

impl Streak {
    /// Records one result; `Some(passing)` when the verdict changes. The
    /// first verdict is "failing" once `failure_threshold` results failed,
    /// "passing" once `success_threshold` passed.
    pub fn record(&mut self, probe: &Probe, passed: bool) -> Option<bool> {
        if passed {
            self.successes = self.successes.saturating_add(1);
            self.failures = 0;
        } else {
            self.failures = self.failures.saturating_add(1);
            self.successes = 0;
        }
        let verdict = if self.successes >= probe.success_threshold.max(1) {
            Some(true)
        } else if self.failures >= probe.failure_threshold.max(1) {
            Some(false)
        } else {
            None
        };
        match verdict {
            Some(v) if self.passing != Some(v) => {
                self.passing = Some(v);
                Some(v)
            }
            _ => None,
        }
    }
}

/// Runs one check; `Err` says why it failed in words for the instance's
/// reason.
pub(crate) async fn check<R: Runtime>(
    runtime: &R,
    container_id: &str,
    probe: &Probe,
) -> Result<(), String> {
    match &probe.check {
        ProbeCheck::Exec { command } => {
            match runtime.exec(container_id, command, probe.timeout).await {
                Ok(outcome) if outcome.exit_code == 0 => Ok(()),
                Ok(outcome) if outcome.output.is_empty() => {
                    Err(format!("exit code {}", outcome.exit_code))
                }
                Ok(outcome) => Err(format!(
                    "exit code {}: {}",
                    outcome.exit_code,
                    one_line(&outcome.output)
                )),
                Err(e) => Err(e.to_string()),
            }
        }
        ProbeCheck::Tcp { port } => {
            match tokio::time::timeout(probe.timeout, TcpStream::connect(("127.0.0.1", *port)))
                .await
            {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("tcp port {port}: {e}")),
                Err(_) => Err(format!(
                    "tcp port {port}: no answer within {:?}",
                    probe.timeout
                )),
            }
        }
        ProbeCheck::Http { port, path } => {
            match tokio::time::timeout(probe.timeout, http_get(*port, path)).await {
                Ok(Ok(status)) if (200..400).contains(&status) => Ok(()),
                Ok(Ok(status)) => Err(format!("GET {path} on port {port}: HTTP {status}")),
                Ok(Err(e)) => Err(format!("GET {path} on port {port}: {e}")),
                Err(_) => Err(format!(
                    "GET {path} on port {port}: no answer within {:?}",
                    probe.timeout
                )),
            }
        }
    }
}

/// The last line of output, bounded: a reason is one line.
fn one_line(output: &str) -> String {
    let line = output
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    line.chars().take(200).collect()
}

/// A plain HTTP/1.1 GET on loopback; the status code. The body is not
/// read: Kubernetes judges by the status alone.
async fn http_get(port: u16, path: &str) -> Result<u16, String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: gantry-probe\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    // The status line fits in the first bytes; read until it is complete.
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < 4096 {
        let n = stream.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    parse_status(&head).ok_or_else(|| "not an HTTP answer".to_string())
}

fn parse_status(head: &[u8]) -> Option<u16> {
    let line = head.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    let version = parts.next()?;
    if !version.starts_with("HTTP/") {
        return None;
    }
    parts.next()?.parse().ok()
}

/// Watches one task until it ends or a restart verdict is sent: startup
/// first, then liveness and readiness side by side. `image_check` stands
/// in for a missing liveness probe (the image's HEALTHCHECK).
pub(crate) async fn watch<R: Runtime>(
    runtime: Arc<R>,
    container_id: String,
    pid: u32,
    probes: Probes,
    image: String,
    tx: mpsc::UnboundedSender<ProbeEvent>,
) {
    let send = |verdict: Verdict| {
        let _ = tx.send(ProbeEvent {
            container_id: container_id.clone(),
            pid,
            verdict,
        });
    };
    let liveness = match probes.liveness.clone() {
        Some(p) => Some(p),
        None => match runtime.image_health_check(&image).await {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(container = %container_id, error = %e, "image health check unknown");
                None
            }
        },
    };
    if let Some(startup) = &probes.startup {
        let mut started = false;
        follow(&*runtime, &container_id, startup, |passed, why| {
            if !passed {
                let why = why.unwrap_or_default();
                tracing::info!(container = %container_id, reason = %why, "startup probe failed");
                send(Verdict::Restart(format!("startup probe failed: {why}")));
            }
            started = passed;
            true
        })
        .await;
        if !started {
            return;
        }
    }
    let live = async {
        let Some(probe) = &liveness else {
            return std::future::pending::<()>().await;
        };
        follow(&*runtime, &container_id, probe, |passed, why| {
            if !passed {
                let why = why.unwrap_or_default();
                tracing::info!(container = %container_id, reason = %why, "liveness probe failed");
                send(Verdict::Restart(format!("liveness probe failed: {why}")));
            }
            !passed
        })
        .await;
    };
    let ready = async {
        let Some(probe) = &probes.readiness else {
            return std::future::pending::<()>().await;
        };
        follow(&*runtime, &container_id, probe, |passed, why| {
            let why = why.map(|e| format!("readiness probe failed: {e}"));
            send(Verdict::Ready(passed, why));
            false
        })
        .await;
    };
    tokio::select! {
        _ = live => {}
        _ = ready => {}
    }
}

/// Runs `probe` every period after its initial delay, calling `changed`
/// with each new verdict (and the failure that made it) until `changed`
/// returns true.
async fn follow<R: Runtime>(
    runtime: &R,
    container_id: &str,
    probe: &Probe,
    mut changed: impl FnMut(bool, Option<String>) -> bool,
) {
    tokio::time::sleep(probe.initial_delay).await;
    let mut streak = Streak::default();
    loop {
        let result = check(runtime, container_id, probe).await;
        if let Some(passing) = streak.record(probe, result.is_ok()) {
            if changed(passing, result.err()) {
                return;
            }
        }
        tokio::time::sleep(probe.period).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn probe(failure_threshold: u32, success_threshold: u32) -> Probe {
        let mut p = Probe::new(ProbeCheck::Tcp { port: 1 });
        p.failure_threshold = failure_threshold;
        p.success_threshold = success_threshold;
        p
    }

    #[test]
    fn a_streak_changes_its_verdict_only_at_its_thresholds() {
        let p = probe(3, 2);
        let mut s = Streak::default();
        assert_eq!(s.record(&p, false), None);
        assert_eq!(s.record(&p, false), None);
        assert_eq!(s.record(&p, false), Some(false), "third failure");
        assert_eq!(s.record(&p, false), None, "still failing: no new verdict");
        assert_eq!(s.record(&p, true), None, "one success of two");
        assert_eq!(s.record(&p, false), None, "the streak broke");
        assert_eq!(s.record(&p, true), None);
        assert_eq!(s.record(&p, true), Some(true), "two in a row");
        assert_eq!(s.record(&p, true), None);
        // Failures interleaved with successes never reach three in a row.
        for _ in 0..10 {
            assert_eq!(s.record(&p, false), None);
            assert_eq!(s.record(&p, false), None);
            assert_eq!(s.record(&p, true), None);
        }
    }

    #[test]
    fn the_first_success_makes_a_fresh_streak_pass() {
        let p = probe(3, 1);
        let mut s = Streak::default();
        assert_eq!(s.record(&p, true), Some(true));
    }

    #[test]
    fn status_lines_are_read_and_garbage_is_not() {
        assert_eq!(parse_status(b"HTTP/1.1 204 No Content\r\n"), Some(204));
        assert_eq!(parse_status(b"HTTP/1.0 500 Oops\r\nx: y\r\n"), Some(500));
        assert_eq!(parse_status(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status(b""), None);
    }

    #[tokio::test]
    async fn http_and_tcp_checks_against_a_loopback_server() {
        use crate::runtime::{ActualContainer, ExitEvent, RuntimeError, Started};
        struct NoRuntime;
        impl Runtime for NoRuntime {
            async fn check(&self) -> Result<String, RuntimeError> {
                Ok(String::new())
            }
            async fn ensure_image(&self, _: &str) -> Result<(), RuntimeError> {
                Ok(())
            }
            async fn start(&self, _: &crate::spec::ContainerSpec) -> Result<Started, RuntimeError> {
                Err(RuntimeError::NotFound(String::new()))
            }
            async fn restart(&self, _: &str, _: u32) -> Result<Started, RuntimeError> {
                Err(RuntimeError::NotFound(String::new()))
            }
            async fn remove(&self, _: &str, _: Duration) -> Result<Option<i32>, RuntimeError> {
                Ok(None)
            }
            async fn list(&self) -> Result<Vec<ActualContainer>, RuntimeError> {
                Ok(Vec::new())
            }
            async fn exits(&self) -> Result<mpsc::Receiver<ExitEvent>, RuntimeError> {
                Err(RuntimeError::Unavailable(String::new()))
            }
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let mut buf = [0u8; 1024];
                let n = socket.read(&mut buf).await.unwrap_or(0);
                let asked = String::from_utf8_lossy(&buf[..n]).to_string();
                let answer = if asked.starts_with("GET /healthz ") {
                    "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
                } else {
                    "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"
                };
                let _ = socket.write_all(answer.as_bytes()).await;
            }
        });
        let http = |path: &str| {
            Probe::new(ProbeCheck::Http {
                port,
                path: path.to_string(),
            })
        };
        assert_eq!(check(&NoRuntime, "c", &http("/healthz")).await, Ok(()));
        let err = check(&NoRuntime, "c", &http("/other")).await.unwrap_err();
        assert!(err.contains("HTTP 503"), "{err}");
        let tcp = Probe::new(ProbeCheck::Tcp { port });
        assert_eq!(check(&NoRuntime, "c", &tcp).await, Ok(()));
        // A port nobody listens on (bound, then closed).
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead = closed.local_addr().unwrap().port();
        drop(closed);
        let err = check(&NoRuntime, "c", &Probe::new(ProbeCheck::Tcp { port: dead }))
            .await
            .unwrap_err();
        assert!(err.contains(&format!("tcp port {dead}")), "{err}");
        let exec = Probe::new(ProbeCheck::Exec {
            command: vec!["true".into()],
        });
        let err = check(&NoRuntime, "c", &exec).await.unwrap_err();
        assert!(err.contains("cannot exec"), "{err}");
    }
}
