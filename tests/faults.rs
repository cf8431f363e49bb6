//! Delivery guarantees under faults: connections cut, processes killed, targets stalled.
//!
//! Nothing here stops the shared brokers: the RabbitMQ connection is cut by a TCP proxy inside
//! the test, and the NATS test runs its own `nats-server` on a random port. An HTTP target
//! answering 500 and then 200, or 400, is covered in `tests/delivery.rs`
//! (`a_failing_endpoint_is_retried_until_it_recovers`, `a_refusing_endpoint_dead_letters_with_the_reason`).

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{metric, FerryProcess, Receiver, TestGateway};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;
use tokio_stream::StreamExt as _;

const RABBIT: &str = "127.0.0.1:5672";

async fn rabbit() -> (Connection, Channel) {
    let connection = tokio::time::timeout(
        Duration::from_secs(10),
        Connection::connect(
            &format!("amqp://guest:guest@{RABBIT}/%2f"),
            ConnectionProperties::default(),
        ),
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

async fn declare_queue(channel: &Channel, name: &str) {
    let mut arguments = FieldTable::default();
    arguments.insert("x-expires".into(), AMQPValue::LongInt(120_000));
    channel
        .queue_declare(name.into(), QueueDeclareOptions::default(), arguments)
        .await
        .expect("queue_declare");
}

/// Takes messages from a queue until `done` says enough or nothing comes for 3 s.
async fn drain_ids(channel: &Channel, queue: &str, want: &HashSet<String>) -> HashSet<String> {
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("basic_consume");
    let mut got = HashSet::new();
    while !want.is_subset(&got) {
        let Ok(Some(Ok(d))) = tokio::time::timeout(Duration::from_secs(3), consumer.next()).await
        else {
            break;
        };
        let body: serde_json::Value = serde_json::from_slice(&d.data).unwrap_or_default();
        if let Some(id) = body["id"].as_str() {
            got.insert(id.to_owned());
        }
        d.ack(BasicAckOptions::default()).await.expect("ack");
    }
    got
}

/// A TCP proxy to `upstream` that can cut every connection and refuse new ones for a while.
struct Proxy {
    addr: SocketAddr,
    connections: Arc<Mutex<Vec<AbortHandle>>>,
    down: Arc<std::sync::atomic::AtomicBool>,
    accept: AbortHandle,
}

impl Proxy {
    async fn start(upstream: &'static str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let connections: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (conns, is_down) = (Arc::clone(&connections), Arc::clone(&down));
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if is_down.load(std::sync::atomic::Ordering::SeqCst) {
                    continue; // dropped: the connection is refused while down
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                conns.lock().unwrap().push(task.abort_handle());
            }
        })
        .abort_handle();
        Proxy {
            addr,
            connections,
            down,
            accept,
        }
    }

    /// Cuts every open connection and refuses new ones.
    fn sever(&self) {
        self.down.store(true, std::sync::atomic::Ordering::SeqCst);
        for c in self.connections.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    fn restore(&self) {
        self.down.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.sever();
    }
}

/// Posts one event, retrying (as a sender should) until it gets 202 or the deadline passes.
async fn post_until_accepted(
    client: &reqwest::Client,
    url: &str,
    id: &str,
    deadline: Instant,
) -> bool {
    while Instant::now() < deadline {
        let sent = client
            .post(url)
            .header("ce-specversion", "1.0")
            .header("ce-id", id)
            .header("ce-source", "/faults")
            .header("ce-type", "com.example.fault")
            .header("content-type", "application/json")
            .body(r#"{"n":1}"#)
            .send()
            .await;
        match sent {
            Ok(r) if r.status() == 202 => return true,
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    false
}

/// Sends events `0..n` from `tasks` concurrent senders with retries; the ids that got a 202
/// go into `acked` as they do.
async fn send_all(
    url: String,
    prefix: &str,
    n: usize,
    tasks: usize,
    budget: Duration,
    acked: Arc<Mutex<HashSet<String>>>,
) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + budget;
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (client, url, acked) = (client.clone(), url.clone(), Arc::clone(&acked));
        let prefix = prefix.to_owned();
        handles.push(tokio::spawn(async move {
            for i in (t..n).step_by(tasks) {
                let id = format!("{prefix}-{i}");
                if post_until_accepted(&client, &url, &id, deadline).await {
                    acked.lock().unwrap().insert(id);
                }
            }
        }));
    }
    for h in handles {
        h.await.expect("sender");
    }
}

async fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// RabbitMQ connection cut in the middle of 10 000 HTTP → AMQP events: every event that got a
/// 202 is in the queue afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_connection_cut_mid_stream_loses_nothing_acknowledged() {
    let (_conn, ch) = rabbit().await;
    let exchange = common::unique("ferry.faults.x");
    let queue = common::unique("ferry.faults.q");
    ch.exchange_declare(
        exchange.as_str().into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("exchange");
    declare_queue(&ch, &queue).await;
    ch.queue_bind(
        queue.as_str().into(),
        exchange.as_str().into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind");
    let proxy = Proxy::start(RABBIT).await;
    let gw = TestGateway::start(&format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[sources.web]
type = "http"
listen = "127.0.0.1:0"
path = "/events"
enqueue_timeout_ms = 500

[sinks.out]
type = "amqp"
url = "amqp://guest:guest@{}/%2f"
exchange = "{exchange}"
routing_key = "{{type}}"
mode = "structured"
retry = {{ max_attempts = 3, initial_backoff_ms = 50, max_backoff_ms = 500 }}

[routes.all]
from = ["web"]
to = ["out"]
"#,
        proxy.addr
    ))
    .await;
    wait_until("the AMQP sink is ready", Duration::from_secs(10), || {
        std::net::TcpStream::connect(gw.gateway.admin_addr().unwrap()).is_ok()
    })
    .await;
    let ready = gw.admin("/readyz");
    let deadline = Instant::now() + Duration::from_secs(10);
    while reqwest::get(&ready).await.unwrap().status() != 200 {
        assert!(Instant::now() < deadline, "sink never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    const N: usize = 10_000;
    let acked: Arc<Mutex<HashSet<String>>> = Arc::default();
    let started = Instant::now();
    let load = tokio::spawn(send_all(
        gw.url("web", "/events"),
        "cut",
        N,
        32,
        Duration::from_secs(60),
        Arc::clone(&acked),
    ));
    wait_until("a third of the events", Duration::from_secs(30), || {
        acked.lock().unwrap().len() >= N / 3
    })
    .await;
    proxy.sever();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = acked.lock().unwrap().len();
    proxy.restore();
    load.await.expect("load");
    let acked = acked.lock().unwrap().clone();
    eprintln!(
        "{} of {N} acknowledged in {:?}; {during} when the connection was cut",
        acked.len(),
        started.elapsed()
    );
    assert_eq!(acked.len(), N, "every event was eventually accepted");
    let got = drain_ids(&ch, &queue, &acked).await;
    let missing: Vec<&String> = acked.difference(&got).take(5).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged events are not in the queue, e.g. {missing:?}",
        acked.difference(&got).count()
    );
    gw.gateway.shutdown().await;
    let _ = ch
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = ch
        .exchange_delete(exchange.as_str().into(), Default::default())
        .await;
}

fn spool_config(target: SocketAddr) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[sources.web]
type = "http"
listen = "127.0.0.1:0"
path = "/events"

[sinks.partner]
type = "http"
url = "http://{target}/events"
retry = {{ max_attempts = 3, initial_backoff_ms = 50, max_backoff_ms = 500 }}
circuit_breaker = {{ failures = 5, probe_interval_ms = 200 }}
spool = {{ path = "spool/partner", max_bytes = 67108864 }}

[routes.all]
from = ["web"]
to = ["partner"]
"#
    )
}

/// With a spool, `kill -9` in the middle of a stream while the target is down, then a
/// restart with the target up: every acknowledged event is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spooled_events_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let target = common::closed_port().await;
    let mut ferry = FerryProcess::start(dir.path(), &spool_config(target));
    let acked: Arc<Mutex<HashSet<String>>> = Arc::default();
    let load = tokio::spawn(send_all(
        ferry.url("web", "/events"),
        "spool",
        3_000,
        16,
        Duration::from_secs(4),
        Arc::clone(&acked),
    ));
    wait_until("1000 events spooled", Duration::from_secs(20), || {
        acked.lock().unwrap().len() >= 1_000
    })
    .await;
    ferry.signal("KILL");
    ferry.wait(Duration::from_secs(5));
    load.await.expect("load");
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 1_000);

    // The target comes up on the address the spool delivers to; Ferry restarts.
    let mut receiver = Receiver::start_on(target).await;
    let ferry = FerryProcess::start(dir.path(), &spool_config(target));
    let mut got = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !acked.is_subset(&got) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, receiver.rx.recv()).await {
            Ok(Some(r)) => {
                got.insert(r.headers["ce-id"].to_str().unwrap().to_owned());
            }
            _ => panic!(
                "{} of {} acknowledged events delivered after the restart",
                acked.intersection(&got).count(),
                acked.len()
            ),
        }
    }
    eprintln!(
        "{} acknowledged before kill -9, all delivered after the restart ({} distinct received)",
        acked.len(),
        got.len()
    );
    // The spool empties once everything is delivered.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = ferry.metrics().await;
        if metric(&m, "ferry_spool_events{sink=\"partner\"}") == 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "spool not emptied:\n{m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A stalled sink: Ferry's memory stays bounded while senders get 503 with `Retry-After`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_sink_keeps_memory_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let stalled = common::stalled_endpoint().await;
    let ferry = FerryProcess::start(
        dir.path(),
        &format!(
            r#"
[admin]
listen = "127.0.0.1:0"

[sources.web]
type = "http"
listen = "127.0.0.1:0"
path = "/events"
enqueue_timeout_ms = 50
ack_timeout_ms = 1000

[sinks.partner]
type = "http"
url = "http://{stalled}/events"
timeout_ms = 60000
in_flight = 16
queue = 256

[routes.all]
from = ["web"]
to = ["partner"]
"#
        ),
    );
    let baseline = ferry.rss_kib();
    let url = ferry.url("web", "/events");
    let client = reqwest::Client::new();
    let body = "x".repeat(16 * 1024);
    let (refused, with_retry_after) = (
        Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        Arc::new(std::sync::atomic::AtomicUsize::new(0)),
    );
    let deadline = Instant::now() + Duration::from_secs(6);
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (client, url, body) = (client.clone(), url.clone(), body.clone());
        let (refused, with_retry_after) = (Arc::clone(&refused), Arc::clone(&with_retry_after));
        tasks.push(tokio::spawn(async move {
            let mut i = 0;
            while Instant::now() < deadline {
                i += 1;
                let r = client
                    .post(&url)
                    .header("ce-specversion", "1.0")
                    .header("ce-id", format!("s-{i}"))
                    .header("ce-source", "/stall")
                    .header("ce-type", "t")
                    .body(body.clone())
                    .send()
                    .await;
                if let Ok(r) = r {
                    if r.status() == 503 {
                        refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if r.headers().contains_key("retry-after") {
                            with_retry_after.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                }
            }
        }));
    }
    let mut peak = baseline;
    while Instant::now() < deadline {
        peak = peak.max(ferry.rss_kib());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for t in tasks {
        t.await.expect("sender");
    }
    peak = peak.max(ferry.rss_kib());
    let refused = refused.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "RSS {baseline} KiB at start, peak {peak} KiB; {refused} requests got 503 while the sink was stalled"
    );
    assert!(refused > 100, "senders were told to slow down");
    assert_eq!(
        with_retry_after.load(std::sync::atomic::Ordering::Relaxed),
        refused
    );
    // 256 queued 16 KiB events are 4 MiB; allow buffers and allocator slack, not growth.
    assert!(
        peak < baseline + 64 * 1024,
        "RSS grew from {baseline} KiB to {peak} KiB"
    );
}

