//! The device listener (`type = "mqtt-server"`): IoT devices connect to Ferry itself over
//! MQTT 3.1.1 or 5.0, authenticate at CONNECT (client certificate, a JWT as the password,
//! or a username and password), and every PUBLISH becomes a CloudEvent under the same rules
//! as HTTP and WebSocket. A QoS 1 PUBACK (QoS 2 PUBREC) goes out only once every sink
//! confirmed; an MQTT 5 device is told why a publish was refused by reason code and string.
//!
//! - `wire`: packets through rumqttc's codecs; 3.1.1 packets are converted to the MQTT 5
//!   types at the edge, so the session layer speaks one dialect.
//! - `session`: one connection: CONNECT, keep-alive, publishes and their acknowledgements
//!   in order, subscriptions, will, takeover, DISCONNECT.
//! - here: the listener (TCP or TLS), the settings a reload swaps in place, and the
//!   registry of sessions by client id.

mod commands;
mod session;
mod wire;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{SourceContext, SourceError};
use crate::config::MqttServerSourceConfig;
use crate::listener::{Peer, TlsHandle};
use crate::metrics::{PacketLabels, RejectLabels, SourceLabels};
use crate::normalize::Normalizer;
use crate::security::source::SourceSecurity;
use crate::topic::AclPattern;

/// The settings of a running device listener that a reload replaces in place.
struct ServerState {
    config: MqttServerSourceConfig,
    cx: SourceContext,
    normalizer: Option<Normalizer>,
    security: SourceSecurity,
    publish_acl: Vec<AclPattern>,
    subscribe_acl: Vec<AclPattern>,
    connections: Arc<Semaphore>,
    /// Cancelled when a reload replaces these settings: open sessions then check their
    /// credentials against the new ones.
    superseded: CancellationToken,
}

/// A running device listener's live parts: its settings, its TLS, its sessions.
#[derive(Clone)]
pub struct Live {
    state: Arc<ArcSwap<ServerState>>,
    tls: TlsHandle,
    shared: Arc<Shared>,
}

