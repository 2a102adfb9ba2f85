//! Plain HTTP/1.1 (and HTTP/2) routes on the gateway's gRPC port, behind
//! the same TLS and the same policy layer (`api::auth`): the web pages
//! (`pages`, live over server-sent events, `live`), `/metrics` for
//! Prometheus (a viewer token as bearer), `/healthz` and `/readyz` for
//! supervisors and load balancers (no credential; they say nothing about
//! the cluster but "up" and "ready"). One port, one firewall rule, like
//! K3s and Nomad. The hub serves `/metrics` (a hub admin token) and
//! `/healthz` the same way.
//!
//! People sign in with a viewer or admin token: `/login` (a form, or
//! `/login?token=T` from a link) checks it and keeps it in a secure,
//! HTTP-only cookie that the policy layer reads like a bearer token.

pub mod hub_pages;
pub mod live;
pub mod pages;

use std::sync::Arc;

use axum::extract::{Path, RawQuery};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::cloud::link::LinkHandle;
use crate::cluster::Cluster;
use crate::metrics::Render;
use pages::Page;

/// The cookie a signed-in browser carries its token in.
pub const TOKEN_COOKIE: &str = "gantry_token";

/// What the gateway's routes need.
#[derive(Clone)]
pub struct Site {
    pub cluster: Cluster,
    pub link: LinkHandle,
    pub exporter: Arc<dyn Render>,
    /// Ends the live streams when the gateway stops (they never end by
    /// themselves, and the server waits for open requests).
    pub shutdown: CancellationToken,
}

/// A gateway's routes, to merge with its gRPC services into one router.
pub fn gateway_routes(site: Site) -> axum::Router {
    let s = site.clone();
    let ready = site.cluster.clone();
    let router = hub_routes(site.exporter.clone())
        .route("/readyz", get(move || readiness(ready.clone())))
        .route(
            "/",
            get({
                let s = s.clone();
                move || show(s.clone(), Page::Overview)
            }),
        )
        .route(
            "/workloads/{name}",
            get({
                let s = s.clone();
                move |Path(name): Path<String>| show(s.clone(), Page::Workload(name))
            }),
        )
        .route(
            "/gateways/{name}",
            get({
                let s = s.clone();
                move |Path(name): Path<String>| show(s.clone(), Page::Gateway(name))
            }),
        )
        .route(
            "/live",
            get({
                let s = s.clone();
                move || live::stream(s.clone(), Page::Overview)
            }),
        )
        .route(
            "/live/workloads/{name}",
            get({
                let s = s.clone();
                move |Path(name): Path<String>| live::stream(s.clone(), Page::Workload(name))
            }),
        )
        .route(
            "/live/gateways/{name}",
            get({
                let s = s.clone();
                move |Path(name): Path<String>| live::stream(s.clone(), Page::Gateway(name))
            }),
        );
    let login_cluster = site.cluster.clone();
    let form_cluster = site.cluster.clone();
    with_page_headers(
        router
            .route(
                "/login",
                get(move |RawQuery(query): RawQuery| {
                    login_link(login_cluster.clone(), query.unwrap_or_default())
                })
                .post(move |body: String| login_form(form_cluster.clone(), body)),
            )
            .route("/logout", get(logout)),
    )
}

/// Headers every plain answer carries: never framed by another site, never
/// cached (they show the cluster), no referrer (a sign-in link holds a
/// token), no content sniffing.
pub fn with_page_headers(router: axum::Router) -> axum::Router {
    router.layer(axum::middleware::map_response(page_headers))
}

async fn page_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::X_FRAME_OPTIONS,
        header::HeaderValue::from_static("DENY"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        header::HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    response
}

/// The hub's routes (and the part every server has).
pub fn hub_routes(exporter: Arc<dyn Render>) -> axum::Router {
    axum::Router::new()
        .route("/metrics", get(move || metrics(exporter.clone())))
        .route("/healthz", get(|| async { (StatusCode::OK, "ok\n") }))
}

/// The `main` fragment of `page`, None when what it shows is gone.
pub fn render_main(site: &Site, page: &Page) -> Option<maud::Markup> {
    match page {
        Page::Overview => Some(pages::overview(&site.cluster, &site.link)),
        Page::Workload(name) => pages::workload(&site.cluster, name),
        Page::Gateway(name) => pages::gateway(&site.cluster, name),
    }
}

