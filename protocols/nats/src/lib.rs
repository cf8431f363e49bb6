//! The CloudEvents NATS binding: pure functions between NATS messages (subject, headers,
//! payload) and events.
//!
//! No IO happens here. Mode detection (binding "Content Modes", NATS server ≥ 2.2):
//! a `Content-Type` header starting with `application/cloudevents` → structured; otherwise a
//! `ce-specversion` header → binary; a message with neither header and no `Content-Type` is
//! tried as a structured JSON event (the spec's own structured example carries no headers).
//! Binary mode maps every attribute, `datacontenttype` included, to a `ce-<name>` header whose
//! value is percent-encoded exactly as in the HTTP binding. Header names are case-insensitive
//! (NATS ADR-4): they are lowercased when read.

use std::borrow::Cow;

use async_nats::header::HeaderName;
use async_nats::HeaderMap;
use bytes::Bytes;
use ferry_core::json;
use ferry_core::{
    AttributeRef, CloudEvent, Data, EventBuilder, EventError, EventErrorKind, TransportMetadata,
};

pub use ferry_core::header_value::{decode_value, encode_value};

/// The header a structured message carries (and that selects structured mode).
pub const CONTENT_TYPE: &str = "Content-Type";
/// `Content-Type` of a structured message.
pub const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json; charset=utf-8";
/// The JetStream de-duplication header.
pub const MSG_ID: &str = "Nats-Msg-Id";
/// The transport property that holds the subject a message arrived on.
pub const SUBJECT_PROPERTY: &str = "nats.subject";

/// How an event is laid out in a NATS message: binary puts attributes in `ce-` headers.
pub use ferry_core::Mode;

/// What the headers of an inbound message say about its layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `Content-Type: application/cloudevents+json`.
    Structured,
    /// A `ce-specversion` header.
    Binary,
    /// Neither: maybe a header-less structured event, maybe not a CloudEvent at all.
    Unknown,
}

/// Why a message could not be decoded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// A CloudEvents format Ferry does not read (e.g. `application/cloudevents+avro`, or a batch,
    /// which NATS does not define).
    #[error(
        "unsupported media type {0:?}: Ferry reads application/cloudevents+json and binary mode"
    )]
    UnsupportedMediaType(String),
    /// No `ce-specversion`, no CloudEvents `Content-Type`, and the payload is not a JSON event.
    #[error("not a CloudEvent: binary mode needs the ce-specversion, ce-id, ce-source and ce-type headers, or use Content-Type application/cloudevents+json")]
    NotCloudEvent,
    /// A header or attribute is invalid; `header` names the NATS header when there is one.
    #[error("{}", match header { Some(h) => format!("header `{h}`: {}", error.message), None => error.to_string() })]
    Invalid {
        header: Option<String>,
        error: EventError,
    },
}

impl DecodeError {
    /// The offending attribute, if any.
    pub fn attribute(&self) -> Option<&str> {
        match self {
            DecodeError::Invalid { error, .. } => error.attribute.as_deref(),
            _ => None,
        }
    }

    /// The metric reason: `undecodable` when the message is not (readable as) a CloudEvent,
    /// `invalid` when it is one with a bad attribute.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::UnsupportedMediaType(_) | DecodeError::NotCloudEvent => "undecodable",
            DecodeError::Invalid { error, .. } if error.kind == EventErrorKind::Malformed => {
                "undecodable"
            }
            DecodeError::Invalid { .. } => "invalid",
        }
    }
}

/// The first value of a header, matched without regard to case.
pub fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| AsRef::<str>::as_ref(*n).eq_ignore_ascii_case(name))
        .and_then(|(_, values)| values.first())
        .map(|v| v.as_str())
}

