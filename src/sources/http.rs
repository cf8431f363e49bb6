//! HTTP source: accepts CloudEvents in binary, structured and batched mode on one path.
//!
//! Answers `202 Accepted` only after every sink the event was routed to confirmed it. A
//! batch is validated and routed as a whole: one invalid event rejects it and nothing is
//! sent. Errors are `application/problem+json`, built in [`crate::problem`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;

use arc_swap::{ArcSwap, ArcSwapOption};
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Router;
use http::{HeaderMap, Method, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::{SourceContext, SourceError, SourceStats};
use crate::config::HttpSourceConfig;
use crate::listener::{Limits, LimitsHandle, Peer, TlsHandle};
use crate::normalize::{Normalizer, Raw};
use crate::pipeline::{self, Envelope, SharedGeneration};
use crate::problem::Problem;
use crate::security::principal::Principal;
use crate::security::source::SourceSecurity;

struct SourceState {
    config: HttpSourceConfig,
    generation: SharedGeneration,
    stats: SourceStats,
    requests: Arc<Semaphore>,
    normalizer: Option<Normalizer>,
    security: SourceSecurity,
}

/// The parts of a running HTTP source that a reload replaces in place: requests and TLS
/// handshakes read them as they start, so no connection is touched by a swap.
#[derive(Clone)]
pub struct Live {
    state: Arc<ArcSwap<SourceState>>,
    tls: TlsHandle,
    limits: LimitsHandle,
}

/// A source's settings, built and checked, ready to swap in.
pub struct Prepared {
    state: SourceState,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: Limits,
}

impl Live {
    /// Builds the settings of `config` for this running source; nothing changes yet. The
    /// request limit carries over when it did not change (requests in flight keep counting),
    /// and so do the replay cache and the rate-limit buckets (see
    /// [`SourceSecurity::carry_over`]).
    pub fn prepare(
        &self,
        config: &HttpSourceConfig,
        cx: &SourceContext,
    ) -> Result<Prepared, SourceError> {
        prepare(config, cx, Some(&self.state.load()))
    }

    /// Swaps prepared settings in: the next request and the next handshake use them.
    pub fn commit(&self, prepared: Prepared) {
        self.tls.store(prepared.tls);
        self.limits.store(Arc::new(prepared.limits));
        self.state.store(Arc::new(prepared.state));
    }
}

fn prepare(
    config: &HttpSourceConfig,
    cx: &SourceContext,
    current: Option<&SourceState>,
) -> Result<Prepared, SourceError> {
    let config_error = |message: String| SourceError::Config {
        source_name: cx.name().to_owned(),
        message,
    };
    let normalizer = super::normalizer(cx.name(), config.normalize.as_ref())?;
    let mut security = SourceSecurity::build(
        cx.name(),
        config.auth.as_ref(),
        config.rate_limit.as_ref(),
        config.require_policy,
    )
    .map_err(config_error)?;
    let mut requests = None;
    if let Some(current) = current {
        security.carry_over(&current.security);
        requests = (current.config.max_concurrent_requests == config.max_concurrent_requests)
            .then(|| Arc::clone(&current.requests));
    }
    let state = SourceState {
        config: config.clone(),
        generation: cx.generation.clone(),
        stats: cx.stats.clone(),
        requests: requests
            .unwrap_or_else(|| Arc::new(Semaphore::new(config.max_concurrent_requests))),
        normalizer,
        security,
    };
    let tls = (config.tls.as_ref())
        .map(|t| crate::tls::server_config(t, &[b"h2", b"http/1.1"]))
        .transpose()
        .map_err(|e| config_error(format!("tls: {e}")))?;
    let limits = Limits {
        max_connections: config.max_connections,
        header_read_timeout: Duration::from_millis(config.header_read_timeout_ms),
        idle_timeout: Duration::from_millis(config.idle_timeout_ms),
    };
    Ok(Prepared { state, tls, limits })
}

/// Binds the listener (unless given one already bound, so address errors surface before
/// anything changes) and serves until shutdown.
/// In-flight requests finish before the task ends.
pub async fn start(
    config: &HttpSourceConfig,
    cx: SourceContext,
    bound: Option<TcpListener>,
) -> Result<(SocketAddr, Live), SourceError> {
    let prepared = prepare(config, &cx, None)?;
    let (listener, addr) = super::listen(cx.name(), config.listen, bound).await?;
    let live = Live {
        state: Arc::new(ArcSwap::from_pointee(prepared.state)),
        tls: Arc::new(ArcSwapOption::from(prepared.tls)),
        limits: Arc::new(ArcSwap::from_pointee(prepared.limits)),
    };
    let app = Router::new()
        .fallback(handle)
        .with_state(Arc::clone(&live.state));
    let mut stats = cx.stats.metrics.listener(format!("source:{}", cx.name()));
    stats.connections = Some(cx.stats.connections.clone());
    cx.tracker.spawn(
        crate::listener::serve(
            listener,
            Arc::clone(&live.tls),
            Arc::clone(&live.limits),
            app,
            cx.shutdown.clone(),
            stats,
        )
        .instrument(tracing::info_span!("source", source = %cx.name())),
    );
    cx.set_ready(true);
    Ok((addr, live))
}

/// A message is raw (not a CloudEvent) when it has neither `ce-specversion` nor a
/// CloudEvents media type.
fn is_raw(headers: &HeaderMap) -> bool {
    let ce_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ferry_core::json::format(ct) != ferry_core::json::Format::None);
    !ce_type && !ferry_http::is_binary_event(headers)
}

