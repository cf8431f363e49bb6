//! `file` and `stdout` sinks: JSON lines, one structured-mode event per line.
//!
//! Flush policy: the task takes up to `in_flight` (256) queued events at once, writes them with one
//! `write` call and flushes to the operating system, then confirms them. With
//! `fsync = true` it also waits for `fdatasync` before confirming, so a confirmed event
//! survives a power cut, not only a crash of Ferry.

use std::sync::Arc;
use std::time::Duration;

use ferry_core::{json, FailureKind};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::{SinkContext, SinkError, SinkStats};
use crate::config::{FileSinkConfig, StdoutSinkConfig};
use crate::pipeline::Delivery;

pub async fn start(
    name: &Arc<str>,
    config: &FileSinkConfig,
    rx: super::SinkQueue,
    stats: SinkStats,
    cx: &SinkContext,
) -> Result<(), SinkError> {
    let open_error = |source| SinkError::Open {
        sink: name.to_string(),
        path: config.path.display().to_string(),
        source,
    };
    if let Some(dir) = config.path.parent().filter(|d| !d.as_os_str().is_empty()) {
        tokio::fs::create_dir_all(dir).await.map_err(open_error)?;
    }
    let file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&config.path)
        .await
        .map_err(open_error)?;
    let limits = Limits {
        batch: config.in_flight,
        timeout: Duration::from_millis(config.timeout_ms),
    };
    cx.tracker
        .spawn(run(rx, Output::File(file, config.fsync), limits, stats));
    Ok(())
}

pub fn start_stdout(
    config: &StdoutSinkConfig,
    rx: super::SinkQueue,
    stats: SinkStats,
    cx: &SinkContext,
) {
    let limits = Limits {
        batch: config.in_flight,
        timeout: Duration::from_millis(config.timeout_ms),
    };
    cx.tracker
        .spawn(run(rx, Output::Stdout(tokio::io::stdout()), limits, stats));
}

/// `in_flight` and `timeout_ms` of a file or stdout sink.
struct Limits {
    batch: usize,
    timeout: Duration,
}

enum Output {
    File(tokio::fs::File, bool),
    Stdout(tokio::io::Stdout),
}

impl Output {
    async fn write(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match self {
            Output::File(f, fsync) => {
                f.write_all(buf).await?;
                f.flush().await?;
                if *fsync {
                    f.sync_data().await?;
                }
                Ok(())
            }
            Output::Stdout(out) => write_flush(out, buf).await,
        }
    }
}

async fn write_flush<W: AsyncWrite + Unpin>(w: &mut W, buf: &[u8]) -> std::io::Result<()> {
    w.write_all(buf).await?;
    w.flush().await
}

/// Encodes an event as one line. JSON data may hold line breaks as insignificant whitespace
/// (never inside strings, where JSON escapes them), so they become spaces.
pub fn encode_line(delivery: &Delivery, buf: &mut Vec<u8>) {
    let start = buf.len();
    json::encode_into(&delivery.envelope.event, buf);
    for b in &mut buf[start..] {
        if *b == b'\n' || *b == b'\r' {
            *b = b' ';
        }
    }
    buf.push(b'\n');
}

async fn run(mut rx: super::SinkQueue, mut out: Output, limits: Limits, stats: SinkStats) {
    let mut batch = Vec::with_capacity(limits.batch.min(1024));
    let mut buf = Vec::with_capacity(64 * 1024);
    while rx.recv_many(&mut batch, limits.batch).await > 0 {
        buf.clear();
        for d in &batch {
            encode_line(d, &mut buf);
        }
        stats.in_flight.set(batch.len() as i64);
        let result = match tokio::time::timeout(limits.timeout, out.write(&buf)).await {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the write did not finish within timeout_ms",
            )),
        };
        stats.in_flight.set(0);
        for d in batch.drain(..) {
            match &result {
                Ok(()) => stats.confirm(d),
                Err(e) => stats.fail(d, FailureKind::Retryable, format!("write failed: {e}")),
            }
        }
    }
}
