//! Between the MQTT device listeners (`sources::mqtt_server`) and the sinks that send
//! commands through their sessions (`sinks::mqtt_server`): a registry of the running
//! listeners by source name, and the command a sink hands to one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use rumqttc::v5::mqttbytes::QoS;
use tokio::sync::oneshot;

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
    /// What a queued copy counts against queue bounds: payload and topic.
    pub fn bytes(&self) -> usize {
        self.v5_payload.len().max(self.v311_payload.len()) + self.topic.len()
    }
}

/// What handing a command to a listener's sessions came to.
pub struct Sent {
    /// Sessions whose subscriptions matched.
    pub recipients: usize,
    /// One per connected QoS 1 recipient (its client id): its PUBACK, or why there is none.
    pub waits: Vec<(String, oneshot::Receiver<Result<(), String>>)>,
    /// Recipients that could not take it now (a full queue).
    pub failures: Vec<String>,
}

/// A running device listener.
pub trait Listener: Send + Sync {
    /// Hands `command` to every session subscribed to its topic.
    fn send(&self, command: &Arc<Command>) -> Sent;
}

/// The running device listeners by source name.
#[derive(Clone, Default)]
pub struct Servers(Arc<Mutex<HashMap<String, Weak<dyn Listener>>>>);

impl Servers {
    /// Registers the listener of source `name` (replacing the one a reload replaced).
    pub fn register(&self, name: &str, listener: &Arc<dyn Listener>) {
        if let Ok(mut servers) = self.0.lock() {
            servers.retain(|_, s| s.strong_count() > 0);
            servers.insert(name.to_owned(), Arc::downgrade(listener));
        }
    }

    /// The listener of source `name`, while it runs.
    pub fn get(&self, name: &str) -> Option<Server> {
        let servers = self.0.lock().ok()?;
        servers.get(name)?.upgrade().map(Server)
    }
}

/// A running device listener, as a sink holds it.
#[derive(Clone)]
pub struct Server(Arc<dyn Listener>);

impl Server {
    pub fn send(&self, command: &Arc<Command>) -> Sent {
        self.0.send(command)
    }

    /// Whether both are the same running listener.
    pub fn same(&self, other: &Server) -> bool {
        std::ptr::addr_eq(Arc::as_ptr(&self.0), Arc::as_ptr(&other.0))
    }
}
