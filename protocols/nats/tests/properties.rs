//! Property tests of the NATS binding: arbitrary valid events round-trip exactly in binary
//! mode (headers) and structured mode, with and without a `Content-Type` header; arbitrary
//! invalid attribute values are refused with the attribute named.

use bytes::Bytes;
use ferry_conformance::arbitrary::{config, event, invalid_attribute, same, Types};
use ferry_core::header_value::encode_value;
use ferry_core::Mode;
use ferry_nats::{decode, encode};
use proptest::prelude::*;

fn fail(e: impl std::fmt::Display) -> TestCaseError {
    TestCaseError::fail(e.to_string())
}

/// Header names and values in order (the map's own order is a hash order).
fn sorted(headers: &async_nats::HeaderMap) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = headers
        .iter()
        .map(|(n, vs)| {
            (
                n.to_string(),
                vs.iter().map(|v| v.as_str().to_owned()).collect(),
            )
        })
        .collect();
    out.sort();
    out
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn an_event_round_trips_in_binary_mode(sent in event()) {
        let (headers, payload) = encode(&sent, Mode::Binary);
        let back = decode(Some(&headers), payload.clone()).map_err(fail)?;
        same(&sent, &back, Types::Strings).map_err(TestCaseError::fail)?;
        let (h2, p2) = encode(&back, Mode::Binary);
        prop_assert_eq!(sorted(&h2), sorted(&headers), "the headers are stable");
        prop_assert_eq!(p2, payload, "the payload is stable");
    }

    #[test]
    fn an_event_round_trips_in_structured_mode(sent in event()) {
        let (headers, payload) = encode(&sent, Mode::Structured);
        let back = decode(Some(&headers), payload.clone()).map_err(fail)?;
        same(&sent, &back, Types::Json).map_err(TestCaseError::fail)?;
        // A header-less message holding a JSON event reads the same.
        let bare = decode(None, payload).map_err(fail)?;
        same(&sent, &bare, Types::Json).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn an_invalid_header_is_refused_by_name(sent in event(), (name, value) in invalid_attribute()) {
        let (mut headers, payload) = encode(&sent, Mode::Binary);
        headers.insert(format!("ce-{name}").as_str(), encode_value(&value).as_ref());
        match decode(Some(&headers), payload) {
            Ok(e) => prop_assert!(false, "{name} = {value:?} was accepted: {e:?}"),
            Err(e) => prop_assert_eq!(e.attribute(), Some(name.as_str()), "{}", e),
        }
    }

    #[test]
    fn an_invalid_member_is_refused_by_name(sent in event(), (name, value) in invalid_attribute()) {
        let (headers, payload) = encode(&sent, Mode::Structured);
        let mut members: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&payload).unwrap();
        members.insert(name.clone(), serde_json::Value::String(value.clone()));
        let payload = Bytes::from(serde_json::to_vec(&members).unwrap());
        for result in [decode(Some(&headers), payload.clone()), decode(None, payload.clone())] {
            match result {
                Ok(e) => prop_assert!(false, "{name} = {value:?} was accepted: {e:?}"),
                Err(e) => prop_assert_eq!(e.attribute(), Some(name.as_str()), "{}", e),
            }
        }
    }
}
