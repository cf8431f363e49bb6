//! Property tests of the WebSocket binding (`cloudevents.json` text messages): arbitrary valid
//! events round-trip exactly; arbitrary invalid attribute values are refused with the
//! attribute named, and the error acknowledgement still finds the event's `id`.

use ferry_conformance::arbitrary::{config, event, invalid_attribute, same, Types};
use ferry_websocket::{decode_text, encode, event_id, MessageError};
use proptest::prelude::*;

proptest! {
    #![proptest_config(config())]

    #[test]
    fn an_event_round_trips(sent in event()) {
        let text = encode(&sent);
        let back = decode_text(&text).map_err(|e| TestCaseError::fail(format!("{e:?}: {text}")))?;
        same(&sent, &back, Types::Json).map_err(TestCaseError::fail)?;
        prop_assert_eq!(event_id(&text), Some(sent.id().to_owned()));
        prop_assert_eq!(encode(&back), text, "the encoding is stable");
    }

    #[test]
    fn an_invalid_member_is_refused_by_name(sent in event(), (name, value) in invalid_attribute()) {
        let mut members: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&encode(&sent)).unwrap();
        members.insert(name.clone(), serde_json::Value::String(value.clone()));
        let text = serde_json::to_string(&members).unwrap();
        match decode_text(&text) {
            Ok(e) => prop_assert!(false, "{name} = {value:?} was accepted: {e:?}"),
            Err(MessageError::Invalid(e)) => prop_assert_eq!(e.attribute.as_deref(), Some(name.as_str()), "{}", e),
            Err(other) => prop_assert!(false, "{other:?}"),
        }
        if name != "id" {
            prop_assert_eq!(event_id(&text), Some(sent.id().to_owned()));
        }
    }
}
