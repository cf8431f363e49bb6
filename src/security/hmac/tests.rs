use std::collections::HashMap;
use std::path::Path;

use super::*;

// The Standard Webhooks reference vector.
const SW_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SW_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
const SW_TIMESTAMP: u64 = 1_614_265_330;
const SW_BODY: &[u8] = br#"{"test": 2432232314}"#;
const SW_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

// The GitHub documentation's vector.
const GH_SECRET: &str = "It's a Secret to Everybody";
const GH_BODY: &[u8] = b"Hello, World!";
const GH_SIGNATURE: &str =
    "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

// Generic vectors, computed with another HMAC implementation.
const GENERIC_SECRET: &str = "generic-secret";
const GENERIC_BODY: &[u8] = b"hello generic";
const GENERIC_TIMESTAMP: u64 = 1_700_000_000;
const HEX_SHA256: &str = "43edd9ef66af29938496a49424bbf348b16bfe222bb7c797e9bd5b4514d0f268";
const BASE64_SHA256: &str = "Q+3Z72avKZOElqSUJLvzSLFr/iIrt8eX6b1bRRTQ8mg=";
const HEX_SHA512: &str = "06564330771077031abf2b92f3d3753ff66ca396bd6996b9385a930411e0c49586143e06a93af0b546e263502dce7075f37ac3f1a059e0f3b4f4116d05bbbc23";
/// HMAC-SHA512 of `1700000000.hello generic`.
const BASE64_SHA512_TIMESTAMPED: &str =
    "bYiq4pMKHX6bj5sMdIbVRAmv1u20ERAqU4J5+rka6y9YET3U1oRxgcs3nX6BH0zUKvGvksbsq1h+jpt3WwGKzA==";

/// Name, verifier, headers, body, now.
type AcceptCase = (
    &'static str,
    HmacVerifier,
    HashMap<String, String>,
    &'static [u8],
    u64,
);
/// Name, settings, headers, body, now, expected reason.
type RefuseCase = (
    &'static str,
    HmacConfig,
    HashMap<String, String>,
    &'static [u8],
    u64,
    &'static str,
);

fn config(scheme: Scheme, secrets: &[&str]) -> HmacConfig {
    HmacConfig {
        scheme,
        secrets: secrets.iter().map(|secret| Secret::new(*secret)).collect(),
        tolerance_secs: 300,
        replay_cache: 100,
        header: None,
        algorithm: None,
        encoding: None,
        timestamp_header: None,
        prefix: None,
        id_header: None,
    }
}

fn generic(algorithm: &str, encoding: &str, prefix: Option<&str>, timestamp: bool) -> HmacConfig {
    HmacConfig {
        header: Some("X-Signature".into()),
        algorithm: Some(algorithm.into()),
        encoding: Some(encoding.into()),
        prefix: prefix.map(str::to_owned),
        timestamp_header: timestamp.then(|| "X-Timestamp".into()),
        ..config(Scheme::Generic, &[GENERIC_SECRET])
    }
}

fn load(config: &HmacConfig) -> HmacVerifier {
    HmacVerifier::load(config, Path::new(".")).expect("loadable config")
}

fn headers(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect()
}

fn verify(
    verifier: &HmacVerifier,
    headers: &HashMap<String, String>,
    body: &[u8],
    now: u64,
) -> Result<usize, HmacError> {
    verifier.verify(&|name| headers.get(name).cloned(), body, now)
}

fn sw_headers(id: &str, timestamp: u64, signature: &str) -> HashMap<String, String> {
    headers(&[
        ("webhook-id", id),
        ("webhook-timestamp", &timestamp.to_string()),
        ("webhook-signature", signature),
    ])
}

#[test]
fn signs_the_standard_webhooks_reference_vector() {
    assert_eq!(
        sign_standard_webhooks(SW_SECRET, SW_ID, SW_TIMESTAMP, SW_BODY),
        SW_SIGNATURE
    );
}

