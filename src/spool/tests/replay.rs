//! The spool end to end, with the test playing the sink: it takes deliveries from the sink
//! queue and confirms or fails them.

use std::sync::Arc;
use std::time::Duration;

use ferry_core::{AckToken, CloudEvent, Data, FailureKind, Outcome, TransportMetadata};
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use super::faulty::Faulty;
use crate::health::Readiness;
use crate::metrics::{Metrics, SinkLabels};
use crate::pipeline::{Delivery, Envelope};
use crate::spool::disk::{Disk, Os};
use crate::spool::{start_on, SpoolConfig, SpoolContext};

const SINK: &str = "partner";

struct Harness {
    tx: mpsc::Sender<Delivery>,
    sink: mpsc::Receiver<Delivery>,
    cx: SpoolContext,
}

async fn harness(dir: &std::path::Path, max_bytes: u64, window: usize) -> Harness {
    harness_on(Arc::new(Os), dir, max_bytes, window).await
}

async fn harness_on(
    disk: Arc<dyn Disk>,
    dir: &std::path::Path,
    max_bytes: u64,
    window: usize,
) -> Harness {
    let cx = SpoolContext {
        metrics: Metrics::new(&mut Registry::default()),
        tracker: TaskTracker::new(),
        readiness: Readiness::default(),
    };
    let (sink_tx, sink) = mpsc::channel(window);
    let config = SpoolConfig {
        path: dir.to_owned(),
        max_bytes,
    };
    let tx = start_on(disk, &Arc::from(SINK), &config, sink_tx, &cx)
        .await
        .expect("spool starts");
    Harness { tx, sink, cx }
}

fn event(id: &str, data_len: usize) -> CloudEvent {
    let mut e = CloudEvent::new(id, "/test", "t").unwrap();
    e.set_data(
        Some("text/plain".into()),
        Some(Data::Text("x".repeat(data_len))),
    )
    .unwrap();
    e
}

/// Sends one event to the spool and waits for its acknowledgement.
async fn send(tx: &mpsc::Sender<Delivery>, event: CloudEvent) -> Outcome {
    let (root, waiter) = AckToken::new();
    let envelope = Arc::new(Envelope::new(event, TransportMetadata::new()));
    tx.send(Delivery::new(envelope, root.fork(Arc::from(SINK))))
        .await
        .expect("spool open");
    root.confirm();
    waiter.wait().await
}

async fn next(sink: &mut mpsc::Receiver<Delivery>, within: Duration) -> Option<Delivery> {
    tokio::time::timeout(within, sink.recv())
        .await
        .ok()
        .flatten()
}

fn gauge(family: &Family<SinkLabels, Gauge>) -> i64 {
    family.get_or_create(&Metrics::sink(SINK)).get()
}

fn counter(family: &Family<SinkLabels, Counter>) -> u64 {
    family.get_or_create(&Metrics::sink(SINK)).get()
}

/// Takes and confirms deliveries until `id` arrives; returns their ids in order.
async fn deliver_until(sink: &mut mpsc::Receiver<Delivery>, id: &str) -> Vec<String> {
    let mut got = Vec::new();
    while got.last().map(String::as_str) != Some(id) {
        let d = next(sink, Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("no delivery after {got:?}"));
        got.push(d.envelope.event.id().to_owned());
        d.ack.confirm();
    }
    got
}

#[tokio::test]
async fn d4_an_event_that_can_never_fit_is_refused_as_too_large() {
    let dir = tempfile::tempdir().unwrap();
    let h = harness(dir.path(), 64 * 1024, 4).await;
    let Outcome::Failed(f) = send(&h.tx, event("big", 100 * 1024)).await else {
        panic!("an event over max_bytes was acknowledged");
    };
    assert_eq!(f.kind, FailureKind::TooLarge, "{f}");
    assert!(f.message.contains("too large"), "{f}");
    let problem = crate::problem::Problem::from_outcome(Outcome::Failed(f)).unwrap();
    assert_eq!(problem.status, http::StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(gauge(&h.cx.metrics.spool_bytes), 0);
    // A small one still goes through.
    assert_eq!(send(&h.tx, event("small", 10)).await, Outcome::Delivered);
}

#[tokio::test]
async fn d4_an_event_over_the_record_limit_is_refused_before_it_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let h = harness(dir.path(), 1 << 30, 4).await;
    let Outcome::Failed(f) = send(&h.tx, event("huge", 64 << 20)).await else {
        panic!("an event over the record limit was acknowledged");
    };
    assert!(f.message.contains("too large"), "{f}");
    assert_eq!(gauge(&h.cx.metrics.spool_bytes), 0);
}

