//! The checks of a parsed config: names, references between components, listener
//! addresses, policies and every component's own rules, with the key path of what is wrong.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use super::*;

impl Config {
    /// Cross-component checks: names, references, listeners, filters.
    pub(super) fn check(&self) -> Result<(), (Vec<String>, String)> {
        let mut listeners: BTreeMap<SocketAddr, Vec<String>> = BTreeMap::new();
        if let Some(admin) = &self.admin {
            listeners.insert(admin.listen, vec!["admin".into(), "listen".into()]);
            if !admin.listen.ip().is_loopback() && admin.token().is_none() {
                return Err((
                    vec!["admin".into(), "token".into()],
                    format!(
                        "the admin listener {} is not on loopback: set a token \
                         (`token = \"${{FERRY_ADMIN_TOKEN}}\"`) or listen on 127.0.0.1",
                        admin.listen
                    ),
                ));
            }
        }
        for (name, source) in &self.sources {
            check_name(&["sources", name])?;
            if let Some(addr) = source.listen() {
                claim(&mut listeners, addr, &["sources", name, "listen"])?;
            }
            let prefix = |(mut key, message): (Vec<String>, String)| {
                key.splice(0..0, ["sources".to_owned(), name.clone()]);
                (key, message)
            };
            let normalize = match source {
                SourceConfig::Http(c) => {
                    if !c.path.starts_with('/') {
                        return Err((
                            path_key("sources", name, "path"),
                            "path must start with `/`".into(),
                        ));
                    }
                    for (key, v) in [
                        ("max_body_bytes", c.max_body_bytes as u64),
                        ("max_concurrent_requests", c.max_concurrent_requests as u64),
                        ("max_connections", c.max_connections as u64),
                        ("header_read_timeout_ms", c.header_read_timeout_ms),
                        ("body_read_timeout_ms", c.body_read_timeout_ms),
                        ("idle_timeout_ms", c.idle_timeout_ms),
                    ] {
                        if v == 0 {
                            return Err((
                                path_key("sources", name, key),
                                format!("{key} must be greater than 0"),
                            ));
                        }
                    }
                    c.webhook.check().map_err(prefix)?;
                    check_auth(c.auth.as_ref()).map_err(prefix)?;
                    &c.normalize
                }
                SourceConfig::Amqp(c) => {
                    c.check().map_err(prefix)?;
                    &c.normalize
                }
                SourceConfig::Mqtt(c) => {
                    c.check().map_err(prefix)?;
                    &c.normalize
                }
                SourceConfig::Nats(c) => {
                    c.check().map_err(prefix)?;
                    &c.normalize
                }
                SourceConfig::Websocket(c) => {
                    if !c.path.starts_with('/') {
                        return Err((
                            path_key("sources", name, "path"),
                            "path must start with `/`".into(),
                        ));
                    }
                    for (key, v) in [
                        ("max_message_bytes", c.max_message_bytes),
                        ("max_connections", c.max_connections),
                        ("max_in_flight", c.max_in_flight),
                    ] {
                        if v == 0 {
                            return Err((
                                path_key("sources", name, key),
                                format!("{key} must be greater than 0"),
                            ));
                        }
                    }
                    if c.ping_interval_ms == 0 || c.ping_interval_ms >= c.idle_timeout_ms {
                        return Err((
                            path_key("sources", name, "ping_interval_ms"),
                            "ping_interval_ms must be greater than 0 and less than idle_timeout_ms"
                                .into(),
                        ));
                    }
                    check_auth(c.auth.as_ref()).map_err(prefix)?;
                    &c.normalize
                }
            };
            if let Some(n) = normalize {
                crate::normalize::Normalizer::compile(n).map_err(|(key, message)| {
                    (
                        vec!["sources".into(), name.clone(), "normalize".into(), key],
                        message,
                    )
                })?;
            }
        }
        let mut spools: BTreeMap<PathBuf, String> = BTreeMap::new();
        for (name, sink) in &self.sinks {
            check_name(&["sinks", name])?;
            if let SinkConfig::Websocket(c) = sink {
                claim(&mut listeners, c.listen, &["sinks", name, "listen"])?;
            }
            if let Some(dlq) = sink.dead_letter() {
                let key = path_key("sinks", name, "dead_letter");
                match self.sinks.get(dlq) {
                    None => {
                        return Err((
                            key,
                            format!("unknown sink `{dlq}`{}", known(self.sinks.keys())),
                        ))
                    }
                    Some(_) if dlq == name => {
                        return Err((key, "a sink cannot be its own dead-letter sink".into()))
                    }
                    Some(target) if target.dead_letter().is_some() => {
                        return Err((
                            key,
                            format!(
                                "dead-letter sink `{dlq}` must not have a dead_letter of its own"
                            ),
                        ))
                    }
                    Some(_) => {}
                }
            }
            if let Some(r) = sink.retry() {
                if r.max_attempts == 0
                    || r.initial_backoff_ms == 0
                    || r.max_backoff_ms < r.initial_backoff_ms
                {
                    return Err((
                        path_key("sinks", name, "retry"),
                        "max_attempts and initial_backoff_ms must be > 0, max_backoff_ms >= initial_backoff_ms".into(),
                    ));
                }
            }
            if sink.queue() == 0 {
                return Err((
                    path_key("sinks", name, "queue"),
                    "queue must be greater than 0".into(),
                ));
            }
            if let Some(spool) = sink.spool() {
                spool.check().map_err(|(key, message)| {
                    (
                        vec!["sinks".into(), name.clone(), "spool".into(), key.into()],
                        message,
                    )
                })?;
                if let Some(other) = spools.insert(spool.path.clone(), name.clone()) {
                    return Err((
                        vec!["sinks".into(), name.clone(), "spool".into(), "path".into()],
                        format!("sink `{other}` already spools to this path"),
                    ));
                }
            }
            sink.circuit_breaker().check().map_err(|(key, message)| {
                (
                    vec![
                        "sinks".into(),
                        name.clone(),
                        "circuit_breaker".into(),
                        key.into(),
                    ],
                    message,
                )
            })?;
            match sink {
                SinkConfig::File(FileSinkConfig {
                    in_flight,
                    timeout_ms,
                    ..
                })
                | SinkConfig::Stdout(StdoutSinkConfig {
                    in_flight,
                    timeout_ms,
                    ..
                }) if *in_flight == 0 || *timeout_ms == 0 => {
                    return Err((
                        path_key("sinks", name, "in_flight"),
                        "in_flight and timeout_ms must be greater than 0".into(),
                    ));
                }
                _ => {}
            }
            let prefix = |(mut key, message): (Vec<String>, String)| {
                key.splice(0..0, ["sinks".to_owned(), name.clone()]);
                (key, message)
            };
            match sink {
                SinkConfig::Amqp(c) => c.check().map_err(prefix)?,
                SinkConfig::Mqtt(c) => c.check().map_err(prefix)?,
                SinkConfig::Nats(c) => c.check().map_err(prefix)?,
                SinkConfig::Websocket(c) => {
                    if !c.path.starts_with('/') {
                        return Err((
                            path_key("sinks", name, "path"),
                            "path must start with `/`".into(),
                        ));
                    }
                    if c.max_connections == 0 || c.ping_interval_ms == 0 {
                        return Err((
                            path_key("sinks", name, "max_connections"),
                            "max_connections and ping_interval_ms must be greater than 0".into(),
                        ));
                    }
                    if let Some(auth) = &c.auth {
                        if auth.hmac.is_some() {
                            return Err((
                                vec!["sinks".into(), name.clone(), "auth".into(), "hmac".into()],
                                "a subscriber's upgrade request has no body to sign: use jwt or mtls"
                                    .into(),
                            ));
                        }
                        if auth.mtls && c.tls.as_ref().is_none_or(|t| t.client_ca.is_none()) {
                            return Err((
                                vec!["sinks".into(), name.clone(), "auth".into(), "mtls".into()],
                                "mtls needs `tls.client_ca`".into(),
                            ));
                        }
                    }
                }
                SinkConfig::File(_) | SinkConfig::Stdout(_) | SinkConfig::Http(_) => {}
            }
            if let SinkConfig::Http(c) = sink {
                let url = reqwest::Url::parse(&c.url)
                    .map_err(|e| (path_key("sinks", name, "url"), format!("invalid URL: {e}")))?;
                if url.scheme() != "http" && url.scheme() != "https" {
                    return Err((
                        path_key("sinks", name, "url"),
                        "URL scheme must be http or https".into(),
                    ));
                }
                if c.in_flight == 0 {
                    return Err((
                        path_key("sinks", name, "in_flight"),
                        "in_flight must be greater than 0".into(),
                    ));
                }
                for header in c.headers.keys() {
                    if ::http::HeaderName::from_bytes(header.as_bytes()).is_err() {
                        return Err((
                            vec![
                                "sinks".into(),
                                name.clone(),
                                "headers".into(),
                                header.clone(),
                            ],
                            "not a valid header name".into(),
                        ));
                    }
                }
                c.check_outbound(&url).map_err(prefix)?;
            }
        }
        for (name, route) in &self.routes {
            check_name(&["routes", name])?;
            if route.from.is_empty() {
                return Err((
                    path_key("routes", name, "from"),
                    "a route needs at least one source".into(),
                ));
            }
            if route.to.is_empty() {
                return Err((
                    path_key("routes", name, "to"),
                    "a route needs at least one sink".into(),
                ));
            }
            for (i, source) in route.from.iter().enumerate() {
                if !self.sources.contains_key(source) {
                    return Err((
                        vec!["routes".into(), name.clone(), "from".into(), i.to_string()],
                        format!("unknown source `{source}`{}", known(self.sources.keys())),
                    ));
                }
            }
            for (i, sink) in route.to.iter().enumerate() {
                if !self.sinks.contains_key(sink) {
                    return Err((
                        vec!["routes".into(), name.clone(), "to".into(), i.to_string()],
                        format!("unknown sink `{sink}`{}", known(self.sinks.keys())),
                    ));
                }
            }
            if route.dedup.as_ref().is_some_and(|d| d.window == 0) {
                return Err((
                    vec![
                        "routes".into(),
                        name.clone(),
                        "dedup".into(),
                        "window".into(),
                    ],
                    "window must be greater than 0".into(),
                ));
            }
            for (i, filter) in route.filters.iter().enumerate() {
                crate::router::Filter::compile(filter).map_err(|message| {
                    (
                        vec![
                            "routes".into(),
                            name.clone(),
                            "filters".into(),
                            i.to_string(),
                        ],
                        message,
                    )
                })?;
            }
        }
        self.check_policies()
    }

