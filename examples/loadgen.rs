//! Broker load generator for `scripts/bench`: publishes a fixed number of CloudEvents through
//! Ferry (or straight to the destination broker, for the ceiling) and counts what arrives.
//!
//! Every command talks to 127.0.0.1 only, is bounded by `--events` and by `--max-secs`, and
//! prints one `key=value` line that the script reads:
//!
//! ```text
//! events=50000 arrived=50000 secs=3.210 rate=15576
//! ```
//!
//! `rate` is arrivals per second from the first publish to the last arrival.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use futures_util::{SinkExt as _, StreamExt as _};
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use tokio::sync::{Notify, Semaphore};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::Message;

const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const NATS_URL: &str = "127.0.0.1:4222";
const STRUCTURED: &str = "application/cloudevents+json";

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Give up after this long, whatever arrived.
    #[arg(long, default_value_t = 60, global = true)]
    max_secs: u64,
}

#[derive(Subcommand)]
enum Command {
    /// Ceiling: publish to a RabbitMQ queue with publisher confirms, `window` unconfirmed at once.
    AmqpDirect {
        #[arg(long)]
        queue: String,
        #[arg(long, default_value_t = 50_000)]
        events: u64,
        #[arg(long, default_value_t = 64)]
        window: usize,
    },
    /// Publish MQTT 5 QoS 1 events (structured mode) and count them in a RabbitMQ queue.
    MqttAmqp {
        #[arg(long)]
        topic: String,
        #[arg(long)]
        queue: String,
        #[arg(long, default_value_t = 50_000)]
        events: u64,
        /// Events published but not yet arrived in the queue.
        #[arg(long, default_value_t = 512)]
        window: usize,
    },
    /// Ceiling: publish to NATS core, flushing every `window` messages.
    NatsDirect {
        #[arg(long)]
        subject: String,
        #[arg(long, default_value_t = 50_000)]
        events: u64,
        #[arg(long, default_value_t = 64)]
        window: usize,
    },
    /// Send events over WebSocket connections, count `dev.ferry.ack`s and NATS arrivals.
    WsNats {
        #[arg(long)]
        url: String,
        #[arg(long)]
        subject: String,
        #[arg(long, default_value_t = 50_000)]
        events: u64,
        #[arg(long, default_value_t = 8)]
        connections: u64,
        /// Unacknowledged events per connection.
        #[arg(long, default_value_t = 64)]
        window: usize,
    },
    /// Declare a queue and consume it (no ack) until killed or `max_secs`; prints `ready` first.
    AmqpDrain {
        #[arg(long)]
        queue: String,
    },
    /// MQTT 5 QoS 1 publishes over `connections` connections, `window` unacknowledged each;
    /// `rate` counts PUBACKs. With `--subject`, also counts NATS arrivals.
    MqttPublish {
        #[arg(long)]
        port: u16,
        /// Topic prefix: each connection publishes to `<topic>/<n>/telemetry`.
        #[arg(long)]
        topic: String,
        #[arg(long)]
        subject: Option<String>,
        #[arg(long, default_value_t = 50_000)]
        events: u64,
        #[arg(long, default_value_t = 8)]
        connections: u64,
        #[arg(long, default_value_t = 64)]
        window: usize,
    },
    /// Open idle MQTT 3.1.1 connections (CONNECT, CONNACK), print `open=N`, hold them until
    /// stdin closes (each pings at its keep-alive).
    MqttIdle {
        #[arg(long)]
        port: u16,
        #[arg(long, default_value_t = 10_000)]
        connections: u64,
    },
    /// Open idle WebSocket connections, print `open=N`, hold them until stdin closes.
    WsIdle {
        #[arg(long)]
        url: String,
        #[arg(long, default_value_t = 10_000)]
        connections: u64,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let limit = Duration::from_secs(cli.max_secs);
    match cli.command {
        Command::AmqpDirect {
            queue,
            events,
            window,
        } => amqp_direct(&queue, events, window, limit).await,
        Command::MqttAmqp {
            topic,
            queue,
            events,
            window,
        } => mqtt_amqp(&topic, &queue, events, window, limit).await,
        Command::NatsDirect {
            subject,
            events,
            window,
        } => nats_direct(&subject, events, window, limit).await,
        Command::WsNats {
            url,
            subject,
            events,
            connections,
            window,
        } => ws_nats(&url, &subject, events, connections, window, limit).await,
        Command::AmqpDrain { queue } => amqp_drain(&queue, limit).await,
        Command::WsIdle { url, connections } => ws_idle(&url, connections, limit).await,
        Command::MqttPublish {
            port,
            topic,
            subject,
            events,
            connections,
            window,
        } => {
            mqtt_publish(
                port,
                &topic,
                subject.as_deref(),
                events,
                connections,
                window,
                limit,
            )
            .await
        }
        Command::MqttIdle { port, connections } => mqtt_idle(port, connections, limit).await,
    }
}

/// One structured-mode event with ~300 bytes of JSON data and a unique id.
fn event(i: u64) -> String {
    format!(
        concat!(
            r#"{{"specversion":"1.0","id":"bench-{}","source":"https://shop.example.com/orders","#,
            r#""type":"com.example.order.created","datacontenttype":"application/json","#,
            r#""subject":"orders/{}","time":"2026-11-24T10:00:00Z","tenant":"acme","priority":7,"#,
            r#""data":{{"order":{{"id":"ord-{}","customer":"cus-8812","currency":"EUR","total":142.5,"#,
            r#""lines":[{{"sku":"SKU-1001","name":"Espresso beans 1kg","qty":2,"price":24.5}},"#,
            r#"{{"sku":"SKU-2040","name":"Burr grinder","qty":1,"price":89.0}},"#,
            r#"{{"sku":"SKU-0007","name":"Filter papers","qty":3,"price":1.5}}]}},"channel":"web"}}}}"#
        ),
        i, i, i
    )
}

/// Counts arrivals at the destination and wakes whoever waits for the last one.
#[derive(Default)]
struct Arrivals {
    count: AtomicU64,
    notify: Notify,
}

impl Arrivals {
    fn add(&self) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.notify.notify_waiters();
    }

