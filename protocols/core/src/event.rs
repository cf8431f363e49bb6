//! The CloudEvents v1.0 event: context attributes, typed extensions and data.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use bytes::Bytes;
use serde_json::value::RawValue;

use crate::error::{EventError, EventErrorKind};
use crate::validate;

/// The only `specversion` Ferry emits. Events received as `0.3` are upgraded on decode.
pub const SPECVERSION: &str = "1.0";

/// The core context attribute names, in the order Ferry writes them.
pub const CORE_ATTRIBUTES: [&str; 8] = [
    "specversion",
    "id",
    "source",
    "type",
    "datacontenttype",
    "dataschema",
    "subject",
    "time",
];

/// A validated CloudEvent (spec v1.0).
///
/// Construct it with [`EventBuilder`] (which validates) or with [`CloudEvent::new`] for the
/// required attributes only; setters validate as well, so a `CloudEvent` value is always valid.
#[derive(Clone, PartialEq)]
pub struct CloudEvent {
    id: String,
    source: String,
    ty: String,
    datacontenttype: Option<String>,
    dataschema: Option<String>,
    subject: Option<String>,
    time: Option<Timestamp>,
    extensions: BTreeMap<String, ExtensionValue>,
    data: Option<Data>,
}

/// The payload of an event, kept in the form it arrived in so it round-trips exactly.
#[derive(Clone)]
pub enum Data {
    /// JSON text (from a JSON-format `data` member with a JSON media type). Kept verbatim:
    /// whitespace and member order are not touched.
    Json(Box<RawValue>),
    /// Text (from a JSON-format `data` string member with a non-JSON media type).
    Text(String),
    /// Bytes (a binary-mode body, or a JSON-format `data_base64` member).
    Binary(Bytes),
}

/// A typed extension attribute value (CloudEvents type system).
#[derive(Clone, Debug, PartialEq)]
pub enum ExtensionValue {
    String(String),
    Integer(i32),
    Boolean(bool),
    Uri(String),
    UriRef(String),
    Timestamp(Timestamp),
    Binary(Bytes),
}

/// An RFC 3339 timestamp, kept as the text it arrived as (so `+02:00` stays `+02:00`).
#[derive(Clone, PartialEq, Eq)]
pub struct Timestamp {
    text: String,
}

/// A borrowed view of one attribute value, for filters and bindings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum AttributeRef<'a> {
    /// String, URI, URI-reference and Timestamp values.
    Str(&'a str),
    Integer(i32),
    Boolean(bool),
    Binary(&'a [u8]),
}

impl CloudEvent {
    /// An event with the four required attributes, validated.
    pub fn new(
        id: impl Into<String>,
        source: impl Into<String>,
        ty: impl Into<String>,
    ) -> Result<Self, EventError> {
        EventBuilder::new()
            .specversion(SPECVERSION)
            .id(id)
            .source(source)
            .ty(ty)
            .build()
    }

    pub fn id(&self) -> &str {
        &self.id
    }
    pub fn source(&self) -> &str {
        &self.source
    }
    pub fn specversion(&self) -> &str {
        SPECVERSION
    }
    pub fn ty(&self) -> &str {
        &self.ty
    }
    pub fn datacontenttype(&self) -> Option<&str> {
        self.datacontenttype.as_deref()
    }
    pub fn dataschema(&self) -> Option<&str> {
        self.dataschema.as_deref()
    }
    pub fn subject(&self) -> Option<&str> {
        self.subject.as_deref()
    }
    pub fn time(&self) -> Option<&Timestamp> {
        self.time.as_ref()
    }
    pub fn extensions(&self) -> &BTreeMap<String, ExtensionValue> {
        &self.extensions
    }
    pub fn extension(&self, name: &str) -> Option<&ExtensionValue> {
        self.extensions.get(name)
    }
    pub fn data(&self) -> Option<&Data> {
        self.data.as_ref()
    }

    /// Sets or replaces an extension after checking its name and value.
    pub fn set_extension(&mut self, name: &str, value: ExtensionValue) -> Result<(), EventError> {
        validate::extension_name(name)?;
        validate::extension_value(name, &value)?;
        self.extensions.insert(name.to_owned(), value);
        Ok(())
    }

    /// Removes an extension, returning it.
    pub fn remove_extension(&mut self, name: &str) -> Option<ExtensionValue> {
        self.extensions.remove(name)
    }

    /// Replaces the data and its content type.
    pub fn set_data(
        &mut self,
        datacontenttype: Option<String>,
        data: Option<Data>,
    ) -> Result<(), EventError> {
        if let Some(ct) = &datacontenttype {
            validate::media_type("datacontenttype", ct)?;
        }
        self.datacontenttype = datacontenttype;
        self.data = data;
        Ok(())
    }

    /// Looks up any attribute (core or extension) by name.
    pub fn attribute(&self, name: &str) -> Option<AttributeRef<'_>> {
        match name {
            "id" => Some(AttributeRef::Str(&self.id)),
            "source" => Some(AttributeRef::Str(&self.source)),
            "specversion" => Some(AttributeRef::Str(SPECVERSION)),
            "type" => Some(AttributeRef::Str(&self.ty)),
            "datacontenttype" => self.datacontenttype.as_deref().map(AttributeRef::Str),
            "dataschema" => self.dataschema.as_deref().map(AttributeRef::Str),
            "subject" => self.subject.as_deref().map(AttributeRef::Str),
            "time" => self.time.as_ref().map(|t| AttributeRef::Str(t.as_str())),
            _ => self.extensions.get(name).map(ExtensionValue::as_ref),
        }
    }

    /// The effective media type of the data: `datacontenttype`, or `application/json` when the
    /// data is JSON and no type was given (JSON format §3.1.1).
    pub fn effective_content_type(&self) -> Option<&str> {
        match (&self.datacontenttype, &self.data) {
            (Some(ct), _) => Some(ct),
            (None, Some(Data::Json(_))) => Some("application/json"),
            _ => None,
        }
    }
}

