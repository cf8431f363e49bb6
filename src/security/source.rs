//! The security checks a listening source runs on each message: authenticate, rate-limit,
//! authorise, stamp the principal.

use crate::key_error::KeyError;
use std::net::IpAddr;
use std::sync::Arc;

use http::HeaderMap;
use serde::Deserialize;

use super::hmac::{HmacConfig, HmacError, HmacVerifier, Verified};
use super::jwt::{JwtConfig, JwtVerifier};
use super::policy::{Denied, Policies};
use super::principal::{Method, Principal};
use super::ratelimit::{Limiter, RateKey, RateLimitConfig, RateRefusal};
use crate::listener::Peer;
use ferry_core::CloudEvent;

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
    /// Usernames and their passwords (`mqtt-server` sources: the CONNECT packet's
    /// credentials); principal `user:<username>`.
    #[serde(default)]
    pub passwords: std::collections::BTreeMap<String, super::secret::Secret>,
}

impl AuthConfig {
    /// Checks what the source checks when it is built (the HMAC settings and secrets, the
    /// JWT keys and secrets); an error names the key below the `auth` table.
    pub fn check(&self) -> Result<(), KeyError> {
        if let Some(hmac) = &self.hmac {
            // Secret files resolve against the working directory, as when the source is built.
            hmac.check(std::path::Path::new("."))
                .map_err(|e| e.under(&["hmac"]))?;
        }
        if let Some(jwt) = &self.jwt {
            // The keys and secrets load as when the source is built.
            JwtVerifier::load(jwt, std::path::Path::new("."))
                .map_err(|e| KeyError::at("jwt", e.to_string()))?;
        }
        for (user, secret) in &self.passwords {
            let key = || vec!["passwords".to_owned(), user.clone()];
            if user.is_empty() {
                return Err(KeyError::new(key(), "a username must not be empty"));
            }
            match secret.resolve(std::path::Path::new(".")) {
                Ok(p) if p.is_empty() => {
                    return Err(KeyError::new(
                        key(),
                        "the password is empty (an unset ${VARIABLE}?)",
                    ))
                }
                Ok(_) => {}
                Err(e) => return Err(KeyError::new(key(), format!("cannot read: {e}"))),
            }
        }
        Ok(())
    }
}

/// Authentication failed: 401 with the reason (or, for a message whose delivery is under
/// way or that cannot be remembered now, 409 or 503: see [`Refusal`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unauthenticated {
    /// `mtls`, `jwt`, `hmac` or `none`.
    pub method: &'static str,
    pub reason: String,
    /// The header that carried the refused credential.
    pub header: Option<String>,
    pub refusal: Refusal,
    /// The `WWW-Authenticate` challenge of a 401 answer.
    pub challenge: String,
}

/// Why an MQTT CONNECT was refused: CONNACK 0x86 / return code 4, or 0x87 / 5.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectRefusal {
    /// A credential was presented and is wrong: bad username or password.
    BadCredentials(String),
    /// No (or not enough) credentials: not authorized.
    NotAuthorized(String),
}

impl ConnectRefusal {
    pub fn reason(&self) -> &str {
        match self {
            ConnectRefusal::BadCredentials(r) | ConnectRefusal::NotAuthorized(r) => r,
        }
    }
}

/// What kind of refusal an [`Unauthenticated`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No valid credential: 401.
    Credentials,
    /// A valid signature of a message whose first copy is still being delivered: 409, the
    /// sender should retry later.
    InProgress,
    /// A valid signature that the replay cache cannot record now: 503, retry later.
    Busy,
}

/// The compiled security settings of one source.
pub struct SourceSecurity {
    source: Arc<str>,
    auth: Option<Auth>,
    limiter: Option<Arc<Limiter>>,
    rate_limit: Option<RateLimitConfig>,
    require_policy: bool,
}

