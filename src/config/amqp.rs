//! AMQP 0-9-1 source and sink configuration (RabbitMQ, via lapin). Every key is documented in
//! docs/amqp.md.

use crate::key_error::KeyError;
use serde::Deserialize;

use super::{defaults, ContentMode, Unrouted};
use crate::normalize::NormalizeConfig;
use crate::tls::{ClientTlsConfig, ClientTlsError};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSourceConfig {
    /// `amqp://user:pass@host:port/vhost` (vhost `/` is `%2f`).
    pub url: String,
    /// The queue to consume.
    pub queue: String,
    /// Unacknowledged messages in flight (`basic.qos` prefetch count).
    #[serde(default = "defaults::prefetch")]
    pub prefetch: u16,
    /// Larger message bodies are rejected (nack without requeue: dead-lettered), counted as
    /// `too_large`.
    #[serde(default = "defaults::max_body_bytes")]
    pub max_message_bytes: usize,
    /// Builds events from messages that are not CloudEvents; without it they are rejected.
    #[serde(default)]
    pub normalize: Option<NormalizeConfig>,
    #[serde(default)]
    pub unrouted: Unrouted,
    #[serde(default = "defaults::enqueue_timeout_ms")]
    pub enqueue_timeout_ms: u64,
    /// What a failed delivery does to the message: requeue it, or dead-letter it.
    #[serde(default)]
    pub on_failure: OnFailure,
    /// How long a failed message is held before it is requeued, so a failing sink is not
    /// hammered by immediate redeliveries.
    #[serde(default = "requeue_delay_ms")]
    pub requeue_delay_ms: u64,
    /// The consumer tag; empty lets the broker choose one.
    #[serde(default)]
    pub consumer_tag: String,
    /// Declares the queue (and its bindings) on every connect.
    #[serde(default)]
    pub declare: Option<QueueDeclare>,
    /// TLS to the broker (needs an `amqps://` URL): custom CA, client certificate.
    #[serde(default)]
    pub tls: Option<ClientTlsConfig>,
}

/// What a delivery failure does to the inbound message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnFailure {
    /// `basic.nack` with `requeue = true`: the broker delivers it again.
    #[default]
    Requeue,
    /// `basic.nack` with `requeue = false`: the broker routes it to the queue's
    /// `x-dead-letter-exchange` (or drops it if the queue has none).
    DeadLetter,
}

/// The queue a source declares.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueDeclare {
    #[serde(default = "yes")]
    pub durable: bool,
    #[serde(default)]
    pub auto_delete: bool,
    /// `x-dead-letter-exchange`: where rejected and dead-lettered messages go.
    #[serde(default)]
    pub dead_letter_exchange: Option<String>,
    /// `x-dead-letter-routing-key`.
    #[serde(default)]
    pub dead_letter_routing_key: Option<String>,
    /// Bindings from existing exchanges to the queue.
    #[serde(default)]
    pub bindings: Vec<QueueBinding>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueBinding {
    pub exchange: String,
    #[serde(default)]
    pub routing_key: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSinkConfig {
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
    /// The exchange to publish to (`""` is the default exchange).
    pub exchange: String,
    /// Routing-key template over event attributes, e.g. `"{type}"` or `"events.{source}"`.
    #[serde(default = "defaults::routing_key")]
    pub routing_key: String,
    /// What happens to an attribute value that would add a level or a wildcard to the
    /// address: `"refuse"` (the event fails permanently) or `"escape"` (percent-encoded).
    #[serde(default)]
    pub template_values: crate::template::TemplateValues,
    #[serde(default)]
    pub mode: ContentMode,
    #[serde(default = "defaults::queue")]
    pub queue: usize,
    /// The prefix of attribute headers in binary mode.
    #[serde(default)]
    pub header_prefix: HeaderPrefix,
    /// `delivery_mode = 2`: the broker writes messages to disk on durable queues.
    #[serde(default = "yes")]
    pub persistent: bool,
    /// Publish with `mandatory`: a message no queue takes is returned and fails the delivery.
    #[serde(default = "yes")]
    pub mandatory: bool,
    /// Publishes awaiting their confirm at once.
    #[serde(default = "in_flight")]
    pub in_flight: usize,
    /// How long a publish waits for its confirm before it fails (retryable); `timeout_ms` is
    /// the same key under the name every sink kind shares.
    #[serde(default = "confirm_timeout_ms", alias = "timeout_ms")]
    pub confirm_timeout_ms: u64,
    /// Declares the exchange on every connect.
    #[serde(default)]
    pub declare: Option<ExchangeDeclare>,
    /// TLS to the broker (needs an `amqps://` URL): custom CA, client certificate.
    #[serde(default)]
    pub tls: Option<ClientTlsConfig>,
    /// Signs each event (docs/security.md).
    #[serde(default)]
    pub sign: Option<crate::security::signing::SignConfig>,
}

/// The header-name prefix a sink writes in binary mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum HeaderPrefix {
    /// The AMQP 1.0 binding's separator (JMS-selector safe).
    #[default]
    #[serde(rename = "cloudEvents_")]
    CloudEvents,
    /// The Knative RabbitMQ binding's prefix.
    #[serde(rename = "ce-")]
    Ce,
    /// The AMQP 1.0 binding's other separator (Go SDK, Java Proton module).
    #[serde(rename = "cloudEvents:")]
    CloudEventsColon,
}

