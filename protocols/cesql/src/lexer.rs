//! Tokenizer for CESQL source text.
//!
//! Integer literals are lexed without a sign; the parser folds a leading `-` into the
//! literal, so `4-1` is a subtraction rather than `4` followed by `-1`.

use crate::error::ParseError;

/// A token kind, with its payload where it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TokenKind {
    LeftParen,
    RightParen,
    Comma,
    Plus,
    Minus,
    Star,
    Slash,
    Percent,
    Equal,
    NotEqual,
    Less,
    LessOrEqual,
    Greater,
    GreaterOrEqual,
    And,
    Or,
    Xor,
    Not,
    Like,
    Exists,
    In,
    True,
    False,
    /// Unsigned decimal digits, range-checked by the parser once the sign is known.
    Integer(u64),
    /// A string literal with escapes resolved.
    String(String),
    /// An identifier, lowercased.
    Identifier(String),
}

impl TokenKind {
    /// How the token is named in error messages.
    pub(crate) fn describe(&self) -> String {
        match self {
            Self::Integer(_) => "integer literal".to_owned(),
            Self::String(_) => "string literal".to_owned(),
            Self::Identifier(name) => format!("identifier '{name}'"),
            other => format!("'{}'", other.symbol()),
        }
    }

    fn symbol(&self) -> &'static str {
        match self {
            Self::LeftParen => "(",
            Self::RightParen => ")",
            Self::Comma => ",",
            Self::Plus => "+",
            Self::Minus => "-",
            Self::Star => "*",
            Self::Slash => "/",
            Self::Percent => "%",
            Self::Equal => "=",
            Self::NotEqual => "!=",
            Self::Less => "<",
            Self::LessOrEqual => "<=",
            Self::Greater => ">",
            Self::GreaterOrEqual => ">=",
            Self::And => "AND",
            Self::Or => "OR",
            Self::Xor => "XOR",
            Self::Not => "NOT",
            Self::Like => "LIKE",
            Self::Exists => "EXISTS",
            Self::In => "IN",
            Self::True => "TRUE",
            Self::False => "FALSE",
            Self::Integer(_) | Self::String(_) | Self::Identifier(_) => "",
        }
    }
}

/// A token and the byte offset where it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Token {
    pub(crate) kind: TokenKind,
    pub(crate) position: usize,
}

/// Splits `source` into tokens.
pub(crate) fn tokenize(source: &str) -> Result<Vec<Token>, ParseError> {
    let mut tokens = Vec::new();
    let mut chars = source.char_indices().peekable();
    while let Some((start, c)) = chars.next() {
        let kind = match c {
            c if c.is_whitespace() => continue,
            '(' => TokenKind::LeftParen,
            ')' => TokenKind::RightParen,
            ',' => TokenKind::Comma,
            '+' => TokenKind::Plus,
            '-' => TokenKind::Minus,
            '*' => TokenKind::Star,
            '/' => TokenKind::Slash,
            '%' => TokenKind::Percent,
            '=' => TokenKind::Equal,
            '!' => match chars.next_if(|&(_, c)| c == '=') {
                Some(_) => TokenKind::NotEqual,
                None => return Err(ParseError::at(source, start, "expected '=' after '!'")),
            },
            '<' => match chars.next_if(|&(_, c)| c == '=' || c == '>') {
                Some((_, '=')) => TokenKind::LessOrEqual,
                Some(_) => TokenKind::NotEqual,
                None => TokenKind::Less,
            },
            '>' => match chars.next_if(|&(_, c)| c == '=') {
                Some(_) => TokenKind::GreaterOrEqual,
                None => TokenKind::Greater,
            },
            '\'' | '"' => TokenKind::String(string_literal(source, start, c, &mut chars)?),
            '0'..='9' => {
                let mut end = start + 1;
                while let Some((i, d)) = chars.next_if(|&(_, d)| d.is_ascii_digit()) {
                    end = i + d.len_utf8();
                }
                let digits = &source[start..end];
                let value = digits.parse::<u64>().map_err(|_| {
                    ParseError::at(source, start, "integer literal does not fit in 32 bits")
                })?;
                TokenKind::Integer(value)
            }
            c if c.is_ascii_alphabetic() => {
                let mut end = start + 1;
                while let Some((i, _)) =
                    chars.next_if(|&(_, d)| d.is_ascii_alphanumeric() || d == '_')
                {
                    end = i + 1;
                }
                word(&source[start..end])
            }
            other => {
                return Err(ParseError::at(
                    source,
                    start,
                    format!("unexpected character '{other}'"),
                ))
            }
        };
        tokens.push(Token {
            kind,
            position: start,
        });
    }
    Ok(tokens)
}

