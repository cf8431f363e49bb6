//! Helpers shared by the integration tests: start a gateway on loopback from config text,
//! and a local HTTP receiver that records what it gets.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use axum::Router;
use ferry::{Config, Gateway};
use http::{HeaderMap, StatusCode};
use tokio::sync::mpsc;

/// A gateway started in-process, with a scratch directory for its files.
pub struct TestGateway {
    pub gateway: Gateway,
    pub dir: tempfile::TempDir,
}

impl TestGateway {
    /// Starts a gateway from config text. `{dir}` in the text is replaced by a fresh
    /// temporary directory.
    pub async fn start(text: &str) -> TestGateway {
        ferry::tls::install_default_provider();
        // `FERRY_TEST_LOG=ferry=debug cargo test …` shows the gateway's logs of a test.
        if let Ok(filter) = std::env::var("FERRY_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_test_writer()
                .try_init();
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let text = text.replace("{dir}", dir.path().to_str().expect("utf-8 path"));
        let config = Config::from_str_at(&text, Path::new("test.toml"), &|_| None).expect("config");
        let gateway = Gateway::start(config).await.expect("gateway starts");
        TestGateway { gateway, dir }
    }

    pub fn url(&self, source: &str, path: &str) -> String {
        format!(
            "http://{}{path}",
            self.gateway.source_addr(source).expect("source")
        )
    }

    pub fn admin(&self, path: &str) -> String {
        format!("http://{}{path}", self.gateway.admin_addr().expect("admin"))
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The JSON lines a file sink wrote.
    pub fn lines(&self, name: &str) -> Vec<serde_json::Value> {
        match std::fs::read_to_string(self.path(name)) {
            Ok(text) => text
                .lines()
                .map(|l| serde_json::from_str(l).expect("each line is JSON"))
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(self.admin("/metrics"))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    }
}

/// A request the receiver got.
#[derive(Debug)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A local HTTP endpoint: records each POST and answers with the current status.
pub struct Receiver {
    pub addr: SocketAddr,
    pub rx: mpsc::UnboundedReceiver<Received>,
    status: Arc<AtomicU16>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        ferry::tls::install_default_provider();
        let (tx, rx) = mpsc::unbounded_channel();
        let status = Arc::new(AtomicU16::new(200));
        let app = Router::new()
            .route(
                "/{*path}",
                post(
                    |State((tx, status)): State<(
                        mpsc::UnboundedSender<Received>,
                        Arc<AtomicU16>,
                    )>,
                     headers: HeaderMap,
                     body: Bytes| async move {
                        let _ = tx.send(Received { headers, body });
                        StatusCode::from_u16(status.load(Ordering::SeqCst))
                            .unwrap_or(StatusCode::OK)
                    },
                ),
            )
            .with_state((tx, Arc::clone(&status)));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { addr, rx, status }
    }

    pub fn set_status(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }
}

/// A loopback address nothing listens on.
pub async fn closed_port() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    l.local_addr().expect("addr")
}

/// A JSON event without the `traceparent`/`tracestate` Ferry adds when none came in (after
/// checking that what is there is a valid trace context).
pub fn without_trace(mut line: serde_json::Value) -> serde_json::Value {
    if let Some(obj) = line.as_object_mut() {
        if let Some(t) = obj.remove("traceparent") {
            assert!(
                ferry::trace::is_valid(t.as_str().unwrap_or_default()),
                "{t}"
            );
        }
    }
    line
}

/// The same for a decoded event.
pub fn event_without_trace(mut event: ferry_core::CloudEvent) -> ferry_core::CloudEvent {
    event.remove_extension("traceparent");
    event
}
