//! The gateway's pages, rendered on the server from the same JSON documents
//! the Admin API returns (`api::views`), so the page and `gantry ... -o
//! json` never disagree. Each page is a frame (`page`) around a `main`
//! fragment; `live` re-renders the fragment and sends it over server-sent
//! events, and 15 lines of script swap it in. Without script, the page
//! refreshes itself every 5 s.

use maud::{html, Markup, PreEscaped, DOCTYPE};
use serde_json::Value;

use crate::cluster::Cluster;

/// Which page, by path (also the SSE stream's path under `/live`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Page {
    Overview,
    Workload(String),
    Gateway(String),
}

impl Page {
    pub fn path(&self) -> String {
        match self {
            Page::Overview => "/".into(),
            Page::Workload(name) => format!("/workloads/{name}"),
            Page::Gateway(name) => format!("/gateways/{name}"),
        }
    }

    fn title(&self) -> String {
        match self {
            Page::Overview => "cluster".into(),
            Page::Workload(name) => format!("workload {name}"),
            Page::Gateway(name) => format!("gateway {name}"),
        }
    }
}

const STYLE: &str = "
body{font-family:system-ui,sans-serif;margin:0;color:#1d2430;background:#f6f7f9}
header{background:#1d2430;color:#fff;padding:.6rem 1rem;display:flex;gap:1rem;flex-wrap:wrap;align-items:baseline}
header a{color:#fff;text-decoration:none;font-weight:600}
main{padding:.5rem 1rem 2rem}
h2{font-size:1.05rem;margin:1.2rem 0 .4rem}
.scroll{overflow-x:auto}
table{border-collapse:collapse;width:100%;background:#fff;font-size:.9rem}
th,td{text-align:left;padding:.3rem .5rem;border-bottom:1px solid #e3e6ea;white-space:nowrap}
td.wrap{white-space:normal;min-width:16rem}
.Ready,.Running{color:#146c2e;font-weight:600}
.NotReady,.Failed{color:#b3261e;font-weight:600}
.Draining,.Pending,.Pulling,.Starting,.Exited{color:#8a5a00;font-weight:600}
.facts{display:flex;gap:1.2rem;flex-wrap:wrap;font-size:.9rem}
.muted{color:#5f6b7a}
form{margin:2rem 1rem;display:flex;gap:.5rem;flex-wrap:wrap}
input{font-size:1rem;padding:.4rem;min-width:16rem;flex:1}
";

/// Swaps `main` for each fragment the stream sends; reconnects by itself
/// (EventSource does) after a gateway restart.
const SCRIPT: &str = "
const source = new EventSource('/live' + location.pathname.replace(/\\/$/, ''));
source.onmessage = (event) => {
  const main = document.querySelector('main');
  if (main) { main.outerHTML = event.data; }
};
";

/// The whole document around `main`; `scope` names what it is about (the
/// cluster, or the hub).
pub fn page(scope: &str, page: &Page, main: Markup) -> Markup {
    frame(scope, &page.title(), main)
}

/// What every page's `head` holds: the title, a phone-sized viewport and
/// the style sheet.
fn head(title: &str) -> Markup {
    html! {
        meta charset="utf-8";
        meta name="viewport" content="width=device-width, initial-scale=1";
        title { "gantry · " (title) }
        style { (PreEscaped(STYLE)) }
    }
}

pub fn frame(scope: &str, title: &str, main: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                (head(title))
                noscript { meta http-equiv="refresh" content="5"; }
            }
            body {
                header {
                    a href="/" { "gantry" }
                    span.muted { (scope) }
                    a href="/logout" style="margin-left:auto;font-weight:400" { "sign out" }
                }
                (main)
                script { (PreEscaped(SCRIPT)) }
            }
        }
    }
}

pub(super) fn text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub(super) fn state_cell(id: Option<String>, state: &Value) -> Markup {
    let s = text(state);
    html! { td id=[id] class=(s) { (s) } }
}

/// The overview: the cluster, its gateways, workloads, instances, the cloud
/// link and the latest events.
pub fn overview(cluster: &Cluster, link: &crate::cloud::link::LinkHandle) -> Markup {
    let status = crate::api::views::status(cluster);
    let instances = crate::api::views::instances(cluster);
    let cloud = crate::cloud::link::status_view(cluster, link);
    let events = {
        let applied = cluster.state().read();
        crate::api::views::events(&applied.state, None)
    };
    let allocated = allocation(cluster);
    let nodes = status["nodes"].as_array().cloned().unwrap_or_default();
    let workloads = status["workloads"].as_array().cloned().unwrap_or_default();
    let instances = instances.as_array().cloned().unwrap_or_default();
    let events = newest(&events, 20);
    html! {
        main {
            div.facts {
                span { "leader " b #leader { (text(&status["leader"])) } }
                span { "term " b { (text(&status["term"])) } }
                span { "answered by " b { (text(&status["gateway"])) } }
                span { "replica " b { (if status["current"] == true { "current" } else { "may be stale" }) } }
                span { "applied index " b { (text(&status["applied_index"])) } }
            }
            h2 { "Gateways" }
            div.scroll { table #gateways {
                tr { th { "name" } th { "status" } th { "role" } th { "cpu" } th { "memory" } th { "address" } th { "since" } }
                @for n in &nodes {
                    @let name = text(&n["name"]);
                    @let (cpu, memory) = allocated.get(&name).cloned().unwrap_or_else(|| ("0".into(), "0".into()));
                    tr id={ "gw-" (name) } {
                        td { a href={ "/gateways/" (name) } { (name) } }
                        (state_cell(Some(format!("gw-{name}-status")), &n["status"]))
                        td { (text(&n["role"])) @if n["cordoned"] == true { " · cordoned" } }
                        td { (cpu) " / " (text(&n["capacity"]["cpu"])) }
                        td { (memory) " / " (text(&n["capacity"]["memory"])) }
                        td.muted { (text(&n["address"])) }
                        td.muted { (text(&n["since"])) }
                    }
                }
            } }
            h2 { "Workloads" }
            div.scroll { table #workloads {
                tr { th { "name" } th { "running / ready / placed / wanted" } th { "generation" } th { "source" } th { "image" } }
                @for w in &workloads {
                    @let name = text(&w["name"]);
                    tr id={ "wl-" (name) } {
                        td { a href={ "/workloads/" (name) } { (name) } }
                        td { (text(&w["running"])) " / " (text(&w["ready"])) " / " (text(&w["placed"])) " / " (text(&w["replicas"])) }
                        td { (text(&w["generation"])) }
                        td { (text(&w["source"])) }
                        td.muted { (text(&w["image"])) }
                    }
                }
            } }
            h2 { "Instances" }
            (instance_table(&instances))
            h2 { "Cloud link" }
            div.facts {
                @if cloud["attached"] == true {
                    span { "hub " b { (text(&cloud["hub"])) } }
                    span { "site " b { (text(&cloud["site"])) } }
                    span { (if cloud["connected"] == true { "connected" } else { "disconnected" }) }
                    span { "acked revision " b { (text(&cloud["acked_revision"])) } }
                    @if !cloud["last_error"].is_null() { span.muted { (text(&cloud["last_error"])) } }
                } @else {
                    span.muted { "not attached (gantry cloud attach)" }
                }
            }
            h2 { "Events" }
            (event_table(&events))
        }
    }
}

fn instance_table(instances: &[Value]) -> Markup {
    html! {
        div.scroll { table #instances {
            tr { th { "instance" } th { "gateway" } th { "state" } th { "ready" } th { "restarts" } th { "generation" } th { "reason" } }
            @for i in instances {
                @let key = format!("{}/{}", text(&i["workload"]), text(&i["replica"]));
                tr id={ "in-" (key.replace('/', "-")) } {
                    td { (key) }
                    td { @if let Some(node) = i["node"].as_str() { a href={ "/gateways/" (node) } { (node) } } }
                    (state_cell(None, &i["state"]))
                    td { (text(&i["ready"])) }
                    td { (text(&i["restarts"])) }
                    td { (text(&i["generation"])) }
                    td.wrap.muted { (text(&i["reason"])) }
                }
            }
        } }
    }
}

/// The newest `n` events of a list (oldest first in the documents),
/// newest first.
fn newest(events: &Value, n: usize) -> Vec<Value> {
    events
        .as_array()
        .map(|all| all.iter().rev().take(n).cloned().collect())
        .unwrap_or_default()
}

fn event_table(events: &[Value]) -> Markup {
    html! {
        div.scroll { table #events {
            tr { th { "at" } th { "kind" } th { "message" } }
            @for e in events {
                tr { td.muted { (text(&e["at"])) } td { (text(&e["kind"])) } td.wrap { (text(&e["message"])) } }
            }
        } }
    }
}

/// CPU and memory the instances placed on each gateway request, by name.
fn allocation(cluster: &Cluster) -> std::collections::BTreeMap<String, (String, String)> {
    use crate::state::quantity::{format_cpu, format_memory};
    let applied = cluster.state().read();
    let state = &applied.state;
    let mut sums: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
    for i in state.instances.values() {
        let (Some(node), Some(w)) = (
            i.node.and_then(|id| state.nodes.get(&id)),
            state.workloads.get(&i.workload),
        ) else {
            continue;
        };
        let sum = sums.entry(node.name.clone()).or_default();
        sum.0 += w.spec.cpu_millis();
        sum.1 += w.spec.memory_bytes();
    }
    sums.into_iter()
        .map(|(name, (cpu, memory))| (name, (format_cpu(cpu), format_memory(memory))))
        .collect()
}

/// A workload: what it asks for, where its rollout stands, its instances
/// (with the scheduler's reason for any unplaced) and its events.
pub fn workload(cluster: &Cluster, name: &str) -> Option<Markup> {
    let described = crate::api::views::describe_workload(cluster, name)?;
    let rollout = crate::api::views::rollout_status(cluster, name).unwrap_or(Value::Null);
    let w = &described["workload"];
    let instances = described["instances"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let events = newest(&described["events"], 30);
    let spec = serde_yaml_ng::to_string(&w["spec"]).unwrap_or_default();
    Some(html! {
        main {
            h2 { "Workload " (name) }
            div.facts {
                span { "running " b #running { (text(&w["running"])) } " of " (text(&w["replicas"])) }
                span { "ready " b #ready { (text(&w["ready"])) } }
                @if w["autoscale"].is_object() {
                    span { "autoscale " b { (text(&w["autoscale"]["min"])) "-" (text(&w["autoscale"]["max"])) }
                        @if let Some(last) = w["autoscale"]["last_scale"].as_object() {
                            " (last: " (text(&last["from"])) " to " (text(&last["to"])) ", "
                            (last.get("reason").map(text).unwrap_or_default()) ")"
                        }
                    }
                }
                span { "generation " b { (text(&w["generation"])) } }
                span { "source " b { (text(&w["source"])) } }
                span { "rollout " b { (if rollout["complete"] == true { "complete" } else { "in progress" }) }
                    " (" (text(&rollout["updated"])) " updated, " (text(&rollout["running"])) " running)" }
            }
            h2 { "Instances" }
            (instance_table(&instances))
            h2 { "Events" }
            (event_table(&events))
            h2 { "Spec" }
            pre.scroll { (spec) }
        }
    })
}

/// A gateway: status, capacity and what is allocated, its instances, what a
/// drain still waits for, and its events.
pub fn gateway(cluster: &Cluster, name: &str) -> Option<Markup> {
    let described = crate::api::views::describe_node(cluster, name, cluster.now_ms())?;
    let n = &described["node"];
    let instances = described["instances"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let waiting = described["drain"]["waiting"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let events = newest(&described["events"], 30);
    Some(html! {
        main {
            h2 { "Gateway " (name) }
            div.facts {
                span { "status " b #status class=(text(&n["status"])) { (text(&n["status"])) } }
                span { "role " b { (text(&n["role"])) } }
                span { "cpu " b { (text(&described["allocated"]["cpu"])) " / " (text(&n["capacity"]["cpu"])) } }
                span { "memory " b { (text(&described["allocated"]["memory"])) " / " (text(&n["capacity"]["memory"])) } }
                span { "address " b { (text(&n["address"])) } }
                @if n["cordoned"] == true { span { b { "cordoned" } } }
                @if !n["status_reason"].is_null() { span.muted { (text(&n["status_reason"])) } }
            }
            h2 { "Instances" }
            (instance_table(&instances))
            @if !waiting.is_empty() {
                h2 { "Drain waits for" }
                ul { @for w in &waiting { li { (text(&w["instance"])) ": " (text(&w["reason"])) } } }
            }
            h2 { "Events" }
            (event_table(&events))
        }
    })
}

/// The sign-in form: a token (`what` says which), kept in an HTTP-only
/// cookie.
pub fn login(what: &str, error: Option<&str>) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                (head("sign in"))
            }
            body {
                header { a href="/" { "gantry" } }
                form method="post" action="/login" {
                    input type="password" name="token" placeholder=(what) autocomplete="off";
                    button type="submit" { "Sign in" }
                }
                @if let Some(error) = error { p.muted style="margin:0 1rem" { (error) } }
            }
        }
    }
}
