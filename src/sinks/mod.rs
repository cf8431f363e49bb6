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

use crate::config::SinkConfig;
use crate::delivery::{self, Admission, Breaker, Decision, Failure, RetryConfig, Transition};
use crate::health::Readiness;
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

/// A sink task ends by dropping its queue. At shutdown or after a reload the queue's senders
/// are gone first; if they are not, the task died (a panic, a bug) while routes still send to
/// it, and every event sent to it now fails: the gateway stops being ready and says why.
impl Drop for SinkQueue {
    fn drop(&mut self) {
        if !self.rx.is_closed() {
            tracing::error!(sink = %self.stats.name, "sink task stopped while routes still send to it; its events fail until a reload replaces it or Ferry restarts");
            self.stats
                .readiness
                .set(&stopped_key(&self.stats.name), false);
        }
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
        cx.readiness.remove(&stopped_key(name));
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
                if self.own_queue.strong_count() == 0 {
                    delivery
                        .ack
                        .fail(FailureKind::Abandoned, "sink closed before the retry");
                    return;
                }
                self.retried.inc();
                delivery.envelope.span.in_scope(|| {
                    tracing::debug!(sink = %self.name, delay_ms = delay.as_millis() as u64, "retry scheduled");
                });
                let mut delivery = delivery;
                delivery.attempt += 1;
                // Weak while sleeping: a pending retry does not keep the queue open at
                // shutdown; a queue closed meanwhile abandons the retry.
                let queue = self.own_queue.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let Some(queue) = queue.upgrade() else {
                        delivery
                            .ack
                            .fail(FailureKind::Abandoned, "sink closed before the retry");
                        return;
                    };
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

/// The readiness entry of a sink whose task died.
fn stopped_key(sink: &str) -> String {
    format!("sink:{sink} (task stopped)")
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
        Some(spool) => {
            let spool_cx = crate::spool::SpoolContext {
                metrics: cx.metrics.clone(),
                tracker: cx.tracker.clone(),
                readiness: cx.readiness.clone(),
            };
            crate::spool::start(&name, spool, tx, &spool_cx)
                .await
                .map_err(|e| SinkError::Open {
                    sink: name.to_string(),
                    path: e.path,
                    source: e.source,
                })?
        }
        None => tx,
    };
    Ok((SinkHandle::new(name, config.kind(), tx), addr))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::Envelope;

    fn context() -> SinkContext {
        SinkContext {
            metrics: Metrics::new(&mut prometheus_client::registry::Registry::default()),
            tracker: TaskTracker::new(),
            readiness: Readiness::default(),
            generation: Default::default(),
        }
    }

    fn sink_queue(config: &str, cx: &SinkContext) -> (mpsc::Sender<Delivery>, SinkQueue) {
        let config: SinkConfig = toml::from_str(config).unwrap();
        let name: Arc<str> = Arc::from("s");
        let (tx, rx) = mpsc::channel(8);
        let stats = SinkStats::new(&name, &config, cx, tx.downgrade(), None);
        (tx, SinkQueue { rx, stats })
    }

    fn delivery() -> (Delivery, ferry_core::AckWaiter) {
        let (ack, waiter) = ferry_core::AckToken::new();
        let event = ferry_core::CloudEvent::new("1", "/s", "t").unwrap();
        let envelope = Arc::new(Envelope::new(event, ferry_core::TransportMetadata::new()));
        (Delivery::new(envelope, ack), waiter)
    }

    /// M10: a retry waiting out its backoff does not keep its sink's queue open.
    #[tokio::test]
    async fn m10_a_sleeping_retry_does_not_hold_the_queue_open() {
        let cx = context();
        let (tx, queue) = sink_queue(
            "type = \"file\"\npath = \"x\"\nretry = { max_attempts = 3, initial_backoff_ms = 200, max_backoff_ms = 200 }",
            &cx,
        );
        let (d, waiter) = delivery();
        queue
            .stats
            .fail(d, FailureKind::Retryable, "try again".into());
        drop(tx);
        assert!(queue.is_closed(), "the retry holds a strong sender");
        match tokio::time::timeout(std::time::Duration::from_secs(5), waiter.wait()).await {
            Ok(ferry_core::Outcome::Failed(f)) => assert_eq!(f.kind, FailureKind::Abandoned),
            Ok(ferry_core::Outcome::Delivered) => panic!("delivered"),
            Err(_) => panic!("the retry never settled"),
        }
    }

    /// M12: a sink task that dies while routes still send to it makes the gateway not ready.
    #[tokio::test]
    async fn m12_a_dead_sink_task_makes_the_gateway_not_ready() {
        let cx = context();
        let (tx, queue) = sink_queue("type = \"file\"\npath = \"x\"", &cx);
        cx.set_ready("s", true);
        drop(queue);
        assert!(tx.is_closed());
        assert!(
            cx.readiness
                .not_ready()
                .iter()
                .any(|c| c.starts_with("sink:s")),
            "{:?}",
            cx.readiness.not_ready()
        );

        // A sink that stops at shutdown (its queue closed first) is not reported.
        let cx = context();
        let (tx, queue) = sink_queue("type = \"file\"\npath = \"x\"", &cx);
        cx.set_ready("s", true);
        drop(tx);
        drop(queue);
        assert!(cx.readiness.not_ready().is_empty());
    }
}
