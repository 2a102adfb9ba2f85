//! Rendering of Admin API documents: aligned tables for people, JSON and
//! YAML (the documents as they are) for scripts.

use std::fmt::Write;

use anyhow::Result;
use serde_json::Value;

use super::args::OutputFormat;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Status,
    Nodes,
    Workloads,
    Instances,
    DescribeWorkload,
    Applied,
    Deleted,
    Left,
    Imported,
    Pulled,
    Rollout,
    DescribeNode,
    Settings,
    Cordoned,
    Events,
    Drained,
    CloudAttached,
    CloudDetached,
    HubApplied,
    HubDeleted,
    HubStatus,
    HubToken,
    /// A token created once: the text alone on its line, for `$(...)`.
    NewToken,
    Tokens,
    JoinTokens,
    Revoked,
    Pki,
}

pub fn render(view: View, format: OutputFormat, value: &Value) -> Result<String> {
    Ok(match format {
        OutputFormat::Json => format!("{}\n", serde_json::to_string_pretty(value)?),
        OutputFormat::Yaml => serde_yaml_ng::to_string(value)?,
        OutputFormat::Table => table_view(view, value),
        OutputFormat::Wide => match view {
            View::Nodes => nodes_table(value, true),
            View::Workloads => workloads_table(value, true),
            View::Instances => instances_table(value, true),
            other => table_view(other, value),
        },
    })
}

/// Columns padded to their widest cell, two spaces apart.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                let _ = write!(text, "{cell:<width$}  ", width = widths[i]);
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

pub fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => if *b { "yes" } else { "no" }.into(),
        other => other.to_string(),
    }
}

fn labels(value: &Value) -> String {
    match value.as_object() {
        Some(map) if !map.is_empty() => map
            .iter()
            .map(|(k, v)| format!("{k}={}", text(v)))
            .collect::<Vec<_>>()
            .join(","),
        _ => "-".into(),
    }
}

pub fn items(value: &Value) -> &[Value] {
    value.as_array().map(Vec::as_slice).unwrap_or(&[])
}

/// `wide` adds allocation (allocated/total), instance count, since and
/// devices.
fn nodes_table(nodes: &Value, wide: bool) -> String {
    let rows: Vec<Vec<String>> = items(nodes)
        .iter()
        .map(|n| {
            let mut status = text(&n["status"]);
            if n["cordoned"].as_bool() == Some(true) {
                status.push_str(",Cordoned");
            }
            let (cpu, memory) = (text(&n["capacity"]["cpu"]), text(&n["capacity"]["memory"]));
            let mut row = vec![
                text(&n["name"]),
                text(&n["id"]),
                text(&n["address"]),
                text(&n["role"]),
                status,
            ];
            if wide {
                row.extend([
                    format!("{}/{cpu}", text(&n["allocated"]["cpu"])),
                    format!("{}/{memory}", text(&n["allocated"]["memory"])),
                    text(&n["instances"]),
                    text(&n["since"]),
                    n["devices"]
                        .as_array()
                        .map(|d| d.iter().map(text).collect::<Vec<_>>().join(","))
                        .unwrap_or_default(),
                ]);
            } else {
                row.extend([cpu, memory]);
            }
            row.push(labels(&n["labels"]));
            row
        })
        .collect();
    let mut headers = vec!["NAME", "ID", "ADDRESS", "ROLE", "STATUS", "CPU", "MEMORY"];
    if wide {
        headers.extend(["INSTANCES", "SINCE", "DEVICES"]);
    }
    headers.push("LABELS");
    table(&headers, &rows)
}

