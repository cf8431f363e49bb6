//! Arbitrary CloudEvents for the bindings' property tests (`proptest`): valid events of every
//! shape a binding must carry, invalid attribute values a binding must refuse, and the
//! comparison that says whether an event survived a round trip.
//!
//! Valid events hold every attribute type (String, URI, URI-reference, Timestamp, Integer,
//! Boolean, Binary extensions), JSON, text and binary data, non-ASCII text and edge-case
//! timestamps (leap days, the first and last representable years, nanoseconds, lowercase
//! `t`/`z`, far offsets).

use std::collections::BTreeMap;

use bytes::Bytes;
use ferry_core::{CloudEvent, Data, EventBuilder, ExtensionValue, Timestamp};
use proptest::prelude::*;

/// The configuration of every property test: `PROPTEST_CASES` cases (256 unless set), no
/// regression files (a case that fails becomes a named test in the crate's suite instead).
pub fn config() -> ProptestConfig {
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Characters for String values: printable ASCII (the space, `"` and `%` a header binding
/// must escape among them) and non-ASCII from several planes.
fn text_char() -> impl Strategy<Value = char> {
    prop_oneof![
        6 => proptest::char::range(' ', '~'),
        1 => prop::sample::select(vec!['é', 'ß', '\u{a0}', 'Ж', 'ع', '中', '€', '\u{2028}', '🎉', '\u{10fffd}']),
    ]
}

/// A String value (never empty, so it can stand for `id`, `type` and `subject`).
pub fn text() -> impl Strategy<Value = String> {
    prop::collection::vec(text_char(), 1..24).prop_map(|cs| cs.into_iter().collect())
}

fn path_segment() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9._~-]{1,8}",
        // Percent-encoded UTF-8 is how a URI carries non-ASCII.
        Just("caf%C3%A9".to_owned()),
        Just("%E4%B8%AD".to_owned()),
        "[A-Z][a-z]{0,4}",
    ]
}

/// An absolute URI (RFC 3986 §4.3).
pub fn uri() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec!["https", "http", "urn", "mqtt", "tag"]),
        prop::collection::vec(path_segment(), 1..4),
        prop::option::of("[a-z]{1,4}=[a-z0-9]{0,4}"),
    )
        .prop_map(|(scheme, segments, query)| {
            let mut s = match scheme {
                "urn" | "tag" => format!("{scheme}:{}", segments.join(":")),
                _ => format!("{scheme}://example.com/{}", segments.join("/")),
            };
            if let Some(q) = query {
                s.push('?');
                s.push_str(&q);
            }
            s
        })
}

/// A URI-reference (RFC 3986 §4.1): absolute, or an absolute or relative path.
pub fn uri_reference() -> impl Strategy<Value = String> {
    prop_oneof![
        uri(),
        prop::collection::vec(path_segment(), 1..4).prop_map(|s| format!("/{}", s.join("/"))),
        prop::collection::vec(path_segment(), 1..3).prop_map(|s| s.join("/")),
    ]
}

/// Timestamps at the edges of RFC 3339 that every binding must carry unchanged.
pub const EDGE_TIMESTAMPS: [&str; 10] = [
    "1970-01-01T00:00:00Z",
    "0000-01-01T00:00:00Z",
    "9999-12-31T23:59:59.999999999Z",
    "2024-02-29T12:00:00+14:00",
    "2023-12-31T23:59:59-12:00",
    "2018-04-05T17:31:00.000000001Z",
    "2018-04-05t17:31:00z",
    "2018-04-05T17:31:00-00:00",
    "1985-04-12T23:20:50.52+05:45",
    "2016-12-31T23:59:60Z",
];

/// An RFC 3339 timestamp, edge cases included.
pub fn timestamp() -> impl Strategy<Value = Timestamp> {
    let edge = prop::sample::select(EDGE_TIMESTAMPS.to_vec()).prop_map(str::to_owned);
    let generated = (
        0u32..10_000,
        1u32..=12,
        1u32..=28,
        0u32..24,
        0u32..60,
        0u32..60,
        prop::option::of("[0-9]{1,9}"),
        prop_oneof![
            Just("Z".to_owned()),
            (0u32..24, 0u32..60, any::<bool>())
                .prop_map(|(h, m, neg)| format!("{}{h:02}:{m:02}", if neg { '-' } else { '+' })),
        ],
    )
        .prop_map(|(y, mo, d, h, mi, s, frac, off)| {
            let frac = frac.map(|f| format!(".{f}")).unwrap_or_default();
            format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{frac}{off}")
        });
    prop_oneof![edge, generated].prop_filter_map("an RFC 3339 timestamp the model accepts", |t| {
        Timestamp::parse(&t).ok()
    })
}

