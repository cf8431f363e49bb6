//! The MQTT device listener's session layer fed raw bytes: framing and packet parsing for
//! 3.1.1 and 5, and each parsed packet written back and read again.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let max = if first & 0x80 != 0 { 64 } else { 1 << 16 };
    ferry::fuzzing::mqtt_server_packets(first & 1 == 1, rest, max);
});
