//! The filter dialect of routes: Knative Trigger style `exact` / `prefix` / `suffix` over
//! attributes, transport metadata and JSON data, the EventBridge-style operators `numeric`,
//! `exists`, `anything_but`, `cidr`, `wildcard` and `equals_ignore_case`, combined with
//! `all` / `any` / `not`, plus `cesql`.
//!
//! Filters are compiled once when the config is loaded. Evaluating the string operators
//! allocates nothing for string attributes: strings are compared in place and Integer or
//! Boolean attributes are rendered into a stack buffer. JSON data is parsed only when a filter
//! reads a `data.` path, at most once per event ([`DataCache`]).

use std::borrow::Cow;
use std::cell::{Cell, OnceCell};
use std::io::Write as _;
use std::net::IpAddr;

use ferry_cesql::{AttributeValue, Attributes, Expression};
use ferry_core::{AttributeRef, CloudEvent, TransportMetadata};
use serde::Deserialize;

/// One value or a list of values ("any of").
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn values(&self) -> &[String] {
        match self {
            OneOrMany::One(v) => std::slice::from_ref(v),
            OneOrMany::Many(v) => v,
        }
    }
}

/// A table of names to values as written, in file order. (A `BTreeMap` per filter would cost a
/// node of eleven entries each; routes come by the ten thousand.)
#[derive(Debug, Clone, PartialEq)]
pub struct Pairs<V>(pub Vec<(String, V)>);

impl<V> Pairs<V> {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn iter(&self) -> impl Iterator<Item = (&String, &V)> {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

impl<V> FromIterator<(String, V)> for Pairs<V> {
    fn from_iter<I: IntoIterator<Item = (String, V)>>(iter: I) -> Self {
        Pairs(iter.into_iter().collect())
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Pairs<V> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> serde::de::Visitor<'de> for Visit<V> {
            type Value = Pairs<V>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a table of names")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut out: Vec<(String, V)> =
                    Vec::with_capacity(map.size_hint().unwrap_or(1).min(16));
                while let Some(name) = map.next_key::<String>()? {
                    if out.iter().any(|(n, _)| *n == name) {
                        return Err(serde::de::Error::custom(format!("`{name}` is given twice")));
                    }
                    let value = map.next_value()?;
                    out.push((name, value));
                }
                out.shrink_to_fit();
                Ok(Pairs(out))
            }
        }
        d.deserialize_map(Visit(std::marker::PhantomData))
    }
}

/// A filter as written in the config.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum FilterConfig {
    /// Every named attribute equals its value (or one of its values).
    Exact(Pairs<OneOrMany>),
    /// Every named attribute starts with its value (or one of them).
    Prefix(Pairs<OneOrMany>),
    /// Every named attribute ends with its value (or one of them).
    Suffix(Pairs<OneOrMany>),
    /// Every named value is a number within the bounds: `{ ">=" = 30, "<" = 50 }`.
    Numeric(Pairs<Pairs<f64>>),
    /// Every named attribute is present (`true`) or absent (`false`).
    Exists(Pairs<bool>),
    /// Every named attribute is present and equals none of the values.
    AnythingBut(Pairs<OneOrMany>),
    /// Every named value is an IP address inside the network (or one of them).
    Cidr(Pairs<OneOrMany>),
    /// Every named attribute matches the pattern, `*` standing for any run of characters.
    Wildcard(Pairs<OneOrMany>),
    /// Every named attribute equals its value, ignoring case (Unicode lower case).
    EqualsIgnoreCase(Pairs<OneOrMany>),
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
    Compare { key: Key, test: Test },
    All(Vec<Filter>),
    Any(Vec<Filter>),
    Not(Box<Filter>),
    Cesql(Box<Expression>),
}

/// What a comparison looks at.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    /// A context attribute or extension.
    Attribute(Box<str>),
    /// Transport metadata: `header.<name>`, `peer.ip` or a protocol property like `mqtt.topic`.
    Metadata(Box<str>),
    /// A member of JSON data: `data.<member>.<member>[<index>]`.
    Data(DataPath),
}

/// A path into JSON data, as written (`data.items[0].sku`) and as steps.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DataPath {
    pub text: Box<str>,
    steps: Box<[Step]>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Step {
    Member(Box<str>),
    Index(usize),
}

