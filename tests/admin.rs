//! The admin API's own security, against the real binary: the bearer token, the loopback
//! rule and the config hash (S9).

mod common;

use std::process::Command;

use common::FerryProcess;
use sha2::Digest as _;

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");
const TOKEN: &str = "adm1n-t0ken-for-tests";

fn config(admin: &str) -> String {
    format!(
        r#"
[admin]
{admin}

[sources.web]
type = "http"
listen = "127.0.0.1:0"
path = "/events"

[sinks.archive]
type = "file"
path = "events.jsonl"

[routes.all]
from = ["web"]
to = ["archive"]
"#
    )
}

async fn status(method: reqwest::Method, url: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut req = reqwest::Client::new().request(method, url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("admin answers");
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

/// S9: with a token, every endpoint but `/healthz` and `/readyz` needs it.
#[tokio::test]
async fn s9_admin_token_guards_every_endpoint_but_health() {
    let dir = tempfile::tempdir().unwrap();
    let ferry = FerryProcess::start(
        dir.path(),
        &config(&format!("listen = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"")),
    );
    let bearer = format!("Bearer {TOKEN}");
    for path in ["/healthz", "/readyz"] {
        let (code, _) = status(reqwest::Method::GET, &ferry.admin(path), &[]).await;
        assert_eq!(code, 200, "{path}");
    }
    for (method, path) in [
        (reqwest::Method::GET, "/metrics"),
        (reqwest::Method::GET, "/-/config"),
        (reqwest::Method::GET, "/-/routes"),
        (reqwest::Method::POST, "/-/reload"),
    ] {
        let url = ferry.admin(path);
        let (code, body) = status(method.clone(), &url, &[]).await;
        assert_eq!(code, 401, "{method} {path} without a token: {body}");
        assert!(!body.contains(TOKEN));
        let (code, _) = status(
            method.clone(),
            &url,
            &[("authorization", "Bearer adm1n-t0ken-for-tesTS")],
        )
        .await;
        assert_eq!(code, 401, "{method} {path} with a wrong token");
        let (code, body) = status(method.clone(), &url, &[("authorization", &bearer)]).await;
        assert_eq!(code, 200, "{method} {path} with the token: {body}");
        assert!(!body.contains(TOKEN), "{path} shows the token: {body}");
    }
}

/// S9: a reload from another site (a browser's cross-origin POST) is refused when no token
/// is set on a loopback listener.
#[tokio::test]
async fn s9_cross_origin_reload_is_refused_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let ferry = FerryProcess::start(dir.path(), &config("listen = \"127.0.0.1:0\""));
    let url = ferry.admin("/-/reload");
    let (code, _) = status(
        reqwest::Method::POST,
        &url,
        &[("origin", "https://attacker.example")],
    )
    .await;
    assert_eq!(code, 403);
    let (code, _) = status(reqwest::Method::POST, &url, &[]).await;
    assert_eq!(code, 200);
}

/// S9: an admin listener off loopback without a token does not start.
#[test]
fn s9_non_loopback_admin_without_a_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ferry.toml");
    std::fs::write(
        &path,
        config("listen = \"0.0.0.0:0\"\ntoken = \"${FERRY_ADMIN_TOKEN:-}\""),
    )
    .unwrap();
    let out = Command::new(FERRY)
        .args(["check", "--config"])
        .arg(&path)
        .env_remove("FERRY_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("key `admin.token`"), "{stderr}");
    assert!(stderr.contains("not on loopback"), "{stderr}");
    // The same file with the token in the environment is fine.
    let out = Command::new(FERRY)
        .args(["check", "--config"])
        .arg(&path)
        .env("FERRY_ADMIN_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// S9: the hash on `/-/config` is not a plain digest of the config text, which would let
/// anyone who sees the text test guesses of its secrets offline.
#[tokio::test]
async fn s9_config_hash_is_not_an_offline_oracle() {
    let dir = tempfile::tempdir().unwrap();
    let text = config("listen = \"127.0.0.1:0\"");
    let ferry = FerryProcess::start(dir.path(), &text);
    let resp = reqwest::get(ferry.admin("/-/config")).await.unwrap();
    let body: serde_json::Value = resp.json().await.unwrap();
    let shown = body["hash"].as_str().expect("a hash");
    assert_eq!(shown.len(), 64);
    let plain = hex::encode(sha2::Sha256::digest(text.as_bytes()));
    assert_ne!(shown, plain);
}

/// The metrics operators look for beside Ferry's own: build info, the process, queue depths.
#[tokio::test]
async fn metrics_include_build_info_process_and_queue_depth() {
    let dir = tempfile::tempdir().unwrap();
    let ferry = FerryProcess::start(dir.path(), &config("listen = \"127.0.0.1:0\""));
    let text = ferry.metrics().await;
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        text.contains(&format!(
            "ferry_build_info{{version=\"{version}\",commit=\""
        )),
        "{text}"
    );
    let value = |name: &str| common::metric(&text, name);
    // The process's own RSS, as /proc says.
    let rss = value("process_resident_memory_bytes");
    let kib = ferry.rss_kib() as f64 * 1024.0;
    assert!(
        rss > 1e6 && (rss - kib).abs() < kib * 0.5,
        "rss {rss} vs {kib}"
    );
    assert!(value("process_open_fds") >= 3.0);
    assert!(value("process_threads") >= 2.0);
    assert!(text.contains("process_cpu_seconds_total "), "{text}");
    assert!(value("process_start_time_seconds") > 1.7e9);
    assert!(
        text.contains("ferry_sink_queue_depth{sink=\"archive\"} 0"),
        "{text}"
    );
}
