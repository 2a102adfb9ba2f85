//! The JSON documents the Admin API returns and `-o json` prints. These
//! field names are a public contract (scripts parse them): add fields
//! freely, never rename or remove one.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use crate::cluster::Cluster;
use crate::state::quantity::{format_cpu, format_memory};
use crate::state::{Instance, Node, NodeId, State, Workload};

/// RFC 3339 in UTC, from milliseconds since the epoch.
pub fn timestamp(ms: u64) -> String {
    crate::state::quantity::format_epoch_ms(ms)
}

fn role(id: NodeId, voters: &BTreeSet<NodeId>, learners: &BTreeSet<NodeId>) -> &'static str {
    if voters.contains(&id) {
        "voter"
    } else if learners.contains(&id) {
        "learner"
    } else {
        "none"
    }
}

pub fn node(node: &Node, voters: &BTreeSet<NodeId>, learners: &BTreeSet<NodeId>) -> Value {
    json!({
        "name": node.name,
        "id": node.id,
        "address": node.address,
        "role": role(node.id, voters, learners),
        "status": node.status.to_string(),
        "status_reason": node.status_reason,
        "cordoned": node.cordoned,
        "draining": node.draining,
        "labels": node.labels,
        "capacity": {
            "cpu_millis": node.capacity.cpu_millis,
            "memory_bytes": node.capacity.memory_bytes,
            "cpu": format_cpu(node.capacity.cpu_millis),
            "memory": format_memory(node.capacity.memory_bytes),
        },
        "devices": node.devices,
        "since": timestamp(node.since_ms),
        "since_ms": node.since_ms,
        "joined": timestamp(node.joined_ms),
    })
}

pub fn workload(state: &State, workload: &Workload) -> Value {
    let instances: Vec<&Instance> = state.instances_of(&workload.spec.name).collect();
    let running = instances
        .iter()
        .filter(|i| i.state == crate::state::InstanceState::Running)
        .count();
    let placed = instances.iter().filter(|i| i.node.is_some()).count();
    let ready = instances.iter().filter(|i| i.is_up()).count();
    json!({
        "name": workload.spec.name,
        "image": workload.spec.image,
        "replicas": workload.replicas(),
        "autoscale": workload.spec.autoscale.map(|a| json!({
            "min": workload.scale_floor(),
            "max": a.max,
            "cpu_target": a.cpu_target,
            "memory_target": a.memory_target,
            "scale_down_after": crate::state::quantity::format_duration(a.scale_down_after()),
            "last_scale": workload.last_scale.as_ref().map(|s| json!({
                "at": timestamp(s.at_ms), "from": s.from, "to": s.to, "reason": s.reason,
            })),
        })),
        "placed": placed,
        "running": running,
        "ready": ready,
        "generation": workload.generation,
        "source": workload.source.to_string(),
        "created": timestamp(workload.created_ms),
        "updated": timestamp(workload.updated_ms),
        "spec": workload.spec,
    })
}

pub fn instance(state: &State, instance: &Instance) -> Value {
    let node_name = |id: Option<NodeId>| {
        id.and_then(|id| state.nodes.get(&id))
            .map(|n| n.name.clone())
    };
    json!({
        "workload": instance.workload,
        "replica": instance.replica,
        "node": node_name(instance.node),
        "node_id": instance.node,
        "previous_node": node_name(instance.previous_node),
        "generation": instance.generation,
        "state": instance.state.to_string(),
        "ready": instance.is_up(),
        "exit_code": instance.exit_code,
        "reason": instance.reason,
        "restarts": instance.restarts,
        "container_id": instance.container_id,
        "created": timestamp(instance.created_ms),
        "created_ms": instance.created_ms,
        "updated": timestamp(instance.updated_ms),
    })
}

/// `get nodes`: each gateway, with what the instances placed on it request
/// (`allocated`) and how many there are (`instances`).
pub fn nodes(cluster: &Cluster) -> Value {
    let (voters, learners) = (cluster.voters(), cluster.learners());
    let applied = cluster.state().read();
    let state = &applied.state;
    Value::Array(
        state
            .nodes
            .values()
            .map(|n| {
                let mut doc = node(n, &voters, &learners);
                let (cpu, memory, count) = allocated(state, n.id);
                doc["allocated"] = json!({
                    "cpu_millis": cpu,
                    "memory_bytes": memory,
                    "cpu": format_cpu(cpu),
                    "memory": format_memory(memory),
                });
                doc["instances"] = json!(count);
                doc
            })
            .collect(),
    )
}

