//! Sources: where events come into Ferry. A source decodes protocol messages into events,
//! routes them through the current generation ([`crate::pipeline::ingest`]) and acknowledges
//! the sender only once every sink confirmed.

pub mod amqp;
pub mod http;
pub mod mqtt;
pub mod mqtt_server;
pub mod nats;
pub mod websocket;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use tokio::net::TcpListener;

use crate::config::SourceConfig;
use crate::health::Readiness;
use crate::metrics::Metrics;
use crate::normalize::Normalizer;
use crate::pipeline::SharedGeneration;

pub use crate::pipeline::SourceStats;

/// Everything a source needs from the gateway.
#[derive(Clone)]
pub struct SourceContext {
    pub generation: SharedGeneration,
    pub stats: SourceStats,
    /// Cancelled on shutdown: stop taking new messages, finish in-flight ones.
    pub shutdown: CancellationToken,
    /// Tasks spawned here are awaited on shutdown.
    pub tracker: TaskTracker,
    pub readiness: Readiness,
    /// The running device listeners, for the command sinks.
    pub mqtt_servers: crate::mqtt_hub::Servers,
}

impl SourceContext {
    pub fn name(&self) -> &str {
        &self.stats.name
    }

    /// Reports whether the source is connected and consuming (`/readyz`).
    pub fn set_ready(&self, ready: bool) {
        self.readiness
            .set(&format!("source:{}", self.stats.name), ready);
    }
}

/// A source that could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("source `{source_name}`: cannot listen on {addr}: {error}")]
    Listen {
        source_name: String,
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("source `{source_name}`: {message}")]
    Config {
        source_name: String,
        message: String,
    },
}

/// What every source shares: the generation, metrics, readiness and the gateway's shutdown.
#[derive(Clone)]
pub struct SourceBase {
    pub generation: SharedGeneration,
    pub metrics: Metrics,
    pub readiness: Readiness,
    /// The gateway's shutdown; each source's own token is a child of it.
    pub shutdown: CancellationToken,
    /// Where device listeners register, so command sinks find them.
    pub mqtt_servers: crate::mqtt_hub::Servers,
}

impl SourceBase {
    /// A context for one source instance, with its own stop token and task tracker.
    pub fn context(&self, name: &str) -> SourceContext {
        SourceContext {
            generation: Arc::clone(&self.generation),
            stats: SourceStats::new(name, &self.metrics),
            shutdown: self.shutdown.child_token(),
            tracker: TaskTracker::new(),
            readiness: self.readiness.clone(),
            mqtt_servers: self.mqtt_servers.clone(),
        }
    }
}

/// The settings of a listening source that can be swapped while it runs.
#[derive(Clone)]
pub enum Live {
    Http(http::Live),
    Websocket(websocket::Live),
    MqttServer(mqtt_server::Live),
}

/// New settings for a listening source, built and checked.
pub enum Prepared {
    Http(http::Prepared),
    Websocket(websocket::Prepared),
    MqttServer(mqtt_server::Prepared),
}

impl Prepared {
    pub fn commit(self, live: &Live) {
        match (self, live) {
            (Prepared::Http(p), Live::Http(l)) => l.commit(p),
            (Prepared::Websocket(p), Live::Websocket(l)) => l.commit(p),
            (Prepared::MqttServer(p), Live::MqttServer(l)) => l.commit(p),
            _ => unreachable!("prepared for another kind of source"),
        }
    }
}

/// A running source instance.
pub struct Running {
    pub config: SourceConfig,
    pub cx: SourceContext,
    pub addr: Option<SocketAddr>,
    pub live: Option<Live>,
}

impl Running {
    /// Builds `new` settings to swap into this running source in place, when it is the same
    /// kind of listener on the same address; `None` when the source must be replaced.
    pub fn prepare_in_place(&self, new: &SourceConfig) -> Option<Result<Prepared, SourceError>> {
        match (&self.config, new, &self.live) {
            (SourceConfig::Http(old), SourceConfig::Http(c), Some(Live::Http(l)))
                if old.listen == c.listen =>
            {
                Some(l.prepare(c, &self.cx).map(Prepared::Http))
            }
            (
                SourceConfig::Websocket(old),
                SourceConfig::Websocket(c),
                Some(Live::Websocket(l)),
            ) if old.listen == c.listen => Some(l.prepare(c, &self.cx).map(Prepared::Websocket)),
            (
                SourceConfig::MqttServer(old),
                SourceConfig::MqttServer(c),
                Some(Live::MqttServer(l)),
            ) if old.listen == c.listen && old.websocket == c.websocket => {
                Some(l.prepare(c, &self.cx).map(Prepared::MqttServer))
            }
            _ => None,
        }
    }

