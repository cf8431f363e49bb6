//! MQTT source: subscribes to topic filters (QoS 0 or 1) on a persistent session and
//! acknowledges each QoS 1 message with a manual PUBACK only once every routed sink confirmed.
//!
//! MQTT has no negative acknowledgement, and a broker redelivers an unacknowledged QoS 1
//! message only when the session resumes on a new connection — resending the whole session.
//! So when a delivery fails (or a sink queue stays full) the source keeps the message
//! unacknowledged and hands it to the pipeline again after a backoff, on the same connection.
//! When the connection is lost, the broker redelivers every message not yet acked on the next
//! one (same client id, `clean_start = false`). Acks belong to the connection that received the
//! message; one that settles after its connection is gone is not sent (the message comes again
//! instead).
//!
//! A message that is not a CloudEvent (and has no normalize template), is an invalid one, or
//! whose delivery failed permanently (retrying cannot help), is logged, counted and — after
//! being republished to `dead_letter_topic` when one is set, QoS 0 messages included —
//! acknowledged, so it cannot block the session.
//!
//! The in-flight window is Ferry's own: brokers do not all hold to the Receive Maximum (and
//! 3.1.1 has none), so messages beyond `inflight` wait in a bounded queue, and the socket is
//! not read while that queue and the settled messages waiting for their in-order PUBACK hold
//! `WAITING_FACTOR` windows between them — unless PUBACKs that may go are waiting for room in
//! the client's request queue, which only reading drains. PUBACKs go out in the order the
//! messages came in, as MQTT requires, whatever order their deliveries settle in; one that
//! finds the client's request queue full waits its turn and never costs the connection.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};
use tracing::Instrument;

use ferry_core::{FailureKind, Outcome};
use tokio::sync::mpsc;

use super::{SourceContext, SourceError};
use crate::backoff::Backoff;
use crate::config::{MqttProtocol, MqttSourceConfig};
use crate::mqtt_client::{self as client, Client, EventLoop, Message, Options, Wire};
use crate::normalize::{Normalizer, Raw};
use crate::pipeline::{self, Envelope, IngestError};

/// Starts consuming in the background; reconnects on its own. Readiness is reported through
/// the context while connected.
pub async fn start(config: &MqttSourceConfig, cx: SourceContext) -> Result<(), SourceError> {
    let err = |message: String| SourceError::Config {
        source_name: cx.name().to_owned(),
        message,
    };
    let (host, port) = config
        .broker_address()
        .map_err(|m| err(format!("url: {m}")))?;
    let keyed = |e: crate::config::KeyError| err(e.to_string());
    let password = crate::config::mqtt_password(config.password.as_ref()).map_err(keyed)?;
    let tls = crate::config::mqtt_client_tls(&config.url, config.tls.as_ref()).map_err(keyed)?;
    let normalizer = super::normalizer(cx.name(), config.normalize.as_ref())?;
    let filters = config
        .topics
        .iter()
        .map(|t| match &config.share_group {
            Some(group) => format!("$share/{group}/{t}"),
            None => t.clone(),
        })
        .collect();
    let inflight = config.inflight;
    let source = Source {
        options: Options {
            protocol: config.protocol,
            host,
            port,
            client_id: config
                .client_id
                .clone()
                .unwrap_or_else(|| format!("ferry-{}", cx.name())),
            clean_start: config.clean_start,
            session_expiry_secs: config.session_expiry_secs,
            keep_alive: Duration::from_secs(config.keep_alive_secs),
            credentials: config
                .username
                .clone()
                .map(|u| (u, password.unwrap_or_default())),
            tls,
            manual_acks: true,
            receive_maximum: Some(inflight),
            outgoing_inflight: inflight,
            max_packet_bytes: config.max_packet_bytes,
            requests: usize::from(inflight) * 2 + 16,
        },
        filters,
        config: config.clone(),
        normalizer,
        cx: cx.clone(),
    };
    cx.tracker.spawn(
        source
            .supervise()
            .instrument(tracing::info_span!("source", source = %cx.name())),
    );
    Ok(())
}

