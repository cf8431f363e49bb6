//! Trusted keys of the JWT verifier: PEM files, JWKS entries and shared secrets, each with
//! the fixed set of algorithms it may verify.

use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};

use super::JwtError;

/// One trusted key and the algorithms it may verify.
pub(super) struct VerificationKey {
    pub(super) kid: Option<String>,
    pub(super) algorithms: Vec<Algorithm>,
    pub(super) key: DecodingKey,
    /// Where the key came from, for `Debug`.
    pub(super) origin: String,
}

/// Refuses an HMAC secret shorter than its hash output (RFC 7518 §3.2).
pub(super) fn check_secret_length(secret: &[u8], alg: Algorithm) -> Result<(), String> {
    let minimum = match alg {
        Algorithm::HS384 => 48,
        Algorithm::HS512 => 64,
        _ => 32,
    };
    if secret.len() < minimum {
        return Err(format!(
            "a {alg:?} secret needs at least {minimum} bytes, this one has {}",
            secret.len()
        ));
    }
    Ok(())
}

fn load_error(path: &Path, message: impl Into<String>) -> JwtError {
    JwtError::Load {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Loads one PEM public key, detecting its type.
pub(super) fn load_pem(path: &Path) -> Result<VerificationKey, JwtError> {
    let bytes = std::fs::read(path).map_err(|err| load_error(path, err.to_string()))?;
    let text = String::from_utf8_lossy(&bytes);
    let label = text
        .split_once("-----BEGIN ")
        .and_then(|(_, rest)| rest.split_once("-----"))
        .map(|(label, _)| label.to_owned())
        .ok_or_else(|| load_error(path, "not a PEM file"))?;
    if label.contains("PRIVATE") {
        return Err(load_error(
            path,
            "holds a private key; configure the public key instead",
        ));
    }
    let key = DecodingKey::from_rsa_pem(&bytes)
        .or_else(|_| DecodingKey::from_ec_pem(&bytes))
        .or_else(|_| DecodingKey::from_ed_pem(&bytes))
        .map_err(|_| {
            load_error(
                path,
                "not a public key of type RSA, EC (P-256, P-384) or Ed25519",
            )
        })?;
    let algorithms = allowed_algorithms(&key, None).map_err(|message| load_error(path, message))?;
    Ok(VerificationKey {
        kid: None,
        algorithms,
        key,
        origin: path.display().to_string(),
    })
}

/// Loads the signature keys of a JWKS file. Entries marked for encryption (`use: enc` or an
/// encryption `alg`) are skipped; any other entry that cannot be used is an error.
pub(super) fn load_jwks(path: &Path) -> Result<Vec<VerificationKey>, JwtError> {
    let bytes = std::fs::read(path).map_err(|err| load_error(path, err.to_string()))?;
    let set: JwkSet = serde_json::from_slice(&bytes)
        .map_err(|err| load_error(path, format!("not a JWKS: {err}")))?;
    let mut keys = Vec::new();
    for (index, jwk) in set.keys.iter().enumerate() {
        let name = jwk
            .common
            .key_id
            .as_ref()
            .map_or_else(|| format!("keys[{index}]"), |kid| format!("kid `{kid}`"));
        if is_encryption_key(jwk) {
            continue;
        }
        let key = jwk_key(jwk).map_err(|message| load_error(path, format!("{name}: {message}")))?;
        keys.push(key);
    }
    if keys.is_empty() {
        return Err(load_error(path, "holds no signature keys"));
    }
    Ok(keys)
}

fn is_encryption_key(jwk: &Jwk) -> bool {
    matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption))
        || matches!(
            jwk.common.key_algorithm,
            Some(KeyAlgorithm::RSA1_5 | KeyAlgorithm::RSA_OAEP | KeyAlgorithm::RSA_OAEP_256)
        )
}