    fn get(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Waits until `n` arrived or `deadline` passed; returns when the last one arrived.
    async fn wait_for(&self, n: u64, deadline: Instant) -> Instant {
        loop {
            let notified = self.notify.notified();
            if self.get() >= n || Instant::now() >= deadline {
                return Instant::now();
            }
            let _ = tokio::time::timeout(Duration::from_millis(50), notified).await;
        }
    }
}

fn report(events: u64, arrived: u64, started: Instant, ended: Instant) {
    let secs = ended.duration_since(started).as_secs_f64().max(1e-9);
    println!(
        "events={events} arrived={arrived} secs={secs:.3} rate={:.0}",
        arrived as f64 / secs
    );
}

async fn amqp_channel() -> anyhow::Result<(Connection, Channel)> {
    let connection = Connection::connect(AMQP_URL, ConnectionProperties::default())
        .await
        .context("RabbitMQ on 127.0.0.1:5672")?;
    let channel = connection.create_channel().await?;
    Ok((connection, channel))
}

/// Declares a non-durable queue that expires a minute after its last consumer left.
async fn declare_queue(channel: &Channel, queue: &str) -> anyhow::Result<()> {
    let mut args = FieldTable::default();
    args.insert("x-expires".into(), AMQPValue::LongInt(60_000));
    channel
        .queue_declare(queue.into(), QueueDeclareOptions::default(), args)
        .await?;
    Ok(())
}

/// Consumes `queue` without acks, counting every delivery.
async fn count_amqp(channel: &Channel, queue: &str, arrivals: Arc<Arrivals>) -> anyhow::Result<()> {
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    tokio::spawn(async move {
        while let Some(Ok(_delivery)) = consumer.next().await {
            arrivals.add();
        }
    });
    Ok(())
}

async fn amqp_direct(
    queue: &str,
    events: u64,
    window: usize,
    limit: Duration,
) -> anyhow::Result<()> {
    let (_c1, consume) = amqp_channel().await?;
    declare_queue(&consume, queue).await?;
    let arrivals = Arc::new(Arrivals::default());
    count_amqp(&consume, queue, arrivals.clone()).await?;
    let (_c2, publish) = amqp_channel().await?;
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let permits = Arc::new(Semaphore::new(window));
    // Ferry's AMQP sink publishes persistent messages: the ceiling does too.
    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(STRUCTURED.into());
    let started = Instant::now();
    let deadline = started + limit;
    for i in 0..events {
        if Instant::now() >= deadline {
            break;
        }
        let permit = permits.clone().acquire_owned().await?;
        let confirm = publish
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                event(i).as_bytes(),
                properties.clone(),
            )
            .await?;
        tokio::spawn(async move {
            let _ = confirm.await;
            drop(permit);
        });
    }
    let ended = arrivals.wait_for(events, deadline).await;
    report(events, arrivals.get(), started, ended);
    Ok(())
}

