//! The JSON event format (`application/cloudevents+json`) and its batch form
//! (`application/cloudevents-batch+json`).
//!
//! Decoding keeps `data` verbatim ([`Data::Json`] holds the exact JSON text), so a JSON payload
//! survives any number of hops byte for byte. Encoding decides between `data` and
//! `data_base64` from `datacontenttype` (JSON format §3.1.1):
//! - JSON data, or bytes that are valid JSON under a JSON media type → `data` as JSON;
//! - text, or UTF-8 bytes under a textual media type (`text/*`, XML) that is not also a JSON
//!   one (`text/x+json` is JSON) → `data` as a string;
//! - anything else (including bytes with no `datacontenttype`) → `data_base64`.

use std::borrow::Cow;
use std::fmt;

use base64::Engine as _;
use bytes::Bytes;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::error::{EventError, EventErrorKind};
use crate::event::{CloudEvent, Data, EventBuilder, ExtensionValue};
use crate::validate::{is_json_media_type, is_text_media_type};

/// Media type of a single event in the JSON format.
pub const MEDIA_TYPE: &str = "application/cloudevents+json";
/// Media type of a batch in the JSON format.
pub const BATCH_MEDIA_TYPE: &str = "application/cloudevents-batch+json";

/// What a message's content type says about its CloudEvents format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Not a CloudEvents media type: binary mode, or not a CloudEvent at all.
    None,
    /// `application/cloudevents+json` (or the bare `application/cloudevents`): one event.
    Structured,
    /// `application/cloudevents-batch+json`: a batch.
    Batch,
    /// Another CloudEvents format, such as `application/cloudevents+avro`.
    Unsupported,
}

/// Reads the CloudEvents format from a content type: case-insensitive, parameters ignored,
/// compared in place (no copy per message). Every binding decides its mode with it.
pub fn format(content_type: &str) -> Format {
    let essence = crate::validate::media_type_essence(content_type);
    let starts_with = |prefix: &str| {
        essence
            .as_bytes()
            .get(..prefix.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(prefix.as_bytes()))
    };
    if starts_with("application/cloudevents-batch") {
        if essence.eq_ignore_ascii_case(BATCH_MEDIA_TYPE) {
            Format::Batch
        } else {
            Format::Unsupported
        }
    } else if starts_with("application/cloudevents") {
        if essence.eq_ignore_ascii_case(MEDIA_TYPE)
            || essence.eq_ignore_ascii_case("application/cloudevents")
        {
            Format::Structured
        } else {
            Format::Unsupported
        }
    } else {
        Format::None
    }
}

/// Decodes one JSON-format event.
pub fn decode(bytes: &[u8]) -> Result<CloudEvent, EventError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed = EventSeed
        .deserialize(&mut de)
        .and_then(|p| de.end().map(|()| p))
        .map_err(syntax_error)?;
    parsed.0
}

/// An error in one event of a batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct BatchError {
    /// Zero-based position in the batch, or `None` when the batch itself is malformed.
    pub index: Option<usize>,
    pub error: EventError,
}

impl fmt::Display for BatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.index {
            // Counted from 1 for people; `index` (the problem's member) counts from 0.
            Some(i) => write!(
                f,
                "event {} of the batch (index {i}): {}",
                i + 1,
                self.error
            ),
            None => write!(f, "batch: {}", self.error),
        }
    }
}

/// Decodes a JSON batch. The batch is validated as a whole: the first invalid event fails it.
pub fn decode_batch(bytes: &[u8]) -> Result<Vec<CloudEvent>, BatchError> {
    let parsed: Vec<ParsedEvent> = serde_json::from_slice(bytes).map_err(|e| BatchError {
        index: None,
        error: syntax_error(e),
    })?;
    let mut events = Vec::with_capacity(parsed.len());
    for (index, p) in parsed.into_iter().enumerate() {
        events.push(p.0.map_err(|error| BatchError {
            index: Some(index),
            error,
        })?);
    }
    Ok(events)
}

fn syntax_error(e: serde_json::Error) -> EventError {
    EventError::malformed(format!("malformed JSON: {e}"))
}

/// Encodes one event in the JSON format.
pub fn encode(event: &CloudEvent) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + event.data().map_or(0, |d| d.as_bytes().len()));
    encode_into(event, &mut out);
    out
}

/// Encodes a batch in the JSON format.
pub fn encode_batch<'a>(events: impl IntoIterator<Item = &'a CloudEvent>) -> Vec<u8> {
    let mut out = Vec::with_capacity(1024);
    out.push(b'[');
    for (i, event) in events.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        encode_into(event, &mut out);
    }
    out.push(b']');
    out
}