/// How many windows' worth of messages a connection holds waiting before it stops reading the
/// socket. A broker that keeps to the Receive Maximum never fills one window; Mosquitto before
/// 2.0.13 may send several times more under load, and stops delivering for good if its client
/// stops reading then, so the margin is wide.
const WAITING_FACTOR: usize = 16;

struct Source {
    options: Options,
    filters: Vec<String>,
    config: MqttSourceConfig,
    normalizer: Option<Normalizer>,
    cx: SourceContext,
}

/// A message whose routed deliveries resolved, reported back to the connection that took it.
struct Settled {
    connection: u64,
    /// The message's place in the PUBACK order (none for QoS 0).
    seq: Option<u64>,
    message: Message,
    outcome: Settlement,
}

/// What a settled message's deliveries came to.
enum Settlement {
    Delivered,
    /// Worth another try (the sink was down, overloaded, timed out).
    Retry,
    /// Retrying cannot help (a sink refused the event for good): refuse the message.
    Refused(String),
}

/// Why a connection ended.
enum End {
    Shutdown,
    /// A delivery failed: reconnect so the broker redelivers what was not acked.
    Redeliver(String),
    Lost(String),
}

impl Source {
    async fn supervise(self) {
        let name = self.cx.name().to_owned();
        let (settled_tx, mut settled_rx) = mpsc::unbounded_channel();
        let mut backoff = Backoff::reconnect();
        let mut connection = 0u64;
        // After a connection dropped for redelivery, the backoff keeps growing across
        // reconnects until a delivery succeeds, instead of starting over at the subscription.
        let mut after_failure = false;
        loop {
            connection += 1;
            let (client, mut events) = client::new(&self.options);
            if let Err(e) = client.subscribe(&self.filters, self.config.qos) {
                tracing::error!(source = %name, error = %e, "cannot queue the subscription");
            }
            let mut conn = Connection {
                source: &self,
                id: connection,
                client: &client,
                settled_tx: &settled_tx,
                in_flight: 0,
                window: usize::from(self.config.inflight),
                waiting: VecDeque::new(),
                acks: VecDeque::new(),
                acks_base: 0,
                settled_unacked: 0,
                dead_unwritten: VecDeque::new(),
                dead_awaiting: HashMap::new(),
                retries: VecDeque::new(),
                retry_backoff: Backoff::reconnect(),
                after_failure,
            };
            let end = conn.run(&mut events, &mut settled_rx, &mut backoff).await;
            after_failure = matches!(end, End::Redeliver(_));
            self.cx.set_ready(false);
            self.cx.stats.connections.set(0);
            match end {
                End::Shutdown => {
                    client.disconnect();
                    let _ = tokio::time::timeout(Duration::from_secs(2), async {
                        while events.poll().await.is_ok() {}
                    })
                    .await;
                    tracing::info!(source = %name, "MQTT source stopped");
                    return;
                }
                End::Redeliver(reason) => {
                    tracing::warn!(source = %name, reason = %reason, "reconnecting so the broker redelivers unacknowledged messages");
                }
                End::Lost(e) => {
                    tracing::warn!(source = %name, error = %e, "MQTT connection lost");
                }
            }
            drop(events);
            tokio::select! {
                () = tokio::time::sleep(backoff.next_delay()) => {}
                () = self.cx.shutdown.cancelled() => return,
            }
        }
    }
}

/// One connection's state.
struct Connection<'a> {
    source: &'a Source,
    id: u64,
    client: &'a Client,
    settled_tx: &'a mpsc::UnboundedSender<Settled>,
    /// Messages handed to the pipeline and not settled yet.
    in_flight: usize,
    /// The most messages in flight at once.
    window: usize,
    /// Messages received while the window was full, oldest first; at most
    /// `WAITING_FACTOR * window`.
    waiting: VecDeque<(Option<u64>, Message)>,
    /// Every QoS 1 message not acknowledged yet, in arrival order: `Some` once it may be
    /// acknowledged. PUBACKs leave from the front only.
    acks: VecDeque<Option<Message>>,
    /// The sequence number of the front of `acks`.
    acks_base: u64,
    /// The `Some` entries of `acks`: settled, holding their payload until the PUBACKs before
    /// them went.
    settled_unacked: usize,
    /// Rejected messages whose dead-letter copy is queued, oldest first.
    dead_unwritten: VecDeque<(Option<u64>, Message)>,
    /// Rejected messages whose dead-letter copy awaits its PUBACK, by packet id.
    dead_awaiting: HashMap<u16, (Option<u64>, Message)>,
    /// Messages whose delivery failed, with when to try again, in that order.
    retries: VecDeque<(tokio::time::Instant, Option<u64>, Message)>,
    retry_backoff: Backoff,
    /// The previous connection ended to have the broker redeliver.
    after_failure: bool,
}

