//! Who may call what, method by method, in the style of Nomad's
//! `TestRPC_TLS_Enforcement`: every RPC of `gantry.proto` and `hub.proto`
//! (read from the files, so a new method without a policy fails here)
//! against every kind of caller, on real gateway and hub processes.
//! Expected: the TLS handshake fails, `UNAUTHENTICATED`, `PERMISSION_DENIED`,
//! or the call reaches its handler (which may still refuse the empty
//! request, but never with 16 or 7).

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use gantry::api::auth::{Need, GATEWAY_POLICY};
use gantry::cloud::hub::auth::HUB_POLICY;
use gantry::state::Role;
use gantry_pki::{CertificateAuthority, Credentials, Fingerprint, LeafProfile, NodeKey};
use support::{wait_for, TestCluster, DEADLINE};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Handshake,
    Unauthenticated,
    PermissionDenied,
    Allowed,
}

#[derive(Debug, Clone)]
struct Method {
    path: String,
    client_streaming: bool,
    server_streaming: bool,
}

/// Every `rpc` of every `service` in a .proto file.
fn methods(proto: &str) -> Vec<Method> {
    let text = std::fs::read_to_string(proto).expect("read the proto");
    let package = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("package "))
        .map(|p| p.trim_end_matches(';').trim().to_string())
        .expect("a package");
    let mut service = String::new();
    let mut found = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("service ") {
            service = rest.trim_end_matches('{').trim().to_string();
        } else if let Some(rest) = line.strip_prefix("rpc ") {
            let (name, rest) = rest.split_once('(').expect("rpc NAME(");
            let (request, rest) = rest.split_once(')').expect("(REQUEST)");
            let response = rest.split_once('(').map(|(_, r)| r).unwrap_or_default();
            found.push(Method {
                path: format!("/{package}.{service}/{}", name.trim()),
                client_streaming: request.trim().starts_with("stream "),
                server_streaming: response.trim().starts_with("stream "),
            });
        }
    }
    assert!(!found.is_empty(), "no rpc in {proto}");
    found
}

#[derive(Clone)]
struct Caller {
    name: &'static str,
    identity: Option<Arc<Credentials>>,
    bearer: Option<String>,
}

impl Caller {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            identity: None,
            bearer: None,
        }
    }
}

fn classify(status: &tonic::Status) -> Outcome {
    if transport_failure(status) {
        // Under TLS 1.3 a refused client certificate shows on the first
        // read: the connection closes with an alert instead of answering.
        return Outcome::Handshake;
    }
    match status.code() {
        tonic::Code::Unauthenticated => Outcome::Unauthenticated,
        tonic::Code::PermissionDenied => Outcome::PermissionDenied,
        tonic::Code::Unimplemented => panic!("unimplemented: {status:?}"),
        _ => Outcome::Allowed,
    }
}

/// A status tonic made from a broken connection (it carries the transport
/// error as its source), not one the server sent.
fn transport_failure(status: &tonic::Status) -> bool {
    std::error::Error::source(status).is_some()
}

async fn call(
    addr: &str,
    server_name: &str,
    pin: Fingerprint,
    caller: &Caller,
    method: &Method,
    site: Option<&str>,
) -> Outcome {
    let config = gantry_pki::client_config(
        gantry_pki::PinnedCaVerifier::new(pin),
        caller.identity.as_deref(),
        vec![b"h2".to_vec()],
    )
    .expect("client config");
    let connector =
        gantry::tls::TlsConnector::new(gantry::tls::ClientTls::new(config), server_name)
            .expect("connector");
    let channel = match gantry::tls::connect_channel(addr, connector, |e| {
        e.connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(20))
    })
    .await
    {
        Ok(channel) => channel,
        Err(_) => return Outcome::Handshake,
    };
    let mut grpc = tonic::client::Grpc::new(channel);
    if grpc.ready().await.is_err() {
        return Outcome::Handshake;
    }
    let path: http::uri::PathAndQuery = method.path.parse().expect("path");
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let decorate = |request: &mut tonic::metadata::MetadataMap| {
        if let Some(token) = &caller.bearer {
            request.insert(
                "authorization",
                format!("Bearer {token}").parse().expect("header"),
            );
        }
        if let Some(site) = site {
            request.insert("x-gantry-site", site.parse().expect("header"));
        }
    };
    let result: Result<(), tonic::Status> = match (method.client_streaming, method.server_streaming)
    {
        (false, false) => {
            let mut request = tonic::Request::new(());
            decorate(request.metadata_mut());
            grpc.unary(request, path, codec).await.map(|_| ())
        }
        (false, true) => {
            let mut request = tonic::Request::new(());
            decorate(request.metadata_mut());
            match grpc.server_streaming(request, path, codec).await {
                Ok(response) => {
                    let mut stream = response.into_inner();
                    match tokio::time::timeout(Duration::from_secs(2), stream.message()).await {
                        Ok(Err(status)) => Err(status),
                        _ => Ok(()),
                    }
                }
                Err(status) => Err(status),
            }
        }
        (true, false) => {
            let mut request = tonic::Request::new(futures::stream::iter(vec![()]));
            decorate(request.metadata_mut());
            grpc.client_streaming(request, path, codec)
                .await
                .map(|_| ())
        }
        (true, true) => {
            let mut request = tonic::Request::new(futures::stream::iter(vec![()]));
            decorate(request.metadata_mut());
            match grpc.streaming(request, path, codec).await {
                Ok(response) => {
                    let mut stream = response.into_inner();
                    match tokio::time::timeout(Duration::from_secs(2), stream.message()).await {
                        Ok(Err(status)) => Err(status),
                        _ => Ok(()),
                    }
                }
                Err(status) => Err(status),
            }
        }
    };
    match result {
        Ok(()) => Outcome::Allowed,
        Err(status) => {
            let outcome = classify(&status);
            if std::env::var_os("MATRIX_DEBUG").is_some() {
                eprintln!("{} as {}: {outcome:?} {status:?}", method.path, caller.name);
            }
            outcome
        }
    }
}

