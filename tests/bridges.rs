//! Cross-protocol bridges against the real brokers on 127.0.0.1 (RabbitMQ 5672, Mosquitto
//! 1883, NATS with JetStream 4222; `scripts/brokers` starts them). Each test runs one gateway
//! whose sources and sinks span the protocols, publishes with the brokers' own client crates,
//! and decodes what arrives with the pure bindings. Every name carries a random suffix.

mod bridges_support;
mod common;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use bridges_support::*;
use common::{Receiver, TestGateway};
use ferry_core::CloudEvent;
use futures_util::StreamExt;
use lapin::options::BasicConsumeOptions;
use lapin::types::FieldTable;
use tokio::sync::Semaphore;

/// The protocols, each both a source and a sink.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Http,
    Amqp,
    Mqtt,
    Nats,
    JetStream,
}

const KINDS: [Kind; 5] = [
    Kind::Http,
    Kind::Amqp,
    Kind::Mqtt,
    Kind::Nats,
    Kind::JetStream,
];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Http => "http",
            Kind::Amqp => "amqp",
            Kind::Mqtt => "mqtt",
            Kind::Nats => "nats",
            Kind::JetStream => "js",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Binary,
    Structured,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Binary => "bin",
            Mode::Structured => "str",
        }
    }

    fn other(self) -> Mode {
        match self {
            Mode::Binary => Mode::Structured,
            Mode::Structured => Mode::Binary,
        }
    }

    /// The mode a message is in, from its content type.
    fn of(content_type: Option<&str>) -> Mode {
        match content_type {
            Some(ct)
                if ct
                    .to_ascii_lowercase()
                    .starts_with("application/cloudevents") =>
            {
                Mode::Structured
            }
            _ => Mode::Binary,
        }
    }
}

/// One source → sink pair of the matrix. Every pair converts: the event goes in in one mode
/// and the sink writes the other, so binary → structured and structured → binary each happen
/// for every protocol on both sides.
#[derive(Clone, Copy, Debug)]
struct Pair {
    from: Kind,
    to: Kind,
    input: Mode,
}

impl Pair {
    fn output(self) -> Mode {
        self.input.other()
    }

    /// The value of the `route` extension that selects this pair's route.
    fn route(self) -> String {
        format!("{}-{}", self.from.name(), self.to.name())
    }
}

impl fmt::Display for Pair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} → {} ({:?} → {:?})",
            self.from.name(),
            self.to.name(),
            self.input,
            self.output()
        )
    }
}

fn pairs() -> Vec<Pair> {
    let mut out = Vec::new();
    for (i, from) in KINDS.into_iter().enumerate() {
        for (j, to) in KINDS.into_iter().enumerate() {
            let input = if (i + j) % 2 == 0 {
                Mode::Binary
            } else {
                Mode::Structured
            };
            out.push(Pair { from, to, input });
        }
    }
    out
}

/// Names of everything one matrix run creates.
struct Names {
    s: String,
    amqp_in: String,
    amqp_out_exchange: String,
    amqp_out: String,
    js_in_stream: String,
    js_out_stream: String,
}

impl Names {
    fn new() -> Names {
        let s = suffix();
        Names {
            amqp_in: format!("ferry.bridges.in.{s}"),
            amqp_out_exchange: format!("ferry.bridges.x.{s}"),
            amqp_out: format!("ferry.bridges.out.{s}"),
            js_in_stream: format!("FERRY_BRIDGES_IN_{s}"),
            js_out_stream: format!("FERRY_BRIDGES_OUT_{s}"),
            s,
        }
    }

    fn mqtt_topic(&self, dir: &str, route: &str) -> String {
        format!("ferry-bridges-{}/{dir}/{route}", self.s)
    }

    fn nats_subject(&self, kind: &str, dir: &str, route: &str) -> String {
        format!("fb{}.{kind}.{dir}.{route}", self.s)
    }
}

