//! CloudEvents SQL (CESQL) v1.0: parse an expression once, evaluate it against many events.
//!
//! # Layout
//!
//! source text → `lexer` tokens → `parser` tree (LIKE patterns compiled, functions
//! resolved, identifiers lowercased) → `eval` walks the tree against an [`Attributes`] implementation, producing a [`Value`] and at
//! most one [`EvalError`] (fail-fast mode).
//!
//! ```
//! use ferry_cesql::{AttributeValue, Attributes, Expression};
//!
//! struct Event;
//! impl Attributes for Event {
//!     fn attribute(&self, name: &str) -> Option<AttributeValue<'_>> {
//!         match name {
//!             "type" => Some(AttributeValue::String("com.example.order.created")),
//!             "id" | "source" | "specversion" => Some(AttributeValue::String("x")),
//!             _ => None,
//!         }
//!     }
//! }
//!
//! let filter = Expression::parse("type LIKE 'com.example.%' AND NOT EXISTS subject")?;
//! assert_eq!(filter.matches(&Event), Ok(true));
//! # Ok::<(), ferry_cesql::ParseError>(())
//! ```

mod ast;
mod error;
mod eval;
mod functions;
mod lexer;
mod like;
mod parser;
mod value;

pub use error::{ErrorKind, EvalError, ParseError};
pub use value::{AttributeValue, Attributes, Value, ValueType};

use eval::Evaluator;

/// A parsed expression; parse once, evaluate many times.
#[derive(Debug, Clone, PartialEq)]
pub struct Expression {
    source: Box<str>,
    root: ast::Node,
}

/// The outcome of evaluating an expression: CESQL always yields a value, and here at
/// most one error (the first one met).
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation<'a> {
    /// The value of the expression; a zero value (`false`, `0`, `""`) when an operator
    /// failed.
    pub value: Value<'a>,
    /// The error that stopped evaluation, if any.
    pub error: Option<EvalError>,
}

impl Expression {
    /// Parses `source`. A `LIKE` pattern that is not a string literal, an integer literal
    /// outside 32 bits, or nesting deeper than 128 levels is a [`ParseError`].
    pub fn parse(source: &str) -> Result<Expression, ParseError> {
        Ok(Self {
            source: source.into(),
            root: parser::parse(source)?,
        })
    }

    /// Evaluates the expression against `event` in fail-fast mode: the first error stops
    /// evaluation, enclosing operators return their zero value, and that error is
    /// reported next to the value.
    pub fn evaluate<'a, A: Attributes + ?Sized>(&'a self, event: &'a A) -> Evaluation<'a> {
        Evaluator::new(event).evaluate(&self.root)
    }

    /// Filter semantics (Subscriptions API `sql` dialect): `Ok(true)` only when the value
    /// is Boolean `true` without error, `Ok(false)` for any other value without error,
    /// and `Err` when evaluation raised an error.
    pub fn matches<A: Attributes + ?Sized>(&self, event: &A) -> Result<bool, EvalError> {
        let Evaluation { value, error } = self.evaluate(event);
        match error {
            Some(error) => Err(error),
            None => Ok(value == Value::Boolean(true)),
        }
    }

    /// The source text the expression was parsed from.
    pub fn source(&self) -> &str {
        &self.source
    }
}

impl std::str::FromStr for Expression {
    type Err = ParseError;

    fn from_str(source: &str) -> Result<Self, Self::Err> {
        Self::parse(source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync_clone<T: Send + Sync + Clone + std::fmt::Debug>() {}

    #[test]
    fn expression_is_shareable() {
        assert_send_sync_clone::<Expression>();
    }
}
