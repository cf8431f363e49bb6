use bytes::Bytes;
use ferry_core::{AttributeRef, CloudEvent, Data, ExtensionValue};
use lapin::types::{AMQPValue, ByteArray, FieldTable, LongString};

use super::*;

fn s(v: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(v.as_bytes().to_vec()))
}

fn props(content_type: Option<&str>, pairs: Vec<(&str, AMQPValue)>) -> BasicProperties {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert(k.into(), v);
    }
    let p = BasicProperties::default().with_headers(t);
    match content_type {
        Some(ct) => p.with_content_type(ct.into()),
        None => p,
    }
}

fn required(prefix: &str) -> Vec<(String, AMQPValue)> {
    vec![
        (format!("{prefix}specversion"), s("1.0")),
        (format!("{prefix}id"), s("1")),
        (format!("{prefix}source"), s("/s")),
        (format!("{prefix}type"), s("com.example.t")),
    ]
}

fn with_required(prefix: &str, extra: Vec<(&str, AMQPValue)>) -> Vec<(String, AMQPValue)> {
    let mut v = required(prefix);
    v.extend(extra.into_iter().map(|(k, v)| (k.to_owned(), v)));
    v
}

fn owned_props(content_type: Option<&str>, pairs: Vec<(String, AMQPValue)>) -> BasicProperties {
    props(
        content_type,
        pairs.iter().map(|(k, v)| (k.as_str(), v.clone())).collect(),
    )
}

#[test]
fn structured_detection() {
    let cases: &[(Option<&str>, Result<bool, ()>)] = &[
        (None, Ok(false)),
        (Some("application/json"), Ok(false)),
        (Some("application/cloudevents+json"), Ok(true)),
        (
            Some("Application/CloudEvents+JSON; charset=UTF-8"),
            Ok(true),
        ),
        (Some("application/cloudevents"), Ok(true)),
        (Some("application/cloudevents+avro"), Err(())),
        (Some("application/cloudevents-batch+json"), Err(())),
    ];
    for (ct, want) in cases {
        match want {
            Ok(b) => assert_eq!(is_structured(*ct).ok(), Some(*b), "{ct:?}"),
            Err(()) => assert!(
                matches!(
                    is_structured(*ct),
                    Err(DecodeError::UnsupportedMediaType(_))
                ),
                "{ct:?}"
            ),
        }
    }
}

#[test]
fn prefixes_are_read_case_insensitively() {
    for (prefix, ok) in [
        ("cloudEvents_", true),
        ("cloudEvents:", true),
        ("ce-", true),
        ("CLOUDEVENTS_", true),
        ("cloudevents:", true),
        ("CE-", true),
        ("cloudEvents.", false),
        ("x-ce-", false),
    ] {
        let p = owned_props(None, required(prefix));
        assert_eq!(is_cloudevent(&p), ok, "{prefix}");
        match decode(&p, b"") {
            Ok(e) => {
                assert!(ok, "{prefix}");
                assert_eq!(e.ty(), "com.example.t");
            }
            Err(err) => assert!(!ok && err == DecodeError::NotCloudEvent, "{prefix}: {err}"),
        }
    }
    assert_eq!(attribute_name("cloudEvents_MyExt"), Some("myext".into()));
    assert_eq!(attribute_name("ce"), None);
}