struct Auth {
    mode: AuthMode,
    mtls: bool,
    jwt: Option<JwtVerifier>,
    hmac: Option<HmacVerifier>,
    /// Each user's password as a [`crate::keyed::digest`], compared in constant time.
    passwords: std::collections::HashMap<String, [u8; 32]>,
}

/// A request's authenticated principal, and what its HMAC verification recorded against
/// replays. Dropping it without [`Authenticated::accept`] releases that record, so the
/// sender's retry of a message that was not accepted passes.
#[must_use = "dropping an authentication releases its replay record"]
pub struct Authenticated {
    pub principal: Principal,
    pub hmac: Option<Verified>,
    /// When a verified JWT stops being valid (its `exp` plus the leeway, unix seconds), for
    /// sessions that outlive the request (WebSocket).
    pub expires: Option<u64>,
}

/// The moment a unix time (a token's `exp`) comes, on the runtime's clock.
pub fn expiry_instant(unix_secs: u64) -> tokio::time::Instant {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let left = std::time::Duration::from_secs(unix_secs).saturating_sub(now);
    tokio::time::Instant::now() + left
}

impl Authenticated {
    /// A retry, signed anew, of a webhook that was already accepted: acknowledge it (2xx)
    /// and do not deliver it again.
    pub fn is_duplicate(&self) -> bool {
        self.hmac.as_ref().is_some_and(Verified::is_duplicate)
    }

