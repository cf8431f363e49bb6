//! Recursive-descent parser producing the [`Node`] tree.
//!
//! Precedence follows the CESQL v1 spec text, highest first: function calls; unary `NOT`
//! and `-`; `LIKE`; `EXISTS`; `IN`; `* / %`; `+ -`; comparisons; `AND OR XOR` (all one
//! level). Equal precedence groups left to right.

use crate::ast::{BinaryOp, Literal, LogicalOp, Node};
use crate::error::ParseError;
use crate::functions::Function;
use crate::lexer::{tokenize, Token, TokenKind};
use crate::like::LikePattern;

/// Deepest tree (and parenthesis nesting) accepted, so that neither parsing nor
/// evaluating nor dropping an expression can exhaust the stack.
pub(crate) const MAX_DEPTH: usize = 128;

/// A parsed subtree and its height.
type Parsed = (Node, usize);

/// Parses a complete expression.
pub(crate) fn parse(source: &str) -> Result<Node, ParseError> {
    let tokens = tokenize(source)?;
    let mut parser = Parser {
        source,
        tokens,
        next: 0,
        nesting: 0,
    };
    let (node, _) = parser.expression()?;
    match parser.peek() {
        None => Ok(node),
        Some(token) => Err(parser.error_at(
            token.position,
            format!("unexpected {}", token.kind.describe()),
        )),
    }
}

