//! What the bridge tests share: clients for the three brokers (RabbitMQ, Mosquitto, NATS), the
//! reference event every pair carries, and the attribute-by-attribute comparison.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use ferry_core::event::CORE_ATTRIBUTES;
use ferry_core::{CloudEvent, Data, EventBuilder, ExtensionValue};
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use rumqttc::v5::mqttbytes::v5::{Packet, Publish, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::sync::{mpsc, oneshot, watch};

use crate::common::TestGateway;

pub(crate) const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub(crate) const MQTT_URL: &str = "mqtt://127.0.0.1:1883";
pub(crate) const NATS_URL: &str = "nats://127.0.0.1:4222";

/// Non-UTF-8 data: a binary-mode body must carry it untouched, a structured one as base64.
pub(crate) const DATA: &[u8] = &[0, 159, 146, 150, 255];

/// A random suffix that keeps this run's queues, topics, subjects and streams apart.
pub(crate) fn suffix() -> String {
    format!("{:08x}", rand::random::<u32>())
}

/// Polls `check` until it returns `Some`, or panics with `what` after `secs` seconds.
pub(crate) async fn eventually<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits for `/readyz`: every source subscribed and every sink connected.
pub(crate) async fn wait_ready(gw: &TestGateway) {
    let url = gw.admin("/readyz");
    eventually(
        20,
        "the gateway to be ready (scripts/brokers starts RabbitMQ, Mosquitto and NATS)",
        || async {
            let status = reqwest::get(&url).await.ok()?.status();
            status.is_success().then_some(())
        },
    )
    .await;
}

// ---- the reference event ----------------------------------------------------------------

/// An event with every optional attribute, a String and an Integer extension and binary data.
/// `route` is the String extension; the routes select on it.
pub(crate) fn full_event(id: &str, route: &str) -> CloudEvent {
    EventBuilder::new()
        .specversion("1.0")
        .id(id)
        .source("https://example.com/bridges/sensor-7")
        .ty("com.example.bridge.reading")
        .datacontenttype("application/octet-stream")
        .dataschema("https://example.com/schemas/reading.bin")
        .subject("room 12 €")
        .time("2026-11-24T10:00:00.123456+02:00")
        .extension("route", ExtensionValue::String(route.to_owned()))
        .extension("priority", ExtensionValue::Integer(7))
        // A trace context of its own: Ferry keeps it across every hop.
        .extension(
            "traceparent",
            ExtensionValue::String(
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
            ),
        )
        .data(Data::Binary(Bytes::from_static(DATA)))
        .build()
        .expect("the reference event is valid")
}

/// What differs between the event sent and the event received. Attributes compare by their
/// canonical string (binary headers carry extensions as strings, so `7` and `"7"` are equal),
/// data by its bytes.
pub(crate) fn differences(sent: &CloudEvent, got: &CloudEvent) -> Vec<String> {
    let mut out = Vec::new();
    let names: BTreeSet<&str> = CORE_ATTRIBUTES
        .iter()
        .copied()
        .chain(sent.extensions().keys().map(String::as_str))
        .chain(got.extensions().keys().map(String::as_str))
        .collect();
    for name in names {
        let a = sent.attribute(name).map(|v| v.to_canonical_string());
        let b = got.attribute(name).map(|v| v.to_canonical_string());
        if a != b {
            out.push(format!("{name}: sent {a:?}, got {b:?}"));
        }
    }
    let a = sent.data().map(Data::as_bytes);
    let b = got.data().map(Data::as_bytes);
    if a != b {
        out.push(format!("data: sent {a:?}, got {b:?}"));
    }
    out
}

// ---- RabbitMQ ---------------------------------------------------------------------------

/// A connection and a channel in confirm mode; fails (never skips) without the broker.
pub(crate) async fn rabbit() -> (Connection, Channel) {
    let connection = tokio::time::timeout(
        Duration::from_secs(10),
        Connection::connect(AMQP_URL, ConnectionProperties::default()),
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

/// Declares a queue the broker deletes a minute after its last use, so a failed run leaves
/// nothing behind for long.
pub(crate) async fn declare_queue(channel: &Channel, name: &str) {
    let mut arguments = FieldTable::default();
    arguments.insert("x-expires".into(), AMQPValue::LongInt(60_000));
    channel
        .queue_declare(name.into(), QueueDeclareOptions::default(), arguments)
        .await
        .expect("queue_declare");
}

/// Declares a topic exchange and a fresh queue bound to it for every routing key.
pub(crate) async fn declare_exchange_to_queue(channel: &Channel, exchange: &str, queue: &str) {
    channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                auto_delete: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("exchange_declare");
    declare_queue(channel, queue).await;
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("queue_bind");
}

/// Publishes to a queue through the default exchange and waits for the broker's confirm.
pub(crate) async fn publish_to_queue(
    channel: &Channel,
    queue: &str,
    properties: BasicProperties,
    body: &[u8],
) -> Result<(), String> {
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
        .map_err(|e| format!("AMQP publish: {e}"))?
        .await
        .map_err(|e| format!("AMQP confirm: {e}"))?;
    if confirm.is_ack() && confirm.take_message().is_none() {
        Ok(())
    } else {
        Err("AMQP publish was not confirmed".to_owned())
    }
}

/// Messages ready in a queue.
pub(crate) async fn ready_messages(channel: &Channel, queue: &str) -> u32 {
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

pub(crate) async fn delete_amqp(channel: &Channel, queues: &[&str], exchanges: &[&str]) {
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

// ---- Mosquitto --------------------------------------------------------------------------

/// An MQTT 5 client: what it receives on its filters, and how many of its QoS 1 publishes the
/// broker acknowledged.
pub(crate) struct Mqtt5 {
    pub client: AsyncClient,
    pub messages: mpsc::UnboundedReceiver<Publish>,
    acked: watch::Receiver<usize>,
}

impl Mqtt5 {
    /// Connects and subscribes (QoS 1) to `filters`; returns once the broker confirmed them.
    pub(crate) async fn connect(filters: &[String]) -> Mqtt5 {
        let mut options = MqttOptions::new(format!("bridges-peer-{}", suffix()), "127.0.0.1", 1883);
        options.set_max_packet_size(Some(1 << 20));
        let (client, mut events) = AsyncClient::new(options, 1000);
        for f in filters {
            client
                .subscribe(f.clone(), QoS::AtLeastOnce)
                .await
                .expect("subscribe queued");
        }
        let (tx, messages) = mpsc::unbounded_channel();
        let (acked_tx, acked) = watch::channel(0usize);
        let (ready_tx, ready_rx) = oneshot::channel();
        let mut waiting = filters.len();
        tokio::spawn(async move {
            let mut ready_tx = Some(ready_tx);
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) if waiting == 0 => {
                        ready_tx.take().map(|r| r.send(()));
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        waiting = waiting.saturating_sub(1);
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
                        acked_tx.send_modify(|n| *n += 1);
                    }
                    Ok(_) => {}
                    // A test client never reconnects: a dropped connection would lose its
                    // subscription silently. Ending here makes the waits fail instead.
                    Err(_) => return,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), ready_rx)
            .await
            .ok()
            .and_then(Result::ok)
            .expect(
                "Mosquitto on 127.0.0.1:1883 confirms the connection (scripts/brokers starts it)",
            );
        Mqtt5 {
            client,
            messages,
            acked,
        }
    }

    pub(crate) async fn publish(
        &self,
        topic: &str,
        payload: Bytes,
        properties: PublishProperties,
    ) -> Result<(), String> {
        self.client
            .publish_with_properties(topic, QoS::AtLeastOnce, false, payload, properties)
            .await
            .map_err(|e| format!("MQTT publish: {e}"))
    }

    /// Waits until the broker acknowledged `n` publishes of this client in total.
    pub(crate) async fn acked(&self, n: usize, secs: u64) -> Result<(), String> {
        wait_acked(&self.acked, n, secs).await
    }
}

/// An MQTT 3.1.1 client: what it receives on its filter, and its acknowledged publishes.
pub(crate) struct Mqtt311 {
    pub client: rumqttc::AsyncClient,
    pub messages: mpsc::UnboundedReceiver<rumqttc::Publish>,
    acked: watch::Receiver<usize>,
}

impl Mqtt311 {
    pub(crate) async fn connect(filter: &str) -> Mqtt311 {
        use rumqttc::{Event, Packet};
        let options =
            rumqttc::MqttOptions::new(format!("bridges-v3-{}", suffix()), "127.0.0.1", 1883);
        let (client, mut events) = rumqttc::AsyncClient::new(options, 100);
        client
            .subscribe(filter, rumqttc::QoS::AtLeastOnce)
            .await
            .expect("subscribe queued");
        let (tx, messages) = mpsc::unbounded_channel();
        let (acked_tx, acked) = watch::channel(0usize);
        let (ready_tx, ready_rx) = oneshot::channel();
        tokio::spawn(async move {
            let mut ready_tx = Some(ready_tx);
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        ready_tx.take().map(|r| r.send(()));
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if tx.send(p).is_err() {
                            return;
                        }
                    }
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        acked_tx.send_modify(|n| *n += 1);
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), ready_rx)
            .await
            .ok()
            .and_then(Result::ok)
            .expect(
                "Mosquitto on 127.0.0.1:1883 confirms the subscription (scripts/brokers starts it)",
            );
        Mqtt311 {
            client,
            messages,
            acked,
        }
    }

    pub(crate) async fn acked(&self, n: usize, secs: u64) -> Result<(), String> {
        wait_acked(&self.acked, n, secs).await
    }
}

/// Waits until a PUBACK counter reaches `n`.
async fn wait_acked(acked: &watch::Receiver<usize>, n: usize, secs: u64) -> Result<(), String> {
    let mut acked = acked.clone();
    let reached = async move { acked.wait_for(|c| *c >= n).await.is_ok() };
    match tokio::time::timeout(Duration::from_secs(secs), reached).await {
        Ok(true) => Ok(()),
        _ => Err(format!("the broker acknowledged fewer than {n} publishes")),
    }
}

// ---- NATS -------------------------------------------------------------------------------

pub(crate) async fn nats() -> async_nats::Client {
    tokio::time::timeout(Duration::from_secs(10), async_nats::connect(NATS_URL))
        .await
        .ok()
        .and_then(Result::ok)
        .expect("nats-server with JetStream runs on 127.0.0.1:4222 (scripts/brokers starts it)")
}

pub(crate) async fn create_stream(js: &jetstream::Context, name: &str, subjects: &str) {
    js.create_stream(jetstream::stream::Config {
        name: name.into(),
        subjects: vec![subjects.into()],
        ..Default::default()
    })
    .await
    .expect("create stream");
}

/// Messages stored in a stream.
pub(crate) async fn stream_messages(js: &jetstream::Context, name: &str) -> u64 {
    let mut stream = js.get_stream(name).await.expect("stream exists");
    stream.info().await.expect("stream info").state.messages
}
