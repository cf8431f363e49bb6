//! A trace started by an HTTP client's `traceparent` arrives with the same trace id on AMQP,
//! MQTT 5 and NATS messages; with debug logging, each event's log lines sit in an `event`
//! span that names its id, type, source and routes.

mod common;

use std::time::Duration;

use common::{FerryProcess, Receiver, TestGateway};
use futures_util::StreamExt as _;
use lapin::options::{BasicConsumeOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};

const TRACE: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
const WAIT: Duration = Duration::from_secs(15);

fn traceparent_of(event: &ferry_core::CloudEvent) -> String {
    match event.attribute("traceparent") {
        Some(ferry_core::AttributeRef::Str(s)) => s.to_owned(),
        other => panic!("no traceparent: {other:?}"),
    }
}

#[tokio::test]
async fn http_trace_context_reaches_amqp_mqtt_and_nats() {
    let id = uuid::Uuid::now_v7().simple().to_string();
    let (queue, topic, subject) = (
        format!("trace.{id}"),
        format!("trace/{id}"),
        format!("trace.{id}"),
    );

    // The three consumers first.
    let amqp = Connection::connect(
        "amqp://guest:guest@127.0.0.1:5672/%2f",
        ConnectionProperties::default(),
    )
    .await
    .expect("RabbitMQ on 127.0.0.1:5672 (scripts/brokers starts it)");
    let channel = amqp.create_channel().await.unwrap();
    let mut args = FieldTable::default();
    args.insert("x-expires".into(), lapin::types::AMQPValue::LongInt(60_000));
    channel
        .queue_declare(queue.as_str().into(), QueueDeclareOptions::default(), args)
        .await
        .unwrap();
    let mut amqp_messages = channel
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();

    let (mqtt, mut mqtt_events) = AsyncClient::new(
        MqttOptions::new(format!("trace-{id}"), "127.0.0.1", 1883),
        100,
    );
    mqtt.subscribe(topic.as_str(), QoS::AtLeastOnce)
        .await
        .unwrap();
    let (mqtt_tx, mut mqtt_rx) = tokio::sync::mpsc::unbounded_channel();
    let (suback_tx, suback_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut suback_tx = Some(suback_tx);
        while let Ok(event) = mqtt_events.poll().await {
            match event {
                Event::Incoming(Packet::SubAck(_)) => {
                    suback_tx.take().map(|t| t.send(()));
                }
                Event::Incoming(Packet::Publish(p)) => {
                    let _ = mqtt_tx.send(p);
                }
                _ => {}
            }
        }
    });
    tokio::time::timeout(WAIT, suback_rx)
        .await
        .expect("Mosquitto on 127.0.0.1:1883")
        .unwrap();

    let nats = async_nats::connect("127.0.0.1:4222")
        .await
        .expect("NATS on 127.0.0.1:4222");
    let mut nats_messages = nats.subscribe(subject.clone()).await.unwrap();
    nats.flush().await.unwrap();

    let config = format!(
        r#"
[sources.web]
type = "http"
listen = "127.0.0.1:0"
path = "/events"

[sinks.amqp]
type = "amqp"
url = "amqp://guest:guest@127.0.0.1:5672/%2f"
exchange = ""
routing_key = "{queue}"
mode = "binary"

[sinks.mqtt]
type = "mqtt"
url = "mqtt://127.0.0.1:1883"
protocol = "5"
topic = "{topic}"
qos = 1
mode = "binary"

[sinks.nats]
type = "nats"
url = "nats://127.0.0.1:4222"
subject = "{subject}"
mode = "binary"

[routes.all]
from = ["web"]
to = ["amqp", "mqtt", "nats"]
"#
    );
    let gw = TestGateway::start(&config).await;
    let resp = reqwest::Client::new()
        .post(gw.url("web", "/events"))
        .header("traceparent", TRACE)
        .header("tracestate", "ferry=test")
        .header("ce-specversion", "1.0")
        .header("ce-id", "traced-1")
        .header("ce-source", "/tracing")
        .header("ce-type", "com.example.traced")
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202, "all three brokers confirmed");

    let delivery = tokio::time::timeout(WAIT, amqp_messages.next())
        .await
        .expect("AMQP message")
        .unwrap()
        .unwrap();
    let event = ferry_amqp::decode(&delivery.properties, &delivery.data).unwrap();
    assert_eq!(traceparent_of(&event), TRACE, "AMQP");
    assert_eq!(
        event.attribute("tracestate"),
        Some(ferry_core::AttributeRef::Str("ferry=test"))
    );

    let publish = tokio::time::timeout(WAIT, mqtt_rx.recv())
        .await
        .expect("MQTT message")
        .unwrap();
    let event =
        ferry_mqtt::decode_v5(publish.payload.clone(), publish.properties.as_ref()).unwrap();
    assert_eq!(traceparent_of(&event), TRACE, "MQTT 5");

    let message = tokio::time::timeout(WAIT, nats_messages.next())
        .await
        .expect("NATS message")
        .unwrap();
    let event = ferry_nats::decode(message.headers.as_ref(), message.payload.clone()).unwrap();
    assert_eq!(traceparent_of(&event), TRACE, "NATS");
}

