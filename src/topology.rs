//! The running topology's building blocks, shared by start and reload: the sinks of a config
//! (reusing those that did not change), the generation compiled from them, and why either
//! failed.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

use crate::config::{Config, SinkConfig};
use crate::metrics::Metrics;
use crate::pipeline::{Generation, SinkHandle};
use crate::router::RouteTable;
use crate::sinks::{self, SinkContext};
use crate::sources;

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
