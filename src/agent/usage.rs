//! Samples what this gateway's running instances use, from their cgroups,
//! every few seconds, for the heartbeats to carry to the leader's
//! autoscaler. CPU is a rate, so each sample is the difference from the
//! one before.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use gantry_node::{Runtime, TaskState};
use gantry_proto::v1::InstanceUsage;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::RuntimeHealth;

/// Between samples: often enough to follow a burst, rarely enough to cost
/// nothing (a few file reads per container).
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// Millicores used between two readings of a cgroup's CPU time.
pub fn cpu_millis(before_usec: u64, after_usec: u64, elapsed: Duration) -> u64 {
    let elapsed_usec = elapsed.as_micros().max(1) as u64;
    after_usec.saturating_sub(before_usec).saturating_mul(1000) / elapsed_usec
}

pub async fn run<R: Runtime>(
    runtime: Arc<R>,
    health: Arc<RuntimeHealth>,
    shutdown: CancellationToken,
) {
    // Container id -> (when, cpu time) of its last reading.
    let mut last: HashMap<String, (Instant, u64)> = HashMap::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(SAMPLE_EVERY) => {}
        }
        let Ok(containers) = runtime.list().await else {
            continue;
        };
        let mut usage = Vec::new();
        let mut seen = HashMap::new();
        for c in containers.iter().filter(|c| c.task == TaskState::Running) {
            let Some(now) = runtime.usage(&c.id).await else {
                continue;
            };
            let at = Instant::now();
            if let Some((then, cpu)) = last.get(&c.id) {
                usage.push(InstanceUsage {
                    workload: c.workload.clone(),
                    replica: c.replica,
                    cpu_millis: cpu_millis(*cpu, now.cpu_usec, at.duration_since(*then)),
                    memory_bytes: now.memory_bytes,
                });
            }
            seen.insert(c.id.clone(), (at, now.cpu_usec));
        }
        last = seen;
        health.set_usage(usage);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_over_wall_time_is_millicores() {
        // Half a second of CPU in one second: 500m.
        assert_eq!(
            cpu_millis(1_000_000, 1_500_000, Duration::from_secs(1)),
            500
        );
        // Two cores busy for 5 s.
        assert_eq!(cpu_millis(0, 10_000_000, Duration::from_secs(5)), 2000);
        // A counter that went back (a new task): nothing, not a wrap.
        assert_eq!(cpu_millis(9, 3, Duration::from_secs(1)), 0);
    }
}
