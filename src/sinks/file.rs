//! `file` and `stdout` sinks: JSON lines, one structured-mode event per line.
//!
//! Flush policy: the sink driver hands over up to `in_flight` (256) queued events at once; they
//! are written with one `write` call and flushed to the operating system, then confirmed. With
//! `fsync = true` it also waits for `fdatasync` before confirming, so a confirmed event
//! survives a power cut, not only a crash of Ferry.

use std::sync::Arc;
use std::time::Duration;

use ferry_core::json;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::driver::{self, Attempt, Publisher, Refusal};
use super::{SinkContext, SinkError, SinkStats};
use crate::config::{FileSinkConfig, StdoutSinkConfig};
use crate::pipeline::Envelope;

pub(super) async fn start(
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
    let output = Output::File(JsonLinesFile::new(file, config.fsync));
    spawn(output, limits, rx, stats, cx);
    Ok(())
}

pub(super) fn start_stdout(
    config: &StdoutSinkConfig,
    rx: super::SinkQueue,
    stats: SinkStats,
    cx: &SinkContext,
) {
    let limits = Limits {
        batch: config.in_flight,
        timeout: Duration::from_millis(config.timeout_ms),
    };
    let output = Output::Stdout(tokio::io::stdout(), Torn::default());
    spawn(output, limits, rx, stats, cx);
}

fn spawn(output: Output, limits: Limits, rx: super::SinkQueue, stats: SinkStats, cx: &SinkContext) {
    let lines = Lines {
        output: Arc::new(tokio::sync::Mutex::new(output)),
        timeout: limits.timeout,
        batch: limits.batch,
    };
    driver::spawn(lines, rx, stats, limits.batch, cx);
}

struct Lines {
    /// Batches are written one at a time, in the order they were handed over.
    output: Arc<tokio::sync::Mutex<Output>>,
    timeout: Duration,
    batch: usize,
}

impl Publisher for Lines {
    type Link = Arc<tokio::sync::Mutex<Output>>;
    const KIND: &'static str = "file";

    async fn connect(&self, _lost: Option<&Self::Link>) -> Result<Self::Link, String> {
        Ok(Arc::clone(&self.output))
    }

    fn batch(&self) -> usize {
        self.batch
    }

    fn publish(
        &self,
        output: &Arc<Self::Link>,
        events: &[Arc<Envelope>],
    ) -> impl std::future::Future<Output = Vec<Attempt>> + Send + 'static {
        let mut buf = Vec::with_capacity(events.len() * 512);
        for envelope in events {
            encode_line(envelope, &mut buf);
        }
        let (output, timeout, n) = (Arc::clone(output), self.timeout, events.len());
        async move {
            let result = output.lock().await.write(&buf, timeout).await;
            (0..n)
                .map(|_| match &result {
                    Ok(()) => Ok(()),
                    Err(e) => Err(Refusal::retryable(format!("write failed: {e}"))),
                })
                .collect()
        }
    }
}

/// `in_flight` and `timeout_ms` of a file or stdout sink.
struct Limits {
    batch: usize,
    timeout: Duration,
}

enum Output {
    File(JsonLinesFile<tokio::fs::File>),
    Stdout(tokio::io::Stdout, Torn),
}

impl Output {
    /// Writes one batch of whole lines within `timeout`.
    async fn write(&mut self, buf: &[u8], timeout: Duration) -> std::io::Result<()> {
        match self {
            Output::File(f) => f.append(buf, timeout).await,
            Output::Stdout(out, torn) => {
                let result = within(timeout, async {
                    if torn.0 {
                        out.write_all(b"\n").await?;
                    }
                    write_flush(out, buf).await
                })
                .await;
                // A pipe cannot be cut back: after a failure the next write ends the fragment.
                torn.0 = result.is_err();
                result
            }
        }
    }
}

/// Whether the last write may have left a partial line behind.
#[derive(Default)]
struct Torn(bool);

/// What the file sink needs from its file besides appending: its length, and cutting it back
/// to a length. A trait so that tests can fail a write halfway.
trait AppendFile: AsyncWrite + Unpin + Send {
    fn len(&mut self) -> impl std::future::Future<Output = std::io::Result<u64>> + Send;
    fn truncate(
        &mut self,
        len: u64,
    ) -> impl std::future::Future<Output = std::io::Result<()>> + Send;
    fn sync(&mut self) -> impl std::future::Future<Output = std::io::Result<()>> + Send;
}

impl AppendFile for tokio::fs::File {
    async fn len(&mut self) -> std::io::Result<u64> {
        Ok(self.metadata().await?.len())
    }
    async fn truncate(&mut self, len: u64) -> std::io::Result<()> {
        self.set_len(len).await
    }
    async fn sync(&mut self) -> std::io::Result<()> {
        self.sync_data().await
    }
}

/// An append-only JSON Lines file that holds only whole lines: a batch whose write fails or
/// times out is cut off again (the file is owned by this one task), so the next batch never
/// starts in the middle of a line. If even that fails, the next batch starts with a line
/// break, which ends the fragment as a line of its own.
struct JsonLinesFile<F> {
    file: F,
    fsync: bool,
    torn: Torn,
}

