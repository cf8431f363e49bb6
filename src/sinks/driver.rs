//! The sink driver: the one place where a delivery is published and then confirmed, retried,
//! dead-lettered or failed.
//!
//! A sink supplies a [`Publisher`]: how to connect, how to publish events on a connection and
//! how to tell that the connection is gone. The driver owns everything else: the reconnect
//! backoff, the deliveries taken but not yet published, the `in_flight` window, the publishes
//! under way, the circuit breaker, the retry timers and the dead letters on their way. It runs
//! as one task per sink, so no lock guards any of it.
//!
//! A delivery's way through the driver:
//!
//! 1. taken from the sink's queue (only while there is room in the window), and passed or
//!    failed at once by the circuit breaker;
//! 2. held until the connection may take a publish ([`Publisher::ready`]);
//! 3. published ([`Publisher::publish`]); the future it returns resolves once the target
//!    confirmed or refused;
//! 4. settled in [`State::settle`]: confirmed (the acknowledgement counts down), or by the
//!    sink's policy retried after a backoff (a timer here, then back to step 2), sent to the
//!    dead-letter sink's queue, or failed to its sender.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ferry_core::FailureKind;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

/// Publishes under way at once for a publisher that batches (see [`Publisher::batch`]).
pub(super) const BATCHED_PUBLISHES: usize = 2;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::Instrument;

use super::{circuit_key, SinkContext, SinkQueue};
use crate::backoff::Backoff;
use crate::config::SinkConfig;
use crate::delivery::{self, Admission, Breaker, Decision, Failure, RetryConfig, Transition};
use crate::metrics::{Metrics, SinkFailureLabels};
use crate::pipeline::{Delivery, Envelope};

/// How often the driver checks a connection while nothing else happens, so readiness drops
/// soon after a silent disconnect, and a queue closed while disconnected is noticed.
const HEALTH_INTERVAL: Duration = Duration::from_millis(500);

/// How a sink reaches its target. The driver calls it from its one task.
pub(super) trait Publisher: Send + Sync + 'static {
    /// A live connection.
    type Link: Send + Sync + 'static;

    /// What logs call this sink: `"AMQP"`, `"NATS"`…
    const KIND: &'static str;

    /// Connects. `lost` is the link that was lost, for a publisher that can keep part of it
    /// (AMQP keeps a connection whose channel the broker closed).
    fn connect(
        &self,
        lost: Option<&Self::Link>,
    ) -> impl Future<Output = Result<Self::Link, String>> + Send;

    /// Whether the link still works; `false` makes the driver connect again.
    fn is_open(&self, _link: &Self::Link) -> bool {
        true
    }

    /// Resolves once the link may take the next publish: a granted rate, a client that
    /// reconnects by itself. Must be cancel-safe.
    fn ready(&self, _link: &Self::Link) -> impl Future<Output = ()> + Send {
        std::future::ready(())
    }

    /// How many events one [`Publisher::publish`] may take. A publisher that takes more than
    /// one has at most [`BATCHED_PUBLISHES`] publishes under way, and keeps their writes in
    /// order itself.
    fn batch(&self) -> usize {
        1
    }

    /// Starts publishing `events` on `link`. The future resolves once the target answered,
    /// with one result per event, in order. Work done before the future is returned happens
    /// in the order of the calls.
    fn publish(
        &self,
        link: &Arc<Self::Link>,
        events: &[Arc<Envelope>],
    ) -> impl Future<Output = Vec<Attempt>> + Send + 'static;

    /// Closes the link at shutdown, once nothing is in flight on it.
    fn close(&self, _link: Arc<Self::Link>) -> impl Future<Output = ()> + Send {
        std::future::ready(())
    }
}

/// What one publish of one event came to.
pub(super) type Attempt = Result<(), Refusal>;

