//! Kubernetes `apps/v1` Deployments and `v1` Pods: one container each,
//! which becomes one workload. The rules (and what is refused) are listed
//! in README.md, "Compose files and Kubernetes manifests".

use std::collections::BTreeMap;

use serde_yaml_ng::Value;

use super::walk::{At, Result};
use super::{one_figure, Figure};
use crate::state::quantity::{parse_cpu, parse_memory, HumanDuration};
use crate::state::spec::{
    is_dns_label, Cpu, HttpProbe, ImagePull, Memory, MountSpec, PortSpec, ProbeSpec, Probes,
    Protocol, RestartPolicy, SpecError, TcpProbe, WorkloadSpec,
};

/// The annotation that carries a workload's priority (a number).
pub const PRIORITY_ANNOTATION: &str = "gantry.dev/priority";

/// A Kubernetes document says what it is.
pub fn is_kubernetes(value: &Value) -> bool {
    value.get("apiVersion").is_some() || value.get("kind").is_some()
}

/// One document as (label for errors, spec).
pub fn convert(
    number: usize,
    document: &Value,
) -> std::result::Result<(String, WorkloadSpec), SpecError> {
    let root = At::root(document, "");
    let mut label = format!("document {number}");
    let fail =
        |label: &str, refusal: super::walk::Refusal| SpecError(format!("{label}: {refusal}"));
    let kind = match document.get("kind").map(|k| At::root(k, "kind")) {
        Some(kind) => kind.str().map_err(|r| fail(&label, r))?.to_string(),
        None => {
            return Err(SpecError(format!(
                "{label}: field `kind`: missing (gantry converts Deployment and Pod)"
            )))
        }
    };
    if kind != "Deployment" && kind != "Pod" {
        return Err(SpecError(format!(
            "{label}: kind {kind} is not supported (gantry converts Deployment and Pod)"
        )));
    }
    let name = document
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str);
    label = match name {
        Some(name) => format!("{label} ({kind} '{name}')"),
        None => format!("{label} ({kind})"),
    };
    let spec = object(&root, &kind).map_err(|r| fail(&label, r))?;
    Ok((label, spec))
}

fn not_supported(what: &str) -> String {
    format!("`{what}` is not supported by gantry")
}

fn object(root: &At, kind: &str) -> Result<WorkloadSpec> {
    let mut f = root.fields()?;
    let api = match f.take("apiVersion") {
        Some(api) => api,
        None => return root.refuse("`apiVersion` is missing"),
    };
    let expected = if kind == "Deployment" {
        "apps/v1"
    } else {
        "v1"
    };
    if api.str()? != expected {
        return api.refuse(format!(
            "'{}' is not {expected}, the version of {kind} gantry converts",
            api.str()?
        ));
    }
    f.ignore("kind");
    // What `kubectl get -o yaml` adds.
    f.ignore("status");
    let Some(metadata) = f.take("metadata") else {
        return root.refuse("`metadata` is missing: give metadata.name");
    };
    let (name, mut priority) = meta(&metadata)?;
    let Some(spec_at) = f.take("spec") else {
        return root.refuse("`spec` is missing");
    };
    f.finish(not_supported)?;
    let mut replicas = 1;
    let mut max_unavailable = None;
    let mut progress_deadline = None;
    let pod = if kind == "Deployment" {
        let mut d = spec_at.fields()?;
        if let Some(at) = d.take("replicas") {
            replicas = at.number(0, u64::from(u32::MAX))? as u32;
        }
        // Gantry owns its instances: the selector, and the template's
        // labels it matches, have nothing to select.
        d.ignore("selector");
        d.ignore("revisionHistoryLimit");
        if let Some(strategy) = d.take("strategy") {
            max_unavailable = strategy_max_unavailable(&strategy)?;
        }
        if let Some(at) = d.take("progressDeadlineSeconds") {
            let seconds = at.number(1, u64::from(u32::MAX))?;
            progress_deadline = Some(HumanDuration(std::time::Duration::from_secs(seconds)));
        }
        let Some(template) = d.take("template") else {
            return spec_at.refuse("`template` is missing");
        };
        d.finish(not_supported)?;
        let mut t = template.fields()?;
        if let Some(meta) = t.take("metadata") {
            let mut m = meta.fields()?;
            if let Some(annotations) = m.take("annotations") {
                let from_template = annotation_priority(&annotations)?;
                if let (Some(a), Some(b)) = (priority, from_template) {
                    if a != b {
                        return annotations
                            .refuse("disagrees with the Deployment's gantry.dev/priority");
                    }
                }
                priority = priority.or(from_template);
            }
            m.ignore("labels");
            m.finish(not_supported)?;
        }
        let Some(pod) = t.take("spec") else {
            return template.refuse("`spec` is missing");
        };
        t.finish(not_supported)?;
        pod
    } else {
        spec_at
    };
    let mut spec = pod_spec(&pod, kind == "Deployment", name)?;
    spec.replicas = replicas;
    spec.priority = priority.unwrap_or(0);
    spec.max_unavailable = max_unavailable;
    spec.progress_deadline = progress_deadline;
    Ok(spec)
}

