//! A config value that cannot be used, named by the path of its key. Components check their
//! own settings and name keys below themselves; whoever holds the component puts its own
//! path in front (`KeyError::under`), and the config loader turns the full path into a file,
//! line and column.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError {
    /// The key path, outermost first: `["sinks", "audit", "tls", "ca"]`.
    pub key: Vec<String>,
    pub message: String,
}

impl KeyError {
    pub fn new(key: Vec<String>, message: impl Into<String>) -> KeyError {
        KeyError {
            key,
            message: message.into(),
        }
    }

    /// An error about one key of the component that checks it.
    pub fn at(key: &str, message: impl Into<String>) -> KeyError {
        KeyError::new(vec![key.to_owned()], message)
    }

    /// The same error as seen from `prefix`: `under(&["sinks", name])`.
    #[must_use]
    pub fn under(mut self, prefix: &[&str]) -> KeyError {
        self.key
            .splice(0..0, prefix.iter().map(|k| (*k).to_owned()));
        self
    }

    /// The key path, dotted: `sinks.audit.tls.ca`.
    pub fn dotted(&self) -> String {
        self.key.join(".")
    }
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.dotted(), self.message)
    }
}

impl std::error::Error for KeyError {}