/// Why the target did not confirm an event.
#[derive(Debug)]
pub(super) struct Refusal {
    pub kind: FailureKind,
    pub message: String,
    /// The target's `Retry-After`: the next attempt waits at least this long.
    pub retry_after: Option<Duration>,
}

impl Refusal {
    pub(super) fn new(kind: FailureKind, message: impl Into<String>) -> Refusal {
        Refusal {
            kind,
            message: message.into(),
            retry_after: None,
        }
    }

    pub(super) fn permanent(message: impl Into<String>) -> Refusal {
        Refusal::new(FailureKind::Permanent, message)
    }

    pub(super) fn retryable(message: impl Into<String>) -> Refusal {
        Refusal::new(FailureKind::Retryable, message)
    }
}

/// Starts the driver task of a sink.
pub(super) fn spawn<P: Publisher>(
    publisher: P,
    rx: SinkQueue,
    stats: SinkStats,
    in_flight: usize,
    cx: &SinkContext,
) {
    let span = tracing::info_span!("sink", sink = %stats.name);
    let state = State {
        held: VecDeque::new(),
        sent: FuturesUnordered::new(),
        sent_count: 0,
        retries: BTreeMap::new(),
        retry_seq: 0,
        outbox: FuturesUnordered::new(),
        rx_open: true,
        limit: in_flight.max(1),
        retry_room: stats.retry_room,
        rx,
        stats,
        cx: cx.clone(),
    };
    cx.tracker.spawn(run(publisher, state).instrument(span));
}

/// Publishes under way: the deliveries and what their publish came to.
type Sent = BoxFuture<'static, (Vec<Delivery>, Vec<Attempt>)>;

/// Everything the driver owns besides the publisher.
struct State {
    rx: SinkQueue,
    stats: SinkStats,
    cx: SinkContext,
    /// Taken from the queue, or due for a retry, and not yet published; oldest first.
    held: VecDeque<Delivery>,
    sent: FuturesUnordered<Sent>,
    /// Deliveries in `sent`: at most `limit`.
    sent_count: usize,
    /// Failed deliveries waiting out their backoff, by when they are due (and a sequence
    /// number, as two may be due at once): while there are `retry_room` of them, the driver
    /// takes nothing new from the queue.
    retries: BTreeMap<(Instant, u64), Delivery>,
    retry_seq: u64,
    /// Dead letters waiting for room in the dead-letter sink's queue.
    outbox: FuturesUnordered<BoxFuture<'static, ()>>,
    rx_open: bool,
    limit: usize,
    retry_room: usize,
}

/// How a connection's delivering ended.
enum Ended {
    /// The queue closed and everything taken from it is settled.
    Closed,
    Lost,
}

async fn run<P: Publisher>(publisher: P, mut st: State) {
    let mut lost: Option<Arc<P::Link>> = None;
    // Readiness is this sink's while its queue is open; once it closed, the sink is being
    // shut down or replaced by a reload, and the entry belongs to its successor.
    while let Some(link) = connect(&publisher, &mut st, lost.take()).await {
        tracing::info!(sink = %st.stats.name, "{} sink connected", P::KIND);
        st.stats.health.set_connected(true);
        if st.rx_open {
            st.cx.set_ready(&st.stats.name, true);
        }
        match deliver(&publisher, &mut st, &link).await {
            Ended::Closed => {
                publisher.close(link).await;
                tracing::info!(sink = %st.stats.name, "{} sink closed", P::KIND);
                return;
            }
            Ended::Lost => {
                st.stats.disconnected();
                if st.rx_open {
                    st.cx.set_ready(&st.stats.name, false);
                }
                tracing::warn!(sink = %st.stats.name, "{} sink disconnected; reconnecting", P::KIND);
                lost = Some(link);
            }
        }
    }
}