#[test]
fn accepts_valid_signatures() {
    let standard = load(&config(Scheme::StandardWebhooks, &[SW_SECRET]));
    let github = load(&config(Scheme::Github, &[GH_SECRET]));
    let ts = GENERIC_TIMESTAMP.to_string();
    let cases: Vec<AcceptCase> = vec![
        (
            "standard webhooks reference vector",
            standard,
            sw_headers(SW_ID, SW_TIMESTAMP, SW_SIGNATURE),
            SW_BODY,
            SW_TIMESTAMP,
        ),
        (
            "standard webhooks, several entries",
            load(&config(Scheme::StandardWebhooks, &[SW_SECRET])),
            sw_headers(
                SW_ID,
                SW_TIMESTAMP,
                &format!("v1a,abc v1,AAAA {SW_SIGNATURE}"),
            ),
            SW_BODY,
            SW_TIMESTAMP + 299,
        ),
        (
            "github documentation vector",
            github,
            headers(&[("x-hub-signature-256", GH_SIGNATURE)]),
            GH_BODY,
            0,
        ),
        (
            "generic hex sha256 with prefix",
            load(&generic("sha256", "hex", Some("sha256="), false)),
            headers(&[("x-signature", &format!("sha256={HEX_SHA256}"))]),
            GENERIC_BODY,
            0,
        ),
        (
            "generic base64 sha256",
            load(&generic("sha256", "base64", None, false)),
            headers(&[("x-signature", BASE64_SHA256)]),
            GENERIC_BODY,
            0,
        ),
        (
            "generic hex sha512",
            load(&generic("sha512", "hex", None, false)),
            headers(&[("x-signature", HEX_SHA512)]),
            GENERIC_BODY,
            0,
        ),
        (
            "generic base64 sha512 with timestamp",
            load(&generic("sha512", "base64", None, true)),
            headers(&[
                ("x-signature", BASE64_SHA512_TIMESTAMPED),
                ("x-timestamp", &ts),
            ]),
            GENERIC_BODY,
            GENERIC_TIMESTAMP - 300,
        ),
    ];
    for (name, verifier, headers, body, now) in cases {
        match verify(&verifier, &headers, body, now) {
            Ok(index) => assert_eq!(index, 0, "{name}"),
            Err(err) => panic!("{name}: refused: {err}"),
        }
    }
}

