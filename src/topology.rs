//! The running topology: every source and sink of the gateway and the generation that routes
//! between them, owned by one [`Topology`]. [`Topology::start`] builds it from a config,
//! [`Topology::apply`] changes it to another (what a reload does once the new config is
//! validated), [`Topology::shutdown`] stops it under one deadline.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::Mutex;

use crate::config::{Config, SinkConfig};
use crate::metrics::Metrics;
use crate::pipeline::{Generation, SharedGeneration, SinkHandle};
use crate::router::{DedupStore, RouteTable};
use crate::sinks::{self, SinkContext};
use crate::sources::{self, SourceBase};

/// Every running component: sources, sinks, and the generation between them.
pub struct Topology {
    generation: SharedGeneration,
    sinks: Mutex<RunningSinks>,
    sources: Mutex<HashMap<String, sources::Running>>,
    source_addrs: std::sync::Mutex<BTreeMap<String, SocketAddr>>,
    sink_addrs: BTreeMap<String, SocketAddr>,
    base: SourceBase,
    cx: SinkContext,
    metrics: Metrics,
    dedup: DedupStore,
}

impl Topology {
    /// Starts everything `config` names: sinks first, then routes (generation 1), then
    /// sources, so an event can never arrive before its route and sinks exist. `base` and
    /// `cx` share the generation the sources and sinks see.
    pub async fn start(
        config: &Config,
        base: SourceBase,
        cx: SinkContext,
        metrics: Metrics,
    ) -> Result<Topology, StartError> {
        let generation = Arc::clone(&base.generation);
        let sink_set = build_sinks(config, &RunningSinks::new(), &cx).await?;
        let dedup = DedupStore::default();
        generation.store(Arc::new(self::generation(
            1, config, &sink_set, &metrics, &dedup,
        )?));
        let mut running = HashMap::new();
        let mut source_addrs = BTreeMap::new();
        for (name, source) in &config.sources {
            let r = sources::start(name, source, &base, None).await?;
            if let Some(a) = r.addr {
                source_addrs.insert(name.clone(), a);
            }
            running.insert(name.clone(), r);
        }
        Ok(Topology {
            generation,
            sinks: Mutex::new(sink_set.running),
            sources: Mutex::new(running),
            source_addrs: std::sync::Mutex::new(source_addrs),
            sink_addrs: sink_set.addrs,
            base,
            cx,
            metrics,
            dedup,
        })
    }

    /// The generation in force.
    pub fn generation(&self) -> &SharedGeneration {
        &self.generation
    }

    /// The address a listening source is bound to.
    pub fn source_addr(&self, name: &str) -> Option<SocketAddr> {
        self.source_addrs
            .lock()
            .expect("addresses")
            .get(name)
            .copied()
    }

    /// The address a listening sink (WebSocket push) started with is bound to.
    pub fn sink_addr(&self, name: &str) -> Option<SocketAddr> {
        self.sink_addrs.get(name).copied()
    }

