//! Validation rules of the CloudEvents type system and naming conventions.

use crate::error::{EventError, EventErrorKind};
use crate::event::ExtensionValue;

/// Attribute names: `[a-z0-9]+`, and not the reserved `data`.
pub fn extension_name(name: &str) -> Result<(), EventError> {
    if name.is_empty() {
        return Err(EventError::new(
            name,
            EventErrorKind::InvalidName,
            "attribute names must not be empty",
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return Err(EventError::new(
            name,
            EventErrorKind::InvalidName,
            "attribute names may contain only lowercase letters a-z and digits 0-9",
        ));
    }
    if name == "data" || name == "data_base64" {
        return Err(EventError::new(
            name,
            EventErrorKind::InvalidName,
            "`data` is reserved",
        ));
    }
    Ok(())
}

/// Checks an extension value against its declared type.
pub fn extension_value(name: &str, value: &ExtensionValue) -> Result<(), EventError> {
    match value {
        ExtensionValue::String(s) => string(name, s),
        ExtensionValue::Uri(s) => uri(name, s),
        ExtensionValue::UriRef(s) => uri_reference(name, s),
        ExtensionValue::Integer(_)
        | ExtensionValue::Boolean(_)
        | ExtensionValue::Timestamp(_)
        | ExtensionValue::Binary(_) => Ok(()),
    }
}

pub fn non_empty(name: &str, value: &str) -> Result<(), EventError> {
    if value.is_empty() {
        return Err(EventError::empty(name));
    }
    Ok(())
}

/// The String type excludes control characters (U+0000–U+001F, U+007F–U+009F) and
/// Unicode noncharacters. Rust strings cannot hold unpaired surrogates.
pub fn string(name: &str, value: &str) -> Result<(), EventError> {
    // Fast path: printable ASCII is always fine. The scan has no early exit so that it
    // vectorises; values are short and almost always pass.
    if !value
        .bytes()
        .fold(false, |other, b| other | !(0x20..0x7f).contains(&b))
    {
        return Ok(());
    }
    for c in value.chars() {
        let cp = c as u32;
        if cp < 0x20 || (0x7f..=0x9f).contains(&cp) {
            return Err(EventError::new(
                name,
                EventErrorKind::Invalid,
                format!("control character U+{cp:04X} is not allowed in a String"),
            ));
        }
        if (0xFDD0..=0xFDEF).contains(&cp) || (cp & 0xFFFE) == 0xFFFE {
            return Err(EventError::new(
                name,
                EventErrorKind::Invalid,
                format!("Unicode noncharacter U+{cp:04X} is not allowed in a String"),
            ));
        }
    }
    Ok(())
}

/// URI-reference (RFC 3986 §4.1).
pub fn uri_reference(name: &str, value: &str) -> Result<(), EventError> {
    non_empty(name, value)?;
    fluent_uri::UriRef::parse(value).map_err(|e| {
        EventError::new(
            name,
            EventErrorKind::Invalid,
            format!("not a URI-reference ({e})"),
        )
    })?;
    Ok(())
}

/// Absolute URI (RFC 3986 §4.3).
pub fn uri(name: &str, value: &str) -> Result<(), EventError> {
    non_empty(name, value)?;
    fluent_uri::Uri::parse(value).map_err(|e| {
        EventError::new(
            name,
            EventErrorKind::Invalid,
            format!("not an absolute URI ({e})"),
        )
    })?;
    Ok(())
}

/// RFC 2046 media type: `type/subtype` with optional parameters; compared case-insensitively.
pub fn media_type(name: &str, value: &str) -> Result<(), EventError> {
    string(name, value)?;
    let essence = media_type_essence(value);
    let valid = match essence.split_once('/') {
        Some((t, s)) => is_token(t) && is_token(s),
        None => false,
    };
    if !valid {
        return Err(EventError::new(
            name,
            EventErrorKind::Invalid,
            format!("not a media type (type/subtype): {value:?}"),
        ));
    }
    // Parameters are tokens and quoted strings (RFC 2045 §5.1): visible ASCII, spaces and
    // tabs. Anything else could not be carried in a Content-Type header either.
    if !value
        .bytes()
        .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
    {
        return Err(EventError::new(
            name,
            EventErrorKind::Invalid,
            format!("a media type is ASCII, its parameters too: {value:?}"),
        ));
    }
    Ok(())
}

/// The `type/subtype` part of a media type: what precedes the first `;`, trimmed.
pub fn media_type_essence(media_type: &str) -> &str {
    // A byte search is cheaper than a `char` pattern here; `;` is ASCII, so the cut falls on a
    // char boundary.
    let end = media_type
        .bytes()
        .position(|b| b == b';')
        .unwrap_or(media_type.len());
    media_type[..end].trim()
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+*'`|~".contains(&b))
}

/// Whether a media type is JSON (`*/json` or `*/*+json`, parameters ignored, any case).
pub fn is_json_media_type(media_type: &str) -> bool {
    let essence = media_type_essence(media_type);
    let Some((_, subtype)) = essence.split_once('/') else {
        return false;
    };
    subtype.eq_ignore_ascii_case("json") || ends_with_ignore_ascii_case(subtype, "+json")
}

/// Whether `s` ends with the ASCII `suffix`, in any case, and has something before it.
/// Compares bytes: input text is never sliced at an offset that may split a character.
fn ends_with_ignore_ascii_case(s: &str, suffix: &str) -> bool {
    let (s, suffix) = (s.as_bytes(), suffix.as_bytes());
    s.len() > suffix.len() && s[s.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
}

/// Whether a media type denotes text that the JSON format can carry as a `data` string:
/// `text/*`, XML types and a few common textual application types.
pub fn is_text_media_type(media_type: &str) -> bool {
    let essence = media_type_essence(media_type);
    let Some((top, subtype)) = essence.split_once('/') else {
        return false;
    };
    top.eq_ignore_ascii_case("text")
        || subtype.eq_ignore_ascii_case("xml")
        || ends_with_ignore_ascii_case(subtype, "+xml")
        || subtype.eq_ignore_ascii_case("javascript")
        || subtype.eq_ignore_ascii_case("x-www-form-urlencoded")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by `scripts/fuzz` (http_binary): a `datacontenttype` whose parameters held
    /// non-ASCII text was accepted in structured mode, and the binary-mode `Content-Type` Ferry
    /// wrote for it was refused by Ferry's own decoder.
    #[test]
    fn fuzz_a_media_type_with_non_ascii_parameters_is_refused() {
        let e = media_type("datacontenttype", "application/json; charset=ut\u{e9}f-8").unwrap_err();
        assert_eq!(e.attribute.as_deref(), Some("datacontenttype"));
        assert!(media_type("datacontenttype", "application/json; charset=utf-8").is_ok());
        assert!(media_type("datacontenttype", "text/plain; format=\"a b\"").is_ok());
        assert!(media_type("datacontenttype", "text/plain; x=\u{7f}").is_err());
        let event = br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","datacontenttype":"application/json; charset=ut\u00e9","data":1}"#;
        let e = crate::json::decode(event).unwrap_err();
        assert_eq!(e.attribute.as_deref(), Some("datacontenttype"), "{e}");
    }

    #[test]
    fn names() {
        for ok in ["a", "abc123", "0x", "comexampleextension1"] {
            assert!(extension_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Ab", "a-b", "a_b", "data", "é", "a b"] {
            assert!(extension_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn strings() {
        assert!(string("x", "hello 🌎 €").is_ok());
        assert!(string("x", "tab\there").is_err());
        assert!(string("x", "del\u{7f}").is_err());
        assert!(string("x", "c1\u{85}").is_err());
        assert!(string("x", "non\u{FFFE}").is_err());
        assert!(string("x", "non\u{FDD0}").is_err());
    }

    #[test]
    fn uris() {
        for ok in [
            "/a/b",
            "//github.com/x",
            "https://example.com/x?y#z",
            "urn:uuid:1",
            "a",
        ] {
            assert!(uri_reference("source", ok).is_ok(), "{ok}");
        }
        for bad in ["", "http://exa mple.com", "%zz", "a b"] {
            assert!(uri_reference("source", bad).is_err(), "{bad}");
        }
        assert!(uri("dataschema", "https://example.com/s.json").is_ok());
        assert!(uri("dataschema", "/relative").is_err());
    }

    #[test]
    fn essences() {
        for (media_type, essence) in [
            ("application/json", "application/json"),
            (" text/plain ; charset=utf-8", "text/plain"),
            ("a/b;c;d", "a/b"),
            (";x", ""),
            ("", ""),
            ("\u{e9}/x; y", "\u{e9}/x"),
        ] {
            assert_eq!(media_type_essence(media_type), essence, "{media_type:?}");
        }
    }

    #[test]
    fn media_types() {
        assert!(media_type("ct", "application/json").is_ok());
        assert!(media_type("ct", "text/plain; charset=utf-8").is_ok());
        assert!(media_type("ct", "json").is_err());
        assert!(media_type("ct", "").is_err());
        assert!(is_json_media_type("application/json"));
        assert!(is_json_media_type("APPLICATION/JSON; charset=utf-8"));
        assert!(is_json_media_type("application/vnd.foo+json"));
        assert!(!is_json_media_type("application/jsonx"));
        assert!(!is_json_media_type("text/plain"));
        assert!(is_text_media_type("text/plain; charset=us-ascii"));
        assert!(is_text_media_type("application/xml"));
        assert!(!is_text_media_type("application/octet-stream"));
    }

    /// C1: a multi-byte character at any position of a media type is an answer, never a
    /// panic (the suffix checks once sliced the subtype by bytes).
    #[test]
    fn c1_multibyte_media_types_never_panic() {
        for base in [
            "application/vnd.x+json",
            "application/json",
            "text/x+xml",
            "a/b",
        ] {
            for c in ['\u{e9}', '\u{FFFF}', '\u{1F30E}'] {
                for at in 0..=base.len() {
                    let mut s = base.to_owned();
                    s.insert(at, c);
                    let _ = is_json_media_type(&s);
                    let _ = is_text_media_type(&s);
                    let _ = media_type("datacontenttype", &s);
                    let _ = crate::json::format(&s);
                }
            }
        }
        assert!(!is_json_media_type("application/j\u{FFFF}son"));
        assert!(!is_text_media_type("application/\u{e9}xml"));
        assert!(is_json_media_type("application/\u{e9}+json"));
    }
}
