//! String templates with `{name}` placeholders, compiled once at config load.
//!
//! Used for sink addresses (`routing_key = "events.{type}"`, `topic = "ferry/{source}"`) and for
//! normalizing messages that are not CloudEvents (`subject = "{mqtt.topic.1}"`). `{{` and `}}`
//! write literal braces. What a placeholder means is up to the caller's lookup function.

use std::borrow::Cow;

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

/// Looks up an event attribute for a sink template: `{type}`, `{source}`, `{subject}`, an
/// extension, … in its canonical string form.
pub fn event_attribute<'a>(event: &'a ferry_core::CloudEvent, name: &str) -> Option<Cow<'a, str>> {
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
}
