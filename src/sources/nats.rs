//! NATS source: a core subscription (optionally in a queue group) or a durable JetStream pull
//! consumer.
//!
//! JetStream messages are acknowledged only after every routed sink confirmed: `ack` when
//! delivered, `nak` (redelivery after `nak_delay_ms`) when not, `term` when the message can
//! never be accepted (undecodable, invalid, or unrouted with `unrouted = "reject"`). The
//! consumer's `max_ack_pending` bounds what is in flight. Core NATS has no acknowledgements:
//! it is at-most-once on the way in; a failure is counted and logged, and a message sent as a
//! request (with a reply subject) gets an answer saying what happened (see `docs/nats.md`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;

use async_nats::jetstream::{self, consumer::pull, AckKind};
use async_nats::{HeaderMap, Subject};
use bytes::Bytes;
use ferry_core::Outcome;
use futures_util::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::task::TaskTracker;

use super::{SourceContext, SourceError};
use crate::backoff::Backoff;
use crate::config::NatsSourceConfig;
use crate::normalize::{Normalizer, Raw};
use crate::pipeline::{self, DispatchError, Envelope, IngestError};

/// Reply headers for core NATS requests.
const STATUS_HEADER: &str = "Ferry-Status";
const ERROR_HEADER: &str = "Ferry-Error";

/// Starts consuming in the background; reconnects on its own. Readiness is reported through
/// the context while connected and consuming.
pub async fn start(config: &NatsSourceConfig, cx: SourceContext) -> Result<(), SourceError> {
    let normalizer = super::normalizer(cx.name(), config.normalize.as_ref())?;
    let source = Arc::new(Source {
        config: config.clone(),
        normalizer,
        cx: cx.clone(),
        connected: AtomicBool::new(false),
        consuming: AtomicBool::new(false),
    });
    cx.set_ready(false);
    cx.tracker
        .spawn(supervise(source).instrument(tracing::info_span!("source", source = %cx.name())));
    Ok(())
}

struct Source {
    config: NatsSourceConfig,
    normalizer: Option<Normalizer>,
    cx: SourceContext,
    connected: AtomicBool,
    consuming: AtomicBool,
}

impl Source {
    fn name(&self) -> &str {
        self.cx.name()
    }

    /// Ready = connected and subscribed (or pulling).
    fn set_state(&self, connected: Option<bool>, consuming: Option<bool>) {
        if let Some(c) = connected {
            self.connected.store(c, Ordering::SeqCst);
            self.cx.stats.connections.set(i64::from(c));
        }
        if let Some(c) = consuming {
            self.consuming.store(c, Ordering::SeqCst);
        }
        self.cx.set_ready(
            self.connected.load(Ordering::SeqCst) && self.consuming.load(Ordering::SeqCst),
        );
    }
}

