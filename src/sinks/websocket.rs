//! WebSocket sink (server push): clients connect and receive every event routed to the sink,
//! one structured-mode JSON event per text message, optionally narrowed by a filter.
//!
//! Filters are given on connect as query parameters, in the route filter dialect:
//! `?filter=<JSON filter>` (e.g. `{"prefix":{"type":"com.example."}}`) and/or
//! `?cesql=<expression>`; both must match when both are given.
//!
//! A slow client never blocks the gateway: each subscriber has a bounded queue (`queue`).
//! When it is full, `slow_client = "drop-oldest"` drops the oldest queued event (counted in
//! `ferry_websocket_dropped_total`), `"disconnect"` closes the connection with 1008.
//!
//! The sink confirms an event once it is queued for every connected subscriber whose filter
//! matches it (with none connected, at once): a live feed, not a durable one.
//!
//! With `tls` the listener speaks TLS (and mTLS with `client_ca`). With `auth`, a subscriber
//! authenticates at the upgrade like a source's sender (JWT as `Authorization: Bearer` or
//! `?access_token=`, or a client certificate); `[[policies]]` for its principal decide which
//! events it receives (`allow_types`, `allow_sources`), and its session ends with 1008 when its
//! token expires.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tracing::Instrument;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, StatusCode};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use super::driver::{self, Attempt, Publisher};
use super::{SinkContext, SinkError, SinkStats};
use crate::config::{SlowClient, WebSocketSinkConfig};
use crate::listener::Peer;
use crate::metrics::Metrics;
use crate::pipeline::{Envelope, SharedGeneration};
use crate::problem::Problem;
use crate::router::{DataCache, Filter, FilterConfig, Subject};
use crate::security::principal::Principal;
use crate::security::source::SourceSecurity;

/// How long a closing connection may take to accept its close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

struct Subscriber {
    filter: Option<Filter>,
    principal: Principal,
    /// When the subscriber's token stops being valid.
    expires: Option<tokio::time::Instant>,
    queue: Mutex<VecDeque<Utf8Bytes>>,
    notify: Notify,
    /// Cancelled when the subscriber must be disconnected for being too slow.
    kick: CancellationToken,
}

struct Hub {
    config: WebSocketSinkConfig,
    subscribers: RwLock<HashMap<u64, Arc<Subscriber>>>,
    next_id: AtomicU64,
    connections: Arc<Semaphore>,
    dropped: Counter,
    connected: Gauge,
    metrics: Metrics,
    name: Arc<str>,
    stop: CancellationToken,
    /// Connections are tracked so shutdown waits for their close frames.
    tracker: tokio_util::task::TaskTracker,
    security: SourceSecurity,
    generation: SharedGeneration,
}

/// Binds the listener and starts the sink task. Returns the bound address.
pub(super) async fn start(
    name: &Arc<str>,
    config: &WebSocketSinkConfig,
    rx: super::SinkQueue,
    stats: SinkStats,
    cx: &SinkContext,
) -> Result<SocketAddr, SinkError> {
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| SinkError::Open {
            sink: name.to_string(),
            path: config.listen.to_string(),
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| SinkError::Open {
        sink: name.to_string(),
        path: config.listen.to_string(),
        source,
    })?;
    let config_error = |message: String| SinkError::Config {
        sink: name.to_string(),
        message,
    };
    let security = SourceSecurity::build(name, config.auth.as_ref(), None, config.require_policy)
        .map_err(config_error)?;
    let tls = crate::listener::tls_handle(config.tls.as_ref(), &[b"http/1.1"])
        .map_err(|e| config_error(format!("tls: {e}")))?;
    let labels = Metrics::sink(name);
    let hub = Arc::new(Hub {
        config: config.clone(),
        subscribers: RwLock::new(HashMap::new()),
        next_id: AtomicU64::new(0),
        connections: Arc::new(Semaphore::new(config.max_connections)),
        dropped: cx.metrics.websocket_dropped.get_or_create(&labels).clone(),
        connected: cx.metrics.sink_connections.get_or_create(&labels).clone(),
        metrics: cx.metrics.clone(),
        name: Arc::clone(name),
        stop: CancellationToken::new(),
        tracker: cx.tracker.clone(),
        security,
        generation: Arc::clone(&cx.generation),
    });
    let app = Router::new()
        .route(&config.path, any(connect))
        .fallback(|| async {
            Problem::new(StatusCode::NOT_FOUND, "no WebSocket endpoint at this path")
        })
        .with_state(Arc::clone(&hub));
    let limits = crate::listener::Limits {
        max_connections: config.max_connections,
        ..crate::listener::Limits::DEFAULT
    };
    cx.tracker.spawn(
        crate::listener::serve(
            listener,
            tls,
            Arc::new(arc_swap::ArcSwap::from_pointee(limits)),
            app,
            hub.stop.clone(),
            cx.metrics.listener(format!("sink:{name}")),
        )
        .instrument(tracing::info_span!("sink", sink = %name)),
    );
    driver::spawn(Push(hub), rx, stats, PUSH_BATCH, cx);
    Ok(addr)
}

