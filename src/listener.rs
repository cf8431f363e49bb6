//! The accept loop shared by every Ferry listener: plain TCP or TLS (with optional client
//! certificates), HTTP/1.1 and HTTP/2 with upgrades (WebSocket), and graceful shutdown.
//!
//! The TLS configuration and the [`Limits`] are read from their handles at each accept, so
//! swapping them (a new certificate, a reload) applies to new connections without refusing
//! any.
//!
//! Every connection is bounded in number and in time, so slow or idle clients cannot hold
//! what well-behaved ones need:
//!
//! - at most `max_connections` at once; one more is closed at once (counted as `limit`);
//! - a request head must arrive within `header_read_timeout` of the connection opening or of
//!   its first byte after the previous response (`header_timeout`);
//! - a connection with no request in progress and no bytes either way for `idle_timeout` is
//!   closed (`idle_timeout`); HTTP/2 connections are kept by their requests and pings, with
//!   no head timer (the protocol multiplexes heads).
//!
//! A connection upgraded to a WebSocket keeps its place under `max_connections` until the
//! session ends, and leaves the timers to the session.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

/// The live TLS configuration of a listener; `None` serves plain TCP.
pub type TlsHandle = Arc<ArcSwapOption<rustls::ServerConfig>>;

/// Builds the TLS handle of a listener from its optional `tls` table.
pub fn tls_handle(
    config: Option<&crate::tls::TlsConfig>,
    alpn: &[&[u8]],
) -> Result<TlsHandle, crate::tls::TlsError> {
    let server = config
        .map(|c| crate::tls::server_config(c, alpn))
        .transpose()?;
    Ok(Arc::new(ArcSwapOption::from(server)))
}

/// What the connection knows about its peer; a request extension.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    /// The identity of a verified client certificate (mTLS).
    pub certificate_identity: Option<String>,
}

/// The bounds of a listener's connections (docs/http.md, "Connections").
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
}

impl Limits {
    /// The bounds of listeners that have no keys of their own (the admin listener, the push
    /// sink).
    pub const DEFAULT: Limits = Limits {
        max_connections: 1024,
        header_read_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
    };
}

/// The live limits of a listener; a reload swaps them.
pub type LimitsHandle = Arc<ArcSwap<Limits>>;

