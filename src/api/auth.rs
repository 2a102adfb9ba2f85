//! Who may call what: one policy layer in front of every gRPC service of a
//! gateway (and, with its own table, of the hub). It maps the request path
//! to what the method needs, checks the caller's credential against the
//! replicated state, and answers before any handler runs, before any body
//! is read and before anything is forwarded to the leader. Paths it does
//! not know are refused: deny by default.
//!
//! Codes: a missing, malformed, unknown, expired or revoked credential
//! (a gateway that left included) is `UNAUTHENTICATED`; a valid caller
//! without the needed role is `PERMISSION_DENIED`.

use std::pin::Pin;
use std::task::{Context, Poll};

use http::HeaderMap;
use tonic::body::Body;
use tonic::Status;

use crate::cluster::{Cluster, NodeId};
use crate::state::{NodeStatus, Role};
use crate::tls::{PeerInfo, RateLimit};

/// What a method needs from its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// No credential (the join path: its token is checked by the handler).
    Anyone,
    /// A current member gateway, by its certificate and pinned key.
    Member,
    /// An Admin bearer token with at least this role.
    Token(Role),
    /// A hub's site, by its site token (hub only).
    Site,
    /// A hub admin token (hub only).
    HubAdmin,
}

/// Who called, for handlers (identity bindings) and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Anyone,
    Node(NodeId),
    Bearer { id: String, role: Role },
    Site(String),
    HubAdmin,
}

/// One row of a policy table: the gRPC path, what it needs, and the verb
/// a person typed (for "apply needs the admin role").
pub type Rule = (&'static str, Need, &'static str);

/// Every method of `gantry.proto`. A method missing here is refused, and
/// the matrix test fails until it is added.
pub const GATEWAY_POLICY: &[Rule] = &[
    ("/gantry.v1.Bootstrap/Join", Need::Anyone, "join"),
    ("/gantry.v1.Cluster/Vote", Need::Member, "raft vote"),
    (
        "/gantry.v1.Cluster/AppendEntries",
        Need::Member,
        "raft append",
    ),
    (
        "/gantry.v1.Cluster/InstallSnapshot",
        Need::Member,
        "raft snapshot",
    ),
    ("/gantry.v1.Cluster/AddMember", Need::Member, "join"),
    ("/gantry.v1.Cluster/RenewCertificate", Need::Member, "renew"),
    ("/gantry.v1.Cluster/Forward", Need::Member, "forward"),
    ("/gantry.v1.Cluster/Heartbeat", Need::Member, "heartbeat"),
    ("/gantry.v1.Cluster/PushImage", Need::Member, "image push"),
    ("/gantry.v1.Cluster/Logs", Need::Member, "logs"),
    (
        "/gantry.v1.Cluster/ExportImage",
        Need::Member,
        "image export",
    ),
    ("/gantry.v1.Cluster/PullImage", Need::Member, "image pull"),
    (
        "/gantry.v1.Admin/Status",
        Need::Token(Role::Viewer),
        "status",
    ),
    (
        "/gantry.v1.Admin/GetNodes",
        Need::Token(Role::Viewer),
        "get nodes",
    ),
    (
        "/gantry.v1.Admin/GetWorkloads",
        Need::Token(Role::Viewer),
        "get workloads",
    ),
    (
        "/gantry.v1.Admin/GetInstances",
        Need::Token(Role::Viewer),
        "get instances",
    ),
    (
        "/gantry.v1.Admin/DescribeWorkload",
        Need::Token(Role::Viewer),
        "describe workload",
    ),
    (
        "/gantry.v1.Admin/DescribeNode",
        Need::Token(Role::Viewer),
        "describe node",
    ),
    (
        "/gantry.v1.Admin/Events",
        Need::Token(Role::Viewer),
        "events",
    ),
    (
        "/gantry.v1.Admin/RolloutStatus",
        Need::Token(Role::Viewer),
        "rollout status",
    ),
    (
        "/gantry.v1.Admin/GetSettings",
        Need::Token(Role::Viewer),
        "settings get",
    ),
    ("/gantry.v1.Admin/Logs", Need::Token(Role::Viewer), "logs"),
    (
        "/gantry.v1.Admin/PkiStatus",
        Need::Token(Role::Viewer),
        "pki status",
    ),
    ("/gantry.v1.Admin/Apply", Need::Token(Role::Admin), "apply"),
    (
        "/gantry.v1.Admin/DeleteWorkload",
        Need::Token(Role::Admin),
        "delete",
    ),
    ("/gantry.v1.Admin/Leave", Need::Token(Role::Admin), "leave"),
    (
        "/gantry.v1.Admin/ImportImage",
        Need::Token(Role::Admin),
        "image import",
    ),
    (
        "/gantry.v1.Admin/PullImage",
        Need::Token(Role::Admin),
        "image pull",
    ),
    (
        "/gantry.v1.Admin/SetSettings",
        Need::Token(Role::Admin),
        "settings set",
    ),
    (
        "/gantry.v1.Admin/Cordon",
        Need::Token(Role::Admin),
        "cordon",
    ),
    (
        "/gantry.v1.Admin/Uncordon",
        Need::Token(Role::Admin),
        "uncordon",
    ),
    ("/gantry.v1.Admin/Drain", Need::Token(Role::Admin), "drain"),
    (
        "/gantry.v1.Admin/CloudAttach",
        Need::Token(Role::Admin),
        "cloud attach",
    ),
    (
        "/gantry.v1.Admin/CloudDetach",
        Need::Token(Role::Admin),
        "cloud detach",
    ),
    (
        "/gantry.v1.Admin/CreateToken",
        Need::Token(Role::Admin),
        "token create",
    ),
    (
        "/gantry.v1.Admin/ListTokens",
        Need::Token(Role::Admin),
        "token list",
    ),
    (
        "/gantry.v1.Admin/RevokeToken",
        Need::Token(Role::Admin),
        "token revoke",
    ),
    (
        "/gantry.v1.Admin/CreateJoinToken",
        Need::Token(Role::Admin),
        "join-token create",
    ),
    (
        "/gantry.v1.Admin/ListJoinTokens",
        Need::Token(Role::Admin),
        "join-token list",
    ),
    (
        "/gantry.v1.Admin/RotateJoinToken",
        Need::Token(Role::Admin),
        "join-token rotate",
    ),
    (
        "/gantry.v1.Admin/RenewCertificate",
        Need::Token(Role::Admin),
        "pki renew",
    ),
];

