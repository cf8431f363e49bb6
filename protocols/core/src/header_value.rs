//! Header values of binary mode: percent-encoding (HTTP binding §3.1.3), shared by the
//! bindings that carry attributes in text headers (HTTP, NATS).

use std::borrow::Cow;

use percent_encoding::{percent_decode, utf8_percent_encode, AsciiSet, CONTROLS};

/// Space, `"`, `%` and everything outside printable ASCII is encoded (non-ASCII always is).
const ENCODE: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'%');

const NOT_UTF8: &str = "percent-decoded value is not valid UTF-8";

/// Percent-encodes an attribute's canonical string for a header, with upper-case hex.
pub fn encode_value(value: &str) -> Cow<'_, str> {
    // Most values need no encoding. A scan without early exit (which the compiler can
    // vectorise) settles that faster than the encoder's byte-by-byte chunking.
    let needs_encoding = value.bytes().fold(false, |found, b| found | must_encode(b));
    if needs_encoding {
        utf8_percent_encode(value, ENCODE).into()
    } else {
        Cow::Borrowed(value)
    }
}

/// Whether `ENCODE` (or being non-ASCII) makes a byte percent-encoded.
fn must_encode(b: u8) -> bool {
    !(0x21..0x7f).contains(&b) || b == b'"' || b == b'%'
}

/// Decodes a header value: undoes RFC 7230 quoted-string quoting, then percent-decodes exactly
/// once, and rejects byte sequences that are not UTF-8 (such as the overlong `%C0%A0`).
pub fn decode_value(raw: &[u8]) -> Result<String, String> {
    let quoted = raw.len() >= 2 && raw[0] == b'"' && raw[raw.len() - 1] == b'"';
    if !quoted && !raw.contains(&b'%') {
        // Nothing to undo, the common case: one UTF-8 check and one copy.
        return std::str::from_utf8(raw)
            .map(str::to_owned)
            .map_err(|_| NOT_UTF8.to_owned());
    }
    let unquoted: Cow<'_, [u8]> = if quoted {
        let inner = &raw[1..raw.len() - 1];
        let mut out = Vec::with_capacity(inner.len());
        let mut bytes = inner.iter();
        while let Some(&b) = bytes.next() {
            if b == b'\\' {
                match bytes.next() {
                    Some(&escaped) => out.push(escaped),
                    None => return Err("quoted string ends with a lone backslash".into()),
                }
            } else {
                out.push(b);
            }
        }
        Cow::Owned(out)
    } else {
        Cow::Borrowed(raw)
    };
    percent_decode(&unquoted)
        .decode_utf8()
        .map(Cow::into_owned)
        .map_err(|_| NOT_UTF8.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_table() {
        for (input, want) in [
            ("Euro € 😀", "Euro%20%E2%82%AC%20%F0%9F%98%80"),
            ("plain-ASCII_1.0/x", "plain-ASCII_1.0/x"),
            ("100%", "100%25"),
            ("say \"hi\"", "say%20%22hi%22"),
            ("tab\t", "tab%09"),
            ("", ""),
        ] {
            assert_eq!(encode_value(input), want, "{input}");
        }
    }

    #[test]
    fn fast_path_agrees_with_the_encode_set() {
        for b in 0..0x80u8 {
            let s = char::from(b).to_string();
            let encoded = utf8_percent_encode(&s, ENCODE).to_string() != s;
            assert_eq!(must_encode(b), encoded, "{b:#04x}");
        }
        assert!((0x80..=u8::MAX).all(must_encode));
    }

    #[test]
    fn decode_table() {
        let cases: &[(&[u8], Result<&str, ()>)] = &[
            (b"Euro%20%E2%82%AC%20%F0%9F%98%80", Ok("Euro € 😀")),
            (b"lower%e2%82%ac", Ok("lower€")),
            (b"%41%42", Ok("AB")),
            (b"no-percent {\"a\": 5}", Ok("no-percent {\"a\": 5}")),
            (b"\"quoted%20value\"", Ok("quoted value")),
            (b"\"esc\\\"aped\"", Ok("esc\"aped")),
            (b"%25%32%30", Ok("%20")),
            (b"caf\xc3\xa9", Ok("caf\u{e9}")),
            (b"%C0%A0", Err(())),
            (b"\xff", Err(())),
            (b"\"\xff\"", Err(())),
            (b"%FF", Err(())),
            (b"\"bad\\\"", Err(())),
        ];
        for (input, want) in cases {
            let got = decode_value(input);
            match want {
                Ok(s) => assert_eq!(
                    got.as_deref(),
                    Ok(*s),
                    "{:?}",
                    String::from_utf8_lossy(input)
                ),
                Err(()) => assert!(got.is_err(), "{:?}", String::from_utf8_lossy(input)),
            }
        }
    }

    #[test]
    fn round_trip() {
        for s in ["a b", "ünï cødé", "%%%", "\"", "{\"othervalue\": 5}"] {
            assert_eq!(decode_value(encode_value(s).as_bytes()).unwrap(), s);
        }
    }
}
