//! Real TLS handshakes between rustls clients and servers built by this crate,
//! driven in memory (no sockets, no runtime) so every verifier is exercised the way
//! it runs in production.

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{
    CertificateError, ClientConfig, ClientConnection, Error, PeerIncompatible, ProtocolVersion,
    ServerConfig, ServerConnection,
};

use crate::*;

const HOUR: Duration = Duration::from_secs(3600);

fn h2() -> Vec<Vec<u8>> {
    vec![b"h2".to_vec()]
}

/// A node of cluster `c1` with id `id`, certificate chain `[leaf, CA]`.
fn node(ca: &CertificateAuthority, id: u64) -> Credentials {
    let key = NodeKey::generate().unwrap();
    let leaf = ca.issue(&key, &LeafProfile::node(id, "c1", HOUR)).unwrap();
    Credentials {
        key,
        chain: vec![leaf.cert_der, ca.cert_der().to_vec()],
    }
}

#[derive(Debug)]
enum Failure {
    Client(Error),
    Server(Error),
}

/// Moves TLS bytes between the two ends until neither is handshaking, or one fails.
fn handshake(client: &mut ClientConnection, server: &mut ServerConnection) -> Result<(), Failure> {
    for _ in 0..32 {
        let mut moved = false;
        let mut buf = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() {
            moved = true;
            let mut rd = buf.as_slice();
            while !rd.is_empty() {
                server.read_tls(&mut rd).unwrap();
                server.process_new_packets().map_err(Failure::Server)?;
            }
        }
        let mut buf = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() {
            moved = true;
            let mut rd = buf.as_slice();
            while !rd.is_empty() {
                client.read_tls(&mut rd).unwrap();
                client.process_new_packets().map_err(Failure::Client)?;
            }
        }
        if !client.is_handshaking() && !server.is_handshaking() && !client.wants_write() {
            return Ok(());
        }
        assert!(moved, "handshake stalled");
    }
    panic!("handshake did not finish");
}

fn connect(
    client_cfg: Arc<ClientConfig>,
    server_cfg: Arc<ServerConfig>,
    name: &str,
) -> (ClientConnection, ServerConnection, Result<(), Failure>) {
    let name = ServerName::try_from(name.to_owned()).unwrap();
    let mut client = ClientConnection::new(client_cfg, name).unwrap();
    let mut server = ServerConnection::new(server_cfg).unwrap();
    // Queued before the handshake: must reach the server only if the server is trusted.
    client.writer().write_all(b"GET /secret").unwrap();
    let result = handshake(&mut client, &mut server);
    (client, server, result)
}

/// Whatever application data the server has received.
fn server_plaintext(server: &mut ServerConnection) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 256];
    while let Ok(n) = server.reader().read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    out
}

/// After a failed handshake, delivers whatever the client still sends (an alert)
/// and returns the plaintext the server got from it: must be nothing.
fn leaked_to_server(client: &mut ClientConnection, server: &mut ServerConnection) -> Vec<u8> {
    let mut buf = Vec::new();
    while client.wants_write() {
        if client.write_tls(&mut buf).is_err() {
            break;
        }
    }
    let mut rd = buf.as_slice();
    while !rd.is_empty() {
        if server.read_tls(&mut rd).is_err() {
            break;
        }
        let _ = server.process_new_packets();
    }
    server_plaintext(server)
}

fn assert_cert_error(result: Result<(), Failure>) -> CertificateError {
    match result {
        Err(Failure::Client(Error::InvalidCertificate(e))) => e,
        other => panic!("expected a certificate error on the client, got {other:?}"),
    }
}

fn pinned_client(pin: Fingerprint, identity: Option<&Credentials>) -> Arc<ClientConfig> {
    client_config(PinnedCaVerifier::new(pin), identity, h2()).unwrap()
}

#[test]
fn pinned_ca_with_right_pin_succeeds() {
    let ca = CertificateAuthority::generate("gantry cluster CA", HOUR).unwrap();
    let server_cfg = server_config(&node(&ca, 1), None, h2()).unwrap();
    let (client, mut server, result) = connect(
        pinned_client(ca.fingerprint(), None),
        server_cfg,
        GATEWAY_NAME,
    );
    result.unwrap();
    assert_eq!(client.alpn_protocol(), Some(&b"h2"[..]));
    assert_eq!(server_plaintext(&mut server), b"GET /secret");
}

#[test]
fn pinned_ca_works_with_an_openssl_made_ca() {
    let ca = CertificateAuthority::from_pem(
        include_str!("../testdata/openssl_p256_ca.crt"),
        include_str!("../testdata/openssl_p256_ca.key"),
    )
    .unwrap();
    let server_cfg = server_config(&node(&ca, 1), Some(&[ca.cert_der().to_vec()]), h2()).unwrap();
    let client = node(&ca, 2);
    let (_, server, result) = connect(
        pinned_client(ca.fingerprint(), Some(&client)),
        server_cfg,
        GATEWAY_NAME,
    );
    result.unwrap();
    assert!(server.peer_certificates().is_some());
}

