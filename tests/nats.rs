//! The NATS source and sink against the real nats-server (core and JetStream) on 127.0.0.1:4222.
//! Every test uses its own subjects, streams and durables (random suffix) and deletes the
//! streams it created.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use common::{Receiver, TestGateway};
use futures_util::StreamExt;
use serde_json::{json, Value};

const NATS: &str = "nats://127.0.0.1:4222";
const WAIT: Duration = Duration::from_secs(15);

async fn client() -> async_nats::Client {
    async_nats::connect(NATS)
        .await
        .expect("nats-server must run on 127.0.0.1:4222 with JetStream (scripts/brokers)")
}

async fn create_stream(js: &jetstream::Context, name: &str, subjects: &str) {
    js.create_stream(jetstream::stream::Config {
        name: name.into(),
        subjects: vec![subjects.into()],
        ..Default::default()
    })
    .await
    .expect("create stream");
}

async fn consumer_info(
    js: &jetstream::Context,
    stream: &str,
    durable: &str,
) -> (usize, u64, usize) {
    let stream = js.get_stream(stream).await.expect("stream");
    let info = stream.consumer_info(durable).await.expect("consumer info");
    (info.num_ack_pending, info.num_pending, info.num_redelivered)
}

/// A binary-mode message with every optional attribute, two extensions and non-UTF-8 data.
fn full_binary_message(id: &str) -> async_nats::HeaderMap {
    let mut h = async_nats::HeaderMap::new();
    for (k, v) in [
        ("ce-specversion", "1.0"),
        ("ce-id", id),
        ("ce-source", "https://example.com/sensors"),
        ("ce-type", "com.example.reading"),
        ("ce-subject", "room%20%E2%82%AC"),
        ("ce-time", "2026-11-24T10:00:00.123+02:00"),
        ("ce-dataschema", "https://example.com/schema.bin"),
        ("ce-datacontenttype", "application/octet-stream"),
        ("ce-tenant", "acme"),
        ("ce-priority", "7"),
        ("X-Trace", "abc"),
    ] {
        h.insert(k, v);
    }
    h
}

fn full_binary_expected(id: &str) -> Value {
    json!({
        "specversion": "1.0", "id": id, "source": "https://example.com/sensors",
        "type": "com.example.reading", "subject": "room €", "time": "2026-11-24T10:00:00.123+02:00",
        "dataschema": "https://example.com/schema.bin", "datacontenttype": "application/octet-stream",
        "tenant": "acme", "priority": "7", "data_base64": "AJ+Slv8="
    })
}

const BINARY_DATA: &[u8] = &[0, 159, 146, 150, 255];

fn structured_event(id: &str) -> Value {
    json!({
        "specversion": "1.0", "id": id, "source": "/orders", "type": "com.example.order.created",
        "subject": "o-17", "time": "2026-11-24T10:00:00Z", "datacontenttype": "application/json",
        "count": 3, "flag": true, "label": "x y",
        "data": {"order": 17, "lines": [{"sku": "A", "qty": 2}]}
    })
}