#[tokio::test]
async fn d2_a_read_error_keeps_the_position_and_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    // 64 KiB segments; the sink takes one event at a time.
    let mut h = harness(dir.path(), 512 * 1024, 1).await;
    let count = 150;
    for i in 0..count {
        assert_eq!(
            send(&h.tx, event(&i.to_string(), 1000)).await,
            Outcome::Delivered
        );
    }
    let seg1 = dir.path().join(format!("{:020}.seg", 1));
    let aside = dir.path().join("aside");
    assert!(seg1.exists(), "the events span several segments");
    std::fs::rename(&seg1, &aside).unwrap();
    let mut got = Vec::new();
    // Deliver until the replay stalls on the unreadable segment.
    while let Some(d) = next(&mut h.sink, Duration::from_secs(1)).await {
        got.push(d.envelope.event.id().to_owned());
        d.ack.confirm();
    }
    assert!(
        got.len() < count,
        "the replay read past the missing segment"
    );
    std::fs::rename(&aside, &seg1).unwrap();
    assert_eq!(send(&h.tx, event("last", 10)).await, Outcome::Delivered);
    got.extend(deliver_until(&mut h.sink, "last").await);
    let want: Vec<String> = (0..count)
        .map(|i| i.to_string())
        .chain(["last".to_owned()])
        .collect();
    assert_eq!(got, want);
}

#[tokio::test]
async fn r3_a_permanently_refused_event_does_not_stop_later_events() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness(dir.path(), 512 * 1024, 1).await;
    for id in ["poison", "after-1", "after-2"] {
        assert_eq!(send(&h.tx, event(id, 10)).await, Outcome::Delivered);
    }
    let mut delivered = Vec::new();
    while delivered.len() < 2 {
        let d = next(&mut h.sink, Duration::from_secs(10))
            .await
            .expect("later events are delivered");
        if d.envelope.event.id() == "poison" {
            d.ack
                .fail(FailureKind::Permanent, "HTTP 400 from the target");
        } else {
            delivered.push(d.envelope.event.id().to_owned());
            d.ack.confirm();
        }
    }
    assert_eq!(delivered, ["after-1", "after-2"]);
    let rejected = std::fs::read_to_string(dir.path().join("rejected.jsonl")).unwrap();
    assert_eq!(rejected.lines().count(), 1, "{rejected}");
    assert!(rejected.contains("\"poison\"") && rejected.contains("HTTP 400"));
    assert_eq!(counter(&h.cx.metrics.spool_quarantined), 1);
    drop(h.tx);
    h.cx.tracker.close();
    h.cx.tracker.wait().await;
    assert_eq!(gauge(&h.cx.metrics.spool_events), 0);
}

#[tokio::test]
async fn r3_a_retryable_failure_is_retried_not_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness(dir.path(), 512 * 1024, 4).await;
    assert_eq!(send(&h.tx, event("flaky", 10)).await, Outcome::Delivered);
    let d = next(&mut h.sink, Duration::from_secs(10)).await.unwrap();
    d.ack
        .fail(FailureKind::Retryable, "HTTP 503 from the target");
    assert_eq!(deliver_until(&mut h.sink, "flaky").await, ["flaky"]);
    assert!(!dir.path().join("rejected.jsonl").exists());
}

#[tokio::test]
async fn m11_a_panicking_read_keeps_the_reader() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Arc::new(Faulty::default());
    let mut h = harness_on(disk.clone(), dir.path(), 512 * 1024, 4).await;
    disk.panic_read.next(1);
    for id in ["a", "b", "c"] {
        assert_eq!(send(&h.tx, event(id, 10)).await, Outcome::Delivered);
    }
    let mut got = deliver_until(&mut h.sink, "c").await;
    got.dedup();
    assert_eq!(got, ["a", "b", "c"]);
    disk.read.next(usize::MAX);
    assert_eq!(send(&h.tx, event("d", 10)).await, Outcome::Delivered);
    // Unreadable: reported not ready, and nothing is skipped.
    let key = format!("sink:{SINK} (spool unreadable)");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !h.cx.readiness.not_ready().contains(&key) {
        assert!(tokio::time::Instant::now() < deadline, "never reported");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    disk.read.next(0);
    assert_eq!(deliver_until(&mut h.sink, "d").await, ["d"]);
    assert!(!h.cx.readiness.not_ready().contains(&key));
}