#[test]
fn binary_decode_native_types() {
    let p = owned_props(
        Some("application/octet-stream"),
        with_required(
            "cloudEvents_",
            vec![
                (
                    "cloudEvents_subject",
                    AMQPValue::ShortString("Euro €".into()),
                ),
                ("cloudEvents_time", AMQPValue::Timestamp(1_600_000_000)),
                ("cloudEvents_dataschema", s("https://example.com/schema")),
                ("cloudEvents_flag", AMQPValue::Boolean(true)),
                ("cloudEvents_small", AMQPValue::ShortShortInt(-3)),
                ("cloudEvents_count", AMQPValue::LongLongInt(2_147_483_647)),
                ("cloudEvents_unsigned", AMQPValue::LongUInt(7)),
                ("cloudEvents_stamp", AMQPValue::Timestamp(0)),
                (
                    "cloudEvents_blob",
                    AMQPValue::ByteArray(ByteArray::from(vec![0u8, 255])),
                ),
                ("x-tenant", s("acme")),
                ("X-Retries", AMQPValue::LongInt(2)),
            ],
        ),
    );
    let e = decode(&p, &[1, 2, 3]).unwrap();
    assert_eq!(e.subject(), Some("Euro €"));
    assert_eq!(e.time().unwrap().as_str(), "2020-09-13T12:26:40Z");
    assert_eq!(e.dataschema(), Some("https://example.com/schema"));
    assert_eq!(e.datacontenttype(), Some("application/octet-stream"));
    assert_eq!(e.attribute("flag"), Some(AttributeRef::Boolean(true)));
    assert_eq!(e.attribute("small"), Some(AttributeRef::Integer(-3)));
    assert_eq!(e.attribute("count"), Some(AttributeRef::Integer(i32::MAX)));
    assert_eq!(e.attribute("unsigned"), Some(AttributeRef::Integer(7)));
    assert_eq!(
        e.attribute("stamp"),
        Some(AttributeRef::Str("1970-01-01T00:00:00Z"))
    );
    assert_eq!(e.attribute("blob"), Some(AttributeRef::Binary(&[0, 255])));
    assert_eq!(e.data().unwrap().as_bytes(), &[1, 2, 3]);
    assert!(e.extension("x-tenant").is_none());

    let m = metadata(&p, "orders", "com.example.t");
    assert_eq!(m.get("header.x-tenant"), Some("acme"));
    assert_eq!(m.get("header.x-retries"), Some("2"));
    assert_eq!(m.get("header.cloudevents_id"), None);
    assert_eq!(m.get("amqp.exchange"), Some("orders"));
    assert_eq!(m.get("amqp.routing_key"), Some("com.example.t"));
}

#[test]
fn binary_errors_name_the_header() {
    // (extra headers, attribute named by the error, header named by the error)
    type Case<'a> = (Vec<(&'a str, AMQPValue)>, &'a str, Option<&'a str>);
    let cases: Vec<Case<'_>> = vec![
        (vec![("ce-time", s("noon"))], "time", Some("ce-time")),
        (
            vec![("ce-big", AMQPValue::LongLongInt(1 << 40))],
            "big",
            Some("ce-big"),
        ),
        (vec![("ce-id", AMQPValue::LongInt(5))], "id", Some("ce-id")),
        (
            vec![("ce-bad_name", s("x"))],
            "bad_name",
            Some("ce-bad_name"),
        ),
        (vec![("ce-f", AMQPValue::Double(1.5))], "f", Some("ce-f")),
        (
            vec![(
                "ce-u",
                AMQPValue::LongString(LongString::from(vec![0xC0u8, 0xA0])),
            )],
            "u",
            Some("ce-u"),
        ),
        (
            vec![("ce-dataschema", s("relative"))],
            "dataschema",
            Some("ce-dataschema"),
        ),
        // The same attribute under two prefixes is a duplicate.
        (
            vec![("cloudEvents_id", s("2"))],
            "id",
            Some("cloudEvents_id"),
        ),
    ];
    for (extra, attribute, header) in cases {
        let p = owned_props(None, with_required("ce-", extra));
        let err = decode(&p, b"").unwrap_err();
        assert_eq!(err.attribute(), Some(attribute), "{err}");
        match &err {
            DecodeError::Invalid { header: h, .. } => {
                assert_eq!(h.as_deref(), header, "{err}")
            }
            other => panic!("{other:?}"),
        }
    }
    let p = owned_props(Some("nonsense"), required("ce-"));
    assert!(matches!(
        decode(&p, b"").unwrap_err(),
        DecodeError::Invalid { header: Some(h), .. } if h == "content-type"
    ));
    let p = props(Some("application/json"), vec![("x", s("y"))]);
    assert_eq!(decode(&p, b"{}").unwrap_err(), DecodeError::NotCloudEvent);
    assert!(!is_cloudevent(&p));
}

