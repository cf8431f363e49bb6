//! Secrets from the configuration: kept out of logs and read from files on demand.

use std::fmt;
use std::io;
use std::path::Path;

/// A secret value from the configuration (an HMAC key, a shared JWT secret).
///
/// `Debug` and `Display` print `[redacted]`, so a secret never reaches a log through a config
/// struct. The value is either the secret itself (already `${ENV}`-interpolated by the config
/// loader) or `file:<path>`, naming a file that holds it; the file is read by [`Secret::resolve`]
/// when the component is built, so a rotated file takes effect on the next reload.
///
/// Two `file:` secrets are equal only when the files' contents are too, so a reload sees a
/// rotated secret file as a change.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    value: String,
    file: Option<crate::file_ref::FileRef>,
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
        String::deserialize(d).map(Secret::new)
    }
}

/// The prefix that makes a secret a reference to a file.
const FILE_PREFIX: &str = "file:";

impl Secret {
    /// Wraps a value exactly as it would appear in the configuration.
    pub fn new(value: impl Into<String>) -> Self {
        let value = value.into();
        let file = (value.strip_prefix(FILE_PREFIX))
            .filter(|p| !p.is_empty())
            .map(crate::file_ref::FileRef::new);
        Self { value, file }
    }

    /// The configured value, which may still be a `file:` reference.
    pub fn expose(&self) -> &str {
        &self.value
    }

    /// Whether the configured value is empty. Empty secrets are ignored, so that an unset
    /// `${ENV}` variable in a list of rotating secrets does not become a valid key.
    pub fn is_empty(&self) -> bool {
        self.value.is_empty()
    }

    /// The secret itself: the configured value, or for `file:<path>` the file's content
    /// without one trailing newline (`\n` or `\r\n`). A relative path is taken from `base_dir`,
    /// the directory of the configuration file.
    pub fn resolve(&self, base_dir: &Path) -> Result<String, io::Error> {
        let Some(path) = self.value.strip_prefix(FILE_PREFIX) else {
            return Ok(self.value.clone());
        };
        if path.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "`file:` names no file",
            ));
        }
        let mut value = std::fs::read_to_string(base_dir.join(path))?;
        if value.ends_with('\n') {
            value.pop();
            if value.ends_with('\r') {
                value.pop();
            }
        }
        Ok(value)
    }

    /// Where the secret is read from, for error messages: the file path of a `file:` secret,
    /// otherwise `None` (an inline value is never shown).
    pub fn file(&self) -> Option<&str> {
        self.value.strip_prefix(FILE_PREFIX)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_redact_the_value() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret:?}"), "[redacted]");
        assert_eq!(format!("{secret}"), "[redacted]");
        #[derive(Debug)]
        #[allow(dead_code)]
        struct Holder {
            secret: Secret,
        }
        let holder = format!("{:?}", Holder { secret });
        assert!(!holder.contains("hunter2"), "{holder}");
    }

    #[test]
    fn deserializes_from_a_string() {
        let secret: Secret = serde_json::from_str("\"abc\"").expect("a string");
        assert_eq!(secret.expose(), "abc");
        assert!(!secret.is_empty());
        let empty: Secret = serde_json::from_str("\"\"").expect("a string");
        assert!(empty.is_empty());
        assert!(serde_json::from_str::<Secret>("3").is_err());
    }

    #[test]
    fn resolve_reads_files_and_trims_one_newline() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cases: &[(&str, &str)] = &[
            ("plain", "plain"),
            ("two\n\n", "two\n"),
            ("windows\r\n", "windows"),
            ("none", "none"),
            ("", ""),
        ];
        for (i, (content, expected)) in cases.iter().enumerate() {
            let name = format!("secret-{i}");
            std::fs::write(dir.path().join(&name), content).expect("write");
            let secret = Secret::new(format!("file:{name}"));
            assert_eq!(secret.file(), Some(name.as_str()));
            assert_eq!(secret.resolve(dir.path()).expect("readable"), *expected);
        }
        let inline = Secret::new("inline-value");
        assert_eq!(inline.resolve(dir.path()).expect("inline"), "inline-value");
        assert_eq!(inline.file(), None);
        assert!(Secret::new("file:missing").resolve(dir.path()).is_err());
        assert!(Secret::new("file:").resolve(dir.path()).is_err());
    }
}
