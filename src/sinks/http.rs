//! `http` sink: POST each event to a URL in binary or structured mode over a keep-alive
//! connection pool. A 2xx answer confirms the event.
//!
//! Outbound security: a custom CA and client certificate (`tls`), a static bearer token,
//! signatures (`sign`), and the CloudEvents Web Hook validation handshake, performed before
//! the first delivery; until the target grants permission the sink is not ready and
//! deliveries wait in its queue.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use ferry_core::FailureKind;
use http::{HeaderName, HeaderValue};

use super::driver::{self, Attempt, Publisher, Refusal};
use super::{SinkContext, SinkError, SinkStats};
use crate::config::HttpSinkConfig;
use crate::pipeline::Envelope;
use crate::security::signing::{SignConfig, SignScheme, Signer};

struct Target {
    name: Arc<str>,
    client: reqwest::Client,
    url: reqwest::Url,
    /// The URL as messages and logs show it: without credentials or query.
    shown_url: String,
    mode: ferry_http::Mode,
    headers: http::HeaderMap,
    signer: Option<Signer>,
    /// `WebHook-Request-Origin`, with the handshake.
    handshake: Option<HeaderValue>,
    /// The origin sent with every delivery.
    origin: Option<HeaderValue>,
}

/// A granted `WebHook-Allowed-Rate` (requests per minute), enforced before each request.
type RateLimiter = governor::DefaultDirectRateLimiter;

pub(super) fn start(
    name: &Arc<str>,
    config: &HttpSinkConfig,
    rx: super::SinkQueue,
    stats: SinkStats,
    cx: &SinkContext,
) -> Result<(), SinkError> {
    let err = |message: String| SinkError::Config {
        sink: name.to_string(),
        message,
    };
    let url = reqwest::Url::parse(&config.url).map_err(|e| err(format!("invalid url: {e}")))?;
    let mut client = reqwest::Client::builder()
        .timeout(Duration::from_millis(config.timeout_ms))
        .connect_timeout(Duration::from_millis(config.timeout_ms.min(5_000)))
        .pool_max_idle_per_host(config.in_flight)
        .redirect(reqwest::redirect::Policy::none());
    if let Some(tls) = &config.tls {
        let tls = tls
            .client_config(&[b"h2", b"http/1.1"])
            .map_err(|e| err(e.to_string()))?;
        client = client.tls_backend_preconfigured(Arc::unwrap_or_clone(tls));
    }
    let client = client
        .build()
        .map_err(|e| err(format!("cannot build HTTP client: {}", with_causes(&e))))?;
    let mut headers = http::HeaderMap::new();
    for (k, v) in &config.headers {
        let name =
            HeaderName::from_bytes(k.as_bytes()).map_err(|e| err(format!("header {k}: {e}")))?;
        let value = HeaderValue::from_str(v).map_err(|e| err(format!("header {k}: {e}")))?;
        headers.insert(name, value);
    }
    if let Some(token) = &config.bearer_token {
        let token = token
            .resolve(std::path::Path::new("."))
            .map_err(|e| err(format!("bearer_token: {e}")))?;
        let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| err("bearer_token: not a valid header value".into()))?;
        value.set_sensitive(true);
        headers.insert(http::header::AUTHORIZATION, value);
    }
    let origin = config
        .origin
        .as_deref()
        .map(HeaderValue::from_str)
        .transpose()
        .map_err(|_| err("origin: not a valid header value".into()))?;
    let target = Arc::new(Target {
        name: Arc::clone(name),
        client,
        shown_url: crate::redacted_url::redacted(&url),
        url,
        mode: config.mode,
        headers,
        signer: config
            .sign
            .as_ref()
            .map(SignConfig::signer)
            .transpose()
            .map_err(|e| err(e.under(&["sign"]).to_string()))?,
        handshake: origin.clone().filter(|_| config.webhook_handshake),
        origin,
    });
    if target.handshake.is_some() {
        cx.set_ready(name, false);
    }
    driver::spawn(Http(target), rx, stats, config.in_flight, cx);
    Ok(())
}

struct Http(Arc<Target>);

impl Publisher for Http {
    /// The rate the target granted in the handshake, if it set one.
    type Link = Option<RateLimiter>;
    const KIND: &'static str = "HTTP";