#[test]
fn time_in_every_accepted_form() {
    // (header value, the `time` read)
    let cases = [
        (s("2024-01-02T03:04:05.678Z"), "2024-01-02T03:04:05.678Z"),
        (AMQPValue::Timestamp(1_704_164_645), "2024-01-02T03:04:05Z"),
        // Integers are milliseconds since the epoch (AMQP 1.0 timestamps; the Python SDK).
        (
            AMQPValue::LongLongInt(1_704_164_645_678),
            "2024-01-02T03:04:05.678Z",
        ),
        (AMQPValue::LongInt(1_500), "1970-01-01T00:00:01.5Z"),
        (AMQPValue::ShortInt(-1), "1969-12-31T23:59:59.999Z"),
    ];
    for (value, want) in cases {
        let p = owned_props(
            None,
            with_required("cloudEvents_", vec![("cloudEvents_time", value.clone())]),
        );
        let e = decode(&p, b"").unwrap_or_else(|err| panic!("{value:?}: {err}"));
        assert_eq!(e.time().unwrap().as_str(), want, "{value:?}");
    }
    // B6: a type that cannot be a timestamp is refused with what `time` may be.
    for value in [
        AMQPValue::Double(1.5),
        AMQPValue::Boolean(true),
        AMQPValue::ByteArray(ByteArray::from(vec![1u8])),
        AMQPValue::LongLongInt(i64::MAX),
    ] {
        let p = owned_props(None, with_required("ce-", vec![("ce-time", value.clone())]));
        let err = decode(&p, b"").unwrap_err();
        assert_eq!(err.attribute(), Some("time"), "{value:?}");
        let text = err.to_string();
        assert!(text.starts_with("header `ce-time`: "), "{text}");
        assert!(
            text.contains("must be a string (RFC 3339), an AMQP timestamp or an integer")
                || text.contains("out of range"),
            "{text}"
        );
        assert!(!text.contains("32-bit"), "{text}");
    }
    // Core attributes other than `time` are strings, whatever the integer's width.
    let p = owned_props(
        None,
        with_required("ce-", vec![("ce-subject", AMQPValue::LongLongInt(1 << 40))]),
    );
    assert!(decode(&p, b"")
        .unwrap_err()
        .to_string()
        .contains("must be a string"));
}

