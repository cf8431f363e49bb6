//! Verification of JSON Web Tokens (RFC 7519) against keys fixed when the config is loaded.
//!
//! # Rules
//!
//! - **The algorithm comes from the key, never from the token.** Each key has a fixed set of
//!   allowed algorithms: an RSA key allows the `alg` its JWKS entry declares, or RS256 and
//!   PS256 when none is declared (always for PEM files); EC P-256 allows ES256, P-384 ES384,
//!   Ed25519 EdDSA, and a shared secret (`oct` or inline `secrets`) its one HS algorithm. A
//!   token whose header `alg` is not allowed for the selected key is refused as
//!   [`JwtError::Algorithm`]; so is `alg: none`, always. An RSA key never accepts HS*, so a
//!   token "signed" with the RSA public key as an HMAC secret is refused.
//! - **Key selection**: a token whose `kid` names a key is checked against that key only. A
//!   `kid` that names no key is checked against the keys that have none (PEM files, inline
//!   secrets, JWKS entries without `kid`), and refused as [`JwtError::UnknownKey`] when every
//!   key has one or none of those verifies it. A token without `kid` is checked against every key that allows its `alg`,
//!   in configuration order, and accepted by the first that verifies it.
//! - **Claims** are read only after the signature verified. `exp` is required (a token
//!   without it is [`JwtError::Malformed`], `"missing exp"`); `exp` and `nbf` are checked with
//!   `leeway_secs` of clock skew. `iss` must equal `issuer` when that is configured. `aud`
//!   must contain `audience` when that is configured; when it is not, a token that carries a
//!   non-empty `aud` is refused (RFC 7519 §4.1.3: the gateway cannot identify itself with
//!   it). `sub` is required and becomes the principal.
//! - Header parameters listed in `crit` are not understood, so such tokens are refused.
//! - Shared secrets shorter than their hash output (32, 48, 64 bytes for HS256/384/512,
//!   RFC 7518 §3.2), private keys in PEM files and RSA keys under 2048 bits are refused at load.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use serde_json::{Map, Value};

use super::secret::Secret;
use keys::{check_secret_length, load_jwks, load_pem, VerificationKey};

mod keys;

/// Where keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// Public keys in PEM files (RSA, EC P-256/P-384 or Ed25519), one key per file.
    PemFiles(Vec<PathBuf>),
    /// A JSON Web Key Set file (RFC 7517).
    Jwks(PathBuf),
}

/// The `keys` setting: one path or a list of paths. A path ending in `.json` is a JWKS
/// file; any other path is a PEM file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(untagged)]
pub enum KeysSetting {
    /// A single JWKS or PEM file.
    One(crate::file_ref::FileRef),
    /// Several files.
    Many(Vec<crate::file_ref::FileRef>),
}

impl Default for KeysSetting {
    fn default() -> Self {
        Self::Many(Vec::new())
    }
}

impl KeysSetting {
    /// The sources named by this setting: each `.json` path is a JWKS, all other paths are
    /// gathered into one [`KeySource::PemFiles`].
    pub fn sources(&self) -> Vec<KeySource> {
        let paths: &[crate::file_ref::FileRef] = match self {
            Self::One(path) => std::slice::from_ref(path),
            Self::Many(paths) => paths,
        };
        let mut pem = Vec::new();
        let mut sources = Vec::new();
        for path in paths {
            if path
                .extension()
                .is_some_and(|ext| ext.eq_ignore_ascii_case("json"))
            {
                sources.push(KeySource::Jwks(path.to_path_buf()));
            } else {
                pem.push(path.to_path_buf());
            }
        }
        if !pem.is_empty() {
            sources.insert(0, KeySource::PemFiles(pem));
        }
        sources
    }
}

/// JWT verification settings of a source.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// A JWKS file path (`.json`) or a PEM file path, or a list of such paths, relative to the
    /// config file. May be omitted when only `secrets` are used.
    #[serde(default)]
    pub keys: KeysSetting,
    /// The required `iss` claim, if any.
    pub issuer: Option<String>,
    /// The audience this gateway identifies itself with in the `aud` claim, if any.
    pub audience: Option<String>,
    /// Clock skew allowed when checking `exp` and `nbf`.
    #[serde(default = "default_leeway_secs")]
    pub leeway_secs: u64,
    /// For HMAC keys given inline (HS256/384/512): secrets (already `${ENV}`-interpolated by
    /// the config loader, or `file:<path>`). Empty strings are ignored.
    #[serde(default)]
    pub secrets: Vec<Secret>,
    /// Which HS algorithm the inline secrets use (default HS256).
    #[serde(default)]
    pub secret_algorithm: Option<String>,
}

