//! The WebSocket push sink's own security: TLS when its `tls` table is set, subscribers
//! authenticated like a source's senders, policies deciding what a principal receives, and
//! sessions closed when their token expires (S2, S4).

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::TestGateway;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "0123456789abcdef0123456789abcdef";
const WAIT: Duration = Duration::from_secs(10);

fn config(dir: &Path, sink_extra: &str, policies: &str) -> String {
    let d = dir.display();
    format!(
        r#"
[sources.web]
type = "http"
listen = "127.0.0.1:0"
path = "/events"

[sinks.live]
type = "websocket"
listen = "127.0.0.1:0"
path = "/live"
tls = {{ cert = "{d}/server.pem", key = "{d}/server.key" }}
{sink_extra}

[routes.all]
from = ["web"]
to = ["live"]
{policies}
"#
    )
}

fn token(sub: &str, exp_in_secs: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": sub, "exp": now + exp_in_secs}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

type Wss =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// Connects over TLS (trusting the dev CA), with an optional bearer token.
async fn subscribe(
    gw: &TestGateway,
    dir: &Path,
    bearer: Option<&str>,
) -> Result<Wss, tokio_tungstenite::tungstenite::Error> {
    let addr = gw.gateway.sink_addr("live").unwrap();
    let roots = ferry::tls::load_roots(&dir.join("ca.pem")).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(ferry::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(client))
        .connect(name, tcp)
        .await
        .expect("the push sink speaks TLS");
    let mut request = format!("wss://localhost:{}/live", addr.port())
        .into_client_request()
        .unwrap();
    if let Some(t) = bearer {
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    tokio::time::timeout(WAIT, tokio_tungstenite::client_async(request, tls))
        .await
        .expect("upgrade in time")
        .map(|(ws, _)| ws)
}

async fn post(gw: &TestGateway, id: &str, ty: &str) {
    let status = reqwest::Client::new()
        .post(gw.url("web", "/events"))
        .header("ce-specversion", "1.0")
        .header("ce-id", id)
        .header("ce-source", "/s")
        .header("ce-type", ty)
        .body("{}")
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status.as_u16(), 202);
}

async fn next_id(ws: &mut Wss) -> String {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a message in time")
            .expect("open")
            .expect("ok");
        if let Message::Text(t) = msg {
            let v: Value = serde_json::from_str(&t).unwrap();
            return v["id"].as_str().unwrap().to_owned();
        }
    }
}

fn dev_certs() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    ferry::certs::generate_dev(dir.path()).unwrap();
    dir
}

/// S2: with `tls` set, the push sink speaks TLS (a plain-text client gets nothing).
#[tokio::test]
async fn s2_push_sink_serves_tls() {
    let certs = dev_certs();
    let gw = TestGateway::start(&config(certs.path(), "", "")).await;
    let plain = format!("ws://{}/live", gw.gateway.sink_addr("live").unwrap());
    assert!(
        tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(plain))
            .await
            .expect("an answer in time")
            .is_err(),
        "a plain-text WebSocket must not be served"
    );
    let mut ws = subscribe(&gw, certs.path(), None).await.expect("wss works");
    post(&gw, "over-tls", "t").await;
    assert_eq!(next_id(&mut ws).await, "over-tls");
}

/// S2: with `auth`, a subscriber needs a valid token, and policies decide what it receives.
#[tokio::test]
async fn s2_push_sink_authenticates_and_applies_policies() {
    let certs = dev_certs();
    let gw = TestGateway::start(&config(
        certs.path(),
        &format!("auth = {{ jwt = {{ secrets = [\"{SECRET}\"] }} }}"),
        "[[policies]]\nprincipal = \"jwt:dashboard\"\nallow_types = [\"public.*\"]\n",
    ))
    .await;
    let Err(err) = subscribe(&gw, certs.path(), None).await else {
        panic!("a subscriber without a token is refused")
    };
    assert!(err.to_string().contains("401"), "{err}");
    let Err(err) = subscribe(&gw, certs.path(), Some("not-a-token")).await else {
        panic!("a subscriber with a bad token is refused")
    };
    assert!(err.to_string().contains("401"), "{err}");
    let mut ws = subscribe(&gw, certs.path(), Some(&token("dashboard", 600)))
        .await
        .expect("a valid token subscribes");
    post(&gw, "secret-1", "private.x").await;
    post(&gw, "public-1", "public.x").await;
    assert_eq!(
        next_id(&mut ws).await,
        "public-1",
        "the policy withholds private.x"
    );
}

/// S4: a subscriber's session ends with 1008 when its token expires.
#[tokio::test]
async fn s4_push_sink_session_closes_when_the_token_expires() {
    let certs = dev_certs();
    let gw = TestGateway::start(&config(
        certs.path(),
        &format!("auth = {{ jwt = {{ secrets = [\"{SECRET}\"], leeway_secs = 0 }} }}"),
        "",
    ))
    .await;
    let mut ws = subscribe(&gw, certs.path(), Some(&token("dashboard", 2)))
        .await
        .expect("subscribes");
    let close = loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("closed in time")
        {
            Some(Ok(Message::Close(frame))) => break frame.expect("a close frame"),
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(close.code, CloseCode::Policy);
    assert!(close.reason.contains("expired"), "{}", close.reason);
    let _ = ws.send(Message::Close(None)).await;
}
