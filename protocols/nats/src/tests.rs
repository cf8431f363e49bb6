use bytes::Bytes;
use ferry_core::{AttributeRef, CloudEvent, Data, ExtensionValue};

use super::*;

/// Header name/value pairs of a test message.
type Pairs<'a> = &'a [(&'a str, &'a str)];

fn headers(pairs: Pairs<'_>) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (n, v) in pairs {
        h.append(*n, *v);
    }
    h
}

#[test]
fn layout_detection() {
    let cases: &[(Pairs<'_>, Result<Layout, ()>)] = &[
        (&[], Ok(Layout::Unknown)),
        (&[("Content-Type", "application/json")], Ok(Layout::Unknown)),
        (
            &[("Content-Type", "application/cloudevents+json")],
            Ok(Layout::Structured),
        ),
        (
            &[(
                "content-type",
                "Application/CloudEvents+JSON; charset=UTF-8",
            )],
            Ok(Layout::Structured),
        ),
        // Structured wins over ce- headers.
        (
            &[
                ("Content-Type", "application/cloudevents+json"),
                ("ce-specversion", "1.0"),
            ],
            Ok(Layout::Structured),
        ),
        (&[("ce-specversion", "1.0")], Ok(Layout::Binary)),
        (&[("CE-SpecVersion", "1.0")], Ok(Layout::Binary)),
        (
            &[("Content-Type", "text/plain"), ("ce-specversion", "1.0")],
            Ok(Layout::Binary),
        ),
        (&[("Content-Type", "application/cloudevents+avro")], Err(())),
        (
            &[("Content-Type", "application/cloudevents-batch+json")],
            Err(()),
        ),
    ];
    for (pairs, want) in cases {
        let h = headers(pairs);
        let got = layout(Some(&h));
        match want {
            Ok(l) => assert_eq!(got.as_ref().ok(), Some(l), "{pairs:?}"),
            Err(()) => assert!(
                matches!(got, Err(DecodeError::UnsupportedMediaType(_))),
                "{pairs:?}"
            ),
        }
    }
    assert_eq!(layout(None), Ok(Layout::Unknown));
}

#[test]
fn binary_decode() {
    let h = headers(&[
        ("ce-specversion", "1.0"),
        ("Ce-Id", "1"),
        ("ce-source", "/s"),
        ("ce-type", "com.example.t"),
        ("ce-subject", "Euro%20%E2%82%AC"),
        ("ce-time", "2020-01-01T00:00:00Z"),
        ("ce-datacontenttype", "application/json"),
        ("ce-myext", "\"quoted\""),
        ("X-Tenant", "acme"),
        ("Nats-Msg-Id", "m-1"),
    ]);
    let e = decode(Some(&h), Bytes::from_static(br#"{"a":1}"#)).unwrap();
    assert_eq!(e.id(), "1");
    assert_eq!(e.ty(), "com.example.t");
    assert_eq!(e.subject(), Some("Euro €"));
    assert_eq!(e.datacontenttype(), Some("application/json"));
    assert_eq!(e.attribute("myext"), Some(AttributeRef::Str("quoted")));
    assert_eq!(e.data().unwrap().as_bytes(), br#"{"a":1}"#);
    assert!(e.extension("x-tenant").is_none());
    let m = metadata("events.a.b", Some(&h));
    assert_eq!(m.get("nats.subject"), Some("events.a.b"));
    assert_eq!(m.get("header.x-tenant"), Some("acme"));
    assert_eq!(m.get("header.nats-msg-id"), Some("m-1"));
    assert_eq!(m.get("header.ce-id"), None);
    assert_eq!(m.get("header.ce-specversion"), None);

    // A Content-Type stands in for a missing ce-datacontenttype, never overrides it.
    let h = headers(&[
        ("ce-specversion", "1.0"),
        ("ce-id", "1"),
        ("ce-source", "/s"),
        ("ce-type", "t"),
        ("Content-Type", "text/plain"),
    ]);
    let e = decode(Some(&h), Bytes::from_static(b"hi")).unwrap();
    assert_eq!(e.datacontenttype(), Some("text/plain"));
    let mut h = h;
    h.insert("ce-datacontenttype", "application/xml");
    let e = decode(Some(&h), Bytes::from_static(b"<a/>")).unwrap();
    assert_eq!(e.datacontenttype(), Some("application/xml"));
}

#[test]
fn binary_errors_name_the_header() {
    let base = [
        ("ce-specversion", "1.0"),
        ("ce-id", "1"),
        ("ce-source", "/s"),
        ("ce-type", "t"),
    ];
    let with = |extra: &[(&str, &str)], skip: &str| {
        let mut pairs: Vec<(&str, &str)> =
            base.iter().copied().filter(|(n, _)| *n != skip).collect();
        pairs.extend_from_slice(extra);
        decode(Some(&headers(&pairs)), Bytes::new()).unwrap_err()
    };
    let cases: Vec<(DecodeError, &str, &str)> = vec![
        (with(&[], "ce-id"), "ce-id", "invalid"),
        (with(&[("ce-time", "nope")], ""), "ce-time", "invalid"),
        (with(&[("ce-bad_name", "x")], ""), "ce-bad_name", "invalid"),
        (with(&[("ce-x", "%C0%A0")], ""), "ce-x", "undecodable"),
        // A repeated header is a duplicate attribute.
        (with(&[("ce-id", "2")], ""), "ce-id", "invalid"),
        (
            with(&[("ce-datacontenttype", "nonsense")], ""),
            "ce-datacontenttype",
            "invalid",
        ),
    ];
    for (err, header, reason) in cases {
        match &err {
            DecodeError::Invalid { header: h, .. } => {
                assert_eq!(h.as_deref(), Some(header), "{err}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(err.reason(), reason, "{err}");
    }
}

#[test]
fn not_cloud_events() {
    let cases: &[(Pairs<'_>, &[u8])] = &[
        (&[], b"not json"),
        (&[], br#"{"temperature": 21}"#),
        (&[("Content-Type", "application/json")], br#"{"a":1}"#),
        // A JSON event but announced as something else: not structured, not binary.
        (
            &[("Content-Type", "text/plain")],
            br#"{"specversion":"1.0","id":"1","source":"/s","type":"t"}"#,
        ),
    ];
    for (pairs, payload) in cases {
        let h = headers(pairs);
        let h = (!pairs.is_empty()).then_some(&h);
        let err = decode(h, Bytes::copy_from_slice(payload)).unwrap_err();
        assert_eq!(err, DecodeError::NotCloudEvent, "{pairs:?}");
        assert_eq!(err.reason(), "undecodable");
        assert!(is_raw(h, payload), "{pairs:?}");
    }
    let h = headers(&[("Content-Type", "application/cloudevents+protobuf")]);
    let err = decode(Some(&h), Bytes::from_static(b"x")).unwrap_err();
    assert_eq!(err.reason(), "undecodable");
    assert!(!is_raw(Some(&h), b"x"));
}

#[test]
fn structured_decode() {
    let body = br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":{"x":[1,2]}}"#;
    // Headers in structured mode are ignored: the payload wins.
    let h = headers(&[
        (
            "Content-Type",
            "application/cloudevents+json; charset=utf-8",
        ),
        ("ce-id", "other"),
    ]);
    let e = decode(Some(&h), Bytes::from_static(body)).unwrap();
    assert_eq!(e.id(), "1");
    // The spec's structured example has no headers at all.
    let e = decode(None, Bytes::from_static(body)).unwrap();
    assert_eq!(e.id(), "1");
    assert!(!is_raw(None, body));
    // A header-less JSON event with a bad attribute is invalid, not "not a CloudEvent".
    let bad = decode(
        None,
        Bytes::from_static(br#"{"specversion":"1.0","id":"1","type":"t"}"#),
    )
    .unwrap_err();
    assert_eq!(bad.attribute(), Some("source"));
    assert_eq!(bad.reason(), "invalid");
    let malformed = decode(Some(&h), Bytes::from_static(b"{")).unwrap_err();
    assert_eq!(malformed.reason(), "undecodable");
}

#[test]
fn encode_both_modes_round_trip() {
    let mut e = CloudEvent::new("id 1", "https://example.com/src", "com.example.t").unwrap();
    e.set_extension("ext", ExtensionValue::String("Euro € \"q\" 100%".into()))
        .unwrap();
    e.set_extension("num", ExtensionValue::Integer(-7)).unwrap();
    e.set_extension("flag", ExtensionValue::Boolean(true))
        .unwrap();
    e.set_data(
        Some("application/octet-stream".into()),
        Some(Data::Binary(Bytes::from_static(&[0, 159, 146, 150]))),
    )
    .unwrap();

    let (h, payload) = encode(&e, Mode::Binary);
    assert_eq!(
        header(&h, "ce-ext"),
        Some("Euro%20%E2%82%AC%20%22q%22%20100%25")
    );
    assert_eq!(header(&h, "ce-id"), Some("id%201"));
    assert_eq!(header(&h, "ce-num"), Some("-7"));
    assert_eq!(
        header(&h, "ce-datacontenttype"),
        Some("application/octet-stream")
    );
    assert_eq!(header(&h, "content-type"), None);
    assert_eq!(&payload[..], &[0, 159, 146, 150]);
    let back = decode(Some(&h), payload).unwrap();
    assert_eq!(back.id(), "id 1");
    assert_eq!(back.attribute("ext"), e.attribute("ext"));
    // Headers carry strings: typed extensions come back as their canonical string.
    assert_eq!(back.attribute("num"), Some(AttributeRef::Str("-7")));
    assert_eq!(back.attribute("flag"), Some(AttributeRef::Str("true")));
    assert_eq!(
        back.data().unwrap().as_bytes(),
        e.data().unwrap().as_bytes()
    );

    let (h, payload) = encode(&e, Mode::Structured);
    assert_eq!(header(&h, "Content-Type"), Some(STRUCTURED_CONTENT_TYPE));
    assert_eq!(decode(Some(&h), payload).unwrap(), e);

    // JSON data without a content type gets an explicit application/json in binary mode.
    let mut j = CloudEvent::new("2", "/s", "t").unwrap();
    j.set_data(None, Some(Data::json(r#"{"k": "v"}"#).unwrap()))
        .unwrap();
    let (h, payload) = encode(&j, Mode::Binary);
    assert_eq!(header(&h, "ce-datacontenttype"), Some("application/json"));
    assert_eq!(&payload[..], br#"{"k": "v"}"#);

    // No data: an empty payload, and no data after decoding.
    let empty = CloudEvent::new("3", "/s", "t").unwrap();
    let (h, payload) = encode(&empty, Mode::Binary);
    assert!(payload.is_empty());
    assert_eq!(decode(Some(&h), payload).unwrap(), empty);
}

#[test]
fn message_ids_join_source_and_id_unambiguously() {
    let cases = [
        ("/s", "1", "/s 1"),
        (
            "https://example.com/a?b=c",
            "id with spaces",
            "https://example.com/a?b=c id%20with%20spaces",
        ),
        ("urn:x", "€%", "urn:x %E2%82%AC%25"),
    ];
    for (source, id, want) in cases {
        let e = CloudEvent::new(id, source, "t").unwrap();
        let got = message_id(&e);
        assert_eq!(got, want);
        let (s, i) = got.split_once(' ').unwrap();
        assert_eq!(decode_value(s.as_bytes()).unwrap(), source);
        assert_eq!(decode_value(i.as_bytes()).unwrap(), id);
    }
    // ("a b", "c") and ("a", "b c") cannot both be sources, but ids with spaces stay apart.
    let x = CloudEvent::new("b c", "/a", "t").unwrap();
    let y = CloudEvent::new("b", "/a", "t").unwrap();
    assert_ne!(message_id(&x), message_id(&y));
}

// --- conformance vectors (ferry-conformance: protocols/conformance/data) ---------------------

use ferry_conformance::{load, Doc};

/// The NATS message a producer sends for a conformance document: binary mode with `ce-`
/// headers (`ce-datacontenttype` included), or structured JSON with its `Content-Type`.
fn message(doc: &Doc) -> (HeaderMap, Bytes) {
    let attrs = doc.attributes();
    let mut h = HeaderMap::new();
    for (k, v) in &doc.transport_extensions {
        h.insert(k.as_str(), v.as_str());
    }
    let data = doc.data.clone().unwrap_or_default();
    if doc.mode.as_deref() == Some("structured") {
        let mut obj = serde_json::Map::new();
        for (k, v) in attrs {
            obj.insert(k, serde_json::Value::String(v));
        }
        obj.insert("data".into(), serde_json::from_str(&data).unwrap());
        h.insert(CONTENT_TYPE, "application/cloudevents+json; charset=UTF-8");
        (h, Bytes::from(serde_json::to_vec(&obj).unwrap()))
    } else {
        for (k, v) in attrs {
            // Header values may not hold line breaks: percent-encode like a producer must.
            h.insert(format!("ce-{k}"), encode_value(&v).into_owned());
        }
        (h, Bytes::from(data))
    }
}

#[test]
fn conformance_vectors() {
    let mut count = 0;
    for file in ferry_conformance::FILES {
        for doc in load(file) {
            let (h, payload) = message(&doc);
            let event = decode(Some(&h), payload).unwrap_or_else(|err| panic!("{file}: {err}"));
            ferry_conformance::check(&doc, &event);
            for name in doc.transport_extensions.keys() {
                let meta = metadata("events.x", Some(&h));
                assert!(meta.get(&format!("header.{name}")).is_some(), "{name}");
            }
            // Re-encode in both modes and decode again: nothing changes.
            for mode in [Mode::Binary, Mode::Structured] {
                let (h2, p2) = encode(&event, mode);
                let again = decode(Some(&h2), p2).unwrap();
                assert_eq!(again.id(), event.id());
                let bytes =
                    |e: &CloudEvent| e.data().map(|d| d.as_bytes().to_vec()).unwrap_or_default();
                if event
                    .effective_content_type()
                    .is_some_and(ferry_core::validate::is_json_media_type)
                {
                    // JSON data keeps its value; insignificant whitespace may go.
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
            }
            count += 1;
        }
    }
    assert_eq!(count, 15);
}
