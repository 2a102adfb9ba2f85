//! The hub's pages: every site (link up or not, last seen, acknowledged
//! against desired revision, gateways, instances, refusals, link bytes) and
//! a site's detail, rendered from `gantry hub status`'s JSON and followed
//! live like the gateway's. Signed in with the hub admin token.

use std::sync::Arc;

use axum::extract::{Path, RawQuery};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use maud::{html, Markup};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::pages::{frame, state_cell, text};
use crate::cloud::hub::Sites;
use crate::metrics::Render;

const ADMIN: &str = "hub admin token (HUB_DATA_DIR/admin-token)";
/// The hub has no log to follow: its pages re-render on this tick and are
/// sent only when they changed.
const TICK: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Clone)]
struct Hub {
    sites: Arc<Sites>,
    stop: CancellationToken,
}

/// The hub's routes: pages, their live streams, sign-in, and the part every
/// server has (`/metrics`, `/healthz`).
pub fn routes(
    sites: Arc<Sites>,
    exporter: Arc<dyn Render>,
    stop: CancellationToken,
) -> axum::Router {
    let hub = Hub { sites, stop };
    let (h1, h2, h3, h4, h5, h6) = (
        hub.clone(),
        hub.clone(),
        hub.clone(),
        hub.clone(),
        hub.clone(),
        hub.clone(),
    );
    let router = super::hub_routes(exporter)
        .route("/", get(move || show(h1.clone(), None)))
        .route(
            "/sites/{name}",
            get(move |Path(name): Path<String>| show(h2.clone(), Some(name))),
        )
        .route("/live", get(move || live(h3.clone(), None)))
        .route(
            "/live/sites/{name}",
            get(move |Path(name): Path<String>| live(h4.clone(), Some(name))),
        )
        .route(
            "/login",
            get(move |RawQuery(query): RawQuery| {
                login(
                    h5.clone(),
                    super::form_value(&query.unwrap_or_default(), "token"),
                )
            })
            .post(move |body: String| {
                login(
                    h6.clone(),
                    Some(super::form_value(&body, "token").unwrap_or_default()),
                )
            }),
        )
        .route("/logout", get(super::logout));
    super::with_page_headers(router)
}

async fn login(hub: Hub, token: Option<String>) -> Response {
    super::sign_in(token, ADMIN, |t| {
        if hub.sites.check_admin_token(t) {
            Ok(())
        } else {
            Err("unknown hub admin token")
        }
    })
}

fn site_of(status: &Value, name: &str) -> Option<Value> {
    status["sites"]
        .as_array()?
        .iter()
        .find(|s| s["site"] == name)
        .cloned()
}

/// The `main` fragment: every site, or one.
fn render(sites: &Sites, site: Option<&str>) -> Option<Markup> {
    let status = sites.status();
    match site {
        None => Some(overview(&status)),
        Some(name) => site_of(&status, name).map(|s| detail(&s)),
    }
}

async fn show(hub: Hub, site: Option<String>) -> Response {
    let title = match &site {
        Some(name) => format!("site {name}"),
        None => "sites".into(),
    };
    match render(&hub.sites, site.as_deref()) {
        Some(main) => frame("hub", &title, main).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            frame(
                "hub",
                &title,
                html! { main { h2 { "Not found" } p { "No site is called that." } } },
            ),
        )
            .into_response(),
    }
}

struct HubPage {
    sites: Arc<Sites>,
    site: Option<String>,
}

impl super::live::Source for HubPage {
    fn render(&self) -> String {
        match render(&self.sites, self.site.as_deref()) {
            Some(main) => main.into_string(),
            None => "<main><h2>Gone</h2><p>No site is called that any more.</p></main>".into(),
        }
    }

    async fn changed(&mut self) -> bool {
        tokio::time::sleep(TICK).await;
        true
    }
}

