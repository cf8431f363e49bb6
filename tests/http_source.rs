//! The HTTP source end to end: real sockets, real HTTP requests, a real file sink.

mod common;

use common::{closed_port, Receiver, TestGateway};
use serde_json::{json, Value};

const BASIC: &str = r#"
[admin]
listen = "127.0.0.1:0"

[sources.web]
type = "http"
listen = "127.0.0.1:0"
path = "/events"
max_body_bytes = 4096

[sinks.archive]
type = "file"
path = "{dir}/events.jsonl"

[routes.all]
from = ["web"]
to = ["archive"]
"#;

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

async fn problem(resp: reqwest::Response, status: u16) -> Value {
    assert_eq!(resp.status().as_u16(), status);
    assert_eq!(
        resp.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/problem+json")
    );
    let body: Value =
        serde_json::from_slice(&resp.bytes().await.unwrap()).expect("problem body is JSON");
    assert_eq!(body["status"], status);
    assert!(
        body["title"].is_string() && body["detail"].is_string(),
        "{body}"
    );
    body
}

#[tokio::test]
async fn binary_and_structured_events_arrive_intact() {
    let gw = TestGateway::start(BASIC).await;
    let url = gw.url("web", "/events");
    let resp = client()
        .post(&url)
        .header("ce-specversion", "1.0")
        .header("ce-id", "b-1")
        .header("ce-source", "https://example.com/sensors")
        .header("ce-type", "com.example.reading")
        .header("ce-subject", "room%20%E2%82%AC")
        .header("ce-time", "2026-11-24T10:00:00.123+02:00")
        .header("ce-dataschema", "https://example.com/schema.json")
        .header("ce-tenant", "acme")
        .header("ce-priority", "7")
        .header("content-type", "application/json")
        .body(r#"{"temperature": 21.5, "tags": ["a", "b"]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);

    let structured = json!({
        "specversion": "1.0", "id": "s-1", "source": "/orders", "type": "com.example.order.created",
        "subject": "o-17", "time": "2026-11-24T10:00:00Z", "datacontenttype": "application/json",
        "count": 3, "flag": true, "label": "x y",
        "data": {"order": 17, "lines": [{"sku": "A", "qty": 2}]}
    });
    let resp = client()
        .post(&url)
        .header(
            "content-type",
            "application/cloudevents+json; charset=utf-8",
        )
        .body(structured.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);

    let resp = client()
        .post(&url)
        .header("content-type", "application/cloudevents+json")
        .body(r#"{"specversion":"1.0","id":"bin-1","source":"/b","type":"t","datacontenttype":"application/octet-stream","data_base64":"AAEC/f7/"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);

    // 202 means the file sink confirmed: the lines are there now.
    let mut lines = gw.lines("events.jsonl");
    assert_eq!(lines.len(), 3);
    // Events that came without a trace context got a new one; apart from it, nothing changed.
    for line in &mut lines {
        let t = line
            .as_object_mut()
            .unwrap()
            .remove("traceparent")
            .expect("a trace context was started");
        assert!(ferry::trace::is_valid(t.as_str().unwrap()), "{t}");
    }
    assert_eq!(
        lines[0],
        json!({
            "specversion": "1.0", "id": "b-1", "source": "https://example.com/sensors",
            "type": "com.example.reading", "subject": "room €", "time": "2026-11-24T10:00:00.123+02:00",
            "dataschema": "https://example.com/schema.json", "datacontenttype": "application/json",
            "tenant": "acme", "priority": "7",
            "data": {"temperature": 21.5, "tags": ["a", "b"]}
        })
    );
    assert_eq!(lines[1], structured);
    assert_eq!(lines[2]["data_base64"], "AAEC/f7/");
}

#[tokio::test]
async fn error_statuses_are_problem_json() {
    let text = BASIC.replace(
        "path = \"/events\"",
        "path = \"/events\"\nunrouted = \"reject\"",
    ) + r#"
[routes.all]
from = ["web"]
to = ["archive"]
filters = [{ prefix = { type = "com.example." } }]
"#;
    let text = text.replacen(
        "[routes.all]\nfrom = [\"web\"]\nto = [\"archive\"]\n",
        "",
        1,
    );
    let gw = TestGateway::start(&text).await;
    let url = gw.url("web", "/events");
    let ce = |r: reqwest::RequestBuilder| {
        r.header("ce-specversion", "1.0")
            .header("ce-id", "1")
            .header("ce-source", "/s")
            .header("content-type", "text/plain")
    };

    // 400: invalid attribute, named.
    let p = problem(
        ce(client().post(&url))
            .header("ce-type", "com.example.x")
            .header("ce-time", "noon")
            .body("x")
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
    assert_eq!(p["attribute"], "time");
    assert_eq!(p["header"], "ce-time");

    // 400: missing required attribute.
    let p = problem(ce(client().post(&url)).body("x").send().await.unwrap(), 400).await;
    assert_eq!(p["attribute"], "type");

    // 400: malformed JSON.
    let p = problem(
        client()
            .post(&url)
            .header("content-type", "application/cloudevents+json")
            .body("{nope")
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
    assert!(
        p["detail"].as_str().unwrap().contains("malformed JSON"),
        "{p}"
    );

    // 400: not a CloudEvent.
    let p = problem(
        client()
            .post(&url)
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
    assert_eq!(p["header"], "ce-specversion");

    // 413: over max_body_bytes (4096), with and without Content-Length.
    let big = "x".repeat(5000);
    problem(
        ce(client().post(&url))
            .header("ce-type", "com.example.x")
            .body(big.clone())
            .send()
            .await
            .unwrap(),
        413,
    )
    .await;
    let stream = futures_body(big);
    problem(
        ce(client().post(&url))
            .header("ce-type", "com.example.x")
            .body(stream)
            .send()
            .await
            .unwrap(),
        413,
    )
    .await;

    // 415: a CloudEvents format Ferry does not read.
    let p = problem(
        client()
            .post(&url)
            .header("content-type", "application/cloudevents+avro")
            .body("x")
            .send()
            .await
            .unwrap(),
        415,
    )
    .await;
    assert_eq!(p["header"], "content-type");

    // 405: wrong method.
    let resp = client().get(&url).send().await.unwrap();
    assert_eq!(resp.headers().get("allow").unwrap(), "POST, OPTIONS");
    problem(resp, 405).await;

    // 404: no route matches and the source rejects unrouted events.
    let p = problem(
        ce(client().post(&url))
            .header("ce-type", "org.other")
            .body("x")
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    assert!(p["detail"].as_str().unwrap().contains("no route"));

    // Nothing of the above was written; a valid event is.
    assert!(gw.lines("events.jsonl").is_empty());
    let resp = ce(client().post(&url))
        .header("ce-type", "com.example.x")
        .body("ok")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    assert_eq!(gw.lines("events.jsonl").len(), 1);

    let metrics = gw.metrics().await;
    for reason in [
        "invalid",
        "too_large",
        "unsupported_media_type",
        "method_not_allowed",
        "unrouted",
    ] {
        assert!(
            metrics.contains(&format!("reason=\"{reason}\"")),
            "{reason} missing in\n{metrics}"
        );
    }
}

/// A body without Content-Length (chunked).
fn futures_body(s: String) -> reqwest::Body {
    let chunks: Vec<Result<http_body::Frame<bytes::Bytes>, std::io::Error>> = s
        .into_bytes()
        .chunks(1000)
        .map(|c| Ok(http_body::Frame::data(bytes::Bytes::copy_from_slice(c))))
        .collect();
    reqwest::Body::wrap(http_body_util::StreamBody::new(tokio_stream::iter(chunks)))
}

#[tokio::test]
async fn unrouted_events_are_accepted_and_counted_by_default() {
    let text = BASIC.replace(
        "to = [\"archive\"]",
        "to = [\"archive\"]\nfilters = [{ exact = { type = \"never\" } }]",
    );
    let gw = TestGateway::start(&text).await;
    let resp = client()
        .post(gw.url("web", "/events"))
        .header("content-type", "application/cloudevents+json")
        .body(r#"{"specversion":"1.0","id":"1","source":"/s","type":"other"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    assert!(gw.lines("events.jsonl").is_empty());
    assert!(gw
        .metrics()
        .await
        .contains("ferry_events_unrouted_total{source=\"web\"} 1"));
}

#[tokio::test]
async fn batches_are_all_or_nothing() {
    let gw = TestGateway::start(BASIC).await;
    let url = gw.url("web", "/events");
    let ev = |id: &str| json!({"specversion": "1.0", "id": id, "source": "/s", "type": "t", "data": {"id": id}});
    let resp = client()
        .post(&url)
        .header("content-type", "application/cloudevents-batch+json")
        .body(json!([ev("1"), ev("2"), ev("3")]).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let ids: Vec<Value> = gw
        .lines("events.jsonl")
        .iter()
        .map(|l| l["id"].clone())
        .collect();
    assert_eq!(ids, vec![json!("1"), json!("2"), json!("3")]);

    let mut bad = ev("5");
    bad.as_object_mut().unwrap().remove("source");
    let resp = client()
        .post(&url)
        .header("content-type", "application/cloudevents-batch+json")
        .body(json!([ev("4"), bad]).to_string())
        .send()
        .await
        .unwrap();
    let p = problem(resp, 400).await;
    assert_eq!(p["index"], 1);
    assert_eq!(p["attribute"], "source");
    // The detail says which event, as people count.
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .starts_with("event 2 of the batch (index 1): "),
        "{p}"
    );
    assert_eq!(
        gw.lines("events.jsonl").len(),
        3,
        "nothing of the invalid batch was routed"
    );

    let resp = client()
        .post(&url)
        .header("content-type", "application/cloudevents-batch+json")
        .body("[]")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
}

const ORDERS: &str = r#"
[admin]
listen = "127.0.0.1:0"

[sources.webhooks]
type = "http"
listen = "127.0.0.1:0"
path = "/events"

[sinks.archive]
type = "file"
path = "{dir}/events.jsonl"

[sinks.orders]
type = "http"
url = "http://{receiver}/orders"
mode = "{mode}"

[routes.everything]
from = ["webhooks"]
to = ["archive"]

[routes.orders]
from = ["webhooks"]
to = ["orders"]
filters = [
  { prefix = { type = "com.example.order." } },
  { not = { exact = { "header.x-tenant" = "test" } } },
]
"#;

async fn post_event(url: &str, ty: &str, id: &str, tenant: Option<&str>) -> u16 {
    let mut req = client()
        .post(url)
        .header("ce-specversion", "1.0")
        .header("ce-id", id)
        .header("ce-source", "/shop")
        .header("ce-type", ty)
        .header(
            "ce-ext",
            "Euro € \"q\""
                .replace('€', "%E2%82%AC")
                .replace(' ', "%20")
                .replace('"', "%22"),
        )
        .header("content-type", "application/json");
    if let Some(t) = tenant {
        req = req.header("x-tenant", t);
    }
    req.body(format!(r#"{{"id":"{id}"}}"#))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn routes_by_type_prefix_and_header_to_an_http_sink_in_binary_mode() {
    let mut receiver = Receiver::start().await;
    let text = ORDERS
        .replace("{receiver}", &receiver.addr.to_string())
        .replace("{mode}", "binary");
    let gw = TestGateway::start(&text).await;
    let url = gw.url("webhooks", "/events");

    assert_eq!(
        post_event(&url, "com.example.order.created", "o-1", None).await,
        202
    );
    assert_eq!(
        post_event(&url, "com.example.order.created", "o-2", Some("test")).await,
        202
    );
    assert_eq!(
        post_event(&url, "com.example.user.created", "u-1", None).await,
        202
    );
    assert_eq!(
        post_event(&url, "com.example.order.paid", "o-3", Some("prod")).await,
        202
    );

    // Everything was archived; only o-1 and o-3 reached the orders endpoint.
    assert_eq!(gw.lines("events.jsonl").len(), 4);
    let mut ids = Vec::new();
    while let Ok(r) = receiver.rx.try_recv() {
        assert_eq!(r.headers.get("ce-specversion").unwrap(), "1.0");
        assert_eq!(r.headers.get("ce-source").unwrap(), "/shop");
        assert_eq!(
            r.headers.get("ce-ext").unwrap(),
            "Euro%20%E2%82%AC%20%22q%22"
        );
        assert_eq!(r.headers.get("content-type").unwrap(), "application/json");
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(
            body["id"],
            r.headers.get("ce-id").unwrap().to_str().unwrap()
        );
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids, vec!["o-1", "o-3"]);
}

#[tokio::test]
async fn http_sink_in_structured_mode() {
    let mut receiver = Receiver::start().await;
    let text = ORDERS
        .replace("{receiver}", &receiver.addr.to_string())
        .replace("{mode}", "structured");
    let gw = TestGateway::start(&text).await;
    assert_eq!(
        post_event(
            &gw.url("webhooks", "/events"),
            "com.example.order.created",
            "o-9",
            None
        )
        .await,
        202
    );
    let r = receiver.rx.try_recv().expect("delivered before 202");
    assert!(r
        .headers
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("application/cloudevents+json"));
    assert!(r.headers.get("ce-id").is_none());
    let body: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body["id"], "o-9");
    assert_eq!(body["ext"], "Euro € \"q\"");
    assert_eq!(body["data"], json!({"id": "o-9"}));
}

#[tokio::test]
async fn failing_http_sink_never_gets_a_202() {
    let dead = closed_port().await;
    let text = ORDERS
        .replace("{receiver}", &dead.to_string())
        .replace("{mode}", "binary");
    let gw = TestGateway::start(&text).await;
    let url = gw.url("webhooks", "/events");
    let resp = client()
        .post(&url)
        .header("ce-specversion", "1.0")
        .header("ce-id", "o-1")
        .header("ce-source", "/shop")
        .header("ce-type", "com.example.order.created")
        .body("{}")
        .send()
        .await
        .unwrap();
    let p = problem(resp, 502).await;
    assert!(p["detail"].as_str().unwrap().contains("orders"), "{p}");
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("ferry_events_delivered_total{sink=\"orders\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ferry_delivery_failures_total{sink=\"orders\",kind=\"retryable\"} 1"),
        "{metrics}"
    );
    assert!(!metrics.contains("ferry_events_accepted_total{source=\"webhooks\"} 1"));

    // A receiver answering 500 is a failure too; 200 again is a success.
    let receiver = Receiver::start().await;
    receiver.set_status(500);
    let text = ORDERS
        .replace("{receiver}", &receiver.addr.to_string())
        .replace("{mode}", "binary");
    let gw = TestGateway::start(&text).await;
    let url = gw.url("webhooks", "/events");
    assert_eq!(
        post_event(&url, "com.example.order.created", "o-2", None).await,
        502
    );
    receiver.set_status(200);
    assert_eq!(
        post_event(&url, "com.example.order.created", "o-2", None).await,
        202
    );
}

#[tokio::test]
async fn admin_health_and_readiness() {
    let gw = TestGateway::start(BASIC).await;
    let h = reqwest::get(gw.admin("/healthz")).await.unwrap();
    assert_eq!(h.status(), 200);
    let r = reqwest::get(gw.admin("/readyz")).await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn routes_by_a_cesql_expression_over_an_extension() {
    let text = BASIC.replace(
        "to = [\"archive\"]",
        "to = [\"archive\"]\nfilters = [{ cesql = \"type LIKE 'com.example.%' AND temperature > 30\" }]",
    );
    let gw = TestGateway::start(&text).await;
    let url = gw.url("web", "/events");
    let send = |id: &'static str, ty: &'static str, temperature: &'static str| {
        let url = url.clone();
        async move {
            client()
                .post(&url)
                .header("ce-specversion", "1.0")
                .header("ce-id", id)
                .header("ce-source", "/sensors")
                .header("ce-type", ty)
                .header("ce-temperature", temperature)
                .body("{}")
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(send("hot", "com.example.reading", "31").await, 202);
    assert_eq!(send("cold", "com.example.reading", "12").await, 202);
    assert_eq!(send("other", "org.other.reading", "40").await, 202);
    assert_eq!(send("broken", "com.example.reading", "warm").await, 202);
    // Structured mode: the extension is a JSON Integer.
    let resp = client()
        .post(&url)
        .header("content-type", "application/cloudevents+json")
        .body(r#"{"specversion":"1.0","id":"hot-json","source":"/sensors","type":"com.example.reading","temperature":35}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let ids: Vec<Value> = gw
        .lines("events.jsonl")
        .iter()
        .map(|l| l["id"].clone())
        .collect();
    assert_eq!(ids, vec![json!("hot"), json!("hot-json")]);
    // "warm" > 30 is a cast error: no match, and the route counts it.
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("ferry_events_unrouted_total{source=\"web\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ferry_route_filter_errors_total{route=\"all\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ferry_route_matched_total{route=\"all\"} 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn third_party_webhooks_are_normalized_by_a_template() {
    let text = BASIC.replace(
        "max_body_bytes = 4096",
        "max_body_bytes = 4096\nnormalize = { type = \"com.github.{header.x-github-event}\", source = \"https://github.com/{data/repository/full_name}\", id = \"{header.x-github-delivery}\" }",
    );
    let gw = TestGateway::start(&text).await;
    let url = gw.url("web", "/events");
    let body = r#"{"action":"opened","repository":{"full_name":"acme/app"}}"#;
    let resp = client()
        .post(&url)
        .header("x-github-event", "pull_request")
        .header("x-github-delivery", "72d3162e-cc78")
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let line = &gw.lines("events.jsonl")[0];
    assert_eq!(line["type"], "com.github.pull_request");
    assert_eq!(line["id"], "72d3162e-cc78");
    assert_eq!(line["source"], "https://github.com/acme/app");
    assert_eq!(line["datacontenttype"], "application/json");
    assert_eq!(line["data"], serde_json::from_str::<Value>(body).unwrap());
    assert!(line["time"].is_string());

    // A request without the delivery header cannot fill `id`: 400 naming it.
    let resp = client()
        .post(&url)
        .header("x-github-event", "push")
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(problem(resp, 400).await["attribute"], "id");
    // Real CloudEvents still pass through unchanged.
    let resp = client()
        .post(&url)
        .header("content-type", "application/cloudevents+json")
        .body(r#"{"specversion":"1.0","id":"ce-1","source":"/s","type":"t"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    assert_eq!(gw.lines("events.jsonl")[1]["id"], "ce-1");
}

/// C1: a media type with a multi-byte character among its last bytes once panicked the
/// connection task; every such request now gets an answer.
#[tokio::test]
async fn c1_multibyte_media_types_get_an_answer() {
    let gw = TestGateway::start(BASIC).await;
    let url = gw.url("web", "/events");
    for (i, ct) in [
        "application/j\u{FFFF}son",
        "application/x+j\u{e9}on",
        "text/\u{e9}xml",
    ]
    .iter()
    .enumerate()
    {
        let event = json!({"specversion": "1.0", "id": format!("c1-{i}"), "source": "/s",
            "type": "t", "datacontenttype": ct, "data": "x"});
        let resp = client()
            .post(&url)
            .header("content-type", "application/cloudevents+json")
            .body(event.to_string())
            .send()
            .await
            .unwrap_or_else(|e| panic!("{ct:?}: no answer: {e}"));
        let status = resp.status().as_u16();
        assert!(status == 202 || status == 400, "{ct:?}: {status}");
    }
}
