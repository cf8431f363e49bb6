//! The filter dialect of routes: Knative Trigger style `exact` / `prefix` / `suffix` over
//! attributes and transport metadata, combined with `all` / `any` / `not`, plus `cesql`.
//!
//! Filters are compiled once when the config is loaded. Evaluating `exact`, `prefix` and
//! `suffix` allocates nothing: strings are compared in place and Integer or Boolean
//! attributes are rendered into a stack buffer.

use std::collections::BTreeMap;
use std::io::Write as _;

use ferry_cesql::{AttributeValue, Attributes, Expression};
use ferry_core::{AttributeRef, CloudEvent, TransportMetadata};
use serde::Deserialize;

/// A filter as written in the config.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum FilterConfig {
    /// Every named attribute equals its value.
    Exact(BTreeMap<String, String>),
    /// Every named attribute starts with its value.
    Prefix(BTreeMap<String, String>),
    /// Every named attribute ends with its value.
    Suffix(BTreeMap<String, String>),
    /// Every filter matches.
    All(Vec<FilterConfig>),
    /// At least one filter matches.
    Any(Vec<FilterConfig>),
    /// The filter does not match.
    Not(Box<FilterConfig>),
    /// A CloudEvents SQL expression; matches when it evaluates to `true` without error.
    Cesql(String),
}

/// A compiled filter.
#[derive(Debug, Clone)]
pub enum Filter {
    Compare { key: Key, op: Op, value: Box<str> },
    All(Vec<Filter>),
    Any(Vec<Filter>),
    Not(Box<Filter>),
    Cesql(Box<Expression>),
}

/// What a comparison looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// A context attribute or extension.
    Attribute(Box<str>),
    /// Transport metadata: `header.<name>` or a protocol property like `mqtt.topic`.
    Metadata(Box<str>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Exact,
    Prefix,
    Suffix,
}

/// Namespaces of transport metadata names.
const METADATA_PREFIXES: [&str; 6] = ["header.", "http.", "mqtt.", "amqp.", "nats.", "ws."];

/// The event as filters see it.
#[derive(Clone, Copy)]
pub struct Subject<'a> {
    pub event: &'a CloudEvent,
    pub metadata: &'a TransportMetadata,
}

/// A CESQL expression failed to evaluate: the route does not match, and it is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EvalFailed;

impl Filter {
    /// Compiles a filter; the error says what is wrong, with the CESQL position if any.
    pub fn compile(config: &FilterConfig) -> Result<Filter, String> {
        let compare = |op: Op, pairs: &BTreeMap<String, String>| -> Result<Filter, String> {
            if pairs.is_empty() {
                return Err("a filter needs at least one attribute".into());
            }
            let mut all = Vec::with_capacity(pairs.len());
            for (name, value) in pairs {
                all.push(Filter::Compare {
                    key: Key::parse(name)?,
                    op,
                    value: value.as_str().into(),
                });
            }
            Ok(if all.len() == 1 {
                all.remove(0)
            } else {
                Filter::All(all)
            })
        };
        match config {
            FilterConfig::Exact(p) => compare(Op::Exact, p),
            FilterConfig::Prefix(p) => compare(Op::Prefix, p),
            FilterConfig::Suffix(p) => compare(Op::Suffix, p),
            FilterConfig::All(list) => Ok(Filter::All(
                list.iter().map(Filter::compile).collect::<Result<_, _>>()?,
            )),
            FilterConfig::Any(list) => {
                if list.is_empty() {
                    return Err("`any` needs at least one filter".into());
                }
                Ok(Filter::Any(
                    list.iter().map(Filter::compile).collect::<Result<_, _>>()?,
                ))
            }
            FilterConfig::Not(inner) => Ok(Filter::Not(Box::new(Filter::compile(inner)?))),
            FilterConfig::Cesql(text) => Expression::parse(text)
                .map(|e| Filter::Cesql(Box::new(e)))
                .map_err(|e| format!("invalid CESQL expression {text:?} {e}")),
        }
    }

