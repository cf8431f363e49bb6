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

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Mutex;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::topology::{StartError, Topology};

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

/// What started a reload, for its log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// `SIGHUP` to the process.
    Signal,
    /// `POST /-/reload` on the admin API.
    Admin,
    /// The file watch saw the config or a file it references change.
    Watch,
    /// A call of [`Reloader::reload`] (embedding code, tests).
    Call,
}

impl std::fmt::Display for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Trigger::Signal => "SIGHUP",
            Trigger::Admin => "POST /-/reload",
            Trigger::Watch => "file watch",
            Trigger::Call => "API call",
        })
    }
}

/// "generation 3; added sink:a; changed route:all", or that nothing changed.
fn summary(report: &Report) -> String {
    if report.changes.is_empty() {
        return format!("nothing changed (generation {} stays)", report.generation);
    }
    let mut out = format!("generation {}", report.generation);
    for (what, list) in [
        ("added", &report.changes.added),
        ("removed", &report.changes.removed),
        ("changed", &report.changes.changed),
    ] {
        if !list.is_empty() {
            out.push_str(&format!("; {what} {}", list.join(", ")));
        }
    }
    out
}

/// Applies new configs to a running gateway, one at a time.
pub struct Reloader {
    config: Arc<ArcSwap<Config>>,
    topology: Arc<Topology>,
    /// Held for the whole of a reload: one at a time.
    busy: Mutex<()>,
    reloads_ok: Counter,
    reloads_failed: Counter,
    generation_gauge: Gauge,
}

impl Reloader {
    pub(crate) fn new(
        config: Arc<ArcSwap<Config>>,
        topology: Arc<Topology>,
        metrics: &Metrics,
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
        generation_gauge.set(topology.generation().load().number as i64);
        Reloader {
            config,
            topology,
            busy: Mutex::new(()),
            reloads_ok,
            reloads_failed,
            generation_gauge,
        }
    }

    /// The address a listening source is bound to.
    pub fn source_addr(&self, name: &str) -> Option<SocketAddr> {
        self.topology.source_addr(name)
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
            Ok(config) => Some(self.reload_by(config, Trigger::Watch).await),
            Err(e) => Some(Err(self.refused(Trigger::Watch, e.into()))),
        }
    }

    /// Reloads from the file the running config came from.
    pub async fn reload_file(&self, trigger: Trigger) -> Result<Report, ReloadError> {
        let path = self.config.load().origin.path.clone();
        match Config::load(&path) {
            Ok(config) => self.reload_by(config, trigger).await,
            Err(e) => Err(self.refused(trigger, e.into())),
        }
    }

    /// Validates and applies `new`; on any error nothing changes.
    pub async fn reload(&self, new: Config) -> Result<Report, ReloadError> {
        self.reload_by(new, Trigger::Call).await
    }

    async fn reload_by(&self, new: Config, trigger: Trigger) -> Result<Report, ReloadError> {
        match self.apply(new).await {
            Ok(r) => {
                self.reloads_ok.inc();
                self.generation_gauge.set(r.generation as i64);
                let list = |l: &[String]| l.join(", ");
                tracing::info!(
                    trigger = %trigger,
                    generation = r.generation,
                    added = list(&r.changes.added),
                    removed = list(&r.changes.removed),
                    changed = list(&r.changes.changed),
                    "config reloaded by {trigger}: {}",
                    summary(&r)
                );
                Ok(r)
            }
            Err(e) => Err(self.refused(trigger, e)),
        }
    }

    /// Counts and logs a refused reload.
    fn refused(&self, trigger: Trigger, e: ReloadError) -> ReloadError {
        self.reloads_failed.inc();
        tracing::error!(trigger = %trigger, error = %e, "reload by {trigger} refused; the running config stays");
        e
    }

    async fn apply(&self, new: Config) -> Result<Report, ReloadError> {
        let _one_at_a_time = self.busy.lock().await;
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
        let generation = if changes.is_empty() {
            // Nothing to apply (a comment, or a second trigger for the same change): the
            // generation stays.
            self.topology.generation().load().number
        } else {
            self.topology.apply(&new).await?
        };
        let hash = new.origin.hash.clone();
        self.config.store(Arc::new(new));
        Ok(Report {
            generation,
            hash,
            changes,
        })
    }
}