/// Connects with backoff, settling what is still in flight meanwhile. `None` once the queue
/// closed while disconnected: what was held is abandoned, so its senders deliver it again.
async fn connect<P: Publisher>(
    publisher: &P,
    st: &mut State,
    lost: Option<Arc<P::Link>>,
) -> Option<Arc<P::Link>> {
    let mut backoff = Backoff::reconnect();
    let mut delay = None;
    let mut health = tokio::time::interval(HEALTH_INTERVAL);
    loop {
        let lost = lost.as_deref();
        let attempt = async move {
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
            }
            publisher.connect(lost).await
        };
        tokio::pin!(attempt);
        let result = loop {
            if !st.rx_open && st.sent.is_empty() && st.outbox.is_empty() {
                st.abandon_held("the sink shut down before it could connect");
                return None;
            }
            // While disconnected one delivery waits here; the rest wait in the queue.
            let take = st.rx_open && st.held.is_empty() && st.retries.len() < st.retry_room;
            let due = st.next_retry();
            tokio::select! {
                biased;
                Some((deliveries, attempts)) = st.sent.next(), if !st.sent.is_empty() => {
                    st.settle_all(deliveries, attempts);
                }
                () = sleep_until(due), if due.is_some() => st.due_retries(),
                Some(()) = st.outbox.next(), if !st.outbox.is_empty() => {}
                result = &mut attempt => break result,
                d = st.rx.recv(), if take => match d {
                    Some(d) => st.admit(d),
                    None => st.close(),
                },
                _ = health.tick() => {
                    if st.rx.is_closed() {
                        st.close();
                    }
                }
            }
        };
        match result {
            Ok(link) => return Some(Arc::new(link)),
            Err(e) => {
                let next = backoff.next_delay();
                st.stats.disconnected();
                tracing::warn!(sink = %st.stats.name, error = %e, retry_in_ms = next.as_millis() as u64, "{} sink cannot connect", P::KIND);
                delay = Some(next);
            }
        }
    }
}

/// Delivers on one link until the queue closes and everything is settled, or the link is lost.
async fn deliver<P: Publisher>(publisher: &P, st: &mut State, link: &Arc<P::Link>) -> Ended {
    let mut health = tokio::time::interval(HEALTH_INTERVAL);
    let mut taken = Vec::new();
    // Held deliveries are at most one publish's worth: the rest wait in the queue (and in
    // its metrics).
    let batch = publisher.batch().max(1);
    // A publisher that batches has at most two publishes under way: one being confirmed (a
    // flush) while the next is written. Meanwhile deliveries gather in the queue, and the
    // next publish takes them all (one write, one flush), instead of many small batches.
    let publishes = if batch > 1 {
        BATCHED_PUBLISHES
    } else {
        usize::MAX
    };
    loop {
        if !st.rx_open && st.held.is_empty() && st.sent.is_empty() && st.outbox.is_empty() {
            return Ended::Closed;
        }
        let room = if st.sent.len() >= publishes {
            0
        } else {
            st.limit - st.sent_count
        };
        let publish = room > 0 && !st.held.is_empty();
        let take = room > 0 && st.held.is_empty() && st.rx_open && st.retries.len() < st.retry_room;
        let due = st.next_retry();
        tokio::select! {
            biased;
            Some((deliveries, attempts)) = st.sent.next(), if !st.sent.is_empty() => {
                st.settle_all(deliveries, attempts);
                if !publisher.is_open(link) {
                    return Ended::Lost;
                }
            }
            () = sleep_until(due), if due.is_some() => st.due_retries(),
            Some(()) = st.outbox.next(), if !st.outbox.is_empty() => {}
            () = publisher.ready(link), if publish => {
                if !publisher.is_open(link) {
                    return Ended::Lost;
                }
                st.publish(publisher, link);
            }
            n = st.rx.recv_many(&mut taken, room.min(batch)), if take => {
                if n == 0 {
                    st.close();
                }
                for d in taken.drain(..) {
                    st.admit(d);
                }
            }
            _ = health.tick() => {
                if !publisher.is_open(link) {
                    return Ended::Lost;
                }
            }
        }
    }
}

