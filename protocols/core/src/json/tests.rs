use super::*;
use crate::event::{AttributeRef, Timestamp};

fn err(input: &str) -> EventError {
    decode(input.as_bytes()).expect_err(input)
}

#[test]
fn minimal_round_trip() {
    let input = r#"{"specversion":"1.0","id":"1","source":"/s","type":"t"}"#;
    let event = decode(input.as_bytes()).unwrap();
    assert_eq!(String::from_utf8(encode(&event)).unwrap(), input);
}

#[test]
fn full_event_round_trips_exactly() {
    let input = r#"{"specversion":"1.0","id":"A234-1234-1234","source":"https://github.com/cloudevents/spec/pull","type":"com.github.pull_request.opened","datacontenttype":"application/json","dataschema":"https://example.com/s.json","subject":"123","time":"2018-04-05T17:31:00+02:00","comexampleextension1":"value","count":42,"flag":true,"data":{ "b": [1, 2.5, "x"],  "a": null }}"#;
    let event = decode(input.as_bytes()).unwrap();
    assert_eq!(event.attribute("count"), Some(AttributeRef::Integer(42)));
    assert_eq!(event.attribute("flag"), Some(AttributeRef::Boolean(true)));
    assert_eq!(event.time().unwrap().as_str(), "2018-04-05T17:31:00+02:00");
    let out = String::from_utf8(encode(&event)).unwrap();
    // Extensions are written in name order; data is verbatim, whitespace included.
    assert!(
        out.ends_with(r#""data":{ "b": [1, 2.5, "x"],  "a": null }}"#),
        "{out}"
    );
    assert_eq!(decode(out.as_bytes()).unwrap(), event);
}

#[test]
fn data_forms() {
    // JSON string data under a JSON type stays JSON text (with quotes).
    let e = decode(
        br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":"I'm just a string"}"#,
    )
    .unwrap();
    assert_eq!(e.data().unwrap().as_bytes(), br#""I'm just a string""#);
    // Text under a non-JSON type is the string's content.
    let e = decode(br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","datacontenttype":"text/xml","data":"<a/>"}"#).unwrap();
    assert_eq!(e.data().unwrap(), &Data::Text("<a/>".into()));
    // Base64 becomes bytes; no content type is invented.
    let e = decode(
        br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data_base64":"AAEC/w=="}"#,
    )
    .unwrap();
    assert_eq!(e.data().unwrap().as_bytes(), &[0, 1, 2, 255]);
    assert_eq!(e.datacontenttype(), None);
    let out = String::from_utf8(encode(&e)).unwrap();
    assert!(out.contains(r#""data_base64":"AAEC/w==""#), "{out}");
    assert!(!out.contains("datacontenttype"));
    // Explicit null data is kept as JSON null.
    let e =
        decode(br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":null}"#).unwrap();
    assert_eq!(e.data().unwrap().as_bytes(), b"null");
}

#[test]
fn binary_data_encodes_by_content_type() {
    let mk = |ct: Option<&str>, bytes: &[u8]| {
        let mut e = CloudEvent::new("1", "/s", "t").unwrap();
        e.set_data(
            ct.map(str::to_owned),
            Some(Data::Binary(Bytes::copy_from_slice(bytes))),
        )
        .unwrap();
        String::from_utf8(encode(&e)).unwrap()
    };
    assert!(mk(Some("application/json"), br#"{"a":1}"#).ends_with(r#""data":{"a":1}}"#));
    assert!(mk(Some("application/json"), b"{broken").contains("data_base64"));
    assert!(mk(Some("text/plain"), "h\u{e9}llo".as_bytes()).ends_with("\"data\":\"h\u{e9}llo\"}"));
    assert!(mk(Some("text/plain"), &[0xff, 0xfe]).contains("data_base64"));
    assert!(mk(Some("application/octet-stream"), b"abc").contains(r#""data_base64":"YWJj""#));
    assert!(mk(None, b"{}").contains("data_base64"));
}

#[test]
fn validation_errors_name_the_attribute() {
    let cases: &[(&str, &str, EventErrorKind)] = &[
        (
            r#"{"specversion":"1.0","source":"/s","type":"t"}"#,
            "id",
            EventErrorKind::Missing,
        ),
        (
            r#"{"specversion":"1.0","id":"","source":"/s","type":"t"}"#,
            "id",
            EventErrorKind::Empty,
        ),
        (
            r#"{"id":"1","source":"/s","type":"t"}"#,
            "specversion",
            EventErrorKind::Missing,
        ),
        (
            r#"{"specversion":"2.0","id":"1","source":"/s","type":"t"}"#,
            "specversion",
            EventErrorKind::Unsupported,
        ),
        (
            r#"{"specversion":"1.0","id":"1","source":"a b","type":"t"}"#,
            "source",
            EventErrorKind::Invalid,
        ),
        (
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","time":"yesterday"}"#,
            "time",
            EventErrorKind::Invalid,
        ),
        (
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","dataschema":"/rel"}"#,
            "dataschema",
            EventErrorKind::Invalid,
        ),
        (
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","subject":""}"#,
            "subject",
            EventErrorKind::Empty,
        ),
        (
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","Bad-Name":"x"}"#,
            "Bad-Name",
            EventErrorKind::InvalidName,
        ),
        (
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","big":2147483648}"#,
            "big",
            EventErrorKind::Invalid,
        ),
        (
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","frac":1.5}"#,
            "frac",
            EventErrorKind::Invalid,
        ),
        (
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","obj":{"a":1}}"#,
            "obj",
            EventErrorKind::Invalid,
        ),
        (
            r#"{"specversion":"1.0","id":5,"source":"/s","type":"t"}"#,
            "id",
            EventErrorKind::Invalid,
        ),
        (
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":1,"data_base64":"AA=="}"#,
            "data_base64",
            EventErrorKind::Duplicate,
        ),
        (
            r#"{"specversion":"1.0","id":"1","id":"2","source":"/s","type":"t"}"#,
            "id",
            EventErrorKind::Duplicate,
        ),
        (
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","datacontenttype":"text/plain","data":{"a":1}}"#,
            "data",
            EventErrorKind::Invalid,
        ),
        (
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data_base64":"!!"}"#,
            "data_base64",
            EventErrorKind::Malformed,
        ),
        (
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"a\u0001"}"#,
            "type",
            EventErrorKind::Invalid,
        ),
    ];
    for (input, attribute, kind) in cases {
        let e = err(input);
        assert_eq!(e.attribute.as_deref(), Some(*attribute), "{input}: {e}");
        assert_eq!(e.kind, *kind, "{input}: {e}");
    }
    assert!(err("{not json").attribute.is_none());
    assert_eq!(err("[]").kind, EventErrorKind::Malformed);
    assert_eq!(
        err(r#"{"specversion":"1.0","id":"1","source":"/s","type":"t"} x"#).kind,
        EventErrorKind::Malformed
    );
}

#[test]
fn int_range_edges() {
    let ok = decode(br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","lo":-2147483648,"hi":2147483647}"#).unwrap();
    assert_eq!(ok.attribute("lo"), Some(AttributeRef::Integer(i32::MIN)));
    assert_eq!(ok.attribute("hi"), Some(AttributeRef::Integer(i32::MAX)));
}

#[test]
fn null_attributes_are_absent() {
    let e = decode(
        br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","subject":null,"ext":null}"#,
    )
    .unwrap();
    assert_eq!(e.subject(), None);
    assert!(e.extensions().is_empty());
}

#[test]
fn legacy_03_is_upgraded() {
    let e = decode(br#"{"specversion":"0.3","id":"1","source":"/s","type":"t","schemaurl":"https://example.com/schema","datacontentencoding":"base64","datacontenttype":"application/octet-stream","data":"AAE="}"#).unwrap();
    assert_eq!(e.specversion(), "1.0");
    assert_eq!(e.dataschema(), Some("https://example.com/schema"));
    assert_eq!(e.data().unwrap().as_bytes(), &[0, 1]);
    let out = String::from_utf8(encode(&e)).unwrap();
    assert!(out.starts_with(r#"{"specversion":"1.0""#));
}

/// Found by `scripts/fuzz` (http_binary): a relative 0.3 `schemaurl` became a 1.0
/// `dataschema` that is not an absolute URI, which Ferry wrote and then refused to read.
#[test]
fn fuzz_a_relative_03_schemaurl_is_refused() {
    let e =
        decode(br#"{"specversion":"0.3","id":"1","source":"/s","type":"t","schemaurl":"/schema"}"#)
            .unwrap_err();
    assert_eq!(e.attribute.as_deref(), Some("dataschema"));
    assert!(e.message.contains("upgraded to 1.0"), "{e}");
}

/// Found by the property tests (`tests/properties.rs`): an invalid `datacontenttype` with
/// JSON data was reported as a problem with `data`, not with the attribute that is wrong.
#[test]
fn property_an_invalid_datacontenttype_is_named_not_the_data() {
    let e = err(
        r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","datacontenttype":"json","data":false}"#,
    );
    assert_eq!(e.attribute.as_deref(), Some("datacontenttype"), "{e}");
}

/// Found by the property tests: `time` with a space between date and time was accepted (the
/// `time` crate allows it), and written on to receivers whose RFC 3339 parsers refuse it.
/// RFC 3339's grammar (§5.6) says `T` (or `t`).
#[test]
fn property_a_time_with_a_space_for_the_t_is_refused() {
    let e = err(
        r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","time":"2024-01-01 00:00:00Z"}"#,
    );
    assert_eq!(e.attribute.as_deref(), Some("time"), "{e}");
    assert!(Timestamp::parse("2024-01-01t00:00:00z").is_ok());
}

/// Found by `scripts/fuzz` (http_binary): bytes that are not JSON under a media type that is
/// both textual and JSON (`text/x+json`) were written as a `data` string, which a reader takes
/// as the JSON text of a string: the payload came back quoted.
#[test]
fn fuzz_non_json_bytes_under_a_text_json_media_type_keep_their_bytes() {
    let mut event = CloudEvent::new("1", "/s", "t").unwrap();
    event
        .set_data(
            Some("text/plain+json".into()),
            Some(Data::Binary(Bytes::from_static(b"not json"))),
        )
        .unwrap();
    let out = encode(&event);
    let back = decode(&out).unwrap();
    assert_eq!(
        back.data().unwrap().as_bytes(),
        b"not json",
        "{}",
        String::from_utf8_lossy(&out)
    );
}

#[test]
fn batches() {
    let events = decode_batch(br#"[{"specversion":"1.0","id":"1","source":"/s","type":"t"},{"specversion":"1.0","id":"2","source":"/s","type":"t","data":[1]}]"#).unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(decode_batch(b"[]").unwrap().len(), 0);
    let out = encode_batch(&events);
    assert_eq!(decode_batch(&out).unwrap(), events);
    let e = decode_batch(br#"[{"specversion":"1.0","id":"1","source":"/s","type":"t"},{"specversion":"1.0","source":"/s","type":"t"}]"#).unwrap_err();
    assert_eq!(e.index, Some(1));
    assert_eq!(e.error.attribute.as_deref(), Some("id"));
    assert_eq!(decode_batch(b"{}").unwrap_err().index, None);
}

#[test]
fn formats_from_content_types() {
    for (content_type, want) in [
        ("application/cloudevents+json", Format::Structured),
        (
            "Application/CloudEvents+JSON; charset=utf-8",
            Format::Structured,
        ),
        ("application/cloudevents", Format::Structured),
        (" application/cloudevents-batch+json ;x=1", Format::Batch),
        ("application/cloudevents+avro", Format::Unsupported),
        ("application/cloudevents-batch+avro", Format::Unsupported),
        ("application/cloudeventsx", Format::Unsupported),
        ("application/json", Format::None),
        ("text/plain; charset=application/cloudevents", Format::None),
        ("", Format::None),
    ] {
        assert_eq!(format(content_type), want, "{content_type:?}");
    }
}
