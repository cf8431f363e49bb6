//! `nats` sink: publishes each event to a subject rendered from its attributes, on core NATS
//! (confirmed once flushed to the server, one flush shared by the publishes waiting for it) or
//! JetStream (confirmed by the stream's PubAck, with `Nats-Msg-Id` set so the stream drops a
//! retried duplicate).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use ferry_core::FailureKind;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio_util::task::TaskTracker;

use super::{SinkContext, SinkError, SinkStats};
use crate::backoff::Backoff;
use crate::config::{ContentMode, NatsSinkConfig};
use crate::pipeline::Delivery;
use crate::security::signing::{SignConfig, Signer};
use crate::template::{self, Template};

struct Target {
    name: Arc<str>,
    subject: Template,
    /// The subject when the template has no placeholders: cloning it is a reference count.
    literal_subject: Option<async_nats::Subject>,
    mode: ferry_nats::Mode,
    timeout: Duration,
    signer: Option<Signer>,
}

/// A live connection and what the delivery tasks need from it.
#[derive(Clone)]
struct Link {
    client: async_nats::Client,
    confirmation: Confirmation,
}

/// How a publish on the link is confirmed.
#[derive(Clone)]
enum Confirmation {
    /// Core NATS: by the next flush round that starts after the publish returned.
    Flush(FlushRounds),
    /// JetStream: by the stream's PubAck.
    PubAck(Arc<jetstream::Context>),
}

/// Group commit for core publishes: a delivery publishes, then waits for the next flush
/// round; one task runs one `flush()` for every delivery that registered since the previous
/// round and tells each of them the outcome. A flush is a round trip through the client's
/// connection task, so sharing it is what lets many publishes be in flight at once.
#[derive(Clone)]
struct FlushRounds {
    /// Bounded by the sink's `in_flight`: a delivery holds at most one place, and waits for
    /// room (within its timeout) if deliveries that gave up still hold theirs.
    waiters: mpsc::Sender<FlushWaiter>,
    /// Incremented on every disconnect: a publish whose flush straddles one is not confirmed
    /// (the bytes may have died in the socket).
    disconnects: Arc<AtomicU64>,
}

struct FlushWaiter {
    /// `disconnects` read before the publish.
    epoch: u64,
    flushed: oneshot::Sender<Result<(), String>>,
}

impl FlushRounds {
    fn start(
        client: async_nats::Client,
        disconnects: Arc<AtomicU64>,
        in_flight: usize,
        timeout: Duration,
        tracker: &TaskTracker,
    ) -> FlushRounds {
        let (waiters, rx) = mpsc::channel(in_flight);
        tracker.spawn(run_flush_rounds(
            client,
            Arc::clone(&disconnects),
            rx,
            in_flight,
            timeout,
        ));
        FlushRounds {
            waiters,
            disconnects,
        }
    }

    fn epoch(&self) -> u64 {
        self.disconnects.load(Ordering::SeqCst)
    }

    /// Waits for a flush that starts after this call and completes with no disconnect since
    /// `epoch`. Every failure is retryable.
    async fn flushed(&self, epoch: u64) -> Result<(), String> {
        let (flushed, outcome) = oneshot::channel();
        self.waiters
            .send(FlushWaiter { epoch, flushed })
            .await
            .map_err(|_| "the sink is closing".to_string())?;
        outcome
            .await
            .map_err(|_| "the sink is closing".to_string())?
    }
}

/// Runs until every `FlushRounds` handle is gone. A round holds at most `in_flight` waiters;
/// its flush is bounded by the sink's timeout so a stuck flush cannot hold later rounds back
/// indefinitely.
async fn run_flush_rounds(
    client: async_nats::Client,
    disconnects: Arc<AtomicU64>,
    mut rx: mpsc::Receiver<FlushWaiter>,
    in_flight: usize,
    timeout: Duration,
) {
    let mut round = Vec::with_capacity(in_flight);
    while rx.recv_many(&mut round, in_flight).await > 0 {
        // Every waiter in the round registered after its publish returned, and the publish
        // command is queued before this flush in the client's connection task.
        let failure = match tokio::time::timeout(timeout, client.flush()).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(format!("flush failed: {e}")),
            Err(_) => Some(format!("not flushed within {} ms", timeout.as_millis())),
        };
        let epoch = disconnects.load(Ordering::SeqCst);
        for waiter in round.drain(..) {
            let outcome = match &failure {
                Some(message) => Err(message.clone()),
                None if waiter.epoch == epoch => Ok(()),
                None => Err("the connection dropped before the flush completed".into()),
            };
            // A delivery that timed out no longer listens.
            let _ = waiter.flushed.send(outcome);
        }
    }
}