/// New settings, built and checked, ready to swap in.
pub struct Prepared {
    state: ServerState,
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl Live {
    /// Builds the settings of `config` for this running listener; nothing changes yet. The
    /// connection limit carries over when it did not change, and so do the rate-limit
    /// buckets.
    pub fn prepare(
        &self,
        config: &MqttServerSourceConfig,
        cx: &SourceContext,
    ) -> Result<Prepared, SourceError> {
        let current = self.state.load();
        let connections = (current.config.max_connections == config.max_connections)
            .then(|| Arc::clone(&current.connections));
        let mut prepared = prepare(config, cx, connections)?;
        prepared.state.security.carry_over(&current.security);
        Ok(prepared)
    }

    /// Swaps prepared settings in: new connections use them, and open sessions check their
    /// credentials and topics against them.
    pub fn commit(&self, prepared: Prepared) {
        self.tls.store(prepared.tls);
        let old = self.state.swap(Arc::new(prepared.state));
        old.superseded.cancel();
    }
}

fn prepare(
    config: &MqttServerSourceConfig,
    cx: &SourceContext,
    connections: Option<Arc<Semaphore>>,
) -> Result<Prepared, SourceError> {
    let config_error = |message: String| SourceError::Config {
        source_name: cx.name().to_owned(),
        message,
    };
    let normalizer = super::normalizer(cx.name(), config.normalize.as_ref())?;
    let tls = (config.tls.as_ref())
        .map(|t| crate::tls::server_config(t, &[]))
        .transpose()
        .map_err(|e| config_error(format!("tls: {e}")))?;
    let security = SourceSecurity::build(
        cx.name(),
        config.auth.as_ref(),
        config.rate_limit.as_ref(),
        config.require_policy,
    )
    .map_err(config_error)?;
    let patterns = |key: &str, list: &[String]| {
        list.iter()
            .map(|p| AclPattern::parse(p).map_err(|m| config_error(format!("acl.{key}: {m}"))))
            .collect::<Result<Vec<_>, _>>()
    };
    let state = ServerState {
        publish_acl: patterns("publish", &config.acl.publish)?,
        subscribe_acl: patterns("subscribe", &config.acl.subscribe)?,
        superseded: CancellationToken::new(),
        security,
        normalizer,
        connections: connections
            .unwrap_or_else(|| Arc::new(Semaphore::new(config.max_connections))),
        config: config.clone(),
        cx: cx.clone(),
    };
    Ok(Prepared { state, tls })
}

/// What every connection of one listener shares across reloads.
struct Shared {
    sessions: Mutex<Sessions>,
    stats: ServerStats,
    /// The current settings (the queue bounds, for the command sinks).
    state: Arc<ArcSwap<ServerState>>,
    /// Payload bytes queued for sessions whose device is away.
    queued_bytes: std::sync::atomic::AtomicUsize,
}

/// Sessions by client id: the connection that holds each (for takeover) and what a
/// persistent session keeps while its device is away.
#[derive(Default)]
struct Sessions {
    by_client: HashMap<String, SessionEntry>,
    next_connection: u64,
}

struct SessionEntry {
    /// The connection holding the session, if one does.
    holder: Option<Holder>,
    /// A persistent session's state while no connection holds it.
    stored: Option<session::Stored>,
    /// Cancels a will waiting for its delay when the device comes back.
    will: Option<CancellationToken>,
}

struct Holder {
    id: u64,
    /// The connection's queue of commands, once it subscribed to something.
    outbound: Option<tokio::sync::mpsc::Sender<commands::Outbound>>,
    /// Its subscriptions, which the command sinks match topics against.
    subscriptions: Arc<Mutex<std::collections::BTreeMap<String, rumqttc::v5::mqttbytes::QoS>>>,
    /// Cancelled to make the connection give the session up (a takeover).
    take_over: CancellationToken,
    /// Closed when the connection ended and stored what it keeps.
    ended: tokio::sync::watch::Receiver<bool>,
}

/// The listener's counters, created once so the packet path does no label lookups.
struct ServerStats {
    connections: Gauge,
    sessions: Gauge,
    queued_bytes: Gauge,
    packets_in: HashMap<&'static str, Counter>,
    packets_out: HashMap<&'static str, Counter>,
    metrics: crate::metrics::Metrics,
    source: String,
}

impl ServerStats {
    fn new(source: &str, metrics: &crate::metrics::Metrics) -> ServerStats {
        let m = &metrics.mqtt_server;
        let packets = |direction| {
            wire::KINDS
                .iter()
                .map(|kind| {
                    let labels = PacketLabels {
                        source: source.to_owned(),
                        r#type: kind,
                        direction,
                    };
                    (*kind, m.packets.get_or_create(&labels).clone())
                })
                .collect()
        };
        let labels = SourceLabels {
            source: source.to_owned(),
        };
        ServerStats {
            connections: m.connections.get_or_create(&labels).clone(),
            sessions: m.sessions.get_or_create(&labels).clone(),
            queued_bytes: m.queued_bytes.get_or_create(&labels).clone(),
            packets_in: packets("in"),
            packets_out: packets("out"),
            metrics: metrics.clone(),
            source: source.to_owned(),
        }
    }

    fn packet_in(&self, kind: &'static str) {
        if let Some(c) = self.packets_in.get(kind) {
            c.inc();
        }
    }

    fn packet_out(&self, kind: &'static str) {
        if let Some(c) = self.packets_out.get(kind) {
            c.inc();
        }
    }

    /// A connection ended, by a fixed reason.
    fn closed(&self, reason: &'static str) {
        self.metrics
            .connections_closed
            .get_or_create(&crate::metrics::ClosedLabels {
                component: format!("source:{}", self.source),
                reason,
            })
            .inc();
    }

