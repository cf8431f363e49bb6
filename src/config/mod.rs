//! Configuration: the TOML file, its component structs, and loading with precise errors.
//!
//! Loading is: read the file → interpolate `${VAR}` / `${VAR:-default}` → parse TOML →
//! deserialize (unknown keys refused) → check references between components. Every error
//! names the file, the line and the key.

mod amqp;
mod error;
mod http;
mod interpolate;
mod locate;
mod mqtt;
mod nats;
mod redact;
mod websocket;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use crate::file_ref::FileRef;
pub use crate::pipeline::Unrouted;
pub use amqp::{client_tls as amqp_client_tls, AmqpSinkConfig, AmqpSourceConfig};
pub use error::ConfigError;
pub use http::WebhookConfig;
pub use mqtt::{
    client_tls as mqtt_client_tls, resolve_password as mqtt_password, MqttProtocol, MqttSinkConfig,
    MqttSourceConfig,
};
pub use nats::{connect_options as nats_connect_options, NatsSinkConfig, NatsSourceConfig};
pub use websocket::{SlowClient, WebSocketSinkConfig, WebSocketSourceConfig};

use crate::normalize::NormalizeConfig;
pub use crate::router::RouteConfig;

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The admin listener (`/healthz`, `/readyz`, `/metrics`).
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub sources: BTreeMap<String, SourceConfig>,
    #[serde(default)]
    pub sinks: BTreeMap<String, SinkConfig>,
    #[serde(default)]
    pub routes: BTreeMap<String, RouteConfig>,
    /// Authorisation rules for authenticated principals.
    #[serde(default)]
    pub policies: Vec<crate::security::policy::PolicyConfig>,
    /// How long shutdown waits for in-flight deliveries.
    #[serde(default = "defaults::shutdown_timeout_ms")]
    pub shutdown_timeout_ms: u64,
    /// Reloading on file changes.
    #[serde(default)]
    pub reload: ReloadConfig,
    /// Where the config came from (not a key of the file).
    #[serde(skip)]
    pub origin: Origin,
}

/// The file a config was loaded from, for the admin API.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Origin {
    pub path: std::path::PathBuf,
    /// HMAC-SHA256 of the text after interpolation and of the files it references, under a
    /// per-process random key ([`crate::keyed`]), hex: it tells two configs apart within this
    /// process and says nothing about their secrets.
    pub hash: String,
    /// The text as written (before interpolation, so `${SECRET}` stays a reference), with
    /// secret-looking values redacted.
    pub redacted: String,
    /// The files the config references (certificates, keys, JWKS, secret files) that existed
    /// when it was read: a file watch reloads when one of them changes.
    pub files: Vec<std::path::PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// Bearer token that every endpoint but `/healthz` and `/readyz` requires; `${ENV}` or
    /// `file:<path>`. Required when `listen` is not a loopback address.
    #[serde(default)]
    pub token: Option<crate::security::secret::Secret>,
}

