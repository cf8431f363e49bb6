//! WebSocket source and sink configuration.

use std::net::SocketAddr;

use serde::Deserialize;

use super::{defaults, Unrouted};
use crate::normalize::NormalizeConfig;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebSocketSourceConfig {
    pub listen: SocketAddr,
    /// The path clients connect to.
    #[serde(default = "defaults::path")]
    pub path: String,
    /// Larger messages close the connection with 1009 (message too big).
    #[serde(default = "defaults::max_body_bytes")]
    pub max_message_bytes: usize,
    /// More connections are refused with 503.
    #[serde(default = "defaults::max_connections")]
    pub max_connections: usize,
    /// Events of one connection in flight (received, not yet acknowledged); at the limit the
    /// source stops reading that connection.
    #[serde(default = "defaults::ws_in_flight")]
    pub max_in_flight: usize,
    /// A connection that sends nothing (not even a pong) for this long is closed.
    #[serde(default = "defaults::idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// How often the server pings.
    #[serde(default = "defaults::ping_interval_ms")]
    pub ping_interval_ms: u64,
    /// TLS (and mTLS) for the listener.
    #[serde(default)]
    pub tls: Option<crate::tls::TlsConfig>,
    /// Authentication of clients, checked at the upgrade.
    #[serde(default)]
    pub auth: Option<crate::security::source::AuthConfig>,
    /// Rate limit per principal, client IP or source (per event).
    #[serde(default)]
    pub rate_limit: Option<crate::security::ratelimit::RateLimitConfig>,
    /// Refuse principals that no policy names.
    #[serde(default)]
    pub require_policy: bool,
    /// With a template, clients that offer no CloudEvents subprotocol may send raw messages.
    #[serde(default)]
    pub normalize: Option<NormalizeConfig>,
    #[serde(default)]
    pub unrouted: Unrouted,
    #[serde(default = "defaults::ack_timeout_ms")]
    pub ack_timeout_ms: u64,
    #[serde(default = "defaults::enqueue_timeout_ms")]
    pub enqueue_timeout_ms: u64,
}

/// What the push sink does when a subscriber's queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SlowClient {
    /// Drop the oldest queued event (counted in `ferry_websocket_dropped_total`).
    #[default]
    DropOldest,
    /// Close the connection with 1008.
    Disconnect,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebSocketSinkConfig {
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
    pub listen: SocketAddr,
    #[serde(default = "defaults::path")]
    pub path: String,
    /// Events queued per subscriber (and for the sink itself).
    #[serde(default = "defaults::queue")]
    pub queue: usize,
    #[serde(default)]
    pub slow_client: SlowClient,
    #[serde(default = "defaults::max_connections")]
    pub max_connections: usize,
    #[serde(default = "defaults::ping_interval_ms")]
    pub ping_interval_ms: u64,
    /// TLS for the listener.
    #[serde(default)]
    pub tls: Option<crate::tls::TlsConfig>,
    /// Authentication of subscribers, as for a source's senders (`mtls`, `jwt`).
    #[serde(default)]
    pub auth: Option<crate::security::source::AuthConfig>,
    /// Refuse subscribers that no policy names.
    #[serde(default)]
    pub require_policy: bool,
    /// Longest `filter` or `cesql` parameter a subscriber may give.
    #[serde(default = "max_filter_bytes")]
    pub max_filter_bytes: usize,
}

fn max_filter_bytes() -> usize {
    4096
}
