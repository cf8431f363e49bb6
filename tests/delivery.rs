//! Retries, dead letters, the spool, deduplication, circuit breaking and `Retry-After`, end
//! to end, with the issue's config shape.

mod common;

use std::time::Duration;

use common::{metric, FerryProcess, Receiver, TestGateway};
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

/// The config block of the delivery issue, exactly as written there.
const ISSUE_EXAMPLE: &str = r#"
[sinks.partner]
type = "http"
url = "https://partner.example.com/events"
retry = { max_attempts = 8, initial_backoff_ms = 100, max_backoff_ms = 10000 }
timeout_ms = 5000
in_flight = 256
dead_letter = "dlq"                           # any sink
spool = { path = "data/spool/partner", max_bytes = 1073741824 }

[sinks.dlq]
type = "file"
path = "data/dead-letters.jsonl"

[routes.orders]
from = ["webhooks"]
to = ["partner"]
dedup = { window = 100000 }                   # drop repeats of (source, id)
"#;

const WEBHOOKS: &str = r#"
[admin]
listen = "127.0.0.1:0"

[sources.webhooks]
type = "http"
listen = "127.0.0.1:0"
path = "/events"
"#;

#[test]
fn the_issue_example_loads_as_written() {
    let text = format!("{WEBHOOKS}{ISSUE_EXAMPLE}");
    let config =
        ferry::Config::from_str_at(&text, std::path::Path::new("issue.toml"), &|_| None).unwrap();
    let partner = &config.sinks["partner"];
    let spool = partner.spool().expect("spool");
    assert_eq!(spool.path, std::path::Path::new("data/spool/partner"));
    assert_eq!(spool.max_bytes, 1_073_741_824);
    assert_eq!(partner.dead_letter(), Some("dlq"));
    assert_eq!(partner.retry().unwrap().max_attempts, 8);
    let dedup = config.routes["orders"].dedup.as_ref().expect("dedup");
    assert_eq!(dedup.window, 100_000);
}

