//! The JSON documents of the MQTT link. `desired` is what a cloud writes
//! (by hand with `mosquitto_pub` if it likes), so it is small and strict:
//! unknown fields are refused rather than ignored. What the site writes on
//! `reported` mirrors the gRPC link's messages field for field, so a hub
//! can feed both into the same view.

use gantry_proto::hub::v1::{Desired, Report, WorkloadDoc};
use serde::Deserialize;
use serde_json::{json, Value};

/// The document under `{prefix}desired`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DesiredDoc {
    /// Chosen by the publisher, at random, once; a new epoch says "forget
    /// my old revisions" (a restored or recreated cloud store).
    epoch: u64,
    /// Grows with every change within an epoch.
    revision: u64,
    /// Every cloud workload the site should run (absent ones are removed).
    #[serde(default)]
    workloads: Vec<Value>,
}

/// A `desired` message that cannot be taken, with what could be read of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    pub epoch: u64,
    pub revision: u64,
    pub error: String,
}

/// A `desired` payload as the delivery the gRPC link would have carried: a
/// full snapshot. The workloads' specs are checked later, by the same
/// code as the gRPC link's.
pub fn desired_from_json(payload: &[u8]) -> Result<Desired, Unreadable> {
    let loose: Value = serde_json::from_slice(payload).map_err(|e| Unreadable {
        epoch: 0,
        revision: 0,
        error: format!("desired is not JSON: {e}"),
    })?;
    let number = |field: &str| loose.get(field).and_then(Value::as_u64).unwrap_or(0);
    let (epoch, revision) = (number("epoch"), number("revision"));
    let unreadable = |error: String| Unreadable {
        epoch,
        revision,
        error,
    };
    // serde would read a struct from an array too ([epoch, revision]).
    if !loose.is_object() {
        return Err(unreadable(
            "desired must be a JSON object {\"epoch\", \"revision\", \"workloads\"}".into(),
        ));
    }
    // Said here rather than left to serde: the message names the field.
    if let Some(unknown) = loose.as_object().and_then(|o| {
        o.keys()
            .find(|k| !["epoch", "revision", "workloads"].contains(&k.as_str()))
    }) {
        return Err(unreadable(format!(
            "desired: unknown field `{unknown}` (expected epoch, revision, workloads)"
        )));
    }
    let doc: DesiredDoc =
        serde_json::from_value(loose.clone()).map_err(|e| unreadable(format!("desired: {e}")))?;
    if doc.epoch == 0 {
        return Err(unreadable(
            "desired: `epoch` must be above 0 (pick a random number once)".into(),
        ));
    }
    if doc.revision == 0 {
        return Err(unreadable("desired: `revision` must be above 0".into()));
    }
    let mut upserts = Vec::with_capacity(doc.workloads.len());
    for (index, workload) in doc.workloads.iter().enumerate() {
        let name = workload
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| unreadable(format!("desired: workloads[{index}] has no `name`")))?;
        upserts.push(WorkloadDoc {
            name: name.to_string(),
            spec_json: workload.to_string(),
        });
    }
    Ok(Desired {
        revision: doc.revision,
        full: true,
        upserts,
        deletes: Vec::new(),
        epoch: doc.epoch,
    })
}

/// A status report: `full` (the whole truth, published retained) or
/// `changes` since the previous one.
pub fn report(report: &Report, acked_revision: u64, epoch: u64) -> Value {
    json!({
        "type": if report.full { "full" } else { "changes" },
        "acked_revision": acked_revision,
        "epoch": epoch,
        "nodes": report.nodes.iter().map(|n| json!({"name": n.name, "status": n.status})).collect::<Vec<_>>(),
        "removed_nodes": report.removed_nodes,
        "workloads": report.workloads.iter().map(|w| json!({"name": w.name, "source": w.source, "generation": w.generation})).collect::<Vec<_>>(),
        "removed_workloads": report.removed_workloads,
        "instances": report.instances.iter().map(|i| json!({
            "workload": i.workload,
            "replica": i.replica,
            "node": i.node,
            "state": i.state,
            "generation": i.generation,
            "ready": i.ready,
        })).collect::<Vec<_>>(),
        "removed_instances": report.removed_instances,
        "refused": report.refused.iter().map(|r| json!({"name": r.name, "reason": r.reason})).collect::<Vec<_>>(),
        "removed_refused": report.removed_refused,
    })
}

