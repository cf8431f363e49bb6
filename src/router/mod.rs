//! The router: which sinks an event from a given source goes to.
//!
//! Routes are compiled from the config once per generation. For each event the router
//! evaluates the routes of its source and collects the set of sinks, each sink once however
//! many routes name it.

mod dedup;
mod explain;
mod filter;
mod lint;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;

pub use dedup::{DedupConfig, DedupStore, DedupWindow};
pub use explain::explain;
pub use filter::{
    data_text, json_pointer, DataCache, Failure, Filter, FilterConfig, Key, OneOrMany, Pairs,
    Subject, Test,
};
pub use lint::lint;

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
    by_source: HashMap<String, SourceRoutes>,
}

/// The routes of one source and their index.
///
/// Each route is filed under one of its conditions that every match needs (its *anchor*): an
/// `exact` test (filed under each of its values) or else a `prefix` test (under each prefix)
/// of its top-level conjunction. An event's candidates are the routes filed under its value
/// of each anchored name, plus the routes with no anchor; only the candidates are evaluated,
/// in route order. A route that is not a candidate fails its anchor, so the result is the
/// same as evaluating every route.
#[derive(Debug, Default)]
struct SourceRoutes {
    /// Indexes into [`RouteTable::routes`], in evaluation order.
    order: Vec<usize>,
    /// Per name: value → positions in `order`.
    exact: Vec<(Key, Postings)>,
    /// Per name: prefix → positions in `order`, and the distinct prefix lengths (ascending).
    prefix: Vec<(Key, Postings, Vec<usize>)>,
    /// Positions of routes with no anchor: always candidates.
    always: Vec<u32>,
}

/// Value (or prefix) → positions of the routes filed under it.
type Postings = HashMap<Box<str>, Vec<u32>>;

/// How a route table is indexed (`ferry check` prints it).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct IndexStats {
    pub routes: usize,
    /// Entries in the `exact` maps (route × value).
    pub exact_entries: usize,
    /// Entries in the `prefix` maps.
    pub prefix_entries: usize,
    /// Routes evaluated for every event of their sources (no anchor), counted per source.
    pub unindexed: usize,
}

/// Whether (and why not) one route matched an event: `POST /-/routes/explain`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Explanation {
    pub route: String,
    pub matched: bool,
    /// The first filter that did not match, and the value it saw.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed: Option<Failure>,
    pub to: Vec<String>,
}

/// The anchor of a filter: a test every match passes, that the index can look up.
enum Anchor<'f> {
    Exact(&'f Key, &'f [Box<str>]),
    Prefix(&'f Key, &'f [Box<str>]),
}

fn anchor(filter: &Filter) -> Option<Anchor<'_>> {
    fn walk<'f>(f: &'f Filter, exact: &mut Option<Anchor<'f>>, prefix: &mut Option<Anchor<'f>>) {
        match f {
            Filter::All(list) => {
                for f in list {
                    walk(f, exact, prefix);
                }
            }
            Filter::Compare { key, test } if !matches!(key, Key::Data(_)) => match test {
                Test::Exact(v) if exact.is_none() => *exact = Some(Anchor::Exact(key, v)),
                Test::Prefix(v) if prefix.is_none() => *prefix = Some(Anchor::Prefix(key, v)),
                _ => {}
            },
            _ => {}
        }
    }
    let (mut exact, mut prefix) = (None, None);
    walk(filter, &mut exact, &mut prefix);
    exact.or(prefix)
}

