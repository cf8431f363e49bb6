//! Routes at scale: the EventBridge-style operators and data filters on real requests, the
//! `routes_dir` folder (with the file watch), `ferry check`'s index summary and warnings, and
//! the explain endpoint.

mod common;

use std::time::Duration;

use common::{FerryProcess, TestGateway};

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

fn event(id: &str, ty: &str, data: &str) -> String {
    format!(
        r#"{{"specversion":"1.0","id":"{id}","source":"/devices/thermo-7","type":"{ty}","subject":"devices/7/thermo-1","datacontenttype":"application/json","data":{data}}}"#
    )
}

/// `ferry check --config ferry.toml [extra…]` in `dir`.
fn ferry_check(dir: &std::path::Path, extra: &[&str]) -> std::process::Output {
    std::process::Command::new(FERRY)
        .args(["check", "--config", "ferry.toml"])
        .args(extra)
        .current_dir(dir)
        .output()
        .expect("ferry check runs")
}

async fn post(url: &str, body: String) -> u16 {
    reqwest::Client::new()
        .post(url)
        .header("content-type", "application/cloudevents+json")
        .body(body)
        .send()
        .await
        .expect("the source answers")
        .status()
        .as_u16()
}

const OPERATORS: &str = r#"
[admin]
listen = "127.0.0.1:0"

[sources.web]
type = "http"
listen = "127.0.0.1:0"
path = "/events"

[sinks.hot]
type = "file"
path = "{dir}/hot.jsonl"

[sinks.local]
type = "file"
path = "{dir}/local.jsonl"

[sinks.remote]
type = "file"
path = "{dir}/remote.jsonl"

[routes.hot]
from = ["web"]
to = ["hot"]
filters = [
  { numeric = { "data.temperature" = { ">=" = 30, "<" = 50 } } },
  { wildcard = { "subject" = "devices/*/thermo-*" } },
  { equals_ignore_case = { "type" = "COM.Example.Reading" } },
  { exists = { "header.x-debug" = false } },
  { anything_but = { "source" = ["/test", "/staging"] } },
]

[routes.local]
from = ["web"]
to = ["local"]
filters = [{ cidr = { "peer.ip" = ["127.0.0.0/8", "::1/128"] } }, { exact = { type = ["com.example.reading", "com.example.alarm"] } }]

[routes.remote]
from = ["web"]
to = ["remote"]
filters = [{ cidr = { "peer.ip" = "10.0.0.0/8" } }]
"#;

