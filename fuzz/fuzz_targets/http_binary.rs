//! The HTTP binding: header lines (`name: value`) up to an empty line, then the body. Whatever
//! decodes re-encodes in both modes; each decodes again, and binary and structured agree.
#![no_main]

use bytes::Bytes;
use ferry_core::Mode;
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

fn split(data: &[u8]) -> (HeaderMap, Bytes) {
    let at = data.windows(2).position(|w| w == b"\n\n");
    let (head, body) = match at {
        Some(at) => (&data[..at], &data[at + 2..]),
        None => (data, &[][..]),
    };
    let mut headers = HeaderMap::new();
    for line in head.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            headers.append(n, v);
        }
    }
    (headers, Bytes::copy_from_slice(body))
}

fuzz_target!(|data: &[u8]| {
    let (headers, body) = split(data);
    let Ok(ferry_http::Message::Event(event)) = ferry_http::decode(&headers, body) else {
        return;
    };
    let mut seen = Vec::new();
    for mode in [Mode::Binary, Mode::Structured] {
        let (h, b) = ferry_http::encode(&event, mode);
        let back = match ferry_http::decode(&h, b) {
            Ok(ferry_http::Message::Event(e)) => e,
            other => panic!("{mode:?}: Ferry cannot read back what it wrote: {other:?}"),
        };
        let (h2, b2) = ferry_http::encode(&back, mode);
        let (h1, b1) = ferry_http::encode(&event, mode);
        assert_eq!((h1, b1), (h2, b2), "{mode:?}: the encoding is stable");
        seen.push(ferry::fuzzing::canonical(&back));
    }
    assert_eq!(
        seen[0], seen[1],
        "binary and structured decode to the same event"
    );
});
