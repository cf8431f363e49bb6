//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`): parts of the gateway that
//! are otherwise reached only through a socket or a directory.

use std::io;
use std::path::Path;

/// Reads the MQTT packets framed in `bytes` as the device listener reads a connection (MQTT 5
/// when `v5`, else 3.1.1; at most `max` bytes a packet), checking that each one Ferry parses
/// and writes back parses to the same packet. Returns how many it read.
pub fn mqtt_server_packets(v5: bool, bytes: &[u8], max: usize) -> usize {
    crate::sources::mqtt_server::fuzz_packets(v5, bytes, max)
}

/// An event as a binding's two modes must agree on it: every attribute as its canonical
/// string (binary mode carries extensions as strings), the effective content type (binary mode
/// writes the `application/json` that structured mode implies) and the data's bytes (JSON
/// data without the white space around it, which the JSON format does not keep).
pub fn canonical(event: &ferry_core::CloudEvent) -> String {
    let extensions: Vec<(String, String)> = event
        .extensions()
        .iter()
        .map(|(k, v)| (k.clone(), v.to_canonical_string()))
        .collect();
    format!(
        "{:?}",
        (
            event.id(),
            event.source(),
            event.ty(),
            event.subject(),
            event.time().map(|t| t.as_str()),
            event.dataschema(),
            event.effective_content_type(),
            extensions,
            // A binary-mode message with an empty body is an event without data: the binding
            // cannot carry empty data apart from none.
            event.data().filter(|d| !d.as_bytes().is_empty()).map(|d| {
                let json = event
                    .effective_content_type()
                    .is_some_and(ferry_core::validate::is_json_media_type);
                if json {
                    d.as_bytes().trim_ascii()
                } else {
                    d.as_bytes()
                }
            }),
        )
    )
}

/// Opens a spool directory as a restarted sink would (recovering what is on disk) and reads
/// every record back; returns the records read.
pub fn spool_recover(dir: &Path) -> io::Result<u64> {
    crate::spool::fuzz_recover(dir)
}
