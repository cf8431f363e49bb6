//! MQTT source (in progress).

use super::{SourceContext, SourceError};
use crate::config::MqttSourceConfig;

/// Starts consuming in the background; reconnects on its own. Readiness is reported through
/// the context while connected.
pub async fn start(config: &MqttSourceConfig, cx: SourceContext) -> Result<(), SourceError> {
    let _ = (config, cx);
    Err(SourceError::Config {
        source_name: "-".into(),
        message: "not implemented yet".into(),
    })
}
