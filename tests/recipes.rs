//! docs/recipes.md, run as written: every `$` line of a recipe's `console` blocks goes to one
//! `bash` in a fresh directory holding a copy of `config/`, with the `ferry` under test first on
//! the `PATH`; each must exit 0 and print the lines shown under it (`…` matches any text).

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const PAGE: &str = include_str!("../docs/recipes.md");
/// Longest a single command may take (a gateway start, a delivery).
const STEP: Duration = Duration::from_secs(60);
const DONE: &str = "__ferry_recipe_step_done";

/// One `$` command and the output lines shown under it.
#[derive(Debug)]
struct Step {
    command: String,
    expected: Vec<String>,
}

/// The steps of the recipe under the `## {title}` heading, in page order.
fn steps(title: &str) -> Vec<Step> {
    let heading = format!("## {title}\n");
    let start = PAGE
        .find(&heading)
        .unwrap_or_else(|| panic!("no recipe {title:?}"));
    let body = &PAGE[start + heading.len()..];
    let body = &body[..body.find("\n## ").unwrap_or(body.len())];
    let mut steps: Vec<Step> = Vec::new();
    let mut in_console = false;
    for line in body.lines() {
        if line.starts_with("```") {
            in_console = !in_console && line == "```console";
            continue;
        }
        if !in_console {
            continue;
        }
        match line.strip_prefix("$ ") {
            Some(command) => steps.push(Step {
                command: command.to_owned(),
                expected: Vec::new(),
            }),
            None => steps
                .last_mut()
                .expect("output before any command")
                .expected
                .push(line.to_owned()),
        }
    }
    assert!(!steps.is_empty(), "recipe {title:?} has no commands");
    steps
}

/// Whether `line` shows `pattern`, where `…` stands for any text.
fn shows(line: &str, pattern: &str) -> bool {
    let parts: Vec<&str> = pattern.split('…').collect();
    let mut rest = line;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            let Some(r) = rest.strip_prefix(part) else {
                return false;
            };
            rest = r;
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            let Some(at) = rest.find(part) else {
                return false;
            };
            rest = &rest[at + part.len()..];
        }
    }
    rest.is_empty()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn run_recipe(title: &str) {
    let steps = steps(title);
    let dir = tempfile::tempdir().unwrap();
    copy_dir(Path::new("config"), &dir.path().join("config"));
    let ferry = Path::new(env!("CARGO_BIN_EXE_ferry"));
    let path = format!(
        "{}:{}",
        ferry.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let stderr = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
    let mut bash = Command::new("bash")
        .args(["--noprofile", "--norc"])
        .current_dir(dir.path())
        .env("PATH", path)
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(stderr)
        // Its own process group, so what the recipe started can be stopped with it.
        .process_group(0)
        .spawn()
        .expect("bash");
    let mut stdin = bash.stdin.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let stdout = bash.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let log = |dir: &Path| std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
    let mut failure = None;
    'steps: for step in &steps {
        writeln!(stdin, "{}\necho; echo \"{DONE} $?\"", step.command).unwrap();
        stdin.flush().unwrap();
        let mut output = Vec::new();
        let status = loop {
            match rx.recv_timeout(STEP) {
                Ok(line) => match line.strip_prefix(DONE) {
                    Some(rc) => break rc.trim().to_owned(),
                    None => output.push(line),
                },
                Err(_) => {
                    failure = Some(format!("`{}` did not finish within {STEP:?}", step.command));
                    break 'steps;
                }
            }
        };
        if status != "0" {
            failure = Some(format!(
                "`{}` exited {status}:\n{}",
                step.command,
                output.join("\n")
            ));
            break;
        }
        let mut lines = output.iter().filter(|l| !l.is_empty());
        for want in &step.expected {
            if !lines.any(|l| shows(l, want)) {
                failure = Some(format!(
                    "`{}` did not print {want:?}; it printed:\n{}",
                    step.command,
                    output.join("\n")
                ));
                break 'steps;
            }
        }
    }
    // Stop what the recipe left running (its gateways, a sender loop), also when a step hung.
    let _ = writeln!(stdin, "kill $(jobs -p) 2>/dev/null; wait; exit 0");
    drop(stdin);
    let group = format!("-{}", bash.id());
    let (exited_tx, exited) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = bash.wait();
        let _ = exited_tx.send(());
    });
    let _ = exited.recv_timeout(Duration::from_secs(10));
    for signal in ["-TERM", "-KILL"] {
        let _ = Command::new("kill")
            .args([signal, "--", &group])
            .stderr(Stdio::null())
            .status();
    }
    if let Some(failure) = failure {
        panic!(
            "recipe {title:?}: {failure}\n--- stderr ---\n{}",
            log(dir.path())
        );
    }
}

#[test]
fn every_recipe_is_tested() {
    let titles: Vec<&str> = PAGE.lines().filter_map(|l| l.strip_prefix("## ")).collect();
    assert_eq!(
        titles,
        [
            "IoT devices to NATS JetStream",
            "Signed webhooks to RabbitMQ",
            "Partner feeds in and out",
            "Reload drill"
        ]
    );
}

#[test]
fn the_pattern_matcher() {
    assert!(shows("202", "202"));
    assert!(!shows("2020", "202"));
    assert!(shows(r#"{"a":1,"status":401}"#, r#"{…"status":401…}"#));
    assert!(shows("x refused", "…refused"));
    assert!(!shows("refused x", "…refused"));
}

#[test]
fn iot_devices_to_nats_jetstream() {
    run_recipe("IoT devices to NATS JetStream");
}

#[test]
fn signed_webhooks_to_rabbitmq() {
    run_recipe("Signed webhooks to RabbitMQ");
}

#[test]
fn partner_feeds_in_and_out() {
    run_recipe("Partner feeds in and out");
}

#[test]
fn reload_drill() {
    run_recipe("Reload drill");
}
