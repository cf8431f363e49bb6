//! AMQP 0-9-1 source and sink configuration (RabbitMQ, via lapin).

use serde::Deserialize;

use super::{defaults, ContentMode, Unrouted};
use crate::normalize::NormalizeConfig;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSourceConfig {
    /// `amqp://user:pass@host:port/vhost` (vhost `/` is `%2f`).
    pub url: String,
    /// The queue to consume.
    pub queue: String,
    /// Unacknowledged messages in flight (`basic.qos` prefetch count).
    #[serde(default = "defaults::prefetch")]
    pub prefetch: u16,
    /// Builds events from messages that are not CloudEvents; without it they are rejected.
    #[serde(default)]
    pub normalize: Option<NormalizeConfig>,
    #[serde(default)]
    pub unrouted: Unrouted,
    #[serde(default = "defaults::enqueue_timeout_ms")]
    pub enqueue_timeout_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSinkConfig {
    pub url: String,
    /// The exchange to publish to (`""` is the default exchange).
    pub exchange: String,
    /// Routing-key template over event attributes, e.g. `"{type}"` or `"events.{source}"`.
    #[serde(default = "defaults::routing_key")]
    pub routing_key: String,
    #[serde(default)]
    pub mode: ContentMode,
    #[serde(default = "defaults::queue")]
    pub queue: usize,
}

impl AmqpSourceConfig {
    /// Protocol-specific checks; the key is relative to the component.
    pub fn check(&self) -> Result<(), (Vec<String>, String)> {
        Ok(())
    }
}

impl AmqpSinkConfig {
    pub fn check(&self) -> Result<(), (Vec<String>, String)> {
        Ok(())
    }
}