impl fmt::Debug for CloudEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CloudEvent")
            .field("id", &self.id)
            .field("source", &self.source)
            .field("type", &self.ty)
            .field("datacontenttype", &self.datacontenttype)
            .field("dataschema", &self.dataschema)
            .field("subject", &self.subject)
            .field("time", &self.time)
            .field("extensions", &self.extensions)
            .field("data", &self.data)
            .finish()
    }
}

impl Data {
    /// The bytes a binary-mode message carries for this data: JSON text as written, text as
    /// UTF-8, bytes as they are.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Data::Json(raw) => raw.get().as_bytes(),
            Data::Text(text) => text.as_bytes(),
            Data::Binary(bytes) => bytes,
        }
    }

    /// Parses `text` as JSON data, keeping the text verbatim.
    pub fn json(text: &str) -> Result<Data, serde_json::Error> {
        RawValue::from_string(text.to_owned()).map(Data::Json)
    }
}

/// JSON data compares by its text; use [`Data::as_bytes`] to compare payloads across forms.
impl PartialEq for Data {
    fn eq(&self, other: &Data) -> bool {
        match (self, other) {
            (Data::Json(a), Data::Json(b)) => a.get() == b.get(),
            (Data::Text(a), Data::Text(b)) => a == b,
            (Data::Binary(a), Data::Binary(b)) => a == b,
            _ => false,
        }
    }
}

impl fmt::Debug for Data {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Data::Json(raw) => write!(f, "Json({})", raw.get()),
            Data::Text(text) => write!(f, "Text({text:?})"),
            Data::Binary(bytes) => write!(f, "Binary({} bytes)", bytes.len()),
        }
    }
}

impl ExtensionValue {
    /// A borrowed view of the value.
    pub fn as_ref(&self) -> AttributeRef<'_> {
        match self {
            ExtensionValue::String(s) | ExtensionValue::Uri(s) | ExtensionValue::UriRef(s) => {
                AttributeRef::Str(s)
            }
            ExtensionValue::Timestamp(t) => AttributeRef::Str(t.as_str()),
            ExtensionValue::Integer(i) => AttributeRef::Integer(*i),
            ExtensionValue::Boolean(b) => AttributeRef::Boolean(*b),
            ExtensionValue::Binary(b) => AttributeRef::Binary(b),
        }
    }

    /// The canonical string form (CloudEvents type system): what headers carry.
    pub fn to_canonical_string(&self) -> String {
        self.as_ref().to_canonical_string()
    }
}

impl AttributeRef<'_> {
    /// The canonical string form of the value.
    pub fn to_canonical_string(&self) -> String {
        match self {
            AttributeRef::Str(s) => (*s).to_owned(),
            AttributeRef::Integer(i) => i.to_string(),
            AttributeRef::Boolean(b) => b.to_string(),
            AttributeRef::Binary(b) => base64::engine::general_purpose::STANDARD.encode(b),
        }
    }
}

impl Timestamp {
    /// Parses an RFC 3339 timestamp, keeping the text.
    pub fn parse(text: &str) -> Result<Timestamp, EventError> {
        Timestamp::parse_owned(text.to_owned())
    }

    pub(crate) fn parse_owned(text: String) -> Result<Timestamp, EventError> {
        // The `time` crate also takes a space between date and time (RFC 3339 mentions it as an
        // application's choice); the grammar (§5.6), and most receivers' parsers, say `T`.
        if !matches!(text.as_bytes().get(10), Some(b'T' | b't')) {
            return Err(EventError::new(
                "time",
                EventErrorKind::Invalid,
                "not an RFC 3339 timestamp (date and time are separated by `T`)",
            ));
        }
        time::OffsetDateTime::parse(&text, &time::format_description::well_known::Rfc3339)
            .map_err(|e| {
                EventError::new(
                    "time",
                    EventErrorKind::Invalid,
                    format!("not an RFC 3339 timestamp ({e})"),
                )
            })?;
        Ok(Timestamp { text })
    }