    /// Stops taking messages, lets in-flight ones finish and be acknowledged, up to `deadline`.
    /// Returns false if the deadline passed first.
    pub async fn stop(self, deadline: tokio::time::Instant) -> bool {
        self.cx.shutdown.cancel();
        self.cx.tracker.close();
        let done = tokio::time::timeout_at(deadline, self.cx.tracker.wait())
            .await
            .is_ok();
        self.cx.set_ready(false);
        done
    }
}

/// With `bind`, binds a listening source's address ahead of [`start`] (which takes the bound
/// listener), so a taken port refuses a reload before anything changed. Templates, TLS material
/// and the rest were checked with the config.
pub async fn check(
    name: &str,
    config: &SourceConfig,
    bind: bool,
) -> Result<Option<TcpListener>, SourceError> {
    let listen = match config {
        SourceConfig::Http(c) if bind => Some(c.listen),
        SourceConfig::Websocket(c) if bind => Some(c.listen),
        SourceConfig::MqttServer(c) if bind => Some(c.listen),
        _ => None,
    };
    match listen {
        Some(addr) => {
            TcpListener::bind(addr)
                .await
                .map(Some)
                .map_err(|error| SourceError::Listen {
                    source_name: name.to_owned(),
                    addr,
                    error,
                })
        }
        None => Ok(None),
    }
}

/// A listening source's listener: `bound` when [`check`] bound it already, else bound now;
/// and the address it listens on.
pub(crate) async fn listen(
    name: &str,
    addr: SocketAddr,
    bound: Option<TcpListener>,
) -> Result<(TcpListener, SocketAddr), SourceError> {
    let error = |error| SourceError::Listen {
        source_name: name.to_owned(),
        addr,
        error,
    };
    let listener = match bound {
        Some(l) => l,
        None => TcpListener::bind(addr).await.map_err(error)?,
    };
    let local = listener.local_addr().map_err(error)?;
    Ok((listener, local))
}

/// Starts one source (on `bound` when its listener was bound already).
pub async fn start(
    name: &str,
    config: &SourceConfig,
    base: &SourceBase,
    bound: Option<TcpListener>,
) -> Result<Running, SourceError> {
    let cx = base.context(name);
    cx.set_ready(false);
    let (addr, live) = match config {
        SourceConfig::Http(c) => {
            let (addr, live) = http::start(c, cx.clone(), bound).await?;
            tracing::info!(source = %name, kind = "http", %addr, "source listening");
            (Some(addr), Some(Live::Http(live)))
        }
        SourceConfig::Websocket(c) => {
            let (addr, live) = websocket::start(c, cx.clone(), bound).await?;
            tracing::info!(source = %name, kind = "websocket", %addr, "source listening");
            (Some(addr), Some(Live::Websocket(live)))
        }
        SourceConfig::MqttServer(c) => {
            let (addr, live) = mqtt_server::start(c, cx.clone(), bound).await?;
            tracing::info!(source = %name, kind = "mqtt-server", %addr, "source listening");
            (Some(addr), Some(Live::MqttServer(live)))
        }
        SourceConfig::Amqp(c) => {
            amqp::start(c, cx.clone()).await?;
            (None, None)
        }
        SourceConfig::Mqtt(c) => {
            mqtt::start(c, cx.clone()).await?;
            (None, None)
        }
        SourceConfig::Nats(c) => {
            nats::start(c, cx.clone()).await?;
            (None, None)
        }
    };
    Ok(Running {
        config: config.clone(),
        cx,
        addr,
        live,
    })
}

/// Compiles a source's `normalize` template, if it has one.
pub(crate) fn normalizer(
    source_name: &str,
    normalize: Option<&crate::normalize::NormalizeConfig>,
) -> Result<Option<Normalizer>, SourceError> {
    normalize
        .map(|n| {
            Normalizer::compile(n).map_err(|(key, message)| SourceError::Config {
                source_name: source_name.to_owned(),
                message: format!("normalize.{key}: {message}"),
            })
        })
        .transpose()
}
