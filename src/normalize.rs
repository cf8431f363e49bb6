//! Normalization: building a CloudEvent from a message that is not one (raw device JSON, plain
//! text, a GitHub webhook) with a per-source template.
//!
//! ```toml
//! normalize = { type = "com.example.device.telemetry", source = "mqtt://devices/{mqtt.topic.1}", subject = "{mqtt.topic.1}" }
//! ```
//!
//! Placeholders:
//! - any transport metadata name: `{header.x-github-event}`, `{mqtt.topic}`, `{nats.subject}`,
//!   `{amqp.routing_key}`, `{principal}`, …;
//! - `{<name>.<N>}`: the N-th segment (0-based) of a topic (`/`-separated) or a subject or
//!   routing key (`.`-separated): `{mqtt.topic.1}` of `devices/sensor-17/telemetry` is
//!   `sensor-17`;
//! - `{data/<json pointer>}`: a value from a JSON body, e.g. `{data/repository/full_name}`;
//!   `{data.<path>}` is the same written as a route's data path: `{data.repository.full_name}`,
//!   `{data.commits[0].id}`.
//!
//! `id` defaults to the broker's message id when the message has one (stable across
//! redelivery, so retries can be deduplicated), else a new UUID v7. `time` is the receipt time.
//! `datacontenttype` is the message's content type, else the template's.

use std::borrow::Cow;
use std::collections::BTreeMap;

use bytes::Bytes;
use ferry_core::{
    CloudEvent, Data, EventBuilder, EventError, EventErrorKind, Timestamp, TransportMetadata,
};
use serde::Deserialize;

use crate::template::Template;

/// The `normalize` table of a source.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NormalizeConfig {
    #[serde(rename = "type")]
    pub ty: String,
    pub source: String,
    #[serde(default)]
    pub subject: Option<String>,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub datacontenttype: Option<String>,
    #[serde(default)]
    pub dataschema: Option<String>,
    /// Extension attributes, by name.
    #[serde(default)]
    pub extensions: BTreeMap<String, String>,
}

/// A compiled normalization template.
#[derive(Debug, Clone)]
pub struct Normalizer {
    ty: Template,
    source: Template,
    subject: Option<Template>,
    id: Option<Template>,
    datacontenttype: Option<String>,
    dataschema: Option<Template>,
    extensions: Vec<(String, Template)>,
    uses_body: bool,
}

/// What a message offers the template besides its metadata.
pub struct Raw<'a> {
    pub metadata: &'a TransportMetadata,
    pub body: Bytes,
    pub content_type: Option<&'a str>,
    /// A message id from the protocol, stable across redelivery.
    pub message_id: Option<&'a str>,
}

impl Normalizer {
    /// Compiles the templates; errors name the key.
    pub fn compile(config: &NormalizeConfig) -> Result<Normalizer, (String, String)> {
        let t = |key: &str, text: &str| Template::parse(text).map_err(|e| (key.to_owned(), e));
        let mut extensions = Vec::new();
        for (name, text) in &config.extensions {
            ferry_core::validate::extension_name(name)
                .map_err(|e| (format!("extensions.{name}"), e.message))?;
            extensions.push((name.clone(), t(&format!("extensions.{name}"), text)?));
        }
        if let Some(ct) = &config.datacontenttype {
            ferry_core::validate::media_type("datacontenttype", ct)
                .map_err(|e| ("datacontenttype".to_owned(), e.message))?;
        }
        let n = Normalizer {
            ty: t("type", &config.ty)?,
            source: t("source", &config.source)?,
            subject: config
                .subject
                .as_deref()
                .map(|s| t("subject", s))
                .transpose()?,
            id: config.id.as_deref().map(|s| t("id", s)).transpose()?,
            datacontenttype: config.datacontenttype.clone(),
            dataschema: config
                .dataschema
                .as_deref()
                .map(|s| t("dataschema", s))
                .transpose()?,
            extensions,
            uses_body: false,
        };
        let uses_body = n.templates().any(|t| {
            t.placeholders()
                .any(|p| p.starts_with("data/") || p.starts_with("data."))
        });
        Ok(Normalizer { uses_body, ..n })
    }

    fn templates(&self) -> impl Iterator<Item = &Template> {
        [
            Some(&self.ty),
            Some(&self.source),
            self.subject.as_ref(),
            self.id.as_ref(),
            self.dataschema.as_ref(),
        ]
        .into_iter()
        .flatten()
        .chain(self.extensions.iter().map(|(_, t)| t))
    }

    /// Builds the event. A placeholder without a value, or an invalid result, is an error
    /// naming the attribute.
    pub fn apply(&self, raw: Raw<'_>) -> Result<CloudEvent, EventError> {
        let json: Option<serde_json::Value> = if self.uses_body {
            serde_json::from_slice(&raw.body).ok()
        } else {
            None
        };
        let lookup =
            |name: &str| -> Option<Cow<'_, str>> { lookup(raw.metadata, json.as_ref(), name) };
        let render = |attribute: &str, t: &Template| -> Result<String, EventError> {
            t.render(lookup).map_err(|missing| {
                EventError::new(
                    attribute,
                    EventErrorKind::Missing,
                    format!(
                        "normalize template placeholder {{{missing}}} has no value in this message"
                    ),
                )
            })
        };
        let id = match (&self.id, raw.message_id) {
            (Some(t), _) => render("id", t)?,
            (None, Some(id)) if !id.is_empty() => id.to_owned(),
            (None, _) => uuid::Uuid::now_v7().to_string(),
        };
        let mut b = EventBuilder::new()
            .specversion("1.0")
            .id(id)
            .ty(render("type", &self.ty)?)
            .source(render("source", &self.source)?)
            .time(Timestamp::now().as_str());
        if let Some(t) = &self.subject {
            b = b.subject(render("subject", t)?);
        }
        if let Some(t) = &self.dataschema {
            b = b.dataschema(render("dataschema", t)?);
        }
        if let Some(ct) = raw.content_type.or(self.datacontenttype.as_deref()) {
            b = b.datacontenttype(ct);
        }
        for (name, t) in &self.extensions {
            let value = render(name, t)?;
            b = b.extension(name.clone(), ferry_core::ExtensionValue::String(value));
        }
        if !raw.body.is_empty() {
            b = b.data(Data::Binary(raw.body));
        }
        b.build()
    }
}

