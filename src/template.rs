//! String templates with `{name}` placeholders, compiled once at config load.
//!
//! Used for sink addresses (`routing_key = "events.{type}"`, `topic = "ferry/{source}"`) and for
//! normalizing messages that are not CloudEvents (`subject = "{mqtt.topic.1}"`). `{{` and `}}`
//! write literal braces. What a placeholder means is up to the caller's lookup function.
//!
//! In a sink address (an MQTT topic, a NATS subject, an AMQP routing key) an attribute value
//! is sender-controlled, so [`Template::render_address`] keeps it inside its own level: by
//! default a value holding the address's level separator, a wildcard or a control character
//! is refused ([`TemplateValues`]).

use std::borrow::Cow;
use std::fmt::Write as _;

/// What a sink does with an attribute value that would change the structure of its address
/// (the `template_values` key of MQTT, NATS and AMQP sinks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TemplateValues {
    /// Refuse the event (permanent failure: dead-lettered if the sink has a dead-letter sink).
    #[default]
    Refuse,
    /// Percent-encode the offending characters (and `%`), so the value stays one level.
    Escape,
}

/// The characters an address kind gives meaning to.
#[derive(Debug)]
pub struct AddressRules {
    /// What the address is called in messages.
    pub what: &'static str,
    /// The level separator.
    pub separator: char,
    /// Characters with a meaning of their own (wildcards), never allowed in a value.
    pub reserved: &'static [char],
    /// Whether whitespace is refused (it is invalid in NATS subjects).
    pub whitespace: bool,
    /// Whether a value may not start the address with `$` (MQTT's system topics).
    pub no_leading_dollar: bool,
}

/// MQTT topic names: levels split by `/`; `+` and `#` are wildcards; `$` starts system topics.
pub const MQTT_TOPIC: AddressRules = AddressRules {
    what: "topic",
    separator: '/',
    reserved: &['+', '#'],
    whitespace: false,
    no_leading_dollar: true,
};

/// NATS subjects: tokens split by `.`; `*` and `>` are wildcards; no whitespace.
pub const NATS_SUBJECT: AddressRules = AddressRules {
    what: "subject",
    separator: '.',
    reserved: &['*', '>'],
    whitespace: true,
    no_leading_dollar: false,
};

/// AMQP routing keys: words split by `.` (topic exchanges); `*` and `#` are binding wildcards.
pub const AMQP_ROUTING_KEY: AddressRules = AddressRules {
    what: "routing key",
    separator: '.',
    reserved: &['*', '#'],
    whitespace: false,
    no_leading_dollar: false,
};

/// The attribute whose value may hold the `.` separator: a CloudEvents `type` is a dotted
/// name by convention (`com.example.order.created`), made to be routed on by prefix.
const DOTTED_ATTRIBUTE: &str = "type";

/// Why an address could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenderError {
    /// The event has no value for this placeholder.
    Missing(String),
    /// A value would change the address's structure.
    Refused {
        placeholder: String,
        character: char,
    },
}

impl std::fmt::Display for RenderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RenderError::Missing(name) => write!(f, "the event has no `{name}` attribute"),
            RenderError::Refused {
                placeholder,
                character,
            } => write!(
                f,
                "the value of `{placeholder}` holds {} which would change the address's levels or add a wildcard (template_values = \"escape\" percent-encodes it)",
                describe(*character)
            ),
        }
    }
}

fn describe(c: char) -> String {
    if c.is_control() || c.is_whitespace() {
        format!("the character U+{:04X}", u32::from(c))
    } else {
        format!("`{c}`")
    }
}

impl AddressRules {
    /// The first character of `value` (the value of `placeholder`, starting the address if
    /// `first`) that is not allowed, if any.
    fn offending(&self, placeholder: &str, value: &str, first: bool) -> Option<char> {
        if first && self.no_leading_dollar && value.starts_with('$') {
            return Some('$');
        }
        value.chars().find(|c| self.escapes(placeholder, *c))
    }

