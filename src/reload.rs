//! Config reload: validate, then swap — never half old, half new.
//!
//! A reload parses and checks the new file, starts the sinks that are new or changed (an
//! unchanged sink keeps its queue and connection), compiles routes and policies, and then
//! swaps the generation in one atomic store. Events already in flight finish under the
//! generation that accepted them; a removed or replaced sink drains its queue once the last
//! generation that names it is gone, then stops. If any step fails, nothing changes and the
//! error is reported.
//!
//! Sources change live too. A listening source (HTTP, WebSocket) that stays on its address
//! swaps its settings — TLS material, authentication, limits, templates — in place: open
//! connections are untouched, the next request or handshake uses the new settings. Any other
//! changed source is drained (in-flight messages delivered and acknowledged) and stopped, then
//! started anew; a removed one is drained and stopped; an added one starts after the swap. A
//! listener on a new address is bound before anything changes, so a taken port refuses the
//! reload. The admin listener and logging are not changed live: a reload that changes them is
//! refused with a message saying so.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Mutex;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::pipeline::SharedGeneration;
use crate::sinks::SinkContext;
use crate::sources::{self, SourceBase};
use crate::topology::{build_sinks, generation, RunningSinks, StartError};

/// What a reload changed, by component (`sink:orders`, `route:everything`, `policies`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Changes {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// The components two configs differ in.
pub fn diff(old: &Config, new: &Config) -> Changes {
    let mut c = Changes::default();
    fn section<T: PartialEq>(
        c: &mut Changes,
        kind: &str,
        old: &BTreeMap<String, T>,
        new: &BTreeMap<String, T>,
    ) {
        for (name, value) in new {
            match old.get(name) {
                None => c.added.push(format!("{kind}:{name}")),
                Some(o) if o != value => c.changed.push(format!("{kind}:{name}")),
                Some(_) => {}
            }
        }
        for name in old.keys().filter(|n| !new.contains_key(*n)) {
            c.removed.push(format!("{kind}:{name}"));
        }
    }
    section(&mut c, "source", &old.sources, &new.sources);
    section(&mut c, "sink", &old.sinks, &new.sinks);
    // A sink holds its dead-letter sink's queue: when that sink starts anew, so does its user.
    for (name, sink) in &new.sinks {
        let key = format!("sink:{name}");
        let target_restarts = sink.dead_letter().is_some_and(|d| {
            let d = format!("sink:{d}");
            c.changed.contains(&d) || c.added.contains(&d)
        });
        if target_restarts && old.sinks.contains_key(name) && !c.changed.contains(&key) {
            c.changed.push(key);
        }
    }
    section(&mut c, "route", &old.routes, &new.routes);
    if old.policies != new.policies {
        c.changed.push("policies".into());
    }
    if old.admin != new.admin {
        c.changed.push("admin".into());
    }
    if old.log != new.log {
        c.changed.push("log".into());
    }
    if old.shutdown_timeout_ms != new.shutdown_timeout_ms {
        c.changed.push("shutdown_timeout_ms".into());
    }
    c
}

/// Why a reload was refused. The running config stays.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("{0}")]
    Start(#[from] StartError),
    #[error("{0}")]
    Source(#[from] crate::sources::SourceError),
    #[error("{0} cannot change without a restart yet; nothing was applied")]
    NeedsRestart(String),
}

/// The outcome of a successful reload.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub generation: u64,
    pub hash: String,
    #[serde(flatten)]
    pub changes: Changes,
}

/// Applies new configs to a running gateway, one at a time.
pub struct Reloader {
    pub(crate) config: Arc<ArcSwap<Config>>,
    pub(crate) generation: SharedGeneration,
    pub(crate) sinks: Mutex<RunningSinks>,
    sources: Mutex<HashMap<String, sources::Running>>,
    source_base: std::sync::OnceLock<SourceBase>,
    source_addrs: std::sync::Mutex<BTreeMap<String, SocketAddr>>,
    pub(crate) cx: SinkContext,
    pub(crate) metrics: Metrics,
    dedup: crate::router::DedupStore,
    reloads_ok: Counter,
    reloads_failed: Counter,
    generation_gauge: Gauge,
}