/// Plain HTTP paths on the gateway's port (`crate::web`). Health and
/// readiness say nothing but "up" and "ready"; metrics name workloads and
/// gateways, so they need a viewer token, as Prometheus can send one.
/// A path ending in `/*` stands for everything under it. The pages and
/// their live streams need a viewer token, as a bearer or in the cookie
/// that `/login` sets.
pub const GATEWAY_HTTP_POLICY: &[Rule] = &[
    ("/metrics", Need::Token(Role::Viewer), "reading metrics"),
    ("/healthz", Need::Anyone, "health"),
    ("/readyz", Need::Anyone, "readiness"),
    ("/", Need::Token(Role::Viewer), "the web page"),
    ("/workloads/*", Need::Token(Role::Viewer), "the web page"),
    ("/gateways/*", Need::Token(Role::Viewer), "the web page"),
    ("/live", Need::Token(Role::Viewer), "the web page"),
    ("/live/*", Need::Token(Role::Viewer), "the web page"),
    ("/login", Need::Anyone, "sign-in"),
    ("/logout", Need::Anyone, "sign-out"),
];

/// The rule of a plain HTTP path, `/*` rows matching what lies under them.
pub fn http_rule_for(table: &'static [Rule], path: &str) -> Option<&'static Rule> {
    table.iter().find(|(p, _, _)| match p.strip_suffix("/*") {
        Some(prefix) => path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.len() > 1 && rest.starts_with('/')),
        None => *p == path,
    })
}

pub fn rule_for(table: &'static [Rule], path: &str) -> Option<&'static Rule> {
    table.iter().find(|(p, _, _)| *p == path)
}

/// The bearer credential of a request, if any: the `Authorization`
/// header, else, on plain HTTP only, the cookie a browser signed in with
/// (`web::TOKEN_COOKIE`): a gRPC call is never authorised by a cookie.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let header = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    header.or_else(|| {
        if is_grpc(headers) {
            None
        } else {
            cookie(headers, crate::web::TOKEN_COOKIE)
        }
    })
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name && !v.is_empty()).then_some(v)
        })
}