/// The JSON log lines of the `event` span whose `event.id` is `id`, once `complete` says they
/// are all there. The sinks log before they confirm, so the lines are written before the 202;
/// the thread that reads Ferry's stderr may still be behind.
async fn span_lines(
    ferry: &FerryProcess,
    id: &str,
    complete: impl Fn(&[&str]) -> bool,
) -> Vec<serde_json::Value> {
    let what = format!("the span lines of {id}");
    ferry
        .wait_log(&what, Duration::from_secs(10), |log| {
            let lines: Vec<serde_json::Value> = (log.iter())
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter(|v| v["span"]["name"] == "event" && v["span"]["event.id"] == id)
                .collect();
            let messages: Vec<&str> = (lines.iter())
                .filter_map(|l| l["fields"]["message"].as_str())
                .collect();
            complete(&messages).then_some(lines)
        })
        .await
}

#[tokio::test]
async fn debug_logs_carry_a_span_per_event_with_its_routes() {
    let partner = Receiver::start().await;
    partner.set_status(400);
    let dir = tempfile::tempdir().unwrap();
    let ferry = FerryProcess::start(
        dir.path(),
        &format!(
            r#"
[log]
level = "info,ferry=debug"

[admin]
listen = "127.0.0.1:0"

[sources.web]
type = "http"
listen = "127.0.0.1:0"
path = "/events"

[sinks.archive]
type = "file"
path = "archive.jsonl"

[sinks.partner]
type = "http"
url = "http://{}/events"
dead_letter = "dlq"

[sinks.dlq]
type = "file"
path = "dead-letters.jsonl"

[routes.orders]
from = ["web"]
to = ["archive"]
filters = [{{ prefix = {{ type = "com.example.order." }} }}]

[routes.partners]
from = ["web"]
to = ["partner"]
filters = [{{ exact = {{ type = "com.example.order.created" }} }}]
"#,
            partner.addr
        ),
    );
    let client = reqwest::Client::new();
    for (id, ty) in [
        ("span-1", "com.example.order.created"),
        ("span-2", "com.example.order.paid"),
    ] {
        let status = client
            .post(ferry.url("web", "/events"))
            .header("ce-specversion", "1.0")
            .header("ce-id", id)
            .header("ce-source", "/shop")
            .header("ce-type", ty)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 202, "{id}");
    }

    let created = span_lines(&ferry, "span-1", |messages| {
        let delivered = messages.iter().filter(|m| **m == "delivered").count();
        delivered == 2
            && [
                "event received and routed",
                "delivery failed",
                "sent to the dead-letter sink",
            ]
            .iter()
            .all(|want| messages.contains(want))
    })
    .await;
    for line in &created {
        let span = &line["span"];
        assert_eq!(span["event.type"], "com.example.order.created", "{line}");
        assert_eq!(span["event.source"], "/shop", "{line}");
        assert_eq!(span["source"], "web", "{line}");
        assert_eq!(span["route"], "orders,partners", "{line}");
    }
    let sinks: Vec<&str> = created
        .iter()
        .filter(|l| l["fields"]["message"] == "delivered")
        .filter_map(|l| l["fields"]["sink"].as_str())
        .collect();
    assert!(
        sinks.contains(&"archive") && sinks.contains(&"dlq"),
        "{created:#?}"
    );

    let paid = span_lines(&ferry, "span-2", |messages| messages.contains(&"delivered")).await;
    assert!(
        paid.iter().all(|l| l["span"]["route"] == "orders"),
        "{paid:#?}"
    );
    assert!(
        paid.iter()
            .all(|l| l["fields"]["message"] != "delivery failed"),
        "{paid:#?}"
    );
}

