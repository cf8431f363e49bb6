//! Per-route deduplication: a bounded window of the (`source`, `id`) keys a route delivered.
//!
//! A key is recorded only once the message that carried it was acknowledged (every sink
//! confirmed it), so a first attempt that failed and is sent again is not taken for a
//! duplicate. Keys are 64-bit hashes (SipHash with a per-window random key), so memory is
//! about 40 bytes per key whatever the ids look like; the oldest key leaves when the window
//! is full.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use serde::Deserialize;

use crate::metrics::Metrics;

/// The `dedup` table of a route.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DedupConfig {
    /// How many of the most recent keys are remembered.
    pub window: usize,
}

/// The remembered keys of one route.
#[derive(Debug)]
pub struct DedupWindow {
    capacity: usize,
    hasher: RandomState,
    keys: Mutex<Keys>,
    /// Duplicates dropped (`ferry_route_deduplicated_total`).
    pub deduplicated: Counter,
    size: Gauge,
}

#[derive(Debug, Default)]
struct Keys {
    set: HashSet<u64>,
    order: VecDeque<u64>,
}

impl DedupWindow {
    fn new(capacity: usize, deduplicated: Counter, size: Gauge) -> DedupWindow {
        DedupWindow {
            capacity,
            hasher: RandomState::new(),
            keys: Mutex::default(),
            deduplicated,
            size,
        }
    }

    /// The key of an event: its `source` and `id`.
    pub fn key(&self, source: &str, id: &str) -> u64 {
        let mut h = self.hasher.build_hasher();
        source.hash(&mut h);
        id.hash(&mut h);
        h.finish()
    }

    pub fn contains(&self, key: u64) -> bool {
        self.keys.lock().is_ok_and(|k| k.set.contains(&key))
    }

    /// Remembers a delivered key, forgetting the oldest when the window is full.
    pub fn record(&self, key: u64) {
        let Ok(mut k) = self.keys.lock() else {
            return;
        };
        if !k.set.insert(key) {
            return;
        }
        k.order.push_back(key);
        if k.order.len() > self.capacity {
            if let Some(old) = k.order.pop_front() {
                k.set.remove(&old);
            }
        }
        self.size.set(k.order.len() as i64);
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

/// The windows of every route by name, kept across reloads while a route's window size
/// stays the same.
#[derive(Debug, Clone, Default)]
pub struct DedupStore(Arc<Mutex<HashMap<String, Arc<DedupWindow>>>>);

impl DedupStore {
    /// The window of `route`, made (empty) if the route is new or its size changed.
    pub fn window(&self, route: &str, config: &DedupConfig, metrics: &Metrics) -> Arc<DedupWindow> {
        let Ok(mut map) = self.0.lock() else {
            return Arc::new(Self::make(route, config, metrics));
        };
        match map.get(route) {
            Some(w) if w.capacity == config.window => Arc::clone(w),
            _ => {
                let w = Arc::new(Self::make(route, config, metrics));
                map.insert(route.to_owned(), Arc::clone(&w));
                w
            }
        }
    }

    fn make(route: &str, config: &DedupConfig, metrics: &Metrics) -> DedupWindow {
        let labels = Metrics::route(route);
        let size = metrics.dedup_keys.get_or_create(&labels).clone();
        size.set(0);
        DedupWindow::new(
            config.window,
            metrics.deduplicated.get_or_create(&labels).clone(),
            size,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_the_last_n_keys() {
        let w = DedupWindow::new(2, Counter::default(), Gauge::default());
        let a = w.key("/s", "a");
        let b = w.key("/s", "b");
        let c = w.key("/s", "c");
        assert_ne!(w.key("/s", "a"), w.key("/t", "a"));
        assert_ne!(
            w.key("/sa", ""),
            w.key("/s", "a"),
            "fields do not run together"
        );
        w.record(a);
        w.record(b);
        w.record(b);
        assert!(w.contains(a) && w.contains(b));
        w.record(c);
        assert!(!w.contains(a), "the oldest key left");
        assert!(w.contains(b) && w.contains(c));
        assert_eq!(w.size.get(), 2);
    }
}
