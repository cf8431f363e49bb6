//! Property tests of the JSON event format: arbitrary valid events round-trip exactly, alone
//! and in a batch; arbitrary invalid attribute values are refused with the attribute named.

use ferry_conformance::arbitrary::{config, event, invalid_attribute, same, Types};
use ferry_core::json;
use proptest::prelude::*;

/// The event's JSON object with one member set to a string value.
fn with_member(event: &ferry_core::CloudEvent, name: &str, value: &str) -> Vec<u8> {
    let mut members: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&json::encode(event)).unwrap();
    members.insert(name.to_owned(), serde_json::Value::String(value.to_owned()));
    serde_json::to_vec(&members).unwrap()
}

/// Every edge-case timestamp the generator uses is one the model accepts (so none is silently
/// filtered out), and keeps its text.
#[test]
fn edge_case_timestamps_are_accepted_as_written() {
    for t in ferry_conformance::arbitrary::EDGE_TIMESTAMPS {
        let parsed = ferry_core::Timestamp::parse(t).unwrap_or_else(|e| panic!("{t}: {e}"));
        assert_eq!(parsed.as_str(), t);
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn an_event_round_trips(sent in event()) {
        let encoded = json::encode(&sent);
        let back = json::decode(&encoded).map_err(|e| TestCaseError::fail(format!("{e}: {}", String::from_utf8_lossy(&encoded))))?;
        same(&sent, &back, Types::Json).map_err(TestCaseError::fail)?;
        prop_assert_eq!(json::encode(&back), encoded, "the encoding is stable");
    }

    #[test]
    fn a_batch_round_trips(sent in prop::collection::vec(event(), 0..4)) {
        let encoded = json::encode_batch(&sent);
        let back = json::decode_batch(&encoded).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        prop_assert_eq!(back.len(), sent.len());
        for (s, b) in sent.iter().zip(&back) {
            same(s, b, Types::Json).map_err(TestCaseError::fail)?;
        }
    }

    #[test]
    fn an_invalid_attribute_is_refused_by_name(sent in event(), (name, value) in invalid_attribute()) {
        let body = with_member(&sent, &name, &value);
        match json::decode(&body) {
            Ok(e) => prop_assert!(false, "{name} = {value:?} was accepted: {e:?}"),
            Err(e) => prop_assert_eq!(e.attribute.as_deref(), Some(name.as_str()), "{}", e),
        }
    }
}