#[tokio::test]
async fn http_source_to_core_and_jetstream_sinks() {
    let sfx = common::suffix();
    let nats = client().await;
    let js = jetstream::new(nats.clone());
    let stream = format!("FERRY_SINK_{sfx}");
    let mut core = nats.subscribe(format!("t{sfx}.core.>")).await.unwrap();
    nats.flush().await.unwrap();
    let config = format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[sources.web]
type = "http"
listen = "127.0.0.1:0"
path = "/events"

[sinks.core_bin]
type = "nats"
url = "{NATS}"
subject = "t{sfx}.core.bin.{{type}}"

[sinks.core_str]
type = "nats"
url = "{NATS}"
subject = "t{sfx}.core.str.{{type}}"
mode = "structured"

[sinks.stream]
type = "nats"
url = "{NATS}"
subject = "t{sfx}.js.{{type}}"
jetstream = true
stream = {{ name = "{stream}", subjects = ["t{sfx}.js.>"] }}

[routes.all]
from = ["web"]
to = ["core_bin", "core_str", "stream"]
"#
    );
    let gw = TestGateway::start(&config).await;
    common::ready(&gw, WAIT).await;
    let post = || async {
        reqwest::Client::new()
            .post(gw.url("web", "/events"))
            .header("ce-specversion", "1.0")
            .header("ce-id", "e 1")
            .header("ce-source", "https://example.com/src")
            .header("ce-type", "com.example.made")
            .header("ce-ext", "Euro%20%E2%82%AC")
            .header("content-type", "application/json")
            .body(r#"{"n": 1}"#)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(post().await, 202);

    // Core: both messages were flushed before the 202.
    let mut got = Vec::new();
    for _ in 0..2 {
        let m = tokio::time::timeout(WAIT, core.next())
            .await
            .unwrap()
            .unwrap();
        got.push(m);
    }
    got.sort_by(|a, b| a.subject.as_str().cmp(b.subject.as_str()));
    let (bin, st) = (&got[0], &got[1]);
    assert_eq!(
        bin.subject.as_str(),
        format!("t{sfx}.core.bin.com.example.made")
    );
    let h = bin.headers.as_ref().unwrap();
    assert_eq!(ferry_nats::header(h, "ce-id"), Some("e%201"));
    assert_eq!(ferry_nats::header(h, "ce-ext"), Some("Euro%20%E2%82%AC"));
    assert_eq!(
        ferry_nats::header(h, "ce-datacontenttype"),
        Some("application/json")
    );
    assert_eq!(&bin.payload[..], br#"{"n": 1}"#);
    assert_eq!(
        st.subject.as_str(),
        format!("t{sfx}.core.str.com.example.made")
    );
    assert!(
        ferry_nats::header(st.headers.as_ref().unwrap(), "Content-Type")
            .unwrap()
            .starts_with("application/cloudevents+json")
    );
    let body: Value = serde_json::from_slice(&st.payload).unwrap();
    assert_eq!(body["id"], "e 1");
    assert_eq!(body["ext"], "Euro €");
    assert_eq!(body["data"], json!({"n": 1}));

    // JetStream: stored once, with the de-duplication id; a re-POST is dropped as a duplicate.
    let mut s = js.get_stream(&stream).await.unwrap();
    assert_eq!(s.info().await.unwrap().state.messages, 1);
    let raw = s.get_raw_message(1).await.unwrap();
    assert_eq!(
        ferry_nats::header(&raw.headers, "Nats-Msg-Id"),
        Some("https://example.com/src e%201")
    );
    assert_eq!(
        ferry_nats::header(&raw.headers, "ce-type"),
        Some("com.example.made")
    );
    assert_eq!(post().await, 202);
    assert_eq!(s.info().await.unwrap().state.messages, 1);
    js.delete_stream(&stream).await.unwrap();
}

#[tokio::test]
async fn core_and_jetstream_sources_to_file_sink() {
    let sfx = common::suffix();
    let nats = client().await;
    let js = jetstream::new(nats.clone());
    let stream = format!("FERRY_SRC_{sfx}");
    create_stream(&js, &stream, &format!("t{sfx}.js.>")).await;
    let config = format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[sources.core_in]
type = "nats"
url = "{NATS}"
subject = "t{sfx}.core.>"

[sources.js_in]
type = "nats"
url = "{NATS}"
subject = "t{sfx}.js.>"
jetstream = {{ stream = "{stream}", durable = "d{sfx}" }}

[sinks.core_file]
type = "file"
path = "{{dir}}/core.jsonl"

[sinks.js_file]
type = "file"
path = "{{dir}}/js.jsonl"

[routes.core]
from = ["core_in"]
to = ["core_file"]

[routes.js]
from = ["js_in"]
to = ["js_file"]
"#
    );
    let gw = TestGateway::start(&config).await;
    common::ready(&gw, WAIT).await;
    let structured = structured_event("s-1");
    let mut st_headers = async_nats::HeaderMap::new();
    st_headers.insert("Content-Type", "application/cloudevents+json");
    for (kind, file) in [("core", "core.jsonl"), ("js", "js.jsonl")] {
        let subject = format!("t{sfx}.{kind}.a");
        if kind == "js" {
            js.publish_with_headers(
                subject.clone(),
                full_binary_message("b-1"),
                Bytes::from_static(BINARY_DATA),
            )
            .await
            .unwrap()
            .await
            .unwrap();
            js.publish_with_headers(subject, st_headers.clone(), structured.to_string().into())
                .await
                .unwrap()
                .await
                .unwrap();
        } else {
            nats.publish_with_headers(
                subject.clone(),
                full_binary_message("b-1"),
                Bytes::from_static(BINARY_DATA),
            )
            .await
            .unwrap();
            nats.publish_with_headers(subject, st_headers.clone(), structured.to_string().into())
                .await
                .unwrap();
            nats.flush().await.unwrap();
        }
        let lines: Vec<Value> = common::eventually(WAIT, file, || async {
            let l = gw.lines(file);
            (l.len() == 2).then_some(l)
        })
        .await
        .into_iter()
        .map(common::without_trace)
        .collect();
        assert_eq!(lines[0], full_binary_expected("b-1"), "{kind}");
        assert_eq!(lines[1], structured, "{kind}");
    }
    common::eventually(WAIT, "the JetStream messages to be acked", || async {
        (consumer_info(&js, &stream, &format!("d{sfx}")).await == (0, 0, 0)).then_some(())
    })
    .await;
    js.delete_stream(&stream).await.unwrap();
}

#[tokio::test]
async fn undecodable_jetstream_message_is_terminated_and_counted() {
    let sfx = common::suffix();
    let nats = client().await;
    let js = jetstream::new(nats.clone());
    let stream = format!("FERRY_BAD_{sfx}");
    create_stream(&js, &stream, &format!("t{sfx}.>")).await;
    let config = format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[sources.js_in]
type = "nats"
url = "{NATS}"
subject = "t{sfx}.>"
jetstream = {{ stream = "{stream}", durable = "d{sfx}", ack_wait_secs = 1 }}

[sinks.file]
type = "file"
path = "{{dir}}/events.jsonl"

[routes.all]
from = ["js_in"]
to = ["file"]
"#
    );
    let gw = TestGateway::start(&config).await;
    common::ready(&gw, WAIT).await;
    js.publish(format!("t{sfx}.x"), Bytes::from_static(b"\xffnot an event"))
        .await
        .unwrap()
        .await
        .unwrap();
    common::eventually(WAIT, "the rejection to be counted", || async {
        gw.metrics()
            .await
            .lines()
            .any(|l| {
                l.starts_with("ferry_events_rejected_total")
                    && l.contains("source=\"js_in\"")
                    && l.contains("reason=\"undecodable\"")
                    && l.ends_with(" 1")
            })
            .then_some(())
    })
    .await;
    // Terminated: nothing pending, and not redelivered even after ack_wait has passed.
    common::eventually(WAIT, "the term to reach the server", || async {
        (consumer_info(&js, &stream, &format!("d{sfx}")).await == (0, 0, 0)).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        consumer_info(&js, &stream, &format!("d{sfx}")).await,
        (0, 0, 0)
    );
    assert!(gw.lines("events.jsonl").is_empty());
    js.delete_stream(&stream).await.unwrap();
}

#[tokio::test]
async fn failed_delivery_is_nacked_and_redelivered() {
    let sfx = common::suffix();
    let nats = client().await;
    let js = jetstream::new(nats.clone());
    let stream = format!("FERRY_NAK_{sfx}");
    create_stream(&js, &stream, &format!("t{sfx}.>")).await;
    let mut receiver = Receiver::start().await;
    receiver.set_status(500);
    let config = format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[sources.js_in]
type = "nats"
url = "{NATS}"
subject = "t{sfx}.>"
jetstream = {{ stream = "{stream}", durable = "d{sfx}", nak_delay_ms = 100 }}

[sinks.hook]
type = "http"
url = "http://{}/hook"

[routes.all]
from = ["js_in"]
to = ["hook"]
"#,
        receiver.addr
    );
    let gw = TestGateway::start(&config).await;
    common::ready(&gw, WAIT).await;
    js.publish_with_headers(
        format!("t{sfx}.x"),
        full_binary_message("n-1"),
        Bytes::from_static(BINARY_DATA),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let first = tokio::time::timeout(WAIT, receiver.rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.headers.get("ce-id").unwrap(), "n-1");
    receiver.set_status(200);
    // The nak makes the server redeliver; the receiver now accepts it.
    let ok = tokio::time::timeout(WAIT, receiver.rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ok.headers.get("ce-id").unwrap(), "n-1");
    assert_eq!(
        ok.headers.get("ce-source").unwrap(),
        "https://example.com/sensors"
    );
    assert_eq!(&ok.body[..], BINARY_DATA);
    common::eventually(WAIT, "the final ack", || async {
        let (ack_pending, pending, _) = consumer_info(&js, &stream, &format!("d{sfx}")).await;
        (ack_pending == 0 && pending == 0).then_some(())
    })
    .await;
    // Acked: no third attempt.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), receiver.rx.recv())
            .await
            .is_err()
    );
    js.delete_stream(&stream).await.unwrap();
}

