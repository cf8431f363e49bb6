//! TLS, mTLS, principals, policies and rate limits over real TLS handshakes and real HTTP.

mod common;

use std::path::Path;

use common::TestGateway;
use serde_json::Value;

/// A reqwest client trusting `ca`, presenting `identity` (cert + key PEM files) if given.
fn tls_client(ca: &Path, identity: Option<(&Path, &Path)>) -> reqwest::Client {
    let roots = ferry::tls::load_roots(ca).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(ferry::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                ferry::tls::load_certs(cert).unwrap(),
                ferry::tls::load_key(key).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    reqwest::Client::builder()
        .tls_backend_preconfigured(config)
        .build()
        .unwrap()
}

fn config(dir: &Path, extra_source: &str, extra: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[sources.partners]
type = "http"
listen = "127.0.0.1:0"
path = "/events"
tls = {{ cert = "{d}/server.pem", key = "{d}/server.key", client_ca = "{d}/ca.pem", client_auth = "required" }}
{extra_source}

[sources.partners.auth]
mtls = true

[sinks.archive]
type = "file"
path = "{{dir}}/events.jsonl"

[routes.all]
from = ["partners"]
to = ["archive"]
{extra}
"#,
        d = dir.display()
    )
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    ty: &str,
    id: &str,
) -> Result<reqwest::Response, reqwest::Error> {
    client
        .post(url)
        .header("ce-specversion", "1.0")
        .header("ce-id", id)
        .header("ce-source", "/partner-a/shop")
        .header("ce-type", ty)
        .header("ce-authid", "admin")
        .header("ce-authtype", "system")
        .body("{}")
        .send()
        .await
}

struct Certs {
    _dir: tempfile::TempDir,
    good: std::path::PathBuf,
    other: std::path::PathBuf,
}

fn certs() -> Certs {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good");
    let other = dir.path().join("other");
    ferry::certs::generate_dev(&good).unwrap();
    ferry::certs::generate(&other, "Some other CA", "spiffe://elsewhere/intruder").unwrap();
    Certs {
        _dir: dir,
        good,
        other,
    }
}

fn https(gw: &TestGateway) -> String {
    format!(
        "https://localhost:{}/events",
        gw.gateway.source_addr("partners").unwrap().port()
    )
}

#[tokio::test]
async fn mtls_makes_the_principal_and_refuses_strangers() {
    let c = certs();
    let gw = TestGateway::start(&config(&c.good, "", "")).await;
    let url = https(&gw);
    let ca = c.good.join("ca.pem");

    // No client certificate: the handshake is refused.
    assert!(
        post(&tls_client(&ca, None), &url, "com.partner-a.order", "1")
            .await
            .is_err()
    );
    // A certificate from another CA: refused.
    let stranger = tls_client(
        &ca,
        Some((&c.other.join("client.pem"), &c.other.join("client.key"))),
    );
    assert!(post(&stranger, &url, "com.partner-a.order", "2")
        .await
        .is_err());
    // A valid certificate: accepted, its identity stamped, the spoofed values gone.
    let partner = tls_client(
        &ca,
        Some((&c.good.join("client.pem"), &c.good.join("client.key"))),
    );
    let resp = post(&partner, &url, "com.partner-a.order", "3")
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let lines = gw.lines("events.jsonl");
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["authid"], ferry::certs::CLIENT_IDENTITY);
    assert_eq!(lines[0]["authtype"], "service_account");
}

#[tokio::test]
async fn optional_client_auth_still_requires_a_credential() {
    let c = certs();
    let text =
        config(&c.good, "", "").replace("client_auth = \"required\"", "client_auth = \"optional\"");
    let gw = TestGateway::start(&text).await;
    let resp = post(
        &tls_client(&c.good.join("ca.pem"), None),
        &https(&gw),
        "t",
        "1",
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 401);
    assert!(resp.headers().get("www-authenticate").is_some());
    let body: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    assert!(
        body["detail"].as_str().unwrap().contains("no credentials"),
        "{body}"
    );
}

#[tokio::test]
async fn policies_refuse_types_a_principal_may_not_send() {
    let c = certs();
    let policy = format!(
        "[[policies]]\nprincipal = \"mtls:{}\"\nallow_types = [\"com.partner-a.*\"]\nallow_sources = [\"/partner-a/*\"]\n",
        ferry::certs::CLIENT_IDENTITY
    );
    let gw = TestGateway::start(&config(&c.good, "", &policy)).await;
    let partner = tls_client(
        &c.good.join("ca.pem"),
        Some((&c.good.join("client.pem"), &c.good.join("client.key"))),
    );
    let url = https(&gw);
    assert_eq!(
        post(&partner, &url, "com.partner-a.order", "1")
            .await
            .unwrap()
            .status(),
        202
    );
    let resp = post(&partner, &url, "com.partner-b.order", "2")
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(
        resp.headers().get("content-type").unwrap(),
        "application/problem+json"
    );
    let body: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!(body["attribute"], "type");
    assert!(
        body["detail"].as_str().unwrap().contains("policies[0]"),
        "{body}"
    );
    assert_eq!(gw.lines("events.jsonl").len(), 1);
}

#[tokio::test]
async fn rate_limits_answer_429_without_affecting_others() {
    let text = r#"
[admin]
listen = "127.0.0.1:0"

[sources.web]
type = "http"
listen = "127.0.0.1:0"
path = "/events"
rate_limit = { per_second = 1, burst = 3, key = "ip" }

[sinks.archive]
type = "file"
path = "{dir}/events.jsonl"

[routes.all]
from = ["web"]
to = ["archive"]
"#;
    let gw = TestGateway::start(text).await;
    let port = gw.gateway.source_addr("web").unwrap().port();
    let from = |ip: [u8; 4]| {
        reqwest::Client::builder()
            .local_address(std::net::IpAddr::from(ip))
            .build()
            .unwrap()
    };
    let noisy = from([127, 0, 0, 1]);
    let quiet = from([127, 0, 0, 2]);
    let url = format!("http://127.0.0.1:{port}/events");
    let mut statuses = Vec::new();
    for i in 0..5 {
        let resp = post(&noisy, &url, "t", &i.to_string()).await.unwrap();
        if resp.status() == 429 {
            let retry: u64 = resp
                .headers()
                .get("retry-after")
                .unwrap()
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!((1..=2).contains(&retry), "{retry}");
        }
        statuses.push(resp.status().as_u16());
    }
    assert_eq!(&statuses[..3], &[202, 202, 202]);
    assert!(statuses[3..].iter().all(|s| *s == 429), "{statuses:?}");
    // Another client IP has its own budget.
    assert_eq!(post(&quiet, &url, "t", "q").await.unwrap().status(), 202);
    assert!(gw.metrics().await.contains("reason=\"rate_limited\""));
}