async fn post_to(url: &str, id: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(url)
        .header("ce-specversion", "1.0")
        .header("ce-id", id)
        .header("ce-source", "/shop")
        .header("ce-type", "com.example.order.created")
        .header("content-type", "application/json")
        .body(r#"{"order":1}"#)
        .send()
        .await
        .unwrap()
}

async fn next(receiver: &mut Receiver) -> common::Received {
    tokio::time::timeout(Duration::from_secs(10), receiver.rx.recv())
        .await
        .expect("the receiver got a request in time")
        .expect("receiver open")
}

/// The issue's block runs as written (relative paths under the working directory): events
/// are spooled, delivered, deduplicated and dead-lettered.
#[tokio::test]
async fn the_issue_example_works_as_written() {
    let mut receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let text = format!("{WEBHOOKS}{ISSUE_EXAMPLE}").replace(
        "https://partner.example.com/events",
        &format!("http://{}/events", receiver.addr),
    );
    let ferry = FerryProcess::start(dir.path(), &text);
    let url = ferry.url("webhooks", "/events");
    assert_eq!(post_to(&url, "o-1").await.status(), 202);
    assert_eq!(next(&mut receiver).await.headers["ce-id"], "o-1");
    // The same (source, id) again: acknowledged, not delivered again.
    assert_eq!(post_to(&url, "o-1").await.status(), 202);
    assert_eq!(post_to(&url, "o-2").await.status(), 202);
    assert_eq!(next(&mut receiver).await.headers["ce-id"], "o-2");
    // A refusal goes to the dead-letter file with the reason.
    receiver.set_status(400);
    assert_eq!(post_to(&url, "o-3").await.status(), 202);
    assert_eq!(next(&mut receiver).await.headers["ce-id"], "o-3");
    let dead_letters = dir.path().join("data/dead-letters.jsonl");
    let line = wait_for(|| {
        std::fs::read_to_string(&dead_letters)
            .ok()
            .filter(|t| t.ends_with('\n'))
    })
    .await;
    let dead: Value = serde_json::from_str(line.trim()).unwrap();
    assert_eq!(dead["id"], "o-3");
    assert_eq!(dead["deadletterreason"], "permanent");
    assert!(dir.path().join("data/spool/partner/LOCK").exists());
    let metrics = ferry.metrics().await;
    for (name, want) in [
        ("ferry_route_deduplicated_total{route=\"orders\"}", 1.0),
        ("ferry_events_spooled_total{sink=\"partner\"}", 3.0),
        ("ferry_events_dead_lettered_total{sink=\"partner\"}", 1.0),
    ] {
        assert_eq!(metric(&metrics, name), want, "{name} in\n{metrics}");
    }
    assert!(receiver.rx.try_recv().is_err(), "nothing delivered twice");
}

/// Polls `f` until it returns something (at most 10 s).
async fn wait_for<T>(mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_full_spool_refuses_with_503_and_retry_after() {
    let down = common::closed_port().await;
    let text = format!(
        r#"{WEBHOOKS}
[sinks.partner]
type = "http"
url = "http://{down}/events"
spool = {{ path = "{{dir}}/spool", max_bytes = 65536 }}

[routes.orders]
from = ["webhooks"]
to = ["partner"]
"#
    );
    let gw = TestGateway::start(&text).await;
    let url = gw.url("webhooks", "/events");
    let body = "x".repeat(1000);
    let mut accepted = 0;
    let refused = loop {
        let resp = reqwest::Client::new()
            .post(&url)
            .header("ce-specversion", "1.0")
            .header("ce-id", format!("f-{accepted}"))
            .header("ce-source", "/shop")
            .header("ce-type", "t")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        if resp.status() != 202 {
            break resp;
        }
        accepted += 1;
        assert!(accepted < 100, "the spool never filled");
    };
    // Each event is about 1.5 KB on disk (the data is base64 in structured JSON).
    assert!(accepted >= 35, "only {accepted} events fit in 64 KiB");
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    let metrics = gw.metrics().await;
    let bytes = metric(&metrics, "ferry_spool_bytes{sink=\"partner\"}");
    assert!(bytes > 60_000.0 && bytes <= 65_536.0, "{metrics}");
    assert_eq!(
        metric(&metrics, "ferry_spool_events{sink=\"partner\"}"),
        accepted as f64
    );
}

#[tokio::test]
async fn a_failing_sink_opens_its_circuit_and_recovers() {
    let mut receiver = Receiver::start().await;
    receiver.set_status(500);
    let text = format!(
        r#"{WEBHOOKS}
[sinks.partner]
type = "http"
url = "http://{}/events"
retry = {{ max_attempts = 2, initial_backoff_ms = 10, max_backoff_ms = 20 }}
circuit_breaker = {{ failures = 3, probe_interval_ms = 300 }}

[routes.orders]
from = ["webhooks"]
to = ["partner"]
"#,
        receiver.addr
    );
    let gw = TestGateway::start(&text).await;
    let url = gw.url("webhooks", "/events");
    for i in 0..2 {
        assert_eq!(post_to(&url, &format!("c-{i}")).await.status(), 502);
    }
    let ready = reqwest::get(gw.admin("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 503);
    assert!(ready
        .text()
        .await
        .unwrap()
        .contains("sink:partner (circuit open)"));
    let metrics = gw.metrics().await;
    assert_eq!(
        metric(&metrics, "ferry_sink_circuit_open{sink=\"partner\"}"),
        1.0
    );
    let mut tried = 0;
    while receiver.rx.try_recv().is_ok() {
        tried += 1;
    }
    // The third failure opened the circuit: the second event's retry failed at once.
    assert_eq!(tried, 3);
    // While open, events are refused at once (503 until the next probe) instead of reaching
    // the target.
    for i in 0..5 {
        let status = post_to(&url, &format!("o-{i}")).await.status();
        assert!(status == 503 || status == 502, "{status}");
    }
    let mut probes = 0;
    while receiver.rx.try_recv().is_ok() {
        probes += 1;
    }
    assert!(
        probes <= 1,
        "{probes} requests reached the target while open"
    );
    let metrics = gw.metrics().await;
    assert!(
        metric(
            &metrics,
            "ferry_sink_circuit_rejected_total{sink=\"partner\"}"
        ) + metric(
            &metrics,
            "ferry_sink_fail_fast_total{sink=\"partner\",reason=\"circuit_open\"}"
        ) >= 5.0,
        "{metrics}"
    );
    // The target recovers: the next probe closes the circuit.
    receiver.set_status(200);
    let mut delivered = false;
    for i in 0..40 {
        if post_to(&url, &format!("r-{i}")).await.status() == 202 {
            delivered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(delivered, "a probe went through");
    assert_eq!(
        reqwest::get(gw.admin("/readyz")).await.unwrap().status(),
        200
    );
    let metrics = gw.metrics().await;
    assert_eq!(
        metric(&metrics, "ferry_sink_circuit_open{sink=\"partner\"}"),
        0.0
    );
}

#[tokio::test]
async fn retry_after_sets_the_next_attempts_delay() {
    let mut receiver = Receiver::start().await;
    receiver.set_status(503);
    receiver.set_retry_after(Some("1"));
    let text = format!(
        r#"{WEBHOOKS}
[sinks.partner]
type = "http"
url = "http://{}/events"
retry = {{ max_attempts = 3, initial_backoff_ms = 10, max_backoff_ms = 5000 }}

[routes.orders]
from = ["webhooks"]
to = ["partner"]
"#,
        receiver.addr
    );
    let gw = TestGateway::start(&text).await;
    let url = gw.url("webhooks", "/events");
    let request = tokio::spawn(async move { post_to(&url, "ra-1").await.status() });
    next(&mut receiver).await;
    let first = std::time::Instant::now();
    receiver.set_status(200);
    receiver.set_retry_after(None);
    next(&mut receiver).await;
    let waited = first.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "the retry came after {waited:?}, not after Retry-After: 1"
    );
    assert_eq!(request.await.unwrap(), 202);
}

/// While a sink's circuit is open, a sender whose event goes there gets `503` with
/// `Retry-After` (the time to the next probe) at once, instead of waiting out the sink's
/// retries; the probes still go through, and the first success closes the circuit.
#[tokio::test]
async fn a_sink_with_an_open_circuit_refuses_at_once() {
    let receiver = Receiver::start().await;
    receiver.set_status(500);
    let text = format!(
        r#"{WEBHOOKS}
[sinks.partner]
type = "http"
url = "http://{}/events"
retry = {{ max_attempts = 3, initial_backoff_ms = 50, max_backoff_ms = 1000 }}
circuit_breaker = {{ failures = 2, probe_interval_ms = 3000 }}

[routes.orders]
from = ["webhooks"]
to = ["partner"]
"#,
        receiver.addr
    );
    let gw = TestGateway::start(&text).await;
    let url = gw.url("webhooks", "/events");
    // Two failed attempts open the circuit; the third is refused by it.
    assert_eq!(post_to(&url, "opens").await.status(), 502);
    let started = std::time::Instant::now();
    let resp = post_to(&url, "refused").await;
    let elapsed = started.elapsed();
    assert_eq!(resp.status(), 503);
    let retry_after: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=3).contains(&retry_after), "Retry-After: {retry_after}");
    let body: serde_json::Value = resp.json().await.unwrap();
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains("sink `partner`") && detail.contains("circuit open"),
        "{detail}"
    );
    assert!(
        elapsed < Duration::from_millis(500),
        "answered after {elapsed:?}"
    );
    let metrics = gw.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "ferry_sink_fail_fast_total{sink=\"partner\",reason=\"circuit_open\"}"
        ),
        1.0
    );
    // The target recovers: senders retrying on 503 get through once a probe closed the circuit.
    receiver.set_status(200);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let mut i = 0;
    loop {
        i += 1;
        let started = std::time::Instant::now();
        let status = post_to(&url, &format!("r-{i}")).await.status();
        if status == 202 {
            break;
        }
        assert_eq!(status, 503);
        assert!(started.elapsed() < Duration::from_millis(500));
        assert!(
            std::time::Instant::now() < deadline,
            "no probe went through"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        reqwest::get(gw.admin("/readyz")).await.unwrap().status(),
        200
    );
}

/// A broker sink that cannot connect: a sender whose event goes there gets `503` with
/// `Retry-After` at once, not after the source's ack timeout.
#[tokio::test]
async fn a_disconnected_sink_refuses_at_once() {
    let closed = common::closed_port().await;
    let text = format!(
        r#"[admin]
listen = "127.0.0.1:0"

[sources.webhooks]
type = "http"
listen = "127.0.0.1:0"
path = "/events"
ack_timeout_ms = 5000

[sinks.queue]
type = "amqp"
url = "amqp://guest:guest@{closed}/%2f"
exchange = ""
routing_key = "nowhere"

[routes.orders]
from = ["webhooks"]
to = ["queue"]
"#
    );
    let gw = TestGateway::start(&text).await;
    let failed_once = || async {
        let metrics = gw.metrics().await;
        metric(
            &metrics,
            "ferry_sink_connect_failures_total{sink=\"queue\"}",
        ) >= 1.0
    };
    common::until(
        Duration::from_secs(10),
        "a failed connection attempt",
        failed_once,
    )
    .await;
    let started = std::time::Instant::now();
    let resp = post_to(&gw.url("webhooks", "/events"), "down").await;
    let elapsed = started.elapsed();
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    let body: serde_json::Value = resp.json().await.unwrap();
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains("sink `queue`") && detail.contains("not connected"),
        "{detail}"
    );
    assert!(
        elapsed < Duration::from_millis(500),
        "answered after {elapsed:?}"
    );
}