struct Parser<'s> {
    source: &'s str,
    tokens: Vec<Token>,
    next: usize,
    nesting: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.next)
    }

    fn peek_kind(&self) -> Option<&TokenKind> {
        self.peek().map(|t| &t.kind)
    }

    fn peek_second_kind(&self) -> Option<&TokenKind> {
        self.tokens.get(self.next + 1).map(|t| &t.kind)
    }

    fn advance(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.next).cloned();
        if token.is_some() {
            self.next += 1;
        }
        token
    }

    fn eat(&mut self, kind: &TokenKind) -> bool {
        if self.peek_kind() == Some(kind) {
            self.next += 1;
            true
        } else {
            false
        }
    }

    /// Byte offset of the next token, or the end of the source.
    fn position(&self) -> usize {
        self.peek().map_or(self.source.len(), |t| t.position)
    }

    fn error_at(&self, position: usize, message: impl Into<String>) -> ParseError {
        ParseError::at(self.source, position, message)
    }

    /// An error at the next token saying what was expected there.
    fn expected(&self, what: &str) -> ParseError {
        let found = self
            .peek()
            .map_or_else(|| "end of input".to_owned(), |t| t.kind.describe());
        self.error_at(self.position(), format!("expected {what}, found {found}"))
    }

    fn expect(&mut self, kind: &TokenKind, what: &str) -> Result<(), ParseError> {
        if self.eat(kind) {
            Ok(())
        } else {
            Err(self.expected(what))
        }
    }

    /// Checks the height of a node about to be built.
    fn build(&self, node: Node, height: usize, position: usize) -> Result<Parsed, ParseError> {
        if height > MAX_DEPTH {
            return Err(self.error_at(position, "expression is nested too deeply"));
        }
        Ok((node, height))
    }

    fn expression(&mut self) -> Result<Parsed, ParseError> {
        self.nesting += 1;
        if self.nesting > MAX_DEPTH {
            return Err(self.error_at(self.position(), "expression is nested too deeply"));
        }
        let parsed = self.logical();
        self.nesting -= 1;
        parsed
    }

    fn logical(&mut self) -> Result<Parsed, ParseError> {
        let mut left = self.comparison()?;
        loop {
            let op = match self.peek_kind() {
                Some(TokenKind::And) => LogicalOp::And,
                Some(TokenKind::Or) => LogicalOp::Or,
                Some(TokenKind::Xor) => LogicalOp::Xor,
                _ => return Ok(left),
            };
            let position = self.position();
            self.next += 1;
            let right = self.comparison()?;
            let height = left.1.max(right.1) + 1;
            let node = Node::Logical {
                op,
                left: Box::new(left.0),
                right: Box::new(right.0),
            };
            left = self.build(node, height, position)?;
        }
    }

    fn comparison(&mut self) -> Result<Parsed, ParseError> {
        self.binary_level(Self::additive, |kind| match kind {
            TokenKind::Equal => Some(BinaryOp::Equal),
            TokenKind::NotEqual => Some(BinaryOp::NotEqual),
            TokenKind::Less => Some(BinaryOp::Less),
            TokenKind::LessOrEqual => Some(BinaryOp::LessOrEqual),
            TokenKind::Greater => Some(BinaryOp::Greater),
            TokenKind::GreaterOrEqual => Some(BinaryOp::GreaterOrEqual),
            _ => None,
        })
    }

    fn additive(&mut self) -> Result<Parsed, ParseError> {
        self.binary_level(Self::multiplicative, |kind| match kind {
            TokenKind::Plus => Some(BinaryOp::Add),
            TokenKind::Minus => Some(BinaryOp::Subtract),
            _ => None,
        })
    }

    fn multiplicative(&mut self) -> Result<Parsed, ParseError> {
        self.binary_level(Self::membership, |kind| match kind {
            TokenKind::Star => Some(BinaryOp::Multiply),
            TokenKind::Slash => Some(BinaryOp::Divide),
            TokenKind::Percent => Some(BinaryOp::Modulo),
            _ => None,
        })
    }

    /// One left-associative level of binary operators.
    fn binary_level(
        &mut self,
        operand: fn(&mut Self) -> Result<Parsed, ParseError>,
        operator: fn(&TokenKind) -> Option<BinaryOp>,
    ) -> Result<Parsed, ParseError> {
        let mut left = operand(self)?;
        while let Some(op) = self.peek_kind().and_then(operator) {
            let position = self.position();
            self.next += 1;
            let right = operand(self)?;
            let height = left.1.max(right.1) + 1;
            let node = Node::Binary {
                op,
                left: Box::new(left.0),
                right: Box::new(right.0),
            };
            left = self.build(node, height, position)?;
        }
        Ok(left)
    }

    /// `x [NOT] IN (e1, …)`.
    fn membership(&mut self) -> Result<Parsed, ParseError> {
        let mut left = self.like()?;
        loop {
            let negated = match (self.peek_kind(), self.peek_second_kind()) {
                (Some(TokenKind::In), _) => false,
                (Some(TokenKind::Not), Some(TokenKind::In)) => true,
                _ => return Ok(left),
            };
            let position = self.position();
            self.next += if negated { 2 } else { 1 };
            self.expect(&TokenKind::LeftParen, "'(' to open the IN set")?;
            let mut set = Vec::new();
            let mut height = left.1;
            loop {
                let (element, element_height) = self.expression()?;
                height = height.max(element_height);
                set.push(element);
                if !self.eat(&TokenKind::Comma) {
                    break;
                }
            }
            self.expect(&TokenKind::RightParen, "',' or ')' in the IN set")?;
            let node = Node::In {
                operand: Box::new(left.0),
                set,
                negated,
            };
            left = self.build(node, height + 1, position)?;
        }
    }

    /// `x [NOT] LIKE 'pattern'`; the pattern must be a string literal.
    fn like(&mut self) -> Result<Parsed, ParseError> {
        let mut left = self.unary()?;
        loop {
            let negated = match (self.peek_kind(), self.peek_second_kind()) {
                (Some(TokenKind::Like), _) => false,
                (Some(TokenKind::Not), Some(TokenKind::Like)) => true,
                _ => return Ok(left),
            };
            let position = self.position();
            self.next += if negated { 2 } else { 1 };
            let pattern = match self.peek_kind() {
                Some(TokenKind::String(text)) => LikePattern::compile(text),
                _ => return Err(self.expected("a string literal as the LIKE pattern")),
            };
            self.next += 1;
            let node = Node::Like {
                operand: Box::new(left.0),
                pattern,
                negated,
            };
            left = self.build(node, left.1 + 1, position)?;
        }
    }

    fn unary(&mut self) -> Result<Parsed, ParseError> {
        let position = self.position();
        match self.peek_kind() {
            Some(TokenKind::Not) => {
                self.next += 1;
                let (operand, height) = self.nested(Self::unary)?;
                self.build(Node::Not(Box::new(operand)), height + 1, position)
            }
            Some(TokenKind::Minus) => {
                self.next += 1;
                // A minus directly before an integer literal is the literal's sign, which
                // is what lets -2147483648 be written.
                if let Some(&TokenKind::Integer(magnitude)) = self.peek_kind() {
                    self.next += 1;
                    let value = i64::try_from(magnitude)
                        .ok()
                        .and_then(|m| i32::try_from(-m).ok())
                        .ok_or_else(|| {
                            self.error_at(position, "integer literal does not fit in 32 bits")
                        })?;
                    return Ok((Node::Literal(Literal::Integer(value)), 1));
                }
                let (operand, height) = self.nested(Self::unary)?;
                self.build(Node::Negate(Box::new(operand)), height + 1, position)
            }
            _ => self.primary(),
        }
    }

    /// Runs `parse` one nesting level deeper, bounding recursion on input like `NOT NOT …`.
    fn nested(
        &mut self,
        parse: fn(&mut Self) -> Result<Parsed, ParseError>,
    ) -> Result<Parsed, ParseError> {
        self.nesting += 1;
        if self.nesting > MAX_DEPTH {
            return Err(self.error_at(self.position(), "expression is nested too deeply"));
        }
        let parsed = parse(self);
        self.nesting -= 1;
        parsed
    }

    fn primary(&mut self) -> Result<Parsed, ParseError> {
        let position = self.position();
        let Some(token) = self.advance() else {
            return Err(self.expected("an expression"));
        };
        let leaf = |node| Ok((node, 1));
        match token.kind {
            TokenKind::True => leaf(Node::Literal(Literal::Boolean(true))),
            TokenKind::False => leaf(Node::Literal(Literal::Boolean(false))),
            TokenKind::String(text) => leaf(Node::Literal(Literal::String(text.into()))),
            TokenKind::Integer(magnitude) => match i32::try_from(magnitude) {
                Ok(value) => leaf(Node::Literal(Literal::Integer(value))),
                Err(_) => Err(self.error_at(position, "integer literal does not fit in 32 bits")),
            },
            TokenKind::Exists => match self.advance() {
                Some(Token {
                    kind: TokenKind::Identifier(name),
                    ..
                }) => leaf(Node::Exists(name.into())),
                _ => {
                    self.next -= 1;
                    Err(self.expected("an attribute name after EXISTS"))
                }
            },
            TokenKind::Identifier(name) => {
                if self.eat(&TokenKind::LeftParen) {
                    self.call(name, position)
                } else {
                    leaf(Node::Attribute(name.into()))
                }
            }
            TokenKind::LeftParen => {
                let inner = self.expression()?;
                self.expect(&TokenKind::RightParen, "')'")?;
                Ok(inner)
            }
            _ => {
                self.next -= 1;
                Err(self.expected("an expression"))
            }
        }
    }

    /// A function call; the name and `(` are already consumed.
    fn call(&mut self, name: String, position: usize) -> Result<Parsed, ParseError> {
        let mut args = Vec::new();
        let mut height = 0;
        if !self.eat(&TokenKind::RightParen) {
            loop {
                let (arg, arg_height) = self.expression()?;
                height = height.max(arg_height);
                args.push(arg);
                if !self.eat(&TokenKind::Comma) {
                    break;
                }
            }
            self.expect(&TokenKind::RightParen, "',' or ')' in the argument list")?;
        }
        let node = match Function::resolve(&name, args.len()) {
            Some(function) => Node::Call { function, args },
            None => Node::MissingFunction {
                arity: args.len(),
                name: name.into(),
            },
        };
        self.build(node, height + 1, position)
    }
}

#[cfg(test)]
mod tests;
