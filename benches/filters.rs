//! Filter evaluation per event: `exact`/`prefix` next to the equivalent CESQL expressions.
//!
//! `cargo bench --bench filters`

use criterion::{criterion_group, criterion_main, Criterion};
use ferry::router::{DataCache, Filter, FilterConfig, Subject};
use ferry_core::{CloudEvent, ExtensionValue, TransportMetadata};
use std::hint::black_box;

fn event() -> CloudEvent {
    let mut e = CloudEvent::new(
        "e-1",
        "https://example.com/shop",
        "com.example.order.created",
    )
    .unwrap();
    e.set_extension("tenant", ExtensionValue::String("acme".into()))
        .unwrap();
    e.set_extension("priority", ExtensionValue::Integer(7))
        .unwrap();
    e
}

fn filter(toml_value: &str) -> Filter {
    #[derive(serde::Deserialize)]
    struct Wrap {
        f: FilterConfig,
    }
    let w: Wrap = toml::from_str(&format!("f = {toml_value}")).unwrap();
    Filter::compile(&w.f).unwrap()
}

fn bench(c: &mut Criterion) {
    let event = event();
    let metadata = TransportMetadata::new();
    let data = DataCache::default();
    let subject = Subject::new(&event, &metadata, &data);
    let cases = [
        (
            "exact type",
            r#"{ exact = { type = "com.example.order.created" } }"#,
        ),
        (
            "cesql type = '…'",
            r#"{ cesql = "type = 'com.example.order.created'" }"#,
        ),
        (
            "prefix type",
            r#"{ prefix = { type = "com.example.order." } }"#,
        ),
        (
            "cesql type LIKE '…%'",
            r#"{ cesql = "type LIKE 'com.example.order.%'" }"#,
        ),
        (
            "all [prefix type, exact tenant]",
            r#"{ all = [{ prefix = { type = "com.example." } }, { exact = { tenant = "acme" } }] }"#,
        ),
        (
            "cesql LIKE AND = AND >",
            r#"{ cesql = "type LIKE 'com.example.%' AND tenant = 'acme' AND priority > 5" }"#,
        ),
    ];
    let mut group = c.benchmark_group("filter");
    for (name, f) in cases {
        let f = filter(f);
        assert_eq!(f.matches(subject), Ok(true), "{name}");
        group.bench_function(name, |b| {
            b.iter(|| black_box(&f).matches(black_box(subject)))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