#[test]
fn refuses_invalid_signatures() {
    let ts = GENERIC_TIMESTAMP.to_string();
    let other_sw_secret = "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let cases: Vec<RefuseCase> = vec![
        (
            "standard: tampered body",
            config(Scheme::StandardWebhooks, &[SW_SECRET]),
            sw_headers(SW_ID, SW_TIMESTAMP, SW_SIGNATURE),
            br#"{"test": 2432232315}"#,
            SW_TIMESTAMP,
            "mismatch",
        ),
        (
            "standard: wrong secret",
            config(Scheme::StandardWebhooks, &[other_sw_secret]),
            sw_headers(SW_ID, SW_TIMESTAMP, SW_SIGNATURE),
            SW_BODY,
            SW_TIMESTAMP,
            "mismatch",
        ),
        (
            "standard: other id",
            config(Scheme::StandardWebhooks, &[SW_SECRET]),
            sw_headers("msg_other", SW_TIMESTAMP, SW_SIGNATURE),
            SW_BODY,
            SW_TIMESTAMP,
            "mismatch",
        ),
        (
            "standard: timestamp too old",
            config(Scheme::StandardWebhooks, &[SW_SECRET]),
            sw_headers(SW_ID, SW_TIMESTAMP, SW_SIGNATURE),
            SW_BODY,
            SW_TIMESTAMP + 301,
            "stale",
        ),
        (
            "standard: timestamp in the future",
            config(Scheme::StandardWebhooks, &[SW_SECRET]),
            sw_headers(SW_ID, SW_TIMESTAMP, SW_SIGNATURE),
            SW_BODY,
            SW_TIMESTAMP - 301,
            "stale",
        ),
        (
            "standard: timestamp not a number",
            config(Scheme::StandardWebhooks, &[SW_SECRET]),
            headers(&[
                ("webhook-id", SW_ID),
                ("webhook-timestamp", "yesterday"),
                ("webhook-signature", SW_SIGNATURE),
            ]),
            SW_BODY,
            SW_TIMESTAMP,
            "malformed",
        ),
        (
            "standard: no v1 entry",
            config(Scheme::StandardWebhooks, &[SW_SECRET]),
            sw_headers(SW_ID, SW_TIMESTAMP, "v2,abc"),
            SW_BODY,
            SW_TIMESTAMP,
            "malformed",
        ),
        (
            "standard: missing id",
            config(Scheme::StandardWebhooks, &[SW_SECRET]),
            headers(&[
                ("webhook-timestamp", "1614265330"),
                ("webhook-signature", SW_SIGNATURE),
            ]),
            SW_BODY,
            SW_TIMESTAMP,
            "missing_header",
        ),
        (
            "github: tampered body",
            config(Scheme::Github, &[GH_SECRET]),
            headers(&[("x-hub-signature-256", GH_SIGNATURE)]),
            b"Hello, World?",
            0,
            "mismatch",
        ),
        (
            "github: wrong secret",
            config(Scheme::Github, &["It's a Secret to Nobody"]),
            headers(&[("x-hub-signature-256", GH_SIGNATURE)]),
            GH_BODY,
            0,
            "mismatch",
        ),
        (
            "github: sha1 header only",
            config(Scheme::Github, &[GH_SECRET]),
            headers(&[("x-hub-signature", "sha1=abc")]),
            GH_BODY,
            0,
            "missing_header",
        ),
        (
            "github: no sha256= prefix",
            config(Scheme::Github, &[GH_SECRET]),
            headers(&[("x-hub-signature-256", &GH_SIGNATURE[7..])]),
            GH_BODY,
            0,
            "malformed",
        ),
        (
            "github: not hex",
            config(Scheme::Github, &[GH_SECRET]),
            headers(&[("x-hub-signature-256", "sha256=zz")]),
            GH_BODY,
            0,
            "malformed",
        ),
        (
            "generic: tampered body",
            generic("sha256", "hex", None, false),
            headers(&[("x-signature", HEX_SHA256)]),
            b"hello generic!",
            0,
            "mismatch",
        ),
        (
            "generic: sha256 signature under sha512 settings",
            generic("sha512", "hex", None, false),
            headers(&[("x-signature", HEX_SHA256)]),
            GENERIC_BODY,
            0,
            "mismatch",
        ),
        (
            "generic: missing prefix",
            generic("sha256", "hex", Some("sha256="), false),
            headers(&[("x-signature", HEX_SHA256)]),
            GENERIC_BODY,
            0,
            "malformed",
        ),
        (
            "generic: base64 under hex settings",
            generic("sha256", "hex", None, false),
            headers(&[("x-signature", BASE64_SHA256)]),
            GENERIC_BODY,
            0,
            "malformed",
        ),
        (
            "generic: stale timestamp",
            generic("sha512", "base64", None, true),
            headers(&[
                ("x-signature", BASE64_SHA512_TIMESTAMPED),
                ("x-timestamp", &ts),
            ]),
            GENERIC_BODY,
            GENERIC_TIMESTAMP + 301,
            "stale",
        ),
        (
            "generic: other timestamp",
            generic("sha512", "base64", None, true),
            headers(&[
                ("x-signature", BASE64_SHA512_TIMESTAMPED),
                ("x-timestamp", "1700000001"),
            ]),
            GENERIC_BODY,
            GENERIC_TIMESTAMP,
            "mismatch",
        ),
        (
            "generic: missing timestamp",
            generic("sha512", "base64", None, true),
            headers(&[("x-signature", BASE64_SHA512_TIMESTAMPED)]),
            GENERIC_BODY,
            GENERIC_TIMESTAMP,
            "missing_header",
        ),
        (
            "generic: missing signature",
            generic("sha256", "hex", None, false),
            headers(&[]),
            GENERIC_BODY,
            0,
            "missing_header",
        ),
    ];
    for (name, config, headers, body, now, reason) in cases {
        let verifier = load(&config);
        match verify(&verifier, &headers, body, now) {
            Ok(index) => panic!("{name}: accepted with secret {index}"),
            Err(err) => assert_eq!(err.reason(), reason, "{name}: {err}"),
        }
    }
}