#[test]
fn pinned_ca_with_pin_of_another_ca_fails_before_any_data() {
    let ca = CertificateAuthority::generate("gantry cluster CA", HOUR).unwrap();
    let other = CertificateAuthority::generate("another CA", HOUR).unwrap();
    let server_cfg = server_config(&node(&ca, 1), None, h2()).unwrap();
    let (mut client, mut server, result) = connect(
        pinned_client(other.fingerprint(), None),
        server_cfg,
        GATEWAY_NAME,
    );
    assert_eq!(assert_cert_error(result), CertificateError::UnknownIssuer);
    assert!(leaked_to_server(&mut client, &mut server).is_empty());
}

#[test]
fn pinned_ca_refuses_an_impostor_ca_with_the_same_subject() {
    let ca = CertificateAuthority::generate("gantry cluster CA", HOUR).unwrap();
    let impostor = CertificateAuthority::generate("gantry cluster CA", HOUR).unwrap();
    let forged = node(&impostor, 1);

    // The impostor sends its own CA: no certificate matches the pin.
    let server_cfg = server_config(&forged, None, h2()).unwrap();
    let (mut client, mut server, result) = connect(
        pinned_client(ca.fingerprint(), None),
        server_cfg,
        GATEWAY_NAME,
    );
    assert_eq!(assert_cert_error(result), CertificateError::UnknownIssuer);
    assert!(leaked_to_server(&mut client, &mut server).is_empty());

    // The impostor sends the real (pinned) CA next to its forged leaf: the names
    // match but the signature does not.
    let with_real_ca = Credentials {
        key: NodeKey::from_pem(&forged.key.to_pem()).unwrap(),
        chain: vec![forged.chain[0].clone(), ca.cert_der().to_vec()],
    };
    let server_cfg = server_config(&with_real_ca, None, h2()).unwrap();
    let (mut client, mut server, result) = connect(
        pinned_client(ca.fingerprint(), None),
        server_cfg,
        GATEWAY_NAME,
    );
    assert_cert_error(result);
    assert!(leaked_to_server(&mut client, &mut server).is_empty());
}

#[test]
fn pinned_ca_checks_the_server_name() {
    let ca = CertificateAuthority::generate("gantry cluster CA", HOUR).unwrap();
    let server_cfg = server_config(&node(&ca, 1), None, h2()).unwrap();
    let (_, _, result) = connect(
        pinned_client(ca.fingerprint(), None),
        server_cfg.clone(),
        HUB_NAME,
    );
    assert!(matches!(
        assert_cert_error(result),
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
    ));
    // The node's own name is also in its certificate.
    let (_, _, result) = connect(
        pinned_client(ca.fingerprint(), None),
        server_cfg,
        "n1.c1.gantry",
    );
    result.unwrap();
}

#[test]
fn pinned_ca_needs_the_ca_in_the_server_chain() {
    let ca = CertificateAuthority::generate("gantry cluster CA", HOUR).unwrap();
    let full = node(&ca, 1);
    let leaf_only = Credentials {
        key: NodeKey::from_pem(&full.key.to_pem()).unwrap(),
        chain: vec![full.chain[0].clone()],
    };
    let server_cfg = server_config(&leaf_only, None, h2()).unwrap();
    let (_, _, result) = connect(
        pinned_client(ca.fingerprint(), None),
        server_cfg,
        GATEWAY_NAME,
    );
    assert_eq!(assert_cert_error(result), CertificateError::UnknownIssuer);
}

#[test]
fn mutual_tls_with_a_client_of_the_same_ca() {
    let ca = CertificateAuthority::generate("gantry cluster CA", HOUR).unwrap();
    let server_cfg = server_config(&node(&ca, 1), Some(&[ca.cert_der().to_vec()]), h2()).unwrap();
    let client_creds = node(&ca, 2);
    let (_, server, result) = connect(
        pinned_client(ca.fingerprint(), Some(&client_creds)),
        server_cfg,
        GATEWAY_NAME,
    );
    result.unwrap();
    let peer = server.peer_certificates().expect("client certificate");
    assert_eq!(peer[0].as_ref(), client_creds.leaf_der());
    assert_eq!(node_id_of(peer[0].as_ref(), "c1"), Some(2));
}

