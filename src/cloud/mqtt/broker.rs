//! Reaching the broker: its URL, TLS (the broker's CA bundle from `cloud
//! attach --ca-file`, optionally a client certificate), credentials, the
//! last will, and packet limits that fit the largest desired state.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{
    ConnectionError, Event, EventLoop, LastWill, MqttOptions, Packet, Publish, QoS,
    TlsConfiguration, Transport,
};
use tokio::sync::mpsc;

/// Where the broker is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

/// `mqtts://HOST[:PORT]` (8883 by default), or `mqtt://HOST[:PORT]` (1883)
/// only when `insecure`: credentials and workloads in clear text are a
/// choice to make out loud.
pub fn parse_url(url: &str, insecure: bool) -> Result<BrokerUrl, String> {
    let (tls, rest) = if let Some(rest) = url.strip_prefix("mqtts://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("mqtt://") {
        (false, rest)
    } else {
        return Err(format!(
            "--mqtt: '{url}' is not an mqtts://HOST:PORT (or, with --insecure, mqtt://) URL"
        ));
    };
    if !tls && !insecure {
        return Err(format!(
            "--mqtt: '{url}' is plain MQTT (no TLS): credentials and workloads would cross the network in clear; use mqtts:// or say --insecure"
        ));
    }
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.contains(['/', '@', '?']) {
        return Err(format!(
            "--mqtt: '{url}' must be scheme://HOST[:PORT] with nothing after it (credentials go in --username/--password)"
        ));
    }
    let default_port = if tls { 8883 } else { 1883 };
    let (host, port) = match rest.rsplit_once(':') {
        // An IPv6 literal without a port: [::1]
        Some((host, port)) if !port.contains(']') => {
            let port = port
                .parse::<u16>()
                .map_err(|_| format!("--mqtt: '{port}' in '{url}' is not a port"))?;
            (host, port)
        }
        _ => (rest, default_port),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("--mqtt: '{url}' names no host"));
    }
    Ok(BrokerUrl {
        tls,
        host: host.to_string(),
        port,
    })
}

/// TLS to the broker: its certificate must chain to `ca_pem` and name the
/// host of the URL; `client` is a certificate chain and key (PEM) for
/// brokers that authenticate clients that way (AWS IoT Core does).
pub fn tls_config(
    ca_pem: &str,
    client: Option<(&str, &str)>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let roots = gantry_pki::certs_from_pem(ca_pem).map_err(|e| format!("--ca-file: {e}"))?;
    if roots.is_empty() {
        return Err("--ca-file holds no certificate".into());
    }
    let verifier = gantry_pki::roots_verifier(&roots).map_err(|e| format!("--ca-file: {e}"))?;
    let identity = match client {
        Some((cert, key)) => Some(
            gantry_pki::Credentials::from_pem(&format!("{key}\n{cert}"))
                .map_err(|e| format!("--client-cert/--client-key: {e}"))?,
        ),
        None => None,
    };
    gantry_pki::client_config(verifier, identity.as_ref(), Vec::new()).map_err(|e| e.to_string())
}

/// What a connection needs beyond the URL.
pub struct Connect<'a> {
    pub client_id: String,
    pub username: Option<&'a str>,
    pub password: Option<&'a str>,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// MQTT keepalive (PINGREQ when idle); `None` for none.
    pub keepalive: Option<Duration>,
    /// Published by the broker, retained, if this connection dies unsaid.
    pub will: Option<(String, &'static str)>,
    /// The largest packet either way.
    pub max_packet: usize,
}

pub fn options(url: &BrokerUrl, connect: Connect<'_>) -> Result<MqttOptions, String> {
    let mut options = MqttOptions::new(connect.client_id, url.host.clone(), url.port);
    // rumqttc counts keepalive in whole seconds (and panics below one).
    let keepalive = connect
        .keepalive
        .map(|k| k.max(Duration::from_secs(1)))
        .unwrap_or(Duration::ZERO);
    options
        .set_keep_alive(keepalive)
        .set_clean_session(true)
        .set_manual_acks(true)
        .set_max_packet_size(connect.max_packet, connect.max_packet);
    if let Some(user) = connect.username {
        options.set_credentials(user, connect.password.unwrap_or_default());
    }
    if let Some((topic, payload)) = connect.will {
        options.set_last_will(LastWill::new(topic, payload, QoS::AtLeastOnce, true));
    }
    match (url.tls, connect.tls) {
        (true, Some(config)) => {
            options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(config)));
        }
        (true, None) => return Err("mqtts:// needs the broker's CA (--ca-file)".into()),
        (false, _) => {}
    }
    Ok(options)
}

/// What a connection's event loop tells its owner.
pub enum Incoming {
    Connected,
    Publish(Publish),
    Failed { error: String, refused: bool },
}

/// Drives rumqttc's event loop (which must be polled for anything to
/// move, the owner's own publishes included) and forwards what matters;
/// ends after the first failure (the owner reconnects with back-off).
pub async fn pump(mut eventloop: EventLoop, tx: mpsc::Sender<Incoming>) {
    loop {
        let incoming = match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => Incoming::Connected,
            Ok(Event::Incoming(Packet::Publish(publish))) => Incoming::Publish(publish),
            Ok(_) => continue,
            Err(ConnectionError::ConnectionRefused(code)) => Incoming::Failed {
                error: format!("the broker refused the connection ({code:?})"),
                refused: true,
            },
            Err(e) => Incoming::Failed {
                error: format!("broker: {e}"),
                refused: false,
            },
        };
        let last = matches!(incoming, Incoming::Failed { .. });
        if tx.send(incoming).await.is_err() || last {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_need_tls_unless_insecure_is_said() {
        assert_eq!(
            parse_url("mqtts://broker.example:8883", false).unwrap(),
            BrokerUrl {
                tls: true,
                host: "broker.example".into(),
                port: 8883
            }
        );
        assert_eq!(parse_url("mqtts://10.0.0.5", false).unwrap().port, 8883);
        assert_eq!(parse_url("mqtt://127.0.0.1", true).unwrap().port, 1883);
        assert!(parse_url("mqtt://127.0.0.1:1883", false)
            .unwrap_err()
            .contains("--insecure"));
        assert_eq!(parse_url("mqtts://[::1]:9", false).unwrap().host, "::1");
        for bad in [
            "http://x",
            "mqtts://",
            "mqtts://u:p@host",
            "mqtts://host:port",
            "mqtts://host/topic",
            "mqtts://host:70000",
        ] {
            assert!(parse_url(bad, true).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_ca_file_must_hold_a_certificate() {
        assert!(tls_config("", None).unwrap_err().contains("--ca-file"));
        assert!(tls_config(
            "-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n",
            None
        )
        .is_err());
    }
}
