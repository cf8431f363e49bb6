//! The router: which sinks an event from a given source goes to.
//!
//! Routes are compiled from the config once per generation. For each event the router
//! evaluates the routes of its source and collects the set of sinks, each sink once however
//! many routes name it.

mod dedup;
mod filter;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;

pub use dedup::{DedupConfig, DedupStore, DedupWindow};
pub use filter::{Filter, FilterConfig, Key, Op, Subject};

use crate::metrics::Metrics;

/// One compiled route.
#[derive(Debug)]
pub struct Route {
    pub name: Arc<str>,
    pub from: Vec<String>,
    pub to: Vec<String>,
    /// Indexes into the generation's sink list.
    sinks: Vec<usize>,
    filter: Filter,
    /// Events this route matched (shared across generations by route name).
    pub matched: Counter,
    /// CESQL evaluation errors, counted as "no match".
    pub errors: Counter,
    /// Keys this route delivered recently, when it deduplicates.
    dedup: Option<Arc<DedupWindow>>,
}

/// All routes of one config generation, indexed by source.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
    by_source: HashMap<String, Vec<usize>>,
}

/// The sinks one event goes to, by index, each once.
#[derive(Debug, Default, Clone)]
pub struct SinkSet {
    sinks: Vec<usize>,
    /// A deduplicating route matched and dropped the event as a repeat.
    pub deduplicated: bool,
    /// Keys to remember once the event is acknowledged, for deduplicating routes.
    pub dedup_keys: Vec<(Arc<DedupWindow>, u64)>,
    /// The routes that matched and sent the event on (not those that dropped it as a repeat),
    /// when the caller asked for their names (for tracing).
    routes: Vec<Arc<str>>,
}

impl SinkSet {
    pub fn is_empty(&self) -> bool {
        self.sinks.is_empty()
    }
    /// No route matched (a route that dropped a repeat matched).
    pub fn is_unrouted(&self) -> bool {
        self.sinks.is_empty() && !self.deduplicated
    }
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.sinks.iter().copied()
    }
    /// How many sinks.
    pub fn len(&self) -> usize {
        self.sinks.len()
    }
    /// The names of the routes that matched, if [`RouteTable::select`] was asked for them.
    pub fn route_names(&self) -> Vec<&str> {
        self.routes.iter().map(|r| &**r).collect()
    }
    fn insert(&mut self, sink: usize) {
        if !self.sinks.contains(&sink) {
            self.sinks.push(sink);
        }
    }
}

impl Route {
    /// How many top-level filters the route has.
    pub fn filter_count(&self) -> usize {
        match &self.filter {
            Filter::All(list) => list.len(),
            _ => 1,
        }
    }
}

/// A route: events of its sources that match its filters go to its sinks.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Source names.
    pub from: Vec<String>,
    /// Sink names.
    pub to: Vec<String>,
    /// All must match (an implicit `all`).
    #[serde(default)]
    pub filters: Vec<FilterConfig>,
    /// Drops repeats of (`source`, `id`) this route already delivered (docs/delivery.md).
    #[serde(default)]
    pub dedup: Option<DedupConfig>,
}

impl RouteTable {
    /// Compiles the routes of a checked config. `sink_index` gives each sink's position.
    pub fn build(
        routes: &BTreeMap<String, RouteConfig>,
        sink_index: &HashMap<String, usize>,
        metrics: &Metrics,
        dedup: &DedupStore,
    ) -> Result<RouteTable, String> {
        let mut table = RouteTable::default();
        for (name, route) in routes {
            let filter = Filter::All(
                route
                    .filters
                    .iter()
                    .map(Filter::compile)
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("route `{name}`: {e}"))?,
            );
            let sinks = route
                .to
                .iter()
                .map(|s| {
                    sink_index
                        .get(s)
                        .copied()
                        .ok_or_else(|| format!("route `{name}`: unknown sink `{s}`"))
                })
                .collect::<Result<_, _>>()?;
            let index = table.routes.len();
            for source in &route.from {
                table
                    .by_source
                    .entry(source.clone())
                    .or_default()
                    .push(index);
            }
            table.routes.push(Route {
                name: name.as_str().into(),
                from: route.from.clone(),
                to: route.to.clone(),
                sinks,
                filter,
                matched: metrics
                    .route_matched
                    .get_or_create(&Metrics::route(name))
                    .clone(),
                errors: metrics
                    .route_filter_errors
                    .get_or_create(&Metrics::route(name))
                    .clone(),
                dedup: route.dedup.as_ref().map(|d| dedup.window(name, d, metrics)),
            });
        }
        Ok(table)
    }

    /// The sinks an event from `source` goes to, taking only the `allowed` routes if given.
    /// With `names`, the set also lists the routes that matched.
    pub fn select(
        &self,
        source: &str,
        subject: Subject<'_>,
        allowed: Option<&[String]>,
        names: bool,
    ) -> SinkSet {
        let mut set = SinkSet::default();
        let Some(routes) = self.by_source.get(source) else {
            return set;
        };
        for &i in routes {
            let route = &self.routes[i];
            if allowed.is_some_and(|names| !names.iter().any(|n| **n == *route.name)) {
                continue;
            }
            match route.filter.matches(subject) {
                Ok(true) => {
                    route.matched.inc();
                    if let Some(window) = &route.dedup {
                        let key = window.key(subject.event.source(), subject.event.id());
                        if window.contains(key) {
                            window.deduplicated.inc();
                            set.deduplicated = true;
                            continue;
                        }
                        set.dedup_keys.push((Arc::clone(window), key));
                    }
                    if names {
                        set.routes.push(Arc::clone(&route.name));
                    }
                    for &sink in &route.sinks {
                        set.insert(sink);
                    }
                }
                Ok(false) => {}
                Err(_) => {
                    route.errors.inc();
                }
            }
        }
        set
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }
}