/// SIGTERM while an AMQP source feeds a slow HTTP sink: exit 0, nothing acknowledged is lost,
/// and what was not acknowledged is redelivered and delivered after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_load_exits_zero_and_redelivers_the_rest() {
    let (_conn, ch) = rabbit().await;
    let queue = common::unique("ferry.faults.term");
    declare_queue(&ch, &queue).await;
    const N: usize = 300;
    for i in 0..N {
        ch.basic_publish(
            "".into(),
            queue.as_str().into(),
            BasicPublishOptions::default(),
            format!(
                r#"{{"specversion":"1.0","id":"t-{i}","source":"/term","type":"t","data":{{}}}}"#
            )
            .as_bytes(),
            BasicProperties::default().with_content_type("application/cloudevents+json".into()),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    }
    let mut receiver = Receiver::start().await;
    receiver.set_delay_ms(20);
    let config = format!(
        r#"
shutdown_timeout_ms = 5000

[admin]
listen = "127.0.0.1:0"

[sources.inbox]
type = "amqp"
url = "amqp://guest:guest@{RABBIT}/%2f"
queue = "{queue}"
prefetch = 16

[sinks.partner]
type = "http"
url = "http://{}/events"
in_flight = 8

[routes.all]
from = ["inbox"]
to = ["partner"]
"#,
        receiver.addr
    );
    let dir = tempfile::tempdir().unwrap();
    let mut ferry = FerryProcess::start(dir.path(), &config);
    let mut got = HashSet::new();
    while got.len() < 50 {
        let r = tokio::time::timeout(Duration::from_secs(10), receiver.rx.recv())
            .await
            .expect("events flow")
            .expect("receiver");
        got.insert(r.headers["ce-id"].to_str().unwrap().to_owned());
    }
    ferry.signal("TERM");
    let status = ferry.wait(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "graceful exit");
    while let Ok(r) = receiver.rx.try_recv() {
        got.insert(r.headers["ce-id"].to_str().unwrap().to_owned());
    }
    let before_restart = got.len();
    assert!(
        before_restart < N,
        "the load was still going when SIGTERM came"
    );
    // Whatever was not acknowledged went back to the queue; a new process delivers it.
    let _ferry = FerryProcess::start(dir.path(), &config);
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.len() < N {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, receiver.rx.recv()).await {
            Ok(Some(r)) => {
                got.insert(r.headers["ce-id"].to_str().unwrap().to_owned());
            }
            _ => panic!(
                "only {} of {N} events delivered after the restart",
                got.len()
            ),
        }
    }
    eprintln!("{before_restart} of {N} delivered before SIGTERM, the rest after the restart");
    let _ = ch
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
}

