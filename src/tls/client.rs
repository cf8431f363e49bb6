//! TLS for Ferry's outbound connections — brokers (NATS, MQTT, AMQP) and HTTP partners: which
//! CA the server must chain to, an optional client certificate (mTLS), and the name the server
//! certificate must carry.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde::Deserialize;

use super::{load_certs, load_key, load_roots, provider};

/// The `tls` table of a broker source or sink, or of the HTTP sink.
///
/// ```toml
/// tls = { ca = "certs/dev/ca.pem", cert = "certs/dev/client.pem", key = "certs/dev/client.key", server_name = "localhost" }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTlsConfig {
    /// PEM CA certificates the server certificate must chain to; without it, the system's
    /// trust store.
    #[serde(default)]
    pub ca: Option<crate::file_ref::FileRef>,
    /// PEM client certificate chain (leaf first), presented when the server asks (mTLS).
    #[serde(default)]
    pub cert: Option<crate::file_ref::FileRef>,
    /// The client certificate's PEM private key.
    #[serde(default)]
    pub key: Option<crate::file_ref::FileRef>,
    /// The name the server certificate must be valid for, when it is not the URL's host.
    #[serde(default)]
    pub server_name: Option<String>,
}

/// TLS material that could not be loaded: the key of the `tls` table it came from and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tls.{key}: {message}")]
pub struct ClientTlsError {
    /// `ca`, `cert`, `key` or `server_name`.
    pub key: &'static str,
    pub message: String,
}

impl ClientTlsError {
    fn new(key: &'static str, message: impl Into<String>) -> Self {
        ClientTlsError {
            key,
            message: message.into(),
        }
    }

    /// The error as a config check error, keyed below `tls`.
    pub fn into_check(self) -> crate::key_error::KeyError {
        crate::key_error::KeyError::new(vec!["tls".into(), self.key.into()], self.message)
    }
}

impl ClientTlsConfig {
    /// Builds the rustls client configuration (TLS 1.2 and 1.3, ring) with the given ALPN
    /// protocols. Every file is read now, so a missing or broken file is reported when the
    /// config is loaded, not at the first connection.
    pub fn client_config(
        &self,
        alpn: &[&[u8]],
    ) -> Result<Arc<rustls::ClientConfig>, ClientTlsError> {
        let roots = Arc::new(self.roots()?);
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientTlsError::new("ca", e.to_string()))?;
        let builder = match &self.server_name {
            None => builder.with_root_certificates(roots),
            Some(name) => {
                let name = ServerName::try_from(name.clone())
                    .map_err(|e| ClientTlsError::new("server_name", e.to_string()))?;
                let inner = WebPkiServerVerifier::builder_with_provider(roots, provider())
                    .build()
                    .map_err(|e| ClientTlsError::new("ca", e.to_string()))?;
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(FixedServerName { inner, name }))
            }
        };
        let mut config = match self.identity()? {
            Some((certs, key)) => builder.with_client_auth_cert(certs, key).map_err(|e| {
                ClientTlsError::new("key", format!("certificate and key do not match: {e}"))
            })?,
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }

    /// The trusted roots: the `ca` file, or the system's trust store.
    fn roots(&self) -> Result<RootCertStore, ClientTlsError> {
        match &self.ca {
            Some(ca) => load_roots(ca).map_err(|e| ClientTlsError::new("ca", e.to_string())),
            None => {
                let mut roots = RootCertStore::empty();
                let native = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(native.certs);
                if roots.is_empty() {
                    return Err(ClientTlsError::new(
                        "ca",
                        "the system trust store holds no certificates: name a CA file",
                    ));
                }
                Ok(roots)
            }
        }
    }

    /// The client certificate chain and key, when both are configured.
    #[allow(clippy::type_complexity)]
    fn identity(
        &self,
    ) -> Result<
        Option<(
            Vec<CertificateDer<'static>>,
            rustls::pki_types::PrivateKeyDer<'static>,
        )>,
        ClientTlsError,
    > {
        match (&self.cert, &self.key) {
            (None, None) => Ok(None),
            (Some(_), None) => Err(ClientTlsError::new(
                "key",
                "a client `cert` needs its `key`",
            )),
            (None, Some(_)) => Err(ClientTlsError::new(
                "cert",
                "a client `key` needs its `cert`",
            )),
            (Some(cert), Some(key)) => {
                let certs =
                    load_certs(cert).map_err(|e| ClientTlsError::new("cert", e.to_string()))?;
                let key = load_key(key).map_err(|e| ClientTlsError::new("key", e.to_string()))?;
                Ok(Some((certs, key)))
            }
        }
    }

    /// The same material for lapin (AMQP), which takes PEM text rather than a rustls
    /// configuration. It verifies the URL's host, so `server_name` is refused.
    pub fn amqp(&self) -> Result<lapin::tcp::OwnedTLSConfig, ClientTlsError> {
        if self.server_name.is_some() {
            return Err(ClientTlsError::new(
                "server_name",
                "not supported for AMQP: the server certificate must carry the URL's host",
            ));
        }
        // Loads and checks everything the way the other protocols do.
        self.client_config(&[])?;
        let read = |key: &'static str, path: &Path| {
            std::fs::read(path).map_err(|e| {
                ClientTlsError::new(key, format!("{}: cannot read: {e}", path.display()))
            })
        };
        let cert_chain = match &self.ca {
            Some(ca) => Some(
                String::from_utf8(read("ca", ca)?)
                    .map_err(|_| ClientTlsError::new("ca", "not a PEM text file"))?,
            ),
            None => None,
        };
        let identity = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => Some(lapin::tcp::OwnedIdentity::PKCS8 {
                pem: read("cert", cert)?,
                key: read("key", key)?,
            }),
            _ => None,
        };
        Ok(lapin::tcp::OwnedTLSConfig {
            identity,
            cert_chain,
        })
    }
}

