//! A message is handled by one configuration and handed on whole: a reload in the middle of
//! a request does not mix two configs (Q4), and a batch is never half sent (Q3).

mod common;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::TestGateway;
use ferry::{Config, Gateway};

fn config(dir: &std::path::Path, to: &str) -> String {
    let d = dir.display();
    format!(
        r#"
[sources.web]
type = "http"
listen = "127.0.0.1:0"
path = "/events"
max_concurrent_requests = 1
enqueue_timeout_ms = 50

[sinks.a]
type = "file"
path = "{d}/a.jsonl"

[sinks.b]
type = "file"
path = "{d}/b.jsonl"

[routes.all]
from = ["web"]
to = ["{to}"]
"#
    )
}

fn ids(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

/// Q4: a request that arrived before a reload is routed by the configuration it arrived
/// under, like its authentication, even when its body comes after the reload.
#[tokio::test]
async fn q4_a_request_spanning_a_reload_uses_one_configuration() {
    ferry::tls::install_default_provider();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ferry.toml");
    std::fs::write(&file, config(dir.path(), "a")).unwrap();
    let gw = Gateway::start(Config::load(&file).unwrap()).await.unwrap();
    let addr = gw.source_addr("web").unwrap();
    let url = format!("http://{addr}/events");

    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(
        b"POST /events HTTP/1.1\r\nHost: x\r\nce-specversion: 1.0\r\nce-id: spanning\r\nce-source: /s\r\nce-type: t\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{",
    )
    .await
    .unwrap();
    // The one request slot is taken once the slow request is being served: a probe then
    // gets 503, which tells that the slow request loaded its settings.
    let client = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = client
            .post(&url)
            .header("ce-specversion", "1.0")
            .header("ce-id", "probe")
            .header("ce-source", "/s")
            .header("ce-type", "t")
            .body("{}")
            .send()
            .await
            .unwrap()
            .status();
        if status.as_u16() == 503 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slow request never started"
        );
    }
    std::fs::write(&file, config(dir.path(), "b")).unwrap();
    gw.reloader()
        .reload_file(ferry::reload::Trigger::Call)
        .await
        .expect("reload");
    slow.write_all(b"}").await.unwrap();
    let mut head = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(10), slow.read_exact(&mut head))
        .await
        .expect("an answer in time")
        .unwrap();
    assert_eq!(&head, b"HTTP/1.1 202");
    assert!(ids(&dir.path().join("a.jsonl")).contains(&"spanning".to_owned()));
    assert!(!ids(&dir.path().join("b.jsonl")).contains(&"spanning".to_owned()));
}

/// Q3: a batch with more events for one sink than its queue holds can never be handed on
/// whole; it is refused with 413 before anything is sent, instead of being half sent and
/// failed (the sender's retry would then duplicate the half).
#[tokio::test]
async fn q3_a_batch_larger_than_a_sink_queue_is_refused_whole() {
    let gw = TestGateway::start(
        r#"
[sources.web]
type = "http"
listen = "127.0.0.1:0"
path = "/events"

[sinks.archive]
type = "file"
path = "{dir}/events.jsonl"
queue = 2

[routes.all]
from = ["web"]
to = ["archive"]
"#,
    )
    .await;
    let batch: Vec<serde_json::Value> = (0..3)
        .map(|i| serde_json::json!({"specversion": "1.0", "id": format!("b{i}"), "source": "/s", "type": "t"}))
        .collect();
    let resp = reqwest::Client::new()
        .post(gw.url("web", "/events"))
        .header("content-type", "application/cloudevents-batch+json")
        .body(serde_json::to_string(&batch).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 413);
    let body = resp.text().await.unwrap();
    assert!(body.contains("archive") && body.contains("queue"), "{body}");
    // A batch that fits is accepted whole.
    let resp = reqwest::Client::new()
        .post(gw.url("web", "/events"))
        .header("content-type", "application/cloudevents-batch+json")
        .body(serde_json::to_string(&batch[..2]).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    let ids: Vec<String> = gw
        .lines("events.jsonl")
        .iter()
        .map(|l| l["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        ids,
        ["b0", "b1"],
        "nothing of the refused batch was written"
    );
}