fn default_leeway_secs() -> u64 {
    30
}

/// The claims of a verified token.
#[derive(Debug, Clone, PartialEq)]
pub struct Claims {
    /// The subject: who the token speaks for.
    pub sub: String,
    /// The issuer, if the token names one.
    pub iss: Option<String>,
    /// The audiences (a single string `aud` becomes one entry).
    pub aud: Vec<String>,
    /// The expiry, in unix seconds.
    pub exp: Option<u64>,
    /// Every other claim (`nbf`, `iat`, custom claims).
    pub other: Map<String, Value>,
}

/// Why a token was refused or the keys could not be loaded.
#[derive(thiserror::Error, Debug)]
pub enum JwtError {
    /// The token is not a well-formed JWT, or lacks `exp`.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The token's `kid` names no configured key.
    #[error("no key with kid `{0}`")]
    UnknownKey(String),
    /// The token's `alg` is `none`, unknown, or not allowed for the selected key.
    #[error("algorithm refused: {0}")]
    Algorithm(String),
    /// No selected key verifies the signature.
    #[error("signature does not verify")]
    Signature,
    /// `exp` lies in the past (beyond the leeway).
    #[error("token expired")]
    Expired,
    /// `nbf` lies in the future (beyond the leeway).
    #[error("token not yet valid")]
    NotYetValid,
    /// `iss` is missing or not the configured issuer.
    #[error("issuer not accepted")]
    Issuer,
    /// `aud` does not contain the configured audience.
    #[error("audience not accepted")]
    Audience,
    /// `sub` is missing or not a non-empty string.
    #[error("token has no subject (`sub`)")]
    MissingSubject,
    /// A key file cannot be read or holds no usable key.
    #[error("cannot load keys from {}: {message}", path.display())]
    Load {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The settings themselves are unusable (no keys, bad `secret_algorithm`, short secret).
    #[error("invalid JWT settings: {0}")]
    Config(String),
}

impl JwtError {
    /// A short, stable reason for metrics labels and problem details.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::UnknownKey(_) => "unknown_key",
            Self::Algorithm(_) => "algorithm",
            Self::Signature => "signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::Issuer => "issuer",
            Self::Audience => "audience",
            Self::MissingSubject => "missing_subject",
            Self::Load { .. } => "load",
            Self::Config(_) => "config",
        }
    }
}

/// Verifies tokens against the keys loaded from a [`JwtConfig`]. Built once per config
/// generation; cheap to share between tasks.
pub struct JwtVerifier {
    keys: Vec<VerificationKey>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway_secs: u64,
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<String> = self
            .keys
            .iter()
            .map(|key| format!("{} {:?}", key.origin, key.algorithms))
            .collect();
        f.debug_struct("JwtVerifier")
            .field("keys", &keys)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway_secs", &self.leeway_secs)
            .finish()
    }
}

/// The longest `kid` echoed back in an error.
const MAX_KID_IN_ERROR: usize = 64;

impl JwtVerifier {
    /// The clock skew allowed around `exp` and `nbf`.
    pub fn leeway_secs(&self) -> u64 {
        self.leeway_secs
    }

