//! The CloudEvents HTTP protocol binding: pure functions between HTTP messages and events.
//!
//! No IO happens here. [`decode`] turns request (or response) headers and a body into one
//! event or a batch; [`encode`] and [`encode_batch`] do the reverse. Mode detection follows
//! the binding §3: `application/cloudevents-batch…` → batched, `application/cloudevents…` →
//! structured, anything else → binary (`ce-` headers, body = data).

use std::borrow::Cow;

use bytes::Bytes;
use ferry_core::json::{self, BatchError};
use ferry_core::{AttributeRef, CloudEvent, Data, EventBuilder, EventError, TransportMetadata};
use http::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};

pub use ferry_core::header_value::{decode_value, encode_value};

/// The header whose presence makes a message a binary-mode CloudEvent.
const SPECVERSION_HEADER: HeaderName = HeaderName::from_static("ce-specversion");

/// How an event is laid out in an HTTP message: binary puts attributes in `ce-` headers.
pub use ferry_core::Mode;

/// The content mode of an inbound message, read from its `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentMode {
    Binary,
    Structured,
    Batch,
}

/// What a decoded HTTP message carried.
// A single event is the common case; boxing it would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Event(CloudEvent),
    Batch(Vec<CloudEvent>),
}

/// Why a message could not be decoded. Each variant maps to one HTTP status in the source.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// A CloudEvents format Ferry does not read (e.g. `application/cloudevents+avro`): 415.
    #[error("unsupported media type {0:?}: Ferry reads application/cloudevents+json, application/cloudevents-batch+json and binary mode")]
    UnsupportedMediaType(String),
    /// Binary mode without `ce-specversion`: not a CloudEvent at all.
    #[error("not a CloudEvent: binary mode needs the ce-specversion, ce-id, ce-source and ce-type headers, or use Content-Type application/cloudevents+json")]
    NotCloudEvent,
    /// A header or attribute is invalid; `header` names the HTTP header when there is one.
    #[error("{}", match header { Some(h) => format!("header `{h}`: {}", error.message), None => error.to_string() })]
    Invalid {
        header: Option<String>,
        error: EventError,
    },
    /// One event of a batch (or the batch itself) is invalid.
    #[error(transparent)]
    Batch(BatchError),
}

impl DecodeError {
    /// The offending attribute, if any.
    pub fn attribute(&self) -> Option<&str> {
        match self {
            DecodeError::Invalid { error, .. } => error.attribute.as_deref(),
            DecodeError::Batch(b) => b.error.attribute.as_deref(),
            _ => None,
        }
    }
}

/// Reads the content mode from a `Content-Type` value. Case-insensitive, batch tested first.
/// Returns `Err` with the media type for a CloudEvents format other than JSON.
pub fn content_mode(content_type: Option<&str>) -> Result<ContentMode, DecodeError> {
    let Some(ct) = content_type else {
        return Ok(ContentMode::Binary);
    };
    match json::format(ct) {
        json::Format::None => Ok(ContentMode::Binary),
        json::Format::Structured => Ok(ContentMode::Structured),
        json::Format::Batch => Ok(ContentMode::Batch),
        json::Format::Unsupported => Err(DecodeError::UnsupportedMediaType(
            ferry_core::validate::media_type_essence(ct).to_owned(),
        )),
    }
}

/// Whether the headers look like a binary-mode CloudEvent (`ce-specversion` present).
pub fn is_binary_event(headers: &HeaderMap) -> bool {
    headers.contains_key(&SPECVERSION_HEADER)
}

/// Decodes an HTTP message in any of the three modes.
pub fn decode(headers: &HeaderMap, body: Bytes) -> Result<Message, DecodeError> {
    let content_type = header_str(headers, &CONTENT_TYPE)?;
    match content_mode(content_type)? {
        ContentMode::Structured => {
            json::decode(&body)
                .map(Message::Event)
                .map_err(|error| DecodeError::Invalid {
                    header: None,
                    error,
                })
        }
        ContentMode::Batch => json::decode_batch(&body)
            .map(Message::Batch)
            .map_err(DecodeError::Batch),
        ContentMode::Binary => decode_binary(headers, body).map(Message::Event),
    }
}

/// Decodes a binary-mode message: `ce-` headers are attributes, `Content-Type` is
/// `datacontenttype`, the body is the data.
pub fn decode_binary(headers: &HeaderMap, body: Bytes) -> Result<CloudEvent, DecodeError> {
    if !is_binary_event(headers) {
        return Err(DecodeError::NotCloudEvent);
    }
    let mut builder = binary_attributes(headers)?;
    if !body.is_empty() {
        builder.set_data(Some(Data::Binary(body)));
    }
    builder.build().map_err(|error| DecodeError::Invalid {
        header: error.attribute.as_deref().map(header_for),
        error,
    })
}

