//! MQTT 3.1.1 / 5 source and sink configuration (Mosquitto and others, via rumqttc).

use crate::key_error::KeyError;
use serde::Deserialize;

use super::{defaults, ContentMode, Unrouted};
use crate::normalize::NormalizeConfig;
use crate::security::secret::Secret;
use crate::tls::{ClientTlsConfig, ClientTlsError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum MqttProtocol {
    #[default]
    #[serde(rename = "5")]
    V5,
    #[serde(rename = "3.1.1")]
    V311,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSourceConfig {
    /// `mqtt://host:port`.
    pub url: String,
    #[serde(default)]
    pub protocol: MqttProtocol,
    /// Topic filters (`+` and `#` wildcards).
    pub topics: Vec<String>,
    #[serde(default = "defaults::qos")]
    pub qos: u8,
    #[serde(default)]
    pub normalize: Option<NormalizeConfig>,
    #[serde(default)]
    pub unrouted: Unrouted,
    #[serde(default = "defaults::enqueue_timeout_ms")]
    pub enqueue_timeout_ms: u64,
    /// Stable client id of the persistent session; default `ferry-<source name>`.
    #[serde(default)]
    pub client_id: Option<String>,
    /// `false` (default) resumes the session, so messages published while Ferry was away are
    /// delivered when it returns.
    #[serde(default)]
    pub clean_start: bool,
    /// How long the broker keeps the session after a disconnect (MQTT 5 only).
    #[serde(default = "mqtt_defaults::session_expiry_secs")]
    pub session_expiry_secs: u32,
    /// Subscribe as `$share/<group>/<filter>`, so several instances split the messages.
    #[serde(default)]
    pub share_group: Option<String>,
    #[serde(default = "mqtt_defaults::keep_alive_secs")]
    pub keep_alive_secs: u64,
    /// Unacknowledged messages the broker may send at once (MQTT 5 Receive Maximum).
    #[serde(default = "mqtt_defaults::inflight")]
    pub inflight: u16,
    #[serde(default)]
    pub username: Option<String>,
    /// `${ENV}` or `file:<path>`; never logged.
    #[serde(default)]
    pub password: Option<Secret>,
    /// TLS to the broker (needs an `mqtts://` URL): custom CA, client certificate.
    #[serde(default)]
    pub tls: Option<ClientTlsConfig>,
    /// Undecodable/invalid/unrejected messages are published here (QoS 1) before being acked.
    #[serde(default)]
    pub dead_letter_topic: Option<String>,
    #[serde(default = "mqtt_defaults::max_packet_bytes")]
    pub max_packet_bytes: u32,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSinkConfig {
    /// Retries of failed deliveries (docs/delivery.md).
    #[serde(default)]
    pub retry: Option<crate::delivery::RetryConfig>,
    /// A sink that receives the events this sink could not deliver.
    #[serde(default)]
    pub dead_letter: Option<String>,
    /// A durable on-disk log in front of the sink (docs/delivery.md).
    #[serde(default)]
    pub spool: Option<crate::spool::SpoolConfig>,
    /// Marks the sink down after consecutive failures (docs/delivery.md).
    #[serde(default)]
    pub circuit_breaker: crate::delivery::BreakerConfig,
    pub url: String,
    #[serde(default)]
    pub protocol: MqttProtocol,
    /// Topic template over event attributes, e.g. `"ferry/{type}"`.
    pub topic: String,
    /// What happens to an attribute value that would add a level or a wildcard to the
    /// address: `"refuse"` (the event fails permanently) or `"escape"` (percent-encoded).
    #[serde(default)]
    pub template_values: crate::template::TemplateValues,
    #[serde(default = "defaults::qos")]
    pub qos: u8,
    #[serde(default)]
    pub mode: ContentMode,
    #[serde(default = "defaults::queue")]
    pub queue: usize,
    /// Default `ferry-<sink name>-<random>` (a clean session per connection).
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub retain: bool,
    /// Publishes awaiting their PUBACK at once.
    #[serde(default = "defaults::in_flight")]
    pub in_flight: usize,
    /// How long a publish may wait for its PUBACK before the connection is dropped.
    #[serde(default = "defaults::timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "mqtt_defaults::keep_alive_secs")]
    pub keep_alive_secs: u64,
    #[serde(default)]
    pub username: Option<String>,
    /// `${ENV}` or `file:<path>`; never logged.
    #[serde(default)]
    pub password: Option<Secret>,
    #[serde(default = "mqtt_defaults::max_packet_bytes")]
    pub max_packet_bytes: u32,
    /// TLS to the broker (needs an `mqtts://` URL): custom CA, client certificate.
    #[serde(default)]
    pub tls: Option<ClientTlsConfig>,
    /// Signs each event (docs/security.md).
    #[serde(default)]
    pub sign: Option<crate::security::signing::SignConfig>,
}

mod mqtt_defaults {
    pub(super) fn session_expiry_secs() -> u32 {
        86_400
    }
    pub(super) fn keep_alive_secs() -> u64 {
        30
    }
    pub(super) fn inflight() -> u16 {
        64
    }
    pub(super) fn max_packet_bytes() -> u32 {
        1024 * 1024
    }
}

fn err(key: &str, message: impl Into<String>) -> KeyError {
    KeyError::at(key, message)
}

/// Whether a broker URL asks for TLS (`mqtts://` or `ssl://`).
pub(super) fn uses_tls(url: &str) -> bool {
    url.starts_with("mqtts://") || url.starts_with("ssl://")
}

/// Host and port of an `mqtt://host[:port]` (or `tcp://`) URL, or of an `mqtts://` (or
/// `ssl://`) one for TLS; the port defaults to 1883, 8883 with TLS.
pub(super) fn broker_address(url: &str) -> Result<(String, u16), String> {
    let (rest, default_port) = if let Some(rest) = url
        .strip_prefix("mqtt://")
        .or_else(|| url.strip_prefix("tcp://"))
    {
        (rest, 1883)
    } else if let Some(rest) = url
        .strip_prefix("mqtts://")
        .or_else(|| url.strip_prefix("ssl://"))
    {
        (rest, 8883)
    } else {
        return Err("expected mqtt://host[:port] or mqtts://host[:port]".into());
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
        return Err("expected mqtt://host[:port] (credentials go in username/password)".into());
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || rest.starts_with('[') => (
            host,
            port.parse::<u16>()
                .map_err(|_| format!("invalid port {port:?}"))?,
        ),
        _ => (rest, default_port),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err("missing host".into());
    }
    Ok((host.to_owned(), port))
}

/// The TLS configuration a broker URL and `tls` table ask for, loaded (`None`: plain TCP).
pub fn client_tls(
    url: &str,
    tls: Option<&ClientTlsConfig>,
) -> Result<Option<std::sync::Arc<rustls::ClientConfig>>, KeyError> {
    match (uses_tls(url), tls) {
        (false, None) => Ok(None),
        (false, Some(_)) => Err(err("tls", "TLS needs an mqtts:// URL")),
        (true, tls) => tls
            .cloned()
            .unwrap_or_default()
            .client_config(&[])
            .map(Some)
            .map_err(ClientTlsError::into_check),
    }
}

/// Reads the password (from its file, if it is a `file:` reference).
pub fn resolve_password(password: Option<&Secret>) -> Result<Option<String>, KeyError> {
    password
        .map(|p| {
            p.resolve(std::path::Path::new(".")).map_err(|e| {
                let file = p.file().unwrap_or_default();
                err("password", format!("cannot read {file}: {e}"))
            })
        })
        .transpose()
}

fn check_common(url: &str, qos: u8, keep_alive_secs: u64) -> Result<(), KeyError> {
    broker_address(url).map_err(|m| err("url", m))?;
    if qos > 1 {
        return Err(err("qos", "qos must be 0 or 1"));
    }
    if keep_alive_secs < 5 || keep_alive_secs > u64::from(u16::MAX) {
        return Err(err(
            "keep_alive_secs",
            "keep_alive_secs must be between 5 and 65535",
        ));
    }
    Ok(())
}

/// A topic name to publish to: not empty, no wildcards.
fn check_topic_name(key: &str, topic: &str) -> Result<(), KeyError> {
    if topic.is_empty() || topic.contains(['+', '#', '\0']) {
        return Err(err(
            key,
            "a topic name must be non-empty and have no `+`/`#` wildcards",
        ));
    }
    Ok(())
}

impl MqttSourceConfig {
    /// Host and port of `url`.
    pub fn broker_address(&self) -> Result<(String, u16), String> {
        broker_address(&self.url)
    }

    pub fn check(&self) -> Result<(), KeyError> {
        check_common(&self.url, self.qos, self.keep_alive_secs)?;
        if self.topics.is_empty() {
            return Err(err("topics", "at least one topic filter is required"));
        }
        for (i, filter) in self.topics.iter().enumerate() {
            if !valid_filter(filter) {
                return Err(KeyError::new(vec!["topics".into(), i.to_string()], format!("invalid topic filter {filter:?}: `#` must be last and `+`/`#` fill a whole level")));
            }
        }
        if let Some(group) = &self.share_group {
            if group.is_empty() || group.contains(['/', '+', '#']) {
                return Err(err(
                    "share_group",
                    "share_group must be non-empty without `/`, `+` or `#`",
                ));
            }
        }
        if self.client_id.as_deref() == Some("") {
            return Err(err("client_id", "client_id must not be empty"));
        }
        if self.inflight == 0 {
            return Err(err("inflight", "inflight must be greater than 0"));
        }
        if let Some(t) = &self.dead_letter_topic {
            check_topic_name("dead_letter_topic", t)?;
        }
        if self.password.is_some() && self.username.is_none() {
            return Err(err("password", "password needs a username"));
        }
        resolve_password(self.password.as_ref())?;
        client_tls(&self.url, self.tls.as_ref())?;
        Ok(())
    }
}

/// `+` and `#` occupy a whole level, `#` only the last one.
fn valid_filter(filter: &str) -> bool {
    if filter.is_empty() {
        return false;
    }
    let levels: Vec<&str> = filter.split('/').collect();
    levels.iter().enumerate().all(|(i, level)| match *level {
        "+" => true,
        "#" => i == levels.len() - 1,
        l => !l.contains(['+', '#']),
    })
}

impl MqttSinkConfig {
    /// Host and port of `url`.
    pub fn broker_address(&self) -> Result<(String, u16), String> {
        broker_address(&self.url)
    }

    pub fn check(&self) -> Result<(), KeyError> {
        check_common(&self.url, self.qos, self.keep_alive_secs)?;
        if self.protocol == MqttProtocol::V311 && self.mode == ContentMode::Binary {
            return Err(err(
                "mode",
                "MQTT 3.1.1 has no user properties: use mode = \"structured\" or protocol = \"5\"",
            ));
        }
        let template =
            crate::template::Template::parse(&self.topic).map_err(|m| err("topic", m))?;
        if let Some(literal) = template.as_literal() {
            check_topic_name("topic", literal)?;
        } else if self.topic.contains(['+', '#']) {
            return Err(err(
                "topic",
                "a topic template must not contain `+`/`#` wildcards",
            ));
        }
        if self.in_flight == 0 {
            return Err(err("in_flight", "in_flight must be greater than 0"));
        }
        if self.client_id.as_deref() == Some("") {
            return Err(err("client_id", "client_id must not be empty"));
        }
        if self.password.is_some() && self.username.is_none() {
            return Err(err("password", "password needs a username"));
        }
        resolve_password(self.password.as_ref())?;
        client_tls(&self.url, self.tls.as_ref())?;
        if let Some(sign) = &self.sign {
            sign.check_event_signing().map_err(|e| e.under(&["sign"]))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            broker_address("mqtt://127.0.0.1:1883"),
            Ok(("127.0.0.1".into(), 1883))
        );
        assert_eq!(broker_address("mqtt://broker"), Ok(("broker".into(), 1883)));
        assert_eq!(
            broker_address("tcp://[::1]:1884/"),
            Ok(("::1".into(), 1884))
        );
        assert_eq!(
            broker_address("mqtts://localhost"),
            Ok(("localhost".into(), 8883))
        );
        assert_eq!(broker_address("ssl://h:9"), Ok(("h".into(), 9)));
        assert!(uses_tls("mqtts://h") && !uses_tls("mqtt://h"));
        assert!(broker_address("http://x").is_err());
        assert!(broker_address("mqtt://u:p@x").is_err());
        assert!(broker_address("mqtt://x:port").is_err());
    }

    #[test]
    fn passwords_are_secrets_and_may_come_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("jwt");
        std::fs::write(&file, "eyJhbGciOi.token\n").unwrap();
        let sink: MqttSinkConfig = toml::from_str(&format!(
            "url = \"mqtt://127.0.0.1\"\ntopic = \"t\"\nusername = \"ferry\"\npassword = \"file:{}\"",
            file.display()
        ))
        .unwrap();
        assert!(sink.check().is_ok());
        assert_eq!(
            resolve_password(sink.password.as_ref()).unwrap().as_deref(),
            Some("eyJhbGciOi.token")
        );
        assert!(!format!("{sink:?}").contains("eyJ"));
        let missing: MqttSinkConfig = toml::from_str(
            "url = \"mqtt://127.0.0.1\"\ntopic = \"t\"\nusername = \"u\"\npassword = \"file:/nonexistent/p\"",
        )
        .unwrap();
        assert_eq!(missing.check().unwrap_err().key, vec!["password"]);
    }

    #[test]
    fn filters() {
        for ok in ["a/b", "a/+/c", "#", "a/#", "+", "$share/g/a/+"] {
            assert!(valid_filter(ok), "{ok}");
        }
        for bad in ["", "a/#/c", "a+/b", "a/b#"] {
            assert!(!valid_filter(bad), "{bad}");
        }
    }
}