/// CPU, memory requested by the instances placed on `node`, and how many.
fn allocated(state: &State, node: NodeId) -> (u64, u64, usize) {
    let mut sum = (0u64, 0u64, 0usize);
    for i in state.instances.values().filter(|i| i.node == Some(node)) {
        if let Some(w) = state.workloads.get(&i.workload) {
            sum.0 += w.spec.cpu_millis();
            sum.1 += w.spec.memory_bytes();
        }
        sum.2 += 1;
    }
    sum
}

pub fn workloads(cluster: &Cluster) -> Value {
    let applied = cluster.state().read();
    Value::Array(
        applied
            .state
            .workloads
            .values()
            .map(|w| workload(&applied.state, w))
            .collect(),
    )
}

pub fn instances(cluster: &Cluster) -> Value {
    let applied = cluster.state().read();
    Value::Array(
        applied
            .state
            .instances
            .values()
            .map(|i| instance(&applied.state, i))
            .collect(),
    )
}

pub fn events(state: &State, filter: Option<&str>) -> Value {
    Value::Array(
        state
            .events
            .iter()
            .filter(|e| filter.is_none_or(|f| e.message.contains(f)))
            .map(|e| json!({"seq": e.seq, "at": timestamp(e.at_ms), "kind": e.kind, "message": e.message}))
            .collect(),
    )
}

/// `gantry describe workload NAME`: the spec, its instances and why any
/// of them has no home.
pub fn describe_workload(cluster: &Cluster, name: &str) -> Option<Value> {
    let applied = cluster.state().read();
    let state = &applied.state;
    let w = state.workloads.get(name)?;
    let needle = format!("{name}/");
    let mut related: Vec<Value> = Vec::new();
    if let Value::Array(all) = events(state, None) {
        related = all
            .into_iter()
            .filter(|e| {
                let message = e["message"].as_str().unwrap_or("");
                message.contains(&needle) || message.contains(&format!("workload {name} "))
            })
            .collect();
    }
    Some(json!({
        "workload": workload(state, w),
        "instances": state.instances_of(name).map(|i| instance(state, i)).collect::<Vec<_>>(),
        "events": related,
    }))
}

/// Whether `message` names the gateway `name` as a whole word.
fn mentions(message: &str, name: &str) -> bool {
    message
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .any(|word| word == name)
}

/// `gantry pki status`: this gateway's certificate and the cluster CA
/// (public facts only).
pub fn pki(cluster: &Cluster) -> Value {
    let Ok(trust) = cluster.trust() else {
        return json!({ "error": "this gateway has no TLS identity" });
    };
    let creds = trust.credentials();
    let leaf = gantry_pki::cert_info(creds.leaf_der()).ok();
    let ca = trust
        .ca_bundle()
        .first()
        .and_then(|der| gantry_pki::cert_info(der).ok());
    let secs = |s: i64| timestamp((s.max(0) as u64).saturating_mul(1000));
    json!({
        "gateway": cluster.state().read().state.nodes.get(&cluster.id()).map(|n| n.name.clone()),
        "ca_sha256": trust.ca_pin().to_hex(),
        "ca_not_after": ca.as_ref().map(|c| secs(c.not_after)),
        "certificate": leaf.as_ref().map(|c| json!({
            "serial": c.serial_hex,
            "not_before": secs(c.not_before),
            "not_after": secs(c.not_after),
            "names": c.dns_names,
        })),
    })
}

/// `gantry settings get`: the cluster-wide settings.
pub fn settings(cluster: &Cluster) -> Value {
    json!(cluster.state().read().state.meta.settings)
}