/// Starts `n` gateways with the same source section, each writing to its own file.
async fn gateways(source: &str, n: usize) -> Vec<TestGateway> {
    let mut out = Vec::new();
    for _ in 0..n {
        let config = format!(
            r#"
[admin]
listen = "127.0.0.1:0"

{source}

[sinks.file]
type = "file"
path = "{{dir}}/events.jsonl"

[routes.all]
from = ["in"]
to = ["file"]
"#
        );
        let gw = TestGateway::start(&config).await;
        common::ready(&gw, WAIT).await;
        out.push(gw);
    }
    out
}

async fn exactly_once(gws: &[TestGateway], n: usize) {
    let ids = common::eventually(WAIT, "every message to arrive", || async {
        let lines: Vec<Value> = gws.iter().flat_map(|g| g.lines("events.jsonl")).collect();
        (lines.len() >= n).then_some(lines)
    })
    .await;
    let distinct: BTreeSet<String> = ids
        .iter()
        .map(|l| l["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), n, "some message was delivered twice");
    assert_eq!(distinct.len(), n);
    assert!(
        gws.iter().all(|g| !g.lines("events.jsonl").is_empty()),
        "one instance got nothing"
    );
}

fn numbered(i: usize) -> (async_nats::HeaderMap, Bytes) {
    let mut h = async_nats::HeaderMap::new();
    h.insert("ce-specversion", "1.0");
    h.insert("ce-id", format!("m-{i}"));
    h.insert("ce-source", "/load");
    h.insert("ce-type", "t");
    (h, Bytes::from(format!("{i}")))
}

#[tokio::test]
async fn queue_group_and_shared_durable_deliver_exactly_once() {
    const N: usize = 200;
    let sfx = common::suffix();
    let nats = client().await;
    let js = jetstream::new(nats.clone());

    let core = format!(
        "[sources.in]\ntype = \"nats\"\nurl = \"{NATS}\"\nsubject = \"t{sfx}.core.>\"\nqueue_group = \"g{sfx}\""
    );
    let gws = gateways(&core, 2).await;
    for i in 0..N {
        let (h, p) = numbered(i);
        nats.publish_with_headers(format!("t{sfx}.core.{i}"), h, p)
            .await
            .unwrap();
    }
    nats.flush().await.unwrap();
    exactly_once(&gws, N).await;
    drop(gws);

    let stream = format!("FERRY_QG_{sfx}");
    create_stream(&js, &stream, &format!("t{sfx}.js.>")).await;
    let durable = format!(
        "[sources.in]\ntype = \"nats\"\nurl = \"{NATS}\"\nsubject = \"t{sfx}.js.>\"\njetstream = {{ stream = \"{stream}\", durable = \"d{sfx}\", max_ack_pending = 32 }}"
    );
    let gws = gateways(&durable, 2).await;
    let mut acks = Vec::new();
    for i in 0..N {
        let (h, p) = numbered(i);
        acks.push(
            js.publish_with_headers(format!("t{sfx}.js.{i}"), h, p)
                .await
                .unwrap(),
        );
    }
    for a in acks {
        a.await.unwrap();
    }
    exactly_once(&gws, N).await;
    common::eventually(WAIT, "every message to be acked", || async {
        (consumer_info(&js, &stream, &format!("d{sfx}")).await.0 == 0).then_some(())
    })
    .await;
    exactly_once(&gws, N).await;
    js.delete_stream(&stream).await.unwrap();
}

async fn post_binary(url: &str, id: &str, ty: &str) -> u16 {
    reqwest::Client::new()
        .post(url)
        .header("ce-specversion", "1.0")
        .header("ce-id", id)
        .header("ce-source", "/b2")
        .header("ce-type", ty)
        .header("content-type", "text/plain")
        .body("x")
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// B2: an event whose `type` makes the JetStream subject invalid fails permanently, at once,
/// and a sender cannot open the sink's circuit with such events.
#[tokio::test]
async fn b2_invalid_jetstream_subject_is_permanent_and_cannot_trip_the_breaker() {
    let sfx = common::suffix();
    let stream = format!("FERRY_B2_{sfx}");
    let config = format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[sources.web]
type = "http"
listen = "127.0.0.1:0"
path = "/events"

[sinks.js]
type = "nats"
url = "{NATS}"
subject = "b2{sfx}.{{type}}"
jetstream = true
stream = {{ name = "{stream}", subjects = ["b2{sfx}.>"] }}
retry = {{ max_attempts = 3, initial_backoff_ms = 50, max_backoff_ms = 50 }}
circuit_breaker = {{ failures = 2, probe_interval_ms = 30000 }}

[routes.all]
from = ["web"]
to = ["js"]
"#
    );
    let gw = TestGateway::start(&config).await;
    common::ready(&gw, WAIT).await;
    let url = gw.url("web", "/events");
    for i in 0..4 {
        assert_eq!(
            post_binary(&url, &format!("bad-{i}"), "order created").await,
            502
        );
    }
    let metrics = gw.metrics().await;
    assert_eq!(
        common::metric(&metrics, "ferry_delivery_retries_total{sink=\"js\"}"),
        0.0,
        "an invalid subject is never retried"
    );
    assert_eq!(post_binary(&url, "good", "com.example.ok").await, 202);
    let js = jetstream::new(client().await);
    js.delete_stream(&stream).await.unwrap();
    gw.gateway.shutdown().await;
}

fn jetstream_sink_config(url: &str, subject: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[sources.web]
type = "http"
listen = "127.0.0.1:0"
path = "/events"

[sinks.js]
type = "nats"
url = "{url}"
subject = "{subject}"
jetstream = true
timeout_ms = 2000
retry = {{ max_attempts = 2, initial_backoff_ms = 50, max_backoff_ms = 50 }}

[routes.all]
from = ["web"]
to = ["js"]
"#
    )
}

/// JetStream answering "no responders" because it is not running (a server starting or
/// shutting down answers the same way) is retryable: the event is neither refused for good nor,
/// behind a broker source, acknowledged and lost. (A NATS restart made the MQTT → JetStream
/// fault test lose two acknowledged events this way.)
#[tokio::test]
async fn jetstream_not_answering_is_retried_not_refused() {
    let port = common::closed_port().await.port();
    let args = ["-a", "127.0.0.1", "-p", &port.to_string()].map(String::from);
    let _nats = common::Broker::spawn(
        "/usr/sbin/nats-server",
        &args,
        port,
        tempfile::tempdir().unwrap(),
    );
    let sfx = common::suffix();
    let gw = TestGateway::start(&jetstream_sink_config(
        &format!("nats://127.0.0.1:{port}"),
        &format!("nojs{sfx}.{{type}}"),
    ))
    .await;
    common::ready(&gw, WAIT).await;
    let status = post_binary(&gw.url("web", "/events"), "unavailable-1", "com.example.a").await;
    assert_eq!(status, 502, "all attempts failed");
    let metrics = gw.metrics().await;
    assert_eq!(
        common::metric(&metrics, "ferry_delivery_retries_total{sink=\"js\"}"),
        1.0,
        "JetStream not answering is retried"
    );
    assert_eq!(
        common::metric(
            &metrics,
            "ferry_delivery_failures_total{sink=\"js\",kind=\"permanent\"}"
        ),
        0.0
    );
    gw.gateway.shutdown().await;
}

/// A subject no stream captures stays a permanent failure: JetStream itself says so.
#[tokio::test]
async fn a_subject_no_stream_captures_is_permanent() {
    let sfx = common::suffix();
    let gw = TestGateway::start(&jetstream_sink_config(
        NATS,
        &format!("nostream{sfx}.{{type}}"),
    ))
    .await;
    common::ready(&gw, WAIT).await;
    let status = post_binary(&gw.url("web", "/events"), "nostream-1", "com.example.a").await;
    assert_eq!(status, 502);
    let metrics = gw.metrics().await;
    assert_eq!(
        common::metric(&metrics, "ferry_delivery_retries_total{sink=\"js\"}"),
        0.0,
        "no stream for the subject is never retried"
    );
    assert_eq!(
        common::metric(
            &metrics,
            "ferry_delivery_failures_total{sink=\"js\",kind=\"permanent\"}"
        ),
        1.0
    );
    gw.gateway.shutdown().await;
}

/// S7: a secret in a sink URL (password, query) reaches neither the reply to a core NATS
/// requester nor the dead-lettered copy of an event.
#[tokio::test]
async fn s7_sink_url_secrets_reach_neither_replies_nor_dead_letters() {
    let sfx = common::suffix();
    let dead = common::closed_port().await;
    let config = format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[sources.web]
type = "http"
listen = "127.0.0.1:0"
path = "/events"

[sources.req]
type = "nats"
url = "{NATS}"
subject = "s7{sfx}.>"

[sinks.secret]
type = "http"
url = "http://user:hunter2@{dead}/x?api_key=K3Y"

[sinks.secret_dl]
type = "http"
url = "http://user:hunter2@{dead}/x?api_key=K3Y"
dead_letter = "dlq"

[sinks.dlq]
type = "file"
path = "{{dir}}/dlq.jsonl"

[routes.nats]
from = ["req"]
to = ["secret"]

[routes.web]
from = ["web"]
to = ["secret_dl"]
"#
    );
    let gw = TestGateway::start(&config).await;
    common::ready(&gw, WAIT).await;
    let nats = client().await;
    let reply = nats
        .request(
            format!("s7{sfx}.x"),
            Bytes::from_static(
                br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","datacontenttype":"application/json","data":{}}"#,
            ),
        )
        .await
        .unwrap();
    let headers = reply.headers.expect("reply headers");
    assert_eq!(headers.get("Ferry-Status").unwrap().as_str(), "502");
    let error = headers.get("Ferry-Error").unwrap().as_str().to_owned();
    assert!(error.contains("secret"), "names the sink: {error}");
    for secret in ["hunter2", "K3Y", "api_key", "127.0.0.1"] {
        assert!(!error.contains(secret), "{secret} in {error}");
    }

    assert_eq!(post_binary(&gw.url("web", "/events"), "d1", "t").await, 202);
    let lines = gw.lines("dlq.jsonl");
    assert_eq!(lines.len(), 1);
    let why = lines[0]["deadlettererror"].as_str().unwrap();
    assert!(why.contains("connection failed"), "{why}");
    for secret in ["hunter2", "K3Y", "api_key"] {
        assert!(!why.contains(secret), "{secret} in {why}");
    }
    gw.gateway.shutdown().await;
}