    /// Whether the event matches. `Err` when a CESQL expression raised an error.
    pub fn matches(&self, subject: Subject<'_>) -> Result<bool, EvalFailed> {
        match self {
            Filter::Compare { key, op, value } => Ok(compare(subject, key, *op, value)),
            Filter::All(list) => {
                for f in list {
                    if !f.matches(subject)? {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
            Filter::Any(list) => {
                for f in list {
                    if f.matches(subject)? {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            Filter::Not(inner) => Ok(!inner.matches(subject)?),
            Filter::Cesql(expr) => expr
                .matches(&CesqlView(subject.event))
                .map_err(|_| EvalFailed),
        }
    }
}

impl Key {
    fn parse(name: &str) -> Result<Key, String> {
        if METADATA_PREFIXES
            .iter()
            .any(|p| name.starts_with(p) && name.len() > p.len())
        {
            return Ok(Key::Metadata(name.to_ascii_lowercase().into()));
        }
        ferry_core::validate::extension_name(name).map_err(|_| {
                format!(
                    "`{name}` is neither an attribute name ([a-z0-9]) nor transport metadata (header.<name>, mqtt.topic, ...)"
                )
            })?;
        Ok(Key::Attribute(name.into()))
    }
}

fn compare(subject: Subject<'_>, key: &Key, op: Op, want: &str) -> bool {
    let test = |have: &str| match op {
        Op::Exact => have == want,
        Op::Prefix => have.starts_with(want),
        Op::Suffix => have.ends_with(want),
    };
    match key {
        Key::Metadata(name) => subject.metadata.get(name).is_some_and(test),
        Key::Attribute(name) => match subject.event.attribute(name) {
            None => false,
            Some(AttributeRef::Str(s)) => test(s),
            Some(AttributeRef::Integer(i)) => {
                let mut buf = [0u8; 12];
                let len = {
                    let mut cursor = &mut buf[..];
                    let _ = write!(cursor, "{i}");
                    12 - cursor.len()
                };
                std::str::from_utf8(&buf[..len]).is_ok_and(test)
            }
            Some(AttributeRef::Boolean(b)) => test(if b { "true" } else { "false" }),
            // Rare: Base64 needs an allocation.
            Some(r @ AttributeRef::Binary(_)) => test(&r.to_canonical_string()),
        },
    }
}

/// CESQL sees context attributes only; URI, Timestamp and other string-like types are
/// Strings. Binary extensions are not visible to CESQL.
struct CesqlView<'a>(&'a CloudEvent);

impl Attributes for CesqlView<'_> {
    fn attribute(&self, name: &str) -> Option<AttributeValue<'_>> {
        match self.0.attribute(name)? {
            AttributeRef::Str(s) => Some(AttributeValue::String(s)),
            AttributeRef::Integer(i) => Some(AttributeValue::Integer(i)),
            AttributeRef::Boolean(b) => Some(AttributeValue::Boolean(b)),
            AttributeRef::Binary(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::ExtensionValue;

    fn event() -> (CloudEvent, TransportMetadata) {
        let mut e = CloudEvent::new(
            "1",
            "https://example.com/orders",
            "com.example.order.created",
        )
        .unwrap();
        e.set_extension("tenant", ExtensionValue::String("acme".into()))
            .unwrap();
        e.set_extension("priority", ExtensionValue::Integer(42))
            .unwrap();
        e.set_extension("urgent", ExtensionValue::Boolean(true))
            .unwrap();
        let mut m = TransportMetadata::new();
        m.push_header("X-Tenant", "test");
        (e, m)
    }

    fn check(toml_filter: &str) -> bool {
        #[derive(Deserialize)]
        struct Wrap {
            f: FilterConfig,
        }
        let w: Wrap = toml::from_str(&format!("f = {toml_filter}")).unwrap();
        let (e, m) = event();
        Filter::compile(&w.f)
            .unwrap()
            .matches(Subject {
                event: &e,
                metadata: &m,
            })
            .unwrap()
    }

    #[test]
    fn table() {
        let cases = [
            (
                r#"{ exact = { type = "com.example.order.created" } }"#,
                true,
            ),
            (r#"{ exact = { type = "com.example.order" } }"#, false),
            (r#"{ prefix = { type = "com.example.order." } }"#, true),
            (r#"{ suffix = { type = ".created" } }"#, true),
            (r#"{ suffix = { type = ".deleted" } }"#, false),
            (r#"{ exact = { subject = "x" } }"#, false),
            (r#"{ exact = { tenant = "acme" } }"#, true),
            (r#"{ exact = { priority = "42" } }"#, true),
            (r#"{ prefix = { priority = "4" } }"#, true),
            (r#"{ exact = { urgent = "true" } }"#, true),
            (r#"{ exact = { "header.x-tenant" = "test" } }"#, true),
            (r#"{ exact = { "header.X-Tenant" = "test" } }"#, true),
            (r#"{ exact = { "header.x-missing" = "test" } }"#, false),
            (
                r#"{ not = { exact = { "header.x-tenant" = "test" } } }"#,
                false,
            ),
            (
                r#"{ exact = { type = "com.example.order.created", tenant = "other" } }"#,
                false,
            ),
            (
                r#"{ all = [{ prefix = { type = "com." } }, { exact = { tenant = "acme" } }] }"#,
                true,
            ),
            (r#"{ all = [] }"#, true),
            (
                r#"{ any = [{ exact = { tenant = "x" } }, { exact = { tenant = "acme" } }] }"#,
                true,
            ),
            (
                r#"{ any = [{ exact = { tenant = "x" } }, { exact = { tenant = "y" } }] }"#,
                false,
            ),
            (
                r#"{ cesql = "type LIKE 'com.example.%' AND priority > 40" }"#,
                true,
            ),
            (r#"{ cesql = "tenant = 'other'" }"#, false),
        ];
        for (f, want) in cases {
            assert_eq!(check(f), want, "{f}");
        }
    }

    #[test]
    fn compile_errors() {
        let bad = [
            FilterConfig::Exact(BTreeMap::new()),
            FilterConfig::Exact([("Type".to_owned(), "x".to_owned())].into()),
            FilterConfig::Exact([("header.".to_owned(), "x".to_owned())].into()),
            FilterConfig::Any(vec![]),
            FilterConfig::Cesql("type = ".into()),
        ];
        for f in bad {
            assert!(Filter::compile(&f).is_err(), "{f:?}");
        }
    }

    #[test]
    fn cesql_errors_are_reported() {
        let f = Filter::compile(&FilterConfig::Cesql("missing = 1".into())).unwrap();
        let (e, m) = event();
        assert_eq!(
            f.matches(Subject {
                event: &e,
                metadata: &m
            }),
            Err(EvalFailed)
        );
    }
}
