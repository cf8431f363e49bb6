//! Tree-walking evaluator.
//!
//! Evaluation is fail-fast: the first error stops the evaluation of the operator that
//! saw it, and every enclosing operator then returns the zero value of its own result
//! type, carrying that one error to the top. A function that fails by its own definition
//! (`ABS(-2147483648)`, `LEFT('abc', -1)`, `SUBSTRING` out of range) still returns the
//! value its definition specifies. Nothing here allocates unless a string must be built
//! (integer to string casts, `LOWER`, `CONCAT` …) or an error is raised.

use std::borrow::Cow;

use crate::ast::{BinaryOp, LogicalOp, Node};
use crate::error::{ErrorKind, EvalError};
use crate::like::LikePattern;
use crate::value::{self, Attributes, Value, ValueType};
use crate::Evaluation;

/// The attributes every CloudEvent has, so `EXISTS` is always true for them.
const REQUIRED_ATTRIBUTES: [&str; 4] = ["id", "source", "specversion", "type"];

/// Walks an expression tree against one event.
pub(crate) struct Evaluator<'a, A: ?Sized> {
    event: &'a A,
}

impl<'a, A: Attributes + ?Sized> Evaluator<'a, A> {
    pub(crate) fn new(event: &'a A) -> Self {
        Self { event }
    }