pub fn start(
    name: &Arc<str>,
    config: &NatsSinkConfig,
    rx: super::SinkQueue,
    stats: SinkStats,
    cx: &SinkContext,
) -> Result<(), SinkError> {
    let err = |message: String| SinkError::Config {
        sink: name.to_string(),
        message,
    };
    let subject = Template::parse(&config.subject).map_err(|m| err(format!("subject: {m}")))?;
    config
        .check()
        .map_err(|(key, message)| err(format!("{}: {message}", key.join("."))))?;
    let target = Arc::new(Target {
        name: Arc::clone(name),
        literal_subject: subject.as_literal().map(async_nats::Subject::from),
        subject,
        mode: match config.mode {
            ContentMode::Binary => ferry_nats::Mode::Binary,
            ContentMode::Structured => ferry_nats::Mode::Structured,
        },
        timeout: Duration::from_millis(config.timeout_ms),
        signer: config
            .sign
            .as_ref()
            .map(SignConfig::signer)
            .transpose()
            .map_err(|(k, m)| err(format!("sign.{k}: {m}")))?,
    });
    cx.set_ready(name, false);
    cx.tracker
        .spawn(run(config.clone(), target, rx, stats, cx.clone()));
    Ok(())
}

async fn run(
    config: NatsSinkConfig,
    target: Arc<Target>,
    mut rx: super::SinkQueue,
    stats: SinkStats,
    cx: SinkContext,
) {
    let name = Arc::clone(&target.name);
    let (connected_tx, mut connected) = watch::channel(false);
    let disconnects = Arc::new(AtomicU64::new(0));
    // A delivery taken from the queue while there was no connection yet.
    let mut held: Option<Delivery> = None;
    let mut backoff = Backoff::reconnect();
    let link = loop {
        let attempt = connect(&config, &name, &cx, &connected_tx, &disconnects);
        let outcome = tokio::select! {
            outcome = attempt => Some(outcome),
            next = rx.recv(), if held.is_none() => match next {
                Some(d) => { held = Some(d); None }
                // Shut down before ever connecting: nothing was taken, nothing to finish.
                None => return,
            },
        };
        match outcome {
            Some(Ok(link)) => break link,
            Some(Err(e)) => {
                let delay = backoff.next_delay();
                tracing::warn!(sink = %name, error = %e, retry_in_ms = delay.as_millis() as u64, "NATS sink cannot connect");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    next = rx.recv(), if held.is_none() => match next {
                        Some(d) => held = Some(d),
                        None => return,
                    },
                }
            }
            None => {}
        }
    };
    let permits = Arc::new(Semaphore::new(config.in_flight));
    let tracker = TaskTracker::new();
    loop {
        // While disconnected, deliveries wait in the bounded queue (sources push back).
        if connected.wait_for(|up| *up).await.is_err() {
            break;
        }
        let delivery = match held.take() {
            Some(d) => d,
            None => match rx.recv().await {
                Some(d) => d,
                None => break,
            },
        };
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            break;
        };
        let target = Arc::clone(&target);
        let stats = stats.clone();
        let link = link.clone();
        tracker.spawn(async move {
            stats.in_flight.inc();
            deliver(&target, &link, delivery, &stats).await;
            stats.in_flight.dec();
            drop(permit);
        });
    }
    tracker.close();
    tracker.wait().await;
    if let Err(e) = link.client.flush().await {
        tracing::debug!(sink = %name, error = %e, "final flush failed");
    }
    cx.set_ready(&name, false);
    tracing::info!(sink = %name, "NATS sink closed");
}