/// S11: an attribute value cannot add subject tokens or wildcards. By default the event is
/// refused (dead-lettered); `template_values = "escape"` percent-encodes the value instead.
#[tokio::test]
async fn s11_attribute_values_cannot_add_subject_tokens() {
    let sfx = common::suffix();
    let config = format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[sources.web]
type = "http"
listen = "127.0.0.1:0"
path = "/events"

[sinks.refuse]
type = "nats"
url = "{NATS}"
subject = "s11{sfx}.r.{{subject}}.inbox"
dead_letter = "dlq"

[sinks.escape]
type = "nats"
url = "{NATS}"
subject = "s11{sfx}.e.{{subject}}.inbox"
template_values = "escape"

[sinks.dlq]
type = "file"
path = "{{dir}}/dlq.jsonl"

[routes.all]
from = ["web"]
to = ["refuse", "escape"]
"#
    );
    let gw = TestGateway::start(&config).await;
    common::ready(&gw, WAIT).await;
    let nats = client().await;
    let mut sub = nats.subscribe(format!("s11{sfx}.>")).await.unwrap();
    nats.flush().await.unwrap();
    let post = |id: &'static str, subject: &'static str| {
        let url = gw.url("web", "/events");
        async move {
            reqwest::Client::new()
                .post(url)
                .header("ce-specversion", "1.0")
                .header("ce-id", id)
                .header("ce-source", "/s11")
                .header("ce-type", "com.example.t")
                .header("ce-subject", subject)
                .body("x")
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(post("ok", "tenant-a").await, 202);
    assert_eq!(post("evil", "tenant-b.x").await, 202);
    let mut subjects = BTreeSet::new();
    for _ in 0..3 {
        let m = tokio::time::timeout(WAIT, sub.next())
            .await
            .unwrap()
            .unwrap();
        subjects.insert(m.subject.to_string());
    }
    let expected: BTreeSet<String> = [
        format!("s11{sfx}.r.tenant-a.inbox"),
        format!("s11{sfx}.e.tenant-a.inbox"),
        format!("s11{sfx}.e.tenant-b%2Ex.inbox"),
    ]
    .into_iter()
    .collect();
    assert_eq!(subjects, expected);
    let dead = gw.lines("dlq.jsonl");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["id"], "evil");
    assert_eq!(dead[0]["deadletterreason"], "permanent");
    let why = dead[0]["deadlettererror"].as_str().unwrap();
    assert!(why.contains("subject") && why.contains("`.`"), "{why}");
    gw.gateway.shutdown().await;
}