    /// Changes the running components to those of `new` (a checked config that differs from
    /// the running one) and returns the new generation's number; on an error nothing
    /// changed. Sources that swap their settings in place are prepared and sources that start
    /// anew are checked (their listeners bound) first; then sinks are started (unchanged ones
    /// kept), the generation is swapped in one store, and removed or replaced sources drain
    /// and stop within `new.shutdown_timeout_ms`.
    pub async fn apply(&self, new: &Config) -> Result<u64, StartError> {
        let mut running = self.sinks.lock().await;
        let mut running_sources = self.sources.lock().await;
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
                        let same_address = r.config.listen() == config.listen();
                        let bound = sources::check(name, config, !same_address).await?;
                        replaced.push((name.clone(), bound));
                    }
                },
                None => added.push((name.clone(), sources::check(name, config, true).await?)),
            }
        }
        let sinks = build_sinks(new, &running, &self.cx).await?;
        let number = self.generation.load().number + 1;
        let generation = generation(number, new, &sinks, &self.metrics, &self.dedup)?;
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
        for (name, bound) in replaced.into_iter().chain(added) {
            if let Some(old) = running_sources.remove(&name) {
                if !old.stop(deadline).await {
                    tracing::warn!(source = %name, "replaced source did not finish its in-flight messages in time");
                }
            }
            match sources::start(&name, &new.sources[&name], &self.base, bound).await {
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
        Ok(number)
    }

    /// Stops everything by `deadline`: sources stop taking messages and finish in-flight
    /// ones, then the generation is dropped, which closes the sink queues; sinks drain what
    /// is queued and stop. False if the deadline passed first.
    pub async fn shutdown(&self, deadline: tokio::time::Instant) -> bool {
        self.base.shutdown.cancel();
        let stopping: Vec<_> = self.sources.lock().await.drain().map(|(_, r)| r).collect();
        let sources_done =
            futures_util::future::join_all(stopping.into_iter().map(|r| r.stop(deadline)))
                .await
                .into_iter()
                .all(|done| done);
        self.generation.store(Arc::new(Generation::default()));
        self.sinks.lock().await.clear();
        self.cx.tracker.close();
        let sinks_done = tokio::time::timeout_at(deadline, self.cx.tracker.wait())
            .await
            .is_ok();
        sources_done && sinks_done
    }
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Source(#[from] sources::SourceError),
    #[error("admin: cannot listen on {addr}: {error}")]
    Admin {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error(transparent)]
    Sink(#[from] sinks::SinkError),
    #[error("routes: {0}")]
    Routes(String),
}

/// The sinks of the running generation, by name, with the config they were started from.
pub type RunningSinks = HashMap<String, (SinkConfig, SinkHandle)>;

/// The sink list, index and addresses of a generation.
pub struct SinkSet {
    pub handles: Vec<SinkHandle>,
    pub index: HashMap<String, usize>,
    pub running: RunningSinks,
    pub addrs: BTreeMap<String, SocketAddr>,
}

/// Starts the sinks of `config`, reusing those of `previous` whose config did not change.
/// Dead-letter sinks start first, so the sinks that name them can hold their queues.
pub async fn build_sinks(
    config: &Config,
    previous: &RunningSinks,
    cx: &SinkContext,
) -> Result<SinkSet, StartError> {
    let mut set = SinkSet {
        handles: Vec::new(),
        index: HashMap::new(),
        running: HashMap::new(),
        addrs: BTreeMap::new(),
    };
    let mut order: Vec<(&String, &SinkConfig)> = config.sinks.iter().collect();
    order.sort_by_key(|(_, s)| s.dead_letter().is_some());
    // Sinks started anew here: a sink whose dead-letter sink is one of them starts anew too,
    // so that it holds the new dead-letter queue, not the old one.
    let mut started: std::collections::HashSet<&str> = std::collections::HashSet::new();
    for (name, sink) in order {
        let reused = previous
            .get(name)
            .filter(|(old, _)| old == sink)
            .filter(|_| sink.dead_letter().is_none_or(|d| !started.contains(d)))
            .map(|(_, h)| h.clone());
        if reused.is_none() {
            started.insert(name);
        }
        let handle = match reused {
            Some(h) => h,
            None => {
                // Local sinks are ready once started; broker sinks report readiness
                // themselves while connected.
                let ready = !matches!(
                    sink,
                    SinkConfig::Amqp(_) | SinkConfig::Mqtt(_) | SinkConfig::Nats(_)
                );
                cx.set_ready(name, ready);
                let dead_letter = sink
                    .dead_letter()
                    .and_then(|d| set.running.get(d))
                    .map(|(_, h)| h);
                let (handle, addr) = sinks::start(name, sink, dead_letter, cx).await?;
                if let Some(addr) = addr {
                    tracing::info!(sink = %name, kind = sink.kind(), %addr, "sink listening");
                    set.addrs.insert(name.clone(), addr);
                }
                handle
            }
        };
        set.index.insert(name.clone(), set.handles.len());
        set.handles.push(handle.clone());
        set.running.insert(name.clone(), (sink.clone(), handle));
    }
    Ok(set)
}

/// Builds a generation from a config and its sinks.
pub fn generation(
    number: u64,
    config: &Config,
    sinks: &SinkSet,
    metrics: &Metrics,
    dedup: &crate::router::DedupStore,
) -> Result<Generation, StartError> {
    let routes = RouteTable::build(&config.routes, &sinks.index, metrics, dedup)
        .map_err(StartError::Routes)?;
    Ok(Generation {
        number,
        routes,
        sinks: sinks.handles.clone(),
        policies: crate::security::policy::Policies::new(config.policies.clone()),
    })
}
