//! Trace context (W3C `traceparent`), carried per the CloudEvents distributed-tracing
//! extension.
//!
//! An event keeps the `traceparent`/`tracestate` extension it arrived with (the context of the
//! start of its journey, never updated per hop). An event without one takes the inbound
//! protocol's `traceparent`/`tracestate` header (HTTP header, AMQP header, MQTT 5 user property,
//! NATS header), and where none came in, Ferry starts a new trace. Every outbound binding then
//! carries the extension; the HTTP sink also sends a protocol `traceparent` header for its hop
//! (same trace, new span id).

use ferry_core::{CloudEvent, ExtensionValue, TransportMetadata};

/// Makes sure the event carries a trace context.
pub fn ensure(event: &mut CloudEvent, metadata: &TransportMetadata) {
    if event.extension("traceparent").is_some() {
        return;
    }
    let inbound = metadata.get("header.traceparent").filter(|t| is_valid(t));
    let traceparent = match inbound {
        Some(t) => {
            if let Some(state) = metadata.get("header.tracestate") {
                let _ = event.set_extension("tracestate", ExtensionValue::String(state.to_owned()));
            }
            t.to_owned()
        }
        None => new_traceparent(),
    };
    let _ = event.set_extension("traceparent", ExtensionValue::String(traceparent));
}

/// A `traceparent` for the next hop: the same trace id and flags, a new span id.
pub fn next_hop(traceparent: &str) -> Option<String> {
    if !is_valid(traceparent) {
        return None;
    }
    let (trace, flags) = (&traceparent[3..35], &traceparent[53..55]);
    Some(format!("00-{trace}-{:016x}-{flags}", nonzero::<u64>()))
}

/// `00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`, ids not all zero.
pub fn is_valid(t: &str) -> bool {
    let b = t.as_bytes();
    let hex = |r: std::ops::Range<usize>| {
        b[r].iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
    };
    b.len() == 55
        && t.starts_with("00-")
        && b[35] == b'-'
        && b[52] == b'-'
        && hex(3..35)
        && hex(36..52)
        && hex(53..55)
        && t[3..35].bytes().any(|c| c != b'0')
        && t[36..52].bytes().any(|c| c != b'0')
}

fn new_traceparent() -> String {
    format!("00-{:032x}-{:016x}-01", nonzero::<u128>(), nonzero::<u64>())
}

/// A random id that is not all zeros (the W3C spec makes zero invalid).
fn nonzero<T: PartialEq + From<u8>>() -> T
where
    rand::distr::StandardUniform: rand::distr::Distribution<T>,
{
    let id: T = rand::random();
    if id == T::from(0) {
        T::from(1)
    } else {
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::AttributeRef;

    const T: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn keeps_takes_or_starts() {
        let mut m = TransportMetadata::new();
        m.push_header("traceparent", T);
        m.push_header("tracestate", "vendor=1");
        let mut e = CloudEvent::new("1", "/s", "t").unwrap();
        ensure(&mut e, &m);
        assert_eq!(e.attribute("traceparent"), Some(AttributeRef::Str(T)));
        assert_eq!(
            e.attribute("tracestate"),
            Some(AttributeRef::Str("vendor=1"))
        );

        let mut fresh = CloudEvent::new("2", "/s", "t").unwrap();
        ensure(&mut fresh, &TransportMetadata::new());
        let Some(AttributeRef::Str(t)) = fresh.attribute("traceparent") else {
            panic!()
        };
        assert!(is_valid(t), "{t}");

        // An event's own context wins over the protocol header.
        let own = "00-11111111111111111111111111111111-2222222222222222-00";
        let mut e = CloudEvent::new("3", "/s", "t").unwrap();
        e.set_extension("traceparent", ExtensionValue::String(own.into()))
            .unwrap();
        ensure(&mut e, &m);
        assert_eq!(e.attribute("traceparent"), Some(AttributeRef::Str(own)));
    }

    #[test]
    fn validation_and_next_hop() {
        assert!(is_valid(T));
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        ] {
            assert!(!is_valid(bad), "{bad}");
        }
        let next = next_hop(T).unwrap();
        assert_eq!(&next[..36], &T[..36]);
        assert_ne!(&next[36..52], &T[36..52]);
        assert_eq!(&next[52..], "-01");
    }
}
