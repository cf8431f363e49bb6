//! WebSocket source: devices and browsers send one CloudEvent per text message and get an
//! acknowledgement event back for each once the routed sinks confirmed it.
//!
//! The source has its own listener (an axum route that answers the upgrade itself and runs
//! tokio-tungstenite on the upgraded connection, so the closing handshake can reach the raw
//! input). Per
//! connection, a reader takes messages while fewer than `max_in_flight` are unacknowledged
//! (then it stops reading: backpressure), and a writer sends acknowledgements and pings. An
//! invalid event gets an error acknowledgement and the connection stays open; a binary frame on
//! a `cloudevents.json` connection closes it with 1003, an oversized message with 1009, and
//! the expiry of the JWT the connection authenticated with closes it with 1008. On
//! shutdown the source stops reading, sends the outstanding acknowledgements, then closes with
//! 1001 (going away).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;

use arc_swap::{ArcSwap, ArcSwapOption};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Router;
use bytes::Bytes;
use ferry_core::{CloudEvent, EventError, TransportMetadata};
use ferry_websocket::{AckData, MessageError, Negotiated};
use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use super::{SourceContext, SourceError};
use crate::config::WebSocketSourceConfig;
use crate::listener::{Peer, TlsHandle};
use crate::normalize::{Normalizer, Raw};
use crate::pipeline::{self, Envelope};
use crate::problem::Problem;
use crate::security::principal::{Method, Principal};
use crate::security::source::SourceSecurity;

/// Close codes (RFC 6455 §7.4.1).
mod close {
    pub(super) const NORMAL: u16 = 1000;
    pub(super) const GOING_AWAY: u16 = 1001;
    pub(super) const UNSUPPORTED_DATA: u16 = 1003;
    pub(super) const POLICY: u16 = 1008;
    pub(super) const TOO_BIG: u16 = 1009;
}

/// Initial read and write buffer per connection (tungstenite grows them as needed).
const BUFFER: usize = 4096;

/// How long a closing connection may take to answer our close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// An upgraded client connection.
type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

struct SourceState {
    config: WebSocketSourceConfig,
    cx: SourceContext,
    normalizer: Option<Normalizer>,
    security: SourceSecurity,
    connections: Arc<Semaphore>,
    /// `source` of acknowledgement events.
    ack_source: String,
    /// Cancelled when a reload replaces these settings: open sessions then check their
    /// credentials against the new ones.
    superseded: CancellationToken,
}

/// The parts of a running WebSocket source that a reload replaces in place: upgrades and TLS
/// handshakes read them as they start; open connections keep the settings they started with,
/// except that a session authenticated by a JWT is closed (1008) when the new settings no
/// longer accept its token (a removed key or secret).
#[derive(Clone)]
pub struct Live {
    state: Arc<ArcSwap<SourceState>>,
    tls: TlsHandle,
}

