//! The security checks a listening source runs on each message: authenticate, rate-limit,
//! authorise, stamp the principal.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use serde::Deserialize;

use super::policy::{Denied, Policies};
use super::principal::{Method, Principal};
use super::ratelimit::{Limiter, RateKey, RateLimitConfig};
use crate::listener::Peer;
use crate::pipeline::Envelope;

/// How several configured authentication methods combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// One valid credential suffices, but any credential that is presented must be valid.
    #[default]
    Any,
    /// Every configured method must pass.
    All,
}

/// The `auth` table of a source.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    #[serde(default)]
    pub mode: AuthMode,
    /// Accept a verified client certificate (needs `tls.client_ca`).
    #[serde(default)]
    pub mtls: bool,
}

/// Authentication failed: 401 with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unauthenticated {
    /// `mtls`, `jwt`, `hmac` or `none`.
    pub method: &'static str,
    pub reason: String,
    /// The header that carried the refused credential.
    pub header: Option<String>,
}

/// The compiled security settings of one source.
pub struct SourceSecurity {
    source: Arc<str>,
    auth: Option<AuthConfig>,
    limiter: Option<Limiter>,
    require_policy: bool,
}

impl SourceSecurity {
    pub fn build(
        source: &str,
        auth: Option<&AuthConfig>,
        rate_limit: Option<&RateLimitConfig>,
        require_policy: bool,
    ) -> Result<SourceSecurity, String> {
        let limiter = rate_limit
            .map(Limiter::new)
            .transpose()
            .map_err(|e| format!("rate_limit: {e}"))?;
        Ok(SourceSecurity {
            source: source.into(),
            auth: auth.cloned(),
            limiter,
            require_policy,
        })
    }

    /// Establishes the principal of a request.
    pub fn authenticate(
        &self,
        peer: Option<&Peer>,
        _headers: &HeaderMap,
        _body: &[u8],
    ) -> Result<Principal, Unauthenticated> {
        let Some(auth) = &self.auth else {
            return Ok(Principal::anonymous());
        };
        let mut valid: Vec<Principal> = Vec::new();
        let mut missing: Vec<&'static str> = Vec::new();
        if auth.mtls {
            match peer.and_then(|p| p.certificate_identity.clone()) {
                Some(id) => valid.push(Principal {
                    method: Method::Mtls,
                    id,
                }),
                None => missing.push("mtls"),
            }
        }
        match auth.mode {
            AuthMode::All if !missing.is_empty() => Err(Unauthenticated {
                method: missing[0],
                reason: format!(
                    "no {} credential presented; every configured method must pass",
                    missing[0]
                ),
                header: None,
            }),
            _ => valid.into_iter().next().ok_or_else(|| Unauthenticated {
                method: "none",
                reason: "no credentials presented".into(),
                header: Some("authorization".into()),
            }),
        }
    }

    /// Takes `n` events from the principal's (or IP's, or source's) budget.
    pub fn rate_limit(
        &self,
        principal: &Principal,
        ip: Option<IpAddr>,
        n: u32,
    ) -> Result<(), Duration> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        match limiter.key() {
            RateKey::Principal => limiter.check(principal, n),
            RateKey::Ip => limiter.check(ip, n),
            RateKey::Source => limiter.check(&*self.source, n),
        }
    }

    /// Checks every event against the policies, then stamps the principal into it and
    /// restricts its routes. Nothing is changed unless every event passes.
    pub fn authorize(
        &self,
        policies: &Policies,
        principal: &Principal,
        envelopes: &mut [Envelope],
    ) -> Result<(), (usize, Denied)> {
        let mut grants = Vec::with_capacity(envelopes.len());
        for (i, e) in envelopes.iter().enumerate() {
            let grant = policies
                .authorize(
                    principal,
                    e.event.ty(),
                    e.event.source(),
                    self.require_policy,
                )
                .map_err(|d| (i, d))?;
            grants.push(grant);
        }
        for (e, grant) in envelopes.iter_mut().zip(grants) {
            principal.stamp(&mut e.event);
            e.routes = grant.routes.map(Into::into);
        }
        Ok(())
    }
}
