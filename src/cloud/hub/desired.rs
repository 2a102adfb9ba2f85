//! A site's desired workloads at the hub, with the per-site revision that
//! only grows and enough history (tombstones) to answer "what changed since
//! revision N" with a delta; when it cannot, the answer is a full snapshot.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Deleted names remembered per site; older deletes fall back to snapshots.
pub const MAX_TOMBSTONES: usize = 1024;

/// The most spec JSON a site's desired state may hold: a full snapshot of
/// it is one link message and one Raft entry on the site. The hub refuses
/// an apply past it.
pub const MAX_SITE_DESIRED_BYTES: usize = 8 << 20;

/// The link's message limit on both ends: the largest full snapshot the
/// hub accepts, with room for names and framing, and the largest report.
pub const LINK_MESSAGE_LIMIT: usize = 2 * MAX_SITE_DESIRED_BYTES;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The revision that last changed this workload.
    pub revision: u64,
    /// The spec as JSON (serde form of `state::spec::WorkloadSpec`).
    pub spec_json: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteDesired {
    pub revision: u64,
    /// Deltas are possible only from revisions at or after this one.
    pub compacted: u64,
    pub workloads: BTreeMap<String, Entry>,
    /// name -> the revision that deleted it.
    pub tombstones: BTreeMap<String, u64>,
}

/// What to send a site that has `from`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delta {
    pub revision: u64,
    pub full: bool,
    pub upserts: Vec<(String, String)>,
    pub deletes: Vec<String>,
}

impl From<Delta> for gantry_proto::hub::v1::Desired {
    /// The delivery as it travels (the hub's session and the simulation's
    /// hub send the same message).
    fn from(delta: Delta) -> Self {
        Self {
            revision: delta.revision,
            full: delta.full,
            upserts: delta
                .upserts
                .into_iter()
                .map(|(name, spec_json)| gantry_proto::hub::v1::WorkloadDoc { name, spec_json })
                .collect(),
            deletes: delta.deletes,
            epoch: 0,
        }
    }
}

impl SiteDesired {
    /// Creates or updates workloads as one revision; None when nothing
    /// changed (the revision does not move for a no-op).
    pub fn apply(&mut self, docs: &[(String, String)]) -> Option<u64> {
        let changed: Vec<&(String, String)> = docs
            .iter()
            .filter(|(name, json)| self.workloads.get(name).map(|e| &e.spec_json) != Some(json))
            .collect();
        if changed.is_empty() {
            return None;
        }
        self.revision += 1;
        for (name, json) in changed {
            self.tombstones.remove(name);
            self.workloads.insert(
                name.clone(),
                Entry {
                    revision: self.revision,
                    spec_json: json.clone(),
                },
            );
        }
        Some(self.revision)
    }

    /// The spec bytes the desired state would hold with `docs` applied.
    pub fn bytes_with(&self, docs: &[(String, String)]) -> usize {
        let replaced: usize = docs
            .iter()
            .filter_map(|(name, _)| {
                self.workloads
                    .get(name)
                    .map(|e| name.len() + e.spec_json.len())
            })
            .sum();
        let held: usize = self
            .workloads
            .iter()
            .map(|(n, e)| n.len() + e.spec_json.len())
            .sum();
        let added: usize = docs.iter().map(|(n, j)| n.len() + j.len()).sum();
        (held + added).saturating_sub(replaced)
    }

    /// Deletes one workload as one revision; None when it does not exist.
    pub fn delete(&mut self, name: &str) -> Option<u64> {
        self.workloads.remove(name)?;
        self.revision += 1;
        self.tombstones.insert(name.to_string(), self.revision);
        if self.tombstones.len() > MAX_TOMBSTONES {
            if let Some((oldest, at)) = self
                .tombstones
                .iter()
                .min_by_key(|(_, rev)| **rev)
                .map(|(n, r)| (n.clone(), *r))
            {
                self.tombstones.remove(&oldest);
                self.compacted = self.compacted.max(at);
            }
        }
        Some(self.revision)
    }

    /// The delta from `from` to the current revision, or a full snapshot
    /// when `from` is 0, older than the history kept, or unknown here.
    pub fn since(&self, from: u64) -> Delta {
        let full = from == 0 || from < self.compacted || from > self.revision;
        let upserts = self
            .workloads
            .iter()
            .filter(|(_, e)| full || e.revision > from)
            .map(|(n, e)| (n.clone(), e.spec_json.clone()))
            .collect();
        let deletes = if full {
            Vec::new()
        } else {
            self.tombstones
                .iter()
                .filter(|(_, rev)| **rev > from)
                .map(|(n, _)| n.clone())
                .collect()
        };
        Delta {
            revision: self.revision,
            full,
            upserts,
            deletes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|(n, j)| (n.to_string(), j.to_string()))
            .collect()
    }

    #[test]
    fn revisions_grow_and_deltas_carry_only_changes() {
        let mut d = SiteDesired::default();
        assert_eq!(d.apply(&docs(&[("a", "1"), ("b", "1")])), Some(1));
        assert_eq!(
            d.apply(&docs(&[("a", "1")])),
            None,
            "no-op keeps the revision"
        );
        assert_eq!(d.apply(&docs(&[("a", "2")])), Some(2));
        assert_eq!(d.delete("b"), Some(3));
        assert_eq!(d.delete("b"), None);
        let delta = d.since(1);
        assert!(!delta.full);
        assert_eq!(delta.revision, 3);
        assert_eq!(delta.upserts, docs(&[("a", "2")]));
        assert_eq!(delta.deletes, vec!["b".to_string()]);
        assert_eq!(d.since(3).upserts.len() + d.since(3).deletes.len(), 0);
        let snapshot = d.since(0);
        assert!(snapshot.full);
        assert_eq!(snapshot.upserts, docs(&[("a", "2")]));
        assert!(d.since(99).full, "a site ahead of the hub gets a snapshot");
    }

    #[test]
    fn old_history_falls_back_to_a_snapshot() {
        let mut d = SiteDesired::default();
        for i in 0..=MAX_TOMBSTONES {
            let name = format!("w{i}");
            d.apply(&docs(&[(&name, "x")]));
            d.delete(&name);
        }
        assert_eq!(d.tombstones.len(), MAX_TOMBSTONES);
        assert!(d.since(1).full);
        assert!(!d.since(d.revision - 1).full);
    }

    #[test]
    fn the_size_a_site_would_hold_counts_replacements_once() {
        let mut d = SiteDesired::default();
        d.apply(&docs(&[("a", "12345")]));
        assert_eq!(d.bytes_with(&[]), 6);
        assert_eq!(d.bytes_with(&docs(&[("a", "1")])), 2, "a replaced spec");
        assert_eq!(d.bytes_with(&docs(&[("b", "123")])), 10);
        // The largest full snapshot still fits the link's limit.
        let big = "x".repeat(MAX_SITE_DESIRED_BYTES);
        let snapshot: gantry_proto::hub::v1::Desired = Delta {
            revision: 1,
            full: true,
            upserts: vec![("w".into(), big)],
            deletes: vec![],
        }
        .into();
        assert!(prost::Message::encoded_len(&snapshot) < LINK_MESSAGE_LIMIT);
    }
}
