//! HMAC signatures of webhooks: verification of inbound raw bodies, signing of outbound ones.
//!
//! Three schemes are verified, always over the raw body before it is parsed:
//!
//! - `standard-webhooks` (<https://www.standardwebhooks.com>): headers `webhook-id`,
//!   `webhook-timestamp` (unix seconds) and `webhook-signature`, a space-separated list of
//!   `v1,<base64 HMAC-SHA256>` entries (entries of other versions are ignored); the signed
//!   content is `{id}.{timestamp}.{body}`. A secret is read as the reference libraries read
//!   it: base64 after an optional `whsec_` prefix.
//! - `github`: `x-hub-signature-256: sha256=<hex HMAC-SHA256 of the body>`.
//! - `generic`: a configured header holding a hex or base64 HMAC-SHA256/512, optionally after
//!   a prefix, optionally over `{timestamp}.{body}` with the timestamp in its own header.
//!
//! # Cost
//!
//! Verification is bounded per request whatever the sender puts in the headers: the
//! signature header may hold at most [`MAX_SIGNATURES`] entries in at most
//! [`MAX_SIGNATURE_HEADER_BYTES`], the MAC over the body is computed once per active secret,
//! and each candidate is then compared with it in constant time. [`HmacVerifier::precheck`]
//! runs the checks that need no body (header presence and sizes, the timestamp window).
//!
//! # Replay protection
//!
//! A signed timestamp outside `±tolerance_secs` of now is [`HmacError::Stale`]. After a
//! signature verified, the message is recorded in the `replay` cache. The key is
//! `webhook-id` for Standard Webhooks, where the id is signed. For `github` and `generic` the
//! id headers (`x-github-delivery`, `id_header`) are not covered by the signature and a
//! replaying party could change them, so the verified signature itself is recorded too: the
//! same signed content is refused whatever id it carries.
//!
//! The cache remembers the outcome, not only the key: the same signed request a second time
//! is [`HmacError::Replayed`]; a sender's retry of an accepted message (same id, signed anew)
//! is verified as a [duplicate](Verified::is_duplicate), to be acknowledged without being
//! delivered again; a retry while the first copy is still being delivered is
//! [`HmacError::InProgress`]. A message that was verified but not accepted is released when
//! its [`Verified`] is dropped, so its retry passes.

mod replay;

use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use ::hmac::{Hmac, Mac};
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine as _;
use sha2::{Sha256, Sha512};

use super::secret::Secret;
pub use replay::ReplayCache;
use replay::{Admission, Recorded};

/// The most entries a `webhook-signature` header may hold (one per active secret of the
/// sender, with room for rotation and other versions).
pub const MAX_SIGNATURES: usize = 8;

/// The longest signature header accepted: [`MAX_SIGNATURES`] SHA-512 signatures with their
/// prefixes fit well within it.
pub const MAX_SIGNATURE_HEADER_BYTES: usize = 2048;

/// The webhook signature scheme of a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scheme {
    /// Standard Webhooks: `webhook-id`, `webhook-timestamp`, `webhook-signature`.
    StandardWebhooks,
    /// GitHub: `x-hub-signature-256`.
    Github,
    /// A header, algorithm and encoding given in the config.
    Generic,
}

/// Webhook signature settings of a source.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HmacConfig {
    /// `standard-webhooks`, `github` or `generic`.
    pub scheme: Scheme,
    /// Active secrets, several at once during rotation; empty strings are ignored, at least
    /// one non-empty secret is required. `file:<path>` reads the secret from a file.
    pub secrets: Vec<Secret>,
    /// The accepted distance between a signed timestamp and now.
    #[serde(default = "default_tolerance_secs")]
    pub tolerance_secs: u64,
    /// How many recently seen messages are remembered for replay protection (`0`: none).
    #[serde(default = "default_replay_cache")]
    pub replay_cache: usize,
    /// `generic` only: the signature header name.
    pub header: Option<String>,
    /// `generic` only: `sha256` (default) or `sha512`.
    pub algorithm: Option<String>,
    /// `generic` only: `hex` (default) or `base64`.
    pub encoding: Option<String>,
    /// `generic` only: a header with unix seconds; the signed content becomes
    /// `{timestamp}.{body}`.
    pub timestamp_header: Option<String>,
    /// `generic` only: a prefix of the signature value to strip, e.g. `sha256=`.
    pub prefix: Option<String>,
    /// `generic` only: a message id header for replay protection.
    pub id_header: Option<String>,
}

