//! Built-in functions: resolution by name and arity at parse time, evaluation at run time.

use std::borrow::Cow;

use crate::ast::Node;
use crate::error::{ErrorKind, EvalError};
use crate::eval::Evaluator;
use crate::value::{Attributes, Value, ValueType};
use crate::Evaluation;

/// A built-in function resolved to one overload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Function {
    Length,
    Concat,
    ConcatWs,
    Lower,
    Upper,
    Trim,
    Left,
    Right,
    Substring,
    Abs,
    Int,
    Bool,
    String,
}

impl Function {
    /// Finds the overload of `name` (any case) taking `arity` arguments.
    pub(crate) fn resolve(name: &str, arity: usize) -> Option<Self> {
        let (function, accepts) = match name.to_ascii_uppercase().as_str() {
            "LENGTH" => (Self::Length, arity == 1),
            "CONCAT" => (Self::Concat, true),
            "CONCAT_WS" => (Self::ConcatWs, arity >= 1),
            "LOWER" => (Self::Lower, arity == 1),
            "UPPER" => (Self::Upper, arity == 1),
            "TRIM" => (Self::Trim, arity == 1),
            "LEFT" => (Self::Left, arity == 2),
            "RIGHT" => (Self::Right, arity == 2),
            "SUBSTRING" => (Self::Substring, arity == 2 || arity == 3),
            "ABS" => (Self::Abs, arity == 1),
            "INT" => (Self::Int, arity == 1),
            "BOOL" => (Self::Bool, arity == 1),
            "STRING" => (Self::String, arity == 1),
            _ => return None,
        };
        accepts.then_some(function)
    }

    fn return_type(self) -> ValueType {
        match self {
            Self::Length | Self::Abs | Self::Int => ValueType::Integer,
            Self::Bool => ValueType::Boolean,
            _ => ValueType::String,
        }
    }

    /// Evaluates the call. Arguments are evaluated left to right; an argument that raises
    /// an error (including a failed cast to the parameter type) makes the call return the
    /// zero value of its return type with that error.
    pub(crate) fn call<'a, A: Attributes + ?Sized>(
        self,
        args: &'a [Node],
        evaluator: &Evaluator<'a, A>,
    ) -> Evaluation<'a> {
        match self.apply(args, evaluator) {
            Ok(evaluation) => evaluation,
            Err(error) => Evaluation {
                value: self.return_type().zero(),
                error: Some(error),
            },
        }
    }

    fn apply<'a, A: Attributes + ?Sized>(
        self,
        args: &'a [Node],
        ev: &Evaluator<'a, A>,
    ) -> Result<Evaluation<'a>, EvalError> {
        let string = |i: usize| ev.string_operand(arg(args, i)?);
        let integer = |i: usize| ev.integer_operand(arg(args, i)?);
        let value = match self {
            Self::Length => Value::Integer(saturating_len(string(0)?.chars().count())),
            Self::Concat => Value::String(concat(args, ev, None)?),
            Self::ConcatWs => {
                let separator = string(0)?;
                Value::String(concat(
                    args.get(1..).unwrap_or_default(),
                    ev,
                    Some(&separator),
                )?)
            }
            Self::Lower => Value::String(Cow::Owned(string(0)?.to_lowercase())),
            Self::Upper => Value::String(Cow::Owned(string(0)?.to_uppercase())),
            Self::Trim => Value::String(map_str(string(0)?, str::trim)),
            Self::Left | Self::Right => {
                let (text, count) = (string(0)?, integer(1)?);
                let Ok(count) = usize::try_from(count) else {
                    return Ok(failed(
                        Value::String(text),
                        ErrorKind::FunctionEvaluation,
                        "the length argument must not be negative",
                    ));
                };
                Value::String(if self == Self::Left {
                    map_str(text, |s| char_prefix(s, count))
                } else {
                    map_str(text, |s| char_suffix(s, count))
                })
            }
            Self::Substring => {
                let (text, position) = (string(0)?, integer(1)?);
                let length = if args.len() == 3 {
                    Some(integer(2)?)
                } else {
                    None
                };
                return Ok(substring(text, position, length));
            }
            Self::Abs => {
                let n = integer(0)?;
                return Ok(match n.checked_abs() {
                    Some(abs) => ok(Value::Integer(abs)),
                    None => failed(
                        Value::Integer(i32::MAX),
                        ErrorKind::Math,
                        "ABS(-2147483648) overflows a 32-bit integer",
                    ),
                });
            }
            Self::Int => Value::Integer(integer(0)?),
            Self::Bool => Value::Boolean(ev.boolean_operand(arg(args, 0)?)?),
            Self::String => Value::String(string(0)?),
        };
        Ok(ok(value))
    }
}