async fn not_found() -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "no CloudEvents endpoint at this path",
    )
}

async fn handle(
    State(live): State<Arc<ArcSwap<SourceState>>>,
    peer: Option<axum::Extension<Peer>>,
    method: Method,
    uri: http::Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // The settings in force when the request arrived serve all of it: the source's own
    // (authentication, limits) and the generation's (routes, policies), loaded together so a
    // reload in the middle of a request never mixes two configs (Q4).
    let state = live.load_full();
    let generation = state.generation.load_full();
    if uri.path() != state.config.path {
        return not_found().await.into_response();
    }
    if method == Method::OPTIONS {
        return webhook_handshake(&state, &headers);
    }
    let started = Instant::now();
    let peer = peer.map(|axum::Extension(p)| p);
    match accept(
        &state,
        generation,
        peer.as_ref(),
        method,
        uri.query(),
        headers,
        body,
    )
    .await
    {
        Ok(n) => {
            state.stats.accepted.inc_by(n);
            state
                .stats
                .ack_latency
                .observe(started.elapsed().as_secs_f64());
            StatusCode::ACCEPTED.into_response()
        }
        Err((problem, n)) => {
            state.stats.reject(problem.reason(), n.max(1));
            problem.into_response()
        }
    }
}

/// Answers the CloudEvents Web Hook validation handshake: a configured (or, by default, any)
/// `WebHook-Request-Origin` is echoed back in `WebHook-Allowed-Origin` with the allowed rate;
/// another origin gets `403`. Consent is not authentication: deliveries are still checked.
fn webhook_handshake(state: &SourceState, headers: &HeaderMap) -> Response {
    const ALLOW: &str = "POST, OPTIONS";
    let Some(origin) = headers.get("webhook-request-origin") else {
        // A plain OPTIONS request: say what the endpoint takes.
        return (StatusCode::NO_CONTENT, [(http::header::ALLOW, ALLOW)]).into_response();
    };
    let webhook = &state.config.webhook;
    let granted = origin.to_str().is_ok_and(|o| webhook.allows(o.trim()));
    if !granted {
        let mut p = Problem::new(
            StatusCode::FORBIDDEN,
            format!(
                "origin {:?} is not in webhook.allowed_origins",
                String::from_utf8_lossy(origin.as_bytes())
            ),
        );
        p.header = Some("webhook-request-origin".into());
        p.allow = Some(ALLOW);
        return p.into_response();
    }
    let rate = webhook
        .allowed_rate
        .or_else(|| (state.config.rate_limit.as_ref()).map(|r| r.per_second.saturating_mul(60)))
        .map_or_else(|| "*".to_owned(), |n| n.to_string());
    let mut response = StatusCode::OK.into_response();
    let h = response.headers_mut();
    h.insert(http::header::ALLOW, http::HeaderValue::from_static(ALLOW));
    h.insert("webhook-allowed-origin", origin.clone());
    if let Ok(rate) = http::HeaderValue::from_str(&rate) {
        h.insert("webhook-allowed-rate", rate);
    }
    response
}

