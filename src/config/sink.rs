//! `[sinks.<name>]`: the sink kinds, and the file, stdout and HTTP sinks' tables.

use serde::Deserialize;

use super::*;

/// A sink: where events go out.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SinkConfig {
    File(FileSinkConfig),
    Stdout(StdoutSinkConfig),
    Http(HttpSinkConfig),
    Amqp(AmqpSinkConfig),
    Mqtt(MqttSinkConfig),
    Nats(NatsSinkConfig),
    Websocket(WebSocketSinkConfig),
    #[serde(rename = "mqtt-server")]
    MqttServer(MqttServerSinkConfig),
}

impl SinkConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            SinkConfig::File(_) => "file",
            SinkConfig::Stdout(_) => "stdout",
            SinkConfig::Http(_) => "http",
            SinkConfig::Amqp(_) => "amqp",
            SinkConfig::Mqtt(_) => "mqtt",
            SinkConfig::Nats(_) => "nats",
            SinkConfig::Websocket(_) => "websocket",
            SinkConfig::MqttServer(_) => "mqtt-server",
        }
    }

    /// The sink's retry policy.
    pub fn retry(&self) -> Option<&crate::delivery::RetryConfig> {
        match self {
            SinkConfig::File(c) => c.retry.as_ref(),
            SinkConfig::Stdout(c) => c.retry.as_ref(),
            SinkConfig::Http(c) => c.retry.as_ref(),
            SinkConfig::Amqp(c) => c.retry.as_ref(),
            SinkConfig::Mqtt(c) => c.retry.as_ref(),
            SinkConfig::Nats(c) => c.retry.as_ref(),
            SinkConfig::Websocket(c) => c.retry.as_ref(),
            SinkConfig::MqttServer(c) => c.retry.as_ref(),
        }
    }

    /// The sink's dead-letter sink.
    pub fn dead_letter(&self) -> Option<&str> {
        match self {
            SinkConfig::File(c) => c.dead_letter.as_deref(),
            SinkConfig::Stdout(c) => c.dead_letter.as_deref(),
            SinkConfig::Http(c) => c.dead_letter.as_deref(),
            SinkConfig::Amqp(c) => c.dead_letter.as_deref(),
            SinkConfig::Mqtt(c) => c.dead_letter.as_deref(),
            SinkConfig::Nats(c) => c.dead_letter.as_deref(),
            SinkConfig::Websocket(c) => c.dead_letter.as_deref(),
            SinkConfig::MqttServer(c) => c.dead_letter.as_deref(),
        }
    }

    /// The sink's durable spool.
    pub fn spool(&self) -> Option<&crate::spool::SpoolConfig> {
        match self {
            SinkConfig::File(c) => c.spool.as_ref(),
            SinkConfig::Stdout(c) => c.spool.as_ref(),
            SinkConfig::Http(c) => c.spool.as_ref(),
            SinkConfig::Amqp(c) => c.spool.as_ref(),
            SinkConfig::Mqtt(c) => c.spool.as_ref(),
            SinkConfig::Nats(c) => c.spool.as_ref(),
            SinkConfig::Websocket(c) => c.spool.as_ref(),
            SinkConfig::MqttServer(c) => c.spool.as_ref(),
        }
    }

    /// The sink's circuit breaker.
    pub fn circuit_breaker(&self) -> &crate::delivery::BreakerConfig {
        match self {
            SinkConfig::File(c) => &c.circuit_breaker,
            SinkConfig::Stdout(c) => &c.circuit_breaker,
            SinkConfig::Http(c) => &c.circuit_breaker,
            SinkConfig::Amqp(c) => &c.circuit_breaker,
            SinkConfig::Mqtt(c) => &c.circuit_breaker,
            SinkConfig::Nats(c) => &c.circuit_breaker,
            SinkConfig::Websocket(c) => &c.circuit_breaker,
            SinkConfig::MqttServer(c) => &c.circuit_breaker,
        }
    }

    /// Capacity of the sink's queue.
    pub fn queue(&self) -> usize {
        match self {
            SinkConfig::File(c) => c.queue,
            SinkConfig::Stdout(c) => c.queue,
            SinkConfig::Http(c) => c.queue,
            SinkConfig::Amqp(c) => c.queue,
            SinkConfig::Mqtt(c) => c.queue,
            SinkConfig::Nats(c) => c.queue,
            SinkConfig::Websocket(c) => c.queue,
            SinkConfig::MqttServer(c) => c.queue,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
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
    /// JSON-lines file, appended to; relative paths resolve against the working directory.
    pub path: PathBuf,
    /// `fdatasync` each written batch before confirming it (default: confirm after the write
    /// reached the operating system).
    #[serde(default)]
    pub fsync: bool,
    #[serde(default = "defaults::queue")]
    pub queue: usize,
    /// Most events written (and confirmed) in one batch.
    #[serde(default = "defaults::file_in_flight")]
    pub in_flight: usize,
    /// How long one batch's write (and sync) may take before it fails, retryable.
    #[serde(default = "defaults::timeout_ms")]
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdoutSinkConfig {
    /// Most events written (and confirmed) in one batch.
    #[serde(default = "defaults::file_in_flight")]
    pub in_flight: usize,
    /// How long one batch's write may take before it fails, retryable.
    #[serde(default = "defaults::timeout_ms")]
    pub timeout_ms: u64,
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
    #[serde(default = "defaults::queue")]
    pub queue: usize,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSinkConfig {
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
    #[serde(default)]
    pub mode: ContentMode,
    /// Per-request timeout.
    #[serde(default = "defaults::timeout_ms")]
    pub timeout_ms: u64,
    /// Most requests in flight at once.
    #[serde(default = "defaults::in_flight")]
    pub in_flight: usize,
    #[serde(default = "defaults::queue")]
    pub queue: usize,
    /// Extra headers sent with every request.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// TLS to the endpoint (`https://` URLs): custom CA, client certificate (mTLS).
    #[serde(default)]
    pub tls: Option<crate::tls::ClientTlsConfig>,
    /// `Authorization: Bearer <token>` on every request; `${ENV}` or `file:<path>`.
    #[serde(default)]
    pub bearer_token: Option<crate::security::secret::Secret>,
    /// Signs each request (`standard-webhooks`) or event (`hmac-sha256`).
    #[serde(default)]
    pub sign: Option<crate::security::signing::SignConfig>,
    /// Performs the CloudEvents Web Hook validation handshake before the first delivery.
    #[serde(default)]
    pub webhook_handshake: bool,
    /// `WebHook-Request-Origin`: the DNS name of this sender, for the handshake and every
    /// delivery.
    #[serde(default)]
    pub origin: Option<String>,
    /// Sends `bearer_token` and `sign` secrets over a plain `http://` URL to another host
    /// (refused by default: they would travel in clear).
    #[serde(default)]
    pub allow_insecure: bool,
}

impl SinkConfig {
    /// The sink's own rules: its delivery policy and its kind's settings; keys below the sink.
    pub(super) fn check(&self) -> Result<(), KeyError> {
        if let Some(r) = self.retry() {
            if r.max_attempts == 0
                || r.initial_backoff_ms == 0
                || r.max_backoff_ms < r.initial_backoff_ms
            {
                return Err(KeyError::at(
                    "retry",
                    "max_attempts and initial_backoff_ms must be > 0, max_backoff_ms >= initial_backoff_ms",
                ));
            }
        }
        positive("queue", self.queue() as u64)?;
        if let Some(spool) = self.spool() {
            spool.check().map_err(|e| e.under(&["spool"]))?;
        }
        (self.circuit_breaker().check()).map_err(|e| e.under(&["circuit_breaker"]))?;
        match self {
            SinkConfig::File(FileSinkConfig {
                in_flight,
                timeout_ms,
                ..
            })
            | SinkConfig::Stdout(StdoutSinkConfig {
                in_flight,
                timeout_ms,
                ..
            }) => {
                if *in_flight == 0 || *timeout_ms == 0 {
                    return Err(KeyError::at(
                        "in_flight",
                        "in_flight and timeout_ms must be greater than 0",
                    ));
                }
                Ok(())
            }
            SinkConfig::Http(c) => c.check_sink(),
            SinkConfig::Amqp(c) => c.check(),
            SinkConfig::Mqtt(c) => c.check(),
            SinkConfig::Nats(c) => c.check(),
            SinkConfig::Websocket(c) => c.check(),
            SinkConfig::MqttServer(c) => c.check(),
        }
    }
}

impl HttpSinkConfig {
    fn check_sink(&self) -> Result<(), KeyError> {
        let url = reqwest::Url::parse(&self.url)
            .map_err(|e| KeyError::at("url", format!("invalid URL: {e}")))?;
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(KeyError::at("url", "URL scheme must be http or https"));
        }
        if self.in_flight == 0 {
            return Err(KeyError::at(
                "in_flight",
                "in_flight must be greater than 0",
            ));
        }
        for header in self.headers.keys() {
            if ::http::HeaderName::from_bytes(header.as_bytes()).is_err() {
                return Err(KeyError::new(
                    vec!["headers".into(), header.clone()],
                    "not a valid header name",
                ));
            }
        }
        self.check_outbound(&url)
    }
}

impl WebSocketSinkConfig {
    fn check(&self) -> Result<(), KeyError> {
        check_path(&self.path)?;
        if self.max_connections == 0 || self.ping_interval_ms == 0 {
            return Err(KeyError::at(
                "max_connections",
                "max_connections and ping_interval_ms must be greater than 0",
            ));
        }
        if let Some(auth) = &self.auth {
            if auth.hmac.is_some() {
                return Err(KeyError::new(
                    vec!["auth".into(), "hmac".into()],
                    "a subscriber's upgrade request has no body to sign: use jwt or mtls",
                ));
            }
        }
        super::source::check_listener(self.tls.as_ref(), self.auth.as_ref())
    }
}
