//! The data path between sources and sinks: envelopes, deliveries, config generations and
//! dispatch.
//!
//! A [`Generation`] is one consistent view of routes and sinks. A source loads the current
//! generation once per inbound message, so every event is handled entirely by one
//! generation.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use ferry_core::{AckToken, AckWaiter, CloudEvent, Outcome, TransportMetadata};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::mpsc;

use crate::metrics::Metrics;
use crate::router::{DataCache, DedupWindow, RouteTable, SinkSet, Subject};

/// An event with what came with it.
#[derive(Debug)]
pub struct Envelope {
    pub event: CloudEvent,
    /// Shared by the events of one message (a batch, a WebSocket connection's messages).
    pub metadata: Arc<TransportMetadata>,
    /// Routes the sender's policy allows; `None` means every route.
    pub routes: Option<Arc<[String]>>,
    /// The event's `event` span (debug level): its id, type, source and routes. What sinks log
    /// about the event is logged inside it. Disabled, and free, unless debug logging is on.
    pub span: tracing::Span,
}

impl Envelope {
    pub fn new(event: CloudEvent, metadata: impl Into<Arc<TransportMetadata>>) -> Envelope {
        Envelope {
            event,
            metadata: metadata.into(),
            routes: None,
            span: tracing::Span::none(),
        }
    }
}

/// One event on its way to one sink, with the obligation to confirm it.
#[derive(Debug)]
pub struct Delivery {
    pub envelope: Arc<Envelope>,
    pub ack: AckToken,
    /// Attempts already made (0 on the first).
    pub attempt: u32,
    /// Already a dead letter: never dead-lettered again.
    pub dead_lettered: bool,
}

impl Delivery {
    pub fn new(envelope: Arc<Envelope>, ack: AckToken) -> Delivery {
        Delivery {
            envelope,
            ack,
            attempt: 0,
            dead_lettered: false,
        }
    }

    /// A dead letter for `envelope`; the caller moves the original's ack token into it.
    pub(crate) fn dead_letter(envelope: Arc<Envelope>) -> PendingDeadLetter {
        PendingDeadLetter { envelope }
    }
}

/// A dead letter waiting for the failed delivery's acknowledgement token.
pub struct PendingDeadLetter {
    envelope: Arc<Envelope>,
}

impl PendingDeadLetter {
    pub fn with_ack(self, ack: AckToken) -> Delivery {
        Delivery {
            envelope: self.envelope,
            ack,
            attempt: 0,
            dead_lettered: true,
        }
    }
}

/// The sending half of a sink's bounded queue.
#[derive(Debug, Clone)]
pub struct SinkHandle {
    pub name: Arc<str>,
    pub kind: &'static str,
    tx: mpsc::Sender<Delivery>,
    /// Consulted at dispatch when a sink known down should refuse at once (no spool or
    /// dead-letter sink takes its events meanwhile).
    health: Option<Arc<SinkHealth>>,
}

impl SinkHandle {
    pub fn new(name: Arc<str>, kind: &'static str, tx: mpsc::Sender<Delivery>) -> Self {
        SinkHandle {
            name,
            kind,
            tx,
            health: None,
        }
    }

    /// Refuses events at dispatch while `health` says the sink is down.
    pub fn fail_fast(mut self, health: Arc<SinkHealth>) -> Self {
        self.health = Some(health);
        self
    }

    /// A sender that does not keep the queue open (for retries and dead letters).
    pub fn downgrade(&self) -> mpsc::WeakSender<Delivery> {
        self.tx.downgrade()
    }

    /// Events waiting in the queue.
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }
}

/// Why a sink is known down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownReason {
    /// Its circuit breaker is open and the next probe is not due yet.
    CircuitOpen,
    /// Its connection to the target failed or was lost, and is being retried.
    Disconnected,
}

