//! The cloud link over an MQTT broker, for fleets that already run one
//! (Mosquitto, EMQX, HiveMQ, AWS IoT Core, ...): the device-twin pattern of
//! Azure IoT Edge and KubeEdge, with the guarantees of the gRPC link. The
//! cloud publishes the whole desired state, retained, to `{prefix}desired`;
//! the site's leader commits it through Raft and only then acknowledges the
//! message (PUBACK) and says so on `{prefix}reported`, where the status
//! also goes (the whole truth after each connect, retained, then changes
//! and digests). `{prefix}online` holds `true` while a leader is connected
//! and the broker's last will sets it to `false`. Anything can publish to
//! `{prefix}resync` to get the whole truth again.
//!
//! - `wire`: the JSON documents on those topics.
//! - `broker`: broker URLs, TLS and connection options.

pub mod broker;
pub mod wire;

use gantry_proto::v1::CloudAttachRequest;

use crate::state::MqttLink;

/// The fields the site's password and client key are sealed under.
pub const PASSWORD_FIELD: &str = "mqtt-password";
pub const CLIENT_KEY_FIELD: &str = "mqtt-client-key";

/// Checks a `cloud attach --mqtt` request before anything is stored (a bad
/// URL, CA or key is refused now, not at the first connect) and turns it
/// into the replicated link, secrets sealed by `seal`.
pub fn attach_settings(
    request: &CloudAttachRequest,
    seal: impl Fn(&str, &[u8]) -> Result<String, String>,
) -> Result<(String, MqttLink), String> {
    if !request.hub.is_empty() {
        return Err("--hub and --mqtt: a site has one link, name one of them".into());
    }
    let url = broker::parse_url(&request.mqtt, request.mqtt_insecure)?;
    let prefix = if request.mqtt_topic_prefix.is_empty() {
        check_prefix(&default_prefix(&request.site))
            .map_err(|e| format!("site '{}' cannot be part of a topic: {e}", request.site))?
    } else {
        check_prefix(&request.mqtt_topic_prefix)?
    };
    let given = |text: &str| (!text.trim().is_empty()).then(|| text.to_string());
    let username = given(&request.mqtt_username);
    let password = given(&request.mqtt_password);
    if password.is_some() && username.is_none() {
        return Err("--password needs --username (MQTT sends no password alone)".into());
    }
    let ca_pem = given(&request.mqtt_ca_pem);
    let client = match (
        given(&request.mqtt_client_cert_pem),
        given(&request.mqtt_client_key_pem),
    ) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => return Err("--client-cert and --client-key go together".into()),
    };
    if url.tls {
        let ca = ca_pem
            .as_deref()
            .ok_or("mqtts:// needs the broker's CA bundle (--ca-file)")?;
        broker::tls_config(ca, client.as_ref().map(|(c, k)| (c.as_str(), k.as_str())))?;
    } else if client.is_some() || ca_pem.is_some() {
        return Err("--ca-file and --client-cert are for mqtts:// brokers".into());
    }
    let mqtt = MqttLink {
        prefix,
        username,
        password_sealed: password
            .map(|p| seal(PASSWORD_FIELD, p.as_bytes()))
            .transpose()?,
        ca_pem,
        client_cert_pem: client.as_ref().map(|(cert, _)| cert.clone()),
        client_key_sealed: client
            .map(|(_, key)| seal(CLIENT_KEY_FIELD, key.as_bytes()))
            .transpose()?,
    };
    Ok((request.mqtt.clone(), mqtt))
}

/// The topics of one site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    pub desired: String,
    pub reported: String,
    pub online: String,
    pub resync: String,
}

impl Topics {
    pub fn new(prefix: &str) -> Self {
        Self {
            desired: format!("{prefix}desired"),
            reported: format!("{prefix}reported"),
            online: format!("{prefix}online"),
            resync: format!("{prefix}resync"),
        }
    }
}

/// `gantry/sites/SITE/` unless `cloud attach --topic-prefix` says otherwise.
pub fn default_prefix(site: &str) -> String {
    format!("gantry/sites/{site}/")
}

/// A prefix the topics can be built on: no wildcards, no NUL, ending in `/`.
pub fn check_prefix(prefix: &str) -> Result<String, String> {
    if prefix.is_empty() {
        return Err("--topic-prefix is empty".into());
    }
    if prefix.contains(['+', '#', '\0']) {
        return Err(format!(
            "--topic-prefix '{prefix}' holds a wildcard (+ or #) or NUL, which topics cannot"
        ));
    }
    Ok(if prefix.ends_with('/') {
        prefix.to_string()
    } else {
        format!("{prefix}/")
    })
}

/// The client id every leader of `site` uses: the broker drops an older
/// connection under the same id, which fences a deposed leader.
pub fn client_id(site: &str) -> String {
    format!("gantry-site-{site}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_hang_under_the_prefix() {
        let topics = Topics::new(&default_prefix("plant-7"));
        assert_eq!(topics.desired, "gantry/sites/plant-7/desired");
        assert_eq!(topics.reported, "gantry/sites/plant-7/reported");
        assert_eq!(topics.online, "gantry/sites/plant-7/online");
        assert_eq!(topics.resync, "gantry/sites/plant-7/resync");
    }

    #[test]
    fn prefixes_get_a_slash_and_wildcards_are_refused() {
        assert_eq!(check_prefix("fleet/a").unwrap(), "fleet/a/");
        assert_eq!(check_prefix("fleet/a/").unwrap(), "fleet/a/");
        assert!(check_prefix("fleet/+/").unwrap_err().contains("wildcard"));
        assert!(check_prefix("").is_err());
    }
}
