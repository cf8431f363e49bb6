//! Signature and token verification against the running gateway: the cost of a request is
//! bounded, the replay cache refuses replays (across reloads too) but acknowledges a sender's
//! retry of an accepted message, and refusals say what is wrong.

mod common;

use std::path::Path;
use std::process::Command;

use common::TestGateway;
use ferry::security::hmac::sign_standard_webhooks;
use serde_json::Value;
use tokio::sync::mpsc;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SECOND_SECRET: &str = "whsec_c2Vjb25kLXNlY3JldC1mb3Itcm90YXRpb24=";
const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/keys");
const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A source `hooks` with Standard Webhooks signatures, archived to `events.jsonl`.
/// `hmac_extra` goes into the hmac table, `source_extra` into the source.
fn hooks(secrets: &[&str], hmac_extra: &str, source_extra: &str) -> String {
    let secrets: Vec<String> = secrets.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[sources.hooks]
type = "http"
listen = "127.0.0.1:0"
path = "/hooks"
{source_extra}

[sources.hooks.auth]
hmac = {{ scheme = "standard-webhooks", secrets = [{secrets}]{hmac_extra} }}

[sinks.archive]
type = "file"
path = "{{dir}}/events.jsonl"

[routes.all]
from = ["hooks"]
to = ["archive"]
"#,
        secrets = secrets.join(", ")
    )
}

const BODY: &str =
    r#"{"specversion":"1.0","id":"e-1","source":"/partner","type":"com.example.order"}"#;

/// Standard Webhooks headers for `BODY` signed with `SECRET`.
fn signed(id: &str, timestamp: u64) -> Vec<(&'static str, String)> {
    vec![
        ("webhook-id", id.to_owned()),
        ("webhook-timestamp", timestamp.to_string()),
        (
            "webhook-signature",
            sign_standard_webhooks(SECRET, id, timestamp, BODY.as_bytes()),
        ),
    ]
}

async fn post(url: &str, headers: &[(&str, String)], body: &str) -> (u16, Value, http::HeaderMap) {
    let mut request = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/cloudevents+json");
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let response = request.body(body.to_owned()).send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.bytes().await.unwrap();
    (
        status,
        serde_json::from_slice(&body).unwrap_or(Value::Null),
        headers,
    )
}

fn detail(problem: &Value) -> &str {
    problem["detail"].as_str().unwrap_or_default()
}

/// S1: the signature header holds at most 8 entries and 2048 bytes; more is refused naming
/// the header, before any MAC is computed. A valid signature among junk entries still passes.
#[tokio::test]
async fn s1_signature_candidates_are_bounded() {
    let gw = TestGateway::start(&hooks(&[SECRET], "", "")).await;
    let url = gw.url("hooks", "/hooks");
    let ts = now();
    let mut headers = signed("msg_many", ts);
    let junk = ["v1,AAAA"; 9].join(" ");
    headers[2].1 = junk;
    let (status, problem, _) = post(&url, &headers, BODY).await;
    assert_eq!(status, 401, "{problem}");
    assert_eq!(problem["header"], "webhook-signature", "{problem}");
    assert!(
        detail(&problem).contains("too_many_signatures"),
        "{problem}"
    );

    let mut headers = signed("msg_long", ts);
    headers[2].1 = format!("v1,{}", "A".repeat(4096));
    let (status, problem, _) = post(&url, &headers, BODY).await;
    assert_eq!(status, 401, "{problem}");
    assert_eq!(problem["header"], "webhook-signature", "{problem}");

    let mut headers = signed("msg_ok", ts);
    headers[2].1 = format!("{} {}", ["v1,AAAA"; 7].join(" "), headers[2].1);
    let (status, problem, _) = post(&url, &headers, BODY).await;
    assert_eq!(status, 202, "{problem}");
    assert_eq!(gw.lines("events.jsonl").len(), 1);
}

