use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use super::*;

/// The test clock: every token is judged as of this instant.
const NOW: u64 = 1_700_000_000;
const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "ferry";
/// An inline HS256 secret of 32 bytes.
const HS_SECRET: &str = "inline-hs256-secret-for-tests-32";
/// The `oct` key `hs-1` of `jwks.json`.
const JWKS_HS_SECRET: &str = "jwks-test-hs384-shared-secret-fixture-not-a-real-secret!";

fn keys_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/keys")
}

fn read_key(name: &str) -> Vec<u8> {
    std::fs::read(keys_dir().join(name)).expect("test key fixture")
}

fn rsa_key() -> EncodingKey {
    EncodingKey::from_rsa_pem(&read_key("rsa-private.pem")).expect("rsa key")
}

fn other_rsa_key() -> EncodingKey {
    EncodingKey::from_rsa_pem(&read_key("rsa-other-private.pem")).expect("rsa key")
}

fn ec256_key() -> EncodingKey {
    EncodingKey::from_ec_pem(&read_key("ec256-private.pem")).expect("p-256 key")
}

fn ec384_key() -> EncodingKey {
    EncodingKey::from_ec_pem(&read_key("ec384-private.pem")).expect("p-384 key")
}

fn ed_key() -> EncodingKey {
    EncodingKey::from_ed_pem(&read_key("ed25519-private.pem")).expect("ed25519 key")
}

fn claims() -> Value {
    json!({ "sub": "alice", "iss": ISSUER, "aud": AUDIENCE, "exp": NOW + 600, "tenant": "t1" })
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    if let Some(map) = claims.as_object_mut() {
        if value.is_null() {
            map.remove(key);
        } else {
            map.insert(key.to_owned(), value);
        }
    }
    claims
}

fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value, key: &EncodingKey) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    encode(&header, claims, key).expect("encodable token")
}

