//! CESQL values, the event attribute interface, and the §3.7 casts between types.

use std::borrow::Cow;
use std::fmt;

use crate::error::{ErrorKind, EvalError};

/// The value of an event context attribute, as handed over by the caller.
///
/// URI, URI-reference, Timestamp and other non-primitive attributes are passed as
/// [`AttributeValue::String`] in their canonical (not normalised) string form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttributeValue<'a> {
    /// A String (or URI, Timestamp, Binary …) attribute.
    String(&'a str),
    /// An Integer attribute.
    Integer(i32),
    /// A Boolean attribute.
    Boolean(bool),
}

/// Read access to an event's context attributes; the gateway implements this over its
/// event type.
pub trait Attributes {
    /// Returns the attribute called `name` (always lowercase ASCII), or `None` when the
    /// event does not have it.
    fn attribute(&self, name: &str) -> Option<AttributeValue<'_>>;
}

/// A CESQL value. Strings borrow from the event or the expression where possible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value<'a> {
    /// A Boolean.
    Boolean(bool),
    /// A 32-bit signed Integer.
    Integer(i32),
    /// A String.
    String(Cow<'a, str>),
}

impl Value<'_> {
    /// The CESQL type of this value.
    pub fn value_type(&self) -> ValueType {
        match self {
            Self::Boolean(_) => ValueType::Boolean,
            Self::Integer(_) => ValueType::Integer,
            Self::String(_) => ValueType::String,
        }
    }

    /// Detaches the value from the event and expression it borrows from.
    pub fn into_owned(self) -> Value<'static> {
        match self {
            Self::Boolean(b) => Value::Boolean(b),
            Self::Integer(i) => Value::Integer(i),
            Self::String(s) => Value::String(Cow::Owned(s.into_owned())),
        }
    }
}

impl fmt::Display for Value<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Boolean(b) => write!(f, "{b}"),
            Self::Integer(i) => write!(f, "{i}"),
            Self::String(s) => f.write_str(s),
        }
    }
}

impl<'a> From<AttributeValue<'a>> for Value<'a> {
    fn from(value: AttributeValue<'a>) -> Self {
        match value {
            AttributeValue::String(s) => Self::String(Cow::Borrowed(s)),
            AttributeValue::Integer(i) => Self::Integer(i),
            AttributeValue::Boolean(b) => Self::Boolean(b),
        }
    }
}

/// The three CESQL types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValueType {
    /// Boolean; zero value `false`.
    Boolean,
    /// Integer; zero value `0`.
    Integer,
    /// String; zero value `""`.
    String,
}

impl ValueType {
    /// The zero value of this type, returned by operators that meet an error.
    pub fn zero(self) -> Value<'static> {
        match self {
            Self::Boolean => Value::Boolean(false),
            Self::Integer => Value::Integer(0),
            Self::String => Value::String(Cow::Borrowed("")),
        }
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Boolean => "Boolean",
            Self::Integer => "Integer",
            Self::String => "String",
        })
    }
}

/// Casts to Integer: Boolean gives 1 or 0, String is parsed as base 10 with an optional sign.
pub(crate) fn to_integer(value: &Value<'_>) -> Result<i32, EvalError> {
    match value {
        Value::Integer(i) => Ok(*i),
        Value::Boolean(b) => Ok(i32::from(*b)),
        Value::String(s) => s.parse::<i32>().map_err(|_| {
            EvalError::new(
                ErrorKind::Cast,
                format!("cannot cast string '{s}' to Integer"),
            )
        }),
    }
}

/// Casts to Boolean: `0` is false and any other Integer true; a String must be `true` or
/// `false` in any case.
pub(crate) fn to_boolean(value: &Value<'_>) -> Result<bool, EvalError> {
    match value {
        Value::Boolean(b) => Ok(*b),
        Value::Integer(i) => Ok(*i != 0),
        Value::String(s) => string_to_boolean(s),
    }
}

/// Casts a String to Boolean (case-insensitive `true` / `false`).
pub(crate) fn string_to_boolean(s: &str) -> Result<bool, EvalError> {
    if s.eq_ignore_ascii_case("true") {
        Ok(true)
    } else if s.eq_ignore_ascii_case("false") {
        Ok(false)
    } else {
        Err(EvalError::new(
            ErrorKind::Cast,
            format!("cannot cast string '{s}' to Boolean"),
        ))
    }
}

/// Casts to String; never fails. Only Integer and Boolean operands allocate.
pub(crate) fn to_string(value: Value<'_>) -> Cow<'_, str> {
    match value {
        Value::String(s) => s,
        Value::Boolean(true) => Cow::Borrowed("true"),
        Value::Boolean(false) => Cow::Borrowed("false"),
        Value::Integer(i) => Cow::Owned(i.to_string()),
    }
}

/// Casts `value` to `target`.
pub(crate) fn cast(value: Value<'_>, target: ValueType) -> Result<Value<'_>, EvalError> {
    Ok(match target {
        ValueType::Boolean => Value::Boolean(to_boolean(&value)?),
        ValueType::Integer => Value::Integer(to_integer(&value)?),
        ValueType::String => Value::String(to_string(value)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(text: &str) -> Value<'_> {
        Value::String(Cow::Borrowed(text))
    }

    #[test]
    fn casts_follow_the_spec_table() {
        let cases: Vec<(Value<'_>, ValueType, Option<Value<'_>>)> = vec![
            (Value::Integer(-12), ValueType::String, Some(s("-12"))),
            (
                Value::Integer(0),
                ValueType::Boolean,
                Some(Value::Boolean(false)),
            ),
            (
                Value::Integer(7),
                ValueType::Boolean,
                Some(Value::Boolean(true)),
            ),
            (s("+42"), ValueType::Integer, Some(Value::Integer(42))),
            (
                s("-2147483648"),
                ValueType::Integer,
                Some(Value::Integer(i32::MIN)),
            ),
            (s("2147483648"), ValueType::Integer, None),
            (s(" 1"), ValueType::Integer, None),
            (s("abc"), ValueType::Integer, None),
            (s("TrUe"), ValueType::Boolean, Some(Value::Boolean(true))),
            (s("FALSE"), ValueType::Boolean, Some(Value::Boolean(false))),
            (s("yes"), ValueType::Boolean, None),
            (
                Value::Boolean(true),
                ValueType::Integer,
                Some(Value::Integer(1)),
            ),
            (Value::Boolean(false), ValueType::String, Some(s("false"))),
        ];
        for (input, target, expected) in cases {
            let got = cast(input.clone(), target);
            match expected {
                Some(value) => assert_eq!(got, Ok(value), "{input:?} -> {target}"),
                None => {
                    let error = got.expect_err("cast should fail");
                    assert_eq!(error.kind, ErrorKind::Cast, "{input:?} -> {target}");
                }
            }
        }
    }
}
