use bytes::Bytes;
use ferry_core::{AttributeRef, CloudEvent, Data, ExtensionValue};
use http::{HeaderMap, HeaderValue};

use super::*;

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (n, v) in pairs {
        h.append(
            http::header::HeaderName::from_bytes(n.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

fn single(m: Message) -> CloudEvent {
    match m {
        Message::Event(e) => e,
        Message::Batch(_) => panic!("batch"),
    }
}

#[test]
fn mode_detection() {
    let cases: &[(Option<&str>, Result<ContentMode, ()>)] = &[
        (None, Ok(ContentMode::Binary)),
        (Some("application/json"), Ok(ContentMode::Binary)),
        (
            Some("application/cloudevents+json"),
            Ok(ContentMode::Structured),
        ),
        (
            Some("Application/CloudEvents+JSON; charset=UTF-8"),
            Ok(ContentMode::Structured),
        ),
        (
            Some("application/cloudevents-batch+json"),
            Ok(ContentMode::Batch),
        ),
        (
            Some("APPLICATION/CLOUDEVENTS-BATCH+JSON"),
            Ok(ContentMode::Batch),
        ),
        (Some("application/cloudevents+avro"), Err(())),
        (Some("application/cloudevents-batch+avro"), Err(())),
        (Some("Application/CloudEvents"), Ok(ContentMode::Structured)),
        (
            Some(" application/cloudevents+json ; x=y"),
            Ok(ContentMode::Structured),
        ),
        (Some("application/cloudevents-batch"), Err(())),
        (Some("application/cloudeventsx"), Err(())),
        (Some("application/cloud"), Ok(ContentMode::Binary)),
        (Some("application/cloudevents-batch+jsonx"), Err(())),
        (
            Some("\u{e9}pplication/cloudevents"),
            Ok(ContentMode::Binary),
        ),
        (Some(""), Ok(ContentMode::Binary)),
    ];
    for (ct, want) in cases {
        let got = content_mode(*ct);
        match want {
            Ok(m) => assert_eq!(got.as_ref().ok(), Some(m), "{ct:?}"),
            Err(()) => assert!(
                matches!(got, Err(DecodeError::UnsupportedMediaType(_))),
                "{ct:?}"
            ),
        }
    }
    // The error quotes the media type as written.
    assert_eq!(
        content_mode(Some("Application/CloudEvents+Avro; v=1")),
        Err(DecodeError::UnsupportedMediaType(
            "Application/CloudEvents+Avro".into()
        ))
    );
}

#[test]
fn binary_decode() {
    let h = headers(&[
        ("ce-specversion", "1.0"),
        ("ce-id", "1"),
        ("ce-source", "/s"),
        ("ce-type", "com.example.t"),
        ("ce-subject", "Euro%20%E2%82%AC"),
        ("ce-time", "2020-01-01T00:00:00Z"),
        ("ce-myext", "\"quoted\""),
        ("content-type", "application/json; charset=utf-8"),
        ("x-tenant", "acme"),
    ]);
    let e = single(decode(&h, Bytes::from_static(br#"{"a":1}"#)).unwrap());
    assert_eq!(e.ty(), "com.example.t");
    assert_eq!(e.subject(), Some("Euro €"));
    assert_eq!(e.datacontenttype(), Some("application/json; charset=utf-8"));
    assert_eq!(e.attribute("myext"), Some(AttributeRef::Str("quoted")));
    assert_eq!(e.data().unwrap().as_bytes(), br#"{"a":1}"#);
    assert!(e.extension("x-tenant").is_none());
    assert_eq!(metadata(&h).get("header.x-tenant"), Some("acme"));
    assert_eq!(metadata(&h).get("header.ce-id"), None);
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
        decode(&headers(&pairs), Bytes::new()).unwrap_err()
    };
    let cases: Vec<(DecodeError, Option<&str>)> = vec![
        (with(&[], "ce-id"), Some("ce-id")),
        (with(&[("ce-time", "nope")], ""), Some("ce-time")),
        (
            with(&[("ce-datacontenttype", "text/plain")], ""),
            Some("ce-datacontenttype"),
        ),
        (with(&[("ce-bad_name", "x")], ""), Some("ce-bad_name")),
        (with(&[("ce-x", "%C0%A0")], ""), Some("ce-x")),
        (with(&[("ce-id", "2")], ""), Some("ce-id")),
        (
            with(&[("content-type", "nonsense")], ""),
            Some("content-type"),
        ),
    ];
    for (err, header) in cases {
        match &err {
            DecodeError::Invalid { header: h, .. } => assert_eq!(h.as_deref(), header, "{err}"),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        decode(&headers(&[("content-type", "text/plain")]), Bytes::new()).unwrap_err(),
        DecodeError::NotCloudEvent
    );
}

#[test]
fn structured_and_batch() {
    let body = Bytes::from_static(
        br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":{"x":[1,2]}}"#,
    );
    // Headers in structured mode are ignored: the body wins.
    let h = headers(&[
        (
            "content-type",
            "application/cloudevents+json; charset=utf-8",
        ),
        ("ce-id", "other"),
    ]);
    let e = single(decode(&h, body).unwrap());
    assert_eq!(e.id(), "1");
    let h = headers(&[("content-type", "application/cloudevents-batch+json")]);
    let batch = decode(&h, Bytes::from_static(br#"[{"specversion":"1.0","id":"1","source":"/s","type":"t"},{"specversion":"1.0","id":"2","source":"/s","type":"t"}]"#)).unwrap();
    assert!(matches!(batch, Message::Batch(ref v) if v.len() == 2));
    let bad = decode(&h, Bytes::from_static(br#"[{"specversion":"1.0","id":"1","source":"/s","type":"t"},{"specversion":"1.0","id":"2","type":"t"}]"#)).unwrap_err();
    assert_eq!(bad.attribute(), Some("source"));
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

    let (h, body) = encode(&e, Mode::Binary);
    assert_eq!(
        h.get("ce-ext").unwrap(),
        "Euro%20%E2%82%AC%20%22q%22%20100%25"
    );
    assert_eq!(h.get("ce-num").unwrap(), "-7");
    assert_eq!(h.get("content-type").unwrap(), "application/octet-stream");
    assert_eq!(&body[..], &[0, 159, 146, 150]);
    let back = single(decode(&h, body).unwrap());
    assert_eq!(back.attribute("ext"), e.attribute("ext"));
    // Headers carry strings: typed extensions come back as their canonical string.
    assert_eq!(back.attribute("num"), Some(AttributeRef::Str("-7")));
    assert_eq!(
        back.data().unwrap().as_bytes(),
        e.data().unwrap().as_bytes()
    );

    let (h, body) = encode(&e, Mode::Structured);
    assert!(h
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("application/cloudevents+json"));
    assert_eq!(single(decode(&h, body).unwrap()), e);

    // JSON data without a content type gets an explicit application/json in binary mode.
    let mut j = CloudEvent::new("2", "/s", "t").unwrap();
    j.set_data(None, Some(Data::json(r#"{"k": "v"}"#).unwrap()))
        .unwrap();
    let (h, body) = encode(&j, Mode::Binary);
    assert_eq!(h.get("content-type").unwrap(), "application/json");
    assert_eq!(&body[..], br#"{"k": "v"}"#);

    let (h, body) = encode_batch([&e, &j]);
    assert!(matches!(decode(&h, body).unwrap(), Message::Batch(v) if v.len() == 2));
}

#[test]
fn binary_encode_writes_every_header_in_order() {
    let h = headers(&[
        ("ce-specversion", "1.0"),
        ("ce-id", "id 1"),
        ("ce-source", "https://example.com/src"),
        ("ce-type", "com.example.t"),
        ("ce-dataschema", "https://example.com/s.json"),
        ("ce-subject", "Euro%20%E2%82%AC"),
        ("ce-time", "2020-01-01T00:00:00+02:00"),
        ("ce-zeta", "\"100%25\""),
        ("ce-alpha", "a"),
        ("content-type", "text/plain"),
    ]);
    let mut e = single(decode(&h, Bytes::from_static(b"hi")).unwrap());
    e.set_extension("num", ExtensionValue::Integer(-7)).unwrap();
    e.set_extension("flag", ExtensionValue::Boolean(true))
        .unwrap();
    e.set_extension(
        "bin",
        ExtensionValue::Binary(Bytes::from_static(&[0, 159, 146])),
    )
    .unwrap();
    let long = "x".repeat(70);
    e.set_extension(&long, ExtensionValue::String("long name".into()))
        .unwrap();
    let (out, body) = encode(&e, Mode::Binary);
    let got: Vec<(&str, &str)> = out
        .iter()
        .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
        .collect();
    let long_header = format!("ce-{long}");
    let want = vec![
        ("ce-specversion", "1.0"),
        ("ce-id", "id%201"),
        ("ce-source", "https://example.com/src"),
        ("ce-type", "com.example.t"),
        ("ce-dataschema", "https://example.com/s.json"),
        ("ce-subject", "Euro%20%E2%82%AC"),
        ("ce-time", "2020-01-01T00:00:00+02:00"),
        ("ce-alpha", "a"),
        ("ce-bin", "AJ+S"),
        ("ce-flag", "true"),
        ("ce-num", "-7"),
        (long_header.as_str(), "long%20name"),
        ("ce-zeta", "100%25"),
        ("content-type", "text/plain"),
    ];
    assert_eq!(got, want);
    assert_eq!(&body[..], b"hi");
}

// --- conformance vectors (ferry-conformance: protocols/conformance/data) ---------------------

use ferry_conformance::{load, Doc};

/// Builds the request the conformance tool sends for a document.
fn request(doc: &Doc) -> (HeaderMap, Bytes) {
    let attrs = doc.attributes();
    let mut h = HeaderMap::new();
    for (k, v) in &doc.transport_extensions {
        h.insert(
            http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    let data = doc.data.clone().unwrap_or_default();
    if doc.mode.as_deref() == Some("structured") {
        let mut obj = serde_json::Map::new();
        for (k, v) in attrs {
            obj.insert(k, serde_json::Value::String(v));
        }
        obj.insert("data".into(), serde_json::from_str(&data).unwrap());
        h.insert(
            "content-type",
            HeaderValue::from_static("application/cloudevents+json; charset=UTF-8"),
        );
        (h, Bytes::from(serde_json::to_vec(&obj).unwrap()))
    } else {
        for (k, v) in attrs {
            let name = if k == "datacontenttype" {
                "content-type".to_owned()
            } else {
                format!("ce-{k}")
            };
            h.insert(
                http::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(&v).unwrap(),
            );
        }
        (h, Bytes::from(data))
    }
}

#[test]
fn conformance_vectors() {
    let mut count = 0;
    for file in ferry_conformance::FILES {
        for doc in load(file) {
            let (h, body) = request(&doc);
            let event = single(decode(&h, body).unwrap_or_else(|err| panic!("{file}: {err}")));
            ferry_conformance::check(&doc, &event);
            // Re-encode in both modes and decode again: nothing changes.
            for mode in [Mode::Binary, Mode::Structured] {
                let (h2, b2) = encode(&event, mode);
                let again = single(decode(&h2, b2).unwrap());
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
