//! The checks of a parsed config: names, references between components, listener
//! addresses, policies and every component's own rules, with the key path of what is wrong.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use super::*;

impl Config {
    /// Every check, each component's own rules first and then what lies between components:
    /// names, references, listener addresses, policies.
    pub(super) fn check(&self) -> Result<(), KeyError> {
        let mut listeners: BTreeMap<SocketAddr, Vec<String>> = BTreeMap::new();
        check_log_level(&self.log.level)
            .map_err(|m| KeyError::new(vec!["log".into(), "level".into()], m))?;
        self.check_admin(&mut listeners)?;
        for (name, source) in &self.sources {
            check_name(&["sources", name])?;
            for (addr, key) in source.listeners() {
                let key: Vec<&str> = ["sources", name.as_str()]
                    .into_iter()
                    .chain(key.iter().copied())
                    .collect();
                claim(&mut listeners, addr, &key)?;
            }
            source.check().map_err(|e| e.under(&["sources", name]))?;
        }
        self.check_sinks(&mut listeners)?;
        for (name, route) in &self.routes {
            check_name(&["routes", name])?;
            self.check_route(route)
                .map_err(|e| e.under(&["routes", name]))?;
        }
        self.check_policies()
    }

    fn check_admin(
        &self,
        listeners: &mut BTreeMap<SocketAddr, Vec<String>>,
    ) -> Result<(), KeyError> {
        let Some(admin) = &self.admin else {
            return Ok(());
        };
        listeners.insert(admin.listen, vec!["admin".into(), "listen".into()]);
        if !admin.listen.ip().is_loopback() && admin.token().is_none() {
            return Err(KeyError::new(
                vec!["admin".into(), "token".into()],
                format!(
                    "the admin listener {} is not on loopback: set a token \
                     (`token = \"${{FERRY_ADMIN_TOKEN}}\"`) or listen on 127.0.0.1",
                    admin.listen
                ),
            ));
        }
        Ok(())
    }

    /// Each sink's own rules, then its listener, its dead-letter sink and its spool path.
    fn check_sinks(
        &self,
        listeners: &mut BTreeMap<SocketAddr, Vec<String>>,
    ) -> Result<(), KeyError> {
        let mut spools: BTreeMap<PathBuf, String> = BTreeMap::new();
        for (name, sink) in &self.sinks {
            check_name(&["sinks", name])?;
            let under = |e: KeyError| e.under(&["sinks", name]);
            if let SinkConfig::Websocket(c) = sink {
                claim(listeners, c.listen, &["sinks", name, "listen"])?;
            }
            if let Some(dlq) = sink.dead_letter() {
                let refused = |message: String| under(KeyError::at("dead_letter", message));
                match self.sinks.get(dlq) {
                    None => {
                        return Err(refused(format!(
                            "unknown sink `{dlq}`{}",
                            known(self.sinks.keys())
                        )))
                    }
                    Some(_) if dlq == name => {
                        return Err(refused("a sink cannot be its own dead-letter sink".into()))
                    }
                    Some(target) if target.dead_letter().is_some() => {
                        return Err(refused(format!(
                            "dead-letter sink `{dlq}` must not have a dead_letter of its own"
                        )))
                    }
                    Some(_) => {}
                }
            }
            sink.check().map_err(under)?;
            if let SinkConfig::MqttServer(c) = sink {
                match self.sources.get(&c.server) {
                    Some(SourceConfig::MqttServer(_)) => {}
                    Some(other) => {
                        return Err(under(KeyError::at(
                            "server",
                            format!(
                                "source `{}` is a `{}` source, not an `mqtt-server` one",
                                c.server,
                                other.kind()
                            ),
                        )))
                    }
                    None => {
                        return Err(under(KeyError::at(
                            "server",
                            format!(
                                "no source named `{}`{}",
                                c.server,
                                known(self.sources.keys())
                            ),
                        )))
                    }
                }
            }
            if let Some(spool) = sink.spool() {
                if let Some(other) = spools.insert(spool.path.clone(), name.clone()) {
                    return Err(under(KeyError::new(
                        vec!["spool".into(), "path".into()],
                        format!("sink `{other}` already spools to this path"),
                    )));
                }
            }
        }
        Ok(())
    }