/// A numeric comparison.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum NumOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// The test a comparison applies to the value it looks at.
#[derive(Debug, Clone)]
pub enum Test {
    Exact(Box<[Box<str>]>),
    Prefix(Box<[Box<str>]>),
    Suffix(Box<[Box<str>]>),
    /// Lower-cased values.
    IgnoreCase(Box<[Box<str>]>),
    AnythingBut(Box<[Box<str>]>),
    Wildcard(Box<[Pattern]>),
    Numeric(Box<[(NumOp, f64)]>),
    Exists(bool),
    Cidr(Box<[ipnet::IpNet]>),
}

/// A `wildcard` pattern split at its unescaped `*`s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    text: Box<str>,
    parts: Box<[Box<str>]>,
}

/// Namespaces of transport metadata names.
const METADATA_PREFIXES: [&str; 7] = [
    "header.", "http.", "mqtt.", "amqp.", "nats.", "ws.", "peer.",
];

/// The event as filters see it.
#[derive(Clone, Copy)]
pub struct Subject<'a> {
    pub event: &'a CloudEvent,
    pub metadata: &'a TransportMetadata,
    /// The event's JSON data, parsed on first use.
    pub data: &'a DataCache,
}

/// The JSON data of one event, parsed the first time a filter reads a `data.` path.
#[derive(Debug, Default)]
pub struct DataCache {
    parsed: OnceCell<Option<serde_json::Value>>,
    parses: Cell<u32>,
}

impl DataCache {
    /// How many times the data was parsed (0 or 1).
    pub fn parses(&self) -> u32 {
        self.parses.get()
    }

    fn get(&self, event: &CloudEvent) -> Option<&serde_json::Value> {
        self.parsed
            .get_or_init(|| {
                let json = event
                    .effective_content_type()
                    .is_some_and(ferry_core::validate::is_json_media_type);
                let data = event.data().filter(|_| json)?;
                self.parses.set(self.parses.get() + 1);
                serde_json::from_slice(data.as_bytes()).ok()
            })
            .as_ref()
    }
}

impl<'a> Subject<'a> {
    pub fn new(
        event: &'a CloudEvent,
        metadata: &'a TransportMetadata,
        data: &'a DataCache,
    ) -> Self {
        Subject {
            event,
            metadata,
            data,
        }
    }
}

/// A CESQL expression failed to evaluate: the route does not match, and it is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EvalFailed;

/// A value a comparison sees.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    Str(Cow<'a, str>),
    /// An Integer attribute.
    Int(i32),
    /// A JSON number, with its text.
    Number(f64, Cow<'a, str>),
    Bool(bool),
    /// JSON `null`, an object or an array of non-scalars: present, but equal to no string.
    Other,
}

impl Value<'_> {
    /// The text string operators compare; an Integer renders into `buf`.
    fn text<'b>(&'b self, buf: &'b mut [u8; 12]) -> Option<&'b str> {
        match self {
            Value::Str(s) => Some(s),
            Value::Int(i) => {
                let len = {
                    let mut cursor = &mut buf[..];
                    let _ = write!(cursor, "{i}");
                    12 - cursor.len()
                };
                std::str::from_utf8(&buf[..len]).ok()
            }
            Value::Number(_, s) => Some(s),
            Value::Bool(b) => Some(if *b { "true" } else { "false" }),
            Value::Other => None,
        }
    }

    fn number(&self) -> Option<f64> {
        match self {
            Value::Number(n, _) => Some(*n),
            Value::Int(i) => Some(f64::from(*i)),
            Value::Str(s) => numeric_string(s),
            _ => None,
        }
    }

    /// The value as an explanation shows it.
    pub fn describe(&self) -> String {
        match self {
            Value::Str(s) => format!("{s:?}"),
            Value::Int(i) => i.to_string(),
            Value::Number(_, s) => s.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Other => "a JSON value that is not a scalar".into(),
        }
    }
}

/// A finite number written as a string (`"42"`, `"-3.5"`, `"1e3"`).
fn numeric_string(s: &str) -> Option<f64> {
    let t = s.trim();
    let looks_numeric = t
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E'))
        && t.bytes().any(|b| b.is_ascii_digit());
    if !looks_numeric {
        return None;
    }
    t.parse::<f64>().ok().filter(|n| n.is_finite())
}

