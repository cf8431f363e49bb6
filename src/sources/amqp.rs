//! `amqp` source: consumes a RabbitMQ queue (AMQP 0-9-1) with `prefetch` as the in-flight
//! window, and acknowledges each message only after every routed sink confirmed it.
//!
//! - Delivered → `basic.ack`.
//! - A sink failed → `basic.nack`, requeued after `requeue_delay_ms` or dead-lettered, per
//!   `on_failure`. A full or closing sink queue always requeues (it is back-pressure).
//! - Over `max_message_bytes`, undecodable, invalid or (with `unrouted = "reject"`) unrouted →
//!   `basic.nack` with `requeue = false`, which RabbitMQ routes to the queue's
//!   `x-dead-letter-exchange`; counted in `ferry_events_rejected_total`.
//!
//! One supervisor task connects with backoff, declares the queue if configured, consumes, and
//! starts over when the connection or channel drops. Competing consumers on one queue scale
//! out horizontally.

use std::time::{Duration, Instant};
use tracing::Instrument;

use bytes::Bytes;
use ferry_core::{EventErrorKind, Outcome};
use lapin::message::{Delivery, DeliveryResult};
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Acker, Channel, Connection, ConnectionProperties};
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use super::{SourceContext, SourceError};
use crate::backoff::Backoff;
use crate::config::AmqpSourceConfig;
use crate::normalize::{Normalizer, Raw};
use crate::pipeline::{self, Envelope, IngestError};

/// How long connecting (TCP + AMQP handshake) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts consuming in the background; reconnects on its own. Readiness is reported through
/// the context while connected.
pub async fn start(config: &AmqpSourceConfig, cx: SourceContext) -> Result<(), SourceError> {
    let normalizer = super::normalizer(cx.name(), config.normalize.as_ref())?;
    cx.set_ready(false);
    let consumer = Consumer {
        config: config.clone(),
        normalizer,
        in_flight: TaskTracker::new(),
        cx: cx.clone(),
    };
    cx.tracker.spawn(
        consumer
            .supervise()
            .instrument(tracing::info_span!("source", source = %cx.name())),
    );
    Ok(())
}

struct Consumer {
    config: AmqpSourceConfig,
    normalizer: Option<Normalizer>,
    /// The acknowledgement tasks, awaited before the connection closes on shutdown.
    in_flight: TaskTracker,
    cx: SourceContext,
}

/// Why consuming stopped.
enum Stop {
    Shutdown,
    Disconnected(String),
}