/// Decides for one request; implemented by the gateway and by the hub.
pub trait Policy: Clone + Send + Sync + 'static {
    fn authorize(
        &self,
        path: &str,
        headers: &HeaderMap,
        peer: Option<&PeerInfo>,
    ) -> Result<Principal, Status>;
}

/// The gateway's policy: members by certificate and pinned key, people by
/// bearer token, both against this gateway's replica.
#[derive(Clone)]
pub struct GatewayPolicy {
    pub cluster: Cluster,
}

pub fn unauthenticated(message: impl Into<String>) -> Status {
    Status::unauthenticated(message.into())
}

impl GatewayPolicy {
    fn member(&self, peer: Option<&PeerInfo>) -> Result<Principal, Status> {
        let leaf = peer
            .and_then(PeerInfo::leaf)
            .ok_or_else(|| unauthenticated("a gateway certificate is needed for this call"))?;
        let id = gantry_pki::node_id_of(leaf, self.cluster.cluster_id())
            .ok_or_else(|| unauthenticated("the certificate names no gateway of this cluster"))?;
        let spki = gantry_pki::spki_sha256(leaf)
            .map_err(|_| unauthenticated("unreadable client certificate"))?;
        let applied = self.cluster.state().read();
        if applied.state.meta.pki.is_none() {
            // A joiner's replica is empty until the leader's log arrives: it
            // cannot know the members' pins yet, so it accepts a gateway of
            // the cluster CA (the TLS layer checked the chain; the CA came
            // from the leader over the channel the join token pinned).
            return Ok(Principal::Node(id));
        }
        let current = applied
            .state
            .nodes
            .get(&id)
            .filter(|n| n.status != NodeStatus::Left)
            .and_then(|n| n.tls.as_ref())
            .is_some_and(|tls| tls.accepts(&spki.to_hex(), crate::cluster::node::now_ms()));
        if !current {
            return Err(unauthenticated(
                "not a current member of this cluster (left, or its key is not the pinned one)",
            ));
        }
        Ok(Principal::Node(id))
    }

    fn token(&self, headers: &HeaderMap, needed: Role, verb: &str) -> Result<Principal, Status> {
        let text = bearer(headers).ok_or_else(|| {
            unauthenticated(
                "no token: pass --token, GANTRY_TOKEN or --token-file (an admin or viewer token)",
            )
        })?;
        let applied = self.cluster.state().read();
        let found =
            crate::trust::tokens::check_admin(&applied.state, text, crate::cluster::node::now_ms())
                .map_err(unauthenticated)?;
        if !found.role.allows(needed) {
            return Err(Status::permission_denied(format!(
                "{verb} needs the {needed} role"
            )));
        }
        Ok(Principal::Bearer {
            id: found.id,
            role: found.role,
        })
    }
}

impl Policy for GatewayPolicy {
    fn authorize(
        &self,
        path: &str,
        headers: &HeaderMap,
        peer: Option<&PeerInfo>,
    ) -> Result<Principal, Status> {
        let rule =
            rule_for(GATEWAY_POLICY, path).or_else(|| http_rule_for(GATEWAY_HTTP_POLICY, path));
        let Some((_, need, verb)) = rule else {
            return Err(Status::unimplemented(format!("no method {path}")));
        };
        match need {
            Need::Anyone => {
                // The one unauthenticated path takes small requests only;
                // a body announced as larger is refused before it is read.
                let announced = headers
                    .get(http::header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<usize>().ok());
                let limit = crate::api::cluster_service::MAX_JOIN_BYTES + 5;
                if announced.is_some_and(|len| len > limit) {
                    return Err(Status::resource_exhausted(format!(
                        "a {verb} request is at most {} KiB",
                        crate::api::cluster_service::MAX_JOIN_BYTES >> 10
                    )));
                }
                Ok(Principal::Anyone)
            }
            Need::Member => self.member(peer),
            Need::Token(role) => self.token(headers, *role, verb),
            Need::Site | Need::HubAdmin => Err(Status::unimplemented("not a gateway method")),
        }
    }
}

/// The tower layer that runs a `Policy` in front of a tonic server.
#[derive(Clone)]
pub struct AuthLayer<P> {
    policy: P,
    complaints: std::sync::Arc<RateLimit>,
}

impl<P> AuthLayer<P> {
    pub fn new(policy: P) -> Self {
        Self {
            policy,
            complaints: Default::default(),
        }
    }
}

