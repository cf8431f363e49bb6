//! The CloudEvents MQTT binding (3.1.1 and 5.0): pure functions between PUBLISH packets and
//! events.
//!
//! No IO happens here. MQTT 3.1.1 has no per-message metadata, so it carries structured mode
//! only: the payload is the JSON event format. MQTT 5 carries either mode:
//! - **structured** when the Content Type property starts with `application/cloudevents`
//!   (compared without regard to case);
//! - **binary** when a user property is named `specversion`: every attribute is a user
//!   property named after it (no prefix, canonical string values), `datacontenttype` is the
//!   Content Type property and the payload is the data;
//! - with neither a Content Type nor `specversion`, the payload is tried as structured JSON,
//!   as a 3.1.1 publisher would have sent it.
//!
//! Anything else is [`DecodeError::NotCloudEvent`]: a source may normalize it.

use bytes::Bytes;
use ferry_core::{json, CloudEvent, Data, EventBuilder, EventError, TransportMetadata};
use rumqttc::v5::mqttbytes::v5::PublishProperties;

/// The Content Type of a structured-mode message.
pub const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json; charset=utf-8";

/// How an event is laid out in an MQTT 5 message: binary puts attributes in user properties,
/// `datacontenttype` in Content Type and the data in the payload.
pub use ferry_core::Mode;