async fn mqtt_amqp(
    topic: &str,
    queue: &str,
    events: u64,
    window: usize,
    limit: Duration,
) -> anyhow::Result<()> {
    use rumqttc::v5::mqttbytes::v5::PublishProperties;
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{AsyncClient, MqttOptions};

    let (_c, consume) = amqp_channel().await?;
    declare_queue(&consume, queue).await?;
    let arrivals = Arc::new(Arrivals::default());
    count_amqp(&consume, queue, arrivals.clone()).await?;

    let mut options = MqttOptions::new(
        format!("ferry-bench-{}", std::process::id()),
        "127.0.0.1",
        1883,
    );
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(options, 1024);
    tokio::spawn(async move {
        loop {
            if let Err(e) = eventloop.poll().await {
                eprintln!("loadgen: MQTT connection: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });

    let properties = PublishProperties {
        content_type: Some(STRUCTURED.to_owned()),
        ..PublishProperties::default()
    };
    let started = Instant::now();
    let deadline = started + limit;
    for i in 0..events {
        // End-to-end window: publish only while fewer than `window` are on their way.
        while i.saturating_sub(arrivals.get()) >= window as u64 {
            if Instant::now() >= deadline {
                break;
            }
            let notified = arrivals.notify.notified();
            if i.saturating_sub(arrivals.get()) < window as u64 {
                break;
            }
            let _ = tokio::time::timeout(Duration::from_millis(20), notified).await;
        }
        if Instant::now() >= deadline {
            break;
        }
        client
            .publish_with_properties(
                topic,
                QoS::AtLeastOnce,
                false,
                Bytes::from(event(i)),
                properties.clone(),
            )
            .await?;
    }
    let ended = arrivals.wait_for(events, deadline).await;
    report(events, arrivals.get(), started, ended);
    let _ = client.disconnect().await;
    Ok(())
}

async fn nats_client() -> anyhow::Result<async_nats::Client> {
    async_nats::connect(NATS_URL)
        .await
        .context("NATS on 127.0.0.1:4222")
}

/// Subscribes to `subject` and counts every message.
async fn count_nats(
    client: &async_nats::Client,
    subject: &str,
    arrivals: Arc<Arrivals>,
) -> anyhow::Result<()> {
    let mut sub = client.subscribe(subject.to_owned()).await?;
    client.flush().await?;
    tokio::spawn(async move {
        while sub.next().await.is_some() {
            arrivals.add();
        }
    });
    Ok(())
}

async fn nats_direct(
    subject: &str,
    events: u64,
    window: usize,
    limit: Duration,
) -> anyhow::Result<()> {
    let consume = nats_client().await?;
    let arrivals = Arc::new(Arrivals::default());
    count_nats(&consume, subject, arrivals.clone()).await?;
    let publish = nats_client().await?;
    let started = Instant::now();
    let deadline = started + limit;
    for i in 0..events {
        if Instant::now() >= deadline {
            break;
        }
        publish
            .publish(subject.to_owned(), Bytes::from(event(i)))
            .await?;
        if (i + 1) % window as u64 == 0 {
            publish.flush().await?;
        }
    }
    publish.flush().await?;
    let ended = arrivals.wait_for(events, deadline).await;
    report(events, arrivals.get(), started, ended);
    Ok(())
}

type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws_connect(url: &str) -> anyhow::Result<WsStream> {
    let mut request = url.into_client_request()?;
    request
        .headers_mut()
        .insert("sec-websocket-protocol", "cloudevents.json".parse()?);
    let (ws, _) = tokio_tungstenite::connect_async(request).await?;
    Ok(ws)
}

async fn ws_nats(
    url: &str,
    subject: &str,
    events: u64,
    connections: u64,
    window: usize,
    limit: Duration,
) -> anyhow::Result<()> {
    let nats = nats_client().await?;
    let arrivals = Arc::new(Arrivals::default());
    count_nats(&nats, subject, arrivals.clone()).await?;
    let acks = Arc::new(Arrivals::default());
    let failed = Arc::new(AtomicU64::new(0));
    let mut sockets = Vec::new();
    for _ in 0..connections {
        sockets.push(ws_connect(url).await?);
    }
    let started = Instant::now();
    let deadline = started + limit;
    let mut tasks = Vec::new();
    for (c, ws) in sockets.into_iter().enumerate() {
        let c = c as u64;
        let count = events / connections + u64::from(c < events % connections);
        let (mut tx, mut rx) = ws.split();
        let permits = Arc::new(Semaphore::new(window));
        let reader_permits = permits.clone();
        let (acks, failed) = (acks.clone(), failed.clone());
        let reader = tokio::spawn(async move {
            let mut seen = 0;
            while seen < count {
                let Ok(Some(Ok(message))) =
                    tokio::time::timeout_at(deadline.into(), rx.next()).await
                else {
                    break;
                };
                if let Message::Text(text) = message {
                    seen += 1;
                    let ack: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                    if ack["data"]["status"] == 202 {
                        acks.add();
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    reader_permits.add_permits(1);
                }
            }
        });
        let writer = tokio::spawn(async move {
            for k in 0..count {
                let Ok(Ok(permit)) =
                    tokio::time::timeout_at(deadline.into(), permits.acquire()).await
                else {
                    break;
                };
                permit.forget();
                if tx.send(Message::text(event(c * events + k))).await.is_err() {
                    break;
                }
            }
            tx
        });
        tasks.push((reader, writer));
    }
    let mut writers = Vec::new();
    for (reader, writer) in tasks {
        reader.await?;
        writers.push(writer.await?);
    }
    let acked = Instant::now();
    let ended = arrivals.wait_for(acks.get(), deadline).await.max(acked);
    for mut tx in writers {
        let _ = tx.send(Message::Close(None)).await;
    }
    let secs = acked.duration_since(started).as_secs_f64().max(1e-9);
    println!(
        "events={events} acked={} failed={} arrived={} secs={secs:.3} rate={:.0} arrival_secs={:.3}",
        acks.get(),
        failed.load(Ordering::Relaxed),
        arrivals.get(),
        acks.get() as f64 / secs,
        ended.duration_since(started).as_secs_f64()
    );
    Ok(())
}

async fn amqp_drain(queue: &str, limit: Duration) -> anyhow::Result<()> {
    let (_c, channel) = amqp_channel().await?;
    declare_queue(&channel, queue).await?;
    let arrivals = Arc::new(Arrivals::default());
    count_amqp(&channel, queue, arrivals.clone()).await?;
    println!("ready");
    tokio::select! {
        _ = tokio::time::sleep(limit) => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    println!("arrived={}", arrivals.get());
    Ok(())
}

async fn ws_idle(url: &str, connections: u64, limit: Duration) -> anyhow::Result<()> {
    use tokio::io::AsyncReadExt as _;

    let opening = Arc::new(Semaphore::new(256));
    let mut handles = Vec::with_capacity(connections as usize);
    for _ in 0..connections {
        let permit = opening.clone().acquire_owned().await?;
        let url = url.to_owned();
        handles.push(tokio::spawn(async move {
            let ws = ws_connect(&url).await;
            drop(permit);
            ws
        }));
    }
    let mut open = Vec::with_capacity(handles.len());
    let mut errors = 0u64;
    for h in handles {
        match h.await? {
            Ok(ws) => open.push(ws),
            Err(e) => {
                if errors == 0 {
                    eprintln!("loadgen: connect: {e}");
                }
                errors += 1;
            }
        }
    }
    if open.is_empty() {
        bail!("no WebSocket connection could be opened to {url}");
    }
    println!("open={} errors={errors}", open.len());
    // Keep reading so that server pings are answered while the connections are held.
    for mut ws in open {
        tokio::spawn(async move { while let Some(Ok(_)) = ws.next().await {} });
    }
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    let _ = tokio::time::timeout(limit, async {
        while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await;
    Ok(())
}

async fn mqtt_publish(
    port: u16,
    topic: &str,
    subject: Option<&str>,
    events: u64,
    connections: u64,
    window: usize,
    limit: Duration,
) -> anyhow::Result<()> {
    use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};

    let arrivals = Arc::new(Arrivals::default());
    let _nats = match subject {
        Some(subject) => {
            let client = nats_client().await?;
            count_nats(&client, subject, arrivals.clone()).await?;
            Some(client)
        }
        None => None,
    };
    let acked = Arc::new(Arrivals::default());
    let per_connection = events / connections;
    let properties = PublishProperties {
        content_type: Some(STRUCTURED.to_owned()),
        ..PublishProperties::default()
    };
    let mut clients = Vec::new();
    for n in 0..connections {
        let mut options = MqttOptions::new(
            format!("bench-{}-{n}", std::process::id()),
            "127.0.0.1",
            port,
        );
        options.set_keep_alive(Duration::from_secs(30));
        // `window` QoS 1 publishes unacknowledged at once (the client's outgoing in-flight).
        options.set_outgoing_inflight_upper_limit(window as u16);
        let (client, mut eventloop) = AsyncClient::new(options, window);
        let acked = acked.clone();
        let (connected_tx, connected_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut connected = Some(connected_tx);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        if let Some(tx) = connected.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::PubAck(_))) => acked.add(),
                    Ok(_) => {}
                    Err(e) => {
                        eprintln!("loadgen: MQTT connection: {e}");
                        return;
                    }
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), connected_rx)
            .await
            .context("CONNACK in time")??;
        clients.push(client);
    }
    let started = Instant::now();
    let deadline = started + limit;
    let mut publishers = Vec::new();
    for (n, client) in clients.into_iter().enumerate() {
        let topic = format!("{topic}/{n}/telemetry");
        let properties = properties.clone();
        publishers.push(tokio::spawn(async move {
            for i in 0..per_connection {
                let payload = Bytes::from(event(n as u64 * per_connection + i));
                if client
                    .publish_with_properties(
                        &topic,
                        QoS::AtLeastOnce,
                        false,
                        payload,
                        properties.clone(),
                    )
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }));
    }
    let total = per_connection * connections;
    let ended = acked.wait_for(total, deadline).await;
    for p in publishers {
        p.abort();
    }
    let secs = ended.duration_since(started).as_secs_f64().max(1e-9);
    let arrived = if subject.is_some() {
        arrivals.wait_for(total, deadline).await;
        arrivals.get()
    } else {
        acked.get()
    };
    println!(
        "events={total} acked={} arrived={arrived} secs={secs:.3} rate={:.0}",
        acked.get(),
        acked.get() as f64 / secs
    );
    Ok(())
}

async fn mqtt_idle(port: u16, connections: u64, limit: Duration) -> anyhow::Result<()> {
    use rumqttc::mqttbytes::v4;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let opening = Arc::new(Semaphore::new(256));
    let mut handles = Vec::with_capacity(connections as usize);
    for n in 0..connections {
        let permit = opening.clone().acquire_owned().await?;
        handles.push(tokio::spawn(async move {
            let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
            let mut connect = v4::Connect::new(format!("idle-{}-{n}", std::process::id()));
            connect.keep_alive = 120;
            let mut buf = bytes::BytesMut::new();
            v4::Packet::Connect(connect).write(&mut buf, usize::MAX)?;
            stream.write_all(&buf).await?;
            let mut connack = [0u8; 4];
            stream.read_exact(&mut connack).await?;
            anyhow::ensure!(connack == [0x20, 0x02, 0x00, 0x00], "CONNACK {connack:?}");
            drop(permit);
            anyhow::Ok(stream)
        }));
    }
    let mut open = Vec::with_capacity(handles.len());
    let mut errors = 0u64;
    for h in handles {
        match h.await? {
            Ok(s) => open.push(s),
            Err(e) => {
                if errors == 0 {
                    eprintln!("loadgen: MQTT connect: {e}");
                }
                errors += 1;
            }
        }
    }
    if open.is_empty() {
        bail!("no MQTT connection could be opened to port {port}");
    }
    println!("open={} errors={errors}", open.len());
    // PINGREQ every minute keeps each session within its keep-alive.
    for mut s in open {
        tokio::spawn(async move {
            let mut buf = [0u8; 16];
            loop {
                tokio::select! {
                    r = s.read(&mut buf) => if !matches!(r, Ok(n) if n > 0) { return },
                    () = tokio::time::sleep(Duration::from_secs(60)) => {
                        if s.write_all(&[0xC0, 0x00]).await.is_err() { return }
                    }
                }
            }
        });
    }
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    let _ = tokio::time::timeout(limit, async {
        while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await;
    Ok(())
}