impl Consumer {
    async fn supervise(self) {
        let name = self.cx.name().to_owned();
        let mut backoff = Backoff::reconnect();
        loop {
            let connected = tokio::select! {
                () = self.cx.shutdown.cancelled() => break,
                c = self.connect() => c,
            };
            let (connection, channel) = match connected {
                Ok(c) => c,
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(source = %name, error = %e, retry_in_ms = delay.as_millis() as u64, "AMQP source cannot connect");
                    tokio::select! {
                        () = self.cx.shutdown.cancelled() => break,
                        () = tokio::time::sleep(delay) => continue,
                    }
                }
            };
            backoff.reset();
            tracing::info!(source = %name, queue = %self.config.queue, "AMQP source consuming");
            self.cx.stats.connections.set(1);
            self.cx.set_ready(true);
            let stop = self.consume(&channel).await;
            self.cx.set_ready(false);
            self.cx.stats.connections.set(0);
            match stop {
                Stop::Shutdown => {
                    // In-flight messages finish and are acknowledged on this connection.
                    self.in_flight.close();
                    self.in_flight.wait().await;
                    let _ = connection.close(200, "shutting down".into()).await;
                    tracing::info!(source = %name, "AMQP source stopped");
                    return;
                }
                Stop::Disconnected(reason) => {
                    tracing::warn!(source = %name, reason = %reason, "AMQP source disconnected; reconnecting");
                    let _ = connection.close(200, "reconnecting".into()).await;
                }
            }
        }
        self.cx.set_ready(false);
    }

    /// Connects, opens a channel with the prefetch window and declares the topology.
    async fn connect(&self) -> Result<(Connection, Channel), lapin::Error> {
        let properties = ConnectionProperties::default()
            .with_connection_name(format!("ferry source {}", self.cx.name()).into());
        let tls = crate::config::amqp_client_tls(&self.config.url, self.config.tls.as_ref())
            .map_err(|e| lapin::Error::from(std::io::Error::other(e.to_string())))?;
        let connection = match tokio::time::timeout(
            CONNECT_TIMEOUT,
            Connection::connect_with_config(
                &self.config.url,
                properties,
                tls,
                lapin::runtime::default_runtime()?,
            ),
        )
        .await
        {
            Ok(c) => c?,
            Err(_) => {
                return Err(lapin::Error::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connect timed out",
                )))
            }
        };
        let channel = connection.create_channel().await?;
        channel
            .basic_qos(self.config.prefetch, BasicQosOptions::default())
            .await?;
        if let Some(d) = &self.config.declare {
            let mut arguments = FieldTable::default();
            let string = |s: &str| AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()));
            if let Some(x) = &d.dead_letter_exchange {
                arguments.insert("x-dead-letter-exchange".into(), string(x));
            }
            if let Some(k) = &d.dead_letter_routing_key {
                arguments.insert("x-dead-letter-routing-key".into(), string(k));
            }
            let queue: ShortString = self.config.queue.as_str().into();
            channel
                .queue_declare(
                    queue.clone(),
                    QueueDeclareOptions {
                        durable: d.durable,
                        auto_delete: d.auto_delete,
                        ..QueueDeclareOptions::default()
                    },
                    arguments,
                )
                .await?;
            for b in &d.bindings {
                channel
                    .queue_bind(
                        queue.clone(),
                        b.exchange.as_str().into(),
                        b.routing_key.as_str().into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await?;
            }
        }
        Ok((connection, channel))
    }

    /// Consumes until shutdown or until the channel drops.
    async fn consume(&self, channel: &Channel) -> Stop {
        let consumer = match channel
            .basic_consume(
                self.config.queue.as_str().into(),
                self.config.consumer_tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
        {
            Ok(c) => c,
            Err(e) => return Stop::Disconnected(format!("basic.consume failed: {e}")),
        };
        // The broker never sends more than `prefetch` unacknowledged messages, so this
        // channel never holds more than that either.
        let (tx, mut rx) = mpsc::channel::<DeliveryResult>(usize::from(self.config.prefetch));
        consumer.set_delegate(move |d: DeliveryResult| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(d).await;
            }
        });
        loop {
            let next = tokio::select! {
                () = self.cx.shutdown.cancelled() => {
                    let _ = channel.basic_cancel(consumer.tag(), BasicCancelOptions::default()).await;
                    return Stop::Shutdown;
                }
                next = rx.recv() => next,
            };
            match next {
                Some(Ok(Some(delivery))) => self.handle(delivery).await,
                Some(Ok(None)) | None => {
                    return Stop::Disconnected("the consumer was cancelled".into())
                }
                Some(Err(e)) => return Stop::Disconnected(e.to_string()),
            }
        }
    }

    /// Decodes one message, hands it to the pipeline, and spawns the task that acknowledges it.
    async fn handle(&self, delivery: Delivery) {
        let started = Instant::now();
        let Delivery {
            exchange,
            routing_key,
            properties,
            data,
            acker,
            ..
        } = delivery;
        if data.len() > self.config.max_message_bytes {
            tracing::warn!(source = %self.cx.name(), reason = "too_large", size = data.len(), limit = self.config.max_message_bytes, "message rejected");
            self.cx.stats.reject("too_large", 1);
            drop(data);
            self.spawn_settle(acker, Settle::Reject);
            return;
        }
        let metadata = ferry_amqp::metadata(&properties, exchange.as_str(), routing_key.as_str());
        let decoded = match &self.normalizer {
            Some(n) if !ferry_amqp::is_cloudevent(&properties) => n
                .apply(Raw {
                    metadata: &metadata,
                    body: Bytes::from(data),
                    content_type: properties.content_type().as_ref().map(ShortString::as_str),
                    message_id: properties.message_id().as_ref().map(ShortString::as_str),
                })
                .map_err(|error| ("invalid", error.to_string())),
            _ => ferry_amqp::decode(&properties, &data).map_err(|e| (reason(&e), e.to_string())),
        };
        let event = match decoded {
            Ok(event) => event,
            Err((reason, message)) => {
                tracing::warn!(source = %self.cx.name(), reason, error = %message, "message rejected");
                self.cx.stats.reject(reason, 1);
                self.spawn_settle(acker, Settle::Reject);
                return;
            }
        };
        let ingested = pipeline::ingest(
            &self.cx.generation,
            &self.cx.stats,
            vec![Envelope::new(event, metadata)],
            self.config.unrouted,
            Duration::from_millis(self.config.enqueue_timeout_ms),
        )
        .await;
        let waiter = match ingested {
            Ok(w) => w,
            Err(IngestError::Unrouted { .. }) => {
                tracing::warn!(source = %self.cx.name(), "message rejected: no route matches the event");
                self.cx.stats.reject("unrouted", 1);
                self.spawn_settle(acker, Settle::Reject);
                return;
            }
            Err(IngestError::Dispatch(e)) => {
                tracing::warn!(source = %self.cx.name(), error = ?e, "sink queue unavailable; requeueing");
                self.spawn_settle(acker, Settle::Requeue);
                return;
            }
        };
        let stats = self.cx.stats.clone();
        let on_failure = if self.config.on_failure.requeue() {
            Settle::Requeue
        } else {
            Settle::Reject
        };
        let requeue_delay = Duration::from_millis(self.config.requeue_delay_ms);
        let name = self.cx.name().to_owned();
        self.track(async move {
            match waiter.wait().await {
                Outcome::Delivered => {
                    if let Err(e) = acker.ack(BasicAckOptions::default()).await {
                        // The broker redelivers it: at least once, never lost.
                        tracing::warn!(source = %name, error = %e, "basic.ack failed");
                        return;
                    }
                    stats.accepted.inc();
                    stats.ack_latency.observe(started.elapsed().as_secs_f64());
                }
                Outcome::Failed(f) => {
                    tracing::warn!(source = %name, sink = %f.sink, error = %f.message, "delivery failed; message not acknowledged");
                    settle(&acker, on_failure, requeue_delay).await;
                }
            }
        });
    }

    fn spawn_settle(&self, acker: Acker, how: Settle) {
        let delay = Duration::from_millis(self.config.requeue_delay_ms);
        self.track(async move { settle(&acker, how, delay).await });
    }

    fn track(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.cx.tracker.spawn(self.in_flight.track_future(task));
    }
}

#[derive(Debug, Clone, Copy)]
enum Settle {
    /// `basic.nack` with requeue, after a delay.
    Requeue,
    /// `basic.nack` without requeue: dead-lettered (or dropped if the queue has no DLX).
    Reject,
}

async fn settle(acker: &Acker, how: Settle, requeue_delay: Duration) {
    let requeue = matches!(how, Settle::Requeue);
    if requeue {
        tokio::time::sleep(requeue_delay).await;
    }
    let options = BasicNackOptions {
        multiple: false,
        requeue,
    };
    if let Err(e) = acker.nack(options).await {
        tracing::debug!(error = %e, "basic.nack failed; the broker redelivers the message");
    }
}

/// The rejection reason of a decode error: `undecodable` when the message is not a
/// CloudEvent at all (or not parseable), `invalid` when it is one with a bad attribute.
fn reason(e: &ferry_amqp::DecodeError) -> &'static str {
    match e {
        ferry_amqp::DecodeError::Invalid { error, .. }
            if !(error.kind == EventErrorKind::Malformed && error.attribute.is_none()) =>
        {
            "invalid"
        }
        _ => "undecodable",
    }
}