impl Connection<'_> {
    async fn run(
        &mut self,
        events: &mut EventLoop,
        settled_rx: &mut mpsc::UnboundedReceiver<Settled>,
        backoff: &mut Backoff,
    ) -> End {
        let cx = &self.source.cx;
        let mut draining = false;
        loop {
            self.flush_acks();
            if !draining {
                if let Err(end) = self.start_waiting().await {
                    return end;
                }
            }
            if draining
                && self.in_flight == 0
                && self.acks.iter().all(Option::is_none)
                && self.dead_unwritten.is_empty()
                && self.dead_awaiting.is_empty()
            {
                return End::Shutdown;
            }
            // The socket is read while there is room to hold what it brings: messages waiting
            // for the window and settled ones waiting for their turn to be acked count (a
            // front that is being retried holds back every PUBACK behind it). A dead-letter
            // publish awaiting its PUBACK needs the socket read to make progress, and so do
            // PUBACKs that may go but found the client's request queue full: only polling the
            // event loop sends what is queued. (Without that, the request queue could still
            // hold PUBACKs when the room filled up — Mosquitto 2.0.11 sends far past the
            // Receive Maximum after a burst of PUBACKs — and once the front settled, its
            // PUBACKs found no place: nothing was read or sent again on that connection.)
            let acks_ready = self.acks.front().is_some_and(Option::is_some);
            let room = self.waiting.len() + self.settled_unacked < WAITING_FACTOR * self.window
                || acks_ready
                || !self.dead_unwritten.is_empty()
                || !self.dead_awaiting.is_empty();
            let (retry_due, next_retry) = match self.retries.front() {
                Some(r) => (true, r.0),
                None => (false, tokio::time::Instant::now()),
            };
            tokio::select! {
                () = cx.shutdown.cancelled(), if !draining => {
                    // Stop taking messages; let in-flight ones settle and be acked.
                    draining = true;
                    cx.set_ready(false);
                }
                Some(s) = settled_rx.recv() => {
                    if s.connection != self.id {
                        continue;
                    }
                    self.in_flight -= 1;
                    match s.outcome {
                        Settlement::Delivered => {
                            self.settle(s.seq, s.message);
                            self.retry_backoff.reset();
                            backoff.reset();
                        }
                        Settlement::Retry if s.message.needs_ack() => {
                            self.retry_later(s.seq, s.message);
                        }
                        Settlement::Retry => {}
                        Settlement::Refused(error) => {
                            if let Err(end) = self.reject(s.seq, s.message, "delivery_failed", &error) {
                                return end;
                            }
                        }
                    }
                }
                () = tokio::time::sleep_until(next_retry), if retry_due && !draining => {
                    let now = tokio::time::Instant::now();
                    while self.retries.front().is_some_and(|r| r.0 <= now) {
                        let (_, seq, m) = self.retries.pop_front().expect("a due retry");
                        if let Err(end) = self.handle(seq, m).await {
                            return end;
                        }
                    }
                }
                ev = events.poll(), if room => match ev {
                    Err(e) => return End::Lost(e),
                    Ok(Wire::ConnAck {
                        session_present, ..
                    }) => {
                        tracing::info!(source = %cx.name(), client_id = %self.source.options.client_id, session_present, "MQTT connected");
                    }
                    Ok(Wire::SubAck { refused }) => {
                        if !refused.is_empty() {
                            return End::Lost(format!("subscription refused: {}", refused.join(", ")));
                        }
                        tracing::info!(source = %cx.name(), filters = ?self.source.filters, "MQTT subscribed");
                        if !self.after_failure {
                            backoff.reset();
                        }
                        cx.stats.connections.set(1);
                        if !draining {
                            cx.set_ready(true);
                        }
                    }
                    // While draining, new messages are left unacknowledged: the broker keeps
                    // them in the session for the next start.
                    Ok(Wire::Message(m)) if !draining => {
                        let seq = m.needs_ack().then(|| {
                            self.acks.push_back(None);
                            self.acks_base + self.acks.len() as u64 - 1
                        });
                        if self.in_flight >= self.window || !self.waiting.is_empty() {
                            self.waiting.push_back((seq, m));
                        } else if let Err(end) = self.handle(seq, m).await {
                            return end;
                        }
                    }
                    Ok(Wire::Published { pkid }) => {
                        if let Some(m) = self.dead_unwritten.pop_front() {
                            self.dead_awaiting.insert(pkid, m);
                        }
                    }
                    Ok(Wire::PubAck { pkid, refused }) => {
                        if let Some((seq, m)) = self.dead_awaiting.remove(&pkid) {
                            if let Some(reason) = refused {
                                return End::Redeliver(format!("dead-letter publish refused: {reason}"));
                            }
                            self.settle(seq, m);
                        }
                    }
                    Ok(Wire::Disconnect(reason)) => return End::Lost(format!("broker disconnected: {reason}")),
                    Ok(_) => {}
                },
            }
        }
    }

    /// Holds a message whose delivery failed, unacknowledged, and hands it to the pipeline
    /// again after a backoff: MQTT has no negative acknowledgement, and the broker would
    /// redeliver only on a new connection (at the cost of resending the whole session).
    fn retry_later(&mut self, seq: Option<u64>, message: Message) {
        let at = tokio::time::Instant::now() + self.retry_backoff.next_delay();
        self.retries.push_back((at, seq, message));
    }

    /// Marks a message as done: its PUBACK may go once every earlier one went.
    fn settle(&mut self, seq: Option<u64>, message: Message) {
        if let Some(seq) = seq {
            if let Some(slot) = seq
                .checked_sub(self.acks_base)
                .and_then(|i| self.acks.get_mut(i as usize))
            {
                if slot.is_none() {
                    self.settled_unacked += 1;
                }
                *slot = Some(message);
            }
        }
    }

    /// Queues the PUBACKs that may go, in arrival order, as far as the client's request queue
    /// takes them.
    fn flush_acks(&mut self) {
        while let Some(Some(m)) = self.acks.front() {
            // A refusal means the queue is full (a closed one shows as a poll error).
            if self.client.ack(m).is_err() {
                break;
            }
            self.acks.pop_front();
            self.acks_base += 1;
            self.settled_unacked -= 1;
        }
    }

    /// Hands waiting messages to the pipeline while the window has room.
    async fn start_waiting(&mut self) -> Result<(), End> {
        while self.in_flight < self.window {
            let Some((seq, m)) = self.waiting.pop_front() else {
                break;
            };
            self.handle(seq, m).await?;
        }
        Ok(())
    }

    /// Decodes, routes and hands one message to the pipeline.
    async fn handle(&mut self, seq: Option<u64>, message: Message) -> Result<(), End> {
        let source = self.source;
        let cx = &source.cx;
        let started = Instant::now();
        let topic = message.topic();
        let properties = message.properties();
        let v5 = source.options.protocol == MqttProtocol::V5;
        let metadata = if v5 {
            ferry_mqtt::metadata_v5(&topic, properties)
        } else {
            ferry_mqtt::metadata_v311(&topic)
        };
        let payload = message.payload().clone();
        let decoded = if v5 {
            ferry_mqtt::decode_v5(payload.clone(), properties)
        } else {
            ferry_mqtt::decode_v311(&payload)
        };
        let event = match (decoded, &source.normalizer) {
            (Ok(event), _) => event,
            (Err(ferry_mqtt::DecodeError::NotCloudEvent), Some(n)) => {
                // MQTT 3.1.1 (and many MQTT 5 devices) send no content type: a payload that
                // is a JSON document is taken as application/json, unless the template says.
                let declared = properties.and_then(|p| p.content_type.as_deref()).or(source
                    .config
                    .normalize
                    .as_ref()
                    .and_then(|n| n.datacontenttype.as_deref()));
                let content_type = match declared {
                    Some(ct) => Some(ct),
                    None if serde_json::from_slice::<serde::de::IgnoredAny>(&payload).is_ok() => {
                        Some("application/json")
                    }
                    None => None,
                };
                let raw = Raw {
                    metadata: &metadata,
                    body: payload,
                    content_type,
                    message_id: None,
                };
                match n.apply(raw) {
                    Ok(event) => event,
                    Err(e) => return self.reject(seq, message, "invalid", &e.to_string()),
                }
            }
            (Err(e @ ferry_mqtt::DecodeError::Invalid { .. }), _) => {
                return self.reject(seq, message, "invalid", &e.to_string())
            }
            (Err(e), _) => return self.reject(seq, message, "undecodable", &e.to_string()),
        };
        let envelope = Envelope::new(event, metadata);
        let enqueue_timeout = Duration::from_millis(source.config.enqueue_timeout_ms);
        let ingested = pipeline::ingest(
            &cx.generation,
            &cx.stats,
            vec![envelope],
            source.config.unrouted,
            enqueue_timeout,
        )
        .await;
        let waiter = match ingested {
            Ok(w) => w,
            Err(IngestError::Unrouted { .. }) => {
                return self.reject(seq, message, "unrouted", "no route matches the event")
            }
            Err(IngestError::Dispatch(e)) => {
                if message.needs_ack() {
                    tracing::warn!(source = %cx.name(), error = ?e, "sink unavailable; the message will be retried");
                    self.retry_later(seq, message);
                    return Ok(());
                }
                tracing::warn!(source = %cx.name(), error = ?e, "QoS 0 message dropped: sink unavailable");
                return Ok(());
            }
        };
        self.in_flight += 1;
        let settled_tx = self.settled_tx.clone();
        let stats = cx.stats.clone();
        let connection = self.id;
        cx.tracker.spawn(async move {
            let outcome = match waiter.wait().await {
                Outcome::Delivered => {
                    stats.accepted.inc();
                    stats.ack_latency.observe(started.elapsed().as_secs_f64());
                    Settlement::Delivered
                }
                Outcome::Failed(f)
                    if matches!(f.kind, FailureKind::Permanent | FailureKind::TooLarge) =>
                {
                    Settlement::Refused(f.to_string())
                }
                Outcome::Failed(f) => {
                    tracing::warn!(source = %stats.name, topic = %topic, error = %f, "delivery failed; the message will be retried");
                    Settlement::Retry
                }
            };
            let _ = settled_tx.send(Settled {
                connection,
                seq,
                message,
                outcome,
            });
        });
        Ok(())
    }

    /// Refuses a message for good: log, count, dead-letter (when configured), then ack.
    fn reject(
        &mut self,
        seq: Option<u64>,
        message: Message,
        reason: &'static str,
        error: &str,
    ) -> Result<(), End> {
        let cx = &self.source.cx;
        tracing::warn!(source = %cx.name(), topic = %message.topic(), reason, error, "message rejected");
        cx.stats.reject(reason, 1);
        let Some(topic) = &self.source.config.dead_letter_topic else {
            self.settle(seq, message);
            return Ok(());
        };
        // Keep what describes the payload; drop what was for this hop only. (MQTT 3.1.1 has
        // no properties: the copy goes without them.)
        let mut properties = message.properties().cloned().unwrap_or_default();
        properties.topic_alias = None;
        properties.subscription_identifiers.clear();
        properties
            .user_properties
            .push(("ferry-reject-reason".into(), reason.into()));
        let queued = self.client.publish(
            topic.clone(),
            1,
            false,
            message.payload().clone(),
            Some(properties),
        );
        match queued {
            Ok(()) => self.dead_unwritten.push_back((seq, message)),
            Err(e) if message.needs_ack() => {
                return Err(End::Lost(format!("cannot queue dead-letter publish: {e}")))
            }
            // A QoS 0 message was sent at most once: its copy is dropped rather than the
            // connection when the request queue is full.
            Err(e) => {
                tracing::warn!(source = %cx.name(), error = %e, "dead-letter copy of a QoS 0 message dropped");
            }
        }
        Ok(())
    }
}
