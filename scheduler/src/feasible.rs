//! Feasibility: one small check per constraint, each naming why it rejects a gateway.
//!
//! Checks that depend only on the gateway and the workload's selector and
//! devices ([`NodeCheck`]) run once per distinct selector+devices and are
//! cached; the ones that change as the plan fills gateways (resources,
//! spread) are plain functions called on the hot path.

use std::collections::BTreeMap;

use crate::ledger::{Free, Ledger};
use crate::model::{NodeView, WorkloadRequirements};
use crate::refusal::{Refusal, RejectReason};

/// A constraint that depends only on the gateway, not on what the plan has
/// placed so far. Reports every reason it rejects `node` for.
pub(crate) trait NodeCheck {
    fn check(&self, node: &NodeView, reject: &mut dyn FnMut(RejectReason));
}

/// Only Ready gateways take new work.
pub(crate) struct ReadyCheck;

impl NodeCheck for ReadyCheck {
    fn check(&self, node: &NodeView, reject: &mut dyn FnMut(RejectReason)) {
        if !node.ready {
            reject(RejectReason::NotReady);
        }
    }
}

/// A cordoned gateway keeps what it runs but takes nothing new.
pub(crate) struct CordonCheck;

impl NodeCheck for CordonCheck {
    fn check(&self, node: &NodeView, reject: &mut dyn FnMut(RejectReason)) {
        if node.cordoned {
            reject(RejectReason::Cordoned);
        }
    }
}

/// Every selector entry must be a label with exactly that value; each
/// missing entry is its own reason so the installer knows which to add.
pub(crate) struct SelectorCheck<'w>(pub &'w BTreeMap<String, String>);

impl NodeCheck for SelectorCheck<'_> {
    fn check(&self, node: &NodeView, reject: &mut dyn FnMut(RejectReason)) {
        for (key, value) in self.0 {
            if node.labels.get(key) != Some(value) {
                reject(RejectReason::MissingLabel {
                    key: key.clone(),
                    value: value.clone(),
                });
            }
        }
    }
}

/// Every required device path must exist on the gateway. A path listed
/// twice is reported once.
pub(crate) struct DeviceCheck<'w>(pub &'w [String]);

impl NodeCheck for DeviceCheck<'_> {
    fn check(&self, node: &NodeView, reject: &mut dyn FnMut(RejectReason)) {
        for (i, path) in self.0.iter().enumerate() {
            if !node.devices.contains(path) && !self.0[..i].contains(path) {
                reject(RejectReason::MissingDevice { path: path.clone() });
            }
        }
    }
}

/// The gateways a workload's static constraints allow, and why the others were rejected.
#[derive(Debug, Default)]
pub(crate) struct StaticFit {
    /// Ledger positions, in ledger order.
    pub nodes: Vec<usize>,
    pub rejections: BTreeMap<RejectReason, u32>,
}

impl StaticFit {
    fn compute(nodes: &[&NodeView], w: &WorkloadRequirements) -> Self {
        // The static pipeline, in the order reasons are discovered. All checks
        // run on every gateway so that a refusal lists every failing constraint.
        let checks: [&dyn NodeCheck; 4] = [
            &ReadyCheck,
            &CordonCheck,
            &SelectorCheck(&w.node_selector),
            &DeviceCheck(&w.devices),
        ];
        let mut fit = StaticFit::default();
        for (n, node) in nodes.iter().enumerate() {
            let mut ok = true;
            for check in checks {
                check.check(node, &mut |reason| {
                    ok = false;
                    *fit.rejections.entry(reason).or_insert(0) += 1;
                });
            }
            if ok {
                fit.nodes.push(n);
            }
        }
        fit
    }
}

/// Static results keyed by (selector, devices): workloads sharing them, and
/// every replica of one workload, reuse one pass over the gateways.
#[derive(Default)]
pub(crate) struct StaticCache<'a> {
    index: BTreeMap<(&'a BTreeMap<String, String>, &'a [String]), usize>,
    fits: Vec<StaticFit>,
}

