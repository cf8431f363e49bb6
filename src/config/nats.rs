//! NATS (core and JetStream) source and sink configuration (via async-nats).

use serde::Deserialize;

use super::{defaults, ContentMode, Unrouted};
use crate::normalize::NormalizeConfig;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSourceConfig {
    /// `nats://host:port`.
    pub url: String,
    /// Subject filter (`*` and `>` wildcards).
    pub subject: String,
    /// Core NATS queue group: instances in one group share the messages.
    #[serde(default)]
    pub queue_group: Option<String>,
    #[serde(default)]
    pub normalize: Option<NormalizeConfig>,
    #[serde(default)]
    pub unrouted: Unrouted,
    #[serde(default = "defaults::enqueue_timeout_ms")]
    pub enqueue_timeout_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSinkConfig {
    pub url: String,
    /// Subject template over event attributes, e.g. `"events.{type}"`.
    pub subject: String,
    /// Publish to JetStream and wait for its acknowledgement.
    #[serde(default)]
    pub jetstream: bool,
    #[serde(default)]
    pub mode: ContentMode,
    #[serde(default = "defaults::queue")]
    pub queue: usize,
}

impl NatsSourceConfig {
    pub fn check(&self) -> Result<(), (Vec<String>, String)> {
        Ok(())
    }
}

impl NatsSinkConfig {
    pub fn check(&self) -> Result<(), (Vec<String>, String)> {
        Ok(())
    }
}