/// Reads the layout from the headers. `Err` for a CloudEvents format other than JSON.
pub fn layout(headers: Option<&HeaderMap>) -> Result<Layout, DecodeError> {
    let Some(headers) = headers else {
        return Ok(Layout::Unknown);
    };
    if let Some(ct) = header(headers, CONTENT_TYPE) {
        match json::format(ct) {
            json::Format::None => {}
            json::Format::Structured => return Ok(Layout::Structured),
            json::Format::Batch | json::Format::Unsupported => {
                return Err(DecodeError::UnsupportedMediaType(
                    ferry_core::validate::media_type_essence(ct).to_owned(),
                ))
            }
        }
    }
    if header(headers, "ce-specversion").is_some() {
        return Ok(Layout::Binary);
    }
    Ok(Layout::Unknown)
}

/// Whether a message is not a CloudEvent by its headers and would need normalizing: no
/// CloudEvents `Content-Type`, no `ce-specversion`, and either a non-CloudEvents
/// `Content-Type` or a payload that is not a JSON event.
pub fn is_raw(headers: Option<&HeaderMap>, payload: &[u8]) -> bool {
    match layout(headers) {
        Ok(Layout::Unknown) => {
            headers.and_then(|h| header(h, CONTENT_TYPE)).is_some()
                || matches!(guess_structured(payload), Err(DecodeError::NotCloudEvent))
        }
        _ => false,
    }
}

/// Decodes a NATS message in either mode.
pub fn decode(headers: Option<&HeaderMap>, payload: Bytes) -> Result<CloudEvent, DecodeError> {
    match layout(headers)? {
        Layout::Structured => json::decode(&payload).map_err(|error| DecodeError::Invalid {
            header: None,
            error,
        }),
        Layout::Binary => match headers {
            Some(h) => decode_binary(h, payload),
            None => Err(DecodeError::NotCloudEvent),
        },
        Layout::Unknown if headers.and_then(|h| header(h, CONTENT_TYPE)).is_some() => {
            Err(DecodeError::NotCloudEvent)
        }
        Layout::Unknown => guess_structured(&payload),
    }
}

/// A header-less payload: a structured event if it is a JSON object with a `specversion`.
fn guess_structured(payload: &[u8]) -> Result<CloudEvent, DecodeError> {
    json::decode(payload).map_err(|error| {
        let not_an_event = error.kind == EventErrorKind::Malformed
            || (error.kind == EventErrorKind::Missing
                && error.attribute.as_deref() == Some("specversion"));
        if not_an_event {
            DecodeError::NotCloudEvent
        } else {
            DecodeError::Invalid {
                header: None,
                error,
            }
        }
    })
}

/// Decodes a binary-mode message: `ce-` headers are attributes, the payload is the data.
pub fn decode_binary(headers: &HeaderMap, payload: Bytes) -> Result<CloudEvent, DecodeError> {
    if header(headers, "ce-specversion").is_none() {
        return Err(DecodeError::NotCloudEvent);
    }
    let mut builder = binary_attributes(headers)?;
    if !payload.is_empty() {
        builder.set_data(Some(Data::Binary(payload)));
    }
    builder.build().map_err(|error| DecodeError::Invalid {
        header: error.attribute.as_deref().map(|a| format!("ce-{a}")),
        error,
    })
}

/// Collects the attributes of a binary-mode message into a builder (no data yet).
///
/// `datacontenttype` comes from `ce-datacontenttype`; when that is absent, a `Content-Type`
/// header stands in for it (producers that copy the HTTP binding send one).
pub fn binary_attributes(headers: &HeaderMap) -> Result<EventBuilder, DecodeError> {
    let mut builder = EventBuilder::new();
    let mut content_type = None;
    for (name, values) in headers.iter() {
        let name: &str = name.as_ref();
        let lower = name.to_ascii_lowercase();
        if lower == "content-type" {
            content_type = values.first().map(|v| v.as_str());
            continue;
        }
        let Some(attribute) = lower.strip_prefix("ce-") else {
            continue;
        };
        let invalid = |error| DecodeError::Invalid {
            header: Some(lower.clone()),
            error,
        };
        ferry_core::validate::extension_name(attribute).map_err(invalid)?;
        for value in values {
            let value = decode_value(value.as_str().as_bytes()).map_err(|message| {
                invalid(EventError::new(
                    attribute,
                    EventErrorKind::Malformed,
                    message,
                ))
            })?;
            builder.attribute(attribute, value);
        }
    }
    if let (None, Some(ct)) = (builder.content_type(), content_type) {
        builder.attribute("datacontenttype", ct.to_owned());
    }
    Ok(builder)
}