fn b64(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

/// A token assembled by hand, for headers `encode` refuses to write.
fn raw_token(header: &Value, claims: &Value, signature: &str) -> String {
    format!("{}.{}.{signature}", b64(header), b64(claims))
}

fn config(keys: KeysSetting, secrets: &[&str]) -> JwtConfig {
    JwtConfig {
        keys,
        issuer: Some(ISSUER.into()),
        audience: Some(AUDIENCE.into()),
        leeway_secs: 30,
        secrets: secrets.iter().map(|secret| Secret::new(*secret)).collect(),
        secret_algorithm: None,
    }
}

fn pem(names: &[&str]) -> KeysSetting {
    KeysSetting::Many(names.iter().map(|n| PathBuf::from(n).into()).collect())
}

fn jwks() -> KeysSetting {
    KeysSetting::One("jwks.json".into())
}

fn verifier(config: &JwtConfig) -> JwtVerifier {
    JwtVerifier::load(config, &keys_dir()).expect("loadable config")
}

#[test]
fn accepts_valid_tokens() {
    let rsa_pem = verifier(&config(pem(&["rsa-public.pem"]), &[]));
    let all_pem = verifier(&config(
        pem(&[
            "rsa-public.pem",
            "ec256-public.pem",
            "ec384-public.pem",
            "ed25519-public.pem",
        ]),
        &[],
    ));
    let jwks = verifier(&config(jwks(), &[]));
    let inline = verifier(&config(KeysSetting::default(), &["", HS_SECRET]));
    let jwks_hs = EncodingKey::from_secret(JWKS_HS_SECRET.as_bytes());
    let hs = EncodingKey::from_secret(HS_SECRET.as_bytes());

    let cases: Vec<(&str, &JwtVerifier, String)> = vec![
        (
            "RS256 against a PEM key",
            &rsa_pem,
            sign(Algorithm::RS256, None, &claims(), &rsa_key()),
        ),
        (
            "PS256 against a PEM key",
            &rsa_pem,
            sign(Algorithm::PS256, None, &claims(), &rsa_key()),
        ),
        (
            "RS256 with a kid only JWKS names, PEM key tried",
            &rsa_pem,
            sign(Algorithm::RS256, Some("elsewhere"), &claims(), &rsa_key()),
        ),
        (
            "ES256 among several PEM keys, no kid",
            &all_pem,
            sign(Algorithm::ES256, None, &claims(), &ec256_key()),
        ),
        (
            "ES384 among several PEM keys, no kid",
            &all_pem,
            sign(Algorithm::ES384, None, &claims(), &ec384_key()),
        ),
        (
            "EdDSA against a PEM key",
            &all_pem,
            sign(Algorithm::EdDSA, None, &claims(), &ed_key()),
        ),
        (
            "RS256 JWKS kid rsa-1",
            &jwks,
            sign(Algorithm::RS256, Some("rsa-1"), &claims(), &rsa_key()),
        ),
        (
            "ES256 JWKS kid ec-256",
            &jwks,
            sign(Algorithm::ES256, Some("ec-256"), &claims(), &ec256_key()),
        ),
        (
            "ES384 JWKS kid ec-384",
            &jwks,
            sign(Algorithm::ES384, Some("ec-384"), &claims(), &ec384_key()),
        ),
        (
            "EdDSA JWKS kid ed-1",
            &jwks,
            sign(Algorithm::EdDSA, Some("ed-1"), &claims(), &ed_key()),
        ),
        (
            "HS384 JWKS oct kid hs-1",
            &jwks,
            sign(Algorithm::HS384, Some("hs-1"), &claims(), &jwks_hs),
        ),
        (
            "ES256 JWKS without kid",
            &jwks,
            sign(Algorithm::ES256, None, &claims(), &ec256_key()),
        ),
        (
            "HS256 inline secret",
            &inline,
            sign(Algorithm::HS256, None, &claims(), &hs),
        ),
        (
            "expired, within leeway",
            &rsa_pem,
            sign(
                Algorithm::RS256,
                None,
                &with(claims(), "exp", json!(NOW - 29)),
                &rsa_key(),
            ),
        ),
        (
            "not yet valid, within leeway",
            &rsa_pem,
            sign(
                Algorithm::RS256,
                None,
                &with(claims(), "nbf", json!(NOW + 29)),
                &rsa_key(),
            ),
        ),
        (
            "aud as an array",
            &rsa_pem,
            sign(
                Algorithm::RS256,
                None,
                &with(claims(), "aud", json!(["other", AUDIENCE])),
                &rsa_key(),
            ),
        ),
        (
            "fractional exp",
            &rsa_pem,
            sign(
                Algorithm::RS256,
                None,
                &with(claims(), "exp", json!(NOW as f64 + 0.5 + 100.0)),
                &rsa_key(),
            ),
        ),
    ];
    for (name, verifier, token) in cases {
        match verifier.verify_at(&token, NOW) {
            Ok(claims) => assert_eq!(claims.sub, "alice", "{name}"),
            Err(err) => panic!("{name}: refused: {err}"),
        }
    }
}

#[test]
fn refuses_invalid_tokens() {
    let rsa_pem = verifier(&config(pem(&["rsa-public.pem"]), &[]));
    let jwks_and_secret = verifier(&config(jwks(), &[HS_SECRET]));
    let jwks = verifier(&config(jwks(), &[]));
    let inline = verifier(&config(KeysSetting::default(), &[HS_SECRET]));
    let no_audience = verifier(&JwtConfig {
        audience: None,
        ..config(pem(&["rsa-public.pem"]), &[])
    });
    let rsa_pem_as_secret = EncodingKey::from_secret(&read_key("rsa-public.pem"));
    let valid = sign(Algorithm::RS256, None, &claims(), &rsa_key());
    let tampered = {
        let parts: Vec<&str> = valid.split('.').collect();
        format!(
            "{}.{}.{}",
            parts[0],
            b64(&with(claims(), "sub", json!("mallory"))),
            parts[2]
        )
    };
    let rsa = |claims: Value| sign(Algorithm::RS256, None, &claims, &rsa_key());

    let cases: Vec<(&str, &JwtVerifier, String, &str)> = vec![
        (
            "expired beyond leeway",
            &rsa_pem,
            rsa(with(claims(), "exp", json!(NOW - 31))),
            "expired",
        ),
        (
            "exp exactly at now minus leeway",
            &rsa_pem,
            rsa(with(claims(), "exp", json!(NOW - 30))),
            "expired",
        ),
        (
            "not yet valid beyond leeway",
            &rsa_pem,
            rsa(with(claims(), "nbf", json!(NOW + 31))),
            "not_yet_valid",
        ),
        (
            "missing exp",
            &rsa_pem,
            rsa(with(claims(), "exp", Value::Null)),
            "malformed",
        ),
        (
            "exp not a number",
            &rsa_pem,
            rsa(with(claims(), "exp", json!("tomorrow"))),
            "malformed",
        ),
        (
            "wrong aud",
            &rsa_pem,
            rsa(with(claims(), "aud", json!("someone-else"))),
            "audience",
        ),
        (
            "no aud while one is configured",
            &rsa_pem,
            rsa(with(claims(), "aud", Value::Null)),
            "audience",
        ),
        (
            "aud present, none configured",
            &no_audience,
            rsa(claims()),
            "audience",
        ),
        (
            "wrong iss",
            &rsa_pem,
            rsa(with(claims(), "iss", json!("https://evil.test"))),
            "issuer",
        ),
        (
            "no iss while one is configured",
            &rsa_pem,
            rsa(with(claims(), "iss", Value::Null)),
            "issuer",
        ),
        (
            "missing sub",
            &rsa_pem,
            rsa(with(claims(), "sub", Value::Null)),
            "missing_subject",
        ),
        (
            "empty sub",
            &rsa_pem,
            rsa(with(claims(), "sub", json!(""))),
            "missing_subject",
        ),
        (
            "signed by another RSA key",
            &rsa_pem,
            sign(Algorithm::RS256, None, &claims(), &other_rsa_key()),
            "signature",
        ),
        (
            "signed by another RSA key, JWKS kid",
            &jwks,
            sign(Algorithm::RS256, Some("rsa-1"), &claims(), &other_rsa_key()),
            "signature",
        ),
        ("tampered payload", &rsa_pem, tampered, "signature"),
        (
            "alg none",
            &rsa_pem,
            raw_token(&json!({"alg": "none", "typ": "JWT"}), &claims(), ""),
            "algorithm",
        ),
        (
            "alg None with a kid",
            &jwks,
            raw_token(&json!({"alg": "None", "kid": "rsa-1"}), &claims(), ""),
            "algorithm",
        ),
        (
            "alg none against inline secrets",
            &inline,
            raw_token(&json!({"alg": "none"}), &claims(), ""),
            "algorithm",
        ),
        (
            "HS256 with the RSA public key PEM as secret",
            &rsa_pem,
            sign(Algorithm::HS256, None, &claims(), &rsa_pem_as_secret),
            "algorithm",
        ),
        (
            "HS256 with the RSA public key PEM as secret, kid rsa-1",
            &jwks,
            sign(
                Algorithm::HS256,
                Some("rsa-1"),
                &claims(),
                &rsa_pem_as_secret,
            ),
            "algorithm",
        ),
        (
            "RS384 against a PEM key (RS256/PS256 only)",
            &rsa_pem,
            sign(Algorithm::RS384, None, &claims(), &rsa_key()),
            "algorithm",
        ),
        (
            "PS256 against JWKS key declared RS256",
            &jwks,
            sign(Algorithm::PS256, Some("rsa-1"), &claims(), &rsa_key()),
            "algorithm",
        ),
        (
            "ES256 token naming an RSA kid",
            &jwks,
            sign(Algorithm::ES256, Some("rsa-1"), &claims(), &ec256_key()),
            "algorithm",
        ),
        (
            "RS256 against inline HMAC secrets",
            &inline,
            rsa(claims()),
            "algorithm",
        ),
        (
            "unknown alg",
            &rsa_pem,
            raw_token(&json!({"alg": "XS256"}), &claims(), "c2ln"),
            "algorithm",
        ),
        (
            "unknown kid",
            &jwks,
            sign(Algorithm::ES256, Some("retired"), &claims(), &ec256_key()),
            "unknown_key",
        ),
        (
            // The inline secret (a key without `kid`) cannot take an RS256 token: the unknown
            // `kid` is the explanation, not the algorithm (found by the PyJWT interop test).
            "unknown kid beside a secret of another algorithm",
            &jwks_and_secret,
            sign(Algorithm::RS256, Some("retired"), &claims(), &rsa_key()),
            "unknown_key",
        ),
        ("two parts", &rsa_pem, "abc.def".into(), "malformed"),
        ("four parts", &rsa_pem, format!("{valid}.x"), "malformed"),
        (
            "header not JSON",
            &rsa_pem,
            format!("{}.e30.c2ln", URL_SAFE_NO_PAD.encode("nope")),
            "malformed",
        ),
        (
            "no alg",
            &rsa_pem,
            raw_token(&json!({"typ": "JWT"}), &claims(), "c2ln"),
            "malformed",
        ),
        (
            "crit header",
            &rsa_pem,
            raw_token(
                &json!({"alg": "RS256", "crit": ["exp"], "exp": 1}),
                &claims(),
                "c2ln",
            ),
            "malformed",
        ),
        (
            "signature not base64url",
            &rsa_pem,
            format!("{}.***", valid.rsplit_once('.').map_or("", |(m, _)| m)),
            "malformed",
        ),
    ];
    for (name, verifier, token, reason) in cases {
        match verifier.verify_at(&token, NOW) {
            Ok(claims) => panic!("{name}: accepted as {}", claims.sub),
            Err(err) => assert_eq!(err.reason(), reason, "{name}: {err}"),
        }
    }
}

#[test]
fn claims_carry_the_token_fields() {
    let verifier = verifier(&config(jwks(), &[]));
    let token = sign(
        Algorithm::ES256,
        Some("ec-256"),
        &with(
            with(claims(), "aud", json!([AUDIENCE, "b"])),
            "nbf",
            json!(NOW - 5),
        ),
        &ec256_key(),
    );
    let claims = verifier.verify_at(&token, NOW).expect("valid token");
    assert_eq!(claims.sub, "alice");
    assert_eq!(claims.iss.as_deref(), Some(ISSUER));
    assert_eq!(claims.aud, vec![AUDIENCE.to_owned(), "b".to_owned()]);
    assert_eq!(claims.exp, Some(NOW + 600));
    assert_eq!(claims.other.get("tenant"), Some(&json!("t1")));
    assert_eq!(claims.other.get("nbf"), Some(&json!(NOW - 5)));
    assert!(!claims.other.contains_key("sub"));
}

#[test]
fn verify_uses_the_system_clock() {
    let verifier = verifier(&config(pem(&["rsa-public.pem"]), &[]));
    let far_future = sign(
        Algorithm::RS256,
        None,
        &with(claims(), "exp", json!(u64::from(u32::MAX) * 2)),
        &rsa_key(),
    );
    assert!(verifier.verify(&far_future).is_ok());
    let old = sign(Algorithm::RS256, None, &claims(), &rsa_key());
    assert_eq!(
        verifier.verify(&old).map_err(|err| err.reason()).err(),
        Some("expired")
    );
}

#[test]
fn secrets_come_from_files_and_stay_out_of_debug() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("jwt.secret"), format!("{HS_SECRET}\n")).expect("write");
    let verifier = JwtVerifier::load(
        &config(KeysSetting::default(), &["file:jwt.secret"]),
        dir.path(),
    )
    .expect("secret file");
    let token = sign(
        Algorithm::HS256,
        None,
        &claims(),
        &EncodingKey::from_secret(HS_SECRET.as_bytes()),
    );
    assert!(verifier.verify_at(&token, NOW).is_ok());
    let debug = format!("{verifier:?}");
    assert!(!debug.contains(HS_SECRET), "{debug}");
    let config = config(KeysSetting::default(), &[HS_SECRET]);
    assert!(!format!("{config:?}").contains(HS_SECRET));
}

