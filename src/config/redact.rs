//! Redaction of config text for the admin API: secrets never leave the process.
//!
//! The text shown is the file as written, before `${VAR}` interpolation, so secrets taken from
//! the environment appear as their references. Literal values of secret-looking keys
//! (`secret`, `secrets`, `password`, `token`, …) and passwords inside URLs are replaced by
//! `[redacted]`.

/// Keys whose values are secret.
const SECRET_KEYS: [&str; 7] = [
    "secret",
    "secrets",
    "password",
    "token",
    "bearer_token",
    "passphrase",
    "api_key",
];

/// Redacts secret values line by line.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        out.push_str(&redact_line(line));
        out.push('\n');
    }
    out
}

fn redact_line(line: &str) -> String {
    let mut line = redact_url_passwords(line);
    // `key = value` and inline tables `{ key = value, … }`: redact values of secret keys.
    for key in SECRET_KEYS {
        let mut search = 0;
        while let Some(found) = find_key(&line[search..], key) {
            let at = search + found;
            let after = &line[at + key.len()..];
            let Some(eq) = after.find('=') else { break };
            let value_start = at + key.len() + eq + 1;
            let value_end = value_end(&line, value_start);
            line.replace_range(value_start..value_end, " \"[redacted]\"");
            search = value_start + " \"[redacted]\"".len();
        }
    }
    line
}

/// Finds `key` as a whole word followed by optional spaces and `=`.
fn find_key(s: &str, key: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = s[from..].find(key) {
        let at = from + i;
        let before_ok = at == 0
            || !s.as_bytes()[at - 1].is_ascii_alphanumeric() && s.as_bytes()[at - 1] != b'_';
        let rest = s[at + key.len()..].trim_start();
        if before_ok && rest.starts_with('=') && !rest.starts_with("==") {
            return Some(at);
        }
        from = at + key.len();
    }
    None
}

/// The end of a TOML value starting at `start`: a string, an array, or up to `,`/`}`/`#`.
fn value_end(line: &str, start: usize) -> usize {
    let bytes = line.as_bytes();
    let mut i = start;
    while i < bytes.len() && bytes[i] == b' ' {
        i += 1;
    }
    let mut depth = 0i32;
    let mut quote: Option<u8> = None;
    while i < bytes.len() {
        let b = bytes[i];
        match quote {
            Some(q) => {
                if b == b'\\' && q == b'"' {
                    i += 1;
                } else if b == q {
                    quote = None;
                    if depth == 0 {
                        return i + 1;
                    }
                }
            }
            None => match b {
                b'"' | b'\'' => quote = Some(b),
                b'[' => depth += 1,
                b']' => {
                    depth -= 1;
                    if depth == 0 {
                        return i + 1;
                    }
                }
                b',' | b'}' | b'#' if depth == 0 => return i,
                _ => {}
            },
        }
        i += 1;
    }
    bytes.len()
}

/// `scheme://user:password@host` → `scheme://user:[redacted]@host`.
fn redact_url_passwords(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let authority_end = tail
            .find(['/', '"', '\'', ' ', '?', '#'])
            .unwrap_or(tail.len());
        let authority = &tail[..authority_end];
        match (authority.rfind('@'), authority.find(':')) {
            (Some(at), Some(colon)) if colon < at => {
                out.push_str(&authority[..colon + 1]);
                out.push_str("[redacted]");
                out.push_str(&authority[at..]);
            }
            _ => out.push_str(authority),
        }
        rest = &tail[authority_end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        for (input, want) in [
            (
                r#"url = "amqp://guest:guest@127.0.0.1:5672/%2f""#,
                r#"url = "amqp://guest:[redacted]@127.0.0.1:5672/%2f""#,
            ),
            (
                r#"url = "nats://127.0.0.1:4222""#,
                r#"url = "nats://127.0.0.1:4222""#,
            ),
            (r#"password = "hunter2""#, r#"password = "[redacted]""#),
            (
                r#"hmac = { scheme = "github", secrets = ["abc", "def"], tolerance_secs = 300 }"#,
                r#"hmac = { scheme = "github", secrets = "[redacted]", tolerance_secs = 300 }"#,
            ),
            (
                r#"hmac = { secrets = ["${PARTNER_A_SECRET}"] }"#,
                r#"hmac = { secrets = "[redacted]" }"#,
            ),
            (
                r#"token = 'x' # comment"#,
                r#"token = "[redacted]" # comment"#,
            ),
            (r#"tokens_seen = 5"#, r#"tokens_seen = 5"#),
            (r#"path = "/events""#, r#"path = "/events""#),
        ] {
            assert_eq!(redact_line(input), want, "{input}");
        }
    }
}
