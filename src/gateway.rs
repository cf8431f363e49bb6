//! The running gateway: builds sinks, routes and sources from a config, and shuts them down
//! in order (sources stop accepting and finish in-flight events, then sinks drain).

use std::collections::BTreeMap;
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
use crate::pipeline::{Generation, SharedGeneration};
use crate::reload;
use crate::sinks::SinkContext;
use crate::sources;
use crate::topology;

pub use crate::topology::StartError;

/// A running gateway.
pub struct Gateway {
    generation: SharedGeneration,
    shutdown: CancellationToken,
    sinks: TaskTracker,
    admin: TaskTracker,
    sink_addrs: BTreeMap<String, SocketAddr>,
    admin_addr: Option<SocketAddr>,
    shutdown_timeout: Duration,
    reloader: Arc<reload::Reloader>,
}

impl Gateway {
    /// Starts everything the config names: sinks first, then routes, then sources, so an
    /// event can never arrive before its route and sinks exist.
    pub async fn start(config: Config) -> Result<Gateway, StartError> {
        crate::tls::install_default_provider();
        let mut registry = Registry::default();
        let metrics = Metrics::new(&mut registry);
        let readiness = Readiness::default();
        let shutdown = CancellationToken::new();
        let sink_tracker = TaskTracker::new();
        // Sinks see the generation that routes to them; it is filled in once they exist.
        let generation: SharedGeneration = Default::default();
        let cx = SinkContext {
            metrics: metrics.clone(),
            tracker: sink_tracker.clone(),
            readiness: readiness.clone(),
            generation: Arc::clone(&generation),
        };

        let sink_set = topology::build_sinks(&config, &topology::RunningSinks::new(), &cx).await?;
        let dedup = crate::router::DedupStore::default();
        generation.store(Arc::new(topology::generation(
            1, &config, &sink_set, &metrics, &dedup,
        )?));
        let sink_addrs = sink_set.addrs.clone();
        let config_view = Arc::new(ArcSwap::from_pointee(config.clone()));
        let reloader = Arc::new(reload::Reloader::new(
            Arc::clone(&config_view),
            Arc::clone(&generation),
            sink_set.running,
            cx.clone(),
            metrics.clone(),
            dedup,
        ));

        let base = sources::SourceBase {
            generation: Arc::clone(&generation),
            metrics: metrics.clone(),
            readiness: readiness.clone(),
            shutdown: shutdown.clone(),
        };
        let mut running = std::collections::HashMap::new();
        for (name, source) in &config.sources {
            running.insert(
                name.clone(),
                sources::start(name, source, &base, None).await?,
            );
        }
        reloader.install_sources(base, running).await;

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
            generation,
            shutdown,
            sinks: sink_tracker,
            admin: admin_tracker,
            sink_addrs,
            admin_addr,
            shutdown_timeout: Duration::from_millis(config.shutdown_timeout_ms),
            reloader,
        })
    }

    /// The address a source is bound to (useful with port 0).
    pub fn source_addr(&self, name: &str) -> Option<SocketAddr> {
        self.reloader.source_addr(name)
    }

    /// The address a listening sink (WebSocket push) is bound to.
    pub fn sink_addr(&self, name: &str) -> Option<SocketAddr> {
        self.sink_addrs.get(name).copied()
    }

    /// Applies new configs to this gateway.
    pub fn reloader(&self) -> Arc<reload::Reloader> {
        Arc::clone(&self.reloader)
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Graceful shutdown: stop accepting, let in-flight events finish, drain the sinks, all
    /// within the configured deadline. Returns false if the deadline passed first.
    pub async fn shutdown(self) -> bool {
        let deadline = tokio::time::Instant::now() + self.shutdown_timeout;
        self.shutdown.cancel();
        let sources_done = self.reloader.stop_sources(deadline).await;
        // Dropping the last generation closes the sink queues; sinks then drain and stop.
        self.generation.store(Arc::new(Generation::default()));
        self.reloader.sinks.lock().await.clear();
        drop(self.generation);
        self.sinks.close();
        let sinks_done = tokio::time::timeout_at(deadline, self.sinks.wait())
            .await
            .is_ok();
        self.admin.close();
        let _ = tokio::time::timeout_at(deadline, self.admin.wait()).await;
        sources_done && sinks_done
    }
}
