//! Error types: compile-time [`ParseError`] and evaluation-time [`EvalError`].

use std::fmt;

/// A CESQL expression could not be parsed.
///
/// `position` is a byte offset into the source; `line` and `column` are 1-based, the
/// column counted in characters.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
#[error("at line {line}, column {column}: {message}")]
pub struct ParseError {
    /// Byte offset in the source where the problem was found.
    pub position: usize,
    /// 1-based line number.
    pub line: usize,
    /// 1-based column number, in characters.
    pub column: usize,
    /// What went wrong.
    pub message: String,
}

impl ParseError {
    /// Builds an error at byte offset `position` of `source`, computing line and column.
    pub(crate) fn at(source: &str, position: usize, message: impl Into<String>) -> Self {
        let position = position.min(source.len());
        let before = source.get(..position).unwrap_or(source);
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        Self {
            position,
            line,
            column,
            message: message.into(),
        }
    }
}

/// The CESQL error types (CESQL v1 §3.3), so a caller can act on the kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The expression is not valid CESQL.
    Parse,
    /// Division or modulo by zero, or 32-bit integer overflow.
    Math,
    /// A value could not be cast to the type an operator or function needs.
    Cast,
    /// The expression referenced an attribute the event does not have.
    MissingAttribute,
    /// No function with that name and arity exists.
    MissingFunction,
    /// A function rejected its arguments (for example `LEFT('abc', -1)`).
    FunctionEvaluation,
    /// Any other failure.
    Generic,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Parse => "parse error",
            Self::Math => "math error",
            Self::Cast => "cast error",
            Self::MissingAttribute => "missing attribute",
            Self::MissingFunction => "missing function",
            Self::FunctionEvaluation => "function evaluation error",
            Self::Generic => "error",
        })
    }
}

/// An error raised while evaluating an expression against an event.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
#[error("{kind}: {message}")]
pub struct EvalError {
    /// Which CESQL error type this is.
    pub kind: ErrorKind,
    /// Human-readable detail.
    pub message: String,
}

impl EvalError {
    /// Creates an error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

impl From<ParseError> for EvalError {
    fn from(error: ParseError) -> Self {
        Self::new(ErrorKind::Parse, error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_error_line_and_column() {
        let cases = [
            ("abc", 0, 1, 1),
            ("abc", 2, 1, 3),
            ("abc", 3, 1, 4),
            ("a\nbc", 2, 2, 1),
            ("a\nbc", 3, 2, 2),
            ("é = x", 3, 1, 3),
        ];
        for (source, position, line, column) in cases {
            let error = ParseError::at(source, position, "boom");
            assert_eq!(
                (error.line, error.column),
                (line, column),
                "{source:?}@{position}"
            );
        }
    }

    #[test]
    fn display_formats() {
        let error = ParseError::at("a\nb", 2, "unexpected identifier");
        assert_eq!(
            error.to_string(),
            "at line 2, column 1: unexpected identifier"
        );
        let error = EvalError::new(ErrorKind::Math, "division by zero");
        assert_eq!(error.to_string(), "math error: division by zero");
    }
}
