//! The router: which sinks an event from a given source goes to.
//!
//! Routes are compiled from the config once per generation. For each event the router
//! evaluates the routes of its source and collects the set of sinks, each sink once however
//! many routes name it.

mod filter;

use std::collections::HashMap;
use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;

pub use filter::{Filter, FilterConfig, Key, Op, Subject};

use crate::config::Config;
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
}

/// All routes of one config generation, indexed by source.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
    by_source: HashMap<String, Vec<usize>>,
}

/// The sinks one event goes to, by index, each once.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SinkSet(Vec<usize>);

impl SinkSet {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.0.iter().copied()
    }
    fn insert(&mut self, sink: usize) {
        if !self.0.contains(&sink) {
            self.0.push(sink);
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

impl RouteTable {
    /// Compiles the routes of a checked config. `sink_index` gives each sink's position.
    pub fn build(
        config: &Config,
        sink_index: &HashMap<String, usize>,
        metrics: &Metrics,
    ) -> Result<RouteTable, String> {
        let mut table = RouteTable::default();
        for (name, route) in &config.routes {
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
            });
        }
        Ok(table)
    }

    /// The sinks an event from `source` goes to, taking only the `allowed` routes if given.
    pub fn select(
        &self,
        source: &str,
        subject: Subject<'_>,
        allowed: Option<&[String]>,
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
