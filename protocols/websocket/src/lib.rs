//! The CloudEvents WebSocket binding: pure functions for the handshake and for messages.
//!
//! The binding is structured mode only: every message on a connection is one event in the
//! format the subprotocol names. Ferry speaks `cloudevents.json` (text frames). A connection
//! that offers no CloudEvents subprotocol may still be accepted for raw messages when the
//! source normalizes them.
//!
//! Acknowledgements are events too (`type` [`ACK_TYPE`]): see [`ack`].

use ferry_core::{json, CloudEvent, Data, EventBuilder, EventError, EventErrorKind};

/// The JSON subprotocol (the only one Ferry speaks; support for it is a MUST).
pub const SUBPROTOCOL_JSON: &str = "cloudevents.json";
/// The `type` of acknowledgement events.
pub const ACK_TYPE: &str = "dev.ferry.ack";

/// The outcome of subprotocol negotiation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Negotiated {
    /// The client offered `cloudevents.json`: answer with it; messages are JSON events.
    Json,
    /// No CloudEvents subprotocol offered, and raw messages are allowed: answer with none.
    Raw,
    /// No usable subprotocol and raw messages are not allowed.
    Refused,
}

/// Chooses the subprotocol from the client's `Sec-WebSocket-Protocol` values.
/// `offered` yields every comma-separated token of every such header.
pub fn negotiate<'a>(offered: impl IntoIterator<Item = &'a str>, allow_raw: bool) -> Negotiated {
    if offered
        .into_iter()
        .any(|t| t.trim().eq_ignore_ascii_case(SUBPROTOCOL_JSON))
    {
        Negotiated::Json
    } else if allow_raw {
        Negotiated::Raw
    } else {
        Negotiated::Refused
    }
}

/// What a message on a `cloudevents.json` connection held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageError {
    /// A text message that is not a valid event; the connection stays open.
    Invalid(EventError),
    /// A binary frame on a JSON connection: a protocol violation (close with 1003).
    BinaryFrame,
}

/// Decodes a text message: exactly one JSON-format event (a batch is not allowed).
pub fn decode_text(text: &str) -> Result<CloudEvent, MessageError> {
    if text.trim_start().starts_with('[') {
        return Err(MessageError::Invalid(EventError::malformed(
            "a WebSocket message carries exactly one event; batches are not allowed",
        )));
    }
    json::decode(text.as_bytes()).map_err(MessageError::Invalid)
}

/// The `id` of a message that may not be a valid event, for its error acknowledgement: the
/// top-level `id` member when the text is a JSON object and it is a non-empty string.
pub fn event_id(text: &str) -> Option<String> {
    match serde_json::from_str::<serde_json::Value>(text).ok()? {
        serde_json::Value::Object(mut members) => match members.remove("id")? {
            serde_json::Value::String(id) if !id.is_empty() => Some(id),
            _ => None,
        },
        _ => None,
    }
}

/// Encodes an event as the text of one message.
pub fn encode(event: &CloudEvent) -> String {
    // The JSON encoder writes valid UTF-8 (strings are escaped, raw data is JSON text).
    String::from_utf8(json::encode(event)).unwrap_or_default()
}

/// The fields of an acknowledgement's data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckData<'a> {
    /// The acknowledged event's id, if it could be read.
    pub id: Option<&'a str>,
    /// 202 when every sink confirmed; otherwise the HTTP status of the equivalent problem.
    pub status: u16,
    /// On errors: RFC 9457 problem fields.
    pub title: Option<&'a str>,
    pub detail: Option<&'a str>,
    pub attribute: Option<&'a str>,
}

