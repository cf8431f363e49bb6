//! The syntax tree the parser builds and the evaluator walks.

use std::borrow::Cow;

use crate::functions::Function;
use crate::like::LikePattern;
use crate::value::{Value, ValueType};

/// A literal value stored in the tree; evaluation borrows its string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Literal {
    Boolean(bool),
    Integer(i32),
    String(Box<str>),
}

impl Literal {
    pub(crate) fn value(&self) -> Value<'_> {
        match self {
            Self::Boolean(b) => Value::Boolean(*b),
            Self::Integer(i) => Value::Integer(*i),
            Self::String(s) => Value::String(Cow::Borrowed(s)),
        }
    }
}

/// Binary operators other than the logical ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BinaryOp {
    Multiply,
    Divide,
    Modulo,
    Add,
    Subtract,
    Equal,
    NotEqual,
    Less,
    LessOrEqual,
    Greater,
    GreaterOrEqual,
}

impl BinaryOp {
    pub(crate) fn result_type(self) -> ValueType {
        match self {
            Self::Multiply | Self::Divide | Self::Modulo | Self::Add | Self::Subtract => {
                ValueType::Integer
            }
            _ => ValueType::Boolean,
        }
    }
}

/// `AND`, `OR`, `XOR`: one precedence level, evaluated left to right.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LogicalOp {
    And,
    Or,
    Xor,
}

/// An expression node.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Node {
    Literal(Literal),
    /// An attribute reference; the name is lowercase.
    Attribute(Box<str>),
    /// `EXISTS name`; the name is lowercase.
    Exists(Box<str>),
    Not(Box<Node>),
    Negate(Box<Node>),
    Binary {
        op: BinaryOp,
        left: Box<Node>,
        right: Box<Node>,
    },
    Logical {
        op: LogicalOp,
        left: Box<Node>,
        right: Box<Node>,
    },
    Like {
        operand: Box<Node>,
        pattern: LikePattern,
        negated: bool,
    },
    In {
        operand: Box<Node>,
        set: Vec<Node>,
        negated: bool,
    },
    Call {
        function: Function,
        args: Vec<Node>,
    },
    /// A call with no matching overload: evaluates to `false` plus MissingFunctionError.
    MissingFunction {
        name: Box<str>,
        arity: usize,
    },
}