    /// The message was accepted (delivered, or the WebSocket session opened): a retry of it
    /// is now a duplicate, and the same signed request again a replay.
    pub fn accept(&self) {
        if let Some(verified) = &self.hmac {
            verified.accept();
        }
    }
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
            .map_err(|e| format!("rate_limit: {e}"))?
            .map(Arc::new);
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
                let mut passwords = std::collections::HashMap::new();
                for (user, secret) in &a.passwords {
                    let password = secret
                        .resolve(base)
                        .map_err(|e| format!("auth.passwords.{user}: cannot read: {e}"))?;
                    passwords.insert(user.clone(), crate::keyed::digest([password.as_bytes()]));
                }
                if !a.mtls && jwt.is_none() && hmac.is_none() && passwords.is_empty() {
                    return Err("auth: configure at least one of mtls, jwt, hmac, passwords".into());
                }
                Some(Auth {
                    mode: a.mode,
                    mtls: a.mtls,
                    jwt,
                    hmac,
                    passwords,
                })
            }
        };
        Ok(SourceSecurity {
            source: source.into(),
            auth,
            limiter,
            rate_limit: rate_limit.cloned(),
            require_policy,
        })
    }

    /// Whether the request's bearer token still verifies under these settings (for a
    /// long-lived session after a reload). Only the token is checked: a signature the session
    /// presented once would now count as a replay.
    pub fn bearer_still_valid(&self, headers: &HeaderMap, query: Option<&str>) -> bool {
        let Some(jwt) = self.auth.as_ref().and_then(|a| a.jwt.as_ref()) else {
            return false;
        };
        bearer(headers, query).is_some_and(|token| jwt.verify(&token).is_ok())
    }

    /// Whether authentication needs the request body (an HMAC signature over it). When it
    /// does not, a source authenticates before reading the body.
    pub fn needs_body(&self) -> bool {
        self.auth.as_ref().is_some_and(|a| a.hmac.is_some())
    }

    /// Takes over the state of the settings this one replaces in an in-place reload of the
    /// source (a rotated secret, a renewed certificate): the replay cache when the HMAC
    /// scheme is the same, the rate-limit buckets when the rate limit is the same. Without
    /// it a reload would make every recently accepted webhook replayable once and let every
    /// limited client burst again.
    pub fn carry_over(&mut self, previous: &SourceSecurity) {
        if let (Some(auth), Some(old)) = (&mut self.auth, &previous.auth) {
            if let (Some(hmac), Some(old)) = (&mut auth.hmac, &old.hmac) {
                hmac.carry_over(old);
            }
        }
        if self.rate_limit.is_some() && self.rate_limit == previous.rate_limit {
            self.limiter.clone_from(&previous.limiter);
        }
    }

    /// The checks that need no body, to run before reading it: a request that presents no
    /// credential where one is required, or whose webhook signature headers are missing,
    /// too large or outside the timestamp window, is refused here exactly as
    /// [`SourceSecurity::authenticate`] would refuse it. A bearer token is verified here too
    /// (it needs no body); signatures are verified only by `authenticate`.
    pub fn precheck(
        &self,
        peer: Option<&Peer>,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Result<(), Unauthenticated> {
        let Some(auth) = &self.auth else {
            return Ok(());
        };
        let mut presented = false;
        let mut missing: Option<&'static str> = None;
        if auth.mtls {
            match peer.and_then(|p| p.certificate_identity.as_ref()) {
                Some(_) => presented = true,
                None => missing = missing.or(Some("mtls")),
            }
        }
        if let Some(jwt) = &auth.jwt {
            match bearer(headers, query) {
                // A token needs no body: verify it now, so a forged one costs no body read
                // (any credential presented must be valid, so it would be refused anyway).
                Some(token) => match jwt.verify(&token) {
                    Ok(_) => presented = true,
                    Err(e) => return Err(invalid_token(&e)),
                },
                None => missing = missing.or(Some("jwt")),
            }
        }
        if let Some(hmac) = &auth.hmac {
            if headers.contains_key(hmac.signature_header()) {
                presented = true;
                hmac.precheck(&header_reader(headers), unix_now())
                    .map_err(|e| self.hmac_refusal(e))?;
            } else {
                missing = missing.or(Some("hmac"));
            }
        }
        match missing {
            Some(method) if auth.mode == AuthMode::All => Err(self.missing(method)),
            _ if !presented => Err(self.none_presented()),
            _ => Ok(()),
        }
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
                    Err(e) => return Err(invalid_token(&e)),
                },
                None => missing.push("jwt"),
            }
        }
        if let Some(hmac) = &auth.hmac {
            // Any signature presented must be valid: only an absent signature header (of this
            // scheme, the configured one for `generic`) counts as "not presented".
            if headers.contains_key(hmac.signature_header()) {
                let verified = hmac
                    .verify_recorded(&header_reader(headers), body, unix_now())
                    .map_err(|e| self.hmac_refusal(e))?;
                verified_hmac = Some(verified);
                valid.push(Principal {
                    method: Method::Hmac,
                    id: self.source.to_string(),
                });
            } else {
                missing.push("hmac");
            }
        }
        if auth.mode == AuthMode::All && !missing.is_empty() {
            // Dropping `verified_hmac` releases what it recorded.
            return Err(self.missing(missing[0]));
        }
        match valid.into_iter().next() {
            Some(principal) => Ok(Authenticated {
                principal,
                hmac: verified_hmac,
                expires,
            }),
            None => Err(self.none_presented()),
        }
    }

    /// Establishes the principal of an MQTT connection from its client certificate and its
    /// CONNECT credentials. A username listed in `passwords` is checked against its password;
    /// otherwise, with `jwt` configured, the password is a JWT. As on HTTP, with `mode = "any"`
    /// every credential presented must be valid, with `"all"` every configured method must
    /// pass (a password counts as the `jwt` or `passwords` credential it was checked as).
    pub fn authenticate_connect(
        &self,
        peer: Option<&Peer>,
        username: Option<&str>,
        password: Option<&[u8]>,
    ) -> Result<Authenticated, ConnectRefusal> {
        let Some(auth) = &self.auth else {
            return Ok(Authenticated {
                principal: Principal::anonymous(),
                hmac: None,
                expires: None,
            });
        };
        let mut valid: Vec<Principal> = Vec::new();
        let mut missing: Option<&'static str> = None;
        let mut expires = None;
        if auth.mtls {
            match peer.and_then(|p| p.certificate_identity.clone()) {
                Some(id) => valid.push(Principal {
                    method: Method::Mtls,
                    id,
                }),
                None => missing = missing.or(Some("mtls")),
            }
        }
        let listed = username.and_then(|u| auth.passwords.get(u).map(|d| (u, d)));
        match (listed, password) {
            (Some((user, expected)), Some(presented)) => {
                if !crate::keyed::matches_digest(presented, expected) {
                    return Err(ConnectRefusal::BadCredentials(format!(
                        "wrong password for `{user}`"
                    )));
                }
                valid.push(Principal {
                    method: Method::Password,
                    id: user.to_owned(),
                });
            }
            (Some((user, _)), None) => {
                return Err(ConnectRefusal::BadCredentials(format!(
                    "no password for `{user}`"
                )))
            }
            (None, Some(presented)) if auth.jwt.is_some() => {
                let jwt = auth.jwt.as_ref().expect("checked");
                let token = std::str::from_utf8(presented).map_err(|_| {
                    ConnectRefusal::BadCredentials("the password is not a JWT".into())
                })?;
                let claims = jwt.verify(token).map_err(|e| {
                    ConnectRefusal::BadCredentials(format!("invalid token ({}): {e}", e.reason()))
                })?;
                expires = claims.exp.map(|e| e.saturating_add(jwt.leeway_secs()));
                valid.push(Principal {
                    method: Method::Jwt,
                    id: claims.sub,
                });
            }
            (None, Some(_)) if !auth.passwords.is_empty() => {
                return Err(ConnectRefusal::BadCredentials(match username {
                    Some(u) => format!("unknown user `{u}`"),
                    None => "a password without a username".into(),
                }))
            }
            _ => {
                if auth.jwt.is_some() {
                    missing = missing.or(Some("jwt"));
                } else if !auth.passwords.is_empty() {
                    missing = missing.or(Some("passwords"));
                }
            }
        }
        if let (AuthMode::All, Some(method)) = (auth.mode, missing) {
            return Err(ConnectRefusal::NotAuthorized(format!(
                "no {method} credential presented; every configured method must pass"
            )));
        }
        match valid.into_iter().next() {
            Some(principal) => Ok(Authenticated {
                principal,
                hmac: None,
                expires,
            }),
            None => Err(ConnectRefusal::NotAuthorized(
                "no credentials presented".into(),
            )),
        }
    }

    /// The message was verified but not accepted: let its retry pass the replay check.
    /// Dropping the [`Authenticated`] does the same.
    pub fn release(&self, authenticated: &Authenticated) {
        if let Some(verified) = &authenticated.hmac {
            verified.release();
        }
    }

    /// Takes `n` events from the principal's (or IP's, or source's) budget. IPv6 clients
    /// are keyed by their /64, the block one host typically holds.
    pub fn rate_limit(
        &self,
        principal: &Principal,
        ip: Option<IpAddr>,
        n: u32,
    ) -> Result<(), RateRefusal> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        match limiter.key() {
            RateKey::Principal => limiter.check(principal, n),
            RateKey::Ip => limiter.check(ip.map(ip_key), n),
            RateKey::Source => limiter.check(&*self.source, n),
        }
    }

    /// A refused webhook signature.
    fn hmac_refusal(&self, e: HmacError) -> Unauthenticated {
        let refusal = match e {
            HmacError::InProgress => Refusal::InProgress,
            HmacError::CacheFull => Refusal::Busy,
            _ => Refusal::Credentials,
        };
        Unauthenticated {
            method: "hmac",
            reason: format!("signature refused ({}): {e}", e.reason()),
            header: e.header().map(str::to_owned),
            refusal,
            challenge: self.challenge(),
        }
    }

    /// `mode = "all"` and a configured method has no credential.
    fn missing(&self, method: &'static str) -> Unauthenticated {
        Unauthenticated {
            method,
            reason: format!("no {method} credential; every configured method must pass"),
            header: None,
            refusal: Refusal::Credentials,
            challenge: self.challenge(),
        }
    }

    fn none_presented(&self) -> Unauthenticated {
        Unauthenticated {
            method: "none",
            reason: "no credentials".into(),
            header: Some("authorization".into()),
            refusal: Refusal::Credentials,
            challenge: self.challenge(),
        }
    }

    /// The challenge of a 401 that is not about an invalid token: `Bearer` when the source
    /// takes bearer tokens (RFC 6750 §3: no error code when none was presented), otherwise
    /// the scheme of what it does take.
    fn challenge(&self) -> String {
        let auth = self.auth.as_ref();
        if auth.is_some_and(|a| a.jwt.is_some()) {
            "Bearer".into()
        } else if auth.is_some_and(|a| a.hmac.is_some()) {
            format!("HMAC realm=\"{}\"", self.source)
        } else {
            format!("Certificate realm=\"{}\"", self.source)
        }
    }

    /// Checks every event against the policies, then stamps the principal into each and
    /// returns the routes each may take (`None`: every route). Nothing is changed unless every
    /// event passes; the index of the first refused one comes with the refusal.
    pub fn authorize<'e>(
        &self,
        policies: &Policies,
        principal: &Principal,
        events: impl IntoIterator<Item = &'e mut CloudEvent>,
    ) -> Result<Vec<Option<Vec<String>>>, (usize, Denied)> {
        let mut events: Vec<&mut CloudEvent> = events.into_iter().collect();
        let mut grants = Vec::with_capacity(events.len());
        for (i, e) in events.iter().enumerate() {
            let grant = policies
                .authorize(principal, e.ty(), e.source(), self.require_policy)
                .map_err(|d| (i, d))?;
            grants.push(grant.routes);
        }
        for e in &mut events {
            principal.stamp(e);
        }
        Ok(grants)
    }
}