/// Verifies the server certificate against a configured name instead of the host the client
/// connected to (an IP address, or a name the certificate does not carry).
#[derive(Debug)]
struct FixedServerName {
    inner: Arc<WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for FixedServerName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("dev");
        crate::certs::generate_dev(&out).unwrap();
        (dir, out)
    }

    #[test]
    fn loads_ca_and_client_certificate() {
        let (_dir, d) = dev();
        let tls = ClientTlsConfig {
            ca: Some(d.join("ca.pem").into()),
            cert: Some(d.join("client.pem").into()),
            key: Some(d.join("client.key").into()),
            server_name: Some("localhost".into()),
        };
        let config = tls.client_config(&[b"h2"]).unwrap();
        assert!(config.client_auth_cert_resolver.has_certs());
        assert_eq!(config.alpn_protocols, vec![b"h2".to_vec()]);
        let amqp = ClientTlsConfig {
            server_name: None,
            ..tls
        }
        .amqp()
        .unwrap();
        assert!(amqp.cert_chain.unwrap().contains("BEGIN CERTIFICATE"));
        assert!(matches!(
            amqp.identity,
            Some(lapin::tcp::OwnedIdentity::PKCS8 { .. })
        ));
    }

    #[test]
    fn errors_name_the_key() {
        let (_dir, d) = dev();
        let base = ClientTlsConfig {
            ca: Some(d.join("ca.pem").into()),
            ..Default::default()
        };
        let cases: Vec<(ClientTlsConfig, &str)> = vec![
            (
                ClientTlsConfig {
                    ca: Some(d.join("missing.pem").into()),
                    ..Default::default()
                },
                "ca",
            ),
            (
                ClientTlsConfig {
                    ca: Some(d.join("ca.key").into()),
                    ..Default::default()
                },
                "ca",
            ),
            (
                ClientTlsConfig {
                    cert: Some(d.join("client.pem").into()),
                    ..base.clone()
                },
                "key",
            ),
            (
                ClientTlsConfig {
                    key: Some(d.join("client.key").into()),
                    ..base.clone()
                },
                "cert",
            ),
            (
                ClientTlsConfig {
                    cert: Some(d.join("client.pem").into()),
                    key: Some(d.join("server.key").into()),
                    ..base.clone()
                },
                "key",
            ),
            (
                ClientTlsConfig {
                    server_name: Some("not a name!".into()),
                    ..base.clone()
                },
                "server_name",
            ),
        ];
        for (config, key) in cases {
            let err = config.client_config(&[]).unwrap_err();
            assert_eq!(err.key, key, "{err}");
        }
        let err = ClientTlsConfig {
            server_name: Some("localhost".into()),
            ..base
        }
        .amqp()
        .unwrap_err();
        assert_eq!(err.key, "server_name");
    }
}