#[test]
fn missing_header_names_the_header() {
    let verifier = load(&generic("sha256", "hex", None, true));
    let err = verify(
        &verifier,
        &headers(&[("x-signature", HEX_SHA256)]),
        GENERIC_BODY,
        0,
    );
    assert_eq!(
        err.as_ref().err().and_then(HmacError::header),
        Some("x-timestamp")
    );
    let err = verify(&verifier, &headers(&[]), GENERIC_BODY, 0);
    assert_eq!(
        err.as_ref().err().and_then(HmacError::header),
        Some("x-signature")
    );
}

#[test]
fn rotation_accepts_any_active_secret() {
    let new_secret = "whsec_bmV3LXNlY3JldC1mb3Itcm90YXRpb24tdGVzdHM=";
    let rotating = load(&config(
        Scheme::StandardWebhooks,
        &[new_secret, "", SW_SECRET],
    ));
    let headers = sw_headers(SW_ID, SW_TIMESTAMP, SW_SIGNATURE);
    assert_eq!(
        verify(&rotating, &headers, SW_BODY, SW_TIMESTAMP).ok(),
        Some(2),
        "old secret, index in config"
    );

    let fresh = sign_standard_webhooks(new_secret, "msg_new", SW_TIMESTAMP, SW_BODY);
    let headers = sw_headers("msg_new", SW_TIMESTAMP, &fresh);
    assert_eq!(
        verify(&rotating, &headers, SW_BODY, SW_TIMESTAMP).ok(),
        Some(0),
        "new secret"
    );

    let neither = load(&config(
        Scheme::StandardWebhooks,
        &[new_secret, "whsec_b3RoZXI="],
    ));
    let headers = sw_headers(SW_ID, SW_TIMESTAMP, SW_SIGNATURE);
    assert_eq!(
        verify(&neither, &headers, SW_BODY, SW_TIMESTAMP).map_err(|err| err.reason()),
        Err("mismatch")
    );
}

#[test]
fn replays_are_refused() {
    // Standard Webhooks: the signed id.
    let standard = load(&config(Scheme::StandardWebhooks, &[SW_SECRET]));
    let delivered = sw_headers(SW_ID, SW_TIMESTAMP, SW_SIGNATURE);
    assert!(verify(&standard, &delivered, SW_BODY, SW_TIMESTAMP).is_ok());
    let replay = verify(&standard, &delivered, SW_BODY, SW_TIMESTAMP + 10);
    assert_eq!(replay.map_err(|err| err.reason()), Err("replayed"));
    // B1: a retry under the same id, signed anew, is a duplicate of an accepted message:
    // verified, to be acknowledged without delivery.
    let resigned = sign_standard_webhooks(SW_SECRET, SW_ID, SW_TIMESTAMP + 20, SW_BODY);
    let retry = sw_headers(SW_ID, SW_TIMESTAMP + 20, &resigned);
    let duplicate = standard
        .verify_recorded(&|name| retry.get(name).cloned(), SW_BODY, SW_TIMESTAMP + 20)
        .expect("a retry verifies");
    assert!(duplicate.is_duplicate());

    // GitHub: the same signed body under another delivery id is still a replay.
    let github = load(&config(Scheme::Github, &[GH_SECRET]));
    let first = headers(&[
        ("x-hub-signature-256", GH_SIGNATURE),
        ("x-github-delivery", "d-1"),
    ]);
    let changed_id = headers(&[
        ("x-hub-signature-256", GH_SIGNATURE),
        ("x-github-delivery", "d-2"),
    ]);
    assert!(verify(&github, &first, GH_BODY, 0).is_ok());
    assert_eq!(
        verify(&github, &changed_id, GH_BODY, 0).map_err(|err| err.reason()),
        Err("replayed")
    );

    // A forged message never enters the cache: the genuine one still passes afterwards.
    let generic_verifier = load(&HmacConfig {
        id_header: Some("X-Id".into()),
        ..generic("sha256", "hex", None, false)
    });
    let zeros = "00".repeat(32);
    let forged = headers(&[("x-signature", zeros.as_str()), ("x-id", "m-1")]);
    assert_eq!(
        verify(&generic_verifier, &forged, GENERIC_BODY, 0).map_err(|err| err.reason()),
        Err("mismatch")
    );
    let genuine = headers(&[("x-signature", HEX_SHA256), ("x-id", "m-1")]);
    assert!(verify(&generic_verifier, &genuine, GENERIC_BODY, 0).is_ok());
    assert_eq!(
        verify(&generic_verifier, &genuine, GENERIC_BODY, 0).map_err(|err| err.reason()),
        Err("replayed")
    );
    let no_id = headers(&[("x-signature", HEX_SHA256)]);
    assert_eq!(
        verify(&generic_verifier, &no_id, GENERIC_BODY, 0).map_err(|err| err.reason()),
        Err("missing_header")
    );
}

