//! Plain HTTP/1.1 (and HTTP/2) routes on the gateway's gRPC port, behind
//! the same TLS and the same policy layer (`api::auth`): `/metrics` for
//! Prometheus (a viewer token as bearer), `/healthz` and `/readyz` for
//! supervisors and load balancers (no credential; they say nothing about
//! the cluster but "up" and "ready"). One port, one firewall rule, like
//! K3s and Nomad. The hub serves `/metrics` (a hub admin token) and
//! `/healthz` the same way.

use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::cluster::Cluster;
use crate::metrics::Render;

/// A gateway's routes, to merge with its gRPC services into one router.
pub fn gateway_routes(cluster: Cluster, exporter: Arc<dyn Render>) -> axum::Router {
    hub_routes(exporter).route("/readyz", get(move || readiness(cluster.clone())))
}

/// The hub's routes (and the part every server has).
pub fn hub_routes(exporter: Arc<dyn Render>) -> axum::Router {
    axum::Router::new()
        .route("/metrics", get(move || metrics(exporter.clone())))
        .route("/healthz", get(|| async { (StatusCode::OK, "ok\n") }))
}

async fn metrics(exporter: Arc<dyn Render>) -> axum::response::Response {
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
