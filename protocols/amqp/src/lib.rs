//! The CloudEvents binding for AMQP 0-9-1 (RabbitMQ): pure functions between lapin message
//! properties plus body and events.
//!
//! No IO happens here. AMQP 0-9-1 has no official CloudEvents binding; this one follows the
//! AMQP 1.0 binding with the 0-9-1 gateway notes (docs/amqp.md):
//!
//! - Mode detection: a `content-type` property starting with `application/cloudevents`
//!   (any case) → structured (the JSON format in the body); anything else → binary. Without a
//!   `content-type` property a `<prefix>datacontenttype` header decides, as the Java SDK's
//!   Spring AMQP module marks structured mode.
//! - Binary mode: attributes are `headers` entries named `<prefix><attribute>`. [`decode`]
//!   reads the `cloudEvents_`, `cloudEvents:` and `ce-` prefixes, names compared without
//!   regard to case, values as canonical strings or native AMQP types (`time` also as an
//!   integer of milliseconds, the AMQP 1.0 timestamp); [`encode`] writes one [`HeaderPrefix`].
//!   `datacontenttype` travels in the `content-type` property (a header with the same value
//!   beside it is the same attribute, not a duplicate), the data in the body, `time` as an
//!   RFC 3339 string.

mod value;

use bytes::Bytes;
use ferry_core::{
    json, CloudEvent, Data, EventBuilder, EventError, EventErrorKind, TransportMetadata,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::BasicProperties;

/// The header-name prefixes read in binary mode, in the order they are tried.
pub const PREFIXES: [&str; 3] = ["cloudEvents_", "cloudEvents:", "ce-"];

/// The content type written in structured mode.
pub const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json; charset=utf-8";

/// How an event is laid out in an AMQP message: binary puts attributes in headers.
pub use ferry_core::Mode;

/// The header-name prefix written in binary mode. One message never mixes prefixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HeaderPrefix {
    /// `cloudEvents_`: the AMQP 1.0 binding's preferred separator (JMS-selector safe).
    #[default]
    CloudEvents,
    /// `ce-`: the Knative RabbitMQ binding.
    Ce,
    /// `cloudEvents:`: the AMQP 1.0 binding's other separator, the only one the Go SDK and the
    /// Java SDK's Proton module read (AMQP 1.0 consumers of RabbitMQ 4 see 0-9-1 headers as
    /// application properties).
    CloudEventsColon,
}

impl HeaderPrefix {
    pub fn as_str(self) -> &'static str {
        match self {
            HeaderPrefix::CloudEvents => "cloudEvents_",
            HeaderPrefix::Ce => "ce-",
            HeaderPrefix::CloudEventsColon => "cloudEvents:",
        }
    }
}

/// Why a message could not be decoded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// A CloudEvents format Ferry does not read (e.g. `application/cloudevents+avro`, or a
    /// batch, which AMQP does not carry).
    #[error(
        "unsupported media type {0:?}: Ferry reads application/cloudevents+json and binary mode"
    )]
    UnsupportedMediaType(String),
    /// Neither structured mode nor a `specversion` header under any prefix.
    #[error("not a CloudEvent: binary mode needs a cloudEvents_specversion (or ce-specversion) header, structured mode the content type application/cloudevents+json")]
    NotCloudEvent,
    /// An attribute or its header is invalid; `header` names the header (or `content-type`)
    /// when there is one.
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
}

/// Whether a content type selects structured mode. `Err` for a CloudEvents format other than
/// JSON.
pub fn is_structured(content_type: Option<&str>) -> Result<bool, DecodeError> {
    let Some(ct) = content_type else {
        return Ok(false);
    };
    match json::format(ct) {
        json::Format::None => Ok(false),
        json::Format::Structured => Ok(true),
        // A batch is not one message's event: unsupported here, like any other format.
        json::Format::Batch | json::Format::Unsupported => Err(DecodeError::UnsupportedMediaType(
            ferry_core::validate::media_type_essence(ct).to_owned(),
        )),
    }
}

