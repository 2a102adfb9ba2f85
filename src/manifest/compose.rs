//! Docker Compose files: each service becomes one workload. The rules (and
//! what is refused) are listed in README.md, "Compose files and Kubernetes
//! manifests".

use std::collections::BTreeMap;

use serde_yaml_ng::Value;

use super::walk::{split_words, At, Refusal, Result};
use super::{one_figure, Figure};
use crate::state::quantity::{parse_cpu, parse_duration, HumanDuration};
use crate::state::spec::{
    is_dns_label, Cpu, ImagePull, Memory, MountSpec, PortSpec, ProbeSpec, Protocol, RestartPolicy,
    SpecError, Spread, WorkloadSpec,
};

/// Service labels with this prefix select gateways: `gantry.node/zigbee:
/// "true"` becomes `node_selector: {zigbee: "true"}`.
pub const NODE_LABEL_PREFIX: &str = "gantry.node/";

/// A Compose file is a map with `services` (and no Kubernetes `kind`).
pub fn is_compose(value: &Value) -> bool {
    value.get("services").is_some() && value.get("kind").is_none()
}

/// The file's services as (label for errors, spec), in the file's order.
pub fn convert(document: &Value) -> std::result::Result<Vec<(String, WorkloadSpec)>, SpecError> {
    let mut value = document.clone();
    value
        .apply_merge()
        .map_err(|e| SpecError(format!("the Compose file: merge keys (`<<`): {e}")))?;
    let names: Vec<String> = value
        .get("services")
        .and_then(Value::as_mapping)
        .map(|m| {
            m.keys()
                .filter_map(|k| k.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let label_of = |refusal: &Refusal| {
        let service = names.iter().find(|name| {
            let prefix = format!("services.{name}");
            refusal.field == prefix
                || refusal.field.starts_with(&format!("{prefix}."))
                || refusal.field.starts_with(&format!("{prefix}["))
        });
        match service {
            Some(name) => format!("service '{name}'"),
            None => "the Compose file".to_string(),
        }
    };
    let error = |refusal: Refusal| SpecError(format!("{}: {refusal}", label_of(&refusal)));
    unescape(&mut value, "").map_err(error)?;
    file(&At::root(&value, "")).map_err(error)
}

/// Compose's `$` rules: `$$` is a literal `$`; `$NAME` and `${NAME}` would
/// read the environment of whoever converts the file, which gantry does not
/// do, so they are refused.
fn unescape(value: &mut Value, path: &str) -> Result<()> {
    match value {
        Value::String(text) if text.contains('$') => {
            let mut out = String::with_capacity(text.len());
            let mut chars = text.chars().peekable();
            while let Some(c) = chars.next() {
                if c != '$' {
                    out.push(c);
                    continue;
                }
                match chars.peek() {
                    Some('$') => {
                        chars.next();
                        out.push('$');
                    }
                    Some(n) if *n == '{' || *n == '_' || n.is_ascii_alphabetic() => {
                        return Err(Refusal {
                            field: path.to_string(),
                            why: format!(
                                "'{text}' uses Compose variable interpolation, which gantry does not do (it would read the environment of whoever converts the file): write the value, or `$$` for a literal `$`"
                            ),
                        });
                    }
                    _ => out.push('$'),
                }
            }
            *text = out;
            Ok(())
        }
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                unescape(item, &format!("{path}[{i}]"))?;
            }
            Ok(())
        }
        Value::Mapping(map) => {
            for (key, item) in map.iter_mut() {
                let key = match key {
                    Value::String(s) => s.clone(),
                    other => format!("{other:?}"),
                };
                let child = if path.is_empty() {
                    key
                } else {
                    format!("{path}.{key}")
                };
                unescape(item, &child)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn not_supported(what: &str) -> String {
    format!("`{what}` is not supported by gantry")
}

fn file(root: &At) -> Result<Vec<(String, WorkloadSpec)>> {
    let mut top = root.fields()?;
    // The project name and the format version mean nothing to gantry.
    top.ignore("version");
    top.ignore("name");
    top.ignore_prefixed("x-");
    for key in ["networks", "volumes", "secrets", "configs"] {
        if let Some(at) = top.take(key) {
            if !at.entries()?.is_empty() {
                return at.refuse(format!(
                    "top-level {key} are not supported by gantry (its containers use the host network and mount host paths only)"
                ));
            }
        }
    }
    let services = match top.take("services") {
        Some(services) => services,
        None => return root.refuse("a Compose file needs `services`"),
    };
    top.finish(not_supported)?;
    let mut specs = Vec::new();
    for (name, at) in services.entries()? {
        let spec = service(&name, &at)?;
        specs.push((format!("service '{name}'"), spec));
    }
    if specs.is_empty() {
        return services.refuse("the file holds no service");
    }
    Ok(specs)
}

fn service(name: &str, at: &At) -> Result<WorkloadSpec> {
    if !is_dns_label(name) {
        return at.refuse(format!(
            "'{name}' is not a DNS label (1-63 of a-z, 0-9 and '-', starting and ending with a letter or digit), which a gantry workload name must be: rename the service"
        ));
    }
    let mut f = at.fields()?;
    f.ignore_prefixed("x-");
    if let Some(build) = f.take("build") {
        return build.refuse(
            "gantry runs images, it does not build them: build and push the image, then name it in `image`",
        );
    }
    let image = match f.take("image") {
        Some(image) => image.str()?.to_string(),
        None => return at.refuse("`image` is missing: gantry needs an image to run"),
    };
    let mut spec = WorkloadSpec {
        name: name.to_string(),
        image,
        image_pull: ImagePull::IfNotPresent,
        command: Vec::new(),
        args: Vec::new(),
        env: BTreeMap::new(),
        replicas: 1,
        resources: Default::default(),
        node_selector: BTreeMap::new(),
        spread: None,
        placement: Default::default(),
        restart: RestartPolicy::Never,
        mounts: Vec::new(),
        devices: Vec::new(),
        ports: Vec::new(),
        priority: 0,
        read_only: false,
        singleton: false,
        on_disconnect: None,
        max_unavailable: None,
        progress_deadline: None,
        probes: Default::default(),
        autoscale: None,
    };
    if let Some(at) = f.take("pull_policy") {
        spec.image_pull = match at.str()? {
            "always" => ImagePull::Always,
            "never" => ImagePull::Never,
            "missing" | "if_not_present" => ImagePull::IfNotPresent,
            "build" => return at.refuse("gantry runs images, it does not build them"),
            other => {
                return at.refuse(format!(
                    "'{other}' is not one of always, never, missing, if_not_present"
                ))
            }
        };
    }
    // Compose's entrypoint replaces the image's ENTRYPOINT (gantry's
    // `command`), its command the image's CMD (gantry's `args`).
    if let Some(at) = f.take("entrypoint") {
        spec.command = words(&at)?;
    }
    if let Some(at) = f.take("command") {
        spec.args = words(&at)?;
    }
    if let Some(at) = f.take("environment") {
        spec.env = environment(&at)?;
    }
    if let Some(at) = f.take("env_file") {
        return at.refuse(
            "`env_file` is not supported by gantry: write the variables under `environment`",
        );
    }
    // Without `restart`, Docker's default: no.
    let mut restart = None;
    if let Some(at) = f.take("restart") {
        restart = Some(restart_policy(&at)?);
    }
    spec.restart = restart.unwrap_or(RestartPolicy::Never);
    if let Some(at) = f.take("deploy") {
        deploy(&at, &mut spec, restart)?;
    }
    if let Some(at) = f.take("labels") {
        for (key, value, item) in labels(&at)? {
            if let Some(label) = key.strip_prefix(NODE_LABEL_PREFIX) {
                select(&mut spec, label, &value, &item)?;
            }
        }
    }
    if let Some(at) = f.take("volumes") {
        for item in at.items()? {
            spec.mounts.push(volume(&item)?);
        }
    }
    if let Some(at) = f.take("devices") {
        for item in at.items()? {
            spec.devices.push(device(&item)?);
        }
    }
    if let Some(at) = f.take("network_mode") {
        if at.str()? != "host" {
            return at.refuse(
                "gantry containers always use the host network: leave network_mode out or set it to host",
            );
        }
    }
    if let Some(at) = f.take("networks") {
        return at.refuse("gantry containers use the host network: there are no networks to join");
    }
    if let Some(at) = f.take("ports") {
        for item in at.items()? {
            spec.ports.push(port(&item)?);
        }
    }
    if let Some(at) = f.take("healthcheck") {
        spec.probes.liveness = healthcheck(&at)?;
    }
    if let Some(at) = f.take("read_only") {
        spec.read_only = at.bool()?;
    }
    f.finish(|key| format!("{} (gantry converts image, entrypoint, command, environment, deploy, restart, labels, volumes, devices, network_mode: host, ports, healthcheck, read_only, pull_policy)", not_supported(key)))?;
    Ok(spec)
}

/// A command as a list, or as one string split into words like a shell
/// would (without running one).
fn words(at: &At) -> Result<Vec<String>> {
    let words = match at.value {
        Value::String(text) => split_words(text).or_else(|why| at.refuse(why))?,
        _ => at.strings()?,
    };
    if words.is_empty() {
        return at.refuse(
            "is empty: gantry cannot clear the image's own; leave it out or give a command",
        );
    }
    Ok(words)
}

fn environment(at: &At) -> Result<BTreeMap<String, String>> {
    let unset = |at: &At, key: &str| {
        at.refuse(format!(
            "'{key}' has no value: Compose would take it from the environment of whoever runs it, gantry does not: write the value"
        ))
    };
    let mut env = BTreeMap::new();
    match at.value {
        Value::Mapping(_) => {
            for (key, value) in at.entries()? {
                if value.is_null() {
                    return unset(&value, &key);
                }
                env.insert(key, value.text()?);
            }
        }
        _ => {
            for item in at.items()? {
                let text = item.text()?;
                match text.split_once('=') {
                    Some((key, value)) => env.insert(key.to_string(), value.to_string()),
                    None => return unset(&item, &text),
                };
            }
        }
    }
    Ok(env)
}

fn restart_policy(at: &At) -> Result<RestartPolicy> {
    match at.str()? {
        "no" => Ok(RestartPolicy::Never),
        "always" | "unless-stopped" => Ok(RestartPolicy::Always),
        "on-failure" => Ok(RestartPolicy::OnFailure),
        other if other.starts_with("on-failure:") => {
            at.refuse("a retry count is not supported by gantry: on-failure restarts without limit")
        }
        other => at.refuse(format!(
            "'{other}' is not one of no, always, on-failure, unless-stopped"
        )),
    }
}

fn deploy(at: &At, spec: &mut WorkloadSpec, restart: Option<RestartPolicy>) -> Result<()> {
    let mut f = at.fields()?;
    f.ignore_prefixed("x-");
    if let Some(mode) = f.take("mode") {
        if mode.str()? != "replicated" {
            return mode.refuse(
                "only replicated services are supported: for one copy per gateway, set replicas to the number of gateways and placement.max_replicas_per_node: 1",
            );
        }
    }
    if let Some(replicas) = f.take("replicas") {
        spec.replicas = replicas.number(0, u64::from(u32::MAX))? as u32;
    }
    if let Some(resources) = f.take("resources") {
        deploy_resources(&resources, spec)?;
    }
    if let Some(at) = f.take("restart_policy") {
        let mut rp = at.fields()?;
        // Swarm's default condition is `any`.
        let mut from_deploy = RestartPolicy::Always;
        if let Some(condition) = rp.take("condition") {
            from_deploy = match condition.str()? {
                "none" => RestartPolicy::Never,
                "on-failure" => RestartPolicy::OnFailure,
                "any" => RestartPolicy::Always,
                other => {
                    return condition
                        .refuse(format!("'{other}' is not one of none, on-failure, any"))
                }
            };
        }
        rp.finish(not_supported)?;
        if restart.is_some_and(|given| given != from_deploy) {
            return at.refuse("disagrees with the service's `restart`");
        }
        spec.restart = from_deploy;
    }
    if let Some(placement) = f.take("placement") {
        let mut p = placement.fields()?;
        if let Some(constraints) = p.take("constraints") {
            for item in constraints.items()? {
                let text = item.str()?;
                let Some((left, right)) = text.split_once("==") else {
                    return item.refuse(format!(
                        "'{text}': only `node.labels.KEY == VALUE` constraints are supported (they become node_selector entries)"
                    ));
                };
                let Some(key) = left.trim().strip_prefix("node.labels.") else {
                    return item.refuse(format!(
                        "'{text}': only `node.labels.KEY == VALUE` constraints are supported (gantry selects gateways by their labels)"
                    ));
                };
                select(spec, key, right.trim(), &item)?;
            }
        }
        if let Some(max) = p.take("max_replicas_per_node") {
            if max.number(1, 1)? == 1 {
                spec.spread = Some(Spread::Node);
            }
        }
        p.finish(not_supported)?;
    }
    f.finish(not_supported)
}

fn select(spec: &mut WorkloadSpec, key: &str, value: &str, at: &At) -> Result<()> {
    if key.is_empty() {
        return at.refuse("the gateway label's name is empty");
    }
    match spec.node_selector.get(key) {
        Some(other) if other != value => at.refuse(format!(
            "selects gateways with {key}={value}, but {key}={other} is asked for too"
        )),
        _ => {
            spec.node_selector
                .insert(key.to_string(), value.to_string());
            Ok(())
        }
    }
}

/// Limits and reservations must agree: gantry's one figure per resource
/// both reserves it on a gateway and limits the container.
fn deploy_resources(at: &At, spec: &mut WorkloadSpec) -> Result<()> {
    let mut f = at.fields()?;
    let mut read = |section: &str| -> Result<(Figure, Figure)> {
        let Some(at) = f.take(section) else {
            return Ok((None, None));
        };
        let mut r = at.fields()?;
        let cpus = match r.take("cpus") {
            Some(cpus) => Some((cpus_of(&cpus)?, cpus)),
            None => None,
        };
        let memory = match r.take("memory") {
            Some(memory) => Some((bytes_of(&memory)?, memory)),
            None => None,
        };
        r.finish(|key| {
            format!(
                "{} (gantry reserves and limits cpus and memory only)",
                not_supported(key)
            )
        })?;
        Ok((cpus, memory))
    };
    let (cpu_limit, memory_limit) = read("limits")?;
    let (cpu_reserved, memory_reserved) = read("reservations")?;
    f.finish(not_supported)?;
    spec.resources.cpu = one_figure(cpu_limit, cpu_reserved, "cpus")?.map(Cpu);
    spec.resources.memory = one_figure(memory_limit, memory_reserved, "memory")?.map(Memory);
    Ok(())
}

/// Compose's `cpus: '0.5'`: a number of CPUs, in millicores.
fn cpus_of(at: &At) -> Result<u64> {
    let text = at.text()?;
    if text.trim().ends_with('m') {
        return at.refuse(format!("'{text}' is not a number of CPUs such as '0.5'"));
    }
    match parse_cpu(&text) {
        Ok(millis) if millis > 0 => Ok(millis),
        Ok(_) => at.refuse("must be more than 0"),
        Err(e) => at.refuse(e.to_string()),
    }
}

/// Compose byte values: a number and b, k, kb, m, mb, g or gb (any case;
/// 1024-based), e.g. `50M`, `1g`, `512m`.
fn bytes_of(at: &At) -> Result<u64> {
    let text = at.text()?;
    let bad = || {
        at.refuse(format!(
            "'{text}' is not a Compose byte value such as 512m, 50M or 1g"
        ))
    };
    let t = text.trim().to_ascii_lowercase();
    let digits = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(digits);
    let factor: u128 = match unit {
        "" | "b" => 1,
        "k" | "kb" => 1 << 10,
        "m" | "mb" => 1 << 20,
        "g" | "gb" => 1 << 30,
        _ => return bad(),
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() || fraction.contains('.') || fraction.len() > 6 {
        return bad();
    }
    let scale = 10u128.pow(fraction.len() as u32);
    let parsed = whole.parse::<u128>().ok().zip(if fraction.is_empty() {
        Some(0)
    } else {
        fraction.parse::<u128>().ok()
    });
    let Some((whole, fraction)) = parsed else {
        return bad();
    };
    let bytes = whole
        .checked_mul(scale)
        .and_then(|w| w.checked_add(fraction))
        .and_then(|n| n.checked_mul(factor))
        .map(|n| n / scale)
        .and_then(|n| u64::try_from(n).ok());
    match bytes {
        Some(0) => at.refuse("must be more than 0"),
        Some(bytes) => Ok(bytes),
        None => at.refuse(format!("'{text}' is too large")),
    }
}

fn labels<'a>(at: &At<'a>) -> Result<Vec<(String, String, At<'a>)>> {
    let mut out = Vec::new();
    match at.value {
        Value::Mapping(_) => {
            for (key, value) in at.entries()? {
                let text = if value.is_null() {
                    String::new()
                } else {
                    value.text()?
                };
                out.push((key, text, value));
            }
        }
        _ => {
            for item in at.items()? {
                let text = item.text()?;
                let (key, value) = text.split_once('=').unwrap_or((&text, ""));
                out.push((key.to_string(), value.to_string(), item.clone()));
            }
        }
    }
    Ok(out)
}

fn host_path_only(source: &str) -> String {
    if source.starts_with('.') || source.starts_with('~') {
        format!(
            "'{source}' is relative: give an absolute path on the gateways (gantry runs the container there, not where this file is)"
        )
    } else {
        format!(
            "'{source}' is a named volume: gantry mounts host paths only (bind mounts); give an absolute path on the gateways"
        )
    }
}

fn volume(at: &At) -> Result<MountSpec> {
    if let Value::String(text) = at.value {
        let parts: Vec<&str> = text.split(':').collect();
        let (source, target, options) = match parts.as_slice() {
            [target] => {
                return at.refuse(format!(
                    "'{target}' is an anonymous volume: gantry mounts host paths only (bind mounts), written /host/path:{target}"
                ))
            }
            [source, target] => (*source, *target, ""),
            [source, target, options] => (*source, *target, *options),
            _ => return at.refuse(format!("'{text}' is not SOURCE:TARGET[:ro]")),
        };
        if !source.starts_with('/') {
            return at.refuse(host_path_only(source));
        }
        let mut read_only = false;
        for option in options.split(',').filter(|o| !o.is_empty()) {
            match option {
                "ro" => read_only = true,
                "rw" => read_only = false,
                other => {
                    return at.refuse(format!(
                        "mount option '{other}' is not supported by gantry (only ro and rw)"
                    ))
                }
            }
        }
        return Ok(MountSpec {
            source: source.to_string(),
            target: target.to_string(),
            read_only,
        });
    }
    let mut f = at.fields()?;
    let kind = match f.take("type") {
        Some(kind) => kind,
        None => return at.refuse("give `type: bind`"),
    };
    if kind.str()? != "bind" {
        return kind.refuse(format!(
            "a {} mount is not supported: gantry mounts host paths only (type: bind)",
            kind.str()?
        ));
    }
    let source = match f.take("source") {
        Some(source) => source.str()?.to_string(),
        None => return at.refuse("`source` is missing"),
    };
    if !source.starts_with('/') {
        return at.refuse(host_path_only(&source));
    }
    let target = match f.take("target") {
        Some(target) => target.str()?.to_string(),
        None => return at.refuse("`target` is missing"),
    };
    let read_only = match f.take("read_only") {
        Some(ro) => ro.bool()?,
        None => false,
    };
    f.finish(not_supported)?;
    Ok(MountSpec {
        source,
        target,
        read_only,
    })
}

fn device(at: &At) -> Result<String> {
    let text = at.str()?;
    let parts: Vec<&str> = text.split(':').collect();
    let (host, container, permissions) = match parts.as_slice() {
        [host] => (*host, *host, "rwm"),
        [host, container] => (*host, *container, "rwm"),
        [host, container, permissions] => (*host, *container, *permissions),
        _ => return at.refuse(format!("'{text}' is not /dev/HOST[:/dev/CONTAINER]")),
    };
    if !host.starts_with("/dev/") {
        return at.refuse(format!("'{host}' must be a path under /dev/"));
    }
    if container != host {
        return at.refuse(format!(
            "gantry passes a device at its own path: it cannot show {host} as {container}"
        ));
    }
    if permissions != "rwm" {
        return at.refuse(format!(
            "permissions '{permissions}' are not supported: gantry grants rwm"
        ));
    }
    Ok(host.to_string())
}

fn port_number(at: &At, text: &str) -> Result<u16> {
    if text.contains('-') {
        return at.refuse(format!("'{text}': port ranges are not supported by gantry"));
    }
    match text.trim().parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => at.refuse(format!("'{text}' is not a port from 1 to 65535")),
    }
}

fn remapped(at: &At, published: u16, target: u16) -> Result<()> {
    if published != target {
        return at.refuse(format!(
            "publishes container port {target} as {published}: gantry containers use the host network, which cannot remap ports; make the container listen on {published}"
        ));
    }
    Ok(())
}

fn port(at: &At) -> Result<PortSpec> {
    match at.value {
        Value::Number(_) => {
            let port = at.number(1, 65535)? as u16;
            Ok(PortSpec {
                port,
                protocol: Protocol::Tcp,
                name: None,
            })
        }
        Value::String(text) => {
            let (ports, protocol) = match text.split_once('/') {
                Some((ports, protocol)) => (ports, protocol_of(at, protocol)?),
                None => (text.as_str(), Protocol::Tcp),
            };
            let parts: Vec<&str> = ports.split(':').collect();
            let port = match parts.as_slice() {
                [target] => port_number(at, target)?,
                [published, target] => {
                    let target = port_number(at, target)?;
                    remapped(at, port_number(at, published)?, target)?;
                    target
                }
                _ => return at.refuse(format!(
                    "'{text}' binds a host address: gantry containers use the host network, so the container chooses its addresses; give PORT or PORT:PORT"
                )),
            };
            Ok(PortSpec {
                port,
                protocol,
                name: None,
            })
        }
        _ => {
            let mut f = at.fields()?;
            let target = match f.take("target") {
                Some(target) => target.number(1, 65535)? as u16,
                None => return at.refuse("`target` is missing"),
            };
            if let Some(published) = f.take("published") {
                let text = published.text()?;
                remapped(&published, port_number(&published, &text)?, target)?;
            }
            let protocol = match f.take("protocol") {
                Some(protocol) => protocol_of(&protocol, protocol.str()?)?,
                None => Protocol::Tcp,
            };
            let name = match f.take("name") {
                Some(name) => Some(name.str()?.to_string()),
                None => None,
            };
            // host or ingress: with the host network both mean the same.
            f.ignore("mode");
            f.ignore("app_protocol");
            f.finish(not_supported)?;
            Ok(PortSpec {
                port: target,
                protocol,
                name,
            })
        }
    }
}

fn protocol_of(at: &At, text: &str) -> Result<Protocol> {
    match text {
        "tcp" => Ok(Protocol::Tcp),
        "udp" => Ok(Protocol::Udp),
        other => at.refuse(format!("protocol '{other}' is not tcp or udp")),
    }
}

fn duration(at: &At) -> Result<HumanDuration> {
    let text = at.text()?;
    match parse_duration(&text) {
        Ok(d) => Ok(HumanDuration(d)),
        Err(e) => at.refuse(e.to_string()),
    }
}

fn positive(at: &At) -> Result<HumanDuration> {
    let d = duration(at)?;
    if d.0.is_zero() {
        return at.refuse("must be more than 0s");
    }
    Ok(d)
}

/// A healthcheck becomes a liveness exec probe with Docker's defaults
/// (every 30s, 30s timeout, 3 retries): like Swarm, gantry restarts a
/// container that turns unhealthy.
fn healthcheck(at: &At) -> Result<Option<ProbeSpec>> {
    let mut f = at.fields()?;
    if let Some(disable) = f.take("disable") {
        if disable.bool()? {
            f.ignore("test");
            f.ignore("interval");
            f.ignore("timeout");
            f.ignore("retries");
            f.ignore("start_period");
            f.finish(not_supported)?;
            return Ok(None);
        }
    }
    let Some(test) = f.take("test") else {
        return at.refuse(
            "give `test`: gantry cannot retime the image's own HEALTHCHECK, only run a check given here",
        );
    };
    let command = match test.value {
        Value::String(text) => shell(text),
        _ => {
            let items = test.strings()?;
            match items.split_first() {
                Some((first, rest)) if first == "CMD" && !rest.is_empty() => rest.to_vec(),
                Some((first, [line])) if first == "CMD-SHELL" => shell(line),
                Some((first, [])) if first == "NONE" => {
                    f.finish(not_supported)?;
                    return Ok(None);
                }
                _ => {
                    return test.refuse(
                        "expected [\"CMD\", command...], [\"CMD-SHELL\", \"command line\"], [\"NONE\"] or a command line",
                    )
                }
            }
        }
    };
    let mut probe = ProbeSpec {
        exec: Some(command),
        http: None,
        tcp: None,
        period: Some(HumanDuration(std::time::Duration::from_secs(30))),
        timeout: Some(HumanDuration(std::time::Duration::from_secs(30))),
        failure_threshold: Some(3),
        success_threshold: None,
        initial_delay: None,
    };
    if let Some(at) = f.take("interval") {
        probe.period = Some(positive(&at)?);
    }
    if let Some(at) = f.take("timeout") {
        probe.timeout = Some(positive(&at)?);
    }
    if let Some(at) = f.take("retries") {
        probe.failure_threshold = Some(at.number(1, u64::from(u32::MAX))? as u32);
    }
    if let Some(at) = f.take("start_period") {
        let delay = duration(&at)?;
        probe.initial_delay = (!delay.0.is_zero()).then_some(delay);
    }
    f.finish(not_supported)?;
    Ok(Some(probe))
}

fn shell(line: &str) -> Vec<String> {
    vec!["/bin/sh".into(), "-c".into(), line.to_string()]
}