impl State {
    /// The circuit breaker's verdict on a delivery about to be published.
    fn admit(&mut self, delivery: Delivery) {
        match self.stats.breaker.as_ref().map(|b| b.admit()) {
            None | Some(Admission::Go) => self.held.push_back(delivery),
            Some(Admission::Reject(probe_in)) => {
                self.stats.circuit_rejected.inc();
                let failure = Failure {
                    kind: FailureKind::Retryable,
                    message: "circuit open: the sink is marked down after consecutive failures",
                    not_before: Some(probe_in),
                };
                self.settle(delivery, &failure);
            }
        }
    }

    /// Publishes the oldest held deliveries, as many as one publish takes and the window has
    /// room for.
    fn publish<P: Publisher>(&mut self, publisher: &P, link: &Arc<P::Link>) {
        let n = (self.held.len())
            .min(publisher.batch().max(1))
            .min(self.limit - self.sent_count);
        let deliveries: Vec<Delivery> = self.held.drain(..n).collect();
        let events: Vec<Arc<Envelope>> =
            deliveries.iter().map(|d| Arc::clone(&d.envelope)).collect();
        let answer = publisher.publish(link, &events);
        self.sent_count += n;
        self.stats.in_flight.set(self.sent_count as i64);
        self.sent
            .push(async move { (deliveries, answer.await) }.boxed());
    }

    fn settle_all(&mut self, deliveries: Vec<Delivery>, attempts: Vec<Attempt>) {
        self.sent_count -= deliveries.len();
        self.stats.in_flight.set(self.sent_count as i64);
        let mut attempts = attempts.into_iter();
        for delivery in deliveries {
            match attempts.next() {
                Some(Ok(())) => self.confirm(delivery),
                Some(Err(refusal)) => self.fail(delivery, refusal),
                None => self.fail(delivery, Refusal::retryable("the sink gave no answer")),
            }
        }
    }

    fn confirm(&mut self, delivery: Delivery) {
        let stats = &self.stats;
        stats.delivered.inc();
        delivery.envelope.span.in_scope(
            || tracing::debug!(sink = %stats.name, attempt = delivery.attempt + 1, "delivered"),
        );
        stats.breaker_moved(stats.breaker.as_ref().and_then(|b| b.success()));
        delivery.ack.confirm();
    }

    fn fail(&mut self, delivery: Delivery, refusal: Refusal) {
        let stats = &self.stats;
        let Refusal {
            kind,
            message,
            retry_after,
        } = refusal;
        if let Some(b) = &stats.breaker {
            // A permanent failure is an answer: the target is up.
            let moved = match kind {
                FailureKind::Retryable => b.failure(),
                _ => b.success(),
            };
            stats.breaker_moved(moved);
        }
        delivery.envelope.span.in_scope(|| {
            tracing::warn!(sink = %stats.name, event.id = delivery.envelope.event.id(), attempt = delivery.attempt + 1, error = %message, "delivery failed");
        });
        stats.failures(kind).inc();
        let failure = Failure {
            kind,
            message: &message,
            not_before: retry_after,
        };
        self.settle(delivery, &failure);
    }

