//! Reloading the config of a running gateway: routes and sinks swap atomically, broken configs
//! change nothing.

mod common;

use std::path::Path;

use ferry::{Config, Gateway};
use serde_json::Value;

fn config(dir: &Path, sink_file: &str, route_filter: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[sources.web]
type = "http"
listen = "127.0.0.1:0"
path = "/events"

[sinks.archive]
type = "file"
path = "{dir}/{sink_file}"

[routes.all]
from = ["web"]
to = ["archive"]
filters = [{route_filter}]
"#,
        dir = dir.display()
    )
}

async fn post(gw: &Gateway, ty: &str, id: &str) -> u16 {
    reqwest::Client::new()
        .post(format!("http://{}/events", gw.source_addr("web").unwrap()))
        .header("ce-specversion", "1.0")
        .header("ce-id", id)
        .header("ce-source", "/reload")
        .header("ce-type", ty)
        .body("{}")
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn ids(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

async fn admin(gw: &Gateway, method: reqwest::Method, path: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .request(method, format!("http://{}{path}", gw.admin_addr().unwrap()))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (
        status,
        serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn routes_and_sinks_swap_and_broken_configs_change_nothing() {
    ferry::tls::install_default_provider();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ferry.toml");
    std::fs::write(
        &file,
        config(dir.path(), "a.jsonl", r#"{ prefix = { type = "com.a." } }"#),
    )
    .unwrap();
    let gw = Gateway::start(Config::load(&file).unwrap()).await.unwrap();

    assert_eq!(post(&gw, "com.a.x", "1").await, 202);
    assert_eq!(post(&gw, "com.b.x", "2").await, 202, "unrouted, accepted");
    assert_eq!(ids(&dir.path().join("a.jsonl")), ["1"]);

    // A new route filter and a new sink file, applied through the admin API.
    std::fs::write(
        &file,
        config(dir.path(), "b.jsonl", r#"{ prefix = { type = "com.b." } }"#),
    )
    .unwrap();
    let (status, body) = admin(&gw, reqwest::Method::POST, "/-/reload").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["report"]["generation"], 2);
    assert_eq!(
        body["report"]["changed"],
        serde_json::json!(["sink:archive", "route:all"])
    );
    assert_eq!(post(&gw, "com.b.x", "3").await, 202);
    assert_eq!(post(&gw, "com.a.x", "4").await, 202);
    assert_eq!(ids(&dir.path().join("b.jsonl")), ["3"]);
    assert_eq!(
        ids(&dir.path().join("a.jsonl")),
        ["1"],
        "the old sink got nothing more"
    );
    let (_, routes) = admin(&gw, reqwest::Method::GET, "/-/routes").await;
    assert_eq!(routes["generation"], 2);

    // A broken config is refused with file, line and key; the running one keeps serving.
    std::fs::write(
        &file,
        config(dir.path(), "c.jsonl", r#"{ prefx = { type = "com.c." } }"#),
    )
    .unwrap();
    let (status, body) = admin(&gw, reqwest::Method::POST, "/-/reload").await;
    assert_eq!(status, 400);
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("ferry.toml:") && error.contains("routes.all.filters.0"),
        "{error}"
    );
    assert_eq!(post(&gw, "com.b.x", "5").await, 202);
    assert_eq!(ids(&dir.path().join("b.jsonl")), ["3", "5"]);
    let (_, current) = admin(&gw, reqwest::Method::GET, "/-/config").await;
    assert_eq!(current["generation"], 2);
    assert!(current["config"].as_str().unwrap().contains("b.jsonl"));

    // A listening source's settings change in place: same address, the new path serves.
    let addr = gw.source_addr("web").unwrap();
    let moved = config(dir.path(), "b.jsonl", r#"{ prefix = { type = "com.b." } }"#)
        .replace("path = \"/events\"", "path = \"/in\"");
    std::fs::write(&file, moved).unwrap();
    let (status, body) = admin(&gw, reqwest::Method::POST, "/-/reload").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["report"]["changed"],
        serde_json::json!(["source:web"]),
        "{body}"
    );
    assert_eq!(gw.source_addr("web"), Some(addr));
    assert_eq!(post(&gw, "com.b.x", "6").await, 404);
    let status = reqwest::Client::new()
        .post(format!("http://{addr}/in"))
        .header("ce-specversion", "1.0")
        .header("ce-id", "7")
        .header("ce-source", "/reload")
        .header("ce-type", "com.b.x")
        .body("{}")
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 202);
    assert_eq!(ids(&dir.path().join("b.jsonl")), ["3", "5", "7"]);

    let metrics = reqwest::get(format!("http://{}/metrics", gw.admin_addr().unwrap()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("ferry_config_reloads_total{result=\"success\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ferry_config_reloads_total{result=\"failure\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("ferry_config_generation 3"), "{metrics}");
    assert!(gw.shutdown().await);
}

#[test]
fn check_reports_what_a_reload_would_change() {
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("old.toml");
    let new = dir.path().join("new.toml");
    std::fs::write(
        &old,
        config(dir.path(), "a.jsonl", r#"{ prefix = { type = "com.a." } }"#),
    )
    .unwrap();
    let text = config(dir.path(), "a.jsonl", r#"{ prefix = { type = "com.b." } }"#)
        + "\n[sinks.extra]\ntype = \"stdout\"\n";
    std::fs::write(&new, text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["check", "--config"])
        .arg(&new)
        .arg("--diff-against")
        .arg(&old)
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout, "+ sink:extra\n~ route:all\n");
}

fn dead_letter_config(dir: &Path, dead: std::net::SocketAddr, dlq_file: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[sources.web]
type = "http"
listen = "127.0.0.1:0"
path = "/events"

[sinks.a]
type = "http"
url = "http://{dead}/x"
dead_letter = "dlq"

[sinks.dlq]
type = "file"
path = "{dir}/{dlq_file}"

[routes.all]
from = ["web"]
to = ["a"]
"#,
        dir = dir.display()
    )
}

/// R2: a reload that changes a dead-letter sink rewires the unchanged sinks that use it.
#[tokio::test]
async fn r2_reloading_a_dead_letter_sink_rewires_its_users() {
    ferry::tls::install_default_provider();
    let dir = tempfile::tempdir().unwrap();
    let dead = common::closed_port().await;
    let file = dir.path().join("ferry.toml");
    std::fs::write(&file, dead_letter_config(dir.path(), dead, "a.jsonl")).unwrap();
    let gw = Gateway::start(Config::load(&file).unwrap()).await.unwrap();

    assert_eq!(post(&gw, "t", "1").await, 202);
    assert_eq!(ids(&dir.path().join("a.jsonl")), ["1"]);

    std::fs::write(&file, dead_letter_config(dir.path(), dead, "b.jsonl")).unwrap();
    let (status, body) = admin(&gw, reqwest::Method::POST, "/-/reload").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(post(&gw, "t", "2").await, 202);
    assert_eq!(ids(&dir.path().join("b.jsonl")), ["2"]);
    assert_eq!(ids(&dir.path().join("a.jsonl")), ["1"]);
}

/// `shutdown_timeout_ms` follows the config in force: a reload that shortens it bounds the
/// next shutdown, which is not held to the value the gateway started with.
#[tokio::test]
async fn shutdown_uses_the_shutdown_timeout_of_the_last_reload() {
    let stalled = common::stalled_endpoint().await;
    let dir = tempfile::tempdir().unwrap();
    let text = |timeout_ms: u64| {
        format!(
            r#"
shutdown_timeout_ms = {timeout_ms}

[admin]
listen = "127.0.0.1:0"

[sources.web]
type = "http"
listen = "127.0.0.1:0"
path = "/events"

[sinks.stuck]
type = "http"
url = "http://{stalled}/hook"
timeout_ms = 600000

[routes.all]
from = ["web"]
to = ["stuck"]
"#
        )
    };
    let file = dir.path().join("ferry.toml");
    std::fs::write(&file, text(600_000)).unwrap();
    let gw = Gateway::start(Config::load(&file).unwrap()).await.unwrap();
    std::fs::write(&file, text(300)).unwrap();
    gw.reloader()
        .reload_file(ferry::reload::Trigger::Call)
        .await
        .expect("reload");
    // An event held by the stalled target keeps the sink busy past any deadline.
    let url = format!("http://{}/events", gw.source_addr("web").unwrap());
    tokio::spawn(async move {
        let _ = reqwest::Client::new()
            .post(url)
            .header("ce-specversion", "1.0")
            .header("ce-id", "held")
            .header("ce-source", "/reload")
            .header("ce-type", "t")
            .body("{}")
            .send()
            .await;
    });
    let metrics = format!("http://{}/metrics", gw.admin_addr().unwrap());
    common::until(
        std::time::Duration::from_secs(10),
        "the event in flight to the stalled target",
        || async {
            let text = reqwest::get(&metrics).await.unwrap().text().await.unwrap();
            common::metric(&text, "ferry_sink_in_flight{sink=\"stuck\"}") == 1.0
        },
    )
    .await;
    let started = std::time::Instant::now();
    let on_time = tokio::time::timeout(std::time::Duration::from_secs(20), gw.shutdown())
        .await
        .expect("shutdown is bounded by the reloaded shutdown_timeout_ms");
    assert!(!on_time, "the held event could not finish");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}

/// `check --diff-against http://…` compares with the running gateway's `/-/config`, where
/// literal secrets are `[redacted]`, `${VAR}` references stay as written (their values are the
/// running process's, not this shell's) and referenced files may not exist on this machine: a
/// config that only adds a sink shows only that sink.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_against_a_running_gateway_sees_through_redaction() {
    ferry::tls::install_default_provider();
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    ferry::certs::generate_dev(&certs).unwrap();
    std::fs::write(dir.path().join("signing.txt"), "from-a-file\n").unwrap();
    let text = format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[sources.web]
type = "http"
listen = "127.0.0.1:0"
path = "/events"
tls = {{ cert = "{certs}/server.pem", key = "{certs}/server.key" }}
auth = {{ hmac = {{ scheme = "github", secrets = ["a-literal-secret", "${{FERRY_T_DIFF_SECRET}}", "file:{dir}/signing.txt"] }} }}

[sinks.out]
type = "http"
url = "http://ferry:pass-word@127.0.0.1:9/x?token=abc&plain=${{FERRY_T_DIFF_SECRET}}"

[routes.all]
from = ["web"]
to = ["out"]
"#,
        certs = certs.display(),
        dir = dir.path().display()
    );
    let running = dir.path().join("running.toml");
    std::fs::write(&running, &text).unwrap();
    let env = |name: &str| (name == "FERRY_T_DIFF_SECRET").then(|| "running-value".to_owned());
    let gw = Gateway::start(Config::from_str_at(&text, &running, &env).unwrap())
        .await
        .unwrap();
    // The running gateway's own secret file is gone from here; the new config does not use it.
    std::fs::remove_file(dir.path().join("signing.txt")).unwrap();
    let new = dir.path().join("new.toml");
    std::fs::write(
        &new,
        text.replace(
            &format!(", \"file:{}/signing.txt\"", dir.path().display()),
            "",
        ) + "\n[sinks.extra]\ntype = \"stdout\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["check", "--config"])
        .arg(&new)
        .arg("--diff-against")
        .arg(format!("http://{}", gw.admin_addr().unwrap()))
        .env("FERRY_T_DIFF_SECRET", "this-shell's-value")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert_eq!(stdout, "+ sink:extra\n~ source:web\n", "{stderr}");
    assert!(stderr.contains("literal secrets"), "{stderr}");
    assert!(gw.shutdown().await);
}
