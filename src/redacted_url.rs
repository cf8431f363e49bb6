//! URLs as they may appear in logs, error messages and dead-lettered events: without the
//! credentials in their userinfo (`user:password@`, a NATS `token@`) and without the values of
//! their query (`?api_key=…`) or their fragment.

/// `url` as written (no case or escaping changed), with its userinfo replaced by `redacted`,
/// every query value by `redacted` (the names stay, so a reader sees which parameter was
/// given), and without its fragment. A comma-separated server list (NATS) is redacted entry
/// by entry; text that is not a URL is not shown at all.
pub fn redacted_url(url: &str) -> String {
    url.split(',')
        .map(|one| {
            let one = one.trim();
            match reqwest::Url::parse(one) {
                Ok(_) => redact_text(one),
                Err(_) => "[unparsable URL]".to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Redacts a URL that parses, in its own text.
fn redact_text(url: &str) -> String {
    let url = url.split_once('#').map_or(url, |(u, _)| u);
    let (head, query) = match url.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (url, None),
    };
    let mut out = match head.split_once("://") {
        Some((scheme, rest)) => {
            let end = rest.find('/').unwrap_or(rest.len());
            let (authority, path) = rest.split_at(end);
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            let userinfo = if authority.contains('@') {
                "redacted@"
            } else {
                ""
            };
            format!("{scheme}://{userinfo}{host}{path}")
        }
        None => head.to_owned(),
    };
    if let Some(query) = query.filter(|q| !q.is_empty()) {
        let names: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, _)) => format!("{name}=redacted"),
                None => pair.to_owned(),
            })
            .collect();
        out.push('?');
        out.push_str(&names.join("&"));
    }
    out
}

/// A parsed URL without userinfo secrets, query and fragment.
pub fn redacted(url: &reqwest::Url) -> String {
    let mut u = url.clone();
    // A lone user name can be a token (`nats://token@host`): it goes too.
    if !u.username().is_empty() || u.password().is_some() {
        let _ = u.set_password(None);
        let _ = u.set_username("redacted");
    }
    u.set_query(None);
    u.set_fragment(None);
    u.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// S7: the password, a token and the query never survive.
    #[test]
    fn s7_credentials_and_query_are_dropped() {
        let cases = [
            (
                "https://user:pw@example.com:8443/x?api_key=K#f",
                "https://redacted@example.com:8443/x?api_key=redacted",
            ),
            (
                "https://Hooks.Example.COM/Path/%7Euser?token=abc&v=2",
                "https://Hooks.Example.COM/Path/%7Euser?token=redacted&v=redacted",
            ),
            (
                "nats://s3cr3t@127.0.0.1:4222",
                "nats://redacted@127.0.0.1:4222",
            ),
            (
                "nats://u:p@a:4222, nats://b:4222",
                "nats://redacted@a:4222,nats://b:4222",
            ),
            ("http://example.com/hook", "http://example.com/hook"),
            ("not a url", "[unparsable URL]"),
        ];
        for (url, expected) in cases {
            assert_eq!(redacted_url(url), expected, "{url}");
        }
    }
}