fn arg(args: &[Node], i: usize) -> Result<&Node, EvalError> {
    args.get(i)
        .ok_or_else(|| EvalError::new(ErrorKind::Generic, "argument missing"))
}

fn ok(value: Value<'_>) -> Evaluation<'_> {
    Evaluation { value, error: None }
}

fn failed<'a>(value: Value<'a>, kind: ErrorKind, message: &str) -> Evaluation<'a> {
    Evaluation {
        value,
        error: Some(EvalError::new(kind, message)),
    }
}

fn saturating_len(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// Applies a slicing function, staying borrowed when the input was borrowed.
fn map_str<'a>(text: Cow<'a, str>, slice: impl Fn(&str) -> &str) -> Cow<'a, str> {
    match text {
        Cow::Borrowed(s) => Cow::Borrowed(slice(s)),
        Cow::Owned(s) => Cow::Owned(slice(&s).to_owned()),
    }
}

fn concat<'a, A: Attributes + ?Sized>(
    args: &'a [Node],
    ev: &Evaluator<'a, A>,
    separator: Option<&str>,
) -> Result<Cow<'a, str>, EvalError> {
    let mut out = String::new();
    for (i, node) in args.iter().enumerate() {
        if let (Some(separator), true) = (separator, i > 0) {
            out.push_str(separator);
        }
        out.push_str(&ev.string_operand(node)?);
    }
    Ok(Cow::Owned(out))
}

/// Byte offset of the `n`th character of `s`, or `s.len()` when it has fewer.
fn char_offset(s: &str, n: usize) -> usize {
    s.char_indices().nth(n).map_or(s.len(), |(i, _)| i)
}

fn char_prefix(s: &str, count: usize) -> &str {
    &s[..char_offset(s, count)]
}

fn char_suffix(s: &str, count: usize) -> &str {
    let len = s.chars().count();
    &s[char_offset(s, len.saturating_sub(count))..]
}

/// `SUBSTRING(text, position [, length])` with 1-based positions, negative positions
/// counting from the end, and `position = 0` giving `""`.
fn substring(text: Cow<'_, str>, position: i32, length: Option<i32>) -> Evaluation<'_> {
    let empty = || Value::String(Cow::Borrowed(""));
    let error = |message: &str| failed(empty(), ErrorKind::FunctionEvaluation, message);
    let char_count = i64::try_from(text.chars().count()).unwrap_or(i64::MAX);
    let position = i64::from(position);
    if length.is_some_and(|l| l < 0) {
        return error("the length argument must not be negative");
    }
    if position == 0 {
        return ok(empty());
    }
    if position.abs() > char_count {
        return error("the position is beyond the length of the string");
    }
    let start = if position > 0 {
        position - 1
    } else {
        char_count + position
    };
    let end = length.map_or(char_count, |l| (start + i64::from(l)).min(char_count));
    let (Ok(start), Ok(end)) = (usize::try_from(start), usize::try_from(end)) else {
        return error("the position is out of range");
    };
    ok(Value::String(map_str(text, |s| {
        &s[char_offset(s, start)..char_offset(s, end)]
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolution_by_name_and_arity() {
        let cases = [
            ("length", 1, Some(Function::Length)),
            ("LENGTH", 2, None),
            ("concat", 0, Some(Function::Concat)),
            ("concat_ws", 0, None),
            ("Concat_Ws", 1, Some(Function::ConcatWs)),
            ("substring", 1, None),
            ("substring", 2, Some(Function::Substring)),
            ("substring", 3, Some(Function::Substring)),
            ("substring", 4, None),
            ("int", 1, Some(Function::Int)),
            ("nope", 1, None),
        ];
        for (name, arity, expected) in cases {
            assert_eq!(Function::resolve(name, arity), expected, "{name}/{arity}");
        }
    }

    #[test]
    fn substring_table() {
        let cases: [(&str, i32, Option<i32>, &str, bool); 10] = [
            ("abcdef", 1, None, "abcdef", false),
            ("abcdef", 6, None, "f", false),
            ("abcdef", 7, None, "", true),
            ("abcdef", -1, None, "f", false),
            ("abcdef", -6, None, "abcdef", false),
            ("abcdef", -7, None, "", true),
            ("abcdef", 2, Some(100), "bcdef", false),
            ("abcdef", 2, Some(-1), "", true),
            ("héllo", 2, Some(3), "éll", false),
            ("abc", i32::MIN, None, "", true),
        ];
        for (text, position, length, expected, is_error) in cases {
            let got = substring(Cow::Borrowed(text), position, length);
            assert_eq!(got.value, Value::String(Cow::Borrowed(expected)));
            assert_eq!(
                got.error.is_some(),
                is_error,
                "{text} {position} {length:?}"
            );
        }
    }
}