async fn live(hub: Hub, site: Option<String>) -> impl IntoResponse {
    super::live::follow(
        HubPage {
            sites: hub.sites,
            site,
        },
        hub.stop,
    )
}

fn count(list: &Value, field: &str, wanted: &str) -> (usize, usize) {
    let all = list.as_array().map(|a| a.as_slice()).unwrap_or_default();
    (all.iter().filter(|v| v[field] == wanted).count(), all.len())
}

fn overview(status: &Value) -> Markup {
    let sites = status["sites"].as_array().cloned().unwrap_or_default();
    html! {
        main {
            h2 { "Sites" }
            div.scroll { table #sites {
                tr { th { "site" } th { "link" } th { "last seen" } th { "acked / desired" } th { "gateways ready" } th { "instances running" } th { "refused" } th { "bytes in / out" } }
                @for s in &sites {
                    @let name = text(&s["site"]);
                    @let (ready, gateways) = count(&s["nodes"], "status", "Ready");
                    @let (running, instances) = count(&s["instances"], "state", "Running");
                    @let link = if s["connected"] == true { "connected" } else { "disconnected" };
                    tr id={ "site-" (name) } {
                        td { a href={ "/sites/" (name) } { (name) } }
                        td id={ "site-" (name) "-link" } class=(if s["connected"] == true { "Ready" } else { "NotReady" }) { (link) }
                        td.muted { (text(&s["last_seen"])) }
                        td { (text(&s["acked_revision"])) " / " (text(&s["desired_revision"])) }
                        td { (ready) " / " (gateways) }
                        td { (running) " / " (instances) }
                        td { (s["refused"].as_array().map(|r| r.len()).unwrap_or(0)) }
                        td.muted { (text(&s["link_bytes"]["in"])) " / " (text(&s["link_bytes"]["out"])) }
                    }
                }
            } }
        }
    }
}

fn detail(s: &Value) -> Markup {
    let name = text(&s["site"]);
    let nodes = s["nodes"].as_array().cloned().unwrap_or_default();
    let workloads = s["workloads"].as_array().cloned().unwrap_or_default();
    let instances = s["instances"].as_array().cloned().unwrap_or_default();
    let refused = s["refused"].as_array().cloned().unwrap_or_default();
    html! {
        main {
            h2 { "Site " (name) }
            div.facts {
                span { "link " b #link { (if s["connected"] == true { "connected" } else { "disconnected" }) } }
                span { "acked " b { (text(&s["acked_revision"])) } " of " b { (text(&s["desired_revision"])) } }
                span { "last seen " b { (text(&s["last_seen"])) } }
                @if !s["rejected"].is_null() {
                    span.NotReady { "revision " (text(&s["rejected"]["revision"])) " rejected: " (text(&s["rejected"]["error"])) }
                }
            }
            h2 { "Gateways" }
            div.scroll { table #gateways {
                tr { th { "name" } th { "status" } }
                @for n in &nodes {
                    tr { td { (text(&n["name"])) } (state_cell(None, &n["status"])) }
                }
            } }
            h2 { "Workloads" }
            div.scroll { table {
                tr { th { "name" } th { "source" } th { "generation" } }
                @for w in &workloads {
                    tr { td { (text(&w["name"])) } td { (text(&w["source"])) } td { (text(&w["generation"])) } }
                }
            } }
            h2 { "Instances" }
            div.scroll { table {
                tr { th { "instance" } th { "gateway" } th { "state" } th { "ready" } th { "generation" } }
                @for i in &instances {
                    tr {
                        td { (text(&i["workload"])) "/" (text(&i["replica"])) }
                        td { (text(&i["node"])) }
                        (state_cell(None, &i["state"]))
                        td { (text(&i["ready"])) }
                        td { (text(&i["generation"])) }
                    }
                }
            } }
            @if !refused.is_empty() {
                h2 { "Refused" }
                ul { @for r in &refused { li { (text(&r["name"])) ": " (text(&r["reason"])) } } }
            }
        }
    }
}
