//! The real `ferry` binary: `check`, `run`, signals.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

#[test]
fn check_prints_routes() {
    let out = Command::new(FERRY)
        .args(["check", "--config", "config/examples/orders.toml"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.contains("route    orders: webhooks -> orders (2 filters)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("route    everything: webhooks -> archive (all events)"),
        "{stdout}"
    );
}

#[test]
fn check_refuses_a_typo_with_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("typo.toml");
    let text = std::fs::read_to_string("config/examples/orders.toml")
        .unwrap()
        .replacen("path = \"/events\"", "pth = \"/events\"", 1);
    std::fs::write(&path, text).unwrap();
    let out = Command::new(FERRY)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains(&format!(
            "{}:9:1: key `sources.webhooks.pth`: unknown field `pth`",
            path.display()
        )),
        "{stderr}"
    );
}

#[test]
fn help_on_every_command() {
    for args in [
        &["--help"][..],
        &["run", "--help"],
        &["check", "--help"],
        &["probe", "--help"],
    ] {
        let out = Command::new(FERRY).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        assert!(
            String::from_utf8(out.stdout).unwrap().contains("--"),
            "{args:?}"
        );
    }
}

#[test]
fn run_serves_and_exits_zero_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ferry.toml");
    std::fs::write(
        &config,
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n\n[sources.web]\ntype = \"http\"\nlisten = \"127.0.0.1:0\"\npath = \"/events\"\n\n[sinks.out]\ntype = \"file\"\npath = \"{}/out.jsonl\"\n\n[routes.all]\nfrom = [\"web\"]\nto = [\"out\"]\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let mut child = Command::new(FERRY)
        .args(["run", "--log-format", "json", "--config"])
        .arg(&config)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    // Wait for the log line that says the source is listening, and read its address.
    let (mut addr, mut admin) = (None, None);
    while addr.is_none() || admin.is_none() {
        let line = lines
            .next()
            .expect("ferry exited before listening")
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let found = v["fields"]["addr"].as_str().map(str::to_owned);
        match v["fields"]["message"].as_str() {
            Some("source listening") => addr = found,
            Some("admin listening") => admin = found,
            _ => {}
        }
    }
    let (addr, admin) = (addr.unwrap(), admin.unwrap());
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    conn.write_all(
        b"POST /events HTTP/1.1\r\nhost: ferry\r\nce-specversion: 1.0\r\nce-id: 1\r\nce-source: /cli\r\nce-type: t\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello",
    )
    .unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 202"), "{response}");
    // The container health check command works against a live listener.
    let probe = Command::new(FERRY)
        .args(["probe", &format!("http://{addr}/nope")])
        .output()
        .unwrap();
    assert_eq!(probe.status.code(), Some(1), "404 is not healthy");
    let probe = Command::new(FERRY)
        .args(["probe", &format!("http://{admin}/healthz")])
        .output()
        .unwrap();
    assert_eq!(probe.status.code(), Some(0));
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let exit = child.wait().unwrap();
    assert_eq!(exit.code(), Some(0));
    let written = std::fs::read_to_string(dir.path().join("out.jsonl")).unwrap();
    assert!(written.contains("\"source\":\"/cli\""), "{written}");
    // The rest of the log is drained so the pipe never blocks the child.
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(
        rest.iter().any(|l| l.contains("shutdown complete")),
        "{rest:?}"
    );
}

/// S10: `ferry check` refuses policies that could never apply: an unknown principal kind, a
/// misspelt HMAC source, an unknown route, a pattern that can never match, each with file,
/// line and key.
#[test]
fn s10_check_refuses_policies_that_can_never_apply() {
    let base = r#"
[sources.webhooks]
type = "http"
listen = "127.0.0.1:0"
auth = { hmac = { scheme = "github", secrets = ["0123456789abcdef0123456789abcdef"] } }

[sources.partners]
type = "http"
listen = "127.0.0.1:0"
auth = { jwt = { secrets = ["0123456789abcdef0123456789abcdef"], issuer = "me" } }

[sinks.archive]
type = "file"
path = "events.jsonl"

[routes.orders]
from = ["webhooks", "partners"]
to = ["archive"]

[[policies]]
"#;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policies.toml");
    let check = |policy: &str| {
        std::fs::write(&path, format!("{base}{policy}\n")).unwrap();
        let out = Command::new(FERRY)
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8(out.stderr).unwrap())
    };
    let (code, stderr) = check("principal = \"jwt:partner-a\"\nallow_routes = [\"orders\"]");
    assert_eq!(code, Some(0), "{stderr}");
    for (policy, line, key, says) in [
        (
            "principal = \"JWT:partner-a\"",
            21,
            "policies.0.principal",
            "unknown principal kind",
        ),
        (
            "principal = \"jwt: partner-a\"",
            21,
            "policies.0.principal",
            "white space",
        ),
        (
            "principal = \"hmac:webhook\"",
            21,
            "policies.0.principal",
            "no source named `webhook`",
        ),
        (
            "principal = \"mtls:client\"",
            21,
            "policies.0.principal",
            "no source accepts",
        ),
        (
            "principal = \"jwt:partner-a\"\nallow_routes = [\"order\"]",
            22,
            "policies.0.allow_routes.0",
            "unknown route `order`",
        ),
        (
            "principal = \"jwt:partner-a\"\nallow_types = [\"\"]",
            22,
            "policies.0.allow_types.0",
            "never match",
        ),
        (
            "principal = \"jwt:partner-a\"\nallow_sources = [\"/partner a/*\"]",
            22,
            "policies.0.allow_sources.0",
            "never match",
        ),
    ] {
        let (code, stderr) = check(policy);
        assert_eq!(code, Some(1), "{policy}: {stderr}");
        let at = format!("{}:{line}:", path.display());
        assert!(stderr.contains(&at), "{policy}: want {at}: {stderr}");
        assert!(
            stderr.contains(&format!("key `{key}`")),
            "{policy}: {stderr}"
        );
        assert!(stderr.contains(says), "{policy}: want {says:?}: {stderr}");
    }
}

