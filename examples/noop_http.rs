//! A do-nothing HTTP server answering every request with `202 Accepted`: the ceiling that
//! `scripts/bench` measures `wrk` against, next to Ferry's HTTP source.
//!
//! `cargo run --release --example noop_http -- 127.0.0.1:18080`

use axum::http::StatusCode;
use axum::Router;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18080".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    let app = Router::new().fallback(|body: axum::body::Bytes| async move {
        drop(body);
        StatusCode::ACCEPTED
    });
    println!("noop_http listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
