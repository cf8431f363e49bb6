//! The accept loop shared by every Ferry listener: plain TCP or TLS (with optional client
//! certificates), HTTP/1.1 and HTTP/2 with upgrades (WebSocket), and graceful shutdown.
//!
//! The TLS configuration is read from a [`TlsHandle`] at each accept, so swapping it (a new
//! certificate) applies to new connections without refusing any.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use prometheus_client::metrics::gauge::Gauge;
use tokio::net::TcpListener;
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

/// Serves `app` on `listener` until `shutdown`, then waits for open requests to finish.
pub async fn serve(
    listener: TcpListener,
    tls: TlsHandle,
    app: Router,
    shutdown: CancellationToken,
    connections: Option<Gauge>,
) {
    let graceful = GracefulShutdown::new();
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
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let tls = tls.load_full();
        let watcher = graceful.watcher();
        let connections = connections.clone();
        tokio::spawn(async move {
            if let Some(g) = &connections {
                g.inc();
            }
            match tls {
                None => {
                    let peer = Peer {
                        addr,
                        certificate_identity: None,
                    };
                    serve_connection(TokioIo::new(stream), app, peer, watcher).await;
                }
                Some(config) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(config);
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                        .await
                    {
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
                            serve_connection(TokioIo::new(tls_stream), app, peer, watcher).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%addr, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%addr, "TLS handshake timed out"),
                    }
                }
            }
            if let Some(g) = &connections {
                g.dec();
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

async fn serve_connection<I>(
    io: TokioIo<I>,
    app: Router,
    peer: Peer,
    watcher: hyper_util::server::graceful::Watcher,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = app.map_request(move |req: http::Request<hyper::body::Incoming>| {
        let mut req = req.map(axum::body::Body::new);
        req.extensions_mut().insert(peer.clone());
        req
    });
    let service = TowerToHyperService::new(service);
    let builder = Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection_with_upgrades(io, service);
    if let Err(e) = watcher.watch(conn.into_owned()).await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}