/// Messages in stream `FF<s>` of the NATS server on `port`; `None` while it is unreachable.
async fn stream_messages(port: u16, s: &str) -> Option<u64> {
    let client = async_nats::connect(format!("nats://127.0.0.1:{port}"))
        .await
        .ok()?;
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream(format!("FF{s}")).await.ok()?;
    Some(stream.info().await.ok()?.state.messages)
}

/// A private `nats-server -js` on a fixed port with its own store.
struct NatsServer(common::Broker);

impl NatsServer {
    fn start(port: u16, store: tempfile::TempDir) -> NatsServer {
        let args = ["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"]
            .into_iter()
            .map(String::from)
            .chain([store.path().display().to_string()])
            .collect::<Vec<_>>();
        NatsServer(common::Broker::spawn(
            "/usr/sbin/nats-server",
            &args,
            port,
            store,
        ))
    }

    fn port(&self) -> u16 {
        self.0.port
    }

    /// Stops the server (SIGTERM) and starts it again on the same port and store.
    fn restart(mut self) -> NatsServer {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.0.child.id().to_string()])
            .status();
        let _ = self.0.child.wait();
        let store = std::mem::replace(&mut self.0.dir, tempfile::tempdir().unwrap());
        NatsServer::start(self.0.port, store)
    }
}

