//! `http` sink: POST each event to a URL in binary or structured mode over a keep-alive
//! connection pool. A 2xx answer confirms the event.

use std::sync::Arc;
use std::time::Duration;

use ferry_core::FailureKind;
use http::{HeaderName, HeaderValue};
use tokio::sync::Semaphore;

use super::{SinkContext, SinkError, SinkStats};
use crate::config::{ContentMode, HttpSinkConfig};
use crate::pipeline::Delivery;

struct Target {
    client: reqwest::Client,
    url: reqwest::Url,
    mode: ferry_http::Mode,
    headers: http::HeaderMap,
}

pub fn start(
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
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(config.timeout_ms))
        .connect_timeout(Duration::from_millis(config.timeout_ms.min(5_000)))
        .pool_max_idle_per_host(config.in_flight)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| err(format!("cannot build HTTP client: {e}")))?;
    let mut headers = http::HeaderMap::new();
    for (k, v) in &config.headers {
        let name =
            HeaderName::from_bytes(k.as_bytes()).map_err(|e| err(format!("header {k}: {e}")))?;
        let value = HeaderValue::from_str(v).map_err(|e| err(format!("header {k}: {e}")))?;
        headers.insert(name, value);
    }
    let target = Arc::new(Target {
        client,
        url,
        mode: match config.mode {
            ContentMode::Binary => ferry_http::Mode::Binary,
            ContentMode::Structured => ferry_http::Mode::Structured,
        },
        headers,
    });
    let permits = Arc::new(Semaphore::new(config.in_flight));
    let tracker = cx.tracker.clone();
    cx.tracker.spawn(run(rx, target, permits, stats, tracker));
    Ok(())
}

async fn run(
    mut rx: super::SinkQueue,
    target: Arc<Target>,
    permits: Arc<Semaphore>,
    stats: SinkStats,
    tracker: tokio_util::task::TaskTracker,
) {
    while let Some(delivery) = rx.recv().await {
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            break;
        };
        let target = Arc::clone(&target);
        let stats = stats.clone();
        tracker.spawn(async move {
            stats.in_flight.inc();
            deliver(&target, delivery, &stats).await;
            stats.in_flight.dec();
            drop(permit);
        });
    }
}

async fn deliver(target: &Target, delivery: Delivery, stats: &SinkStats) {
    let (mut headers, body) = ferry_http::encode(&delivery.envelope.event, target.mode);
    for (k, v) in &target.headers {
        headers.insert(k, v.clone());
    }
    // The protocol's own trace header for this hop: same trace, new span.
    if let Some(ferry_core::AttributeRef::Str(t)) = delivery.envelope.event.attribute("traceparent")
    {
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
        Ok(resp) if resp.status().is_success() => stats.confirm(delivery),
        Ok(resp) => {
            let status = resp.status();
            let kind = if status.is_server_error()
                || status == http::StatusCode::TOO_MANY_REQUESTS
                || status == http::StatusCode::REQUEST_TIMEOUT
            {
                FailureKind::Retryable
            } else {
                FailureKind::Permanent
            };
            // 429 and 503 may say when to come back; that bounds the next attempt's delay
            // from below (capped by the retry policy's max_backoff_ms).
            let retry_after = (status == http::StatusCode::TOO_MANY_REQUESTS
                || status == http::StatusCode::SERVICE_UNAVAILABLE)
                .then(|| resp.headers().get(http::header::RETRY_AFTER))
                .flatten()
                .and_then(|v| v.to_str().ok())
                .and_then(crate::delivery::parse_retry_after);
            stats.fail_after(
                delivery,
                kind,
                format!("{} answered {status}", target.url),
                retry_after,
            );
        }
        Err(e) => {
            let what = if e.is_timeout() {
                "timed out"
            } else if e.is_connect() {
                "connection failed"
            } else {
                "request failed"
            };
            stats.fail(
                delivery,
                FailureKind::Retryable,
                format!("{} {what}: {e}", target.url),
            );
        }
    }
}