/// Reads a string literal whose opening `quote` is at `start`.
///
/// A backslash escapes the delimiter (`\'` in `'…'`, `\"` in `"…"`) and itself (`\\`);
/// before any other character it is kept as it is, so `'a\_b'` reaches `LIKE` intact.
fn string_literal(
    source: &str,
    start: usize,
    quote: char,
    chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>,
) -> Result<String, ParseError> {
    let mut text = String::new();
    while let Some((_, c)) = chars.next() {
        match c {
            c if c == quote => return Ok(text),
            '\\' => match chars.next_if(|&(_, next)| next == quote || next == '\\') {
                Some((_, escaped)) => text.push(escaped),
                None => text.push('\\'),
            },
            other => text.push(other),
        }
    }
    Err(ParseError::at(source, start, "unterminated string literal"))
}

/// Classifies a word as a keyword or an identifier (case-insensitively).
fn word(text: &str) -> TokenKind {
    const KEYWORDS: [(&str, TokenKind); 9] = [
        ("AND", TokenKind::And),
        ("OR", TokenKind::Or),
        ("XOR", TokenKind::Xor),
        ("NOT", TokenKind::Not),
        ("LIKE", TokenKind::Like),
        ("EXISTS", TokenKind::Exists),
        ("IN", TokenKind::In),
        ("TRUE", TokenKind::True),
        ("FALSE", TokenKind::False),
    ];
    KEYWORDS
        .iter()
        .find(|(keyword, _)| keyword.eq_ignore_ascii_case(text))
        .map_or_else(
            || TokenKind::Identifier(text.to_ascii_lowercase()),
            |(_, kind)| kind.clone(),
        )
}

#[cfg(test)]
mod tests {
    use super::TokenKind::*;
    use super::*;

    fn kinds(source: &str) -> Vec<TokenKind> {
        match tokenize(source) {
            Ok(tokens) => tokens.into_iter().map(|t| t.kind).collect(),
            Err(error) => panic!("{source:?}: {error}"),
        }
    }

    #[test]
    fn token_table() {
        let s = |text: &str| String(text.to_owned());
        let id = |text: &str| Identifier(text.to_owned());
        let cases = vec![
            ("", vec![]),
            ("4-1", vec![Integer(4), Minus, Integer(1)]),
            ("-10", vec![Minus, Integer(10)]),
            ("a<>b", vec![id("a"), NotEqual, id("b")]),
            ("a != b", vec![id("a"), NotEqual, id("b")]),
            (
                "<= < >= > =",
                vec![LessOrEqual, Less, GreaterOrEqual, Greater, Equal],
            ),
            ("tRuE FaLsE", vec![True, False]),
            (
                "and Or XOR not like exists in",
                vec![And, Or, Xor, Not, Like, Exists, In],
            ),
            ("SOURCE", vec![id("source")]),
            ("CONCAT_WS(", vec![id("concat_ws"), LeftParen]),
            ("'abc'", vec![s("abc")]),
            ("\"abc\"", vec![s("abc")]),
            (r#"'a"b\'c'"#, vec![s("a\"b'c")]),
            (r#""a'b\"c""#, vec![s("a'b\"c")]),
            (r"'ab\c'", vec![s(r"ab\c")]),
            (r"'a\_b'", vec![s(r"a\_b")]),
            (r"'a\\'", vec![s(r"a\")]),
            (
                "*/%+,()",
                vec![Star, Slash, Percent, Plus, Comma, LeftParen, RightParen],
            ),
            ("2147483648", vec![Integer(2_147_483_648)]),
        ];
        for (source, expected) in cases {
            assert_eq!(kinds(source), expected, "{source:?}");
        }
    }

    #[test]
    fn token_positions_are_byte_offsets() {
        let cases = [
            ("ab  = 'x'", vec![0, 4, 6]),
            ("'é' = x", vec![0, 5, 7]),
            ("a\n<>b", vec![0, 2, 4]),
        ];
        for (source, expected) in cases {
            let positions: Vec<usize> = tokenize(source)
                .map(|t| t.iter().map(|t| t.position).collect())
                .unwrap_or_default();
            assert_eq!(positions, expected, "{source:?}");
        }
    }

    #[test]
    fn lexical_errors() {
        let cases = [
            ("'abc", 0, "unterminated string literal"),
            ("a ! b", 2, "expected '=' after '!'"),
            ("a = #", 4, "unexpected character '#'"),
            ("é = x", 0, "unexpected character 'é'"),
            (
                "99999999999999999999999",
                0,
                "integer literal does not fit in 32 bits",
            ),
        ];
        for (source, position, message) in cases {
            match tokenize(source) {
                Ok(tokens) => panic!("{source:?} lexed as {tokens:?}"),
                Err(error) => {
                    assert_eq!(error.position, position, "{source:?}");
                    assert_eq!(error.message, message, "{source:?}");
                }
            }
        }
    }
}