    /// The current time, in UTC with nanosecond precision.
    pub fn now() -> Timestamp {
        Timestamp::from(time::OffsetDateTime::now_utc())
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The instant, parsed.
    pub fn to_offset_datetime(&self) -> time::OffsetDateTime {
        // Checked at construction.
        time::OffsetDateTime::parse(&self.text, &time::format_description::well_known::Rfc3339)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
    }
}

impl From<time::OffsetDateTime> for Timestamp {
    fn from(t: time::OffsetDateTime) -> Self {
        let text = t
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned());
        Timestamp { text }
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Collects attributes from any format or binding and validates them into a [`CloudEvent`].
///
/// Every binding decodes through this type, so validation rules live in one place. Attribute
/// values given as canonical strings (headers) go through [`EventBuilder::attribute`], which
/// routes core attribute names to their typed slots.
#[derive(Default, Debug)]
pub struct EventBuilder {
    specversion: Option<String>,
    id: Option<String>,
    source: Option<String>,
    ty: Option<String>,
    datacontenttype: Option<String>,
    dataschema: Option<String>,
    subject: Option<String>,
    time: Option<String>,
    extensions: BTreeMap<String, ExtensionValue>,
    data: Option<Data>,
    /// `datacontentencoding` (0.3 only).
    legacy_encoding: Option<String>,
    duplicate: Option<String>,
}

impl EventBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn specversion(mut self, v: impl Into<String>) -> Self {
        self.specversion = Some(v.into());
        self
    }
    pub fn id(mut self, v: impl Into<String>) -> Self {
        self.id = Some(v.into());
        self
    }
    pub fn source(mut self, v: impl Into<String>) -> Self {
        self.source = Some(v.into());
        self
    }
    pub fn ty(mut self, v: impl Into<String>) -> Self {
        self.ty = Some(v.into());
        self
    }
    pub fn subject(mut self, v: impl Into<String>) -> Self {
        self.subject = Some(v.into());
        self
    }
    pub fn time(mut self, v: impl Into<String>) -> Self {
        self.time = Some(v.into());
        self
    }
    pub fn datacontenttype(mut self, v: impl Into<String>) -> Self {
        self.datacontenttype = Some(v.into());
        self
    }
    pub fn dataschema(mut self, v: impl Into<String>) -> Self {
        self.dataschema = Some(v.into());
        self
    }
    pub fn data(mut self, data: Data) -> Self {
        self.data = Some(data);
        self
    }
    pub fn extension(mut self, name: impl Into<String>, value: ExtensionValue) -> Self {
        self.set_extension(name.into(), value);
        self
    }

    /// Sets the data in place.
    pub fn set_data(&mut self, data: Option<Data>) {
        self.data = data;
    }

    /// Whether an attribute of this name was already set.
    pub fn has(&self, name: &str) -> bool {
        match name {
            "specversion" => self.specversion.is_some(),
            "id" => self.id.is_some(),
            "source" => self.source.is_some(),
            "type" => self.ty.is_some(),
            "datacontenttype" => self.datacontenttype.is_some(),
            "dataschema" | "schemaurl" => self.dataschema.is_some(),
            "subject" => self.subject.is_some(),
            "time" => self.time.is_some(),
            "datacontentencoding" => self.legacy_encoding.is_some(),
            _ => self.extensions.contains_key(name),
        }
    }

    /// Sets an attribute given by name as a canonical string (header value, template output).
    /// Core attribute names fill their slots; others become String extensions.
    /// `name` must already be lowercase. A repeated attribute is reported by [`Self::build`].
    pub fn attribute(&mut self, name: &str, value: String) {
        // One match routes the value; the slot's previous content tells whether it repeats.
        let slot = match name {
            "specversion" => &mut self.specversion,
            "id" => &mut self.id,
            "source" => &mut self.source,
            "type" => &mut self.ty,
            "datacontenttype" => &mut self.datacontenttype,
            "dataschema" | "schemaurl" => &mut self.dataschema,
            "subject" => &mut self.subject,
            "time" => &mut self.time,
            "datacontentencoding" => &mut self.legacy_encoding,
            _ => {
                let previous = self
                    .extensions
                    .insert(name.to_owned(), ExtensionValue::String(value));
                if previous.is_some() {
                    self.duplicate.get_or_insert_with(|| name.to_owned());
                }
                return;
            }
        };
        if slot.replace(value).is_some() {
            self.duplicate.get_or_insert_with(|| name.to_owned());
        }
    }

