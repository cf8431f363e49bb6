//! The JSON event format, single and batch: whatever decodes encodes to bytes that decode to
//! an event encoding to the same bytes.
#![no_main]

use ferry_core::json;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(event) = json::decode(data) {
        let first = json::encode(&event);
        let again = json::decode(&first).expect("Ferry reads back what it wrote");
        assert_eq!(json::encode(&again), first, "the encoding is stable");
    }
    if let Ok(events) = json::decode_batch(data) {
        let first = json::encode_batch(&events);
        let again = json::decode_batch(&first).expect("Ferry reads back the batch it wrote");
        assert_eq!(again.len(), events.len());
        assert_eq!(json::encode_batch(&again), first, "the encoding is stable");
    }
});