/// A source's settings, built and checked, ready to swap in.
pub struct Prepared {
    state: SourceState,
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl Live {
    /// Builds the settings of `config` for this running source; nothing changes yet. The
    /// connection limit carries over when it did not change, so open connections count; so
    /// do the replay cache and the rate-limit buckets (see [`SourceSecurity::carry_over`]).
    pub fn prepare(
        &self,
        config: &WebSocketSourceConfig,
        cx: &SourceContext,
    ) -> Result<Prepared, SourceError> {
        let current = self.state.load();
        let connections = (current.config.max_connections == config.max_connections)
            .then(|| Arc::clone(&current.connections));
        let mut prepared = prepare(config, cx, connections)?;
        prepared.state.security.carry_over(&current.security);
        Ok(prepared)
    }

    /// Swaps prepared settings in: the next upgrade and the next handshake use them.
    pub fn commit(&self, prepared: Prepared) {
        self.tls.store(prepared.tls);
        let old = self.state.swap(Arc::new(prepared.state));
        old.superseded.cancel();
    }
}

fn prepare(
    config: &WebSocketSourceConfig,
    cx: &SourceContext,
    connections: Option<Arc<Semaphore>>,
) -> Result<Prepared, SourceError> {
    let config_error = |message: String| SourceError::Config {
        source_name: cx.name().to_owned(),
        message,
    };
    let normalizer = super::normalizer(cx.name(), config.normalize.as_ref())?;
    let tls = (config.tls.as_ref())
        .map(|t| crate::tls::server_config(t, &[b"http/1.1"]))
        .transpose()
        .map_err(|e| config_error(format!("tls: {e}")))?;
    let security = SourceSecurity::build(
        cx.name(),
        config.auth.as_ref(),
        config.rate_limit.as_ref(),
        config.require_policy,
    )
    .map_err(config_error)?;
    let state = SourceState {
        superseded: CancellationToken::new(),
        security,
        config: config.clone(),
        normalizer,
        connections: connections
            .unwrap_or_else(|| Arc::new(Semaphore::new(config.max_connections))),
        ack_source: format!("/ferry/sources/{}", cx.name()),
        cx: cx.clone(),
    };
    Ok(Prepared { state, tls })
}

/// Binds the listener (unless given one already bound) and serves until shutdown.
pub async fn start(
    config: &WebSocketSourceConfig,
    cx: SourceContext,
    bound: Option<TcpListener>,
) -> Result<(SocketAddr, Live), SourceError> {
    let prepared = prepare(config, &cx, None)?;
    let (listener, addr) = super::listen(cx.name(), config.listen, bound).await?;
    let live = Live {
        state: Arc::new(ArcSwap::from_pointee(prepared.state)),
        tls: Arc::new(ArcSwapOption::from(prepared.tls)),
    };
    let app = Router::new()
        .fallback(upgrade)
        .with_state(Arc::clone(&live.state));
    // The listener's bounds: sessions count against `max_connections` from the moment
    // they connect, and a client has the usual time to send its upgrade request.
    let limits = crate::listener::Limits {
        max_connections: config.max_connections,
        idle_timeout: Duration::from_millis(config.idle_timeout_ms),
        ..crate::listener::Limits::DEFAULT
    };
    cx.tracker.spawn(
        crate::listener::serve(
            listener,
            Arc::clone(&live.tls),
            Arc::new(arc_swap::ArcSwap::from_pointee(limits)),
            app,
            cx.shutdown.clone(),
            cx.stats.metrics.listener(format!("source:{}", cx.name())),
        )
        .instrument(tracing::info_span!("source", source = %cx.name())),
    );
    cx.set_ready(true);
    Ok((addr, live))
}

async fn upgrade(
    State(live): State<Arc<ArcSwap<SourceState>>>,
    request: axum::extract::Request,
) -> Response {
    let state = live.load_full();
    if request.uri().path() != state.config.path {
        return Problem::new(StatusCode::NOT_FOUND, "no WebSocket endpoint at this path")
            .into_response();
    }
    let (mut parts, _body) = request.into_parts();
    let peer = parts.extensions.get::<Peer>().cloned();
    // Dropped on every refusal below, which releases a verified signature's replay record
    // (the client's retry must pass); accepted once the upgrade goes ahead.
    let authenticated =
        match state
            .security
            .authenticate(peer.as_ref(), &parts.headers, parts.uri.query(), &[])
        {
            Ok(a) => a,
            Err(e) => {
                state.cx.stats.reject("unauthenticated", 1);
                return Problem::unauthenticated(e).into_response();
            }
        };
    let offered: Vec<String> = parts
        .headers
        .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|t| t.trim().to_owned()))
        .collect();
    let mode = ferry_websocket::negotiate(
        offered.iter().map(String::as_str),
        state.normalizer.is_some(),
    );
    if mode == Negotiated::Refused {
        let mut p = Problem::new(
            StatusCode::BAD_REQUEST,
            "offer the `cloudevents.json` subprotocol (Sec-WebSocket-Protocol); this source does not accept raw messages",
        );
        p.header = Some("sec-websocket-protocol".into());
        state.cx.stats.reject("invalid", 1);
        return p.into_response();
    }
    let accept = match handshake(&parts) {
        Ok(accept) => accept,
        Err(p) => return (*p).into_response(),
    };
    let Some(on_upgrade) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() else {
        return Problem::new(
            StatusCode::UPGRADE_REQUIRED,
            "this connection cannot be upgraded to a WebSocket",
        )
        .into_response();
    };
    let Ok(permit) = Arc::clone(&state.connections).try_acquire_owned() else {
        state.cx.stats.reject("connection_limit", 1);
        return Problem::new(StatusCode::SERVICE_UNAVAILABLE, "too many connections")
            .retry_after(1)
            .into_response();
    };
    authenticated.accept();
    let expires = authenticated.expires;
    let principal = authenticated.principal;
    let credentials = (principal.method == Method::Jwt)
        .then(|| (parts.headers.clone(), parts.uri.query().map(str::to_owned)));
    let mut metadata = ferry_http::metadata(&parts.headers);
    metadata.push_property("principal", principal.to_string());
    if let Some(peer) = &peer {
        metadata.push_property("peer.ip", peer.addr.ip().to_canonical().to_string());
    }
    let ip = peer.map(|p| p.addr.ip());
    let limits = WebSocketConfig::default()
        .max_message_size(Some(state.config.max_message_bytes))
        .max_frame_size(Some(state.config.max_message_bytes))
        // Small buffers that grow with the traffic: idle devices should cost little memory.
        .read_buffer_size(BUFFER)
        .write_buffer_size(BUFFER);
    let mut response = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(http::header::CONNECTION, "upgrade")
        .header(http::header::UPGRADE, "websocket")
        .header(http::header::SEC_WEBSOCKET_ACCEPT, accept);
    if mode == Negotiated::Json {
        response = response.header(
            http::header::SEC_WEBSOCKET_PROTOCOL,
            ferry_websocket::SUBPROTOCOL_JSON,
        );
    }
    let tracker = state.cx.tracker.clone();
    tracker.spawn(async move {
        let _permit = permit;
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(source = %state.cx.name(), error = %e, "WebSocket upgrade failed");
                return;
            }
        };
        let socket =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(limits))
                .await;
        state.cx.stats.connections.inc();
        Connection {
            state: &state,
            live,
            credentials,
            mode,
            metadata: Arc::new(metadata),
            principal,
            expires,
            ip,
        }
        .run(socket)
        .await;
        state.cx.stats.connections.dec();
    });
    response
        .body(axum::body::Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// The moment a unix time (seconds) is reached, on the tokio clock.
/// Checks an upgrade request (RFC 6455 §4.2.1) and returns its `Sec-WebSocket-Accept`.
fn handshake(parts: &http::request::Parts) -> Result<String, Box<Problem>> {
    let header = |name: http::HeaderName| {
        parts
            .headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect::<Vec<_>>()
    };
    let refuse = |status: StatusCode, detail: &str, name: &str| {
        let mut p = Problem::new(status, detail);
        p.header = Some(name.into());
        Box::new(p)
    };
    if parts.method != http::Method::GET {
        return Err(Box::new(Problem::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "a WebSocket upgrade is a GET request",
        )));
    }
    let upgrade = header(http::header::UPGRADE);
    let connection = header(http::header::CONNECTION);
    if !upgrade.iter().any(|t| t.eq_ignore_ascii_case("websocket"))
        || !connection.iter().any(|t| t.eq_ignore_ascii_case("upgrade"))
    {
        return Err(refuse(
            StatusCode::UPGRADE_REQUIRED,
            "this endpoint takes WebSocket upgrades only (Connection: Upgrade, Upgrade: websocket)",
            "upgrade",
        ));
    }
    if header(http::header::SEC_WEBSOCKET_VERSION) != ["13"] {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "Sec-WebSocket-Version must be 13",
            "sec-websocket-version",
        ));
    }
    let key = parts
        .headers
        .get(http::header::SEC_WEBSOCKET_KEY)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| {
            refuse(
                StatusCode::BAD_REQUEST,
                "Sec-WebSocket-Key is missing",
                "sec-websocket-key",
            )
        })?;
    Ok(tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()))
}

