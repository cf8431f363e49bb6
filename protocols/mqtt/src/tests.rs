use std::collections::BTreeMap;

use bytes::Bytes;
use ferry_core::{AttributeRef, CloudEvent, Data, EventErrorKind, ExtensionValue};

use super::*;

fn props(content_type: Option<&str>, user: &[(&str, &str)]) -> PublishProperties {
    PublishProperties {
        content_type: content_type.map(str::to_owned),
        user_properties: user
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect(),
        ..PublishProperties::default()
    }
}

const BASE: [(&str, &str); 4] = [
    ("specversion", "1.0"),
    ("id", "1"),
    ("source", "/s"),
    ("type", "com.example.t"),
];

fn with(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    let mut v = BASE.to_vec();
    v.extend_from_slice(extra);
    v
}

const STRUCTURED: &[u8] =
    br#"{"specversion":"1.0","id":"1","source":"/s","type":"com.example.t","data":{"x":1}}"#;

#[test]
fn mode_detection() {
    enum Want {
        Ok(&'static str),
        NotCe,
        Unsupported,
        Invalid(&'static str),
    }
    let binary = with(&[]);
    let cases: Vec<(PublishProperties, &[u8], Want)> = vec![
        // Structured by content type, any case, with parameters.
        (
            props(Some("application/cloudevents+json"), &[]),
            STRUCTURED,
            Want::Ok("1"),
        ),
        (
            props(Some("Application/CloudEvents+JSON; charset=UTF-8"), &[]),
            STRUCTURED,
            Want::Ok("1"),
        ),
        (
            props(Some("application/cloudevents"), &[]),
            STRUCTURED,
            Want::Ok("1"),
        ),
        // The content type wins over user properties.
        (
            props(
                Some("application/cloudevents+json"),
                &[("specversion", "1.0"), ("id", "2")],
            ),
            STRUCTURED,
            Want::Ok("1"),
        ),
        (
            props(Some("application/cloudevents+avro"), &[]),
            STRUCTURED,
            Want::Unsupported,
        ),
        (
            props(Some("application/cloudevents+json"), &[]),
            b"{\"id\":\"1\"}",
            Want::Invalid("specversion"),
        ),
        // Binary by `specversion` user property.
        (
            props(Some("application/json"), &binary),
            b"{}",
            Want::Ok("1"),
        ),
        (props(None, &binary), b"", Want::Ok("1")),
        // No content type, no specversion: a 3.1.1 publisher's structured event.
        (props(None, &[]), STRUCTURED, Want::Ok("1")),
        (
            props(None, &[]),
            b"  {\"specversion\":\"1.0\",\"id\":\"1\"}",
            Want::Invalid("source"),
        ),
        (props(None, &[]), b"{\"temperature\": 21.5}", Want::NotCe),
        (props(None, &[]), b"plain text", Want::NotCe),
        (
            props(Some("application/json"), &[]),
            STRUCTURED,
            Want::NotCe,
        ),
    ];
    for (i, (p, payload, want)) in cases.into_iter().enumerate() {
        let got = decode_v5(Bytes::copy_from_slice(payload), Some(&p));
        match want {
            Want::Ok(id) => assert_eq!(
                got.map(|e| e.id().to_owned()).as_deref(),
                Ok(id),
                "case {i}"
            ),
            Want::NotCe => assert_eq!(got, Err(DecodeError::NotCloudEvent), "case {i}"),
            Want::Unsupported => {
                assert!(
                    matches!(got, Err(DecodeError::UnsupportedFormat(_))),
                    "case {i}"
                )
            }
            Want::Invalid(a) => assert_eq!(got.unwrap_err().attribute(), Some(a), "case {i}"),
        }
    }
    assert_eq!(
        decode_v5(Bytes::from_static(STRUCTURED), None)
            .unwrap()
            .id(),
        "1"
    );
}

#[test]
fn v311_is_structured_only() {
    assert_eq!(decode_v311(STRUCTURED).unwrap().ty(), "com.example.t");
    assert_eq!(decode_v311(b"{\"a\":1}"), Err(DecodeError::NotCloudEvent));
    assert_eq!(decode_v311(b"\x00\x01"), Err(DecodeError::NotCloudEvent));
    assert_eq!(
        decode_v311(br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","time":"noon"}"#)
            .unwrap_err()
            .attribute(),
        Some("time")
    );
}

#[test]
fn binary_decode() {
    let p = props(
        Some("application/json; charset=utf-8"),
        &with(&[
            ("subject", "Euro € 100%"),
            ("time", "2020-01-01T00:00:00Z"),
            ("myext", "\"quoted\""),
            ("Correlation-Id", "abc"),
            ("x_tenant", "acme"),
        ]),
    );
    let e = decode_v5(Bytes::from_static(br#"{"a":1}"#), Some(&p)).unwrap();
    assert_eq!(e.subject(), Some("Euro € 100%"));
    assert_eq!(e.datacontenttype(), Some("application/json; charset=utf-8"));
    assert_eq!(e.attribute("myext"), Some(AttributeRef::Str("\"quoted\"")));
    assert_eq!(e.data().unwrap().as_bytes(), br#"{"a":1}"#);
    assert!(e.extension("x_tenant").is_none());
    let meta = metadata_v5("devices/a/b", Some(&p));
    assert_eq!(meta.get("mqtt.topic"), Some("devices/a/b"));
    assert_eq!(meta.get("header.correlation-id"), Some("abc"));
    assert_eq!(meta.get("header.x_tenant"), Some("acme"));
    assert_eq!(meta.get("header.id"), None);
    assert_eq!(meta.get("header.myext"), None);

    // In structured mode every user property is metadata.
    let p = props(Some("application/cloudevents+json"), &[("tenant", "acme")]);
    assert_eq!(
        metadata_v5("t", Some(&p)).get("header.tenant"),
        Some("acme")
    );
    assert_eq!(metadata_v311("a/b").get("mqtt.topic"), Some("a/b"));
}

#[test]
fn binary_errors_name_the_property() {
    let decode = |user: &[(&str, &str)], ct: Option<&str>| {
        decode_v5(Bytes::new(), Some(&props(ct, user))).unwrap_err()
    };
    let no_id: Vec<_> = BASE.iter().copied().filter(|(n, _)| *n != "id").collect();
    let cases: Vec<(DecodeError, Option<&str>, &str)> = vec![
        (decode(&no_id, None), Some("id"), "id"),
        (
            decode(&with(&[("time", "nope")]), None),
            Some("time"),
            "time",
        ),
        (decode(&with(&[("id", "2")]), None), Some("id"), "id"),
        (
            decode(&with(&[("dataschema", "rel")]), None),
            Some("dataschema"),
            "dataschema",
        ),
        (
            decode(&with(&[]), Some("nonsense")),
            None,
            "datacontenttype",
        ),
        (
            decode(&[("specversion", "0.1"), ("id", "1")], None),
            Some("specversion"),
            "specversion",
        ),
    ];
    for (err, property, attribute) in cases {
        match &err {
            DecodeError::Invalid { property: p, error } => {
                assert_eq!(p.as_deref(), property, "{err}");
                assert_eq!(error.attribute.as_deref(), Some(attribute), "{err}");
            }
            other => panic!("{other:?}"),
        }
    }
    let dup = decode(&with(&[("type", "again")]), None);
    assert!(
        matches!(dup, DecodeError::Invalid { ref error, .. } if error.kind == EventErrorKind::Duplicate)
    );
    assert!(dup.to_string().contains("user property `type`"), "{dup}");
}

#[test]
fn datacontenttype_user_property_is_tolerated() {
    let p = props(None, &with(&[("datacontenttype", "text/plain")]));
    let e = decode_v5(Bytes::from_static(b"hi"), Some(&p)).unwrap();
    assert_eq!(e.datacontenttype(), Some("text/plain"));
    // The Content Type property wins when both are present.
    let p = props(
        Some("application/xml"),
        &with(&[("datacontenttype", "text/plain")]),
    );
    let e = decode_v5(Bytes::from_static(b"<a/>"), Some(&p)).unwrap();
    assert_eq!(e.datacontenttype(), Some("application/xml"));
}

fn sample() -> CloudEvent {
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
    e
}

#[test]
fn encode_binary() {
    let e = sample();
    let (payload, p) = encode_v5(&e, Mode::Binary);
    assert_eq!(&payload[..], &[0, 159, 146, 150]);
    assert_eq!(p.content_type.as_deref(), Some("application/octet-stream"));
    let user: BTreeMap<&str, &str> = p
        .user_properties
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    assert_eq!(user["specversion"], "1.0");
    assert_eq!(user["id"], "id 1");
    assert_eq!(user["ext"], "Euro € \"q\" 100%");
    assert_eq!(user["num"], "-7");
    assert_eq!(user["flag"], "true");
    assert!(!user.contains_key("datacontenttype"));
    let back = decode_v5(payload, Some(&p)).unwrap();
    assert_eq!(back.attribute("ext"), e.attribute("ext"));
    // User properties carry strings: typed extensions come back as their canonical string.
    assert_eq!(back.attribute("num"), Some(AttributeRef::Str("-7")));
    assert_eq!(
        back.data().unwrap().as_bytes(),
        e.data().unwrap().as_bytes()
    );

    // JSON data without a content type gets an explicit application/json.
    let mut j = CloudEvent::new("2", "/s", "t").unwrap();
    j.set_data(None, Some(Data::json(r#"{"k": "v"}"#).unwrap()))
        .unwrap();
    let (payload, p) = encode_v5(&j, Mode::Binary);
    assert_eq!(p.content_type.as_deref(), Some("application/json"));
    assert_eq!(&payload[..], br#"{"k": "v"}"#);
}

#[test]
fn encode_structured() {
    let e = sample();
    let (payload, p) = encode_v5(&e, Mode::Structured);
    assert_eq!(p.content_type.as_deref(), Some(STRUCTURED_CONTENT_TYPE));
    assert!(p.user_properties.is_empty());
    assert_eq!(decode_v5(payload.clone(), Some(&p)).unwrap(), e);
    assert_eq!(encode_v311(&e), payload);
    assert_eq!(decode_v311(&payload).unwrap(), e);
}

// --- conformance vectors (ferry-conformance: protocols/conformance/data) ---------------------

use ferry_conformance::{load, Doc};

/// Builds the MQTT 5 message a publisher would send for a document.
fn message(doc: &Doc) -> (Bytes, PublishProperties) {
    let data = doc.data.clone().unwrap_or_default();
    if doc.mode.as_deref() == Some("structured") {
        let mut obj = serde_json::Map::new();
        for (k, v) in doc.attributes() {
            obj.insert(k, serde_json::Value::String(v));
        }
        obj.insert("data".into(), serde_json::from_str(&data).unwrap());
        (
            Bytes::from(serde_json::to_vec(&obj).unwrap()),
            props(Some("application/cloudevents+json; charset=UTF-8"), &[]),
        )
    } else {
        let mut p = PublishProperties::default();
        for (k, v) in doc.attributes() {
            if k == "datacontenttype" {
                p.content_type = Some(v);
            } else {
                p.user_properties.push((k, v));
            }
        }
        (Bytes::from(data), p)
    }
}

fn data_bytes(e: &CloudEvent) -> Vec<u8> {
    e.data().map(|d| d.as_bytes().to_vec()).unwrap_or_default()
}

#[test]
fn conformance_vectors() {
    let mut count = 0;
    for file in ferry_conformance::FILES {
        for doc in load(file) {
            let (payload, p) = message(&doc);
            let event = decode_v5(payload, Some(&p)).unwrap_or_else(|err| panic!("{file}: {err}"));
            ferry_conformance::check(&doc, &event);
            // Re-encode in both MQTT 5 modes and as 3.1.1, decode again: nothing changes.
            let mut again = Vec::new();
            for mode in [Mode::Binary, Mode::Structured] {
                let (payload, p) = encode_v5(&event, mode);
                again.push((format!("{mode:?}"), decode_v5(payload, Some(&p)).unwrap()));
            }
            again.push(("3.1.1".into(), decode_v311(&encode_v311(&event)).unwrap()));
            for (how, back) in again {
                assert_eq!(back.id(), event.id());
                assert_eq!(back.time(), event.time(), "{file} {how}");
                assert_eq!(
                    back.effective_content_type(),
                    event.effective_content_type()
                );
                if event
                    .effective_content_type()
                    .is_some_and(ferry_core::validate::is_json_media_type)
                {
                    let a: serde_json::Value = serde_json::from_slice(&data_bytes(&back)).unwrap();
                    let b: serde_json::Value = serde_json::from_slice(&data_bytes(&event)).unwrap();
                    assert_eq!(a, b, "{file} {how}");
                } else {
                    assert_eq!(data_bytes(&back), data_bytes(&event), "{file} {how}");
                }
            }
            count += 1;
        }
    }
    assert_eq!(count, 15);
}
