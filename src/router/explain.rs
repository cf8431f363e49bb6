//! "Why did (or didn't) this event match that route?": `POST /-/routes/explain` and
//! `ferry check --explain`.
//!
//! The request is an event in the JSON format, or `{"event": …, "source": "web",
//! "metadata": {"header.x-tenant": "acme", "peer.ip": "10.1.2.3"}}` to give the source and the
//! transport metadata an event would arrive with.

use std::collections::BTreeMap;

use ferry_core::TransportMetadata;

use super::{DataCache, RouteTable, Subject};

/// Protocol properties a request may set (metadata names other than `header.*`).
const PROPERTIES: [&str; 10] = [
    "peer.ip",
    "principal",
    "mqtt.topic",
    "mqtt.client_id",
    "mqtt.username",
    "mqtt.qos",
    "mqtt.retain",
    "amqp.exchange",
    "amqp.routing_key",
    "nats.subject",
];

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Wrapped {
    event: Box<serde_json::value::RawValue>,
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

/// Explains every route of `source` (or of every source, when neither the request nor the
/// caller names one) for the event in `body`. The error says what is wrong with the request.
pub fn explain(
    table: &RouteTable,
    body: &[u8],
    source: Option<&str>,
    only_matching: bool,
) -> Result<serde_json::Value, String> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    let wrapped = value.get("event").is_some() && value.get("specversion").is_none();
    let (event_text, request_source, metadata) = if wrapped {
        let w: Wrapped = serde_json::from_value(value)
            .map_err(|e| format!("invalid request: {e} (fields: event, source, metadata)"))?;
        (w.event.get().as_bytes().to_vec(), w.source, w.metadata)
    } else {
        (body.to_vec(), None, BTreeMap::new())
    };
    let event = ferry_core::json::decode(&event_text).map_err(|e| format!("invalid event: {e}"))?;
    let mut meta = TransportMetadata::new();
    for (name, value) in &metadata {
        if let Some(header) = name.strip_prefix("header.") {
            meta.push_header(header, value);
        } else if let Some(p) = PROPERTIES.iter().find(|p| **p == name.as_str()) {
            meta.push_property(p, value.as_str());
        } else {
            return Err(format!(
                "unknown metadata `{name}` (header.<name>, {})",
                PROPERTIES.join(", ")
            ));
        }
    }
    let mut sources: Vec<&str> = match source.or(request_source.as_deref()) {
        Some(s) => vec![s],
        None => table.sources().collect(),
    };
    sources.sort_unstable();
    let data = DataCache::default();
    let subject = Subject::new(&event, &meta, &data);
    let out: Vec<serde_json::Value> = sources
        .iter()
        .map(|s| {
            serde_json::json!({
                "source": s,
                "routes": table.explain(s, subject, only_matching),
            })
        })
        .collect();
    Ok(serde_json::json!({ "sources": out }))
}
