//! Noticing a dead uplink. A carrier NAT that forgets an idle mapping, or a
//! path that starts dropping packets, sends no reset: without traffic the
//! leader would wait on a link that can never deliver again, and a hub
//! change would sit at the hub until TCP gave up hours later. The leader
//! therefore sends an HTTP/2 PING whenever it has read nothing from the
//! hub for one interval; a PING the hub does not answer within
//! [`TIMEOUT`] ends the link, and the supervisor reconnects with back-off.
//! An HTTP/2 PING travels end to end through TLS, so it also catches a hub
//! process that hangs, which a kernel TCP keepalive would not.
//!
//! The interval is `cloud attach --keepalive` (replicated with the link so
//! every future leader uses it). Its cost is a PING and its answer per
//! interval, about 230 bytes on the wire with TCP/IP and TLS: the default
//! of 60 s detects a dead path within 80 s and costs about 10 MB a month;
//! a metered site can trade detection time for bytes (`--keepalive 20m`).

use std::time::Duration;

use crate::state::CloudLink;

/// The interval when `cloud attach` names none.
pub const DEFAULT: Duration = Duration::from_secs(60);
/// An unanswered PING ends the link after this long.
pub const TIMEOUT: Duration = Duration::from_secs(20);
/// Shorter intervals only add traffic (and benchmarks accelerate time).
pub const MIN: Duration = Duration::from_millis(100);

/// `--keepalive` as replicated: `None` for the default, `Some(0)` for off.
pub fn parse(text: &str) -> Result<Option<u64>, String> {
    let text = text.trim();
    match text {
        "" => Ok(None),
        "off" | "0" => Ok(Some(0)),
        _ => {
            let every = humantime::parse_duration(text).map_err(|e| {
                format!("--keepalive: '{text}' is not a duration such as 60s or 20m, nor off ({e})")
            })?;
            if every < MIN {
                return Err(format!(
                    "--keepalive: {text} is shorter than {}; use off to send no pings",
                    humantime::format_duration(MIN)
                ));
            }
            let ms = u64::try_from(every.as_millis())
                .map_err(|_| format!("--keepalive: {text} is too long"))?;
            Ok(Some(ms))
        }
    }
}

/// The interval a link pings at, or `None` when its pings are off.
pub fn interval(link: &CloudLink) -> Option<Duration> {
    match link.keepalive_ms {
        None => Some(DEFAULT),
        Some(0) => None,
        Some(ms) => Some(Duration::from_millis(ms)),
    }
}

/// How `gantry status` says it: `60s`, `20m`, `off`.
pub fn describe(link: &CloudLink) -> String {
    match interval(link) {
        Some(every) => humantime::format_duration(every).to_string(),
        None => "off".into(),
    }
}

/// The hub's side (`hub serve --keepalive`): a kernel TCP keepalive on
/// every accepted connection (`tls::AcceptLimits`). A live site pings more
/// often than this, and any segment it sends restarts the kernel's idle
/// clock, so on a working link these probes never reach the wire; a site
/// gone silent is dropped after this plus three unanswered probes 10 s
/// apart, and its `hub status` says disconnected.
pub const HUB_DEFAULT_IDLE: Duration = Duration::from_secs(120);

#[cfg(test)]
mod tests {
    use super::*;

    fn link(keepalive_ms: Option<u64>) -> CloudLink {
        CloudLink {
            hub: "127.0.0.1:1".into(),
            site: "s".into(),
            hub_ca_sha256: String::new(),
            token_sealed: String::new(),
            keepalive_ms,
            mqtt: None,
        }
    }

    #[test]
    fn parses_durations_off_and_default() {
        assert_eq!(parse(""), Ok(None));
        assert_eq!(parse("off"), Ok(Some(0)));
        assert_eq!(parse("0"), Ok(Some(0)));
        assert_eq!(parse("20m"), Ok(Some(1_200_000)));
        assert_eq!(parse("200ms"), Ok(Some(200)));
        assert!(parse("10ms").unwrap_err().contains("shorter than 100ms"));
        assert!(parse("soon").unwrap_err().contains("not a duration"));
    }

    #[test]
    fn an_absent_interval_is_the_default_and_zero_is_off() {
        assert_eq!(interval(&link(None)), Some(DEFAULT));
        assert_eq!(interval(&link(Some(0))), None);
        assert_eq!(
            interval(&link(Some(1500))),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(describe(&link(None)), "1m");
        assert_eq!(describe(&link(Some(0))), "off");
    }
}