/// Five sources, ten sinks (one per protocol and mode) and one route per pair.
fn matrix_config(n: &Names, receiver: &Receiver) -> String {
    let s = &n.s;
    let mut text = format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[sources.http]
type = "http"
listen = "127.0.0.1:0"
path = "/events"
unrouted = "reject"

[sources.amqp]
type = "amqp"
url = "{AMQP_URL}"
queue = "{amqp_in}"
on_failure = "dead-letter"
unrouted = "reject"

[sources.mqtt]
type = "mqtt"
url = "{MQTT_URL}"
protocol = "5"
topics = ["ferry-bridges-{s}/in/#"]
client_id = "ferry-bridges-{s}"
session_expiry_secs = 60
unrouted = "reject"

[sources.nats]
type = "nats"
url = "{NATS_URL}"
subject = "fb{s}.core.in.>"
unrouted = "reject"

[sources.js]
type = "nats"
url = "{NATS_URL}"
subject = "fb{s}.js.in.>"
jetstream = {{ stream = "{js_in}", durable = "bridges{s}" }}
unrouted = "reject"
"#,
        amqp_in = n.amqp_in,
        js_in = n.js_in_stream,
    );
    for mode in [Mode::Binary, Mode::Structured] {
        let m = mode.name();
        let mode = match mode {
            Mode::Binary => "binary",
            Mode::Structured => "structured",
        };
        text.push_str(&format!(
            r#"
[sinks.http_{m}]
type = "http"
url = "http://{addr}/{m}"
mode = "{mode}"

[sinks.amqp_{m}]
type = "amqp"
url = "{AMQP_URL}"
exchange = "{exchange}"
routing_key = "{{route}}"
mode = "{mode}"

[sinks.mqtt_{m}]
type = "mqtt"
url = "{MQTT_URL}"
protocol = "5"
topic = "ferry-bridges-{s}/out/{{route}}"
mode = "{mode}"

[sinks.nats_{m}]
type = "nats"
url = "{NATS_URL}"
subject = "fb{s}.core.out.{{route}}"
mode = "{mode}"

[sinks.js_{m}]
type = "nats"
url = "{NATS_URL}"
subject = "fb{s}.js.out.{{route}}"
jetstream = true
mode = "{mode}"
"#,
            addr = receiver.addr,
            exchange = n.amqp_out_exchange,
        ));
    }
    for p in pairs() {
        text.push_str(&format!(
            "\n[routes.{from}_{to}]\nfrom = [\"{from}\"]\nto = [\"{to}_{out}\"]\nfilters = [{{ exact = {{ route = \"{route}\" }} }}]\n",
            from = p.from.name(),
            to = p.to.name(),
            out = p.output().name(),
            route = p.route(),
        ));
    }
    text
}

/// The clients on the far side of the gateway.
struct Peers {
    http: reqwest::Client,
    http_url: String,
    amqp: lapin::Channel,
    mqtt: Mqtt5,
    mqtt_published: usize,
    nats: async_nats::Client,
    js: jetstream::Context,
}