/// The refusal of a bearer token that did not verify.
fn invalid_token(e: &super::jwt::JwtError) -> Unauthenticated {
    let reason = format!("invalid token ({}): {e}", e.reason());
    Unauthenticated {
        method: "jwt",
        challenge: invalid_token_challenge(&reason),
        reason,
        header: Some("authorization".into()),
        refusal: Refusal::Credentials,
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

/// The `WWW-Authenticate` value for a refused bearer token (RFC 6750 §3).
fn invalid_token_challenge(description: &str) -> String {
    // A quoted-string: no quotes, backslashes or control characters inside.
    let description: String = description
        .chars()
        .map(|c| match c {
            '"' | '\\' => '\'',
            c if c.is_ascii_graphic() || c == ' ' => c,
            _ => '?',
        })
        .collect();
    format!("Bearer error=\"invalid_token\", error_description=\"{description}\"")
}

/// Reads request headers by lowercase name for the HMAC verifier.
fn header_reader(headers: &HeaderMap) -> impl Fn(&str) -> Option<String> + '_ {
    |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The rate-limit key of a client address: IPv6 by its /64 (an IPv4-mapped address as the
/// IPv4 address it is).
fn ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(
                u128::from(v6) & !((1u128 << 64) - 1),
            )),
        },
    }
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// M2: one IPv6 host holds a /64, so its addresses share one budget; another /64 has its
    /// own.
    #[test]
    fn m2_ipv6_clients_are_limited_by_their_64() {
        let limit = RateLimitConfig {
            per_second: 1,
            burst: 1,
            key: RateKey::Ip,
        };
        let security = SourceSecurity::build("web", None, Some(&limit), false).unwrap();
        let principal = Principal::anonymous();
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        assert!(security
            .rate_limit(&principal, ip("2001:db8:1:2::1"), 1)
            .is_ok());
        let same_64 = (2..40)
            .filter(|i| {
                security
                    .rate_limit(&principal, ip(&format!("2001:db8:1:2::{i:x}")), 1)
                    .is_ok()
            })
            .count();
        assert_eq!(same_64, 0, "addresses of one /64 share its budget");
        assert!(security
            .rate_limit(&principal, ip("2001:db8:1:3::1"), 1)
            .is_ok());
    }
}
