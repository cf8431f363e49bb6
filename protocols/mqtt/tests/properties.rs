//! Property tests of the MQTT binding: arbitrary valid events round-trip exactly over MQTT 5
//! (binary and structured mode) and MQTT 3.1.1 (structured); arbitrary invalid attribute
//! values are refused with the attribute named.

use bytes::Bytes;
use ferry_conformance::arbitrary::{config, event, invalid_attribute, same, Types};
use ferry_core::Mode;
use ferry_mqtt::{decode_v311, decode_v5, encode_v311, encode_v5};
use proptest::prelude::*;

fn fail(e: impl std::fmt::Display) -> TestCaseError {
    TestCaseError::fail(e.to_string())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn an_event_round_trips_over_mqtt_5_in_binary_mode(sent in event()) {
        let (payload, properties) = encode_v5(&sent, Mode::Binary);
        let back = decode_v5(payload.clone(), Some(&properties)).map_err(fail)?;
        same(&sent, &back, Types::Strings).map_err(TestCaseError::fail)?;
        prop_assert_eq!(encode_v5(&back, Mode::Binary), (payload, properties), "the encoding is stable");
    }

    #[test]
    fn an_event_round_trips_over_mqtt_5_in_structured_mode(sent in event()) {
        let (payload, properties) = encode_v5(&sent, Mode::Structured);
        let back = decode_v5(payload, Some(&properties)).map_err(fail)?;
        same(&sent, &back, Types::Json).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn an_event_round_trips_over_mqtt_3_1_1(sent in event()) {
        let back = decode_v311(&encode_v311(&sent)).map_err(fail)?;
        same(&sent, &back, Types::Json).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn an_invalid_user_property_is_refused_by_name(sent in event(), (name, value) in invalid_attribute()) {
        let (payload, mut properties) = encode_v5(&sent, Mode::Binary);
        if name == "datacontenttype" {
            properties.content_type = Some(value.clone());
        } else {
            properties.user_properties.retain(|(n, _)| *n != name);
            properties.user_properties.push((name.clone(), value.clone()));
        }
        match decode_v5(payload, Some(&properties)) {
            Ok(e) => prop_assert!(false, "{name} = {value:?} was accepted: {e:?}"),
            Err(e) => prop_assert_eq!(e.attribute(), Some(name.as_str()), "{}", e),
        }
    }

    #[test]
    fn an_invalid_member_is_refused_by_name(sent in event(), (name, value) in invalid_attribute()) {
        let mut members: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&encode_v311(&sent)).unwrap();
        members.insert(name.clone(), serde_json::Value::String(value.clone()));
        let payload = Bytes::from(serde_json::to_vec(&members).unwrap());
        for result in [decode_v311(&payload), decode_v5(payload.clone(), None)] {
            match result {
                Ok(e) => prop_assert!(false, "{name} = {value:?} was accepted: {e:?}"),
                Err(e) => prop_assert_eq!(e.attribute(), Some(name.as_str()), "{}", e),
            }
        }
    }
}