/// Builds an acknowledgement event: `type` `dev.ferry.ack`, `source` the Ferry endpoint,
/// `subject` the acknowledged event's id, `data` `{"id": …, "status": 202}` or the
/// problem fields on error.
pub fn ack(source: &str, data: &AckData<'_>) -> Result<CloudEvent, EventError> {
    let mut body = serde_json::Map::new();
    body.insert(
        "id".into(),
        data.id.map_or(serde_json::Value::Null, |i| i.into()),
    );
    body.insert("status".into(), data.status.into());
    for (k, v) in [
        ("title", data.title),
        ("detail", data.detail),
        ("attribute", data.attribute),
    ] {
        if let Some(v) = v {
            body.insert(k.into(), v.into());
        }
    }
    let text = serde_json::Value::Object(body).to_string();
    let data_json = Data::json(&text)
        .map_err(|e| EventError::new("data", EventErrorKind::Invalid, e.to_string()))?;
    let mut b = EventBuilder::new()
        .specversion("1.0")
        .id(uuid::Uuid::now_v7().to_string())
        .source(source)
        .ty(ACK_TYPE)
        .datacontenttype("application/json")
        .data(data_json);
    if let Some(id) = data.id.filter(|i| !i.is_empty()) {
        b = b.subject(id);
    }
    b.build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::AttributeRef;

    #[test]
    fn negotiation() {
        assert_eq!(negotiate(["cloudevents.json"], false), Negotiated::Json);
        assert_eq!(
            negotiate(["cloudevents.avro", " cloudevents.json"], false),
            Negotiated::Json
        );
        assert_eq!(negotiate(["CloudEvents.JSON"], false), Negotiated::Json);
        assert_eq!(negotiate(["cloudevents.avro"], false), Negotiated::Refused);
        assert_eq!(negotiate([], false), Negotiated::Refused);
        assert_eq!(negotiate([], true), Negotiated::Raw);
        assert_eq!(negotiate(["chat"], true), Negotiated::Raw);
    }

    #[test]
    fn messages() {
        let e = decode_text(
            r#"{"specversion":"1.0","id":"1","source":"/d","type":"t","data":{"x":1}}"#,
        )
        .unwrap();
        assert_eq!(e.id(), "1");
        assert_eq!(decode_text(&encode(&e)).unwrap(), e);
        assert!(matches!(decode_text("[]"), Err(MessageError::Invalid(_))));
        assert!(matches!(decode_text("{"), Err(MessageError::Invalid(_))));
        let missing = decode_text(r#"{"specversion":"1.0","id":"1","type":"t"}"#).unwrap_err();
        assert_eq!(
            missing,
            MessageError::Invalid(EventError::missing("source"))
        );
    }

    #[test]
    fn ids_of_invalid_events() {
        for (text, id) in [
            (r#"{"specversion":"1.0","id":"a","source":"/s"}"#, Some("a")),
            (r#"{"id":"b","time":"noon","big":2147483648}"#, Some("b")),
            (r#"{"data":{"id":"inner"},"id":"c"}"#, Some("c")),
            (r#"{"id":""}"#, None),
            (r#"{"id":7}"#, None),
            (r#"{"id":null}"#, None),
            (r#"{"source":"/s"}"#, None),
            (r#"[{"id":"in-a-batch"}]"#, None),
            (r#"{"id":"broken""#, None),
            ("not json", None),
        ] {
            assert_eq!(event_id(text).as_deref(), id, "{text}");
        }
    }

    #[test]
    fn acks() {
        let ok = ack(
            "/ferry/devices",
            &AckData {
                id: Some("e-1"),
                status: 202,
                title: None,
                detail: None,
                attribute: None,
            },
        )
        .unwrap();
        assert_eq!(ok.ty(), ACK_TYPE);
        assert_eq!(ok.subject(), Some("e-1"));
        assert_eq!(
            ok.data().unwrap().as_bytes(),
            br#"{"id":"e-1","status":202}"#
        );
        let err = ack(
            "/ferry/devices",
            &AckData {
                id: None,
                status: 400,
                title: Some("Bad Request"),
                detail: Some("attribute `source`: required attribute is missing"),
                attribute: Some("source"),
            },
        )
        .unwrap();
        assert_eq!(err.subject(), None);
        let data: serde_json::Value =
            serde_json::from_slice(err.data().unwrap().as_bytes()).unwrap();
        assert_eq!(data["status"], 400);
        assert_eq!(data["attribute"], "source");
        assert!(data["id"].is_null());
        assert_eq!(
            err.attribute("datacontenttype"),
            Some(AttributeRef::Str("application/json"))
        );
    }
}
