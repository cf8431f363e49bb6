//! Configuration: the TOML file, its component structs, and loading with precise errors.
//!
//! Loading is: read the file → interpolate `${VAR}` / `${VAR:-default}` → parse TOML →
//! deserialize (unknown keys refused) → check references between components. Every error
//! names the file, the line and the key.

mod amqp;
mod check;
mod error;
mod http;
mod interpolate;
mod locate;
mod mqtt;
mod mqtt_server;
mod nats;
mod redact;
mod sink;
mod source;
mod websocket;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use crate::file_ref::FileRef;
pub use crate::key_error::KeyError;
pub use crate::pipeline::Unrouted;
pub use amqp::{client_tls as amqp_client_tls, AmqpSinkConfig, AmqpSourceConfig};
pub use error::ConfigError;
pub use http::WebhookConfig;
pub use mqtt::{
    client_tls as mqtt_client_tls, resolve_password as mqtt_password, MqttProtocol, MqttSinkConfig,
    MqttSourceConfig,
};
pub use mqtt_server::{
    AclConfig, CommandMode, MqttServerSinkConfig, MqttServerSourceConfig, MqttWebSocketConfig,
};
pub use nats::{connect_options as nats_connect_options, NatsSinkConfig, NatsSourceConfig};
pub use sink::{FileSinkConfig, HttpSinkConfig, SinkConfig, StdoutSinkConfig};
use source::{check_path, positive};
pub use source::{HttpSourceConfig, SourceConfig};
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
    /// A folder whose `*.toml` files hold more `[routes.*]` tables (relative to the working
    /// directory).
    #[serde(default)]
    pub routes_dir: Option<std::path::PathBuf>,
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
    /// The files the config references (certificates, keys, JWKS, secret files, the files of
    /// `routes_dir`) that existed when it was read: a file watch reloads when one changes.
    pub files: Vec<std::path::PathBuf>,
    /// Folders in which a `*.toml` file appearing, changing or going reloads (`routes_dir`).
    pub dirs: Vec<std::path::PathBuf>,
    /// The file each route of `routes_dir` came from.
    pub route_files: BTreeMap<String, std::path::PathBuf>,
}

/// One file of `routes_dir`: `[routes.*]` tables only.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoutesFile {
    #[serde(default)]
    routes: BTreeMap<String, RouteConfig>,
}

/// Deserializes TOML text, locating an error by file, line and key.
fn deserialize_at<'t, T: serde::de::DeserializeOwned>(
    text: &'t str,
    path: &Path,
    base: &Path,
) -> Result<(T, toml::de::DeTable<'t>, Vec<std::path::PathBuf>), ConfigError> {
    let table = toml::de::DeTable::parse(text).map_err(|e| {
        let offset = e.span().map(|s| s.start);
        ConfigError::from_parts(path, text, offset, None, e.message().to_owned())
    })?;
    let root = table.get_ref().clone();
    let de = toml::de::Deserializer::from(table);
    let (parsed, files) =
        crate::file_ref::with_base_dir(base, || serde_path_to_error::deserialize(de));
    let value: T = parsed.map_err(|e: serde_path_to_error::Error<toml::de::Error>| {
        let mut key = locate::key_of(e.path(), e.inner().message());
        locate::refine(&root, &mut key, e.inner().message());
        let (key, offset, message) = locate::component_error(&root, &key).unwrap_or_else(|| {
            let offset = locate::offset(&root, &key).or_else(|| e.inner().span().map(|s| s.start));
            (key, offset, e.inner().message().to_owned())
        });
        ConfigError::from_parts(path, text, offset, Some(key.join(".")), message)
    })?;
    Ok((value, root, files))
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
        Config::parse(text, path, env, true)
    }

    /// Parses config text as `/-/config` shows it (literal secrets `[redacted]`, `${VAR}`
    /// references as written) only to compare it with another text parsed the same way: each
    /// reference takes this environment's value, or stays as written when unset, so it compares
    /// by name; no referenced file is read (they may not exist here) and the checks do not run.
    pub fn outline(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let env = |name: &str| {
            std::env::var(name)
                .ok()
                .or_else(|| Some(format!("${{{name}}}")))
        };
        crate::file_ref::without_reading(|| Config::parse(text, path, &env, false))
    }

    fn parse(
        text: &str,
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
        checked: bool,
    ) -> Result<Config, ConfigError> {
        let raw = text;
        let text = interpolate::interpolate(text, env)
            .map_err(|(offset, message)| ConfigError::at(path, text, offset, None, message))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let (mut config, root, mut files): (Config, _, _) = deserialize_at(&text, path, base)?;
        // `routes_dir`: more routes, each file parsed and located on its own.
        let mut dirs = Vec::new();
        let mut route_files: BTreeMap<String, std::path::PathBuf> = BTreeMap::new();
        let mut route_texts: BTreeMap<std::path::PathBuf, String> = BTreeMap::new();
        if let (Some(dir), true) = (config.routes_dir.clone(), checked) {
            let mut entries: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)
                .map_err(|e| {
                    let offset = locate::offset(&root, &["routes_dir".to_owned()]);
                    ConfigError::from_parts(
                        path,
                        &text,
                        offset,
                        Some("routes_dir".into()),
                        format!("cannot read the folder {}: {e}", dir.display()),
                    )
                })?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
                .collect();
            entries.sort();
            for file in entries {
                let raw_routes = std::fs::read_to_string(&file)
                    .map_err(|e| ConfigError::file(&file, format!("cannot read: {e}")))?;
                let routes_text =
                    interpolate::interpolate(&raw_routes, env).map_err(|(offset, message)| {
                        ConfigError::at(&file, &raw_routes, offset, None, message)
                    })?;
                let (parsed, routes_root, _): (RoutesFile, _, _) =
                    deserialize_at(&routes_text, &file, base)?;
                for (name, route) in parsed.routes {
                    let earlier = match route_files.get(&name) {
                        Some(f) => Some(std::path::Path::display(f).to_string()),
                        None => config
                            .routes
                            .contains_key(&name)
                            .then(|| path.display().to_string()),
                    };
                    if let Some(earlier) = earlier {
                        let key = vec!["routes".to_owned(), name.clone()];
                        return Err(ConfigError::from_parts(
                            &file,
                            &routes_text,
                            locate::offset(&routes_root, &key),
                            Some(key.join(".")),
                            format!(
                                "route `{name}` is defined twice: in {earlier} and in {}",
                                file.display()
                            ),
                        ));
                    }
                    route_files.insert(name.clone(), file.clone());
                    config.routes.insert(name, route);
                }
                files.push(file.clone());
                route_texts.insert(file, routes_text);
            }
            dirs.push(dir);
        }
        if checked {
            config.check().map_err(|e| {
                // A route from `routes_dir` is located in its own file.
                let from_dir = match e.key.as_slice() {
                    [routes, name, ..] if routes == "routes" => route_files.get(name),
                    _ => None,
                };
                match from_dir.and_then(|f| route_texts.get(f).map(|t| (f, t))) {
                    Some((file, routes_text)) => {
                        let offset = toml::de::DeTable::parse(routes_text)
                            .ok()
                            .and_then(|t| locate::offset(t.get_ref(), &e.key));
                        ConfigError::from_parts(
                            file,
                            routes_text,
                            offset,
                            Some(e.dotted()),
                            e.message,
                        )
                    }
                    None => {
                        let offset = locate::offset(&root, &e.key);
                        ConfigError::from_parts(path, &text, offset, Some(e.dotted()), e.message)
                    }
                }
            })?;
        }
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
            dirs,
            route_files,
        };
        Ok(config)
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