/// Appends the JSON encoding of `event` to `out`.
pub fn encode_into(event: &CloudEvent, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"specversion\":\"1.0\",\"id\":");
    write_str(out, event.id());
    out.extend_from_slice(b",\"source\":");
    write_str(out, event.source());
    out.extend_from_slice(b",\"type\":");
    write_str(out, event.ty());
    for (name, value) in [
        ("datacontenttype", event.datacontenttype()),
        ("dataschema", event.dataschema()),
        ("subject", event.subject()),
        ("time", event.time().map(|t| t.as_str())),
    ] {
        if let Some(value) = value {
            member(out, name);
            write_str(out, value);
        }
    }
    for (name, value) in event.extensions() {
        member(out, name);
        match value {
            ExtensionValue::String(s) | ExtensionValue::Uri(s) | ExtensionValue::UriRef(s) => {
                write_str(out, s)
            }
            ExtensionValue::Timestamp(t) => write_str(out, t.as_str()),
            ExtensionValue::Integer(i) => out.extend_from_slice(i.to_string().as_bytes()),
            ExtensionValue::Boolean(b) => {
                out.extend_from_slice(if *b { b"true" } else { b"false" })
            }
            ExtensionValue::Binary(b) => write_base64(out, b),
        }
    }
    if let Some(data) = event.data() {
        encode_data(event.datacontenttype(), data, out);
    }
    out.push(b'}');
}

fn encode_data(content_type: Option<&str>, data: &Data, out: &mut Vec<u8>) {
    // A media type can be both JSON and textual (`text/x+json`): JSON wins, since that is how
    // a reader takes a `data` member under it.
    let json = content_type.is_some_and(is_json_media_type);
    let bytes = match data {
        Data::Json(raw) => {
            member(out, "data");
            out.extend_from_slice(raw.get().as_bytes());
            return;
        }
        Data::Text(text) if !json => {
            member(out, "data");
            write_str(out, text);
            return;
        }
        Data::Text(text) => text.as_bytes(),
        Data::Binary(bytes) => bytes,
    };
    if json && serde_json::from_slice::<&RawValue>(bytes).is_ok() {
        member(out, "data");
        out.extend_from_slice(bytes.trim_ascii());
        return;
    }
    if !json && content_type.is_some_and(is_text_media_type) {
        if let Ok(text) = std::str::from_utf8(bytes) {
            member(out, "data");
            write_str(out, text);
            return;
        }
    }
    member(out, "data_base64");
    write_base64(out, bytes);
}

fn member(out: &mut Vec<u8>, name: &str) {
    out.push(b',');
    write_str(out, name);
    out.push(b':');
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    // Writing to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

fn write_base64(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(b'"');
    let start = out.len();
    let len = base64::encoded_len(bytes.len(), true).unwrap_or(0);
    out.resize(start + len, 0);
    let written = base64::engine::general_purpose::STANDARD
        .encode_slice(bytes, &mut out[start..])
        .unwrap_or(0);
    out.truncate(start + written);
    out.push(b'"');
}

/// One event of a batch: JSON syntax errors fail the whole parse, attribute errors are kept
/// per event so the batch error can name the index.
struct ParsedEvent(Result<CloudEvent, EventError>);

impl<'de> Deserialize<'de> for ParsedEvent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        EventSeed.deserialize(d)
    }
}

struct EventSeed;

impl<'de> DeserializeSeed<'de> for EventSeed {
    type Value = ParsedEvent;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<ParsedEvent, D::Error> {
        d.deserialize_map(EventVisitor)
    }
}

struct EventVisitor;

impl<'de> Visitor<'de> for EventVisitor {
    type Value = ParsedEvent;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a CloudEvent JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ParsedEvent, A::Error> {
        let mut builder = EventBuilder::new();
        let mut first_error: Option<EventError> = None;
        let mut data: Option<Box<RawValue>> = None;
        let mut data_base64: Option<String> = None;
        let mut seen_data = false;
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            match key.as_ref() {
                "data" => {
                    if seen_data {
                        first_error.get_or_insert_with(|| {
                            EventError::new(
                                "data",
                                EventErrorKind::Duplicate,
                                "`data` given more than once, or together with `data_base64`",
                            )
                        });
                    }
                    seen_data = true;
                    data = Some(map.next_value()?);
                }
                "data_base64" => {
                    if seen_data {
                        first_error.get_or_insert_with(|| {
                            EventError::new(
                                "data_base64",
                                EventErrorKind::Duplicate,
                                "`data_base64` given more than once, or together with `data`",
                            )
                        });
                    }
                    seen_data = true;
                    match map.next_value::<Scalar<'_>>()? {
                        Scalar::Null => seen_data = false,
                        Scalar::Str(s) => data_base64 = Some(s.into_owned()),
                        other => {
                            first_error.get_or_insert_with(|| {
                                EventError::new(
                                    "data_base64",
                                    EventErrorKind::Invalid,
                                    format!("must be a Base64 string, found {}", other.kind()),
                                )
                            });
                        }
                    }
                }
                name => {
                    let value = map.next_value::<Scalar<'_>>()?;
                    if first_error.is_none() {
                        if let Err(e) = set_attribute(&mut builder, name, value) {
                            first_error = Some(e);
                        }
                    }
                }
            }
        }
        if let Some(e) = first_error {
            return Ok(ParsedEvent(Err(e)));
        }
        let result = decode_data(&mut builder, data, data_base64).and_then(|()| builder.build());
        Ok(ParsedEvent(result))
    }
}

