//! Config errors: always with the file, and with line, column and key where known.

use std::fmt;
use std::path::{Path, PathBuf};

/// A config that cannot be used. Displays as `file:line:column: key: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// Dotted key path, e.g. `sources.webhooks.listen`.
    pub key: Option<String>,
    pub message: String,
}

impl ConfigError {
    pub fn file(file: &Path, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_owned(),
            line: None,
            column: None,
            key: None,
            message: message.into(),
        }
    }

    pub(crate) fn at(
        file: &Path,
        text: &str,
        offset: usize,
        key: Option<String>,
        message: impl Into<String>,
    ) -> Self {
        ConfigError::from_parts(file, text, Some(offset), key, message.into())
    }

    pub(crate) fn from_parts(
        file: &Path,
        text: &str,
        offset: Option<usize>,
        key: Option<String>,
        message: String,
    ) -> Self {
        let (line, column) = match offset {
            Some(o) => {
                let before = &text[..o.min(text.len())];
                let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
                let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                (Some(line), Some(column))
            }
            None => (None, None),
        };
        ConfigError {
            file: file.to_owned(),
            line,
            column,
            key: key.filter(|k| !k.is_empty()),
            message,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        if let Some(key) = &self.key {
            write!(f, ": key `{key}`")?;
        }
        write!(f, ": {}", self.message.trim_end())
    }
}