/// What a site said on `reported`, for a hub to act on.
#[derive(Debug, Clone, PartialEq)]
pub enum Reported {
    /// A status report (`full` or `changes`), with the site's acknowledged
    /// revision and epoch as of sending it.
    Report {
        report: Report,
        acked_revision: u64,
        epoch: u64,
    },
    Ack {
        revision: u64,
        epoch: u64,
    },
    Reject {
        revision: u64,
        epoch: u64,
        error: String,
    },
    Digest(u64),
}

/// Reads a `reported` document; `None` for anything malformed (a hub
/// ignores it, and a digest that then differs asks for the whole truth).
pub fn reported_from_json(payload: &[u8]) -> Option<Reported> {
    use gantry_proto::hub::v1::{InstanceStatus, NodeStatus, Refusal, WorkloadStatus};
    let doc: Value = serde_json::from_slice(payload).ok()?;
    let number = |v: &Value, field: &str| v.get(field).and_then(Value::as_u64).unwrap_or(0);
    let text = |v: &Value, field: &str| {
        v.get(field)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let list = |field: &str| {
        doc.get(field)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let names = |field: &str| -> Vec<String> {
        list(field)
            .iter()
            .filter_map(|v| v.as_str().map(String::from))
            .collect()
    };
    match doc.get("type")?.as_str()? {
        kind @ ("full" | "changes") => Some(Reported::Report {
            report: Report {
                full: kind == "full",
                nodes: list("nodes")
                    .iter()
                    .map(|n| NodeStatus {
                        name: text(n, "name"),
                        status: text(n, "status"),
                    })
                    .collect(),
                removed_nodes: names("removed_nodes"),
                instances: list("instances")
                    .iter()
                    .map(|i| InstanceStatus {
                        workload: text(i, "workload"),
                        replica: u32::try_from(number(i, "replica")).unwrap_or(u32::MAX),
                        node: text(i, "node"),
                        state: text(i, "state"),
                        generation: number(i, "generation"),
                        ready: i.get("ready").and_then(Value::as_bool).unwrap_or(false),
                    })
                    .collect(),
                removed_instances: names("removed_instances"),
                workloads: list("workloads")
                    .iter()
                    .map(|w| WorkloadStatus {
                        name: text(w, "name"),
                        source: text(w, "source"),
                        generation: number(w, "generation"),
                    })
                    .collect(),
                removed_workloads: names("removed_workloads"),
                refused: list("refused")
                    .iter()
                    .map(|r| Refusal {
                        name: text(r, "name"),
                        reason: text(r, "reason"),
                    })
                    .collect(),
                removed_refused: names("removed_refused"),
            },
            acked_revision: number(&doc, "acked_revision"),
            epoch: number(&doc, "epoch"),
        }),
        "ack" => Some(Reported::Ack {
            revision: number(&doc, "revision"),
            epoch: number(&doc, "epoch"),
        }),
        "reject" => Some(Reported::Reject {
            revision: number(&doc, "revision"),
            epoch: number(&doc, "epoch"),
            error: text(&doc, "error"),
        }),
        "digest" => u64::from_str_radix(doc.get("hash")?.as_str()?, 16)
            .ok()
            .map(Reported::Digest),
        _ => None,
    }
}

/// The document a hub publishes under `desired`: the site's whole desired
/// state (`specs` are the workloads' specs as JSON text).
pub fn desired_doc(epoch: u64, revision: u64, specs: &[String]) -> Value {
    let workloads: Vec<Value> = specs
        .iter()
        .filter_map(|spec| serde_json::from_str(spec).ok())
        .collect();
    json!({"epoch": epoch, "revision": revision, "workloads": workloads})
}

/// The revision is committed through the site's Raft.
pub fn ack(revision: u64, epoch: u64) -> Value {
    json!({"type": "ack", "revision": revision, "epoch": epoch})
}

/// The revision was refused as a whole; the site is unchanged.
pub fn reject(revision: u64, epoch: u64, error: &str) -> Value {
    json!({"type": "reject", "revision": revision, "epoch": epoch, "error": error})
}

/// The hash of everything reported so far (`SiteView::digest`), in hex.
pub fn digest(hash: u64) -> Value {
    json!({"type": "digest", "hash": format!("{hash:016x}")})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_desired_document_becomes_a_full_snapshot() {
        let desired = desired_from_json(
            br#"{"epoch": 7, "revision": 3, "workloads": [{"name": "web", "image": "i", "replicas": 2}]}"#,
        )
        .unwrap();
        assert!(desired.full);
        assert_eq!((desired.epoch, desired.revision), (7, 3));
        assert_eq!(desired.upserts.len(), 1);
        assert_eq!(desired.upserts[0].name, "web");
        let spec: Value = serde_json::from_str(&desired.upserts[0].spec_json).unwrap();
        assert_eq!(spec["replicas"], 2);
        let empty = desired_from_json(br#"{"epoch": 7, "revision": 4}"#).unwrap();
        assert!(empty.upserts.is_empty(), "no workloads: remove them all");
    }

    #[test]
    fn unreadable_documents_say_why_and_keep_what_could_be_read() {
        let cases: &[(&[u8], &str, u64)] = &[
            (b"{not json", "not JSON", 0),
            (
                br#"{"epoch": 1, "revision": 2, "extra": 1}"#,
                "unknown field `extra`",
                2,
            ),
            (
                br#"{"epoch": 0, "revision": 2}"#,
                "`epoch` must be above 0",
                2,
            ),
            (
                br#"{"epoch": 1, "revision": 0}"#,
                "`revision` must be above 0",
                0,
            ),
            (
                br#"{"epoch": 1, "revision": 5, "workloads": [{"image": "i"}]}"#,
                "workloads[0] has no `name`",
                5,
            ),
            (br#"{"epoch": "x", "revision": 5}"#, "invalid type", 5),
            (br#"[1, 2]"#, "desired", 0),
        ];
        for (payload, fragment, revision) in cases {
            let error = desired_from_json(payload).unwrap_err();
            assert!(error.error.contains(fragment), "{error:?} lacks {fragment}");
            assert_eq!(error.revision, *revision, "{error:?}");
        }
    }

    #[test]
    fn reports_carry_every_field_of_the_grpc_message() {
        use gantry_proto::hub::v1::{InstanceStatus, NodeStatus};
        let r = Report {
            full: true,
            nodes: vec![NodeStatus {
                name: "gw-a".into(),
                status: "Ready".into(),
            }],
            instances: vec![InstanceStatus {
                workload: "web".into(),
                replica: 0,
                node: "gw-a".into(),
                state: "Running".into(),
                generation: 1,
                ready: true,
            }],
            ..Report::default()
        };
        let doc = report(&r, 4, 9);
        assert_eq!(doc["type"], "full");
        assert_eq!(doc["acked_revision"], 4);
        assert_eq!(doc["nodes"][0]["status"], "Ready");
        assert_eq!(doc["instances"][0]["ready"], true);
        assert_eq!(digest(255)["hash"], "00000000000000ff");
        // What the site writes, a hub reads back as the same messages.
        let back = reported_from_json(doc.to_string().as_bytes()).unwrap();
        assert_eq!(
            back,
            Reported::Report {
                report: r,
                acked_revision: 4,
                epoch: 9
            }
        );
        let round = |v: Value| reported_from_json(v.to_string().as_bytes());
        assert_eq!(
            round(ack(3, 9)),
            Some(Reported::Ack {
                revision: 3,
                epoch: 9
            })
        );
        assert_eq!(round(digest(255)), Some(Reported::Digest(255)));
        assert_eq!(
            round(reject(3, 9, "no")),
            Some(Reported::Reject {
                revision: 3,
                epoch: 9,
                error: "no".into()
            })
        );
        assert_eq!(reported_from_json(b"garbage"), None);
        assert_eq!(round(json!({"type": "surprise"})), None);
        assert_eq!(round(json!({"type": "digest", "hash": "xyz"})), None);
    }

    #[test]
    fn a_hub_desired_document_reads_back_as_the_same_snapshot() {
        let specs = vec![r#"{"name":"web","image":"i"}"#.to_string()];
        let doc = desired_doc(5, 2, &specs);
        let desired = desired_from_json(doc.to_string().as_bytes()).unwrap();
        assert_eq!((desired.epoch, desired.revision), (5, 2));
        assert_eq!(desired.upserts[0].name, "web");
    }
}