fn default_tolerance_secs() -> u64 {
    300
}

fn default_replay_cache() -> usize {
    100_000
}

/// Why a webhook was refused or the settings could not be used.
#[derive(thiserror::Error, Debug)]
pub enum HmacError {
    /// A required header is absent.
    #[error("missing header `{0}`")]
    MissingHeader(String),
    /// A header is present but unreadable.
    #[error("malformed signature headers: {0}")]
    Malformed(String),
    /// The signature header holds more than [`MAX_SIGNATURES`] entries or more than
    /// [`MAX_SIGNATURE_HEADER_BYTES`].
    #[error("`{header}` holds more than {MAX_SIGNATURES} signatures or {MAX_SIGNATURE_HEADER_BYTES} bytes")]
    TooManySignatures { header: String },
    /// The signed timestamp is outside the tolerance window.
    #[error("timestamp outside the tolerance window")]
    Stale,
    /// This very signed message was already accepted.
    #[error("message already seen")]
    Replayed,
    /// Another copy of this message is being delivered right now.
    #[error("another copy of this message is being delivered; retry later")]
    InProgress,
    /// The replay cache is full of messages still inside the window.
    #[error("too many recent messages to remember; retry later")]
    CacheFull,
    /// No active secret produces the signature.
    #[error("signature does not match")]
    Mismatch,
    /// The settings are unusable.
    #[error("invalid HMAC settings: {0}")]
    Config(String),
}

impl HmacError {
    /// A short, stable reason for metrics labels and problem details.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::MissingHeader(_) => "missing_header",
            Self::Malformed(_) => "malformed",
            Self::TooManySignatures { .. } => "too_many_signatures",
            Self::Stale => "stale",
            Self::Replayed => "replayed",
            Self::InProgress => "in_progress",
            Self::CacheFull => "replay_cache_full",
            Self::Mismatch => "mismatch",
            Self::Config(_) => "config",
        }
    }

    /// The header at fault, when one is missing or too large.
    pub fn header(&self) -> Option<&str> {
        match self {
            Self::MissingHeader(name) | Self::TooManySignatures { header: name } => Some(name),
            _ => None,
        }
    }
}

const STANDARD_ID: &str = "webhook-id";
const STANDARD_TIMESTAMP: &str = "webhook-timestamp";
const STANDARD_SIGNATURE: &str = "webhook-signature";
const GITHUB_SIGNATURE: &str = "x-hub-signature-256";
const GITHUB_DELIVERY: &str = "x-github-delivery";
const WHSEC_PREFIX: &str = "whsec_";

/// The hash under the HMAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Digest {
    Sha256,
    Sha512,
}

/// How a signature is written in its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Hex,
    Base64,
}

/// The `generic` scheme's settings, checked.
#[derive(Debug, Clone)]
struct GenericScheme {
    header: String,
    digest: Digest,
    encoding: Encoding,
    timestamp_header: Option<String>,
    prefix: Option<String>,
    id_header: Option<String>,
}

/// A settings error and the key path below the `hmac` table it is about.
type KeyedError = (Vec<String>, HmacError);

/// An active key and its index in the configured `secrets`.
struct Key {
    index: usize,
    bytes: Vec<u8>,
}

