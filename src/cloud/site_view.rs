//! The site status both ends of the link agree on: the site builds it from
//! its replica and sends only what changed; the hub applies the same
//! reports to its copy. A digest of the whole view lets the hub notice drift
//! cheaply and ask for the whole truth again.

use std::collections::BTreeMap;

use gantry_proto::hub::v1::{InstanceStatus, NodeStatus, Refusal, Report, WorkloadStatus};
use prost::Message;
use sha2::{Digest as _, Sha256};

use crate::state::State;

/// What the hub knows of a site's nodes, instances, workloads and refusals.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SiteView {
    pub nodes: BTreeMap<String, NodeStatus>,
    /// Keyed `workload/replica`.
    pub instances: BTreeMap<String, InstanceStatus>,
    pub workloads: BTreeMap<String, WorkloadStatus>,
    pub refused: BTreeMap<String, String>,
}

fn instance_key(workload: &str, replica: u32) -> String {
    format!("{workload}/{replica}")
}

/// Items of `next` that differ from `prev`, and keys of `prev` not in `next`.
fn changes<V: Clone + PartialEq>(
    prev: &BTreeMap<String, V>,
    next: &BTreeMap<String, V>,
) -> (Vec<V>, Vec<String>) {
    let changed = next
        .iter()
        .filter(|(k, v)| prev.get(*k) != Some(*v))
        .map(|(_, v)| v.clone())
        .collect();
    let removed = prev
        .keys()
        .filter(|k| !next.contains_key(*k))
        .cloned()
        .collect();
    (changed, removed)
}

impl SiteView {
    /// The view of a site's replica (the site's side of the link).
    pub fn from_state(state: &State) -> Self {
        let node_name = |id: Option<u64>| {
            id.and_then(|id| state.nodes.get(&id))
                .map(|n| n.name.clone())
                .unwrap_or_default()
        };
        Self {
            nodes: state
                .nodes
                .values()
                .map(|n| {
                    let status = NodeStatus {
                        name: n.name.clone(),
                        status: n.status.to_string(),
                    };
                    (n.name.clone(), status)
                })
                .collect(),
            instances: state
                .instances
                .values()
                .map(|i| {
                    let status = InstanceStatus {
                        workload: i.workload.clone(),
                        replica: i.replica,
                        node: node_name(i.node),
                        state: i.state.to_string(),
                        generation: i.generation,
                        ready: i.is_up(),
                    };
                    (instance_key(&i.workload, i.replica), status)
                })
                .collect(),
            workloads: state
                .workloads
                .values()
                .map(|w| {
                    let status = WorkloadStatus {
                        name: w.spec.name.clone(),
                        source: w.source.to_string(),
                        generation: w.generation,
                    };
                    (w.spec.name.clone(), status)
                })
                .collect(),
            refused: state.meta.cloud.refused.clone(),
        }
    }

    /// The whole truth, as sent after every (re)connect.
    pub fn full_report(&self) -> Report {
        Report {
            full: true,
            nodes: self.nodes.values().cloned().collect(),
            instances: self.instances.values().cloned().collect(),
            workloads: self.workloads.values().cloned().collect(),
            refused: self
                .refused
                .iter()
                .map(|(name, reason)| Refusal {
                    name: name.clone(),
                    reason: reason.clone(),
                })
                .collect(),
            ..Report::default()
        }
    }

    /// Only what changed from `self` to `next`; None when nothing did.
    pub fn diff(&self, next: &SiteView) -> Option<Report> {
        let (nodes, removed_nodes) = changes(&self.nodes, &next.nodes);
        let (instances, removed_instances) = changes(&self.instances, &next.instances);
        let (workloads, removed_workloads) = changes(&self.workloads, &next.workloads);
        let (_, removed_refused) = changes(&self.refused, &next.refused);
        let report = Report {
            full: false,
            nodes,
            removed_nodes,
            instances,
            removed_instances,
            workloads,
            removed_workloads,
            refused: next
                .refused
                .iter()
                .filter(|(name, reason)| self.refused.get(*name) != Some(*reason))
                .map(|(name, reason)| Refusal {
                    name: name.clone(),
                    reason: reason.clone(),
                })
                .collect(),
            removed_refused,
        };
        (report != Report::default()).then_some(report)
    }

    /// Applies a report as the hub does.
    pub fn apply(&mut self, report: &Report) {
        if report.full {
            *self = SiteView::default();
        }
        for n in &report.nodes {
            self.nodes.insert(n.name.clone(), n.clone());
        }
        for k in &report.removed_nodes {
            self.nodes.remove(k);
        }
        for i in &report.instances {
            self.instances
                .insert(instance_key(&i.workload, i.replica), i.clone());
        }
        for k in &report.removed_instances {
            self.instances.remove(k);
        }
        for w in &report.workloads {
            self.workloads.insert(w.name.clone(), w.clone());
        }
        for k in &report.removed_workloads {
            self.workloads.remove(k);
        }
        for r in &report.refused {
            self.refused.insert(r.name.clone(), r.reason.clone());
        }
        for k in &report.removed_refused {
            self.refused.remove(k);
        }
    }

    /// A stable hash of the whole view: both ends compute it the same way.
    pub fn digest(&self) -> u64 {
        let full = self.full_report();
        let mut hash = Sha256::new();
        hash.update(full.encode_to_vec());
        let bytes = hash.finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&bytes[..8]);
        u64::from_be_bytes(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, status: &str) -> NodeStatus {
        NodeStatus {
            name: name.into(),
            status: status.into(),
        }
    }

    #[test]
    fn diffs_applied_at_the_hub_reproduce_the_site_view() {
        let mut site = SiteView::default();
        site.nodes.insert("a".into(), node("a", "Ready"));
        site.nodes.insert("b".into(), node("b", "Ready"));
        site.refused.insert("web".into(), "local".into());
        let mut hub = SiteView::default();
        hub.apply(&site.full_report());
        assert_eq!(hub, site);
        assert_eq!(hub.digest(), site.digest());
        assert_eq!(site.diff(&site.clone()), None, "no change, no report");

        let mut next = site.clone();
        next.nodes.insert("b".into(), node("b", "NotReady"));
        next.nodes.remove("a");
        next.refused.clear();
        next.refused.insert("db".into(), "local".into());
        let report = site.diff(&next).unwrap();
        assert_eq!(report.nodes.len(), 1, "only the changed node travels");
        assert_eq!(report.removed_nodes, vec!["a".to_string()]);
        hub.apply(&report);
        assert_eq!(hub, next);
        assert_ne!(hub.digest(), site.digest());
    }
}