impl Reloader {
    pub(crate) fn new(
        config: Arc<ArcSwap<Config>>,
        generation: SharedGeneration,
        sinks: RunningSinks,
        cx: SinkContext,
        metrics: Metrics,
        dedup: crate::router::DedupStore,
    ) -> Reloader {
        let reloads_ok = metrics
            .reloads
            .get_or_create(&crate::metrics::ResultLabels { result: "success" })
            .clone();
        let reloads_failed = metrics
            .reloads
            .get_or_create(&crate::metrics::ResultLabels { result: "failure" })
            .clone();
        let generation_gauge = metrics.config_generation.clone();
        generation_gauge.set(generation.load().number as i64);
        Reloader {
            config,
            generation,
            sinks: Mutex::new(sinks),
            sources: Mutex::new(HashMap::new()),
            source_base: std::sync::OnceLock::new(),
            source_addrs: std::sync::Mutex::new(BTreeMap::new()),
            cx,
            metrics,
            dedup,
            reloads_ok,
            reloads_failed,
            generation_gauge,
        }
    }

    /// Hands the sources the gateway started to the reloader, which owns them from then on.
    pub(crate) async fn install_sources(
        &self,
        base: SourceBase,
        running: HashMap<String, sources::Running>,
    ) {
        let _ = self.source_base.set(base);
        {
            let mut addrs = self.source_addrs.lock().expect("addresses");
            for (name, r) in &running {
                if let Some(a) = r.addr {
                    addrs.insert(name.clone(), a);
                }
            }
        }
        *self.sources.lock().await = running;
    }

    /// The address a listening source is bound to.
    pub fn source_addr(&self, name: &str) -> Option<SocketAddr> {
        self.source_addrs
            .lock()
            .expect("addresses")
            .get(name)
            .copied()
    }

    /// Stops every source (gateway shutdown); false if `deadline` passed first.
    pub(crate) async fn stop_sources(&self, deadline: tokio::time::Instant) -> bool {
        let running: Vec<_> = self.sources.lock().await.drain().map(|(_, r)| r).collect();
        futures_util::future::join_all(running.into_iter().map(|r| r.stop(deadline)))
            .await
            .into_iter()
            .all(|done| done)
    }

