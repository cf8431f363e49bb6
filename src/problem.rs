//! HTTP errors as `application/problem+json` (RFC 9457): the one place where failures become
//! responses.

use axum::response::{IntoResponse, Response};
use ferry_http::DecodeError;
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
        if let Some(allow) = self.allow {
            headers.insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        resp
    }
}
