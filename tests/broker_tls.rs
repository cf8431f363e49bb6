//! TLS to brokers over real handshakes: a private nats-server and a private Mosquitto, each on
//! a random loopback port with certificates from `ferry certs dev`, requiring client
//! certificates. Events flow HTTP → broker sink → broker source → file; a client that does not
//! trust the server's CA, or brings no certificate, is refused.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Broker, TestGateway};
use ferry::security::secret::Secret;
use ferry::security::signing::{SignConfig, SignScheme, SIGNATURE_ATTRIBUTE};
use ferry::tls::ClientTlsConfig;

const WAIT: Duration = Duration::from_secs(15);
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Development certificates, and a second CA the brokers do not trust.
struct Certs {
    dir: tempfile::TempDir,
}

impl Certs {
    fn new() -> Certs {
        let dir = tempfile::tempdir().unwrap();
        ferry::certs::generate_dev(&dir.path().join("dev")).unwrap();
        ferry::certs::generate(&dir.path().join("other"), "Another CA", "spiffe://x/y").unwrap();
        Certs { dir }
    }

    fn dev(&self, file: &str) -> PathBuf {
        self.dir.path().join("dev").join(file)
    }

    fn other(&self, file: &str) -> PathBuf {
        self.dir.path().join("other").join(file)
    }