struct Connection<'a> {
    state: &'a Arc<SourceState>,
    /// The source's current settings, to check `credentials` against after a reload.
    live: Arc<ArcSwap<SourceState>>,
    /// What a JWT session authenticated with (headers, query); `None` for other methods,
    /// which a reload does not re-check.
    credentials: Option<Credentials>,
    mode: Negotiated,
    metadata: Arc<TransportMetadata>,
    principal: Principal,
    /// When the JWT the connection authenticated with expires (unix seconds, leeway
    /// included): the session ends then.
    expires: Option<u64>,
    ip: Option<std::net::IpAddr>,
}

type Credentials = (http::HeaderMap, Option<String>);

/// The close reason of a session whose key or secret a reload removed.
const REVOKED: &str = "credentials revoked by a reload";

/// Why the reader stopped.
enum End {
    Client,
    Shutdown,
    Idle,
    Close(u16, &'static str),
}

impl Connection<'_> {
    /// After a reload: the current settings if they still accept this session's credentials,
    /// `None` if they do not.
    fn recheck(&self) -> Option<Arc<SourceState>> {
        let current = self.live.load_full();
        if let Some((headers, query)) = &self.credentials {
            if !current
                .security
                .bearer_still_valid(headers, query.as_deref())
            {
                return None;
            }
        }
        Some(current)
    }