    /// A route's sources, sinks, dedup window and filters; keys below the route.
    fn check_route(&self, route: &RouteConfig) -> Result<(), KeyError> {
        if route.from.is_empty() {
            return Err(KeyError::at("from", "a route needs at least one source"));
        }
        if route.to.is_empty() {
            return Err(KeyError::at("to", "a route needs at least one sink"));
        }
        for (i, source) in route.from.iter().enumerate() {
            if !self.sources.contains_key(source) {
                return Err(KeyError::new(
                    vec!["from".into(), i.to_string()],
                    format!("unknown source `{source}`{}", known(self.sources.keys())),
                ));
            }
        }
        for (i, sink) in route.to.iter().enumerate() {
            if !self.sinks.contains_key(sink) {
                return Err(KeyError::new(
                    vec!["to".into(), i.to_string()],
                    format!("unknown sink `{sink}`{}", known(self.sinks.keys())),
                ));
            }
        }
        if route.dedup.as_ref().is_some_and(|d| d.window == 0) {
            return Err(KeyError::new(
                vec!["dedup".into(), "window".into()],
                "window must be greater than 0",
            ));
        }
        for (i, filter) in route.filters.iter().enumerate() {
            crate::router::Filter::compile(filter)
                .map_err(|message| KeyError::new(vec!["filters".into(), i.to_string()], message))?;
        }
        Ok(())
    }

    /// Policies that could never apply are refused: a typo in `principal` would leave that
    /// principal unrestricted, one in `allow_routes` would drop its events.
    pub(super) fn check_policies(&self) -> Result<(), KeyError> {
        for (i, policy) in self.policies.iter().enumerate() {
            self.check_policy(policy)
                .map_err(|e| e.under(&["policies", &i.to_string()]))?;
        }
        Ok(())
    }

