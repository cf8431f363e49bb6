//! HTTP source and sink settings beyond the basics: the Web Hook validation handshake and the
//! sink's outbound security (TLS, bearer token, signing).

use crate::key_error::KeyError;
use serde::Deserialize;

use super::HttpSinkConfig;
use crate::security::signing::SignScheme;
use crate::tls::ClientTlsError;

fn err(key: &[&str], message: impl Into<String>) -> KeyError {
    KeyError::new(key.iter().map(|k| (*k).to_owned()).collect(), message)
}

/// How an HTTP source answers the CloudEvents Web Hook validation handshake: an `OPTIONS`
/// request carrying `WebHook-Request-Origin`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Origins (DNS names, compared without regard to case) that are granted permission; the
    /// answer echoes the origin back. Empty (the default) grants every origin: the handshake
    /// protects senders from being used to flood a target, it does not authenticate them.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// `WebHook-Allowed-Rate` in requests per minute. Default: the source's `rate_limit`
    /// (`per_second` × 60) if it has one, else `*` (no limit).
    #[serde(default)]
    pub allowed_rate: Option<u32>,
}

impl WebhookConfig {
    pub fn check(&self) -> Result<(), KeyError> {
        for (i, origin) in self.allowed_origins.iter().enumerate() {
            if origin.is_empty() || http::HeaderValue::from_str(origin).is_err() {
                return Err(KeyError::new(
                    vec!["webhook".into(), "allowed_origins".into(), i.to_string()],
                    "an origin must be a non-empty DNS name",
                ));
            }
        }
        if self.allowed_rate == Some(0) {
            return Err(err(
                &["webhook", "allowed_rate"],
                "allowed_rate must be at least 1 (leave it out for no limit)",
            ));
        }
        Ok(())
    }

    /// Whether `origin` is granted.
    pub fn allows(&self, origin: &str) -> bool {
        self.allowed_origins.is_empty()
            || self
                .allowed_origins
                .iter()
                .any(|o| o.eq_ignore_ascii_case(origin))
    }
}

impl HttpSinkConfig {
    /// Checks TLS, token, signing and handshake settings; reads the files they name.
    pub(super) fn check_outbound(&self, url: &reqwest::Url) -> Result<(), KeyError> {
        if let Some(tls) = &self.tls {
            if url.scheme() != "https" {
                return Err(err(&["tls"], "TLS settings need an https:// URL"));
            }
            tls.client_config(&[]).map_err(ClientTlsError::into_check)?;
        }
        let in_clear = url.scheme() == "http" && !self.allow_insecure && !is_loopback(url);
        if self.bearer_token.is_some() && in_clear {
            return Err(err(
                &["bearer_token"],
                "a bearer token would travel in clear over http:// to another host: use an https:// URL (or allow_insecure = true)",
            ));
        }
        if self.sign.is_some() && in_clear {
            return Err(err(
                &["sign"],
                "signed requests would travel in clear over http:// to another host: use an https:// URL (or allow_insecure = true)",
            ));
        }
        if let Some(token) = &self.bearer_token {
            let value = token.resolve(std::path::Path::new(".")).map_err(|e| {
                let file = token.file().unwrap_or_default();
                err(&["bearer_token"], format!("cannot read {file}: {e}"))
            })?;
            if value.is_empty() || http::HeaderValue::from_str(&value).is_err() {
                return Err(err(
                    &["bearer_token"],
                    "the token must be non-empty visible ASCII",
                ));
            }
        }
        if let Some(sign) = &self.sign {
            sign.check().map_err(|e| e.under(&["sign"]))?;
            if sign.scheme == SignScheme::StandardWebhooks
                && self
                    .headers
                    .keys()
                    .any(|h| h.to_ascii_lowercase().starts_with("webhook-"))
            {
                return Err(err(
                    &["headers"],
                    "webhook-* headers are set by sign = { scheme = \"standard-webhooks\" }",
                ));
            }
        }
        match &self.origin {
            Some(o) if o.is_empty() || http::HeaderValue::from_str(o).is_err() => {
                return Err(err(&["origin"], "origin must be a non-empty DNS name"));
            }
            None if self.webhook_handshake => {
                return Err(err(
                    &["origin"],
                    "webhook_handshake needs the origin (the DNS name of this sender)",
                ));
            }
            _ => {}
        }
        Ok(())
    }
}

