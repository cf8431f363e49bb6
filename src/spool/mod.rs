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
//! withheld or negative acknowledgement on the brokers). An event that could never fit (over
//! `max_bytes`, or over the 64 MiB a record holds) is refused as too large before anything
//! is written.
//!
//! The replay task (`replay`) reads the log in order and hands each event to the sink with
//! a fresh acknowledgement, at most the sink's `queue` at once; see there for what happens
//! to failures, read errors and corrupt records.

mod disk;
mod log;
mod quarantine;
mod reader;
mod record;
mod replay;

use crate::key_error::KeyError;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tracing::Instrument;

use ferry_core::{json, FailureKind};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use serde::Deserialize;
use tokio::sync::{mpsc, watch};
use tokio_util::task::TaskTracker;

use crate::health::Readiness;
use crate::metrics::Metrics;
use crate::pipeline::Delivery;
use disk::Disk;
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

/// What the spool needs from the gateway: its metrics, the readiness it reports an unreadable
/// spool in, and the tracker its tasks run on (awaited on shutdown).
#[derive(Clone)]
pub struct SpoolContext {
    pub metrics: Metrics,
    pub tracker: TaskTracker,
    pub readiness: Readiness,
}

/// The spool's directory could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open {path}: {source}")]
pub struct OpenError {
    pub path: String,
    pub source: std::io::Error,
}

/// The smallest `max_bytes` accepted.
const MIN_BYTES: u64 = 64 * 1024;
/// Events the writer takes per append (one sync).
const WRITE_BATCH: usize = 512;
/// How often the cursor is persisted while it moves.
const CURSOR_INTERVAL: Duration = Duration::from_millis(100);

impl SpoolConfig {
    pub(crate) fn check(&self) -> Result<(), KeyError> {
        if self.path.as_os_str().is_empty() {
            return Err(KeyError::at("path", "must not be empty"));
        }
        if self.max_bytes < MIN_BYTES {
            return Err(KeyError::at(
                "max_bytes",
                format!("must be at least {MIN_BYTES}"),
            ));
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

    fn remove(&self, bytes: u64) {
        // A corrupt span counts as one event, whatever it held: never go below zero.
        if self.events.get() > 0 {
            self.events.dec();
        }
        self.bytes.dec_by(bytes as i64);
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
    cx: &SpoolContext,
) -> Result<mpsc::Sender<Delivery>, OpenError> {
    start_on(Arc::new(disk::Os), name, config, sink, cx).await
}

async fn start_on(
    disk: Arc<dyn Disk>,
    name: &Arc<str>,
    config: &SpoolConfig,
    sink: mpsc::Sender<Delivery>,
    cx: &SpoolContext,
) -> Result<mpsc::Sender<Delivery>, OpenError> {
    let dir = config.path.clone();
    let segment_bytes = config.segment_bytes();
    let opened = tokio::task::spawn_blocking(move || log::open(&dir, segment_bytes, disk))
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))
        .and_then(|r| r)
        .map_err(|source| OpenError {
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
    let quarantined = cx.metrics.spool_quarantined.get_or_create(&labels).clone();
    quarantined.inc_by(opened.quarantined);
    if opened.events > 0 {
        tracing::info!(sink = %name, events = opened.events, bytes = opened.bytes, "spool holds undelivered events; replaying");
    }
    let (head_tx, head_rx) = watch::channel(opened.writer.head());
    let capacity = sink.max_capacity();
    let (tx, rx) = mpsc::channel(capacity);
    let writer = Writer {
        log: Arc::new(Mutex::new(opened.writer)),
        max_bytes: config.max_bytes,
        size: Arc::clone(&size),
        spooled: cx.metrics.spooled.get_or_create(&labels).clone(),
        head: head_tx,
    };
    // The replay reads up to the writer's end, which starts where the log ends.
    let replay = replay::Replay::new(
        Arc::clone(name),
        config.path.clone(),
        opened.reader,
        opened.cursor,
        head_rx,
        sink,
        size,
        cx,
    );
    cx.tracker.spawn(
        writer
            .run(rx)
            .instrument(tracing::info_span!("spool", sink = %name, task = "writer")),
    );
    cx.tracker.spawn(
        replay
            .run()
            .instrument(tracing::info_span!("spool", sink = %name, task = "replay")),
    );
    Ok(tx)
}

/// Locks a log half shared with the blocking pool. A task that panicked holding it left
/// it consistent (positions move only after whole records), so a poisoned lock is used on.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Writer {
    /// Shared with the blocking task of each append, so a panic there does not lose it.
    log: Arc<Mutex<log::Writer>>,
    max_bytes: u64,
    size: Arc<Size>,
    spooled: Counter,
    head: watch::Sender<Position>,
}

impl Writer {
    async fn run(self, mut rx: mpsc::Receiver<Delivery>) {
        let mut batch = Vec::with_capacity(WRITE_BATCH);
        let mut payload = Vec::new();
        let max_payload = log::max_payload(self.max_bytes);
        while rx.recv_many(&mut batch, WRITE_BATCH).await > 0 {
            let mut framed = Vec::new();
            let mut accepted = Vec::with_capacity(batch.len());
            let used = self.size.bytes();
            for d in batch.drain(..) {
                payload.clear();
                json::encode_into(&d.envelope.event, &mut payload);
                if payload.len() as u64 > max_payload {
                    d.ack.fail(
                        FailureKind::TooLarge,
                        format!(
                            "event too large for the spool: {} bytes, at most {max_payload}",
                            payload.len()
                        ),
                    );
                    continue;
                }
                let start = framed.len();
                record::frame(&payload, &mut framed);
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
            let bytes = framed.len() as u64;
            let records = accepted.len() as u64;
            let log = Arc::clone(&self.log);
            let result = tokio::task::spawn_blocking(move || lock(&log).append(&framed, records))
                .await
                .unwrap_or_else(|e| {
                    // The append may have left part of the batch behind: cut it off first.
                    lock(&self.log).mark_dirty();
                    Err(std::io::Error::other(format!(
                        "spool append task failed: {e}"
                    )))
                });
            match result {
                Ok(head) => {
                    self.size.add(records, bytes);
                    self.spooled.inc_by(records);
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

#[cfg(test)]
mod tests;

/// See [`crate::fuzzing::spool_recover`].
#[cfg(feature = "fuzzing")]
pub(crate) fn fuzz_recover(dir: &std::path::Path) -> std::io::Result<u64> {
    let opened = log::open(dir, 1 << 20, Arc::new(disk::Os))?;
    let head = opened.writer.head();
    let mut reader = opened.reader;
    let mut records = 0;
    loop {
        let items = reader.read(head, 64)?;
        if items.is_empty() {
            break;
        }
        // A corrupt span between records counts as one (it is quarantined when read).
        records += items.len() as u64;
    }
    assert_eq!(
        records, opened.events,
        "what is read is what was counted at open"
    );
    Ok(records)
}