/// Connects with backoff, then consumes; a consumer that fails (stream missing, consumer
/// deleted, …) is re-created after a backoff delay. async-nats re-establishes the connection
/// and core subscriptions by itself.
async fn supervise(source: Arc<Source>) {
    let shutdown = source.cx.shutdown.clone();
    let mut backoff = Backoff::reconnect();
    let client = loop {
        let events = {
            let source = Arc::clone(&source);
            move |event: async_nats::Event| {
                match event {
                    async_nats::Event::Connected => {
                        tracing::info!(source = source.name(), "NATS source reconnected");
                        source.set_state(Some(true), None);
                    }
                    async_nats::Event::Disconnected => {
                        tracing::warn!(source = source.name(), "NATS source disconnected");
                        source.set_state(Some(false), None);
                    }
                    other => tracing::debug!(source = source.name(), event = %other, "NATS event"),
                }
                std::future::ready(())
            }
        };
        let options = match crate::config::nats_connect_options(source.config.tls.as_ref()) {
            Ok(o) => o,
            // Checked when the config was loaded; a file removed since is reported and
            // retried.
            Err(e) => {
                tracing::error!(source = source.name(), error = %e, "NATS source TLS");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(backoff.next_delay()) => continue,
                }
            }
        };
        let connect = options
            .name(format!("ferry source {}", source.name()))
            .event_callback(events)
            .connect(source.config.url.as_str());
        let error = tokio::select! {
            () = shutdown.cancelled() => return,
            result = connect => match result {
                Ok(client) => break client,
                Err(e) => e.to_string(),
            },
        };
        let delay = backoff.next_delay();
        tracing::warn!(source = source.name(), error = %error, retry_in_ms = delay.as_millis() as u64, "NATS source cannot connect");
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    };
    tracing::info!(source = source.name(), url = %crate::redacted_url::redacted_url(&source.config.url), "NATS source connected");
    source.set_state(Some(true), None);
    let tasks = TaskTracker::new();
    backoff.reset();
    loop {
        let result = match &source.config.jetstream {
            Some(_) => consume_jetstream(&source, &client, &tasks).await,
            None => consume_core(&source, &client, &tasks).await,
        };
        source.set_state(None, Some(false));
        match result {
            Ok(()) => break,
            Err(error) => {
                let delay = backoff.next_delay();
                tracing::warn!(source = source.name(), error = %error, retry_in_ms = delay.as_millis() as u64, "NATS consumer stopped; re-creating it");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    // In-flight messages finish and are acknowledged before the connection closes.
    tasks.close();
    tasks.wait().await;
    if let Err(e) = client.flush().await {
        tracing::warn!(source = source.name(), error = %e, "final flush failed");
    }
    source.set_state(Some(false), Some(false));
    tracing::info!(source = source.name(), "NATS source closed");
}

// --- core NATS --------------------------------------------------------------------------

async fn consume_core(
    source: &Arc<Source>,
    client: &async_nats::Client,
    tasks: &TaskTracker,
) -> Result<(), String> {
    let subject = source.config.subject.clone();
    let mut subscriber = match &source.config.queue_group {
        Some(group) => client.queue_subscribe(subject, group.clone()).await,
        None => client.subscribe(subject).await,
    }
    .map_err(|e| format!("cannot subscribe: {e}"))?;
    source.set_state(None, Some(true));
    tracing::info!(source = source.name(), subject = %source.config.subject, queue_group = ?source.config.queue_group, "NATS source subscribed");
    let permits = Arc::new(Semaphore::new(source.config.in_flight));
    let shutdown = source.cx.shutdown.clone();
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let message = tokio::select! {
            () = shutdown.cancelled() => break,
            message = subscriber.next() => match message {
                Some(m) => m,
                None => return Err("subscription closed".into()),
            },
        };
        handle_core(source, client, message, permit, tasks).await;
    }
    if let Err(e) = subscriber.unsubscribe().await {
        tracing::debug!(source = source.name(), error = %e, "unsubscribe failed");
    }
    Ok(())
}

async fn handle_core(
    source: &Arc<Source>,
    client: &async_nats::Client,
    message: async_nats::Message,
    permit: OwnedSemaphorePermit,
    tasks: &TaskTracker,
) {
    let started = Instant::now();
    let reply = message.reply.clone();
    let envelope = match decode(
        source,
        &message.subject,
        message.headers.as_ref(),
        message.payload,
        None,
    ) {
        Ok(e) => e,
        Err((reason, error)) => {
            reject(source, &message.subject, reason, &error);
            answer(
                client,
                reply,
                &source.config.reply_prefix,
                400,
                Some(&error),
            )
            .await;
            return;
        }
    };
    let waiter = match ingest(source, envelope).await {
        Ok(w) => w,
        Err((status, reason, error)) => {
            tracing::warn!(source = source.name(), subject = %message.subject, reason, error = %error, "NATS message not accepted (core NATS: not redelivered)");
            source.cx.stats.reject(reason, 1);
            answer(
                client,
                reply,
                &source.config.reply_prefix,
                status,
                Some(&error),
            )
            .await;
            return;
        }
    };
    let source = Arc::clone(source);
    let client = client.clone();
    tasks.spawn(async move {
        match waiter.wait().await {
            Outcome::Delivered => {
                source.cx.stats.accepted.inc();
                source
                    .cx
                    .stats
                    .ack_latency
                    .observe(started.elapsed().as_secs_f64());
                answer(&client, reply, &source.config.reply_prefix, 202, None).await;
            }
            Outcome::Failed(f) => {
                let error = format!("delivery to sink `{}` failed: {}", f.sink, f.message);
                tracing::warn!(source = source.name(), error = %error, "NATS message not delivered (core NATS: not redelivered)");
                source.cx.stats.reject("delivery_failed", 1);
                // The requester learns which sink failed, never the sink's error text (it
                // can name internal hosts).
                let reply_error = format!("delivery to sink `{}` failed", f.sink);
                answer(
                    &client,
                    reply,
                    &source.config.reply_prefix,
                    502,
                    Some(&reply_error),
                )
                .await;
            }
        }
        drop(permit);
    });
}

/// Answers a core NATS request with `Ferry-Status` (HTTP-like: 202, 400, 404, 502, 503) and,
/// on failure, `Ferry-Error`. Messages without a reply subject get nothing, and neither do
/// reply subjects outside `reply_prefix` (a publisher must not make Ferry publish, with its
/// own permissions, wherever it names: M8).
async fn answer(
    client: &async_nats::Client,
    reply: Option<Subject>,
    reply_prefix: &str,
    status: u16,
    error: Option<&str>,
) {
    let Some(reply) = reply else {
        return;
    };
    if !reply.as_str().starts_with(reply_prefix) {
        tracing::debug!(reply = %reply, reply_prefix, "reply subject outside reply_prefix; no answer");
        return;
    }
    let mut headers = HeaderMap::new();
    headers.insert(STATUS_HEADER, status.to_string());
    if let Some(e) = error {
        // Header values may not hold line breaks.
        headers.insert(ERROR_HEADER, e.replace(['\r', '\n'], " "));
    }
    if let Err(e) = client
        .publish_with_headers(reply, headers, Bytes::new())
        .await
    {
        tracing::debug!(error = %e, "cannot answer a NATS request");
    }
}

// --- JetStream --------------------------------------------------------------------------

async fn consume_jetstream(
    source: &Arc<Source>,
    client: &async_nats::Client,
    tasks: &TaskTracker,
) -> Result<(), String> {
    let Some(config) = &source.config.jetstream else {
        return Err("not a JetStream source".into());
    };
    let js = jetstream::new(client.clone());
    let stream = js
        .get_stream(&config.stream)
        .await
        .map_err(|e| format!("stream `{}`: {e}", config.stream))?;
    let consumer: jetstream::consumer::PullConsumer = stream
        .get_or_create_consumer(
            &config.durable,
            pull::Config {
                durable_name: Some(config.durable.clone()),
                filter_subject: source.config.subject.clone(),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(config.ack_wait_secs),
                max_ack_pending: config.max_ack_pending,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| format!("consumer `{}`: {e}", config.durable))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| format!("cannot pull from `{}`: {e}", config.durable))?;
    source.set_state(None, Some(true));
    tracing::info!(source = source.name(), stream = %config.stream, durable = %config.durable, "NATS source consuming");
    let shutdown = source.cx.shutdown.clone();
    let nak_delay = Duration::from_millis(config.nak_delay_ms);
    loop {
        let next = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            next = messages.next() => next,
        };
        match next {
            Some(Ok(message)) => handle_jetstream(source, message, nak_delay, tasks).await,
            Some(Err(e))
                if e.kind() == jetstream::consumer::pull::MessagesErrorKind::MissingHeartbeat =>
            {
                tracing::debug!(source = source.name(), error = %e, "JetStream heartbeat missed");
            }
            Some(Err(e)) => return Err(format!("pull from `{}`: {e}", config.durable)),
            None => return Err(format!("pull from `{}` ended", config.durable)),
        }
    }
}