/// Returns the number of events accepted, or the problem and the number of events refused.
async fn accept(
    state: &Arc<SourceState>,
    generation: Arc<pipeline::Generation>,
    peer: Option<&Peer>,
    method: Method,
    query: Option<&str>,
    headers: HeaderMap,
    body: Body,
) -> Result<u64, (Problem, u64)> {
    if method != Method::POST {
        let mut p = Problem::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} is not allowed; send events with POST"),
        );
        p.allow = Some("POST, OPTIONS");
        return Err((p, 1));
    }
    // Credentials that need no body (JWT, mTLS) are checked before the body is read, so an
    // unauthenticated sender costs no buffering (R4).
    let early = if state.security.needs_body() {
        // A signature needs the body; what can be checked without it is checked first.
        state
            .security
            .precheck(peer, &headers, query)
            .map_err(|e| (Problem::unauthenticated(e), 1))?;
        None
    } else {
        Some(
            state
                .security
                .authenticate(peer, &headers, query, &[])
                .map_err(|e| (Problem::unauthenticated(e), 1))?,
        )
    };
    let wait = Duration::from_millis(state.config.enqueue_timeout_ms);
    let permit = match tokio::time::timeout(wait, Arc::clone(&state.requests).acquire_owned()).await
    {
        Ok(Ok(permit)) => permit,
        Ok(Err(_)) => {
            return Err((
                Problem::new(StatusCode::SERVICE_UNAVAILABLE, "shutting down").retry_after(1),
                1,
            ))
        }
        Err(_) => {
            return Err((
                Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "{} requests are in progress (max_concurrent_requests)",
                        state.config.max_concurrent_requests
                    ),
                )
                .retry_after(1),
                1,
            ))
        }
    };
    let max = state.config.max_body_bytes;
    let too_large = || {
        let mut p = Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body exceeds max_body_bytes ({max} bytes)"),
        );
        p.header = Some("content-length".into());
        (p, 1)
    };
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    let body_timeout = Duration::from_millis(state.config.body_read_timeout_ms);
    let read = tokio::time::timeout(body_timeout, Limited::new(body, max).collect()).await;
    let bytes = match read {
        Err(_) => {
            return Err((
                Problem::new(
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "the body did not arrive within body_read_timeout_ms ({} ms)",
                        state.config.body_read_timeout_ms
                    ),
                ),
                1,
            ))
        }
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => return Err(too_large()),
        Ok(Err(e)) => {
            return Err((
                Problem::new(
                    StatusCode::BAD_REQUEST,
                    format!("could not read the body: {e}"),
                ),
                1,
            ));
        }
    };
    let authenticated = match early {
        Some(authenticated) => authenticated,
        None => state
            .security
            .authenticate(peer, &headers, query, &bytes)
            .map_err(|e| (Problem::unauthenticated(e), 1))?,
    };
    if authenticated.is_duplicate() {
        // A retry of a webhook already accepted: acknowledged again, not delivered twice.
        return Ok(0);
    }
    // The delivery runs in a task of its own, so that a sender who gives up (a timeout, a
    // closed connection) does not cancel it: its outcome settles the replay record that the
    // sender's retry is checked against (accepted: acknowledged again, not delivered twice;
    // not accepted: dropping `authenticated` releases the record, so the retry passes).
    let delivery = tokio::spawn({
        let state = Arc::clone(state);
        let peer = peer.cloned();
        async move {
            let _permit = permit;
            let result = deliver(
                &state,
                generation,
                peer.as_ref(),
                &headers,
                bytes,
                &authenticated.principal,
            )
            .await;
            if result.is_ok() {
                authenticated.accept();
            }
            result
        }
    });
    match delivery.await {
        Ok(result) => result,
        Err(_) => Err((
            Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "the delivery failed"),
            1,
        )),
    }
}

/// Decodes, authorises, routes and waits for the sinks: the part after authentication.
async fn deliver(
    state: &SourceState,
    generation: Arc<pipeline::Generation>,
    peer: Option<&Peer>,
    headers: &HeaderMap,
    bytes: bytes::Bytes,
    principal: &Principal,
) -> Result<u64, (Problem, u64)> {
    let mut metadata = ferry_http::metadata(headers);
    metadata.push_property("principal", principal.to_string());
    if let Some(peer) = peer {
        metadata.push_property("peer.ip", peer.addr.ip().to_canonical().to_string());
    }
    let message = match &state.normalizer {
        // Not a CloudEvent (no ce-specversion, not application/cloudevents…): build one.
        Some(n) if is_raw(headers) => {
            let content_type = headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok());
            let raw = Raw {
                metadata: &metadata,
                body: bytes,
                content_type,
                message_id: None,
            };
            n.apply(raw)
                .map(ferry_http::Message::Event)
                .map_err(|error| {
                    (
                        Problem::from(ferry_http::DecodeError::Invalid {
                            header: None,
                            error,
                        }),
                        1,
                    )
                })?
        }
        _ => ferry_http::decode(headers, bytes).map_err(|e| (Problem::from(e), 1))?,
    };
    let is_batch = matches!(message, ferry_http::Message::Batch(_));
    let mut envelopes: Vec<Envelope> = match message {
        ferry_http::Message::Event(event) => vec![Envelope::new(event, metadata)],
        ferry_http::Message::Batch(events) => {
            let metadata = Arc::new(metadata);
            events
                .into_iter()
                .map(|event| Envelope::new(event, Arc::clone(&metadata)))
                .collect()
        }
    };
    let n = envelopes.len() as u64;
    state
        .security
        .rate_limit(principal, peer.map(|p| p.addr.ip()), n as u32)
        .map_err(|wait| (Problem::rate_limited(wait), n))?;
    let grants = state
        .security
        .authorize(
            &generation.policies,
            principal,
            envelopes.iter_mut().map(|e| &mut e.event),
        )
        .map_err(|(index, denied)| (Problem::forbidden(index, denied, is_batch), n))?;
    pipeline::grant_routes(&mut envelopes, grants);
    let enqueue_timeout = Duration::from_millis(state.config.enqueue_timeout_ms);
    let waiter = pipeline::ingest_with(
        &generation,
        &state.stats,
        envelopes,
        state.config.unrouted,
        enqueue_timeout,
    )
    .await
    .map_err(|e| (Problem::from_ingest(e, is_batch), n))?;
    drop(generation);
    let ack_timeout = Duration::from_millis(state.config.ack_timeout_ms);
    match tokio::time::timeout(ack_timeout, waiter.wait()).await {
        Ok(outcome) => match Problem::from_outcome(outcome) {
            None => Ok(n),
            Some(p) => Err((p, n)),
        },
        Err(_) => Err((Problem::ack_timeout(state.config.ack_timeout_ms), n)),
    }
}
