//! Cluster-wide settings as operators write them (`node-grace=2s,...`), the
//! partial change that travels through Raft, and the rules every accepted
//! combination must keep. Errors always name the offending key, so a typo
//! is refused instead of silently ignored.

use serde::{Deserialize, Serialize};

use super::model::ClusterSettings;
use super::quantity::{format_duration, HumanDuration};
use std::time::Duration;

/// The keys `gantry settings set` accepts, in the order `get` shows them.
pub const KEYS: [&str; 3] = ["heartbeat-interval", "node-grace", "voter-replace-after"];

/// Heartbeats more often than this would only load the leader.
const MIN_HEARTBEAT: Duration = Duration::from_millis(50);

/// Some settings, as one replicated change: absent fields stay as they are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SettingsChange {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_interval: Option<HumanDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_grace: Option<HumanDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voter_replace_after: Option<HumanDuration>,
}

impl SettingsChange {
    /// Parses `key=value[,key=value...]`; unknown keys, bad durations and
    /// keys given twice are refused with the key in the message.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut change = SettingsChange::default();
        let mut any = false;
        for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("'{pair}' is not key=value (keys: {})", KEYS.join(", ")))?;
            let key = key.trim();
            let slot = match key {
                "heartbeat-interval" => &mut change.heartbeat_interval,
                "node-grace" => &mut change.node_grace,
                "voter-replace-after" => &mut change.voter_replace_after,
                _ => {
                    return Err(format!(
                        "unknown setting '{key}' (known: {})",
                        KEYS.join(", ")
                    ))
                }
            };
            if slot.is_some() {
                return Err(format!("{key}: given twice"));
            }
            let parsed: HumanDuration = value.trim().parse().map_err(|e| format!("{key}: {e}"))?;
            *slot = Some(parsed);
            any = true;
        }
        if !any {
            return Err(format!(
                "no setting given; write key=value,... with keys {}",
                KEYS.join(", ")
            ));
        }
        Ok(change)
    }

    /// `settings` with this change made, if the result is valid.
    pub fn merged_into(&self, settings: &ClusterSettings) -> Result<ClusterSettings, String> {
        let mut next = settings.clone();
        if let Some(v) = self.heartbeat_interval {
            next.heartbeat_interval = v;
        }
        if let Some(v) = self.node_grace {
            next.node_grace = v;
        }
        if let Some(v) = self.voter_replace_after {
            next.voter_replace_after = v;
        }
        validate(&next, self)?;
        Ok(next)
    }
}

/// The rules; `changed` decides which key a violation is blamed on (the one
/// the operator just set, when a rule ties two keys together).
fn validate(s: &ClusterSettings, changed: &SettingsChange) -> Result<(), String> {
    let (interval, grace, replace) = (
        s.heartbeat_interval.0,
        s.node_grace.0,
        s.voter_replace_after.0,
    );
    if interval < MIN_HEARTBEAT {
        return Err(format!(
            "heartbeat-interval: {} is too short (at least {})",
            format_duration(interval),
            format_duration(MIN_HEARTBEAT)
        ));
    }
    // One lost heartbeat must not make a gateway NotReady.
    if grace < interval * 2 {
        let key = if changed.node_grace.is_some() || changed.heartbeat_interval.is_none() {
            "node-grace"
        } else {
            "heartbeat-interval"
        };
        return Err(format!(
            "{key}: node-grace ({}) must be at least twice heartbeat-interval ({})",
            format_duration(grace),
            format_duration(interval)
        ));
    }
    // Replacing a voter is heavy; a gateway must at least have been NotReady.
    if replace < grace {
        let key = if changed.voter_replace_after.is_some() || changed.node_grace.is_none() {
            "voter-replace-after"
        } else {
            "node-grace"
        };
        return Err(format!(
            "{key}: voter-replace-after ({}) must not be shorter than node-grace ({})",
            format_duration(replace),
            format_duration(grace)
        ));
    }
    Ok(())
}

/// Checks a whole set of settings (as `gantry init` receives them).
pub fn check(settings: &ClusterSettings) -> Result<(), String> {
    validate(settings, &SettingsChange::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_merges_and_blames_the_key() {
        let defaults = ClusterSettings::default();
        let change =
            SettingsChange::parse("node-grace=2s, heartbeat-interval=500ms,voter-replace-after=1m")
                .unwrap();
        let merged = change.merged_into(&defaults).unwrap();
        assert_eq!(merged.node_grace.0, Duration::from_secs(2));
        assert_eq!(merged.heartbeat_interval.0, Duration::from_millis(500));
        assert_eq!(merged.voter_replace_after.0, Duration::from_secs(60));

        let e = SettingsChange::parse("grace=2s").unwrap_err();
        assert!(e.contains("unknown setting 'grace'"), "{e}");
        let e = SettingsChange::parse("node-grace=soon").unwrap_err();
        assert!(e.starts_with("node-grace: "), "{e}");
        let e = SettingsChange::parse("node-grace=1s,node-grace=2s").unwrap_err();
        assert!(e.contains("twice"), "{e}");
        assert!(SettingsChange::parse("").is_err());

        let e = SettingsChange::parse("node-grace=400ms")
            .unwrap()
            .merged_into(&defaults)
            .unwrap_err();
        assert!(e.starts_with("node-grace: "), "{e}");
        let e = SettingsChange::parse("heartbeat-interval=800ms")
            .unwrap()
            .merged_into(&defaults)
            .unwrap_err();
        assert!(e.starts_with("heartbeat-interval: "), "{e}");
        let e = SettingsChange::parse("voter-replace-after=500ms")
            .unwrap()
            .merged_into(&defaults)
            .unwrap_err();
        assert!(e.starts_with("voter-replace-after: "), "{e}");
        assert!(check(&defaults).is_ok());
    }

    #[test]
    fn old_records_without_voter_replace_after_read() {
        let old: ClusterSettings =
            serde_json::from_str(r#"{"heartbeat_interval":"300ms","node_grace":"1s"}"#).unwrap();
        assert_eq!(old.voter_replace_after.0, Duration::from_secs(30));
    }
}
