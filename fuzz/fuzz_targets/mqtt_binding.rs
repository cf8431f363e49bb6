//! The MQTT bindings: a 3.1.1 payload, and an MQTT 5 payload with a content type and user
//! properties. Whatever decodes re-encodes and decodes again to a stable encoding.
#![no_main]

use arbitrary::Arbitrary;
use bytes::Bytes;
use ferry_core::Mode;
use libfuzzer_sys::fuzz_target;
use rumqttc::v5::mqttbytes::v5::PublishProperties;

#[derive(Debug, Arbitrary)]
struct Input {
    content_type: Option<String>,
    user_properties: Vec<(String, String)>,
    payload: Vec<u8>,
}

fuzz_target!(|input: Input| {
    let payload = Bytes::from(input.payload);
    if let Ok(event) = ferry_mqtt::decode_v311(&payload) {
        let first = ferry_mqtt::encode_v311(&event);
        let back = ferry_mqtt::decode_v311(&first).expect("3.1.1: Ferry reads back what it wrote");
        assert_eq!(
            ferry_mqtt::encode_v311(&back),
            first,
            "3.1.1: the encoding is stable"
        );
    }
    let properties = PublishProperties {
        content_type: input.content_type,
        user_properties: input.user_properties,
        ..Default::default()
    };
    let Ok(event) = ferry_mqtt::decode_v5(payload, Some(&properties)) else {
        return;
    };
    let mut seen = Vec::new();
    for mode in [Mode::Binary, Mode::Structured] {
        let (b, p) = ferry_mqtt::encode_v5(&event, mode);
        let back = ferry_mqtt::decode_v5(b.clone(), Some(&p))
            .unwrap_or_else(|e| panic!("{mode:?}: Ferry cannot read back what it wrote: {e}"));
        let (b2, p2) = ferry_mqtt::encode_v5(&back, mode);
        assert_eq!((b2, p2), (b, p), "{mode:?}: the encoding is stable");
        seen.push(ferry::fuzzing::canonical(&back));
    }
    assert_eq!(
        seen[0], seen[1],
        "binary and structured decode to the same event"
    );
});
