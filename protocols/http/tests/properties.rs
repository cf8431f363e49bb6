//! Property tests of the HTTP binding: arbitrary valid events round-trip exactly in binary,
//! structured and batched mode; arbitrary invalid attribute values are refused with the
//! attribute (and its header) named.

use bytes::Bytes;
use ferry_conformance::arbitrary::{config, event, invalid_attribute, same, Types};
use ferry_core::header_value::encode_value;
use ferry_core::{CloudEvent, Mode};
use ferry_http::{decode, encode, encode_batch, DecodeError, Message};
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use proptest::prelude::*;

fn single(m: Result<Message, DecodeError>) -> Result<CloudEvent, TestCaseError> {
    match m {
        Ok(Message::Event(e)) => Ok(e),
        other => Err(TestCaseError::fail(format!("not one event: {other:?}"))),
    }
}

/// The header an attribute travels in (binary mode).
fn header_of(attribute: &str) -> HeaderName {
    match attribute {
        "datacontenttype" => CONTENT_TYPE,
        name => HeaderName::try_from(format!("ce-{name}")).unwrap(),
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn an_event_round_trips_in_binary_mode(sent in event()) {
        let (headers, body) = encode(&sent, Mode::Binary);
        let back = single(decode(&headers, body.clone()))?;
        same(&sent, &back, Types::Strings).map_err(TestCaseError::fail)?;
        prop_assert_eq!(encode(&back, Mode::Binary), (headers, body), "the encoding is stable");
    }

    #[test]
    fn an_event_round_trips_in_structured_mode(sent in event()) {
        let (headers, body) = encode(&sent, Mode::Structured);
        let back = single(decode(&headers, body))?;
        same(&sent, &back, Types::Json).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn a_batch_round_trips(sent in prop::collection::vec(event(), 0..4)) {
        let (headers, body) = encode_batch(&sent);
        let Ok(Message::Batch(back)) = decode(&headers, body) else {
            return Err(TestCaseError::fail("not a batch"));
        };
        prop_assert_eq!(back.len(), sent.len());
        for (s, b) in sent.iter().zip(&back) {
            same(s, b, Types::Json).map_err(TestCaseError::fail)?;
        }
    }

    #[test]
    fn an_invalid_header_is_refused_by_name(sent in event(), (name, value) in invalid_attribute()) {
        let (mut headers, body) = encode(&sent, Mode::Binary);
        let encoded = if name == "datacontenttype" { value.clone().into() } else { encode_value(&value) };
        headers.insert(header_of(&name), HeaderValue::from_str(&encoded).unwrap());
        match decode(&headers, body) {
            Ok(m) => prop_assert!(false, "{name} = {value:?} was accepted: {m:?}"),
            Err(e) => prop_assert_eq!(e.attribute(), Some(name.as_str()), "{}", e),
        }
    }

    #[test]
    fn an_invalid_member_is_refused_by_name(sent in event(), (name, value) in invalid_attribute()) {
        let (headers, body) = encode(&sent, Mode::Structured);
        let mut members: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&body).unwrap();
        members.insert(name.clone(), serde_json::Value::String(value.clone()));
        match decode(&headers, Bytes::from(serde_json::to_vec(&members).unwrap())) {
            Ok(m) => prop_assert!(false, "{name} = {value:?} was accepted: {m:?}"),
            Err(e) => prop_assert_eq!(e.attribute(), Some(name.as_str()), "{}", e),
        }
    }
}
