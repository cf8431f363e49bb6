//! One device connection, from CONNECT to its end.
//!
//! The connection reads packets while it may (a 3.1.1 connection stops reading at
//! `receive_maximum` unanswered publishes: TCP pushes back on the device; an MQTT 5 device
//! that sends more than the Receive Maximum it was given is disconnected with 0x93). Each
//! QoS 1 and 2 publish is routed at once and its answer is queued behind the earlier ones, so
//! PUBACKs and PUBRECs go out in the order the publishes came [MQTT-4.6.0-2], each once every
//! sink confirmed. A QoS 2 publish is delivered once: a repeat of a packet id that is waiting
//! for its PUBREL is answered again without delivering it again.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use ferry_core::{FailureKind, Outcome};
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesOrdered;
use futures_util::{FutureExt, StreamExt};
use rumqttc::v5::mqttbytes::v5::{self as p5, Packet};
use rumqttc::v5::mqttbytes::QoS;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::commands::{Outbound, Queued};
use super::wire::{self, ReadError, Version};
use super::{Holder, Live, ServerState, SessionEntry, Shared};
use crate::listener::Peer;
use crate::normalize::Raw;
use crate::pipeline::{self, Envelope, IngestError, Waiter};
use crate::problem::Problem;
use crate::security::principal::{Method, Principal};
use crate::security::source::ConnectRefusal;
use crate::topic::{self, AclVars};

mod commands;
mod connect;
mod end;
mod publish;

use commands::recv_outbound;
use connect::{read_connect, ConnectError};
use publish::Answer;

/// How long a takeover waits for the connection that held the session to end.
const TAKEOVER_WAIT: Duration = Duration::from_secs(5);

/// Longest reason string sent to a device.
const MAX_REASON: usize = 200;

/// Longest client identifier accepted.
const MAX_CLIENT_ID: usize = 256;

/// What a persistent session keeps while its device is away (in memory: it does not
/// survive a restart).
pub(super) struct Stored {
    pub(super) subscriptions: BTreeMap<String, QoS>,
    awaiting_release: HashSet<u16>,
    /// QoS 1 commands for the device, kept until it is back.
    pub(super) queued: Queued,
    /// When the session ends; `None`: never.
    expires: Option<tokio::time::Instant>,
}

impl Stored {
    pub(super) fn expired(&self) -> bool {
        self.expires
            .is_some_and(|at| at <= tokio::time::Instant::now())
    }
}

/// Who is connected: what ACL patterns and transport metadata name.
#[derive(Clone)]
struct Identity {
    version: Version,
    client_id: String,
    username: Option<String>,
    principal: Principal,
    peer: Peer,
    /// The ACL patterns rendered for this connection.
    publish_acl: Vec<String>,
    subscribe_acl: Vec<String>,
}

impl Identity {
    fn render(&mut self, state: &ServerState) {
        let principal = self.principal.to_string();
        let vars = AclVars {
            client_id: &self.client_id,
            username: self.username.as_deref(),
            principal: &principal,
        };
        self.publish_acl = state
            .publish_acl
            .iter()
            .filter_map(|p| p.render(&vars))
            .collect();
        self.subscribe_acl = state
            .subscribe_acl
            .iter()
            .filter_map(|p| p.render(&vars))
            .collect();
    }

    /// Whether the device may publish to `topic`: one of the source's `topics`, and (with
    /// an `acl.publish`) one of its patterns.
    fn may_publish(&self, state: &ServerState, topic: &str) -> bool {
        state.config.topics.iter().any(|f| topic::matches(topic, f))
            && (state.publish_acl.is_empty()
                || self.publish_acl.iter().any(|f| topic::matches(topic, f)))
    }

    /// Whether the device may subscribe to `filter` (everything, without `acl.subscribe`).
    fn may_subscribe(&self, state: &ServerState, filter: &str) -> bool {
        state.subscribe_acl.is_empty()
            || self.subscribe_acl.iter().any(|a| topic::covers(a, filter))
    }
}

