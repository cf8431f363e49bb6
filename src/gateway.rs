//! The running gateway: builds sinks, routes and sources from a config, and shuts them down
//! in order (sources stop accepting and finish in-flight events, then sinks drain).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin;
use crate::config::Config;
use crate::health::Readiness;
use crate::metrics::Metrics;
use crate::pipeline::SharedGeneration;
use crate::reload;
use crate::sinks::SinkContext;
use crate::sources;
use crate::topology::Topology;

pub use crate::topology::StartError;

/// A running gateway.
pub struct Gateway {
    topology: Arc<Topology>,
    admin: TaskTracker,
    admin_addr: Option<SocketAddr>,
    reloader: Arc<reload::Reloader>,
}

impl Gateway {
    /// Starts the topology the config names (sinks, routes, sources: see
    /// [`Topology::start`]), then the admin server.
    pub async fn start(config: Config) -> Result<Gateway, StartError> {
        crate::tls::install_default_provider();
        let mut registry = Registry::default();
        let metrics = Metrics::new(&mut registry);
        let readiness = Readiness::default();
        let shutdown = CancellationToken::new();
        // Sinks see the generation that routes to them; it is filled in once they exist.
        let generation: SharedGeneration = Default::default();
        registry.register_collector(Box::new(crate::process_metrics::Process));
        registry.register_collector(Box::new(crate::process_metrics::BuildInfo));
        registry.register_collector(Box::new(crate::pipeline::QueueDepths(Arc::clone(
            &generation,
        ))));
        // Device listeners register here; command sinks find them here.
        let mqtt_servers = crate::mqtt_hub::Servers::default();
        let cx = SinkContext {
            metrics: metrics.clone(),
            tracker: TaskTracker::new(),
            readiness: readiness.clone(),
            generation: Arc::clone(&generation),
            mqtt_servers: mqtt_servers.clone(),
        };
        let base = sources::SourceBase {
            generation: Arc::clone(&generation),
            metrics: metrics.clone(),
            readiness: readiness.clone(),
            shutdown: shutdown.clone(),
            mqtt_servers,
        };
        let topology = Arc::new(Topology::start(&config, base, cx, metrics.clone()).await?);
        let config_view = Arc::new(ArcSwap::from_pointee(config.clone()));
        let reloader = Arc::new(reload::Reloader::new(
            Arc::clone(&config_view),
            Arc::clone(&topology),
            &metrics,
        ));

        let admin_tracker = TaskTracker::new();
        let admin_addr = match &config.admin {
            Some(a) => {
                let view = admin::View {
                    config: Arc::clone(&config_view),
                    generation: Arc::clone(&generation),
                    reloader: Arc::clone(&reloader),
                };
                let addr = admin::start(
                    a.listen,
                    Arc::new(registry),
                    readiness.clone(),
                    view,
                    shutdown.child_token(),
                    &admin_tracker,
                )
                .await
                .map_err(|error| StartError::Admin {
                    addr: a.listen,
                    error,
                })?;
                tracing::info!(%addr, "admin listening");
                Some(addr)
            }
            None => None,
        };

        Ok(Gateway {
            topology,
            admin: admin_tracker,
            admin_addr,
            reloader,
        })
    }

    /// The address a source is bound to (useful with port 0).
    pub fn source_addr(&self, name: &str) -> Option<SocketAddr> {
        self.topology.source_addr(name)
    }

    /// The address a listening sink (WebSocket push) is bound to.
    pub fn sink_addr(&self, name: &str) -> Option<SocketAddr> {
        self.topology.sink_addr(name)
    }

    /// Applies new configs to this gateway.
    pub fn reloader(&self) -> Arc<reload::Reloader> {
        Arc::clone(&self.reloader)
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Graceful shutdown: stop accepting, let in-flight events finish, drain the sinks, all
    /// within the deadline of the config in force (`shutdown_timeout_ms`, as the last
    /// reload set it). Returns false if the deadline passed first.
    pub async fn shutdown(self) -> bool {
        let timeout = Duration::from_millis(self.reloader.current().shutdown_timeout_ms);
        let deadline = tokio::time::Instant::now() + timeout;
        let done = self.topology.shutdown(deadline).await;
        self.admin.close();
        let _ = tokio::time::timeout_at(deadline, self.admin.wait()).await;
        done
    }
}