/// S6: the reproduction of the finding: with `replay_cache = 1`, A is accepted, B is refused
/// (retry later) instead of evicting A, and A replayed inside the window is still refused.
#[test]
fn s6_replay_cache_of_one_never_forgets_a_message_inside_the_window() {
    let standard = load(&HmacConfig {
        replay_cache: 1,
        ..config(Scheme::StandardWebhooks, &[SW_SECRET])
    });
    let signed = |id: &str| {
        let signature = sign_standard_webhooks(SW_SECRET, id, SW_TIMESTAMP, SW_BODY);
        sw_headers(id, SW_TIMESTAMP, &signature)
    };
    assert!(verify(&standard, &signed("m-a"), SW_BODY, SW_TIMESTAMP).is_ok());
    assert_eq!(
        verify(&standard, &signed("m-b"), SW_BODY, SW_TIMESTAMP + 1).map_err(|e| e.reason()),
        Err("replay_cache_full")
    );
    assert_eq!(
        verify(&standard, &signed("m-a"), SW_BODY, SW_TIMESTAMP + 2).map_err(|e| e.reason()),
        Err("replayed")
    );
    // Once A is older than twice the window it can no longer pass the timestamp check, and
    // it makes room.
    let later = SW_TIMESTAMP + 601;
    let signature = sign_standard_webhooks(SW_SECRET, "m-b", later, SW_BODY);
    assert!(verify(
        &standard,
        &sw_headers("m-b", later, &signature),
        SW_BODY,
        later
    )
    .is_ok());
}

/// M6: a verified message that is not accepted is released when its verification is dropped,
/// and a retry while it is in flight is "in progress", not a replay.
#[test]
fn m6_unaccepted_messages_are_released_and_in_flight_ones_are_in_progress() {
    let standard = load(&config(Scheme::StandardWebhooks, &[SW_SECRET]));
    let headers = sw_headers(SW_ID, SW_TIMESTAMP, SW_SIGNATURE);
    let header = |name: &str| headers.get(name).cloned();
    let in_flight = standard
        .verify_recorded(&header, SW_BODY, SW_TIMESTAMP)
        .expect("verifies");
    assert_eq!(
        standard
            .verify_recorded(&header, SW_BODY, SW_TIMESTAMP)
            .map(|_| ())
            .map_err(|e| e.reason()),
        Err("in_progress")
    );
    drop(in_flight);
    let retry = standard
        .verify_recorded(&header, SW_BODY, SW_TIMESTAMP)
        .expect("released: the retry passes");
    assert!(!retry.is_duplicate());
    retry.accept();
    drop(retry);
    assert_eq!(
        verify(&standard, &headers, SW_BODY, SW_TIMESTAMP).map_err(|e| e.reason()),
        Err("replayed")
    );
}

