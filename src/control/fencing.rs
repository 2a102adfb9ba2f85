//! Timing rules that keep a `singleton: true` workload to at most one copy
//! across a partition, shared by the leader (when may it start a copy
//! elsewhere) and the node agent (when must an isolated gateway stop its
//! own). Pure: durations in, decisions out. The argument, with its
//! assumptions, is in README.md, "Singletons across partitions".

use std::time::Duration;

use crate::state::spec::WorkloadSpec;
use crate::state::ClusterSettings;

pub use crate::state::spec::DEFAULT_SINGLETON_STOP_AFTER;

/// The longest a heartbeat may take and still count (see
/// `liveness::run_heartbeats`): an answer arriving later is ignored.
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_millis(500);

/// How long an isolated gateway keeps running this workload before it stops
/// it: `on_disconnect.stop_after`, or 30 s for a singleton that sets none.
/// None: keep running however long the isolation lasts.
pub fn stop_after(spec: &WorkloadSpec) -> Option<Duration> {
    spec.stop_after()
}

/// Node side: when an isolated gateway begins to stop an instance whose
/// isolation limit is `limit`, so that SIGTERM, then SIGKILL after `grace`
/// (at most half the limit), lands by the limit: the graceful path. The
/// fence (`agent::fence`) kills what is still alive at the limit itself.
pub fn stop_begins(limit: Duration, grace: Duration) -> Duration {
    limit.saturating_sub(grace.min(limit / 2))
}

/// Node side: whether a gateway that has had no acknowledged heartbeat from
/// a leader for `isolated_for` must stop its instance of `spec`.
///
/// `isolated_for` must be measured with a monotonic clock from the last
/// heartbeat the leader *answered* (not the last one sent), because that
/// answer is what keeps the gateway Ready in the leader's eyes.
pub fn must_stop_when_isolated(spec: &WorkloadSpec, isolated_for: Duration) -> bool {
    stop_after(spec).is_some_and(|limit| isolated_for >= limit)
}

/// Leader side: how long after its gateway went NotReady (or left) a
/// singleton may be started elsewhere: `stop_after` plus a margin of
/// 2 x node_grace + 1 s for clock drift and the agent's reaction time.
pub fn singleton_fence(spec: &WorkloadSpec, settings: &ClusterSettings) -> Duration {
    let stop = stop_after(spec).unwrap_or(DEFAULT_SINGLETON_STOP_AFTER);
    fence_after(stop, settings)
}

/// The same for a placement's recorded isolation limit (`Instance::fence_ms`).
pub fn singleton_fence_ms(stop_after_ms: u64, settings: &ClusterSettings) -> Duration {
    fence_after(Duration::from_millis(stop_after_ms), settings)
}

fn fence_after(stop: Duration, settings: &ClusterSettings) -> Duration {
    if mutation::no_fence() {
        return Duration::ZERO;
    }
    if mutation::zero_margin() {
        return stop;
    }
    stop + settings.node_grace.0 * 2 + Duration::from_secs(1)
}

/// Node side: the isolation limit (ms) an agent stops an instance by,
/// given the limit the instance carries. The identity, unless a mutation
/// check made the node stop late.
pub fn node_limit_ms(limit_ms: u64) -> u64 {
    limit_ms.saturating_add(mutation::node_stop_delay_ms())
}

/// Deliberate breakage of the fence rules, for the deterministic
/// simulation's mutation checks only: it must find an overlap of singleton
/// copies when the fence is wrong, or its silence means nothing. The
/// switches are per thread (a simulation runs on one thread, and others may
/// run meanwhile in the same test binary), off unless a simulation turns
/// them on; no configuration, flag or environment variable reaches them.
pub mod mutation {
    use std::cell::Cell;

    thread_local! {
        static ZERO_MARGIN: Cell<bool> = const { Cell::new(false) };
        static NO_FENCE: Cell<bool> = const { Cell::new(false) };
        static NODE_STOP_DELAY_MS: Cell<u64> = const { Cell::new(0) };
    }

    /// The leader's fence is `stop_after` alone, without its margin.
    pub fn set_zero_margin(on: bool) {
        ZERO_MARGIN.with(|c| c.set(on));
    }

    /// The leader places a lost gateway's singleton elsewhere as soon as
    /// it sees the gateway lost (no fence at all).
    pub fn set_no_fence(on: bool) {
        NO_FENCE.with(|c| c.set(on));
    }

    pub(super) fn no_fence() -> bool {
        NO_FENCE.with(|c| c.get())
    }

    /// Isolated gateways stop (and fence) their copies this much later
    /// than their limit says.
    pub fn set_node_stop_delay_ms(ms: u64) {
        NODE_STOP_DELAY_MS.with(|c| c.set(ms));
    }