/// A private Mosquitto on a random port whose per-client queue does not drop (the shared one
/// keeps at most 1000 QoS 1 messages for a client that falls behind and drops the rest while
/// acknowledging them to their publisher: the broker's loss, which would hide Ferry's).
async fn private_mosquitto() -> common::Broker {
    let port = common::closed_port().await.port();
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 1000000\n"
        ),
    )
    .unwrap();
    let args = vec!["-c".to_owned(), conf.display().to_string()];
    common::Broker::spawn("/usr/sbin/mosquitto", &args, port, dir)
}

/// NATS (JetStream) restarted in the middle of an MQTT → JetStream stream: nothing Ferry
/// acknowledged to Mosquitto is lost, and what it did not acknowledge is redelivered, so every
/// published event ends up in the stream. (NATS is stopped with SIGTERM: with SIGKILL the
/// server itself may lose PubAcked messages it had not synced yet, which is not Ferry's to
/// test.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restart_mid_stream_loses_nothing_acknowledged() {
    use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};

    let port = common::closed_port().await.port();
    let nats = NatsServer::start(port, tempfile::tempdir().unwrap());
    let mosquitto = private_mosquitto().await;
    let mqtt_port = mosquitto.port;
    let s = uuid::Uuid::now_v7().simple().to_string();
    let gw = TestGateway::start(&format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[sources.mqtt]
type = "mqtt"
url = "mqtt://127.0.0.1:{mqtt_port}"
protocol = "5"
topics = ["ferry-faults-{s}/#"]
client_id = "ferry-faults-{s}"
session_expiry_secs = 60

[sinks.stream]
type = "nats"
url = "nats://127.0.0.1:{port}"
subject = "ff{s}.{{type}}"
jetstream = true
stream = {{ name = "FF{s}", subjects = ["ff{s}.>"] }}
timeout_ms = 2000
retry = {{ max_attempts = 3, initial_backoff_ms = 50, max_backoff_ms = 500 }}

[routes.all]
from = ["mqtt"]
to = ["stream"]
"#
    ))
    .await;
    let ready = gw.admin("/readyz");
    let deadline = Instant::now() + Duration::from_secs(15);
    while reqwest::get(&ready).await.unwrap().status() != 200 {
        assert!(Instant::now() < deadline, "gateway never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    const N: usize = 2_000;
    let mut options = MqttOptions::new(format!("faults-pub-{s}"), "127.0.0.1", mqtt_port);
    options.set_keep_alive(Duration::from_secs(5));
    let (client, mut events) = AsyncClient::new(options, N + 10);
    let pubacks = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let acks = Arc::clone(&pubacks);
    let poller = tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    acks.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    // Publish in windows, at most 500 ahead of the stream, so the restart lands mid-stream.
    let publisher = {
        let (client, s) = (client.clone(), s.clone());
        tokio::spawn(async move {
            const WINDOW: usize = 250;
            for start in (0..N).step_by(WINDOW) {
                for i in start..(start + WINDOW).min(N) {
                    let payload = format!(
                        r#"{{"specversion":"1.0","id":"n-{i}","source":"/faults","type":"load","data":{{"i":{i}}}}}"#
                    );
                    let props = PublishProperties {
                        content_type: Some("application/cloudevents+json".into()),
                        ..PublishProperties::default()
                    };
                    client
                        .publish_with_properties(
                            format!("ferry-faults-{s}/in"),
                            QoS::AtLeastOnce,
                            false,
                            payload,
                            props,
                        )
                        .await
                        .expect("publish queued");
                }
                let behind = (start + WINDOW).saturating_sub(2 * WINDOW) as u64;
                let deadline = Instant::now() + Duration::from_secs(30);
                while stream_messages(port, &s).await.unwrap_or(0) < behind {
                    assert!(Instant::now() < deadline, "the stream stopped growing");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        })
    };
    let count = || pubacks.load(std::sync::atomic::Ordering::SeqCst);
    let in_stream = |port: u16| stream_messages(port, &s);
    // Restart NATS once a quarter of the events are in the stream.
    let deadline = Instant::now() + Duration::from_secs(20);
    while in_stream(nats.port()).await.unwrap_or(0) < (N / 4) as u64 {
        assert!(Instant::now() < deadline, "events did not reach the stream");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let nats = nats.restart();
    let at_restart = in_stream(nats.port()).await.unwrap_or(0);
    publisher.await.expect("publisher");
    // Mosquitto acknowledged every publish; Ferry acknowledges its deliveries to Mosquitto only
    // once the stream confirmed them, so everything ends up in the stream.
    wait_until(
        "every publish acknowledged by Mosquitto",
        Duration::from_secs(30),
        || count() >= N,
    )
    .await;
    poller.abort();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut messages = 0;
    while messages < N as u64 {
        if Instant::now() >= deadline {
            let metrics = gw.metrics().await;
            let ours = metrics
                .lines()
                .filter(|l| {
                    !l.starts_with('#') && (l.contains("\"stream\"") || l.contains("\"mqtt\""))
                })
                .collect::<Vec<_>>()
                .join("\n");
            panic!("only {messages} of {N} events reached the stream after the restart; metrics:\n{ours}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        messages = in_stream(nats.port()).await.unwrap_or(0);
    }
    eprintln!("{at_restart} of {N} in the stream when NATS restarted; {messages} after");
    assert_eq!(
        messages, N as u64,
        "every event is in the stream exactly once (Nats-Msg-Id dedup)"
    );
    gw.gateway.shutdown().await;
}