/// An extension name: lowercase letters and digits, not a core attribute.
pub fn extension_name() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9]{0,11}".prop_filter("not a core attribute name", |n| {
        !matches!(
            n.as_str(),
            "id" | "source"
                | "specversion"
                | "type"
                | "datacontenttype"
                | "dataschema"
                | "subject"
                | "time"
                | "data"
                // 0.3 names a reader upgrades.
                | "schemaurl"
                | "datacontentencoding"
        )
    })
}

/// An extension value of any CloudEvents type.
pub fn extension_value() -> impl Strategy<Value = ExtensionValue> {
    prop_oneof![
        text().prop_map(ExtensionValue::String),
        any::<i32>().prop_map(ExtensionValue::Integer),
        any::<bool>().prop_map(ExtensionValue::Boolean),
        uri().prop_map(ExtensionValue::Uri),
        uri_reference().prop_map(ExtensionValue::UriRef),
        timestamp().prop_map(ExtensionValue::Timestamp),
        prop::collection::vec(any::<u8>(), 0..24)
            .prop_map(|b| ExtensionValue::Binary(Bytes::from(b))),
    ]
}

/// A JSON value as compact text, strings with non-ASCII and escapes.
pub fn json_text() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(serde_json::Value::from),
        (-1.0e12f64..1.0e12).prop_map(serde_json::Value::from),
        prop::collection::vec(
            prop_oneof![text_char(), Just('\n'), Just('"'), Just('\\')],
            0..16
        )
        .prop_map(|cs| serde_json::Value::String(cs.into_iter().collect())),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            prop::collection::btree_map("[a-zé]{0,6}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
    .prop_map(|v| v.to_string())
}

/// A `datacontenttype` and data that fit together, as a binding can carry them.
pub fn content() -> impl Strategy<Value = (Option<String>, Option<Data>)> {
    let json_type = prop::sample::select(vec![
        "application/json",
        "application/vnd.example.order+json",
        "application/json; charset=utf-8",
        "text/json",
        "text/vnd.example+json",
    ]);
    let text_type = prop::sample::select(vec![
        "text/plain",
        "text/plain; charset=utf-8",
        "application/xml",
        "text/csv; header=present",
    ]);
    // The last is longer than an AMQP 0-9-1 `content-type` property (a short string) holds.
    let long: &'static str = Box::leak(
        format!("application/octet-stream; comment=\"{}\"", "x".repeat(300)).into_boxed_str(),
    );
    let bytes_type = prop::sample::select(vec![
        "application/octet-stream",
        "image/png",
        "application/vnd.example+protobuf",
        long,
    ]);
    let bytes = || prop::collection::vec(any::<u8>(), 0..64).prop_map(Bytes::from);
    let json = || json_text().prop_map(|t| Data::json(&t).expect("generated JSON parses"));
    prop_oneof![
        Just((None, None)),
        json_type.clone().prop_map(|t| (Some(t.to_owned()), None)),
        (json_type, json()).prop_map(|(t, d)| (Some(t.to_owned()), Some(d))),
        json().prop_map(|d| (None, Some(d))),
        (text_type, prop::collection::vec(text_char(), 0..40)).prop_map(|(t, cs)| (
            Some(t.to_owned()),
            Some(Data::Text(cs.into_iter().collect()))
        )),
        (bytes_type, bytes()).prop_map(|(t, b)| (Some(t.to_owned()), Some(Data::Binary(b)))),
        bytes().prop_map(|b| (None, Some(Data::Binary(b)))),
    ]
}

/// A valid CloudEvents 1.0 event of any shape.
pub fn event() -> impl Strategy<Value = CloudEvent> {
    (
        (text(), uri_reference(), text()),
        (
            prop::option::of(text()),
            prop::option::of(timestamp()),
            prop::option::of(uri()),
        ),
        prop::collection::btree_map(extension_name(), extension_value(), 0..6),
        content(),
    )
        .prop_map(
            |((id, source, ty), (subject, time, dataschema), extensions, (ct, data))| {
                let mut b = EventBuilder::new()
                    .specversion("1.0")
                    .id(id)
                    .source(source)
                    .ty(ty);
                if let Some(s) = subject {
                    b = b.subject(s);
                }
                if let Some(t) = time {
                    b = b.time(t.as_str());
                }
                if let Some(s) = dataschema {
                    b = b.dataschema(s);
                }
                if let Some(ct) = ct {
                    b = b.datacontenttype(ct);
                }
                if let Some(d) = data {
                    b = b.data(d);
                }
                for (name, value) in extensions {
                    b = b.extension(name, value);
                }
                b.build().expect("the generated event is valid")
            },
        )
}