impl<'a> StaticCache<'a> {
    pub fn get(&mut self, nodes: &[&NodeView], w: &'a WorkloadRequirements) -> &StaticFit {
        let key = (&w.node_selector, w.devices.as_slice());
        let i = match self.index.get(&key) {
            Some(&i) => i,
            None => {
                self.fits.push(StaticFit::compute(nodes, w));
                self.index.insert(key, self.fits.len() - 1);
                self.fits.len() - 1
            }
        };
        &self.fits[i]
    }
}

/// `spread: node` allows a gateway only while it runs no replica of the workload.
#[inline]
pub(crate) fn spread_allows(counts: Option<&[u32]>, n: usize) -> bool {
    counts.is_none_or(|c| c[n] == 0)
}

/// Runs every check on every gateway to explain why none can take `w`.
/// Only called on failure, so it may be slower than the placement path.
pub(crate) fn explain(
    ledger: &Ledger<'_>,
    fit: &StaticFit,
    w: &WorkloadRequirements,
    spread: Option<&[u32]>,
) -> Refusal {
    let nodes = ledger.nodes();
    let total = u32::try_from(nodes.len()).unwrap_or(u32::MAX);
    let mut refusal = Refusal::new(total, w.requests);
    for (reason, &count) in &fit.rejections {
        refusal.add(reason.clone(), count);
    }
    let mut dynamic_ok = vec![true; nodes.len()];
    for (n, ok) in dynamic_ok.iter_mut().enumerate() {
        *ok = check_dynamic(ledger.free(n), w, spread, n, &mut refusal);
    }
    refusal.nodes_fit = fit
        .nodes
        .iter()
        .filter(|&&n| dynamic_ok[n])
        .count()
        .try_into()
        .unwrap_or(u32::MAX);
    refusal
}

fn check_dynamic(
    free: Free,
    w: &WorkloadRequirements,
    spread: Option<&[u32]>,
    n: usize,
    refusal: &mut Refusal,
) -> bool {
    let left = free.as_resources();
    let mut ok = true;
    if free.cpu < i128::from(w.requests.cpu_millis) {
        refusal.short_of_cpu(left.cpu_millis);
        ok = false;
    }
    if free.memory < i128::from(w.requests.memory_bytes) {
        refusal.short_of_memory(left.memory_bytes);
        ok = false;
    }
    if !spread_allows(spread, n) {
        refusal.add(RejectReason::Spread, 1);
        ok = false;
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{node, workload, MI};

    fn reasons(check: &dyn NodeCheck, n: &NodeView) -> Vec<RejectReason> {
        let mut out = Vec::new();
        check.check(n, &mut |r| out.push(r));
        out
    }

    #[test]
    fn ready_and_cordon() {
        let mut n = node(1, 1000, 100 * MI);
        assert!(reasons(&ReadyCheck, &n).is_empty());
        n.ready = false;
        n.cordoned = true;
        assert_eq!(reasons(&ReadyCheck, &n), [RejectReason::NotReady]);
        assert_eq!(reasons(&CordonCheck, &n), [RejectReason::Cordoned]);
    }

    #[test]
    fn selector_names_each_missing_entry() {
        let n = node(1, 1000, 100 * MI)
            .with_label("zone", "b")
            .with_label("zigbee", "true");
        let w = workload("w", 1, MI)
            .with_selector("zone", "a")
            .with_selector("zigbee", "true")
            .with_selector("gps", "yes");
        let got = reasons(&SelectorCheck(&w.node_selector), &n);
        let missing = |k: &str, v: &str| RejectReason::MissingLabel {
            key: k.into(),
            value: v.into(),
        };
        assert_eq!(got, [missing("gps", "yes"), missing("zone", "a")]);
    }

    #[test]
    fn devices_reported_once_each() {
        let n = node(1, 1000, 100 * MI).with_device("/dev/ttyACM0");
        let devices = ["/dev/ttyUSB0", "/dev/ttyACM0", "/dev/ttyUSB0"].map(String::from);
        let got = reasons(&DeviceCheck(&devices), &n);
        assert_eq!(
            got,
            [RejectReason::MissingDevice {
                path: "/dev/ttyUSB0".into()
            }]
        );
    }

    #[test]
    fn spread_counts() {
        assert!(spread_allows(None, 0));
        assert!(spread_allows(Some(&[0, 1]), 0));
        assert!(!spread_allows(Some(&[0, 1]), 1));
    }
}