/// A message that passed verification, and what it recorded against replays. Dropping it
/// without [`Verified::accept`] releases the record (the message was not accepted, so the
/// sender's retry must pass).
#[derive(Debug)]
#[must_use = "dropping a verification releases its replay record"]
pub struct Verified {
    /// Index of the matching secret in the configured `secrets`.
    pub secret: usize,
    duplicate: bool,
    recorded: Option<Recorded>,
}

impl Verified {
    /// A retry of a message that was already accepted (same id, signed anew): acknowledge it
    /// again, do not deliver it twice.
    pub fn is_duplicate(&self) -> bool {
        self.duplicate
    }

    /// The message was accepted: a retry of it is now a [duplicate](Self::is_duplicate).
    pub fn accept(&self) {
        if let Some(recorded) = &self.recorded {
            recorded.accept();
        }
    }

    /// The message was not accepted: a retry of it passes. Dropping does the same.
    pub fn release(&self) {
        if let Some(recorded) = &self.recorded {
            recorded.release();
        }
    }
}

/// Verifies webhook signatures as configured by an [`HmacConfig`]. Built once per config
/// generation; cheap to share between tasks. Its replay cache can be carried over to the next
/// generation ([`HmacVerifier::carry_over`]).
pub struct HmacVerifier {
    scheme: Scheme,
    generic: Option<GenericScheme>,
    keys: Vec<Key>,
    tolerance_secs: u64,
    seen: Arc<Mutex<ReplayCache>>,
}

impl fmt::Debug for HmacVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let indices: Vec<usize> = self.keys.iter().map(|key| key.index).collect();
        f.debug_struct("HmacVerifier")
            .field("scheme", &self.scheme)
            .field("generic", &self.generic)
            .field("secrets", &indices)
            .field("tolerance_secs", &self.tolerance_secs)
            .finish_non_exhaustive()
    }
}

impl HmacConfig {
    /// Checks the settings and reads the secrets (`file:` paths relative to `base_dir`), as
    /// loading does; an error names the key at fault below the `hmac` table.
    pub fn check(&self, base_dir: &Path) -> Result<(), crate::key_error::KeyError> {
        self.keys(base_dir)
            .map(|_| ())
            .map_err(|(key, error)| crate::key_error::KeyError::new(key, error.to_string()))
    }

    /// The settings of the scheme and the active keys; an error carries the key path below
    /// the `hmac` table (`["secrets", "1"]`).
    fn keys(&self, base_dir: &Path) -> Result<(Option<GenericScheme>, Vec<Key>), KeyedError> {
        let at = |key: &str, error: HmacError| (vec![key.to_owned()], error);
        let generic = match self.scheme {
            Scheme::Generic => Some(generic_scheme(self).map_err(|(key, e)| at(key, e))?),
            Scheme::StandardWebhooks | Scheme::Github => {
                let generic_only = [
                    ("header", self.header.is_some()),
                    ("algorithm", self.algorithm.is_some()),
                    ("encoding", self.encoding.is_some()),
                    ("timestamp_header", self.timestamp_header.is_some()),
                    ("prefix", self.prefix.is_some()),
                    ("id_header", self.id_header.is_some()),
                ];
                if let Some((key, _)) = generic_only.iter().find(|(_, set)| *set) {
                    return Err(at(
                        key,
                        HmacError::Config(format!("`{key}` applies to the generic scheme only")),
                    ));
                }
                None
            }
        };

        let mut keys = Vec::new();
        for (index, secret) in self.secrets.iter().enumerate() {
            let at_secret = |message: String| {
                (
                    vec!["secrets".to_owned(), index.to_string()],
                    HmacError::Config(format!("secrets[{index}]{message}")),
                )
            };
            if secret.is_empty() {
                continue;
            }
            let value = secret.resolve(base_dir).map_err(|err| {
                let from = secret
                    .file()
                    .map_or_else(String::new, |file| format!(" (file {file})"));
                at_secret(format!("{from}: {err}"))
            })?;
            if value.is_empty() {
                continue;
            }
            let bytes = match self.scheme {
                Scheme::StandardWebhooks => standard_webhooks_key(&value).map_err(|err| {
                    let message = match err {
                        HmacError::Config(message) => message,
                        other => other.to_string(),
                    };
                    at_secret(format!(": {message}"))
                })?,
                Scheme::Github | Scheme::Generic => value.into_bytes(),
            };
            keys.push(Key { index, bytes });
        }
        if keys.is_empty() {
            return Err(at(
                "secrets",
                HmacError::Config("at least one non-empty secret is required".into()),
            ));
        }
        Ok((generic, keys))
    }
}