    /// Retries, dead-letters or fails a delivery by the sink's policy.
    fn settle(&mut self, delivery: Delivery, failure: &Failure<'_>) {
        let Failure { kind, message, .. } = *failure;
        let stats = &self.stats;
        let dead_letter = stats.dead_letter.is_some();
        match delivery::decide(
            stats.retry.as_ref(),
            dead_letter,
            &stats.name,
            &delivery,
            failure,
        ) {
            Decision::Retry(_) if !self.rx_open => {
                // Shutting down, or replaced by a reload: a retry would never be made.
                delivery
                    .ack
                    .fail(FailureKind::Abandoned, "sink closed before the retry");
            }
            Decision::Retry(delay) => {
                stats.retried.inc();
                delivery.envelope.span.in_scope(|| {
                    tracing::debug!(sink = %stats.name, delay_ms = delay.as_millis() as u64, "retry scheduled");
                });
                let mut delivery = delivery;
                delivery.attempt += 1;
                self.retry_seq += 1;
                self.retries
                    .insert((Instant::now() + delay, self.retry_seq), delivery);
            }
            Decision::DeadLetter(pending) => {
                let Some(queue) = (stats.dead_letter.as_ref()).and_then(mpsc::WeakSender::upgrade)
                else {
                    delivery.ack.fail(kind, message);
                    return;
                };
                stats.dead_lettered.inc();
                delivery.envelope.span.in_scope(|| {
                    tracing::debug!(sink = %stats.name, reason = %message, "sent to the dead-letter sink");
                });
                match queue.try_send(pending.with_ack(delivery.ack)) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(dead)) => self.outbox.push(
                        async move {
                            if let Err(mpsc::error::SendError(d)) = queue.send(dead).await {
                                d.ack
                                    .fail(FailureKind::Abandoned, "dead-letter sink closed");
                            }
                        }
                        .boxed(),
                    ),
                    Err(mpsc::error::TrySendError::Closed(d)) => {
                        d.ack
                            .fail(FailureKind::Abandoned, "dead-letter sink closed");
                    }
                }
            }
            Decision::Fail => delivery.ack.fail(kind, message),
        }
    }

    fn next_retry(&self) -> Option<Instant> {
        self.retries.keys().next().map(|(due, _)| *due)
    }

    /// Moves the retries that are due to the held deliveries (through the circuit breaker).
    fn due_retries(&mut self) {
        let now = Instant::now();
        while let Some(entry) = self.retries.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let delivery = entry.remove();
            self.admit(delivery);
        }
    }

    /// The queue is closed: no retry will be made.
    fn close(&mut self) {
        self.rx_open = false;
        for delivery in std::mem::take(&mut self.retries).into_values() {
            delivery
                .ack
                .fail(FailureKind::Abandoned, "sink closed before the retry");
        }
    }

    fn abandon_held(&mut self, why: &'static str) {
        for delivery in self.held.drain(..) {
            delivery.ack.fail(FailureKind::Abandoned, why);
        }
    }
}

/// A sink's counters, cached so the hot path does no label lookups, and its delivery policy.
pub(super) struct SinkStats {
    pub(super) name: Arc<str>,
    metrics: Metrics,
    delivered: Counter,
    in_flight: Gauge,
    retried: Counter,
    dead_lettered: Counter,
    circuit_open: Gauge,
    circuit_rejected: Counter,
    breaker: Option<Breaker>,
    /// What dispatch reads to refuse events while this sink is known down.
    pub(super) health: Arc<crate::pipeline::SinkHealth>,
    readiness: crate::health::Readiness,
    retry: Option<RetryConfig>,
    /// How many failed deliveries may wait for their retry: the queue's capacity.
    retry_room: usize,
    dead_letter: Option<mpsc::WeakSender<Delivery>>,
}

impl SinkStats {
    pub(super) fn new(
        name: &Arc<str>,
        config: &SinkConfig,
        cx: &SinkContext,
        dead_letter: Option<mpsc::WeakSender<Delivery>>,
    ) -> Self {
        let metrics = &cx.metrics;
        let labels = Metrics::sink(name);
        let circuit_open = metrics.circuit_open.get_or_create(&labels).clone();
        let health = Arc::new(crate::pipeline::SinkHealth::new(metrics, name));
        circuit_open.set(0);
        cx.readiness.remove(&circuit_key(name));
        cx.readiness.remove(&super::stopped_key(name));
        SinkStats {
            name: Arc::clone(name),
            metrics: metrics.clone(),
            delivered: metrics.delivered.get_or_create(&labels).clone(),
            in_flight: metrics.sink_in_flight.get_or_create(&labels).clone(),
            retried: metrics.retried.get_or_create(&labels).clone(),
            dead_lettered: metrics.dead_lettered.get_or_create(&labels).clone(),
            circuit_open,
            circuit_rejected: metrics.circuit_rejected.get_or_create(&labels).clone(),
            breaker: Breaker::new(config.circuit_breaker())
                .map(|b| b.reporting_to(Arc::clone(&health))),
            health,
            readiness: cx.readiness.clone(),
            retry: config.retry().cloned(),
            retry_room: config.queue().max(1),
            dead_letter,
        }
    }