/// How a connection ended.
enum End {
    /// DISCONNECT 0x00: the will is discarded.
    Client,
    /// DISCONNECT 0x04: disconnect, but send the will.
    ClientWithWill,
    /// The network connection closed or failed.
    Lost,
    /// Ferry closes the connection (MQTT 5: DISCONNECT with this reason).
    Server(p5::DisconnectReasonCode, String),
    /// Another connection with the same client id took the session over.
    TakenOver,
    Shutdown,
}

impl End {
    fn sends_will(&self) -> bool {
        matches!(
            self,
            End::ClientWithWill | End::Lost | End::Server(..) | End::TakenOver
        )
    }

    fn label(&self) -> &'static str {
        match self {
            End::Client | End::ClientWithWill => "client",
            End::Lost => "lost",
            End::Server(p5::DisconnectReasonCode::KeepAliveTimeout, _) => "keep_alive",
            End::Server(p5::DisconnectReasonCode::NotAuthorized, _) => "not_authorized",
            End::Server(_, _) => "protocol_violation",
            End::TakenOver => "taken_over",
            End::Shutdown => "shutdown",
        }
    }
}

/// Serves one connection (TCP or TLS) until it ends.
pub(super) async fn serve<S>(io: S, peer: Peer, live: &Live)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let shared = &live.shared;
    let (mut rd, wr) = tokio::io::split(io);
    let state = live.state.load_full();
    // `ferry_source_connections`, as on every listening source, and the listener's own.
    let source_connections = state.cx.stats.connections.clone();
    source_connections.inc();
    shared.stats.connections.inc();
    let mut inbuf = BytesMut::with_capacity(512);
    let max = state.config.max_packet_bytes as usize;
    let timeout = Duration::from_millis(state.config.connect_timeout_ms);
    let mut conn = Conn::new(live, state, wr, peer);
    match tokio::time::timeout(timeout, read_connect(&mut rd, &mut inbuf, max)).await {
        Ok(Ok((version, Packet::Connect(connect, will, login)))) => {
            conn.identity.version = version;
            shared.stats.packet_in("connect");
            // Boxed, as the end below: the task of an idle connection keeps only `run`.
            if let Some(session) = Box::pin(conn.open(connect, will, login)).await {
                let end = conn
                    .run(
                        &mut rd,
                        &mut inbuf,
                        session.expires,
                        session.take_over.clone(),
                    )
                    .await;
                Box::pin(conn.finish(end, session)).await;
            }
        }
        Ok(Ok(_)) => {}
        Ok(Err(ConnectError::Refuse(version, code, reason))) => {
            conn.identity.version = version;
            conn.refuse_connect(code, &reason).await;
        }
        Ok(Err(ConnectError::Unsupported(level))) => {
            // CONNACK return code 1 (unacceptable protocol version), in the 3.1.1 form
            // every version reads [MQTT-3.1.2-2].
            tracing::debug!(peer = %conn.identity.peer.addr, level, "unsupported MQTT protocol level");
            conn.out.extend_from_slice(&[0x20, 0x02, 0x00, 0x01]);
            let _ = conn.flush().await;
        }
        Ok(Err(ConnectError::Close(reason))) => {
            tracing::debug!(peer = %conn.identity.peer.addr, %reason, "connection closed before CONNECT");
        }
        Err(_) => tracing::debug!(peer = %conn.identity.peer.addr, "no CONNECT in time"),
    }
    let _ = conn.wr.shutdown().await;
    shared.stats.connections.dec();
    source_connections.dec();
}

/// What `open` established for the session.
struct Session {
    /// When the JWT the device authenticated with expires (unix seconds).
    expires: Option<u64>,
    holder: u64,
    /// Cancelled when another connection takes the session over.
    take_over: CancellationToken,
    ended: tokio::sync::watch::Sender<bool>,
}

