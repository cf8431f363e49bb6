//! The replay task: reads the log in order, hands each event to the sink with a fresh
//! acknowledgement (at most the sink's `queue` at once) and moves the cursor over the
//! delivered prefix.
//!
//! - The sink retries and dead-letters by its own policy. An event it finally failed as
//!   retryable (the target is down, overloaded, timing out) stays in the spool and is sent
//!   again after a backoff (1 s doubling to 30 s), for as long as it takes: the target may
//!   come back. An event it failed for good (permanent: a `400`, too large, unroutable; only
//!   reaches here when the sink has no dead-letter sink) is appended to
//!   `<dir>/rejected.jsonl` with the reason and counted in `ferry_spool_quarantined_total`,
//!   so one poison event cannot stop the spool.
//! - A read error is transient: the position stays, reading is retried with a backoff
//!   (100 ms doubling to 5 s), the sink is reported not ready and the error is logged once.
//! - A corrupt span the reader found was already copied to the quarantine: it is counted
//!   and the cursor moves over it like a delivered event.
//! - The cursor (the start of the oldest undelivered event) is persisted at most every
//!   100 ms and segments wholly behind it are deleted: after a crash, events delivered since
//!   the last persisted cursor are delivered again (at least once).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_core::TransportMetadata;
use ferry_core::{json, AckToken, DeliveryFailure, ExtensionValue, FailureKind, Outcome};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::log::{self, Position};
use super::reader::{Item, Reader};
use super::{lock, quarantine, Size, CURSOR_INTERVAL, WRITE_BATCH};
use crate::delivery::extensions;
use crate::health::Readiness;
use crate::metrics::Metrics;
use crate::pipeline::{Delivery, Envelope};

/// First and longest wait before reading again after a read error.
const READ_RETRY: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

/// An event read from the log and handed to the sink.
struct Entry {
    end: Position,
    size: u64,
    /// `None` for bytes that were moved to the quarantine (nothing to deliver).
    envelope: Option<Arc<Envelope>>,
    done: bool,
    failures: u32,
}

pub(super) struct Replay {
    name: Arc<str>,
    dir: PathBuf,
    /// Shared with the blocking task of each read, so a panic there does not lose it.
    reader: Arc<Mutex<Reader>>,
    /// The start of the oldest undelivered event.
    cursor: Position,
    persisted: Position,
    head: watch::Receiver<Position>,
    sink: Option<mpsc::Sender<Delivery>>,
    window: usize,
    size: Arc<Size>,
    replayed: Counter,
    quarantined: Counter,
    readiness: Readiness,
    /// While reads fail: when to try again, and the delay after that.
    read_retry: Option<(Instant, Duration)>,
}

