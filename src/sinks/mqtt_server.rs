//! `mqtt-server` sink: commands to devices, through the sessions of an `mqtt-server` source.
//! Each event goes to every session subscribed to its rendered topic, at the lower of the
//! sink's and the subscription's QoS; it is confirmed once every QoS 1 recipient that is
//! connected PUBACKed it (and persistent sessions whose device is away queued it). No
//! matching session confirms it, unless `require_subscriber` is set.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferry_core::{Data, FailureKind, Mode};
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use rumqttc::v5::mqttbytes::QoS;

use super::driver::{self, Attempt, Publisher, Refusal, SinkStats};
use super::{SinkContext, SinkError};
use crate::config::{CommandMode, MqttServerSinkConfig};
use crate::mqtt_hub::{Command, Sent, Server, Servers};
use crate::pipeline::Envelope;
use crate::template::{self, Template, TemplateValues};

struct Commands {
    server_name: String,
    servers: Servers,
    topic: Template,
    values: TemplateValues,
    qos: QoS,
    mode: CommandMode,
    require_subscriber: bool,
    ack_timeout: Duration,
}

pub(super) fn start(
    name: &Arc<str>,
    config: &MqttServerSinkConfig,
    rx: super::SinkQueue,
    stats: SinkStats,
    cx: &SinkContext,
) -> Result<(), SinkError> {
    let topic = Template::parse(&config.topic).map_err(|m| SinkError::Config {
        sink: name.to_string(),
        message: format!("topic: {m}"),
    })?;
    let publisher = Commands {
        server_name: config.server.clone(),
        servers: cx.mqtt_servers.clone(),
        topic,
        values: config.template_values,
        qos: if config.qos == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        },
        mode: config.mode,
        require_subscriber: config.require_subscriber,
        ack_timeout: Duration::from_millis(config.ack_timeout_ms),
    };
    driver::spawn(publisher, rx, stats, config.in_flight, cx);
    Ok(())
}

impl Publisher for Commands {
    type Link = Server;
    const KIND: &'static str = "MQTT server";

    /// The listener of the `server` source, once it runs.
    async fn connect(&self, _lost: Option<&Server>) -> Result<Server, String> {
        self.servers.get(&self.server_name).ok_or_else(|| {
            format!(
                "the mqtt-server source `{}` is not running",
                self.server_name
            )
        })
    }

    /// A source replaced by a reload is a new listener: connect to it.
    fn is_open(&self, link: &Server) -> bool {
        self.servers
            .get(&self.server_name)
            .is_some_and(|s| s.same(link))
    }

    fn publish(
        &self,
        link: &Arc<Server>,
        events: &[Arc<Envelope>],
    ) -> impl std::future::Future<Output = Vec<Attempt>> + Send + 'static {
        let waits: Vec<_> = events.iter().map(|e| self.hand_over(link, e)).collect();
        let timeout = self.ack_timeout;
        let require = self.require_subscriber;
        async move {
            let mut out = Vec::with_capacity(waits.len());
            for w in waits {
                out.push(match w {
                    Err(r) => Err(r),
                    Ok((topic, sent)) => confirm(&topic, sent, timeout, require).await,
                });
            }
            out
        }
    }
}

impl Commands {
    /// Renders, encodes and hands one event to the sessions (in call order).
    fn hand_over(&self, server: &Server, envelope: &Envelope) -> Result<(String, Sent), Refusal> {
        let event = &envelope.event;
        let topic = self
            .topic
            .render_address(&template::MQTT_TOPIC, self.values, |n| {
                template::event_attribute(event, n)
            })
            .map_err(|e| Refusal::permanent(format!("topic: {e}")))?;
        if !crate::topic::valid_topic(&topic) {
            return Err(Refusal::permanent(format!(
                "topic {topic:?} is not a valid topic name"
            )));
        }
        let (v5_payload, v5_properties, v311_payload) = encode(event, self.mode);
        let command = Arc::new(Command {
            topic: topic.clone(),
            qos: self.qos,
            v5_payload,
            v5_properties,
            v311_payload,
        });
        Ok((topic, server.send(&command)))
    }
}

/// The payload (and MQTT 5 properties) of a command in each protocol version: 3.1.1 has no
/// properties, so binary mode goes as structured there.
fn encode(
    event: &ferry_core::CloudEvent,
    mode: CommandMode,
) -> (Bytes, Option<PublishProperties>, Bytes) {
    match mode {
        CommandMode::Binary | CommandMode::Structured => {
            let binding = if mode == CommandMode::Binary {
                Mode::Binary
            } else {
                Mode::Structured
            };
            let (payload, properties) = ferry_mqtt::encode_v5(event, binding);
            (payload, Some(properties), ferry_mqtt::encode_v311(event))
        }
        CommandMode::Data => {
            let payload = match event.data() {
                Some(Data::Binary(b)) => b.clone(),
                Some(data) => Bytes::copy_from_slice(data.as_bytes()),
                None => Bytes::new(),
            };
            let properties = PublishProperties {
                content_type: event.effective_content_type().map(str::to_owned),
                ..PublishProperties::default()
            };
            (payload.clone(), Some(properties), payload)
        }
    }
}

/// Waits for the recipients' PUBACKs.
async fn confirm(topic: &str, sent: Sent, timeout: Duration, require_subscriber: bool) -> Attempt {
    if sent.recipients == 0 {
        return if require_subscriber {
            Err(Refusal::retryable(format!(
                "no device session subscribes to `{topic}`"
            )))
        } else {
            Ok(())
        };
    }
    let mut failures = sent.failures;
    let deadline = tokio::time::Instant::now() + timeout;
    for (client_id, wait) in sent.waits {
        match tokio::time::timeout_at(deadline, wait).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => failures.push(e),
            Ok(Err(_)) => failures.push(format!(
                "device `{client_id}` disconnected before its PUBACK"
            )),
            Err(_) => failures.push(format!(
                "device `{client_id}` sent no PUBACK within {} ms",
                timeout.as_millis()
            )),
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(Refusal::new(FailureKind::Retryable, failures.join("; ")))
    }
}
