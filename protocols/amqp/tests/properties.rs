//! Property tests of the AMQP 0-9-1 binding: arbitrary valid events round-trip exactly in
//! binary mode (every header prefix) and structured mode; arbitrary invalid attribute values
//! are refused with the attribute named.

use ferry_amqp::{decode, encode, HeaderPrefix};
use ferry_conformance::arbitrary::{config, event, invalid_attribute, same, Types};
use ferry_core::Mode;
use lapin::types::{AMQPValue, LongString};
use proptest::prelude::*;

fn prefix() -> impl Strategy<Value = HeaderPrefix> {
    prop::sample::select(vec![
        HeaderPrefix::CloudEvents,
        HeaderPrefix::Ce,
        HeaderPrefix::CloudEventsColon,
    ])
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn an_event_round_trips_in_binary_mode(sent in event(), prefix in prefix()) {
        let (properties, body) = encode(&sent, Mode::Binary, prefix);
        let back = decode(&properties, &body).map_err(|e| TestCaseError::fail(e.to_string()))?;
        same(&sent, &back, Types::Typed).map_err(TestCaseError::fail)?;
        prop_assert_eq!(encode(&back, Mode::Binary, prefix), (properties, body), "the encoding is stable");
    }

    #[test]
    fn an_event_round_trips_in_structured_mode(sent in event()) {
        let (properties, body) = encode(&sent, Mode::Structured, HeaderPrefix::default());
        let back = decode(&properties, &body).map_err(|e| TestCaseError::fail(e.to_string()))?;
        same(&sent, &back, Types::Json).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn an_invalid_header_is_refused_by_name(
        sent in event(),
        prefix in prefix(),
        (name, value) in invalid_attribute(),
    ) {
        let (properties, body) = encode(&sent, Mode::Binary, prefix);
        let (properties, value) = if name == "datacontenttype" {
            let Ok(ct) = lapin::types::ShortString::try_new(value.as_str()) else { return Ok(()) };
            (properties.with_content_type(ct), value)
        } else {
            let mut headers = properties.headers().clone().unwrap_or_default();
            headers.insert(
                format!("{}{name}", prefix.as_str()).into(),
                AMQPValue::LongString(LongString::from(value.as_bytes().to_vec())),
            );
            (properties.with_headers(headers), value)
        };
        match decode(&properties, &body) {
            Ok(e) => prop_assert!(false, "{name} = {value:?} was accepted: {e:?}"),
            Err(e) => prop_assert_eq!(e.attribute(), Some(name.as_str()), "{}", e),
        }
    }
}
