//! The NATS binding: headers and a payload from the input. Whatever decodes re-encodes in both
//! modes and decodes again to a stable encoding; binary and structured agree.
#![no_main]

use arbitrary::Arbitrary;
use async_nats::HeaderMap;
use bytes::Bytes;
use ferry_core::Mode;
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    headers: Option<Vec<(String, String)>>,
    payload: Vec<u8>,
}

fuzz_target!(|input: Input| {
    let headers = input.headers.map(|pairs| {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            // Names and values the NATS protocol can carry.
            if name.is_empty()
                || name.bytes().any(|b| b <= b' ' || b == b':' || b >= 0x7f)
                || value.bytes().any(|b| b == b'\r' || b == b'\n')
            {
                continue;
            }
            h.append(name.as_str(), value.as_str());
        }
        h
    });
    let payload = Bytes::from(input.payload);
    let _ = ferry_nats::is_raw(headers.as_ref(), &payload);
    let Ok(event) = ferry_nats::decode(headers.as_ref(), payload) else {
        return;
    };
    let _ = ferry_nats::message_id(&event);
    let mut seen = Vec::new();
    for mode in [Mode::Binary, Mode::Structured] {
        let (h, b) = ferry_nats::encode(&event, mode);
        let back = ferry_nats::decode(Some(&h), b.clone())
            .unwrap_or_else(|e| panic!("{mode:?}: Ferry cannot read back what it wrote: {e}"));
        let (h2, b2) = ferry_nats::encode(&back, mode);
        assert_eq!(b2, b, "{mode:?}: the payload is stable");
        assert_eq!(
            format!("{h2:?}"),
            format!("{h:?}"),
            "{mode:?}: the headers are stable"
        );
        seen.push(ferry::fuzzing::canonical(&back));
    }
    assert_eq!(
        seen[0], seen[1],
        "binary and structured decode to the same event"
    );
});
