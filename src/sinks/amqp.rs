//! AMQP sink (in progress).

use std::sync::Arc;

use tokio::sync::mpsc;

use super::{SinkContext, SinkError, SinkStats};
use crate::config::AmqpSinkConfig;
use crate::pipeline::Delivery;

/// Starts the sink task: connects (and reconnects) in the background and delivers from `rx`.
pub fn start(
    name: &Arc<str>,
    config: &AmqpSinkConfig,
    rx: mpsc::Receiver<Delivery>,
    stats: SinkStats,
    cx: &SinkContext,
) -> Result<(), SinkError> {
    let _ = (config, rx, stats, cx);
    Err(SinkError::Config {
        sink: name.to_string(),
        message: "not implemented yet".into(),
    })
}