/// What a sink's driver knows of its target, read at dispatch so that a sender whose event
/// goes to a sink known down is refused at once instead of waiting out the sink's retries.
/// When the next probe of an open circuit is due, events pass again: one of them is the probe.
#[derive(Debug)]
pub struct SinkHealth {
    disconnected: AtomicBool,
    /// While the circuit is open: when the next probe may go, in nanoseconds after `epoch`
    /// plus one; 0 while it is closed.
    probe_at: AtomicU64,
    epoch: Instant,
    refused_open: Counter,
    refused_disconnected: Counter,
}

impl SinkHealth {
    pub fn new(metrics: &Metrics, sink: &str) -> SinkHealth {
        let counter = |reason| {
            (metrics.fail_fast)
                .get_or_create(&crate::metrics::SinkReasonLabels {
                    sink: sink.to_owned(),
                    reason,
                })
                .clone()
        };
        SinkHealth {
            disconnected: AtomicBool::new(false),
            probe_at: AtomicU64::new(0),
            epoch: Instant::now(),
            refused_open: counter("circuit_open"),
            refused_disconnected: counter("disconnected"),
        }
    }

    /// Set by the driver: `false` after a failed connection attempt or a lost link.
    pub fn set_connected(&self, connected: bool) {
        self.disconnected.store(!connected, Ordering::Relaxed);
    }

    /// Set by the circuit breaker: when the next probe may go while open, `None` once closed.
    pub fn set_probe_at(&self, at: Option<Instant>) {
        let nanos = at.map_or(0, |at| {
            at.saturating_duration_since(self.epoch).as_nanos() as u64 + 1
        });
        self.probe_at.store(nanos, Ordering::Relaxed);
    }

    /// Why an event must not be handed to the sink now, and when to try again (counted).
    pub fn refusal(&self) -> Option<(DownReason, Duration)> {
        if self.disconnected.load(Ordering::Relaxed) {
            self.refused_disconnected.inc();
            return Some((DownReason::Disconnected, Duration::from_secs(1)));
        }
        let at = self.probe_at.load(Ordering::Relaxed);
        if at == 0 {
            return None;
        }
        let at = self.epoch + Duration::from_nanos(at - 1);
        let left = at.checked_duration_since(Instant::now())?;
        self.refused_open.inc();
        Some((DownReason::CircuitOpen, left))
    }
}

/// Restricts each envelope to the routes its grant names (`None`: every route), as
/// [`crate::security::source::SourceSecurity::authorize`] returns them.
pub fn grant_routes(envelopes: &mut [Envelope], grants: Vec<Option<Vec<String>>>) {
    for (e, routes) in envelopes.iter_mut().zip(grants) {
        e.routes = routes.map(Into::into);
    }
}

/// One consistent configuration: routes and the sinks they point to.
#[derive(Debug, Default)]
pub struct Generation {
    pub number: u64,
    pub routes: RouteTable,
    pub sinks: Vec<SinkHandle>,
    pub policies: crate::security::policy::Policies,
}

/// The current generation, swapped atomically on reload.
pub type SharedGeneration = Arc<ArcSwap<Generation>>;

/// Why events could not be handed to their sinks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DispatchError {
    /// A sink queue stayed full for the whole enqueue timeout.
    Overloaded { sink: Arc<str> },
    /// A sink is shutting down.
    Closed { sink: Arc<str> },
    /// A sink is known down; try again after `retry_after`.
    Down {
        sink: Arc<str>,
        reason: DownReason,
        retry_after: Duration,
    },
    /// A message has more events for one sink than its queue holds: it could never be
    /// handed on whole (Q3).
    TooLarge {
        sink: Arc<str>,
        events: usize,
        capacity: usize,
    },
}

impl Generation {
    /// The sinks of each envelope, computed before anything is sent so a batch can be
    /// refused as a whole.
    pub fn route(&self, source: &str, envelopes: &[Envelope]) -> Vec<SinkSet> {
        envelopes
            .iter()
            .map(|e| {
                let data = DataCache::default();
                self.routes.select(
                    source,
                    Subject::new(&e.event, &e.metadata, &data),
                    e.routes.as_deref(),
                    !e.span.is_disabled(),
                )
            })
            .collect()
    }