/// The attribute a header carries, if its name has one of the [`PREFIXES`] (any case).
/// The attribute name is lowercased.
pub fn attribute_name(header: &str) -> Option<String> {
    PREFIXES.iter().find_map(|prefix| {
        let head = header.get(..prefix.len())?;
        head.eq_ignore_ascii_case(prefix)
            .then(|| header[prefix.len()..].to_ascii_lowercase())
    })
}

/// Whether the message looks like a CloudEvent: structured content type, or a binary-mode
/// `specversion` header. Messages that are not can be normalized instead.
pub fn is_cloudevent(properties: &BasicProperties) -> bool {
    let structured =
        content_type(properties).is_some_and(|ct| json::format(ct) != json::Format::None);
    structured
        || headers(properties)
            .any(|(name, _)| attribute_name(name).is_some_and(|a| a == "specversion"))
}

/// Decodes a message in either mode.
pub fn decode(properties: &BasicProperties, body: &[u8]) -> Result<CloudEvent, DecodeError> {
    if is_structured(content_type(properties))? {
        return json::decode(body).map_err(|error| DecodeError::Invalid {
            header: None,
            error,
        });
    }
    decode_binary(properties, body)
}

/// Decodes a binary-mode message: prefixed headers are attributes, the `content-type`
/// property is `datacontenttype`, the body is the data.
pub fn decode_binary(properties: &BasicProperties, body: &[u8]) -> Result<CloudEvent, DecodeError> {
    let mut builder = EventBuilder::new();
    let mut names: Vec<(String, &str)> = Vec::new();
    // A `datacontenttype` header, to tell an equal `content-type` property from a duplicate.
    let mut header_content_type: Option<String> = None;
    for (header, value) in headers(properties) {
        let Some(attribute) = attribute_name(header) else {
            continue;
        };
        let invalid = |error: EventError| DecodeError::Invalid {
            header: Some(header.to_owned()),
            error,
        };
        if attribute != "datacontenttype" {
            ferry_core::validate::extension_name(&attribute).map_err(invalid)?;
        }
        let wrong_type =
            |m: String| invalid(EventError::new(&attribute, EventErrorKind::Invalid, m));
        let decoded = if attribute == "time" {
            // A string, a native timestamp, or an integer of milliseconds.
            value::time(value)
                .map(value::HeaderValue::Canonical)
                .map_err(wrong_type)?
        } else {
            match value::decode(value) {
                Ok(v) => v,
                // Core attributes are strings: an integer `id` is a type error, whatever its
                // width.
                Err(_) if is_core(&attribute) && !is_string(value) => {
                    return Err(wrong_type("must be a string".into()))
                }
                Err(m) => {
                    return Err(invalid(EventError::new(
                        &attribute,
                        EventErrorKind::Malformed,
                        m,
                    )))
                }
            }
        };
        match decoded {
            value::HeaderValue::Canonical(s) => {
                if attribute == "datacontenttype" {
                    header_content_type = Some(s.clone());
                }
                builder.attribute(&attribute, s);
            }
            value::HeaderValue::Typed(_) if is_core(&attribute) => {
                return Err(wrong_type("must be a string".into()))
            }
            value::HeaderValue::Typed(v) => builder.set_extension(attribute.clone(), v),
        }
        names.push((attribute, header));
    }
    if builder.specversion_str().is_none() {
        return Err(DecodeError::NotCloudEvent);
    }
    if let Some(ct) = properties.content_type() {
        // Spring's writer puts `datacontenttype` in a header as well as in the property: the
        // same value twice is one attribute.
        if header_content_type.as_deref() != Some(ct.as_str()) {
            builder.attribute("datacontenttype", ct.as_str().to_owned());
            names.push(("datacontenttype".into(), "content-type"));
        }
    }
    if !body.is_empty() {
        builder.set_data(Some(Data::Binary(Bytes::copy_from_slice(body))));
    }
    builder.build().map_err(|error| DecodeError::Invalid {
        header: error.attribute.as_deref().and_then(|a| {
            names
                .iter()
                .rev()
                .find(|(n, _)| n == a)
                .map(|(_, h)| (*h).to_owned())
        }),
        error,
    })
}