    /// Policies that could never apply are refused: a typo in `principal` would leave that
    /// principal unrestricted, one in `allow_routes` would drop its events.
    pub(super) fn check_policies(&self) -> Result<(), (Vec<String>, String)> {
        use crate::security::principal::Method;
        let auth = |source: &SourceConfig| match source {
            SourceConfig::Http(c) => c.auth.clone(),
            SourceConfig::Websocket(c) => c.auth.clone(),
            _ => None,
        };
        // Push-sink subscribers are principals too: policies decide what they receive.
        let subscribers = self.sinks.values().filter_map(|s| match s {
            SinkConfig::Websocket(c) => c.auth.clone(),
            _ => None,
        });
        let mut auths: Vec<_> = self.sources.values().filter_map(auth).collect();
        auths.extend(subscribers);
        let accepts = |method: Method| {
            auths.iter().any(|a| match method {
                Method::Mtls => a.mtls,
                Method::Jwt => a.jwt.is_some(),
                Method::Hmac => a.hmac.is_some(),
                Method::None => true,
            })
        };
        for (i, policy) in self.policies.iter().enumerate() {
            let key = |k: &str| vec!["policies".to_owned(), i.to_string(), k.to_owned()];
            let principal = &policy.principal;
            let Some((kind, id)) = principal.split_once(':') else {
                return Err((
                    key("principal"),
                    format!("`{principal}` is not `<kind>:<identity>` (`jwt:<sub>`, `mtls:<identity>`, `hmac:<source>`, `anonymous:`)"),
                ));
            };
            let method = [Method::Mtls, Method::Jwt, Method::Hmac, Method::None]
                .into_iter()
                .find(|m| m.prefix() == kind)
                .ok_or_else(|| {
                    (
                        key("principal"),
                        format!(
                            "unknown principal kind `{kind}` (known: mtls, jwt, hmac, anonymous)"
                        ),
                    )
                })?;
            if id.trim() != id || id.chars().any(char::is_control) {
                return Err((
                    key("principal"),
                    format!("the identity in `{principal}` has white space or control characters around or in it"),
                ));
            }
            match method {
                Method::None if !id.is_empty() => {
                    return Err((
                        key("principal"),
                        "write the anonymous principal as `anonymous:`".into(),
                    ))
                }
                Method::None => {}
                _ if id.is_empty() => {
                    return Err((key("principal"), format!("`{principal}` names no identity")))
                }
                Method::Hmac => match self.sources.get(id) {
                    None => {
                        return Err((
                            key("principal"),
                            format!("no source named `{id}`{}", known(self.sources.keys())),
                        ))
                    }
                    Some(s) if auth(s).is_none_or(|a| a.hmac.is_none()) => {
                        return Err((
                            key("principal"),
                            format!("source `{id}` does not verify HMAC signatures (`auth.hmac`)"),
                        ))
                    }
                    Some(_) => {}
                },
                _ if !accepts(method) => {
                    return Err((
                        key("principal"),
                        format!(
                        "no source accepts `{kind}` authentication, so `{principal}` never sends"
                    ),
                    ))
                }
                _ => {}
            }
            for (j, route) in policy.allow_routes.iter().enumerate() {
                if !self.routes.contains_key(route) {
                    let mut k = key("allow_routes");
                    k.push(j.to_string());
                    return Err((
                        k,
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
                        let mut k = key(name);
                        k.push(j.to_string());
                        return Err((
                            k,
                            format!("pattern {pattern:?} can never match an event's attribute"),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Checks a source's `auth` table (HMAC settings and secrets); keys below the source.
fn check_auth(
    auth: Option<&crate::security::source::AuthConfig>,
) -> Result<(), (Vec<String>, String)> {
    let Some(auth) = auth else { return Ok(()) };
    auth.check().map_err(|(mut key, message)| {
        key.insert(0, "auth".into());
        (key, message)
    })
}

/// Records a listener address; two components on one address (other than port 0) are refused.
fn claim(
    listeners: &mut BTreeMap<SocketAddr, Vec<String>>,
    addr: SocketAddr,
    key: &[&str],
) -> Result<(), (Vec<String>, String)> {
    let key: Vec<String> = key.iter().map(|s| (*s).to_owned()).collect();
    if let Some(other) = listeners.get(&addr) {
        if addr.port() != 0 {
            return Err((
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

fn path_key(section: &str, name: &str, key: &str) -> Vec<String> {
    vec![section.to_owned(), name.to_owned(), key.to_owned()]
}

/// Component names appear in metrics labels and logs: keep them simple.
fn check_name(key: &[&str; 2]) -> Result<(), (Vec<String>, String)> {
    let name = key[1];
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err((
            key.iter().map(|s| (*s).to_owned()).collect(),
            "component names may contain only letters, digits, `_` and `-` (at most 64)".into(),
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
