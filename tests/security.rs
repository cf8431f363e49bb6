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
    // A sentence that says what is missing.
    assert_eq!(
        body["detail"].as_str().unwrap(),
        "The request presented no credentials.",
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

// --- JWT and HMAC over real HTTP ----------------------------------------------------------------

const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/keys");

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token(key_file: &str, alg: jsonwebtoken::Algorithm, claims: Value) -> String {
    let pem = std::fs::read(format!("{KEYS}/{key_file}")).unwrap();
    let key = match alg {
        jsonwebtoken::Algorithm::RS256 => jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap(),
        jsonwebtoken::Algorithm::HS256 => jsonwebtoken::EncodingKey::from_secret(&pem),
        other => panic!("{other:?}"),
    };
    jsonwebtoken::encode(&jsonwebtoken::Header::new(alg), &claims, &key).unwrap()
}

fn claims(sub: &str, exp_offset: i64, aud: &str) -> Value {
    serde_json::json!({"sub": sub, "iss": "https://idp.example.com", "aud": aud, "exp": (now() as i64 + exp_offset), "nbf": now() - 10})
}

const AUTH: &str = r#"
[admin]
listen = "127.0.0.1:0"

[sources.partners]
type = "http"
listen = "127.0.0.1:0"
path = "/events"

[sources.partners.auth]
mode = "any"
jwt = { keys = "{keys}/rsa-public.pem", issuer = "https://idp.example.com", audience = "ferry", leeway_secs = 30 }
hmac = { scheme = "standard-webhooks", secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_c2Vjb25kLXNlY3JldC1mb3Itcm90YXRpb24="], tolerance_secs = 300 }

[sinks.archive]
type = "file"
path = "{dir}/events.jsonl"

[routes.all]
from = ["partners"]
to = ["archive"]

[[policies]]
principal = "jwt:partner-a"
allow_types = ["com.partner-a.*"]
"#;

async fn send(
    url: &str,
    ty: &str,
    id: &str,
    extra: &[(&str, String)],
    body: &'static str,
) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(url)
        .header("ce-specversion", "1.0")
        .header("ce-id", id)
        .header("ce-source", "/partner-a")
        .header("ce-type", ty)
        .header("ce-authid", "spoofed");
    for (k, v) in extra {
        req = req.header(*k, v);
    }
    let resp = req.body(body).send().await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn jwt_tokens_are_verified() {
    let gw = TestGateway::start(&AUTH.replace("{keys}", KEYS)).await;
    let url = gw.url("partners", "/events");
    let bearer = |t: String| vec![("authorization", format!("Bearer {t}"))];

    let good = token(
        "rsa-private.pem",
        jsonwebtoken::Algorithm::RS256,
        claims("partner-a", 300, "ferry"),
    );
    let (status, _) = send(
        &url,
        "com.partner-a.order",
        "1",
        &bearer(good.clone()),
        "{}",
    )
    .await;
    assert_eq!(status, 202);
    let line = &gw.lines("events.jsonl")[0];
    assert_eq!(
        line["authid"], "partner-a",
        "the spoofed authid was replaced"
    );
    assert_eq!(line["authtype"], "user");

    // The policy for jwt:partner-a refuses other types.
    let (status, body) = send(&url, "com.other.order", "2", &bearer(good.clone()), "{}").await;
    assert_eq!(status, 403);
    assert_eq!(body["attribute"], "type");

    // The same token works as the access_token query parameter.
    let resp = reqwest::Client::new()
        .post(format!("{url}?access_token={good}"))
        .header("ce-specversion", "1.0")
        .header("ce-id", "3")
        .header("ce-source", "/partner-a")
        .header("ce-type", "com.partner-a.x")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);

    let rsa_public_as_secret = token(
        "rsa-public.pem",
        jsonwebtoken::Algorithm::HS256,
        claims("partner-a", 300, "ferry"),
    );
    let tampered = {
        let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
        use base64::Engine as _;
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut payload: Value =
            serde_json::from_slice(&engine.decode(&parts[1]).unwrap()).unwrap();
        payload["sub"] = "admin".into();
        parts[1] = engine.encode(payload.to_string());
        parts.join(".")
    };
    let none = {
        use base64::Engine as _;
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.",
            engine.encode(r#"{"alg":"none","typ":"JWT"}"#),
            engine.encode(claims("partner-a", 300, "ferry").to_string())
        )
    };
    let cases = [
        (
            "expired",
            token(
                "rsa-private.pem",
                jsonwebtoken::Algorithm::RS256,
                claims("partner-a", -120, "ferry"),
            ),
            "expired",
        ),
        (
            "wrong audience",
            token(
                "rsa-private.pem",
                jsonwebtoken::Algorithm::RS256,
                claims("partner-a", 300, "other"),
            ),
            "audience",
        ),
        (
            "wrong key",
            token(
                "rsa-other-private.pem",
                jsonwebtoken::Algorithm::RS256,
                claims("partner-a", 300, "ferry"),
            ),
            "signature",
        ),
        ("alg none", none, "algorithm"),
        (
            "HS256 with the RSA public key",
            rsa_public_as_secret,
            "algorithm",
        ),
        ("tampered", tampered, "signature"),
    ];
    for (name, t, reason) in cases {
        let (status, body) = send(&url, "com.partner-a.order", name, &bearer(t), "{}").await;
        assert_eq!(status, 401, "{name}");
        let detail = body["detail"].as_str().unwrap();
        assert!(detail.contains(reason), "{name}: {body}");
        assert!(
            detail.starts_with("The bearer token was refused: ") && detail.ends_with('.'),
            "{name}: a sentence saying what was refused: {body}"
        );
    }
    // Not yet valid (nbf in the future beyond the leeway).
    let mut c = claims("partner-a", 600, "ferry");
    c["nbf"] = (now() + 300).into();
    let (status, _) = send(
        &url,
        "com.partner-a.order",
        "nbf",
        &bearer(token("rsa-private.pem", jsonwebtoken::Algorithm::RS256, c)),
        "{}",
    )
    .await;
    assert_eq!(status, 401);
    // No credentials at all.
    assert_eq!(
        send(&url, "com.partner-a.order", "anon", &[], "{}").await.0,
        401
    );
    assert_eq!(gw.lines("events.jsonl").len(), 2);
}

fn standard_headers(
    secret: &str,
    id: &str,
    timestamp: u64,
    body: &[u8],
) -> Vec<(&'static str, String)> {
    vec![
        ("webhook-id", id.to_owned()),
        ("webhook-timestamp", timestamp.to_string()),
        (
            "webhook-signature",
            ferry::security::hmac::sign_standard_webhooks(secret, id, timestamp, body),
        ),
    ]
}

#[tokio::test]
async fn standard_webhooks_signatures_are_verified() {
    let gw = TestGateway::start(&AUTH.replace("{keys}", KEYS)).await;
    let url = gw.url("partners", "/events");
    let current = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let rotated_out = "whsec_c2Vjb25kLXNlY3JldC1mb3Itcm90YXRpb24=";
    let body: &'static str = r#"{"order": 1}"#;

    let first = standard_headers(current, "msg_1", now(), body.as_bytes());
    let (status, _) = send(&url, "com.partner-a.order", "1", &first, body).await;
    assert_eq!(status, 202);
    assert_eq!(gw.lines("events.jsonl")[0]["authid"], "partners");
    assert_eq!(gw.lines("events.jsonl")[0]["authtype"], "api_key");
    // Rotation: the other active secret works too.
    let (status, _) = send(
        &url,
        "com.partner-a.order",
        "2",
        &standard_headers(rotated_out, "msg_2", now(), body.as_bytes()),
        body,
    )
    .await;
    assert_eq!(status, 202);

    let refused = [
        (
            "tampered body",
            standard_headers(current, "msg_3", now(), br#"{"order": 2}"#),
            "mismatch",
        ),
        (
            "wrong secret",
            standard_headers(
                "whsec_d3Jvbmctc2VjcmV0LXdyb25nLXNlY3JldA==",
                "msg_4",
                now(),
                body.as_bytes(),
            ),
            "mismatch",
        ),
        (
            "stale timestamp",
            standard_headers(current, "msg_5", now() - 3600, body.as_bytes()),
            "stale",
        ),
        ("replayed request", first.clone(), "replayed"),
    ];
    for (name, headers, reason) in refused {
        let (status, p) = send(&url, "com.partner-a.order", name, &headers, body).await;
        assert_eq!(status, 401, "{name}");
        assert!(
            p["detail"].as_str().unwrap().contains(reason),
            "{name}: {p}"
        );
    }
    // A bad token is never ignored in favour of a valid signature (mode = "any").
    let mut mixed = standard_headers(current, "msg_6", now(), body.as_bytes());
    mixed.push(("authorization", "Bearer not.a.token".into()));
    assert_eq!(
        send(&url, "com.partner-a.order", "6", &mixed, body).await.0,
        401
    );
    assert_eq!(gw.lines("events.jsonl").len(), 2);
}

#[tokio::test]
async fn github_signatures_are_verified() {
    let text = AUTH.replace("{keys}", KEYS).replace(
        r#"hmac = { scheme = "standard-webhooks", secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_c2Vjb25kLXNlY3JldC1mb3Itcm90YXRpb24="], tolerance_secs = 300 }"#,
        r#"hmac = { scheme = "github", secrets = ["It's a Secret to Everybody"] }"#,
    );
    let gw = TestGateway::start(&text).await;
    let url = gw.url("partners", "/events");
    // GitHub's documented vector.
    let signature = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
    let (status, _) = send(
        &url,
        "t",
        "1",
        &[("x-hub-signature-256", signature.into())],
        "Hello, World!",
    )
    .await;
    assert_eq!(status, 202);
    let (status, _) = send(
        &url,
        "t",
        "2",
        &[("x-hub-signature-256", signature.into())],
        "Hello, World?",
    )
    .await;
    assert_eq!(status, 401);
}
