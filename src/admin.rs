//! The admin listener: `/healthz`, `/readyz`, `/metrics`, `/-/config`, `/-/routes` and
//! `POST /-/reload`.
//!
//! With `[admin] token` set, every endpoint but the two probes needs
//! `Authorization: Bearer <token>` (compared in constant time; the token is read from the
//! running config, so a reload rotates it). Without one, the listener must be on loopback
//! (the config check refuses anything else), and a reload that a browser sends from another
//! site (a request with an `Origin` header) is refused.

use std::net::SocketAddr;
use std::sync::Arc;
use tracing::Instrument;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use http::{header, HeaderValue, StatusCode};
use prometheus_client::registry::Registry;

pub use crate::health::Readiness;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Clone)]
struct AdminState {
    registry: Arc<Registry>,
    readiness: Readiness,
    view: View,
}

/// What the admin API shows of the running configuration.
#[derive(Clone)]
pub struct View {
    pub config: Arc<arc_swap::ArcSwap<crate::config::Config>>,
    pub generation: crate::pipeline::SharedGeneration,
    pub reloader: Arc<crate::reload::Reloader>,
}

pub async fn start(
    listen: SocketAddr,
    registry: Arc<Registry>,
    readiness: Readiness,
    view: View,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/-/config", get(config))
        .route("/-/routes", get(routes))
        .route("/-/routes/explain", axum::routing::post(explain))
        .route("/-/reload", axum::routing::post(reload));
    let state = AdminState {
        registry,
        readiness,
        view,
    };
    let app = app
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authorize,
        ))
        .with_state(state);
    let tls = Arc::new(arc_swap::ArcSwapOption::empty());
    let limits = Arc::new(arc_swap::ArcSwap::from_pointee(
        crate::listener::Limits::DEFAULT,
    ));
    tracker.spawn(
        crate::listener::serve(listener, tls, limits, app, shutdown, Default::default())
            .instrument(tracing::info_span!("admin")),
    );
    Ok(addr)
}

/// The token check in front of every endpoint but the probes.
async fn authorize(State(s): State<AdminState>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if path == "/healthz" || path == "/readyz" {
        return next.run(req).await;
    }
    let config = s.view.config.load();
    let token = config.admin.as_ref().and_then(|a| a.token());
    match token {
        Some(token) => {
            let base = config
                .origin
                .path
                .parent()
                .unwrap_or(std::path::Path::new("."));
            let Ok(expected) = token.resolve(base) else {
                tracing::error!("the admin token cannot be read; refusing admin requests");
                return crate::problem::Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the admin token cannot be read",
                )
                .into_response();
            };
            let given = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim);
            match given {
                Some(given)
                    if crate::keyed::tokens_equal(given.as_bytes(), expected.as_bytes()) => {}
                Some(_) => return unauthorized("the admin token is not valid"),
                None => return unauthorized("the admin API needs `Authorization: Bearer <token>`"),
            }
        }
        None if req.method() == http::Method::POST
            && req.headers().contains_key(header::ORIGIN) =>
        {
            return crate::problem::Problem::new(
                StatusCode::FORBIDDEN,
                "a cross-origin request may not change the gateway; set `[admin] token`",
            )
            .into_response();
        }
        None => {}
    }
    next.run(req).await
}

fn unauthorized(detail: &str) -> Response {
    crate::problem::Problem::new(StatusCode::UNAUTHORIZED, detail).into_response()
}

async fn readyz(State(s): State<AdminState>) -> Response {
    let not_ready = s.readiness.not_ready();
    if not_ready.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", not_ready.join(", ")),
        )
            .into_response()
    }
}

async fn metrics(State(s): State<AdminState>) -> Response {
    let mut body = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut body, &s.registry) {
        return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response();
    }
    let mut resp = body.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    resp
}

/// The running configuration: generation, hash, file, and the text with secrets redacted.
async fn config(State(s): State<AdminState>) -> Response {
    let config = s.view.config.load();
    let generation = s.view.generation.load();
    axum::Json(serde_json::json!({
        "generation": generation.number,
        "hash": config.origin.hash,
        "path": config.origin.path.display().to_string(),
        "config": config.origin.redacted,
    }))
    .into_response()
}

/// The routes of the current generation with their counters.
async fn routes(State(s): State<AdminState>) -> Response {
    let generation = s.view.generation.load();
    let routes: Vec<serde_json::Value> = generation
        .routes
        .routes()
        .iter()
        .map(|r| {
            serde_json::json!({
                "name": &*r.name,
                "from": r.from,
                "to": r.to,
                "filters": r.filter_count(),
                "matched": r.matched.get(),
                "filter_errors": r.errors.get(),
            })
        })
        .collect();
    axum::Json(serde_json::json!({ "generation": generation.number, "routes": routes }))
        .into_response()
}

#[derive(serde::Deserialize)]
struct ExplainQuery {
    source: Option<String>,
    only: Option<String>,
}

/// Whether each route matches an event, and the first filter that fails if not.
async fn explain(
    State(s): State<AdminState>,
    axum::extract::Query(q): axum::extract::Query<ExplainQuery>,
    body: axum::body::Bytes,
) -> Response {
    let generation = s.view.generation.load();
    let only = match q.only.as_deref() {
        None => false,
        Some("matching") => true,
        Some(other) => {
            return crate::problem::Problem::new(
                StatusCode::BAD_REQUEST,
                format!("`only` is `matching` or absent, not {other:?}"),
            )
            .into_response()
        }
    };
    match crate::router::explain(&generation.routes, &body, q.source.as_deref(), only) {
        Ok(mut answer) => {
            answer["generation"] = generation.number.into();
            axum::Json(answer).into_response()
        }
        Err(e) => crate::problem::Problem::new(StatusCode::BAD_REQUEST, e).into_response(),
    }
}

/// Reloads the config file: `200` with what changed, or `400` with why nothing did.
async fn reload(State(s): State<AdminState>) -> Response {
    match s
        .view
        .reloader
        .reload_file(crate::reload::Trigger::Admin)
        .await
    {
        Ok(report) => {
            axum::Json(serde_json::json!({"result": "success", "report": report})).into_response()
        }
        Err(e) => (
            StatusCode::BAD_REQUEST,
            axum::Json(serde_json::json!({"result": "failure", "error": e.to_string()})),
        )
            .into_response(),
    }
}
