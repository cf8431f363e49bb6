//! The security checks a listening source runs on each message: authenticate, rate-limit,
//! authorise, stamp the principal.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use serde::Deserialize;

use super::hmac::{HmacConfig, HmacVerifier, Verified};
use super::jwt::{JwtConfig, JwtVerifier};
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
    /// Accept JWT bearer tokens (`Authorization: Bearer`, or the `access_token` query
    /// parameter).
    #[serde(default)]
    pub jwt: Option<JwtConfig>,
    /// Accept webhook signatures over the raw body.
    #[serde(default)]
    pub hmac: Option<HmacConfig>,
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
    auth: Option<Auth>,
    limiter: Option<Limiter>,
    require_policy: bool,
}

struct Auth {
    mode: AuthMode,
    mtls: bool,
    jwt: Option<JwtVerifier>,
    hmac: Option<HmacVerifier>,
}

/// A request's authenticated principal, and what its HMAC verification recorded against
/// replays (to release if the message is not accepted).
pub struct Authenticated {
    pub principal: Principal,
    pub hmac: Option<Verified>,
    /// When a verified JWT stops being valid (its `exp` plus the leeway, unix seconds), for
    /// sessions that outlive the request (WebSocket).
    pub expires: Option<u64>,
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
        // Key and secret files resolve against the working directory, like every path.
        let base = std::path::Path::new(".");
        let auth = match auth {
            None => None,
            Some(a) => {
                let jwt = a
                    .jwt
                    .as_ref()
                    .map(|j| JwtVerifier::load(j, base))
                    .transpose()
                    .map_err(|e| format!("auth.jwt: {e}"))?;
                let hmac = a
                    .hmac
                    .as_ref()
                    .map(|h| HmacVerifier::load(h, base))
                    .transpose()
                    .map_err(|e| format!("auth.hmac: {e}"))?;
                if !a.mtls && jwt.is_none() && hmac.is_none() {
                    return Err("auth: configure at least one of mtls, jwt, hmac".into());
                }
                Some(Auth {
                    mode: a.mode,
                    mtls: a.mtls,
                    jwt,
                    hmac,
                })
            }
        };
        Ok(SourceSecurity {
            source: source.into(),
            auth,
            limiter,
            require_policy,
        })
    }

    /// Establishes the principal of a request. With `mode = "any"` one valid credential
    /// suffices but every presented credential must be valid (a bad token is never ignored);
    /// with `"all"` every configured method must pass. `query` is the URI query (for
    /// `access_token`).
    pub fn authenticate(
        &self,
        peer: Option<&Peer>,
        headers: &HeaderMap,
        query: Option<&str>,
        body: &[u8],
    ) -> Result<Authenticated, Unauthenticated> {
        let Some(auth) = &self.auth else {
            return Ok(Authenticated {
                principal: Principal::anonymous(),
                hmac: None,
                expires: None,
            });
        };
        let mut valid: Vec<Principal> = Vec::new();
        let mut missing: Vec<&'static str> = Vec::new();
        let mut verified_hmac = None;
        let mut expires = None;
        if auth.mtls {
            match peer.and_then(|p| p.certificate_identity.clone()) {
                Some(id) => valid.push(Principal {
                    method: Method::Mtls,
                    id,
                }),
                None => missing.push("mtls"),
            }
        }
        if let Some(jwt) = &auth.jwt {
            match bearer(headers, query) {
                Some(token) => match jwt.verify(&token) {
                    Ok(claims) => {
                        expires = claims.exp.map(|e| e.saturating_add(jwt.leeway_secs()));
                        valid.push(Principal {
                            method: Method::Jwt,
                            id: claims.sub,
                        })
                    }
                    Err(e) => {
                        return Err(Unauthenticated {
                            method: "jwt",
                            reason: format!("invalid token ({}): {e}", e.reason()),
                            header: Some("authorization".into()),
                        })
                    }
                },
                None => missing.push("jwt"),
            }
        }
        if let Some(hmac) = &auth.hmac {
            let header = |name: &str| {
                headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            match hmac.verify_recorded(&header, body, now) {
                Ok(v) => {
                    verified_hmac = Some(v);
                    valid.push(Principal {
                        method: Method::Hmac,
                        id: self.source.to_string(),
                    });
                }
                // Only an absent signature header counts as "not presented".
                Err(e)
                    if matches!(e, super::hmac::HmacError::MissingHeader(_))
                        && !signature_present(headers) =>
                {
                    missing.push("hmac");
                }
                Err(e) => {
                    return Err(Unauthenticated {
                        method: "hmac",
                        reason: format!("signature refused ({}): {e}", e.reason()),
                        header: e.header().map(str::to_owned),
                    })
                }
            }
        }
        let release = |v: &Option<Verified>| {
            if let (Some(h), Some(v)) = (&auth.hmac, v) {
                h.release(v);
            }
        };
        if auth.mode == AuthMode::All && !missing.is_empty() {
            release(&verified_hmac);
            return Err(Unauthenticated {
                method: missing[0],
                reason: format!(
                    "no {} credential presented; every configured method must pass",
                    missing[0]
                ),
                header: None,
            });
        }
        match valid.into_iter().next() {
            Some(principal) => Ok(Authenticated {
                principal,
                hmac: verified_hmac,
                expires,
            }),
            None => Err(Unauthenticated {
                method: "none",
                reason: "no credentials presented".into(),
                header: Some("authorization".into()),
            }),
        }
    }

    /// The message was verified but not accepted: let its retry pass the replay check.
    pub fn release(&self, authenticated: &Authenticated) {
        if let (Some(auth), Some(v)) = (&self.auth, &authenticated.hmac) {
            if let Some(h) = &auth.hmac {
                h.release(v);
            }
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

/// The bearer token of a request: `Authorization: Bearer <token>` or `access_token=<token>`.
fn bearer(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    if let Some(value) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let (scheme, token) = value.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_owned());
    }
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("access_token="))
        .map(percent_decode)
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// Whether any known webhook signature header is present.
fn signature_present(headers: &HeaderMap) -> bool {
    ["webhook-signature", "x-hub-signature-256"]
        .iter()
        .any(|h| headers.contains_key(*h))
}
