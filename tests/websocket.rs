//! The WebSocket source and push sink over real TCP connections.

mod common;

use std::time::Duration;

use common::TestGateway;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const WAIT: Duration = Duration::from_secs(10);

const SOURCE: &str = r#"
[admin]
listen = "127.0.0.1:0"

[sources.devices]
type = "websocket"
listen = "127.0.0.1:0"
path = "/ws"
max_message_bytes = 4096

[sinks.archive]
type = "file"
path = "{dir}/events.jsonl"

[routes.all]
from = ["devices"]
to = ["archive"]
"#;

async fn connect(
    url: &str,
    subprotocol: Option<&str>,
) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let mut request = url.into_client_request()?;
    if let Some(p) = subprotocol {
        request
            .headers_mut()
            .insert("sec-websocket-protocol", p.parse().unwrap());
    }
    tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .expect("connect in time")
        .map(|(ws, _)| ws)
}

fn ws_url(gw: &TestGateway, source: &str, path: &str) -> String {
    format!("ws://{}{path}", gw.gateway.source_addr(source).unwrap())
}

/// The next text message, parsed as JSON.
async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("message in time")
            .expect("open")
            .expect("ok");
        match m {
            Message::Text(t) => return serde_json::from_str(&t).expect("JSON"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Waits for the close frame and returns its code.
async fn close_code(ws: &mut Ws) -> Option<CloseCode> {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("close in time")
        {
            Some(Ok(Message::Close(frame))) => return frame.map(|f| f.code),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return None,
        }
    }
}

fn event(id: &str) -> String {
    json!({"specversion": "1.0", "id": id, "source": "/devices/d1", "type": "com.example.reading", "data": {"t": 21}}).to_string()
}

#[tokio::test]
async fn events_are_acknowledged_and_errors_keep_the_connection() {
    let gw = TestGateway::start(SOURCE).await;
    let mut ws = connect(&ws_url(&gw, "devices", "/ws"), Some("cloudevents.json"))
        .await
        .unwrap();

    ws.send(Message::text(event("e-1"))).await.unwrap();
    let ack = next_json(&mut ws).await;
    assert_eq!(ack["type"], "dev.ferry.ack");
    assert_eq!(ack["subject"], "e-1");
    assert_eq!(ack["data"], json!({"id": "e-1", "status": 202}));
    assert_eq!(
        gw.lines("events.jsonl")[0]["id"],
        "e-1",
        "written before the ack"
    );

    ws.send(Message::text("{not json")).await.unwrap();
    let ack = next_json(&mut ws).await;
    assert_eq!(ack["data"]["status"], 400);
    assert!(ack["data"]["detail"]
        .as_str()
        .unwrap()
        .contains("malformed JSON"));

    ws.send(Message::text(
        r#"{"specversion":"1.0","id":"e-2","type":"t"}"#,
    ))
    .await
    .unwrap();
    let ack = next_json(&mut ws).await;
    assert_eq!(ack["data"]["status"], 400);
    assert_eq!(ack["data"]["attribute"], "source");

    // Still open: the next valid event is accepted.
    ws.send(Message::text(event("e-3"))).await.unwrap();
    assert_eq!(next_json(&mut ws).await["data"]["status"], 202);
    let ids: Vec<Value> = gw
        .lines("events.jsonl")
        .iter()
        .map(|l| l["id"].clone())
        .collect();
    assert_eq!(ids, vec![json!("e-1"), json!("e-3")]);

    // Many in flight at once: every one gets its acknowledgement.
    for i in 0..50 {
        ws.send(Message::text(event(&format!("b-{i}"))))
            .await
            .unwrap();
    }
    let mut acked = std::collections::HashSet::new();
    while acked.len() < 50 {
        let ack = next_json(&mut ws).await;
        assert_eq!(ack["data"]["status"], 202);
        acked.insert(ack["subject"].as_str().unwrap().to_owned());
    }
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("ferry_source_connections{source=\"devices\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn protocol_violations_close_with_the_right_code() {
    let gw = TestGateway::start(SOURCE).await;
    let url = ws_url(&gw, "devices", "/ws");

    let mut ws = connect(&url, Some("cloudevents.json")).await.unwrap();
    ws.send(Message::text("x".repeat(5000))).await.unwrap();
    assert_eq!(
        close_code(&mut ws).await,
        Some(CloseCode::Size),
        "oversized message"
    );

    let mut ws = connect(&url, Some("cloudevents.json")).await.unwrap();
    ws.send(Message::binary(event("bin").into_bytes()))
        .await
        .unwrap();
    assert_eq!(
        close_code(&mut ws).await,
        Some(CloseCode::Unsupported),
        "binary frame on cloudevents.json"
    );

    // Without the subprotocol and without a normalize template, the upgrade is refused.
    match connect(&url, None).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 400),
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    }
    assert!(gw.lines("events.jsonl").is_empty());
}