/// `wide` adds the placement rules: singleton, priority, placement,
/// spread and node selector.
fn workloads_table(workloads: &Value, wide: bool) -> String {
    let rows: Vec<Vec<String>> = items(workloads)
        .iter()
        .map(|w| {
            let mut row = vec![
                text(&w["name"]),
                text(&w["image"]),
                format!("{}/{}", text(&w["running"]), text(&w["replicas"])),
                text(&w["ready"]),
                text(&w["placed"]),
                text(&w["generation"]),
                text(&w["source"]),
            ];
            if wide {
                let spec = &w["spec"];
                row.extend([
                    if spec["singleton"] == true {
                        "yes"
                    } else {
                        "no"
                    }
                    .to_string(),
                    text(&spec["priority"]),
                    text(&spec["placement"]),
                    text(&spec["spread"]),
                    labels(&spec["node_selector"]),
                ]);
            }
            row
        })
        .collect();
    let mut headers = vec![
        "NAME",
        "IMAGE",
        "RUNNING",
        "READY",
        "PLACED",
        "GENERATION",
        "SOURCE",
    ];
    if wide {
        headers.extend(["SINGLETON", "PRIORITY", "PLACEMENT", "SPREAD", "SELECTOR"]);
    }
    table(&headers, &rows)
}

/// `wide` adds the container id, the previous gateway and when the
/// instance was created.
fn instances_table(instances: &Value, wide: bool) -> String {
    let rows: Vec<Vec<String>> = items(instances)
        .iter()
        .map(|i| {
            let mut state = text(&i["state"]);
            if let Some(code) = i["exit_code"].as_i64() {
                let _ = write!(state, "({code})");
            }
            let mut row = vec![
                text(&i["workload"]),
                text(&i["replica"]),
                text(&i["node"]),
                state,
                text(&i["ready"]),
                text(&i["restarts"]),
                text(&i["generation"]),
            ];
            if wide {
                row.extend([
                    text(&i["container_id"]),
                    text(&i["previous_node"]),
                    text(&i["created"]),
                ]);
            }
            row.extend([text(&i["updated"]), text(&i["reason"])]);
            row
        })
        .collect();
    let mut headers = vec![
        "WORKLOAD", "REPLICA", "NODE", "STATE", "READY", "RESTARTS", "GEN",
    ];
    if wide {
        headers.extend(["CONTAINER", "PREVIOUS", "CREATED"]);
    }
    headers.extend(["SINCE", "REASON"]);
    table(&headers, &rows)
}