    /// Hands every envelope to its sinks, forking `ack` once per delivery. A message is handed
    /// on whole or not at all: room for all of its deliveries is reserved in every queue
    /// first, waiting at most `enqueue_timeout` in all, so a refused message left nothing
    /// behind that its sender's retry would duplicate.
    pub async fn dispatch(
        &self,
        envelopes: Vec<Envelope>,
        sets: &[SinkSet],
        ack: &AckToken,
        enqueue_timeout: Duration,
    ) -> Result<(), DispatchError> {
        // (sink index, deliveries): a message reaches few sinks, so a short list.
        let mut wanted: Vec<(usize, usize)> = Vec::new();
        for index in sets.iter().flat_map(SinkSet::iter) {
            match wanted.iter_mut().find(|(i, _)| *i == index) {
                Some((_, n)) => *n += 1,
                None => wanted.push((index, 1)),
            }
        }
        // A sink known down refuses before anything is reserved anywhere.
        for &(index, _) in &wanted {
            let sink = &self.sinks[index];
            if let Some((reason, retry_after)) = sink.health.as_ref().and_then(|h| h.refusal()) {
                return Err(DispatchError::Down {
                    sink: Arc::clone(&sink.name),
                    reason,
                    retry_after,
                });
            }
        }
        let deadline = tokio::time::Instant::now() + enqueue_timeout;
        let mut permits = Vec::with_capacity(wanted.len());
        for (index, n) in wanted {
            let sink = &self.sinks[index];
            let capacity = sink.tx.max_capacity();
            if n > capacity {
                return Err(DispatchError::TooLarge {
                    sink: Arc::clone(&sink.name),
                    events: n,
                    capacity,
                });
            }
            let reserved = match sink.tx.try_reserve_many(n) {
                Ok(p) => Ok(p),
                Err(mpsc::error::TrySendError::Full(())) => {
                    match tokio::time::timeout_at(deadline, sink.tx.reserve_many(n)).await {
                        Ok(Ok(p)) => Ok(p),
                        Ok(Err(_)) => Err(false),
                        Err(_) => Err(true),
                    }
                }
                Err(mpsc::error::TrySendError::Closed(())) => Err(false),
            };
            match reserved {
                Ok(p) => permits.push((index, p)),
                Err(full) => {
                    let sink = Arc::clone(&sink.name);
                    return Err(if full {
                        DispatchError::Overloaded { sink }
                    } else {
                        DispatchError::Closed { sink }
                    });
                }
            }
        }
        for (envelope, set) in envelopes.into_iter().zip(sets) {
            if set.is_empty() {
                continue;
            }
            let envelope = Arc::new(envelope);
            for index in set.iter() {
                let sink = &self.sinks[index];
                let delivery =
                    Delivery::new(Arc::clone(&envelope), ack.fork(Arc::clone(&sink.name)));
                // Reserved above: one permit per delivery.
                if let Some(permit) = permits
                    .iter_mut()
                    .find(|(i, _)| *i == index)
                    .and_then(|(_, p)| p.next())
                {
                    permit.send(delivery);
                }
            }
        }
        Ok(())
    }
}

/// Resolves when every sink confirmed one inbound message; then records the message's keys
/// in the windows of the deduplicating routes it went through.
pub struct Waiter {
    inner: AckWaiter,
    dedup_keys: Vec<(Arc<DedupWindow>, u64)>,
}

impl Waiter {
    pub async fn wait(self) -> Outcome {
        let outcome = self.inner.wait().await;
        if outcome == Outcome::Delivered {
            for (window, key) in self.dedup_keys {
                window.record(key);
            }
        }
        outcome
    }
}

/// What to do with an event that matches no route.
/// What a source does with an event no route matches (`unrouted`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unrouted {
    /// Accept (202) and count it.
    #[default]
    Accept,
    /// Answer 404.
    Reject,
}