/// The exchange a sink declares.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExchangeDeclare {
    /// `direct`, `fanout`, `topic` or `headers`.
    #[serde(default = "exchange_type")]
    pub exchange_type: String,
    #[serde(default = "yes")]
    pub durable: bool,
    #[serde(default)]
    pub auto_delete: bool,
}

fn yes() -> bool {
    true
}
fn in_flight() -> usize {
    64
}
fn confirm_timeout_ms() -> u64 {
    10_000
}
fn requeue_delay_ms() -> u64 {
    500
}
fn exchange_type() -> String {
    "topic".into()
}

fn key(k: &str) -> Vec<String> {
    k.split('.').map(str::to_owned).collect()
}

fn check_url(url: &str) -> Result<(), KeyError> {
    url.parse::<lapin::uri::AMQPUri>()
        .map(|_| ())
        .map_err(|e| KeyError::new(key("url"), format!("invalid AMQP URL: {e}")))
}

/// The TLS material for lapin that a URL and `tls` table ask for: `amqps://` URLs use TLS
/// (with the system's trust store unless `tls.ca` names a CA). Reads the files.
pub fn client_tls(
    url: &str,
    tls: Option<&ClientTlsConfig>,
) -> Result<lapin::tcp::OwnedTLSConfig, KeyError> {
    match (url.starts_with("amqps://"), tls) {
        (false, None) => Ok(lapin::tcp::OwnedTLSConfig::default()),
        (false, Some(_)) => Err(KeyError::new(key("tls"), "TLS needs an amqps:// URL")),
        (true, None) => Ok(lapin::tcp::OwnedTLSConfig::default()),
        (true, Some(tls)) => tls.amqp().map_err(ClientTlsError::into_check),
    }
}

impl OnFailure {
    /// Whether `basic.nack` asks the broker to requeue.
    pub fn requeue(self) -> bool {
        self == OnFailure::Requeue
    }
}

impl HeaderPrefix {
    /// The binding's prefix.
    pub fn binding(self) -> ferry_amqp::HeaderPrefix {
        match self {
            HeaderPrefix::CloudEvents => ferry_amqp::HeaderPrefix::CloudEvents,
            HeaderPrefix::Ce => ferry_amqp::HeaderPrefix::Ce,
            HeaderPrefix::CloudEventsColon => ferry_amqp::HeaderPrefix::CloudEventsColon,
        }
    }
}

impl ExchangeDeclare {
    pub fn kind(&self) -> lapin::ExchangeKind {
        match self.exchange_type.as_str() {
            "direct" => lapin::ExchangeKind::Direct,
            "fanout" => lapin::ExchangeKind::Fanout,
            "headers" => lapin::ExchangeKind::Headers,
            _ => lapin::ExchangeKind::Topic,
        }
    }
}