impl HmacVerifier {
    /// Checks the settings and reads the secrets now (`file:` paths relative to `base_dir`).
    pub fn load(config: &HmacConfig, base_dir: &Path) -> Result<HmacVerifier, HmacError> {
        let (generic, keys) = config.keys(base_dir).map_err(|(_, error)| error)?;
        Ok(HmacVerifier {
            scheme: config.scheme,
            generic,
            keys,
            tolerance_secs: config.tolerance_secs,
            seen: Arc::new(Mutex::new(ReplayCache::new(config.replay_cache))),
        })
    }

    /// Takes over the replay cache of the verifier this one replaces (a reload of its source:
    /// a rotated secret, a renewed certificate), so that messages accepted before the reload
    /// stay refused as replays after it. Only a cache of the same scheme is taken, since the
    /// keys differ between schemes; its capacity becomes this verifier's.
    pub fn carry_over(&mut self, previous: &HmacVerifier) {
        if previous.scheme != self.scheme {
            return;
        }
        let capacity = replay::lock(&self.seen).capacity();
        self.seen = Arc::clone(&previous.seen);
        replay::lock(&self.seen).set_capacity(capacity);
    }

    /// The header that carries this scheme's signature: its presence means a signature was
    /// presented, and must then be valid.
    pub fn signature_header(&self) -> &str {
        match (self.scheme, &self.generic) {
            (Scheme::StandardWebhooks, _) => STANDARD_SIGNATURE,
            (Scheme::Github, _) => GITHUB_SIGNATURE,
            (Scheme::Generic, Some(generic)) => &generic.header,
            (Scheme::Generic, None) => "",
        }
    }

    /// The checks that need no body: the headers are present and within their size limits,
    /// the timestamp is inside the window. [`HmacVerifier::verify_recorded`] runs them too.
    pub fn precheck(
        &self,
        header: &dyn Fn(&str) -> Option<String>,
        now: u64,
    ) -> Result<(), HmacError> {
        self.signed_headers(header, now).map(|_| ())
    }

    /// Verifies and records a webhook. `header(name)` returns a request header value by
    /// lowercase name, `body` is the raw body and `now` the unix time in seconds.
    ///
    /// Returns the index (in the configured `secrets`) of the secret that matched; the
    /// message counts as accepted (a caller that delivers it should use
    /// [`HmacVerifier::verify_recorded`] and accept it only once it was delivered).
    pub fn verify(
        &self,
        header: &dyn Fn(&str) -> Option<String>,
        body: &[u8],
        now: u64,
    ) -> Result<usize, HmacError> {
        let verified = self.verify_recorded(header, body, now)?;
        verified.accept();
        Ok(verified.secret)
    }

