//! `nats` sink: publishes each event to a subject rendered from its attributes, on core NATS
//! (confirmed once flushed to the server: the sink publishes what is queued, up to `in_flight`
//! events, then one flush confirms them all) or JetStream (confirmed by the stream's PubAck,
//! with `Nats-Msg-Id` set so the stream drops a retried duplicate).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use ferry_core::FailureKind;
use tokio::sync::watch;

use super::driver::{self, Attempt, Publisher, Refusal};
use super::{SinkContext, SinkError, SinkStats};
use crate::config::NatsSinkConfig;
use crate::pipeline::Envelope;
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

/// A live connection and how publishes on it are confirmed. The client reconnects by itself.
struct Link {
    client: async_nats::Client,
    /// `None` for core NATS: confirmed by a flush (see [`publish_core`]).
    jetstream: Option<jetstream::Context>,
    connected: watch::Receiver<bool>,
    /// Disconnects since the client connected: a flush confirms only publishes made since
    /// the last one.
    disconnects: Arc<AtomicU64>,
    /// Core NATS batches are written in the order they were published.
    order: tokio::sync::Mutex<()>,
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
            .map_err(|e| err(e.under(&["sign"]).to_string()))?,
    });
    cx.set_ready(name, false);
    let nats = Nats {
        config: config.clone(),
        target,
        cx: cx.clone(),
    };
    driver::spawn(nats, rx, stats, config.in_flight, cx);
    Ok(())
}

struct Nats {
    config: NatsSinkConfig,
    target: Arc<Target>,
    cx: SinkContext,
}

impl Publisher for Nats {
    type Link = Link;
    const KIND: &'static str = "NATS";

    async fn connect(&self, _lost: Option<&Link>) -> Result<Link, String> {
        connect(&self.config, &self.target.name, &self.cx).await
    }

    /// While the client reconnects, deliveries wait in the bounded queue (sources push back).
    fn ready(&self, link: &Link) -> impl std::future::Future<Output = ()> + Send {
        let mut connected = link.connected.clone();
        async move {
            let _ = connected.wait_for(|up| *up).await;
        }
    }

    /// Core NATS confirms a batch with one flush; JetStream each event by its PubAck.
    fn batch(&self) -> usize {
        if self.config.jetstream {
            1
        } else {
            self.config.in_flight
        }
    }

    fn publish(
        &self,
        link: &Arc<Link>,
        events: &[Arc<Envelope>],
    ) -> impl std::future::Future<Output = Vec<Attempt>> + Send + 'static {
        let (target, link) = (Arc::clone(&self.target), Arc::clone(link));
        let events = events.to_vec();
        async move {
            match &link.jetstream {
                None => publish_core(&target, &link, &events).await,
                Some(js) => vec![publish_jetstream(&target, js, &events[0]).await],
            }
        }
    }

    async fn close(&self, link: Arc<Link>) {
        if let Err(e) = link.client.flush().await {
            tracing::debug!(sink = %self.target.name, error = %e, "final flush failed");
        }
    }
}

/// Connects once, declares the stream if configured, and reports readiness from the
/// client's connection events from then on.
async fn connect(
    config: &NatsSinkConfig,
    name: &Arc<str>,
    cx: &SinkContext,
) -> Result<Link, String> {
    let (connected, connected_rx) = watch::channel(false);
    let disconnects = Arc::new(AtomicU64::new(0));
    let events = {
        let name = Arc::clone(name);
        let cx = cx.clone();
        let connected = connected.clone();
        let disconnects = Arc::clone(&disconnects);
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
        Some(js)
    } else {
        None
    };
    tracing::info!(sink = %name, url = %crate::redacted_url::redacted_url(&config.url), jetstream = config.jetstream, "NATS sink connected");
    connected.send_replace(true);
    Ok(Link {
        client,
        jetstream,
        connected: connected_rx,
        disconnects,
        order: tokio::sync::Mutex::new(()),
    })
}

/// The subject, headers and payload of a delivery (with `Nats-Msg-Id` for JetStream), or why
/// it can never be published.
fn outbound(
    target: &Target,
    envelope: &Envelope,
    jetstream: bool,
) -> Result<(async_nats::Subject, async_nats::HeaderMap, bytes::Bytes), String> {
    let signed = (target.signer.as_ref()).map(|s| s.sign_event(&envelope.event));
    let event = signed.as_ref().unwrap_or(&envelope.event);
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
async fn publish_core(target: &Target, link: &Link, events: &[Arc<Envelope>]) -> Vec<Attempt> {
    use async_nats::client::PublishErrorKind;
    let order = link.order.lock().await;
    let epoch = link.disconnects.load(Ordering::SeqCst);
    // One deadline for the batch: a publish that is ready at once arms no timer.
    let deadline = tokio::time::Instant::now() + target.timeout;
    let timed_out = || format!("not flushed within {} ms", target.timeout.as_millis());
    let mut attempts: Vec<Result<async_nats::Subject, Refusal>> = Vec::with_capacity(events.len());
    let mut expired = false;
    for envelope in events {
        if expired {
            // Past the deadline the flush cannot succeed: publishing would only make duplicates.
            attempts.push(Err(Refusal::retryable(timed_out())));
            continue;
        }
        let (subject, headers, payload) = match outbound(target, envelope, false) {
            Ok(m) => m,
            Err(message) => {
                attempts.push(Err(Refusal::permanent(message)));
                continue;
            }
        };
        let publish = link
            .client
            .publish_with_headers(subject.clone(), headers, payload);
        let (kind, message) = match tokio::time::timeout_at(deadline, publish).await {
            Ok(Ok(())) => {
                attempts.push(Ok(subject));
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
        attempts.push(Err(Refusal::new(
            kind,
            format!("publish to `{subject}`: {message}"),
        )));
    }
    drop(order);
    let mut failure = None;
    if attempts.iter().any(Result::is_ok) {
        failure = match tokio::time::timeout_at(deadline, link.client.flush()).await {
            Ok(Ok(())) if link.disconnects.load(Ordering::SeqCst) == epoch => None,
            Ok(Ok(())) => Some("the connection dropped before the flush completed".to_owned()),
            Ok(Err(e)) => Some(format!("flush failed: {e}")),
            Err(_) => Some(timed_out()),
        };
    }
    attempts
        .into_iter()
        .map(|attempt| match (attempt, &failure) {
            (Ok(_), None) => Ok(()),
            (Ok(subject), Some(message)) => Err(Refusal::retryable(format!(
                "publish to `{subject}`: {message}"
            ))),
            (Err(refusal), _) => Err(refusal),
        })
        .collect()
}

async fn publish_jetstream(
    target: &Target,
    js: &jetstream::Context,
    envelope: &Envelope,
) -> Attempt {
    let (subject, headers, payload) =
        outbound(target, envelope, true).map_err(Refusal::permanent)?;
    publish_acked(js, subject.clone(), headers, payload)
        .await
        .map_err(|(kind, message)| Refusal::new(kind, format!("publish to `{subject}`: {message}")))
}

/// JetStream: confirmed by the stream's PubAck (a duplicate `Nats-Msg-Id` is acknowledged too).
async fn publish_acked(
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
