//! The workload manifest: what an operator (or the cloud) writes, parsed and
//! validated before anything reaches Raft. Every error names the document and
//! the field, and a manifest with any error is refused as a whole.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::quantity::{format_cpu, format_memory_exact, parse_cpu, parse_memory, HumanDuration};

/// Replicas above this are refused: a gateway site never needs more, and a
/// typo like `replicas: 10000` should not flood the state machine.
pub const MAX_REPLICAS: u32 = 1000;

/// A manifest or spec that cannot be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SpecError(pub String);

/// One workload as desired by its owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSpec {
    pub name: String,
    pub image: String,
    #[serde(default)]
    pub image_pull: ImagePull,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default = "one")]
    pub replicas: u32,
    #[serde(default)]
    pub resources: ResourceRequests,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spread: Option<Spread>,
    #[serde(default)]
    pub placement: PlacementStrategy,
    #[serde(default)]
    pub restart: RestartPolicy,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<MountSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortSpec>,
    #[serde(default)]
    pub priority: i32,
    /// Root filesystem mounted read-only (the node agent honours it).
    #[serde(default)]
    pub read_only: bool,
    /// At most one copy across a partition (healing issue gives it teeth).
    #[serde(default)]
    pub singleton: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_disconnect: Option<DisconnectPolicy>,
    /// Rollouts replace this many instances at a time (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_deadline: Option<HumanDuration>,
    /// Health checks run by the gateway that runs each replica.
    #[serde(default, skip_serializing_if = "Probes::is_empty")]
    pub probes: Probes,
    /// Replicas that follow the load, between `min` and `max`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<Autoscale>,
}

/// `autoscale: {min: 1, max: 6, cpu_target: 70%, memory_target: 80%,
/// scale_down_after: 5m}`: targets are a share of the resource request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Autoscale {
    /// The floor; when absent, 1 for a local workload and the `replicas`
    /// the cloud asked for a cloud one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<u32>,
    pub max: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_target: Option<Percent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_target: Option<Percent>,
    /// How long the load must stay low before replicas go (default 5m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down_after: Option<HumanDuration>,
}

/// A share of a request, written `70%` (or `70`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Percent(pub u32);

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = d.deserialize_any(QuantityText)?;
        let digits = text.trim().trim_end_matches('%').trim();
        match digits.parse::<u32>() {
            Ok(n) if (1..=1000).contains(&n) => Ok(Percent(n)),
            _ => Err(de::Error::custom(format!(
                "'{text}' is not a percentage from 1% to 1000%"
            ))),
        }
    }
}

impl Serialize for Percent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}%", self.0))
    }
}

/// How long the load must stay low before an autoscaled workload shrinks.
pub const DEFAULT_SCALE_DOWN_AFTER: std::time::Duration = std::time::Duration::from_secs(300);

impl Autoscale {
    pub fn scale_down_after(&self) -> std::time::Duration {
        self.scale_down_after
            .map(|d| d.0)
            .unwrap_or(DEFAULT_SCALE_DOWN_AFTER)
    }
}

/// Kubernetes' startup, liveness and readiness probes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Probes {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup: Option<ProbeSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness: Option<ProbeSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness: Option<ProbeSpec>,
}

impl Probes {
    pub fn is_empty(&self) -> bool {
        self.startup.is_none() && self.liveness.is_none() && self.readiness.is_none()
    }

    fn each(&self) -> impl Iterator<Item = (&'static str, &ProbeSpec)> {
        [
            ("startup", &self.startup),
            ("liveness", &self.liveness),
            ("readiness", &self.readiness),
        ]
        .into_iter()
        .filter_map(|(name, p)| p.as_ref().map(|p| (name, p)))
    }
}

/// One probe: exactly one of `exec`, `http`, `tcp`, and its timing
/// (Kubernetes' defaults when absent: period 10s, timeout 1s,
/// failure_threshold 3, success_threshold 1, initial_delay 0s).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpProbe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpProbe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<HumanDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_threshold: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_delay: Option<HumanDuration>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpProbe {
    pub port: u16,
    #[serde(default = "root_path")]
    pub path: String,
}