/// The name, and the priority annotation; other metadata is ignored.
fn meta(at: &At) -> Result<(String, Option<i32>)> {
    let mut f = at.fields()?;
    let Some(name_at) = f.take("name") else {
        return at.refuse("`name` is missing: gantry needs it as the workload's name");
    };
    let name = name_at.str()?.to_string();
    if !is_dns_label(&name) {
        return name_at.refuse(format!(
            "'{name}' is not a DNS label (1-63 of a-z, 0-9 and '-', starting and ending with a letter or digit)"
        ));
    }
    let priority = match f.take("annotations") {
        Some(annotations) => annotation_priority(&annotations)?,
        None => None,
    };
    Ok((name, priority))
}

fn annotation_priority(at: &At) -> Result<Option<i32>> {
    for (key, value) in at.entries()? {
        if key == PRIORITY_ANNOTATION {
            let text = value.text()?;
            return match text.trim().parse::<i32>() {
                Ok(n) => Ok(Some(n)),
                Err(_) => value.refuse(format!("'{text}' is not a whole number")),
            };
        }
    }
    Ok(None)
}

/// `strategy.rollingUpdate.maxUnavailable` as a number becomes gantry's
/// `max_unavailable`; the rest of the strategy is ignored.
fn strategy_max_unavailable(at: &At) -> Result<Option<u32>> {
    let Some(rolling) = at.fields()?.take("rollingUpdate") else {
        return Ok(None);
    };
    let Some(max) = rolling.fields()?.take("maxUnavailable") else {
        return Ok(None);
    };
    if let Value::String(text) = max.value {
        return max.refuse(format!(
            "'{text}': give a number of replicas (gantry does not take a percentage)"
        ));
    }
    Ok(Some(max.number(1, u64::from(u32::MAX))? as u32))
}

fn pod_spec(at: &At, deployment: bool, name: String) -> Result<WorkloadSpec> {
    let mut f = at.fields()?;
    if let Some(init) = f.take("initContainers") {
        return init
            .refuse("gantry runs one container per workload: init containers are not supported");
    }
    let Some(containers) = f.take("containers") else {
        return at.refuse("`containers` is missing");
    };
    let list = containers.items()?;
    let container = match list.as_slice() {
        [one] => one.clone(),
        [] => return containers.refuse("give one container"),
        [_, second, ..] => {
            return second.refuse(format!(
            "gantry runs one container per workload: this pod has {}; make one workload of each",
            list.len()
        ))
        }
    };
    let mut volumes = BTreeMap::new();
    if let Some(at) = f.take("volumes") {
        for item in at.items()? {
            let (name, path) = host_path_volume(&item)?;
            volumes.insert(name, path);
        }
    }
    let mut node_selector = BTreeMap::new();
    if let Some(at) = f.take("nodeSelector") {
        for (key, value) in at.entries()? {
            node_selector.insert(key, value.text()?);
        }
    }
    let mut restart = RestartPolicy::Always;
    if let Some(at) = f.take("restartPolicy") {
        restart = match at.str()? {
            "Always" => RestartPolicy::Always,
            "OnFailure" if !deployment => RestartPolicy::OnFailure,
            "Never" if !deployment => RestartPolicy::Never,
            "OnFailure" | "Never" => {
                return at
                    .refuse("a Deployment's pods restart Always (use a Pod for another policy)")
            }
            other => return at.refuse(format!("'{other}' is not Always, OnFailure or Never")),
        };
    }
    if let Some(at) = f.take("hostNetwork") {
        if !at.bool()? {
            return at.refuse("gantry containers always use the host network: leave hostNetwork out or set it to true");
        }
    }
    if let Some(at) = f.take("priorityClassName") {
        return at.refuse(format!(
            "priority classes are not supported: use the {PRIORITY_ANNOTATION} annotation with a number"
        ));
    }
    f.finish(not_supported)?;
    let mut spec = container_spec(&container, name, &volumes)?;
    spec.node_selector = node_selector;
    spec.restart = restart;
    Ok(spec)
}