    /// A publish refused, by a fixed reason.
    fn refused(&self, reason: &'static str) {
        self.metrics
            .mqtt_server
            .publish_refused
            .get_or_create(&RejectLabels {
                source: self.source.clone(),
                reason,
            })
            .inc();
    }
}

/// Binds the listener (unless given one already bound) and serves until shutdown.
pub async fn start(
    config: &MqttServerSourceConfig,
    cx: SourceContext,
    bound: Option<TcpListener>,
) -> Result<(SocketAddr, Live), SourceError> {
    let prepared = prepare(config, &cx, None)?;
    let (listener, addr) = super::listen(cx.name(), config.listen, bound).await?;
    let state = Arc::new(ArcSwap::from_pointee(prepared.state));
    let live = Live {
        state: Arc::clone(&state),
        tls: Arc::new(ArcSwapOption::from(prepared.tls)),
        shared: Arc::new(Shared {
            sessions: Mutex::new(Sessions::default()),
            stats: ServerStats::new(cx.name(), &cx.stats.metrics),
            state,
            queued_bytes: Default::default(),
        }),
    };
    let hub_entry: Arc<dyn crate::mqtt_hub::Listener> = live.shared.clone();
    cx.mqtt_servers.register(cx.name(), &hub_entry);
    if let Some(ws) = &config.websocket {
        let (ws_listener, ws_addr) = super::listen(cx.name(), ws.listen, None).await?;
        tracing::info!(source = %cx.name(), addr = %ws_addr, path = %ws.path, "MQTT over WebSocket listening");
        cx.tracker.spawn(
            accept(ws_listener, live.clone(), cx.clone(), Transport::WebSocket).instrument(
                tracing::info_span!("source", source = %cx.name(), transport = "websocket"),
            ),
        );
    }
    cx.tracker.spawn(
        accept(listener, live.clone(), cx.clone(), Transport::Tcp)
            .instrument(tracing::info_span!("source", source = %cx.name())),
    );
    cx.set_ready(true);
    Ok((addr, live))
}

/// How MQTT packets travel on a listener.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Transport {
    /// MQTT over TCP (or TLS).
    Tcp,
    /// MQTT over WebSocket (§6): binary frames, subprotocol `mqtt`, on the configured path.
    WebSocket,
}

