//! `type = "mqtt-server"`: the device listener (a source devices connect to) and the sink
//! that sends commands back through its sessions.

use std::net::SocketAddr;

use serde::Deserialize;

use super::source::{check_path, check_tls, positive};
use super::Unrouted;
use crate::key_error::KeyError;
use crate::normalize::NormalizeConfig;

/// `[sources.<name>]` with `type = "mqtt-server"`: devices connect to Ferry itself.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttServerSourceConfig {
    /// MQTT over TCP, or over TLS when `tls` is set.
    pub listen: SocketAddr,
    /// MQTT over WebSocket (subprotocol `mqtt`).
    #[serde(default)]
    pub websocket: Option<MqttWebSocketConfig>,
    #[serde(default)]
    pub tls: Option<crate::tls::TlsConfig>,
    /// Topic filters devices may publish to; a publish to any other topic is refused.
    pub topics: Vec<String>,
    /// Per-connection topic patterns (`{client_id}`, `{username}`, `{principal}`).
    #[serde(default)]
    pub acl: AclConfig,
    #[serde(default)]
    pub normalize: Option<NormalizeConfig>,
    /// Largest MQTT packet, fixed header included, either way.
    #[serde(default = "defaults::max_packet_bytes")]
    pub max_packet_bytes: u32,
    /// QoS 1 and 2 publishes a connection may have unacknowledged (MQTT 5 Receive Maximum;
    /// the read window of a 3.1.1 connection).
    #[serde(default = "defaults::receive_maximum")]
    pub receive_maximum: u16,
    #[serde(default = "defaults::max_connections")]
    pub max_connections: usize,
    /// The longest keep-alive a device may ask for; 0 (none) is raised to it, and an MQTT 5
    /// device asking for more is told this value (Server Keep Alive).
    #[serde(default = "defaults::keep_alive_max_secs")]
    pub keep_alive_max_secs: u16,
    /// How long a new connection may take to send its CONNECT.
    #[serde(default = "defaults::connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// MQTT 5 topic aliases a device may use (Topic Alias Maximum); 0 turns them off.
    #[serde(default = "defaults::topic_alias_maximum")]
    pub topic_alias_maximum: u16,
    /// The longest session expiry a device may ask for (MQTT 5), and the expiry of 3.1.1
    /// sessions with clean session 0.
    #[serde(default = "defaults::session_expiry_max_secs")]
    pub session_expiry_max_secs: u32,
    /// Most sessions kept, connected or not.
    #[serde(default = "defaults::max_sessions")]
    pub max_sessions: usize,
    /// Subscriptions per session.
    #[serde(default = "defaults::max_subscriptions")]
    pub max_subscriptions: usize,
    #[serde(default)]
    pub rate_limit: Option<crate::security::ratelimit::RateLimitConfig>,
    #[serde(default)]
    pub auth: Option<crate::security::source::AuthConfig>,
    /// Refuse principals that no policy names.
    #[serde(default)]
    pub require_policy: bool,
    #[serde(default)]
    pub unrouted: Unrouted,
    /// How long a publish waits for its sinks before the device is answered with a failure.
    #[serde(default = "super::defaults::ack_timeout_ms")]
    pub ack_timeout_ms: u64,
    /// How long a publish waits for room in a full sink queue.
    #[serde(default = "super::defaults::enqueue_timeout_ms")]
    pub enqueue_timeout_ms: u64,
    /// How long a write to a device may take before the connection is given up.
    #[serde(default = "defaults::write_timeout_ms")]
    pub write_timeout_ms: u64,
    /// Messages (commands) queued per session: for a connected device waiting to be sent,
    /// for a persistent session while its device is away (QoS 1 only).
    #[serde(default = "defaults::max_queued_messages")]
    pub max_queued_messages: usize,
    /// Bytes of payload queued per session.
    #[serde(default = "defaults::max_queued_bytes")]
    pub max_queued_bytes: usize,
    /// Bytes of payload queued for all sessions of the listener together.
    #[serde(default = "defaults::max_queued_bytes_total")]
    pub max_queued_bytes_total: usize,
}

/// `[sinks.<name>]` with `type = "mqtt-server"`: commands to devices, through the sessions of
/// an `mqtt-server` source.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttServerSinkConfig {
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
    #[serde(default = "super::defaults::queue")]
    pub queue: usize,
    /// Commands under way at once (each waits for its recipients' PUBACKs).
    #[serde(default = "super::defaults::in_flight")]
    pub in_flight: usize,
    /// The `mqtt-server` source whose sessions receive the messages.
    pub server: String,
    /// The topic, rendered from the event (`commands/{subject}`).
    pub topic: String,
    /// What an attribute value with `/`, `+` or `#` does to the topic: `"refuse"` or
    /// `"escape"`.
    #[serde(default)]
    pub template_values: crate::template::TemplateValues,
    /// 0 or 1; a subscription granted at QoS 0 gets QoS 0.
    #[serde(default = "defaults::sink_qos")]
    pub qos: u8,
    /// `binary`, `structured`, or `data` (the payload is the event's data only). A 3.1.1
    /// session gets structured where binary is asked.
    #[serde(default)]
    pub mode: CommandMode,
    /// With no session subscribed to the topic, fail the delivery (retry, dead letter)
    /// instead of confirming it.
    #[serde(default)]
    pub require_subscriber: bool,
    /// How long QoS 1 recipients have to PUBACK.
    #[serde(default = "defaults::command_ack_timeout_ms")]
    pub ack_timeout_ms: u64,
}