impl<F: AppendFile> JsonLinesFile<F> {
    fn new(file: F, fsync: bool) -> Self {
        JsonLinesFile {
            file,
            fsync,
            torn: Torn::default(),
        }
    }

    async fn append(&mut self, buf: &[u8], timeout: Duration) -> std::io::Result<()> {
        let start = within(timeout, self.file.len()).await?;
        let torn = self.torn.0;
        let file = &mut self.file;
        let fsync = self.fsync;
        let result = within(timeout, async {
            if torn {
                file.write_all(b"\n").await?;
            }
            file.write_all(buf).await?;
            file.flush().await?;
            if fsync {
                file.sync().await?;
            }
            Ok(())
        })
        .await;
        if result.is_err() {
            self.recover(start, timeout).await;
        } else {
            self.torn.0 = false;
        }
        result
    }

    /// After a failed batch: cuts the file back to where the batch started.
    async fn recover(&mut self, start: u64, timeout: Duration) {
        // A write cancelled by the timeout finishes first: the cut waits for it.
        match within(timeout, self.file.truncate(start)).await {
            Ok(()) => self.torn.0 = false,
            Err(e) => {
                tracing::warn!(error = %e, "cannot cut a failed write back; the next batch starts a new line");
                self.torn.0 = true;
            }
        }
    }
}

/// Runs an I/O operation under a deadline; running out is a `TimedOut` error.
async fn within<T>(
    timeout: Duration,
    io: impl std::future::Future<Output = std::io::Result<T>>,
) -> std::io::Result<T> {
    match tokio::time::timeout(timeout, io).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the write did not finish within timeout_ms",
        )),
    }
}

async fn write_flush<W: AsyncWrite + Unpin>(w: &mut W, buf: &[u8]) -> std::io::Result<()> {
    w.write_all(buf).await?;
    w.flush().await
}

/// Encodes an event as one line. JSON data may hold line breaks as insignificant whitespace
/// (never inside strings, where JSON escapes them), so they become spaces.
pub(super) fn encode_line(envelope: &Envelope, buf: &mut Vec<u8>) {
    let start = buf.len();
    json::encode_into(&envelope.event, buf);
    for b in &mut buf[start..] {
        if *b == b'\n' || *b == b'\r' {
            *b = b' ';
        }
    }
    buf.push(b'\n');
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use super::*;

    /// A file that takes `budget` more bytes, then fails (`hang: false`, like a full disk) or
    /// never finishes (`hang: true`, like a stalled disk).
    #[derive(Default)]
    struct FlakyFile {
        data: Vec<u8>,
        budget: Option<usize>,
        hang: bool,
        truncate_fails: bool,
    }

    impl AsyncWrite for FlakyFile {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let n = match self.budget {
                None => buf.len(),
                Some(0) if self.hang => return Poll::Pending,
                Some(0) => return Poll::Ready(Err(std::io::Error::other("no space left"))),
                // A short write: part of the buffer, as a filling disk does.
                Some(b) => buf.len().min(b).min(7),
            };
            if let Some(b) = &mut self.budget {
                *b -= n;
            }
            self.data.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl AppendFile for FlakyFile {
        async fn len(&mut self) -> std::io::Result<u64> {
            Ok(self.data.len() as u64)
        }
        async fn truncate(&mut self, len: u64) -> std::io::Result<()> {
            if self.truncate_fails {
                return Err(std::io::Error::other("read-only"));
            }
            self.data.truncate(len as usize);
            Ok(())
        }
        async fn sync(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The ids of the lines that parse, and how many lines there are.
    fn ids(file: &FlakyFile) -> (Vec<String>, usize) {
        let text = std::str::from_utf8(&file.data).unwrap();
        let ids = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|l| l["id"].as_str().map(str::to_owned))
            .collect();
        (ids, text.lines().count())
    }

    fn line(id: &str) -> Vec<u8> {
        format!("{{\"id\":\"{id}\"}}\n").into_bytes()
    }

    /// D5: a write that fails or times out halfway never leaves a fragment that the next
    /// (confirmed) line is glued onto.
    #[tokio::test]
    async fn d5_a_failed_write_never_leaves_a_torn_line() {
        let timeout = Duration::from_millis(50);
        for (hang, truncate_fails) in [(false, false), (true, false), (false, true)] {
            let mut f = JsonLinesFile::new(FlakyFile::default(), false);
            f.append(&line("1"), timeout).await.unwrap();
            f.file.budget = Some(5);
            f.file.hang = hang;
            f.file.truncate_fails = truncate_fails;
            let batch = [line("2"), line("3")].concat();
            assert!(f.append(&batch, timeout).await.is_err());
            f.file.budget = None;
            f.append(&line("4"), timeout).await.unwrap();
            let case = format!("hang {hang}, truncate fails {truncate_fails}");
            let (ids, count) = ids(&f.file);
            assert_eq!(
                ids,
                ["1", "4"],
                "{case}: {:?}",
                String::from_utf8_lossy(&f.file.data)
            );
            // Cut back: nothing else. Not cut back: the fragment is a line of its own.
            assert_eq!(count, if truncate_fails { 3 } else { 2 }, "{case}");
        }
    }
}