struct Conn<'a, W> {
    live: &'a Live,
    shared: &'a Shared,
    state: Arc<ServerState>,
    wr: W,
    out: BytesMut,
    identity: Identity,
    /// The CONNECT password, kept to check a JWT or password session again after a reload.
    password: Option<Vec<u8>>,
    keep_alive: Option<Duration>,
    /// MQTT 5: Request Problem Information (reason strings on acknowledgements).
    problem_info: bool,
    /// The device's Maximum Packet Size (MQTT 5).
    device_max_packet: Option<usize>,
    aliases: HashMap<u16, Bytes>,
    pending: FuturesOrdered<BoxFuture<'static, Answer>>,
    /// QoS 2 packet ids being delivered.
    delivering: HashSet<u16>,
    /// QoS 2 packet ids answered with PUBREC, waiting for their PUBREL.
    awaiting_release: HashSet<u16>,
    /// Shared with the command sinks, which look for the sessions a topic reaches.
    subscriptions: Arc<std::sync::Mutex<BTreeMap<String, QoS>>>,
    /// Commands for the device: from the sinks, and (first) those a resumed session kept.
    outbound: Option<tokio::sync::mpsc::Receiver<Outbound>>,
    /// This connection's id as the holder of its session.
    holder: u64,
    resend: VecDeque<Outbound>,
    /// Commands published at QoS 1 and not yet PUBACKed, by packet id.
    out_inflight: HashMap<u16, Option<tokio::sync::oneshot::Sender<Result<(), String>>>>,
    next_pkid: u16,
    /// How many QoS 1 commands may wait for their PUBACK at once (the device's Receive
    /// Maximum, at most `receive_maximum`).
    out_window: usize,
    will: Option<p5::LastWill>,
    /// The session expiry the CONNECT asked for (MQTT 5), and what is in force.
    connect_expiry: u32,
    session_expiry: u32,
}

impl<'a, W: AsyncWrite + Unpin> Conn<'a, W> {
    fn new(live: &'a Live, state: Arc<ServerState>, wr: W, peer: Peer) -> Self {
        Conn {
            live,
            shared: &live.shared,
            state,
            wr,
            out: BytesMut::new(),
            identity: Identity {
                version: Version::V5,
                client_id: String::new(),
                username: None,
                principal: Principal::anonymous(),
                peer,
                publish_acl: Vec::new(),
                subscribe_acl: Vec::new(),
            },
            password: None,
            keep_alive: None,
            problem_info: true,
            device_max_packet: None,
            aliases: HashMap::new(),
            pending: FuturesOrdered::new(),
            delivering: HashSet::new(),
            awaiting_release: HashSet::new(),
            subscriptions: Default::default(),
            outbound: None,
            holder: 0,
            resend: VecDeque::new(),
            out_inflight: HashMap::new(),
            next_pkid: 0,
            out_window: 1,
            will: None,
            connect_expiry: 0,
            session_expiry: 0,
        }
    }

    fn v5(&self) -> bool {
        self.identity.version == Version::V5
    }