/// The start-up line names the version, every listener with its address, the sinks and the
/// route count; a second SIGTERM during a graceful shutdown exits at once, saying what was
/// abandoned.
#[tokio::test]
async fn startup_banner_and_a_second_signal_exits_at_once() {
    let stalled = common::stalled_endpoint().await;
    let dir = tempfile::tempdir().unwrap();
    let mut ferry = common::FerryProcess::start(
        dir.path(),
        &format!(
            r#"shutdown_timeout_ms = 60000

[admin]
listen = "127.0.0.1:0"

[sources.web]
type = "http"
listen = "127.0.0.1:0"
path = "/events"

[sinks.partner]
type = "http"
url = "http://{stalled}/hook"
timeout_ms = 60000

[routes.all]
from = ["web"]
to = ["partner"]
"#
        ),
    );
    let banner = ferry
        .log
        .lock()
        .unwrap()
        .iter()
        .find(|l| l.contains("ferry started"))
        .cloned()
        .expect("a start-up line");
    let v: serde_json::Value = serde_json::from_str(&banner).unwrap();
    let f = &v["fields"];
    assert_eq!(f["version"], env!("CARGO_PKG_VERSION"), "{banner}");
    assert_eq!(f["admin"].as_str(), Some(ferry.admin.as_str()), "{banner}");
    assert_eq!(
        f["sources"].as_str().unwrap(),
        format!("web (http) {}", ferry.addrs["web"]),
        "{banner}"
    );
    assert_eq!(f["sinks"], "partner (http)", "{banner}");
    assert_eq!(f["routes"], 1, "{banner}");
    // An event the stalled sink never confirms keeps the graceful shutdown waiting.
    let url = ferry.url("web", "/events");
    let post = tokio::spawn(async move {
        let _ = reqwest::Client::new()
            .post(url)
            .header("ce-specversion", "1.0")
            .header("ce-id", "stuck")
            .header("ce-source", "/t")
            .header("ce-type", "t")
            .body("{}")
            .send()
            .await;
    });
    let metrics = ferry.admin("/metrics");
    common::until(
        Duration::from_secs(10),
        "the event to be in flight",
        || async {
            let text = reqwest::get(&metrics).await.unwrap().text().await.unwrap();
            common::metric(&text, "ferry_sink_in_flight{sink=\"partner\"}") >= 1.0
        },
    )
    .await;
    ferry.signal("TERM");
    ferry
        .wait_log("the graceful shutdown", Duration::from_secs(10), |lines| {
            lines.iter().find(|l| l.contains("shutting down")).cloned()
        })
        .await;
    let started = std::time::Instant::now();
    ferry.signal("TERM");
    let status = ferry.wait(Duration::from_secs(10));
    assert_eq!(status.code(), Some(130));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        ferry
            .log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("second signal") && l.contains("not acknowledged")),
        "{:?}",
        ferry.log.lock().unwrap()
    );
    post.abort();
}

