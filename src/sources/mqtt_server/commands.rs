//! Messages to devices (the `mqtt-server` sink's commands): the sessions whose subscriptions
//! match a topic, each connection's outbound queue, and what a persistent session keeps for
//! its device while it is away.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use rumqttc::v5::mqttbytes::QoS;
use tokio::sync::oneshot;

use super::Shared;

/// The running device listeners by source name, for the sinks that deliver through them.
#[derive(Clone, Default)]
pub struct Servers(Arc<Mutex<HashMap<String, Weak<Shared>>>>);

impl Servers {
    pub(super) fn register(&self, name: &str, shared: &Arc<Shared>) {
        if let Ok(mut servers) = self.0.lock() {
            servers.retain(|_, s| s.strong_count() > 0);
            servers.insert(name.to_owned(), Arc::downgrade(shared));
        }
    }

    /// The listener of source `name`, while it runs.
    pub fn get(&self, name: &str) -> Option<Server> {
        let servers = self.0.lock().ok()?;
        servers.get(name)?.upgrade().map(Server)
    }
}

/// A running device listener, as a sink sees it.
#[derive(Clone)]
pub struct Server(Arc<Shared>);

impl Server {
    /// Whether both are the same running listener.
    pub fn same(&self, other: &Server) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// One message for the devices subscribed to its topic, in each protocol's form.
pub struct Command {
    pub topic: String,
    /// The sink's QoS; each recipient gets at most its subscription's.
    pub qos: QoS,
    pub v5_payload: Bytes,
    pub v5_properties: Option<PublishProperties>,
    pub v311_payload: Bytes,
}

impl Command {
    fn bytes(&self) -> usize {
        self.v5_payload.len().max(self.v311_payload.len()) + self.topic.len()
    }
}

/// A command on its way to one connection; `done` answers once the device PUBACKed (QoS 1)
/// or the PUBLISH was written (QoS 0).
pub(super) struct Outbound {
    pub(super) command: Arc<Command>,
    pub(super) qos: QoS,
    pub(super) done: Option<oneshot::Sender<Result<(), String>>>,
}

/// What handing a command to the sessions came to.
pub struct Sent {
    /// Sessions whose subscriptions matched.
    pub recipients: usize,
    /// One per connected QoS 1 recipient: its PUBACK, or why there is none.
    pub waits: Vec<(String, oneshot::Receiver<Result<(), String>>)>,
    /// Recipients that could not take it now (a full queue).
    pub failures: Vec<String>,
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

impl Server {
    /// Hands `command` to every session subscribed to its topic: connected ones get it on
    /// their outbound queue, persistent ones whose device is away keep it (QoS 1, within
    /// their queue bounds).
    pub fn send(&self, command: &Arc<Command>) -> Sent {
        let shared = &self.0;
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
                match holder.outbound.try_send(outbound) {
                    Ok(()) => {
                        if let Some(rx) = wait {
                            sent.waits.push((client_id.clone(), rx));
                        }
                    }
                    Err(_) => sent
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