/// Whether a URL names this host (`127.0.0.0/8`, `::1`, `localhost`): plain HTTP to it does
/// not cross a network.
fn is_loopback(url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => {
            let host = host.to_ascii_lowercase();
            host == "localhost" || host.ends_with(".localhost")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink(extra: &str) -> Result<(), KeyError> {
        let config: HttpSinkConfig =
            toml::from_str(&format!("url = \"https://example.com/x\"\n{extra}")).unwrap();
        let url = reqwest::Url::parse(&config.url).unwrap();
        config.check_outbound(&url)
    }

    #[test]
    fn outbound_checks_name_the_key() {
        let cases: &[(&str, &[&str])] = &[
            ("tls = { ca = \"/nonexistent/ca.pem\" }", &["tls", "ca"]),
            ("bearer_token = \"\"", &["bearer_token"]),
            ("bearer_token = \"file:/nonexistent/token\"", &["bearer_token"]),
            (
                "sign = { scheme = \"standard-webhooks\", secret = \"whsec_%%\" }",
                &["sign", "secret"],
            ),
            (
                "sign = { scheme = \"standard-webhooks\", secret = \"c2VjcmV0\" }\nheaders = { webhook-id = \"x\" }",
                &["headers"],
            ),
            ("webhook_handshake = true", &["origin"]),
            ("origin = \"\"", &["origin"]),
        ];
        for (extra, key) in cases {
            let KeyError { key: got, message } = sink(extra).unwrap_err();
            assert_eq!(got, key.to_vec(), "{extra}: {message}");
        }
        assert!(sink(
            "bearer_token = \"t0k3n\"\nsign = { scheme = \"standard-webhooks\", secret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\" }\nwebhook_handshake = true\norigin = \"ferry.example.com\""
        )
        .is_ok());
        let plain: HttpSinkConfig =
            toml::from_str("url = \"http://example.com/x\"\ntls = { server_name = \"x\" }")
                .unwrap();
        let url = reqwest::Url::parse(&plain.url).unwrap();
        assert_eq!(plain.check_outbound(&url).unwrap_err().key, vec!["tls"]);
    }

    /// M5: a token or signing secret is not sent to a plain `http://` target off this host
    /// unless the sink says `allow_insecure = true`.
    #[test]
    fn m5_credentials_need_https_off_loopback() {
        let check = |url: &str, extra: &str| {
            let config: HttpSinkConfig =
                toml::from_str(&format!("url = \"{url}\"\n{extra}")).unwrap();
            let parsed = reqwest::Url::parse(&config.url).unwrap();
            config.check_outbound(&parsed).map_err(|e| e.key)
        };
        let token = "bearer_token = \"t0k3n\"";
        let sign = "sign = { scheme = \"hmac-sha256\", secret = \"s3cret\" }";
        assert_eq!(
            check("http://example.com/x", token),
            Err(vec!["bearer_token".to_owned()])
        );
        assert_eq!(
            check("http://10.0.0.7/x", sign),
            Err(vec!["sign".to_owned()])
        );
        for url in [
            "https://example.com/x",
            "http://127.0.0.1:9/x",
            "http://[::1]:9/x",
            "http://localhost:9/x",
        ] {
            assert_eq!(check(url, token), Ok(()), "{url}");
            assert_eq!(check(url, sign), Ok(()), "{url}");
        }
        let insecure = format!("{token}\n{sign}\nallow_insecure = true");
        assert_eq!(check("http://example.com/x", &insecure), Ok(()));
        assert_eq!(check("http://example.com/x", ""), Ok(()));

        let text = format!("[sinks.p]\ntype = \"http\"\nurl = \"http://example.com/x\"\n{token}\n");
        let e =
            crate::config::Config::from_str_at(&text, std::path::Path::new("t.toml"), &|_| None)
                .unwrap_err()
                .to_string();
        assert!(
            e.contains("t.toml:4") && e.contains("sinks.p.bearer_token"),
            "{e}"
        );
    }

    #[test]
    fn webhook_origins() {
        let open = WebhookConfig::default();
        assert!(open.allows("anyone.example.com") && open.check().is_ok());
        let closed = WebhookConfig {
            allowed_origins: vec!["Partner.example.com".into()],
            allowed_rate: Some(120),
        };
        assert!(closed.allows("partner.EXAMPLE.com") && !closed.allows("other.example.com"));
        let bad = WebhookConfig {
            allowed_origins: vec![],
            allowed_rate: Some(0),
        };
        assert_eq!(
            bad.check().unwrap_err().key,
            vec!["webhook", "allowed_rate"]
        );
    }
}