    fn escapes(&self, placeholder: &str, c: char) -> bool {
        (c == self.separator && !(c == '.' && placeholder == DOTTED_ATTRIBUTE))
            || self.reserved.contains(&c)
            || c.is_control()
            || (self.whitespace && c.is_whitespace())
    }

    /// `value` with every character that is not allowed (and `%`) percent-encoded.
    fn escape(&self, placeholder: &str, value: &str, first: bool) -> String {
        let mut out = String::with_capacity(value.len());
        for (i, c) in value.char_indices() {
            let leading_dollar = first && i == 0 && c == '$' && self.no_leading_dollar;
            if c == '%' || leading_dollar || self.escapes(placeholder, c) {
                let mut bytes = [0; 4];
                for b in c.encode_utf8(&mut bytes).bytes() {
                    let _ = write!(out, "%{b:02X}");
                }
            } else {
                out.push(c);
            }
        }
        out
    }
}

/// A compiled template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(Box<str>),
    Placeholder(Box<str>),
}

impl Template {
    /// Parses a template; the error names the problem and its byte position.
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = text.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            match c {
                '{' if chars.peek().map(|(_, c)| *c) == Some('{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek().map(|(_, c)| *c) == Some('}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let rest = &text[i + 1..];
                    let Some(end) = rest.find('}') else {
                        return Err(format!(
                            "unclosed `{{` at position {i} (write `{{{{` for a literal brace)"
                        ));
                    };
                    let name = rest[..end].trim();
                    if name.is_empty() || name.contains('{') {
                        return Err(format!("empty or nested placeholder at position {i}"));
                    }
                    if !literal.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut literal).into()));
                    }
                    parts.push(Part::Placeholder(name.into()));
                    for _ in 0..rest[..=end].chars().count() {
                        chars.next();
                    }
                }
                '}' => {
                    return Err(format!(
                        "unmatched `}}` at position {i} (write `}}}}` for a literal brace)"
                    ))
                }
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal.into()));
        }
        Ok(Template { parts })
    }

    /// The placeholder names, in order.
    pub fn placeholders(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Placeholder(n) => Some(n.as_ref()),
            Part::Literal(_) => None,
        })
    }

    /// Whether the template is a plain string without placeholders.
    pub fn as_literal(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [] => Some(""),
            [Part::Literal(s)] => Some(s),
            _ => None,
        }
    }

    /// Renders the template. `lookup` answers each placeholder; `Err` names the first one
    /// that has no value.
    pub fn render<'v, F>(&self, mut lookup: F) -> Result<String, String>
    where
        F: FnMut(&str) -> Option<Cow<'v, str>>,
    {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Placeholder(name) => match lookup(name) {
                    Some(v) => out.push_str(&v),
                    None => return Err(name.to_string()),
                },
            }
        }
        Ok(out)
    }
}

impl Template {
    /// Renders a sink address: each value is checked (or escaped) by `rules`, so that no
    /// attribute value adds a level or a wildcard.
    pub fn render_address<'v, F>(
        &self,
        rules: &AddressRules,
        values: TemplateValues,
        mut lookup: F,
    ) -> Result<String, RenderError>
    where
        F: FnMut(&str) -> Option<Cow<'v, str>>,
    {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Placeholder(name) => {
                    let Some(v) = lookup(name) else {
                        return Err(RenderError::Missing(name.to_string()));
                    };
                    let first = out.is_empty();
                    match values {
                        TemplateValues::Escape => out.push_str(&rules.escape(name, &v, first)),
                        TemplateValues::Refuse => match rules.offending(name, &v, first) {
                            None => out.push_str(&v),
                            Some(character) => {
                                return Err(RenderError::Refused {
                                    placeholder: name.to_string(),
                                    character,
                                })
                            }
                        },
                    }
                }
            }
        }
        Ok(out)
    }
}

