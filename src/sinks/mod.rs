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
use crate::delivery::{self, Admission, Breaker, Decision, Failure, RetryConfig, Transition};
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
    /// The current generation, for sinks that apply its policies (the push sink).
    pub generation: crate::pipeline::SharedGeneration,
}

impl SinkContext {
    /// Reports whether a sink is connected (`/readyz`).
    pub fn set_ready(&self, sink: &str, ready: bool) {
        self.readiness.set(&format!("sink:{sink}"), ready);
    }
}

/// A sink's queue as its task sees it: deliveries the circuit breaker lets through. While
/// the circuit is open, the others fail at once (to a later retry, the dead-letter sink or
/// the sender, by the sink's policy) without reaching the target.
pub struct SinkQueue {
    rx: mpsc::Receiver<Delivery>,
    stats: SinkStats,
}

impl SinkQueue {
    /// The next delivery to make; `None` once the queue is closed and empty. Cancel-safe.
    pub async fn recv(&mut self) -> Option<Delivery> {
        loop {
            let d = self.rx.recv().await?;
            if let Some(d) = self.stats.admit(d) {
                return Some(d);
            }
        }
    }

    /// Up to `limit` deliveries at once; 0 once the queue is closed and empty.
    pub async fn recv_many(&mut self, buf: &mut Vec<Delivery>, limit: usize) -> usize {
        loop {
            if self.rx.recv_many(buf, limit).await == 0 {
                return 0;
            }
            let taken = std::mem::take(buf);
            buf.extend(taken.into_iter().filter_map(|d| self.stats.admit(d)));
            if !buf.is_empty() {
                return buf.len();
            }
        }
    }

    pub fn is_closed(&self) -> bool {
        self.rx.is_closed()
    }

    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }
}

/// Per-sink counters, cached so the hot path does no label lookups. Cloning is one
/// reference count: delivery tasks each hold a clone.
#[derive(Clone)]
pub struct SinkStats(Arc<SinkStatsInner>);

impl std::ops::Deref for SinkStats {
    type Target = SinkStatsInner;
    fn deref(&self) -> &SinkStatsInner {
        &self.0
    }
}

/// What a [`SinkStats`] holds.
pub struct SinkStatsInner {
    name: Arc<str>,
    metrics: Metrics,
    delivered: Counter,
    in_flight: Gauge,
    retried: Counter,
    dead_lettered: Counter,
    circuit_open: Gauge,
    circuit_rejected: Counter,
    breaker: Option<Arc<Breaker>>,
    readiness: Readiness,
    retry: Option<RetryConfig>,
    /// The sink's own queue, for retries (weak: it must not keep the queue open at shutdown).
    own_queue: mpsc::WeakSender<Delivery>,
    dead_letter: Option<mpsc::WeakSender<Delivery>>,
}

impl SinkStats {
    fn new(
        name: &Arc<str>,
        config: &SinkConfig,
        cx: &SinkContext,
        own_queue: mpsc::WeakSender<Delivery>,
        dead_letter: Option<mpsc::WeakSender<Delivery>>,
    ) -> Self {
        let metrics = &cx.metrics;
        let labels = Metrics::sink(name);
        let circuit_open = metrics.circuit_open.get_or_create(&labels).clone();
        circuit_open.set(0);
        cx.readiness.remove(&circuit_key(name));
        SinkStats(Arc::new(SinkStatsInner {
            name: Arc::clone(name),
            metrics: metrics.clone(),
            delivered: metrics.delivered.get_or_create(&labels).clone(),
            in_flight: metrics.sink_in_flight.get_or_create(&labels).clone(),
            retried: metrics.retried.get_or_create(&labels).clone(),
            dead_lettered: metrics.dead_lettered.get_or_create(&labels).clone(),
            circuit_open,
            circuit_rejected: metrics.circuit_rejected.get_or_create(&labels).clone(),
            breaker: Breaker::new(config.circuit_breaker()).map(Arc::new),
            readiness: cx.readiness.clone(),
            retry: config.retry().cloned(),
            own_queue,
            dead_letter,
        }))
    }

    pub fn confirm(&self, delivery: Delivery) {
        self.delivered.inc();
        delivery.envelope.span.in_scope(
            || tracing::debug!(sink = %self.name, attempt = delivery.attempt + 1, "delivered"),
        );
        self.breaker_moved(self.breaker.as_ref().and_then(|b| b.success()));
        delivery.ack.confirm();
    }