/// S6: with the cache full of messages inside the window, a new message is refused (503,
/// retry later) rather than evicting one a replay could still use.
#[tokio::test]
async fn s6_a_full_replay_cache_refuses_new_messages_instead_of_forgetting_old_ones() {
    let gw = TestGateway::start(&hooks(&[SECRET], ", replay_cache = 1", "")).await;
    let url = gw.url("hooks", "/hooks");
    let ts = now();
    assert_eq!(post(&url, &signed("msg_a", ts), BODY).await.0, 202);
    let (status, problem, headers) = post(&url, &signed("msg_b", ts), BODY).await;
    assert_eq!(status, 503, "{problem}");
    assert!(headers.contains_key("retry-after"));
    let (status, problem, _) = post(&url, &signed("msg_a", ts), BODY).await;
    assert_eq!(status, 401, "{problem}");
    assert!(detail(&problem).contains("replayed"), "{problem}");
    assert_eq!(gw.lines("events.jsonl").len(), 1);
}

/// B1: a sender's retry of an accepted message (same webhook-id, signed anew) is acknowledged
/// and not delivered again; the same signed request again is a replay.
#[tokio::test]
async fn b1_a_retry_of_an_accepted_webhook_is_acknowledged_once_more_not_delivered_twice() {
    let gw = TestGateway::start(&hooks(&[SECRET], "", "")).await;
    let url = gw.url("hooks", "/hooks");
    let ts = now();
    let first = signed("msg_retry", ts - 1);
    assert_eq!(post(&url, &first, BODY).await.0, 202);
    let (status, problem, _) = post(&url, &signed("msg_retry", ts), BODY).await;
    assert_eq!(status, 202, "{problem}");
    assert_eq!(gw.lines("events.jsonl").len(), 1, "delivered once");
    let (status, problem, _) = post(&url, &first, BODY).await;
    assert_eq!(status, 401, "{problem}");
    assert!(detail(&problem).contains("replayed"), "{problem}");
}

/// A loopback HTTP endpoint that reports each connection and never answers.
async fn silent_endpoint() -> (std::net::SocketAddr, mpsc::UnboundedReceiver<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            held.push(conn);
            let _ = tx.send(());
        }
    });
    (addr, rx)
}

/// M6: a retry that arrives while the first copy is being delivered gets 409 (retry later),
/// not 401; once the first copy failed, the retry is delivered.
#[tokio::test]
async fn m6_a_retry_while_the_first_copy_is_in_flight_gets_409_not_401() {
    let (target, mut connected) = silent_endpoint().await;
    let text = hooks(&[SECRET], "", "").replace(
        "[sinks.archive]\ntype = \"file\"\npath = \"{dir}/events.jsonl\"",
        &format!(
            "[sinks.archive]\ntype = \"http\"\nurl = \"http://{target}/in\"\ntimeout_ms = 1000"
        ),
    );
    let gw = TestGateway::start(&text).await;
    let url = gw.url("hooks", "/hooks");
    let ts = now();
    let first = tokio::spawn({
        let url = url.clone();
        async move { post(&url, &signed("msg_slow", ts - 1), BODY).await.0 }
    });
    connected.recv().await.unwrap();
    let (status, problem, headers) = post(&url, &signed("msg_slow", ts), BODY).await;
    assert_eq!(status, 409, "{problem}");
    assert!(headers.contains_key("retry-after"));
    assert!(detail(&problem).contains("in_progress"), "{problem}");
    // The first copy times out at the sink and is not accepted: the retry is delivered anew.
    assert_eq!(first.await.unwrap(), 502);
    let retry = tokio::spawn({
        let url = url.clone();
        async move { post(&url, &signed("msg_slow", ts), BODY).await.0 }
    });
    connected.recv().await.unwrap();
    assert_eq!(retry.await.unwrap(), 502);
}