async fn handle_jetstream(
    source: &Arc<Source>,
    message: jetstream::Message,
    nak_delay: Duration,
    tasks: &TaskTracker,
) {
    let started = Instant::now();
    let sequence = message.info().ok().map(|i| i.stream_sequence.to_string());
    let msg_id = message
        .headers
        .as_ref()
        .and_then(|h| ferry_nats::header(h, ferry_nats::MSG_ID))
        .map(str::to_owned);
    let message_id = msg_id.or(sequence);
    let envelope = match decode(
        source,
        &message.subject,
        message.headers.as_ref(),
        message.payload.clone(),
        message_id.as_deref(),
    ) {
        Ok(e) => e,
        Err((reason, error)) => {
            reject(source, &message.subject, reason, &error);
            settle(source, &message, AckKind::Term).await;
            return;
        }
    };
    let waiter = match ingest(source, envelope).await {
        Ok(w) => w,
        Err((_, "unrouted", error)) => {
            reject(source, &message.subject, "unrouted", &error);
            settle(source, &message, AckKind::Term).await;
            return;
        }
        Err((_, reason, error)) => {
            tracing::warn!(source = source.name(), subject = %message.subject, reason, error = %error, "NATS message not accepted; nak for redelivery");
            settle(source, &message, AckKind::Nak(Some(nak_delay))).await;
            return;
        }
    };
    let source = Arc::clone(source);
    tasks.spawn(async move {
        // While the sinks work (a full queue, retries), tell the server the message is in
        // progress every half `ack_wait`, so it is not redelivered as a second copy (Q2).
        let every = progress_interval(&source);
        let wait = waiter.wait();
        tokio::pin!(wait);
        let outcome = loop {
            tokio::select! {
                outcome = &mut wait => break outcome,
                () = tokio::time::sleep(every) => settle(&source, &message, AckKind::Progress).await,
            }
        };
        match outcome {
            Outcome::Delivered => {
                settle(&source, &message, AckKind::Ack).await;
                source.cx.stats.accepted.inc();
                source
                    .cx
                    .stats
                    .ack_latency
                    .observe(started.elapsed().as_secs_f64());
            }
            Outcome::Failed(f) => {
                tracing::warn!(source = source.name(), sink = %f.sink, error = %f.message, "delivery failed; nak for redelivery");
                settle(&source, &message, AckKind::Nak(Some(nak_delay))).await;
            }
        }
    });
}