/// A volume as (name, host path); only hostPath volumes are supported.
fn host_path_volume(at: &At) -> Result<(String, String)> {
    let mut f = at.fields()?;
    let Some(name) = f.take("name") else {
        return at.refuse("`name` is missing");
    };
    let name = name.str()?.to_string();
    let Some(host_path) = f.take("hostPath") else {
        for (key, value) in at.entries()? {
            if key != "name" {
                return value.refuse(format!(
                    "volume kind {key} is not supported: gantry mounts host paths only (hostPath)"
                ));
            }
        }
        return at.refuse("give a hostPath");
    };
    f.finish(|key| {
        format!("volume kind {key} is not supported: gantry mounts host paths only (hostPath)")
    })?;
    let mut h = host_path.fields()?;
    let Some(path) = h.take("path") else {
        return host_path.refuse("`path` is missing");
    };
    let path = path.str()?.to_string();
    // Directory, File, DirectoryOrCreate...: checks gantry does not make.
    h.ignore("type");
    h.finish(not_supported)?;
    Ok((name, path))
}

fn container_spec(
    at: &At,
    name: String,
    volumes: &BTreeMap<String, String>,
) -> Result<WorkloadSpec> {
    let mut f = at.fields()?;
    f.ignore("name");
    let Some(image_at) = f.take("image") else {
        return at.refuse("`image` is missing");
    };
    let image = image_at.str()?.to_string();
    let image_pull = match f.take("imagePullPolicy") {
        Some(at) => match at.str()? {
            "Always" => ImagePull::Always,
            "IfNotPresent" => ImagePull::IfNotPresent,
            "Never" => ImagePull::Never,
            other => return at.refuse(format!("'{other}' is not Always, IfNotPresent or Never")),
        },
        None => default_pull(&image),
    };
    let mut spec = WorkloadSpec {
        name,
        image,
        image_pull,
        command: Vec::new(),
        args: Vec::new(),
        env: BTreeMap::new(),
        replicas: 1,
        resources: Default::default(),
        node_selector: BTreeMap::new(),
        spread: None,
        placement: Default::default(),
        restart: RestartPolicy::Always,
        mounts: Vec::new(),
        devices: Vec::new(),
        ports: Vec::new(),
        priority: 0,
        read_only: false,
        singleton: false,
        on_disconnect: None,
        max_unavailable: None,
        progress_deadline: None,
        probes: Probes::default(),
        autoscale: None,
    };
    // Kubernetes' command replaces the image's ENTRYPOINT, its args the
    // image's CMD: gantry's command and args mean the same.
    if let Some(at) = f.take("command") {
        spec.command = no_references(&at)?;
    }
    if let Some(at) = f.take("args") {
        spec.args = no_references(&at)?;
    }
    if let Some(at) = f.take("env") {
        for item in at.items()? {
            let mut e = item.fields()?;
            let Some(name) = e.take("name") else {
                return item.refuse("`name` is missing");
            };
            let name = name.str()?.to_string();
            if let Some(from) = e.take("valueFrom") {
                return from.refuse(
                    "valueFrom (secrets, config maps, fields) is not supported by gantry: write the value",
                );
            }
            let value = match e.take("value") {
                Some(value) => expanded(&value, &value.text()?)?,
                None => String::new(),
            };
            e.finish(not_supported)?;
            spec.env.insert(name, value);
        }
    }
    if let Some(at) = f.take("resources") {
        resources(&at, &mut spec)?;
    }
    if let Some(at) = f.take("ports") {
        for item in at.items()? {
            spec.ports.push(port(&item)?);
        }
    }
    if let Some(at) = f.take("volumeMounts") {
        for item in at.items()? {
            spec.mounts.push(volume_mount(&item, volumes)?);
        }
    }
    for (key, slot) in [
        ("startupProbe", &mut spec.probes.startup),
        ("livenessProbe", &mut spec.probes.liveness),
        ("readinessProbe", &mut spec.probes.readiness),
    ] {
        if let Some(at) = f.take(key) {
            *slot = Some(probe(&at, key == "readinessProbe")?);
        }
    }
    if let Some(at) = f.take("securityContext") {
        let mut s = at.fields()?;
        if let Some(ro) = s.take("readOnlyRootFilesystem") {
            spec.read_only = ro.bool()?;
        }
        s.finish(|key| {
            format!(
                "{} (gantry takes readOnlyRootFilesystem only)",
                not_supported(key)
            )
        })?;
    }
    f.finish(not_supported)?;
    Ok(spec)
}