impl Peers {
    /// Publishes `event` into the source of `pair.from`, in `pair.input` mode, and waits for the
    /// acknowledgement the protocol offers (202, publisher confirm, PUBACK, reply, PubAck).
    async fn send(&mut self, n: &Names, pair: Pair, event: &CloudEvent) -> Result<(), String> {
        let route = pair.route();
        match pair.from {
            Kind::Http => {
                let mode = match pair.input {
                    Mode::Binary => ferry_http::Mode::Binary,
                    Mode::Structured => ferry_http::Mode::Structured,
                };
                let (headers, body) = ferry_http::encode(event, mode);
                let status = self
                    .http
                    .post(&self.http_url)
                    .headers(headers)
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| format!("HTTP: {e}"))?
                    .status();
                if status.as_u16() == 202 {
                    Ok(())
                } else {
                    Err(format!("HTTP source answered {status}"))
                }
            }
            Kind::Amqp => {
                let mode = match pair.input {
                    Mode::Binary => ferry_amqp::Mode::Binary,
                    Mode::Structured => ferry_amqp::Mode::Structured,
                };
                let (properties, body) =
                    ferry_amqp::encode(event, mode, ferry_amqp::HeaderPrefix::default());
                publish_to_queue(&self.amqp, &n.amqp_in, properties, &body).await
            }
            Kind::Mqtt => {
                let mode = match pair.input {
                    Mode::Binary => ferry_mqtt::Mode::Binary,
                    Mode::Structured => ferry_mqtt::Mode::Structured,
                };
                let (payload, properties) = ferry_mqtt::encode_v5(event, mode);
                self.mqtt
                    .publish(&n.mqtt_topic("in", &route), payload, properties)
                    .await?;
                self.mqtt_published += 1;
                self.mqtt.acked(self.mqtt_published, 10).await
            }
            Kind::Nats => {
                let (headers, payload) = ferry_nats::encode(event, nats_mode(pair.input));
                // A request: the core source answers once the sinks confirmed.
                let reply = self
                    .nats
                    .request_with_headers(n.nats_subject("core", "in", &route), headers, payload)
                    .await
                    .map_err(|e| format!("NATS request: {e}"))?;
                let status = reply
                    .headers
                    .as_ref()
                    .and_then(|h| ferry_nats::header(h, "Ferry-Status"))
                    .map(str::to_owned);
                if status.as_deref() == Some("202") {
                    Ok(())
                } else {
                    Err(format!("NATS core source answered Ferry-Status {status:?}"))
                }
            }
            Kind::JetStream => {
                let (headers, payload) = ferry_nats::encode(event, nats_mode(pair.input));
                self.js
                    .publish_with_headers(n.nats_subject("js", "in", &route), headers, payload)
                    .await
                    .map_err(|e| format!("JetStream publish: {e}"))?
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("JetStream PubAck: {e}"))
            }
        }
    }
}

fn nats_mode(mode: Mode) -> ferry_nats::Mode {
    match mode {
        Mode::Binary => ferry_nats::Mode::Binary,
        Mode::Structured => ferry_nats::Mode::Structured,
    }
}

/// What one sink delivered for one route: the decoded event (or why it did not decode) and the
/// mode it was written in.
type Arrival = (Result<CloudEvent, String>, Mode);

/// Arrivals per (sink protocol, route).
type Arrivals = BTreeMap<(Kind, String), Vec<Arrival>>;

fn route_of(event: &Result<CloudEvent, String>) -> String {
    event
        .as_ref()
        .ok()
        .and_then(|e| e.extension("route"))
        .map_or_else(|| "?".to_owned(), |v| v.to_canonical_string())
}

/// The clients that read what the five sink protocols delivered.
struct Readers {
    receiver: Receiver,
    amqp: lapin::Channel,
    mqtt: Mqtt5,
    nats: async_nats::Subscriber,
    js: jetstream::Context,
}