/// M6: a verified WebSocket upgrade that is then refused releases its replay record, so the
/// client's corrected retry is not "replayed".
#[tokio::test]
async fn m6_a_refused_websocket_upgrade_releases_its_replay_record() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let text = format!(
        r#"
[sources.devices]
type = "websocket"
listen = "127.0.0.1:0"
path = "/ws"

[sources.devices.auth]
hmac = {{ scheme = "standard-webhooks", secrets = ["{SECRET}"] }}

[sinks.archive]
type = "file"
path = "{{dir}}/events.jsonl"

[routes.all]
from = ["devices"]
to = ["archive"]
"#
    );
    let gw = TestGateway::start(&text).await;
    let url = format!("ws://{}/ws", gw.gateway.source_addr("devices").unwrap());
    let ts = now();
    let id = "msg_ws";
    let signature = sign_standard_webhooks(SECRET, id, ts, b"");
    let request = |subprotocol: Option<&str>| {
        let mut request = url.as_str().into_client_request().unwrap();
        let headers = request.headers_mut();
        headers.insert("webhook-id", id.parse().unwrap());
        headers.insert("webhook-timestamp", ts.to_string().parse().unwrap());
        headers.insert("webhook-signature", signature.parse().unwrap());
        if let Some(p) = subprotocol {
            headers.insert("sec-websocket-protocol", p.parse().unwrap());
        }
        request
    };
    match tokio_tungstenite::connect_async(request(None)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 400)
        }
        other => panic!("expected 400, got {other:?}"),
    }
    let connected = tokio_tungstenite::connect_async(request(Some("cloudevents.json"))).await;
    assert!(connected.is_ok(), "{:?}", connected.err());
}

/// S5: an in-place reload of the source (a second secret appended) keeps the replay cache
/// and the rate-limit buckets.
#[tokio::test]
async fn s5_a_reload_keeps_the_replay_cache_and_the_rate_limits() {
    let limit = r#"rate_limit = { per_second = 1, burst = 2, key = "source" }"#;
    let gw = TestGateway::start(&hooks(&[SECRET], "", limit)).await;
    let url = gw.url("hooks", "/hooks");
    let ts = now();
    let a = signed("msg_a", ts);
    assert_eq!(post(&url, &a, BODY).await.0, 202);
    assert_eq!(post(&url, &a, BODY).await.0, 401, "replay");
    assert_eq!(post(&url, &signed("msg_b", ts), BODY).await.0, 202);
    assert_eq!(post(&url, &signed("msg_c", ts), BODY).await.0, 429);

    let text = hooks(&[SECRET, SECOND_SECRET], "", limit)
        .replace("{dir}", gw.dir.path().to_str().unwrap());
    let config = ferry::Config::from_str_at(&text, Path::new("test.toml"), &|_| None).unwrap();
    let report = gw.gateway.reloader().reload(config).await.unwrap();
    assert_eq!(report.changes.changed, ["source:hooks"], "changed in place");

    let (status, problem, _) = post(&url, &a, BODY).await;
    assert_eq!(status, 401, "replay after the reload: {problem}");
    let (status, problem, _) = post(&url, &signed("msg_d", ts), BODY).await;
    assert_eq!(status, 429, "still limited after the reload: {problem}");
    assert_eq!(gw.lines("events.jsonl").len(), 2);
}

/// M7: a `generic` signature header without its timestamp header is a credential presented
/// and invalid, even beside a valid bearer token.
#[tokio::test]
async fn m7_a_generic_signature_without_its_timestamp_is_refused_beside_a_valid_token() {
    let text = format!(
        r#"
[sources.hooks]
type = "http"
listen = "127.0.0.1:0"
path = "/hooks"

[sources.hooks.auth]
jwt = {{ keys = "{KEYS}/rsa-public.pem", audience = "ferry" }}
hmac = {{ scheme = "generic", secrets = ["generic-secret"], header = "X-Signature", timestamp_header = "X-Timestamp" }}

[sinks.archive]
type = "file"
path = "{{dir}}/events.jsonl"

[routes.all]
from = ["hooks"]
to = ["archive"]
"#
    );
    let gw = TestGateway::start(&text).await;
    let url = gw.url("hooks", "/hooks");
    let token = jwt("rsa-private.pem", None);
    let bearer = ("authorization", format!("Bearer {token}"));
    assert_eq!(post(&url, std::slice::from_ref(&bearer), BODY).await.0, 202);
    let with_signature = [bearer, ("x-signature", "00".repeat(32))];
    let (status, problem, _) = post(&url, &with_signature, BODY).await;
    assert_eq!(status, 401, "{problem}");
    assert_eq!(problem["header"], "x-timestamp", "{problem}");
}