impl AmqpSourceConfig {
    /// Protocol-specific checks; the key is relative to the component.
    pub fn check(&self) -> Result<(), KeyError> {
        check_url(&self.url)?;
        if self.queue.is_empty() {
            return Err(KeyError::new(key("queue"), "queue must not be empty"));
        }
        if self.prefetch == 0 {
            return Err(KeyError::new(
                key("prefetch"),
                "prefetch must be greater than 0 (0 would mean unlimited)",
            ));
        }
        if self.max_message_bytes == 0 {
            return Err(KeyError::new(
                key("max_message_bytes"),
                "max_message_bytes must be greater than 0",
            ));
        }
        client_tls(&self.url, self.tls.as_ref())?;
        Ok(())
    }
}

impl AmqpSinkConfig {
    pub fn check(&self) -> Result<(), KeyError> {
        check_url(&self.url)?;
        client_tls(&self.url, self.tls.as_ref())?;
        if let Some(sign) = &self.sign {
            sign.check_event_signing().map_err(|e| e.under(&["sign"]))?;
        }
        crate::template::Template::parse(&self.routing_key)
            .map_err(|e| KeyError::new(key("routing_key"), e))?;
        if self.in_flight == 0 {
            return Err(KeyError::new(
                key("in_flight"),
                "in_flight must be greater than 0",
            ));
        }
        if let Some(d) = &self.declare {
            if !matches!(
                d.exchange_type.as_str(),
                "direct" | "fanout" | "topic" | "headers"
            ) {
                return Err(KeyError::new(
                    key("declare.exchange_type"),
                    format!(
                        "unknown exchange type {:?}: use direct, fanout, topic or headers",
                        d.exchange_type
                    ),
                ));
            }
            if self.exchange.is_empty() {
                return Err(KeyError::new(
                    key("declare"),
                    "the default exchange (\"\") cannot be declared",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_example_and_checks() {
        let text = r#"
url = "amqp://guest:guest@127.0.0.1:5672/%2f"
exchange = "orders"
routing_key = "{type}"
mode = "binary"
"#;
        let sink: AmqpSinkConfig = toml::from_str(text).unwrap();
        assert_eq!(sink.header_prefix, HeaderPrefix::CloudEvents);
        assert!(sink.persistent && sink.mandatory);
        assert_eq!(sink.check(), Ok(()));
        let ce: AmqpSinkConfig = toml::from_str(&format!(
            "{text}header_prefix = \"ce-\"\ndeclare = {{ exchange_type = \"fanout\" }}"
        ))
        .unwrap();
        assert_eq!(ce.header_prefix, HeaderPrefix::Ce);
        let colon: AmqpSinkConfig =
            toml::from_str(&format!("{text}header_prefix = \"cloudEvents:\"")).unwrap();
        assert_eq!(
            colon.header_prefix.binding().as_str(),
            "cloudEvents:",
            "the third prefix"
        );
        assert!(ce.declare.unwrap().durable);
        let bad: AmqpSinkConfig = toml::from_str(&text.replace("{type}", "{type")).unwrap();
        assert_eq!(bad.check().unwrap_err().key, vec!["routing_key"]);
        let bad: AmqpSinkConfig = toml::from_str(&text.replace("amqp://", "http://")).unwrap();
        assert_eq!(bad.check().unwrap_err().key, vec!["url"]);

        let source: AmqpSourceConfig = toml::from_str(
            r##"
url = "amqp://guest:guest@127.0.0.1:5672/%2f"
queue = "ferry.inbox"
prefetch = 64
on_failure = "dead-letter"
declare = { dead_letter_exchange = "dlx", bindings = [{ exchange = "orders", routing_key = "#" }] }
"##,
        )
        .unwrap();
        assert_eq!(source.on_failure, OnFailure::DeadLetter);
        assert_eq!(source.max_message_bytes, 1024 * 1024);
        assert_eq!(source.check(), Ok(()));
        let zero = AmqpSourceConfig {
            prefetch: 0,
            ..source
        };
        assert_eq!(zero.check().unwrap_err().key, vec!["prefetch"]);
        let zero = AmqpSourceConfig {
            prefetch: 1,
            max_message_bytes: 0,
            ..zero
        };
        assert_eq!(zero.check().unwrap_err().key, vec!["max_message_bytes"]);
    }
}