    /// Verifies a webhook and records it against replays as being delivered. The caller
    /// [accepts](Verified::accept) it once delivered; dropping the [`Verified`] otherwise
    /// releases the record, so that the sender's retry passes.
    pub fn verify_recorded(
        &self,
        header: &dyn Fn(&str) -> Option<String>,
        body: &[u8],
        now: u64,
    ) -> Result<Verified, HmacError> {
        let signed = self.signed_headers(header, now)?;
        let (index, signature) = match self.scheme {
            Scheme::StandardWebhooks => {
                let id = signed.id.as_deref().unwrap_or_default();
                let timestamp = signed.timestamp.as_deref().unwrap_or_default();
                let prefix = format!("{id}.{timestamp}.");
                self.match_any(
                    Digest::Sha256,
                    &[prefix.as_bytes(), body],
                    &signed.candidates,
                )?
            }
            Scheme::Github => self.match_any(Digest::Sha256, &[body], &signed.candidates)?,
            Scheme::Generic => {
                let digest = self.generic.as_ref().map_or(Digest::Sha256, |g| g.digest);
                let prefix = signed.timestamp.as_ref().map(|ts| format!("{ts}."));
                let parts: Vec<&[u8]> = match &prefix {
                    Some(prefix) => vec![prefix.as_bytes(), body],
                    None => vec![body],
                };
                self.match_any(digest, &parts, &signed.candidates)?
            }
        };
        let signature = replay::digest(&[b"sig:", &signature]);
        // For Standard Webhooks the id is signed; elsewhere the signature itself is the key,
        // and an unsigned id header is recorded beside it.
        let mut keys = Vec::with_capacity(2);
        if self.scheme != Scheme::StandardWebhooks {
            keys.push((signature, signature));
        }
        if let Some(id) = &signed.id {
            keys.push((replay::digest(&[b"id:", id.as_bytes()]), signature));
        }
        let horizon = now.saturating_sub(2 * self.tolerance_secs);
        let admission = replay::lock(&self.seen).admit(&keys, now, horizon, self.timestamped())?;
        Ok(match admission {
            Admission::Duplicate => Verified {
                secret: index,
                duplicate: true,
                recorded: None,
            },
            Admission::New(tickets) => Verified {
                secret: index,
                duplicate: false,
                recorded: Some(Recorded::new(Arc::clone(&self.seen), tickets)),
            },
        })
    }

    /// Reads the signature headers of a request and runs every check that needs no body.
    fn signed_headers(
        &self,
        header: &dyn Fn(&str) -> Option<String>,
        now: u64,
    ) -> Result<SignedHeaders, HmacError> {
        let required =
            |name: &str| header(name).ok_or_else(|| HmacError::MissingHeader(name.to_owned()));
        let bounded = |name: &str| {
            let value = required(name)?;
            if value.len() > MAX_SIGNATURE_HEADER_BYTES {
                return Err(HmacError::TooManySignatures {
                    header: name.to_owned(),
                });
            }
            Ok(value)
        };
        match self.scheme {
            Scheme::StandardWebhooks => {
                let signatures = bounded(STANDARD_SIGNATURE)?;
                let id = required(STANDARD_ID)?;
                let timestamp = required(STANDARD_TIMESTAMP)?;
                self.check_timestamp(&timestamp, STANDARD_TIMESTAMP, now)?;
                Ok(SignedHeaders {
                    candidates: standard_signatures(&signatures)?,
                    id: Some(id),
                    timestamp: Some(timestamp),
                })
            }
            Scheme::Github => {
                let value = bounded(GITHUB_SIGNATURE)?;
                let hex_value = value.trim().strip_prefix("sha256=").ok_or_else(|| {
                    HmacError::Malformed(format!(
                        "`{GITHUB_SIGNATURE}` does not start with `sha256=`"
                    ))
                })?;
                let signature = hex::decode(hex_value).map_err(|_| {
                    HmacError::Malformed(format!("`{GITHUB_SIGNATURE}` is not hex"))
                })?;
                Ok(SignedHeaders {
                    candidates: vec![signature],
                    id: header(GITHUB_DELIVERY),
                    timestamp: None,
                })
            }
            Scheme::Generic => {
                let Some(generic) = &self.generic else {
                    return Err(HmacError::Config("generic scheme without settings".into()));
                };
                let value = bounded(&generic.header)?;
                let id = match &generic.id_header {
                    Some(name) => Some(required(name)?),
                    None => None,
                };
                let timestamp = match &generic.timestamp_header {
                    Some(name) => {
                        let timestamp = required(name)?;
                        self.check_timestamp(&timestamp, name, now)?;
                        Some(timestamp)
                    }
                    None => None,
                };
                Ok(SignedHeaders {
                    candidates: vec![generic.decode_signature(&value)?],
                    id,
                    timestamp,
                })
            }
        }
    }