    /// With the handshake, connecting is asking the target's permission: until it grants it
    /// the sink is not ready and deliveries wait in its queue (at shutdown they are dropped
    /// undelivered, not acknowledged).
    async fn connect(&self, _lost: Option<&Self::Link>) -> Result<Self::Link, String> {
        let target = &self.0;
        let Some(origin) = &target.handshake else {
            return Ok(None);
        };
        match handshake(target, origin).await {
            Grant::Granted(rate) => {
                tracing::info!(sink = %target.name, url = %target.shown_url, rate_per_minute = ?rate, "web hook handshake granted");
                Ok(rate
                    .and_then(NonZeroU32::new)
                    .map(|n| governor::RateLimiter::direct(governor::Quota::per_minute(n))))
            }
            Grant::Refused(why) => Err(format!("web hook handshake refused: {why}")),
        }
    }

    async fn ready(&self, limiter: &Self::Link) {
        if let Some(limiter) = limiter {
            limiter.until_ready().await;
        }
    }

    fn publish(
        &self,
        _limiter: &Arc<Self::Link>,
        events: &[Arc<Envelope>],
    ) -> impl std::future::Future<Output = Vec<Attempt>> + Send + 'static {
        let (target, envelope) = (Arc::clone(&self.0), Arc::clone(&events[0]));
        async move { vec![deliver(&target, &envelope).await] }
    }
}

/// What the target answered to the validation handshake.
#[derive(Debug, PartialEq, Eq)]
enum Grant {
    /// Permission, with the allowed rate per minute (`None`: no limit).
    Granted(Option<u32>),
    Refused(String),
}

/// Sends the validation `OPTIONS` request. Only the `WebHook-Allowed-Origin` header means
/// consent, whatever the status.
async fn handshake(target: &Target, origin: &HeaderValue) -> Grant {
    let response = target
        .client
        .request(http::Method::OPTIONS, target.url.clone())
        .headers(target.headers.clone())
        .header("webhook-request-origin", origin.clone())
        .send()
        .await;
    let response = match response {
        Ok(r) => r,
        Err(e) => {
            return Grant::Refused(format!(
                "{} handshake failed: {}",
                target.shown_url,
                with_causes(&e.without_url())
            ))
        }
    };
    grant(response.status(), response.headers(), origin)
}

fn grant(status: http::StatusCode, headers: &http::HeaderMap, origin: &HeaderValue) -> Grant {
    let allowed = headers
        .get("webhook-allowed-origin")
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    let origin = origin.to_str().unwrap_or_default();
    match allowed {
        Some(a) if a == "*" || a.eq_ignore_ascii_case(origin) => {}
        Some(a) => {
            return Grant::Refused(format!("the target allows origin {a:?}, not {origin:?}"))
        }
        None => {
            return Grant::Refused(format!(
                "the target answered {status} without WebHook-Allowed-Origin"
            ))
        }
    }
    let rate = headers
        .get("webhook-allowed-rate")
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    match rate {
        None | Some("*") => Grant::Granted(None),
        Some(r) => match r.parse::<u32>() {
            Ok(n) if n > 0 => Grant::Granted(Some(n)),
            _ => Grant::Refused(format!("invalid WebHook-Allowed-Rate {r:?}")),
        },
    }
}