/// S7: `ferry check` shows sink URLs as written, without their credentials or query values.
#[test]
fn s7_check_never_prints_url_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret.toml");
    std::fs::write(
        &path,
        "[sources.web]\ntype = \"http\"\nlisten = \"127.0.0.1:0\"\npath = \"/e\"\n\n\
         [sinks.p]\ntype = \"http\"\nurl = \"https://user:hunter2@Example.com/X?api_key=K3Y\"\n\n\
         [routes.all]\nfrom = [\"web\"]\nto = [\"p\"]\n",
    )
    .unwrap();
    let out = Command::new(FERRY)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        // As written (case kept), the query's names shown and its values not.
        stdout
            .contains("sink     p (http) https://redacted@Example.com/X?api_key=redacted (binary)"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("hunter2") && !stdout.contains("K3Y"),
        "{stdout}"
    );
}

/// `ferry check` gives `ferry run`'s verdict: every shipped config passes both (as far as
/// `check` goes), and each broken one is refused by both, with the same file, line and key.
#[test]
fn check_and_run_refuse_the_same_configs_with_the_same_message() {
    for shipped in ["config/ferry.toml", "config/examples/orders.toml"] {
        let out = Command::new(FERRY)
            .args(["check", "--config", shipped])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{shipped}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    std::fs::write(dir.path().join("short.secret"), "too-short").unwrap();
    let base = r#"[admin]
listen = "127.0.0.1:0"

[sources.web]
type = "http"
listen = "127.0.0.1:0"
path = "/events"
"#;
    let tail = r#"
[sinks.archive]
type = "file"
path = "events.jsonl"

[routes.all]
from = ["web"]
to = ["archive"]
"#;
    // (extra keys under [sources.web], or a [log] table; the key the refusal names)
    let broken: Vec<(String, &str)> = vec![
        (
            format!("tls = {{ cert = \"{d}/missing.pem\", key = \"{d}/missing.key\" }}\n"),
            "sources.web.tls",
        ),
        (
            "[sources.web.auth]\nmtls = true\n".to_owned(),
            "sources.web.auth.mtls",
        ),
        (
            format!("[sources.web.auth]\njwt = {{ keys = \"{d}/missing-jwks.json\" }}\n"),
            "sources.web.auth.jwt",
        ),
        (
            "[sources.web.auth]\njwt = { secrets = [\"only-twenty-chars-aa\"] }\n".to_owned(),
            "sources.web.auth.jwt",
        ),
        ("[log]\nlevel = \"verbose\"\n".to_owned(), "log.level"),
        ("[log]\nlevel = \"ferry=debg\"\n".to_owned(), "log.level"),
    ];
    for (i, (extra, key)) in broken.iter().enumerate() {
        let text = if extra.starts_with("[log]") {
            format!("{extra}\n{base}{tail}")
        } else {
            format!("{base}{extra}{tail}")
        };
        let path = dir.path().join(format!("broken-{i}.toml"));
        std::fs::write(&path, &text).unwrap();
        let mut messages = Vec::new();
        for command in ["check", "run"] {
            let out = Command::new(FERRY)
                .args([command, "--config"])
                .arg(&path)
                .current_dir(dir.path())
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            assert!(!out.status.success(), "`ferry {command}` took {extra}");
            let line = stderr
                .lines()
                .find(|l| l.contains(&format!("key `{key}")))
                .unwrap_or_else(|| panic!("`ferry {command}` on {extra}: no `{key}` in\n{stderr}"))
                .to_owned();
            assert!(line.contains(&path.display().to_string()), "{line}");
            messages.push(line);
        }
        let strip = |l: &str| l.trim_start_matches("error: ").to_owned();
        assert_eq!(strip(&messages[0]), strip(&messages[1]), "{extra}");
    }
}
