//! The systemd service protocol (`sd_notify(3)`), without libsystemd: a
//! datagram to `$NOTIFY_SOCKET` saying `READY=1` once the daemon serves
//! (`Type=notify` units wait for it), `STATUS=` for `systemctl status`, and
//! `WATCHDOG=1` every half `$WATCHDOG_USEC` while Raft runs, so a daemon
//! that hangs or whose storage failed is restarted. Without
//! `$NOTIFY_SOCKET` (not under systemd) every call does nothing.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use crate::cluster::Cluster;
use crate::state::NodeStatus;

/// Sends `state` (newline-separated `KEY=value` lines); false when not
/// under systemd or the send failed (never fatal: the daemon runs on).
pub fn notify(state: &str) -> bool {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return false;
    };
    let Ok(socket) = UnixDatagram::unbound() else {
        return false;
    };
    let bytes = path.as_encoded_bytes();
    let sent = if let Some(name) = bytes.strip_prefix(b"@") {
        // An abstract socket (systemd's default for user managers).
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|addr| socket.send_to_addr(state.as_bytes(), &addr))
    } else {
        socket.send_to(state.as_bytes(), &path)
    };
    if let Err(e) = &sent {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
    sent.is_ok()
}

/// How often to ping the watchdog: half of `$WATCHDOG_USEC`, when it is
/// meant for this process (`$WATCHDOG_PID` absent or ours).
pub fn watchdog_every() -> Option<Duration> {
    watchdog_of(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )
}

fn watchdog_of(usec: Option<&str>, pid: Option<&str>, me: u32) -> Option<Duration> {
    let usec: u64 = usec?.parse().ok()?;
    if let Some(pid) = pid {
        if pid.parse::<u32>().ok()? != me {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// One line for `systemctl status`: who leads and how many gateways are
/// Ready.
pub fn status_line(cluster: &Cluster) -> String {
    let leader = cluster.metrics().current_leader;
    let applied = cluster.state().read();
    let nodes = &applied.state.nodes;
    let members = nodes.values().filter(|n| n.status != NodeStatus::Left);
    let (ready, all) = members.fold((0, 0), |(r, a), n| {
        (r + usize::from(n.status == NodeStatus::Ready), a + 1)
    });
    let leader = leader
        .and_then(|id| nodes.get(&id))
        .map(|n| format!("leader {}", n.name))
        .unwrap_or_else(|| "no leader known".into());
    format!("{leader}, {ready}/{all} gateways Ready")
}

/// Tells systemd the gateway serves, then keeps its status line current
/// and the watchdog fed while Raft runs. Ends with the returned task.
pub fn serving(cluster: Cluster) -> tokio::task::JoinHandle<()> {
    notify(&format!("READY=1\nSTATUS={}", status_line(&cluster)));
    let every = watchdog_every();
    tokio::spawn(async move {
        let tick = every
            .unwrap_or(Duration::from_secs(5))
            .min(Duration::from_secs(5));
        loop {
            tokio::time::sleep(tick).await;
            // A Raft core that stopped (a fatal storage error) starves the
            // watchdog: systemd restarts the daemon even if it hangs on the
            // way out.
            if cluster.metrics().running_state.is_err() {
                notify("STATUS=raft stopped");
                return;
            }
            let mut message = format!("STATUS={}", status_line(&cluster));
            if every.is_some() {
                message.push_str("\nWATCHDOG=1");
            }
            notify(&message);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_is_for_this_process_only() {
        let half = Some(Duration::from_secs(15));
        assert_eq!(watchdog_of(Some("30000000"), None, 7), half);
        assert_eq!(watchdog_of(Some("30000000"), Some("7"), 7), half);
        assert_eq!(watchdog_of(Some("30000000"), Some("1"), 7), None);
        assert_eq!(watchdog_of(Some("0"), None, 7), None);
        assert_eq!(watchdog_of(Some("soon"), None, 7), None);
        assert_eq!(watchdog_of(None, Some("7"), 7), None);
    }
}