impl Readers {
    /// Collects `expected` arrivals per protocol, or whatever came before `deadline`.
    async fn collect(
        &mut self,
        n: &Names,
        expected: usize,
        deadline: tokio::time::Instant,
    ) -> Arrivals {
        let Readers {
            receiver,
            amqp,
            mqtt,
            nats: nats_out,
            js,
        } = self;
        let mut out = Arrivals::new();

        for _ in 0..expected {
            let Ok(Some(r)) = tokio::time::timeout_at(deadline, receiver.rx.recv()).await else {
                break;
            };
            let mode = Mode::of(r.headers.get("content-type").and_then(|v| v.to_str().ok()));
            let event = match ferry_http::decode(&r.headers, r.body) {
                Ok(ferry_http::Message::Event(e)) => Ok(e),
                Ok(ferry_http::Message::Batch(_)) => Err("a batch".to_owned()),
                Err(e) => Err(format!("HTTP decode: {e}")),
            };
            out.entry((Kind::Http, route_of(&event)))
                .or_default()
                .push((event, mode));
        }

        let mut consumer = amqp
            .basic_consume(
                n.amqp_out.as_str().into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("basic_consume");
        for _ in 0..expected {
            let Ok(Some(Ok(d))) = tokio::time::timeout_at(deadline, consumer.next()).await else {
                break;
            };
            let mode = Mode::of(d.properties.content_type().as_ref().map(|c| c.as_str()));
            let event =
                ferry_amqp::decode(&d.properties, &d.data).map_err(|e| format!("AMQP decode: {e}"));
            out.entry((Kind::Amqp, d.routing_key.as_str().to_owned()))
                .or_default()
                .push((event, mode));
        }

        for _ in 0..expected {
            let Ok(Some(p)) = tokio::time::timeout_at(deadline, mqtt.messages.recv()).await else {
                break;
            };
            let topic = String::from_utf8_lossy(&p.topic).into_owned();
            let route = topic.rsplit('/').next().unwrap_or_default().to_owned();
            let mode = Mode::of(
                p.properties
                    .as_ref()
                    .and_then(|p| p.content_type.as_deref()),
            );
            let event = ferry_mqtt::decode_v5(p.payload.clone(), p.properties.as_ref())
                .map_err(|e| format!("MQTT decode: {e}"));
            out.entry((Kind::Mqtt, route))
                .or_default()
                .push((event, mode));
        }

        for _ in 0..expected {
            let Ok(Some(m)) = tokio::time::timeout_at(deadline, nats_out.next()).await else {
                break;
            };
            let route = m.subject.rsplit('.').next().unwrap_or_default().to_owned();
            let mode = Mode::of(
                m.headers
                    .as_ref()
                    .and_then(|h| ferry_nats::header(h, "Content-Type")),
            );
            let event = ferry_nats::decode(m.headers.as_ref(), m.payload)
                .map_err(|e| format!("NATS decode: {e}"));
            out.entry((Kind::Nats, route))
                .or_default()
                .push((event, mode));
        }

        // JetStream: read what the stream stored, by sequence.
        let mut stream = js.get_stream(&n.js_out_stream).await.expect("out stream");
        loop {
            let stored = stream.info().await.expect("stream info").state.messages;
            if stored >= expected as u64 || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let last = stream
            .info()
            .await
            .expect("stream info")
            .state
            .last_sequence;
        for seq in 1..=last {
            let Ok(m) = stream.get_raw_message(seq).await else {
                continue;
            };
            let route = m.subject.rsplit('.').next().unwrap_or_default().to_owned();
            let mode = Mode::of(ferry_nats::header(&m.headers, "Content-Type"));
            let event = ferry_nats::decode(Some(&m.headers), m.payload)
                .map_err(|e| format!("NATS decode: {e}"));
            out.entry((Kind::JetStream, route))
                .or_default()
                .push((event, mode));
        }
        out
    }
}

/// Every source → sink pair among HTTP, AMQP, MQTT 5, NATS core and JetStream carries an event
/// with every optional attribute, two extensions and binary data, converting binary ⇄
/// structured on the way, and it arrives equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_pair_carries_a_full_event_across_modes() {
    let started = Instant::now();
    let n = Names::new();
    let (_amqp_connection, amqp) = rabbit().await;
    declare_queue(&amqp, &n.amqp_in).await;
    declare_exchange_to_queue(&amqp, &n.amqp_out_exchange, &n.amqp_out).await;
    let nats_client = nats().await;
    let js = jetstream::new(nats_client.clone());
    create_stream(&js, &n.js_in_stream, &format!("fb{}.js.in.>", n.s)).await;
    create_stream(&js, &n.js_out_stream, &format!("fb{}.js.out.>", n.s)).await;
    let nats_out = nats_client
        .subscribe(format!("fb{}.core.out.>", n.s))
        .await
        .expect("subscribe");
    nats_client.flush().await.expect("flush");
    let mqtt_out = Mqtt5::connect(&[n.mqtt_topic("out", "#")]).await;
    let receiver = Receiver::start().await;

    let gw = TestGateway::start(&matrix_config(&n, &receiver)).await;
    let mut readers = Readers {
        receiver,
        amqp: amqp.clone(),
        mqtt: mqtt_out,
        nats: nats_out,
        js: js.clone(),
    };
    wait_ready(&gw).await;

    let mut peers = Peers {
        http: reqwest::Client::new(),
        http_url: gw.url("http", "/events"),
        amqp: amqp.clone(),
        mqtt: Mqtt5::connect(&[]).await,
        mqtt_published: 0,
        nats: nats_client.clone(),
        js: js.clone(),
    };
    let mut sent = BTreeMap::new();
    let mut failures = Vec::new();
    for pair in pairs() {
        let event = full_event(&format!("bridge-{}-{}", n.s, pair.route()), &pair.route());
        if let Err(e) = peers.send(&n, pair, &event).await {
            failures.push(format!("{pair}: not accepted by the source: {e}"));
        }
        sent.insert((pair.to, pair.route()), event);
    }

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let arrivals = readers.collect(&n, KINDS.len(), deadline).await;

    for pair in pairs() {
        let key = (pair.to, pair.route());
        let got = arrivals.get(&key).map(Vec::as_slice).unwrap_or_default();
        match got {
            [] => failures.push(format!("{pair}: nothing arrived")),
            [(Err(e), _)] => failures.push(format!("{pair}: {e}")),
            [(Ok(event), mode)] => {
                if *mode != pair.output() {
                    failures.push(format!("{pair}: written in {mode:?} mode"));
                }
                for d in differences(&sent[&key], event) {
                    failures.push(format!("{pair}: {d}"));
                }
            }
            more => failures.push(format!("{pair}: arrived {} times", more.len())),
        }
    }
    for (key, got) in &arrivals {
        if !sent.contains_key(key) {
            failures.push(format!("unexpected at the {:?} sink: {got:?}", key.0));
        }
    }

    gw.gateway.shutdown().await;
    delete_amqp(&amqp, &[&n.amqp_in, &n.amqp_out], &[&n.amqp_out_exchange]).await;
    let _ = js.delete_stream(&n.js_in_stream).await;
    let _ = js.delete_stream(&n.js_out_stream).await;
    assert!(
        failures.is_empty(),
        "{} of 25 pairs failed:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
    eprintln!("25 pairs in {:?}", started.elapsed());
}

/// MQTT 3.1.1 carries structured mode only: a 3.1.1 source → a 3.1.1 sink keeps the full event.
#[tokio::test]
async fn mqtt_311_structured_carries_a_full_event() {
    let s = suffix();
    let topic_in = format!("ferry-bridges-{s}/v3/in");
    let topic_out = format!("ferry-bridges-{s}/v3/out");
    let mut peer = Mqtt311::connect(&topic_out).await;
    let config = format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[sources.old_in]
type = "mqtt"
url = "{MQTT_URL}"
protocol = "3.1.1"
topics = ["{topic_in}"]
client_id = "ferry-bridges-{s}-v3"
clean_start = true

[sinks.old_out]
type = "mqtt"
url = "{MQTT_URL}"
protocol = "3.1.1"
topic = "{topic_out}"
mode = "structured"

[routes.v3]
from = ["old_in"]
to = ["old_out"]
"#
    );
    let gw = TestGateway::start(&config).await;
    wait_ready(&gw).await;

    let event = full_event(&format!("v3-{s}"), "mqtt311-mqtt311");
    peer.client
        .publish(
            &topic_in,
            rumqttc::QoS::AtLeastOnce,
            false,
            ferry_mqtt::encode_v311(&event).to_vec(),
        )
        .await
        .expect("publish queued");
    peer.acked(1, 10).await.expect("PUBACK");
    let got = tokio::time::timeout(Duration::from_secs(15), peer.messages.recv())
        .await
        .expect("the event arrives on the 3.1.1 sink topic")
        .expect("peer running");
    assert_eq!(got.topic, topic_out);
    let decoded = ferry_mqtt::decode_v311(&got.payload).expect("a structured JSON event");
    let diff = differences(&event, &decoded);
    assert!(diff.is_empty(), "differs:\n  {}", diff.join("\n  "));
    gw.gateway.shutdown().await;
}

const LOAD: usize = 10_000;

/// The id of load event `i`, and back.
fn load_id(i: usize) -> String {
    format!("load-{i}")
}

fn load_index(event: &CloudEvent) -> Option<usize> {
    event
        .id()
        .strip_prefix("load-")?
        .parse()
        .ok()
        .filter(|i| *i < LOAD)
}

/// Every one of 10 000 events published to MQTT 5 (QoS 1) arrives in the AMQP queue, counted by
/// id. The publisher keeps at most `WINDOW` events between its publish and their arrival in the
/// queue: Mosquitto holds at most 1000 QoS 1 messages (`max_queued_messages`) for a subscriber
/// that falls behind and drops the rest, which would be the broker's loss, not the gateway's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_events_mqtt_to_amqp() {
    const WINDOW: usize = 500;
    let started = Instant::now();
    let s = suffix();
    let exchange = format!("ferry.bridges.load.x.{s}");
    let queue = format!("ferry.bridges.load.{s}");
    let (_connection, amqp) = rabbit().await;
    declare_exchange_to_queue(&amqp, &exchange, &queue).await;
    // The source keeps its session (short-lived, so nothing lingers): when it drops its
    // connection after a failed or stalled delivery, Mosquitto redelivers whatever was not
    // acknowledged. A clean start would discard those messages.
    let config = format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[sources.devices]
type = "mqtt"
url = "{MQTT_URL}"
protocol = "5"
topics = ["ferry-bridges-{s}/load/#"]
client_id = "ferry-bridges-{s}-load"
session_expiry_secs = 60

[sinks.rabbit]
type = "amqp"
url = "{AMQP_URL}"
exchange = "{exchange}"
routing_key = "{{type}}"

[routes.all]
from = ["devices"]
to = ["rabbit"]
"#
    );
    let gw = TestGateway::start(&config).await;
    wait_ready(&gw).await;

    // The counter: consumes the queue, and opens the window by one per new id.
    let window = Arc::new(Semaphore::new(WINDOW));
    let mut consumer = amqp
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("basic_consume");
    let counter = {
        let window = Arc::clone(&window);
        tokio::spawn(async move {
            let mut seen = vec![false; LOAD];
            let (mut unique, mut total) = (0, 0);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
            while unique < LOAD {
                let Ok(Some(Ok(d))) = tokio::time::timeout_at(deadline, consumer.next()).await
                else {
                    break;
                };
                total += 1;
                let event = ferry_amqp::decode(&d.properties, &d.data).expect("a CloudEvent");
                let i = load_index(&event).expect("a load event id");
                if !std::mem::replace(&mut seen[i], true) {
                    unique += 1;
                    window.add_permits(1);
                }
            }
            let missing: Vec<usize> = (0..LOAD).filter(|i| !seen[*i]).collect();
            (total, missing)
        })
    };

    let publisher = Mqtt5::connect(&[]).await;
    let topic = format!("ferry-bridges-{s}/load/device-1");
    for i in 0..LOAD {
        tokio::time::timeout(Duration::from_secs(60), window.acquire())
            .await
            .unwrap_or_else(|_| panic!("event {} did not arrive within 60 s", i - WINDOW))
            .expect("window open")
            .forget();
        let event =
            CloudEvent::new(load_id(i), "/bridges/load", "com.example.load").expect("valid event");
        let (payload, properties) = ferry_mqtt::encode_v5(&event, ferry_mqtt::Mode::Binary);
        publisher
            .publish(&topic, payload, properties)
            .await
            .expect("publish queued");
    }
    publisher
        .acked(LOAD, 60)
        .await
        .expect("every publish acknowledged by Mosquitto");

    let (total, missing) = counter.await.expect("counter");
    gw.gateway.shutdown().await;
    delete_amqp(&amqp, &[&queue], &[&exchange]).await;
    assert!(
        missing.is_empty(),
        "{} of {LOAD} events never arrived (first: {:?})",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert!(total >= LOAD);
    eprintln!(
        "MQTT → AMQP: {LOAD} events ({} redelivered) in {:?}",
        total - LOAD,
        started.elapsed()
    );
}