impl AdminConfig {
    /// The token, if one is set (an empty value, such as an unset `${VAR:-}`, is none).
    pub fn token(&self) -> Option<&crate::security::secret::Secret> {
        self.token.as_ref().filter(|t| !t.is_empty())
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter directive such as `info` or `ferry=debug`; `RUST_LOG` wins.
    #[serde(default = "defaults::log_level")]
    pub level: String,
    #[serde(default)]
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: defaults::log_level(),
            format: LogFormat::Text,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// A source: where events come in.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SourceConfig {
    Http(HttpSourceConfig),
    Amqp(AmqpSourceConfig),
    Mqtt(MqttSourceConfig),
    Nats(NatsSourceConfig),
    Websocket(WebSocketSourceConfig),
}

impl SourceConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            SourceConfig::Http(_) => "http",
            SourceConfig::Amqp(_) => "amqp",
            SourceConfig::Mqtt(_) => "mqtt",
            SourceConfig::Nats(_) => "nats",
            SourceConfig::Websocket(_) => "websocket",
        }
    }

    /// The socket address this source listens on, if it listens.
    pub fn listen(&self) -> Option<SocketAddr> {
        match self {
            SourceConfig::Http(c) => Some(c.listen),
            SourceConfig::Websocket(c) => Some(c.listen),
            SourceConfig::Amqp(_) | SourceConfig::Mqtt(_) | SourceConfig::Nats(_) => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSourceConfig {
    pub listen: SocketAddr,
    /// The path events are POSTed to.
    #[serde(default = "defaults::path")]
    pub path: String,
    #[serde(default = "defaults::max_body_bytes")]
    pub max_body_bytes: usize,
    /// What to do with an event no route matches.
    #[serde(default)]
    pub unrouted: Unrouted,
    /// How long a request waits for its sinks to confirm before answering 504.
    #[serde(default = "defaults::ack_timeout_ms")]
    pub ack_timeout_ms: u64,
    /// How long a request waits for room in a full sink queue before answering 503.
    #[serde(default = "defaults::enqueue_timeout_ms")]
    pub enqueue_timeout_ms: u64,
    /// Most concurrent requests in progress; more wait for a slot (up to
    /// `enqueue_timeout_ms`, then 503).
    #[serde(default = "defaults::max_concurrent_requests")]
    pub max_concurrent_requests: usize,
    /// Most open connections; one more is closed at once.
    #[serde(default = "defaults::max_connections")]
    pub max_connections: usize,
    /// How long a request head may take, from the connection opening or its first byte.
    #[serde(default = "defaults::header_read_timeout_ms")]
    pub header_read_timeout_ms: u64,
    /// How long reading a request body may take before 408.
    #[serde(default = "defaults::body_read_timeout_ms")]
    pub body_read_timeout_ms: u64,
    /// How long a connection with no request in progress stays open without traffic.
    #[serde(default = "defaults::idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// TLS (and mTLS) for the listener.
    #[serde(default)]
    pub tls: Option<crate::tls::TlsConfig>,
    /// Authentication of senders.
    #[serde(default)]
    pub auth: Option<crate::security::source::AuthConfig>,
    /// Rate limit per principal, client IP or source.
    #[serde(default)]
    pub rate_limit: Option<crate::security::ratelimit::RateLimitConfig>,
    /// Refuse principals that no policy names.
    #[serde(default)]
    pub require_policy: bool,
    /// Builds events from requests that are not CloudEvents (third-party webhooks).
    #[serde(default)]
    pub normalize: Option<NormalizeConfig>,
    /// The answer to the CloudEvents Web Hook validation handshake (`OPTIONS`).
    #[serde(default)]
    pub webhook: WebhookConfig,
}

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

/// CloudEvents content mode of an outbound message (`"binary"` or `"structured"`).
pub type ContentMode = ferry_core::Mode;

pub(crate) mod defaults {
    pub(crate) fn watch() -> bool {
        true
    }
    pub(crate) fn debounce_ms() -> u64 {
        500
    }
    pub(crate) fn path() -> String {
        "/".into()
    }
    pub(crate) fn max_body_bytes() -> usize {
        1024 * 1024
    }
    pub(crate) fn ack_timeout_ms() -> u64 {
        30_000
    }
    pub(crate) fn enqueue_timeout_ms() -> u64 {
        250
    }
    pub(crate) fn max_concurrent_requests() -> usize {
        4096
    }
    pub(crate) fn queue() -> usize {
        1024
    }
    pub(crate) fn timeout_ms() -> u64 {
        10_000
    }
    pub(crate) fn in_flight() -> usize {
        64
    }
    pub(crate) fn file_in_flight() -> usize {
        256
    }
    pub(crate) fn log_level() -> String {
        "info".into()
    }
    pub(crate) fn shutdown_timeout_ms() -> u64 {
        30_000
    }
    pub(crate) fn prefetch() -> u16 {
        64
    }
    pub(crate) fn routing_key() -> String {
        "{type}".into()
    }
    pub(crate) fn qos() -> u8 {
        1
    }
    pub(crate) fn max_connections() -> usize {
        10_000
    }
    pub(crate) fn header_read_timeout_ms() -> u64 {
        10_000
    }
    pub(crate) fn body_read_timeout_ms() -> u64 {
        30_000
    }
    pub(crate) fn ws_in_flight() -> usize {
        64
    }
    pub(crate) fn idle_timeout_ms() -> u64 {
        60_000
    }
    pub(crate) fn ping_interval_ms() -> u64 {
        20_000
    }
}

impl Config {
    /// Reads, interpolates, parses and checks a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::file(path, format!("cannot read: {e}")))?;
        Config::from_str_at(&text, path, &|name| std::env::var(name).ok())
    }

    /// Parses config text; `path` is only used in error messages.
    pub fn from_str_at(
        text: &str,
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let raw = text;
        let text = interpolate::interpolate(text, env)
            .map_err(|(offset, message)| ConfigError::at(path, text, offset, None, message))?;
        let table = toml::de::DeTable::parse(&text).map_err(|e| {
            let offset = e.span().map(|s| s.start);
            ConfigError::from_parts(path, &text, offset, None, e.message().to_owned())
        })?;
        let root = table.get_ref().clone();
        let de = toml::de::Deserializer::from(table);
        let base = path.parent().unwrap_or(Path::new("."));
        let (parsed, files) =
            crate::file_ref::with_base_dir(base, || serde_path_to_error::deserialize(de));
        let config: Config = parsed.map_err(|e: serde_path_to_error::Error<toml::de::Error>| {
            let mut key = locate::key_of(e.path(), e.inner().message());
            locate::refine(&root, &mut key, e.inner().message());
            let (key, offset, message) =
                locate::component_error(&root, &key).unwrap_or_else(|| {
                    let offset =
                        locate::offset(&root, &key).or_else(|| e.inner().span().map(|s| s.start));
                    (key, offset, e.inner().message().to_owned())
                });
            ConfigError::from_parts(path, &text, offset, Some(key.join(".")), message)
        })?;
        config.check().map_err(|(key, message)| {
            let offset = locate::offset(&root, &key);
            ConfigError::from_parts(path, &text, offset, Some(key.join(".")), message)
        })?;
        let mut config = config;
        config.origin = Origin {
            path: path.to_owned(),
            // Over the text and the files it references, so a renewed certificate shows.
            hash: {
                let contents: Vec<Vec<u8>> = files
                    .iter()
                    .map(|f| std::fs::read(f).unwrap_or_default())
                    .collect();
                let mut parts: Vec<&[u8]> = vec![text.as_bytes()];
                for (f, content) in files.iter().zip(&contents) {
                    parts.push(f.as_os_str().as_encoded_bytes());
                    parts.push(content);
                }
                hex::encode(crate::keyed::digest(parts))
            },
            redacted: redact::redact(raw),
            files,
        };
        Ok(config)
    }

    /// Cross-component checks: names, references, listeners, filters.
    fn check(&self) -> Result<(), (Vec<String>, String)> {
        let mut listeners: BTreeMap<SocketAddr, Vec<String>> = BTreeMap::new();
        if let Some(admin) = &self.admin {
            listeners.insert(admin.listen, vec!["admin".into(), "listen".into()]);
            if !admin.listen.ip().is_loopback() && admin.token().is_none() {
                return Err((
                    vec!["admin".into(), "token".into()],
                    format!(
                        "the admin listener {} is not on loopback: set a token \
                         (`token = \"${{FERRY_ADMIN_TOKEN}}\"`) or listen on 127.0.0.1",
                        admin.listen
                    ),
                ));
            }
        }
        for (name, source) in &self.sources {
            check_name(&["sources", name])?;
            if let Some(addr) = source.listen() {
                claim(&mut listeners, addr, &["sources", name, "listen"])?;
            }
            let prefix = |(mut key, message): (Vec<String>, String)| {
                key.splice(0..0, ["sources".to_owned(), name.clone()]);
                (key, message)
            };
            let normalize = match source {
                SourceConfig::Http(c) => {
                    if !c.path.starts_with('/') {
                        return Err((
                            path_key("sources", name, "path"),
                            "path must start with `/`".into(),
                        ));
                    }
                    for (key, v) in [
                        ("max_body_bytes", c.max_body_bytes as u64),
                        ("max_concurrent_requests", c.max_concurrent_requests as u64),
                        ("max_connections", c.max_connections as u64),
                        ("header_read_timeout_ms", c.header_read_timeout_ms),
                        ("body_read_timeout_ms", c.body_read_timeout_ms),
                        ("idle_timeout_ms", c.idle_timeout_ms),
                    ] {
                        if v == 0 {
                            return Err((
                                path_key("sources", name, key),
                                format!("{key} must be greater than 0"),
                            ));
                        }
                    }
                    c.webhook.check().map_err(prefix)?;
                    check_auth(c.auth.as_ref()).map_err(prefix)?;
                    &c.normalize
                }
                SourceConfig::Amqp(c) => {
                    c.check().map_err(prefix)?;
                    &c.normalize
                }
                SourceConfig::Mqtt(c) => {
                    c.check().map_err(prefix)?;
                    &c.normalize
                }
                SourceConfig::Nats(c) => {
                    c.check().map_err(prefix)?;
                    &c.normalize
                }
                SourceConfig::Websocket(c) => {
                    if !c.path.starts_with('/') {
                        return Err((
                            path_key("sources", name, "path"),
                            "path must start with `/`".into(),
                        ));
                    }
                    for (key, v) in [
                        ("max_message_bytes", c.max_message_bytes),
                        ("max_connections", c.max_connections),
                        ("max_in_flight", c.max_in_flight),
                    ] {
                        if v == 0 {
                            return Err((
                                path_key("sources", name, key),
                                format!("{key} must be greater than 0"),
                            ));
                        }
                    }
                    if c.ping_interval_ms == 0 || c.ping_interval_ms >= c.idle_timeout_ms {
                        return Err((
                            path_key("sources", name, "ping_interval_ms"),
                            "ping_interval_ms must be greater than 0 and less than idle_timeout_ms"
                                .into(),
                        ));
                    }
                    check_auth(c.auth.as_ref()).map_err(prefix)?;
                    &c.normalize
                }
            };
            if let Some(n) = normalize {
                crate::normalize::Normalizer::compile(n).map_err(|(key, message)| {
                    (
                        vec!["sources".into(), name.clone(), "normalize".into(), key],
                        message,
                    )
                })?;
            }
        }
        let mut spools: BTreeMap<PathBuf, String> = BTreeMap::new();
        for (name, sink) in &self.sinks {
            check_name(&["sinks", name])?;
            if let SinkConfig::Websocket(c) = sink {
                claim(&mut listeners, c.listen, &["sinks", name, "listen"])?;
            }
            if let Some(dlq) = sink.dead_letter() {
                let key = path_key("sinks", name, "dead_letter");
                match self.sinks.get(dlq) {
                    None => {
                        return Err((
                            key,
                            format!("unknown sink `{dlq}`{}", known(self.sinks.keys())),
                        ))
                    }
                    Some(_) if dlq == name => {
                        return Err((key, "a sink cannot be its own dead-letter sink".into()))
                    }
                    Some(target) if target.dead_letter().is_some() => {
                        return Err((
                            key,
                            format!(
                                "dead-letter sink `{dlq}` must not have a dead_letter of its own"
                            ),
                        ))
                    }
                    Some(_) => {}
                }
            }
            if let Some(r) = sink.retry() {
                if r.max_attempts == 0
                    || r.initial_backoff_ms == 0
                    || r.max_backoff_ms < r.initial_backoff_ms
                {
                    return Err((
                        path_key("sinks", name, "retry"),
                        "max_attempts and initial_backoff_ms must be > 0, max_backoff_ms >= initial_backoff_ms".into(),
                    ));
                }
            }
            if sink.queue() == 0 {
                return Err((
                    path_key("sinks", name, "queue"),
                    "queue must be greater than 0".into(),
                ));
            }
            if let Some(spool) = sink.spool() {
                spool.check().map_err(|(key, message)| {
                    (
                        vec!["sinks".into(), name.clone(), "spool".into(), key.into()],
                        message,
                    )
                })?;
                if let Some(other) = spools.insert(spool.path.clone(), name.clone()) {
                    return Err((
                        vec!["sinks".into(), name.clone(), "spool".into(), "path".into()],
                        format!("sink `{other}` already spools to this path"),
                    ));
                }
            }
            sink.circuit_breaker().check().map_err(|(key, message)| {
                (
                    vec![
                        "sinks".into(),
                        name.clone(),
                        "circuit_breaker".into(),
                        key.into(),
                    ],
                    message,
                )
            })?;
            match sink {
                SinkConfig::File(FileSinkConfig {
                    in_flight,
                    timeout_ms,
                    ..
                })
                | SinkConfig::Stdout(StdoutSinkConfig {
                    in_flight,
                    timeout_ms,
                    ..
                }) if *in_flight == 0 || *timeout_ms == 0 => {
                    return Err((
                        path_key("sinks", name, "in_flight"),
                        "in_flight and timeout_ms must be greater than 0".into(),
                    ));
                }
                _ => {}
            }
            let prefix = |(mut key, message): (Vec<String>, String)| {
                key.splice(0..0, ["sinks".to_owned(), name.clone()]);
                (key, message)
            };
            match sink {
                SinkConfig::Amqp(c) => c.check().map_err(prefix)?,
                SinkConfig::Mqtt(c) => c.check().map_err(prefix)?,
                SinkConfig::Nats(c) => c.check().map_err(prefix)?,
                SinkConfig::Websocket(c) => {
                    if !c.path.starts_with('/') {
                        return Err((
                            path_key("sinks", name, "path"),
                            "path must start with `/`".into(),
                        ));
                    }
                    if c.max_connections == 0 || c.ping_interval_ms == 0 {
                        return Err((
                            path_key("sinks", name, "max_connections"),
                            "max_connections and ping_interval_ms must be greater than 0".into(),
                        ));
                    }
                    if let Some(auth) = &c.auth {
                        if auth.hmac.is_some() {
                            return Err((
                                vec!["sinks".into(), name.clone(), "auth".into(), "hmac".into()],
                                "a subscriber's upgrade request has no body to sign: use jwt or mtls"
                                    .into(),
                            ));
                        }
                        if auth.mtls && c.tls.as_ref().is_none_or(|t| t.client_ca.is_none()) {
                            return Err((
                                vec!["sinks".into(), name.clone(), "auth".into(), "mtls".into()],
                                "mtls needs `tls.client_ca`".into(),
                            ));
                        }
                    }
                }
                SinkConfig::File(_) | SinkConfig::Stdout(_) | SinkConfig::Http(_) => {}
            }
            if let SinkConfig::Http(c) = sink {
                let url = reqwest::Url::parse(&c.url)
                    .map_err(|e| (path_key("sinks", name, "url"), format!("invalid URL: {e}")))?;
                if url.scheme() != "http" && url.scheme() != "https" {
                    return Err((
                        path_key("sinks", name, "url"),
                        "URL scheme must be http or https".into(),
                    ));
                }
                if c.in_flight == 0 {
                    return Err((
                        path_key("sinks", name, "in_flight"),
                        "in_flight must be greater than 0".into(),
                    ));
                }
                for header in c.headers.keys() {
                    if ::http::HeaderName::from_bytes(header.as_bytes()).is_err() {
                        return Err((
                            vec![
                                "sinks".into(),
                                name.clone(),
                                "headers".into(),
                                header.clone(),
                            ],
                            "not a valid header name".into(),
                        ));
                    }
                }
                c.check_outbound(&url).map_err(prefix)?;
            }
        }
        for (name, route) in &self.routes {
            check_name(&["routes", name])?;
            if route.from.is_empty() {
                return Err((
                    path_key("routes", name, "from"),
                    "a route needs at least one source".into(),
                ));
            }
            if route.to.is_empty() {
                return Err((
                    path_key("routes", name, "to"),
                    "a route needs at least one sink".into(),
                ));
            }
            for (i, source) in route.from.iter().enumerate() {
                if !self.sources.contains_key(source) {
                    return Err((
                        vec!["routes".into(), name.clone(), "from".into(), i.to_string()],
                        format!("unknown source `{source}`{}", known(self.sources.keys())),
                    ));
                }
            }
            for (i, sink) in route.to.iter().enumerate() {
                if !self.sinks.contains_key(sink) {
                    return Err((
                        vec!["routes".into(), name.clone(), "to".into(), i.to_string()],
                        format!("unknown sink `{sink}`{}", known(self.sinks.keys())),
                    ));
                }
            }
            if route.dedup.as_ref().is_some_and(|d| d.window == 0) {
                return Err((
                    vec![
                        "routes".into(),
                        name.clone(),
                        "dedup".into(),
                        "window".into(),
                    ],
                    "window must be greater than 0".into(),
                ));
            }
            for (i, filter) in route.filters.iter().enumerate() {
                crate::router::Filter::compile(filter).map_err(|message| {
                    (
                        vec![
                            "routes".into(),
                            name.clone(),
                            "filters".into(),
                            i.to_string(),
                        ],
                        message,
                    )
                })?;
            }
        }
        self.check_policies()
    }

    /// Policies that could never apply are refused: a typo in `principal` would leave that
    /// principal unrestricted, one in `allow_routes` would drop its events.
    fn check_policies(&self) -> Result<(), (Vec<String>, String)> {
        use crate::security::principal::Method;
        let auth = |source: &SourceConfig| match source {
            SourceConfig::Http(c) => c.auth.clone(),
            SourceConfig::Websocket(c) => c.auth.clone(),
            _ => None,
        };
        // Push-sink subscribers are principals too: policies decide what they receive.
        let subscribers = self.sinks.values().filter_map(|s| match s {
            SinkConfig::Websocket(c) => c.auth.clone(),
            _ => None,
        });
        let mut auths: Vec<_> = self.sources.values().filter_map(auth).collect();
        auths.extend(subscribers);
        let accepts = |method: Method| {
            auths.iter().any(|a| match method {
                Method::Mtls => a.mtls,
                Method::Jwt => a.jwt.is_some(),
                Method::Hmac => a.hmac.is_some(),
                Method::None => true,
            })
        };
        for (i, policy) in self.policies.iter().enumerate() {
            let key = |k: &str| vec!["policies".to_owned(), i.to_string(), k.to_owned()];
            let principal = &policy.principal;
            let Some((kind, id)) = principal.split_once(':') else {
                return Err((
                    key("principal"),
                    format!("`{principal}` is not `<kind>:<identity>` (`jwt:<sub>`, `mtls:<identity>`, `hmac:<source>`, `anonymous:`)"),
                ));
            };
            let method = [Method::Mtls, Method::Jwt, Method::Hmac, Method::None]
                .into_iter()
                .find(|m| m.prefix() == kind)
                .ok_or_else(|| {
                    (
                        key("principal"),
                        format!(
                            "unknown principal kind `{kind}` (known: mtls, jwt, hmac, anonymous)"
                        ),
                    )
                })?;
            if id.trim() != id || id.chars().any(char::is_control) {
                return Err((
                    key("principal"),
                    format!("the identity in `{principal}` has white space or control characters around or in it"),
                ));
            }
            match method {
                Method::None if !id.is_empty() => {
                    return Err((
                        key("principal"),
                        "write the anonymous principal as `anonymous:`".into(),
                    ))
                }
                Method::None => {}
                _ if id.is_empty() => {
                    return Err((key("principal"), format!("`{principal}` names no identity")))
                }
                Method::Hmac => match self.sources.get(id) {
                    None => {
                        return Err((
                            key("principal"),
                            format!("no source named `{id}`{}", known(self.sources.keys())),
                        ))
                    }
                    Some(s) if auth(s).is_none_or(|a| a.hmac.is_none()) => {
                        return Err((
                            key("principal"),
                            format!("source `{id}` does not verify HMAC signatures (`auth.hmac`)"),
                        ))
                    }
                    Some(_) => {}
                },
                _ if !accepts(method) => {
                    return Err((
                        key("principal"),
                        format!(
                        "no source accepts `{kind}` authentication, so `{principal}` never sends"
                    ),
                    ))
                }
                _ => {}
            }
            for (j, route) in policy.allow_routes.iter().enumerate() {
                if !self.routes.contains_key(route) {
                    let mut k = key("allow_routes");
                    k.push(j.to_string());
                    return Err((
                        k,
                        format!("unknown route `{route}`{}", known(self.routes.keys())),
                    ));
                }
            }
            // `type` is a non-empty string without control characters; `source` a URI
            // reference, which has no white space either.
            for (list, name, no_space) in [
                (&policy.allow_types, "allow_types", false),
                (&policy.allow_sources, "allow_sources", true),
            ] {
                for (j, pattern) in list.iter().enumerate() {
                    let never = pattern.is_empty()
                        || pattern.chars().any(char::is_control)
                        || (no_space && pattern.chars().any(char::is_whitespace));
                    if never {
                        let mut k = key(name);
                        k.push(j.to_string());
                        return Err((
                            k,
                            format!("pattern {pattern:?} can never match an event's attribute"),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Checks a source's `auth` table (HMAC settings and secrets); keys below the source.
fn check_auth(
    auth: Option<&crate::security::source::AuthConfig>,
) -> Result<(), (Vec<String>, String)> {
    let Some(auth) = auth else { return Ok(()) };
    auth.check().map_err(|(mut key, message)| {
        key.insert(0, "auth".into());
        (key, message)
    })
}

/// Records a listener address; two components on one address (other than port 0) are refused.
fn claim(
    listeners: &mut BTreeMap<SocketAddr, Vec<String>>,
    addr: SocketAddr,
    key: &[&str],
) -> Result<(), (Vec<String>, String)> {
    let key: Vec<String> = key.iter().map(|s| (*s).to_owned()).collect();
    if let Some(other) = listeners.get(&addr) {
        if addr.port() != 0 {
            return Err((
                key,
                format!(
                    "listen address {addr} is already used by `{}`",
                    other.join(".")
                ),
            ));
        }
    }
    listeners.insert(addr, key);
    Ok(())
}

fn path_key(section: &str, name: &str, key: &str) -> Vec<String> {
    vec![section.to_owned(), name.to_owned(), key.to_owned()]
}

/// Component names appear in metrics labels and logs: keep them simple.
fn check_name(key: &[&str; 2]) -> Result<(), (Vec<String>, String)> {
    let name = key[1];
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err((
            key.iter().map(|s| (*s).to_owned()).collect(),
            "component names may contain only letters, digits, `_` and `-` (at most 64)".into(),
        ))
    }
}

fn known<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let names: Vec<&str> = names.map(String::as_str).collect();
    if names.is_empty() {
        " (none are configured)".into()
    } else {
        format!(" (known: {})", names.join(", "))
    }
}

#[cfg(test)]
mod tests;

/// The `[reload]` table: the file watch (read at start).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReloadConfig {
    /// Reload when the config file or a file it references changes.
    #[serde(default = "defaults::watch")]
    pub watch: bool,
    /// Quiet time after the last change before reloading (editors and Kubernetes write in
    /// several steps).
    #[serde(default = "defaults::debounce_ms")]
    pub debounce_ms: u64,
}

impl Default for ReloadConfig {
    fn default() -> Self {
        ReloadConfig {
            watch: defaults::watch(),
            debounce_ms: defaults::debounce_ms(),
        }
    }
}