/// How many events the push sink hands to its subscribers' queues at once.
const PUSH_BATCH: usize = 256;

struct Push(Arc<Hub>);

impl Publisher for Push {
    type Link = ();
    const KIND: &'static str = "WebSocket push";

    async fn connect(&self, _lost: Option<&()>) -> Result<(), String> {
        Ok(())
    }

    fn batch(&self) -> usize {
        PUSH_BATCH
    }

    /// Queued for every connected subscriber whose filter matches: confirmed.
    fn publish(
        &self,
        _: &Arc<()>,
        events: &[Arc<Envelope>],
    ) -> impl std::future::Future<Output = Vec<Attempt>> + Send + 'static {
        for envelope in events {
            self.0.publish(envelope);
        }
        std::future::ready(events.iter().map(|_| Ok(())).collect())
    }

    /// The gateway is shutting down: subscribers get 1001 once their queues are sent.
    async fn close(&self, _: Arc<()>) {
        self.0.stop.cancel();
    }
}

impl Hub {
    fn publish(&self, envelope: &Envelope) {
        let data = DataCache::default();
        let subject = Subject::new(&envelope.event, &envelope.metadata, &data);
        let Ok(subscribers) = self.subscribers.read() else {
            return;
        };
        let mut text: Option<Utf8Bytes> = None;
        // Policies apply to authenticated subscribers.
        let generation = self.config.auth.is_some().then(|| self.generation.load());
        let event = &envelope.event;
        for sub in subscribers.values() {
            let allowed = generation.as_ref().is_none_or(|g| {
                g.policies
                    .authorize(
                        &sub.principal,
                        event.ty(),
                        event.source(),
                        self.config.require_policy,
                    )
                    .is_ok()
            });
            let wanted = allowed
                && match &sub.filter {
                    None => true,
                    Some(f) => f.matches(subject).unwrap_or(false),
                };
            if !wanted {
                continue;
            }
            // Encoded once per event, shared by every subscriber.
            let text = text
                .get_or_insert_with(|| ferry_websocket::encode(&envelope.event).into())
                .clone();
            let Ok(mut queue) = sub.queue.lock() else {
                continue;
            };
            if queue.len() >= self.config.queue {
                match self.config.slow_client {
                    SlowClient::DropOldest => {
                        queue.pop_front();
                        self.dropped.inc();
                    }
                    SlowClient::Disconnect => {
                        sub.kick.cancel();
                        continue;
                    }
                }
            }
            queue.push_back(text);
            drop(queue);
            sub.notify.notify_one();
        }
    }
}

#[derive(serde::Deserialize)]
struct ConnectQuery {
    filter: Option<String>,
    cesql: Option<String>,
}

async fn connect(
    State(hub): State<Arc<Hub>>,
    peer: Option<axum::Extension<Peer>>,
    headers: HeaderMap,
    uri: http::Uri,
    Query(q): Query<ConnectQuery>,
    ws: WebSocketUpgrade,
) -> Response {
    let peer = peer.map(|axum::Extension(p)| p);
    let authenticated = match hub
        .security
        .authenticate(peer.as_ref(), &headers, uri.query(), &[])
    {
        Ok(a) => a,
        Err(e) => return Problem::unauthenticated(e).into_response(),
    };
    let expires = authenticated.expires;
    let principal = authenticated.principal;
    if hub.config.require_policy {
        let generation = hub.generation.load();
        if let Err(denied) = generation.policies.authorize(&principal, "", "", true) {
            if denied.attribute.is_none() {
                return Problem::new(StatusCode::FORBIDDEN, denied.detail).into_response();
            }
        }
    }
    let expires = expires.map(crate::security::source::expiry_instant);
    let max = hub.config.max_filter_bytes;
    if [&q.filter, &q.cesql]
        .into_iter()
        .flatten()
        .any(|f| f.len() > max)
    {
        return Problem::new(
            StatusCode::BAD_REQUEST,
            format!("a filter is longer than max_filter_bytes ({max} bytes)"),
        )
        .into_response();
    }
    let filter = match compile_filter(&q) {
        Ok(f) => f,
        Err(detail) => return Problem::new(StatusCode::BAD_REQUEST, detail).into_response(),
    };
    let Ok(permit) = Arc::clone(&hub.connections).try_acquire_owned() else {
        return Problem::new(StatusCode::SERVICE_UNAVAILABLE, "too many connections")
            .retry_after(1)
            .into_response();
    };
    let tracked = hub.tracker.token();
    ws.protocols([ferry_websocket::SUBPROTOCOL_JSON])
        .read_buffer_size(4096)
        .write_buffer_size(4096)
        .on_upgrade(move |socket| async move {
            let _tracked = tracked;
            let _permit = permit;
            hub.connected.inc();
            serve(&hub, socket, filter, principal, expires).await;
        })
}

