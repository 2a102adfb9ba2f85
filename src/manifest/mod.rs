//! Manifests people already have. `gantry apply` and `gantry convert` take
//! a Docker Compose file or Kubernetes `Deployment` and `Pod` documents as
//! well as gantry's own format, so that a workload written for a laptop or
//! a bigger cluster does not have to be rewritten by hand to reach a
//! gateway. Each is converted into the same [`WorkloadSpec`] values and
//! then checked exactly as a gantry manifest is
//! ([`crate::state::spec::accept_spec`]); anything that has no faithful
//! gantry meaning is refused, naming the document, the field and why, and
//! then the whole file is refused. Pure: no I/O, no clock.
//!
//! - `compose.rs`: a Compose file (one document with a `services` map).
//! - `kubernetes.rs`: `apps/v1` Deployments and `v1` Pods; they may sit
//!   beside gantry documents in one `---` stream.
//! - `walk.rs`: reading a YAML tree with every value's path at hand.

mod compose;
mod kubernetes;
mod walk;

use serde_yaml_ng::Value;

use crate::state::quantity::format_memory_exact;
use crate::state::spec::{
    accept_spec, finish_manifest, spec_from_document, yaml_documents, SpecError, WorkloadSpec,
};

/// Parses a manifest in any format gantry reads: a Compose file (a single
/// document with a top-level `services` map), Kubernetes documents (those
/// with `apiVersion` or `kind`, possibly mixed with gantry documents), or
/// gantry's own format. Returns validated specs, or the first refusal.
pub fn parse(text: &str) -> Result<Vec<WorkloadSpec>, SpecError> {
    let documents = yaml_documents(text)?;
    if let Some((number, _)) = documents.iter().find(|(_, v)| compose::is_compose(v)) {
        if documents.len() > 1 {
            return Err(SpecError(format!(
                "document {number} is a Compose file (it has `services`): a Compose file must be the only document of the manifest"
            )));
        }
        let mut specs = Vec::new();
        for (label, spec) in compose::convert(&documents[0].1)? {
            accept_spec(&mut specs, spec, &label, "name")?;
        }
        return finish_manifest(specs);
    }
    let mut specs = Vec::new();
    for (number, value) in documents {
        if kubernetes::is_kubernetes(&value) {
            let (label, spec) = kubernetes::convert(number, &value)?;
            accept_spec(&mut specs, spec, &label, "metadata.name")?;
        } else {
            let spec = spec_from_document(number, value)?;
            let label = format!("document {number} (workload '{}')", spec.name);
            accept_spec(&mut specs, spec, &label, "name")?;
        }
    }
    finish_manifest(specs)
}

/// The specs as gantry manifest YAML (`---` between documents), leaving
/// out every field that holds its default; `parse` reads it back as the
/// same specs.
pub fn to_yaml(specs: &[WorkloadSpec]) -> Result<String, SpecError> {
    let failed = |e: serde_yaml_ng::Error| SpecError(format!("cannot write YAML: {e}"));
    let minimal: WorkloadSpec = serde_yaml_ng::from_str("name: x\nimage: x\n").map_err(failed)?;
    let Value::Mapping(defaults) = serde_yaml_ng::to_value(&minimal).map_err(failed)? else {
        return Err(SpecError("cannot write YAML: a spec is not a map".into()));
    };
    let mut documents = Vec::with_capacity(specs.len());
    for spec in specs {
        let Value::Mapping(full) = serde_yaml_ng::to_value(spec).map_err(failed)? else {
            return Err(SpecError("cannot write YAML: a spec is not a map".into()));
        };
        let mut map = serde_yaml_ng::Mapping::new();
        for (key, value) in full {
            let keep = matches!(key.as_str(), Some("name" | "image"));
            if keep || defaults.get(&key) != Some(&value) {
                map.insert(key, value);
            }
        }
        // `format_memory` rounds to one decimal; a manifest must be exact.
        if let (Some(memory), Some(Value::Mapping(resources))) =
            (spec.resources.memory, map.get_mut("resources"))
        {
            resources.insert(
                "memory".into(),
                Value::String(format_memory_exact(memory.0)),
            );
        }
        documents.push(serde_yaml_ng::to_string(&map).map_err(failed)?);
    }
    Ok(documents.join("---\n"))
}

/// A cpu or memory figure as read, with where it was written.
type Figure<'a> = Option<(u64, walk::At<'a>)>;

/// Limits and reservations (Compose) or requests (Kubernetes): either alone
/// is the figure, and both must agree, since gantry has one figure per
/// resource (it reserves it on a gateway and limits the container).
fn one_figure(limit: Figure, reserved: Figure, what: &str) -> walk::Result<Option<u64>> {
    match (limit, reserved) {
        (Some((l, _)), Some((r, at))) if l != r => at.refuse(format!(
            "differs from limits.{what}: gantry has one figure per resource, which both reserves it on a gateway and limits the container"
        )),
        (Some((l, _)), _) | (None, Some((l, _))) => Ok(Some(l)),
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests;