/// Transport metadata of a NATS message: the subject as `nats.subject` and every header that
/// is not a `ce-` attribute as `header.<lowercase name>` (each value of a repeated header).
pub fn metadata(subject: &str, headers: Option<&HeaderMap>) -> TransportMetadata {
    let mut meta = TransportMetadata::new();
    meta.push_property(SUBJECT_PROPERTY, subject);
    if let Some(headers) = headers {
        for (name, values) in headers.iter() {
            let name: &str = name.as_ref();
            if name.len() > 3 && name[..3].eq_ignore_ascii_case("ce-") {
                continue;
            }
            for value in values {
                meta.push_header(name, value.as_str());
            }
        }
    }
    meta
}

/// Encodes one event in the given mode: the headers and the payload.
pub fn encode(event: &CloudEvent, mode: Mode) -> (HeaderMap, Bytes) {
    match mode {
        Mode::Structured => {
            let mut headers = HeaderMap::new();
            headers.insert(CONTENT_TYPE, STRUCTURED_CONTENT_TYPE);
            (headers, Bytes::from(json::encode(event)))
        }
        Mode::Binary => {
            let payload = match event.data() {
                Some(Data::Binary(b)) => b.clone(),
                Some(data) => Bytes::copy_from_slice(data.as_bytes()),
                None => Bytes::new(),
            };
            (encode_binary_headers(event), payload)
        }
    }
}

/// The `ce-` headers of a binary-mode message (`datacontenttype` included).
pub fn encode_binary_headers(event: &CloudEvent) -> HeaderMap {
    // Names are `ce-` + [a-z0-9] and values percent-encoded to printable ASCII: both valid.
    // The core attributes' names are static: no allocation for them.
    let mut headers = HeaderMap::new();
    let mut put = |name: HeaderName, value: &str| {
        headers.insert(name, encode_value(value).into_owned());
    };
    put(
        HeaderName::from_static("ce-specversion"),
        event.specversion(),
    );
    put(HeaderName::from_static("ce-id"), event.id());
    put(HeaderName::from_static("ce-source"), event.source());
    put(HeaderName::from_static("ce-type"), event.ty());
    if let Some(ct) = event.effective_content_type() {
        put(HeaderName::from_static("ce-datacontenttype"), ct);
    }
    if let Some(v) = event.dataschema() {
        put(HeaderName::from_static("ce-dataschema"), v);
    }
    if let Some(v) = event.subject() {
        put(HeaderName::from_static("ce-subject"), v);
    }
    if let Some(v) = event.time() {
        put(HeaderName::from_static("ce-time"), v.as_str());
    }
    for (name, value) in event.extensions() {
        let text = match value.as_ref() {
            AttributeRef::Str(s) => Cow::Borrowed(s),
            other => Cow::Owned(other.to_canonical_string()),
        };
        headers.insert(format!("ce-{name}"), encode_value(&text).into_owned());
    }
    headers
}

/// The JetStream `Nats-Msg-Id` of an event: `<source> <id>`, each percent-encoded like a
/// binary-mode header value. Percent-encoding turns every space into `%20`, so the single
/// space is the only one and separates the two unambiguously; the value is printable ASCII.
pub fn message_id(event: &CloudEvent) -> String {
    let source = encode_value(event.source());
    let id = encode_value(event.id());
    let mut out = String::with_capacity(source.len() + 1 + id.len());
    out.push_str(&source);
    out.push(' ');
    out.push_str(&id);
    out
}

#[cfg(test)]
mod tests;
