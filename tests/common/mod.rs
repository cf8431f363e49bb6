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
pub(crate) struct TestGateway {
    pub gateway: Gateway,
    pub dir: tempfile::TempDir,
}

impl TestGateway {
    /// Starts a gateway from config text. `{dir}` in the text is replaced by a fresh
    /// temporary directory.
    pub(crate) async fn start(text: &str) -> TestGateway {
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

    pub(crate) fn url(&self, source: &str, path: &str) -> String {
        format!(
            "http://{}{path}",
            self.gateway.source_addr(source).expect("source")
        )
    }

    pub(crate) fn admin(&self, path: &str) -> String {
        format!("http://{}{path}", self.gateway.admin_addr().expect("admin"))
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The JSON lines a file sink wrote (complete ones: a line still being written, without
    /// its newline yet, is left for the next look).
    pub(crate) fn lines(&self, name: &str) -> Vec<serde_json::Value> {
        match std::fs::read_to_string(self.path(name)) {
            Ok(text) => text
                .split_inclusive('\n')
                .filter(|l| l.ends_with('\n'))
                .map(|l| serde_json::from_str(l).expect("each line is JSON"))
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    pub(crate) async fn metrics(&self) -> String {
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
pub(crate) struct Received {
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A local HTTP endpoint: records each POST and answers with the current status.
pub(crate) struct Receiver {
    pub addr: SocketAddr,
    pub rx: mpsc::UnboundedReceiver<Received>,
    status: Arc<AtomicU16>,
    retry_after: Arc<std::sync::Mutex<Option<String>>>,
    delay_ms: Arc<std::sync::atomic::AtomicU64>,
}

impl Receiver {
    pub(crate) async fn start() -> Receiver {
        Receiver::start_on("127.0.0.1:0".parse().expect("addr")).await
    }

    /// A receiver on a given address (to bring back a target that was down).
    pub(crate) async fn start_on(addr: SocketAddr) -> Receiver {
        ferry::tls::install_default_provider();
        let delay_ms = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (tx, rx) = mpsc::unbounded_channel();
        let status = Arc::new(AtomicU16::new(200));
        let retry_after = Arc::new(std::sync::Mutex::new(None::<String>));
        type Shared = (
            mpsc::UnboundedSender<Received>,
            Arc<AtomicU16>,
            Arc<std::sync::Mutex<Option<String>>>,
            Arc<std::sync::atomic::AtomicU64>,
        );
        let app = Router::new()
            .route(
                "/{*path}",
                post(
                    |State((tx, status, retry_after, delay_ms)): State<Shared>,
                     headers: HeaderMap,
                     body: Bytes| async move {
                        let delay = delay_ms.load(Ordering::SeqCst);
                        if delay > 0 {
                            tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
                        }
                        // The answer is fixed before the request is reported, so a test
                        // that changes it on receipt changes the next answer only.
                        let status = StatusCode::from_u16(status.load(Ordering::SeqCst))
                            .unwrap_or(StatusCode::OK);
                        let mut out = HeaderMap::new();
                        if let Some(v) = retry_after.lock().unwrap().clone() {
                            out.insert("retry-after", v.parse().unwrap());
                        }
                        let _ = tx.send(Received { headers, body });
                        (status, out)
                    },
                ),
            )
            .with_state((
                tx,
                Arc::clone(&status),
                Arc::clone(&retry_after),
                Arc::clone(&delay_ms),
            ));
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver {
            addr,
            rx,
            status,
            retry_after,
            delay_ms,
        }
    }

    /// Answers each request only after this long.
    pub(crate) fn set_delay_ms(&self, ms: u64) {
        self.delay_ms.store(ms, Ordering::SeqCst);
    }

    pub(crate) fn set_status(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    /// A `Retry-After` header on every answer (`None`: no header).
    pub(crate) fn set_retry_after(&self, value: Option<&str>) {
        *self.retry_after.lock().unwrap() = value.map(str::to_owned);
    }
}

/// A loopback address nothing listens on.
pub(crate) async fn closed_port() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    l.local_addr().expect("addr")
}

/// A JSON event without the `traceparent`/`tracestate` Ferry adds when none came in (after
/// checking that what is there is a valid trace context).
pub(crate) fn without_trace(mut line: serde_json::Value) -> serde_json::Value {
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
pub(crate) fn event_without_trace(mut event: ferry_core::CloudEvent) -> ferry_core::CloudEvent {
    event.remove_extension("traceparent");
    event
}

/// The real `ferry` binary running a config, killed on drop (also when a test fails).
pub(crate) struct FerryProcess {
    pub child: std::process::Child,
    /// `source listening` / `sink listening` addresses by component name.
    pub addrs: std::collections::BTreeMap<String, String>,
    pub admin: String,
    /// Every log line so far (stderr is read by a thread until the process ends).
    pub log: Arc<std::sync::Mutex<Vec<String>>>,
    /// Woken each time a log line arrives.
    log_grew: Arc<tokio::sync::Notify>,
}

impl FerryProcess {
    /// Writes `config` to `dir/ferry.toml` and runs `ferry run` in `dir`; returns once it
    /// started (every listener is up).
    pub(crate) fn start(dir: &Path, config: &str) -> FerryProcess {
        use std::io::BufRead as _;
        ferry::tls::install_default_provider();
        let path = dir.join("ferry.toml");
        std::fs::write(&path, config).expect("write config");
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["run", "--log-format", "json", "--config"])
            .arg(&path)
            .current_dir(dir)
            // The config's `[log] level` decides, whatever the test runner's environment says.
            .env_remove("RUST_LOG")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn ferry");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log_grew = Arc::new(tokio::sync::Notify::new());
        let grew = Arc::clone(&log_grew);
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line.clone());
                grew.notify_waiters();
                let _ = tx.send(line);
            }
        });
        let mut process = FerryProcess {
            child,
            addrs: Default::default(),
            admin: String::new(),
            log,
            log_grew,
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let Ok(line) = rx.recv_timeout(left) else {
                panic!(
                    "ferry did not start listening:\n{}",
                    process.log.lock().unwrap().join("\n")
                );
            };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            let fields = &v["fields"];
            let addr = fields["addr"].as_str().map(str::to_owned);
            match (fields["message"].as_str(), addr) {
                (Some("admin listening"), Some(a)) => process.admin = a,
                (Some("source listening"), Some(a)) => {
                    let name = fields["source"].as_str().unwrap_or_default().to_owned();
                    process.addrs.insert(name, a);
                }
                (Some("ferry started"), _) => break,
                _ => {}
            }
        }
        process
    }

    pub(crate) fn url(&self, source: &str, path: &str) -> String {
        format!("http://{}{path}", self.addrs[source])
    }

    /// Waits until `found` finds what it looks for in the log lines so far, at most `timeout`;
    /// woken by each new line.
    pub(crate) async fn wait_log<T>(
        &self,
        what: &str,
        timeout: std::time::Duration,
        mut found: impl FnMut(&[String]) -> Option<T>,
    ) -> T {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Registered before looking, so a line that arrives in between still wakes us.
            let grew = self.log_grew.notified();
            tokio::pin!(grew);
            grew.as_mut().enable();
            if let Some(t) = found(&self.log.lock().unwrap()) {
                return t;
            }
            if tokio::time::timeout_at(deadline, grew).await.is_err() {
                panic!(
                    "timed out waiting for {what} in the log:\n{}",
                    self.log.lock().unwrap().join("\n")
                );
            }
        }
    }

    pub(crate) fn admin(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (`"TERM"`, `"KILL"`).
    pub(crate) fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for the exit, at most `timeout`.
    pub(crate) fn wait(&mut self, timeout: std::time::Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "ferry did not exit in {timeout:?}"
            );
            #[allow(clippy::disallowed_methods)]
            // synchronous code polling a child process or a clock, off any runtime
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Resident memory in KiB (`VmRSS` of /proc/<pid>/status).
    pub(crate) fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    pub(crate) async fn metrics(&self) -> String {
        reqwest::get(self.admin("/metrics"))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    }
}

impl Drop for FerryProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of a metric line such as `ferry_events_delivered_total{sink="out"}`; 0 when
/// absent.
pub(crate) fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A loopback endpoint that accepts connections and never answers (a stalled target).
pub(crate) async fn stalled_endpoint() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = l.accept().await {
            held.push(conn);
        }
    });
    addr
}

/// A private broker process of one test (nats-server, mosquitto) on its own port, with its
/// files in `dir`; killed when dropped, also when the test fails.
pub(crate) struct Broker {
    pub child: std::process::Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl Broker {
    /// Starts `program` and waits until it accepts connections on `port` (the signal that it
    /// is up).
    pub(crate) fn spawn(
        program: &str,
        args: &[String],
        port: u16,
        dir: tempfile::TempDir,
    ) -> Broker {
        use std::process::{Command, Stdio};
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{program} must be installed: {e}"));
        let mut broker = Broker { child, port, dir };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = broker.child.try_wait() {
                panic!("{program} exited: {status}");
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{program} did not listen"
            );
            #[allow(clippy::disallowed_methods)]
            // synchronous code polling a child process or a clock, off any runtime
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        broker
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Eight random hex digits: part of the names (topics, queues, streams, client ids) one test
/// uses, so tests run in parallel against the shared brokers.
pub(crate) fn suffix() -> String {
    format!("{:08x}", rand::random::<u32>())
}

/// `prefix.` and a UUID v7: a name no other test uses.
pub(crate) fn unique(prefix: &str) -> String {
    format!("{prefix}.{}", uuid::Uuid::now_v7().simple())
}

/// Polls `check` every 25 ms until it yields a value, and returns it; fails naming `what`
/// after `within`.
pub(crate) async fn eventually<T, F, Fut>(
    within: std::time::Duration,
    what: &str,
    mut check: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}

/// Polls `check` every 25 ms until it is true; fails naming `what` after `within`.
pub(crate) async fn until<F, Fut>(within: std::time::Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually(within, what, || {
        let done = check();
        async move { done.await.then_some(()) }
    })
    .await;
}

/// Waits until the gateway's `/readyz` answers 200.
pub(crate) async fn ready(gw: &TestGateway, within: std::time::Duration) {
    let url = gw.admin("/readyz");
    eventually(within, "the gateway to be ready", || async {
        let r = reqwest::get(&url).await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
}