fn root_path() -> String {
    "/".into()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpProbe {
    pub port: u16,
}

impl ProbeSpec {
    /// What the types cannot say; `field` is where the probe sits.
    fn validate(&self, field: &str, kind: &str) -> Result<(), SpecError> {
        let fail = |sub: &str, why: &str| Err(SpecError(format!("field `{field}{sub}`: {why}")));
        let kinds = [self.exec.is_some(), self.http.is_some(), self.tcp.is_some()];
        match kinds.iter().filter(|k| **k).count() {
            0 => return fail("", "give one of exec, http or tcp"),
            1 => {}
            _ => return fail("", "give only one of exec, http or tcp"),
        }
        if let Some(command) = &self.exec {
            if command.is_empty() || command[0].trim().is_empty() {
                return fail(".exec", "needs a command to run");
            }
        }
        if let Some(http) = &self.http {
            if http.port == 0 {
                return fail(".http.port", "must be between 1 and 65535");
            }
            if !http.path.starts_with('/') || http.path.chars().any(|c| c.is_whitespace()) {
                return fail(
                    ".http.path",
                    &format!("'{}' must start with / and hold no spaces", http.path),
                );
            }
        }
        if self.tcp.as_ref().is_some_and(|t| t.port == 0) {
            return fail(".tcp.port", "must be between 1 and 65535");
        }
        for (sub, value) in [(".period", self.period), (".timeout", self.timeout)] {
            if value.is_some_and(|d| d.0.is_zero()) {
                return fail(sub, "must be more than 0s");
            }
        }
        for (sub, value) in [
            (".failure_threshold", self.failure_threshold),
            (".success_threshold", self.success_threshold),
        ] {
            if value == Some(0) {
                return fail(sub, "must be at least 1");
            }
        }
        if kind != "readiness" && self.success_threshold.is_some_and(|n| n != 1) {
            return fail(
                ".success_threshold",
                &format!("must be 1 for a {kind} probe"),
            );
        }
        Ok(())
    }
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ImagePull {
    #[default]
    IfNotPresent,
    Always,
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    #[default]
    Always,
    OnFailure,
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Spread {
    /// Never two replicas of the workload on one gateway.
    Node,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum PlacementStrategy {
    #[default]
    Spread,
    Binpack,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ResourceRequests {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Cpu>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Memory>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountSpec {
    pub source: String,
    pub target: String,
    #[serde(default)]
    pub read_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSpec {
    pub port: u16,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DisconnectPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reschedule_after: Option<HumanDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_after: Option<HumanDuration>,
}

/// CPU request in millicores; written `250m`, `1` or `0.5`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Cpu(pub u64);

/// Memory request in bytes; written `64Mi`, `1G` or a plain byte count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Memory(pub u64);

/// Accepts both YAML strings (`"250m"`) and numbers (`1`, `0.5`) and hands
/// their text to the strict parser.
struct QuantityText;

impl<'de> Visitor<'de> for QuantityText {
    type Value = String;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a quantity such as 250m, 1, 64Mi")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<String, E> {
        Ok(v.to_string())
    }
}

impl<'de> Deserialize<'de> for Cpu {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = d.deserialize_any(QuantityText)?;
        parse_cpu(&text).map(Cpu).map_err(de::Error::custom)
    }
}

impl Serialize for Cpu {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_cpu(self.0))
    }
}

impl<'de> Deserialize<'de> for Memory {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = d.deserialize_any(QuantityText)?;
        parse_memory(&text).map(Memory).map_err(de::Error::custom)
    }
}

impl Serialize for Memory {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_memory_exact(self.0))
    }
}

/// Parses a YAML manifest of one or many `---` documents into validated
/// specs. Empty documents are skipped; a manifest with no workload is an
/// error, as is any name given twice.
pub fn parse_manifest(text: &str) -> Result<Vec<WorkloadSpec>, SpecError> {
    let mut specs: Vec<WorkloadSpec> = Vec::new();
    for (number, value) in yaml_documents(text)? {
        let spec = spec_from_document(number, value)?;
        let label = format!("document {number} (workload '{}')", spec.name);
        accept_spec(&mut specs, spec, &label, "name")?;
    }
    finish_manifest(specs)
}

/// The documents of a YAML text, numbered from 1, empty ones left out.
pub fn yaml_documents(text: &str) -> Result<Vec<(usize, serde_yaml_ng::Value)>, SpecError> {
    let mut documents = Vec::new();
    for (index, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let number = index + 1;
        let value = serde_yaml_ng::Value::deserialize(document)
            .map_err(|e| SpecError(format!("document {number}: malformed YAML: {e}")))?;
        if !value.is_null() {
            documents.push((number, value));
        }
    }
    Ok(documents)
}