/// S1: the number and size of signature candidates are bounded, and one matching candidate
/// among others is found with one MAC per secret.
#[test]
fn s1_signature_candidates_are_bounded() {
    let standard = load(&config(Scheme::StandardWebhooks, &[SW_SECRET]));
    let nine = ["v1,AAAA"; MAX_SIGNATURES + 1].join(" ");
    let refused = verify(
        &standard,
        &sw_headers(SW_ID, SW_TIMESTAMP, &nine),
        SW_BODY,
        SW_TIMESTAMP,
    )
    .unwrap_err();
    assert_eq!(refused.reason(), "too_many_signatures");
    assert_eq!(refused.header(), Some("webhook-signature"));
    let long = format!("v1,{}", "A".repeat(MAX_SIGNATURE_HEADER_BYTES));
    let refused = standard
        .precheck(
            &|name| sw_headers(SW_ID, SW_TIMESTAMP, &long).get(name).cloned(),
            SW_TIMESTAMP,
        )
        .unwrap_err();
    assert_eq!(refused.reason(), "too_many_signatures");
    let among = format!(
        "{} {SW_SIGNATURE}",
        ["v1,AAAA"; MAX_SIGNATURES - 1].join(" ")
    );
    assert!(verify(
        &standard,
        &sw_headers(SW_ID, SW_TIMESTAMP, &among),
        SW_BODY,
        SW_TIMESTAMP
    )
    .is_ok());
    // The cheap checks run without the body.
    let stale = sw_headers(SW_ID, SW_TIMESTAMP - 3600, SW_SIGNATURE);
    assert_eq!(
        standard
            .precheck(&|name| stale.get(name).cloned(), SW_TIMESTAMP)
            .map_err(|e| e.reason()),
        Err("stale")
    );
}

/// S5: a verifier built for a reload takes over the replay cache of the one it replaces.
#[test]
fn s5_carry_over_keeps_the_replay_cache() {
    let old = load(&config(Scheme::StandardWebhooks, &[SW_SECRET]));
    let headers = sw_headers(SW_ID, SW_TIMESTAMP, SW_SIGNATURE);
    assert!(verify(&old, &headers, SW_BODY, SW_TIMESTAMP).is_ok());
    let mut rotated = load(&config(
        Scheme::StandardWebhooks,
        &[SW_SECRET, "whsec_b3RoZXI="],
    ));
    rotated.carry_over(&old);
    assert_eq!(
        verify(&rotated, &headers, SW_BODY, SW_TIMESTAMP).map_err(|e| e.reason()),
        Err("replayed")
    );
    // Another scheme keys its cache differently: nothing is taken.
    let mut github = load(&config(Scheme::Github, &[GH_SECRET]));
    github.carry_over(&old);
    assert!(Arc::ptr_eq(&github.seen, &github.seen) && !Arc::ptr_eq(&github.seen, &old.seen));
}

/// Issue 15 (4): Standard Webhooks secrets are base64 after an optional `whsec_`, as the
/// reference libraries read them; anything else is refused at load with the secret's key.
#[test]
fn standard_webhooks_secrets_are_read_like_the_reference_libraries() {
    let bare = SW_SECRET.strip_prefix("whsec_").unwrap();
    assert_eq!(
        standard_webhooks_key(bare).unwrap(),
        standard_webhooks_key(SW_SECRET).unwrap()
    );
    let verifier = load(&config(Scheme::StandardWebhooks, &[bare]));
    let headers = sw_headers(SW_ID, SW_TIMESTAMP, SW_SIGNATURE);
    assert!(verify(&verifier, &headers, SW_BODY, SW_TIMESTAMP).is_ok());
    for secret in ["raw text secret", "whsec_", "whsec_!!!"] {
        let shown = secret.trim_start_matches("whsec_");
        let crate::key_error::KeyError { key, message } =
            config(Scheme::StandardWebhooks, &["", secret])
                .check(Path::new("."))
                .unwrap_err();
        assert_eq!(key, ["secrets", "1"], "{secret}");
        assert!(
            message.contains("base64") && (shown.is_empty() || !message.contains(shown)),
            "{message}"
        );
    }
    assert_eq!(
        generic("md5", "hex", None, false)
            .check(Path::new("."))
            .unwrap_err()
            .key,
        ["algorithm"]
    );
}