    /// Refuses a timestamp outside `±tolerance_secs` of `now`.
    fn check_timestamp(&self, value: &str, name: &str, now: u64) -> Result<(), HmacError> {
        let timestamp: u64 = value
            .trim()
            .parse()
            .map_err(|_| HmacError::Malformed(format!("`{name}` is not unix seconds")))?;
        if timestamp.abs_diff(now) > self.tolerance_secs {
            return Err(HmacError::Stale);
        }
        Ok(())
    }

    /// Computes the MAC of `parts` once per active key and compares it with every
    /// candidate in constant time; returns the matching key's index and the signature that
    /// matched. The cost is one pass over the body per key, whatever the candidates.
    fn match_any(
        &self,
        digest: Digest,
        parts: &[&[u8]],
        candidates: &[Vec<u8>],
    ) -> Result<(usize, Vec<u8>), HmacError> {
        for key in &self.keys {
            if let Some(candidate) = matching(digest, &key.bytes, parts, candidates)? {
                return Ok((key.index, candidate.clone()));
            }
        }
        Err(HmacError::Mismatch)
    }

    /// Whether the signed content carries a timestamp checked against the window.
    fn timestamped(&self) -> bool {
        match self.scheme {
            Scheme::StandardWebhooks => true,
            Scheme::Github => false,
            Scheme::Generic => self
                .generic
                .as_ref()
                .is_some_and(|generic| generic.timestamp_header.is_some()),
        }
    }
}

/// The signature headers of a request, read and checked.
struct SignedHeaders {
    candidates: Vec<Vec<u8>>,
    id: Option<String>,
    timestamp: Option<String>,
}

impl GenericScheme {
    /// Strips the prefix and decodes the signature header value.
    fn decode_signature(&self, value: &str) -> Result<Vec<u8>, HmacError> {
        let value = value.trim();
        let value = match &self.prefix {
            Some(prefix) => value.strip_prefix(prefix.as_str()).ok_or_else(|| {
                HmacError::Malformed(format!("`{}` does not start with `{prefix}`", self.header))
            })?,
            None => value,
        };
        let decoded = match self.encoding {
            Encoding::Hex => hex::decode(value).ok(),
            Encoding::Base64 => STANDARD
                .decode(value)
                .or_else(|_| STANDARD_NO_PAD.decode(value))
                .ok(),
        };
        decoded.ok_or_else(|| {
            HmacError::Malformed(format!("`{}` is not {:?}", self.header, self.encoding))
        })
    }
}

/// Checks the `generic` scheme's settings; an error names its key.
fn generic_scheme(config: &HmacConfig) -> Result<GenericScheme, (&'static str, HmacError)> {
    let lowercase = |name: &Option<String>| name.as_ref().map(|name| name.to_ascii_lowercase());
    let header = lowercase(&config.header).ok_or_else(|| {
        (
            "header",
            HmacError::Config("the generic scheme needs `header`".into()),
        )
    })?;
    let digest = match config.algorithm.as_deref() {
        None | Some("sha256") => Digest::Sha256,
        Some("sha512") => Digest::Sha512,
        Some(other) => {
            return Err((
                "algorithm",
                HmacError::Config(format!("algorithm `{other}` is not sha256 or sha512")),
            ))
        }
    };
    let encoding = match config.encoding.as_deref() {
        None | Some("hex") => Encoding::Hex,
        Some("base64") => Encoding::Base64,
        Some(other) => {
            return Err((
                "encoding",
                HmacError::Config(format!("encoding `{other}` is not hex or base64")),
            ))
        }
    };
    Ok(GenericScheme {
        header,
        digest,
        encoding,
        timestamp_header: lowercase(&config.timestamp_header),
        prefix: config.prefix.clone().filter(|prefix| !prefix.is_empty()),
        id_header: lowercase(&config.id_header),
    })
}

