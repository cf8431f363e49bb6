//! Durable spool in front of a sink: events are acknowledged once they are on disk, and a
//! replay task delivers them from there.
//!
//! ```text
//! routes ─▶ spool queue ─▶ writer ─(append + fdatasync, then ack)─▶ log ─▶ replay ─▶ sink queue ─▶ sink
//!                                                                   ▲                              │
//!                                                                   └── cursor advances on confirm ◀┘
//! ```
//!
//! The writer takes whatever is queued (up to 512 events), appends it and syncs once (group
//! commit), then confirms those events to their senders. When the undelivered bytes would
//! pass `max_bytes`, it refuses new events as overloaded (HTTP 503 with `Retry-After`, a
//! withheld or negative acknowledgement on the brokers).
//!
//! The replay task reads the log in order and hands each event to the sink with a fresh
//! acknowledgement, at most the sink's `queue` at once. The sink retries and dead-letters
//! by its own policy; an event the sink finally failed stays in the spool and is sent again
//! after a backoff (1 s doubling to 30 s), so nothing is dropped. The cursor (the start of
//! the oldest undelivered event) is persisted at most every 100 ms and segments wholly
//! behind it are deleted: after a crash, events delivered since the last persisted cursor
//! are delivered again (at least once).

mod log;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ferry_core::{json, AckToken, FailureKind, Outcome, TransportMetadata};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use serde::Deserialize;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::pipeline::{Delivery, Envelope};
use crate::sinks::{SinkContext, SinkError};
use log::Position;

/// The `spool` table of a sink.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolConfig {
    /// The spool's directory; relative paths resolve against the working directory.
    pub path: PathBuf,
    /// Most bytes of undelivered events; past it new events are refused.
    pub max_bytes: u64,
}

/// The smallest `max_bytes` accepted.
const MIN_BYTES: u64 = 64 * 1024;
/// Events the writer takes per append (one sync).
const WRITE_BATCH: usize = 512;
/// How often the cursor is persisted while it moves.
const CURSOR_INTERVAL: Duration = Duration::from_millis(100);

impl SpoolConfig {
    pub(crate) fn check(&self) -> Result<(), (&'static str, String)> {
        if self.path.as_os_str().is_empty() {
            return Err(("path", "must not be empty".into()));
        }
        if self.max_bytes < MIN_BYTES {
            return Err(("max_bytes", format!("must be at least {MIN_BYTES}")));
        }
        Ok(())
    }

    /// Segments are an eighth of the bound (64 KiB to 64 MiB), so the disk holds at most
    /// about `max_bytes` plus one segment of delivered events not yet deleted.
    fn segment_bytes(&self) -> u64 {
        (self.max_bytes / 8).clamp(MIN_BYTES, 64 << 20)
    }
}

/// The spool's size, shared by the writer (adds) and the replay (removes).
struct Size {
    events: Gauge,
    bytes: Gauge,
}

impl Size {
    fn add(&self, events: u64, bytes: u64) {
        self.events.inc_by(events as i64);
        self.bytes.inc_by(bytes as i64);
    }
    fn bytes(&self) -> u64 {
        self.bytes.get().max(0) as u64
    }
}

