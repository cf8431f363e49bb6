//! `${VAR}` and `${VAR:-default}` interpolation from the environment, before parsing.
//!
//! `$$` writes a literal `$`. A variable that is unset (or, with `:-`, unset or empty) and has
//! no default is an error naming it, so a missing secret never becomes an empty string
//! silently.

/// Returns the interpolated text, or the byte offset and message of the first problem.
pub fn interpolate(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, (usize, String)> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut offset = 0;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
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
            match (env(name), default) {
                (Some(v), Some(d)) if v.is_empty() => out.push_str(d),
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err((
                        offset + i,
                        format!("environment variable `{name}` is not set (use `${{{name}:-default}}` for a default)"),
                    ))
                }
            }
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