/// The operators and `data.` paths route real requests; `peer.ip` is the sending peer.
#[tokio::test]
async fn operators_and_data_filters_route_real_requests() {
    let gw = TestGateway::start(OPERATORS).await;
    let url = gw.url("web", "/events");
    for (id, ty, data) in [
        ("warm", "com.example.reading", r#"{"temperature": 35}"#),
        ("cold", "com.example.reading", r#"{"temperature": 12}"#),
        ("alarm", "com.example.alarm", r#"{"temperature": "hot"}"#),
    ] {
        assert_eq!(post(&url, event(id, ty, data)).await, 202, "{id}");
    }
    let ids = |name: &str| -> Vec<String> {
        gw.lines(name)
            .iter()
            .map(|l| l["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids("hot.jsonl"), ["warm"]);
    assert_eq!(ids("local.jsonl"), ["warm", "cold", "alarm"]);
    assert!(ids("remote.jsonl").is_empty());

    // A debug header keeps the event out of `hot` (exists = false).
    let status = reqwest::Client::new()
        .post(&url)
        .header("content-type", "application/cloudevents+json")
        .header("x-debug", "1")
        .body(event(
            "debug",
            "com.example.reading",
            r#"{"temperature": 35}"#,
        ))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 202);
    assert_eq!(ids("hot.jsonl"), ["warm"]);
}

/// Explain says which routes match and, for the others, the first filter that failed and
/// the value it saw; `?only=matching` leaves those out.
#[tokio::test]
async fn explain_names_the_first_filter_that_fails() {
    let gw = TestGateway::start(OPERATORS).await;
    let request = serde_json::json!({
        "event": serde_json::from_str::<serde_json::Value>(&event("x", "com.example.reading", r#"{"temperature": 12}"#)).unwrap(),
        "source": "web",
        "metadata": { "peer.ip": "10.1.2.3" },
    });
    let client = reqwest::Client::new();
    let answer: serde_json::Value = client
        .post(gw.admin("/-/routes/explain"))
        .json(&request)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let routes = &answer["sources"][0]["routes"];
    assert_eq!(answer["sources"][0]["source"], "web");
    assert_eq!(routes[0]["route"], "hot");
    assert_eq!(routes[0]["matched"], false);
    assert_eq!(
        routes[0]["failed"],
        serde_json::json!({"filter": "data.temperature is a number >= 30, < 50", "saw": "12"})
    );
    assert_eq!(routes[1]["route"], "local");
    assert_eq!(
        routes[1]["failed"]["filter"],
        r#"peer.ip is an address in 127.0.0.0/8 or ::1/128"#
    );
    assert_eq!(routes[1]["failed"]["saw"], r#""10.1.2.3""#);
    assert_eq!(routes[2]["route"], "remote");
    assert_eq!(routes[2]["matched"], true);
    assert_eq!(routes[2]["to"], serde_json::json!(["remote"]));

    let only: serde_json::Value = client
        .post(gw.admin("/-/routes/explain?only=matching"))
        .json(&request)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = only["sources"][0]["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["route"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["remote"]);

    // A bare event is explained for every source; a bad one is a problem naming the attribute.
    let bare = client
        .post(gw.admin("/-/routes/explain"))
        .body(event("y", "com.example.alarm", "{}"))
        .send()
        .await
        .unwrap();
    assert_eq!(bare.status(), 200);
    let bad = client
        .post(gw.admin("/-/routes/explain"))
        .body(r#"{"specversion":"1.0","id":"","source":"/s","type":"t"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert_eq!(bad.headers()["content-type"], "application/problem+json");
    assert!(bad.text().await.unwrap().contains("`id`"));
}

/// `routes_dir` loads every `*.toml` of a folder; a new file is picked up by the file watch;
/// `ferry check` counts the routes and warns about one that can never match; `--explain`
/// answers from the command line.
#[tokio::test(flavor = "multi_thread")]
async fn routes_dir_is_loaded_and_watched() {
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.d");
    std::fs::create_dir(&routes).unwrap();
    std::fs::write(
        routes.join("tenant-a.toml"),
        "[routes.tenant-a]\nfrom = [\"web\"]\nto = [\"a\"]\nfilters = [{ exact = { type = \"com.a\" } }]\n",
    )
    .unwrap();
    let config = r#"
routes_dir = "routes.d"

[reload]
debounce_ms = 50

[sources.web]
type = "http"
listen = "127.0.0.1:0"
path = "/events"
unrouted = "reject"

[sinks.a]
type = "file"
path = "a.jsonl"

[sinks.b]
type = "file"
path = "b.jsonl"
"#;
    let ferry = FerryProcess::start(dir.path(), config);
    let url = ferry.url("web", "/events");
    let body =
        |ty: &str| format!(r#"{{"specversion":"1.0","id":"1","source":"/s","type":"{ty}"}}"#);
    assert_eq!(post(&url, body("com.a")).await, 202);
    assert_eq!(
        post(&url, body("com.b")).await,
        404,
        "no route for com.b yet"
    );

    std::fs::write(
        routes.join("tenant-b.toml"),
        "[routes.tenant-b]\nfrom = [\"web\"]\nto = [\"b\"]\nfilters = [{ exact = { type = \"com.b\" } }]\n",
    )
    .unwrap();
    ferry
        .wait_log(
            "the reload by the file watch",
            Duration::from_secs(20),
            |lines| {
                lines
                    .iter()
                    .any(|l| {
                        l.contains("config reloaded by file watch") && l.contains("route:tenant-b")
                    })
                    .then_some(())
            },
        )
        .await;
    assert_eq!(post(&url, body("com.b")).await, 202);
    let b = std::fs::read_to_string(dir.path().join("b.jsonl")).unwrap();
    assert!(b.contains(r#""type":"com.b""#), "{b}");

    // A route that can never match, in a third file: check still passes, and warns.
    std::fs::write(
        routes.join("broken.toml"),
        "[routes.never]\nfrom = [\"web\"]\nto = [\"b\"]\nfilters = [{ exact = { type = \"x\" } }, { exact = { type = \"y\" } }]\n",
    )
    .unwrap();
    let out = ferry_check(dir.path(), &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("routes   3 (index: 3 exact and 0 prefix entries; 0 evaluated for every event of their source)"),
        "{stdout}"
    );
    assert!(
        stderr.contains("warning: route `never` can never match"),
        "{stderr}"
    );

    // The same name in two files is refused, naming both.
    std::fs::write(
        routes.join("tenant-c.toml"),
        "[routes.tenant-a]\nfrom = [\"web\"]\nto = [\"b\"]\n",
    )
    .unwrap();
    let out = ferry_check(dir.path(), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("routes.d/tenant-c.toml:1:9: key `routes.tenant-a`: route `tenant-a` is defined twice: in routes.d/tenant-a.toml and in routes.d/tenant-c.toml"),
        "{stderr}"
    );
    std::fs::remove_file(routes.join("tenant-c.toml")).unwrap();

    std::fs::write(dir.path().join("event.json"), body("com.b")).unwrap();
    let out = ferry_check(dir.path(), &["--explain", "event.json"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout,
        "source web\n  never: no: type = \"x\" (saw \"com.b\")\n  tenant-a: no: type = \"com.a\" (saw \"com.b\")\n  tenant-b: matches -> b\n"
    );
}

/// `peer.ip` is set on every listening source: a WebSocket client's and an MQTT device's
/// events reach the route that accepts loopback peers, not the one for 10.0.0.0/8.
#[tokio::test]
async fn peer_ip_is_known_on_every_listener() {
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    let gw = TestGateway::start(
        r#"
[sources.ws]
type = "websocket"
listen = "127.0.0.1:0"
path = "/ws"

[sources.devices]
type = "mqtt-server"
listen = "127.0.0.1:0"
topics = ["devices/+/telemetry"]

[sources.devices.auth]
mode = "any"
passwords = { "thermo-7" = "s3cret" }

[sinks.local]
type = "file"
path = "{dir}/local.jsonl"

[sinks.remote]
type = "file"
path = "{dir}/remote.jsonl"

[routes.local]
from = ["ws", "devices"]
to = ["local"]
filters = [{ cidr = { "peer.ip" = "127.0.0.0/8" } }]

[routes.remote]
from = ["ws", "devices"]
to = ["remote"]
filters = [{ cidr = { "peer.ip" = "10.0.0.0/8" } }]
"#,
    )
    .await;
    let mut request = format!("ws://{}/ws", gw.gateway.source_addr("ws").unwrap())
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "cloudevents.json".parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    ws.send(tokio_tungstenite::tungstenite::Message::text(
        r#"{"specversion":"1.0","id":"from-ws","source":"/ws","type":"t"}"#,
    ))
    .await
    .unwrap();
    // The acknowledgement comes once the file sink wrote the event.
    let ack = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("an acknowledgement")
        .unwrap()
        .unwrap();
    assert!(ack.to_text().unwrap().contains("\"status\":202"), "{ack:?}");

    let addr = gw.gateway.source_addr("devices").unwrap();
    // mosquitto_pub -q 1 exits once it has the PUBACK, which Ferry sends after the sink.
    let published = tokio::task::spawn_blocking(move || {
        std::process::Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &addr.port().to_string(),
                "-V",
                "mqttv5",
                "-q",
                "1",
            ])
            .args([
                "-i",
                "thermo-7",
                "-u",
                "thermo-7",
                "-P",
                "s3cret",
                "-t",
                "devices/thermo-7/telemetry",
            ])
            .args([
                "-m",
                r#"{"specversion":"1.0","id":"from-mqtt","source":"/d","type":"t"}"#,
            ])
            .status()
            .expect("mosquitto_pub runs")
    })
    .await
    .unwrap();
    assert!(published.success());

    let ids: Vec<String> = gw
        .lines("local.jsonl")
        .iter()
        .map(|l| l["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["from-ws", "from-mqtt"]);
    assert!(gw.lines("remote.jsonl").is_empty());
}