#[test]
fn secret_algorithm_selects_the_hs_variant() {
    let secret = "x".repeat(64);
    let verifier = verifier(&JwtConfig {
        secret_algorithm: Some("HS512".into()),
        ..config(KeysSetting::default(), &[&secret])
    });
    let key = EncodingKey::from_secret(secret.as_bytes());
    assert!(verifier
        .verify_at(&sign(Algorithm::HS512, None, &claims(), &key), NOW)
        .is_ok());
    let err = verifier.verify_at(&sign(Algorithm::HS256, None, &claims(), &key), NOW);
    assert_eq!(err.map_err(|err| err.reason()).err(), Some("algorithm"));
}

#[test]
fn load_refuses_unusable_settings() {
    let dir = tempfile::tempdir().expect("temp dir");
    let write = |name: &str, content: &str| {
        std::fs::write(dir.path().join(name), content).expect("write");
        name.to_owned()
    };
    let copy = |name: &str| {
        std::fs::copy(keys_dir().join(name), dir.path().join(name)).expect("copy");
        name.to_owned()
    };
    let dup = write(
        "dup.json",
        &json!({"keys": [
            {"kty": "oct", "kid": "a", "k": URL_SAFE_NO_PAD.encode(HS_SECRET)},
            {"kty": "oct", "kid": "a", "k": URL_SAFE_NO_PAD.encode(HS_SECRET)}
        ]})
        .to_string(),
    );
    let short_oct = write(
        "short.json",
        &json!({"keys": [{"kty": "oct", "k": "c2hvcnQ"}]}).to_string(),
    );
    let enc_only = write(
        "enc.json",
        &json!({"keys": [{"kty": "oct", "use": "enc", "k": URL_SAFE_NO_PAD.encode(HS_SECRET)}]})
            .to_string(),
    );
    let wrong_alg = write(
        "wrong-alg.json",
        &json!({"keys": [{"kty": "oct", "alg": "RS256", "k": URL_SAFE_NO_PAD.encode(HS_SECRET)}]})
            .to_string(),
    );
    let not_json = write("broken.json", "{");
    let not_pem = write("garbage.pem", "hello");
    let private = copy("rsa-private.pem");

    let cases: Vec<(&str, JwtConfig, &str, Option<&str>)> = vec![
        (
            "no keys",
            config(KeysSetting::default(), &["", ""]),
            "config",
            None,
        ),
        (
            "short inline secret",
            config(KeysSetting::default(), &["short"]),
            "config",
            None,
        ),
        (
            "bad secret_algorithm",
            JwtConfig {
                secret_algorithm: Some("RS256".into()),
                ..config(KeysSetting::default(), &[HS_SECRET])
            },
            "config",
            None,
        ),
        (
            "missing secret file",
            config(KeysSetting::default(), &["file:absent"]),
            "load",
            Some("absent"),
        ),
        (
            "missing PEM file",
            config(pem(&["absent.pem"]), &[]),
            "load",
            Some("absent.pem"),
        ),
        (
            "private key PEM",
            config(pem(&[&private]), &[]),
            "load",
            Some("rsa-private.pem"),
        ),
        (
            "not a PEM",
            config(pem(&[&not_pem]), &[]),
            "load",
            Some("garbage.pem"),
        ),
        (
            "JWKS not JSON",
            config(KeysSetting::One(not_json.into()), &[]),
            "load",
            Some("broken.json"),
        ),
        (
            "JWKS duplicate kid",
            config(KeysSetting::One(dup.into()), &[]),
            "config",
            None,
        ),
        (
            "JWKS short oct key",
            config(KeysSetting::One(short_oct.into()), &[]),
            "load",
            Some("short.json"),
        ),
        (
            "JWKS encryption keys only",
            config(KeysSetting::One(enc_only.into()), &[]),
            "load",
            Some("enc.json"),
        ),
        (
            "JWKS alg unfit for kty",
            config(KeysSetting::One(wrong_alg.into()), &[]),
            "load",
            Some("wrong-alg.json"),
        ),
    ];
    for (name, config, reason, file) in cases {
        match JwtVerifier::load(&config, dir.path()) {
            Ok(_) => panic!("{name}: loaded"),
            Err(err) => {
                assert_eq!(err.reason(), reason, "{name}: {err}");
                if let (Some(file), JwtError::Load { path, .. }) = (file, &err) {
                    assert!(path.ends_with(file), "{name}: {}", path.display());
                }
            }
        }
    }
}

#[test]
fn config_deserializes_keys_as_a_path_or_a_list() {
    let one: JwtConfig = toml::from_str(r#"keys = "jwks.json""#).expect("one path");
    assert_eq!(
        one.keys.sources(),
        vec![KeySource::Jwks("jwks.json".into())]
    );
    assert_eq!(one.leeway_secs, 30);
    assert!(one.secrets.is_empty());

    let many: JwtConfig = toml::from_str(
        r#"
        keys = ["a.pem", "b.json", "c.pem"]
        issuer = "i"
        audience = "a"
        leeway_secs = 5
        secrets = ["", "s"]
        secret_algorithm = "HS384"
        "#,
    )
    .expect("full config");
    assert_eq!(
        many.keys.sources(),
        vec![
            KeySource::PemFiles(vec!["a.pem".into(), "c.pem".into()]),
            KeySource::Jwks("b.json".into()),
        ]
    );
    assert_eq!(many.leeway_secs, 5);
    assert_eq!(many.secrets.len(), 2);

    assert!(toml::from_str::<JwtConfig>(r#"keyz = "a.pem""#).is_err());
}
