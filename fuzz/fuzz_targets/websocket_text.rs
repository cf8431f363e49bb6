//! WebSocket text messages (the JSON format, structured): decode, encode, decode.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = ferry_websocket::event_id(text);
    if let Ok(event) = ferry_websocket::decode_text(text) {
        let first = ferry_websocket::encode(&event);
        let again = ferry_websocket::decode_text(&first).expect("Ferry reads back what it wrote");
        assert_eq!(
            ferry_websocket::encode(&again),
            first,
            "the encoding is stable"
        );
    }
});
