//! HTTP errors as `application/problem+json` (RFC 9457): the one place where failures become
//! responses.

use axum::response::{IntoResponse, Response};
use ferry_core::{DeliveryFailure, FailureKind, Outcome};
use ferry_http::DecodeError;

use crate::pipeline::{DispatchError, DownReason, IngestError};
use http::{header, HeaderValue, StatusCode};
use serde::Serialize;

/// A problem report. `attribute`, `header` and `index` name what the sender must fix.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub title: &'static str,
    #[serde(serialize_with = "status_code")]
    pub status: StatusCode,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attribute: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// Position of the offending event in a batch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    #[serde(skip)]
    pub retry_after: Option<u64>,
    #[serde(skip)]
    pub allow: Option<&'static str>,
    /// The `WWW-Authenticate` challenge of a 401.
    #[serde(skip)]
    pub challenge: Option<String>,
}

fn status_code<S: serde::Serializer>(s: &StatusCode, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_u16(s.as_u16())
}

impl Problem {
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Problem {
        Problem {
            kind: "about:blank",
            title: status.canonical_reason().unwrap_or("Error"),
            status,
            detail: detail.into(),
            attribute: None,
            header: None,
            index: None,
            retry_after: None,
            allow: None,
            challenge: None,
        }
    }

    pub fn with_attribute(mut self, attribute: Option<String>) -> Problem {
        self.attribute = attribute;
        self
    }

    pub fn retry_after(mut self, seconds: u64) -> Problem {
        self.retry_after = Some(seconds);
        self
    }

    /// The metric reason for this problem.
    pub fn reason(&self) -> &'static str {
        match self.status {
            StatusCode::BAD_REQUEST => "invalid",
            StatusCode::UNAUTHORIZED => "unauthenticated",
            StatusCode::FORBIDDEN => "forbidden",
            StatusCode::TOO_MANY_REQUESTS => "rate_limited",
            StatusCode::CONFLICT => "in_progress",
            StatusCode::PAYLOAD_TOO_LARGE => "too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
            StatusCode::NOT_FOUND => "unrouted",
            StatusCode::SERVICE_UNAVAILABLE => "overloaded",
            StatusCode::GATEWAY_TIMEOUT => "timeout",
            _ => "delivery_failed",
        }
    }
}

/// The detail of a refused credential, as a sentence: what was refused, and why.
fn unauthenticated_detail(method: &str, reason: &str) -> String {
    let credential = match method {
        "jwt" => "bearer token",
        "hmac" => "webhook signature",
        "mtls" => "client certificate",
        _ => "request",
    };
    let reason = reason.trim_end_matches('.');
    if method == "none" || reason.starts_with("no ") {
        // "no credentials", "no jwt credential; every configured method must pass"
        return format!("The request presented {reason}.");
    }
    format!("The {credential} was refused: {reason}.")
}

