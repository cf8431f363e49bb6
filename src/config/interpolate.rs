//! `${VAR}` and `${VAR:-default}` interpolation from the environment, before parsing.
//!
//! `$$` writes a literal `$`. A variable that is unset (or, with `:-`, unset or empty) and has
//! no default is an error naming it, so a missing secret never becomes an empty string
//! silently.
//!
//! A value is written for the place it stands in, so it arrives exactly as set and can never
//! end its string or add keys: inside `"…"` and `"""…"""` it is escaped (`\`, `"`, control
//! characters); inside `'…'` and `'''…'''`, which have no escapes, a value that cannot be written
//! as it is (a quote, a line break) is refused; outside strings (a bare number) and in
//! comments a line break is refused.

/// Returns the interpolated text, or the byte offset and message of the first problem.
pub(super) fn interpolate(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, (usize, String)> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut offset = 0;
    let mut lexer = Lexer::default();
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        lexer.feed(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            lexer.feed("$");
            offset += i + 2;
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let Some(end) = body.find('}') else {
                return Err((
                    offset + i,
                    "unterminated `${` (write `$$` for a literal `$`)".into(),
                ));
            };
            let expr = &body[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (expr, None),
            };
            let valid = !name.is_empty()
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                && !name.as_bytes()[0].is_ascii_digit();
            if !valid {
                return Err((
                    offset + i,
                    format!("invalid variable name {name:?} in `${{{expr}}}`"),
                ));
            }
            let value = match (env(name), default) {
                (Some(v), Some(d)) if v.is_empty() => d.to_owned(),
                (Some(v), _) => v,
                (None, Some(d)) => d.to_owned(),
                (None, None) => {
                    return Err((
                        offset + i,
                        format!("environment variable `{name}` is not set (use `${{{name}:-default}}` for a default)"),
                    ))
                }
            };
            lexer
                .write(&value, &mut out)
                .map_err(|why| (offset + i, format!("the value of `{name}` {why}")))?;
            let consumed = i + 2 + end + 1;
            offset += consumed;
            rest = &rest[consumed..];
        } else {
            out.push('$');
            offset += i + 1;
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Where in the TOML text the next byte stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Context {
    #[default]
    Bare,
    Comment,
    Basic,
    Literal,
    MultiBasic,
    MultiLiteral,
}

/// Follows strings and comments through the text as written (values are written escaped, so
/// they never move it).
#[derive(Debug, Default)]
struct Lexer {
    context: Context,
    escaped: bool,
}

impl Lexer {
    fn feed(&mut self, text: &str) {
        let b = text.as_bytes();
        let mut i = 0;
        while i < b.len() {
            let rest = &b[i..];
            let (next, skip) = match self.context {
                Context::Bare if rest.starts_with(b"\"\"\"") => (Context::MultiBasic, 3),
                Context::Bare if rest.starts_with(b"'''") => (Context::MultiLiteral, 3),
                Context::Bare => match b[i] {
                    b'#' => (Context::Comment, 1),
                    b'"' => (Context::Basic, 1),
                    b'\'' => (Context::Literal, 1),
                    _ => (Context::Bare, 1),
                },
                Context::Comment if b[i] == b'\n' => (Context::Bare, 1),
                Context::Literal if b[i] == b'\'' || b[i] == b'\n' => (Context::Bare, 1),
                Context::MultiLiteral if rest.starts_with(b"'''") => (Context::Bare, 3),
                Context::Basic | Context::MultiBasic if self.escaped => {
                    self.escaped = false;
                    (self.context, 1)
                }
                Context::Basic | Context::MultiBasic if b[i] == b'\\' => {
                    self.escaped = true;
                    (self.context, 1)
                }
                Context::Basic if b[i] == b'"' || b[i] == b'\n' => (Context::Bare, 1),
                Context::MultiBasic if rest.starts_with(b"\"\"\"") => (Context::Bare, 3),
                other => (other, 1),
            };
            self.context = next;
            i += skip;
        }
    }

    /// Writes `value` for the current context, or says why it cannot stand there.
    fn write(&self, value: &str, out: &mut String) -> Result<(), &'static str> {
        let control = |c: char| c.is_control() && c != '\t';
        match self.context {
            Context::Basic | Context::MultiBasic => {
                let multi = self.context == Context::MultiBasic;
                for c in value.chars() {
                    match c {
                        '"' => out.push_str("\\\""),
                        '\\' => out.push_str("\\\\"),
                        '\n' if multi => out.push('\n'),
                        '\n' => out.push_str("\\n"),
                        '\r' => out.push_str("\\r"),
                        '\t' => out.push_str("\\t"),
                        c if control(c) => out.push_str(&format!("\\u{:04X}", c as u32)),
                        c => out.push(c),
                    }
                }
                Ok(())
            }
            Context::Literal if value.contains('\'') || value.chars().any(control) => {
                Err("holds a quote or a control character, which a '…' string cannot hold; write the value inside \"…\"")
            }
            Context::MultiLiteral
                if value.contains("'''")
                    || value.chars().any(|c| control(c) && c != '\n') =>
            {
                Err("holds ''' or a control character, which a '''…''' string cannot hold; write the value inside \"…\"")
            }
            Context::Bare | Context::Comment if value.contains(['\n', '\r']) => {
                Err("holds a line break, which would start a new line of the config; write the value inside \"…\"")
            }
            _ => {
                out.push_str(value);
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("10.0.0.1".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn table() {
        for (input, want) in [
            ("a = \"${HOST}\"", "a = \"10.0.0.1\""),
            ("${MISSING:-8080}", "8080"),
            ("${EMPTY:-x}", "x"),
            ("${HOST:-x}", "10.0.0.1"),
            ("${MISSING:-}", ""),
            ("cost $$5 and $x", "cost $5 and $x"),
            ("no vars", "no vars"),
            ("ünï ${HOST}", "ünï 10.0.0.1"),
        ] {
            assert_eq!(interpolate(input, &env).unwrap(), want, "{input}");
        }
    }

    /// M4: a value is written for where it stands, so it arrives exactly as set and can
    /// neither end its string nor add keys.
    #[test]
    fn m4_values_are_escaped_for_their_string() {
        let env = |name: &str| match name {
            "QUOTE" => Some("pa\"ss\\word\n\t\\u0041 = x".to_owned()),
            "INJECT" => Some("x\"\nadmin = \"y".to_owned()),
            "APOS" => Some("it's".to_owned()),
            "LINE" => Some("a\nb".to_owned()),
            "TRIPLE" => Some("x\'\'\'y".to_owned()),
            _ => None,
        };
        let text = interpolate(
            "a = \"${QUOTE}\"\nb = \"\"\"${QUOTE}\"\"\"\nc = \"${INJECT}\"\n",
            &env,
        )
        .unwrap();
        let table: toml::Table = toml::from_str(&text).expect("still TOML");
        assert_eq!(table["a"].as_str(), Some("pa\"ss\\word\n\t\\u0041 = x"));
        assert_eq!(table["b"].as_str(), Some("pa\"ss\\word\n\t\\u0041 = x"));
        assert_eq!(table["c"].as_str(), Some("x\"\nadmin = \"y"));
        assert_eq!(table.len(), 3, "no key was added: {text}");
        // Where a value cannot be written as it is, it is refused, naming the variable.
        for bad in [
            "a = '${APOS}'",
            "a = ${LINE}",
            "# ${LINE}",
            "a = '''${TRIPLE}'''",
        ] {
            let (_, message) = interpolate(bad, &env).unwrap_err();
            assert!(
                ["APOS", "LINE", "TRIPLE"]
                    .iter()
                    .any(|v| message.contains(v)),
                "{bad}: {message}"
            );
        }
        // A value that fits a literal string is kept as it is.
        assert_eq!(
            interpolate("a = '${NONE:-x\\y}'", &env).unwrap(),
            "a = 'x\\y'"
        );
    }

    #[test]
    fn errors_point_at_the_variable() {
        let (offset, message) = interpolate("abc\nx = \"${NOPE}\"", &env).unwrap_err();
        assert_eq!(offset, 9);
        assert!(message.contains("NOPE"));
        assert!(interpolate("${unterminated", &env).is_err());
        assert!(interpolate("${1BAD}", &env).is_err());
        assert!(interpolate("${}", &env).is_err());
    }
}