fn compile_filter(q: &ConnectQuery) -> Result<Option<Filter>, String> {
    let mut filters = Vec::new();
    if let Some(text) = &q.filter {
        let config: FilterConfig =
            serde_json::from_str(text).map_err(|e| format!("invalid `filter` parameter: {e}"))?;
        filters.push(
            Filter::compile(&config).map_err(|e| format!("invalid `filter` parameter: {e}"))?,
        );
    }
    if let Some(text) = &q.cesql {
        filters.push(
            Filter::compile(&FilterConfig::Cesql(text.clone()))
                .map_err(|e| format!("invalid `cesql` parameter: {e}"))?,
        );
    }
    Ok(match filters.len() {
        0 => None,
        1 => filters.pop(),
        _ => Some(Filter::All(filters)),
    })
}

async fn serve(
    hub: &Hub,
    socket: WebSocket,
    filter: Option<Filter>,
    principal: Principal,
    expires: Option<tokio::time::Instant>,
) {
    let sub = Arc::new(Subscriber {
        filter,
        principal,
        expires,
        queue: Mutex::new(VecDeque::with_capacity(16)),
        notify: Notify::new(),
        kick: CancellationToken::new(),
    });
    let id = hub.next_id.fetch_add(1, Ordering::Relaxed);
    if let Ok(mut subs) = hub.subscribers.write() {
        subs.insert(id, Arc::clone(&sub));
    }
    let (mut tx, mut rx) = socket.split();
    let ping_every = Duration::from_millis(hub.config.ping_interval_ms);
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    let close = loop {
        let next = sub.queue.lock().ok().and_then(|mut q| q.pop_front());
        if let Some(text) = next {
            tokio::select! {
                sent = tx.send(Message::Text(text)) => if sent.is_err() { break None },
                _ = sub.kick.cancelled() => break Some((1008, "too slow: send queue full")),
                _ = sleep_until(sub.expires), if sub.expires.is_some() => {
                    break Some((1008, "token expired"));
                }
            }
            // A busy feed never empties the queue: the expiry is checked between sends too.
            if sub
                .expires
                .is_some_and(|at| tokio::time::Instant::now() >= at)
            {
                break Some((1008, "token expired"));
            }
            continue;
        }
        tokio::select! {
            _ = sub.notify.notified() => {}
            _ = sub.kick.cancelled() => break Some((1008, "too slow: send queue full")),
            _ = sleep_until(sub.expires), if sub.expires.is_some() => {
                break Some((1008, "token expired"));
            }
            _ = ping.tick() => {
                if tx.send(Message::Ping(Bytes::new())).await.is_err() {
                    break None;
                }
            }
            incoming = rx.next() => match incoming {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break None,
                // Subscribers only listen; anything they send is ignored.
                Some(Ok(_)) => {}
            },
            _ = hub.stop.cancelled() => {
                // Send what is queued, then say goodbye.
                let rest: Vec<Utf8Bytes> = sub.queue.lock().map(|mut q| q.drain(..).collect()).unwrap_or_default();
                for text in rest {
                    if tx.send(Message::Text(text)).await.is_err() {
                        break;
                    }
                }
                break Some((1001, "server shutting down"));
            }
        }
    };
    if let Ok(mut subs) = hub.subscribers.write() {
        subs.remove(&id);
    }
    hub.connected.dec();
    let label = match close {
        None => "client",
        Some((1008, "token expired")) => "expired",
        Some((1008, _)) => "too_slow",
        Some(_) => "shutdown",
    };
    hub.metrics
        .websocket_closed(&format!("sink:{}", hub.name), label);
    if let Some((code, reason)) = close {
        // A subscriber that stopped reading may never make room for the close frame.
        let frame = Message::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        }));
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            if tx.send(frame).await.is_ok() {
                // Closing handshake: wait for the client's close frame.
                while let Some(Ok(m)) = rx.next().await {
                    if matches!(m, Message::Close(_)) {
                        break;
                    }
                }
            }
        })
        .await;
    }
    let _ = tx.close().await;
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