async fn show(site: Site, page: Page) -> Response {
    let cluster_id = format!("cluster {}", site.cluster.cluster_id());
    match render_main(&site, &page) {
        Some(main) => pages::page(&cluster_id, &page, main).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            pages::page(
                &cluster_id,
                &page,
                maud::html! { main { h2 { "Not found" } p { "Nothing is called that (any more)." } } },
            ),
        )
            .into_response(),
    }
}

async fn metrics(exporter: Arc<dyn Render>) -> Response {
    match exporter.render() {
        Ok(body) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
            body,
        )
            .into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot render metrics");
            (StatusCode::INTERNAL_SERVER_ERROR, "cannot render metrics\n").into_response()
        }
    }
}

/// Ready when Raft runs, a leader is known and this replica is current (it
/// leads with a quorum, or heard from the leader recently): a gateway that
/// answers reads from a stale replica is not ready.
async fn readiness(cluster: Cluster) -> (StatusCode, String) {
    let raft = cluster.metrics();
    if let Err(fatal) = &raft.running_state {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("raft stopped: {fatal}\n"),
        );
    }
    if raft.current_leader.is_none() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "no leader known (the cluster may have lost its quorum)\n".into(),
        );
    }
    let (current, _) = cluster.believes_current();
    if !current {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "out of touch with the leader: this replica may be stale\n".into(),
        );
    }
    (StatusCode::OK, "ready\n".into())
}

/// The value of `key` in a form or query string (`a=1&b=2`).
pub fn form_value(text: &str, key: &str) -> Option<String> {
    text.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then(|| percent_decode(v))
    })
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A token checked against this replica, or why not.
fn check(cluster: &Cluster, token: &str) -> Result<(), &'static str> {
    let applied = cluster.state().read();
    crate::trust::tokens::check_admin(&applied.state, token, crate::cluster::node::now_ms())
        .map(|_| ())
}

fn signed_in(token: &str) -> Response {
    let cookie = format!(
        "{TOKEN_COOKIE}={}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=2592000",
        token.trim()
    );
    let mut headers = HeaderMap::new();
    if let Ok(value) = cookie.parse() {
        headers.insert(header::SET_COOKIE, value);
    }
    headers.insert(header::LOCATION, header::HeaderValue::from_static("/"));
    (StatusCode::SEE_OTHER, headers).into_response()
}

/// `GET /login?token=T` signs in from a link, `GET /login` shows the form
/// (`token` None), `POST /login` signs in from it: the token is checked by
/// `check` (the gateway's replica, or the hub's admin tokens) and kept in
/// the cookie, or the form comes back with the reason.
pub(crate) fn sign_in(
    token: Option<String>,
    what: &str,
    check: impl Fn(&str) -> Result<(), &'static str>,
) -> Response {
    let Some(token) = token else {
        return pages::login(what, None).into_response();
    };
    match check(token.trim()) {
        Ok(()) => signed_in(&token),
        Err(e) => (StatusCode::UNAUTHORIZED, pages::login(what, Some(e))).into_response(),
    }
}

async fn login_link(cluster: Cluster, query: String) -> Response {
    sign_in(form_value(&query, "token"), VIEWER, |t| check(&cluster, t))
}

async fn login_form(cluster: Cluster, body: String) -> Response {
    let token = form_value(&body, "token").unwrap_or_default();
    sign_in(Some(token), VIEWER, |t| check(&cluster, t))
}

const VIEWER: &str = "viewer token (gantry token create --role viewer)";

pub(crate) async fn logout() -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::SET_COOKIE,
        header::HeaderValue::from_static(
            "gantry_token=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    headers.insert(header::LOCATION, header::HeaderValue::from_static("/login"));
    (StatusCode::SEE_OTHER, headers).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_values_are_decoded() {
        assert_eq!(
            form_value("a=1&token=x%2Ey+z", "token").as_deref(),
            Some("x.y z")
        );
        assert_eq!(form_value("token=abc%", "token").as_deref(), Some("abc%"));
        assert_eq!(form_value("token=%zz", "token").as_deref(), Some("%zz"));
        assert_eq!(form_value("other=1", "token"), None);
    }
}