#[test]
fn mutual_tls_refuses_a_client_of_another_ca() {
    let ca = CertificateAuthority::generate("gantry cluster CA", HOUR).unwrap();
    let other = CertificateAuthority::generate("gantry cluster CA", HOUR).unwrap();
    let server_cfg = server_config(&node(&ca, 1), Some(&[ca.cert_der().to_vec()]), h2()).unwrap();
    let (_, mut server, result) = connect(
        pinned_client(ca.fingerprint(), Some(&node(&other, 2))),
        server_cfg,
        GATEWAY_NAME,
    );
    match result {
        Err(Failure::Server(Error::InvalidCertificate(_))) => {}
        other => panic!("expected the server to refuse the client certificate, got {other:?}"),
    }
    assert!(server_plaintext(&mut server).is_empty());
}

#[test]
fn mutual_tls_allows_a_client_without_certificate() {
    let ca = CertificateAuthority::generate("gantry cluster CA", HOUR).unwrap();
    let server_cfg = server_config(&node(&ca, 1), Some(&[ca.cert_der().to_vec()]), h2()).unwrap();
    let (_, mut server, result) = connect(
        pinned_client(ca.fingerprint(), None),
        server_cfg,
        GATEWAY_NAME,
    );
    result.unwrap();
    assert!(server.peer_certificates().is_none());
    assert_eq!(server_plaintext(&mut server), b"GET /secret");
}

/// A pin lookup that records the names it was asked about.
fn pins_for(name: &'static str, keys: Vec<Fingerprint>) -> (PinLookup, Arc<Mutex<Vec<String>>>) {
    let asked = Arc::new(Mutex::new(Vec::new()));
    let log = asked.clone();
    let lookup: PinLookup = Arc::new(move |n: &str| {
        log.lock().unwrap().push(n.to_owned());
        if n == name {
            keys.clone()
        } else {
            Vec::new()
        }
    });
    (lookup, asked)
}

fn member_client(
    ca: &CertificateAuthority,
    pins: PinLookup,
    me: &Credentials,
) -> Arc<ClientConfig> {
    let verifier = MemberServerVerifier::new(&[ca.cert_der().to_vec()], pins).unwrap();
    client_config(verifier, Some(me), h2()).unwrap()
}

#[test]
fn member_verifier_accepts_the_pinned_key() {
    let ca = CertificateAuthority::generate("gantry cluster CA", HOUR).unwrap();
    let server = node(&ca, 2);
    let (pins, asked) = pins_for("n2.c1.gantry", vec![server.key.spki_sha256()]);
    let server_cfg = server_config(&server, Some(&[ca.cert_der().to_vec()]), h2()).unwrap();
    let (_, srv, result) = connect(
        member_client(&ca, pins, &node(&ca, 1)),
        server_cfg,
        "n2.c1.gantry",
    );
    result.unwrap();
    assert_eq!(*asked.lock().unwrap(), vec!["n2.c1.gantry".to_owned()]);
    assert_eq!(
        node_id_of(srv.peer_certificates().unwrap()[0].as_ref(), "c1"),
        Some(1)
    );
}

#[test]
fn member_verifier_refuses_another_key_with_the_right_name() {
    let ca = CertificateAuthority::generate("gantry cluster CA", HOUR).unwrap();
    let old = node(&ca, 2);
    let new = node(&ca, 2); // same CA, same names, another key
    let (pins, _) = pins_for("n2.c1.gantry", vec![old.key.spki_sha256()]);
    let server_cfg = server_config(&new, None, h2()).unwrap();
    let (mut client, mut server, result) = connect(
        member_client(&ca, pins, &node(&ca, 1)),
        server_cfg,
        "n2.c1.gantry",
    );
    match result {
        Err(Failure::Client(Error::General(msg))) => assert!(msg.contains("not the one"), "{msg}"),
        other => panic!("expected a pin mismatch, got {other:?}"),
    }
    assert!(leaked_to_server(&mut client, &mut server).is_empty());
}