    /// The config in force.
    pub fn current(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// Reloads from the config file unless it and the files it references are as they were
    /// (the file watch: a touched or rewritten-but-equal file changes nothing).
    pub async fn reload_file_if_changed(&self) -> Option<Result<Report, ReloadError>> {
        let current = self.config.load_full();
        match Config::load(&current.origin.path) {
            Ok(config) if config.origin.hash == current.origin.hash => None,
            Ok(config) => Some(self.reload(config).await),
            Err(e) => {
                self.reloads_failed.inc();
                tracing::error!(error = %e, "reload refused; the running config stays");
                Some(Err(e.into()))
            }
        }
    }

    /// Reloads from the file the running config came from.
    pub async fn reload_file(&self) -> Result<Report, ReloadError> {
        let path = self.config.load().origin.path.clone();
        match Config::load(&path) {
            Ok(config) => self.reload(config).await,
            Err(e) => {
                self.reloads_failed.inc();
                tracing::error!(error = %e, "reload refused; the running config stays");
                Err(e.into())
            }
        }
    }

    /// Validates and applies `new`; on any error nothing changes.
    pub async fn reload(&self, new: Config) -> Result<Report, ReloadError> {
        let result = self.apply(new).await;
        match &result {
            Ok(r) => {
                self.reloads_ok.inc();
                self.generation_gauge.set(r.generation as i64);
                tracing::info!(generation = r.generation, added = ?r.changes.added, removed = ?r.changes.removed, changed = ?r.changes.changed, "config reloaded");
            }
            Err(e) => {
                self.reloads_failed.inc();
                tracing::error!(error = %e, "reload refused; the running config stays");
            }
        }
        result
    }

    async fn apply(&self, new: Config) -> Result<Report, ReloadError> {
        let mut running = self.sinks.lock().await;
        let mut running_sources = self.sources.lock().await;
        let old = self.config.load_full();
        let changes = diff(&old, &new);
        let fixed: Vec<&String> = changes
            .added
            .iter()
            .chain(&changes.removed)
            .chain(&changes.changed)
            .filter(|c| *c == "admin" || *c == "log")
            .collect();
        if !fixed.is_empty() {
            let names: Vec<&str> = fixed.iter().map(|s| s.as_str()).collect();
            return Err(ReloadError::NeedsRestart(names.join(", ")));
        }
        if changes.is_empty() {
            // Nothing to apply (a comment, or a second trigger for the same change): the
            // generation stays.
            let generation = self.generation.load().number;
            let hash = new.origin.hash.clone();
            self.config.store(Arc::new(new));
            return Ok(Report {
                generation,
                hash,
                changes,
            });
        }
        // Sources: build what swaps in place, check what starts anew — nothing changes yet.
        let mut in_place = Vec::new();
        let mut replaced = Vec::new();
        let mut added = Vec::new();
        for (name, config) in &new.sources {
            match running_sources.get(name) {
                Some(r) if &r.config == config => {}
                Some(r) => match r.prepare_in_place(config) {
                    Some(prepared) => in_place.push((name.clone(), prepared?)),
                    None => {
                        // The old instance holds its address until it stops: bind only a
                        // listener that moves.
                        let same_address = listen_of(&r.config) == listen_of(config);
                        let bound = sources::check(name, config, !same_address).await?;
                        replaced.push((name.clone(), bound));
                    }
                },
                None => added.push((name.clone(), sources::check(name, config, true).await?)),
            }
        }
        let sinks = build_sinks(&new, &running, &self.cx).await?;
        let number = self.generation.load().number + 1;
        let generation = generation(number, &new, &sinks, &self.metrics, &self.dedup)?;
        // The switch: one store; events already in flight keep the generation they loaded.
        self.generation.store(Arc::new(generation));
        for (name, prepared) in in_place {
            if let Some(r) = running_sources.get_mut(&name) {
                if let Some(live) = &r.live {
                    prepared.commit(live);
                }
                r.config = new.sources[&name].clone();
            }
        }
        let deadline =
            tokio::time::Instant::now() + std::time::Duration::from_millis(new.shutdown_timeout_ms);
        let removed: Vec<String> = running_sources
            .keys()
            .filter(|n| !new.sources.contains_key(*n))
            .cloned()
            .collect();
        for name in removed {
            if let Some(r) = running_sources.remove(&name) {
                if !r.stop(deadline).await {
                    tracing::warn!(source = %name, "removed source did not finish its in-flight messages in time");
                }
            }
            self.cx.readiness.remove(&format!("source:{name}"));
            self.source_addrs.lock().expect("addresses").remove(&name);
        }
        let base = self.source_base.get().cloned();
        for (name, bound) in replaced.into_iter().chain(added) {
            if let Some(old) = running_sources.remove(&name) {
                if !old.stop(deadline).await {
                    tracing::warn!(source = %name, "replaced source did not finish its in-flight messages in time");
                }
            }
            let Some(base) = &base else { continue };
            match sources::start(&name, &new.sources[&name], base, bound).await {
                Ok(r) => {
                    let mut addrs = self.source_addrs.lock().expect("addresses");
                    match r.addr {
                        Some(a) => addrs.insert(name.clone(), a),
                        None => addrs.remove(&name),
                    };
                    drop(addrs);
                    running_sources.insert(name, r);
                }
                // Checked above; what is left (a port taken since) leaves the source stopped.
                Err(e) => tracing::error!(source = %name, error = %e, "source could not start"),
            }
        }
        for name in running.keys().filter(|n| !sinks.running.contains_key(*n)) {
            self.cx.readiness.remove(&format!("sink:{name}"));
        }
        *running = sinks.running;
        let hash = new.origin.hash.clone();
        self.config.store(Arc::new(new));
        Ok(Report {
            generation: number,
            hash,
            changes,
        })
    }
}

fn listen_of(config: &crate::config::SourceConfig) -> Option<SocketAddr> {
    match config {
        crate::config::SourceConfig::Http(c) => Some(c.listen),
        crate::config::SourceConfig::Websocket(c) => Some(c.listen),
        _ => None,
    }
}
