//! NATS (core and JetStream) source and sink configuration (via async-nats).

use crate::key_error::KeyError;
use std::sync::Arc;

use serde::Deserialize;

use super::{defaults, ContentMode, Unrouted};
use crate::normalize::NormalizeConfig;
use crate::template::Template;
use crate::tls::{ClientTlsConfig, ClientTlsError};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSourceConfig {
    /// `nats://host:port` (several servers: comma-separated).
    pub url: String,
    /// Subject filter (`*` and `>` wildcards). With `jetstream`, the consumer's filter subject.
    pub subject: String,
    /// Core NATS queue group: instances in one group share the messages.
    #[serde(default)]
    pub queue_group: Option<String>,
    /// Core NATS: requests are answered only on reply subjects starting with this.
    #[serde(default = "defaults_nats::reply_prefix")]
    pub reply_prefix: String,
    /// Consume from a durable JetStream pull consumer instead of a core subscription.
    #[serde(default)]
    pub jetstream: Option<NatsConsumerConfig>,
    /// Core NATS only: most messages being delivered at once (JetStream uses
    /// `jetstream.max_ack_pending`).
    #[serde(default = "defaults_nats::source_in_flight")]
    pub in_flight: usize,
    #[serde(default)]
    pub normalize: Option<NormalizeConfig>,
    #[serde(default)]
    pub unrouted: Unrouted,
    #[serde(default = "defaults::enqueue_timeout_ms")]
    pub enqueue_timeout_ms: u64,
    /// TLS to the server: custom CA, client certificate (also `tls://` URLs).
    #[serde(default)]
    pub tls: Option<ClientTlsConfig>,
}

/// A durable JetStream pull consumer, created (or updated) on connect.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConsumerConfig {
    /// The stream to consume; it must exist (a sink's `stream` or an operator creates it).
    pub stream: String,
    /// Durable consumer name: instances with the same name share the messages.
    pub durable: String,
    /// Most delivered but unacknowledged messages: the in-flight window.
    #[serde(default = "defaults_nats::max_ack_pending")]
    pub max_ack_pending: i64,
    /// Redelivery after this long without an ack (a gateway that died mid-delivery).
    #[serde(default = "defaults_nats::ack_wait_secs")]
    pub ack_wait_secs: u64,
    /// How long the server waits before redelivering a message whose delivery failed.
    #[serde(default = "defaults_nats::nak_delay_ms")]
    pub nak_delay_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSinkConfig {
    /// Retries of failed deliveries (docs/delivery.md).
    #[serde(default)]
    pub retry: Option<crate::delivery::RetryConfig>,
    /// A sink that receives the events this sink could not deliver.
    #[serde(default)]
    pub dead_letter: Option<String>,
    /// A durable on-disk log in front of the sink (docs/delivery.md).
    #[serde(default)]
    pub spool: Option<crate::spool::SpoolConfig>,
    /// Marks the sink down after consecutive failures (docs/delivery.md).
    #[serde(default)]
    pub circuit_breaker: crate::delivery::BreakerConfig,
    pub url: String,
    /// Subject template over event attributes, e.g. `"events.{type}"`.
    pub subject: String,
    /// What happens to an attribute value that would add a level or a wildcard to the
    /// address: `"refuse"` (the event fails permanently) or `"escape"` (percent-encoded).
    #[serde(default)]
    pub template_values: crate::template::TemplateValues,
    /// Publish to JetStream and wait for its acknowledgement.
    #[serde(default)]
    pub jetstream: bool,
    #[serde(default)]
    pub mode: ContentMode,
    #[serde(default = "defaults::queue")]
    pub queue: usize,
    /// Most publishes awaiting confirmation at once.
    #[serde(default = "defaults::in_flight")]
    pub in_flight: usize,
    /// How long a publish waits for its confirmation (flush or PubAck).
    #[serde(default = "defaults_nats::publish_timeout_ms")]
    pub timeout_ms: u64,
    /// A stream to create on connect if it does not exist (needs `jetstream = true`).
    #[serde(default)]
    pub stream: Option<NatsStreamConfig>,
    /// TLS to the server: custom CA, client certificate (also `tls://` URLs).
    #[serde(default)]
    pub tls: Option<ClientTlsConfig>,
    /// Signs each event (docs/security.md).
    #[serde(default)]
    pub sign: Option<crate::security::signing::SignConfig>,
}

