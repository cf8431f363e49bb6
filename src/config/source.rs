//! `[sources.<name>]`: the source kinds, and the HTTP source's table.

use serde::Deserialize;

use super::*;

/// A source: where events come in.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SourceConfig {
    Http(HttpSourceConfig),
    Amqp(AmqpSourceConfig),
    Mqtt(MqttSourceConfig),
    Nats(NatsSourceConfig),
    Websocket(WebSocketSourceConfig),
    #[serde(rename = "mqtt-server")]
    MqttServer(MqttServerSourceConfig),
}

impl SourceConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            SourceConfig::Http(_) => "http",
            SourceConfig::Amqp(_) => "amqp",
            SourceConfig::Mqtt(_) => "mqtt",
            SourceConfig::Nats(_) => "nats",
            SourceConfig::Websocket(_) => "websocket",
            SourceConfig::MqttServer(_) => "mqtt-server",
        }
    }

    /// The socket address this source listens on, if it listens.
    pub fn listen(&self) -> Option<SocketAddr> {
        match self {
            SourceConfig::Http(c) => Some(c.listen),
            SourceConfig::Websocket(c) => Some(c.listen),
            SourceConfig::MqttServer(c) => Some(c.listen),
            SourceConfig::Amqp(_) | SourceConfig::Mqtt(_) | SourceConfig::Nats(_) => None,
        }
    }

    /// Every address this source listens on, with the key that names it.
    pub fn listeners(&self) -> Vec<(SocketAddr, &'static [&'static str])> {
        let mut out: Vec<(SocketAddr, &'static [&'static str])> = Vec::new();
        if let Some(addr) = self.listen() {
            out.push((addr, &["listen"]));
        }
        if let SourceConfig::MqttServer(c) = self {
            if let Some(ws) = &c.websocket {
                out.push((ws.listen, &["websocket", "listen"]));
            }
        }
        out
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSourceConfig {
    pub listen: SocketAddr,
    /// The path events are POSTed to.
    #[serde(default = "defaults::path")]
    pub path: String,
    #[serde(default = "defaults::max_body_bytes")]
    pub max_body_bytes: usize,
    /// What to do with an event no route matches.
    #[serde(default)]
    pub unrouted: Unrouted,
    /// How long a request waits for its sinks to confirm before answering 504.
    #[serde(default = "defaults::ack_timeout_ms")]
    pub ack_timeout_ms: u64,
    /// How long a request waits for room in a full sink queue before answering 503.
    #[serde(default = "defaults::enqueue_timeout_ms")]
    pub enqueue_timeout_ms: u64,
    /// Most concurrent requests in progress; more wait for a slot (up to
    /// `enqueue_timeout_ms`, then 503).
    #[serde(default = "defaults::max_concurrent_requests")]
    pub max_concurrent_requests: usize,
    /// Most open connections; one more is closed at once.
    #[serde(default = "defaults::max_connections")]
    pub max_connections: usize,
    /// How long a request head may take, from the connection opening or its first byte.
    #[serde(default = "defaults::header_read_timeout_ms")]
    pub header_read_timeout_ms: u64,
    /// How long reading a request body may take before 408.
    #[serde(default = "defaults::body_read_timeout_ms")]
    pub body_read_timeout_ms: u64,
    /// How long a connection with no request in progress stays open without traffic.
    #[serde(default = "defaults::idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// TLS (and mTLS) for the listener.
    #[serde(default)]
    pub tls: Option<crate::tls::TlsConfig>,
    /// Authentication of senders.
    #[serde(default)]
    pub auth: Option<crate::security::source::AuthConfig>,
    /// Rate limit per principal, client IP or source.
    #[serde(default)]
    pub rate_limit: Option<crate::security::ratelimit::RateLimitConfig>,
    /// Refuse principals that no policy names.
    #[serde(default)]
    pub require_policy: bool,
    /// Builds events from requests that are not CloudEvents (third-party webhooks).
    #[serde(default)]
    pub normalize: Option<NormalizeConfig>,
    /// The answer to the CloudEvents Web Hook validation handshake (`OPTIONS`).
    #[serde(default)]
    pub webhook: WebhookConfig,
}