/// M3: a batch with more events than the rate limit's burst can never pass: 413, not 429.
#[tokio::test]
async fn m3_a_batch_larger_than_the_burst_gets_413() {
    let text = r#"
[sources.web]
type = "http"
listen = "127.0.0.1:0"
path = "/events"
rate_limit = { per_second = 10, burst = 2, key = "source" }

[sinks.archive]
type = "file"
path = "{dir}/events.jsonl"

[routes.all]
from = ["web"]
to = ["archive"]
"#;
    let gw = TestGateway::start(text).await;
    let event =
        |id: &str| format!(r#"{{"specversion":"1.0","id":"{id}","source":"/s","type":"t"}}"#);
    let batch = format!("[{},{},{}]", event("1"), event("2"), event("3"));
    let response = reqwest::Client::new()
        .post(gw.url("web", "/events"))
        .header("content-type", "application/cloudevents-batch+json")
        .body(batch)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    assert!(!response.headers().contains_key("retry-after"));
    let problem: Value = response.json().await.unwrap();
    assert!(detail(&problem).contains("burst"), "{problem}");
}

/// Issue 15 (4): a Standard Webhooks secret is read as the reference libraries read it, so
/// the bare base64 part works like the `whsec_` form.
#[tokio::test]
async fn standard_webhooks_secret_without_prefix_is_base64_like_the_reference_libraries() {
    let bare = SECRET.strip_prefix("whsec_").unwrap();
    let gw = TestGateway::start(&hooks(&[bare], "", "")).await;
    let url = gw.url("hooks", "/hooks");
    let (status, problem, _) = post(&url, &signed("msg_bare", now()), BODY).await;
    assert_eq!(status, 202, "{problem}");
}

/// Issue 15 (4): a Standard Webhooks secret that is not base64 is refused by `ferry check`
/// with the file, the line and the key, not left to fail every request with 401.
#[test]
fn standard_webhooks_secret_that_is_not_base64_is_refused_by_check() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ferry.toml");
    let text = hooks(&["not base64!"], "", "").replace("{dir}", dir.path().to_str().unwrap());
    let line = text
        .lines()
        .position(|l| l.contains("not base64!"))
        .unwrap()
        + 1;
    std::fs::write(&path, text).unwrap();
    let out = Command::new(FERRY)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains(&format!("ferry.toml:{line}")), "{stderr}");
    assert!(
        stderr.contains("sources.hooks.auth.hmac.secrets.0"),
        "{stderr}"
    );
    assert!(stderr.contains("base64"), "{stderr}");
    assert!(
        !stderr.contains("not base64!"),
        "the secret is not shown: {stderr}"
    );
}

fn jwt(key_file: &str, kid: Option<&str>) -> String {
    let pem = std::fs::read(format!("{KEYS}/{key_file}")).unwrap();
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = kid.map(str::to_owned);
    let claims = serde_json::json!({ "sub": "partner-a", "aud": "ferry", "exp": now() + 300 });
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

/// Issue 15 (5): an unknown `kid` says so, and bearer-token refusals challenge as RFC 6750
/// asks: `error="invalid_token"` for a refused token, a plain `Bearer` when none was sent.
#[tokio::test]
async fn bearer_refusals_name_the_kid_and_challenge_per_rfc_6750() {
    let text = format!(
        r#"
[sources.api]
type = "http"
listen = "127.0.0.1:0"
path = "/events"

[sources.api.auth]
jwt = {{ keys = "{KEYS}/rsa-public.pem", audience = "ferry" }}

[sinks.archive]
type = "file"
path = "{{dir}}/events.jsonl"

[routes.all]
from = ["api"]
to = ["archive"]
"#
    );
    let gw = TestGateway::start(&text).await;
    let url = gw.url("api", "/events");
    let (status, _, headers) = post(&url, &[], BODY).await;
    assert_eq!(status, 401);
    assert_eq!(headers["www-authenticate"], "Bearer");

    let token = jwt("rsa-other-private.pem", Some("retired-key"));
    let bearer = [("authorization", format!("Bearer {token}"))];
    let (status, problem, headers) = post(&url, &bearer, BODY).await;
    assert_eq!(status, 401);
    assert!(detail(&problem).contains("kid `retired-key`"), "{problem}");
    let challenge = headers["www-authenticate"].to_str().unwrap();
    assert!(
        challenge.starts_with("Bearer error=\"invalid_token\", error_description=\""),
        "{challenge}"
    );
    assert!(challenge.contains("retired-key"), "{challenge}");
}
