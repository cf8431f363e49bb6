//! Sinks: where events leave Ferry. Each sink owns a bounded queue and a task that delivers
//! from it and resolves every delivery's acknowledgement.

mod amqp;
mod file;
mod http;
mod mqtt;
mod nats;
mod websocket;

use std::sync::Arc;

use ferry_core::FailureKind;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use crate::admin::Readiness;
use crate::config::SinkConfig;
use crate::delivery::{self, Decision, RetryConfig};
use crate::metrics::{Metrics, SinkFailureLabels};
use crate::pipeline::{Delivery, SinkHandle};

/// A sink that could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("sink `{sink}`: cannot open {path}: {source}")]
    Open {
        sink: String,
        path: String,
        source: std::io::Error,
    },
    #[error("sink `{sink}`: {message}")]
    Config { sink: String, message: String },
}

/// What a sink needs from the gateway.
#[derive(Clone)]
pub struct SinkContext {
    pub metrics: Metrics,
    pub tracker: TaskTracker,
    pub readiness: Readiness,
}

impl SinkContext {
    /// Reports whether a sink is connected (`/readyz`).
    pub fn set_ready(&self, sink: &str, ready: bool) {
        self.readiness.set(&format!("sink:{sink}"), ready);
    }
}

/// Per-sink counters, cached so the hot path does no label lookups.
#[derive(Clone)]
pub struct SinkStats {
    name: Arc<str>,
    metrics: Metrics,
    delivered: Counter,
    in_flight: Gauge,
    retried: Counter,
    dead_lettered: Counter,
    retry: Option<RetryConfig>,
    /// The sink's own queue, for retries (weak: it must not keep the queue open at shutdown).
    own_queue: mpsc::WeakSender<Delivery>,
    dead_letter: Option<mpsc::WeakSender<Delivery>>,
}

impl SinkStats {
    fn new(
        name: &Arc<str>,
        metrics: &Metrics,
        retry: Option<RetryConfig>,
        own_queue: mpsc::WeakSender<Delivery>,
        dead_letter: Option<mpsc::WeakSender<Delivery>>,
    ) -> Self {
        let labels = Metrics::sink(name);
        SinkStats {
            name: Arc::clone(name),
            metrics: metrics.clone(),
            delivered: metrics.delivered.get_or_create(&labels).clone(),
            in_flight: metrics.sink_in_flight.get_or_create(&labels).clone(),
            retried: metrics.retried.get_or_create(&labels).clone(),
            dead_lettered: metrics.dead_lettered.get_or_create(&labels).clone(),
            retry,
            own_queue,
            dead_letter,
        }
    }

    pub fn confirm(&self, delivery: Delivery) {
        self.delivered.inc();
        delivery.ack.confirm();
    }

    pub fn fail(&self, delivery: Delivery, kind: FailureKind, message: String) {
        tracing::warn!(sink = %self.name, event.id = delivery.envelope.event.id(), error = %message, "delivery failed");
        self.metrics
            .delivery_failures
            .get_or_create(&SinkFailureLabels {
                sink: self.name.to_string(),
                kind: match kind {
                    FailureKind::Retryable => "retryable",
                    FailureKind::Permanent => "permanent",
                    FailureKind::Overloaded => "overloaded",
                    FailureKind::Abandoned => "abandoned",
                },
            })
            .inc();
        match delivery::decide(
            self.retry.as_ref(),
            self.dead_letter.is_some(),
            &self.name,
            &delivery,
            kind,
            &message,
        ) {
            Decision::Retry(delay) => {
                let Some(queue) = self.own_queue.upgrade() else {
                    delivery
                        .ack
                        .fail(FailureKind::Abandoned, "sink closed before the retry");
                    return;
                };
                self.retried.inc();
                let mut delivery = delivery;
                delivery.attempt += 1;
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    if let Err(mpsc::error::SendError(d)) = queue.send(delivery).await {
                        d.ack
                            .fail(FailureKind::Abandoned, "sink closed before the retry");
                    }
                });
            }
            Decision::DeadLetter(pending) => {
                let Some(queue) = self
                    .dead_letter
                    .as_ref()
                    .and_then(mpsc::WeakSender::upgrade)
                else {
                    delivery.ack.fail(kind, message);
                    return;
                };
                self.dead_lettered.inc();
                let dead = pending.with_ack(delivery.ack);
                tokio::spawn(async move {
                    if let Err(mpsc::error::SendError(d)) = queue.send(dead).await {
                        d.ack
                            .fail(FailureKind::Abandoned, "dead-letter sink closed");
                    }
                });
            }
            Decision::Fail => delivery.ack.fail(kind, message),
        }
    }
}

/// Starts a sink and returns the handle routes send to, and the address it listens on if it
/// listens (the WebSocket push sink).
pub async fn start(
    name: &str,
    config: &SinkConfig,
    dead_letter: Option<&SinkHandle>,
    cx: &SinkContext,
) -> Result<(SinkHandle, Option<std::net::SocketAddr>), SinkError> {
    let name: Arc<str> = Arc::from(name);
    let (tx, rx) = mpsc::channel(config.queue());
    cx.metrics
        .sink_queue_capacity
        .get_or_create(&Metrics::sink(&name))
        .set(config.queue() as i64);
    let stats = SinkStats::new(
        &name,
        &cx.metrics,
        config.retry().cloned(),
        tx.downgrade(),
        dead_letter.map(SinkHandle::downgrade),
    );
    let mut addr = None;
    match config {
        SinkConfig::File(c) => file::start(&name, c, rx, stats, cx).await?,
        SinkConfig::Websocket(c) => addr = Some(websocket::start(&name, c, rx, stats, cx).await?),
        SinkConfig::Stdout(_) => file::start_stdout(rx, stats, cx),
        SinkConfig::Http(c) => http::start(&name, c, rx, stats, cx)?,
        SinkConfig::Amqp(c) => amqp::start(&name, c, rx, stats, cx)?,
        SinkConfig::Mqtt(c) => mqtt::start(&name, c, rx, stats, cx)?,
        SinkConfig::Nats(c) => nats::start(&name, c, rx, stats, cx)?,
    }
    Ok((SinkHandle::new(name, config.kind(), tx), addr))
}
