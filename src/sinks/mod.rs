//! Sinks: where events leave Ferry. Each sink owns a bounded queue and a task that delivers
//! from it and resolves every delivery's acknowledgement.

mod amqp;
mod driver;
mod file;
mod http;
mod mqtt;
mod mqtt_server;
mod nats;
mod websocket;

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use crate::config::SinkConfig;
use crate::health::Readiness;
use crate::metrics::Metrics;
use crate::pipeline::{Delivery, SinkHandle};
use driver::SinkStats;

/// A sink that could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("sink `{sink}`: cannot open {path}: {source}")]
    Open {
        sink: String,
        path: String,
        source: std::io::Error,
    },
    #[error("sink `{sink}`: {message}")]
    Config { sink: String, message: String },
}

/// What a sink needs from the gateway.
#[derive(Clone)]
pub struct SinkContext {
    pub metrics: Metrics,
    pub tracker: TaskTracker,
    pub readiness: Readiness,
    /// The current generation, for sinks that apply its policies (the push sink).
    pub generation: crate::pipeline::SharedGeneration,
    /// The running device listeners, which `mqtt-server` sinks deliver through.
    pub mqtt_servers: crate::mqtt_hub::Servers,
}

impl SinkContext {
    /// Reports whether a sink is connected (`/readyz`).
    pub fn set_ready(&self, sink: &str, ready: bool) {
        self.readiness.set(&format!("sink:{sink}"), ready);
    }
}

/// A sink's queue as its driver sees it.
pub struct SinkQueue {
    rx: mpsc::Receiver<Delivery>,
    name: Arc<str>,
    readiness: Readiness,
}

impl SinkQueue {
    /// The next delivery; `None` once the queue is closed and empty. Cancel-safe.
    pub async fn recv(&mut self) -> Option<Delivery> {
        self.rx.recv().await
    }

    /// Up to `limit` deliveries at once; 0 once the queue is closed and empty. Cancel-safe.
    pub async fn recv_many(&mut self, buf: &mut Vec<Delivery>, limit: usize) -> usize {
        self.rx.recv_many(buf, limit).await
    }

    pub fn is_closed(&self) -> bool {
        self.rx.is_closed()
    }
}

/// A sink task ends by dropping its queue. At shutdown or after a reload the queue's senders
/// are gone first; if they are not, the task died (a panic, a bug) while routes still send to
/// it, and every event sent to it now fails: the gateway stops being ready and says why.
impl Drop for SinkQueue {
    fn drop(&mut self) {
        if !self.rx.is_closed() {
            tracing::error!(sink = %self.name, "sink task stopped while routes still send to it; its events fail until a reload replaces it or Ferry restarts");
            self.readiness.set(&stopped_key(&self.name), false);
        }
    }
}

/// The readiness entry of an open circuit: `/readyz` lists it with the sink's name.
fn circuit_key(sink: &str) -> String {
    format!("sink:{sink} (circuit open)")
}

/// The readiness entry of a sink whose task died.
fn stopped_key(sink: &str) -> String {
    format!("sink:{sink} (task stopped)")
}

/// Starts a sink and returns the handle routes send to, and the address it listens on if it
/// listens (the WebSocket push sink).
pub async fn start(
    name: &str,
    config: &SinkConfig,
    dead_letter: Option<&SinkHandle>,
    cx: &SinkContext,
) -> Result<(SinkHandle, Option<std::net::SocketAddr>), SinkError> {
    let name: Arc<str> = Arc::from(name);
    let (tx, rx) = mpsc::channel(config.queue());
    cx.metrics
        .sink_queue_capacity
        .get_or_create(&Metrics::sink(&name))
        .set(config.queue() as i64);
    let stats = SinkStats::new(&name, config, cx, dead_letter.map(SinkHandle::downgrade));
    // Without a spool or a dead-letter sink to take its events while it is down, a sink known
    // down refuses them at dispatch.
    let fail_fast =
        (dead_letter.is_none() && config.spool().is_none()).then(|| Arc::clone(&stats.health));
    let rx = SinkQueue {
        rx,
        name: Arc::clone(&name),
        readiness: cx.readiness.clone(),
    };
    let mut addr = None;
    match config {
        SinkConfig::File(c) => file::start(&name, c, rx, stats, cx).await?,
        SinkConfig::Websocket(c) => addr = Some(websocket::start(&name, c, rx, stats, cx).await?),
        SinkConfig::Stdout(c) => file::start_stdout(c, rx, stats, cx),
        SinkConfig::Http(c) => http::start(&name, c, rx, stats, cx)?,
        SinkConfig::Amqp(c) => amqp::start(&name, c, rx, stats, cx)?,
        SinkConfig::Mqtt(c) => mqtt::start(&name, c, rx, stats, cx)?,
        SinkConfig::Nats(c) => nats::start(&name, c, rx, stats, cx)?,
        SinkConfig::MqttServer(c) => mqtt_server::start(&name, c, rx, stats, cx)?,
    }
    // With a spool, routes send to the spool's writer; its replay feeds the sink's queue.
    let tx = match config.spool() {
        Some(spool) => {
            let spool_cx = crate::spool::SpoolContext {
                metrics: cx.metrics.clone(),
                tracker: cx.tracker.clone(),
                readiness: cx.readiness.clone(),
            };
            crate::spool::start(&name, spool, tx, &spool_cx)
                .await
                .map_err(|e| SinkError::Open {
                    sink: name.to_string(),
                    path: e.path,
                    source: e.source,
                })?
        }
        None => tx,
    };
    let mut handle = SinkHandle::new(name, config.kind(), tx);
    if let Some(health) = fail_fast {
        handle = handle.fail_fast(health);
    }
    Ok((handle, addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn context() -> SinkContext {
        SinkContext {
            metrics: Metrics::new(&mut prometheus_client::registry::Registry::default()),
            tracker: TaskTracker::new(),
            readiness: Readiness::default(),
            generation: Default::default(),
            mqtt_servers: Default::default(),
        }
    }

    /// A sink's queue, as [`start`] makes it.
    pub(super) fn sink_queue(cx: &SinkContext) -> (mpsc::Sender<Delivery>, SinkQueue) {
        let (tx, rx) = mpsc::channel(8);
        let queue = SinkQueue {
            rx,
            name: Arc::from("s"),
            readiness: cx.readiness.clone(),
        };
        (tx, queue)
    }

    /// M12: a sink task that dies while routes still send to it makes the gateway not ready.
    #[tokio::test]
    async fn m12_a_dead_sink_task_makes_the_gateway_not_ready() {
        let cx = context();
        let (tx, queue) = sink_queue(&cx);
        cx.set_ready("s", true);
        drop(queue);
        assert!(tx.is_closed());
        assert!(
            cx.readiness
                .not_ready()
                .iter()
                .any(|c| c.starts_with("sink:s")),
            "{:?}",
            cx.readiness.not_ready()
        );

        // A sink that stops at shutdown (its queue closed first) is not reported.
        let cx = context();
        let (tx, queue) = sink_queue(&cx);
        cx.set_ready("s", true);
        drop(tx);
        drop(queue);
        assert!(cx.readiness.not_ready().is_empty());
    }
}