    async fn run(self, socket: Socket) {
        let config = &self.state.config;
        let (mut sink, mut stream) = socket.split();
        let (out_tx, mut out_rx) = mpsc::channel::<Message>(config.max_in_flight + 8);
        let ping_every = Duration::from_millis(config.ping_interval_ms);
        // A client that takes no frame for `idle_timeout_ms` (it stopped reading) is gone: the
        // writer gives up, so acknowledgements, the close and the session's slot are not held
        // by it until shutdown, or after.
        let write_timeout = Duration::from_millis(config.idle_timeout_ms);
        let stalled = tokio_util::sync::CancellationToken::new();
        let writer_stalled = stalled.clone();
        let writer = tokio::spawn(async move {
            let mut ping =
                tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
            loop {
                let message = tokio::select! {
                    m = out_rx.recv() => match m {
                        Some(m) => m,
                        None => break,
                    },
                    _ = ping.tick() => Message::Ping(Bytes::new()),
                };
                let closing = matches!(message, Message::Close(_));
                match tokio::time::timeout(write_timeout, sink.send(message)).await {
                    Ok(Ok(())) if !closing => {}
                    Ok(_) => break,
                    Err(_) => {
                        writer_stalled.cancel();
                        return sink;
                    }
                }
            }
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.close()).await;
            sink
        });

