//! Certificates renew by themselves: each gateway checks its own at start
//! and every min(1 h, lifetime / 20), and past a jittered 70-90 % of its
//! lifetime (KubeEdge's rule; the jitter keeps a cluster made in one hour
//! from renewing in one minute) it makes a new key and asks the leader for
//! a certificate, authenticating with the one it still holds. The new one
//! is written, then served to new connections and used for new outgoing
//! ones; open connections carry on. Nothing restarts. `gantry pki renew`
//! forces it. With less than 30 days left (renewals keep failing) an event
//! warns once per certificate.

use std::sync::Arc;
use std::time::Duration;

use gantry_pki::{Credentials, NodeKey};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use super::now_unix;
use crate::cluster::node::{LeaderOp, LeaderReply};
use crate::cluster::{Cluster, ClusterError};
use crate::state::Command;

/// Serialises renewals of one gateway (the loop and `gantry pki renew`).
#[derive(Clone, Default)]
pub struct Renewals {
    lock: Arc<Mutex<()>>,
}

/// Where in its life a certificate is renewed: 70-90 % of it, picked once
/// per certificate.
fn renew_at(not_before: i64, not_after: i64, jitter: f64) -> i64 {
    // `not_before` is backdated an hour for clock slop; the lifetime counts
    // from issuance.
    let issued = (not_before + 3600).min(not_after);
    let life = (not_after - issued).max(0) as f64;
    issued + (life * (0.7 + 0.2 * jitter.clamp(0.0, 1.0))).round() as i64
}

fn check_every(not_before: i64, not_after: i64) -> Duration {
    let life = (not_after - not_before - 3600).max(20) as u64;
    Duration::from_secs((life / 20).clamp(1, 3600))
}

const WARN_BEFORE: i64 = 30 * 24 * 3600;

pub async fn run(cluster: Cluster, renewals: Renewals, shutdown: CancellationToken) {
    let mut jitter: Option<(String, f64)> = None;
    let mut warned_for: Option<String> = None;
    let Ok(trust) = cluster.trust().cloned() else {
        // No TLS identity (a simulated gateway): nothing to renew.
        return;
    };
    loop {
        let creds = trust.credentials();
        let wait = match gantry_pki::cert_info(creds.leaf_der()) {
            Ok(info) => {
                let j = match &jitter {
                    Some((serial, j)) if *serial == info.serial_hex => *j,
                    _ => {
                        let j = rand::random::<f64>();
                        jitter = Some((info.serial_hex.clone(), j));
                        j
                    }
                };
                let now = now_unix();
                if now >= renew_at(info.not_before, info.not_after, j) {
                    match renew(&cluster, &renewals).await {
                        Ok(serial) => tracing::info!(%serial, "certificate renewed"),
                        Err(e) => {
                            tracing::warn!(error = %e, "certificate renewal failed; retrying")
                        }
                    }
                }
                let left = info.not_after - now_unix();
                let life = info.not_after - info.not_before - 3600;
                let warn = left < WARN_BEFORE.min(life / 10).max(1);
                if warn && warned_for.as_deref() != Some(info.serial_hex.as_str()) {
                    warned_for = Some(info.serial_hex.clone());
                    warn_expiring(&cluster, &info).await;
                }
                check_every(info.not_before, info.not_after)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read this gateway's certificate");
                Duration::from_secs(60)
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

async fn warn_expiring(cluster: &Cluster, info: &gantry_pki::CertInfo) {
    let name = {
        let applied = cluster.state().read();
        applied
            .state
            .nodes
            .get(&cluster.id())
            .map(|n| n.name.clone())
            .unwrap_or_default()
    };
    let message = format!(
        "gateway {name}'s certificate (serial {}) expires at {} and has not been renewed",
        info.serial_hex,
        crate::state::quantity::format_epoch_ms((info.not_after.max(0) as u64) * 1000)
    );
    tracing::warn!(%message, "certificate expiring");
    let command = Command::RecordEvent {
        kind: "certificate-expiring".into(),
        message,
    };
    if let Err(e) = cluster.write(command).await {
        tracing::warn!(error = %e, "could not record the expiry warning");
    }
}

/// Renews this gateway's certificate now; returns the new serial.
pub async fn renew(cluster: &Cluster, renewals: &Renewals) -> Result<String, ClusterError> {
    let _one_at_a_time = renewals.lock.lock().await;
    let key = NodeKey::generate().map_err(|e| ClusterError::Raft(e.to_string()))?;
    let csr_der = key
        .csr_der(&gantry_pki::node_dns_name(
            cluster.id(),
            cluster.cluster_id(),
        ))
        .map_err(|e| ClusterError::Raft(e.to_string()))?;
    let op = LeaderOp::Renew {
        node: cluster.id(),
        csr_der,
    };
    let (cert_der, ca_certs_der) = match cluster.on_leader(op).await? {
        LeaderReply::Renewed {
            cert_der,
            ca_certs_der,
        } => (cert_der, ca_certs_der),
        _ => return Err(ClusterError::Raft("unexpected reply to a renewal".into())),
    };
    let info = gantry_pki::cert_info(&cert_der).map_err(|e| ClusterError::Raft(e.to_string()))?;
    if info.spki_sha256 != key.spki_sha256() {
        return Err(ClusterError::Raft(
            "the renewed certificate is not for the key we sent".into(),
        ));
    }
    let mut chain = vec![cert_der];
    chain.extend(ca_certs_der);
    let creds = Credentials { key, chain };
    let creds = cluster
        .trust()?
        .install(creds)
        .map_err(|e| ClusterError::Raft(e.to_string()))?;
    cluster
        .peers()?
        .set_identity(&creds)
        .map_err(|e| ClusterError::Raft(e.to_string()))?;
    Ok(info.serial_hex)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_falls_between_70_and_90_percent_of_the_lifetime() {
        let issued = 1_000_000;
        let (nb, na) = (issued - 3600, issued + 1000);
        assert_eq!(renew_at(nb, na, 0.0), issued + 700);
        assert_eq!(renew_at(nb, na, 1.0), issued + 900);
        assert_eq!(renew_at(nb, na, 0.5), issued + 800);
        // A year's certificate is checked hourly; a 2-minute one every 6 s.
        assert_eq!(
            check_every(nb, issued + 365 * 24 * 3600),
            Duration::from_secs(3600)
        );
        assert_eq!(check_every(nb, issued + 120), Duration::from_secs(6));
    }
}