    /// Sets a typed extension (JSON numbers and booleans, AMQP native types).
    pub fn set_extension(&mut self, name: String, value: ExtensionValue) {
        if self.has(&name) {
            self.duplicate.get_or_insert_with(|| name.clone());
        }
        self.extensions.insert(name, value);
    }

    /// The `datacontenttype` collected so far.
    pub fn content_type(&self) -> Option<&str> {
        self.datacontenttype.as_deref()
    }

    /// The `specversion` collected so far.
    pub fn specversion_str(&self) -> Option<&str> {
        self.specversion.as_deref()
    }

    /// Validates everything and produces the event.
    ///
    /// Order of checks: duplicates, `specversion`, required attributes, then each optional
    /// attribute and extension, so the first error names the most fundamental problem.
    pub fn build(self) -> Result<CloudEvent, EventError> {
        if let Some(name) = self.duplicate {
            return Err(EventError::new(
                &name,
                EventErrorKind::Duplicate,
                "attribute appears more than once",
            ));
        }
        let specversion = self
            .specversion
            .ok_or_else(|| EventError::missing("specversion"))?;
        let legacy = match specversion.as_str() {
            "1.0" => false,
            "0.3" => true,
            "" => return Err(EventError::empty("specversion")),
            other => {
                return Err(EventError::new(
                    "specversion",
                    EventErrorKind::Unsupported,
                    format!(
                    "unsupported specversion {other:?}; expected \"1.0\" (or \"0.3\", upgraded)"
                ),
                ))
            }
        };
        let id = required("id", self.id)?;
        let source = required("source", self.source)?;
        let ty = required("type", self.ty)?;
        validate::string("id", &id)?;
        validate::uri_reference("source", &source)?;
        validate::string("type", &ty)?;
        if let Some(ct) = &self.datacontenttype {
            validate::media_type("datacontenttype", ct)?;
        }
        if let Some(schema) = &self.dataschema {
            // 0.3's `schemaurl` may be relative; the 1.0 event it is upgraded to cannot hold
            // that (found by `scripts/fuzz`: Ferry wrote a `ce-dataschema` it then refused).
            validate::uri("dataschema", schema).map_err(|mut e| {
                if legacy {
                    e.message.push_str(
                        "; a 0.3 schemaurl must be an absolute URI, as 0.3 events are upgraded to 1.0",
                    );
                }
                e
            })?;
        }
        if let Some(subject) = &self.subject {
            validate::non_empty("subject", subject)?;
            validate::string("subject", subject)?;
        }
        let time = match self.time {
            Some(t) => Some(Timestamp::parse_owned(t)?),
            None => None,
        };
        for (name, value) in &self.extensions {
            validate::extension_name(name)?;
            validate::extension_value(name, value)?;
        }
        let mut extensions = self.extensions;
        let mut data = self.data;
        match (legacy, self.legacy_encoding) {
            (true, Some(encoding)) => data = decode_legacy_base64(&encoding, data)?,
            // In 1.0 this name is an ordinary extension.
            (false, Some(encoding)) => {
                extensions.insert(
                    "datacontentencoding".into(),
                    ExtensionValue::String(encoding),
                );
            }
            (_, None) => {}
        }
        Ok(CloudEvent {
            id,
            source,
            ty,
            datacontenttype: self.datacontenttype,
            dataschema: self.dataschema,
            subject: self.subject,
            time,
            extensions,
            data,
        })
    }
}

/// 0.3 `datacontentencoding: base64`: the data is a Base64 string; 1.0 carries the bytes.
fn decode_legacy_base64(encoding: &str, data: Option<Data>) -> Result<Option<Data>, EventError> {
    if !encoding.eq_ignore_ascii_case("base64") {
        return Err(EventError::new(
            "datacontentencoding",
            EventErrorKind::Unsupported,
            format!("unsupported datacontentencoding {encoding:?}; only \"base64\""),
        ));
    }
    let text = match data {
        None => return Ok(None),
        Some(Data::Binary(bytes)) => return Ok(Some(Data::Binary(bytes))),
        Some(Data::Text(text)) => text,
        Some(Data::Json(raw)) => serde_json::from_str::<String>(raw.get()).map_err(|_| {
            EventError::new(
                "data",
                EventErrorKind::Invalid,
                "datacontentencoding base64 needs a string",
            )
        })?,
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| {
            EventError::new(
                "data",
                EventErrorKind::Invalid,
                format!("invalid base64 ({e})"),
            )
        })?;
    Ok(Some(Data::Binary(bytes.into())))
}

fn required(name: &str, value: Option<String>) -> Result<String, EventError> {
    match value {
        None => Err(EventError::missing(name)),
        Some(v) if v.is_empty() => Err(EventError::empty(name)),
        Some(v) => Ok(v),
    }
}