fn list(values: &OneOrMany, what: &str) -> Result<Box<[Box<str>]>, String> {
    let v = values.values();
    if v.is_empty() {
        return Err(format!("`{what}` needs at least one value"));
    }
    Ok(v.iter().map(|s| s.as_str().into()).collect())
}

impl Filter {
    /// Compiles a filter; the error says what is wrong, with the CESQL position if any.
    pub fn compile(config: &FilterConfig) -> Result<Filter, String> {
        fn each<V>(
            pairs: &Pairs<V>,
            mut test: impl FnMut(&str, &V) -> Result<Test, String>,
        ) -> Result<Filter, String> {
            if pairs.is_empty() {
                return Err("a filter needs at least one attribute".into());
            }
            let mut all = Vec::with_capacity(pairs.0.len());
            for (name, value) in pairs.iter() {
                all.push(Filter::Compare {
                    key: Key::parse(name)?,
                    test: test(name, value).map_err(|e| format!("`{name}`: {e}"))?,
                });
            }
            Ok(if all.len() == 1 {
                all.remove(0)
            } else {
                Filter::All(all)
            })
        }
        match config {
            FilterConfig::Exact(p) => each(p, |_, v| list(v, "exact").map(Test::Exact)),
            FilterConfig::Prefix(p) => each(p, |_, v| list(v, "prefix").map(Test::Prefix)),
            FilterConfig::Suffix(p) => each(p, |_, v| list(v, "suffix").map(Test::Suffix)),
            FilterConfig::AnythingBut(p) => {
                each(p, |_, v| list(v, "anything_but").map(Test::AnythingBut))
            }
            FilterConfig::EqualsIgnoreCase(p) => each(p, |_, v| {
                let values = list(v, "equals_ignore_case")?;
                // Char by char, as events are compared (`str::to_lowercase` turns a final `Σ`
                // into `ς`, `char::to_lowercase` into `σ`).
                Ok(Test::IgnoreCase(
                    values
                        .iter()
                        .map(|s| {
                            s.chars()
                                .flat_map(char::to_lowercase)
                                .collect::<String>()
                                .into()
                        })
                        .collect(),
                ))
            }),
            FilterConfig::Wildcard(p) => each(p, |_, v| {
                let values = list(v, "wildcard")?;
                Ok(Test::Wildcard(
                    values.iter().map(|s| Pattern::parse(s)).collect(),
                ))
            }),
            FilterConfig::Cidr(p) => each(p, |_, v| {
                let values = list(v, "cidr")?;
                values
                    .iter()
                    .map(|s| parse_net(s))
                    .collect::<Result<_, _>>()
                    .map(Test::Cidr)
            }),
            FilterConfig::Exists(p) => each(p, |_, v| Ok(Test::Exists(*v))),
            FilterConfig::Numeric(p) => each(p, |_, bounds| {
                if bounds.is_empty() {
                    return Err("`numeric` needs at least one comparison".into());
                }
                bounds
                    .iter()
                    .map(|(op, n)| {
                        let op = match op.as_str() {
                            "=" | "==" => NumOp::Eq,
                            "!=" => NumOp::Ne,
                            "<" => NumOp::Lt,
                            "<=" => NumOp::Le,
                            ">" => NumOp::Gt,
                            ">=" => NumOp::Ge,
                            other => {
                                return Err(format!(
                                    "unknown comparison {other:?} (use =, !=, <, <=, >, >=)"
                                ))
                            }
                        };
                        Ok((op, *n))
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map(|mut bounds| {
                        // Lower bounds first, as people write them: `>= 30, < 50`.
                        bounds.sort_by_key(|(op, _)| match op {
                            NumOp::Gt | NumOp::Ge => 0,
                            NumOp::Lt | NumOp::Le => 1,
                            NumOp::Eq => 2,
                            NumOp::Ne => 3,
                        });
                        Test::Numeric(bounds.into())
                    })
            }),
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
            Filter::Compare { key, test } => Ok(test.passes(key.value(subject).as_ref())),
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

    /// Whether the filter reads JSON data.
    pub fn reads_data(&self) -> bool {
        match self {
            Filter::Compare { key, .. } => matches!(key, Key::Data(_)),
            Filter::All(l) | Filter::Any(l) => l.iter().any(Filter::reads_data),
            Filter::Not(f) => f.reads_data(),
            Filter::Cesql(_) => false,
        }
    }

    /// The first part of the filter that does not match, and what it saw; `None` when the
    /// filter matches.
    pub fn explain(&self, subject: Subject<'_>) -> Option<Failure> {
        match self {
            Filter::Compare { key, test } => {
                let value = key.value(subject);
                (!test.passes(value.as_ref())).then(|| Failure {
                    filter: test.phrase(key.name()),
                    saw: value.map_or_else(|| "absent".into(), |v| v.describe()),
                })
            }
            Filter::All(list) => list.iter().find_map(|f| f.explain(subject)),
            Filter::Any(list) => {
                let failures: Vec<Failure> = list
                    .iter()
                    .map(|f| f.explain(subject))
                    .collect::<Option<_>>()?;
                Some(Failure {
                    filter: "any".into(),
                    saw: format!(
                        "none matched: {}",
                        failures
                            .iter()
                            .map(|f| format!("{} saw {}", f.filter, f.saw))
                            .collect::<Vec<_>>()
                            .join("; ")
                    ),
                })
            }
            Filter::Not(inner) => match inner.explain(subject) {
                Some(_) => None,
                None => Some(Failure {
                    filter: "not".into(),
                    saw: "the inner filter matched".into(),
                }),
            },
            Filter::Cesql(expr) => match expr.matches(&CesqlView(subject.event)) {
                Ok(true) => None,
                Ok(false) => Some(Failure {
                    filter: format!("cesql {:?}", expr.source()),
                    saw: "false".into(),
                }),
                Err(e) => Some(Failure {
                    filter: format!("cesql {:?}", expr.source()),
                    saw: format!("an error: {e}"),
                }),
            },
        }
    }
}

/// Why a filter did not match.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Failure {
    /// What the filter asks (`type = "com.a"`, `data.temperature is a number >= 30`).
    pub filter: String,
    /// The value it saw (`"com.other"`, `absent`).
    pub saw: String,
}

impl Test {
    /// Whether a value (or its absence) passes.
    pub fn passes(&self, value: Option<&Value<'_>>) -> bool {
        let Some(value) = value else {
            return matches!(self, Test::Exists(false));
        };
        let mut buf = [0u8; 12];
        let text = value.text(&mut buf);
        let any = |values: &[Box<str>], f: &dyn Fn(&str, &str) -> bool| {
            text.is_some_and(|t| values.iter().any(|w| f(t, w)))
        };
        match self {
            Test::Exists(want) => *want,
            Test::Exact(v) => any(v, &|t, w| t == w),
            Test::Prefix(v) => any(v, &|t, w| t.starts_with(w)),
            Test::Suffix(v) => any(v, &|t, w| t.ends_with(w)),
            Test::IgnoreCase(v) => any(v, &|t, w| {
                t.chars().flat_map(char::to_lowercase).eq(w.chars())
            }),
            Test::AnythingBut(v) => text.is_some_and(|t| !v.iter().any(|w| **w == *t)),
            Test::Wildcard(p) => text.is_some_and(|t| p.iter().any(|p| p.matches(t))),
            Test::Numeric(bounds) => value.number().is_some_and(|n| {
                bounds.iter().all(|&(op, b)| match op {
                    NumOp::Eq => n == b,
                    NumOp::Ne => n != b,
                    NumOp::Lt => n < b,
                    NumOp::Le => n <= b,
                    NumOp::Gt => n > b,
                    NumOp::Ge => n >= b,
                })
            }),
            Test::Cidr(nets) => text
                .and_then(|t| t.parse::<IpAddr>().ok())
                .map(|ip| ip.to_canonical())
                .is_some_and(|ip| nets.iter().any(|n| n.contains(&ip))),
        }
    }

    /// What the test asks of `name`, as a phrase: `type = "com.a"`, `data.t >= 30, < 50`.
    pub fn phrase(&self, name: &str) -> String {
        let one_or_list = |v: &[Box<str>]| match v {
            [one] => format!("{one:?}"),
            many => format!(
                "one of [{}]",
                many.iter()
                    .map(|s| format!("{s:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        match self {
            Test::Exact(v) => format!("{name} = {}", one_or_list(v)),
            Test::Prefix(v) => format!("{name} starts with {}", one_or_list(v)),
            Test::Suffix(v) => format!("{name} ends with {}", one_or_list(v)),
            Test::IgnoreCase(v) => format!("{name} = {} ignoring case", one_or_list(v)),
            Test::AnythingBut(v) => format!("{name} is present and not {}", one_or_list(v)),
            Test::Wildcard(p) => {
                let texts: Vec<Box<str>> = p.iter().map(|p| p.text.clone()).collect();
                format!("{name} matches {}", one_or_list(&texts))
            }
            Test::Numeric(b) => {
                let list: Vec<String> = b
                    .iter()
                    .map(|(op, n)| {
                        let op = match op {
                            NumOp::Eq => "=",
                            NumOp::Ne => "!=",
                            NumOp::Lt => "<",
                            NumOp::Le => "<=",
                            NumOp::Gt => ">",
                            NumOp::Ge => ">=",
                        };
                        format!("{op} {n}")
                    })
                    .collect();
                format!("{name} is a number {}", list.join(", "))
            }
            Test::Exists(true) => format!("{name} is present"),
            Test::Exists(false) => format!("{name} is absent"),
            Test::Cidr(n) => {
                let list: Vec<String> = n.iter().map(ToString::to_string).collect();
                format!("{name} is an address in {}", list.join(" or "))
            }
        }
    }
}

fn parse_net(s: &str) -> Result<ipnet::IpNet, String> {
    if let Ok(net) = s.parse::<ipnet::IpNet>() {
        return Ok(net.trunc());
    }
    s.parse::<IpAddr>().map(ipnet::IpNet::from).map_err(|_| {
        format!("{s:?} is not a network (`10.0.0.0/8`, `2001:db8::/32`) or an address")
    })
}

impl Pattern {
    /// `*` is any run of characters; `\*` is a literal `*` and `\\` a literal `\`.
    fn parse(text: &str) -> Pattern {
        let mut parts = Vec::new();
        let mut current = String::new();
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => current.push(chars.next().unwrap_or('\\')),
                '*' => parts.push(std::mem::take(&mut current).into_boxed_str()),
                c => current.push(c),
            }
        }
        parts.push(current.into_boxed_str());
        Pattern {
            text: text.into(),
            parts: parts.into(),
        }
    }

    fn matches(&self, text: &str) -> bool {
        let parts = &self.parts;
        if parts.len() == 1 {
            return text == &*parts[0];
        }
        let (first, last) = (&parts[0], &parts[parts.len() - 1]);
        if text.len() < first.len() + last.len()
            || !text.starts_with(&**first)
            || !text.ends_with(&**last)
        {
            return false;
        }
        let mut rest = &text[first.len()..text.len() - last.len()];
        for middle in &parts[1..parts.len() - 1] {
            match rest.find(&**middle) {
                Some(at) => rest = &rest[at + middle.len()..],
                None => return false,
            }
        }
        true
    }
}

impl Key {
    pub(crate) fn parse(name: &str) -> Result<Key, String> {
        // The authenticated principal is metadata of the listening sources, not an extension.
        if name == "principal" {
            return Ok(Key::Metadata(name.into()));
        }
        if let Some(path) = name.strip_prefix("data.") {
            return DataPath::parse(name, path).map(Key::Data);
        }
        if METADATA_PREFIXES
            .iter()
            .any(|p| name.starts_with(p) && name.len() > p.len())
        {
            return Ok(Key::Metadata(name.to_ascii_lowercase().into()));
        }
        ferry_core::validate::extension_name(name).map_err(|_| {
                format!(
                    "`{name}` is neither an attribute name ([a-z0-9]), nor transport metadata (header.<name>, peer.ip, mqtt.topic, ...), nor a data path (data.<member>)"
                )
            })?;
        Ok(Key::Attribute(name.into()))
    }

    /// The name as written in the config.
    pub fn name(&self) -> &str {
        match self {
            Key::Attribute(n) | Key::Metadata(n) => n,
            Key::Data(p) => &p.text,
        }
    }

    /// The value the key sees in an event, if present.
    pub fn value<'a>(&self, subject: Subject<'a>) -> Option<Value<'a>> {
        match self {
            Key::Metadata(name) => subject.metadata.get(name).map(|s| Value::Str(s.into())),
            Key::Attribute(name) => Some(match subject.event.attribute(name)? {
                AttributeRef::Str(s) => Value::Str(Cow::Borrowed(s)),
                AttributeRef::Integer(i) => Value::Int(i),
                AttributeRef::Boolean(b) => Value::Bool(b),
                // Rare: Base64 needs an allocation.
                r @ AttributeRef::Binary(_) => Value::Str(Cow::Owned(r.to_canonical_string())),
            }),
            Key::Data(path) => path.value(subject.data.get(subject.event)?),
        }
    }

    /// The value as the router's index looks it up: the string the `exact` and `prefix`
    /// tests compare.
    pub(crate) fn text<'a>(&self, subject: Subject<'a>) -> Option<Cow<'a, str>> {
        match self {
            Key::Metadata(name) => subject.metadata.get(name).map(Cow::Borrowed),
            Key::Attribute(name) => match subject.event.attribute(name)? {
                AttributeRef::Str(s) => Some(Cow::Borrowed(s)),
                other => Some(Cow::Owned(other.to_canonical_string())),
            },
            Key::Data(_) => match self.value(subject)? {
                Value::Str(s) => Some(s),
                v => v.text(&mut [0; 12]).map(|t| Cow::Owned(t.to_owned())),
            },
        }
    }
}