/// Kubernetes pulls `:latest` (or an untagged image) always by default.
fn default_pull(image: &str) -> ImagePull {
    if image.contains('@') {
        return ImagePull::IfNotPresent;
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        Some((_, tag)) if tag != "latest" => ImagePull::IfNotPresent,
        _ => ImagePull::Always,
    }
}

/// Kubernetes expands `$(VAR)` in command, args and env, and reduces `$$`
/// to `$`; gantry expands nothing, so a reference is refused and `$$`
/// becomes the `$` Kubernetes would have passed on.
fn expanded(at: &At, text: &str) -> Result<String> {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek()) {
            ('$', Some('$')) => {
                chars.next();
                out.push('$');
            }
            ('$', Some('(')) => {
                return at.refuse(format!(
                    "'{text}' uses a $(VAR) reference, which Kubernetes expands and gantry does not: write the value (or use sh -c)"
                ))
            }
            (c, _) => out.push(c),
        }
    }
    Ok(out)
}

fn no_references(at: &At) -> Result<Vec<String>> {
    at.items()?
        .iter()
        .map(|item| expanded(item, &item.text()?))
        .collect()
}

/// Limits, or requests alone; both given must agree, as gantry has one
/// figure per resource (it reserves the resource and limits the container).
fn resources(at: &At, spec: &mut WorkloadSpec) -> Result<()> {
    let mut f = at.fields()?;
    let mut read = |section: &str| -> Result<(Figure, Figure)> {
        let Some(at) = f.take(section) else {
            return Ok((None, None));
        };
        let mut r = at.fields()?;
        let cpu = match r.take("cpu") {
            Some(cpu) => Some((quantity(&cpu, parse_cpu)?, cpu)),
            None => None,
        };
        let memory = match r.take("memory") {
            Some(memory) => Some((quantity(&memory, parse_memory)?, memory)),
            None => None,
        };
        r.finish(|key| {
            format!(
                "{} (gantry schedules cpu and memory only)",
                not_supported(key)
            )
        })?;
        Ok((cpu, memory))
    };
    let (cpu_limit, memory_limit) = read("limits")?;
    let (cpu_request, memory_request) = read("requests")?;
    f.finish(not_supported)?;
    spec.resources.cpu = one_figure(cpu_limit, cpu_request, "cpu")?.map(Cpu);
    spec.resources.memory = one_figure(memory_limit, memory_request, "memory")?.map(Memory);
    Ok(())
}

fn quantity<E: std::fmt::Display>(
    at: &At,
    parse: fn(&str) -> std::result::Result<u64, E>,
) -> Result<u64> {
    let text = at.text()?;
    match parse(&text) {
        Ok(0) => at.refuse("must be more than 0"),
        Ok(n) => Ok(n),
        Err(e) => at.refuse(e.to_string()),
    }
}

fn port(at: &At) -> Result<PortSpec> {
    let mut f = at.fields()?;
    let Some(container_port) = f.take("containerPort") else {
        return at.refuse("`containerPort` is missing");
    };
    let number = container_port.number(1, 65535)? as u16;
    if let Some(host_port) = f.take("hostPort") {
        if host_port.number(1, 65535)? != u64::from(number) {
            return host_port.refuse(format!(
                "differs from containerPort {number}: gantry containers use the host network, which cannot remap ports"
            ));
        }
    }
    let protocol = match f.take("protocol") {
        Some(at) => match at.str()? {
            "TCP" => Protocol::Tcp,
            "UDP" => Protocol::Udp,
            other => return at.refuse(format!("protocol '{other}' is not TCP or UDP")),
        },
        None => Protocol::Tcp,
    };
    let name = match f.take("name") {
        Some(name) => Some(name.str()?.to_string()),
        None => None,
    };
    f.finish(not_supported)?;
    Ok(PortSpec {
        port: number,
        protocol,
        name,
    })
}

