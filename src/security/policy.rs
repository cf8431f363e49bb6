//! Authorisation policies: which event types and sources (and routes) a principal may send.
//!
//! ```toml
//! [[policies]]
//! principal = "jwt:partner-a"          # "mtls:<identity>", "hmac:<source name>"
//! allow_types = ["com.partner-a.*"]
//! allow_sources = ["/partner-a/*"]
//! ```
//!
//! Patterns are exact strings where `*` matches any run of characters. An empty list allows
//! everything. Several policies for one principal are alternatives: the event is allowed when
//! one of them allows both its `type` and its `source`. A principal that no policy names may
//! send what its authentication allows, unless the source sets `require_policy = true`.

use serde::Deserialize;

use super::principal::Principal;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// `<method>:<identity>`: `jwt:<sub>`, `mtls:<certificate identity>`, `hmac:<source name>`.
    pub principal: String,
    #[serde(default)]
    pub allow_types: Vec<String>,
    #[serde(default)]
    pub allow_sources: Vec<String>,
    /// Routes the principal's events may take (empty: all).
    #[serde(default)]
    pub allow_routes: Vec<String>,
}

/// Why an event was refused; names the rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    /// The attribute that did not match (`type` or `source`), if any.
    pub attribute: Option<&'static str>,
    pub detail: String,
}

/// The compiled policies of one config generation.
#[derive(Debug, Default, Clone)]
pub struct Policies {
    rules: Vec<PolicyConfig>,
}

/// What a principal may do with an event that passed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Grant {
    /// Routes the event may take; `None` means every route.
    pub routes: Option<Vec<String>>,
}

impl Policies {
    pub fn new(rules: Vec<PolicyConfig>) -> Policies {
        Policies { rules }
    }

    /// Checks one event's `type` and `source` for a principal.
    pub fn authorize(
        &self,
        principal: &Principal,
        ty: &str,
        source: &str,
        require_policy: bool,
    ) -> Result<Grant, Denied> {
        let name = principal.to_string();
        let mine: Vec<(usize, &PolicyConfig)> = self
            .rules
            .iter()
            .enumerate()
            .filter(|(_, p)| p.principal == name)
            .collect();
        if mine.is_empty() {
            if require_policy {
                return Err(Denied {
                    attribute: None,
                    detail: format!(
                        "no policy names principal `{name}` and this source requires one"
                    ),
                });
            }
            return Ok(Grant::default());
        }
        let mut refusal = None;
        for (index, p) in &mine {
            let type_ok = p.allow_types.is_empty() || p.allow_types.iter().any(|pat| glob(pat, ty));
            let source_ok =
                p.allow_sources.is_empty() || p.allow_sources.iter().any(|pat| glob(pat, source));
            if type_ok && source_ok {
                let routes = (!p.allow_routes.is_empty()).then(|| p.allow_routes.clone());
                return Ok(Grant { routes });
            }
            refusal.get_or_insert_with(|| {
                if !type_ok {
                    Denied {
                        attribute: Some("type"),
                        detail: format!(
                            "policies[{index}] for `{name}` allows types {:?}; type `{ty}` is refused",
                            p.allow_types
                        ),
                    }
                } else {
                    Denied {
                        attribute: Some("source"),
                        detail: format!(
                            "policies[{index}] for `{name}` allows sources {:?}; source `{source}` is refused",
                            p.allow_sources
                        ),
                    }
                }
            });
        }
        Err(refusal.unwrap_or(Denied {
            attribute: None,
            detail: format!("no policy allows `{name}`"),
        }))
    }
}

/// `*` matches any run of characters (including none); everything else literally.
pub fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::principal::Method;

    #[test]
    fn globs() {
        for (p, t, want) in [
            ("com.partner-a.*", "com.partner-a.order", true),
            ("com.partner-a.*", "com.partner-b.order", false),
            ("*", "", true),
            ("exact", "exact", true),
            ("exact", "exactly", false),
            ("/a/*/c", "/a/b/c", true),
            ("/a/*/c", "/a/b/d", false),
            ("*.x.*", "a.x.b", true),
            ("a*a", "a", false),
        ] {
            assert_eq!(glob(p, t), want, "{p} {t}");
        }
    }

    #[test]
    fn authorisation() {
        let policies = Policies::new(vec![PolicyConfig {
            principal: "jwt:partner-a".into(),
            allow_types: vec!["com.partner-a.*".into()],
            allow_sources: vec!["/partner-a/*".into()],
            allow_routes: vec![],
        }]);
        let a = Principal {
            method: Method::Jwt,
            id: "partner-a".into(),
        };
        assert!(policies
            .authorize(&a, "com.partner-a.order", "/partner-a/shop", false)
            .is_ok());
        let denied = policies
            .authorize(&a, "com.other.order", "/partner-a/shop", false)
            .unwrap_err();
        assert_eq!(denied.attribute, Some("type"));
        assert!(denied.detail.contains("policies[0]"), "{}", denied.detail);
        assert_eq!(
            policies
                .authorize(&a, "com.partner-a.x", "/other", false)
                .unwrap_err()
                .attribute,
            Some("source")
        );
        let b = Principal {
            method: Method::Jwt,
            id: "partner-b".into(),
        };
        assert!(policies.authorize(&b, "anything", "/x", false).is_ok());
        assert!(policies.authorize(&b, "anything", "/x", true).is_err());
    }
}
