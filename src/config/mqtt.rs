//! MQTT 3.1.1 / 5 source and sink configuration (Mosquitto and others, via rumqttc).

use serde::Deserialize;

use super::{defaults, ContentMode, Unrouted};
use crate::normalize::NormalizeConfig;

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
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSinkConfig {
    pub url: String,
    #[serde(default)]
    pub protocol: MqttProtocol,
    /// Topic template over event attributes, e.g. `"ferry/{type}"`.
    pub topic: String,
    #[serde(default = "defaults::qos")]
    pub qos: u8,
    #[serde(default)]
    pub mode: ContentMode,
    #[serde(default = "defaults::queue")]
    pub queue: usize,
}

impl MqttSourceConfig {
    pub fn check(&self) -> Result<(), (Vec<String>, String)> {
        Ok(())
    }
}

impl MqttSinkConfig {
    pub fn check(&self) -> Result<(), (Vec<String>, String)> {
        Ok(())
    }
}
