//! Errors for invalid events and malformed encodings.

use std::fmt;

/// What is wrong with an attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventErrorKind {
    /// A required attribute is absent.
    Missing,
    /// An attribute is present but empty where the spec forbids it.
    Empty,
    /// A value that does not fit the attribute's type or syntax.
    Invalid,
    /// An attribute name outside `[a-z0-9]`, or reserved.
    InvalidName,
    /// The same attribute given twice.
    Duplicate,
    /// A valid value Ferry does not support (for example another `specversion`).
    Unsupported,
    /// The message is not well-formed in its format (JSON syntax, Base64, ...).
    Malformed,
}

/// An event failed validation or decoding. Names the attribute so the sender can fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct EventError {
    /// The offending attribute (or member) name, if the problem concerns one.
    pub attribute: Option<String>,
    pub kind: EventErrorKind,
    pub message: String,
}

impl EventError {
    pub fn new(attribute: &str, kind: EventErrorKind, message: impl Into<String>) -> Self {
        EventError {
            attribute: Some(attribute.to_owned()),
            kind,
            message: message.into(),
        }
    }

    /// An error about the message as a whole.
    pub fn malformed(message: impl Into<String>) -> Self {
        EventError {
            attribute: None,
            kind: EventErrorKind::Malformed,
            message: message.into(),
        }
    }

    pub fn missing(attribute: &str) -> Self {
        EventError::new(
            attribute,
            EventErrorKind::Missing,
            "required attribute is missing",
        )
    }

    pub fn empty(attribute: &str) -> Self {
        EventError::new(attribute, EventErrorKind::Empty, "must not be empty")
    }
}

impl fmt::Display for EventError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.attribute {
            Some(name) => write!(f, "attribute `{name}`: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}
