//! The shipped deployment files hold what docs/deploy.md says of them: the Dockerfile's
//! runtime image (parsed: Docker does not run here) and its layout rebuilt in a temporary root
//! with the real binary, the systemd unit (`systemd-analyze verify` where it exists), and the
//! Kubernetes manifests (parsed as YAML, kinds and probes checked, the config checked).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The Dockerfile's instructions, continuation lines joined, comments dropped.
fn instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && current.is_empty()) {
            continue;
        }
        match t.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(t);
                let (op, rest) = current.split_once(' ').unwrap_or((&current, ""));
                out.push((op.to_ascii_uppercase(), rest.trim().to_owned()));
                current.clear();
            }
        }
    }
    out
}

#[test]
fn the_runtime_image_is_fit_for_production() {
    let all = instructions(&read("Dockerfile"));
    let last_from = all.iter().rposition(|(op, _)| op == "FROM").unwrap();
    let (build, runtime) = all.split_at(last_from);
    // Every file the build stage copies exists, and so does everything Cargo needs.
    let copied: Vec<&str> = build
        .iter()
        .filter(|(op, _)| op == "COPY")
        .flat_map(|(_, args)| {
            let parts: Vec<&str> = args.split_whitespace().collect();
            parts[..parts.len() - 1].to_vec()
        })
        .collect();
    for path in &copied {
        assert!(
            repo(path).exists(),
            "the build stage copies {path}, which does not exist"
        );
    }
    for needed in ["Cargo.toml", "Cargo.lock", "build.rs", "src", "protocols"] {
        assert!(
            copied.contains(&needed),
            "the build stage does not copy {needed}"
        );
    }
    let run: String = runtime
        .iter()
        .filter(|(op, _)| op == "RUN")
        .map(|(_, a)| a.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        run.contains("ca-certificates"),
        "CA certificates in the runtime image"
    );
    assert!(
        run.contains("/var/lib/ferry/data") && run.contains("-o ferry"),
        "the data directory belongs to the image's user"
    );
    let value = |op: &str| {
        runtime
            .iter()
            .filter(|(o, _)| o == op)
            .map(|(_, a)| a.clone())
            .collect::<Vec<_>>()
    };
    let user = value("USER");
    assert_eq!(
        user.last().map(String::as_str),
        Some("ferry"),
        "runs as a non-root user"
    );
    assert!(value("VOLUME")
        .iter()
        .any(|v| v.contains("/var/lib/ferry/data")));
    let env = value("ENV").join(" ");
    assert!(
        env.contains("FERRY_ADMIN_LISTEN=127.0.0.1:9090"),
        "admin on loopback: {env}"
    );
    assert!(
        !env.contains("FERRY_ADMIN_TOKEN"),
        "no token baked into the image"
    );
    assert!(!value("HEALTHCHECK").is_empty());
    // The build context leaves out build output, history and keys.
    let ignore = read(".dockerignore");
    for pattern in ["target/", ".git/", "certs/dev/", "**/*.key"] {
        assert!(
            ignore.lines().any(|l| l.trim() == pattern),
            ".dockerignore lacks {pattern}"
        );
    }
}