    pub(super) fn zero_margin() -> bool {
        ZERO_MARGIN.with(|c| c.get())
    }

    pub(super) fn node_stop_delay_ms() -> u64 {
        NODE_STOP_DELAY_MS.with(|c| c.get())
    }
}

/// `on_disconnect.reschedule_after` (default 0).
pub fn reschedule_after(spec: &WorkloadSpec) -> Duration {
    spec.on_disconnect
        .and_then(|d| d.reschedule_after)
        .map(|d| d.0)
        .unwrap_or(Duration::ZERO)
}

/// Leader side: how long an instance on a NotReady gateway waits before it
/// is placed elsewhere: `on_disconnect.reschedule_after` (default 0), and
/// for a singleton never less than its fence.
pub fn disconnect_wait(spec: &WorkloadSpec, settings: &ClusterSettings) -> Duration {
    let reschedule = spec
        .on_disconnect
        .and_then(|d| d.reschedule_after)
        .map(|d| d.0)
        .unwrap_or(Duration::ZERO);
    if spec.singleton {
        reschedule.max(singleton_fence(spec, settings))
    } else {
        reschedule
    }
}

/// How long after a leader change NotReady verdicts are not trusted: the
/// new leader's liveness table starts empty (every gateway gets a fresh
/// `node_grace`), and a gateway may need a heartbeat timeout plus an
/// interval to find the new leader. A NotReady that happens in this window
/// is most likely the leader change itself, so nothing moves because of it
/// until the window has passed (by then the gateway is Ready again).
pub fn leader_settle(settings: &ClusterSettings) -> Duration {
    settings.node_grace.0 + settings.heartbeat_interval.0 + HEARTBEAT_TIMEOUT
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::spec::parse_manifest;

    fn spec(yaml: &str) -> WorkloadSpec {
        parse_manifest(yaml).unwrap().remove(0)
    }

    #[test]
    fn singletons_stop_when_isolated_and_wait_longer_elsewhere() {
        let settings = ClusterSettings::default(); // grace 1 s
        let plain = spec("name: web\nimage: i\n");
        assert_eq!(stop_after(&plain), None);
        assert!(!must_stop_when_isolated(&plain, Duration::from_secs(3600)));
        assert_eq!(disconnect_wait(&plain, &settings), Duration::ZERO);

        let single = spec("name: cam\nimage: i\nsingleton: true\n");
        assert!(!must_stop_when_isolated(&single, Duration::from_secs(29)));
        assert!(must_stop_when_isolated(&single, Duration::from_secs(30)));
        // 30 s + 2 x 1 s + 1 s.
        assert_eq!(singleton_fence(&single, &settings), Duration::from_secs(33));
        assert_eq!(disconnect_wait(&single, &settings), Duration::from_secs(33));

        let tuned = spec(
            "name: cam\nimage: i\nsingleton: true\non_disconnect: {reschedule_after: 2m, stop_after: 5s}\n",
        );
        assert!(must_stop_when_isolated(&tuned, Duration::from_secs(5)));
        assert_eq!(singleton_fence(&tuned, &settings), Duration::from_secs(8));
        // reschedule_after longer than the fence wins.
        assert_eq!(disconnect_wait(&tuned, &settings), Duration::from_secs(120));

        let stops = spec("name: s\nimage: i\non_disconnect: {stop_after: 10s}\n");
        assert!(must_stop_when_isolated(&stops, Duration::from_secs(10)));
        assert_eq!(disconnect_wait(&stops, &settings), Duration::ZERO);
    }

    #[test]
    fn the_fence_outlasts_the_isolated_copy() {
        // Worst case of the README argument: the isolated gateway's last
        // answered heartbeat is up to HEARTBEAT_TIMEOUT after the leader last
        // saw it; the leader marks it NotReady no earlier than node_grace
        // after that. With clocks within `drift` and an agent reacting within
        // `react`, the copy is gone before the fence ends while
        // drift + react <= 3 x node_grace.
        for grace_ms in [500u64, 1000, 5000] {
            let settings = ClusterSettings {
                node_grace: crate::state::quantity::HumanDuration(Duration::from_millis(grace_ms)),
                ..ClusterSettings::default()
            };
            let single = spec("name: cam\nimage: i\nsingleton: true\n");
            let grace = Duration::from_millis(grace_ms);
            let budget = grace * 3; // drift + react
            let last_seen = Duration::from_secs(100);
            let stopped_at = last_seen + HEARTBEAT_TIMEOUT + stop_after(&single).unwrap() + budget;
            let not_ready_at = last_seen + grace;
            let elsewhere_at = not_ready_at + singleton_fence(&single, &settings);
            assert!(elsewhere_at >= stopped_at, "grace {grace_ms} ms");
        }
    }
}