#[tokio::test]
async fn raw_messages_are_normalized_when_allowed() {
    let text = SOURCE.replace(
        "max_message_bytes = 4096",
        "max_message_bytes = 4096\nnormalize = { type = \"com.example.device.message\", source = \"ws://devices/{header.x-device}\" }",
    );
    let gw = TestGateway::start(&text).await;
    let mut request = ws_url(&gw, "devices", "/ws").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("x-device", "d-42".parse().unwrap());
    let (mut ws, resp) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert!(resp.headers().get("sec-websocket-protocol").is_none());
    ws.send(Message::text(r#"{"temperature": 21.5}"#))
        .await
        .unwrap();
    let ack = next_json(&mut ws).await;
    assert_eq!(ack["data"]["status"], 202);
    let line = &gw.lines("events.jsonl")[0];
    assert_eq!(line["type"], "com.example.device.message");
    assert_eq!(line["source"], "ws://devices/d-42");
    assert_eq!(line["id"], ack["subject"]);
    assert_eq!(
        line["data_base64"],
        base64_of(r#"{"temperature": 21.5}"#),
        "{line}"
    );
}

fn base64_of(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

const PUSH: &str = r#"
[admin]
listen = "127.0.0.1:0"

[sources.web]
type = "http"
listen = "127.0.0.1:0"
path = "/events"

[sinks.live]
type = "websocket"
listen = "127.0.0.1:0"
path = "/live"
queue = {queue}
slow_client = "{policy}"

[routes.all]
from = ["web"]
to = ["live"]
"#;

async fn post(gw: &TestGateway, id: &str, ty: &str, body: String) -> u16 {
    reqwest::Client::new()
        .post(gw.url("web", "/events"))
        .header("ce-specversion", "1.0")
        .header("ce-id", id)
        .header("ce-source", "/shop")
        .header("ce-type", ty)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn push_url(gw: &TestGateway, query: &str) -> String {
    format!("ws://{}/live{query}", gw.gateway.sink_addr("live").unwrap())
}

/// Waits until the push sink counts `n` connected subscribers.
async fn subscribers(gw: &TestGateway, n: usize) {
    let want = format!("ferry_sink_connections{{sink=\"live\"}} {n}");
    let deadline = tokio::time::Instant::now() + WAIT;
    while !gw.metrics().await.contains(&want) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "subscribers never reached {n}: {}",
            gw.metrics().await
        );
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn subscribers_receive_only_what_their_filter_matches() {
    let gw = TestGateway::start(
        &PUSH
            .replace("{queue}", "64")
            .replace("{policy}", "drop-oldest"),
    )
    .await;
    let filter = urlencode(r#"{"prefix":{"type":"com.example.order."}}"#);
    let mut orders = connect(
        &push_url(&gw, &format!("?filter={filter}")),
        Some("cloudevents.json"),
    )
    .await
    .unwrap();
    let cesql = urlencode("type = 'com.example.user.created'");
    let mut users = connect(
        &push_url(&gw, &format!("?cesql={cesql}")),
        Some("cloudevents.json"),
    )
    .await
    .unwrap();
    let mut all = connect(&push_url(&gw, ""), None).await.unwrap();
    subscribers(&gw, 3).await;

    assert_eq!(
        post(&gw, "1", "com.example.order.created", "{}".into()).await,
        202
    );
    assert_eq!(
        post(&gw, "2", "com.example.user.created", "{}".into()).await,
        202
    );
    assert_eq!(
        post(&gw, "3", "com.example.order.paid", "{}".into()).await,
        202
    );

    assert_eq!(next_json(&mut orders).await["id"], "1");
    assert_eq!(next_json(&mut orders).await["id"], "3");
    assert_eq!(next_json(&mut users).await["id"], "2");
    for id in ["1", "2", "3"] {
        let e = next_json(&mut all).await;
        assert_eq!(e["id"], id);
        assert_eq!(e["specversion"], "1.0");
    }
    // `users` got nothing else: the next message it sees is the close frame at shutdown.
    gw.gateway.shutdown().await;
    assert_eq!(close_code(&mut users).await, Some(CloseCode::Away));

    // A bad filter is refused at connect.
}

#[tokio::test]
async fn a_bad_filter_is_refused() {
    let gw = TestGateway::start(
        &PUSH
            .replace("{queue}", "64")
            .replace("{policy}", "drop-oldest"),
    )
    .await;
    match connect(
        &push_url(&gw, &format!("?cesql={}", urlencode("type = "))),
        None,
    )
    .await
    {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 400),
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A subscriber that never reads must not slow down the others, and its queue stays bounded.
#[tokio::test]
async fn a_slow_subscriber_does_not_slow_the_others() {
    let gw = TestGateway::start(
        &PUSH
            .replace("{queue}", "8")
            .replace("{policy}", "drop-oldest"),
    )
    .await;
    let _slow = connect(&push_url(&gw, ""), Some("cloudevents.json"))
        .await
        .unwrap();
    let mut fast = connect(&push_url(&gw, ""), Some("cloudevents.json"))
        .await
        .unwrap();
    subscribers(&gw, 2).await;

    // 400 events of 64 KiB: far more than the slow client's socket buffers hold.
    const N: usize = 400;
    let payload = format!("\"{}\"", "x".repeat(64 * 1024));
    let reader = tokio::spawn(async move {
        let mut ids = Vec::with_capacity(N);
        while ids.len() < N {
            ids.push(
                next_json(&mut fast).await["id"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            );
        }
        ids
    });
    for i in 0..N {
        assert_eq!(post(&gw, &i.to_string(), "t", payload.clone()).await, 202);
    }
    let ids = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .expect("fast reader done")
        .unwrap();
    assert_eq!(
        ids,
        (0..N).map(|i| i.to_string()).collect::<Vec<_>>(),
        "the fast subscriber got every event, in order"
    );
    let metrics = gw.metrics().await;
    let dropped: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("ferry_websocket_dropped_total{sink=\"live\"} "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(
        dropped > 0,
        "the slow subscriber's queue was bounded by dropping:\n{metrics}"
    );
}

#[tokio::test]
async fn a_slow_subscriber_is_disconnected_with_that_policy() {
    let gw = TestGateway::start(
        &PUSH
            .replace("{queue}", "4")
            .replace("{policy}", "disconnect"),
    )
    .await;
    let mut slow = connect(&push_url(&gw, ""), Some("cloudevents.json"))
        .await
        .unwrap();
    subscribers(&gw, 1).await;
    let payload = format!("\"{}\"", "x".repeat(64 * 1024));
    let mut i = 0;
    // Keep publishing until the server gives up on the subscriber.
    loop {
        assert_eq!(post(&gw, &i.to_string(), "t", payload.clone()).await, 202);
        i += 1;
        if gw
            .metrics()
            .await
            .contains("ferry_sink_connections{sink=\"live\"} 0")
        {
            break;
        }
        assert!(i < 2000, "never disconnected");
    }
    // Reading now drains what was buffered, then the close frame with 1008.
    assert_eq!(close_code(&mut slow).await, Some(CloseCode::Policy));
}

#[tokio::test]
async fn shutdown_closes_source_connections_with_going_away() {
    let gw = TestGateway::start(SOURCE).await;
    let mut ws = connect(&ws_url(&gw, "devices", "/ws"), Some("cloudevents.json"))
        .await
        .unwrap();
    ws.send(Message::text(event("last"))).await.unwrap();
    assert_eq!(next_json(&mut ws).await["data"]["status"], 202);
    let TestGateway { gateway, dir: _dir } = gw;
    let done = tokio::spawn(gateway.shutdown());
    assert_eq!(close_code(&mut ws).await, Some(CloseCode::Away));
    assert!(done.await.unwrap(), "shutdown finished within its deadline");
}

#[tokio::test]
async fn idle_connections_are_closed_and_pongs_keep_them_alive() {
    let text = SOURCE.replace(
        "max_message_bytes = 4096",
        "max_message_bytes = 4096\nidle_timeout_ms = 400\nping_interval_ms = 100",
    );
    let gw = TestGateway::start(&text).await;
    let url = ws_url(&gw, "devices", "/ws");
    let mut silent = connect(&url, Some("cloudevents.json")).await.unwrap();
    let mut lively = connect(&url, Some("cloudevents.json")).await.unwrap();
    // The lively client reads (and so answers pings) for three idle periods.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1200);
    let mut pings = 0;
    while let Ok(Some(Ok(m))) = tokio::time::timeout_at(deadline, lively.next()).await {
        match m {
            Message::Ping(_) => pings += 1,
            other => panic!("lively client got {other:?}"),
        }
    }
    assert!(pings >= 3, "pinged {pings} times");
    lively
        .send(Message::text(event("still-here")))
        .await
        .unwrap();
    assert_eq!(next_json(&mut lively).await["data"]["status"], 202);
    // The silent one never answered a ping: closed as idle.
    assert_eq!(close_code(&mut silent).await, Some(CloseCode::Normal));
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains(
            "ferry_websocket_closed_total{component=\"source:devices\",reason=\"idle\"} 1"
        ),
        "{metrics}"
    );
}

/// B3: an invalid event's error acknowledgement names it (`subject`, `data.id`) whenever its
/// `id` could be read, so a client with several events in flight can tell which one failed.
#[tokio::test]
async fn b3_error_acks_name_the_refused_event() {
    let gw = TestGateway::start(SOURCE).await;
    let mut ws = connect(&ws_url(&gw, "devices", "/ws"), Some("cloudevents.json"))
        .await
        .unwrap();
    let bad = [
        json!({"specversion": "1.0", "id": "bad-no-type", "source": "/s"}),
        json!({"specversion": "1.0", "id": "bad-time", "source": "/s", "type": "t", "time": "noon"}),
        json!({"specversion": "1.0", "id": "bad-ext", "source": "/s", "type": "t", "big": 2147483648u64}),
    ];
    for e in &bad {
        ws.send(Message::text(e.to_string())).await.unwrap();
    }
    for e in &bad {
        let ack = next_json(&mut ws).await;
        assert_eq!(ack["data"]["status"], 400, "{ack}");
        assert_eq!(ack["subject"], e["id"], "{ack}");
        assert_eq!(ack["data"]["id"], e["id"], "{ack}");
    }
    // An id that is not a non-empty string cannot be read: no subject, `data.id` null.
    ws.send(Message::text(
        json!({"specversion": "1.0", "id": 7, "source": "/s", "type": "t"}).to_string(),
    ))
    .await
    .unwrap();
    let ack = next_json(&mut ws).await;
    assert_eq!(ack["data"]["status"], 400, "{ack}");
    assert!(ack.get("subject").is_none(), "{ack}");
    assert!(ack["data"]["id"].is_null(), "{ack}");
}

/// B4: a message over `max_message_bytes` sent in continuation frames, each under the limit,
/// closes with 1009 just as one oversize frame does, and the server then closes the TCP
/// connection cleanly: a reset (the server dropping the socket with the client's fragments
/// still unread) makes clients that are still sending lose the close frame (1006).
#[tokio::test]
async fn b4_fragmented_oversize_message_closes_with_1009() {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;

    let gw = TestGateway::start(SOURCE).await;
    let url = ws_url(&gw, "devices", "/ws");
    let ws = connect(&url, Some("cloudevents.json")).await.unwrap();
    let (mut tx, mut rx) = ws.split();
    // The client goes on sending fragments (1000 bytes each, 1 MiB in all) while it reads:
    // most of the message is still arriving when the server closes.
    let sender = tokio::spawn(async move {
        let chunks = 1024;
        for i in 0..chunks {
            let opcode = if i == 0 {
                OpCode::Data(Data::Text)
            } else {
                OpCode::Data(Data::Continue)
            };
            let frame = Frame::message(vec![b'y'; 1000], opcode, i == chunks - 1);
            if tx.send(Message::Frame(frame)).await.is_err() {
                break;
            }
        }
    });
    let mut code = None;
    let end = loop {
        match tokio::time::timeout(WAIT, rx.next())
            .await
            .expect("close in time")
        {
            Some(Ok(Message::Close(frame))) => code = frame.map(|f| f.code),
            Some(Ok(_)) => continue,
            Some(Err(e)) => break Some(e),
            None => break None,
        }
    };
    sender.abort();
    assert_eq!(code, Some(CloseCode::Size), "fragmented oversize message");
    assert!(
        end.is_none(),
        "the connection ended with {end:?}, not a clean close"
    );
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains(
            "ferry_websocket_closed_total{component=\"source:devices\",reason=\"too_large\"} 1"
        ),
        "{metrics}"
    );
}

/// S4: a session authenticated with a JWT ends, with close 1008, when the token expires; it
/// does not outlive `exp` for as long as the client answers pings.
#[tokio::test]
async fn s4_session_closes_when_its_jwt_expires() {
    const SECRET: &str = "a-websocket-jwt-secret-of-32-byte";
    let text = SOURCE.replace(
        "max_message_bytes = 4096",
        &format!(
            "max_message_bytes = 4096\nauth = {{ jwt = {{ secrets = [\"{SECRET}\"], leeway_secs = 0 }} }}"
        ),
    );
    let gw = TestGateway::start(&text).await;
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({ "sub": "device-1", "exp": exp }),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let url = format!("{}?access_token={token}", ws_url(&gw, "devices", "/ws"));
    let mut ws = connect(&url, Some("cloudevents.json")).await.unwrap();
    ws.send(Message::text(event("before-exp"))).await.unwrap();
    assert_eq!(next_json(&mut ws).await["data"]["status"], 202);
    assert_eq!(close_code(&mut ws).await, Some(CloseCode::Policy));
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains(
            "ferry_websocket_closed_total{component=\"source:devices\",reason=\"expired\"} 1"
        ),
        "{metrics}"
    );
}

/// S4: a reload that removes the key a session authenticated with closes the session with
/// 1008; a session whose key stays is untouched.
#[tokio::test]
async fn s4_session_closes_when_a_reload_removes_its_key() {
    const OLD: &str = "a-websocket-jwt-secret-of-32-old!";
    const NEW: &str = "a-websocket-jwt-secret-of-32-new!";
    let with = |secrets: &str| {
        SOURCE.replace(
            "max_message_bytes = 4096",
            &format!("max_message_bytes = 4096\nauth = {{ jwt = {{ secrets = [{secrets}] }} }}"),
        )
    };
    let gw = TestGateway::start(&with(&format!("\"{OLD}\", \"{NEW}\""))).await;
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let token = |secret: &str| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &json!({ "sub": "device-1", "exp": exp }),
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    };
    let base = ws_url(&gw, "devices", "/ws");
    let mut old = connect(
        &format!("{base}?access_token={}", token(OLD)),
        Some("cloudevents.json"),
    )
    .await
    .unwrap();
    let mut new = connect(
        &format!("{base}?access_token={}", token(NEW)),
        Some("cloudevents.json"),
    )
    .await
    .unwrap();
    // The old secret is removed (rotation done).
    let text = with(&format!("\"{NEW}\"")).replace("{dir}", gw.dir.path().to_str().unwrap());
    let config = ferry::Config::from_str_at(&text, std::path::Path::new("test.toml"), &|_| None)
        .expect("config");
    gw.gateway.reloader().reload(config).await.expect("reload");
    assert_eq!(close_code(&mut old).await, Some(CloseCode::Policy));
    new.send(Message::text(event("after-rotation")))
        .await
        .unwrap();
    assert_eq!(next_json(&mut new).await["data"]["status"], 202);
}

/// A client that sends but never reads its acknowledgements loses its session once the
/// server could not write to it for `idle_timeout_ms`, instead of holding it (and a
/// connection slot) until shutdown.
#[tokio::test]
async fn a_client_that_reads_no_acknowledgements_is_disconnected() {
    let config = SOURCE.replace(
        "max_message_bytes = 4096",
        "max_message_bytes = 4096\nmax_in_flight = 4\nidle_timeout_ms = 1000\nping_interval_ms = 500",
    );
    let gw = TestGateway::start(&config).await;
    let addr = gw.gateway.source_addr("devices").unwrap();
    // A small receive buffer, so unread acknowledgements back up to the server soon.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(addr).await.unwrap();
    let mut request = format!("ws://{addr}/ws").into_client_request().unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "cloudevents.json".parse().unwrap(),
    );
    let (ws, _) = tokio_tungstenite::client_async(request, tcp).await.unwrap();
    let (mut tx, rx) = ws.split();
    let sender = tokio::spawn(async move {
        let padding = "x".repeat(2000);
        for i in 0.. {
            let e = json!({"specversion": "1.0", "id": format!("unread-{i}"), "source": "/devices/d1", "type": "com.example.reading", "data": {"pad": padding}});
            if tx.send(Message::text(e.to_string())).await.is_err() {
                break;
            }
        }
    });
    let metric = "ferry_websocket_closed_total{component=\"source:devices\",reason=\"too_slow\"}";
    common::until(
        Duration::from_secs(30),
        "the session of the client that reads nothing closed as too slow",
        || async { common::metric(&gw.metrics().await, metric) == 1.0 },
    )
    .await;
    common::until(
        Duration::from_secs(15),
        "its connection released",
        || async {
            common::metric(
                &gw.metrics().await,
                "ferry_source_connections{source=\"devices\"}",
            ) == 0.0
        },
    )
    .await;
    sender.abort();
    drop(rx);
    gw.gateway.shutdown().await;
}