/// What a listener counts: open connections, and connections it closed, by reason.
#[derive(Clone, Default)]
pub struct ListenerStats {
    pub connections: Option<Gauge>,
    /// `limit`, `header_timeout`, `idle_timeout`.
    pub closed: Option<Arc<dyn Fn(&'static str) -> Counter + Send + Sync>>,
}

impl ListenerStats {
    fn closed(&self, reason: &'static str) {
        if let Some(f) = &self.closed {
            f(reason).inc();
        }
    }
}

/// Serves `app` on `listener` until `shutdown`, then waits for open requests to finish.
pub async fn serve(
    listener: TcpListener,
    tls: TlsHandle,
    limits: LimitsHandle,
    app: Router,
    shutdown: CancellationToken,
    stats: ListenerStats,
) {
    let graceful = GracefulShutdown::new();
    let open = Arc::new(AtomicUsize::new(0));
    loop {
        let (stream, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let limits = limits.load_full();
        let Some(slot) = Slot::take(&open, limits.max_connections, stats.connections.clone())
        else {
            // Closing at once (rather than leaving it in the backlog) tells the client now.
            stats.closed("limit");
            tracing::debug!(%addr, max_connections = limits.max_connections, "connection limit reached; closing");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let tls = tls.load_full();
        let watcher = graceful.watcher();
        let stats = stats.clone();
        tokio::spawn(async move {
            let activity = Arc::new(Activity::new());
            let guard = ConnectionGuard {
                activity: Arc::clone(&activity),
                limits,
                stats,
            };
            match tls {
                None => {
                    let peer = Peer {
                        addr,
                        certificate_identity: None,
                    };
                    let io = Tracked::new(stream, Arc::clone(&activity), slot, None);
                    serve_connection(io, app, peer, watcher, guard).await;
                }
                Some(config) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(config);
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(tls_stream)) => {
                            let connection = tls_stream.get_ref().1;
                            let certificate_identity = connection
                                .peer_certificates()
                                .and_then(|chain| chain.first())
                                .and_then(crate::tls::peer_identity);
                            let h2 = Some(connection.alpn_protocol() == Some(b"h2"));
                            let peer = Peer {
                                addr,
                                certificate_identity,
                            };
                            let io = Tracked::new(tls_stream, Arc::clone(&activity), slot, h2);
                            serve_connection(io, app, peer, watcher, guard).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%addr, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%addr, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// A place under `max_connections`, held by the connection's IO (so an upgraded WebSocket
/// keeps it until the session ends).
struct Slot {
    open: Arc<AtomicUsize>,
    gauge: Option<Gauge>,
}

impl Slot {
    fn take(open: &Arc<AtomicUsize>, max: usize, gauge: Option<Gauge>) -> Option<Slot> {
        open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })
        .ok()?;
        if let Some(g) = &gauge {
            g.inc();
        }
        Some(Slot {
            open: Arc::clone(open),
            gauge,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        if let Some(g) = &self.gauge {
            g.dec();
        }
    }
}

/// What the timers of one connection look at. Times are milliseconds since `start`, plus
/// one, so that 0 can mean "not set".
struct Activity {
    start: Instant,
    /// The last byte read or written.
    last_io: AtomicU64,
    /// When the current request head started (its first byte, or the connection opening);
    /// 0 while a request is in progress or the connection is idle between requests.
    head_started: AtomicU64,
    in_flight: AtomicUsize,
    /// HTTP/2 (no head timer); decided by ALPN or by the connection preface.
    h2: AtomicBool,
    /// Whether the protocol is known yet.
    known: AtomicBool,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            start: Instant::now(),
            last_io: AtomicU64::new(1),
            // The first request's head is awaited from the start.
            head_started: AtomicU64::new(1),
            in_flight: AtomicUsize::new(0),
            h2: AtomicBool::new(false),
            known: AtomicBool::new(false),
        }
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64 + 1
    }

    fn at(&self, ms: u64) -> Instant {
        self.start + Duration::from_millis(ms.saturating_sub(1))
    }

    fn read(&self, bytes: &[u8]) {
        let now = self.now();
        self.last_io.store(now, Ordering::Relaxed);
        if !self.known.swap(true, Ordering::Relaxed) {
            self.h2
                .fetch_or(bytes.starts_with(b"PRI * HTTP/2.0"), Ordering::Relaxed);
        }
        if self.in_flight.load(Ordering::Acquire) == 0 && !self.h2.load(Ordering::Relaxed) {
            let _ = self
                .head_started
                .compare_exchange(0, now, Ordering::AcqRel, Ordering::Relaxed);
        }
    }

    fn wrote(&self) {
        self.last_io.store(self.now(), Ordering::Relaxed);
    }

    fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_started.store(0, Ordering::Release);
    }

    fn request_ended(&self) {
        self.wrote();
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    /// Why the connection should close now, or when to look again.
    fn check(&self, limits: &Limits) -> Result<Instant, &'static str> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            // Look again soon enough to hold the next head to its own timeout.
            return Ok(Instant::now() + limits.idle_timeout.min(limits.header_read_timeout));
        }
        let now = Instant::now();
        let head = self.head_started.load(Ordering::Acquire);
        if head != 0 && !self.h2.load(Ordering::Relaxed) {
            let deadline = self.at(head) + limits.header_read_timeout;
            return if now >= deadline {
                Err("header_timeout")
            } else {
                Ok(deadline)
            };
        }
        let deadline = self.at(self.last_io.load(Ordering::Relaxed)) + limits.idle_timeout;
        if now >= deadline {
            Err("idle_timeout")
        } else {
            Ok(deadline)
        }
    }
}

/// A connection's IO, noting its activity and holding its [`Slot`].
struct Tracked<I> {
    inner: I,
    activity: Arc<Activity>,
    _slot: Slot,
}

impl<I> Tracked<I> {
    fn new(inner: I, activity: Arc<Activity>, slot: Slot, h2: Option<bool>) -> Tracked<I> {
        if let Some(h2) = h2 {
            activity.h2.store(h2, Ordering::Relaxed);
            activity.known.store(true, Ordering::Relaxed);
        }
        // The head is awaited from here: a TLS handshake has its own timeout.
        let now = activity.now();
        activity.last_io.store(now, Ordering::Relaxed);
        activity.head_started.store(now, Ordering::Release);
        Tracked {
            inner,
            activity,
            _slot: slot,
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Tracked<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.read(&buf.filled()[before..]);
        }
        result
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Tracked<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.wrote();
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.wrote();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Ends a request's place in [`Activity::in_flight`] however the request ends.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_ended();
    }
}

/// What a connection's timers need besides its IO.
struct ConnectionGuard {
    activity: Arc<Activity>,
    limits: Arc<Limits>,
    stats: ListenerStats,
}

async fn serve_connection<I>(
    io: Tracked<I>,
    app: Router,
    peer: Peer,
    watcher: hyper_util::server::graceful::Watcher,
    guard: ConnectionGuard,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let addr = peer.addr;
    let activity = Arc::clone(&guard.activity);
    let service = tower::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let mut req = req.map(axum::body::Body::new);
        req.extensions_mut().insert(peer.clone());
        activity.request_started();
        let in_flight = InFlight(Arc::clone(&activity));
        let app = app.clone();
        async move {
            let response = app.oneshot(req).await;
            drop(in_flight);
            response
        }
    });
    let service = TowerToHyperService::new(service);
    let mut builder = Builder::new(TokioExecutor::new());
    // hyper's own head timer would also cut idle keep-alive connections at the head
    // timeout; the timers below tell the two apart.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(guard.limits.idle_timeout / 2))
        .keep_alive_timeout(Duration::from_secs(20));
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    let conn = watcher.watch(conn.into_owned());
    tokio::pin!(conn);
    loop {
        let next = match guard.activity.check(&guard.limits) {
            Ok(next) => next,
            Err(reason) => {
                // Dropping the connection closes it.
                guard.stats.closed(reason);
                tracing::debug!(%addr, reason, "closing a slow or idle connection");
                return;
            }
        };
        tokio::select! {
            result = &mut conn => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = tokio::time::sleep_until(next) => {}
        }
    }
}