impl DataPath {
    /// `path` is what follows `data.`: members separated by `.`, `[n]` for array items.
    fn parse(text: &str, path: &str) -> Result<DataPath, String> {
        let bad = |why: &str| format!("`{text}`: {why} (write data.<member>.<member>[<index>])");
        let mut steps = Vec::new();
        for segment in path.split('.') {
            let (member, mut rest) = match segment.find('[') {
                Some(at) => (&segment[..at], &segment[at..]),
                None => (segment, ""),
            };
            if member.is_empty() && (steps.is_empty() || rest.is_empty()) {
                return Err(bad("an empty member name"));
            }
            if !member.is_empty() {
                steps.push(Step::Member(member.into()));
            }
            while !rest.is_empty() {
                let close = rest.find(']').ok_or_else(|| bad("an unclosed `[`"))?;
                let index = rest[1..close]
                    .parse::<usize>()
                    .map_err(|_| bad("an array index is a number"))?;
                steps.push(Step::Index(index));
                rest = &rest[close + 1..];
                if !rest.is_empty() && !rest.starts_with('[') {
                    return Err(bad("`]` is followed by `.` or `[`"));
                }
            }
        }
        Ok(DataPath {
            text: text.into(),
            steps: steps.into(),
        })
    }

    fn value<'a>(&self, data: &'a serde_json::Value) -> Option<Value<'a>> {
        let mut at = data;
        for step in &*self.steps {
            at = match step {
                Step::Member(m) => at.as_object()?.get(&**m)?,
                Step::Index(i) => at.as_array()?.get(*i)?,
            };
        }
        Some(match at {
            serde_json::Value::String(s) => Value::Str(Cow::Borrowed(s)),
            serde_json::Value::Number(n) => {
                Value::Number(n.as_f64().unwrap_or(f64::NAN), Cow::Owned(n.to_string()))
            }
            serde_json::Value::Bool(b) => Value::Bool(*b),
            _ => Value::Other,
        })
    }
}

