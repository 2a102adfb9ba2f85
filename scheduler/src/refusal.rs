//! Why an instance could not be placed, counted per constraint and rendered for installers.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::model::Resources;

/// One constraint a gateway failed.
///
/// An enum rather than free text so that reasons with the same cause add up
/// into one count, and tools can match on them. Free amounts are kept out of
/// the key for the same reason; [`Refusal`] records them separately. The
/// variant order is the order in which [`Refusal`] lists them.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RejectReason {
    NotReady,
    Cordoned,
    /// One selector entry the gateway lacks (absent key or other value).
    MissingLabel {
        key: String,
        value: String,
    },
    MissingDevice {
        path: String,
    },
    /// `spread: node` and the gateway already runs a replica of this workload.
    Spread,
    InsufficientCpu,
    InsufficientMemory,
}

/// The explanation attached to an unplaceable instance.
///
/// Every failing constraint is checked on every gateway, so a gateway that
/// fails several counts once under each and the counts can add up to more
/// than `nodes_total`: an installer then sees everything to fix at once.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub nodes_total: u32,
    /// Gateways passing every constraint; 0 whenever the scheduler refuses.
    pub nodes_fit: u32,
    /// Serialised as a list of `{reason, nodes}` because the keys are not
    /// plain strings and JSON objects need string keys.
    #[serde(with = "rejection_list")]
    pub rejections: BTreeMap<RejectReason, u32>,
    /// What the instance asked for, for the "needs" part of the text.
    pub requests: Resources,
    /// Per dimension, the largest free amount among the gateways short of
    /// it: the closest miss, which tells how much to free or shrink.
    pub largest_free: Resources,
}

impl Refusal {
    pub(crate) fn new(nodes_total: u32, requests: Resources) -> Self {
        Refusal {
            nodes_total,
            requests,
            ..Refusal::default()
        }
    }

    pub(crate) fn add(&mut self, reason: RejectReason, nodes: u32) {
        if nodes > 0 {
            *self.rejections.entry(reason).or_insert(0) += nodes;
        }
    }

    pub(crate) fn short_of_cpu(&mut self, free: u64) {
        self.add(RejectReason::InsufficientCpu, 1);
        self.largest_free.cpu_millis = self.largest_free.cpu_millis.max(free);
    }

    pub(crate) fn short_of_memory(&mut self, free: u64) {
        self.add(RejectReason::InsufficientMemory, 1);
        self.largest_free.memory_bytes = self.largest_free.memory_bytes.max(free);
    }

    /// How many gateways failed `reason`.
    pub fn count(&self, reason: &RejectReason) -> u32 {
        self.rejections.get(reason).copied().unwrap_or(0)
    }

    fn write_reason(
        &self,
        f: &mut fmt::Formatter<'_>,
        reason: &RejectReason,
        n: u32,
    ) -> fmt::Result {
        let one = n == 1;
        let (is, lacks, has, runs) = if one {
            ("is", "lacks", "has", "runs")
        } else {
            ("are", "lack", "have", "run")
        };
        match reason {
            RejectReason::NotReady => write!(f, "{n} {is} not ready"),
            RejectReason::Cordoned => write!(f, "{n} {is} cordoned"),
            RejectReason::MissingLabel { key, value } => {
                write!(f, "{n} {lacks} label {key}={value}")
            }
            RejectReason::MissingDevice { path } => write!(f, "{n} {lacks} device {path}"),
            RejectReason::Spread => write!(f, "{n} already {runs} a replica (spread: node)"),
            RejectReason::InsufficientCpu => write!(
                f,
                "{n} {has} too little cpu (needs {}, {} free)",
                Cpu(self.requests.cpu_millis),
                Cpu(self.largest_free.cpu_millis)
            ),
            RejectReason::InsufficientMemory => write!(
                f,
                "{n} {has} too little memory (needs {}, {} free)",
                Memory(self.requests.memory_bytes),
                Memory(self.largest_free.memory_bytes)
            ),
        }
    }
}

/// Reads like `0/3 gateways fit: 2 lack label zigbee=true, 1 has too little
/// memory (needs 256Mi, 100Mi free)`; with several gateways short of a
/// dimension, the free amount shown is the largest among them.
impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{} gateways fit", self.nodes_fit, self.nodes_total)?;
        if self.nodes_total == 0 {
            return write!(f, ": the cluster has no gateways");
        }
        for (i, (reason, &n)) in self.rejections.iter().enumerate() {
            f.write_str(if i == 0 { ": " } else { ", " })?;
            self.write_reason(f, reason, n)?;
        }
        Ok(())
    }
}

/// Millicores as Kubernetes writes them: `2` for whole cores, else `250m`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cpu(pub u64);

impl fmt::Display for Cpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_multiple_of(1000) {
            write!(f, "{}", self.0 / 1000)
        } else {
            write!(f, "{}m", self.0)
        }
    }
}

/// Bytes in the largest binary unit that is at least 1: exact amounts as
/// `256Mi`, others with one decimal rounded down (`1.5Gi`, `97.6Ki`), so a
/// free amount is never shown larger than it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Memory(pub u64);