impl SourceRoutes {
    fn add(&mut self, index: usize, filter: &Filter) {
        let position = u32::try_from(self.order.len()).unwrap_or(u32::MAX);
        self.order.push(index);
        match anchor(filter) {
            Some(Anchor::Exact(key, values)) => {
                let map = match self.exact.iter().position(|(k, _)| k == key) {
                    Some(i) => &mut self.exact[i].1,
                    None => {
                        self.exact.push((key.clone(), HashMap::new()));
                        &mut self.exact.last_mut().expect("just pushed").1
                    }
                };
                for v in values {
                    let list = map.entry(v.clone()).or_default();
                    if list.last() != Some(&position) {
                        list.push(position);
                    }
                }
            }
            Some(Anchor::Prefix(key, values)) => {
                let entry = match self.prefix.iter().position(|(k, _, _)| k == key) {
                    Some(i) => &mut self.prefix[i],
                    None => {
                        self.prefix.push((key.clone(), HashMap::new(), Vec::new()));
                        self.prefix.last_mut().expect("just pushed")
                    }
                };
                for v in values {
                    let list = entry.1.entry(v.clone()).or_default();
                    if list.last() != Some(&position) {
                        list.push(position);
                    }
                    if let Err(at) = entry.2.binary_search(&v.len()) {
                        entry.2.insert(at, v.len());
                    }
                }
            }
            None => self.always.push(position),
        }
    }