/// One gantry-format document as a spec (not validated yet: see
/// [`accept_spec`]); errors name the document and the field.
pub fn spec_from_document(
    number: usize,
    value: serde_yaml_ng::Value,
) -> Result<WorkloadSpec, SpecError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            SpecError(format!("document {number}: {inner}"))
        } else {
            SpecError(format!("document {number}: field `{path}`: {inner}"))
        }
    })
}

/// The checks every spec of a manifest passes, whatever format it was
/// written in: [`WorkloadSpec::validate`], then no name twice. `label` says
/// where the spec came from (`document 2 (workload 'web')`) and
/// `name_field` where its name was written.
pub fn accept_spec(
    specs: &mut Vec<WorkloadSpec>,
    spec: WorkloadSpec,
    label: &str,
    name_field: &str,
) -> Result<(), SpecError> {
    spec.validate()
        .map_err(|e| SpecError(format!("{label}: {}", e.0)))?;
    if specs.iter().any(|s| s.name == spec.name) {
        return Err(SpecError(format!(
            "{label}: field `{name_field}`: workload '{}' is defined twice in this manifest",
            spec.name
        )));
    }
    specs.push(spec);
    Ok(())
}

/// A manifest must hold at least one workload.
pub fn finish_manifest(specs: Vec<WorkloadSpec>) -> Result<Vec<WorkloadSpec>, SpecError> {
    if specs.is_empty() {
        return Err(SpecError("the manifest holds no workload".into()));
    }
    Ok(specs)
}

/// A Kubernetes-style DNS label: what container names, log files and
/// containerd ids can all carry safely.
pub fn is_dns_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// `stop_after` of a singleton that does not set one.
pub const DEFAULT_SINGLETON_STOP_AFTER: std::time::Duration = std::time::Duration::from_secs(30);