fn hub_status_table(value: &Value) -> String {
    let rows: Vec<Vec<String>> = items(&value["sites"])
        .iter()
        .map(|s| {
            let refused: Vec<String> = items(&s["refused"])
                .iter()
                .map(|r| text(&r["name"]))
                .collect();
            vec![
                text(&s["site"]),
                text(&s["connected"]),
                text(&s["last_seen"]),
                format!(
                    "{}/{}",
                    text(&s["acked_revision"]),
                    text(&s["desired_revision"])
                ),
                items(&s["nodes"]).len().to_string(),
                items(&s["instances"]).len().to_string(),
                if refused.is_empty() {
                    "-".into()
                } else {
                    refused.join(",")
                },
                s["rejected"]["error"]
                    .as_str()
                    .map(String::from)
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    table(
        &[
            "SITE",
            "CONNECTED",
            "LAST-SEEN",
            "ACKED/DESIRED",
            "NODES",
            "INSTANCES",
            "REFUSED",
            "REJECTED",
        ],
        &rows,
    )
}

fn table_view(view: View, value: &Value) -> String {
    match view {
        View::Status => {
            let mut out = String::new();
            let current = if value["current"].as_bool() == Some(true) {
                "yes"
            } else {
                "NO (stale replica)"
            };
            let _ = writeln!(out, "Cluster:  {}", text(&value["cluster"]));
            let _ = writeln!(
                out,
                "Leader:   {} (term {})",
                text(&value["leader"]),
                text(&value["term"])
            );
            let _ = writeln!(
                out,
                "Answered: {} (current: {current})",
                text(&value["gateway"])
            );
            out.push('\n');
            out.push_str(&nodes_table(&value["nodes"], false));
            let cloud = &value["cloud"];
            if cloud["attached"].as_bool() == Some(true) {
                let _ = writeln!(
                    out,
                    "Cloud:    hub {} site {}, {} since {} (revision {})",
                    text(&cloud["hub"]),
                    text(&cloud["site"]),
                    if cloud["connected"].as_bool() == Some(true) {
                        "connected"
                    } else {
                        "disconnected"
                    },
                    text(&cloud["since"]),
                    text(&cloud["acked_revision"]),
                );
            }
            out.push('\n');
            if items(&value["workloads"]).is_empty() {
                out.push_str("No workloads.\n");
            } else {
                out.push_str(&workloads_table(&value["workloads"], false));
            }
            out
        }
        View::Nodes => nodes_table(value, false),
        View::Workloads => workloads_table(value, false),
        View::Instances => instances_table(value, false),
        View::DescribeWorkload => {
            let w = &value["workload"];
            let mut out = String::new();
            let _ = writeln!(out, "Name:        {}", text(&w["name"]));
            let _ = writeln!(out, "Image:       {}", text(&w["image"]));
            let _ = writeln!(out, "Source:      {}", text(&w["source"]));
            let _ = writeln!(out, "Generation:  {}", text(&w["generation"]));
            let _ = writeln!(
                out,
                "Replicas:    {} desired, {} placed, {} running, {} ready",
                text(&w["replicas"]),
                text(&w["placed"]),
                text(&w["running"]),
                text(&w["ready"])
            );
            let a = &w["autoscale"];
            if a.is_object() {
                let targets: Vec<String> = [("cpu", "cpu_target"), ("memory", "memory_target")]
                    .iter()
                    .filter(|(_, k)| !a[*k].is_null())
                    .map(|(name, k)| format!("{name} {}", text(&a[*k])))
                    .collect();
                let _ = writeln!(
                    out,
                    "Autoscale:   {} to {} replicas, target {}, down after {}",
                    text(&a["min"]),
                    text(&a["max"]),
                    targets.join(", "),
                    text(&a["scale_down_after"])
                );
                let u = &a["usage"];
                if u.is_object() {
                    let _ = writeln!(
                        out,
                        "  Usage:     {} over {} reporting replicas (wants {})",
                        text(&u["reason"]),
                        text(&u["reporting"]),
                        text(&u["wanted"])
                    );
                } else {
                    let _ = writeln!(out, "  Usage:     no reading yet");
                }
                let last = &a["last_scale"];
                if last.is_object() {
                    let _ = writeln!(
                        out,
                        "  Last:      {} from {} to {}: {}",
                        text(&last["at"]),
                        text(&last["from"]),
                        text(&last["to"]),
                        text(&last["reason"])
                    );
                }
            }
            if let Ok(spec) = serde_yaml_ng::to_string(&w["spec"]) {
                out.push_str("Spec:\n");
                for line in spec.lines() {
                    let _ = writeln!(out, "  {line}");
                }
            }
            out.push_str("Instances:\n");
            for line in instances_table(&value["instances"], false).lines() {
                let _ = writeln!(out, "  {line}");
            }
            out.push_str("Events:\n");
            for e in items(&value["events"]) {
                let _ = writeln!(out, "  {}  {}", text(&e["at"]), text(&e["message"]));
            }
            out
        }
        View::Applied => items(&value["applied"])
            .iter()
            .map(|a| {
                format!(
                    "workload/{} {} (generation {})\n",
                    text(&a["name"]),
                    text(&a["change"]),
                    text(&a["generation"])
                )
            })
            .collect(),
        View::Deleted => format!("workload/{} deleted\n", text(&value["deleted"])),
        View::Left => format!("gateway {} left the cluster\n", text(&value["left"])),
        View::Rollout => {
            let mut out = String::new();
            let _ = writeln!(
                out,
                "workload {}: generation {}, {}/{} replicas updated, {} running{}",
                text(&value["workload"]),
                text(&value["generation"]),
                text(&value["updated"]),
                text(&value["replicas"]),
                text(&value["running"]),
                if value["complete"] == true {
                    " (complete)"
                } else {
                    ""
                }
            );
            let _ = writeln!(out, "last good generation: {}", text(&value["last_good"]));
            if let Some(r) = value["rolled_back"].as_object() {
                let _ = writeln!(
                    out,
                    "rolled back: generation {} to the spec of {} at {}: {}",
                    text(&r["generation"]),
                    text(&r["to_spec_of"]),
                    text(&r["at"]),
                    text(&r["reason"])
                );
            }
            out.push_str(&instances_table(&value["instances"], false));
            out
        }
        View::Imported => {
            let rows: Vec<Vec<String>> = items(&value["gateways"])
                .iter()
                .map(|g| {
                    let images: Vec<String> = items(&g["images"])
                        .iter()
                        .map(|i| text(&i["name"]))
                        .collect();
                    let result = if g["error"].is_null() {
                        "imported".to_string()
                    } else {
                        text(&g["error"])
                    };
                    vec![text(&g["gateway"]), images.join(","), result]
                })
                .collect();
            table(&["GATEWAY", "IMAGES", "RESULT"], &rows)
        }
        View::Pulled => {
            let rows: Vec<Vec<String>> = items(&value["gateways"])
                .iter()
                .map(|g| {
                    let result = if g["error"].is_null() {
                        "pulled".to_string()
                    } else {
                        text(&g["error"])
                    };
                    vec![
                        text(&g["gateway"]),
                        text(&g["source"]),
                        text(&g["digest"]),
                        text(&g["downloaded_bytes"]),
                        result,
                    ]
                })
                .collect();
            table(&["GATEWAY", "SOURCE", "DIGEST", "BYTES", "RESULT"], &rows)
        }
        View::DescribeNode => describe_node(value),
        View::Settings => {
            let rows: Vec<Vec<String>> = value
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| vec![k.replace('_', "-"), text(v)])
                        .collect()
                })
                .unwrap_or_default();
            table(&["SETTING", "VALUE"], &rows)
        }
        View::Cordoned => {
            let n = &value["node"];
            let state = if n["cordoned"].as_bool() == Some(true) {
                "cordoned"
            } else {
                "uncordoned"
            };
            format!(
                "gateway {} {state} ({})\n",
                text(&n["name"]),
                text(&n["status"])
            )
        }
        View::Events => events_table(value),
        View::Drained => format!("{value}\n"),
        View::CloudAttached => format!(
            "attached to hub {} as site {}\n",
            text(&value["hub"]),
            text(&value["site"])
        ),
        View::CloudDetached => "detached from the cloud hub\n".to_string(),
        View::HubApplied if value["sites"].is_array() => items(&value["sites"])
            .iter()
            .map(|site| table_view(View::HubApplied, site))
            .collect(),
        View::HubApplied => format!(
            "site {}: revision {}{}\n",
            text(&value["site"]),
            text(&value["revision"]),
            if value["changed"].as_bool() == Some(true) {
                ""
            } else {
                " (unchanged)"
            }
        ),
        View::HubDeleted => format!(
            "site {}: workload/{} deleted (revision {})\n",
            text(&value["site"]),
            text(&value["deleted"]),
            text(&value["revision"])
        ),
        View::HubToken | View::NewToken => format!("{}\n", text(&value["token"])),
        View::Tokens | View::JoinTokens => tokens_table(view, value),
        View::Revoked => format!("token {} revoked\n", text(&value["revoked"])),
        View::Pki => pki_table(value),
        View::HubStatus => hub_status_table(value),
    }
}