/// Each reload line says what triggered it and what changed (or why nothing did).
#[tokio::test]
async fn reload_lines_name_the_trigger_and_the_changes() {
    let dir = tempfile::tempdir().unwrap();
    let base = r#"[reload]
watch = false

[admin]
listen = "127.0.0.1:0"

[sources.web]
type = "http"
listen = "127.0.0.1:0"
path = "/events"

[sinks.out]
type = "stdout"

[routes.all]
from = ["web"]
to = ["out"]
"#;
    let ferry = common::FerryProcess::start(dir.path(), base);
    let config = dir.path().join("ferry.toml");
    let reload_line = |n: usize| {
        move |lines: &[String]| {
            lines
                .iter()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter(|v| {
                    v["fields"]["message"].as_str().is_some_and(|m| {
                        m.starts_with("config reloaded") || m.starts_with("reload")
                    })
                })
                .nth(n)
        }
    };

    std::fs::write(
        &config,
        format!("{base}\n[sinks.extra]\ntype = \"stdout\"\n"),
    )
    .unwrap();
    ferry.signal("HUP");
    let v = ferry
        .wait_log("the SIGHUP reload", Duration::from_secs(10), reload_line(0))
        .await;
    let f = &v["fields"];
    assert_eq!(f["trigger"], "SIGHUP", "{v}");
    assert_eq!(f["added"], "sink:extra", "{v}");
    assert_eq!(
        f["message"], "config reloaded by SIGHUP: generation 2; added sink:extra",
        "{v}"
    );

    std::fs::write(
        &config,
        format!("{base}\n[sinks.extra]\ntype = \"stdout\"\n")
            .replace("to = [\"out\"]", "to = [\"extra\"]"),
    )
    .unwrap();
    let status = reqwest::Client::new()
        .post(ferry.admin("/-/reload"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
    let v = ferry
        .wait_log("the admin reload", Duration::from_secs(10), reload_line(1))
        .await;
    assert_eq!(
        v["fields"]["message"],
        "config reloaded by POST /-/reload: generation 3; changed route:all",
        "{v}"
    );

    ferry.signal("HUP");
    let v = ferry
        .wait_log("the empty reload", Duration::from_secs(10), reload_line(2))
        .await;
    assert_eq!(
        v["fields"]["message"], "config reloaded by SIGHUP: nothing changed (generation 3 stays)",
        "{v}"
    );

    std::fs::write(&config, "[sinks.broken\n").unwrap();
    ferry.signal("HUP");
    let v = ferry
        .wait_log(
            "the refused reload",
            Duration::from_secs(10),
            reload_line(3),
        )
        .await;
    assert_eq!(v["level"], "ERROR", "{v}");
    assert_eq!(
        v["fields"]["message"], "reload by SIGHUP refused; the running config stays",
        "{v}"
    );
    assert!(
        v["fields"]["error"]
            .as_str()
            .unwrap()
            .contains("ferry.toml:1"),
        "{v}"
    );
}

/// Dependencies' own log lines stay out of Ferry's log unless asked for by name: lapin logs
/// four ERROR lines for each failed connection attempt (one carrying the raw parse error) that
/// repeat or contradict Ferry's own "AMQP sink cannot connect; retrying".
#[tokio::test]
async fn lapin_lines_stay_out_of_the_log() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let garbage = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = garbage.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = garbage.accept().await {
            let mut buf = [0u8; 64];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(b"not an AMQP server\r\n").await;
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let ferry = common::FerryProcess::start(
        dir.path(),
        &format!(
            r#"[log]
level = "info"

[sources.web]
type = "http"
listen = "127.0.0.1:0"
path = "/events"

[sinks.queue]
type = "amqp"
url = "amqp://guest:guest@{addr}/%2f"
exchange = ""
routing_key = "nowhere"

[routes.all]
from = ["web"]
to = ["queue"]
"#
        ),
    );
    ferry
        .wait_log("two failed connection attempts", WAIT, |lines| {
            (lines
                .iter()
                .filter(|l| l.contains("AMQP sink cannot connect"))
                .count()
                >= 2)
                .then_some(())
        })
        .await;
    let log = ferry.log.lock().unwrap();
    let foreign: Vec<&String> = log
        .iter()
        .filter(|l| !l.contains(r#""target":"ferry"#))
        .collect();
    assert!(foreign.is_empty(), "{foreign:#?}");
}