#[test]
fn spring_style_messages() {
    // `datacontenttype` as a header and as an equal property: one attribute.
    let p = owned_props(
        Some("application/json"),
        with_required(
            "cloudEvents_",
            vec![("cloudEvents_datacontenttype", s("application/json"))],
        ),
    );
    let e = decode(&p, br#"{"a":1}"#).unwrap();
    assert_eq!(e.datacontenttype(), Some("application/json"));
    // Different values are still a duplicate.
    let p = owned_props(
        Some("text/plain"),
        with_required(
            "cloudEvents_",
            vec![("cloudEvents_datacontenttype", s("application/json"))],
        ),
    );
    assert_eq!(
        decode(&p, b"x").unwrap_err().attribute(),
        Some("datacontenttype")
    );
    // Structured mode marked only by the header.
    let p = props(
        None,
        vec![(
            "cloudEvents_datacontenttype",
            s("application/cloudevents+json"),
        )],
    );
    assert!(is_cloudevent(&p));
    let e = decode(
        &p,
        br#"{"specversion":"1.0","id":"sp","source":"/s","type":"t","data":{"a":3}}"#,
    )
    .unwrap();
    assert_eq!(e.id(), "sp");
    assert_eq!(e.data().unwrap().as_bytes(), br#"{"a":3}"#);
    // A property decides over the header.
    let p = props(
        Some("text/plain"),
        vec![(
            "cloudEvents_datacontenttype",
            s("application/cloudevents+json"),
        )],
    );
    assert!(!is_structured(Some("text/plain")).unwrap());
    assert!(decode(&p, b"{}").is_err());
}

#[test]
fn structured_decode_ignores_headers() {
    let p = props(
        Some("application/cloudevents+json; charset=utf-8"),
        vec![("ce-id", s("other")), ("x-trace", s("t1"))],
    );
    assert!(is_cloudevent(&p));
    let e = decode(
        &p,
        br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":{"x":1}}"#,
    )
    .unwrap();
    assert_eq!(e.id(), "1");
    assert_eq!(metadata(&p, "", "q").get("header.x-trace"), Some("t1"));
    let err = decode(&p, br#"{"specversion":"1.0","id":"1","type":"t"}"#).unwrap_err();
    assert_eq!(err.attribute(), Some("source"));
}

fn sample() -> CloudEvent {
    let mut e = CloudEvent::new("id 1", "https://example.com/src", "com.example.t").unwrap();
    e.set_extension("ext", ExtensionValue::String("Euro € \"q\"".into()))
        .unwrap();
    e.set_extension("num", ExtensionValue::Integer(-7)).unwrap();
    e.set_extension("flag", ExtensionValue::Boolean(true))
        .unwrap();
    e.set_extension(
        "blob",
        ExtensionValue::Binary(Bytes::from_static(&[1, 2, 3])),
    )
    .unwrap();
    e.set_data(
        Some("application/octet-stream".into()),
        Some(Data::Binary(Bytes::from_static(&[0, 159, 146, 150]))),
    )
    .unwrap();
    e
}

#[test]
fn encode_binary_round_trip() {
    let mut e = sample();
    let mut with_time = CloudEvent::new("t", "/s", "t").unwrap();
    with_time
        .set_extension("x", ExtensionValue::String("y".into()))
        .unwrap();
    for prefix in [
        HeaderPrefix::CloudEvents,
        HeaderPrefix::Ce,
        HeaderPrefix::CloudEventsColon,
    ] {
        let (p, body) = encode(&e, Mode::Binary, prefix);
        let headers = p.headers().as_ref().unwrap();
        // Exactly one prefix, never mixed.
        assert!(headers
            .inner()
            .keys()
            .all(|k| k.as_str().starts_with(prefix.as_str())));
        let h = |n: &str| {
            headers
                .inner()
                .get(format!("{}{n}", prefix.as_str()).as_str())
                .cloned()
        };
        assert_eq!(h("id"), Some(s("id 1")));
        assert_eq!(h("num"), Some(AMQPValue::LongInt(-7)));
        assert_eq!(h("flag"), Some(AMQPValue::Boolean(true)));
        assert_eq!(h("datacontenttype"), None);
        assert_eq!(
            p.content_type().as_ref().map(ShortString::as_str),
            Some("application/octet-stream")
        );
        assert_eq!(
            p.message_id().as_ref().map(ShortString::as_str),
            Some("id 1")
        );
        assert_eq!(body, vec![0, 159, 146, 150]);
        // Native types come back typed: the event is equal.
        assert_eq!(decode(&p, &body).unwrap(), e);
    }
    // `time` as an RFC 3339 string keeps its precision and offset.
    let mut b = EventBuilder::new()
        .specversion("1.0")
        .id("1")
        .source("/s")
        .ty("t")
        .time("2020-01-01T10:00:00.123456+02:00");
    b.set_data(None);
    e = b.build().unwrap();
    let (p, body) = encode(&e, Mode::Binary, HeaderPrefix::CloudEvents);
    assert_eq!(
        p.headers()
            .as_ref()
            .unwrap()
            .inner()
            .get("cloudEvents_time"),
        Some(&s("2020-01-01T10:00:00.123456+02:00"))
    );
    assert!(p.content_type().is_none());
    assert_eq!(decode(&p, &body).unwrap(), e);

    // JSON data gets an explicit content type.
    let mut j = CloudEvent::new("2", "/s", "t").unwrap();
    j.set_data(None, Some(Data::json(r#"{"k": "v"}"#).unwrap()))
        .unwrap();
    let (p, body) = encode(&j, Mode::Binary, HeaderPrefix::Ce);
    assert_eq!(
        p.content_type().as_ref().map(ShortString::as_str),
        Some("application/json")
    );
    assert_eq!(body, br#"{"k": "v"}"#);
}

#[test]
fn encode_structured_round_trip() {
    // JSON has no binary type: a Binary extension comes back as its Base64 string.
    let mut e = sample();
    e.remove_extension("blob");
    let (p, body) = encode(&e, Mode::Structured, HeaderPrefix::CloudEvents);
    assert_eq!(
        p.content_type().as_ref().map(ShortString::as_str),
        Some(STRUCTURED_CONTENT_TYPE)
    );
    assert!(p.headers().is_none());
    assert_eq!(decode(&p, &body).unwrap(), e);
}

// --- conformance vectors (ferry-conformance: protocols/conformance/data) ---------------------

use ferry_conformance::{load, Doc};

/// The AMQP message a producer would send for a document (binary mode with the `cloudEvents:`
/// prefix of the AMQP 1.0 binding's example, transport extensions as plain headers).
fn message(doc: &Doc) -> (BasicProperties, Vec<u8>) {
    let attrs = doc.attributes();
    let mut headers = FieldTable::default();
    for (k, v) in &doc.transport_extensions {
        headers.insert(k.as_str().into(), s(v));
    }
    let data = doc.data.clone().unwrap_or_default();
    if doc.mode.as_deref() == Some("structured") {
        let mut obj = serde_json::Map::new();
        for (k, v) in attrs {
            obj.insert(k, serde_json::Value::String(v));
        }
        obj.insert("data".into(), serde_json::from_str(&data).unwrap());
        let p = BasicProperties::default()
            .with_headers(headers)
            .with_content_type("application/cloudevents+json; charset=UTF-8".into());
        (p, serde_json::to_vec(&obj).unwrap())
    } else {
        let mut content_type = None;
        for (k, v) in attrs {
            if k == "datacontenttype" {
                content_type = Some(v);
            } else {
                headers.insert(format!("cloudEvents:{k}").into(), s(&v));
            }
        }
        let mut p = BasicProperties::default().with_headers(headers);
        if let Some(ct) = content_type {
            p = p.with_content_type(ct.into());
        }
        (p, data.into_bytes())
    }
}

fn check(doc: &Doc, e: &CloudEvent, meta: &TransportMetadata) {
    ferry_conformance::check(doc, e);
    for (name, value) in &doc.transport_extensions {
        assert_eq!(meta.get(&format!("header.{name}")), Some(value.as_str()));
    }
}

#[test]
fn conformance_vectors() {
    let mut count = 0;
    for file in ferry_conformance::FILES {
        for doc in load(file) {
            let (p, body) = message(&doc);
            let event = decode(&p, &body).unwrap_or_else(|err| panic!("{file}: {err}"));
            check(&doc, &event, &metadata(&p, "x", "k"));
            // Re-encode in both modes with both prefixes and decode again: nothing changes.
            for mode in [Mode::Binary, Mode::Structured] {
                for prefix in [HeaderPrefix::CloudEvents, HeaderPrefix::Ce] {
                    let (p2, b2) = encode(&event, mode, prefix);
                    let again = decode(&p2, &b2).unwrap();
                    assert_eq!(again.id(), event.id());
                    let bytes = |e: &CloudEvent| {
                        e.data().map(|d| d.as_bytes().to_vec()).unwrap_or_default()
                    };
                    if event
                        .effective_content_type()
                        .is_some_and(ferry_core::validate::is_json_media_type)
                    {
                        let a: serde_json::Value = serde_json::from_slice(&bytes(&again)).unwrap();
                        let b: serde_json::Value = serde_json::from_slice(&bytes(&event)).unwrap();
                        assert_eq!(a, b, "{file} {mode:?}");
                    } else {
                        assert_eq!(bytes(&again), bytes(&event), "{file} {mode:?}");
                    }
                    assert_eq!(
                        again.effective_content_type(),
                        event.effective_content_type()
                    );
                    assert_eq!(again.time(), event.time());
                    assert_eq!(again.extensions(), event.extensions());
                }
            }
            count += 1;
        }
    }
    assert_eq!(count, 15);
}

/// Found by the property tests (`tests/properties.rs`): a `datacontenttype` longer than the
/// 255 bytes a 0-9-1 `content-type` property holds was dropped from a binary-mode message.
#[test]
fn property_a_content_type_too_long_for_the_property_goes_in_a_header() {
    let ct = format!("text/plain; comment=\"{}\"", "x".repeat(300));
    let mut event = CloudEvent::new("1", "/s", "t").unwrap();
    event
        .set_data(
            Some(ct.clone()),
            Some(Data::Binary(Bytes::from_static(b"hi"))),
        )
        .unwrap();
    for prefix in [HeaderPrefix::CloudEvents, HeaderPrefix::Ce] {
        let (properties, body) = encode(&event, Mode::Binary, prefix);
        assert!(properties.content_type().is_none());
        let back = decode(&properties, &body).unwrap();
        assert_eq!(back.datacontenttype(), Some(ct.as_str()));
        assert_eq!(back.data().unwrap().as_bytes(), b"hi");
    }
}