/// A JetStream stream declaration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsStreamConfig {
    pub name: String,
    /// Subjects the stream captures (wildcards allowed).
    pub subjects: Vec<String>,
    /// The window in which a repeated `Nats-Msg-Id` is dropped as a duplicate.
    #[serde(default = "defaults_nats::duplicate_window_secs")]
    pub duplicate_window_secs: u64,
}

mod defaults_nats {
    pub(super) fn reply_prefix() -> String {
        "_INBOX.".into()
    }
    pub(super) fn source_in_flight() -> usize {
        256
    }
    pub(super) fn max_ack_pending() -> i64 {
        256
    }
    pub(super) fn ack_wait_secs() -> u64 {
        30
    }
    pub(super) fn nak_delay_ms() -> u64 {
        1_000
    }
    pub(super) fn publish_timeout_ms() -> u64 {
        5_000
    }
    pub(super) fn duplicate_window_secs() -> u64 {
        120
    }
}

fn key(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|p| (*p).to_owned()).collect()
}

/// Every comma-separated server address parses.
fn check_url(url: &str) -> Result<(), KeyError> {
    for server in url.split(',') {
        server
            .trim()
            .parse::<async_nats::ServerAddr>()
            .map_err(|e| {
                KeyError::new(key(&["url"]), format!("invalid NATS server address: {e}"))
            })?;
    }
    Ok(())
}

/// Connect options with the TLS configuration of `tls`: the server must then speak TLS
/// (`tls://` URLs require it too). Reads the TLS files.
pub fn connect_options(
    tls: Option<&ClientTlsConfig>,
) -> Result<async_nats::ConnectOptions, ClientTlsError> {
    let options = async_nats::ConnectOptions::new();
    Ok(match tls {
        None => options,
        Some(tls) => {
            let config = tls.client_config(&[])?;
            options
                .require_tls(true)
                .tls_client_config(Arc::unwrap_or_clone(config))
        }
    })
}

/// A subject (filter when `wildcards`): non-empty `.`-separated tokens, no whitespace.
fn check_subject(subject: &str, wildcards: bool) -> Result<(), String> {
    if subject.is_empty() {
        return Err("must not be empty".into());
    }
    if subject.chars().any(char::is_whitespace) {
        return Err("must not contain whitespace".into());
    }
    let tokens: Vec<&str> = subject.split('.').collect();
    for (i, token) in tokens.iter().enumerate() {
        if token.is_empty() {
            return Err("has an empty token (`..`, or a leading or trailing `.`)".into());
        }
        let wildcard = *token == "*" || *token == ">";
        if wildcard && !wildcards {
            return Err("wildcards are not allowed here".into());
        }
        if *token == ">" && i + 1 != tokens.len() {
            return Err("`>` must be the last token".into());
        }
    }
    Ok(())
}

fn check_name(name: &str, what: &[&str]) -> Result<(), KeyError> {
    if name.is_empty() || name.contains(|c: char| c.is_whitespace() || ".*>".contains(c)) {
        return Err(KeyError::new(
            key(what),
            "must be non-empty without whitespace, `.`, `*` or `>`",
        ));
    }
    Ok(())
}

impl NatsSourceConfig {
    pub fn check(&self) -> Result<(), KeyError> {
        check_url(&self.url)?;
        if let Some(tls) = &self.tls {
            tls.client_config(&[]).map_err(ClientTlsError::into_check)?;
        }
        check_subject(&self.subject, true).map_err(|m| KeyError::new(key(&["subject"]), m))?;
        if let Some(group) = &self.queue_group {
            if group.is_empty() || group.chars().any(char::is_whitespace) {
                return Err(KeyError::new(
                    key(&["queue_group"]),
                    "must be non-empty without whitespace",
                ));
            }
        }
        if self.in_flight == 0 {
            return Err(KeyError::new(key(&["in_flight"]), "must be at least 1"));
        }
        if let Some(js) = &self.jetstream {
            if self.queue_group.is_some() {
                return Err(KeyError::new(
                    key(&["queue_group"]),
                    "a JetStream consumer is shared through its durable name, not a queue group",
                ));
            }
            check_name(&js.stream, &["jetstream", "stream"])?;
            check_name(&js.durable, &["jetstream", "durable"])?;
            if js.max_ack_pending < 1 {
                return Err(KeyError::new(
                    key(&["jetstream", "max_ack_pending"]),
                    "must be at least 1",
                ));
            }
            if js.ack_wait_secs == 0 {
                return Err(KeyError::new(
                    key(&["jetstream", "ack_wait_secs"]),
                    "must be at least 1",
                ));
            }
        }
        Ok(())
    }
}

