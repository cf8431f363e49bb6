//! The NATS source's answers and acknowledgements against the real nats-server: replies go
//! only to inbox subjects (M8), and JetStream messages whose sinks are slow are kept in
//! progress instead of being redelivered while in flight (Q2).

mod common;

use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use common::{Receiver, TestGateway};
use futures_util::StreamExt;

const NATS: &str = "nats://127.0.0.1:4222";
const WAIT: Duration = Duration::from_secs(20);

async fn client() -> async_nats::Client {
    async_nats::connect(NATS)
        .await
        .expect("nats-server must run on 127.0.0.1:4222 with JetStream (scripts/brokers)")
}

fn event(id: &str) -> Bytes {
    Bytes::from(format!(
        r#"{{"specversion":"1.0","id":"{id}","source":"/s","type":"t"}}"#
    ))
}

/// M8: a request naming a reply subject outside `reply_prefix` gets no answer there; a
/// request with a normal inbox does.
#[tokio::test]
async fn m8_replies_go_only_to_inbox_subjects() {
    let sfx = common::suffix();
    let gw = TestGateway::start(&format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[sources.core]
type = "nats"
url = "{NATS}"
subject = "m8{sfx}.in"

[sinks.file]
type = "file"
path = "{{dir}}/events.jsonl"

[routes.all]
from = ["core"]
to = ["file"]
"#
    ))
    .await;
    common::ready(&gw, WAIT).await;
    let nats = client().await;
    let victim = format!("m8{sfx}.victim");
    let mut watched = nats.subscribe(victim.clone()).await.unwrap();
    nats.flush().await.unwrap();
    nats.publish_with_reply(format!("m8{sfx}.in"), victim, event("reflected"))
        .await
        .unwrap();
    // A normal request after it: its answer proves the first was handled too.
    let answer = tokio::time::timeout(WAIT, nats.request(format!("m8{sfx}.in"), event("asked")))
        .await
        .expect("an answer in time")
        .expect("a reply on the inbox");
    let status = answer
        .headers
        .as_ref()
        .and_then(|h| h.get("Ferry-Status"))
        .map(|v| v.to_string());
    assert_eq!(status.as_deref(), Some("202"));
    let lines = gw.lines("events.jsonl");
    assert!(
        lines.iter().any(|l| l["id"] == "reflected"),
        "the event itself is accepted"
    );
    // Nothing was published on the subject the publisher named.
    nats.flush().await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), watched.next())
            .await
            .is_err(),
        "Ferry answered on a subject outside reply_prefix"
    );
}

/// Q2: a JetStream message whose sink takes longer than `ack_wait` is kept in progress and
/// delivered once, not redelivered (and queued again) every `ack_wait`.
#[tokio::test]
async fn q2_slow_sinks_do_not_cause_jetstream_redeliveries() {
    let sfx = common::suffix();
    let nats = client().await;
    let js = jetstream::new(nats.clone());
    let stream = format!("FERRY_Q2_{sfx}");
    js.create_stream(jetstream::stream::Config {
        name: stream.clone(),
        subjects: vec![format!("q2{sfx}.>")],
        ..Default::default()
    })
    .await
    .expect("create stream");
    let mut hook = Receiver::start().await;
    hook.set_delay_ms(3500);
    let gw = TestGateway::start(&format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[sources.js_in]
type = "nats"
url = "{NATS}"
subject = "q2{sfx}.>"
jetstream = {{ stream = "{stream}", durable = "d{sfx}", ack_wait_secs = 1 }}

[sinks.hook]
type = "http"
url = "http://{}/in"
timeout_ms = 10000
in_flight = 1

[routes.all]
from = ["js_in"]
to = ["hook"]
"#,
        hook.addr
    ))
    .await;
    common::ready(&gw, WAIT).await;
    js.publish(format!("q2{sfx}.a"), event("slow-once"))
        .await
        .unwrap()
        .await
        .unwrap();
    let first = tokio::time::timeout(WAIT, hook.rx.recv())
        .await
        .expect("delivered")
        .unwrap();
    let id = |r: &common::Received| {
        r.headers
            .get("ce-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    assert_eq!(id(&first), "slow-once");
    // A second event after it: the sink sends one at a time, in order, so a copy of the
    // first redelivered while it was in flight would come before it.
    hook.set_delay_ms(0);
    js.publish(format!("q2{sfx}.b"), event("sentinel"))
        .await
        .unwrap()
        .await
        .unwrap();
    let next = tokio::time::timeout(WAIT, hook.rx.recv())
        .await
        .expect("sentinel")
        .unwrap();
    assert_eq!(
        id(&next),
        "sentinel",
        "the slow event was delivered again while in flight"
    );
    let _ = js.delete_stream(&stream).await;
}
