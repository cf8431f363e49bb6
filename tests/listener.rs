//! Listener bounds against the real binary: slow and idle connections, the connection cap,
//! body deadlines, and authentication before the body (S3, R4).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{metric, FerryProcess};

fn config(source_extra: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[sources.web]
type = "http"
listen = "127.0.0.1:0"
path = "/events"
{source_extra}

[sinks.archive]
type = "file"
path = "events.jsonl"

[routes.all]
from = ["web"]
to = ["archive"]
"#
    )
}

fn addr(ferry: &FerryProcess) -> String {
    ferry.addrs["web"].clone()
}

/// Reads until the server closes the connection (or answers), at most `within`; returns
/// what arrived, or `None` when the connection was still open at the end.
fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Option<String> {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Some(String::from_utf8_lossy(&got).into_owned()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Some(String::from_utf8_lossy(&got).into_owned())
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return None
            }
            Err(e) => panic!("read: {e}"),
        }
    }
}

async fn post_event(url: &str, id: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(url)
        .header("ce-specversion", "1.0")
        .header("ce-id", id)
        .header("ce-source", "/s")
        .header("ce-type", "t")
        .body("{}")
        .send()
        .await
        .expect("an answer")
}

/// S3: 5 000 connections that trickle a request head (slowloris) neither starve a
/// well-behaved client nor grow memory without bound, and are closed at the head timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_slowloris_does_not_starve_a_well_behaved_client() {
    let dir = tempfile::tempdir().unwrap();
    let ferry = FerryProcess::start(dir.path(), &config("header_read_timeout_ms = 3000"));
    let idle_rss = ferry.rss_kib();
    let target = addr(&ferry);
    let mut slow = Vec::with_capacity(5000);
    for _ in 0..5000 {
        let mut s = TcpStream::connect(&target).expect("connect");
        s.write_all(b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
            .unwrap();
        slow.push(s);
    }
    let started = Instant::now();
    let resp = post_event(&format!("http://{target}/events"), "well-behaved").await;
    let took = started.elapsed();
    assert_eq!(resp.status().as_u16(), 202);
    assert!(took < Duration::from_secs(1), "the 202 took {took:?}");
    let held_rss = ferry.rss_kib();
    assert!(
        held_rss < idle_rss + 100 * 1024,
        "RSS grew from {idle_rss} KiB to {held_rss} KiB with 5 000 slow connections"
    );
    // Every slow connection is closed by Ferry once its head is overdue.
    for s in slow.iter_mut().step_by(250) {
        let got = read_until_closed(s, Duration::from_secs(15));
        assert!(
            got.is_some(),
            "a slow connection is still open after the head timeout"
        );
    }
    let text = ferry.metrics().await;
    let closed = metric(
        &text,
        r#"ferry_connections_closed_total{component="source:web",reason="header_timeout"}"#,
    );
    assert!(closed >= 4000.0, "closed for header_timeout: {closed}");
}

/// S3: a body that does not arrive in time gets 408, and frees its request slot.
#[tokio::test]
async fn s3_slow_body_gets_408() {
    let dir = tempfile::tempdir().unwrap();
    let ferry = FerryProcess::start(
        dir.path(),
        &config("body_read_timeout_ms = 300\nmax_concurrent_requests = 1"),
    );
    let target = addr(&ferry);
    let mut s = TcpStream::connect(&target).unwrap();
    s.write_all(
        b"POST /events HTTP/1.1\r\nHost: x\r\nce-specversion: 1.0\r\nce-id: 1\r\nce-source: /s\r\nce-type: t\r\nContent-Length: 100\r\n\r\n{\"a\":",
    )
    .unwrap();
    let got = read_until_closed(&mut s, Duration::from_secs(10)).expect("an answer");
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");
    assert!(got.contains("body_read_timeout_ms"), "{got}");
    // The one request slot is free again.
    let resp = post_event(&format!("http://{target}/events"), "after").await;
    assert_eq!(resp.status().as_u16(), 202);
}

/// S3: past `max_connections` a connection is closed at once, and counted.
#[tokio::test]
async fn s3_connections_past_the_cap_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let ferry = FerryProcess::start(dir.path(), &config("max_connections = 3"));
    let target = addr(&ferry);
    let held: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(&target).unwrap())
        .collect();
    // Make sure the three are accepted (each answers a request) before the fourth.
    for mut s in held.iter() {
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 12];
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"HTTP/1.1 404");
    }
    let mut extra = TcpStream::connect(&target).unwrap();
    let got = read_until_closed(&mut extra, Duration::from_secs(5));
    assert_eq!(
        got.as_deref(),
        Some(""),
        "the fourth connection is closed unanswered"
    );
    let text = ferry.metrics().await;
    assert_eq!(
        metric(
            &text,
            r#"ferry_connections_closed_total{component="source:web",reason="limit"}"#
        ),
        1.0
    );
    drop(held);
}

/// S3: an idle keep-alive connection is closed after `idle_timeout_ms`.
#[tokio::test]
async fn s3_idle_keep_alive_connections_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let ferry = FerryProcess::start(dir.path(), &config("idle_timeout_ms = 300"));
    let mut s = TcpStream::connect(addr(&ferry)).unwrap();
    s.write_all(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let started = Instant::now();
    let got = read_until_closed(&mut s, Duration::from_secs(10)).expect("closed when idle");
    assert!(got.starts_with("HTTP/1.1 404"), "{got}");
    assert!(started.elapsed() >= Duration::from_millis(250));
}

/// Sends a request with a forged bearer token that declares a megabyte of body and sends
/// one byte of it: the 401 must come while the rest never arrives.
async fn forged_token_refused_before_the_body(auth: &str) {
    let dir = tempfile::tempdir().unwrap();
    let ferry = FerryProcess::start(
        dir.path(),
        &config(&format!("auth = {auth}\nmax_body_bytes = 2000000")),
    );
    let mut s = TcpStream::connect(addr(&ferry)).unwrap();
    s.write_all(
        b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Type: application/cloudevents+json\r\nAuthorization: Bearer not-a-jwt\r\nContent-Length: 1000000\r\n\r\n{",
    )
    .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).expect("an answer before the body");
    assert_eq!(&buf, b"HTTP/1.1 401");
}

/// R4: with JWT only, a request without a valid token is refused before its body is read.
#[tokio::test]
async fn r4_header_only_authentication_before_the_body() {
    forged_token_refused_before_the_body(
        "{ jwt = { secrets = [\"0123456789abcdef0123456789abcdef\"] } }",
    )
    .await;
}

/// R4 with a webhook signature configured beside JWT: the body must then be read for the
/// signature, but a forged bearer token is refused before it, not after a megabyte.
#[tokio::test]
async fn r4_a_forged_token_is_refused_before_the_body_also_with_hmac() {
    forged_token_refused_before_the_body(
        "{ jwt = { secrets = [\"0123456789abcdef0123456789abcdef\"] }, hmac = { scheme = \"github\", secrets = [\"s3cret\"] } }",
    )
    .await;
}