async fn deliver(target: &Target, envelope: &Envelope) -> Attempt {
    let signed = (target.signer.as_ref())
        .filter(|s| s.scheme() == SignScheme::HmacSha256)
        .map(|s| s.sign_event(&envelope.event));
    let event = signed.as_ref().unwrap_or(&envelope.event);
    let (mut headers, body) = ferry_http::encode(event, target.mode);
    for (k, v) in &target.headers {
        headers.insert(k, v.clone());
    }
    if let Some(origin) = &target.origin {
        headers.insert("webhook-request-origin", origin.clone());
    }
    if let Some(signer) =
        (target.signer.as_ref()).filter(|s| s.scheme() == SignScheme::StandardWebhooks)
    {
        let id = webhook_id(event);
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let signature = signer.webhook_signature(&id, timestamp, &body);
        for (name, value) in [
            ("webhook-id", id),
            ("webhook-timestamp", timestamp.to_string()),
            ("webhook-signature", signature),
        ] {
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(name, v);
            }
        }
    }
    // The protocol's own trace header for this hop: same trace, new span.
    if let Some(ferry_core::AttributeRef::Str(t)) = envelope.event.attribute("traceparent") {
        if let Some(v) =
            crate::trace::next_hop(t).and_then(|v| http::HeaderValue::from_str(&v).ok())
        {
            headers.insert("traceparent", v);
        }
    }
    let result = target
        .client
        .post(target.url.clone())
        .headers(headers)
        .body(body)
        .send()
        .await;
    match result {
        Ok(resp) if resp.status().is_success() => Ok(()),
        Ok(resp) => {
            let status = resp.status();
            // A 409 with Retry-After is a receiver saying "this message is still being
            // processed" (a Ferry source seeing the retry of a webhook in flight): retry.
            let in_progress = status == http::StatusCode::CONFLICT
                && resp.headers().contains_key(http::header::RETRY_AFTER);
            let kind = if status.is_server_error()
                || status == http::StatusCode::TOO_MANY_REQUESTS
                || status == http::StatusCode::REQUEST_TIMEOUT
                || in_progress
            {
                FailureKind::Retryable
            } else {
                FailureKind::Permanent
            };
            // 429 and 503 may say when to come back; that bounds the next attempt's delay
            // from below (capped by the retry policy's max_backoff_ms).
            let retry_after = (status == http::StatusCode::TOO_MANY_REQUESTS
                || status == http::StatusCode::SERVICE_UNAVAILABLE
                || in_progress)
                .then(|| resp.headers().get(http::header::RETRY_AFTER))
                .flatten()
                .and_then(|v| v.to_str().ok())
                .and_then(crate::delivery::parse_retry_after);
            Err(Refusal {
                kind,
                message: format!("{} answered {status}", target.shown_url),
                retry_after,
            })
        }
        Err(e) => {
            let what = if e.is_timeout() {
                "timed out"
            } else if e.is_connect() {
                "connection failed"
            } else {
                "request failed"
            };
            // reqwest's text names the URL with its query: leave it out. Its causes name the
            // problem (a refused certificate, a reset connection): keep them.
            Err(Refusal::retryable(format!(
                "{} {what}: {}",
                target.shown_url,
                with_causes(&e.without_url())
            )))
        }
    }
}

/// An error and its causes, `: `-separated (reqwest's own text is only "error sending
/// request"; the cause says "invalid peer certificate: UnknownIssuer").
fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

/// The Standard Webhooks message id of an event: `msg_` and the first 32 hex digits of SHA-256
/// over `source`, a NUL byte and `id`. A retry of the event carries the same id (so a receiver
/// can drop duplicates); events of different sources, whose ids may collide, do not.
pub(super) fn webhook_id(event: &ferry_core::CloudEvent) -> String {
    use sha2::Digest as _;
    let mut hash = sha2::Sha256::new();
    hash.update(event.source().as_bytes());
    hash.update([0]);
    hash.update(event.id().as_bytes());
    let digest = hash.finalize();
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("msg_{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_grants_only_with_the_allowed_origin() {
        let origin = HeaderValue::from_static("ferry.example.com");
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut h = http::HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, HeaderValue::from_static(v));
            }
            h
        };
        let ok = http::StatusCode::OK;
        let cases: Vec<(http::HeaderMap, bool, Option<u32>)> = vec![
            (
                headers(&[("webhook-allowed-origin", "ferry.example.com")]),
                true,
                None,
            ),
            (
                headers(&[
                    ("webhook-allowed-origin", "*"),
                    ("webhook-allowed-rate", "120"),
                ]),
                true,
                Some(120),
            ),
            (
                headers(&[
                    ("webhook-allowed-origin", "FERRY.example.com"),
                    ("webhook-allowed-rate", "*"),
                ]),
                true,
                None,
            ),
            (
                headers(&[("webhook-allowed-origin", "other.example.com")]),
                false,
                None,
            ),
            (headers(&[("webhook-allowed-rate", "10")]), false, None),
            (
                headers(&[
                    ("webhook-allowed-origin", "*"),
                    ("webhook-allowed-rate", "0"),
                ]),
                false,
                None,
            ),
            (headers(&[]), false, None),
        ];
        for (h, granted, rate) in cases {
            match grant(ok, &h, &origin) {
                Grant::Granted(r) => {
                    assert!(granted, "{h:?}");
                    assert_eq!(r, rate);
                }
                Grant::Refused(why) => assert!(!granted, "{h:?}: {why}"),
            }
        }
    }

    #[test]
    fn webhook_ids_are_stable_and_differ_by_source() {
        let a = ferry_core::CloudEvent::new("1", "/a", "t").unwrap();
        let b = ferry_core::CloudEvent::new("1", "/b", "t").unwrap();
        assert_eq!(webhook_id(&a), webhook_id(&a.clone()));
        assert_ne!(webhook_id(&a), webhook_id(&b));
        assert!(webhook_id(&a).starts_with("msg_") && webhook_id(&a).len() == 36);
    }
}
