//! TLS for Ferry (rustls with the ring provider): listeners' server certificates, client
//! certificate verification (mTLS) and the identity a client certificate carries; outbound
//! connections in `tls::client`.

mod client;

pub use client::{ClientTlsConfig, ClientTlsError};

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

/// The `tls` table of a listener.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert: crate::file_ref::FileRef,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: crate::file_ref::FileRef,
    /// PEM CA certificates that client certificates must chain to (mTLS).
    #[serde(default)]
    pub client_ca: Option<crate::file_ref::FileRef>,
    /// With `client_ca`: `"required"` (default) refuses the handshake without a valid client
    /// certificate; `"optional"` accepts clients without one (they must authenticate otherwise).
    #[serde(default)]
    pub client_auth: Option<ClientAuth>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    Required,
    Optional,
}

/// TLS material that could not be loaded. Names the file.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct TlsError {
    pub path: PathBuf,
    pub message: String,
}

/// The crypto provider used everywhere in Ferry.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Makes ring the process-wide default provider (for clients built without an explicit
/// configuration). Idempotent.
pub fn install_default_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Reads a PEM certificate chain.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |message: String| TlsError {
        path: path.to_owned(),
        message,
    };
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(format!("cannot read certificates: {e}")))?
        .collect::<Result<_, _>>()
        .map_err(|e| err(format!("invalid PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(err("no certificate found".into()));
    }
    Ok(certs)
}

/// Reads a PEM private key.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError {
        path: path.to_owned(),
        message: format!("cannot read the private key: {e}"),
    })
}

/// Reads PEM CA certificates into a root store.
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| TlsError {
            path: path.to_owned(),
            message: format!("invalid CA certificate: {e}"),
        })?;
    }
    Ok(roots)
}

/// Builds a server configuration (TLS 1.2 and 1.3) with the given ALPN protocols.
pub fn server_config(
    config: &TlsConfig,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certs = load_certs(&config.cert)?;
    let key = load_key(&config.key)?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError {
            path: config.cert.to_path_buf(),
            message: e.to_string(),
        })?;
    let builder = match &config.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let roots = Arc::new(load_roots(ca)?);
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider());
            let verifier = match config.client_auth.unwrap_or(ClientAuth::Required) {
                ClientAuth::Required => verifier,
                ClientAuth::Optional => verifier.allow_unauthenticated(),
            };
            let verifier = verifier.build().map_err(|e| TlsError {
                path: ca.to_path_buf(),
                message: e.to_string(),
            })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut server = builder.with_single_cert(certs, key).map_err(|e| TlsError {
        path: config.key.to_path_buf(),
        message: format!("certificate and key do not match: {e}"),
    })?;
    server.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(server))
}

/// The identity of a verified client certificate: its first URI SAN (a SPIFFE ID works), else
/// its first DNS SAN, else its subject common name.
pub fn peer_identity(cert: &CertificateDer<'_>) -> Option<String> {
    use x509_parser::extensions::GeneralName;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let mut dns = None;
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::URI(uri) => return Some((*uri).to_owned()),
                GeneralName::DNSName(d) if dns.is_none() => dns = Some((*d).to_owned()),
                _ => {}
            }
        }
    }
    dns.or_else(|| {
        parsed
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned)
    })
}