        let in_flight = Arc::new(Semaphore::new(config.max_in_flight));
        let idle = Duration::from_millis(config.idle_timeout_ms);
        let shutdown = self.state.cx.shutdown.clone();
        // A read error ends the frame stream for good (tokio-tungstenite fuses it).
        let mut read_failed = false;
        let expiry = self.expires.map(crate::security::source::expiry_instant);
        let expired = async {
            match expiry {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(expired);
        let mut superseded = Box::pin(self.state.superseded.clone().cancelled_owned());
        let end = loop {
            // At the in-flight limit, stop reading until an acknowledgement went out.
            let permit = tokio::select! {
                p = Arc::clone(&in_flight).acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break End::Shutdown,
                },
                _ = shutdown.cancelled() => break End::Shutdown,
                // The writer gave up on a client that reads nothing: stop reading too.
                () = stalled.cancelled() => break End::Client,
                () = &mut expired => break End::Close(close::POLICY, "token expired"),
                () = &mut superseded => match self.recheck() {
                    Some(current) => {
                        superseded = Box::pin(current.superseded.clone().cancelled_owned());
                        continue;
                    }
                    None => break End::Close(close::POLICY, REVOKED),
                },
            };
            let next = tokio::select! {
                n = tokio::time::timeout(idle, stream.next()) => n,
                _ = shutdown.cancelled() => break End::Shutdown,
                // The writer gave up on a client that reads nothing: stop reading too.
                () = stalled.cancelled() => break End::Client,
                () = &mut expired => break End::Close(close::POLICY, "token expired"),
                () = &mut superseded => match self.recheck() {
                    Some(current) => {
                        superseded = Box::pin(current.superseded.clone().cancelled_owned());
                        drop(permit);
                        continue;
                    }
                    None => break End::Close(close::POLICY, REVOKED),
                },
            };
            let message = match next {
                Err(_) => break End::Idle,
                Ok(None) => break End::Client,
                Ok(Some(Err(e))) => {
                    read_failed = true;
                    break end_for_error(e);
                }
                Ok(Some(Ok(m))) => m,
            };
            let body = match message {
                Message::Text(text) => Bytes::from(text),
                Message::Binary(bytes) if self.mode == Negotiated::Raw => bytes,
                Message::Binary(_) => {
                    self.state.cx.stats.reject("invalid", 1);
                    break End::Close(
                        close::UNSUPPORTED_DATA,
                        "cloudevents.json carries text frames only",
                    );
                }
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
                Message::Close(_) => break End::Client,
            };
            let received = Instant::now();
            match self.decode(body.clone()) {
                Ok(event) => {
                    let id = event.id().to_owned();
                    let envelope = Envelope::new(event, Arc::clone(&self.metadata));
                    self.spawn_delivery(envelope, id, received, permit, out_tx.clone())
                        .await;
                }
                Err(error) => {
                    let problem = Problem::from(ferry_http::DecodeError::Invalid {
                        header: None,
                        error,
                    });
                    self.state.cx.stats.reject(problem.reason(), 1);
                    let id = self.readable_id(&body);
                    let _ = out_tx.send(self.ack_message(id.as_deref(), &problem)).await;
                }
            }
        };
        // Every outstanding acknowledgement goes out before the close frame.
        let _ = in_flight.acquire_many(config.max_in_flight as u32).await;
        let too_slow = stalled.is_cancelled();
        let (code, reason, label) = match end {
            _ if too_slow => (
                close::POLICY,
                "too slow: acknowledgements not read",
                "too_slow",
            ),
            End::Client => (close::NORMAL, "bye", "client"),
            End::Shutdown => (close::GOING_AWAY, "server shutting down", "shutdown"),
            End::Idle => (close::NORMAL, "idle timeout", "idle"),
            End::Close(code, reason) if code == close::TOO_BIG => (code, reason, "too_large"),
            End::Close(code, reason @ REVOKED) => (code, reason, "revoked"),
            End::Close(code, reason) if code == close::POLICY => (code, reason, "expired"),
            End::Close(code, reason) => (code, reason, "protocol_violation"),
        };
        let stats = &self.state.cx.stats;
        stats
            .metrics
            .websocket_closed(&format!("source:{}", stats.name), label);
        if label == "too_large" {
            stats.reject("too_large", 1);
        }
        let _ = out_tx
            .send(Message::Close(Some(CloseFrame {
                code: CloseCode::from(code),
                reason: Utf8Bytes::from_static(reason),
            })))
            .await;
        drop(out_tx);
        let sink = writer.await;
        // Closing handshake: wait (bounded) for the client's close frame before dropping the
        // socket, so the client reads ours instead of a connection reset.
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async move {
            if !read_failed {
                loop {
                    match stream.next().await {
                        Some(Ok(Message::Close(_))) | None => return,
                        Some(Ok(_)) => {}
                        Some(Err(_)) => break,
                    }
                }
            }
            // The frame stream ended on an error (an oversized message, typically with more
            // of it still arriving): read and discard the raw input until the client closes,
            // so the socket is not closed with unread data, which would reset the connection
            // and destroy our close frame before the client read it.
            let Ok(sink) = sink else { return };
            let Ok(mut socket) = stream.reunite(sink) else {
                return;
            };
            let mut discard = vec![0u8; BUFFER];
            while matches!(socket.get_mut().read(&mut discard).await, Ok(n) if n > 0) {}
        })
        .await;
    }

    /// The `id` of a text message that is not a valid event, when it can be read (JSON
    /// connections only: a raw message has no id of its own).
    fn readable_id(&self, body: &[u8]) -> Option<String> {
        if self.mode != Negotiated::Json {
            return None;
        }
        ferry_websocket::event_id(std::str::from_utf8(body).ok()?)
    }

    fn decode(&self, body: Bytes) -> Result<CloudEvent, EventError> {
        match (self.mode, &self.state.normalizer) {
            (Negotiated::Raw, Some(n)) => n.apply(Raw {
                metadata: &self.metadata,
                body,
                content_type: None,
                message_id: None,
            }),
            _ => {
                let text = std::str::from_utf8(&body)
                    .map_err(|_| EventError::malformed("text message is not UTF-8"))?;
                ferry_websocket::decode_text(text).map_err(|e| match e {
                    MessageError::Invalid(error) => error,
                    MessageError::BinaryFrame => EventError::malformed("binary frame"),
                })
            }
        }
    }

    /// Routes the event and, in a tracked task, sends its acknowledgement once the sinks
    /// answered. The in-flight permit is released after the acknowledgement was queued.
    async fn spawn_delivery(
        &self,
        envelope: Envelope,
        id: String,
        received: Instant,
        permit: tokio::sync::OwnedSemaphorePermit,
        out: mpsc::Sender<Message>,
    ) {
        let state = Arc::clone(self.state);
        let config = &state.config;
        let enqueue = Duration::from_millis(config.enqueue_timeout_ms);
        let refuse = |problem: Problem| {
            state.cx.stats.reject(problem.reason(), 1);
            ack_message(&state.ack_source, Some(&id), Some(&problem))
        };
        if let Err(wait) = state.security.rate_limit(&self.principal, self.ip, 1) {
            let _ = out.send(refuse(Problem::rate_limited(wait))).await;
            return;
        }
        let generation = state.cx.generation.load_full();
        let mut envelopes = vec![envelope];
        match state.security.authorize(
            &generation.policies,
            &self.principal,
            envelopes.iter_mut().map(|e| &mut e.event),
        ) {
            Ok(grants) => pipeline::grant_routes(&mut envelopes, grants),
            Err((_, denied)) => {
                let _ = out.send(refuse(Problem::forbidden(0, denied, false))).await;
                return;
            }
        }
        let ingested = pipeline::ingest_with(
            &generation,
            &state.cx.stats,
            envelopes,
            config.unrouted,
            enqueue,
        )
        .await;
        drop(generation);
        let waiter = match ingested {
            Ok(w) => w,
            Err(e) => {
                let problem = Problem::from_ingest(e, false);
                state.cx.stats.reject(problem.reason(), 1);
                let _ = out
                    .send(ack_message(&state.ack_source, Some(&id), Some(&problem)))
                    .await;
                return;
            }
        };
        let tracker = state.cx.tracker.clone();
        tracker.spawn(async move {
            let timeout = Duration::from_millis(state.config.ack_timeout_ms);
            let problem = match tokio::time::timeout(timeout, waiter.wait()).await {
                Ok(outcome) => Problem::from_outcome(outcome),
                Err(_) => Some(Problem::ack_timeout(state.config.ack_timeout_ms)),
            };
            match &problem {
                None => {
                    state.cx.stats.accepted.inc();
                    state
                        .cx
                        .stats
                        .ack_latency
                        .observe(received.elapsed().as_secs_f64());
                }
                Some(p) => state.cx.stats.reject(p.reason(), 1),
            }
            let _ = out
                .send(ack_message(&state.ack_source, Some(&id), problem.as_ref()))
                .await;
            drop(permit);
        });
    }

    fn ack_message(&self, id: Option<&str>, problem: &Problem) -> Message {
        ack_message(&self.state.ack_source, id, Some(problem))
    }
}

/// An acknowledgement event as a text message.
fn ack_message(source: &str, id: Option<&str>, problem: Option<&Problem>) -> Message {
    let data = match problem {
        None => AckData {
            id,
            status: 202,
            title: None,
            detail: None,
            attribute: None,
        },
        Some(p) => AckData {
            id,
            status: p.status.as_u16(),
            title: Some(p.title),
            detail: Some(&p.detail),
            attribute: p.attribute.as_deref(),
        },
    };
    match ferry_websocket::ack(source, &data) {
        Ok(event) => Message::Text(ferry_websocket::encode(&event).into()),
        Err(e) => {
            tracing::error!(error = %e, "cannot build an acknowledgement");
            Message::Text(Utf8Bytes::from_static("{}"))
        }
    }
}

fn end_for_error(e: tokio_tungstenite::tungstenite::Error) -> End {
    match e {
        tokio_tungstenite::tungstenite::Error::Capacity(_) => {
            End::Close(close::TOO_BIG, "message too big")
        }
        _ => End::Client,
    }
}
