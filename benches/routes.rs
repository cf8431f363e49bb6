//! Matching one event against 10 … 100 000 routes: the route index keeps the cost near that
//! of 10 routes. Also prints the compile time and memory of 10 000 and 100 000 routes.
//!
//! `cargo bench --bench routes` (`-- --quick` for a short run)
//!
//! The mix: route `i` has an exact `type` (`com.example.t<i/10>`: ten routes share a type) and
//! a `source` prefix (`/tenant/<i%10>` or `/all`); every tenth also a numeric data filter, every
//! hundredth a CESQL expression. Events match 0 routes (an unknown type), 1 (one tenant) or 10
//! (`/all`, every route of the type).

use std::collections::{BTreeMap, HashMap};
use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use ferry::metrics::Metrics;
use ferry::router::{
    DataCache, DedupStore, FilterConfig, OneOrMany, Pairs, RouteConfig, RouteTable, Subject,
};
use ferry_core::{CloudEvent, Data, EventBuilder, TransportMetadata};

fn routes(n: usize) -> BTreeMap<String, RouteConfig> {
    (0..n)
        .map(|i| {
            let one = |k: &str, v: String| Pairs(vec![(k.to_owned(), OneOrMany::One(v))]);
            let mut filters = vec![
                FilterConfig::Exact(one("type", format!("com.example.t{}", i / 10))),
                FilterConfig::Prefix(Pairs(vec![(
                    "source".to_owned(),
                    OneOrMany::Many(vec![format!("/tenant/{}", i % 10), "/all".to_owned()]),
                )])),
            ];
            if i % 10 == 3 {
                filters.push(FilterConfig::Numeric(Pairs(vec![(
                    "data.v".to_owned(),
                    Pairs(vec![(">=".to_owned(), 0.0)]),
                )])));
            }
            if i % 100 == 7 {
                filters.push(FilterConfig::Cesql(
                    "source LIKE '/%' AND type <> 'x'".into(),
                ));
            }
            let route = RouteConfig {
                from: vec!["web".into()],
                to: vec![format!("s{}", i % 4)],
                filters,
                dedup: None,
            };
            (format!("r{i:06}"), route)
        })
        .collect()
}

fn table(n: usize) -> RouteTable {
    let sinks: HashMap<String, usize> = (0..4).map(|i| (format!("s{i}"), i)).collect();
    let metrics = Metrics::new(&mut prometheus_client::registry::Registry::default());
    RouteTable::build(&routes(n), &sinks, &metrics, &DedupStore::default()).unwrap()
}

fn event(ty: &str, source: &str) -> CloudEvent {
    EventBuilder::new()
        .specversion("1.0")
        .id("e-1")
        .source(source)
        .ty(ty)
        .datacontenttype("application/json")
        .data(Data::json(r#"{"v": 1, "name": "thermo"}"#).unwrap())
        .build()
        .unwrap()
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Compile time and resident memory of a large table, printed once.
fn compile_figures() {
    for n in [10_000, 100_000] {
        let start_rss = rss_kib();
        let configs = routes(n);
        let before = rss_kib();
        let sinks: HashMap<String, usize> = (0..4).map(|i| (format!("s{i}"), i)).collect();
        let metrics = Metrics::new(&mut prometheus_client::registry::Registry::default());
        let start = Instant::now();
        let t = RouteTable::build(&configs, &sinks, &metrics, &DedupStore::default()).unwrap();
        let took = start.elapsed();
        let after = rss_kib();
        println!(
            "routes/compile n={n}: {:.0} ms; RSS +{:.1} MB for the table and its per-route counters (+{:.1} MB for the parsed config)",
            took.as_secs_f64() * 1000.0,
            (after.saturating_sub(before)) as f64 / 1024.0,
            (before.saturating_sub(start_rss)) as f64 / 1024.0
        );
        black_box(t.stats());
    }
}

fn bench(c: &mut Criterion) {
    compile_figures();
    let metadata = TransportMetadata::new();
    let mut group = c.benchmark_group("routes");
    for n in [10, 1_000, 10_000, 100_000] {
        let t = table(n);
        // Type `t0` exists at every size: routes r000000 … r000009.
        let cases = [
            ("0", event("com.example.none", "/tenant/3/device")),
            ("1", event("com.example.t0", "/tenant/3/device")),
            ("10", event("com.example.t0", "/all/device")),
        ];
        for (matches, e) in &cases {
            let data = DataCache::default();
            let got = t.select("web", Subject::new(e, &metadata, &data), None, false);
            assert_eq!(
                got.len(),
                match *matches {
                    "0" => 0,
                    "1" => 1,
                    _ => 4,
                },
                "sinks for {matches} matching routes"
            );
            group.bench_with_input(BenchmarkId::new(format!("match{matches}"), n), e, |b, e| {
                b.iter(|| {
                    let data = DataCache::default();
                    black_box(t.select(
                        "web",
                        Subject::new(black_box(e), &metadata, &data),
                        None,
                        false,
                    ))
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
