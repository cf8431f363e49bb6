//! The AMQP source and sink against the real RabbitMQ on 127.0.0.1:5672 (guest/guest).
//! The other side of every test uses lapin directly. Each test names its own exchanges and
//! queues with a random suffix; queues expire on their own if a test dies half-way.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Receiver, TestGateway};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use serde_json::{json, Value};
use tokio_stream::StreamExt as _;

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Fails (never skips) when the broker is missing.
async fn rabbit() -> (Connection, Channel) {
    let connection = tokio::time::timeout(
        Duration::from_secs(10),
        Connection::connect(URL, ConnectionProperties::default()),
    )
    .await
    .expect("RabbitMQ did not answer on 127.0.0.1:5672 within 10 s (scripts/brokers starts it)")
    .expect("RabbitMQ is not reachable on 127.0.0.1:5672 (scripts/brokers starts it)");
    let channel = connection.create_channel().await.expect("channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm_select");
    (connection, channel)
}

fn string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

/// Declares a queue that the broker deletes a minute after its last use.
async fn declare_queue(channel: &Channel, name: &str, mut arguments: FieldTable) {
    arguments.insert("x-expires".into(), AMQPValue::LongInt(60_000));
    channel
        .queue_declare(name.into(), QueueDeclareOptions::default(), arguments)
        .await
        .expect("queue_declare");
}

async fn declare_exchange(channel: &Channel, name: &str, kind: ExchangeKind) {
    channel
        .exchange_declare(
            name.into(),
            kind,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("exchange_declare");
}

async fn bind(channel: &Channel, queue: &str, exchange: &str, key: &str) {
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("queue_bind");
}

async fn cleanup(channel: &Channel, queues: &[&str], exchanges: &[&str]) {
    for q in queues {
        let _ = channel
            .queue_delete((*q).into(), QueueDeleteOptions::default())
            .await;
    }
    for x in exchanges {
        let _ = channel
            .exchange_delete((*x).into(), ExchangeDeleteOptions::default())
            .await;
    }
}

/// Messages ready in a queue.
async fn ready(channel: &Channel, queue: &str) -> u32 {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("passive queue_declare")
        .message_count()
}

async fn publish(channel: &Channel, queue: &str, properties: BasicProperties, body: &[u8]) {
    let confirm = channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions {
                mandatory: true,
                immediate: false,
            },
            body,
            properties,
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    assert!(confirm.is_ack() && confirm.take_message().is_none());
}

/// Takes `n` messages from a queue (acking them), or panics after the deadline.
async fn take(channel: &Channel, queue: &str, n: usize) -> Vec<lapin::message::Delivery> {
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("basic_consume");
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} messages arrived on {queue}", out.len()))
            .expect("consumer open")
            .expect("delivery");
        d.ack(BasicAckOptions::default()).await.expect("ack");
        out.push(d);
    }
    out
}

async fn wait_ready(gw: &TestGateway) {
    let url = gw.admin("/readyz");
    common::until(Duration::from_secs(15), "gateway ready", || async {
        reqwest::get(&url)
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
}

fn header<'a>(d: &'a lapin::message::Delivery, name: &str) -> Option<&'a AMQPValue> {
    d.properties.headers().as_ref()?.inner().get(name)
}

