//! Retries and dead letters of a sink, end to end, with the issue's config shape.

mod common;

use common::{Receiver, TestGateway};
use serde_json::Value;

fn config(receiver: std::net::SocketAddr) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[sources.webhooks]
type = "http"
listen = "127.0.0.1:0"
path = "/events"

[sinks.partner]
type = "http"
url = "http://{receiver}/events"
retry = {{ max_attempts = 8, initial_backoff_ms = 20, max_backoff_ms = 200 }}
timeout_ms = 5000
in_flight = 256
dead_letter = "dlq"

[sinks.dlq]
type = "file"
path = "{{dir}}/dead-letters.jsonl"

[routes.orders]
from = ["webhooks"]
to = ["partner"]
"#
    )
}

async fn post(gw: &TestGateway, id: &str) -> u16 {
    reqwest::Client::new()
        .post(gw.url("webhooks", "/events"))
        .header("ce-specversion", "1.0")
        .header("ce-id", id)
        .header("ce-source", "/shop")
        .header("ce-type", "com.example.order.created")
        .header("content-type", "application/json")
        .body(r#"{"order":1}"#)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn a_failing_endpoint_is_retried_until_it_recovers() {
    let mut receiver = Receiver::start().await;
    receiver.set_status(500);
    let gw = TestGateway::start(&config(receiver.addr)).await;
    let request = {
        let url = gw.url("webhooks", "/events");
        tokio::spawn(async move {
            reqwest::Client::new()
                .post(url)
                .header("ce-specversion", "1.0")
                .header("ce-id", "r-1")
                .header("ce-source", "/shop")
                .header("ce-type", "com.example.order.created")
                .body("{}")
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    };
    // Three failed attempts arrive, then the endpoint recovers.
    for _ in 0..3 {
        let r = tokio::time::timeout(std::time::Duration::from_secs(10), receiver.rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.headers.get("ce-id").unwrap(), "r-1");
    }
    receiver.set_status(200);
    assert_eq!(
        request.await.unwrap(),
        202,
        "acknowledged once the endpoint confirmed"
    );
    assert!(gw.lines("dead-letters.jsonl").is_empty());
    let metrics = gw.metrics().await;
    let retries: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("ferry_delivery_retries_total{sink=\"partner\"} "))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(retries >= 3, "{metrics}");
    assert!(
        metrics.contains("ferry_events_delivered_total{sink=\"partner\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_refusing_endpoint_dead_letters_with_the_reason() {
    let receiver = Receiver::start().await;
    receiver.set_status(400);
    let gw = TestGateway::start(&config(receiver.addr)).await;
    assert_eq!(
        post(&gw, "d-1").await,
        202,
        "a dead letter counts as handled"
    );
    let lines = gw.lines("dead-letters.jsonl");
    assert_eq!(lines.len(), 1);
    let dead = &lines[0];
    assert_eq!(dead["id"], "d-1");
    assert_eq!(dead["deadletterreason"], "permanent");
    assert_eq!(dead["deadletterattempts"], 1);
    assert_eq!(dead["deadlettersink"], "partner");
    assert!(
        dead["deadlettererror"].as_str().unwrap().contains("400"),
        "{dead}"
    );
    assert_eq!(
        dead["data"],
        serde_json::from_str::<Value>(r#"{"order":1}"#).unwrap()
    );

    // A bad request is rejected and counted as well: the counters move.
    let bad = reqwest::Client::new()
        .post(gw.url("webhooks", "/events"))
        .header("content-type", "application/cloudevents+json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let metrics = gw.metrics().await;
    for want in [
        "ferry_events_dead_lettered_total{sink=\"partner\"} 1",
        "ferry_events_delivered_total{sink=\"dlq\"} 1",
        "ferry_events_accepted_total{source=\"webhooks\"} 1",
        "ferry_events_rejected_total{source=\"webhooks\",reason=\"invalid\"} 1",
        "ferry_delivery_failures_total{sink=\"partner\",kind=\"permanent\"} 1",
    ] {
        assert!(metrics.contains(want), "{want} missing in\n{metrics}");
    }
}

#[tokio::test]
async fn exhausted_retries_dead_letter_too() {
    let receiver = Receiver::start().await;
    receiver.set_status(503);
    let text = config(receiver.addr).replace("max_attempts = 8", "max_attempts = 3");
    let gw = TestGateway::start(&text).await;
    assert_eq!(post(&gw, "x-1").await, 202);
    let dead = &gw.lines("dead-letters.jsonl")[0];
    assert_eq!(dead["deadletterreason"], "retries-exhausted");
    assert_eq!(dead["deadletterattempts"], 3);
}
