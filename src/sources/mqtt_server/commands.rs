//! Messages to devices (the `mqtt-server` sink's commands, [`crate::mqtt_hub`]): the
//! sessions whose subscriptions match a topic, each connection's outbound queue, and what a
//! persistent session keeps for its device while it is away.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use rumqttc::v5::mqttbytes::QoS;
use tokio::sync::oneshot;

use super::Shared;
use crate::mqtt_hub::{Command, Listener, Sent};

/// A command on its way to one connection; `done` answers once the device PUBACKed (QoS 1)
/// or the PUBLISH was written (QoS 0).
pub(super) struct Outbound {
    pub(super) command: Arc<Command>,
    pub(super) qos: QoS,
    pub(super) done: Option<oneshot::Sender<Result<(), String>>>,
}

/// QoS 1 messages a persistent session keeps for its device while it is away.
#[derive(Default)]
pub(super) struct Queued {
    pub(super) messages: VecDeque<Arc<Command>>,
    pub(super) bytes: usize,
}

/// The highest QoS of the subscriptions in `subscriptions` that match `topic`.
pub(super) fn granted(subscriptions: &BTreeMap<String, QoS>, topic: &str) -> Option<QoS> {
    subscriptions
        .iter()
        .filter(|(filter, _)| crate::topic::matches(topic, filter))
        .map(|(_, qos)| *qos)
        .max_by_key(|q| *q as u8)
}

fn min_qos(a: QoS, b: QoS) -> QoS {
    if (a as u8) <= (b as u8) {
        a
    } else {
        b
    }
}

impl Listener for Shared {
    /// Hands `command` to every session subscribed to its topic: connected ones get it on
    /// their outbound queue, persistent ones whose device is away keep it (QoS 1, within
    /// their queue bounds).
    fn send(&self, command: &Arc<Command>) -> Sent {
        let shared = self;
        let config = shared.limits();
        let mut sent = Sent {
            recipients: 0,
            waits: Vec::new(),
            failures: Vec::new(),
        };
        let Ok(mut sessions) = shared.sessions.lock() else {
            return sent;
        };
        let bytes = command.bytes();
        for (client_id, entry) in &mut sessions.by_client {
            if let Some(holder) = &entry.holder {
                let Some(qos) = holder
                    .subscriptions
                    .lock()
                    .ok()
                    .and_then(|s| granted(&s, &command.topic))
                else {
                    continue;
                };
                sent.recipients += 1;
                let qos = min_qos(qos, command.qos);
                let (done, wait) = match qos {
                    QoS::AtMostOnce => (None, None),
                    _ => {
                        let (tx, rx) = oneshot::channel();
                        (Some(tx), Some(rx))
                    }
                };
                let outbound = Outbound {
                    command: Arc::clone(command),
                    qos,
                    done,
                };
                // A session with subscriptions has a queue (opened on its first one).
                let queued = holder
                    .outbound
                    .as_ref()
                    .is_some_and(|queue| queue.try_send(outbound).is_ok());
                match (queued, wait) {
                    (true, Some(rx)) => sent.waits.push((client_id.clone(), rx)),
                    (true, None) => {}
                    (false, _) => sent
                        .failures
                        .push(format!("the queue of device `{client_id}` is full")),
                }
                continue;
            }
            let Some(stored) = entry.stored.as_mut().filter(|s| !s.expired()) else {
                continue;
            };
            let Some(qos) = granted(&stored.subscriptions, &command.topic) else {
                continue;
            };
            sent.recipients += 1;
            if min_qos(qos, command.qos) == QoS::AtMostOnce {
                // QoS 0 is not kept for a device that is away.
                continue;
            }
            let queue = &mut stored.queued;
            let total = shared.queued_bytes.load(Ordering::Relaxed);
            if queue.messages.len() >= config.max_queued_messages
                || queue.bytes + bytes > config.max_queued_bytes
                || total + bytes > config.max_queued_bytes_total
            {
                sent.failures.push(format!(
                    "the queue of the session of `{client_id}` (away) is full"
                ));
                continue;
            }
            queue.messages.push_back(Arc::clone(command));
            queue.bytes += bytes;
            shared.add_queued(bytes);
        }
        sent
    }
}

/// The queue bounds of a listener.
pub(super) struct Limits {
    pub(super) max_queued_messages: usize,
    pub(super) max_queued_bytes: usize,
    pub(super) max_queued_bytes_total: usize,
}

impl Shared {
    fn limits(&self) -> Limits {
        let state = self.state.load();
        Limits {
            max_queued_messages: state.config.max_queued_messages,
            max_queued_bytes: state.config.max_queued_bytes,
            max_queued_bytes_total: state.config.max_queued_bytes_total,
        }
    }

    pub(super) fn add_queued(&self, bytes: usize) {
        let total = self.queued_bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.stats.queued_bytes.set(total as i64);
    }

    pub(super) fn remove_queued(&self, bytes: usize) {
        let total = self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed) - bytes;
        self.stats.queued_bytes.set(total as i64);
    }
}
