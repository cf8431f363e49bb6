//! Codec cost per event: Ferry's bindings next to the `cloudevents-sdk` crate doing the same
//! operation on the same event, in one group per operation so the ratio comes from one run.
//!
//! The event carries every optional attribute, two extensions and ~300 bytes of JSON data.
//!
//! `cargo bench --bench codec`

use bytes::Bytes;
use cloudevents::binding::http::{to_event, Builder, Serializer};
use cloudevents::message::BinaryDeserializer;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use std::hint::black_box;

const DATA: &str = r#"{"order":{"id":"ord-20261124-000017","customer":"cus-8812","currency":"EUR","total":142.5,"lines":[{"sku":"SKU-1001","name":"Espresso beans 1kg","qty":2,"price":24.5},{"sku":"SKU-2040","name":"Burr grinder","qty":1,"price":89.0},{"sku":"SKU-0007","name":"Filter papers","qty":3,"price":1.5}]},"channel":"web","coupon":null}"#;

fn structured_json() -> Vec<u8> {
    format!(
        concat!(
            r#"{{"specversion":"1.0","id":"order-17-created","source":"https://shop.example.com/orders","#,
            r#""type":"com.example.order.created","datacontenttype":"application/json","#,
            r#""dataschema":"https://schemas.example.com/order/v3.json","subject":"orders/ord-20261124-000017","#,
            r#""time":"2026-11-24T10:00:00.123456Z","tenant":"acme","priority":7,"data":{}}}"#
        ),
        DATA
    )
    .into_bytes()
}

fn binary_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (name, value) in [
        ("ce-specversion", "1.0"),
        ("ce-id", "order-17-created"),
        ("ce-source", "https://shop.example.com/orders"),
        ("ce-type", "com.example.order.created"),
        ("ce-dataschema", "https://schemas.example.com/order/v3.json"),
        ("ce-subject", "orders/ord-20261124-000017"),
        ("ce-time", "2026-11-24T10:00:00.123456Z"),
        ("ce-tenant", "acme"),
        ("ce-priority", "7"),
        ("content-type", "application/json"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    h
}

fn ferry_event(headers: &HeaderMap, body: &Bytes) -> ferry_core::CloudEvent {
    match ferry_http::decode(headers, body.clone()) {
        Ok(ferry_http::Message::Event(e)) => e,
        other => panic!("the bench event must decode: {other:?}"),
    }
}

/// Collects the SDK's binary-mode output into a header map and a body, the same shape
/// `ferry_http::encode` returns.
struct HeaderSink {
    headers: HeaderMap,
}

impl Builder<(HeaderMap, Vec<u8>)> for HeaderSink {
    fn header(&mut self, key: &str, value: HeaderValue) {
        if let Ok(name) = HeaderName::from_bytes(key.as_bytes()) {
            self.headers.append(name, value);
        }
    }
    fn body(&mut self, bytes: Vec<u8>) -> cloudevents::message::Result<(HeaderMap, Vec<u8>)> {
        Ok((std::mem::take(&mut self.headers), bytes))
    }
    fn finish(&mut self) -> cloudevents::message::Result<(HeaderMap, Vec<u8>)> {
        self.body(Vec::new())
    }
}

fn sdk_encode_binary(event: cloudevents::Event) -> (HeaderMap, Vec<u8>) {
    event
        .deserialize_binary(Serializer::new(HeaderSink {
            headers: HeaderMap::with_capacity(12),
        }))
        .expect("the SDK encodes the bench event")
}

fn bench(c: &mut Criterion) {
    let json = structured_json();
    let headers = binary_headers();
    let body = Bytes::from_static(DATA.as_bytes());

    // Both libraries must accept the inputs before anything is timed.
    let ferry = ferry_event(&headers, &body);
    let sdk = to_event(&headers, body.to_vec()).expect("the SDK decodes the bench event");
    ferry_core::json::decode(&json).expect("Ferry decodes the JSON event");
    serde_json::from_slice::<cloudevents::Event>(&json).expect("the SDK decodes the JSON event");
    assert_eq!(sdk_encode_binary(sdk.clone()).1, DATA.as_bytes());

    let mut g = c.benchmark_group("json structured decode+encode");
    g.bench_function("ferry", |b| {
        b.iter(|| {
            let e = ferry_core::json::decode(black_box(&json)).unwrap();
            ferry_core::json::encode(&e)
        })
    });
    g.bench_function("cloudevents-sdk", |b| {
        b.iter(|| {
            let e: cloudevents::Event = serde_json::from_slice(black_box(&json)).unwrap();
            serde_json::to_vec(&e).unwrap()
        })
    });
    g.finish();

    let mut g = c.benchmark_group("http binary decode");
    g.bench_function("ferry", |b| {
        b.iter(|| ferry_http::decode(black_box(&headers), black_box(&body).clone()).unwrap())
    });
    g.bench_function("cloudevents-sdk", |b| {
        b.iter(|| to_event(black_box(&headers), black_box(&body).to_vec()).unwrap())
    });
    g.finish();

    let mut g = c.benchmark_group("http binary encode");
    g.bench_function("ferry", |b| {
        b.iter(|| ferry_http::encode(black_box(&ferry), ferry_http::Mode::Binary))
    });
    // The SDK's encoder consumes the event: the clone is made outside the timed part.
    g.bench_function("cloudevents-sdk", |b| {
        b.iter_batched(|| sdk.clone(), sdk_encode_binary, BatchSize::SmallInput)
    });
    g.finish();

    let mut g = c.benchmark_group("http binary decode+encode");
    g.bench_function("ferry", |b| {
        b.iter(|| {
            let e = ferry_event(black_box(&headers), black_box(&body));
            ferry_http::encode(&e, ferry_http::Mode::Binary)
        })
    });
    g.bench_function("cloudevents-sdk", |b| {
        b.iter(|| {
            let e = to_event(black_box(&headers), black_box(&body).to_vec()).unwrap();
            sdk_encode_binary(e)
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