fn volume_mount(at: &At, volumes: &BTreeMap<String, String>) -> Result<MountSpec> {
    let mut f = at.fields()?;
    let Some(name) = f.take("name") else {
        return at.refuse("`name` is missing");
    };
    let Some(source) = volumes.get(name.str()?) else {
        return name.refuse(format!(
            "no hostPath volume of the pod is called '{}'",
            name.str()?
        ));
    };
    let Some(target) = f.take("mountPath") else {
        return at.refuse("`mountPath` is missing");
    };
    let read_only = match f.take("readOnly") {
        Some(ro) => ro.bool()?,
        None => false,
    };
    let target = target.str()?.to_string();
    f.finish(not_supported)?;
    Ok(MountSpec {
        source: source.clone(),
        target,
        read_only,
    })
}

/// A probe port: a number (a named port is refused).
fn probe_port(at: &At) -> Result<u16> {
    if let Value::String(text) = at.value {
        return match text.parse::<u16>() {
            Ok(port) if port > 0 => Ok(port),
            _ => at.refuse(format!(
                "'{text}' is a named port, which gantry does not resolve: give the number"
            )),
        };
    }
    Ok(at.number(1, 65535)? as u16)
}

fn seconds(at: &At, min: u64) -> Result<HumanDuration> {
    let n = at.number(min, 86_400 * 365)?;
    Ok(HumanDuration(std::time::Duration::from_secs(n)))
}

fn probe(at: &At, readiness: bool) -> Result<ProbeSpec> {
    let mut f = at.fields()?;
    let mut probe = ProbeSpec {
        exec: None,
        http: None,
        tcp: None,
        period: None,
        timeout: None,
        failure_threshold: None,
        success_threshold: None,
        initial_delay: None,
    };
    if let Some(exec) = f.take("exec") {
        let mut e = exec.fields()?;
        let Some(command) = e.take("command") else {
            return exec.refuse("`command` is missing");
        };
        let words = command.strings()?;
        if words.is_empty() {
            return command.refuse("needs a command to run");
        }
        probe.exec = Some(words);
        e.finish(not_supported)?;
    }
    if let Some(http) = f.take("httpGet") {
        let mut h = http.fields()?;
        let Some(port) = h.take("port") else {
            return http.refuse("`port` is missing");
        };
        let port = probe_port(&port)?;
        let path = match h.take("path") {
            Some(path) => path.str()?.to_string(),
            None => "/".to_string(),
        };
        if let Some(scheme) = h.take("scheme") {
            if scheme.str()? != "HTTP" {
                return scheme.refuse("gantry probes plain HTTP only");
            }
        }
        h.finish(|key| {
            format!(
                "{} (gantry probes the container's own address over HTTP)",
                not_supported(key)
            )
        })?;
        probe.http = Some(HttpProbe { port, path });
    }
    if let Some(tcp) = f.take("tcpSocket") {
        let mut t = tcp.fields()?;
        let Some(port) = t.take("port") else {
            return tcp.refuse("`port` is missing");
        };
        probe.tcp = Some(TcpProbe {
            port: probe_port(&port)?,
        });
        t.finish(not_supported)?;
    }
    if let Some(at) = f.take("initialDelaySeconds") {
        probe.initial_delay = Some(seconds(&at, 0)?);
    }
    if let Some(at) = f.take("periodSeconds") {
        probe.period = Some(seconds(&at, 1)?);
    }
    if let Some(at) = f.take("timeoutSeconds") {
        probe.timeout = Some(seconds(&at, 1)?);
    }
    if let Some(at) = f.take("failureThreshold") {
        probe.failure_threshold = Some(at.number(1, u64::from(u32::MAX))? as u32);
    }
    if let Some(at) = f.take("successThreshold") {
        let n = at.number(1, u64::from(u32::MAX))? as u32;
        if n != 1 && !readiness {
            return at.refuse("must be 1 except for a readiness probe");
        }
        probe.success_threshold = Some(n);
    }
    f.finish(not_supported)?;
    if probe.exec.is_none() && probe.http.is_none() && probe.tcp.is_none() {
        return at.refuse("give one of exec, httpGet or tcpSocket");
    }
    Ok(probe)
}