    /// Reads every key file and secret now, relative to `base_dir` (the config file's
    /// directory); errors name the file at fault.
    pub fn load(config: &JwtConfig, base_dir: &Path) -> Result<JwtVerifier, JwtError> {
        let mut keys = Vec::new();
        for source in config.keys.sources() {
            match source {
                KeySource::PemFiles(paths) => {
                    for path in paths {
                        keys.push(load_pem(&base_dir.join(path))?);
                    }
                }
                KeySource::Jwks(path) => keys.extend(load_jwks(&base_dir.join(path))?),
            }
        }

        let secret_algorithm = match config.secret_algorithm.as_deref() {
            None => Algorithm::HS256,
            Some(name) => match Algorithm::from_str(name) {
                Ok(alg) if alg.family() == AlgorithmFamily::Hmac => alg,
                _ => {
                    return Err(JwtError::Config(format!(
                        "secret_algorithm `{name}` is not one of HS256, HS384, HS512"
                    )))
                }
            },
        };
        for (index, secret) in config.secrets.iter().enumerate() {
            if secret.is_empty() {
                continue;
            }
            let value = secret
                .resolve(base_dir)
                .map_err(|err| match secret.file() {
                    Some(file) => JwtError::Load {
                        path: base_dir.join(file),
                        message: err.to_string(),
                    },
                    None => JwtError::Config(format!("secrets[{index}]: {err}")),
                })?;
            if value.is_empty() {
                continue;
            }
            check_secret_length(value.as_bytes(), secret_algorithm)
                .map_err(|message| JwtError::Config(format!("secrets[{index}]: {message}")))?;
            keys.push(VerificationKey {
                kid: None,
                algorithms: vec![secret_algorithm],
                key: DecodingKey::from_secret(value.as_bytes()),
                origin: format!("secrets[{index}]"),
            });
        }

        if keys.is_empty() {
            return Err(JwtError::Config(
                "no keys: set `keys` or at least one non-empty entry in `secrets`".into(),
            ));
        }
        for (i, key) in keys.iter().enumerate() {
            if let Some(kid) = &key.kid {
                if keys[..i]
                    .iter()
                    .any(|other| other.kid.as_ref() == Some(kid))
                {
                    return Err(JwtError::Config(format!("two keys share the kid `{kid}`")));
                }
            }
        }

        Ok(JwtVerifier {
            keys,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            leeway_secs: config.leeway_secs,
        })
    }