/// Encodes an event: the properties (content type and headers; the caller adds delivery
/// mode and the like) and the body.
pub fn encode(event: &CloudEvent, mode: Mode, prefix: HeaderPrefix) -> (BasicProperties, Vec<u8>) {
    let properties = BasicProperties::default();
    let properties = match ShortString::try_new(event.id()) {
        // Informational mirror for brokers and tools that deduplicate on message-id; the
        // headers (or the body) stay authoritative.
        Ok(id) => properties.with_message_id(id),
        Err(_) => properties,
    };
    match mode {
        Mode::Structured => (
            properties.with_content_type(STRUCTURED_CONTENT_TYPE.into()),
            json::encode(event),
        ),
        Mode::Binary => {
            let mut headers = binary_headers(event, prefix);
            let mut content_type = None;
            if let Some(ct) = event.effective_content_type() {
                match ShortString::try_new(ct) {
                    Ok(ct) => content_type = Some(ct),
                    // Longer than the 255 bytes of a `content-type` property: the attribute
                    // goes in a header, which readers take when the property is absent.
                    Err(_) => {
                        headers.insert(
                            format!("{}datacontenttype", prefix.as_str()).into(),
                            value::string(ct),
                        );
                    }
                }
            }
            let mut properties = properties.with_headers(headers);
            if let Some(ct) = content_type {
                properties = properties.with_content_type(ct);
            }
            let body = event
                .data()
                .map(|d| d.as_bytes().to_vec())
                .unwrap_or_default();
            (properties, body)
        }
    }
}

/// The headers of a binary-mode message, every attribute but `datacontenttype` under one
/// prefix. Core attributes are strings; extensions keep their native type where 0-9-1 has one.
pub fn binary_headers(event: &CloudEvent, prefix: HeaderPrefix) -> FieldTable {
    let mut table = FieldTable::default();
    let prefix = prefix.as_str();
    let mut put = |name: &str, value: AMQPValue| {
        table.insert(format!("{prefix}{name}").into(), value);
    };
    put("specversion", value::string(event.specversion()));
    put("id", value::string(event.id()));
    put("source", value::string(event.source()));
    put("type", value::string(event.ty()));
    if let Some(v) = event.dataschema() {
        put("dataschema", value::string(v));
    }
    if let Some(v) = event.subject() {
        put("subject", value::string(v));
    }
    if let Some(v) = event.time() {
        put("time", value::string(v.as_str()));
    }
    for (name, v) in event.extensions() {
        put(name, value::encode(v));
    }
    table
}

/// Transport metadata of a delivery: every header that is not a CloudEvents attribute as
/// `header.<lowercase name>`, plus `amqp.exchange` and `amqp.routing_key`.
pub fn metadata(
    properties: &BasicProperties,
    exchange: &str,
    routing_key: &str,
) -> TransportMetadata {
    let mut meta = TransportMetadata::new();
    for (name, value) in headers(properties) {
        if attribute_name(name).is_some() {
            continue;
        }
        if let Some(text) = value::metadata_text(value) {
            meta.push_header(name, &text);
        }
    }
    meta.push_property("amqp.exchange", exchange);
    meta.push_property("amqp.routing_key", routing_key);
    meta
}

/// The content type that selects the mode: the `content-type` property, or else a string
/// `<prefix>datacontenttype` header.
fn content_type(properties: &BasicProperties) -> Option<&str> {
    if let Some(ct) = properties.content_type() {
        return Some(ct.as_str());
    }
    headers(properties).find_map(|(name, v)| {
        if attribute_name(name)? != "datacontenttype" {
            return None;
        }
        match v {
            AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
            AMQPValue::ShortString(s) => Some(s.as_str()),
            _ => None,
        }
    })
}

fn is_string(value: &AMQPValue) -> bool {
    matches!(value, AMQPValue::LongString(_) | AMQPValue::ShortString(_))
}

fn headers(properties: &BasicProperties) -> impl Iterator<Item = (&str, &AMQPValue)> {
    properties
        .headers()
        .iter()
        .flat_map(|t| t.inner().iter())
        .map(|(k, v)| (k.as_str(), v))
}

fn is_core(name: &str) -> bool {
    ferry_core::event::CORE_ATTRIBUTES.contains(&name) || name == "schemaurl"
}

#[cfg(test)]
mod tests;
