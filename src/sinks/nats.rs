//! `nats` sink: publishes each event to a subject rendered from its attributes, on core NATS
//! (confirmed once flushed to the server: the sink publishes what is queued, up to `in_flight`
//! events, then one flush confirms them all) or JetStream (confirmed by the stream's PubAck,
//! with `Nats-Msg-Id` set so the stream drops a retried duplicate).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

use async_nats::jetstream;
use ferry_core::FailureKind;
use tokio::sync::{watch, Semaphore};
use tokio_util::task::TaskTracker;

use super::{SinkContext, SinkError, SinkStats};
use crate::backoff::Backoff;
use crate::config::NatsSinkConfig;
use crate::pipeline::Delivery;
use crate::security::signing::{SignConfig, Signer};
use crate::template::{self, Template, TemplateValues};

struct Target {
    name: Arc<str>,
    subject: Template,
    /// The subject when the template has no placeholders: cloning it is a reference count.
    literal_subject: Option<async_nats::Subject>,
    values: TemplateValues,
    mode: ferry_nats::Mode,
    timeout: Duration,
    signer: Option<Signer>,
}

/// A live connection and how publishes on it are confirmed.
#[derive(Clone)]
struct Link {
    client: async_nats::Client,
    /// `None` for core NATS: confirmed by a flush (see [`deliver_core`]).
    jetstream: Option<Arc<jetstream::Context>>,
}

pub(super) fn start(
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
        values: config.template_values,
        mode: config.mode,
        timeout: Duration::from_millis(config.timeout_ms),
        signer: config
            .sign
            .as_ref()
            .map(SignConfig::signer)
            .transpose()
            .map_err(|(k, m)| err(format!("sign.{k}: {m}")))?,
    });
    cx.set_ready(name, false);
    cx.tracker.spawn(
        run(config.clone(), target, rx, stats, cx.clone())
            .instrument(tracing::info_span!("sink", sink = %name)),
    );
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
    let mut batch = Vec::with_capacity(config.in_flight);
    'deliveries: loop {
        // While disconnected, deliveries wait in the bounded queue (sources push back).
        if connected.wait_for(|up| *up).await.is_err() {
            break;
        }
        match held.take() {
            Some(d) => batch.push(d),
            None => {
                // JetStream takes no more than it can start publishing now, so the rest stay
                // in the queue (and in its metrics) meanwhile.
                let limit = match link.jetstream {
                    None => config.in_flight,
                    Some(_) => permits.available_permits().max(1),
                };
                if rx.recv_many(&mut batch, limit).await == 0 {
                    break;
                }
            }
        }
        let Some(js) = &link.jetstream else {
            deliver_core(&target, &link.client, &disconnects, &mut batch, &stats).await;
            continue;
        };
        for delivery in batch.drain(..) {
            // The semaphore is never closed: acquiring cannot fail.
            let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                break 'deliveries;
            };
            let (target, stats, js) = (Arc::clone(&target), stats.clone(), Arc::clone(js));
            tracker.spawn(async move {
                stats.in_flight.inc();
                deliver_jetstream(&target, &js, delivery, &stats).await;
                stats.in_flight.dec();
                drop(permit);
            });
        }
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
    let jetstream = if config.jetstream {
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
        Some(Arc::new(js))
    } else {
        None
    };
    tracing::info!(sink = %name, url = %crate::redacted_url::redacted_url(&config.url), jetstream = config.jetstream, "NATS sink connected");
    connected.send_replace(true);
    cx.set_ready(name, true);
    Ok(Link { client, jetstream })
}

/// The subject, headers and payload of a delivery (with `Nats-Msg-Id` for JetStream), or why
/// it can never be published.
fn outbound(
    target: &Target,
    delivery: &Delivery,
    jetstream: bool,
) -> Result<(async_nats::Subject, async_nats::HeaderMap, bytes::Bytes), String> {
    let signed = target
        .signer
        .as_ref()
        .map(|s| s.sign_event(&delivery.envelope.event));
    let event = signed.as_ref().unwrap_or(&delivery.envelope.event);
    let subject = match &target.literal_subject {
        Some(s) => s.clone(),
        None => {
            let subject = target
                .subject
                .render_address(&template::NATS_SUBJECT, target.values, |n| {
                    template::event_attribute(event, n)
                })
                .map_err(|e| format!("subject template: {e}"))?;
            publishable(subject)?
        }
    };
    let (mut headers, payload) = ferry_nats::encode(event, target.mode);
    if jetstream {
        headers.insert(ferry_nats::MSG_ID, ferry_nats::message_id(event));
    }
    Ok((subject, headers, payload))
}

/// A rendered subject the server accepts for a publish: tokens split by single dots, no
/// whitespace, no wildcard token. Anything else can never be published (core NATS refuses it
/// in the client, JetStream after a round trip): a permanent failure, not a retry.
fn publishable(subject: String) -> Result<async_nats::Subject, String> {
    let valid =
        !subject.chars().any(char::is_control) && !subject.split('.').any(|t| t == "*" || t == ">");
    let subject = async_nats::Subject::from(subject);
    if valid && subject.is_valid() {
        Ok(subject)
    } else {
        Err(format!(
            "subject {:?} is not a valid subject to publish to",
            subject.as_str()
        ))
    }
}