/// Why a message could not be decoded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// Neither structured nor binary mode: not a CloudEvent at all (a normalize template may
    /// turn it into one).
    #[error("not a CloudEvent: expected Content Type application/cloudevents+json, a `specversion` user property (MQTT 5), or a JSON event with `specversion`")]
    NotCloudEvent,
    /// A CloudEvents format other than JSON.
    #[error("unsupported CloudEvents format {0:?}: Ferry reads application/cloudevents+json")]
    UnsupportedFormat(String),
    /// An attribute is invalid; `property` names the MQTT 5 user property when there is one.
    #[error("{}", match property { Some(p) => format!("user property `{p}`: {}", error.message), None => error.to_string() })]
    Invalid {
        property: Option<String>,
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

/// Decodes an MQTT 5 PUBLISH from its payload and properties.
pub fn decode_v5(
    payload: Bytes,
    properties: Option<&PublishProperties>,
) -> Result<CloudEvent, DecodeError> {
    let content_type = properties.and_then(|p| p.content_type.as_deref());
    if let Some(ct) = content_type {
        match json::format(ct) {
            json::Format::None => {}
            json::Format::Structured => return decode_structured(&payload),
            json::Format::Batch | json::Format::Unsupported => {
                return Err(DecodeError::UnsupportedFormat(
                    ferry_core::validate::media_type_essence(ct).to_owned(),
                ))
            }
        }
    }
    let user_properties = properties.map_or(&[][..], |p| &p.user_properties[..]);
    if user_properties.iter().any(|(n, _)| n == "specversion") {
        return decode_binary(payload, content_type, user_properties);
    }
    if content_type.is_none() && looks_structured(&payload) {
        return decode_structured(&payload);
    }
    Err(DecodeError::NotCloudEvent)
}

/// Decodes an MQTT 3.1.1 PUBLISH: the payload must be a JSON-format event.
pub fn decode_v311(payload: &[u8]) -> Result<CloudEvent, DecodeError> {
    if looks_structured(payload) {
        decode_structured(payload)
    } else {
        Err(DecodeError::NotCloudEvent)
    }
}

/// Whether a payload is a JSON object with a `specversion` member (so errors in it are
/// reported as an invalid event rather than "not a CloudEvent").
fn looks_structured(payload: &[u8]) -> bool {
    let first = payload.iter().find(|b| !b.is_ascii_whitespace());
    first == Some(&b'{')
        && serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(payload)
            .is_ok_and(|m| m.contains_key("specversion"))
}

fn decode_structured(payload: &[u8]) -> Result<CloudEvent, DecodeError> {
    json::decode(payload).map_err(|error| DecodeError::Invalid {
        property: None,
        error,
    })
}

/// Binary mode: user properties with valid attribute names are attributes; the rest is
/// transport metadata (see [`metadata_v5`]). A `datacontenttype` user property is tolerated
/// when the Content Type property is absent (the binding's own example shows one).
fn decode_binary(
    payload: Bytes,
    content_type: Option<&str>,
    user_properties: &[(String, String)],
) -> Result<CloudEvent, DecodeError> {
    let mut builder = EventBuilder::new();
    for (name, value) in user_properties {
        if !is_attribute_name(name) {
            continue;
        }
        if name == "datacontenttype" && content_type.is_some() {
            continue;
        }
        if builder.has(name) {
            return Err(DecodeError::Invalid {
                property: Some(name.clone()),
                error: EventError::new(
                    name,
                    ferry_core::EventErrorKind::Duplicate,
                    "user property appears more than once",
                ),
            });
        }
        builder.attribute(name, value.clone());
    }
    if let Some(ct) = content_type {
        builder.attribute("datacontenttype", ct.to_owned());
    }
    if !payload.is_empty() {
        builder.set_data(Some(Data::Binary(payload)));
    }
    builder.build().map_err(|error| DecodeError::Invalid {
        property: error
            .attribute
            .as_deref()
            .filter(|a| *a != "datacontenttype" || content_type.is_none())
            .map(str::to_owned),
        error,
    })
}

/// Attribute names are `[a-z0-9]+` (and not `data`): anything else is transport metadata.
fn is_attribute_name(name: &str) -> bool {
    ferry_core::validate::extension_name(name).is_ok()
}

/// Whether an MQTT 5 message is binary mode (a `specversion` user property).
fn is_binary(properties: Option<&PublishProperties>) -> bool {
    properties.is_some_and(|p| p.user_properties.iter().any(|(n, _)| n == "specversion"))
}

/// Transport metadata of an MQTT 5 message: `mqtt.topic`, and user properties as
/// `header.<lowercase name>` — all of them, except in binary mode those that are attributes.
pub fn metadata_v5(topic: &str, properties: Option<&PublishProperties>) -> TransportMetadata {
    let mut meta = metadata_v311(topic);
    let binary = is_binary(properties);
    for (name, value) in properties.map_or(&[][..], |p| &p.user_properties[..]) {
        if binary && is_attribute_name(name) {
            continue;
        }
        meta.push_header(name, value);
    }
    meta
}

/// Transport metadata of an MQTT 3.1.1 message: `mqtt.topic`.
pub fn metadata_v311(topic: &str) -> TransportMetadata {
    let mut meta = TransportMetadata::new();
    meta.push_property("mqtt.topic", topic);
    meta
}

/// Encodes an event for MQTT 5: the payload and the PUBLISH properties.
pub fn encode_v5(event: &CloudEvent, mode: Mode) -> (Bytes, PublishProperties) {
    match mode {
        Mode::Structured => {
            let properties = PublishProperties {
                content_type: Some(STRUCTURED_CONTENT_TYPE.to_owned()),
                ..PublishProperties::default()
            };
            (encode_v311(event), properties)
        }
        Mode::Binary => {
            let mut user_properties = Vec::with_capacity(7 + event.extensions().len());
            let mut put =
                |name: &str, value: String| user_properties.push((name.to_owned(), value));
            put("specversion", event.specversion().to_owned());
            put("id", event.id().to_owned());
            put("source", event.source().to_owned());
            put("type", event.ty().to_owned());
            if let Some(v) = event.dataschema() {
                put("dataschema", v.to_owned());
            }
            if let Some(v) = event.subject() {
                put("subject", v.to_owned());
            }
            if let Some(v) = event.time() {
                put("time", v.as_str().to_owned());
            }
            for (name, value) in event.extensions() {
                put(name, value.to_canonical_string());
            }
            let payload = match event.data() {
                Some(Data::Binary(b)) => b.clone(),
                Some(data) => Bytes::copy_from_slice(data.as_bytes()),
                None => Bytes::new(),
            };
            let properties = PublishProperties {
                content_type: event.effective_content_type().map(str::to_owned),
                user_properties,
                ..PublishProperties::default()
            };
            (payload, properties)
        }
    }
}

/// Encodes an event for MQTT 3.1.1: the JSON event format.
pub fn encode_v311(event: &CloudEvent) -> Bytes {
    Bytes::from(json::encode(event))
}

#[cfg(test)]
mod tests;