    /// A `tls = {…}` table with the dev CA and, if `client`, the dev client certificate.
    fn table(&self, ca: &Path, client: bool) -> String {
        let mut t = format!("tls = {{ ca = \"{}\"", ca.display());
        if client {
            t.push_str(&format!(
                ", cert = \"{}\", key = \"{}\"",
                self.dev("client.pem").display(),
                self.dev("client.key").display()
            ));
        }
        t + " }"
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Broker {
    /// nats-server with TLS on a random port, requiring client certificates.
    fn nats(certs: &Certs) -> Broker {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let path = |f: &str| certs.dev(f).display().to_string();
        let args: Vec<String> = [
            "-a",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "--tls",
            "--tlscert",
            &path("server.pem"),
            "--tlskey",
            &path("server.key"),
            "--tlscacert",
            &path("ca.pem"),
            "--tlsverify",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        Broker::spawn("/usr/sbin/nats-server", &args, port, dir)
    }

    /// Mosquitto with a TLS listener on a random port, requiring client certificates.
    fn mosquitto(certs: &Certs) -> Broker {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                // `user`: run as root, Mosquitto would otherwise switch to an account that
                // cannot read the private temporary directory.
                "user root\nper_listener_settings false\nallow_anonymous true\npersistence false\n\
                 listener {port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n\
                 require_certificate true\n",
                certs.dev("ca.pem").display(),
                certs.dev("server.pem").display(),
                certs.dev("server.key").display(),
            ),
        )
        .unwrap();
        let args = vec!["-c".to_owned(), conf.display().to_string()];
        Broker::spawn("/usr/sbin/mosquitto", &args, port, dir)
    }
}

async fn post(gw: &TestGateway, id: &str) -> reqwest::StatusCode {
    reqwest::Client::new()
        .post(gw.url("web", "/events"))
        .header("ce-specversion", "1.0")
        .header("ce-id", id)
        .header("ce-source", "/tls-test")
        .header("ce-type", "com.example.tls")
        .header("ce-time", "2026-01-02T03:04:05.678+01:00")
        .header("content-type", "application/json")
        .body(r#"{"over": "tls"}"#)
        .send()
        .await
        .unwrap()
        .status()
}

/// The gateway: HTTP → `sink` (a broker sink) and `source` (a broker source) → file.
fn gateway_config(sink: &str, source: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[sources.web]
type = "http"
listen = "127.0.0.1:0"
path = "/events"
ack_timeout_ms = 5000

{source}

[sinks.out]
{sink}

[sinks.archive]
type = "file"
path = "{{dir}}/events.jsonl"

[routes.out]
from = ["web"]
to = ["out"]

[routes.back]
from = ["in"]
to = ["archive"]
"#
    )
}

/// Waits for the archived event and checks the signature the broker sink added.
async fn archived_and_signed(gw: &TestGateway, id: &str) {
    let line = common::eventually(WAIT, "the event to come back over TLS", || async {
        gw.lines("events.jsonl").into_iter().find(|l| l["id"] == id)
    })
    .await;
    assert_eq!(line["data"], serde_json::json!({"over": "tls"}));
    // Decoded from the line as written: re-serialising it would change the data bytes.
    let raw = std::fs::read_to_string(gw.path("events.jsonl")).unwrap();
    let raw = raw
        .lines()
        .find(|l| l.contains(&format!("\"{id}\"")))
        .unwrap();
    let event = ferry_core::json::decode(raw.as_bytes()).unwrap();
    let signature = line[SIGNATURE_ATTRIBUTE].as_str().expect("a signature");
    let signer = SignConfig {
        scheme: SignScheme::HmacSha256,
        secret: Secret::new(SECRET),
    }
    .signer()
    .unwrap();
    assert!(signer.verify_event(&event, signature), "{line}");
    let other = SignConfig {
        scheme: SignScheme::HmacSha256,
        secret: Secret::new("another secret"),
    }
    .signer()
    .unwrap();
    assert!(!other.verify_event(&event, signature));
}

#[tokio::test]
async fn nats_over_tls_with_client_certificates() {
    let certs = Certs::new();
    let nats = Broker::nats(&certs);
    let sfx = common::suffix();
    let url = format!("tls://127.0.0.1:{}", nats.port);
    let tls = certs.table(&certs.dev("ca.pem"), true);
    let gw = TestGateway::start(&gateway_config(
        &format!(
            "type = \"nats\"\nurl = \"{url}\"\nsubject = \"t{sfx}.events\"\n{tls}\n\
             sign = {{ scheme = \"hmac-sha256\", secret = \"{SECRET}\" }}"
        ),
        &format!(
            "[sources.in]\ntype = \"nats\"\nurl = \"nats://127.0.0.1:{}\"\nsubject = \"t{sfx}.>\"\n{tls}",
            nats.port
        ),
    ))
    .await;
    common::ready(&gw, WAIT).await;
    assert_eq!(post(&gw, "n1").await, 202);
    archived_and_signed(&gw, "n1").await;
    gw.gateway.shutdown().await;

    // The same connect options Ferry uses, refused: a client that does not trust the
    // server's CA, and one without a client certificate.
    for (what, tls) in [
        (
            "another CA",
            ClientTlsConfig {
                ca: Some(certs.other("ca.pem").into()),
                cert: Some(certs.dev("client.pem").into()),
                key: Some(certs.dev("client.key").into()),
                server_name: None,
            },
        ),
        (
            "no client certificate",
            ClientTlsConfig {
                ca: Some(certs.dev("ca.pem").into()),
                ..Default::default()
            },
        ),
    ] {
        let connected = ferry::config::nats_connect_options(Some(&tls))
            .unwrap()
            .connection_timeout(Duration::from_secs(5))
            .connect(url.as_str())
            .await;
        let client = match connected {
            Err(_) => continue,
            Ok(client) => client,
        };
        // TLS 1.3 client certificates are checked after the client's handshake finished:
        // the server then drops the connection before it is usable.
        let refused = client.flush().await.is_err()
            || client.connection_state() != async_nats::connection::State::Connected;
        assert!(refused, "{what}: connected");
    }
}

#[tokio::test]
async fn mqtt_over_tls_with_client_certificates() {
    let certs = Certs::new();
    let broker = Broker::mosquitto(&certs);
    let sfx = common::suffix();
    let url = format!("mqtts://127.0.0.1:{}", broker.port);
    let tls = certs.table(&certs.dev("ca.pem"), true);
    let gw = TestGateway::start(&gateway_config(
        &format!(
            "type = \"mqtt\"\nurl = \"{url}\"\ntopic = \"t{sfx}/{{type}}\"\n{tls}\n\
             sign = {{ scheme = \"hmac-sha256\", secret = \"{SECRET}\" }}"
        ),
        &format!("[sources.in]\ntype = \"mqtt\"\nurl = \"{url}\"\ntopics = [\"t{sfx}/#\"]\n{tls}"),
    ))
    .await;
    common::ready(&gw, WAIT).await;
    assert_eq!(post(&gw, "m1").await, 202);
    archived_and_signed(&gw, "m1").await;
    gw.gateway.shutdown().await;
}

#[tokio::test]
async fn mqtt_sinks_that_fail_the_handshake_are_not_ready() {
    let certs = Certs::new();
    let broker = Broker::mosquitto(&certs);
    let url = format!("mqtts://127.0.0.1:{}", broker.port);
    for (what, tls) in [
        ("another CA", certs.table(&certs.other("ca.pem"), true)),
        (
            "no client certificate",
            certs.table(&certs.dev("ca.pem"), false),
        ),
    ] {
        let mut gw_config = gateway_config(
            &format!("type = \"mqtt\"\nurl = \"{url}\"\ntopic = \"refused/{{type}}\"\n{tls}"),
            "[sources.in]\ntype = \"http\"\nlisten = \"127.0.0.1:0\"",
        );
        // The undelivered event stays queued: shutdown gives up on it quickly.
        gw_config = gw_config
            .replace("ack_timeout_ms = 5000", "ack_timeout_ms = 1500")
            .replace("[admin]", "shutdown_timeout_ms = 200\n\n[admin]");
        let gw = TestGateway::start(&gw_config).await;
        // Not delivered: once the sink failed to connect, events for it are refused at once.
        common::until(WAIT, "a failed connection attempt", || async {
            let metrics = gw.metrics().await;
            common::metric(&metrics, "ferry_sink_connect_failures_total{sink=\"out\"}") >= 1.0
        })
        .await;
        assert_eq!(post(&gw, "x").await, 503, "{what}");
        let body = reqwest::get(gw.admin("/readyz"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(body.contains("sink:out"), "{what}: {body}");
        gw.gateway.shutdown().await;
    }
}

/// A TLS front for the shared RabbitMQ (which must not be reconfigured): terminates TLS with
/// the dev server certificate, requires a client certificate from the dev CA, and forwards the
/// bytes to 127.0.0.1:5672. Lapin's TLS path runs a real handshake against it.
async fn rabbitmq_tls_front(certs: &Certs) -> (u16, tokio::task::JoinHandle<()>) {
    let tls = ferry::tls::TlsConfig {
        cert: certs.dev("server.pem").into(),
        key: certs.dev("server.key").into(),
        client_ca: Some(certs.dev("ca.pem").into()),
        client_auth: None,
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(ferry::tls::server_config(&tls, &[]).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut broker = tokio::net::TcpStream::connect("127.0.0.1:5672")
                    .await
                    .expect("RabbitMQ must run on 127.0.0.1:5672 (scripts/brokers)");
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut broker).await;
            });
        }
    });
    (port, task)
}

