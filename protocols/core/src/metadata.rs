//! Transport metadata: what the protocol said about a message besides the event itself.
//!
//! Routes address it by dotted names that cannot clash with CloudEvents attribute names
//! (which are `[a-z0-9]` only): `header.<lowercase-name>` for HTTP headers, AMQP headers,
//! MQTT 5 user properties and NATS headers; protocol names such as `mqtt.topic`,
//! `amqp.routing_key` or `nats.subject` for the rest.

/// Protocol metadata of one inbound message. Lookups allocate nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TransportMetadata {
    /// Header-like pairs, names lowercase, in arrival order.
    headers: Vec<(Box<str>, Box<str>)>,
    /// Protocol properties such as `mqtt.topic`.
    properties: Vec<(&'static str, Box<str>)>,
}

impl TransportMetadata {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a header; `name` is lowercased.
    pub fn push_header(&mut self, name: &str, value: &str) {
        self.headers
            .push((name.to_ascii_lowercase().into_boxed_str(), value.into()));
    }

    /// Adds a protocol property such as `mqtt.topic`.
    pub fn push_property(&mut self, name: &'static str, value: impl Into<Box<str>>) {
        self.properties.push((name, value.into()));
    }

    /// The first header of that (lowercase) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.as_ref() == name)
            .map(|(_, v)| v.as_ref())
    }

    pub fn headers(&self) -> impl Iterator<Item = (&str, &str)> {
        self.headers.iter().map(|(n, v)| (n.as_ref(), v.as_ref()))
    }

    pub fn property(&self, name: &str) -> Option<&str> {
        self.properties
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_ref())
    }

    /// Looks up a dotted metadata name: `header.<name>` or a protocol property.
    pub fn get(&self, name: &str) -> Option<&str> {
        match name.strip_prefix("header.") {
            Some(header) => self.header(header),
            None => self.property(name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups() {
        let mut m = TransportMetadata::new();
        m.push_header("X-Tenant", "acme");
        m.push_property("mqtt.topic", "devices/a/telemetry");
        assert_eq!(m.get("header.x-tenant"), Some("acme"));
        assert_eq!(m.get("header.x-other"), None);
        assert_eq!(m.get("mqtt.topic"), Some("devices/a/telemetry"));
        assert_eq!(m.get("x-tenant"), None);
    }
}