#[test]
fn load_refuses_unusable_settings() {
    let cases: Vec<(&str, HmacConfig)> = vec![
        ("no secrets", config(Scheme::Github, &[])),
        ("only empty secrets", config(Scheme::Github, &["", ""])),
        (
            "whsec_ not base64",
            config(Scheme::StandardWebhooks, &["whsec_!!!"]),
        ),
        (
            "generic without header",
            HmacConfig {
                header: None,
                ..generic("sha256", "hex", None, false)
            },
        ),
        (
            "generic unknown algorithm",
            generic("md5", "hex", None, false),
        ),
        (
            "generic unknown encoding",
            generic("sha256", "base32", None, false),
        ),
        (
            "generic key on github",
            HmacConfig {
                prefix: Some("sha256=".into()),
                ..config(Scheme::Github, &[GH_SECRET])
            },
        ),
        (
            "missing secret file",
            config(Scheme::Github, &["file:/nonexistent/ferry-secret"]),
        ),
    ];
    for (name, config) in cases {
        match HmacVerifier::load(&config, Path::new(".")) {
            Ok(_) => panic!("{name}: loaded"),
            Err(err) => assert_eq!(err.reason(), "config", "{name}: {err}"),
        }
    }
}

#[test]
fn secrets_stay_out_of_debug_and_errors() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("gh.secret"), format!("{GH_SECRET}\n")).expect("write");
    let config = config(Scheme::Github, &["file:gh.secret"]);
    let verifier = HmacVerifier::load(&config, dir.path()).expect("secret file");
    let headers = headers(&[("x-hub-signature-256", GH_SIGNATURE)]);
    assert_eq!(verify(&verifier, &headers, GH_BODY, 0).ok(), Some(0));
    assert!(!format!("{verifier:?}").contains(GH_SECRET));
    let inline = HmacConfig {
        secrets: vec![Secret::new("whsec_!!!")],
        ..config
    };
    let inline = HmacConfig {
        scheme: Scheme::StandardWebhooks,
        ..inline
    };
    assert!(!format!("{inline:?}").contains("whsec_!!!"));
    let err = HmacVerifier::load(&inline, dir.path())
        .err()
        .map(|err| err.to_string())
        .unwrap_or_default();
    assert!(!err.contains("!!!"), "{err}");
}

#[test]
fn config_deserializes_with_defaults() {
    let config: HmacConfig = toml::from_str(
        r#"
        scheme = "standard-webhooks"
        secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", ""]
        "#,
    )
    .expect("minimal config");
    assert_eq!(config.scheme, Scheme::StandardWebhooks);
    assert_eq!(config.tolerance_secs, 300);
    assert_eq!(config.replay_cache, 100_000);

    let config: HmacConfig = toml::from_str(
        r#"
        scheme = "generic"
        secrets = ["s"]
        header = "X-Signature"
        algorithm = "sha512"
        encoding = "base64"
        timestamp_header = "X-Timestamp"
        prefix = "v1="
        id_header = "X-Id"
        "#,
    )
    .expect("generic config");
    assert_eq!(config.scheme, Scheme::Generic);
    assert!(
        toml::from_str::<HmacConfig>("scheme = \"github\"\nsecrets = []\nsecret = \"x\"").is_err()
    );
    assert!(toml::from_str::<HmacConfig>("scheme = \"gitlab\"\nsecrets = []").is_err());
}