    /// One policy; keys below it.
    fn check_policy(&self, policy: &crate::security::policy::PolicyConfig) -> Result<(), KeyError> {
        self.check_principal(&policy.principal)
            .map_err(|message| KeyError::at("principal", message))?;
        for (j, route) in policy.allow_routes.iter().enumerate() {
            if !self.routes.contains_key(route) {
                return Err(KeyError::new(
                    vec!["allow_routes".into(), j.to_string()],
                    format!("unknown route `{route}`{}", known(self.routes.keys())),
                ));
            }
        }
        // `type` is a non-empty string without control characters; `source` a URI
        // reference, which has no white space either.
        for (list, name, no_space) in [
            (&policy.allow_types, "allow_types", false),
            (&policy.allow_sources, "allow_sources", true),
        ] {
            for (j, pattern) in list.iter().enumerate() {
                let never = pattern.is_empty()
                    || pattern.chars().any(char::is_control)
                    || (no_space && pattern.chars().any(char::is_whitespace));
                if never {
                    return Err(KeyError::new(
                        vec![name.into(), j.to_string()],
                        format!("pattern {pattern:?} can never match an event's attribute"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// A policy's `principal`: well formed, and one that some source can authenticate.
    fn check_principal(&self, principal: &str) -> Result<(), String> {
        use crate::security::principal::Method;
        let Some((kind, id)) = principal.split_once(':') else {
            return Err(format!("`{principal}` is not `<kind>:<identity>` (`jwt:<sub>`, `mtls:<identity>`, `hmac:<source>`, `user:<username>`, `anonymous:`)"));
        };
        let method = [
            Method::Mtls,
            Method::Jwt,
            Method::Hmac,
            Method::Password,
            Method::None,
        ]
        .into_iter()
        .find(|m| m.prefix() == kind)
        .ok_or_else(|| {
            format!("unknown principal kind `{kind}` (known: mtls, jwt, hmac, user, anonymous)")
        })?;
        if id.trim() != id || id.chars().any(char::is_control) {
            return Err(format!("the identity in `{principal}` has white space or control characters around or in it"));
        }
        match method {
            Method::None if !id.is_empty() => {
                Err("write the anonymous principal as `anonymous:`".into())
            }
            Method::None => Ok(()),
            _ if id.is_empty() => Err(format!("`{principal}` names no identity")),
            Method::Hmac => match self.sources.get(id) {
                None => Err(format!(
                    "no source named `{id}`{}",
                    known(self.sources.keys())
                )),
                Some(s) if source_auth(s).is_none_or(|a| a.hmac.is_none()) => Err(format!(
                    "source `{id}` does not verify HMAC signatures (`auth.hmac`)"
                )),
                Some(_) => Ok(()),
            },
            _ if !self.accepts(method) => Err(format!(
                "no source accepts `{kind}` authentication, so `{principal}` never sends"
            )),
            _ => Ok(()),
        }
    }

    /// Whether some source (or push sink: its subscribers are principals too) authenticates
    /// with `method`.
    fn accepts(&self, method: crate::security::principal::Method) -> bool {
        use crate::security::principal::Method;
        let subscribers = self.sinks.values().filter_map(|s| match s {
            SinkConfig::Websocket(c) => c.auth.as_ref(),
            _ => None,
        });
        let mut auths = self
            .sources
            .values()
            .filter_map(source_auth)
            .chain(subscribers);
        auths.any(|a| match method {
            Method::Mtls => a.mtls,
            Method::Jwt => a.jwt.is_some(),
            Method::Hmac => a.hmac.is_some(),
            Method::Password => !a.passwords.is_empty(),
            Method::None => true,
        })
    }
}

/// A listening source's `auth` table.
fn source_auth(source: &SourceConfig) -> Option<&crate::security::source::AuthConfig> {
    match source {
        SourceConfig::Http(c) => c.auth.as_ref(),
        SourceConfig::Websocket(c) => c.auth.as_ref(),
        SourceConfig::MqttServer(c) => c.auth.as_ref(),
        _ => None,
    }
}

/// Records a listener address; two components on one address (other than port 0) are refused.
fn claim(
    listeners: &mut BTreeMap<SocketAddr, Vec<String>>,
    addr: SocketAddr,
    key: &[&str],
) -> Result<(), KeyError> {
    let key: Vec<String> = key.iter().map(|s| (*s).to_owned()).collect();
    if let Some(other) = listeners.get(&addr) {
        if addr.port() != 0 {
            return Err(KeyError::new(
                key,
                format!(
                    "listen address {addr} is already used by `{}`",
                    other.join(".")
                ),
            ));
        }
    }
    listeners.insert(addr, key);
    Ok(())
}

/// Component names appear in metrics labels and logs: keep them simple.
fn check_name(key: &[&str; 2]) -> Result<(), KeyError> {
    let name = key[1];
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(KeyError::new(
            key.iter().map(|s| (*s).to_owned()).collect(),
            "component names may contain only letters, digits, `_` and `-` (at most 64)",
        ))
    }
}

fn known<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let names: Vec<&str> = names.map(String::as_str).collect();
    if names.is_empty() {
        " (none are configured)".into()
    } else {
        format!(" (known: {})", names.join(", "))
    }
}

/// A `[log] level`: `tracing` filter directives, each a level (`info`) or `target=level`
/// (`ferry=debug`). A bare word that is not a level would be taken as a target to log
/// everything of, so `"verbose"` is refused rather than silently logging nothing.
fn check_log_level(level: &str) -> Result<(), String> {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    for directive in level.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        if !directive.contains('=') && !LEVELS.contains(&directive.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "`{directive}` is not a level: use trace, debug, info, warn, error or off, or target=level (`ferry=debug`)"
            ));
        }
    }
    tracing_subscriber::EnvFilter::builder()
        .parse(level)
        .map(|_| ())
        .map_err(|e| format!("`{level}` is not a log filter: {e}"))
}