#[tokio::test]
async fn amqp_over_tls_with_client_certificates() {
    let certs = Certs::new();
    let (port, front) = rabbitmq_tls_front(&certs).await;
    let sfx = common::suffix();
    let url = format!("amqps://guest:guest@127.0.0.1:{port}/%2f");
    let tls = certs.table(&certs.dev("ca.pem"), true);
    let gw = TestGateway::start(&gateway_config(
        &format!(
            "type = \"amqp\"\nurl = \"{url}\"\nexchange = \"\"\nrouting_key = \"tls-{sfx}\"\n{tls}\n\
             sign = {{ scheme = \"hmac-sha256\", secret = \"{SECRET}\" }}"
        ),
        &format!(
            "[sources.in]\ntype = \"amqp\"\nurl = \"{url}\"\nqueue = \"tls-{sfx}\"\n{tls}\n\
             declare = {{ durable = false, auto_delete = true }}"
        ),
    ))
    .await;
    common::ready(&gw, WAIT).await;
    assert_eq!(post(&gw, "a1").await, 202);
    archived_and_signed(&gw, "a1").await;
    gw.gateway.shutdown().await;
    front.abort();
}

#[test]
fn unreadable_tls_material_is_a_config_error_naming_the_key() {
    let certs = Certs::new();
    let text = format!(
        r#"
[sinks.out]
type = "nats"
url = "tls://127.0.0.1:4222"
subject = "x"
tls = {{ ca = "{}", cert = "{}", key = "{}" }}
"#,
        certs.dev("ca.pem").display(),
        certs.dev("client.pem").display(),
        certs.dev("server.key").display(),
    );
    let err = ferry::Config::from_str_at(&text, Path::new("ferry.toml"), &|_| None).unwrap_err();
    let shown = err.to_string();
    assert!(shown.starts_with("ferry.toml:6:"), "{shown}");
    assert_eq!(err.key.as_deref(), Some("sinks.out.tls.key"), "{shown}");
    assert!(shown.contains("do not match"), "{shown}");

    for (text, key) in [
        (
            "[sinks.out]\ntype = \"mqtt\"\nurl = \"mqtt://127.0.0.1\"\ntopic = \"x\"\ntls = { ca = \"/nonexistent/ca.pem\" }\n",
            "sinks.out.tls",
        ),
        (
            "[sinks.out]\ntype = \"mqtt\"\nurl = \"mqtts://127.0.0.1\"\ntopic = \"x\"\ntls = { ca = \"/nonexistent/ca.pem\" }\n",
            "sinks.out.tls.ca",
        ),
        (
            "[sources.in]\ntype = \"amqp\"\nurl = \"amqps://127.0.0.1\"\nqueue = \"q\"\ntls = { ca = \"/nonexistent/ca.pem\" }\n",
            "sources.in.tls.ca",
        ),
        (
            "[sinks.out]\ntype = \"http\"\nurl = \"https://127.0.0.1/\"\ntls = { ca = \"/nonexistent/ca.pem\" }\n",
            "sinks.out.tls.ca",
        ),
    ] {
        let err = ferry::Config::from_str_at(text, Path::new("ferry.toml"), &|_| None).unwrap_err();
        assert_eq!(err.key.as_deref(), Some(key), "{err}");
        assert!(err.line.is_some(), "{err}");
    }
}