impl fmt::Display for Memory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u64); 4] = [
            ("Ti", 1 << 40),
            ("Gi", 1 << 30),
            ("Mi", 1 << 20),
            ("Ki", 1 << 10),
        ];
        let bytes = self.0;
        for (suffix, unit) in UNITS {
            if bytes >= unit {
                if bytes.is_multiple_of(unit) {
                    return write!(f, "{}{suffix}", bytes / unit);
                }
                let tenths = u128::from(bytes) * 10 / u128::from(unit);
                return write!(f, "{}.{}{suffix}", tenths / 10, tenths % 10);
            }
        }
        write!(f, "{bytes}B")
    }
}

mod rejection_list {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::RejectReason;

    #[derive(Serialize)]
    struct Borrowed<'a> {
        reason: &'a RejectReason,
        nodes: u32,
    }

    #[derive(Deserialize)]
    struct Owned {
        reason: RejectReason,
        nodes: u32,
    }

    pub fn serialize<S: Serializer>(
        map: &BTreeMap<RejectReason, u32>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(
            map.iter()
                .map(|(reason, &nodes)| Borrowed { reason, nodes }),
        )
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<RejectReason, u32>, D::Error> {
        let list = Vec::<Owned>::deserialize(d)?;
        Ok(list.into_iter().map(|o| (o.reason, o.nodes)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MI: u64 = 1 << 20;

    fn refusal(total: u32, requests: Resources, reasons: &[(RejectReason, u32)]) -> Refusal {
        let mut r = Refusal::new(total, requests);
        for (reason, n) in reasons {
            r.add(reason.clone(), *n);
        }
        r
    }

    fn label(k: &str, v: &str) -> RejectReason {
        RejectReason::MissingLabel {
            key: k.into(),
            value: v.into(),
        }
    }

    #[test]
    fn refusal_reads_like_the_installer_example() {
        let mut r = refusal(
            3,
            Resources::new(100, 256 * MI),
            &[(label("zigbee", "true"), 2)],
        );
        r.short_of_memory(100 * MI);
        assert_eq!(
            r.to_string(),
            "0/3 gateways fit: 2 lack label zigbee=true, 1 has too little memory (needs 256Mi, 100Mi free)"
        );
    }

    #[test]
    fn each_reason_text() {
        let device = RejectReason::MissingDevice {
            path: "/dev/ttyUSB0".into(),
        };
        let cases: [(RejectReason, u32, &str); 10] = [
            (RejectReason::NotReady, 1, "1 is not ready"),
            (RejectReason::NotReady, 2, "2 are not ready"),
            (RejectReason::Cordoned, 1, "1 is cordoned"),
            (RejectReason::Cordoned, 3, "3 are cordoned"),
            (label("zone", "a"), 1, "1 lacks label zone=a"),
            (label("zone", "a"), 4, "4 lack label zone=a"),
            (device.clone(), 1, "1 lacks device /dev/ttyUSB0"),
            (device, 2, "2 lack device /dev/ttyUSB0"),
            (
                RejectReason::Spread,
                1,
                "1 already runs a replica (spread: node)",
            ),
            (
                RejectReason::Spread,
                2,
                "2 already run a replica (spread: node)",
            ),
        ];
        for (reason, n, text) in cases {
            let r = refusal(5, Resources::ZERO, &[(reason, n)]);
            assert_eq!(r.to_string(), format!("0/5 gateways fit: {text}"));
        }
    }

    #[test]
    fn resource_texts_show_the_largest_free_amount() {
        let mut r = Refusal::new(4, Resources::new(2000, 2 << 30));
        r.short_of_cpu(250);
        r.short_of_cpu(1500);
        r.short_of_memory(512 * MI);
        assert_eq!(
            r.to_string(),
            "0/4 gateways fit: 2 have too little cpu (needs 2, 1500m free), \
             1 has too little memory (needs 2Gi, 512Mi free)"
        );
    }

    #[test]
    fn empty_cluster_says_so() {
        assert_eq!(
            Refusal::new(0, Resources::ZERO).to_string(),
            "0/0 gateways fit: the cluster has no gateways"
        );
    }

    #[test]
    fn reasons_are_listed_in_a_stable_order() {
        let r = refusal(
            3,
            Resources::ZERO,
            &[
                (RejectReason::Spread, 1),
                (label("b", "1"), 1),
                (label("a", "1"), 1),
                (RejectReason::NotReady, 1),
            ],
        );
        assert_eq!(
            r.to_string(),
            "0/3 gateways fit: 1 is not ready, 1 lacks label a=1, 1 lacks label b=1, \
             1 already runs a replica (spread: node)"
        );
    }

    #[test]
    fn cpu_quantities() {
        for (millis, text) in [
            (0, "0"),
            (250, "250m"),
            (1000, "1"),
            (1500, "1500m"),
            (2000, "2"),
        ] {
            assert_eq!(Cpu(millis).to_string(), text);
        }
    }

    #[test]
    fn memory_quantities() {
        let cases = [
            (0, "0B"),
            (512, "512B"),
            (1024, "1Ki"),
            (100_000, "97.6Ki"),
            (256 * MI, "256Mi"),
            (1536 * MI, "1.5Gi"),
            (256 * MI - 1, "255.9Mi"),
            (2 << 40, "2Ti"),
        ];
        for (bytes, text) in cases {
            assert_eq!(Memory(bytes).to_string(), text);
        }
    }
}
