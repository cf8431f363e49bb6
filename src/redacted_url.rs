//! URLs as they may appear in logs, error messages and dead-lettered events: without the
//! credentials in their userinfo (`user:password@`, a NATS `token@`) and without their query
//! (`?api_key=…`) or fragment.

/// `url` without userinfo secrets, query and fragment. A comma-separated server list (NATS)
/// is redacted entry by entry; text that is not a URL is not shown at all.
pub fn redacted_url(url: &str) -> String {
    url.split(',')
        .map(|one| match reqwest::Url::parse(one.trim()) {
            Ok(u) => redacted(&u),
            Err(_) => "[unparsable URL]".to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
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
                "https://redacted@example.com:8443/x",
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
