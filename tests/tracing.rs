//! A trace started by an HTTP client's `traceparent` arrives with the same trace id on AMQP,
//! MQTT 5 and NATS messages.

mod common;

use std::time::Duration;

use common::TestGateway;
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