impl NatsSinkConfig {
    pub fn check(&self) -> Result<(), KeyError> {
        check_url(&self.url)?;
        if let Some(tls) = &self.tls {
            tls.client_config(&[]).map_err(ClientTlsError::into_check)?;
        }
        if let Some(sign) = &self.sign {
            sign.check_event_signing().map_err(|e| e.under(&["sign"]))?;
        }
        let template =
            Template::parse(&self.subject).map_err(|m| KeyError::new(key(&["subject"]), m))?;
        if let Some(literal) = template.as_literal() {
            check_subject(literal, false).map_err(|m| KeyError::new(key(&["subject"]), m))?;
        } else if self.subject.chars().any(char::is_whitespace) {
            return Err(KeyError::new(
                key(&["subject"]),
                "must not contain whitespace",
            ));
        }
        if self.in_flight == 0 {
            return Err(KeyError::new(key(&["in_flight"]), "must be at least 1"));
        }
        if self.timeout_ms == 0 {
            return Err(KeyError::new(key(&["timeout_ms"]), "must be at least 1"));
        }
        if let Some(stream) = &self.stream {
            if !self.jetstream {
                return Err(KeyError::new(
                    key(&["stream"]),
                    "a stream declaration needs `jetstream = true`",
                ));
            }
            check_name(&stream.name, &["stream", "name"])?;
            if stream.subjects.is_empty() {
                return Err(KeyError::new(
                    key(&["stream", "subjects"]),
                    "list at least one subject",
                ));
            }
            for s in &stream.subjects {
                check_subject(s, true)
                    .map_err(|m| KeyError::new(key(&["stream", "subjects"]), m))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(text: &str) -> Result<(), KeyError> {
        toml::from_str::<NatsSourceConfig>(text).unwrap().check()
    }

    fn sink(text: &str) -> Result<(), KeyError> {
        toml::from_str::<NatsSinkConfig>(text).unwrap().check()
    }

    #[test]
    fn issue_examples_parse() {
        let s: NatsSourceConfig = toml::from_str(
            r#"url = "nats://127.0.0.1:4222"
subject = "events.>"
queue_group = "ferry""#,
        )
        .unwrap();
        assert_eq!(s.queue_group.as_deref(), Some("ferry"));
        assert!(s.check().is_ok());
        let k: NatsSinkConfig = toml::from_str(
            r#"url = "nats://127.0.0.1:4222"
subject = "events.{type}"
jetstream = true"#,
        )
        .unwrap();
        assert!(k.jetstream && k.in_flight == 64 && k.check().is_ok());
    }

    #[test]
    fn checks_name_the_key() {
        let base = "url = \"nats://127.0.0.1:4222\"\n";
        let cases: Vec<(Result<(), KeyError>, &[&str])> = vec![
            (source(&format!("{base}subject = \"a..b\"")), &["subject"]),
            (source(&format!("{base}subject = \"a.>.b\"")), &["subject"]),
            (
                source("url = \"nats://[bad\"\nsubject = \"a\""),
                &["url"],
            ),
            (
                source(&format!(
                    "{base}subject = \"a\"\njetstream = {{ stream = \"S\", durable = \"d.x\" }}"
                )),
                &["jetstream", "durable"],
            ),
            (
                source(&format!(
                    "{base}subject = \"a\"\nqueue_group = \"q\"\njetstream = {{ stream = \"S\", durable = \"d\" }}"
                )),
                &["queue_group"],
            ),
            (sink(&format!("{base}subject = \"a.*\"")), &["subject"]),
            (sink(&format!("{base}subject = \"a.{{type\"")), &["subject"]),
            (
                sink(&format!(
                    "{base}subject = \"a\"\nstream = {{ name = \"S\", subjects = [\"a\"] }}"
                )),
                &["stream"],
            ),
            (
                sink(&format!(
                    "{base}subject = \"a\"\njetstream = true\nstream = {{ name = \"S\", subjects = [] }}"
                )),
                &["stream", "subjects"],
            ),
        ];
        for (got, want) in cases {
            let crate::config::KeyError { key, message } = got.unwrap_err();
            assert_eq!(
                key,
                want.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                "{message}"
            );
        }
        assert!(source(&format!(
            "{base}subject = \"events.*.x\"\njetstream = {{ stream = \"S\", durable = \"d\", max_ack_pending = 8, ack_wait_secs = 5 }}"
        ))
        .is_ok());
    }
}