/// Half the consumer's `ack_wait`.
fn progress_interval(source: &Source) -> Duration {
    let secs = source
        .config
        .jetstream
        .as_ref()
        .map_or(30, |j| j.ack_wait_secs);
    Duration::from_millis(secs.saturating_mul(500).max(100))
}

/// Sends an ack, nak or term. If it is lost (connection down), the server redelivers after
/// `ack_wait`: never a loss, at worst a duplicate.
async fn settle(source: &Source, message: &jetstream::Message, kind: AckKind) {
    if let Err(e) = message.ack_with(kind).await {
        tracing::warn!(source = source.name(), error = %e, "cannot settle a JetStream message; it will be redelivered");
    }
}

// --- shared -----------------------------------------------------------------------------

/// Decodes a message into an envelope, normalizing it when it is not a CloudEvent and a
/// normalizer is configured. `Err` carries the metric reason and the error text.
fn decode(
    source: &Source,
    subject: &str,
    headers: Option<&HeaderMap>,
    payload: Bytes,
    message_id: Option<&str>,
) -> Result<Envelope, (&'static str, String)> {
    let metadata = ferry_nats::metadata(subject, headers);
    let event = match &source.normalizer {
        Some(n) if ferry_nats::is_raw(headers, &payload) => {
            let content_type =
                headers.and_then(|h| ferry_nats::header(h, ferry_nats::CONTENT_TYPE));
            n.apply(Raw {
                metadata: &metadata,
                body: payload,
                content_type,
                message_id,
            })
            .map_err(|e| ("invalid", e.to_string()))?
        }
        _ => ferry_nats::decode(headers, payload).map_err(|e| (e.reason(), e.to_string()))?,
    };
    Ok(Envelope::new(event, metadata))
}

fn reject(source: &Source, subject: &str, reason: &'static str, error: &str) {
    tracing::warn!(
        source = source.name(),
        subject,
        reason,
        error,
        "NATS message rejected"
    );
    source.cx.stats.reject(reason, 1);
}

/// Routes one envelope. `Err` carries the request status, the metric reason and the error.
async fn ingest(
    source: &Source,
    envelope: Envelope,
) -> Result<crate::pipeline::Waiter, (u16, &'static str, String)> {
    pipeline::ingest(
        &source.cx.generation,
        &source.cx.stats,
        vec![envelope],
        source.config.unrouted,
        Duration::from_millis(source.config.enqueue_timeout_ms),
    )
    .await
    .map_err(|e| match e {
        IngestError::Unrouted { .. } => (404, "unrouted", "no route matches the event".into()),
        IngestError::Dispatch(DispatchError::Overloaded { sink }) => {
            (503, "overloaded", format!("sink `{sink}` is at capacity"))
        }
        IngestError::Dispatch(DispatchError::Down { sink, .. }) => {
            (503, "overloaded", format!("sink `{sink}` is down"))
        }
        IngestError::Dispatch(DispatchError::Closed { sink }) => {
            (503, "overloaded", format!("sink `{sink}` is shutting down"))
        }
        IngestError::Dispatch(DispatchError::TooLarge { sink, .. }) => (
            413,
            "too_large",
            format!("too many events for sink `{sink}`"),
        ),
    })
}