/// Connects once, declares the stream if configured, and reports readiness from the
/// client's connection events from then on.
async fn connect(
    config: &NatsSinkConfig,
    name: &Arc<str>,
    cx: &SinkContext,
    connected: &watch::Sender<bool>,
    disconnects: &Arc<AtomicU64>,
) -> Result<Link, String> {
    let events = {
        let name = Arc::clone(name);
        let cx = cx.clone();
        let connected = connected.clone();
        let disconnects = Arc::clone(disconnects);
        move |event: async_nats::Event| {
            match event {
                async_nats::Event::Connected => {
                    tracing::info!(sink = %name, "NATS sink reconnected");
                    connected.send_replace(true);
                    cx.set_ready(&name, true);
                }
                async_nats::Event::Disconnected => {
                    tracing::warn!(sink = %name, "NATS sink disconnected");
                    disconnects.fetch_add(1, Ordering::SeqCst);
                    connected.send_replace(false);
                    cx.set_ready(&name, false);
                }
                other => tracing::debug!(sink = %name, event = %other, "NATS event"),
            }
            std::future::ready(())
        }
    };
    let client = crate::config::nats_connect_options(config.tls.as_ref())
        .map_err(|e| e.to_string())?
        .name(format!("ferry sink {name}"))
        .event_callback(events)
        .connect(config.url.as_str())
        .await
        .map_err(|e| e.to_string())?;
    let confirmation = if config.jetstream {
        let mut js = jetstream::new(client.clone());
        js.set_timeout(Duration::from_millis(config.timeout_ms));
        if let Some(stream) = &config.stream {
            js.get_or_create_stream(jetstream::stream::Config {
                name: stream.name.clone(),
                subjects: stream.subjects.clone(),
                duplicate_window: Duration::from_secs(stream.duplicate_window_secs),
                ..Default::default()
            })
            .await
            .map_err(|e| format!("cannot declare stream `{}`: {e}", stream.name))?;
        }
        Confirmation::PubAck(Arc::new(js))
    } else {
        Confirmation::Flush(FlushRounds::start(
            client.clone(),
            Arc::clone(disconnects),
            config.in_flight,
            Duration::from_millis(config.timeout_ms),
            &cx.tracker,
        ))
    };
    tracing::info!(sink = %name, url = %config.url, jetstream = config.jetstream, "NATS sink connected");
    connected.send_replace(true);
    cx.set_ready(name, true);
    Ok(Link {
        client,
        confirmation,
    })
}

async fn deliver(target: &Target, link: &Link, delivery: Delivery, stats: &SinkStats) {
    let signed = target
        .signer
        .as_ref()
        .map(|s| s.sign_event(&delivery.envelope.event));
    let event = signed.as_ref().unwrap_or(&delivery.envelope.event);
    let subject = match &target.literal_subject {
        Some(s) => s.clone(),
        None => match target
            .subject
            .render(|n| template::event_attribute(event, n))
        {
            Ok(s) => async_nats::Subject::from(s),
            Err(missing) => {
                let message = format!("subject template: the event has no `{missing}` attribute");
                return stats.fail(delivery, FailureKind::Permanent, message);
            }
        },
    };
    let (mut headers, payload) = ferry_nats::encode(event, target.mode);
    let result = match &link.confirmation {
        Confirmation::PubAck(js) => {
            headers.insert(ferry_nats::MSG_ID, ferry_nats::message_id(event));
            publish_jetstream(js, subject.clone(), headers, payload).await
        }
        Confirmation::Flush(rounds) => {
            publish_core(
                &link.client,
                rounds,
                target.timeout,
                subject.clone(),
                headers,
                payload,
            )
            .await
        }
    };
    match result {
        Ok(()) => stats.confirm(delivery),
        Err((kind, message)) => {
            stats.fail(delivery, kind, format!("publish to `{subject}`: {message}"))
        }
    }
}

type PublishResult = Result<(), (FailureKind, String)>;

/// Core NATS has no acknowledgement: the publish counts as confirmed once a flush that started
/// after it returned reached the server's socket without a disconnect in between.
async fn publish_core(
    client: &async_nats::Client,
    rounds: &FlushRounds,
    timeout: Duration,
    subject: async_nats::Subject,
    headers: async_nats::HeaderMap,
    payload: bytes::Bytes,
) -> PublishResult {
    use async_nats::client::PublishErrorKind;
    let epoch = rounds.epoch();
    client
        .publish_with_headers(subject, headers, payload)
        .await
        .map_err(|e| {
            let kind = match e.kind() {
                PublishErrorKind::MaxPayloadExceeded | PublishErrorKind::InvalidSubject => {
                    FailureKind::Permanent
                }
                PublishErrorKind::Send => FailureKind::Retryable,
            };
            (kind, e.to_string())
        })?;
    match tokio::time::timeout(timeout, rounds.flushed(epoch)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(message)) => Err((FailureKind::Retryable, message)),
        Err(_) => Err((
            FailureKind::Retryable,
            format!("not flushed within {} ms", timeout.as_millis()),
        )),
    }
}

/// JetStream: confirmed by the stream's PubAck (a duplicate `Nats-Msg-Id` is acknowledged too).
async fn publish_jetstream(
    js: &jetstream::Context,
    subject: async_nats::Subject,
    headers: async_nats::HeaderMap,
    payload: bytes::Bytes,
) -> PublishResult {
    use async_nats::jetstream::context::PublishErrorKind;
    let classify = |e: jetstream::context::PublishError| {
        let kind = match e.kind() {
            PublishErrorKind::StreamNotFound | PublishErrorKind::MaxPayloadExceeded => {
                FailureKind::Permanent
            }
            _ => FailureKind::Retryable,
        };
        (kind, e.to_string())
    };
    let ack = js
        .publish_with_headers(subject, headers, payload)
        .await
        .map_err(classify)?;
    ack.await.map(|_| ()).map_err(classify)
}