/// Takes connections until shutdown: each holds a place under `max_connections` from the
/// moment it is accepted (one more is closed at once), and has `connect_timeout_ms` for its
/// TLS handshake (and WebSocket upgrade) and its CONNECT.
async fn accept(listener: TcpListener, live: Live, cx: SourceContext, transport: Transport) {
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
            () = cx.shutdown.cancelled() => break,
        };
        let state = live.state.load_full();
        let Ok(permit) = Arc::clone(&state.connections).try_acquire_owned() else {
            cx.stats
                .metrics
                .connections_closed
                .get_or_create(&crate::metrics::ClosedLabels {
                    component: format!("source:{}", cx.name()),
                    reason: "limit",
                })
                .inc();
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let tls = live.tls.load_full();
        let live = live.clone();
        let connect_timeout = Duration::from_millis(state.config.connect_timeout_ms);
        cx.tracker.spawn(async move {
            let _permit = permit;
            match tls {
                None => {
                    let peer = Peer {
                        addr,
                        certificate_identity: None,
                    };
                    serve(stream, peer, &live, transport, connect_timeout).await;
                }
                Some(config) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(config);
                    match tokio::time::timeout(connect_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls_stream)) => {
                            let certificate_identity = tls_stream
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|chain| chain.first())
                                .and_then(crate::tls::peer_identity);
                            let peer = Peer {
                                addr,
                                certificate_identity,
                            };
                            // Boxed: a plain connection's task need not be sized for a
                            // TLS stream.
                            Box::pin(serve(tls_stream, peer, &live, transport, connect_timeout))
                                .await;
                        }
                        Ok(Err(e)) => tracing::debug!(%addr, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%addr, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

/// Serves one connection on its transport.
async fn serve<S>(io: S, peer: Peer, live: &Live, transport: Transport, timeout: Duration)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    match transport {
        Transport::Tcp => session::serve(io, peer, live).await,
        // Boxed: the upgrade and the WebSocket stream are large, and a TCP connection's task
        // need not be sized for them.
        Transport::WebSocket => Box::pin(serve_websocket(io, peer, live, timeout)).await,
    }
}

/// MQTT over WebSocket: the upgrade, then the session on the byte stream inside it.
async fn serve_websocket<S>(io: S, peer: Peer, live: &Live, timeout: Duration)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let path = live
        .state
        .load()
        .config
        .websocket
        .as_ref()
        .map_or_else(|| "/mqtt".to_owned(), |w| w.path.clone());
    match tokio::time::timeout(timeout, websocket::upgrade(io, &path)).await {
        Ok(Ok(io)) => session::serve(io, peer, live).await,
        Ok(Err(e)) => {
            tracing::debug!(peer = %peer.addr, error = %e, "MQTT WebSocket upgrade refused")
        }
        Err(_) => tracing::debug!(peer = %peer.addr, "MQTT WebSocket upgrade timed out"),
    }
}

/// MQTT over WebSocket (MQTT 5.0 §6, 3.1.1 §6): the upgrade on the configured path with the
/// `mqtt` subprotocol, and a byte stream over binary frames (a packet may span frames, and a
/// frame hold several packets; a text frame ends the connection [MQTT-6.0.0-1]).
mod websocket {
    use std::io;

    use bytes::Bytes;
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::{AsyncRead, AsyncWrite};
    use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
    use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
    use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_util::io::{CopyToBytes, SinkWriter, StreamReader};

    /// Upgrades `io` and returns the MQTT byte stream inside it.
    pub(super) async fn upgrade<S>(
        io: S,
        path: &str,
    ) -> Result<
        impl AsyncRead + AsyncWrite + Send + Unpin + 'static,
        tokio_tungstenite::tungstenite::Error,
    >
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        // The callback's type is tungstenite's (`Callback`): its error is a whole response.
        #[allow(clippy::result_large_err)]
        let check =
            |request: &Request, mut response: Response| -> Result<Response, ErrorResponse> {
                let refuse = |status: StatusCode, text: &str| {
                    let mut r = ErrorResponse::new(Some(text.to_owned()));
                    *r.status_mut() = status;
                    r
                };
                if request.uri().path() != path {
                    return Err(refuse(
                        StatusCode::NOT_FOUND,
                        "no MQTT endpoint at this path",
                    ));
                }
                let offered = request
                    .headers()
                    .get_all("sec-websocket-protocol")
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(|v| v.split(','))
                    .any(|p| p.trim() == "mqtt");
                if !offered {
                    return Err(refuse(
                        StatusCode::BAD_REQUEST,
                        "offer the `mqtt` subprotocol (Sec-WebSocket-Protocol)",
                    ));
                }
                response
                    .headers_mut()
                    .insert("sec-websocket-protocol", HeaderValue::from_static("mqtt"));
                Ok(response)
            };
        let config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(4096);
        let ws = tokio_tungstenite::accept_hdr_async_with_config(io, check, Some(config)).await?;
        let (sink, stream) = ws.split();
        let frames = stream
            .take_while(|m| std::future::ready(!matches!(m, Ok(Message::Close(_)))))
            .map(|m| match m {
                Ok(Message::Binary(b)) => Ok(b),
                Ok(Message::Text(_)) => Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "MQTT over WebSocket is carried in binary frames",
                )),
                Ok(_) => Ok(Bytes::new()),
                Err(e) => Err(io::Error::other(e)),
            });
        let writer = sink
            .sink_map_err(io::Error::other)
            .with(|b: Bytes| std::future::ready(Ok::<_, io::Error>(Message::Binary(b))));
        Ok(tokio::io::join(
            StreamReader::new(frames),
            SinkWriter::new(CopyToBytes::new(writer)),
        ))
    }
}

/// Reads every packet framed in `bytes` (see `crate::fuzzing::mqtt_server_packets`).
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn fuzz_packets(v5: bool, bytes: &[u8], max: usize) -> usize {
    use bytes::BytesMut;
    let version = if v5 {
        wire::Version::V5
    } else {
        wire::Version::V311
    };
    let _ = wire::connect_level(bytes, max);
    let mut buf = BytesMut::from(bytes);
    let mut read = 0;
    while let Ok(Some(packet)) = wire::read(version, &mut buf, max) {
        read += 1;
        let mut out = BytesMut::new();
        wire::write(version, &packet, &mut out);
        if out.is_empty() {
            continue;
        }
        match wire::read(version, &mut out, usize::MAX) {
            Ok(Some(again)) => assert_eq!(again, packet, "a written packet reads back the same"),
            other => panic!(
                "Ferry cannot read back the {} it wrote: {other:?}",
                wire::kind(&packet)
            ),
        }
    }
    read
}