impl Replay {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        name: Arc<str>,
        dir: PathBuf,
        reader: Reader,
        cursor: Position,
        head: watch::Receiver<Position>,
        sink: mpsc::Sender<Delivery>,
        size: Arc<Size>,
        cx: &super::SpoolContext,
    ) -> Replay {
        let labels = Metrics::sink(&name);
        let window = sink.max_capacity();
        cx.readiness.remove(&unreadable_key(&name));
        Replay {
            replayed: cx.metrics.replayed.get_or_create(&labels).clone(),
            quarantined: cx.metrics.spool_quarantined.get_or_create(&labels).clone(),
            readiness: cx.readiness.clone(),
            name,
            dir,
            reader: Arc::new(Mutex::new(reader)),
            cursor,
            persisted: cursor,
            head,
            sink: Some(sink),
            window,
            size,
            read_retry: None,
        }
    }

    pub(super) async fn run(mut self) {
        let (done_tx, mut done_rx) = mpsc::channel::<(u64, Outcome)>(self.window.max(1));
        let mut entries: VecDeque<Entry> = VecDeque::new();
        // Sequence number of `entries[0]`.
        let mut base: u64 = 0;
        let mut retries: BinaryHeap<Reverse<(Instant, u64)>> = BinaryHeap::new();
        let mut writer_open = true;
        let mut last_persist = Instant::now();
        // Dispatched but not yet answered.
        let mut pending: usize = 0;
        // Where the reader is (kept here so the loop does not lock it).
        let mut read_pos = self.cursor;
        loop {
            // Read and hand over as much as the window allows.
            let may_read = self.read_retry.is_none_or(|(at, _)| at <= Instant::now());
            if writer_open && may_read && entries.len() < self.window {
                let head = *self.head.borrow();
                let room = self.window - entries.len();
                if read_pos < head {
                    let (result, pos) = self.read(head, room).await;
                    read_pos = pos;
                    match result {
                        Ok(items) => {
                            self.readable();
                            for item in items {
                                let seq = base + entries.len() as u64;
                                let (end, size) = (item.end(), item.size());
                                let envelope = match item {
                                    Item::Record(r) => self.decode(r).await,
                                    Item::Corrupt { .. } => {
                                        self.quarantined.inc();
                                        None
                                    }
                                };
                                entries.push_back(Entry {
                                    end,
                                    size,
                                    envelope: envelope.clone(),
                                    done: envelope.is_none(),
                                    failures: 0,
                                });
                                let Some(envelope) = envelope else { continue };
                                if !self.dispatch(seq, envelope, &done_tx).await {
                                    return self.finish().await;
                                }
                                pending += 1;
                            }
                        }
                        Err(e) => self.unreadable(&e),
                    }
                }
            }
            // Advance the cursor past the delivered prefix.
            let mut advanced = false;
            while entries.front().is_some_and(|e| e.done) {
                let Some(e) = entries.pop_front() else { break };
                base += 1;
                self.cursor = e.end;
                self.size.remove(e.size);
                if e.envelope.is_some() {
                    self.replayed.inc();
                }
                advanced = true;
            }
            if advanced && last_persist.elapsed() >= CURSOR_INTERVAL {
                self.persist().await;
                last_persist = Instant::now();
            }
            if !writer_open && pending == 0 {
                return self.finish().await;
            }
            let caught_up = {
                let head = *self.head.borrow();
                entries.len() >= self.window || read_pos >= head || self.read_retry.is_some()
            };
            if writer_open && !caught_up {
                continue;
            }
            let next_retry = retries.peek().map(|Reverse((at, _))| *at);
            let next_read = self
                .read_retry
                .map(|(at, _)| at)
                .filter(|_| writer_open && entries.len() < self.window);
            let persist_at =
                (self.cursor != self.persisted).then(|| last_persist + CURSOR_INTERVAL);
            tokio::select! {
                Some((seq, outcome)) = done_rx.recv() => {
                    pending -= 1;
                    let Some(entry) = seq.checked_sub(base).and_then(|i| entries.get_mut(i as usize)) else {
                        continue;
                    };
                    let Outcome::Failed(f) = outcome else {
                        entry.done = true;
                        continue;
                    };
                    entry.failures += 1;
                    if matches!(f.kind, FailureKind::Permanent | FailureKind::TooLarge) {
                        match self.reject(entry, &f).await {
                            Ok(()) => {
                                entry.done = true;
                                continue;
                            }
                            Err(e) => {
                                tracing::error!(sink = %self.name, error = %e, "cannot write a refused spooled event to rejected.jsonl; it stays in the spool");
                            }
                        }
                    }
                    let delay = Duration::from_secs(1 << entry.failures.min(5).saturating_sub(1)).min(Duration::from_secs(30));
                    tracing::warn!(sink = %self.name, error = %f, ?delay, "spooled event not delivered; it stays in the spool");
                    if writer_open {
                        retries.push(Reverse((Instant::now() + delay, seq)));
                    }
                }
                changed = self.head.changed(), if writer_open => {
                    if changed.is_err() {
                        // Shutdown: no new events; let what is in flight finish, and stop
                        // the sink from taking more (queued retries give up).
                        writer_open = false;
                        self.sink = None;
                        retries.clear();
                    }
                }
                _ = sleep_until(next_read), if next_read.is_some() => {}
                _ = sleep_until(next_retry), if next_retry.is_some() => {
                    let now = Instant::now();
                    while let Some(Reverse((at, seq))) = retries.peek().copied() {
                        if at > now {
                            break;
                        }
                        retries.pop();
                        let Some(envelope) = seq
                            .checked_sub(base)
                            .and_then(|i| entries.get(i as usize))
                            .and_then(|e| e.envelope.clone())
                        else {
                            continue;
                        };
                        if !self.dispatch(seq, envelope, &done_tx).await {
                            return self.finish().await;
                        }
                        pending += 1;
                    }
                }
                _ = sleep_until(persist_at), if persist_at.is_some() => {
                    self.persist().await;
                    last_persist = Instant::now();
                }
            }
        }
    }

    /// Reads up to `max` items; also returns where the reader then is.
    async fn read(&self, head: Position, max: usize) -> (std::io::Result<Vec<Item>>, Position) {
        let reader = Arc::clone(&self.reader);
        let result = tokio::task::spawn_blocking(move || {
            let mut r = lock(&reader);
            let items = r.read(head, max.min(WRITE_BATCH));
            (items, r.position())
        })
        .await;
        match result {
            Ok(done) => done,
            // The reader stays where it was (it moves only past whole records).
            Err(e) => (
                Err(std::io::Error::other(format!(
                    "spool read task failed: {e}"
                ))),
                lock(&self.reader).position(),
            ),
        }
    }

    /// A read failed: try again later, and say so once.
    fn unreadable(&mut self, e: &std::io::Error) {
        let delay = match self.read_retry {
            None => {
                tracing::error!(sink = %self.name, error = %e, "spool read failed; retrying until it succeeds (nothing is skipped)");
                self.readiness.set(&unreadable_key(&self.name), false);
                READ_RETRY.0
            }
            Some((_, delay)) => delay,
        };
        self.read_retry = Some((Instant::now() + delay, (delay * 2).min(READ_RETRY.1)));
    }

    fn readable(&mut self) {
        if self.read_retry.take().is_some() {
            tracing::info!(sink = %self.name, "spool readable again");
            self.readiness.remove(&unreadable_key(&self.name));
        }
    }

    /// The event in a record; a record that is not one is moved to the quarantine.
    async fn decode(&self, record: super::reader::Record) -> Option<Arc<Envelope>> {
        let error = match json::decode(&record.payload) {
            Ok(event) => return Some(Arc::new(Envelope::new(event, TransportMetadata::new()))),
            Err(e) => e.to_string(),
        };
        let dir = self.dir.clone();
        let at = record.start;
        let kept = tokio::task::spawn_blocking(move || {
            quarantine::payload(&dir, at, "undecodable", &record.payload)
        })
        .await;
        match kept {
            Ok(Ok(path)) => {
                tracing::error!(sink = %self.name, error, segment = at.segment, offset = at.offset, quarantine = %path.display(), "spooled record is not an event; moved to quarantine");
            }
            Ok(Err(e)) => {
                tracing::error!(sink = %self.name, error, segment = at.segment, offset = at.offset, quarantine_error = %e, "spooled record is not an event and could not be copied to the quarantine; skipped");
            }
            Err(e) => {
                tracing::error!(sink = %self.name, error, quarantine_error = %e, "spooled record is not an event; skipped");
            }
        }
        self.quarantined.inc();
        None
    }

    /// Appends an event the sink refused for good to `rejected.jsonl`, with the reason.
    async fn reject(&self, entry: &Entry, failure: &DeliveryFailure) -> std::io::Result<()> {
        let Some(envelope) = &entry.envelope else {
            return Ok(());
        };
        let mut event = envelope.event.clone();
        let reason = if failure.kind == FailureKind::TooLarge {
            "too-large"
        } else {
            "permanent"
        };
        let error: String = failure
            .message
            .chars()
            .filter(|c| !c.is_control())
            .take(512)
            .collect();
        let _ = event.set_extension(extensions::REASON, ExtensionValue::String(reason.into()));
        let _ = event.set_extension(
            extensions::ATTEMPTS,
            ExtensionValue::Integer(entry.failures.min(i32::MAX as u32) as i32),
        );
        let _ = event.set_extension(extensions::ERROR, ExtensionValue::String(error));
        let _ = event.set_extension(
            extensions::SINK,
            ExtensionValue::String(self.name.to_string()),
        );
        let line = json::encode(&event);
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || quarantine::reject(&dir, &line))
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))??;
        self.quarantined.inc();
        tracing::warn!(sink = %self.name, event.id = envelope.event.id(), error = %failure, "spooled event refused for good; moved to rejected.jsonl");
        Ok(())
    }

    /// Hands one event to the sink; its outcome comes back on `done` as `seq`. False once
    /// the sink is gone.
    async fn dispatch(
        &self,
        seq: u64,
        envelope: Arc<Envelope>,
        done: &mpsc::Sender<(u64, Outcome)>,
    ) -> bool {
        let Some(sink) = &self.sink else {
            return true;
        };
        let (root, waiter) = AckToken::new();
        let delivery = Delivery::new(envelope, root.fork(Arc::clone(&self.name)));
        root.confirm();
        if sink.send(delivery).await.is_err() {
            return false;
        }
        let done = done.clone();
        tokio::spawn(async move {
            let _ = done.send((seq, waiter.wait().await)).await;
        });
        true
    }

    async fn persist(&mut self) {
        if self.cursor == self.persisted {
            return;
        }
        let (dir, cursor) = (self.dir.clone(), self.cursor);
        let result = tokio::task::spawn_blocking(move || {
            log::write_cursor(&dir, cursor)?;
            log::remove_before(&dir, cursor.segment)
        })
        .await;
        match result {
            Ok(Ok(())) => self.persisted = cursor,
            Ok(Err(e)) => {
                tracing::error!(sink = %self.name, error = %e, "cannot persist the spool cursor")
            }
            Err(e) => tracing::error!(sink = %self.name, error = %e, "spool cursor task failed"),
        }
    }

    async fn finish(mut self) {
        self.readiness.remove(&unreadable_key(&self.name));
        self.persist().await;
    }
}

/// The readiness entry of a spool whose reads fail.
fn unreadable_key(sink: &str) -> String {
    format!("sink:{sink} (spool unreadable)")
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
