//! The interop suite: Ferry's binary against client libraries nobody here wrote — the Python
//! `cloudevents` SDK (HTTP, AMQP and RabbitMQ bindings), the JS SDK with MQTT.js,
//! `standardwebhooks`, PyJWT, paho-mqtt, `mosquitto_pub`, pika, nats-py and `websockets` — through
//! the real brokers and Ferry's own MQTT server. Each script in `tests/interop/` sends to Ferry with one library, decodes what Ferry
//! sends with it, and compares every attribute and the data exactly; this file runs each one as a
//! test. `scripts/interop-setup` (run by `scripts/test`) installs the pinned clients.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

/// Runs one script with the built binary; fails with its output unless it exits 0 in time.
fn run(program: &Path, script: &str) {
    let dir = interop_dir();
    assert!(
        program.exists(),
        "{} is missing: run scripts/interop-setup (scripts/test does) to install the interop clients",
        program.display()
    );
    let mut child = Command::new(program)
        .arg(script)
        .current_dir(&dir)
        .env("FERRY_BIN", env!("CARGO_BIN_EXE_ferry"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        #[allow(clippy::disallowed_methods)]
        // synchronous code polling a child process or a clock, off any runtime
        std::thread::sleep(Duration::from_millis(50));
    };
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    let summary = out.lines().last().unwrap_or("").to_owned();
    match status {
        Some(s) if s.success() => eprintln!("{script}: {summary}"),
        Some(s) => panic!("{script} failed ({s}):\n{out}\n{err}"),
        None => panic!("{script} did not finish within 180 s:\n{out}\n{err}"),
    }
}

fn python(script: &str) {
    run(&interop_dir().join(".venv/bin/python"), script);
}

fn node(script: &str) {
    let node = ["/usr/bin/node", "/usr/local/bin/node"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("node"));
    assert!(
        interop_dir().join("js/node_modules").exists(),
        "tests/interop/js/node_modules is missing: run scripts/interop-setup (scripts/test does)"
    );
    run(&node, script);
}

#[test]
fn python_cloudevents_http_binary_structured_and_batch() {
    python("py_http.py");
}

#[test]
fn python_cloudevents_amqp_and_rabbitmq_bindings_with_pika() {
    python("py_amqp.py");
}

#[test]
fn standardwebhooks_and_pyjwt() {
    python("py_security.py");
}

#[test]
fn paho_mqtt_5_and_3_1_1() {
    python("py_mqtt.py");
}

#[test]
fn paho_mqtt_and_mosquitto_pub_against_the_mqtt_server() {
    python("py_mqtt_server.py");
}

#[test]
fn nats_py_core_and_jetstream() {
    python("py_nats.py");
}

#[test]
fn websockets_source_and_push_sink() {
    python("py_websocket.py");
}

#[test]
fn js_sdk_http() {
    node("js/http.mjs");
}

#[test]
fn js_sdk_mqtt_with_mqtt_js() {
    node("js/mqtt.mjs");
}
