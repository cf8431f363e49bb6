//! The HTTP sink's outbound security against a second gateway: Standard Webhooks signatures
//! its HMAC verifier accepts, mTLS with a custom CA and a bearer token, and the CloudEvents Web
//! Hook validation handshake on both sides.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{Receiver, TestGateway};
use serde_json::{json, Value};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const JWT_SECRET: &str = "a-shared-jwt-secret-of-32-bytes!";

async fn post(url: &str, id: &str) -> reqwest::StatusCode {
    reqwest::Client::new()
        .post(url)
        .header("ce-specversion", "1.0")
        .header("ce-id", id)
        .header("ce-source", "/partner-a/shop")
        .header("ce-type", "com.partner-a.order")
        .header("content-type", "application/json")
        .body(r#"{"n": 1}"#)
        .send()
        .await
        .unwrap()
        .status()
}

/// A gateway forwarding its `web` source to the sinks described by `sinks` (TOML with the
/// `[sinks.*]` tables); every sink named in `to` is on the route.
async fn sender(sinks: &str, to: &[&str], extra: &str) -> TestGateway {
    let to: Vec<String> = to.iter().map(|s| format!("\"{s}\"")).collect();
    TestGateway::start(&format!(
        r#"
shutdown_timeout_ms = 500
{extra}
[admin]
listen = "127.0.0.1:0"

[sources.web]
type = "http"
listen = "127.0.0.1:0"
path = "/events"
ack_timeout_ms = 3000

{sinks}

[routes.out]
from = ["web"]
to = [{}]
"#,
        to.join(", ")
    ))
    .await
}

/// A gateway whose `partners` source (with `source` settings) archives to a file.
async fn receiver(source: &str) -> TestGateway {
    TestGateway::start(&format!(
        r#"
[sources.partners]
type = "http"
listen = "127.0.0.1:0"
path = "/events"
{source}

[sinks.archive]
type = "file"
path = "{{dir}}/events.jsonl"

[routes.all]
from = ["partners"]
to = ["archive"]
"#
    ))
    .await
}

#[tokio::test]
async fn standard_webhooks_signatures_are_accepted_by_the_verifier_and_tampering_is_not() {
    let partner = receiver(&format!(
        "[sources.partners.auth]\nhmac = {{ scheme = \"standard-webhooks\", secrets = [\"{SECRET}\"] }}"
    ))
    .await;
    let mut capture = Receiver::start().await;
    let sign = format!("sign = {{ scheme = \"standard-webhooks\", secret = \"{SECRET}\" }}");
    let gw = sender(
        &format!(
            r#"
[sinks.partner]
type = "http"
url = "{}"
{sign}

[sinks.capture]
type = "http"
url = "http://{}/hook"
{sign}
"#,
            partner.url("partners", "/events"),
            capture.addr
        ),
        &["partner", "capture"],
        "",
    )
    .await;

    // Straight through: the partner's verifier accepted the signature (its 202 confirmed
    // the delivery), and it stamped the principal.
    assert_eq!(post(&gw.url("web", "/events"), "e1").await, 202);
    let lines = partner.lines("events.jsonl");
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["authtype"], "api_key");
    assert_eq!(lines[0]["authid"], "partners");

    // The same signed request, captured, with its body changed: refused.
    let got = capture.rx.recv().await.unwrap();
    let id = got.headers["webhook-id"].to_str().unwrap().to_owned();
    assert!(id.starts_with("msg_"), "{id}");
    assert!(got.headers["webhook-signature"]
        .to_str()
        .unwrap()
        .starts_with("v1,"));
    let replay = |body: &'static str| {
        let mut request = reqwest::Client::new()
            .post(partner.url("partners", "/events"))
            .body(body);
        for (k, v) in &got.headers {
            if k != "content-length" && k != "host" {
                request = request.header(k, v);
            }
        }
        request
    };
    assert_eq!(got.body, r#"{"n": 1}"#);
    let tampered = replay(r#"{"n": 2}"#).send().await.unwrap();
    assert_eq!(tampered.status(), 401);
    let problem: Value = tampered.json().await.unwrap();
    assert!(
        problem["detail"].as_str().unwrap().contains("signature"),
        "{problem}"
    );
    // The untouched request was already delivered: its id is refused as a replay.
    assert_eq!(replay(r#"{"n": 1}"#).send().await.unwrap().status(), 401);
    assert_eq!(partner.lines("events.jsonl").len(), 1);
}

struct Certs {
    _dir: tempfile::TempDir,
    dev: PathBuf,
    other: PathBuf,
}

fn certs() -> Certs {
    let dir = tempfile::tempdir().unwrap();
    let dev = dir.path().join("dev");
    let other = dir.path().join("other");
    ferry::certs::generate_dev(&dev).unwrap();
    ferry::certs::generate(&other, "Another CA", "spiffe://elsewhere/intruder").unwrap();
    Certs {
        _dir: dir,
        dev,
        other,
    }
}

fn jwt(sub: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({ "sub": sub, "exp": exp }),
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn mtls_with_a_custom_ca_and_a_bearer_token() {
    let c = certs();
    let d = c.dev.display();
    let partner = receiver(&format!(
        r#"tls = {{ cert = "{d}/server.pem", key = "{d}/server.key", client_ca = "{d}/ca.pem", client_auth = "required" }}

[sources.partners.auth]
mode = "all"
mtls = true
jwt = {{ secrets = ["{JWT_SECRET}"] }}
"#
    ))
    .await;
    let url = format!(
        "https://localhost:{}/events",
        partner.gateway.source_addr("partners").unwrap().port()
    );
    let sink = |name: &str, ca: &std::path::Path, client: bool, token: &str| {
        let mut tls = format!("ca = \"{}\"", ca.join("ca.pem").display());
        if client {
            tls.push_str(&format!(
                ", cert = \"{d}/client.pem\", key = \"{d}/client.key\""
            ));
        }
        format!(
            "[sinks.{name}]\ntype = \"http\"\nurl = \"{url}\"\ntls = {{ {tls} }}\nbearer_token = \"{token}\"\n"
        )
    };

    // Trusts the partner's CA, presents the client certificate and a valid token.
    let token = jwt("ferry-a");
    let gw = sender(&sink("partner", &c.dev, true, &token), &["partner"], "").await;
    assert_eq!(post(&gw.url("web", "/events"), "t1").await, 202);
    let lines = partner.lines("events.jsonl");
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["authid"], ferry::certs::CLIENT_IDENTITY);
    // The token is a secret: the admin API shows the config redacted.
    let shown = reqwest::get(gw.admin("/-/config"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!shown.contains(&token), "{shown}");
    gw.gateway.shutdown().await;

    // Each of these fails: no client certificate, a CA that did not sign the partner's
    // certificate, a wrong token. Nothing reaches the partner.
    for (what, config) in [
        (
            "no client certificate",
            sink("partner", &c.dev, false, &token),
        ),
        ("another CA", sink("partner", &c.other, true, &token)),
        ("a bad token", sink("partner", &c.dev, true, "not-a-jwt")),
    ] {
        let gw = sender(&config, &["partner"], "").await;
        let status = post(&gw.url("web", "/events"), "t2").await;
        assert!(status.is_server_error(), "{what}: {status}");
        gw.gateway.shutdown().await;
    }
    assert_eq!(partner.lines("events.jsonl").len(), 1);
}

#[tokio::test]
async fn the_source_answers_the_webhook_handshake() {
    let partner =
        receiver("webhook = { allowed_origins = [\"ferry.example.com\"], allowed_rate = 600 }")
            .await;
    let url = partner.url("partners", "/events");
    let options = |origin: Option<&str>| {
        let mut r = reqwest::Client::new().request(reqwest::Method::OPTIONS, &url);
        if let Some(o) = origin {
            r = r.header("WebHook-Request-Origin", o);
        }
        r.send()
    };
    let granted = options(Some("Ferry.example.com")).await.unwrap();
    assert_eq!(granted.status(), 200);
    assert_eq!(
        granted.headers()["webhook-allowed-origin"],
        "Ferry.example.com"
    );
    assert_eq!(granted.headers()["webhook-allowed-rate"], "600");
    assert!(granted.headers()["allow"]
        .to_str()
        .unwrap()
        .contains("POST"));

    let refused = options(Some("evil.example.com")).await.unwrap();
    assert_eq!(refused.status(), 403);
    assert!(refused.headers().get("webhook-allowed-origin").is_none());
    let problem: Value = refused.json().await.unwrap();
    assert_eq!(problem["header"], "webhook-request-origin");

    let plain = options(None).await.unwrap();
    assert_eq!(plain.status(), 204);
    assert!(plain.headers()["allow"].to_str().unwrap().contains("POST"));

    // Without settings every origin is granted, at the source's rate limit.
    let open = receiver("rate_limit = { per_second = 5, burst = 10, key = \"ip\" }").await;
    let r = reqwest::Client::new()
        .request(reqwest::Method::OPTIONS, open.url("partners", "/events"))
        .header("WebHook-Request-Origin", "anyone.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["webhook-allowed-origin"], "anyone.example.com");
    assert_eq!(r.headers()["webhook-allowed-rate"], "300");
}

#[tokio::test]
async fn the_sink_performs_the_handshake_before_delivering() {
    let partner = receiver("webhook = { allowed_origins = [\"ferry.example.com\"] }").await;
    let sink = |origin: &str| {
        format!(
            "[sinks.partner]\ntype = \"http\"\nurl = \"{}\"\nwebhook_handshake = true\norigin = \"{origin}\"\n",
            partner.url("partners", "/events")
        )
    };

    let gw = sender(&sink("ferry.example.com"), &["partner"], "").await;
    let readyz = gw.admin("/readyz");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while reqwest::get(&readyz).await.unwrap().status() != 200 {
        assert!(tokio::time::Instant::now() < deadline, "never granted");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(post(&gw.url("web", "/events"), "h1").await, 202);
    assert_eq!(partner.lines("events.jsonl").len(), 1);
    gw.gateway.shutdown().await;

    // Refused: the sink stays not ready and delivers nothing.
    let gw = sender(&sink("evil.example.com"), &["partner"], "").await;
    common::until(Duration::from_secs(10), "a refused handshake", || async {
        let metrics = gw.metrics().await;
        common::metric(
            &metrics,
            "ferry_sink_connect_failures_total{sink=\"partner\"}",
        ) >= 1.0
    })
    .await;
    // Known down: refused at once.
    assert_eq!(post(&gw.url("web", "/events"), "h2").await, 503);
    let body = reqwest::get(gw.admin("/readyz"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.contains("sink:partner"), "{body}");
    assert_eq!(partner.lines("events.jsonl").len(), 1);
    gw.gateway.shutdown().await;
}

/// A TLS failure names the TLS problem (here: a certificate from a CA the sink does not
/// trust), not just "error sending request": in the logs and in the dead letter's
/// `deadlettererror`.
#[tokio::test]
async fn a_tls_failure_names_the_tls_problem() {
    let c = certs();
    let d = c.dev.display();
    let partner = receiver(&format!(
        r#"tls = {{ cert = "{d}/server.pem", key = "{d}/server.key" }}"#
    ))
    .await;
    let url = format!(
        "https://localhost:{}/events",
        partner.gateway.source_addr("partners").unwrap().port()
    );
    let dir = tempfile::tempdir().unwrap();
    let sinks = format!(
        "[sinks.partner]\ntype = \"http\"\nurl = \"{url}\"\ntls = {{ ca = \"{}\" }}\ndead_letter = \"dlq\"\n\n[sinks.dlq]\ntype = \"file\"\npath = \"{}/dlq.jsonl\"\n",
        c.other.join("ca.pem").display(),
        dir.path().display()
    );
    let gw = sender(&sinks, &["partner"], "").await;
    assert_eq!(
        post(&gw.url("web", "/events"), "tls-1").await,
        202,
        "dead-lettered"
    );
    let text = std::fs::read_to_string(dir.path().join("dlq.jsonl")).unwrap();
    let dead: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    let error = dead["deadlettererror"].as_str().unwrap();
    assert!(error.contains("certificate"), "{error}");
    gw.gateway.shutdown().await;
}