fn tokens_table(view: View, value: &Value) -> String {
    let rows: Vec<Vec<String>> = items(value)
        .iter()
        .map(|t| {
            let mut row = vec![text(&t["id"]), text(&t["name"])];
            if view == View::Tokens {
                row.push(text(&t["role"]));
                row.push(text(&t["gateway"]));
            } else {
                row.push(if t["default"] == true { "yes" } else { "" }.into());
                row.push(text(&t["uses_left"]));
            }
            row.push(text(&t["expires"]));
            row
        })
        .collect();
    let headers: &[&str] = if view == View::Tokens {
        &["ID", "NAME", "ROLE", "GATEWAY", "EXPIRES"]
    } else {
        &["ID", "NAME", "DEFAULT", "USES LEFT", "EXPIRES"]
    };
    table(headers, &rows)
}

fn pki_table(value: &Value) -> String {
    let cert = &value["certificate"];
    let mut out = String::new();
    let _ = writeln!(out, "Gateway:      {}", text(&value["gateway"]));
    let _ = writeln!(out, "CA (sha256):  {}", text(&value["ca_sha256"]));
    let _ = writeln!(out, "CA expires:   {}", text(&value["ca_not_after"]));
    let _ = writeln!(out, "Certificate:  serial {}", text(&cert["serial"]));
    let _ = writeln!(
        out,
        "  valid:      {} .. {}",
        text(&cert["not_before"]),
        text(&cert["not_after"])
    );
    let names: Vec<String> = items(&cert["names"]).iter().map(text).collect();
    let _ = writeln!(out, "  names:      {}", names.join(", "));
    out
}