fn text(v: Option<&AMQPValue>) -> Option<String> {
    match v? {
        AMQPValue::LongString(s) => Some(String::from_utf8(s.as_bytes().to_vec()).unwrap()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

fn metric(metrics: &str, name: &str, labels: &[&str]) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn http_source_config(sinks: &str, routes: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[sources.web]
type = "http"
listen = "127.0.0.1:0"
path = "/events"
{sinks}
{routes}
"#
    )
}

// 1. HTTP source → AMQP sink, both modes.
#[tokio::test]
async fn http_to_amqp_binary_and_structured() {
    let (_conn, ch) = rabbit().await;
    let exchange = common::unique("ferry.test.x");
    let queue = common::unique("ferry.test.q");
    declare_exchange(&ch, &exchange, ExchangeKind::Topic).await;
    declare_queue(&ch, &queue, FieldTable::default()).await;
    bind(&ch, &queue, &exchange, "#").await;

    let config = http_source_config(
        &format!(
            r#"
[sinks.orders_amqp]
type = "amqp"
url = "{URL}"
exchange = "{exchange}"
routing_key = "{{type}}"
mode = "binary"

[sinks.structured]
type = "amqp"
url = "{URL}"
exchange = "{exchange}"
routing_key = "events.{{subject}}"
mode = "structured"
header_prefix = "ce-"
"#
        ),
        r#"
[routes.bin]
from = ["web"]
to = ["orders_amqp"]
filters = [{ exact = { type = "com.example.order.created" } }]

[routes.str]
from = ["web"]
to = ["structured"]
filters = [{ exact = { type = "com.example.order.paid" } }]
"#,
    );
    let gw = TestGateway::start(&config).await;
    let url = gw.url("web", "/events");
    let client = reqwest::Client::new();

    let resp = client
        .post(&url)
        .header("ce-specversion", "1.0")
        .header("ce-id", "o-1")
        .header("ce-source", "/shop")
        .header("ce-type", "com.example.order.created")
        .header("ce-time", "2026-11-24T10:00:00.123+02:00")
        .header("ce-tenant", "acme")
        .header("content-type", "application/json")
        .body(r#"{"order": 17}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    // The publisher confirm came before the 202: the message is already queued.
    assert_eq!(ready(&ch, &queue).await, 1);

    let resp = client
        .post(&url)
        .header("content-type", "application/cloudevents+json")
        .body(r#"{"specversion":"1.0","id":"o-2","source":"/shop","type":"com.example.order.paid","subject":"17","data":{"order":17}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);

    let got = take(&ch, &queue, 2).await;
    let binary = &got[0];
    assert_eq!(binary.routing_key.as_str(), "com.example.order.created");
    assert_eq!(
        binary
            .properties
            .content_type()
            .as_ref()
            .map(ShortString::as_str),
        Some("application/json")
    );
    assert_eq!(*binary.properties.delivery_mode(), Some(2));
    assert_eq!(
        text(header(binary, "cloudEvents_specversion")).as_deref(),
        Some("1.0")
    );
    assert_eq!(
        text(header(binary, "cloudEvents_id")).as_deref(),
        Some("o-1")
    );
    assert_eq!(
        text(header(binary, "cloudEvents_source")).as_deref(),
        Some("/shop")
    );
    assert_eq!(
        text(header(binary, "cloudEvents_time")).as_deref(),
        Some("2026-11-24T10:00:00.123+02:00")
    );
    assert_eq!(
        text(header(binary, "cloudEvents_tenant")).as_deref(),
        Some("acme")
    );
    assert!(header(binary, "cloudEvents_datacontenttype").is_none());
    assert_eq!(binary.data, br#"{"order": 17}"#);

    let structured = &got[1];
    assert_eq!(structured.routing_key.as_str(), "events.17");
    assert!(structured
        .properties
        .content_type()
        .as_ref()
        .unwrap()
        .as_str()
        .starts_with("application/cloudevents+json"));
    let body: Value = serde_json::from_slice(&structured.data).unwrap();
    assert_eq!(body["id"], "o-2");
    assert_eq!(body["data"], json!({"order": 17}));

    gw.gateway.shutdown().await;
    cleanup(&ch, &[&queue], &[&exchange]).await;
}

fn amqp_source_config(queue: &str, extra: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[sources.inbox]
type = "amqp"
url = "{URL}"
queue = "{queue}"
prefetch = 64
{extra}

[sinks.archive]
type = "file"
path = "{{dir}}/events.jsonl"

[routes.all]
from = ["inbox"]
to = ["archive"]
"#
    )
}

// 2. AMQP source → file sink: every mode and prefix decodes to the same event.
#[tokio::test]
async fn amqp_to_file_all_modes_and_prefixes() {
    let (_conn, ch) = rabbit().await;
    let queue = common::unique("ferry.test.inbox");
    declare_queue(&ch, &queue, FieldTable::default()).await;

    let mut h = FieldTable::default();
    for (k, v) in [
        ("cloudEvents_specversion", string("1.0")),
        ("cloudEvents_id", string("full")),
        ("cloudEvents_source", string("https://example.com/src")),
        ("cloudEvents_type", string("com.example.full")),
        (
            "cloudEvents_dataschema",
            string("https://example.com/schema"),
        ),
        ("cloudEvents_subject", string("Euro €")),
        ("cloudEvents_time", string("2026-01-02T03:04:05.678Z")),
        ("cloudEvents_tenant", string("acme")),
        ("cloudEvents_priority", AMQPValue::LongInt(7)),
        ("x-trace", string("t-1")),
    ] {
        h.insert(k.into(), v);
    }
    let props = BasicProperties::default()
        .with_headers(h)
        .with_content_type("application/octet-stream".into());
    publish(&ch, &queue, props, &[0, 1, 2, 255]).await;

    let props = BasicProperties::default()
        .with_content_type("application/cloudevents+json; charset=utf-8".into());
    publish(&ch, &queue, props, br#"{"specversion":"1.0","id":"structured","source":"/s","type":"com.example.s","data":{"a":1}}"#).await;

    for (prefix, id) in [("ce-", "knative"), ("cloudEvents:", "colon")] {
        let mut h = FieldTable::default();
        h.insert(format!("{prefix}specversion").into(), string("1.0"));
        h.insert(format!("{prefix}id").into(), string(id));
        h.insert(format!("{prefix}source").into(), string("/s"));
        h.insert(format!("{prefix}type").into(), string("com.example.p"));
        h.insert(format!("{prefix}flag").into(), AMQPValue::Boolean(true));
        let props = BasicProperties::default()
            .with_headers(h)
            .with_content_type("text/plain".into());
        publish(&ch, &queue, props, b"hello").await;
    }

    let gw = TestGateway::start(&amqp_source_config(&queue, "")).await;
    common::until(Duration::from_secs(15), "4 events in the file", || async {
        gw.lines("events.jsonl").len() == 4
    })
    .await;
    let lines: Vec<Value> = gw
        .lines("events.jsonl")
        .into_iter()
        .map(common::without_trace)
        .collect();
    let by_id = |id: &str| {
        lines
            .iter()
            .find(|l| l["id"] == id)
            .unwrap_or_else(|| panic!("{id} missing in {lines:?}"))
            .clone()
    };
    assert_eq!(
        by_id("full"),
        json!({
            "specversion": "1.0",
            "id": "full",
            "source": "https://example.com/src",
            "type": "com.example.full",
            "datacontenttype": "application/octet-stream",
            "dataschema": "https://example.com/schema",
            "subject": "Euro €",
            "time": "2026-01-02T03:04:05.678Z",
            "priority": 7,
            "tenant": "acme",
            "data_base64": "AAEC/w=="
        })
    );
    assert_eq!(by_id("structured")["data"], json!({"a": 1}));
    for id in ["knative", "colon"] {
        let e = by_id(id);
        assert_eq!(e["flag"], true);
        assert_eq!(e["data"], "hello");
        assert_eq!(e["datacontenttype"], "text/plain");
    }
    common::until(Duration::from_secs(5), "4 accepted", || async {
        metric(
            &gw.metrics().await,
            "ferry_events_accepted_total",
            &["inbox"],
        ) == Some(4.0)
    })
    .await;
    gw.gateway.shutdown().await;
    // Everything was acknowledged: nothing returns to the queue when the consumer leaves.
    assert_eq!(ready(&ch, &queue).await, 0);
    cleanup(&ch, &[&queue], &[]).await;
}

// 3. An undecodable message is dead-lettered and counted.
#[tokio::test]
async fn undecodable_message_is_dead_lettered() {
    let (_conn, ch) = rabbit().await;
    let queue = common::unique("ferry.test.inbox");
    let dlx = common::unique("ferry.test.dlx");
    let dlq = common::unique("ferry.test.dlq");
    declare_exchange(&ch, &dlx, ExchangeKind::Fanout).await;
    declare_queue(&ch, &dlq, FieldTable::default()).await;
    bind(&ch, &dlq, &dlx, "").await;

    // The source declares its queue with the dead-letter exchange.
    let extra = format!(
        r#"on_failure = "dead-letter"
declare = {{ durable = false, auto_delete = true, dead_letter_exchange = "{dlx}" }}"#
    );
    let gw = TestGateway::start(&amqp_source_config(&queue, &extra)).await;
    wait_ready(&gw).await;

    let props = BasicProperties::default().with_content_type("text/plain".into());
    publish(&ch, &queue, props, b"not an event").await;

    let dead = take(&ch, &dlq, 1).await;
    assert_eq!(dead[0].data, b"not an event");
    assert!(header(&dead[0], "x-death").is_some());
    common::until(Duration::from_secs(5), "rejected counter", || async {
        metric(
            &gw.metrics().await,
            "ferry_events_rejected_total",
            &["source=\"inbox\"", "reason=\"undecodable\""],
        ) == Some(1.0)
    })
    .await;
    assert!(gw.lines("events.jsonl").is_empty());
    gw.gateway.shutdown().await;
    cleanup(&ch, &[&queue, &dlq], &[&dlx]).await;
}

// 4a. No loss: an unroutable publish is never a 202.
#[tokio::test]
async fn unroutable_publish_fails_the_request() {
    let (_conn, ch) = rabbit().await;
    let exchange = common::unique("ferry.test.x");
    let queue = common::unique("ferry.test.q");
    let config = http_source_config(
        &format!(
            r#"
[sinks.out]
type = "amqp"
url = "{URL}"
exchange = "{exchange}"
routing_key = "{{type}}"
confirm_timeout_ms = 5000
"#
        ),
        "[routes.all]\nfrom = [\"web\"]\nto = [\"out\"]\n",
    );
    let gw = TestGateway::start(&config).await;
    let url = gw.url("web", "/events");
    let client = reqwest::Client::new();
    let send = || {
        client
            .post(&url)
            .header("ce-specversion", "1.0")
            .header("ce-id", "n-1")
            .header("ce-source", "/s")
            .header("ce-type", "com.example.t")
            .body("x")
            .send()
    };

    // The exchange does not exist: the broker closes the channel.
    let status = send().await.unwrap().status();
    assert!(status.is_server_error(), "{status}");
    // The exchange exists, but no queue is bound: the broker returns the message.
    declare_exchange(&ch, &exchange, ExchangeKind::Topic).await;
    let status = send().await.unwrap().status();
    assert!(status.is_server_error(), "{status}");
    // Now a queue takes it.
    declare_queue(&ch, &queue, FieldTable::default()).await;
    bind(&ch, &queue, &exchange, "#").await;
    let status = send().await.unwrap().status();
    assert_eq!(status.as_u16(), 202);
    assert_eq!(ready(&ch, &queue).await, 1);

    gw.gateway.shutdown().await;
    cleanup(&ch, &[&queue], &[&exchange]).await;
}

// 4b. No loss: a failing sink gets the message again until it takes it.
#[tokio::test]
async fn failed_delivery_is_requeued_until_it_succeeds() {
    let (_conn, ch) = rabbit().await;
    let queue = common::unique("ferry.test.inbox");
    declare_queue(&ch, &queue, FieldTable::default()).await;
    let mut receiver = Receiver::start().await;
    receiver.set_status(500);
    let config = format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[sources.inbox]
type = "amqp"
url = "{URL}"
queue = "{queue}"
requeue_delay_ms = 20

[sinks.hook]
type = "http"
url = "http://{}/hook"

[routes.all]
from = ["inbox"]
to = ["hook"]
"#,
        receiver.addr
    );
    let gw = TestGateway::start(&config).await;
    let mut h = FieldTable::default();
    for (k, v) in [
        ("cloudEvents_specversion", "1.0"),
        ("cloudEvents_id", "retry-1"),
        ("cloudEvents_source", "/s"),
        ("cloudEvents_type", "com.example.t"),
    ] {
        h.insert(k.into(), string(v));
    }
    publish(
        &ch,
        &queue,
        BasicProperties::default().with_headers(h),
        b"x",
    )
    .await;

    let mut deliveries = 0;
    while deliveries < 3 {
        let r = tokio::time::timeout(Duration::from_secs(10), receiver.rx.recv())
            .await
            .expect("the message is redelivered")
            .expect("receiver open");
        assert_eq!(r.headers.get("ce-id").unwrap(), "retry-1");
        deliveries += 1;
    }
    receiver.set_status(200);
    common::until(
        Duration::from_secs(10),
        "accepted after the receiver recovers",
        || async {
            metric(
                &gw.metrics().await,
                "ferry_events_accepted_total",
                &["inbox"],
            ) == Some(1.0)
        },
    )
    .await;
    gw.gateway.shutdown().await;
    // Acknowledged: nothing goes back to the queue when the consumer leaves.
    assert_eq!(ready(&ch, &queue).await, 0);
    while let Ok(r) = receiver.rx.try_recv() {
        assert_eq!(r.headers.get("ce-id").unwrap(), "retry-1");
    }
    cleanup(&ch, &[&queue], &[]).await;
}

// 5. Competing consumers: two gateways on one queue, every message exactly once.
#[tokio::test]
async fn competing_consumers_share_a_queue() {
    let (_conn, ch) = rabbit().await;
    let queue = common::unique("ferry.test.inbox");
    declare_queue(&ch, &queue, FieldTable::default()).await;
    let config = amqp_source_config(&queue, "").replace("prefetch = 64", "prefetch = 8");
    let a = TestGateway::start(&config).await;
    let b = TestGateway::start(&config).await;
    wait_ready(&a).await;
    wait_ready(&b).await;

    const N: usize = 200;
    for i in 0..N {
        let mut h = FieldTable::default();
        h.insert("ce-specversion".into(), string("1.0"));
        h.insert("ce-id".into(), string(&format!("m-{i}")));
        h.insert("ce-source".into(), string("/s"));
        h.insert("ce-type".into(), string("com.example.t"));
        let confirm = ch
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                b"x",
                BasicProperties::default().with_headers(h),
            )
            .await
            .expect("publish");
        drop(confirm);
    }
    ch.wait_for_confirms().await.expect("confirms");

    common::until(
        Duration::from_secs(30),
        "all messages in the two files",
        || async { a.lines("events.jsonl").len() + b.lines("events.jsonl").len() >= N },
    )
    .await;
    let (la, lb) = (a.lines("events.jsonl"), b.lines("events.jsonl"));
    assert_eq!(la.len() + lb.len(), N);
    let ids: BTreeSet<String> = la
        .iter()
        .chain(&lb)
        .map(|l| l["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), N, "no duplicates");
    assert!(!la.is_empty() && !lb.is_empty(), "both instances consumed");
    a.gateway.shutdown().await;
    b.gateway.shutdown().await;
    assert_eq!(ready(&ch, &queue).await, 0);
    cleanup(&ch, &[&queue], &[]).await;
}

// 6. Throughput without loss: 10 000 POSTs, 10 000 messages.
#[tokio::test]
async fn ten_thousand_events_all_confirmed() {
    let (_conn, ch) = rabbit().await;
    let exchange = common::unique("ferry.test.x");
    let queue = common::unique("ferry.test.q");
    let config = http_source_config(
        &format!(
            r#"
[sinks.out]
type = "amqp"
url = "{URL}"
exchange = "{exchange}"
routing_key = "{{type}}"
declare = {{ exchange_type = "topic", durable = false }}
"#
        ),
        "[routes.all]\nfrom = [\"web\"]\nto = [\"out\"]\n",
    );
    let gw = TestGateway::start(&config).await;
    wait_ready(&gw).await;
    declare_queue(&ch, &queue, FieldTable::default()).await;
    bind(&ch, &queue, &exchange, "#").await;

    const N: usize = 10_000;
    const TASKS: usize = 32;
    let url = gw.url("web", "/events");
    let client = reqwest::Client::new();
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let (client, url) = (client.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let mut accepted = 0;
            for i in (t..N).step_by(TASKS) {
                let resp = client
                    .post(&url)
                    .header("ce-specversion", "1.0")
                    .header("ce-id", format!("e-{i}"))
                    .header("ce-source", "/load")
                    .header("ce-type", "com.example.load")
                    .header("content-type", "application/json")
                    .body(format!(r#"{{"i":{i}}}"#))
                    .send()
                    .await
                    .expect("request");
                assert_eq!(resp.status().as_u16(), 202);
                accepted += 1;
            }
            accepted
        }));
    }
    let mut accepted = 0;
    for t in tasks {
        accepted += tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("load finishes in time")
            .expect("task");
    }
    assert_eq!(accepted, N);
    assert_eq!(ready(&ch, &queue).await as usize, N);
    gw.gateway.shutdown().await;
    cleanup(&ch, &[&queue], &[&exchange]).await;
}

/// Publishes a binary-mode message with `headers` (name, value) and an optional content type.
async fn publish_headers(
    channel: &Channel,
    queue: &str,
    headers: Vec<(&str, AMQPValue)>,
    content_type: Option<&str>,
    body: &[u8],
) {
    let mut h = FieldTable::default();
    for (k, v) in headers {
        h.insert(k.into(), v);
    }
    let mut props = BasicProperties::default().with_headers(h);
    if let Some(ct) = content_type {
        props = props.with_content_type(ct.into());
    }
    publish(channel, queue, props, body).await;
}

fn spring_required(id: &str) -> Vec<(&'static str, AMQPValue)> {
    vec![
        ("cloudEvents_specversion", string("1.0")),
        ("cloudEvents_id", string(id)),
        ("cloudEvents_source", string("/interop")),
        ("cloudEvents_type", string("com.example.interop")),
    ]
}

// Issue 15 (G1, G3): messages as the Python SDK's AMQP binding (with pika) and the Java SDK's
// Spring AMQP module write them are accepted.
#[tokio::test]
async fn issue15_sdk_and_spring_messages_are_accepted() {
    let (_conn, ch) = rabbit().await;
    let queue = common::unique("ferry.test.inbox");
    declare_queue(&ch, &queue, FieldTable::default()).await;

    // Python SDK `amqp.to_binary`: `time` as an integer of milliseconds since the epoch
    // (pika sends it as a 64-bit long); small values arrive as a 32-bit int.
    let mut h = spring_required("sdk-ms");
    h.push((
        "cloudEvents_time",
        AMQPValue::LongLongInt(1_704_164_645_678),
    ));
    publish_headers(&ch, &queue, h, Some("application/json"), br#"{"a":1}"#).await;
    let mut h = spring_required("sdk-ms-small");
    h.push(("cloudEvents_time", AMQPValue::LongInt(1_500)));
    publish_headers(&ch, &queue, h, None, b"").await;
    // The AMQP 0-9-1 timestamp field type (POSIX seconds), as pika writes a datetime.
    let mut h = spring_required("amqp-timestamp");
    h.push(("cloudEvents_time", AMQPValue::Timestamp(1_704_164_645)));
    publish_headers(&ch, &queue, h, None, b"").await;
    // Spring: `cloudEvents_datacontenttype` and an equal `content_type` property.
    let mut h = spring_required("spring-binary");
    h.push(("cloudEvents_datacontenttype", string("application/json")));
    publish_headers(&ch, &queue, h, Some("application/json"), br#"{"a":2}"#).await;
    // Spring: structured mode marked only by the `cloudEvents_datacontenttype` header.
    publish_headers(
        &ch,
        &queue,
        vec![(
            "cloudEvents_datacontenttype",
            string("application/cloudevents+json"),
        )],
        None,
        br#"{"specversion":"1.0","id":"spring-structured","source":"/interop","type":"com.example.interop","data":{"a":3}}"#,
    )
    .await;

    let gw = TestGateway::start(&amqp_source_config(&queue, "")).await;
    common::until(Duration::from_secs(15), "5 events in the file", || async {
        gw.lines("events.jsonl").len() == 5
    })
    .await;
    let lines = gw.lines("events.jsonl");
    let by_id = |id: &str| {
        lines
            .iter()
            .find(|l| l["id"] == id)
            .unwrap_or_else(|| panic!("{id} missing in {lines:?}"))
            .clone()
    };
    assert_eq!(by_id("sdk-ms")["time"], "2024-01-02T03:04:05.678Z");
    assert_eq!(by_id("sdk-ms")["data"], json!({"a": 1}));
    assert_eq!(by_id("sdk-ms-small")["time"], "1970-01-01T00:00:01.5Z");
    assert_eq!(by_id("amqp-timestamp")["time"], "2024-01-02T03:04:05Z");
    let spring = by_id("spring-binary");
    assert_eq!(spring["datacontenttype"], "application/json");
    assert_eq!(spring["data"], json!({"a": 2}));
    assert_eq!(by_id("spring-structured")["data"], json!({"a": 3}));
    gw.gateway.shutdown().await;
    assert_eq!(ready(&ch, &queue).await, 0);
    cleanup(&ch, &[&queue], &[]).await;
}

// B6: a `time` header of a type that cannot be a timestamp is refused, and the reason says
// what `time` may be (not a remark about CloudEvents Integer).
#[tokio::test]
async fn b6_time_of_the_wrong_type_is_refused_naming_time() {
    let (_conn, ch) = rabbit().await;
    let queue = common::unique("ferry.test.inbox");
    let dlx = common::unique("ferry.test.dlx");
    let dlq = common::unique("ferry.test.dlq");
    declare_exchange(&ch, &dlx, ExchangeKind::Fanout).await;
    declare_queue(&ch, &dlq, FieldTable::default()).await;
    bind(&ch, &dlq, &dlx, "").await;
    let mut args = FieldTable::default();
    args.insert("x-dead-letter-exchange".into(), string(&dlx));
    declare_queue(&ch, &queue, args).await;
    let mut h = spring_required("bad-time");
    h.push(("cloudEvents_time", AMQPValue::Double(1.5)));
    publish_headers(&ch, &queue, h, None, b"").await;

    let dir = tempfile::tempdir().unwrap();
    let ferry = common::FerryProcess::start(dir.path(), &amqp_source_config(&queue, ""));
    let line = ferry
        .wait_log("the rejection", Duration::from_secs(15), |lines| {
            lines
                .iter()
                .find(|l| l.contains("message rejected"))
                .cloned()
        })
        .await;
    assert!(line.contains("cloudEvents_time"), "{line}");
    assert!(
        line.contains("must be a string (RFC 3339), an AMQP timestamp or an integer"),
        "{line}"
    );
    assert!(line.contains("\"invalid\""), "{line}");
    let dead = take(&ch, &dlq, 1).await;
    assert_eq!(
        text(header(&dead[0], "cloudEvents_id")).as_deref(),
        Some("bad-time")
    );
    drop(ferry);
    cleanup(&ch, &[&queue, &dlq], &[&dlx]).await;
}

// R5: a message over `max_message_bytes` is nacked without requeue (dead-lettered) and
// counted as too_large; one within the limit passes.
#[tokio::test]
async fn r5_oversize_message_is_dead_lettered() {
    let (_conn, ch) = rabbit().await;
    let queue = common::unique("ferry.test.inbox");
    let dlx = common::unique("ferry.test.dlx");
    let dlq = common::unique("ferry.test.dlq");
    declare_exchange(&ch, &dlx, ExchangeKind::Fanout).await;
    declare_queue(&ch, &dlq, FieldTable::default()).await;
    bind(&ch, &dlq, &dlx, "").await;
    let mut args = FieldTable::default();
    args.insert("x-dead-letter-exchange".into(), string(&dlx));
    declare_queue(&ch, &queue, args).await;
    publish_headers(&ch, &queue, spring_required("big"), None, &[b'x'; 2049]).await;
    publish_headers(&ch, &queue, spring_required("fits"), None, &[b'x'; 2048]).await;

    let gw = TestGateway::start(&amqp_source_config(&queue, "max_message_bytes = 2048")).await;
    let dead = take(&ch, &dlq, 1).await;
    assert_eq!(
        text(header(&dead[0], "cloudEvents_id")).as_deref(),
        Some("big")
    );
    common::until(
        Duration::from_secs(10),
        "the small one delivered",
        || async { gw.lines("events.jsonl").len() == 1 },
    )
    .await;
    assert_eq!(gw.lines("events.jsonl")[0]["id"], "fits");
    common::until(Duration::from_secs(5), "too_large counted", || async {
        metric(
            &gw.metrics().await,
            "ferry_events_rejected_total",
            &["source=\"inbox\"", "reason=\"too_large\""],
        ) == Some(1.0)
    })
    .await;
    gw.gateway.shutdown().await;
    cleanup(&ch, &[&queue, &dlq], &[&dlx]).await;
}