/// The `v1` signatures of a `webhook-signature` header; entries of other versions are
/// skipped. More than [`MAX_SIGNATURES`] entries are refused.
fn standard_signatures(value: &str) -> Result<Vec<Vec<u8>>, HmacError> {
    if value.split_whitespace().nth(MAX_SIGNATURES).is_some() {
        return Err(HmacError::TooManySignatures {
            header: STANDARD_SIGNATURE.to_owned(),
        });
    }
    let signatures: Vec<Vec<u8>> = value
        .split_whitespace()
        .filter_map(|entry| entry.strip_prefix("v1,"))
        .filter_map(|encoded| STANDARD.decode(encoded).ok())
        .collect();
    if signatures.is_empty() {
        return Err(HmacError::Malformed(format!(
            "`{STANDARD_SIGNATURE}` holds no v1 signature"
        )));
    }
    Ok(signatures)
}

/// The HMAC key of a Standard Webhooks secret, read as the reference libraries read it: the
/// base64 after an optional `whsec_` prefix. Anything else is refused (a secret that is not
/// base64 would otherwise only show as every signature failing).
pub fn standard_webhooks_key(secret: &str) -> Result<Vec<u8>, HmacError> {
    let encoded = secret.strip_prefix(WHSEC_PREFIX).unwrap_or(secret);
    match STANDARD.decode(encoded) {
        Ok(key) if !key.is_empty() => Ok(key),
        _ => Err(HmacError::Config(
            "a Standard Webhooks secret must be base64, after an optional `whsec_` prefix".into(),
        )),
    }
}

/// The key of an event-signing secret (`hmac-sha256`): the base64 part of `whsec_<base64>`,
/// or the raw bytes of a secret without the prefix.
pub fn event_signing_key(secret: &str) -> Result<Vec<u8>, HmacError> {
    match secret.strip_prefix(WHSEC_PREFIX) {
        Some(_) => standard_webhooks_key(secret),
        None => Ok(secret.as_bytes().to_vec()),
    }
}

/// Computes the HMAC of `parts` (concatenated) under `key` once, then compares it with each
/// candidate in constant time (`Mac::verify_slice` on a copy of the finished state).
fn matching<'c>(
    digest: Digest,
    key: &[u8],
    parts: &[&[u8]],
    candidates: &'c [Vec<u8>],
) -> Result<Option<&'c Vec<u8>>, HmacError> {
    fn first<M: Mac + Clone>(mac: M, candidates: &[Vec<u8>]) -> Option<&Vec<u8>> {
        candidates
            .iter()
            .find(|candidate| mac.clone().verify_slice(candidate).is_ok())
    }
    let invalid_key = |_| HmacError::Config("unusable HMAC key".into());
    Ok(match digest {
        Digest::Sha256 => {
            let mut mac = Hmac::<Sha256>::new_from_slice(key).map_err(invalid_key)?;
            parts.iter().for_each(|part| mac.update(part));
            first(mac, candidates)
        }
        Digest::Sha512 => {
            let mut mac = Hmac::<Sha512>::new_from_slice(key).map_err(invalid_key)?;
            parts.iter().for_each(|part| mac.update(part));
            first(mac, candidates)
        }
    })
}

/// Signs an outbound webhook the Standard Webhooks way: returns the `webhook-signature`
/// value `v1,<base64>` over `{msg_id}.{timestamp}.{body}`. The secret is read as by the
/// verifier; a secret that is not base64 is used as raw bytes (check it at load with
/// [`standard_webhooks_key`]).
pub fn sign_standard_webhooks(secret: &str, msg_id: &str, timestamp: u64, body: &[u8]) -> String {
    let key = standard_webhooks_key(secret).unwrap_or_else(|_| secret.as_bytes().to_vec());
    // HMAC accepts keys of any length, so keying cannot fail.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&key) else {
        return String::new();
    };
    mac.update(format!("{msg_id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests;