/// Collects the attributes of a binary-mode message into a builder (no data yet).
pub fn binary_attributes(headers: &HeaderMap) -> Result<EventBuilder, DecodeError> {
    let mut builder = EventBuilder::new();
    for (name, value) in headers {
        let Some(attribute) = name.as_str().strip_prefix("ce-") else {
            continue;
        };
        if attribute == "datacontenttype" {
            return Err(DecodeError::Invalid {
                header: Some(name.as_str().to_owned()),
                error: EventError::new(
                    "datacontenttype",
                    ferry_core::EventErrorKind::Invalid,
                    "binary mode carries datacontenttype in Content-Type, not ce-datacontenttype",
                ),
            });
        }
        if let Err(error) = ferry_core::validate::extension_name(attribute) {
            return Err(DecodeError::Invalid {
                header: Some(name.as_str().to_owned()),
                error,
            });
        }
        let value = decode_value(value.as_bytes()).map_err(|message| DecodeError::Invalid {
            header: Some(name.as_str().to_owned()),
            error: EventError::new(attribute, ferry_core::EventErrorKind::Malformed, message),
        })?;
        builder.attribute(attribute, value);
    }
    if let Some(ct) = header_str(headers, &CONTENT_TYPE)? {
        builder.attribute("datacontenttype", ct.to_owned());
    }
    Ok(builder)
}

/// Transport metadata of an HTTP message: every header that is not a `ce-` attribute,
/// addressable as `header.<name>`.
pub fn metadata(headers: &HeaderMap) -> TransportMetadata {
    let mut meta = TransportMetadata::new();
    for (name, value) in headers {
        if name.as_str().starts_with("ce-") {
            continue;
        }
        if let Ok(v) = value.to_str() {
            meta.push_header(name.as_str(), v);
        }
    }
    meta
}

/// Encodes one event in the given mode: the headers to add and the body.
pub fn encode(event: &CloudEvent, mode: Mode) -> (HeaderMap, Bytes) {
    match mode {
        Mode::Structured => {
            let mut headers = HeaderMap::with_capacity(1);
            headers.insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/cloudevents+json; charset=utf-8"),
            );
            (headers, Bytes::from(json::encode(event)))
        }
        Mode::Binary => {
            let headers = encode_binary_headers(event);
            let body = match event.data() {
                Some(Data::Binary(b)) => b.clone(),
                Some(data) => Bytes::copy_from_slice(data.as_bytes()),
                None => Bytes::new(),
            };
            (headers, body)
        }
    }
}

/// The headers of a binary-mode message: `ce-` headers plus `Content-Type`.
pub fn encode_binary_headers(event: &CloudEvent) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(8 + event.extensions().len());
    // Every event is 1.0 on the way out, so this value never needs encoding or a copy.
    headers.append(
        SPECVERSION_HEADER,
        const { HeaderValue::from_static(ferry_core::event::SPECVERSION) },
    );
    let mut put = |name: HeaderName, value: &str| {
        if let Some(v) = header_value(value) {
            headers.append(name, v);
        }
    };
    put(const { HeaderName::from_static("ce-id") }, event.id());
    put(
        const { HeaderName::from_static("ce-source") },
        event.source(),
    );
    put(const { HeaderName::from_static("ce-type") }, event.ty());
    if let Some(v) = event.dataschema() {
        put(const { HeaderName::from_static("ce-dataschema") }, v);
    }
    if let Some(v) = event.subject() {
        put(const { HeaderName::from_static("ce-subject") }, v);
    }
    if let Some(v) = event.time() {
        put(const { HeaderName::from_static("ce-time") }, v.as_str());
    }
    for (name, value) in event.extensions() {
        let Some(name) = extension_header_name(name) else {
            continue;
        };
        match value.as_ref() {
            AttributeRef::Str(s) => put(name, s),
            other => put(name, &other.to_canonical_string()),
        }
    }
    if let Some(ct) = event.effective_content_type() {
        if let Ok(v) = HeaderValue::from_str(ct) {
            headers.insert(CONTENT_TYPE, v);
        }
    }
    headers
}

/// The `ce-` header for an extension attribute.
///
/// Names are `[a-z0-9]` (checked when the event was built), so the header name is always valid;
/// short names are assembled on the stack to spare an allocation besides the name's own.
fn extension_header_name(name: &str) -> Option<HeaderName> {
    const PREFIX: &[u8] = b"ce-";
    let mut buf = [0u8; 64];
    let len = PREFIX.len() + name.len();
    if len <= buf.len() {
        buf[..PREFIX.len()].copy_from_slice(PREFIX);
        buf[PREFIX.len()..len].copy_from_slice(name.as_bytes());
        HeaderName::from_bytes(&buf[..len]).ok()
    } else {
        HeaderName::from_bytes(format!("ce-{name}").as_bytes()).ok()
    }
}

/// A percent-encoded header value. Encoded values are printable ASCII, so this only fails for
/// values no event can hold.
fn header_value(value: &str) -> Option<HeaderValue> {
    match encode_value(value) {
        Cow::Borrowed(v) => HeaderValue::from_str(v).ok(),
        Cow::Owned(v) => HeaderValue::try_from(v).ok(),
    }
}

/// Encodes a batch (only for receivers that asked for one).
pub fn encode_batch<'a>(events: impl IntoIterator<Item = &'a CloudEvent>) -> (HeaderMap, Bytes) {
    let mut headers = HeaderMap::with_capacity(1);
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/cloudevents-batch+json; charset=utf-8"),
    );
    (headers, Bytes::from(json::encode_batch(events)))
}

/// The header that carries an attribute in binary mode.
fn header_for(attribute: &str) -> String {
    if attribute == "datacontenttype" {
        "content-type".to_owned()
    } else {
        format!("ce-{attribute}")
    }
}

fn header_str<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
) -> Result<Option<&'a str>, DecodeError> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v.to_str().map(Some).map_err(|_| DecodeError::Invalid {
            header: Some(name.as_str().to_owned()),
            error: EventError::malformed("header value is not visible ASCII"),
        }),
    }
}

#[cfg(test)]
mod tests;