fn lookup<'a>(
    metadata: &'a TransportMetadata,
    json: Option<&'a serde_json::Value>,
    name: &str,
) -> Option<Cow<'a, str>> {
    let dotted = name
        .starts_with("data.")
        .then(|| crate::router::json_pointer(name))
        .flatten();
    if let Some(pointer) = dotted.as_deref().or_else(|| name.strip_prefix("data")) {
        if pointer.starts_with('/') {
            return match json?.pointer(pointer)? {
                serde_json::Value::String(s) => Some(Cow::Borrowed(s)),
                serde_json::Value::Null => None,
                other => Some(Cow::Owned(other.to_string())),
            };
        }
    }
    if let Some(v) = metadata.get(name) {
        return Some(Cow::Borrowed(v));
    }
    // `{<property>.<N>}`: a segment of a topic, subject or routing key.
    let (base, index) = name.rsplit_once('.')?;
    let index: usize = index.parse().ok()?;
    let value = metadata.get(base)?;
    let separator = if base == "mqtt.topic" { '/' } else { '.' };
    value.split(separator).nth(index).map(Cow::Borrowed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::AttributeRef;

    fn config(text: &str) -> NormalizeConfig {
        #[derive(Deserialize)]
        struct W {
            normalize: NormalizeConfig,
        }
        toml::from_str::<W>(&format!("normalize = {text}"))
            .unwrap()
            .normalize
    }

    #[test]
    fn mqtt_topic_segments() {
        let n = Normalizer::compile(&config(
            r#"{ type = "com.example.device.telemetry", source = "mqtt://devices/{mqtt.topic.1}", subject = "{mqtt.topic.1}" }"#,
        ))
        .unwrap();
        let mut m = TransportMetadata::new();
        m.push_property("mqtt.topic", "devices/sensor-17/telemetry");
        let e = n
            .apply(Raw {
                metadata: &m,
                body: Bytes::from_static(br#"{"t":21}"#),
                content_type: None,
                message_id: None,
            })
            .unwrap();
        assert_eq!(e.source(), "mqtt://devices/sensor-17");
        assert_eq!(e.subject(), Some("sensor-17"));
        assert_eq!(e.ty(), "com.example.device.telemetry");
        assert!(e.time().is_some());
        assert_eq!(uuid::Uuid::parse_str(e.id()).unwrap().get_version_num(), 7);
        assert_eq!(e.data().unwrap().as_bytes(), br#"{"t":21}"#);
    }

    #[test]
    fn github_webhook() {
        let n = Normalizer::compile(&config(
            r#"{ type = "com.github.{header.x-github-event}", source = "https://github.com/{data/repository/full_name}", id = "{header.x-github-delivery}", extensions = { action = "{data/action}" } }"#,
        ))
        .unwrap();
        let mut m = TransportMetadata::new();
        m.push_header("X-GitHub-Event", "push");
        m.push_header("X-GitHub-Delivery", "72d3162e");
        let body =
            Bytes::from_static(br#"{"action":"opened","repository":{"full_name":"acme/app"}}"#);
        let e = n
            .apply(Raw {
                metadata: &m,
                body,
                content_type: Some("application/json"),
                message_id: Some("ignored"),
            })
            .unwrap();
        assert_eq!(e.ty(), "com.github.push");
        assert_eq!(e.id(), "72d3162e");
        assert_eq!(e.source(), "https://github.com/acme/app");
        assert_eq!(e.attribute("action"), Some(AttributeRef::Str("opened")));
        assert_eq!(e.datacontenttype(), Some("application/json"));
    }

    #[test]
    fn missing_placeholder_names_the_attribute() {
        let n = Normalizer::compile(&config(
            r#"{ type = "t", source = "/s", subject = "{header.x-nope}" }"#,
        ))
        .unwrap();
        let m = TransportMetadata::new();
        let e = n
            .apply(Raw {
                metadata: &m,
                body: Bytes::new(),
                content_type: None,
                message_id: Some("m-1"),
            })
            .unwrap_err();
        assert_eq!(e.attribute.as_deref(), Some("subject"));
        let n = Normalizer::compile(&config(r#"{ type = "t", source = "/s" }"#)).unwrap();
        let e = n
            .apply(Raw {
                metadata: &m,
                body: Bytes::new(),
                content_type: None,
                message_id: Some("m-1"),
            })
            .unwrap();
        assert_eq!(e.id(), "m-1");
    }

    #[test]
    fn compile_errors() {
        assert!(Normalizer::compile(&config(r#"{ type = "{", source = "/s" }"#)).is_err());
        assert!(Normalizer::compile(&config(
            r#"{ type = "t", source = "/s", extensions = { "Bad" = "x" } }"#
        ))
        .is_err());
    }
}