    /// Verifies a compact JWT against the current system time. `Ok(claims)` carries at
    /// least `sub`.
    pub fn verify(&self, token: &str) -> Result<Claims, JwtError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_secs());
        self.verify_at(token, now)
    }

    /// Verifies a compact JWT as of `now` (unix seconds).
    pub fn verify_at(&self, token: &str, now: u64) -> Result<Claims, JwtError> {
        let mut parts = token.split('.');
        let (Some(header_part), Some(payload_part), Some(signature_part), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed(
                "expected three dot-separated parts".into(),
            ));
        };
        let header = decode_json_object(header_part, "header")?;
        if header.contains_key("crit") {
            return Err(JwtError::Malformed(
                "`crit` header parameters are not supported".into(),
            ));
        }
        let alg = header_algorithm(&header)?;
        let kid = match header.get("kid") {
            None => None,
            Some(Value::String(kid)) => Some(kid.as_str()),
            Some(_) => return Err(JwtError::Malformed("`kid` is not a string".into())),
        };
        if URL_SAFE_NO_PAD.decode(signature_part).is_err() {
            return Err(JwtError::Malformed("signature is not base64url".into()));
        }

        let candidates = self.candidates(kid)?;
        // A `kid` that names no key was tried against the keys without one; if none of them
        // verifies the token, the unknown `kid` is the better explanation.
        let unknown_kid =
            kid.filter(|kid| !self.keys.iter().any(|k| k.kid.as_deref() == Some(*kid)));
        let allowed: Vec<&VerificationKey> = candidates
            .into_iter()
            .filter(|key| key.algorithms.contains(&alg))
            .collect();
        if allowed.is_empty() {
            if let Some(kid) = unknown_kid {
                return Err(JwtError::UnknownKey(
                    kid.chars().take(MAX_KID_IN_ERROR).collect(),
                ));
            }
            return Err(JwtError::Algorithm(format!(
                "{alg:?} is not allowed for the selected key"
            )));
        }
        let signed = &token[..header_part.len() + 1 + payload_part.len()];
        let verified = allowed.iter().any(|key| {
            jsonwebtoken::crypto::verify(signature_part, signed.as_bytes(), &key.key, alg)
                .unwrap_or(false)
        });
        if !verified {
            return Err(match unknown_kid {
                Some(kid) => JwtError::UnknownKey(kid.chars().take(MAX_KID_IN_ERROR).collect()),
                None => JwtError::Signature,
            });
        }

        let payload = decode_json_object(payload_part, "payload")?;
        self.check_claims(payload, now)
    }

    /// The keys a token with this `kid` may be checked against (see the module rules).
    fn candidates(&self, kid: Option<&str>) -> Result<Vec<&VerificationKey>, JwtError> {
        let Some(kid) = kid else {
            return Ok(self.keys.iter().collect());
        };
        let named: Vec<&VerificationKey> = self
            .keys
            .iter()
            .filter(|key| key.kid.as_deref() == Some(kid))
            .collect();
        if !named.is_empty() {
            return Ok(named);
        }
        let anonymous: Vec<&VerificationKey> =
            self.keys.iter().filter(|key| key.kid.is_none()).collect();
        if anonymous.is_empty() {
            return Err(JwtError::UnknownKey(
                kid.chars().take(MAX_KID_IN_ERROR).collect(),
            ));
        }
        Ok(anonymous)
    }

    /// Checks the registered claims of a token whose signature verified.
    fn check_claims(&self, mut payload: Map<String, Value>, now: u64) -> Result<Claims, JwtError> {
        let exp = match payload.remove("exp") {
            None => return Err(JwtError::Malformed("missing exp".into())),
            Some(value) => numeric_date(&value, "exp")?,
        };
        if now >= exp.saturating_add(self.leeway_secs) {
            return Err(JwtError::Expired);
        }
        if let Some(value) = payload.get("nbf") {
            let nbf = numeric_date(value, "nbf")?;
            if now.saturating_add(self.leeway_secs) < nbf {
                return Err(JwtError::NotYetValid);
            }
        }

        let iss = match payload.remove("iss") {
            None => None,
            Some(Value::String(iss)) => Some(iss),
            Some(_) => return Err(JwtError::Malformed("`iss` is not a string".into())),
        };
        if let Some(issuer) = &self.issuer {
            if iss.as_ref() != Some(issuer) {
                return Err(JwtError::Issuer);
            }
        }

        let aud = match payload.remove("aud") {
            None => Vec::new(),
            Some(Value::String(aud)) => vec![aud],
            Some(Value::Array(items)) => items
                .into_iter()
                .map(|item| match item {
                    Value::String(aud) => Ok(aud),
                    _ => Err(JwtError::Malformed("`aud` holds a non-string".into())),
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(JwtError::Malformed("`aud` is not a string or array".into())),
        };
        match &self.audience {
            Some(audience) if !aud.contains(audience) => return Err(JwtError::Audience),
            None if !aud.is_empty() => return Err(JwtError::Audience),
            _ => {}
        }

        let sub = match payload.remove("sub") {
            Some(Value::String(sub)) if !sub.is_empty() => sub,
            _ => return Err(JwtError::MissingSubject),
        };

        Ok(Claims {
            sub,
            iss,
            aud,
            exp: Some(exp),
            other: payload,
        })
    }
}

/// The token's `alg`, refusing `none` and names this verifier does not know.
fn header_algorithm(header: &Map<String, Value>) -> Result<Algorithm, JwtError> {
    let name = match header.get("alg") {
        Some(Value::String(name)) => name.as_str(),
        Some(_) => return Err(JwtError::Malformed("`alg` is not a string".into())),
        None => return Err(JwtError::Malformed("header has no `alg`".into())),
    };
    if name.eq_ignore_ascii_case("none") {
        return Err(JwtError::Algorithm(
            "unsigned tokens (`alg: none`) are refused".into(),
        ));
    }
    Algorithm::from_str(name).map_err(|_| {
        JwtError::Algorithm(format!(
            "unsupported algorithm `{}`",
            name.chars().take(16).collect::<String>()
        ))
    })
}

/// Decodes one base64url part of a token into a JSON object.
fn decode_json_object(part: &str, what: &str) -> Result<Map<String, Value>, JwtError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| JwtError::Malformed(format!("{what} is not base64url")))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(JwtError::Malformed(format!("{what} is not a JSON object"))),
        Err(_) => Err(JwtError::Malformed(format!("{what} is not JSON"))),
    }
}

/// A NumericDate claim (RFC 7519 §2): non-negative seconds, fractions truncated.
fn numeric_date(value: &Value, claim: &str) -> Result<u64, JwtError> {
    if let Some(seconds) = value.as_u64() {
        return Ok(seconds);
    }
    match value.as_f64() {
        // Truncation is the intent: a NumericDate may carry fractions of a second.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        Some(seconds) if seconds.is_finite() && seconds >= 0.0 && seconds < u64::MAX as f64 => {
            Ok(seconds as u64)
        }
        _ => Err(JwtError::Malformed(format!(
            "`{claim}` is not a NumericDate"
        ))),
    }
}

#[cfg(test)]
mod tests;