impl WorkloadSpec {
    /// Checks what the types alone cannot; errors name the field.
    pub fn validate(&self) -> Result<(), SpecError> {
        let fail = |field: &str, why: String| Err(SpecError(format!("field `{field}`: {why}")));
        if !is_dns_label(&self.name) {
            return fail(
                "name",
                format!(
                    "'{}' is not a DNS label (1-63 of a-z, 0-9 and '-', starting and ending with a letter or digit)",
                    self.name
                ),
            );
        }
        if self.image.trim().is_empty() || self.image.chars().any(char::is_whitespace) {
            return fail(
                "image",
                format!("'{}' is not an image reference", self.image),
            );
        }
        if self.replicas > MAX_REPLICAS {
            return fail(
                "replicas",
                format!(
                    "{} is more than the maximum of {MAX_REPLICAS}",
                    self.replicas
                ),
            );
        }
        for key in self.env.keys() {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                return fail("env", format!("'{key}' is not a valid variable name"));
            }
        }
        for (key, value) in &self.node_selector {
            if key.is_empty() || key.contains(['=', ',']) || value.contains(',') {
                return fail(
                    "node_selector",
                    format!("'{key}={value}' is not a valid label selector"),
                );
            }
        }
        for (i, mount) in self.mounts.iter().enumerate() {
            if !mount.source.starts_with('/') {
                return fail(
                    &format!("mounts[{i}].source"),
                    format!("'{}' must be an absolute path", mount.source),
                );
            }
            if !mount.target.starts_with('/') {
                return fail(
                    &format!("mounts[{i}].target"),
                    format!("'{}' must be an absolute path", mount.target),
                );
            }
        }
        let mut seen = BTreeSet::new();
        for (i, device) in self.devices.iter().enumerate() {
            if !device.starts_with("/dev/") {
                return fail(
                    &format!("devices[{i}]"),
                    format!("'{device}' must be a path under /dev/"),
                );
            }
            if !seen.insert(device) {
                return fail(
                    &format!("devices[{i}]"),
                    format!("'{device}' is listed twice"),
                );
            }
        }
        for (i, port) in self.ports.iter().enumerate() {
            if port.port == 0 {
                return fail(
                    &format!("ports[{i}].port"),
                    "must be between 1 and 65535".into(),
                );
            }
        }
        if self.max_unavailable == Some(0) {
            return fail("max_unavailable", "must be at least 1".into());
        }
        for (kind, probe) in self.probes.each() {
            probe.validate(&format!("probes.{kind}"), kind)?;
        }
        if let Some(autoscale) = &self.autoscale {
            self.validate_autoscale(autoscale)?;
        }
        Ok(())
    }

    fn validate_autoscale(&self, a: &Autoscale) -> Result<(), SpecError> {
        let fail =
            |field: &str, why: String| Err(SpecError(format!("field `autoscale.{field}`: {why}")));
        if a.max == 0 || a.max > MAX_REPLICAS {
            return fail("max", format!("must be from 1 to {MAX_REPLICAS}"));
        }
        match a.min {
            Some(0) => return fail("min", "must be at least 1".into()),
            Some(min) if min > a.max => {
                return fail("min", format!("{min} is more than max ({})", a.max))
            }
            _ => {}
        }
        if a.cpu_target.is_none() && a.memory_target.is_none() {
            return fail(
                "cpu_target",
                "give cpu_target, memory_target or both".into(),
            );
        }
        if a.cpu_target.is_some() && self.cpu_millis() == 0 {
            return fail(
                "cpu_target",
                "is a share of the cpu request: set resources.cpu".into(),
            );
        }
        if a.memory_target.is_some() && self.memory_bytes() == 0 {
            return fail(
                "memory_target",
                "is a share of the memory request: set resources.memory".into(),
            );
        }
        if a.scale_down_after.is_some_and(|d| d.0.is_zero()) {
            return fail("scale_down_after", "must be more than 0s".into());
        }
        if self.singleton {
            return fail("max", "a singleton runs one copy; it cannot scale".into());
        }
        Ok(())
    }

    /// How long a gateway cut off from the quorum keeps running an instance
    /// of this spec before it stops it: `on_disconnect.stop_after`, or 30 s
    /// for a singleton that sets none. None: however long the isolation.
    pub fn stop_after(&self) -> Option<std::time::Duration> {
        let set = self.on_disconnect.and_then(|d| d.stop_after).map(|d| d.0);
        match set {
            Some(d) => Some(d),
            None if self.singleton => Some(DEFAULT_SINGLETON_STOP_AFTER),
            None => None,
        }
    }

    /// `stop_after` in milliseconds, as fences are recorded.
    pub fn stop_after_ms(&self) -> Option<u64> {
        self.stop_after()
            .map(|d| d.as_millis().min(u128::from(u64::MAX)) as u64)
    }

    pub fn cpu_millis(&self) -> u64 {
        self.resources.cpu.map(|c| c.0).unwrap_or(0)
    }

    pub fn memory_bytes(&self) -> u64 {
        self.resources.memory.map(|m| m.0).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        match parse_manifest(text) {
            Ok(specs) => panic!("expected an error, got {specs:?}"),
            Err(e) => e.0,
        }
    }

    #[test]
    fn minimal_and_defaults() {
        let specs = parse_manifest("name: web\nimage: 127.0.0.1:5000/web:1\n").unwrap();
        assert_eq!(specs.len(), 1);
        assert_eq!(specs[0].replicas, 1);
        assert_eq!(specs[0].image_pull, ImagePull::IfNotPresent);
        assert_eq!(specs[0].restart, RestartPolicy::Always);
    }

    #[test]
    fn full_spec_and_many_documents() {
        let text = r#"
name: sensor
image: 127.0.0.1:5000/sensor:2
image_pull: always
command: ["/bin/sh", "-c"]
args: ["sleep 1000"]
env: {MODE: fast}
replicas: 2
resources: {cpu: 250m, memory: 64Mi}
node_selector: {zigbee: "true"}
spread: node
placement: binpack
restart: on-failure
mounts: [{source: /var/data, target: /data, read_only: true}]
devices: [/dev/ttyUSB0]
ports: [{port: 8080, protocol: udp}]
priority: 10
singleton: true
on_disconnect: {reschedule_after: 30s, stop_after: 5m}
max_unavailable: 1
progress_deadline: 2m
---
---
name: other
image: busybox
resources: {cpu: 1, memory: 1048576}
"#;
        let specs = parse_manifest(text).unwrap();
        assert_eq!(specs.len(), 2);
        assert_eq!(specs[0].cpu_millis(), 250);
        assert_eq!(specs[0].memory_bytes(), 64 << 20);
        assert_eq!(specs[1].cpu_millis(), 1000);
        assert_eq!(specs[1].memory_bytes(), 1 << 20);
        // what we store reads back as itself
        let json = serde_json::to_string(&specs[0]).unwrap();
        let back: WorkloadSpec = serde_json::from_str(&json).unwrap();
        assert_eq!(back, specs[0]);
    }

    #[test]
    fn errors_name_the_field() {
        assert!(err("name: web\nimage: x\nfoo: 1\n").contains("unknown field `foo`"));
        assert!(err("name: web\nimage: x\nresources: {memory: 12Q}\n").contains("resources.memory"));
        assert!(err("name: web\nimage: x\nresources: {cpu: -1}\n").contains("resources.cpu"));
        assert!(err("name: Web_1\nimage: x\n").contains("field `name`"));
        assert!(err("name: web\nimage: x\nrestart: sometimes\n").contains("restart"));
        assert!(err("name: web\nimage: x\nreplicas: 5000\n").contains("replicas"));
        assert!(err("name: web\nimage: x\n---\nname: web\nimage: y\n").contains("defined twice"));
        assert!(err("name: web\nimage: [x\n").contains("malformed YAML"));
        assert!(err("image: x\n").contains("name"));
        assert!(err("").contains("no workload"));
        assert!(err("name: web\nimage: x\ndevices: [ttyUSB0]\n").contains("devices[0]"));
    }

    #[test]
    fn probes_take_kubernetes_forms_and_bad_ones_name_their_field() {
        let specs = parse_manifest(
            "name: web\nimage: x\nprobes:\n  startup: {exec: [/bin/check], period: 2s, failure_threshold: 30}\n  \
             liveness: {http: {port: 8080, path: /healthz}, period: 5s, timeout: 1s, failure_threshold: 3, initial_delay: 10s}\n  \
             readiness: {tcp: {port: 1883}, period: 2s}\n",
        )
        .unwrap();
        let probes = &specs[0].probes;
        assert_eq!(
            probes.startup.as_ref().unwrap().exec,
            Some(vec!["/bin/check".to_string()])
        );
        assert_eq!(
            probes
                .liveness
                .as_ref()
                .unwrap()
                .http
                .as_ref()
                .unwrap()
                .port,
            8080
        );
        assert_eq!(
            probes
                .readiness
                .as_ref()
                .unwrap()
                .tcp
                .as_ref()
                .unwrap()
                .port,
            1883
        );
        // A spec without probes serialises as before (digests stay put).
        let plain = parse_manifest("name: web\nimage: x\n").unwrap();
        let json = serde_json::to_string(&plain[0]).unwrap();
        assert!(!json.contains("probes"), "{json}");

        let err = |probe: &str| {
            parse_manifest(&format!("name: web\nimage: x\nprobes:\n  {probe}\n"))
                .unwrap_err()
                .0
        };
        let no_port = err("liveness: {http: {path: /x}}");
        assert!(
            no_port.contains("probes.liveness.http") && no_port.contains("port"),
            "{no_port}"
        );
        let negative = err("readiness: {tcp: {port: 80}, period: -5s}");
        assert!(negative.contains("probes.readiness.period"), "{negative}");
        let unknown = err("liveness: {grpc: {port: 80}}");
        assert!(
            unknown.contains("probes.liveness") && unknown.contains("grpc"),
            "{unknown}"
        );
        let none = err("liveness: {period: 5s}");
        assert!(
            none.contains("`probes.liveness`") && none.contains("one of exec, http or tcp"),
            "{none}"
        );
        let two = err("liveness: {tcp: {port: 80}, exec: [x]}");
        assert!(two.contains("only one"), "{two}");
        assert!(err("liveness: {tcp: {port: 0}}").contains("probes.liveness.tcp.port"));
        assert!(err("liveness: {exec: []}").contains("probes.liveness.exec"));
        assert!(err("liveness: {tcp: {port: 80}, period: 0s}").contains("probes.liveness.period"));
        assert!(err("liveness: {tcp: {port: 80}, failure_threshold: 0}")
            .contains("probes.liveness.failure_threshold"));
        assert!(err("liveness: {tcp: {port: 80}, success_threshold: 2}")
            .contains("must be 1 for a liveness probe"));
        assert!(err("liveness: {http: {port: 80, path: healthz}}")
            .contains("probes.liveness.http.path"));
        assert!(err("sideness: {tcp: {port: 80}}").contains("sideness"));
    }

    #[test]
    fn the_example_manifests_parse() {
        for text in [
            include_str!("../../examples/workloads/sensors.yaml"),
            include_str!("../../examples/workloads/health.yaml"),
        ] {
            parse_manifest(text).unwrap();
        }
        let health = parse_manifest(include_str!("../../examples/workloads/health.yaml")).unwrap();
        assert!(health[0].probes.readiness.is_some());
        assert_eq!(health[1].autoscale.map(|a| a.max), Some(4));
    }
}