/// The JSON pointer (RFC 6901) of a `data.` path: `data.items[0].sku` is `/items/0/sku`.
pub fn json_pointer(name: &str) -> Option<String> {
    let Key::Data(path) = Key::parse(name).ok()? else {
        return None;
    };
    let mut out = String::new();
    for step in &*path.steps {
        out.push('/');
        match step {
            Step::Member(m) => out.push_str(&m.replace('~', "~0").replace('/', "~1")),
            Step::Index(i) => out.push_str(&i.to_string()),
        }
    }
    Some(out)
}

/// A data path's value as a template shows it: strings as they are, other scalars as JSON.
pub fn data_text(event: &CloudEvent, data: &DataCache, path: &str) -> Option<String> {
    let key = Key::parse(path).ok()?;
    let metadata = TransportMetadata::new();
    key.text(Subject::new(event, &metadata, data))
        .map(Cow::into_owned)
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
        let cache = DataCache::default();
        Filter::compile(&w.f)
            .unwrap()
            .matches(Subject::new(&e, &m, &cache))
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
            FilterConfig::Exact(Pairs(Vec::new())),
            FilterConfig::Exact(Pairs(vec![(
                "Type".to_owned(),
                OneOrMany::One("x".to_owned()),
            )])),
            FilterConfig::Exact(Pairs(vec![(
                "header.".to_owned(),
                OneOrMany::One("x".to_owned()),
            )])),
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
        let cache = DataCache::default();
        assert_eq!(f.matches(Subject::new(&e, &m, &cache)), Err(EvalFailed));
    }

    /// An event with JSON data and a peer address, for the operators.
    fn reading() -> (CloudEvent, TransportMetadata) {
        let mut e = CloudEvent::new("1", "/devices/thermo-7", "COM.Example.Reading").unwrap();
        e.set_extension("priority", ExtensionValue::Integer(42))
            .unwrap();
        e.set_extension("level", ExtensionValue::String("3.5".into()))
            .unwrap();
        e.set_data(
            Some("application/json".into()),
            Some(ferry_core::Data::json(
                r#"{"temperature": 35, "unit": "C", "ok": true, "items": [{"sku": "a"}, {"sku": "b"}], "tags": ["x", "y"], "none": null}"#,
            ).unwrap()),
        )
        .unwrap();
        let mut m = TransportMetadata::new();
        m.push_property("peer.ip", "10.1.2.3");
        m.push_property("principal", "user:thermo-7");
        m.push_header("X-Debug", "1");
        (e, m)
    }

    fn check_reading(toml_filter: &str, subject: &str) -> bool {
        #[derive(Deserialize)]
        struct Wrap {
            f: FilterConfig,
        }
        let w: Wrap = toml::from_str(&format!("f = {toml_filter}")).unwrap();
        let (mut e, m) = reading();
        if !subject.is_empty() {
            e = {
                let mut b = ferry_core::EventBuilder::new()
                    .specversion("1.0")
                    .id("1")
                    .source(e.source())
                    .ty(e.ty())
                    .subject(subject);
                for (k, v) in e.extensions() {
                    b = b.extension(k.clone(), v.clone());
                }
                b = b
                    .datacontenttype("application/json")
                    .data(e.data().unwrap().clone());
                b.build().unwrap()
            };
        }
        let cache = DataCache::default();
        Filter::compile(&w.f)
            .unwrap_or_else(|err| panic!("{toml_filter}: {err}"))
            .matches(Subject::new(&e, &m, &cache))
            .unwrap()
    }

    #[test]
    fn operators() {
        let cases = [
            (
                r#"{ numeric = { "data.temperature" = { ">=" = 30, "<" = 50 } } }"#,
                "",
                true,
            ),
            (
                r#"{ numeric = { "data.temperature" = { ">" = 35 } } }"#,
                "",
                false,
            ),
            (
                r#"{ numeric = { "data.temperature" = { "=" = 35.0 } } }"#,
                "",
                true,
            ),
            (r#"{ numeric = { "data.unit" = { ">" = 0 } } }"#, "", false),
            (
                r#"{ numeric = { priority = { ">=" = 40, "!=" = 41 } } }"#,
                "",
                true,
            ),
            (r#"{ numeric = { level = { "<" = 4 } } }"#, "", true),
            (r#"{ numeric = { type = { "<" = 4 } } }"#, "", false),
            (
                r#"{ numeric = { "data.missing" = { "<" = 4 } } }"#,
                "",
                false,
            ),
            (r#"{ exists = { subject = true } }"#, "", false),
            (r#"{ exists = { subject = true } }"#, "s", true),
            (r#"{ exists = { "header.x-debug" = false } }"#, "", false),
            (
                r#"{ exists = { "header.x-other" = false, "data.none" = true } }"#,
                "",
                true,
            ),
            (
                r#"{ anything_but = { source = ["/test", "/staging"] } }"#,
                "",
                true,
            ),
            (
                r#"{ anything_but = { source = "/devices/thermo-7" } }"#,
                "",
                false,
            ),
            (r#"{ anything_but = { subject = "x" } }"#, "", false),
            (r#"{ cidr = { "peer.ip" = "10.0.0.0/8" } }"#, "", true),
            (
                r#"{ cidr = { "peer.ip" = ["192.168.0.0/16", "10.1.2.3"] } }"#,
                "",
                true,
            ),
            (r#"{ cidr = { "peer.ip" = "2001:db8::/32" } }"#, "", false),
            (
                r#"{ wildcard = { subject = "devices/*/thermo-*" } }"#,
                "devices/a/thermo-1",
                true,
            ),
            (
                r#"{ wildcard = { subject = "devices/*/thermo-*" } }"#,
                "devices/a/humid-1",
                false,
            ),
            (
                r#"{ wildcard = { subject = "devices/*" } }"#,
                "devices/",
                true,
            ),
            (r#"{ wildcard = { subject = 'a\*' } }"#, "a*", true),
            (r#"{ wildcard = { subject = 'a\*' } }"#, "ab", false),
            (r#"{ wildcard = { subject = "*a*a*" } }"#, "aa", true),
            (r#"{ wildcard = { subject = "*a*a*" } }"#, "a", false),
            (
                r#"{ equals_ignore_case = { type = "com.example.READING" } }"#,
                "",
                true,
            ),
            (
                r#"{ equals_ignore_case = { type = "com.example.other" } }"#,
                "",
                false,
            ),
            (
                r#"{ exact = { type = ["com.a", "COM.Example.Reading"] } }"#,
                "",
                true,
            ),
            (r#"{ exact = { type = ["com.a", "com.b"] } }"#, "", false),
            (r#"{ prefix = { source = ["/x", "/devices/"] } }"#, "", true),
            (
                r#"{ exact = { "data.unit" = "C", "data.ok" = "true", "data.temperature" = "35" } }"#,
                "",
                true,
            ),
            (r#"{ exact = { "data.items[1].sku" = "b" } }"#, "", true),
            (r#"{ exact = { "data.items[2].sku" = "b" } }"#, "", false),
            (r#"{ exact = { "data.tags[0]" = "x" } }"#, "", true),
            (r#"{ exact = { principal = "user:thermo-7" } }"#, "", true),
            (
                r#"{ equals_ignore_case = { subject = "ΟΔΟΣ" } }"#,
                "οδοσ",
                true,
            ),
            (
                r#"{ equals_ignore_case = { subject = "ΟΔΟΣ" } }"#,
                "ΟΔΟΣ",
                true,
            ),
            (r#"{ exact = { "data.items" = "x" } }"#, "", false),
            (r#"{ exists = { "data.items[0]" = true } }"#, "", true),
        ];
        for (f, subject, want) in cases {
            assert_eq!(
                check_reading(f, subject),
                want,
                "{f} with subject {subject:?}"
            );
        }
    }

    #[test]
    fn data_is_parsed_at_most_once_and_only_when_read() {
        let (e, m) = reading();
        let compile = |t: &str| {
            #[derive(Deserialize)]
            struct Wrap {
                f: FilterConfig,
            }
            Filter::compile(&toml::from_str::<Wrap>(&format!("f = {t}")).unwrap().f).unwrap()
        };
        let cache = DataCache::default();
        let reads = compile(
            r#"{ all = [{ exact = { "data.unit" = "C" } }, { numeric = { "data.temperature" = { ">" = 1 } } }, { exists = { "data.ok" = true } }] }"#,
        );
        assert!(reads.reads_data());
        assert!(reads.matches(Subject::new(&e, &m, &cache)).unwrap());
        assert!(reads.matches(Subject::new(&e, &m, &cache)).unwrap());
        assert_eq!(cache.parses(), 1);
        let cache = DataCache::default();
        let plain = compile(r#"{ exact = { type = "COM.Example.Reading" } }"#);
        assert!(!plain.reads_data());
        assert!(plain.matches(Subject::new(&e, &m, &cache)).unwrap());
        assert_eq!(cache.parses(), 0);
    }

    #[test]
    fn operator_compile_errors() {
        let bad = [
            r#"{ numeric = { x = { "~" = 1 } } }"#,
            r#"{ numeric = { x = {} } }"#,
            r#"{ cidr = { "peer.ip" = "10.0.0.0/33" } }"#,
            r#"{ cidr = { "peer.ip" = "nowhere" } }"#,
            r#"{ exact = { "data." = "x" } }"#,
            r#"{ exact = { "data.a[x]" = "x" } }"#,
            r#"{ exact = { "data.a[1" = "x" } }"#,
            r#"{ exact = { type = [] } }"#,
        ];
        for t in bad {
            #[derive(Deserialize)]
            struct Wrap {
                f: FilterConfig,
            }
            let w: Wrap = toml::from_str(&format!("f = {t}")).unwrap();
            assert!(Filter::compile(&w.f).is_err(), "{t}");
        }
        assert_eq!(
            json_pointer("data.items[0].a/b"),
            Some("/items/0/a~1b".into())
        );
    }
}