    /// A connection attempt failed or the link was lost.
    fn disconnected(&self) {
        self.health.set_connected(false);
        (self.metrics.connect_failures)
            .get_or_create(&Metrics::sink(&self.name))
            .inc();
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

    fn failures(&self, kind: FailureKind) -> Counter {
        let kind = match kind {
            FailureKind::Retryable => "retryable",
            FailureKind::Permanent => "permanent",
            FailureKind::TooLarge => "too_large",
            FailureKind::Overloaded => "overloaded",
            FailureKind::Abandoned => "abandoned",
        };
        (self.metrics.delivery_failures)
            .get_or_create(&SinkFailureLabels {
                sink: self.name.to_string(),
                kind,
            })
            .clone()
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::tests::{context, sink_queue};

    /// A target that refuses every event, retryably.
    struct Refusing;

    impl Publisher for Refusing {
        type Link = ();
        const KIND: &'static str = "test";

        async fn connect(&self, _: Option<&()>) -> Result<(), String> {
            Ok(())
        }

        fn publish(
            &self,
            _: &Arc<()>,
            events: &[Arc<Envelope>],
        ) -> impl Future<Output = Vec<Attempt>> + Send + 'static {
            let refusals = events
                .iter()
                .map(|_| Err(Refusal::retryable("try again")))
                .collect();
            std::future::ready(refusals)
        }
    }

    fn delivery() -> (Delivery, ferry_core::AckWaiter) {
        let (ack, waiter) = ferry_core::AckToken::new();
        let event = ferry_core::CloudEvent::new("1", "/s", "t").unwrap();
        let envelope = Arc::new(Envelope::new(event, ferry_core::TransportMetadata::new()));
        (Delivery::new(envelope, ack), waiter)
    }

    /// M10: a retry waiting out its backoff does not keep its sink's queue open: once the
    /// queue's senders are gone the driver ends and the retry is abandoned, not kept waiting.
    #[tokio::test]
    async fn m10_a_sleeping_retry_does_not_hold_the_queue_open() {
        let cx = context();
        let config: SinkConfig = toml::from_str(
            "type = \"file\"\npath = \"x\"\nretry = { max_attempts = 3, initial_backoff_ms = 60000, max_backoff_ms = 60000 }",
        )
        .unwrap();
        let (tx, queue) = sink_queue(&cx);
        let stats = SinkStats::new(&Arc::from("s"), &config, &cx, None);
        spawn(Refusing, queue, stats, 4, &cx);
        let (d, waiter) = delivery();
        tx.send(d).await.unwrap();
        // The first attempt failed and a retry is scheduled a minute away.
        let retried = cx
            .metrics
            .retried
            .get_or_create(&Metrics::sink("s"))
            .clone();
        tokio::time::timeout(Duration::from_secs(5), async {
            while retried.get() == 0 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the first attempt failed");
        drop(tx);
        match tokio::time::timeout(Duration::from_secs(5), waiter.wait()).await {
            Ok(ferry_core::Outcome::Failed(f)) => assert_eq!(f.kind, FailureKind::Abandoned),
            Ok(ferry_core::Outcome::Delivered) => panic!("delivered"),
            Err(_) => panic!("the retry never settled"),
        }
        cx.tracker.close();
        tokio::time::timeout(Duration::from_secs(5), cx.tracker.wait())
            .await
            .expect("the driver ended with its queue");
    }
}