#[test]
fn member_verifier_refuses_when_no_key_is_pinned() {
    let ca = CertificateAuthority::generate("gantry cluster CA", HOUR).unwrap();
    let server = node(&ca, 2);
    let (pins, _) = pins_for("n9.c1.gantry", vec![server.key.spki_sha256()]);
    let server_cfg = server_config(&server, None, h2()).unwrap();
    let (_, _, result) = connect(
        member_client(&ca, pins, &node(&ca, 1)),
        server_cfg,
        "n2.c1.gantry",
    );
    match result {
        Err(Failure::Client(Error::General(msg))) => {
            assert!(msg.contains("no pinned key for n2.c1.gantry"), "{msg}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn member_verifier_still_checks_the_chain() {
    let ca = CertificateAuthority::generate("gantry cluster CA", HOUR).unwrap();
    let other = CertificateAuthority::generate("gantry cluster CA", HOUR).unwrap();
    let server = node(&other, 2);
    let (pins, _) = pins_for("n2.c1.gantry", vec![server.key.spki_sha256()]);
    let server_cfg = server_config(&server, None, h2()).unwrap();
    let (_, _, result) = connect(
        member_client(&ca, pins, &node(&ca, 1)),
        server_cfg,
        "n2.c1.gantry",
    );
    assert_cert_error(result);
}

#[test]
fn roots_verifier_checks_chain_and_name() {
    let ca = CertificateAuthority::generate("gantry cluster CA", HOUR).unwrap();
    let other = CertificateAuthority::generate("other", HOUR).unwrap();
    let server_cfg = server_config(&node(&ca, 1), None, h2()).unwrap();
    let good = client_config(
        roots_verifier(&[ca.cert_der().to_vec()]).unwrap(),
        None,
        h2(),
    )
    .unwrap();
    connect(good.clone(), server_cfg.clone(), GATEWAY_NAME)
        .2
        .unwrap();
    assert_cert_error(connect(good, server_cfg.clone(), HUB_NAME).2);
    let bad = client_config(
        roots_verifier(&[other.cert_der().to_vec()]).unwrap(),
        None,
        h2(),
    )
    .unwrap();
    assert_cert_error(connect(bad, server_cfg, GATEWAY_NAME).2);
    assert!(roots_verifier(&[]).is_err());
    assert!(roots_verifier(&[b"junk".to_vec()]).is_err());
}

#[test]
fn sessions_are_never_resumed() {
    let ca = CertificateAuthority::generate("gantry cluster CA", HOUR).unwrap();
    let server_cfg = server_config(&node(&ca, 1), None, h2()).unwrap();
    let client_cfg = pinned_client(ca.fingerprint(), None);
    for _ in 0..2 {
        let (client, server, result) =
            connect(client_cfg.clone(), server_cfg.clone(), GATEWAY_NAME);
        result.unwrap();
        assert_eq!(client.handshake_kind(), Some(rustls::HandshakeKind::Full));
        assert_eq!(server.handshake_kind(), Some(rustls::HandshakeKind::Full));
    }
}

#[test]
fn only_tls13_and_tls12_are_possible() {
    assert_eq!(
        PROTOCOL_VERSIONS
            .iter()
            .map(|v| v.version)
            .collect::<Vec<_>>(),
        vec![ProtocolVersion::TLSv1_3, ProtocolVersion::TLSv1_2]
    );
    let ca = CertificateAuthority::generate("gantry cluster CA", HOUR).unwrap();
    let server_cfg = server_config(&node(&ca, 1), None, h2()).unwrap();
    for suite in &server_cfg.crypto_provider().cipher_suites {
        let v = suite.version().version;
        assert!(v == ProtocolVersion::TLSv1_3 || v == ProtocolVersion::TLSv1_2);
    }

    // A TLS 1.3 client gets TLS 1.3 ...
    let (client, _, result) = connect(
        pinned_client(ca.fingerprint(), None),
        server_cfg.clone(),
        GATEWAY_NAME,
    );
    result.unwrap();
    assert_eq!(client.protocol_version(), Some(ProtocolVersion::TLSv1_3));

    // ... a TLS 1.2-only client still works ...
    let tls12 = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(PinnedCaVerifier::new(ca.fingerprint()))
        .with_no_client_auth();
    let (client, _, result) = connect(Arc::new(tls12), server_cfg.clone(), GATEWAY_NAME);
    result.unwrap();
    assert_eq!(client.protocol_version(), Some(ProtocolVersion::TLSv1_2));

    // ... and TLS 1.1 and 1.0 ClientHellos are refused.
    for minor in [0x01, 0x02] {
        let mut server = ServerConnection::new(server_cfg.clone()).unwrap();
        let mut hello = vec![
            0x16, 0x03, 0x01, 0x00, 0x39, 0x01, 0x00, 0x00, 0x35, 0x03, minor,
        ];
        hello.extend_from_slice(&[0x42; 32]); // random
        hello.push(0x00); // no session id
        hello.extend_from_slice(&[0x00, 0x04, 0xc0, 0x2b, 0xc0, 0x2f]); // ECDHE AES-GCM suites
        hello.extend_from_slice(&[0x01, 0x00]); // null compression
                                                // signature_algorithms: ecdsa_secp256r1_sha256 (rustls wants it before the version check)
        hello.extend_from_slice(&[0x00, 0x08, 0x00, 0x0d, 0x00, 0x04, 0x00, 0x02, 0x04, 0x03]);
        server.read_tls(&mut hello.as_slice()).unwrap();
        match server.process_new_packets() {
            Err(Error::PeerIncompatible(PeerIncompatible::Tls12NotOffered)) => {}
            other => panic!("TLS 1.{} hello: expected refusal, got {other:?}", minor - 1),
        }
    }
}