/// Why a source could not hand its events on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IngestError {
    /// No route matched the event at `index` and the source rejects unrouted events.
    Unrouted { index: usize },
    /// A sink's queue stayed full, or the sink is closing: the sender should retry later.
    Dispatch(DispatchError),
}

/// Routes and dispatches one message's events (one, or a batch) within one generation.
/// Returns the waiter that resolves once every sink confirmed (immediately when no route
/// matched and unrouted events are accepted). Counts received and unrouted events.
pub async fn ingest(
    generation: &SharedGeneration,
    stats: &SourceStats,
    envelopes: Vec<Envelope>,
    unrouted: Unrouted,
    enqueue_timeout: Duration,
) -> Result<Waiter, IngestError> {
    let generation = generation.load_full();
    ingest_with(&generation, stats, envelopes, unrouted, enqueue_timeout).await
}

/// [`ingest`] within a generation the caller already loaded (to authorise against its
/// policies first).
pub async fn ingest_with(
    generation: &Generation,
    stats: &SourceStats,
    envelopes: Vec<Envelope>,
    unrouted: Unrouted,
    enqueue_timeout: Duration,
) -> Result<Waiter, IngestError> {
    stats.received.inc_by(envelopes.len() as u64);
    let mut envelopes = envelopes;
    for e in &mut envelopes {
        crate::trace::ensure(&mut e.event, &e.metadata);
        e.span = event_span(&stats.name, &e.event);
    }
    let mut sets = generation.route(&stats.name, &envelopes);
    for (e, set) in envelopes.iter().zip(&sets) {
        if !e.span.is_disabled() {
            record_routes(&e.span, set);
        }
    }
    if let Some(index) = sets.iter().position(SinkSet::is_unrouted) {
        if unrouted == Unrouted::Reject {
            return Err(IngestError::Unrouted { index });
        }
        stats
            .unrouted
            .inc_by(sets.iter().filter(|s| s.is_unrouted()).count() as u64);
    }
    let dedup_keys = sets
        .iter_mut()
        .flat_map(|s| std::mem::take(&mut s.dedup_keys))
        .collect();
    let (root, waiter) = AckToken::new();
    generation
        .dispatch(envelopes, &sets, &root, enqueue_timeout)
        .await
        .map_err(IngestError::Dispatch)?;
    root.confirm();
    Ok(Waiter {
        inner: waiter,
        dedup_keys,
    })
}

/// The span of one event's journey through Ferry, at debug level so it costs nothing
/// unless debug logging is on (`RUST_LOG=ferry=debug` or `[log] level`). `route` is filled in
/// once the router has chosen.
fn event_span(source: &str, event: &CloudEvent) -> tracing::Span {
    tracing::debug_span!(
        "event",
        source = source,
        event.id = event.id(),
        event.type = event.ty(),
        event.source = event.source(),
        route = tracing::field::Empty,
    )
}

/// Records the routes an event matched on its span, and logs the routing decision in it.
fn record_routes(span: &tracing::Span, set: &SinkSet) {
    let routes = set.route_names().join(",");
    span.record("route", routes.as_str());
    span.in_scope(|| {
        if set.is_unrouted() {
            tracing::debug!("event received: no route matched");
        } else if set.is_empty() {
            tracing::debug!("event received: dropped as a repeat");
        } else {
            tracing::debug!(sinks = set.len(), "event received and routed");
        }
    });
}

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

/// `ferry_sink_queue_depth{sink}`: the events waiting in each sink's queue of the current
/// generation, read at each scrape.
#[derive(Debug)]
pub struct QueueDepths(pub SharedGeneration);

impl prometheus_client::collector::Collector for QueueDepths {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::gauge::ConstGauge;
        let generation = self.0.load();
        let mut family = encoder.encode_descriptor(
            "ferry_sink_queue_depth",
            "Events waiting in a sink's queue",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for sink in &generation.sinks {
            let labels = Metrics::sink(&sink.name);
            ConstGauge::new(sink.queued() as i64).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