impl Problem {
    /// An event that could not be handed to its sinks. `index` is its position in a batch.
    pub fn from_ingest(e: IngestError, in_batch: bool) -> Problem {
        match e {
            IngestError::Unrouted { index } => {
                let mut p = Problem::new(StatusCode::NOT_FOUND, "no route matches the event");
                p.index = in_batch.then_some(index);
                p
            }
            IngestError::Dispatch(DispatchError::Overloaded { sink }) => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("sink `{sink}` is at capacity; retry later"),
            )
            .retry_after(1),
            IngestError::Dispatch(DispatchError::Down {
                sink,
                reason,
                retry_after,
            }) => {
                let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
                let detail = match reason {
                    DownReason::CircuitOpen => format!(
                        "sink `{sink}` is down (circuit open after consecutive failures); the next probe is in {secs} s: retry then"
                    ),
                    DownReason::Disconnected => {
                        format!("sink `{sink}` is not connected to its target; retry later")
                    }
                };
                Problem::new(StatusCode::SERVICE_UNAVAILABLE, detail).retry_after(secs)
            }
            IngestError::Dispatch(DispatchError::Closed { sink }) => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("sink `{sink}` is shutting down; retry later"),
            )
            .retry_after(1),
            IngestError::Dispatch(DispatchError::TooLarge {
                sink,
                events,
                capacity,
            }) => Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the batch has {events} events for sink `{sink}`, whose queue holds {capacity}: send smaller batches"
                ),
            ),
        }
    }

    /// The answer for a delivery outcome; `None` when it was delivered.
    pub fn from_outcome(outcome: Outcome) -> Option<Problem> {
        match outcome {
            Outcome::Delivered => None,
            Outcome::Failed(f) => Some(Problem::from_failure(&f)),
        }
    }

    fn from_failure(f: &DeliveryFailure) -> Problem {
        match f.kind {
            FailureKind::Overloaded => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("sink `{}` is at capacity; retry later", f.sink),
            )
            .retry_after(1),
            FailureKind::TooLarge => Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the event is too large for sink `{}`", f.sink),
            ),
            _ => Problem::new(
                StatusCode::BAD_GATEWAY,
                format!(
                    "delivery to sink `{}` failed; the event was not accepted",
                    f.sink
                ),
            ),
        }
    }

    /// Authentication failed (401 with its challenge), or a valid signature names a message
    /// that is being delivered (409) or cannot be remembered now (503); both retry later.
    pub fn unauthenticated(e: crate::security::source::Unauthenticated) -> Problem {
        use crate::security::source::Refusal;
        let detail = unauthenticated_detail(e.method, &e.reason);
        let mut p = match e.refusal {
            Refusal::Credentials => {
                let mut p = Problem::new(StatusCode::UNAUTHORIZED, detail);
                p.challenge = Some(e.challenge);
                p
            }
            Refusal::InProgress => Problem::new(StatusCode::CONFLICT, detail).retry_after(1),
            Refusal::Busy => Problem::new(StatusCode::SERVICE_UNAVAILABLE, detail).retry_after(1),
        };
        p.header = e.header;
        p
    }

    /// A policy refused an event.
    pub fn forbidden(
        index: usize,
        denied: crate::security::policy::Denied,
        in_batch: bool,
    ) -> Problem {
        let mut p = Problem::new(StatusCode::FORBIDDEN, denied.detail);
        p.attribute = denied.attribute.map(str::to_owned);
        p.index = in_batch.then_some(index);
        p
    }

    /// Over the rate limit (429, retry later), or a batch larger than the limit's burst,
    /// which no retry can pass (413).
    pub fn rate_limited(refusal: crate::security::ratelimit::RateRefusal) -> Problem {
        use crate::security::ratelimit::{retry_after_secs, RateRefusal};
        match refusal {
            RateRefusal::Wait(wait) => Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate limit exceeded; retry later",
            )
            .retry_after(retry_after_secs(wait)),
            RateRefusal::OverBurst { burst } => Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "batch larger than the rate limit's burst ({burst} events); send smaller batches"
                ),
            ),
        }
    }

    /// The sinks did not confirm in time.
    pub fn ack_timeout(ms: u64) -> Problem {
        Problem::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!("sinks did not confirm within {ms} ms; the event was not accepted"),
        )
    }
}

impl From<DecodeError> for Problem {
    fn from(e: DecodeError) -> Problem {
        let detail = e.to_string();
        match e {
            DecodeError::UnsupportedMediaType(_) => {
                let mut p = Problem::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, detail);
                p.header = Some("content-type".into());
                p
            }
            DecodeError::NotCloudEvent => {
                let mut p = Problem::new(StatusCode::BAD_REQUEST, detail);
                p.header = Some("ce-specversion".into());
                p.attribute = Some("specversion".into());
                p
            }
            DecodeError::Invalid { header, error } => {
                let mut p =
                    Problem::new(StatusCode::BAD_REQUEST, detail).with_attribute(error.attribute);
                p.header = header;
                p
            }
            DecodeError::Batch(b) => {
                let mut p =
                    Problem::new(StatusCode::BAD_REQUEST, detail).with_attribute(b.error.attribute);
                p.index = b.index;
                p
            }
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut resp = (self.status, body).into_response();
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(s) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            let challenge = (self.challenge.as_deref())
                .and_then(|c| HeaderValue::from_str(c).ok())
                .unwrap_or_else(|| HeaderValue::from_static("Bearer"));
            headers.insert(header::WWW_AUTHENTICATE, challenge);
        }
        if let Some(allow) = self.allow {
            headers.insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        resp
    }
}
