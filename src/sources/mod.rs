//! Sources: where events come into Ferry. A source decodes protocol messages into events,
//! routes them through the current generation ([`crate::pipeline::ingest`]) and acknowledges
//! the sender only once every sink confirmed.

pub mod amqp;
pub mod http;
pub mod mqtt;
pub mod nats;
pub mod websocket;

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::Readiness;
use crate::metrics::Metrics;
use crate::pipeline::SharedGeneration;

/// Per-source counters, cached so the hot path does no label lookups.
#[derive(Clone)]
pub struct SourceStats {
    pub name: Arc<str>,
    pub metrics: Metrics,
    pub received: Counter,
    pub accepted: Counter,
    pub unrouted: Counter,
    pub ack_latency: Histogram,
    pub connections: Gauge,
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
            connections: metrics.connections.get_or_create(&labels).clone(),
        }
    }

    /// Counts refused events by a fixed reason (`invalid`, `undecodable`, `unrouted`, …).
    pub fn reject(&self, reason: &'static str, n: u64) {
        self.metrics.reject(&self.name, reason, n);
    }
}

/// Everything a source needs from the gateway.
#[derive(Clone)]
pub struct SourceContext {
    pub generation: SharedGeneration,
    pub stats: SourceStats,
    /// Cancelled on shutdown: stop taking new messages, finish in-flight ones.
    pub shutdown: CancellationToken,
    /// Tasks spawned here are awaited on shutdown.
    pub tracker: TaskTracker,
    pub readiness: Readiness,
}

impl SourceContext {
    pub fn name(&self) -> &str {
        &self.stats.name
    }

    /// Reports whether the source is connected and consuming (`/readyz`).
    pub fn set_ready(&self, ready: bool) {
        self.readiness
            .set(&format!("source:{}", self.stats.name), ready);
    }
}

/// A source that could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("source `{source_name}`: cannot listen on {addr}: {error}")]
    Listen {
        source_name: String,
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("source `{source_name}`: {message}")]
    Config {
        source_name: String,
        message: String,
    },
}