/// An attribute set to a value the CloudEvents type system refuses: `(attribute, value)`. Every
/// value is text a binding can carry (a header or a JSON string), so the binding's decoder is
/// what must refuse it, naming the attribute.
pub fn invalid_attribute() -> impl Strategy<Value = (String, String)> {
    let with_control = || {
        let control = prop::sample::select(vec![
            '\u{0}', '\u{1}', '\u{1f}', '\u{7f}', '\u{85}', '\u{9f}',
        ]);
        (text(), control, text()).prop_map(|(a, c, b)| format!("{a}{c}{b}"))
    };
    let nonchar = prop::sample::select(vec!['\u{fdd0}', '\u{fffe}', '\u{1ffff}']);
    let with_nonchar = (text(), nonchar).prop_map(|(a, c)| format!("{a}{c}"));
    let bad_time = prop::sample::select(vec![
        "2024-13-01T00:00:00Z",
        "2023-02-29T00:00:00Z",
        "2024-01-01 00:00:00Z",
        "2024-01-01T25:00:00Z",
        "2024-01-01T00:00:00",
        "yesterday",
        "2024-01-01T00:00:00+24:00",
    ]);
    let not_uri_ref = prop::sample::select(vec!["a b", "%zz", "http://[::1", "<x>", "a\\b"]);
    let not_absolute = prop::sample::select(vec!["/relative/path", "relative", "a b", "#frag"]);
    let not_media_type =
        prop::sample::select(vec!["json", "text/", "/plain", "text/plain/x", "a b/c"]);
    prop_oneof![
        Just(("id".to_owned(), String::new())),
        Just(("type".to_owned(), String::new())),
        Just(("subject".to_owned(), String::new())),
        with_control().prop_map(|v| ("id".to_owned(), v)),
        with_control().prop_map(|v| ("type".to_owned(), v)),
        with_control().prop_map(|v| ("subject".to_owned(), v)),
        with_nonchar.prop_map(|v| ("type".to_owned(), v)),
        Just(("source".to_owned(), String::new())),
        not_uri_ref.prop_map(|v| ("source".to_owned(), v.to_owned())),
        not_absolute.prop_map(|v| ("dataschema".to_owned(), v.to_owned())),
        bad_time.prop_map(|v| ("time".to_owned(), v.to_owned())),
        not_media_type.prop_map(|v| ("datacontenttype".to_owned(), v.to_owned())),
        prop::sample::select(vec!["2.0", "1", "0.2", "1.0.0"])
            .prop_map(|v| ("specversion".to_owned(), v.to_owned())),
    ]
}

/// How a binding carries an event, which decides what "the same" means after a round trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Types {
    /// The JSON format (structured mode): Integer and Boolean extensions keep their type, the
    /// others become strings; empty data stays data.
    Json,
    /// Binary mode over string headers (HTTP, MQTT 5, NATS): every extension becomes its
    /// canonical string, and an empty body is no data (the binding cannot tell them apart).
    Strings,
    /// Binary mode over typed headers (AMQP 0-9-1 field tables): Integer, Boolean and Binary
    /// keep their type, the others become strings; an empty body is no data.
    Typed,
}

/// Whether `back` (read from what a binding wrote for `sent`) is the same event.
///
/// "The same" is what the bindings promise: every attribute's canonical string; the effective
/// content type (binary mode states the `application/json` structured mode implies); the data
/// bytes; and, where the binding keeps them, the extension types (see [`Types`]).
pub fn same(sent: &CloudEvent, back: &CloudEvent, types: Types) -> Result<(), String> {
    let core = |e: &CloudEvent| {
        (
            e.id().to_owned(),
            e.source().to_owned(),
            e.ty().to_owned(),
            e.subject().map(str::to_owned),
            e.time().map(|t| t.as_str().to_owned()),
            e.dataschema().map(str::to_owned),
            e.effective_content_type().map(str::to_owned),
        )
    };
    if core(sent) != core(back) {
        return Err(format!(
            "context attributes differ:\n sent {:?}\n back {:?}",
            core(sent),
            core(back)
        ));
    }
    let canonical = |e: &CloudEvent| -> BTreeMap<String, String> {
        e.extensions()
            .iter()
            .map(|(k, v)| (k.clone(), v.to_canonical_string()))
            .collect()
    };
    if canonical(sent) != canonical(back) {
        return Err(format!(
            "extensions differ:\n sent {:?}\n back {:?}",
            canonical(sent),
            canonical(back)
        ));
    }
    if types != Types::Strings {
        for (name, value) in sent.extensions() {
            let kept = match value {
                ExtensionValue::Integer(_) | ExtensionValue::Boolean(_) => true,
                ExtensionValue::Binary(_) => types == Types::Typed,
                _ => false,
            };
            if kept && back.extension(name) != Some(value) {
                return Err(format!(
                    "extension {name} was {value:?}, read back as {:?}",
                    back.extension(name)
                ));
            }
        }
    }
    let data = |e: &CloudEvent| {
        e.data()
            .map(|d| d.as_bytes().to_vec())
            .filter(|d| types == Types::Json || !d.is_empty())
    };
    if data(sent) != data(back) {
        return Err(format!(
            "data differs:\n sent {:?}\n back {:?}",
            sent.data(),
            back.data()
        ));
    }
    Ok(())
}