fn pem(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn creds_of(dir: &Path) -> Arc<Credentials> {
    Arc::new(Credentials::from_pem(&pem(&dir.join("pki/node.pem"))).expect("node.pem"))
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A certificate of `ca` naming node `id` of `cluster_id`, with a new key.
fn minted(
    ca: &CertificateAuthority,
    id: u64,
    cluster_id: &str,
    valid: Option<(i64, i64)>,
) -> Arc<Credentials> {
    let key = NodeKey::generate().unwrap();
    let profile = LeafProfile::node(id, cluster_id, Duration::from_secs(3600));
    let issued = match valid {
        Some((from, to)) => ca.issue_valid_between(&key, &profile, from, to).unwrap(),
        None => ca.issue(&key, &profile).unwrap(),
    };
    Arc::new(Credentials {
        key,
        chain: vec![issued.cert_der, ca.cert_der().to_vec()],
    })
}

fn token(cluster: &TestCluster, addr: &str, args: &[&str]) -> String {
    let out = cluster.cli(addr, args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn expected(need: Need, caller: &str) -> Outcome {
    use Outcome::*;
    if matches!(caller, "another CA" | "expired") {
        return Handshake;
    }
    match need {
        Need::Anyone => Allowed,
        Need::Member => match caller {
            "member" => Allowed,
            _ => Unauthenticated,
        },
        Need::Token(role) => match (caller, role) {
            ("admin token", _) => Allowed,
            ("viewer token", Role::Viewer) => Allowed,
            ("viewer token", Role::Admin) => PermissionDenied,
            _ => Unauthenticated,
        },
        Need::Site => match caller {
            "site token" => Allowed,
            _ => Unauthenticated,
        },
        Need::HubAdmin => match caller {
            "hub admin token" => Allowed,
            _ => Unauthenticated,
        },
    }
}

#[test]
fn every_method_refuses_every_caller_it_should() {
    let gateway_methods = methods(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/proto/proto/gantry.proto"
    ));
    let hub_methods = methods(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/proto/proto/hub.proto"
    ));
    // Deny by default: a method without a policy entry fails the test.
    for m in &gateway_methods {
        assert!(
            GATEWAY_POLICY.iter().any(|(p, _, _)| *p == m.path),
            "{} has no entry in api::auth::GATEWAY_POLICY",
            m.path
        );
    }
    for m in &hub_methods {
        assert!(
            HUB_POLICY.iter().any(|(p, _, _)| *p == m.path),
            "{} has no entry in cloud::hub::auth::HUB_POLICY",
            m.path
        );
    }
    assert_eq!(
        GATEWAY_POLICY.len(),
        gateway_methods.len(),
        "stale policy rows"
    );
    assert_eq!(HUB_POLICY.len(), hub_methods.len(), "stale hub policy rows");

    let mut cluster = TestCluster::new();
    // The cluster's CA is ours, so the test can mint certificates with it.
    let ca =
        CertificateAuthority::generate("matrix CA", Duration::from_secs(10 * 365 * 86400)).unwrap();
    let ca_cert = cluster.tmp.path().join("ca.crt");
    let ca_key = cluster.tmp.path().join("ca.key");
    std::fs::write(&ca_cert, ca.cert_pem()).unwrap();
    std::fs::write(&ca_key, ca.key_pem()).unwrap();
    cluster.init(
        "gw-a",
        &[
            "--ca-cert",
            ca_cert.to_str().unwrap(),
            "--ca-key",
            ca_key.to_str().unwrap(),
        ],
    );
    cluster.join("gw-b", &[]);
    cluster.join("gw-c", &[]);
    let addr = cluster.addr(0);
    let status = cluster.json(&addr, &["status"]);
    let cluster_id = status["cluster"].as_str().unwrap().to_string();
    let id_of = |name: &str| {
        status["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == name)
            .and_then(|n| n["id"].as_u64())
            .unwrap()
    };
    let b_id = id_of("gw-b");
    let left = creds_of(&cluster.gateways[2].dir);
    let out = cluster.cli(&addr, &["leave", "gw-c"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("gw-c to stop", DEADLINE, || {
        (!cluster.gateways[2].is_running()).then_some(())
    });

    let viewer = token(
        &cluster,
        &addr,
        &["token", "create", "--role", "viewer", "--name", "v"],
    );
    let revoked = token(
        &cluster,
        &addr,
        &["token", "create", "--role", "admin", "--name", "r"],
    );
    let revoked_id = revoked.split('.').nth(2).unwrap().to_string();
    token(&cluster, &addr, &["token", "revoke", &revoked_id]);
    let admin = std::fs::read_to_string(&cluster.token_file)
        .unwrap()
        .trim()
        .to_string();
    let other_ca = CertificateAuthority::generate("matrix CA", Duration::from_secs(86400)).unwrap();

    let mut callers = vec![
        Caller::new("no credential"),
        Caller {
            identity: Some(minted(&other_ca, b_id, &cluster_id, None)),
            ..Caller::new("another CA")
        },
        Caller {
            identity: Some(minted(
                &ca,
                b_id,
                &cluster_id,
                Some((now() - 2 * 86400, now() - 86400)),
            )),
            ..Caller::new("expired")
        },
        Caller {
            identity: Some(creds_of(&cluster.gateways[1].dir)),
            ..Caller::new("member")
        },
        Caller {
            identity: Some(left),
            ..Caller::new("left member")
        },
        Caller {
            identity: Some(minted(&ca, b_id, &cluster_id, None)),
            ..Caller::new("unpinned key")
        },
        Caller {
            bearer: Some(admin.clone()),
            ..Caller::new("admin token")
        },
        Caller {
            bearer: Some(viewer),
            ..Caller::new("viewer token")
        },
        Caller {
            bearer: Some(revoked),
            ..Caller::new("revoked token")
        },
    ];

    let rt = tokio::runtime::Runtime::new().unwrap();
    let pin = ca.fingerprint();
    let mut wrong = Vec::new();
    let mut checked = 0;
    // Methods that change what later calls see go last.
    let mut ordered = gateway_methods.clone();
    ordered.sort_by_key(|m| m.path.ends_with("/RotateJoinToken"));
    for method in &ordered {
        let need = GATEWAY_POLICY
            .iter()
            .find(|(p, _, _)| *p == method.path)
            .unwrap()
            .1;
        for caller in &callers {
            let got = rt.block_on(call(
                &addr,
                gantry_pki::GATEWAY_NAME,
                pin,
                caller,
                method,
                None,
            ));
            let want = expected(need, caller.name);
            checked += 1;
            if got != want {
                wrong.push(format!(
                    "{} as {}: got {got:?}, want {want:?}",
                    method.path, caller.name
                ));
            }
        }
    }

    // The hub, with its own CA and tokens.
    cluster.start_hub();
    let hub_dir = cluster.hub.as_ref().unwrap().dir.clone();
    let hub_pin =
        Fingerprint::of(&gantry_pki::certs_from_pem(&pem(&hub_dir.join("pki/ca.crt"))).unwrap()[0]);
    let site_token = cluster.site_token("site-1");
    let hub_admin = pem(&hub_dir.join("admin-token")).trim().to_string();
    callers.retain(|c| matches!(c.name, "no credential" | "member" | "admin token"));
    callers.push(Caller {
        bearer: Some(site_token),
        ..Caller::new("site token")
    });
    callers.push(Caller {
        bearer: Some(hub_admin),
        ..Caller::new("hub admin token")
    });
    let hub_addr = cluster.hub_addr();
    for method in &hub_methods {
        let need = HUB_POLICY
            .iter()
            .find(|(p, _, _)| *p == method.path)
            .unwrap()
            .1;
        for caller in &callers {
            let got = rt.block_on(call(
                &hub_addr,
                gantry_pki::HUB_NAME,
                hub_pin,
                caller,
                method,
                Some("site-1"),
            ));
            // A gateway's admin token means nothing at the hub.
            let want = expected(need, caller.name);
            checked += 1;
            if got != want {
                wrong.push(format!(
                    "hub {} as {}: got {got:?}, want {want:?}",
                    method.path, caller.name
                ));
            }
        }
    }
    println!("auth matrix: {checked} calls checked");
    assert!(
        wrong.is_empty(),
        "{} of {checked} calls wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}