/// `gantry describe node NAME`: status, role, capacity, what is allocated
/// on it, its instances, what a drain still waits for, and its events.
pub fn describe_node(cluster: &Cluster, name: &str, now_ms: u64) -> Option<Value> {
    let (voters, learners) = (cluster.voters(), cluster.learners());
    let applied = cluster.state().read();
    let state = &applied.state;
    let n = state
        .node_by_name(name)
        .or_else(|| state.nodes.values().rev().find(|n| n.name == name))?;
    let on_it: Vec<&Instance> = state
        .instances
        .values()
        .filter(|i| i.node == Some(n.id))
        .collect();
    let (cpu, memory, _) = allocated(state, n.id);
    let waiting: Vec<Value> = crate::control::scheduling::drain_blockers(state, n.id, now_ms)
        .into_iter()
        .map(|(k, reason)| json!({"instance": k.to_string(), "reason": reason}))
        .collect();
    let related: Vec<Value> = match events(state, None) {
        Value::Array(all) => all
            .into_iter()
            .filter(|e| mentions(e["message"].as_str().unwrap_or(""), &n.name))
            .collect(),
        _ => Vec::new(),
    };
    Some(json!({
        "node": node(n, &voters, &learners),
        "allocated": {
            "cpu_millis": cpu,
            "memory_bytes": memory,
            "cpu": format_cpu(cpu),
            "memory": format_memory(memory),
        },
        "instances": on_it.iter().map(|i| instance(state, i)).collect::<Vec<_>>(),
        "drain": {"draining": n.draining, "waiting": waiting},
        "events": related,
    }))
}

/// `gantry status`: the cluster as this gateway sees it.
pub fn status(cluster: &Cluster) -> Value {
    let metrics = cluster.metrics();
    let (current, contact_age) = cluster.believes_current();
    let (voters, learners) = (cluster.voters(), cluster.learners());
    let applied = cluster.state().read();
    let state = &applied.state;
    let name_of = |id: NodeId| state.nodes.get(&id).map(|n| n.name.clone());
    json!({
        "cluster": cluster.cluster_id(),
        "gateway": name_of(cluster.id()),
        "gateway_id": cluster.id(),
        "leader": metrics.current_leader.and_then(name_of),
        "leader_id": metrics.current_leader,
        "term": metrics.current_term,
        "current": current,
        "last_leader_contact_ms": contact_age,
        "applied_index": applied.last_applied.map(|l| l.index),
        "voters": voters.len(),
        "learners": learners.len(),
        "settings": state.meta.settings,
        "nodes": state.nodes.values().map(|n| node(n, &voters, &learners)).collect::<Vec<_>>(),
        "workloads": state.workloads.values().map(|w| workload(state, w)).collect::<Vec<_>>(),
    })
}

/// `gantry rollout status NAME`: where the rollout of a workload stands.
pub fn rollout_status(cluster: &Cluster, name: &str) -> Option<Value> {
    let applied = cluster.state().read();
    let state = &applied.state;
    let w = state.workloads.get(name)?;
    let instances: Vec<&Instance> = state.instances_of(name).collect();
    let on_target = instances
        .iter()
        .filter(|i| i.generation == w.generation)
        .count();
    let running = instances
        .iter()
        .filter(|i| i.generation == w.generation && i.state == crate::state::InstanceState::Running)
        .count();
    // Up: Running, and ready where the workload has a readiness probe.
    let ready = instances
        .iter()
        .filter(|i| i.generation == w.generation && i.is_up())
        .count();
    let complete = on_target == w.replicas() as usize && ready == on_target;
    Some(json!({
        "workload": name,
        "generation": w.generation,
        "last_good": w.last_good,
        "replicas": w.replicas(),
        "updated": on_target,
        "running": running,
        "ready": ready,
        "complete": complete,
        "max_unavailable": w.spec.max_unavailable.unwrap_or(1),
        "progress_deadline": w.spec.progress_deadline
            .map(|d| d.to_string())
            .unwrap_or_else(|| crate::state::quantity::format_duration(crate::control::rollout::DEFAULT_PROGRESS_DEADLINE)),
        "rolled_back": w.rolled_back.as_ref().map(|r| json!({
            "generation": r.generation,
            "to_spec_of": r.to_spec_of,
            "at": timestamp(r.at_ms),
            "reason": r.reason,
        })),
        "instances": instances.iter().map(|i| instance(state, i)).collect::<Vec<_>>(),
    }))
}