impl<S, P: Clone> tower::Layer<S> for AuthLayer<P> {
    type Service = Authorized<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        Authorized {
            inner,
            policy: self.policy.clone(),
            complaints: self.complaints.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Authorized<S, P> {
    inner: S,
    policy: P,
    complaints: std::sync::Arc<RateLimit>,
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send + 'static>>;

impl<S, P> tower::Service<http::Request<Body>> for Authorized<S, P>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    P: Policy,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        let peer = request.extensions().get::<PeerInfo>().cloned();
        let path = request.uri().path().to_string();
        match self
            .policy
            .authorize(&path, request.headers(), peer.as_ref())
        {
            Ok(principal) => {
                request.extensions_mut().insert(principal);
                // The clone that was polled ready serves this call.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                Box::pin(inner.call(request))
            }
            Err(status) => {
                if self.complaints.allow() {
                    tracing::warn!(
                        method = %path,
                        remote = ?peer.as_ref().and_then(|p| p.remote_addr),
                        code = ?status.code(),
                        reason = %status.message(),
                        "call refused"
                    );
                }
                // Answered before the body is read: an unauthenticated caller
                // cannot make us buffer anything. What it is still sending is
                // read off and thrown away, a little and briefly, so a small
                // request ends cleanly instead of with a stream reset.
                let grpc = is_grpc(request.headers());
                let browser = wants_html(request.headers());
                let (_, body) = request.into_parts();
                tokio::spawn(discard(body));
                let response = if grpc {
                    status.into_http()
                } else if browser && status.code() == tonic::Code::Unauthenticated {
                    to_login()
                } else {
                    plain_refusal(&status)
                };
                Box::pin(std::future::ready(Ok(response)))
            }
        }
    }
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"))
}

/// A browser without a (valid) token goes to the sign-in form.
fn to_login() -> http::Response<Body> {
    let mut response = http::Response::new(Body::empty());
    *response.status_mut() = http::StatusCode::SEE_OTHER;
    response.headers_mut().insert(
        http::header::LOCATION,
        http::HeaderValue::from_static("/login"),
    );
    response
}

/// A refusal as a plain HTTP client (curl, Prometheus, a browser) reads
/// one: the status code that means it, and the reason as text.
fn plain_refusal(status: &Status) -> http::Response<Body> {
    use tonic::Code;
    let code = match status.code() {
        Code::Unauthenticated => http::StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => http::StatusCode::FORBIDDEN,
        Code::Unimplemented => http::StatusCode::NOT_FOUND,
        Code::ResourceExhausted => http::StatusCode::PAYLOAD_TOO_LARGE,
        _ => http::StatusCode::BAD_REQUEST,
    };
    let mut response = http::Response::new(Body::new(format!("{}\n", status.message())));
    *response.status_mut() = code;
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if code == http::StatusCode::UNAUTHORIZED {
        headers.insert(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer realm=\"gantry\""),
        );
    }
    response
}

/// Reads a refused request's body off the wire, at most 64 KiB, keeping
/// none of it; a larger one is held unread (HTTP/2 flow control stops the
/// sender) until a second has passed, so the refusal is on the wire before
/// the stream is reset.
async fn discard(mut body: Body) {
    use http_body_util::BodyExt;
    let until = tokio::time::Instant::now() + std::time::Duration::from_secs(1);
    let mut left: usize = 64 << 10;
    let drain = async {
        while let Some(Ok(frame)) = body.frame().await {
            let len = frame.data_ref().map(|d| d.len()).unwrap_or(0);
            left = left.saturating_sub(len.max(1));
            if left == 0 {
                return false;
            }
        }
        true
    };
    let ended = tokio::time::timeout_at(until, drain).await.unwrap_or(false);
    if !ended {
        tokio::time::sleep_until(until).await;
    }
}

/// The principal the policy layer found (absent only in unit tests that
/// call handlers directly).
pub fn principal<T>(request: &tonic::Request<T>) -> Option<&Principal> {
    request.extensions().get::<Principal>()
}

/// For Cluster handlers: the member the certificate names.
pub fn caller_node<T>(request: &tonic::Request<T>) -> Result<NodeId, Status> {
    match principal(request) {
        Some(Principal::Node(id)) => Ok(*id),
        _ => Err(unauthenticated(
            "a gateway certificate is needed for this call",
        )),
    }
}
