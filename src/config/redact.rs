//! Redaction of config text for the admin API: secrets never leave the process.
//!
//! The text shown is the file as written, before `${VAR}` interpolation, so secrets taken from
//! the environment appear as their references. Redaction works on the parsed TOML tree, not
//! on lines: every value whose key names a secret (`secret`, `secrets`, `password`, `token`,
//! `*_secret`, `*_token`, …), every value under a `headers` table, the password (or a bare
//! token) in a URL's userinfo and the values of a URL's query are replaced by `[redacted]`,
//! whatever the layout (multi-line arrays, inline or standard tables, quoted keys, multi-line
//! strings). Text that does not parse as TOML before interpolation is not shown at all.

use std::ops::Range;

use toml::de::{DeTable, DeValue};

const REDACTED: &str = "[redacted]";

/// Keys whose values are secret, and the suffixes that make a key secret.
const SECRET_KEYS: [&str; 8] = [
    "secret",
    "secrets",
    "password",
    "token",
    "bearer_token",
    "passphrase",
    "api_key",
    "apikey",
];
const SECRET_SUFFIXES: [&str; 6] = [
    "_secret",
    "_secrets",
    "_password",
    "_token",
    "_passphrase",
    "_api_key",
];
/// Tables whose every value is secret (HTTP headers carry API keys).
const SECRET_TABLES: [&str; 1] = ["headers"];

/// The config text with every secret value replaced.
pub(super) fn redact(text: &str) -> String {
    let Ok(root) = DeTable::parse(text) else {
        return "# not shown: the file does not parse as TOML before interpolation\n".into();
    };
    let mut edits = Vec::new();
    table(root.get_ref(), false, &mut edits);
    edits.sort_by_key(|(range, _)| std::cmp::Reverse(range.start));
    let mut out = text.to_owned();
    let mut last = usize::MAX;
    for (range, replacement) in edits {
        // Nested edits (a secret table inside a secret table) apply once, outermost wins.
        if range.end > last {
            continue;
        }
        last = range.start;
        out.replace_range(range, &replacement);
    }
    out
}

fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    SECRET_KEYS.contains(&key.as_str()) || SECRET_SUFFIXES.iter().any(|s| key.ends_with(s))
}

fn table(t: &DeTable<'_>, secret: bool, edits: &mut Vec<(Range<usize>, String)>) {
    for (key, value) in t {
        let key = key.get_ref().as_ref();
        let secret = secret || is_secret_key(key);
        let table_secret = secret || SECRET_TABLES.contains(&key.to_ascii_lowercase().as_str());
        match value.get_ref() {
            DeValue::Table(inner) => table(inner, table_secret, edits),
            DeValue::Array(items) if !table_secret => {
                for item in items {
                    self::value(item, false, edits);
                }
            }
            _ => self::value(value, table_secret, edits),
        }
    }
}

fn value(v: &toml::Spanned<DeValue<'_>>, secret: bool, edits: &mut Vec<(Range<usize>, String)>) {
    match v.get_ref() {
        // `${VAR}` and `file:<path>` name where a secret is, not the secret: they stay as
        // written (a `${VAR:-default}` with a default does not: the default may be one).
        DeValue::String(s) if secret && names_a_secret(s) => {}
        DeValue::Array(items) if secret => items.iter().for_each(|i| value(i, true, edits)),
        _ if secret => edits.push((v.span(), quoted(REDACTED))),
        DeValue::String(s) => {
            if let Some(redacted) = redact_url(s) {
                edits.push((v.span(), quoted(&redacted)));
            }
        }
        DeValue::Array(items) => items.iter().for_each(|i| value(i, false, edits)),
        DeValue::Table(t) => table(t, false, edits),
        _ => {}
    }
}