/// Builds a key from one JWKS entry, checking that its declared curve and `alg` fit its type.
fn jwk_key(jwk: &Jwk) -> Result<VerificationKey, String> {
    let declared = match jwk.common.key_algorithm {
        None => None,
        Some(alg) => {
            Some(Algorithm::try_from(alg).map_err(|_| format!("unsupported alg `{alg}`"))?)
        }
    };
    let key = DecodingKey::from_jwk(jwk).map_err(|err| format!("unusable key: {err}"))?;
    match &jwk.algorithm {
        AlgorithmParameters::OctetKeyPair(params) if params.curve != EllipticCurve::Ed25519 => {
            return Err(format!("unsupported OKP curve {:?}", params.curve));
        }
        AlgorithmParameters::EllipticCurve(params) => {
            let derived = Jwk::from_decoding_key(&key, None)
                .map_err(|err| format!("invalid EC key: {err}"))?;
            let matches = matches!(
                &derived.algorithm,
                AlgorithmParameters::EllipticCurve(found) if found.curve == params.curve
            );
            if !matches {
                return Err(format!(
                    "coordinates do not fit curve {:?} (P-256 and P-384 are supported)",
                    params.curve
                ));
            }
        }
        _ => {}
    }
    let algorithms = allowed_algorithms(&key, declared)?;
    Ok(VerificationKey {
        kid: jwk.common.key_id.clone(),
        algorithms,
        key,
        origin: jwk
            .common
            .key_id
            .as_ref()
            .map_or_else(|| "jwks entry".to_owned(), |kid| format!("kid {kid}")),
    })
}

/// The algorithms a key may verify: derived from the key's type, narrowed to the declared
/// `alg` when there is one.
fn allowed_algorithms(
    key: &DecodingKey,
    declared: Option<Algorithm>,
) -> Result<Vec<Algorithm>, String> {
    let family = key.family();
    if let Some(alg) = declared {
        if alg.family() != family {
            return Err(format!("alg {alg:?} does not fit a {family:?} key"));
        }
    }
    let algorithms = match family {
        AlgorithmFamily::Rsa => {
            let jwk = Jwk::from_decoding_key(key, None)
                .map_err(|err| format!("invalid RSA key: {err}"))?;
            if let AlgorithmParameters::RSA(params) = &jwk.algorithm {
                let modulus = URL_SAFE_NO_PAD
                    .decode(&params.n)
                    .map_err(|_| "invalid RSA modulus".to_owned())?;
                let bits = modulus
                    .iter()
                    .position(|byte| *byte != 0)
                    .map_or(0, |first| (modulus.len() - first) * 8);
                if bits < 2048 {
                    return Err(format!(
                        "RSA key of {bits} bits; at least 2048 are required"
                    ));
                }
            }
            match declared {
                Some(alg) => vec![alg],
                None => vec![Algorithm::RS256, Algorithm::PS256],
            }
        }
        AlgorithmFamily::Ec => {
            let jwk = Jwk::from_decoding_key(key, None)
                .map_err(|err| format!("invalid EC key: {err}"))?;
            let curve_alg = match &jwk.algorithm {
                AlgorithmParameters::EllipticCurve(params)
                    if params.curve == EllipticCurve::P256 =>
                {
                    Algorithm::ES256
                }
                AlgorithmParameters::EllipticCurve(params)
                    if params.curve == EllipticCurve::P384 =>
                {
                    Algorithm::ES384
                }
                _ => return Err("unsupported EC curve (P-256 and P-384 are supported)".into()),
            };
            if declared.is_some_and(|alg| alg != curve_alg) {
                return Err(format!(
                    "alg does not fit the curve; expected {curve_alg:?}"
                ));
            }
            vec![curve_alg]
        }
        AlgorithmFamily::Ed => {
            Jwk::from_decoding_key(key, None)
                .map_err(|err| format!("invalid Ed25519 key: {err}"))?;
            vec![Algorithm::EdDSA]
        }
        AlgorithmFamily::Hmac => {
            let alg = declared.unwrap_or(Algorithm::HS256);
            let secret = key
                .try_get_as_bytes()
                .map_err(|err| format!("invalid secret: {err}"))?;
            check_secret_length(secret, alg)?;
            vec![alg]
        }
    };
    Ok(algorithms)
}
