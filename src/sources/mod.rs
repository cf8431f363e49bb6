//! Sources: where events come into Ferry. A source decodes protocol messages into events,
//! routes them through the current generation and acknowledges the sender only once every
//! sink confirmed.

pub mod http;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;

use crate::metrics::Metrics;

/// Per-source counters, cached so the hot path does no label lookups.
#[derive(Clone)]
pub struct SourceStats {
    pub name: std::sync::Arc<str>,
    pub metrics: Metrics,
    pub received: Counter,
    pub accepted: Counter,
    pub unrouted: Counter,
    pub ack_latency: Histogram,
}

impl SourceStats {
    pub fn new(name: &str, metrics: &Metrics) -> Self {
        let labels = Metrics::source(name);
        SourceStats {
            name: name.into(),
            metrics: metrics.clone(),
            received: metrics.received.get_or_create(&labels).clone(),
            accepted: metrics.accepted.get_or_create(&labels).clone(),
            unrouted: metrics.unrouted.get_or_create(&labels).clone(),
            ack_latency: metrics.ack_latency.get_or_create(&labels).clone(),
        }
    }

    pub fn reject(&self, reason: &'static str, n: u64) {
        self.metrics.reject(&self.name, reason, n);
    }
}