/// Opens the spool of sink `name` and starts its writer and replay tasks. `sink` is the
/// sink's own queue; the returned sender is where routes send.
pub async fn start(
    name: &Arc<str>,
    config: &SpoolConfig,
    sink: mpsc::Sender<Delivery>,
    cx: &SinkContext,
) -> Result<mpsc::Sender<Delivery>, SinkError> {
    let dir = config.path.clone();
    let segment_bytes = config.segment_bytes();
    let opened = tokio::task::spawn_blocking(move || log::open(&dir, segment_bytes))
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))
        .and_then(|r| r)
        .map_err(|source| SinkError::Open {
            sink: name.to_string(),
            path: config.path.display().to_string(),
            source,
        })?;
    let labels = Metrics::sink(name);
    let size = Arc::new(Size {
        events: cx.metrics.spool_events.get_or_create(&labels).clone(),
        bytes: cx.metrics.spool_bytes.get_or_create(&labels).clone(),
    });
    size.events.set(opened.events as i64);
    size.bytes.set(opened.bytes as i64);
    if opened.events > 0 {
        tracing::info!(sink = %name, events = opened.events, bytes = opened.bytes, "spool holds undelivered events; replaying");
    }
    let (head_tx, head_rx) = watch::channel(opened.writer.head());
    let capacity = sink.max_capacity();
    let (tx, rx) = mpsc::channel(capacity);
    let writer = Writer {
        log: Some(opened.writer),
        max_bytes: config.max_bytes,
        size: Arc::clone(&size),
        spooled: cx.metrics.spooled.get_or_create(&labels).clone(),
        head: head_tx,
    };
    // The replay reads up to the writer's end, which starts where the log ends.
    let replay = Replay {
        name: Arc::clone(name),
        dir: config.path.clone(),
        reader: Some(opened.reader),
        cursor: opened.cursor,
        persisted: opened.cursor,
        head: head_rx,
        sink: Some(sink),
        window: capacity,
        size,
        replayed: cx.metrics.replayed.get_or_create(&labels).clone(),
    };
    cx.tracker.spawn(writer.run(rx));
    cx.tracker.spawn(replay.run());
    Ok(tx)
}

struct Writer {
    log: Option<log::Writer>,
    max_bytes: u64,
    size: Arc<Size>,
    spooled: Counter,
    head: watch::Sender<Position>,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Delivery>) {
        let mut batch = Vec::with_capacity(WRITE_BATCH);
        let mut payload = Vec::new();
        while rx.recv_many(&mut batch, WRITE_BATCH).await > 0 {
            let mut framed = Vec::new();
            let mut accepted = Vec::with_capacity(batch.len());
            let used = self.size.bytes();
            for d in batch.drain(..) {
                payload.clear();
                json::encode_into(&d.envelope.event, &mut payload);
                let start = framed.len();
                log::frame(&payload, &mut framed);
                if used + framed.len() as u64 > self.max_bytes {
                    framed.truncate(start);
                    d.ack
                        .fail(FailureKind::Overloaded, "the sink's spool is full");
                    continue;
                }
                accepted.push(d);
            }
            if accepted.is_empty() {
                continue;
            }
            let Some(mut log) = self.log.take() else {
                return;
            };
            let bytes = framed.len() as u64;
            let (log, result) = match tokio::task::spawn_blocking(move || {
                let r = log.append(&framed);
                (log, r)
            })
            .await
            {
                Ok(done) => done,
                Err(e) => {
                    tracing::error!(error = %e, "spool writer failed");
                    return;
                }
            };
            self.log = Some(log);
            match result {
                Ok(head) => {
                    self.size.add(accepted.len() as u64, bytes);
                    self.spooled.inc_by(accepted.len() as u64);
                    self.head.send_replace(head);
                    accepted.into_iter().for_each(|d| d.ack.confirm());
                }
                Err(e) => {
                    tracing::error!(error = %e, "spool write failed");
                    for d in accepted {
                        d.ack
                            .fail(FailureKind::Retryable, format!("spool write failed: {e}"));
                    }
                }
            }
        }
        // Dropping `head` tells the replay that no more events come.
    }
}

/// An event read from the log and handed to the sink.
struct Entry {
    end: Position,
    size: u64,
    /// `None` for a record that did not decode (skipped).
    envelope: Option<Arc<Envelope>>,
    done: bool,
    failures: u32,
}

struct Replay {
    name: Arc<str>,
    dir: PathBuf,
    reader: Option<log::Reader>,
    /// The start of the oldest undelivered event.
    cursor: Position,
    persisted: Position,
    head: watch::Receiver<Position>,
    sink: Option<mpsc::Sender<Delivery>>,
    window: usize,
    size: Arc<Size>,
    replayed: Counter,
}