fn quoted(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// A URL with its password (or bare token) and its query values redacted; `None` when the
/// string holds nothing to redact. A value that is wholly a `${VAR}` reference is kept.
pub(super) fn redact_url(s: &str) -> Option<String> {
    let scheme_end = s.find("://")? + 3;
    let (head, tail) = s.split_at(scheme_end);
    let authority_end = tail.find(['/', '?', '#']).unwrap_or(tail.len());
    let (authority, rest) = tail.split_at(authority_end);
    let mut out = String::with_capacity(s.len());
    out.push_str(head);
    let mut changed = false;
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            match userinfo.split_once(':') {
                Some((user, pw)) if !is_reference(pw) => {
                    out.push_str(user);
                    out.push(':');
                    out.push_str(REDACTED);
                    changed = true;
                }
                // `nats://token@host`: a lone userinfo is a credential too.
                None if !is_reference(userinfo) => {
                    out.push_str(REDACTED);
                    changed = true;
                }
                _ => out.push_str(userinfo),
            }
            out.push_str(&authority[at..]);
        }
        None => out.push_str(authority),
    }
    let (path, query_fragment) = match rest.find('?') {
        Some(q) => rest.split_at(q),
        None => (rest, ""),
    };
    out.push_str(path);
    if let Some(query) = query_fragment.strip_prefix('?') {
        let (query, fragment) = match query.find('#') {
            Some(f) => query.split_at(f),
            None => (query, ""),
        };
        out.push('?');
        for (i, pair) in query.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            match pair.split_once('=') {
                Some((k, v)) if !is_reference(v) => {
                    out.push_str(k);
                    out.push('=');
                    out.push_str(REDACTED);
                    changed = true;
                }
                _ => out.push_str(pair),
            }
        }
        out.push_str(fragment);
    }
    changed.then_some(out)
}

/// A `${VAR}` reference without a default, or a `file:<path>` reference.
fn names_a_secret(s: &str) -> bool {
    (is_reference(s) && s.split_once(":-").is_none_or(|(_, default)| default == "}"))
        || (s.starts_with("file:") && s.len() > 5)
}

fn is_reference(s: &str) -> bool {
    s.starts_with("${") && s.ends_with('}') && !s[2..s.len() - 1].contains('}')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// S8: layouts that line-by-line redaction missed: multi-line arrays, header tables,
    /// quoted keys, query-string tokens, multi-line strings, token-only URLs.
    #[test]
    fn s8_redaction_covers_every_layout() {
        let text = r#"
[sources.web.auth]
hmac = { scheme = "github", secrets = [
  "s3cr3t-one",
  "s3cr3t-two",
] }

[sinks.p]
type = "http"
url = "https://partner/x?sig=zzz&plain=1"
headers = { Authorization = "Bearer abc123", X-Api-Key = "k3y" }
"password" = "pw"
client_secret = """
multi
line-secret"""

[sinks.q]
url = "nats://t0ken@127.0.0.1:4222"

[sinks.q.headers]
X-Partner-Key = "hdr-key"

[sinks.r]
url = "amqp://guest:guest-pw@127.0.0.1:5672/%2f"
user_url = "amqp://${AMQP_USER}:${AMQP_PASSWORD}@rabbitmq:5672/%2f"
tokens_seen = 5
path = "/events"
"#;
        let out = redact(text);
        for leaked in [
            "s3cr3t-one",
            "s3cr3t-two",
            "abc123",
            "k3y",
            "\"pw\"",
            "zzz",
            "line-secret",
            "t0ken",
            "hdr-key",
            "guest-pw",
        ] {
            assert!(!out.contains(leaked), "{leaked} leaked:\n{out}");
        }
        // What is not secret stays, and the result is still TOML.
        for kept in [
            "tokens_seen = 5",
            "path = \"/events\"",
            "https://partner/x",
            "${AMQP_PASSWORD}",
            "127.0.0.1:5672",
        ] {
            assert!(out.contains(kept), "{kept} missing:\n{out}");
        }
        toml::de::DeTable::parse(&out).expect("redacted text parses");
    }

    /// References to secrets stay as written; literal secrets and defaults do not.
    #[test]
    fn references_stay_references() {
        let text = r#"
[admin]
token = "${FERRY_ADMIN_TOKEN}"

[sources.web.auth]
jwt = { secrets = ["${JWT_A}", "literal-secret", "file:/run/secrets/jwt"] }
hmac = { scheme = "github", secrets = ["${HOOK:-fallback-secret}"] }

[sinks.out]
type = "http"
url = "https://example.com/x"
headers = { "x-api-key" = "${API_KEY}", "x-other" = "plain-key" }
"#;
        let out = redact(text);
        for kept in [
            r#"token = "${FERRY_ADMIN_TOKEN}""#,
            r#""${JWT_A}""#,
            r#""file:/run/secrets/jwt""#,
            r#""x-api-key" = "${API_KEY}""#,
        ] {
            assert!(out.contains(kept), "{kept} kept:\n{out}");
        }
        for gone in ["literal-secret", "fallback-secret", "plain-key"] {
            assert!(!out.contains(gone), "{gone} redacted:\n{out}");
        }
    }

    #[test]
    fn text_that_does_not_parse_is_not_shown() {
        let out = redact("password = \"unterminated\npassword2 = \"x\"");
        assert!(!out.contains("unterminated"), "{out}");
    }
}
