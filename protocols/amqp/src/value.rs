//! Attribute values in AMQP 0-9-1 field tables: native types in, native types out.
//!
//! Receivers accept both the canonical string and the native AMQP type (binding §5 "Values");
//! 0-9-1 peers send many integer widths, so all of them are read and range-checked.

use bytes::Bytes;
use ferry_core::{ExtensionValue, Timestamp};
use lapin::types::{AMQPValue, ByteArray, LongString};

/// An attribute value read from a header: a canonical string (validated by the builder
/// according to the attribute's type) or a typed extension value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum HeaderValue {
    Canonical(String),
    Typed(ExtensionValue),
}

/// Reads one header value. `Err` says why the value cannot be an attribute.
pub(crate) fn decode(value: &AMQPValue) -> Result<HeaderValue, String> {
    let integer = |n: i64| {
        i32::try_from(n)
            .map(|i| HeaderValue::Typed(ExtensionValue::Integer(i)))
            .map_err(|_| format!("integer {n} is outside the 32-bit range of CloudEvents Integer"))
    };
    match value {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes())
            .map(|s| HeaderValue::Canonical(s.to_owned()))
            .map_err(|_| "string value is not valid UTF-8".to_owned()),
        AMQPValue::ShortString(s) => Ok(HeaderValue::Canonical(s.as_str().to_owned())),
        AMQPValue::Boolean(b) => Ok(HeaderValue::Typed(ExtensionValue::Boolean(*b))),
        AMQPValue::ShortShortInt(n) => integer(i64::from(*n)),
        AMQPValue::ShortShortUInt(n) => integer(i64::from(*n)),
        AMQPValue::ShortInt(n) => integer(i64::from(*n)),
        AMQPValue::ShortUInt(n) => integer(i64::from(*n)),
        AMQPValue::LongInt(n) => integer(i64::from(*n)),
        AMQPValue::LongUInt(n) => integer(i64::from(*n)),
        AMQPValue::LongLongInt(n) => integer(*n),
        AMQPValue::Timestamp(seconds) => timestamp(*seconds).map(HeaderValue::Typed),
        AMQPValue::ByteArray(b) => Ok(HeaderValue::Typed(ExtensionValue::Binary(
            Bytes::copy_from_slice(b.as_slice()),
        ))),
        other => Err(format!(
            "AMQP {} values cannot carry a CloudEvents attribute",
            other.get_type()
        )),
    }
}

/// Reads the `time` attribute: the canonical RFC 3339 string, an AMQP 0-9-1 timestamp (POSIX
/// seconds, the `T` field type), or an integer of milliseconds since the epoch (what AMQP 1.0
/// timestamps count, and what the CloudEvents Python SDK's AMQP binding writes). Returns the
/// canonical string, validated later like every other `time`.
pub(crate) fn time(value: &AMQPValue) -> Result<String, String> {
    let millis = match value {
        AMQPValue::LongString(_) | AMQPValue::ShortString(_) => {
            return match decode(value)? {
                HeaderValue::Canonical(s) => Ok(s),
                HeaderValue::Typed(_) => Err(TIME_TYPES.into()),
            }
        }
        AMQPValue::Timestamp(seconds) => {
            return match timestamp(*seconds)? {
                ExtensionValue::Timestamp(t) => Ok(t.as_str().to_owned()),
                _ => Err(TIME_TYPES.into()),
            }
        }
        AMQPValue::ShortShortInt(n) => i64::from(*n),
        AMQPValue::ShortShortUInt(n) => i64::from(*n),
        AMQPValue::ShortInt(n) => i64::from(*n),
        AMQPValue::ShortUInt(n) => i64::from(*n),
        AMQPValue::LongInt(n) => i64::from(*n),
        AMQPValue::LongUInt(n) => i64::from(*n),
        AMQPValue::LongLongInt(n) => *n,
        _ => return Err(TIME_TYPES.into()),
    };
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(millis) * 1_000_000)
        .ok()
        .filter(|t| (0..=9999).contains(&t.year()))
        .map(|t| Timestamp::from(t).as_str().to_owned())
        .ok_or_else(|| format!("{millis} milliseconds since the epoch is out of range"))
}

/// What a `time` header may be.
const TIME_TYPES: &str =
    "must be a string (RFC 3339), an AMQP timestamp or an integer of milliseconds since the epoch";

/// An AMQP 0-9-1 timestamp (POSIX seconds) as an RFC 3339 timestamp in UTC.
fn timestamp(seconds: u64) -> Result<ExtensionValue, String> {
    i64::try_from(seconds)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .map(|t| ExtensionValue::Timestamp(Timestamp::from(t)))
        .ok_or_else(|| format!("timestamp {seconds} is out of range"))
}

/// The header value for a typed extension: native types for Integer, Boolean and Binary;
/// canonical strings for the rest (an RFC 3339 string keeps sub-second precision, which the
/// 0-9-1 timestamp, in whole seconds, would lose).
pub(crate) fn encode(value: &ExtensionValue) -> AMQPValue {
    match value {
        ExtensionValue::Integer(i) => AMQPValue::LongInt(*i),
        ExtensionValue::Boolean(b) => AMQPValue::Boolean(*b),
        ExtensionValue::Binary(b) => AMQPValue::ByteArray(ByteArray::from(b.to_vec())),
        other => string(&other.to_canonical_string()),
    }
}

/// A string header value (`S`, long string).
pub(crate) fn string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

/// The text form of a header for transport metadata (`header.<name>`); `None` for tables,
/// arrays and non-UTF-8 strings, which routes cannot match anyway.
pub(crate) fn metadata_text(value: &AMQPValue) -> Option<String> {
    Some(match value {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok()?.to_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_owned(),
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortShortInt(n) => n.to_string(),
        AMQPValue::ShortShortUInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        AMQPValue::ShortUInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::LongUInt(n) => n.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::Timestamp(n) => n.to_string(),
        AMQPValue::Float(f) => f.to_string(),
        AMQPValue::Double(f) => f.to_string(),
        _ => return None,
    })
}