fn events_table(events: &Value) -> String {
    let rows: Vec<Vec<String>> = items(events)
        .iter()
        .map(|e| {
            vec![
                text(&e["seq"]),
                text(&e["at"]),
                text(&e["kind"]),
                text(&e["message"]),
            ]
        })
        .collect();
    table(&["SEQ", "AT", "KIND", "MESSAGE"], &rows)
}

fn describe_node(value: &Value) -> String {
    let n = &value["node"];
    let a = &value["allocated"];
    let mut out = String::new();
    let mut status = text(&n["status"]);
    if n["cordoned"].as_bool() == Some(true) {
        status.push_str(",Cordoned");
    }
    let _ = writeln!(
        out,
        "Name:       {} (id {})",
        text(&n["name"]),
        text(&n["id"])
    );
    let _ = writeln!(out, "Address:    {}", text(&n["address"]));
    let _ = writeln!(out, "Role:       {}", text(&n["role"]));
    let _ = writeln!(out, "Status:     {status} since {}", text(&n["since"]));
    let _ = writeln!(out, "Reason:     {}", text(&n["status_reason"]));
    let _ = writeln!(out, "Labels:     {}", labels(&n["labels"]));
    let _ = writeln!(
        out,
        "Capacity:   cpu {}, memory {}",
        text(&n["capacity"]["cpu"]),
        text(&n["capacity"]["memory"])
    );
    let _ = writeln!(
        out,
        "Allocated:  cpu {}, memory {}",
        text(&a["cpu"]),
        text(&a["memory"])
    );
    out.push_str("Instances:\n");
    for line in instances_table(&value["instances"], false).lines() {
        let _ = writeln!(out, "  {line}");
    }
    let waiting = items(&value["drain"]["waiting"]);
    if !waiting.is_empty() {
        out.push_str("Drain waits for:\n");
        for w in waiting {
            let _ = writeln!(out, "  {}  {}", text(&w["instance"]), text(&w["reason"]));
        }
    }
    out.push_str("Events:\n");
    for e in items(&value["events"]) {
        let _ = writeln!(out, "  {}  {}", text(&e["at"]), text(&e["message"]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align() {
        let out = table(
            &["A", "BB"],
            &[
                vec!["long-cell".into(), "x".into()],
                vec!["s".into(), "y".into()],
            ],
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "A          BB");
        assert_eq!(lines[1], "long-cell  x");
        assert_eq!(lines[2], "s          y");
    }

    #[test]
    fn wide_tables_add_columns_and_other_views_stay_tables() {
        let nodes = serde_json::json!([{
            "name": "gw-a", "id": 1, "address": "10.0.0.1:7400", "role": "voter",
            "status": "Ready", "cordoned": true, "labels": {"zigbee": "true"},
            "capacity": {"cpu": "2", "memory": "1Gi"},
            "allocated": {"cpu": "500m", "memory": "256Mi"}, "instances": 3,
            "since": "2026-11-30T10:00:00Z", "devices": ["/dev/ttyUSB0"]
        }]);
        let out = render(View::Nodes, OutputFormat::Wide, &nodes).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("NAME  ID  ADDRESS"), "{out}");
        assert!(lines[0].contains("INSTANCES"), "{out}");
        for cell in [
            "Ready,Cordoned",
            "500m/2",
            "256Mi/1Gi",
            "/dev/ttyUSB0",
            "zigbee=true",
        ] {
            assert!(lines[1].contains(cell), "{cell}: {out}");
        }
        let status = serde_json::json!({"cluster": "c", "nodes": [], "workloads": []});
        assert_eq!(
            render(View::Status, OutputFormat::Wide, &status).unwrap(),
            render(View::Status, OutputFormat::Table, &status).unwrap()
        );
    }
}