/// The image's layout in a temporary root: the default config at /etc/ferry, the working
/// directory /var/lib/ferry with its data directory, the image's environment (with free
/// ports). The binary starts, answers the health check the image uses, and writes events
/// under the data directory.
#[tokio::test]
async fn the_runtime_layout_serves_with_the_images_config() {
    ferry::tls::install_default_provider();
    let root = tempfile::tempdir().unwrap();
    let etc = root.path().join("etc/ferry");
    let work = root.path().join("var/lib/ferry");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::create_dir_all(work.join("data")).unwrap();
    std::fs::copy(repo("config/ferry.toml"), etc.join("ferry.toml")).unwrap();
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let (http, ws, admin) = (free(), free(), free());
    let mut child = Command::new(FERRY)
        .args(["run", "--config"])
        .arg(etc.join("ferry.toml"))
        .current_dir(&work)
        .env("FERRY_HTTP_LISTEN", http.to_string())
        .env("FERRY_WS_LISTEN", ws.to_string())
        .env("FERRY_ADMIN_LISTEN", admin.to_string())
        .env_remove("FERRY_ADMIN_TOKEN")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let probe = format!("http://{admin}/healthz");
    common::until(
        Duration::from_secs(20),
        "the health check to pass",
        || async {
            Command::new(FERRY)
                .args(["probe", &probe])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        },
    )
    .await;
    let status = reqwest::Client::new()
        .post(format!("http://{http}/events"))
        .header("ce-specversion", "1.0")
        .header("ce-id", "layout-1")
        .header("ce-source", "/deploy")
        .header("ce-type", "t")
        .body("{}")
        .send()
        .await
        .unwrap()
        .status();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(status, 202);
    let written = std::fs::read_to_string(work.join("data/events.jsonl")).unwrap();
    assert!(written.contains("layout-1"));
}

#[test]
fn the_systemd_unit_reloads_restarts_and_is_sandboxed() {
    let unit = read("deploy/systemd/ferry.service");
    for line in [
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/ferry",
        "ExecStart=/usr/local/bin/ferry run --config /etc/ferry/ferry.toml --log-format json",
    ] {
        assert!(
            unit.lines().any(|l| l.trim() == line),
            "the unit lacks `{line}`"
        );
    }
    // `systemd-analyze verify` checks the unit for real where systemd is installed (with
    // the built binary in place of /usr/local/bin/ferry, which verify looks for).
    let Ok(which) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("systemd-analyze is not installed: the unit is checked by its lines only");
        return;
    };
    assert!(which.status.success());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ferry.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/ferry", FERRY)).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Complaints about the host (no `ferry` user, no network-online target in a container)
    // are not the unit's; anything naming the unit's own keys is.
    let problems: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("ferry.service") && !l.contains("user") && !l.contains("Failed to"))
        .collect();
    assert!(problems.is_empty(), "systemd-analyze verify:\n{stderr}");
}

#[test]
fn the_kubernetes_manifests_are_valid_and_complete() {
    use serde::Deserialize;
    let text = read("deploy/kubernetes/ferry.yaml");
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde_yaml::Value::deserialize(d).expect("valid YAML"))
        .collect();
    let kind = |k: &str| -> Vec<&serde_yaml::Value> {
        docs.iter()
            .filter(|d| d["kind"].as_str() == Some(k))
            .collect()
    };
    for k in [
        "ConfigMap",
        "Secret",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
    ] {
        assert!(!kind(k).is_empty(), "no {k}");
    }
    let deployment = kind("Deployment")[0];
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        container["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/readyz")
    );
    assert_eq!(
        container["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/healthz")
    );
    assert!(container["resources"]["requests"]["memory"]
        .as_str()
        .is_some());
    let grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap();
    assert!(
        grace > 30,
        "the grace period covers shutdown_timeout_ms (30 s)"
    );
    let pdb = kind("PodDisruptionBudget")[0];
    assert_eq!(pdb["spec"]["selector"], deployment["spec"]["selector"]);
    // The Secrets hold what the container's env takes from them.
    for env in container["env"].as_sequence().unwrap() {
        let r = &env["valueFrom"]["secretKeyRef"];
        let (name, key) = (r["name"].as_str().unwrap(), r["key"].as_str().unwrap());
        assert!(
            kind("Secret")
                .iter()
                .any(|s| s["metadata"]["name"].as_str() == Some(name)
                    && !s["stringData"][key].is_null()),
            "no Secret {name} with {key}"
        );
    }
    // The ConfigMap's config is one Ferry accepts.
    let toml = kind("ConfigMap")[0]["data"]["ferry.toml"].as_str().unwrap();
    let env = |name: &str| Some(format!("value-of-{name}"));
    ferry::Config::from_str_at(toml, Path::new("ferry.toml"), &env)
        .expect("the ConfigMap's config");
}