    /// The positions of the routes an event may match, ascending.
    fn candidates(&self, subject: Subject<'_>) -> Vec<u32> {
        let mut out = self.always.clone();
        for (key, map) in &self.exact {
            if let Some(value) = key.text(subject) {
                if let Some(list) = map.get(&*value) {
                    out.extend_from_slice(list);
                }
            }
        }
        for (key, map, lengths) in &self.prefix {
            if let Some(value) = key.text(subject) {
                for &len in lengths {
                    let Some(prefix) = value.get(..len) else {
                        // Longer than the value, or not on a character boundary.
                        if len > value.len() {
                            break;
                        }
                        continue;
                    };
                    if let Some(list) = map.get(prefix) {
                        out.extend_from_slice(list);
                    }
                }
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }
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
                    .add(index, &filter);
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
        if routes.always.len() == routes.order.len() {
            // Nothing indexed: every route is a candidate.
            for &i in &routes.order {
                self.evaluate(i, subject, allowed, names, &mut set);
            }
        } else {
            for position in routes.candidates(subject) {
                self.evaluate(
                    routes.order[position as usize],
                    subject,
                    allowed,
                    names,
                    &mut set,
                );
            }
        }
        set
    }

    /// Evaluates every route of the source in order, without the index (the reference the
    /// index is tested against).
    #[cfg(test)]
    fn select_naive(&self, source: &str, subject: Subject<'_>) -> SinkSet {
        let mut set = SinkSet::default();
        for &i in self.by_source.get(source).map_or(&[][..], |r| &r.order) {
            self.evaluate(i, subject, None, true, &mut set);
        }
        set
    }

    fn evaluate(
        &self,
        i: usize,
        subject: Subject<'_>,
        allowed: Option<&[String]>,
        names: bool,
        set: &mut SinkSet,
    ) {
        let route = &self.routes[i];
        if allowed.is_some_and(|names| !names.iter().any(|n| **n == *route.name)) {
            return;
        }
        match route.filter.matches(subject) {
            Ok(true) => {
                route.matched.inc();
                if let Some(window) = &route.dedup {
                    let key = window.key(subject.event.source(), subject.event.id());
                    if window.contains(key) {
                        window.deduplicated.inc();
                        set.deduplicated = true;
                        return;
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

    /// Whether each route of `source` matches the event, and why not; `only_matching` leaves
    /// out those that do not. Counters are not touched.
    pub fn explain(
        &self,
        source: &str,
        subject: Subject<'_>,
        only_matching: bool,
    ) -> Vec<Explanation> {
        let order = self.by_source.get(source).map_or(&[][..], |r| &r.order[..]);
        order
            .iter()
            .map(|&i| {
                let route = &self.routes[i];
                let matched = route.filter.matches(subject) == Ok(true);
                // A CESQL error anywhere fails the whole route, as it does when routing.
                let failed = (!matched).then(|| {
                    route.filter.explain(subject).unwrap_or_else(|| Failure {
                        filter: "cesql".into(),
                        saw: "an evaluation error, which fails the whole route".into(),
                    })
                });
                Explanation {
                    route: route.name.to_string(),
                    matched,
                    failed,
                    to: route.to.clone(),
                }
            })
            .filter(|e| e.matched || !only_matching)
            .collect()
    }

    /// The names of the sources that have routes.
    pub fn sources(&self) -> impl Iterator<Item = &str> {
        self.by_source.keys().map(String::as_str)
    }

    /// How the table is indexed.
    pub fn stats(&self) -> IndexStats {
        let mut stats = IndexStats {
            routes: self.routes.len(),
            ..IndexStats::default()
        };
        for r in self.by_source.values() {
            stats.exact_entries += r
                .exact
                .iter()
                .map(|(_, m)| m.values().map(Vec::len).sum::<usize>())
                .sum::<usize>();
            stats.prefix_entries += r
                .prefix
                .iter()
                .map(|(_, m, _)| m.values().map(Vec::len).sum::<usize>())
                .sum::<usize>();
            stats.unindexed += r.always.len();
        }
        stats
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::{CloudEvent, EventBuilder, ExtensionValue, TransportMetadata};
    use proptest::prelude::*;

    const TYPES: [&str; 4] = ["com.a", "com.b", "com.c", "org.d"];
    const SOURCES: [&str; 4] = ["/x", "/x/y", "/x/yz", "/z"];
    /// Subjects, some non-ASCII: prefix lengths fall inside multi-byte characters.
    const SUBJECTS: [&str; 4] = ["s1", "s2", "é1", "éé"];

    fn leaf() -> impl Strategy<Value = String> {
        let ty = || prop::sample::select(TYPES.to_vec());
        let src = || prop::sample::select(vec!["/", "/x", "/x/", "/x/y", "/z", "/q"]);
        prop_oneof![
            ty().prop_map(|t| format!(r#"{{ exact = {{ type = "{t}" }} }}"#)),
            (ty(), ty()).prop_map(|(a, b)| format!(r#"{{ exact = {{ type = ["{a}", "{b}"] }} }}"#)),
            src().prop_map(|s| format!(r#"{{ prefix = {{ source = "{s}" }} }}"#)),
            (src(), src())
                .prop_map(|(a, b)| format!(r#"{{ prefix = {{ source = ["{a}", "{b}"] }} }}"#)),
            prop::sample::select(vec![".a", ".b", "d"])
                .prop_map(|s| format!(r#"{{ suffix = {{ type = "{s}" }} }}"#)),
            any::<bool>().prop_map(|b| format!(r#"{{ exists = {{ subject = {b} }} }}"#)),
            src().prop_map(|s| format!(r#"{{ anything_but = {{ source = "{s}" }} }}"#)),
            prop::sample::select(vec!["com.*", "*.a", "*"])
                .prop_map(|w| format!(r#"{{ wildcard = {{ type = "{w}" }} }}"#)),
            (0i32..6).prop_map(|n| format!(r#"{{ numeric = {{ priority = {{ ">=" = {n} }} }} }}"#)),
            (0i32..6).prop_map(|n| format!(r#"{{ exact = {{ priority = "{n}" }} }}"#)),
            (0i32..6).prop_map(|n| format!(r#"{{ cesql = "priority > {n}" }}"#)),
            prop::sample::select(SUBJECTS.to_vec())
                .prop_map(|s| format!(r#"{{ exact = {{ subject = "{s}" }} }}"#)),
            prop::sample::select(vec!["s", "é", "éé", "x"])
                .prop_map(|s| format!(r#"{{ prefix = {{ subject = "{s}" }} }}"#)),
            prop::sample::select(vec!["t1", "t2"])
                .prop_map(|s| format!(r#"{{ exact = {{ "header.x-tenant" = "{s}" }} }}"#)),
        ]
    }

    fn filter() -> impl Strategy<Value = String> {
        leaf().prop_recursive(2, 8, 3, |inner| {
            prop_oneof![
                inner.clone().prop_map(|f| format!("{{ not = {f} }}")),
                prop::collection::vec(inner.clone(), 1..3)
                    .prop_map(|l| format!("{{ any = [{}] }}", l.join(", "))),
                prop::collection::vec(inner, 0..3)
                    .prop_map(|l| format!("{{ all = [{}] }}", l.join(", "))),
            ]
        })
    }

    /// A route: its sources (of two), its filters, its sinks (of three).
    fn route() -> impl Strategy<Value = (Vec<&'static str>, Vec<String>, Vec<&'static str>)> {
        (
            prop::sample::subsequence(vec!["web", "mqtt"], 1..=2),
            prop::collection::vec(filter(), 0..4),
            prop::sample::subsequence(vec!["s0", "s1", "s2"], 1..=3),
        )
    }

    fn event() -> impl Strategy<Value = (CloudEvent, TransportMetadata)> {
        (
            prop::sample::select(TYPES.to_vec()),
            prop::sample::select(SOURCES.to_vec()),
            prop::option::of(prop::sample::select(SUBJECTS.to_vec())),
            prop::option::of(0i32..6),
            prop::option::of(prop::sample::select(vec!["t1", "t2"])),
        )
            .prop_map(|(ty, source, subject, priority, tenant)| {
                let mut b = EventBuilder::new()
                    .specversion("1.0")
                    .id("1")
                    .source(source)
                    .ty(ty);
                if let Some(s) = subject {
                    b = b.subject(s);
                }
                if let Some(p) = priority {
                    b = b.extension("priority", ExtensionValue::Integer(p));
                }
                let mut m = TransportMetadata::new();
                if let Some(t) = tenant {
                    m.push_header("x-tenant", t);
                }
                (b.build().unwrap(), m)
            })
    }

    fn table(routes: &[(Vec<&str>, Vec<String>, Vec<&str>)]) -> RouteTable {
        let mut text = String::new();
        for (i, (from, filters, to)) in routes.iter().enumerate() {
            text.push_str(&format!(
                "[r{i:03}]\nfrom = {from:?}\nto = {to:?}\nfilters = [{}]\n",
                filters.join(", ")
            ));
        }
        let configs: BTreeMap<String, RouteConfig> = toml::from_str(&text).unwrap();
        let sinks: HashMap<String, usize> =
            [("s0".into(), 0), ("s1".into(), 1), ("s2".into(), 2)].into();
        let metrics = Metrics::new(&mut prometheus_client::registry::Registry::default());
        RouteTable::build(&configs, &sinks, &metrics, &DedupStore::default()).unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

        /// The index gives what evaluating every route in order gives.
        #[test]
        fn the_index_matches_what_every_route_says(
            routes in prop::collection::vec(route(), 1..40),
            events in prop::collection::vec(event(), 1..8),
        ) {
            let table = table(&routes);
            for (e, m) in &events {
                for source in ["web", "mqtt", "other"] {
                    let data = DataCache::default();
                    let subject = Subject::new(e, m, &data);
                    let indexed = table.select(source, subject, None, true);
                    let naive = table.select_naive(source, subject);
                    prop_assert_eq!(indexed.route_names(), naive.route_names(), "{:?} from {}", e, source);
                    prop_assert_eq!(&indexed.sinks, &naive.sinks);
                    let explained: Vec<String> = table
                        .explain(source, subject, true)
                        .into_iter()
                        .map(|x| x.route)
                        .collect();
                    prop_assert_eq!(explained, naive.route_names());
                }
            }
        }
    }

    #[test]
    fn routes_are_filed_under_their_anchor() {
        let table = table(&[
            (
                vec!["web"],
                vec![r#"{ exact = { type = ["com.a", "com.b"] } }"#.into()],
                vec!["s0"],
            ),
            (
                vec!["web"],
                vec![r#"{ prefix = { source = "/x" } }"#.into()],
                vec!["s1"],
            ),
            (
                vec!["web"],
                vec![r#"{ cesql = "true" }"#.into()],
                vec!["s2"],
            ),
        ]);
        assert_eq!(
            table.stats(),
            IndexStats {
                routes: 3,
                exact_entries: 2,
                prefix_entries: 1,
                unindexed: 1
            }
        );
    }
}
