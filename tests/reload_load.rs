//! Reloads with traffic flowing: the real `ferry` binary takes a constant load of HTTPS,
//! WebSocket and MQTT events while its config is reloaded 20 times — by SIGHUP, by editing the
//! file (the file watch) and by `POST /-/reload`, in turn — with route changes, a sink swap, a
//! change of the WebSocket source's settings, TLS certificate swaps and broken configs.
//!
//! Asserted: no request fails, no connection drops, every acknowledged event is written exactly
//! once to the sink the accepting generation routed it to (events sent wholly inside one
//! generation are checked against that generation's route; the few that straddle a switch must
//! be in one of the two), new handshakes present the new certificate, and a broken config
//! leaves the old one serving, visible on the admin API and in the metrics.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");
const RELOADS: usize = 20;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// What a generation looks like; `config` renders it.
#[derive(Clone, Copy)]
struct Shape {
    /// Route to sink `a` (true) or `b`.
    to_a: bool,
    /// Sink `b` writes `b1.jsonl` or `b2.jsonl` (a sink swap).
    b_file: u8,
    /// Which certificate set the HTTPS source presents (1 or 2).
    certs: u8,
    /// The WebSocket source's idle timeout (a setting swapped in place).
    ws_idle_ms: u64,
    broken: bool,
}

struct Ports {
    https: u16,
    ws: u16,
    admin: u16,
}

fn config(dir: &Path, ports: &Ports, topic: &str, s: Shape) -> String {
    let d = dir.display();
    let to = if s.to_a { "a" } else { "b" };
    let broken = if s.broken {
        // A filter with an unknown operator: refused with file, line and key.
        r#"filters = [{ nearly = { type = "x" } }]"#
    } else {
        ""
    };
    format!(
        r#"
shutdown_timeout_ms = 5000

[reload]
debounce_ms = 100

[admin]
listen = "127.0.0.1:{admin}"

[sources.web]
type = "http"
listen = "127.0.0.1:{https}"
path = "/events"
tls = {{ cert = "{d}/certs-{c}/server.pem", key = "{d}/certs-{c}/server.key" }}

[sources.ws]
type = "websocket"
listen = "127.0.0.1:{ws}"
path = "/ws"
idle_timeout_ms = {idle}

[sources.devices]
type = "mqtt"
url = "mqtt://127.0.0.1:1883"
protocol = "5"
topics = ["{topic}/#"]
client_id = "{topic}"
session_expiry_secs = 60

[sinks.a]
type = "file"
path = "{d}/a.jsonl"

[sinks.b]
type = "file"
path = "{d}/b{bf}.jsonl"

[routes.main]
from = ["web", "ws", "devices"]
to = ["{to}"]
{broken}
"#,
        admin = ports.admin,
        https = ports.https,
        ws = ports.ws,
        c = s.certs,
        idle = s.ws_idle_ms,
        bf = s.b_file,
    )
}

/// Writes the config the way an operator's tooling does: a new file renamed over the old one.
fn write_config(path: &Path, text: &str) {
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// An event id records the client, a sequence number and the generation (phase) in force when
/// it was sent.
struct Sent {
    id: String,
    /// The phase when the send started and when it was acknowledged.
    phases: (u64, u64),
}

#[derive(Default)]
struct Tally {
    sent: Mutex<Vec<Sent>>,
    failures: Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, what: String) {
        self.failures.lock().unwrap().push(what);
    }
}