    /// Evaluates `node` to a value and at most one error.
    pub(crate) fn evaluate(&self, node: &'a Node) -> Evaluation<'a> {
        match node {
            Node::Literal(literal) => ok(literal.value()),
            Node::Attribute(name) => match self.event.attribute(name) {
                Some(value) => ok(value.into()),
                None => Evaluation {
                    value: Value::Boolean(false),
                    error: Some(missing_attribute(name)),
                },
            },
            Node::Exists(name) => ok(Value::Boolean(
                REQUIRED_ATTRIBUTES.contains(&&**name) || self.event.attribute(name).is_some(),
            )),
            Node::Not(operand) => self.not(operand),
            Node::Negate(operand) => or_zero(ValueType::Integer, self.negate(operand)),
            Node::Binary { op, left, right } => {
                or_zero(op.result_type(), self.binary(*op, left, right))
            }
            Node::Logical { op, left, right } => {
                or_zero(ValueType::Boolean, self.logical(*op, left, right))
            }
            Node::Like {
                operand,
                pattern,
                negated,
            } => or_zero(ValueType::Boolean, self.like(operand, pattern, *negated)),
            Node::In {
                operand,
                set,
                negated,
            } => or_zero(ValueType::Boolean, self.membership(operand, set, *negated)),
            Node::Call { function, args } => function.call(args, self),
            Node::MissingFunction { name, arity } => Evaluation {
                value: Value::Boolean(false),
                error: Some(EvalError::new(
                    ErrorKind::MissingFunction,
                    format!("no function {}/{arity}", name.to_ascii_uppercase()),
                )),
            },
        }
    }

    /// Evaluates an operand, turning an error it raised into `Err`.
    pub(crate) fn operand(&self, node: &'a Node) -> Result<Value<'a>, EvalError> {
        let Evaluation { value, error } = self.evaluate(node);
        match error {
            None => Ok(value),
            Some(error) => Err(error),
        }
    }

    pub(crate) fn string_operand(&self, node: &'a Node) -> Result<Cow<'a, str>, EvalError> {
        Ok(value::to_string(self.operand(node)?))
    }

    pub(crate) fn integer_operand(&self, node: &'a Node) -> Result<i32, EvalError> {
        value::to_integer(&self.operand(node)?)
    }

    pub(crate) fn boolean_operand(&self, node: &'a Node) -> Result<bool, EvalError> {
        value::to_boolean(&self.operand(node)?)
    }

    /// `NOT x`. Kept compatible with the v1 TCK, which expects `NOT 10` to give `true`
    /// plus CastError: the operand goes through a strict Boolean cast that rejects
    /// Integers, and the (zero) cast result is negated, carrying the CastError.
    fn not(&self, operand: &'a Node) -> Evaluation<'a> {
        let cast = match self.operand(operand) {
            Err(error) => {
                return Evaluation {
                    value: Value::Boolean(false),
                    error: Some(error),
                }
            }
            Ok(Value::Boolean(b)) => Ok(b),
            Ok(Value::String(s)) => value::string_to_boolean(&s),
            Ok(Value::Integer(i)) => Err(EvalError::new(
                ErrorKind::Cast,
                format!("NOT needs a Boolean operand, got the Integer {i}"),
            )),
        };
        match cast {
            Ok(b) => ok(Value::Boolean(!b)),
            Err(error) => Evaluation {
                value: Value::Boolean(true),
                error: Some(error),
            },
        }
    }

    fn negate(&self, operand: &'a Node) -> Result<Value<'a>, EvalError> {
        let n = self.integer_operand(operand)?;
        n.checked_neg()
            .map(Value::Integer)
            .ok_or_else(|| overflow("-(-2147483648)"))
    }

    fn binary(
        &self,
        op: BinaryOp,
        left: &'a Node,
        right: &'a Node,
    ) -> Result<Value<'a>, EvalError> {
        let (left, right) = (self.operand(left)?, self.operand(right)?);
        let truth = |b: bool| Ok(Value::Boolean(b));
        match op {
            BinaryOp::Equal => truth(equal(left, &right)?),
            BinaryOp::NotEqual => truth(!equal(left, &right)?),
            _ => {
                let (l, r) = (value::to_integer(&left)?, value::to_integer(&right)?);
                match op {
                    BinaryOp::Less => truth(l < r),
                    BinaryOp::LessOrEqual => truth(l <= r),
                    BinaryOp::Greater => truth(l > r),
                    BinaryOp::GreaterOrEqual => truth(l >= r),
                    _ => arithmetic(op, l, r).map(Value::Integer),
                }
            }
        }
    }

    /// `AND`, `OR`, `XOR`; `AND` and `OR` short-circuit.
    fn logical(
        &self,
        op: LogicalOp,
        left: &'a Node,
        right: &'a Node,
    ) -> Result<Value<'a>, EvalError> {
        let l = self.boolean_operand(left)?;
        match (op, l) {
            (LogicalOp::And, false) => return Ok(Value::Boolean(false)),
            (LogicalOp::Or, true) => return Ok(Value::Boolean(true)),
            _ => {}
        }
        let r = self.boolean_operand(right)?;
        Ok(Value::Boolean(match op {
            LogicalOp::And => l && r,
            LogicalOp::Or => l || r,
            LogicalOp::Xor => l != r,
        }))
    }

    fn like(
        &self,
        operand: &'a Node,
        pattern: &LikePattern,
        negated: bool,
    ) -> Result<Value<'a>, EvalError> {
        let text = self.string_operand(operand)?;
        Ok(Value::Boolean(pattern.matches(&text) != negated))
    }

    /// `x [NOT] IN (…)`: each element is cast to the type of `x`, then compared with `=`.
    fn membership(
        &self,
        operand: &'a Node,
        set: &'a [Node],
        negated: bool,
    ) -> Result<Value<'a>, EvalError> {
        let needle = self.operand(operand)?;
        let target = needle.value_type();
        for element in set {
            let element = value::cast(self.operand(element)?, target)?;
            if needle == element {
                return Ok(Value::Boolean(!negated));
            }
        }
        Ok(Value::Boolean(negated))
    }
}

/// `=`: the right operand's type picks the overload and the left operand is cast to it.
fn equal(left: Value<'_>, right: &Value<'_>) -> Result<bool, EvalError> {
    Ok(match right {
        Value::Integer(r) => value::to_integer(&left)? == *r,
        Value::Boolean(r) => value::to_boolean(&left)? == *r,
        Value::String(r) => value::to_string(left) == *r,
    })
}

fn arithmetic(op: BinaryOp, l: i32, r: i32) -> Result<i32, EvalError> {
    let division_by_zero = || EvalError::new(ErrorKind::Math, "division by zero");
    match op {
        BinaryOp::Add => l.checked_add(r).ok_or_else(|| overflow("+")),
        BinaryOp::Subtract => l.checked_sub(r).ok_or_else(|| overflow("-")),
        BinaryOp::Multiply => l.checked_mul(r).ok_or_else(|| overflow("*")),
        BinaryOp::Divide if r == 0 => Err(division_by_zero()),
        BinaryOp::Divide => l.checked_div(r).ok_or_else(|| overflow("/")),
        BinaryOp::Modulo if r == 0 => Err(division_by_zero()),
        // i32::MIN % -1 overflows in hardware but is mathematically 0.
        BinaryOp::Modulo => Ok(l.checked_rem(r).unwrap_or(0)),
        _ => Err(EvalError::new(
            ErrorKind::Generic,
            "not an arithmetic operator",
        )),
    }
}

fn overflow(operator: &str) -> EvalError {
    EvalError::new(ErrorKind::Math, format!("integer overflow in '{operator}'"))
}

fn missing_attribute(name: &str) -> EvalError {
    EvalError::new(
        ErrorKind::MissingAttribute,
        format!("the event has no attribute '{name}'"),
    )
}

fn ok(value: Value<'_>) -> Evaluation<'_> {
    Evaluation { value, error: None }
}

/// Turns an operator's failure into its zero value plus the error.
fn or_zero(result_type: ValueType, result: Result<Value<'_>, EvalError>) -> Evaluation<'_> {
    match result {
        Ok(value) => ok(value),
        Err(error) => Evaluation {
            value: result_type.zero(),
            error: Some(error),
        },
    }
}

#[cfg(test)]
mod tests;
