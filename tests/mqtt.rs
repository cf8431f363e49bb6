//! The MQTT source and sink against the real Mosquitto on 127.0.0.1:1883 (`scripts/brokers`
//! starts it). Every test uses its own topics and client ids; the other side is rumqttc.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{Receiver, TestGateway};
use ferry_core::{CloudEvent, Data};
use rumqttc::v5::mqttbytes::v5::{Packet, Publish, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

const BROKER: &str = "127.0.0.1:1883 (start it with scripts/brokers)";

async fn ready(gw: &TestGateway) {
    let url = gw.admin("/readyz");
    common::until(
        Duration::from_secs(10),
        &format!("gateway ready (Mosquitto on {BROKER})"),
        || async {
            reqwest::get(&url)
                .await
                .is_ok_and(|r| r.status().is_success())
        },
    )
    .await;
}

/// The other side: an MQTT 5 (or 3.1.1) test client.
struct Peer {
    client: AsyncClient,
    v311: Option<rumqttc::AsyncClient>,
    messages: mpsc::UnboundedReceiver<Publish>,
    pubacks: Arc<AtomicUsize>,
}

impl Peer {
    /// An MQTT 5 client subscribed (QoS 1) to `filters`, once the broker confirmed.
    async fn v5(filters: &[&str]) -> Peer {
        let mut options = MqttOptions::new(format!("peer-{}", common::suffix()), "127.0.0.1", 1883);
        options.set_max_packet_size(Some(1 << 20));
        let (client, mut events) = AsyncClient::new(options, 1000);
        for f in filters {
            client.subscribe(*f, QoS::AtLeastOnce).await.unwrap();
        }
        let (tx, messages) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        let pubacks = Arc::new(AtomicUsize::new(0));
        let acks = Arc::clone(&pubacks);
        let mut waiting = filters.len();
        tokio::spawn(async move {
            let mut ready_tx = Some(ready_tx);
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) if waiting == 0 => {
                        ready_tx.take().map(|r| r.send(()));
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        waiting -= 1;
                        if waiting == 0 {
                            ready_tx.take().map(|r| r.send(()));
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if tx.send(p).is_err() {
                            return;
                        }
                    }
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        acks.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(5), ready_rx)
            .await
            .unwrap_or_else(|_| panic!("no MQTT broker on {BROKER}"))
            .unwrap();
        Peer {
            client,
            v311: None,
            messages,
            pubacks,
        }
    }

    /// Adds an MQTT 3.1.1 client for publishing.
    async fn with_v311(mut self) -> Peer {
        let options =
            rumqttc::MqttOptions::new(format!("peer-{}", common::suffix()), "127.0.0.1", 1883);
        let (client, mut events) = rumqttc::AsyncClient::new(options, 100);
        let acks = Arc::clone(&self.pubacks);
        tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => {
                        acks.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        self.v311 = Some(client);
        self
    }

    async fn publish(&self, topic: &str, payload: impl Into<Bytes>, p: PublishProperties) {
        self.client
            .publish_with_properties(topic, QoS::AtLeastOnce, false, payload.into(), p)
            .await
            .unwrap();
    }

    async fn publish_v311(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        let c = self.v311.as_ref().expect("with_v311");
        c.publish(topic, rumqttc::QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }

    /// Waits until the broker confirmed `n` of this peer's publishes in total.
    async fn confirmed(&self, n: usize) {
        let acks = Arc::clone(&self.pubacks);
        common::until(Duration::from_secs(10), "broker PUBACKs", move || {
            let acks = Arc::clone(&acks);
            async move { acks.load(Ordering::SeqCst) >= n }
        })
        .await;
    }

    async fn next(&mut self) -> Publish {
        tokio::time::timeout(Duration::from_secs(10), self.messages.recv())
            .await
            .expect("an MQTT message in time")
            .expect("peer running")
    }
}

fn props(content_type: Option<&str>, user: &[(&str, &str)]) -> PublishProperties {
    PublishProperties {
        content_type: content_type.map(str::to_owned),
        user_properties: user
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect(),
        ..PublishProperties::default()
    }
}

fn user(p: &Publish, name: &str) -> Option<String> {
    p.properties.as_ref().and_then(|p| {
        p.user_properties
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    })
}

fn content_type(p: &Publish) -> Option<&str> {
    p.properties
        .as_ref()
        .and_then(|p| p.content_type.as_deref())
}

fn topic(p: &Publish) -> String {
    String::from_utf8_lossy(&p.topic).into_owned()
}

/// Lines of a file sink, as events.
fn events(gw: &TestGateway, file: &str) -> Vec<CloudEvent> {
    gw.lines(file)
        .iter()
        .map(|l| ferry_core::json::decode(l.to_string().as_bytes()).expect("a valid event"))
        .map(common::event_without_trace)
        .collect()
}

async fn wait_lines(gw: &TestGateway, file: &str, n: usize) -> Vec<Value> {
    common::until(
        Duration::from_secs(15),
        &format!("{n} lines in {file}"),
        || async { gw.lines(file).len() >= n },
    )
    .await;
    gw.lines(file)
}

fn structured(id: &str) -> Vec<u8> {
    format!(r#"{{"specversion":"1.0","id":"{id}","source":"/test","type":"com.example.test","data":{{"n":1}}}}"#).into_bytes()
}

#[test]
fn binary_mode_needs_mqtt_5() {
    let text = r#"
[sinks.out]
type = "mqtt"
url = "mqtt://127.0.0.1:1883"
protocol = "3.1.1"
topic = "ferry/{type}"
mode = "binary"
"#;
    let err = ferry::Config::from_str_at(text, Path::new("t.toml"), &|_| None).unwrap_err();
    let message = err.to_string();
    assert!(message.contains("sinks.out.mode"), "{message}");
    assert!(message.contains("3.1.1"), "{message}");
}

#[tokio::test]
async fn http_source_to_mqtt_sinks_in_every_mode() {
    let s = common::suffix();
    let mut peer = Peer::v5(&[&format!("ferry-test-{s}/#")]).await;
    let text = format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[sources.web]
type = "http"
listen = "127.0.0.1:0"
path = "/events"

[sinks.bin]
type = "mqtt"
url = "mqtt://127.0.0.1:1883"
protocol = "5"
topic = "ferry-test-{s}/bin/{{type}}"
qos = 1
mode = "binary"

[sinks.structured]
type = "mqtt"
url = "mqtt://127.0.0.1:1883"
protocol = "5"
topic = "ferry-test-{s}/structured/{{subject}}"
mode = "structured"

[sinks.old]
type = "mqtt"
url = "mqtt://127.0.0.1:1883"
protocol = "3.1.1"
topic = "ferry-test-{s}/old"
mode = "structured"
qos = 0

[routes.all]
from = ["web"]
to = ["bin", "structured", "old"]
"#
    );
    let gw = TestGateway::start(&text).await;
    ready(&gw).await;
    let resp = reqwest::Client::new()
        .post(gw.url("web", "/events"))
        .header("ce-specversion", "1.0")
        .header("ce-id", "e-1")
        .header("ce-source", "/shop")
        .header("ce-type", "com.example.order.created")
        .header("ce-subject", "order-17")
        .header("ce-ext", "Euro%20%E2%82%AC")
        .header("ce-num", "5")
        .header("content-type", "application/json")
        .body(r#"{"order":17}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);

    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(peer.next().await);
    }
    got.sort_by_key(topic);
    let [bin, old, st] = <[Publish; 3]>::try_from(got).unwrap();
    assert_eq!(
        topic(&bin),
        format!("ferry-test-{s}/bin/com.example.order.created")
    );
    assert_eq!(user(&bin, "specversion").as_deref(), Some("1.0"));
    assert_eq!(user(&bin, "id").as_deref(), Some("e-1"));
    assert_eq!(user(&bin, "source").as_deref(), Some("/shop"));
    assert_eq!(user(&bin, "subject").as_deref(), Some("order-17"));
    assert_eq!(user(&bin, "ext").as_deref(), Some("Euro €"));
    assert_eq!(user(&bin, "num").as_deref(), Some("5"));
    assert_eq!(user(&bin, "datacontenttype"), None);
    assert_eq!(content_type(&bin), Some("application/json"));
    assert_eq!(&bin.payload[..], br#"{"order":17}"#);

    assert_eq!(topic(&st), format!("ferry-test-{s}/structured/order-17"));
    assert!(content_type(&st)
        .unwrap()
        .starts_with("application/cloudevents+json"));
    assert_eq!(user(&st, "id"), None);
    let body: Value = serde_json::from_slice(&st.payload).unwrap();
    assert_eq!(body["id"], "e-1");
    assert_eq!(body["ext"], "Euro €");
    assert_eq!(body["data"]["order"], 17);

    assert_eq!(topic(&old), format!("ferry-test-{s}/old"));
    assert_eq!(content_type(&old), None);
    let body: Value = serde_json::from_slice(&old.payload).unwrap();
    assert_eq!(body["id"], "e-1");
    assert_eq!(body["type"], "com.example.order.created");
    gw.gateway.shutdown().await;
}

fn full_event(id: &str) -> CloudEvent {
    let mut b = ferry_core::EventBuilder::new();
    for (n, v) in [
        ("specversion", "1.0"),
        ("id", id),
        ("source", "https://example.com/sensors"),
        ("type", "com.example.reading"),
        ("dataschema", "https://example.com/schema/1"),
        ("subject", "room-1"),
        ("time", "2024-05-01T10:00:00.5Z"),
        ("tenant", "acme"),
        ("region", "eu-west"),
    ] {
        b.attribute(n, v.to_owned());
    }
    b.attribute("datacontenttype", "application/octet-stream".into());
    b.set_data(Some(Data::Binary(Bytes::from_static(&[
        0, 159, 146, 150, 255,
    ]))));
    b.build().unwrap()
}

#[tokio::test]
async fn mqtt_sources_to_file_in_every_mode() {
    let s = common::suffix();
    let text = format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[sources.five]
type = "mqtt"
url = "mqtt://127.0.0.1:1883"
protocol = "5"
topics = ["ferry-test-{s}/five/#"]
client_id = "ferry-test-{s}-five"
session_expiry_secs = 60

[sources.old]
type = "mqtt"
url = "mqtt://127.0.0.1:1883"
protocol = "3.1.1"
topics = ["ferry-test-{s}/old"]
client_id = "ferry-test-{s}-old"
clean_start = true

[sinks.archive]
type = "file"
path = "{{dir}}/events.jsonl"

[routes.all]
from = ["five", "old"]
to = ["archive"]
"#
    );
    let gw = TestGateway::start(&text).await;
    ready(&gw).await;
    let peer = Peer::v5(&[]).await.with_v311().await;

    let want = full_event("bin-1");
    let (payload, mut p) = ferry_mqtt::encode_v5(&want, ferry_mqtt::Mode::Binary);
    p.user_properties.push(("Correlation".into(), "c-1".into()));
    peer.publish(&format!("ferry-test-{s}/five/bin"), payload, p)
        .await;
    let lines = wait_lines(&gw, "events.jsonl", 1).await;
    assert_eq!(lines[0]["data_base64"], "AJ+Slv8=");
    assert!(lines[0].get("correlation").is_none());
    assert_eq!(events(&gw, "events.jsonl")[0], want);

    peer.publish(
        &format!("ferry-test-{s}/five/structured"),
        structured("st-1"),
        props(Some("application/cloudevents+json; charset=utf-8"), &[]),
    )
    .await;
    wait_lines(&gw, "events.jsonl", 2).await;
    peer.publish_v311(&format!("ferry-test-{s}/old"), structured("old-1"))
        .await;
    let lines = wait_lines(&gw, "events.jsonl", 3).await;
    let ids: Vec<&str> = lines.iter().map(|l| l["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["bin-1", "st-1", "old-1"]);
    assert_eq!(lines[1]["data"]["n"], 1);
    assert_eq!(lines[2]["source"], "/test");
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("ferry_events_accepted_total{source=\"five\"} 2"),
        "{metrics}"
    );
    gw.gateway.shutdown().await;
}

/// The configuration example of the MQTT documentation, as written.
const DEVICES: &str = r#"
[sources.devices]
type = "mqtt"
url = "mqtt://127.0.0.1:1883"
protocol = "5"                       # or "3.1.1"
topics = ["devices/+/telemetry"]
qos = 1
normalize = { type = "com.example.device.telemetry", source = "mqtt://devices/{mqtt.topic.1}", subject = "{mqtt.topic.1}" }

[sinks.telemetry_out]
type = "mqtt"
url = "mqtt://127.0.0.1:1883"
protocol = "5"
topic = "ferry/{type}"
qos = 1
mode = "binary"
"#;

#[tokio::test]
async fn raw_device_json_is_normalized() {
    let run = common::suffix();
    let mut peer = Peer::v5(&["ferry/com.example.device.telemetry"]).await;
    let text = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n{DEVICES}\n[sinks.archive]\ntype = \"file\"\npath = \"{{dir}}/events.jsonl\"\n\n[routes.devices]\nfrom = [\"devices\"]\nto = [\"archive\", \"telemetry_out\"]\n"
    );
    let gw = TestGateway::start(&text).await;
    ready(&gw).await;
    let raw = format!(r#"{{"temperature":21.5,"run":"{run}"}}"#);
    peer.publish("devices/sensor-17/telemetry", raw.clone(), props(None, &[]))
        .await;
    // The session may hold messages of earlier runs: look for this run's.
    let mine = |l: &Value| l["data"]["run"] == run.as_str();
    common::until(Duration::from_secs(15), "the normalized event", || async {
        gw.lines("events.jsonl").iter().any(mine)
    })
    .await;
    let line = gw.lines("events.jsonl").into_iter().find(mine).unwrap();
    assert_eq!(line["type"], "com.example.device.telemetry");
    assert_eq!(line["source"], "mqtt://devices/sensor-17");
    assert_eq!(line["subject"], "sensor-17");
    // No content type on the wire: a JSON payload is taken as application/json.
    assert_eq!(line["datacontenttype"], "application/json");
    assert_eq!(line["data"], serde_json::from_str::<Value>(&raw).unwrap());
    assert!(line["id"].as_str().is_some_and(|id| !id.is_empty()));
    assert!(line["time"].as_str().is_some());

    // And the sink of the example republished it in binary mode.
    loop {
        let p = peer.next().await;
        if !p.payload.windows(run.len()).any(|w| w == run.as_bytes()) {
            continue;
        }
        assert_eq!(
            user(&p, "source").as_deref(),
            Some("mqtt://devices/sensor-17")
        );
        assert_eq!(user(&p, "subject").as_deref(), Some("sensor-17"));
        assert_eq!(user(&p, "id").as_deref(), line["id"].as_str());
        assert_eq!(&p.payload[..], raw.as_bytes());
        break;
    }
    gw.gateway.shutdown().await;
}

#[tokio::test]
async fn undecodable_messages_are_counted_dead_lettered_and_acked() {
    let s = common::suffix();
    let mut peer = Peer::v5(&[&format!("ferry-test-{s}/dead")]).await;
    let text = format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[sources.raw]
type = "mqtt"
url = "mqtt://127.0.0.1:1883"
topics = ["ferry-test-{s}/in"]
client_id = "ferry-test-{s}-raw"
session_expiry_secs = 60
dead_letter_topic = "ferry-test-{s}/dead"
inflight = 1

[sinks.archive]
type = "file"
path = "{{dir}}/events.jsonl"

[routes.all]
from = ["raw"]
to = ["archive"]
"#
    );
    let gw = TestGateway::start(&text).await;
    ready(&gw).await;
    let input = format!("ferry-test-{s}/in");
    peer.publish(
        &input,
        "not a cloudevent",
        props(Some("text/plain"), &[("k", "v")]),
    )
    .await;
    let dead = peer.next().await;
    assert_eq!(&dead.payload[..], b"not a cloudevent");
    assert_eq!(content_type(&dead), Some("text/plain"));
    assert_eq!(user(&dead, "k").as_deref(), Some("v"));
    assert_eq!(
        user(&dead, "ferry-reject-reason").as_deref(),
        Some("undecodable")
    );
    let metrics_url = gw.admin("/metrics");
    common::until(Duration::from_secs(10), "the rejection counted", || async {
        let m = reqwest::get(&metrics_url)
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        m.contains("ferry_events_rejected_total{source=\"raw\",reason=\"undecodable\"} 1")
    })
    .await;
    // The rejected message was acked: with a window of one, the next one still comes through.
    peer.publish(&input, structured("after"), props(None, &[]))
        .await;
    let lines = wait_lines(&gw, "events.jsonl", 1).await;
    assert_eq!(lines[0]["id"], "after");
    assert_eq!(lines.len(), 1);
    gw.gateway.shutdown().await;
}

#[tokio::test]
async fn failed_delivery_is_redelivered_not_acked() {
    let s = common::suffix();
    let mut receiver = Receiver::start().await;
    receiver.set_status(500);
    let text = format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[sources.in]
type = "mqtt"
url = "mqtt://127.0.0.1:1883"
topics = ["ferry-test-{s}/in"]
client_id = "ferry-test-{s}-in"
session_expiry_secs = 60

[sinks.out]
type = "http"
url = "http://{addr}/hook"

[routes.all]
from = ["in"]
to = ["out"]
"#,
        addr = receiver.addr
    );
    let gw = TestGateway::start(&text).await;
    ready(&gw).await;
    let peer = Peer::v5(&[]).await;
    peer.publish(
        &format!("ferry-test-{s}/in"),
        structured("keep-me"),
        props(None, &[]),
    )
    .await;
    let first = tokio::time::timeout(Duration::from_secs(10), receiver.rx.recv())
        .await
        .expect("first attempt")
        .unwrap();
    assert_eq!(first.headers.get("ce-id").unwrap(), "keep-me");
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("ferry_events_accepted_total{source=\"in\"} 0"),
        "{metrics}"
    );
    receiver.set_status(200);
    // The source hands the unacknowledged message to the pipeline again after a backoff.
    let again = tokio::time::timeout(Duration::from_secs(15), receiver.rx.recv())
        .await
        .expect("redelivery")
        .unwrap();
    assert_eq!(again.headers.get("ce-id").unwrap(), "keep-me");
    let metrics_url = gw.admin("/metrics");
    common::until(Duration::from_secs(10), "the message acked", || async {
        let m = reqwest::get(&metrics_url)
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        m.contains("ferry_events_accepted_total{source=\"in\"} 1")
    })
    .await;
    gw.gateway.shutdown().await;
}

#[tokio::test]
async fn persistent_session_keeps_messages_while_stopped() {
    let s = common::suffix();
    let text = format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[sources.in]
type = "mqtt"
url = "mqtt://127.0.0.1:1883"
topics = ["ferry-test-{s}/in"]
client_id = "ferry-test-{s}-persist"
session_expiry_secs = 60

[sinks.archive]
type = "file"
path = "{{dir}}/events.jsonl"

[routes.all]
from = ["in"]
to = ["archive"]
"#
    );
    let gw = TestGateway::start(&text).await;
    ready(&gw).await;
    assert!(gw.gateway.shutdown().await);

    let peer = Peer::v5(&[]).await;
    for i in 0..3 {
        peer.publish(
            &format!("ferry-test-{s}/in"),
            structured(&format!("while-down-{i}")),
            props(None, &[]),
        )
        .await;
    }
    peer.confirmed(3).await;

    let gw = TestGateway::start(&text).await;
    let lines = wait_lines(&gw, "events.jsonl", 3).await;
    let ids: Vec<&str> = lines.iter().map(|l| l["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["while-down-0", "while-down-1", "while-down-2"]);
    gw.gateway.shutdown().await;
}

#[tokio::test]
async fn shared_subscription_splits_messages_exactly_once() {
    const N: usize = 200;
    let s = common::suffix();
    let config = |instance: &str| {
        format!(
            r#"
[admin]
listen = "127.0.0.1:0"

[sources.in]
type = "mqtt"
url = "mqtt://127.0.0.1:1883"
topics = ["ferry-test-{s}/shared"]
client_id = "ferry-test-{s}-{instance}"
share_group = "g{s}"
session_expiry_secs = 60

[sinks.archive]
type = "file"
path = "{{dir}}/events.jsonl"

[routes.all]
from = ["in"]
to = ["archive"]
"#
        )
    };
    let a = TestGateway::start(&config("a")).await;
    let b = TestGateway::start(&config("b")).await;
    ready(&a).await;
    ready(&b).await;
    let peer = Peer::v5(&[]).await;
    for i in 0..N {
        peer.publish(
            &format!("ferry-test-{s}/shared"),
            structured(&format!("m-{i}")),
            props(None, &[]),
        )
        .await;
    }
    common::until(
        Duration::from_secs(20),
        "every message delivered",
        || async { a.lines("events.jsonl").len() + b.lines("events.jsonl").len() >= N },
    )
    .await;
    let (la, lb) = (a.lines("events.jsonl"), b.lines("events.jsonl"));
    assert!(
        !la.is_empty() && !lb.is_empty(),
        "{} / {}",
        la.len(),
        lb.len()
    );
    let ids: Vec<String> = la
        .iter()
        .chain(&lb)
        .map(|l| l["id"].as_str().unwrap().to_owned())
        .collect();
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(ids.len(), N, "duplicates delivered");
    assert_eq!(unique.len(), N);
    a.gateway.shutdown().await;
    b.gateway.shutdown().await;
}

/// R1: an event whose packet is over `max_packet_bytes`, or whose topic is over 65535 bytes,
/// is dead-lettered as permanent before it is published; the connection and the events
/// published beside it are untouched.
#[tokio::test]
async fn r1_oversize_events_are_dead_lettered_without_touching_the_connection() {
    let s = common::suffix();
    let mut peer = Peer::v5(&[&format!("ferry-r1-{s}/#")]).await;
    let text = format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[sources.web]
type = "http"
listen = "127.0.0.1:0"
path = "/events"

[sinks.out]
type = "mqtt"
url = "mqtt://127.0.0.1:1883"
protocol = "5"
topic = "ferry-r1-{s}/{{subject}}"
qos = 1
mode = "structured"
max_packet_bytes = 200000
dead_letter = "dlq"

[sinks.dlq]
type = "file"
path = "{{dir}}/dlq.jsonl"

[routes.all]
from = ["web"]
to = ["out"]
"#
    );
    let gw = TestGateway::start(&text).await;
    ready(&gw).await;
    let url = gw.url("web", "/events");
    let post = |id: String, subject: String, data: String| {
        let url = url.clone();
        async move {
            let body = serde_json::json!({
                "specversion": "1.0", "id": id, "source": "/r1", "type": "t",
                "subject": subject, "data": data,
            });
            reqwest::Client::new()
                .post(&url)
                .header("content-type", "application/cloudevents+json")
                .body(body.to_string())
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let mut sends = Vec::new();
    for i in 0..6 {
        sends.push(post(format!("ok-{i}"), format!("ok-{i}"), "small".into()));
        if i == 2 {
            sends.push(post("big".into(), "big".into(), "x".repeat(300_000)));
            sends.push(post("long".into(), "t".repeat(70_000), "small".into()));
        }
    }
    let statuses = futures_util::future::join_all(sends).await;
    assert!(statuses.iter().all(|s| *s == 202), "{statuses:?}");

    let mut topics = BTreeSet::new();
    for _ in 0..6 {
        topics.insert(topic(&peer.next().await));
    }
    let expected: BTreeSet<String> = (0..6).map(|i| format!("ferry-r1-{s}/ok-{i}")).collect();
    assert_eq!(topics, expected);
    let dead = gw.lines("dlq.jsonl");
    let mut ids: Vec<&str> = dead.iter().map(|l| l["id"].as_str().unwrap()).collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        ["big", "long"],
        "only the oversize events are dead-lettered"
    );
    for line in &dead {
        assert_eq!(
            line["deadletterreason"], "permanent",
            "{}",
            line["deadlettererror"]
        );
        assert_eq!(line["deadletterattempts"], 1);
    }
    gw.gateway.shutdown().await;
}

fn event_of_type(id: &str, ty: &str) -> Vec<u8> {
    format!(
        r#"{{"specversion":"1.0","id":"{id}","source":"/test","type":"{ty}","data":{{"n":1}}}}"#
    )
    .into_bytes()
}

async fn rejected(gw: &TestGateway, source: &str, reason: &str, n: usize) {
    let url = gw.admin("/metrics");
    let want =
        format!("ferry_events_rejected_total{{source=\"{source}\",reason=\"{reason}\"}} {n}");
    common::until(Duration::from_secs(10), &want.clone(), || {
        let (url, want) = (url.clone(), want.clone());
        async move {
            reqwest::get(&url)
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
                .contains(&want)
        }
    })
    .await;
}

/// B5: every dead-letter copy carries `ferry-reject-reason`, also when the original had no
/// properties at all, and a refused QoS 0 message is dead-lettered too.
#[tokio::test]
async fn b5_dead_letter_copies_always_carry_the_reason() {
    let s = common::suffix();
    let mut peer = Peer::v5(&[&format!("ferry-test-{s}/dead")]).await;
    let text = format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[sources.raw]
type = "mqtt"
url = "mqtt://127.0.0.1:1883"
topics = ["ferry-test-{s}/in"]
client_id = "ferry-test-{s}-raw"
session_expiry_secs = 60
dead_letter_topic = "ferry-test-{s}/dead"

[sinks.archive]
type = "file"
path = "{{dir}}/events.jsonl"

[routes.all]
from = ["raw"]
to = ["archive"]
"#
    );
    let gw = TestGateway::start(&text).await;
    ready(&gw).await;
    let input = format!("ferry-test-{s}/in");
    // No properties at all.
    peer.client
        .publish(&input, QoS::AtLeastOnce, false, "no properties")
        .await
        .unwrap();
    let dead = peer.next().await;
    assert_eq!(&dead.payload[..], b"no properties");
    assert_eq!(
        user(&dead, "ferry-reject-reason").as_deref(),
        Some("undecodable")
    );
    // QoS 0, with a property to keep.
    peer.client
        .publish_with_properties(
            &input,
            QoS::AtMostOnce,
            false,
            "qos zero",
            props(Some("text/plain"), &[]),
        )
        .await
        .unwrap();
    let dead = peer.next().await;
    assert_eq!(&dead.payload[..], b"qos zero");
    assert_eq!(content_type(&dead), Some("text/plain"));
    assert_eq!(
        user(&dead, "ferry-reject-reason").as_deref(),
        Some("undecodable")
    );
    rejected(&gw, "raw", "undecodable", 2).await;
    gw.gateway.shutdown().await;
}

/// R3: a delivery that fails permanently is not retried forever: it is dead-lettered with the
/// reason `delivery_failed`, acknowledged and counted, so the in-order PUBACK window moves on.
#[tokio::test]
async fn r3_permanent_failure_is_dead_lettered_and_acked() {
    let s = common::suffix();
    let mut receiver = Receiver::start().await;
    receiver.set_status(400);
    let mut peer = Peer::v5(&[&format!("ferry-test-{s}/dead")]).await;
    let text = format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[sources.in]
type = "mqtt"
url = "mqtt://127.0.0.1:1883"
topics = ["ferry-test-{s}/in"]
client_id = "ferry-test-{s}-in"
session_expiry_secs = 60
dead_letter_topic = "ferry-test-{s}/dead"
inflight = 1

[sinks.refuses]
type = "http"
url = "http://{addr}/hook"

[sinks.archive]
type = "file"
path = "{{dir}}/events.jsonl"

[routes.bad]
from = ["in"]
to = ["refuses"]
filters = [{{ exact = {{ type = "com.example.bad" }} }}]

[routes.good]
from = ["in"]
to = ["archive"]
filters = [{{ exact = {{ type = "com.example.good" }} }}]
"#,
        addr = receiver.addr
    );
    let gw = TestGateway::start(&text).await;
    ready(&gw).await;
    let input = format!("ferry-test-{s}/in");
    peer.publish(
        &input,
        event_of_type("bad", "com.example.bad"),
        props(None, &[]),
    )
    .await;
    let attempt = tokio::time::timeout(Duration::from_secs(10), receiver.rx.recv())
        .await
        .expect("the delivery attempt")
        .unwrap();
    assert_eq!(attempt.headers.get("ce-id").unwrap(), "bad");
    let dead = peer.next().await;
    assert_eq!(
        user(&dead, "ferry-reject-reason").as_deref(),
        Some("delivery_failed")
    );
    rejected(&gw, "in", "delivery_failed", 1).await;
    // The window (one message) moved on: the next message is delivered.
    peer.publish(
        &input,
        event_of_type("good", "com.example.good"),
        props(None, &[]),
    )
    .await;
    let lines = wait_lines(&gw, "events.jsonl", 1).await;
    assert_eq!(lines[0]["id"], "good");
    gw.gateway.shutdown().await;
}

/// Q1: messages settled behind a front that is still being retried wait for their in-order
/// PUBACK; they count toward what the connection holds, so it stops reading the socket
/// instead of holding without bound (MQTT 3.1.1 has no Receive Maximum; Mosquitto sends up to
/// 20 unacknowledged messages, more than this source's limit of 16 with `inflight = 1`).
#[tokio::test]
async fn q1_settled_unacked_messages_bound_what_is_read() {
    let s = common::suffix();
    let receiver = Receiver::start().await;
    receiver.set_status(500);
    let peer = Peer::v5(&[]).await;
    let text = format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[sources.in]
type = "mqtt"
url = "mqtt://127.0.0.1:1883"
protocol = "3.1.1"
topics = ["ferry-test-{s}/in"]
client_id = "ferry-test-{s}-in"
clean_start = false
inflight = 1
keep_alive_secs = 60

[sinks.fails]
type = "http"
url = "http://{addr}/hook"

[sinks.archive]
type = "file"
path = "{{dir}}/events.jsonl"

[routes.bad]
from = ["in"]
to = ["fails"]
filters = [{{ exact = {{ type = "com.example.bad" }} }}]

[routes.good]
from = ["in"]
to = ["archive"]
filters = [{{ exact = {{ type = "com.example.good" }} }}]
"#,
        addr = receiver.addr
    );
    let gw = TestGateway::start(&text).await;
    ready(&gw).await;
    let input = format!("ferry-test-{s}/in");
    peer.publish(
        &input,
        event_of_type("front", "com.example.bad"),
        props(None, &[]),
    )
    .await;
    for i in 0..19 {
        peer.publish(
            &input,
            event_of_type(&format!("g-{i}"), "com.example.good"),
            props(None, &[]),
        )
        .await;
    }
    peer.confirmed(20).await;
    // 16 windows settle (or wait) behind the front, plus at most the one window in flight;
    // then the source stops reading.
    wait_lines(&gw, "events.jsonl", 16).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let held = gw.lines("events.jsonl").len();
    assert!(held <= 17, "{held} delivered behind a stuck front");
    // Once the front is delivered, the backlog is acknowledged and reading resumes.
    receiver.set_status(200);
    wait_lines(&gw, "events.jsonl", 19).await;
    gw.gateway.shutdown().await;
}