/// Trusts both dev CAs and remembers the leaf certificate each handshake presented.
fn tls_client(dir: &Path) -> (reqwest::Client, rustls::ClientConfig) {
    let mut roots = rustls::RootCertStore::empty();
    for set in ["certs-1", "certs-2"] {
        let pem = std::fs::read(dir.join(set).join("ca.pem")).unwrap();
        for cert in rustls_pemfile_certs(&pem) {
            roots.add(cert).unwrap();
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(ferry::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(config.clone())
        .pool_max_idle_per_host(4)
        .build()
        .unwrap();
    (client, config)
}

fn rustls_pemfile_certs(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .map(|c| c.unwrap())
        .collect()
}

/// The leaf certificate a fresh handshake with the HTTPS source presents.
async fn presented_certificate(config: &rustls::ClientConfig, port: u16) -> Vec<u8> {
    let mut config = config.clone();
    // A full handshake every time: a resumed session would report the certificate it began with.
    config.resumption = rustls::client::Resumption::disabled();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.expect("TLS handshake");
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn leaf_of(dir: &Path, set: u8) -> Vec<u8> {
    let pem = std::fs::read(dir.join(format!("certs-{set}")).join("server.pem")).unwrap();
    rustls_pemfile_certs(&pem)[0].to_vec()
}

async fn admin_json(client: &reqwest::Client, port: u16, path: &str) -> Value {
    client
        .get(format!("http://127.0.0.1:{port}{path}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn metric(client: &reqwest::Client, port: u16, line_start: &str) -> f64 {
    let text = client
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

async fn wait_for(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn ids_in(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_reloads_under_load_lose_nothing() {
    ferry::tls::install_default_provider();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    ferry::certs::generate_dev(&d.join("certs-1")).unwrap();
    ferry::certs::generate_dev(&d.join("certs-2")).unwrap();
    let ports = Ports {
        https: free_port(),
        ws: free_port(),
        admin: free_port(),
    };
    let topic = format!("ferry-reload-{}", uuid::Uuid::now_v7().simple());
    let mut shape = Shape {
        to_a: true,
        b_file: 1,
        certs: 1,
        ws_idle_ms: 60_000,
        broken: false,
    };
    let config_path = d.join("ferry.toml");
    write_config(&config_path, &config(&d, &ports, &topic, shape));
    let child = Command::new(FERRY)
        .args(["run", "--config"])
        .arg(&config_path)
        .env("RUST_LOG", "ferry=info")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let pid = child.id();
    let _ferry = Running(child);
    let plain = reqwest::Client::new();
    wait_for("ferry ready", async || {
        plain
            .get(format!("http://127.0.0.1:{}/readyz", ports.admin))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;

    // Phase 2g: generation g is in force; 2g + 1: a reload from g is under way.
    let phase = Arc::new(AtomicU64::new(2));
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let (https, tls_config) = tls_client(&d);
    let mut load = Vec::new();

    // HTTPS: two clients on keep-alive connections, one event at a time each.
    for c in 0..2 {
        let (client, phase, stop, tally) = (
            https.clone(),
            Arc::clone(&phase),
            Arc::clone(&stop),
            Arc::clone(&tally),
        );
        let url = format!("https://localhost:{}/events", ports.https);
        load.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let id = format!("http-{c}-{n}");
                let before = phase.load(Ordering::SeqCst);
                let sent = client
                    .post(&url)
                    .header("ce-specversion", "1.0")
                    .header("ce-id", &id)
                    .header("ce-source", "/reload-load")
                    .header("ce-type", "com.example.load")
                    .header("content-type", "application/json")
                    .body("{}")
                    .send()
                    .await;
                match sent.map(|r| r.status().as_u16()) {
                    Ok(202) => tally.sent.lock().unwrap().push(Sent {
                        id,
                        phases: (before, phase.load(Ordering::SeqCst)),
                    }),
                    other => tally.fail(format!("HTTPS {id}: {other:?}")),
                }
            }
        }));
    }

    // WebSocket: one connection for the whole test, a few events in flight.
    {
        let (phase, stop, tally) = (Arc::clone(&phase), Arc::clone(&stop), Arc::clone(&tally));
        let mut request = format!("ws://127.0.0.1:{}/ws", ports.ws)
            .into_client_request()
            .unwrap();
        request.headers_mut().insert(
            "sec-websocket-protocol",
            "cloudevents.json".parse().unwrap(),
        );
        let (ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
        load.push(tokio::spawn(async move {
            let (mut write, mut read) = ws.split();
            let mut pending: HashMap<String, u64> = HashMap::new();
            let mut n = 0u64;
            loop {
                if stop.load(Ordering::SeqCst) && pending.is_empty() {
                    break;
                }
                while pending.len() < 8 && !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let id = format!("ws-{n}");
                    let event = serde_json::json!({
                        "specversion": "1.0", "id": id, "source": "/reload-load",
                        "type": "com.example.load", "data": {}
                    });
                    if let Err(e) = write.send(Message::text(event.to_string())).await {
                        tally.fail(format!("WebSocket send: {e}"));
                        return;
                    }
                    pending.insert(id, phase.load(Ordering::SeqCst));
                }
                match tokio::time::timeout(Duration::from_secs(10), read.next()).await {
                    Ok(Some(Ok(Message::Text(t)))) => {
                        let ack: Value = serde_json::from_str(&t).unwrap();
                        let id = ack["data"]["id"].as_str().unwrap_or_default().to_owned();
                        let Some(before) = pending.remove(&id) else {
                            tally.fail(format!("WebSocket: unexpected ack {t}"));
                            continue;
                        };
                        if ack["data"]["status"] == 202 {
                            tally.sent.lock().unwrap().push(Sent {
                                id,
                                phases: (before, phase.load(Ordering::SeqCst)),
                            });
                        } else {
                            tally.fail(format!("WebSocket {id}: {t}"));
                        }
                    }
                    Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
                    other => {
                        tally.fail(format!("WebSocket connection: {other:?}"));
                        return;
                    }
                }
            }
        }));
    }

    // MQTT: a device publishing QoS 1 through Mosquitto; Ferry's session takes them.
    let mqtt_published = Arc::new(Mutex::new(Vec::<(String, u64)>::new()));
    {
        use rumqttc::v5::{mqttbytes::QoS, AsyncClient, Event, MqttOptions};
        let mut options = MqttOptions::new(format!("{topic}-device"), "127.0.0.1", 1883);
        options.set_keep_alive(Duration::from_secs(30));
        let (client, mut events) = AsyncClient::new(options, 64);
        let acked = Arc::new(AtomicU64::new(0));
        {
            let acked = Arc::clone(&acked);
            tokio::spawn(async move {
                while let Ok(e) = events.poll().await {
                    if let Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::PubAck(_)) = e {
                        acked.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
        }
        let (phase, stop, published) = (
            Arc::clone(&phase),
            Arc::clone(&stop),
            Arc::clone(&mqtt_published),
        );
        let topic = topic.clone();
        let tally = Arc::clone(&tally);
        load.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let id = format!("mqtt-{n}");
                let event = serde_json::json!({
                    "specversion": "1.0", "id": id, "source": "/reload-load",
                    "type": "com.example.load", "data": {}
                });
                let props = rumqttc::v5::mqttbytes::v5::PublishProperties {
                    content_type: Some("application/cloudevents+json".into()),
                    ..Default::default()
                };
                client
                    .publish_with_properties(
                        format!("{topic}/dev"),
                        QoS::AtLeastOnce,
                        false,
                        event.to_string(),
                        props,
                    )
                    .await
                    .unwrap();
                published
                    .lock()
                    .unwrap()
                    .push((id, phase.load(Ordering::SeqCst)));
                // A steady trickle, so MQTT events span every generation.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let deadline = Instant::now() + Duration::from_secs(20);
            while acked.load(Ordering::SeqCst) < n {
                if Instant::now() > deadline {
                    tally.fail("Mosquitto did not acknowledge every publish".into());
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }

    // Routes per phase: phase k's route, as the test sets it.
    let mut routes: HashMap<u64, Shape> = HashMap::from([(1, shape)]);
    let mut generation = 1u64;
    assert_eq!(
        presented_certificate(&tls_config, ports.https).await,
        leaf_of(&d, 1)
    );
    // Traffic flows in each generation: wait for this many more acknowledged events.
    let acknowledged = || tally.sent.lock().unwrap().len();
    let flow = async |n: usize| {
        let target = acknowledged() + n;
        wait_for("events to flow", async || acknowledged() >= target).await;
    };
    for i in 0..RELOADS {
        flow(200).await;
        let mut next = shape;
        match i % 5 {
            0 => next.to_a = !next.to_a,
            1 => {
                next.to_a = !next.to_a;
                next.ws_idle_ms += 1000;
            }
            2 => next.b_file = 3 - next.b_file,
            3 => next.certs = 3 - next.certs,
            _ => next.broken = true,
        }
        let failures_before = metric(
            &plain,
            ports.admin,
            "ferry_config_reloads_total{result=\"failure\"}",
        )
        .await;
        phase.store(2 * generation + 1, Ordering::SeqCst);
        write_config(&config_path, &config(&d, &ports, &topic, next));
        match i % 3 {
            // The file watch sees the edit by itself.
            0 => {}
            1 => {
                let ok = Command::new("kill")
                    .args(["-HUP", &pid.to_string()])
                    .status()
                    .unwrap();
                assert!(ok.success());
            }
            _ => {
                let r = plain
                    .post(format!("http://127.0.0.1:{}/-/reload", ports.admin))
                    .send()
                    .await
                    .unwrap();
                let expected = if next.broken { 400 } else { 200 };
                assert_eq!(r.status(), expected, "{}", r.text().await.unwrap());
            }
        }
        if next.broken {
            wait_for("the broken config to be refused", async || {
                metric(
                    &plain,
                    ports.admin,
                    "ferry_config_reloads_total{result=\"failure\"}",
                )
                .await
                    > failures_before
            })
            .await;
            let current = admin_json(&plain, ports.admin, "/-/config").await;
            assert_eq!(current["generation"], generation, "{current}");
            let text = current["config"].as_str().unwrap();
            assert!(!text.contains("nearly"), "the old config still serves");
            // Put the working config back (it is what runs): the next change starts from it.
            write_config(&config_path, &config(&d, &ports, &topic, shape));
            phase.store(2 * generation, Ordering::SeqCst);
            continue;
        }
        generation += 1;
        wait_for("the reload to apply", async || {
            admin_json(&plain, ports.admin, "/-/config").await["generation"] == generation
        })
        .await;
        shape = next;
        routes.insert(generation, shape);
        phase.store(2 * generation, Ordering::SeqCst);
        if i % 5 == 3 {
            let presented = presented_certificate(&tls_config, ports.https).await;
            assert!(
                presented == leaf_of(&d, shape.certs),
                "a new handshake presents the new certificate (certs-{}); it presented the old one: {}",
                shape.certs,
                presented == leaf_of(&d, 3 - shape.certs)
            );
        }
    }
    flow(200).await;
    stop.store(true, Ordering::SeqCst);
    for task in load {
        task.await.unwrap();
    }
    let failures = tally.failures.lock().unwrap().clone();
    assert!(failures.is_empty(), "failures: {failures:#?}");
    assert!(
        generation >= 15,
        "16 reloads apply and 4 are refused: {generation}"
    );

    // Every acknowledged event is written once, to the sink of its generation.
    let mut sent: Vec<(String, (u64, u64))> = tally
        .sent
        .lock()
        .unwrap()
        .drain(..)
        .map(|s| (s.id, s.phases))
        .collect();
    let mqtt: Vec<(String, u64)> = mqtt_published.lock().unwrap().clone();
    let mut written: HashMap<String, Vec<&str>> = HashMap::new();
    let files = [("a", "a.jsonl"), ("b", "b1.jsonl"), ("b", "b2.jsonl")];
    // MQTT events arrive at their own pace: wait until all are written.
    let want_mqtt: HashSet<&str> = mqtt.iter().map(|(id, _)| id.as_str()).collect();
    wait_for("every MQTT event written", async || {
        let seen: HashSet<String> = files.iter().flat_map(|(_, f)| ids_in(&d.join(f))).collect();
        want_mqtt.iter().all(|id| seen.contains(*id))
    })
    .await;
    let contents: Vec<(&str, Vec<String>)> = files
        .iter()
        .map(|(sink, f)| (*sink, ids_in(&d.join(f))))
        .collect();
    for (sink, ids) in &contents {
        for id in ids {
            written.entry(id.clone()).or_default().push(sink);
        }
    }
    let http_ws = sent.len();
    // Ferry takes an MQTT message some time after its publish: any later generation may.
    sent.extend(mqtt.into_iter().map(|(id, p)| (id, (p, 2 * generation))));
    let sink_of = |g: u64| if routes[&g].to_a { "a" } else { "b" };
    // The generations that may have taken an event sent and acknowledged in these phases.
    let generations = |from: u64, to: u64| from / 2..=to.div_ceil(2);
    let mut straddled = 0;
    for (id, (from, to)) in &sent {
        let sinks = written.get(id).map(Vec::as_slice).unwrap_or_default();
        assert!(
            !sinks.is_empty(),
            "acknowledged event {id} was never written"
        );
        // HTTP and WebSocket events are written once; MQTT may be redelivered, never to two
        // different sinks by one generation's decision.
        if !id.starts_with("mqtt-") {
            assert_eq!(sinks.len(), 1, "{id} written {} times", sinks.len());
        }
        if from == to && from % 2 == 0 {
            let g = from / 2;
            assert!(
                sinks.iter().all(|s| *s == sink_of(g)),
                "{id}, sent and acknowledged in generation {g}, went to {sinks:?}"
            );
        } else {
            straddled += 1;
            // (A refused reload made no generation: skip what does not exist.)
            let allowed: HashSet<&str> = generations(*from, *to)
                .filter(|g| routes.contains_key(g))
                .map(sink_of)
                .collect();
            assert!(sinks.iter().all(|s| allowed.contains(s)), "{id}: {sinks:?}");
        }
    }
    eprintln!(
        "{} reloads ({} applied); {http_ws} HTTPS/WebSocket and {} MQTT events, {straddled} across a switch; none failed or lost",
        RELOADS,
        generation - 1,
        sent.len() - http_ws
    );
}
