//! `gantry image pull IMAGE [--all]`: follows the gateways' progress
//! documents, a bar per gateway on a terminal, one line per gateway as it
//! starts and ends otherwise; `-o json|yaml` prints only the outcome.

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;

use anyhow::{Context, Result};
use gantry_proto::v1::PullImageRequest;
use indicatif::HumanBytes;
use serde_json::{json, Value};

use super::args::OutputFormat;
use super::client::{status_error, Admin};
use super::output;
use super::progress::GatewayBars;

/// The line a person reads when a gateway's pull ends.
fn verdict(doc: &Value) -> String {
    let gateway = output::text(&doc["gateway"]);
    if doc["phase"] == "done" {
        let downloaded = doc["downloaded_bytes"].as_u64().unwrap_or(0);
        let how = if doc["source"] == "registry" {
            format!("{} downloaded", HumanBytes(downloaded))
        } else {
            format!(
                "{} from {}",
                HumanBytes(downloaded),
                output::text(&doc["source"])
            )
        };
        format!(
            "{gateway}: pulled {} {} ({how})",
            output::text(&doc["image"]),
            output::text(&doc["digest"])
        )
    } else {
        format!("{gateway}: failed: {}", output::text(&doc["error"]))
    }
}

pub async fn run(
    client: &mut Admin,
    image: String,
    all: bool,
    format: OutputFormat,
) -> Result<ExitCode> {
    let mut stream = client
        .pull_image(PullImageRequest {
            image: image.clone(),
            all,
            cluster_id: String::new(),
            from_node: 0,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let table = format.is_table();
    let mut bars = GatewayBars::new(format);
    let mut outcome: BTreeMap<String, Value> = BTreeMap::new();
    let mut started: BTreeSet<String> = BTreeSet::new();
    while let Some(doc) = stream.message().await.map_err(status_error)? {
        let doc: Value =
            serde_json::from_str(&doc.json).context("the gateway sent malformed JSON")?;
        let gateway = output::text(&doc["gateway"]);
        match doc["phase"].as_str() {
            Some("pulling") => {
                if table && started.insert(gateway.clone()) {
                    bars.say(&format!(
                        "{gateway}: pulling {} from {}",
                        output::text(&doc["image"]),
                        output::text(&doc["source"])
                    ));
                }
                let bytes = doc["bytes"].as_u64().unwrap_or(0);
                bars.update(&gateway, &gateway, bytes, doc["total"].as_u64());
            }
            Some("done" | "failed") => {
                if table {
                    bars.finish(&gateway, &verdict(&doc));
                }
                outcome.insert(gateway, doc);
            }
            _ => {}
        }
    }
    drop(bars);
    // No verdict at all (a stream cut short) is a failure too.
    let failed = outcome.is_empty() || outcome.values().any(|d| d["phase"] != "done");
    if !table {
        let gateways: Vec<Value> = outcome
            .into_values()
            .map(|d| {
                json!({
                    "gateway": d["gateway"], "source": d["source"],
                    "digest": d["digest"], "downloaded_bytes": d["downloaded_bytes"],
                    "error": d["error"],
                })
            })
            .collect();
        let value = json!({ "image": image, "gateways": gateways });
        print!("{}", output::render(output::View::Pulled, format, &value)?);
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