/// Every one of 10 000 events published to an AMQP queue (with publisher confirms) is stored in
/// the JetStream stream. The sink sets `Nats-Msg-Id` from `source` and `id` and the stream
/// drops duplicates inside its window, so 10 000 stored messages are 10 000 distinct events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_events_amqp_to_jetstream() {
    let started = Instant::now();
    let s = suffix();
    let queue = format!("ferry.bridges.load.in.{s}");
    let stream = format!("FERRY_BRIDGES_LOAD_{s}");
    let (_connection, amqp) = rabbit().await;
    declare_queue(&amqp, &queue).await;
    let nats_client = nats().await;
    let js = jetstream::new(nats_client.clone());
    create_stream(&js, &stream, &format!("fb{s}.load.>")).await;
    let config = format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[sources.inbox]
type = "amqp"
url = "{AMQP_URL}"
queue = "{queue}"
prefetch = 256

[sinks.stream]
type = "nats"
url = "{NATS_URL}"
subject = "fb{s}.load.{{type}}"
jetstream = true
in_flight = 256

[routes.all]
from = ["inbox"]
to = ["stream"]
"#
    );
    let gw = TestGateway::start(&config).await;
    wait_ready(&gw).await;

    for i in 0..LOAD {
        let event = CloudEvent::new(load_id(i), "/bridges/load", "load").expect("valid event");
        let (properties, body) = ferry_amqp::encode(
            &event,
            ferry_amqp::Mode::Binary,
            ferry_amqp::HeaderPrefix::default(),
        );
        let confirm = amqp
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                lapin::options::BasicPublishOptions::default(),
                &body,
                properties,
            )
            .await
            .expect("publish");
        drop(confirm);
    }
    let returned = amqp.wait_for_confirms().await.expect("publisher confirms");
    assert!(returned.is_empty(), "the broker returned messages");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut stored = 0;
    while stored < LOAD as u64 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        stored = stream_messages(&js, &stream).await;
    }
    let elapsed = started.elapsed();
    // The ids are what makes the count a count of distinct events.
    let first = js
        .get_stream(&stream)
        .await
        .expect("stream")
        .get_raw_message(1)
        .await
        .expect("first message");
    let first_event =
        ferry_nats::decode(Some(&first.headers), first.payload.clone()).expect("a CloudEvent");
    let msg_id = ferry_nats::header(&first.headers, "Nats-Msg-Id").map(str::to_owned);
    gw.gateway.shutdown().await;
    // Everything was acknowledged: nothing goes back to the queue when the consumer leaves.
    let left = ready_messages(&amqp, &queue).await;
    delete_amqp(&amqp, &[&queue], &[]).await;
    let _ = js.delete_stream(&stream).await;

    assert_eq!(
        stored, LOAD as u64,
        "messages stored in the stream after {elapsed:?}"
    );
    assert_eq!(
        msg_id.as_deref(),
        Some(ferry_nats::message_id(&first_event).as_str()),
        "the sink sets the de-duplication id"
    );
    assert_eq!(left, 0, "messages left in the AMQP queue");
    eprintln!("AMQP → JetStream: {LOAD} events in {elapsed:?}");
}