    fn subscriptions(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, QoS>> {
        self.subscriptions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues a packet for the device.
    fn send(&mut self, mut packet: Packet) {
        if let Some(max) = self.device_max_packet {
            // A reason string that does not fit the device's Maximum Packet Size is left
            // out [MQTT-3.1.2-25].
            if packet.size() > max {
                strip_properties(&mut packet);
            }
            if packet.size() > max {
                return;
            }
        }
        self.shared.stats.packet_out(wire::kind(&packet));
        wire::write(self.identity.version, &packet, &mut self.out);
    }

    /// Writes what is queued, within the write timeout.
    async fn flush(&mut self) -> Result<(), End> {
        if self.out.is_empty() {
            return Ok(());
        }
        let timeout = Duration::from_millis(self.state.config.write_timeout_ms);
        let written = tokio::time::timeout(timeout, async {
            self.wr.write_all(&self.out).await?;
            self.wr.flush().await
        })
        .await;
        self.out.clear();
        if self.out.capacity() > 64 * 1024 {
            self.out = BytesMut::new();
        }
        match written {
            Ok(Ok(())) => Ok(()),
            _ => Err(End::Lost),
        }
    }

    /// Publishes and subscriptions until the connection ends.
    async fn run<R: AsyncRead + Unpin>(
        &mut self,
        rd: &mut R,
        inbuf: &mut BytesMut,
        expires: Option<u64>,
        take_over: CancellationToken,
    ) -> End {
        let shutdown = self.state.cx.shutdown.clone();
        let mut superseded = Box::pin(self.state.superseded.clone().cancelled_owned());
        let expiry = expires.map(crate::security::source::expiry_instant);
        let expired = async {
            match expiry {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(expired);
        let keep_alive = self
            .keep_alive
            .unwrap_or(Duration::from_secs(u64::from(u16::MAX)));
        let mut last_read = tokio::time::Instant::now();
        loop {
            if let Some(end) = self.read_packets(inbuf).await {
                return end;
            }
            self.send_resent();
            if let Err(end) = self.flush().await {
                return end;
            }
            let reading =
                self.v5() || self.pending.len() < usize::from(self.state.config.receive_maximum);
            tokio::select! {
                () = shutdown.cancelled() => return End::Shutdown,
                () = take_over.cancelled() => return End::TakenOver,
                () = &mut expired => return End::Server(p5::DisconnectReasonCode::NotAuthorized, "token expired".into()),
                () = &mut superseded => match self.recheck() {
                    Ok(()) => superseded = Box::pin(self.state.superseded.clone().cancelled_owned()),
                    Err(reason) => return End::Server(p5::DisconnectReasonCode::NotAuthorized, reason),
                },
                Some(o) = recv_outbound(&mut self.outbound), if self.out_inflight.len() < self.out_window => {
                    self.push_out(o);
                }
                Some(answer) = self.pending.next(), if !self.pending.is_empty() => {
                    if let Some(end) = self.answer(answer) {
                        return end;
                    }
                    // Answers that are ready too go out in the same write.
                    while let Some(Some(answer)) = self.pending.next().now_or_never() {
                        if let Some(end) = self.answer(answer) {
                            return end;
                        }
                    }
                }
                read = rd.read_buf(inbuf), if reading => match read {
                    Ok(0) | Err(_) => return End::Lost,
                    Ok(_) => last_read = tokio::time::Instant::now(),
                },
                () = tokio::time::sleep_until(last_read + keep_alive) => {
                    return End::Server(p5::DisconnectReasonCode::KeepAliveTimeout, "keep alive timeout".into());
                }
            }
        }
    }

    /// Handles every complete packet in the buffer (a 3.1.1 connection leaves publishes
    /// beyond its window there).
    async fn read_packets(&mut self, inbuf: &mut BytesMut) -> Option<End> {
        let max = self.state.config.max_packet_bytes as usize;
        loop {
            if !self.v5() && self.pending.len() >= usize::from(self.state.config.receive_maximum) {
                return None;
            }
            match wire::read(self.identity.version, inbuf, max) {
                Ok(Some(packet)) => {
                    self.shared.stats.packet_in(wire::kind(&packet));
                    if let Some(end) = self.handle(packet).await {
                        return Some(end);
                    }
                }
                Ok(None) => return None,
                Err(ReadError::TooLarge(n)) => {
                    return Some(End::Server(
                        p5::DisconnectReasonCode::PacketTooLarge,
                        format!("packet of {n} bytes; the limit is {max}"),
                    ))
                }
                Err(ReadError::Malformed(m)) => {
                    return Some(End::Server(p5::DisconnectReasonCode::MalformedPacket, m))
                }
            }
        }
    }

    async fn handle(&mut self, packet: Packet) -> Option<End> {
        use p5::DisconnectReasonCode as D;
        match packet {
            // Boxed: the publish path is large, and an idle connection should not carry it.
            Packet::Publish(p) => Box::pin(self.publish(p)).await,
            Packet::PubRel(r) => {
                let found = self.awaiting_release.remove(&r.pkid);
                let mut comp = p5::PubComp::new(r.pkid, None);
                if !found {
                    comp.reason = p5::PubCompReason::PacketIdentifierNotFound;
                }
                self.send(Packet::PubComp(comp));
                None
            }
            Packet::Subscribe(s) => self.subscribe(s),
            Packet::Unsubscribe(u) => {
                let reasons = u
                    .filters
                    .iter()
                    .map(|f| match self.subscriptions().remove(f) {
                        Some(_) => p5::UnsubAckReason::Success,
                        None => p5::UnsubAckReason::NoSubscriptionExisted,
                    })
                    .collect();
                self.send(Packet::UnsubAck(p5::UnsubAck {
                    pkid: u.pkid,
                    reasons,
                    properties: None,
                }));
                None
            }
            Packet::PingReq(_) => {
                self.send(Packet::PingResp(p5::PingResp));
                None
            }
            Packet::Disconnect(d) => Some(self.disconnected(d)),
            Packet::PubAck(a) => {
                self.command_acknowledged(&a);
                None
            }
            // Commands go out at QoS 0 or 1: nothing sent needs these.
            Packet::PubRec(_) | Packet::PubComp(_) => None,
            Packet::Connect(..) => Some(End::Server(D::ProtocolError, "a second CONNECT".into())),
            other => Some(End::Server(
                D::ProtocolError,
                format!("a client does not send {}", wire::kind(&other)),
            )),
        }
    }

    fn disconnected(&mut self, d: p5::Disconnect) -> End {
        if let Some(expiry) = d.properties.and_then(|p| p.session_expiry_interval) {
            if self.connect_expiry == 0 && expiry != 0 {
                return End::Server(
                    p5::DisconnectReasonCode::ProtocolError,
                    "a session expiry at DISCONNECT after 0 at CONNECT".into(),
                );
            }
            self.session_expiry = expiry.min(self.state.config.session_expiry_max_secs);
        }
        match d.reason_code {
            p5::DisconnectReasonCode::DisconnectWithWillMessage => End::ClientWithWill,
            _ => End::Client,
        }
    }

    fn subscribe(&mut self, s: p5::Subscribe) -> Option<End> {
        use p5::SubscribeReasonCode as R;
        if s.properties.as_ref().is_some_and(|p| p.id.is_some()) {
            return Some(End::Server(
                p5::DisconnectReasonCode::SubscriptionIdentifiersNotSupported,
                "subscription identifiers are not supported".into(),
            ));
        }
        let state = Arc::clone(&self.state);
        let max = state.config.max_subscriptions;
        let codes = s
            .filters
            .iter()
            .map(|f| {
                if f.path.starts_with("$share/") {
                    R::SharedSubscriptionsNotSupported
                } else if !topic::valid_filter(&f.path) {
                    R::TopicFilterInvalid
                } else if !self.identity.may_subscribe(&state, &f.path) {
                    R::NotAuthorized
                } else if !self.subscriptions().contains_key(&f.path)
                    && self.subscriptions().len() >= max
                {
                    R::QuotaExceeded
                } else {
                    // Commands go out at QoS 0 or 1.
                    let granted = match f.qos {
                        QoS::AtMostOnce => QoS::AtMostOnce,
                        _ => QoS::AtLeastOnce,
                    };
                    self.subscriptions().insert(f.path.clone(), granted);
                    R::Success(granted)
                }
            })
            .collect();
        if !self.subscriptions().is_empty() {
            self.open_queue();
        }
        self.send(Packet::SubAck(p5::SubAck {
            pkid: s.pkid,
            return_codes: codes,
            properties: None,
        }));
        None
    }

    /// After a reload: the session goes on under the new settings if they still accept its
    /// credentials.
    fn recheck(&mut self) -> Result<(), String> {
        let current = self.live.state.load_full();
        let again = current.security.authenticate_connect(
            Some(&self.identity.peer),
            self.identity.username.as_deref(),
            self.password.as_deref(),
        );
        match again {
            Ok(a) if a.principal == self.identity.principal => {}
            _ => return Err("credentials revoked by a reload".into()),
        }
        self.identity.render(&current);
        self.state = current;
        Ok(())
    }
}

/// Drops the optional properties (reason strings) of an acknowledgement.
fn strip_properties(packet: &mut Packet) {
    match packet {
        Packet::PubAck(a) => a.properties = None,
        Packet::PubRec(a) => a.properties = None,
        Packet::PubComp(a) => a.properties = None,
        Packet::SubAck(a) => a.properties = None,
        Packet::UnsubAck(a) => a.properties = None,
        Packet::Disconnect(d) => {
            if let Some(p) = &mut d.properties {
                p.reason_string = None;
            }
        }
        _ => {}
    }
}

fn truncate(reason: &str) -> String {
    if reason.len() <= MAX_REASON {
        return reason.to_owned();
    }
    let mut end = MAX_REASON;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_owned()
}