impl Replay {
    async fn run(mut self) {
        let (done_tx, mut done_rx) = mpsc::channel::<(u64, Outcome)>(self.window.max(1));
        let mut entries: VecDeque<Entry> = VecDeque::new();
        // Sequence number of `entries[0]`.
        let mut base: u64 = 0;
        let mut retries: BinaryHeap<Reverse<(Instant, u64)>> = BinaryHeap::new();
        let mut writer_open = true;
        let mut last_persist = Instant::now();
        // Dispatched but not yet answered.
        let mut pending: usize = 0;
        loop {
            // Read and hand over as much as the window allows.
            if writer_open && entries.len() < self.window {
                let head = *self.head.borrow();
                let room = self.window - entries.len();
                match self.read(head, room).await {
                    Ok(records) => {
                        for record in records {
                            let seq = base + entries.len() as u64;
                            let size = record.end.offset - record.start.offset;
                            let Some(envelope) = self.decode(&record.payload) else {
                                // Undeliverable bytes: logged and skipped.
                                entries.push_back(Entry {
                                    end: record.end,
                                    size,
                                    envelope: None,
                                    done: true,
                                    failures: 0,
                                });
                                continue;
                            };
                            entries.push_back(Entry {
                                end: record.end,
                                size,
                                envelope: Some(Arc::clone(&envelope)),
                                done: false,
                                failures: 0,
                            });
                            if !self.dispatch(seq, envelope, &done_tx).await {
                                return self.finish().await;
                            }
                            pending += 1;
                        }
                    }
                    Err(e) => {
                        tracing::error!(sink = %self.name, error = %e, "spool read failed; skipping to the end of the log");
                        if let Some(r) = &mut self.reader {
                            r.skip_to(head);
                        }
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
                self.replayed.inc();
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
                entries.len() >= self.window || self.reader_at(head)
            };
            if writer_open && !caught_up {
                continue;
            }
            let next_retry = retries.peek().map(|Reverse((at, _))| *at);
            let persist_at =
                (self.cursor != self.persisted).then(|| last_persist + CURSOR_INTERVAL);
            tokio::select! {
                Some((seq, outcome)) = done_rx.recv() => {
                    pending -= 1;
                    let Some(entry) = seq.checked_sub(base).and_then(|i| entries.get_mut(i as usize)) else {
                        continue;
                    };
                    match outcome {
                        Outcome::Delivered => entry.done = true,
                        Outcome::Failed(f) => {
                            entry.failures += 1;
                            let delay = Duration::from_secs(1 << entry.failures.min(5).saturating_sub(1)).min(Duration::from_secs(30));
                            tracing::warn!(sink = %self.name, error = %f, ?delay, "spooled event not delivered; it stays in the spool");
                            if writer_open {
                                retries.push(Reverse((Instant::now() + delay, seq)));
                            }
                        }
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

    fn reader_at(&self, head: Position) -> bool {
        self.reader.as_ref().is_some_and(|r| r.position() >= head)
    }

    async fn read(&mut self, head: Position, max: usize) -> std::io::Result<Vec<log::Record>> {
        let Some(mut reader) = self.reader.take() else {
            return Ok(Vec::new());
        };
        if reader.position() >= head {
            self.reader = Some(reader);
            return Ok(Vec::new());
        }
        let (reader, result) = tokio::task::spawn_blocking(move || {
            let r = reader.read(head, max.min(WRITE_BATCH));
            (reader, r)
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?;
        self.reader = Some(reader);
        result
    }

    fn decode(&self, payload: &[u8]) -> Option<Arc<Envelope>> {
        match json::decode(payload) {
            Ok(event) => Some(Arc::new(Envelope::new(event, TransportMetadata::new()))),
            Err(e) => {
                tracing::error!(sink = %self.name, error = %e, "spooled record is not an event; skipped");
                None
            }
        }
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
        self.persist().await;
    }
}

impl Size {
    fn remove(&self, bytes: u64) {
        self.events.dec();
        self.bytes.dec_by(bytes as i64);
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
