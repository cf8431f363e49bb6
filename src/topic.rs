//! MQTT topic names, topic filters and the per-connection patterns of an ACL (MQTT 5.0 §4.7,
//! the same rules in 3.1.1 §4.7).

/// A topic name a PUBLISH may carry: at least one character, no wildcards, no NUL
/// [MQTT-4.7.3-1, MQTT-4.7.3-2, MQTT-3.3.2-2].
pub fn valid_topic(topic: &str) -> bool {
    !topic.is_empty() && !topic.contains(['+', '#', '\0']) && topic.len() <= usize::from(u16::MAX)
}

/// A topic filter: `#` only as the whole last level, `+` only as a whole level
/// [MQTT-4.7.1-1, MQTT-4.7.1-2], no NUL, not empty.
pub fn valid_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.contains('\0') || filter.len() > usize::from(u16::MAX) {
        return false;
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let last = levels.peek().is_none();
        match level {
            "#" if last => {}
            "+" => {}
            l if l.contains(['+', '#']) => return false,
            _ => {}
        }
    }
    true
}

/// Whether `topic` matches `filter`. A topic starting with `$` is not matched by a filter
/// starting with a wildcard [MQTT-4.7.2-1].
pub fn matches(topic: &str, filter: &str) -> bool {
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut t = topic.split('/');
    let mut f = filter.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) if fl == tl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether every topic `filter` matches is also matched by `by` (a subscription inside what
/// an ACL entry allows).
pub fn covers(by: &str, filter: &str) -> bool {
    let mut b = by.split('/');
    let mut f = filter.split('/');
    loop {
        match (b.next(), f.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(fl)) if fl != "#" => {}
            (Some(bl), Some(fl)) if bl == fl && bl != "+" && bl != "#" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// What an ACL pattern may name.
#[derive(Debug, Clone, Copy)]
pub struct AclVars<'a> {
    pub client_id: &'a str,
    pub username: Option<&'a str>,
    pub principal: &'a str,
}

/// A topic filter with `{client_id}`, `{username}` and `{principal}` placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclPattern {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    ClientId,
    Username,
    Principal,
}

impl AclPattern {
    pub fn parse(pattern: &str) -> Result<AclPattern, String> {
        let mut parts = Vec::new();
        let mut rest = pattern;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("`{pattern}`: `{{` without `}}`"))?;
            parts.push(match &rest[open + 1..open + close] {
                "client_id" => Part::ClientId,
                "username" => Part::Username,
                "principal" => Part::Principal,
                other => {
                    return Err(format!(
                        "`{pattern}`: unknown placeholder `{{{other}}}` (known: {{client_id}}, {{username}}, {{principal}})"
                    ))
                }
            });
            rest = &rest[open + close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        let pattern = AclPattern { parts };
        let sample = AclVars {
            client_id: "c",
            username: Some("u"),
            principal: "p",
        };
        match pattern.render(&sample) {
            Some(f) if valid_filter(&f) => Ok(pattern),
            _ => Err(format!(
                "`{}` is not a valid MQTT topic filter",
                pattern_text(&pattern)
            )),
        }
    }

    /// The filter for one connection; `None` when a value it names is missing or contains
    /// `/`, `+` or `#` (such a value never matches).
    pub fn render(&self, vars: &AclVars<'_>) -> Option<String> {
        let mut out = String::new();
        for part in &self.parts {
            let value = match part {
                Part::Text(t) => {
                    out.push_str(t);
                    continue;
                }
                Part::ClientId => vars.client_id,
                Part::Username => vars.username?,
                Part::Principal => vars.principal,
            };
            if value.is_empty() || value.contains(['/', '+', '#', '\0']) {
                return None;
            }
            out.push_str(value);
        }
        Some(out)
    }
}

fn pattern_text(p: &AclPattern) -> String {
    p.parts
        .iter()
        .map(|part| match part {
            Part::Text(t) => t.as_str(),
            Part::ClientId => "{client_id}",
            Part::Username => "{username}",
            Part::Principal => "{principal}",
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_and_filters() {
        assert!(valid_topic("devices/7/telemetry"));
        assert!(valid_topic("/"));
        for bad in ["", "a/+", "a/#", "a\0b"] {
            assert!(!valid_topic(bad), "{bad:?}");
        }
        for good in ["#", "+", "a/+/b", "a/#", "/+", "+/+", "sport/tennis/#"] {
            assert!(valid_filter(good), "{good:?}");
        }
        for bad in ["", "a/#/b", "a#", "a/b+", "#/a", "a\0"] {
            assert!(!valid_filter(bad), "{bad:?}");
        }
    }

    #[test]
    fn matching_follows_section_4_7() {
        assert!(matches("sport/tennis/player1", "sport/tennis/player1/#"));
        assert!(matches(
            "sport/tennis/player1/ranking",
            "sport/tennis/player1/#"
        ));
        assert!(matches("sport", "sport/#"));
        assert!(matches("sport/tennis/player1", "sport/+/player1"));
        assert!(!matches("sport/tennis/player1", "sport/+"));
        assert!(matches("/finance", "+/+"));
        assert!(matches("/finance", "/+"));
        assert!(!matches("/finance", "+"));
        assert!(!matches("$SYS/x", "#"));
        assert!(!matches("$SYS/x", "+/x"));
        assert!(matches("$SYS/x", "$SYS/#"));
        assert!(matches("é/x", "é/+"));
    }

    #[test]
    fn coverage_of_a_subscription_by_an_acl_filter() {
        assert!(covers("commands/c1/#", "commands/c1/#"));
        assert!(covers("commands/c1/#", "commands/c1/+"));
        assert!(covers("commands/c1/#", "commands/c1"));
        assert!(covers("commands/+/x", "commands/c1/x"));
        assert!(!covers("commands/c1/#", "commands/+/#"));
        assert!(!covers("commands/c1/#", "#"));
        assert!(!covers("commands/c1/x", "commands/c1/+"));
    }

    #[test]
    fn acl_values_with_separators_or_wildcards_never_match() {
        let p = AclPattern::parse("devices/{client_id}/#").unwrap();
        let vars = |id| AclVars {
            client_id: id,
            username: None,
            principal: "user:x",
        };
        assert_eq!(p.render(&vars("d1")).as_deref(), Some("devices/d1/#"));
        for bad in ["a/b", "+", "#", ""] {
            assert_eq!(p.render(&vars(bad)), None, "{bad:?}");
        }
        let u = AclPattern::parse("u/{username}").unwrap();
        assert_eq!(u.render(&vars("d1")), None, "no username, no match");
        assert!(AclPattern::parse("devices/{clientid}/#").is_err());
        assert!(AclPattern::parse("devices/{client_id}#").is_err());
    }
}