/// Looks up an event attribute for a sink template: `{type}`, `{source}`, `{subject}`, an
/// extension, … in its canonical string form; `{data.<path>}` for a member of JSON data.
pub fn event_attribute<'a>(event: &'a ferry_core::CloudEvent, name: &str) -> Option<Cow<'a, str>> {
    if name.starts_with("data.") {
        // `{data.<path>}`: a member of JSON data (parsed for this lookup only).
        return crate::router::data_text(event, &crate::router::DataCache::default(), name)
            .map(Cow::Owned);
    }
    match event.attribute(name)? {
        ferry_core::AttributeRef::Str(s) => Some(Cow::Borrowed(s)),
        other => Some(Cow::Owned(other.to_canonical_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(t: &str, pairs: &[(&str, &'static str)]) -> Result<String, String> {
        let t = Template::parse(t)?;
        t.render(|n| {
            pairs
                .iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| Cow::Borrowed(*v))
        })
    }

    #[test]
    fn table() {
        let vars = [("type", "com.example.a"), ("mqtt.topic.1", "sensor-17")];
        assert_eq!(render("{type}", &vars).unwrap(), "com.example.a");
        assert_eq!(
            render("events.{type}", &vars).unwrap(),
            "events.com.example.a"
        );
        assert_eq!(
            render("mqtt://devices/{mqtt.topic.1}", &vars).unwrap(),
            "mqtt://devices/sensor-17"
        );
        assert_eq!(render("plain", &vars).unwrap(), "plain");
        assert_eq!(
            render("{{literal}} {type}", &vars).unwrap(),
            "{literal} com.example.a"
        );
        assert_eq!(render("ünï {type}", &vars).unwrap(), "ünï com.example.a");
        assert_eq!(render("{missing}", &vars).unwrap_err(), "missing");
        for bad in ["{", "{}", "a}", "{a{b}"] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
    }

    /// S11: attribute values cannot add levels or wildcards to a topic, subject or key.
    #[test]
    fn s11_values_stay_inside_their_level() {
        use TemplateValues::{Escape, Refuse};
        /// Rules, template, placeholder, its value, mode: the address, or the refused character.
        type Case<'a> = (
            &'a AddressRules,
            &'a str,
            &'a str,
            &'a str,
            TemplateValues,
            Result<&'a str, char>,
        );
        let cases: &[Case<'_>] = &[
            (
                &MQTT_TOPIC,
                "t/{subject}/in",
                "subject",
                "b",
                Refuse,
                Ok("t/b/in"),
            ),
            (
                &MQTT_TOPIC,
                "t/{subject}/in",
                "subject",
                "b/x",
                Refuse,
                Err('/'),
            ),
            (
                &MQTT_TOPIC,
                "t/{subject}/in",
                "subject",
                "+",
                Refuse,
                Err('+'),
            ),
            (
                &MQTT_TOPIC,
                "t/{subject}/in",
                "subject",
                "a#",
                Refuse,
                Err('#'),
            ),
            (
                &MQTT_TOPIC,
                "t/{subject}/in",
                "subject",
                "a\0",
                Refuse,
                Err('\0'),
            ),
            (
                &MQTT_TOPIC,
                "t/{subject}/in",
                "subject",
                "a.b c",
                Refuse,
                Ok("t/a.b c/in"),
            ),
            (
                &MQTT_TOPIC,
                "{subject}/in",
                "subject",
                "$SYS",
                Refuse,
                Err('$'),
            ),
            (
                &MQTT_TOPIC,
                "t/{subject}",
                "subject",
                "$x",
                Refuse,
                Ok("t/$x"),
            ),
            (&MQTT_TOPIC, "t/{type}", "type", "a/b", Refuse, Err('/')),
            (
                &MQTT_TOPIC,
                "t/{subject}/in",
                "subject",
                "b/x%",
                Escape,
                Ok("t/b%2Fx%25/in"),
            ),
            (
                &MQTT_TOPIC,
                "{subject}",
                "subject",
                "$SYS/+",
                Escape,
                Ok("%24SYS%2F%2B"),
            ),
            (
                &NATS_SUBJECT,
                "e.{subject}.in",
                "subject",
                "b.x",
                Refuse,
                Err('.'),
            ),
            (
                &NATS_SUBJECT,
                "e.{subject}",
                "subject",
                ">",
                Refuse,
                Err('>'),
            ),
            (
                &NATS_SUBJECT,
                "e.{subject}",
                "subject",
                "*",
                Refuse,
                Err('*'),
            ),
            (
                &NATS_SUBJECT,
                "e.{subject}",
                "subject",
                "a b",
                Refuse,
                Err(' '),
            ),
            (
                &NATS_SUBJECT,
                "e.{subject}",
                "subject",
                "a\tb",
                Refuse,
                Err('\t'),
            ),
            (
                &NATS_SUBJECT,
                "e.{type}",
                "type",
                "com.example.a",
                Refuse,
                Ok("e.com.example.a"),
            ),
            (&NATS_SUBJECT, "e.{type}", "type", "com.*", Refuse, Err('*')),
            (
                &NATS_SUBJECT,
                "e.{type}",
                "type",
                "order created",
                Refuse,
                Err(' '),
            ),
            (
                &NATS_SUBJECT,
                "e.{subject}",
                "subject",
                "a.b c",
                Escape,
                Ok("e.a%2Eb%20c"),
            ),
            (
                &NATS_SUBJECT,
                "e.{subject}",
                "subject",
                "Zoë",
                Escape,
                Ok("e.Zoë"),
            ),
            (
                &AMQP_ROUTING_KEY,
                "{type}",
                "type",
                "com.example.a",
                Refuse,
                Ok("com.example.a"),
            ),
            (
                &AMQP_ROUTING_KEY,
                "t.{source}",
                "source",
                "a.b",
                Refuse,
                Err('.'),
            ),
            (
                &AMQP_ROUTING_KEY,
                "t.{source}",
                "source",
                "#",
                Refuse,
                Err('#'),
            ),
            (
                &AMQP_ROUTING_KEY,
                "t.{source}",
                "source",
                "a b",
                Refuse,
                Ok("t.a b"),
            ),
            (
                &AMQP_ROUTING_KEY,
                "t.{source}",
                "source",
                "a.*",
                Escape,
                Ok("t.a%2E%2A"),
            ),
        ];
        for (rules, template, name, value, mode, expected) in cases {
            let t = Template::parse(template).unwrap();
            let got = t.render_address(rules, *mode, |n| {
                (n == *name).then_some(Cow::Borrowed(*value))
            });
            let case = format!("{} {template:?} {name}={value:?} {mode:?}", rules.what);
            match (expected, got) {
                (Ok(e), Ok(g)) => assert_eq!(&g, e, "{case}"),
                (Err(c), Err(RenderError::Refused { character, .. })) => {
                    assert_eq!(character, *c, "{case}")
                }
                (e, g) => panic!("{case}: expected {e:?}, got {g:?}"),
            }
        }
        let t = Template::parse("e.{subject}").unwrap();
        let refused = t
            .render_address(&NATS_SUBJECT, Refuse, |_| Some(Cow::Borrowed("a.b")))
            .unwrap_err();
        assert!(refused.to_string().contains("`subject`"), "{refused}");
        assert_eq!(
            t.render_address(&NATS_SUBJECT, Refuse, |_| None),
            Err(RenderError::Missing("subject".into()))
        );
    }

    #[test]
    fn sink_templates_read_json_data_paths() {
        let mut e = ferry_core::CloudEvent::new("1", "/s", "t").unwrap();
        e.set_data(
            Some("application/json".into()),
            Some(ferry_core::Data::json(r#"{"region": "eu", "lines": [{"qty": 2}]}"#).unwrap()),
        )
        .unwrap();
        let t = Template::parse("orders.{data.region}.{data.lines[0].qty}").unwrap();
        assert_eq!(t.render(|n| event_attribute(&e, n)).unwrap(), "orders.eu.2");
        assert!(Template::parse("{data.missing}")
            .unwrap()
            .render(|n| event_attribute(&e, n))
            .is_err());
    }
}