/// How the command sink lays an event out in a PUBLISH.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CommandMode {
    #[default]
    Binary,
    Structured,
    /// The payload is the event's data only, for devices that do not speak CloudEvents
    /// (MQTT 5: `datacontenttype` as the Content Type).
    Data,
}

/// `websocket = { listen, path }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttWebSocketConfig {
    pub listen: SocketAddr,
    #[serde(default = "defaults::websocket_path")]
    pub path: String,
}

/// `acl = { publish = [...], subscribe = [...] }`: topic filters with `{client_id}`,
/// `{username}` and `{principal}`; empty means "no restriction beyond `topics`".
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclConfig {
    #[serde(default)]
    pub publish: Vec<String>,
    #[serde(default)]
    pub subscribe: Vec<String>,
}

mod defaults {
    pub(super) fn max_packet_bytes() -> u32 {
        1024 * 1024
    }
    pub(super) fn receive_maximum() -> u16 {
        64
    }
    pub(super) fn max_connections() -> usize {
        10_000
    }
    pub(super) fn keep_alive_max_secs() -> u16 {
        300
    }
    pub(super) fn connect_timeout_ms() -> u64 {
        10_000
    }
    pub(super) fn topic_alias_maximum() -> u16 {
        16
    }
    pub(super) fn session_expiry_max_secs() -> u32 {
        3600
    }
    pub(super) fn max_sessions() -> usize {
        20_000
    }
    pub(super) fn max_subscriptions() -> usize {
        16
    }
    pub(super) fn write_timeout_ms() -> u64 {
        30_000
    }
    pub(super) fn max_queued_messages() -> usize {
        100
    }
    pub(super) fn max_queued_bytes() -> usize {
        1024 * 1024
    }
    pub(super) fn max_queued_bytes_total() -> usize {
        64 * 1024 * 1024
    }
    pub(super) fn sink_qos() -> u8 {
        1
    }
    pub(super) fn command_ack_timeout_ms() -> u64 {
        10_000
    }
    pub(super) fn websocket_path() -> String {
        "/mqtt".into()
    }
}

impl MqttServerSourceConfig {
    pub(super) fn check(&self) -> Result<(), KeyError> {
        if self.topics.is_empty() {
            return Err(KeyError::at(
                "topics",
                "name at least one topic filter devices may publish to",
            ));
        }
        for (i, filter) in self.topics.iter().enumerate() {
            if !crate::topic::valid_filter(filter) {
                return Err(KeyError::new(
                    vec!["topics".into(), i.to_string()],
                    format!("`{filter}` is not a valid MQTT topic filter"),
                ));
            }
        }
        for (key, patterns) in [
            ("publish", &self.acl.publish),
            ("subscribe", &self.acl.subscribe),
        ] {
            for (i, p) in patterns.iter().enumerate() {
                crate::topic::AclPattern::parse(p)
                    .map_err(|m| KeyError::new(vec!["acl".into(), key.into(), i.to_string()], m))?;
            }
        }
        for (key, v) in [
            ("max_connections", self.max_connections as u64),
            ("receive_maximum", u64::from(self.receive_maximum)),
            ("keep_alive_max_secs", u64::from(self.keep_alive_max_secs)),
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("max_sessions", self.max_sessions as u64),
            ("max_subscriptions", self.max_subscriptions as u64),
            ("ack_timeout_ms", self.ack_timeout_ms),
            ("write_timeout_ms", self.write_timeout_ms),
            ("max_queued_messages", self.max_queued_messages as u64),
            ("max_queued_bytes", self.max_queued_bytes as u64),
            ("max_queued_bytes_total", self.max_queued_bytes_total as u64),
        ] {
            positive(key, v)?;
        }
        // A CONNECT with its credentials must fit, and the limit is a 4-byte varint at most.
        if !(128..=268_435_460).contains(&self.max_packet_bytes) {
            return Err(KeyError::at(
                "max_packet_bytes",
                "max_packet_bytes must be between 128 and 268435460",
            ));
        }
        if let Some(ws) = &self.websocket {
            check_path(&ws.path).map_err(|e| e.under(&["websocket"]))?;
            if ws.listen == self.listen && ws.listen.port() != 0 {
                return Err(KeyError::new(
                    vec!["websocket".into(), "listen".into()],
                    "the WebSocket listener needs an address of its own",
                ));
            }
        }
        check_tls(self.tls.as_ref())?;
        if let Some(auth) = &self.auth {
            if auth.hmac.is_some() {
                return Err(KeyError::new(
                    vec!["auth".into(), "hmac".into()],
                    "MQTT devices do not sign requests: use mtls, jwt or passwords",
                ));
            }
            auth.check().map_err(|e| e.under(&["auth"]))?;
            if auth.mtls && self.tls.as_ref().is_none_or(|t| t.client_ca.is_none()) {
                return Err(KeyError::new(
                    vec!["auth".into(), "mtls".into()],
                    "mtls = true needs tls.client_ca (the CA device certificates chain to)",
                ));
            }
        }
        Ok(())
    }
}

impl MqttServerSinkConfig {
    pub(super) fn check(&self) -> Result<(), KeyError> {
        if self.qos > 1 {
            return Err(KeyError::at(
                "qos",
                "qos must be 0 or 1 (commands go out at QoS 0 or 1)",
            ));
        }
        positive("ack_timeout_ms", self.ack_timeout_ms)?;
        positive("queue", self.queue as u64)?;
        positive("in_flight", self.in_flight as u64)?;
        crate::template::Template::parse(&self.topic)
            .map(|_| ())
            .map_err(|m| KeyError::at("topic", m))
    }
}