fn decode_data(
    builder: &mut EventBuilder,
    data: Option<Box<RawValue>>,
    data_base64: Option<String>,
) -> Result<(), EventError> {
    if let Some(b64) = data_base64 {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64.as_bytes())
            .map_err(|e| {
                EventError::new(
                    "data_base64",
                    EventErrorKind::Malformed,
                    format!("invalid Base64 ({e})"),
                )
            })?;
        builder.set_data(Some(Data::Binary(Bytes::from(bytes))));
        return Ok(());
    }
    let Some(raw) = data else { return Ok(()) };
    // An invalid `datacontenttype` is the error to report (by `build`), not the data under it.
    let json = builder.content_type().is_none_or(|ct| {
        is_json_media_type(ct) || crate::validate::media_type("datacontenttype", ct).is_err()
    });
    if json {
        builder.set_data(Some(Data::Json(raw)));
        return Ok(());
    }
    // A non-JSON media type: `data` carries a string (JSON format §3.1.2 allows rejecting others).
    match serde_json::from_str::<String>(raw.get()) {
        Ok(text) => builder.set_data(Some(Data::Text(text))),
        Err(_) if raw.get() == "null" => builder.set_data(None),
        Err(_) => {
            return Err(EventError::new(
                "data",
                EventErrorKind::Invalid,
                "must be a string when `datacontenttype` is not a JSON media type",
            ))
        }
    }
    Ok(())
}

fn set_attribute(
    builder: &mut EventBuilder,
    name: &str,
    value: Scalar<'_>,
) -> Result<(), EventError> {
    let is_core = matches!(
        name,
        "specversion"
            | "id"
            | "source"
            | "type"
            | "datacontenttype"
            | "dataschema"
            | "subject"
            | "time"
            | "schemaurl"
            | "datacontentencoding"
    );
    match value {
        // JSON null means "not set".
        Scalar::Null => Ok(()),
        Scalar::Str(s) => {
            if !is_core {
                crate::validate::extension_name(name)?;
            }
            builder.attribute(name, s.into_owned());
            Ok(())
        }
        other if is_core => Err(EventError::new(
            name,
            EventErrorKind::Invalid,
            format!("must be a string, found {}", other.kind()),
        )),
        Scalar::Bool(b) => {
            crate::validate::extension_name(name)?;
            builder.set_extension(name.to_owned(), ExtensionValue::Boolean(b));
            Ok(())
        }
        Scalar::Int(i) => {
            crate::validate::extension_name(name)?;
            let i = i32::try_from(i).map_err(|_| {
                EventError::new(
                    name,
                    EventErrorKind::Invalid,
                    format!("Integer {i} is outside the 32-bit signed range"),
                )
            })?;
            builder.set_extension(name.to_owned(), ExtensionValue::Integer(i));
            Ok(())
        }
        Scalar::Float => Err(EventError::new(
            name,
            EventErrorKind::Invalid,
            "not a 32-bit Integer (fraction, exponent or out of range)",
        )),
        Scalar::Compound(kind) => Err(EventError::new(
            name,
            EventErrorKind::Invalid,
            format!("attribute values must be strings, numbers or booleans, found {kind}"),
        )),
    }
}

/// A member name, borrowed from the input when it has no escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match d.deserialize_str(ScalarVisitor)? {
            Scalar::Str(s) => Ok(Key(s)),
            _ => Err(de::Error::custom("expected a member name")),
        }
    }
}

/// A JSON attribute value: scalars only (extensions are never nested).
enum Scalar<'a> {
    Null,
    Bool(bool),
    Int(i128),
    Float,
    Str(Cow<'a, str>),
    Compound(&'static str),
}

impl Scalar<'_> {
    fn kind(&self) -> &'static str {
        match self {
            Scalar::Null => "null",
            Scalar::Bool(_) => "a boolean",
            Scalar::Int(_) | Scalar::Float => "a number",
            Scalar::Str(_) => "a string",
            Scalar::Compound(k) => k,
        }
    }
}

impl<'de> Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Null)
    }
    fn visit_none<E>(self) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Int(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Int(v.into()))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Float)
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Str(Cow::Owned(v)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Scalar<'de>, A::Error> {
        while seq.next_element::<de::IgnoredAny>()?.is_some() {}
        Ok(Scalar::Compound("an array"))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scalar<'de>, A::Error> {
        while map
            .next_entry::<de::IgnoredAny, de::IgnoredAny>()?
            .is_some()
        {}
        Ok(Scalar::Compound("an object"))
    }
}

#[cfg(test)]
mod tests;