impl SourceConfig {
    /// The source's own rules; keys below the source.
    pub(super) fn check(&self) -> Result<(), KeyError> {
        let normalize = match self {
            SourceConfig::Http(c) => {
                c.check()?;
                &c.normalize
            }
            SourceConfig::Amqp(c) => {
                c.check()?;
                &c.normalize
            }
            SourceConfig::Mqtt(c) => {
                c.check()?;
                &c.normalize
            }
            SourceConfig::Nats(c) => {
                c.check()?;
                &c.normalize
            }
            SourceConfig::Websocket(c) => {
                c.check()?;
                &c.normalize
            }
            SourceConfig::MqttServer(c) => {
                c.check()?;
                &c.normalize
            }
        };
        if let Some(n) = normalize {
            crate::normalize::Normalizer::compile(n)
                .map_err(|(key, message)| KeyError::new(vec!["normalize".into(), key], message))?;
        }
        Ok(())
    }
}

impl HttpSourceConfig {
    fn check(&self) -> Result<(), KeyError> {
        check_path(&self.path)?;
        for (key, v) in [
            ("max_body_bytes", self.max_body_bytes as u64),
            (
                "max_concurrent_requests",
                self.max_concurrent_requests as u64,
            ),
            ("max_connections", self.max_connections as u64),
            ("header_read_timeout_ms", self.header_read_timeout_ms),
            ("body_read_timeout_ms", self.body_read_timeout_ms),
            ("idle_timeout_ms", self.idle_timeout_ms),
        ] {
            positive(key, v)?;
        }
        self.webhook.check()?;
        check_listener(self.tls.as_ref(), self.auth.as_ref())
    }
}

impl WebSocketSourceConfig {
    fn check(&self) -> Result<(), KeyError> {
        check_path(&self.path)?;
        for (key, v) in [
            ("max_message_bytes", self.max_message_bytes),
            ("max_connections", self.max_connections),
            ("max_in_flight", self.max_in_flight),
        ] {
            positive(key, v as u64)?;
        }
        if self.ping_interval_ms == 0 || self.ping_interval_ms >= self.idle_timeout_ms {
            return Err(KeyError::at(
                "ping_interval_ms",
                "ping_interval_ms must be greater than 0 and less than idle_timeout_ms",
            ));
        }
        check_listener(self.tls.as_ref(), self.auth.as_ref())
    }
}

/// A listener's path.
pub(super) fn check_path(path: &str) -> Result<(), KeyError> {
    if path.starts_with('/') {
        Ok(())
    } else {
        Err(KeyError::at("path", "path must start with `/`"))
    }
}

/// A count or duration that must not be 0.
pub(super) fn positive(key: &str, value: u64) -> Result<(), KeyError> {
    if value == 0 {
        Err(KeyError::at(key, format!("{key} must be greater than 0")))
    } else {
        Ok(())
    }
}

/// A listener's `tls` (its certificate, key and client CA load) and `auth` (the HMAC and
/// JWT settings, keys and secrets load; `mtls` has a client CA to verify against), as the
/// listener would build them at start.
pub(super) fn check_listener(
    tls: Option<&crate::tls::TlsConfig>,
    auth: Option<&crate::security::source::AuthConfig>,
) -> Result<(), KeyError> {
    check_tls(tls)?;
    if auth.is_some_and(|a| a.mtls) && tls.is_none_or(|t| t.client_ca.is_none()) {
        return Err(KeyError::new(
            vec!["auth".into(), "mtls".into()],
            "mtls = true needs tls.client_ca (the CA client certificates chain to)",
        ));
    }
    check_auth(auth)
}

/// A listener's TLS material, loaded as at start.
pub(super) fn check_tls(tls: Option<&crate::tls::TlsConfig>) -> Result<(), KeyError> {
    match tls {
        Some(t) => crate::tls::server_config(t, &[])
            .map(|_| ())
            .map_err(|e| KeyError::at("tls", e.to_string())),
        None => Ok(()),
    }
}

/// Checks a source's `auth` table (HMAC settings and secrets); keys below the source.
pub(super) fn check_auth(
    auth: Option<&crate::security::source::AuthConfig>,
) -> Result<(), KeyError> {
    match auth {
        Some(auth) if !auth.passwords.is_empty() => Err(KeyError::new(
            vec!["auth".into(), "passwords".into()],
            "passwords authenticate MQTT devices: they belong to `mqtt-server` sources",
        )),
        Some(auth) => auth.check().map_err(|e| e.under(&["auth"])),
        None => Ok(()),
    }
}