    /// The breaker's verdict on a delivery: `None` when it was failed at once.
    fn admit(&self, delivery: Delivery) -> Option<Delivery> {
        match self.breaker.as_ref().map(|b| b.admit()) {
            None | Some(Admission::Go) => Some(delivery),
            Some(Admission::Reject(probe_in)) => {
                self.circuit_rejected.inc();
                self.settle(
                    delivery,
                    &Failure {
                        kind: FailureKind::Retryable,
                        message: "circuit open: the sink is marked down after consecutive failures",
                        not_before: Some(probe_in),
                    },
                );
                None
            }
        }
    }

    fn breaker_moved(&self, transition: Option<Transition>) {
        match transition {
            Some(Transition::Opened) => {
                tracing::warn!(sink = %self.name, "circuit open: sink marked down; probing");
                self.circuit_open.set(1);
                self.readiness.set(&circuit_key(&self.name), false);
            }
            Some(Transition::Closed) => {
                tracing::info!(sink = %self.name, "circuit closed: sink recovered");
                self.circuit_open.set(0);
                self.readiness.remove(&circuit_key(&self.name));
            }
            None => {}
        }
    }

    pub fn fail(&self, delivery: Delivery, kind: FailureKind, message: String) {
        self.fail_after(delivery, kind, message, None);
    }

    /// A failed attempt whose target asked for a delay before the next (`Retry-After`).
    pub fn fail_after(
        &self,
        delivery: Delivery,
        kind: FailureKind,
        message: String,
        retry_after: Option<std::time::Duration>,
    ) {
        if let Some(b) = &self.breaker {
            // A permanent failure is an answer: the target is up.
            let moved = match kind {
                FailureKind::Retryable => b.failure(),
                _ => b.success(),
            };
            self.breaker_moved(moved);
        }
        delivery.envelope.span.in_scope(|| {
            tracing::warn!(sink = %self.name, event.id = delivery.envelope.event.id(), attempt = delivery.attempt + 1, error = %message, "delivery failed");
        });
        self.metrics
            .delivery_failures
            .get_or_create(&SinkFailureLabels {
                sink: self.name.to_string(),
                kind: match kind {
                    FailureKind::Retryable => "retryable",
                    FailureKind::Permanent => "permanent",
                    FailureKind::TooLarge => "too_large",
                    FailureKind::Overloaded => "overloaded",
                    FailureKind::Abandoned => "abandoned",
                },
            })
            .inc();
        self.settle(
            delivery,
            &Failure {
                kind,
                message: &message,
                not_before: retry_after,
            },
        );
    }

    /// Retries, dead-letters or fails a delivery by the sink's policy.
    fn settle(&self, delivery: Delivery, failure: &Failure<'_>) {
        let Failure { kind, message, .. } = *failure;
        match delivery::decide(
            self.retry.as_ref(),
            self.dead_letter.is_some(),
            &self.name,
            &delivery,
            failure,
        ) {
            Decision::Retry(delay) => {
                let Some(queue) = self.own_queue.upgrade() else {
                    delivery
                        .ack
                        .fail(FailureKind::Abandoned, "sink closed before the retry");
                    return;
                };
                self.retried.inc();
                delivery.envelope.span.in_scope(|| {
                    tracing::debug!(sink = %self.name, delay_ms = delay.as_millis() as u64, "retry scheduled");
                });
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
                delivery.envelope.span.in_scope(|| {
                    tracing::debug!(sink = %self.name, reason = %message, "sent to the dead-letter sink");
                });
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

/// The readiness entry of an open circuit: `/readyz` lists it with the sink's name.
fn circuit_key(sink: &str) -> String {
    format!("sink:{sink} (circuit open)")
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
        config,
        cx,
        tx.downgrade(),
        dead_letter.map(SinkHandle::downgrade),
    );
    let rx = SinkQueue {
        rx,
        stats: stats.clone(),
    };
    let mut addr = None;
    match config {
        SinkConfig::File(c) => file::start(&name, c, rx, stats, cx).await?,
        SinkConfig::Websocket(c) => addr = Some(websocket::start(&name, c, rx, stats, cx).await?),
        SinkConfig::Stdout(c) => file::start_stdout(c, rx, stats, cx),
        SinkConfig::Http(c) => http::start(&name, c, rx, stats, cx)?,
        SinkConfig::Amqp(c) => amqp::start(&name, c, rx, stats, cx)?,
        SinkConfig::Mqtt(c) => mqtt::start(&name, c, rx, stats, cx)?,
        SinkConfig::Nats(c) => nats::start(&name, c, rx, stats, cx)?,
    }
    // With a spool, routes send to the spool's writer; its replay feeds the sink's queue.
    let tx = match config.spool() {
        Some(spool) => crate::spool::start(&name, spool, tx, cx).await?,
        None => tx,
    };
    Ok((SinkHandle::new(name, config.kind(), tx), addr))
}
