//! The leader's signing: a joiner's or a renewing gateway's certificate
//! request becomes a certificate naming that gateway, signed with the
//! cluster CA, whose key is unsealed from the state for the moment it
//! takes. Only the request's public key is used; every other field is
//! ours (see `gantry_pki::CertificateAuthority::sign_csr`).

use std::net::IpAddr;

use gantry_pki::{CertificateAuthority, IssuedCert, LeafProfile};

use super::{cert_lifetime, NodeTrust, TrustError};
use crate::state::{NodeId, NodeTls, PreviousKey, State};

/// The field name the CA key is sealed under (`seal_aad`).
pub const CA_KEY_FIELD: &str = "ca-key";

/// SANs: the node's own name (`n<id>.<cluster>.gantry`, what peers check),
/// the name every gateway shares (`gateway.gantry`, what the CLI checks),
/// and the host it advertises, so `curl --cacert ca.crt https://HOST:PORT`
/// and Prometheus work without extra names.
pub fn node_profile(node_id: NodeId, cluster_id: &str, address: &str) -> LeafProfile {
    let mut dns_names = vec![
        gantry_pki::node_dns_name(node_id, cluster_id),
        gantry_pki::GATEWAY_NAME.to_string(),
    ];
    let mut ip_addresses = Vec::new();
    if let Some(host) = host_of(address) {
        match host.parse::<IpAddr>() {
            Ok(ip) => ip_addresses.push(ip),
            Err(_) if is_dns_name(&host) => dns_names.push(host),
            Err(_) => {}
        }
    }
    LeafProfile {
        common_name: gantry_pki::node_dns_name(node_id, cluster_id),
        dns_names,
        ip_addresses,
        lifetime: cert_lifetime(),
        server: true,
        client: true,
    }
}

/// `HOST:PORT` or `[V6]:PORT` -> HOST.
fn host_of(address: &str) -> Option<String> {
    if let Ok(socket) = address.parse::<std::net::SocketAddr>() {
        return Some(socket.ip().to_string());
    }
    let (host, _) = address.rsplit_once(':')?;
    (!host.is_empty()).then(|| host.to_string())
}

fn is_dns_name(host: &str) -> bool {
    !host.is_empty() && host.len() <= 253 && host.split('.').all(crate::state::spec::is_dns_label)
}

/// The cluster CA with its key, from the state and this gateway's cluster key.
pub fn cluster_ca(trust: &NodeTrust, state: &State) -> Result<CertificateAuthority, TrustError> {
    let pki = state
        .meta
        .pki
        .as_ref()
        .ok_or_else(|| TrustError::Refused("the cluster has no CA yet".into()))?;
    let key = trust.open_sealed(CA_KEY_FIELD, &pki.ca_key_sealed)?;
    let key = String::from_utf8(key)
        .map_err(|_| TrustError::Refused("the sealed CA key is not PEM".into()))?;
    let certs = gantry_pki::certs_from_pem(&pki.ca_certs_pem)?;
    let first = certs
        .first()
        .ok_or_else(|| TrustError::Refused("the cluster has no CA certificate".into()))?;
    Ok(CertificateAuthority::from_pem(
        &gantry_pki::certs_to_pem(std::slice::from_ref(first)),
        &key,
    )?)
}

pub fn sign_node(
    trust: &NodeTrust,
    state: &State,
    node_id: NodeId,
    address: &str,
    csr_der: &[u8],
) -> Result<IssuedCert, TrustError> {
    let ca = cluster_ca(trust, state)?;
    Ok(ca.sign_csr(csr_der, &node_profile(node_id, &trust.cluster_id, address))?)
}

/// The pin for a new certificate; the key it replaces stays valid until
/// its certificate expires, so connections opened with it carry on.
pub fn node_tls(issued: &IssuedCert, replaced: Option<&NodeTls>, now_ms: u64) -> NodeTls {
    let previous = replaced
        .filter(|old| old.spki_sha256 != issued.spki_sha256.to_hex() && old.not_after_ms > now_ms)
        .map(|old| PreviousKey {
            spki_sha256: old.spki_sha256.clone(),
            until_ms: old.not_after_ms,
        });
    NodeTls {
        spki_sha256: issued.spki_sha256.to_hex(),
        serial: issued.serial_hex.clone(),
        not_after_ms: (issued.not_after.max(0) as u64).saturating_mul(1000),
        previous,
    }
}

/// The CA bundle as DER, for replies.
pub fn ca_certs_der(state: &State) -> Result<Vec<Vec<u8>>, TrustError> {
    let pki = state
        .meta
        .pki
        .as_ref()
        .ok_or_else(|| TrustError::Refused("the cluster has no CA yet".into()))?;
    Ok(gantry_pki::certs_from_pem(&pki.ca_certs_pem)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_name_the_node_every_gateway_and_the_advertised_host() {
        let p = node_profile(3, "abc", "10.0.0.7:7400");
        assert_eq!(p.dns_names, vec!["n3.abc.gantry", "gateway.gantry"]);
        assert_eq!(p.ip_addresses, vec!["10.0.0.7".parse::<IpAddr>().unwrap()]);
        assert!(p.server && p.client);
        let p = node_profile(3, "abc", "gw-a.plant.example:7400");
        assert!(p.dns_names.contains(&"gw-a.plant.example".to_string()));
        let p = node_profile(3, "abc", "[::1]:7400");
        assert_eq!(p.ip_addresses, vec!["::1".parse::<IpAddr>().unwrap()]);
    }
}