type PublishResult = Result<(), (FailureKind, String)>;

/// Core NATS has no acknowledgement: the publishes of a batch count as confirmed once a flush
/// that started after them reached the server's socket with no disconnect since before the
/// first. One flush (a round trip through the client's connection task) covers the batch.
async fn deliver_core(
    target: &Target,
    client: &async_nats::Client,
    disconnects: &AtomicU64,
    batch: &mut Vec<Delivery>,
    stats: &SinkStats,
) {
    use async_nats::client::PublishErrorKind;
    let epoch = disconnects.load(Ordering::SeqCst);
    // One deadline for the batch: a publish that is ready at once arms no timer.
    let deadline = tokio::time::Instant::now() + target.timeout;
    let timed_out = || format!("not flushed within {} ms", target.timeout.as_millis());
    stats.in_flight.set(batch.len() as i64);
    let mut published = Vec::with_capacity(batch.len());
    let mut expired = false;
    for delivery in batch.drain(..) {
        if expired {
            // Past the deadline the flush cannot succeed: publishing would only make duplicates.
            stats.fail(delivery, FailureKind::Retryable, timed_out());
            continue;
        }
        let (subject, headers, payload) = match outbound(target, &delivery, false) {
            Ok(m) => m,
            Err(message) => {
                stats.fail(delivery, FailureKind::Permanent, message);
                continue;
            }
        };
        let publish = client.publish_with_headers(subject.clone(), headers, payload);
        let (kind, message) = match tokio::time::timeout_at(deadline, publish).await {
            Ok(Ok(())) => {
                published.push((delivery, subject));
                continue;
            }
            Ok(Err(e)) => {
                let kind = match e.kind() {
                    PublishErrorKind::MaxPayloadExceeded | PublishErrorKind::InvalidSubject => {
                        FailureKind::Permanent
                    }
                    PublishErrorKind::Send => FailureKind::Retryable,
                };
                (kind, e.to_string())
            }
            Err(_) => {
                expired = true;
                (FailureKind::Retryable, timed_out())
            }
        };
        stats.fail(delivery, kind, format!("publish to `{subject}`: {message}"));
    }
    if !published.is_empty() {
        let failure = match tokio::time::timeout_at(deadline, client.flush()).await {
            Ok(Ok(())) if disconnects.load(Ordering::SeqCst) == epoch => None,
            Ok(Ok(())) => Some("the connection dropped before the flush completed".to_owned()),
            Ok(Err(e)) => Some(format!("flush failed: {e}")),
            Err(_) => Some(timed_out()),
        };
        for (delivery, subject) in published {
            match &failure {
                None => stats.confirm(delivery),
                Some(message) => stats.fail(
                    delivery,
                    FailureKind::Retryable,
                    format!("publish to `{subject}`: {message}"),
                ),
            }
        }
    }
    stats.in_flight.set(0);
}

async fn deliver_jetstream(
    target: &Target,
    js: &jetstream::Context,
    delivery: Delivery,
    stats: &SinkStats,
) {
    let (subject, headers, payload) = match outbound(target, &delivery, true) {
        Ok(m) => m,
        Err(message) => return stats.fail(delivery, FailureKind::Permanent, message),
    };
    match publish_jetstream(js, subject.clone(), headers, payload).await {
        Ok(()) => stats.confirm(delivery),
        Err((kind, message)) => {
            stats.fail(delivery, kind, format!("publish to `{subject}`: {message}"))
        }
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
    let published = match js
        .publish_with_headers(subject.clone(), headers, payload)
        .await
    {
        Ok(ack) => ack.await,
        Err(e) => Err(e),
    };
    let e = match published {
        Ok(_) => return Ok(()),
        Err(e) => e,
    };
    let kind = match e.kind() {
        PublishErrorKind::MaxPayloadExceeded => FailureKind::Permanent,
        // "No responders": no stream captures the subject — or JetStream is not answering right
        // now (a server starting or shutting down, a stream leader moving). Only the first is
        // permanent: ask JetStream which.
        PublishErrorKind::StreamNotFound => return Err(no_stream(js, &subject).await),
        _ => FailureKind::Retryable,
    };
    Err((kind, e.to_string()))
}

/// Why a JetStream publish had no responders: permanent only if JetStream itself answers that
/// no stream takes the subject.
async fn no_stream(js: &jetstream::Context, subject: &str) -> (FailureKind, String) {
    use async_nats::jetstream::context::GetStreamByNameErrorKind;
    match js.stream_by_subject(subject).await {
        Err(e) if matches!(e.kind(), GetStreamByNameErrorKind::NotFound) => (
            FailureKind::Permanent,
            "no stream captures the subject".to_owned(),
        ),
        Ok(stream) => (
            FailureKind::Retryable,
            format!("stream `{stream}` did not answer (JetStream unavailable)"),
        ),
        Err(e) => (
            FailureKind::Retryable,
            format!("JetStream did not answer ({e})"),
        ),
    }
}
