//! `mqtt` sink: publishes each event to a topic rendered from its attributes, MQTT 5 binary
//! or structured mode, or MQTT 3.1.1 structured mode.
//!
//! Confirmation: QoS 1 by the broker's PUBACK, QoS 0 once the PUBLISH is written. rumqttc
//! assigns packet ids inside its event loop, after `publish` returned, so deliveries are
//! correlated in two steps: the event loop handles queued publishes strictly in order and
//! reports each one as `Outgoing::Publish(pkid)` when written, so the oldest delivery not yet
//! written takes that packet id; the PUBACK carrying the id then confirms it. When the
//! connection drops, every delivery not yet confirmed fails `Retryable` and the next connection
//! starts from a fresh client (a clean session), so nothing is republished behind our back.
//!
//! A task per connection polls the event loop and resolves each publish's answer; the sink
//! driver (`driver.rs`) does the rest.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::Instrument;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::driver::{self, Attempt, Publisher, Refusal};
use super::{SinkContext, SinkError, SinkStats};
use crate::config::{MqttProtocol, MqttSinkConfig};
use crate::mqtt_client::{self as client, Client, EventLoop, Options, Wire};
use crate::pipeline::Envelope;
use crate::security::signing::{SignConfig, Signer};
use crate::template::{self, Template, TemplateValues};

/// The longest topic name: its length travels as a `u16`.
const MAX_TOPIC_BYTES: usize = u16::MAX as usize;

struct Target {
    name: Arc<str>,
    options: Options,
    topic: Template,
    values: TemplateValues,
    protocol: MqttProtocol,
    mode: ferry_mqtt::Mode,
    qos: u8,
    retain: bool,
    in_flight: usize,
    timeout: Duration,
    signer: Option<Signer>,
}

pub(super) fn start(
    name: &Arc<str>,
    config: &MqttSinkConfig,
    rx: super::SinkQueue,
    stats: SinkStats,
    cx: &SinkContext,
) -> Result<(), SinkError> {
    // The config was checked when it was loaded: what is left to fail here is reading files.
    let err = |e: crate::config::KeyError| SinkError::Config {
        sink: name.to_string(),
        message: e.to_string(),
    };
    let (host, port) = config
        .broker_address()
        .map_err(|m| err(crate::config::KeyError::at("url", m)))?;
    let password = crate::config::mqtt_password(config.password.as_ref()).map_err(err)?;
    let tls = crate::config::mqtt_client_tls(&config.url, config.tls.as_ref()).map_err(err)?;
    let topic =
        Template::parse(&config.topic).map_err(|m| err(crate::config::KeyError::at("topic", m)))?;
    let in_flight = config.in_flight.min(usize::from(u16::MAX));
    let client_id = config
        .client_id
        .clone()
        .unwrap_or_else(|| format!("ferry-{name}-{:08x}", rand::random::<u32>()));
    let target = Target {
        name: Arc::clone(name),
        options: Options {
            protocol: config.protocol,
            host,
            port,
            client_id,
            clean_start: true,
            session_expiry_secs: 0,
            keep_alive: Duration::from_secs(config.keep_alive_secs),
            credentials: config
                .username
                .clone()
                .map(|u| (u, password.unwrap_or_default())),
            tls,
            manual_acks: false,
            receive_maximum: None,
            outgoing_inflight: in_flight as u16,
            max_packet_bytes: config.max_packet_bytes,
            requests: in_flight + 8,
        },
        topic,
        values: config.template_values,
        protocol: config.protocol,
        mode: config.mode,
        qos: config.qos,
        retain: config.retain,
        in_flight,
        timeout: Duration::from_millis(config.timeout_ms),
        signer: config
            .sign
            .as_ref()
            .map(SignConfig::signer)
            .transpose()
            .map_err(|e| err(e.under(&["sign"])))?,
    };
    let in_flight = target.in_flight;
    let mqtt = Mqtt {
        target: Arc::new(target),
        tracker: cx.tracker.clone(),
    };
    driver::spawn(mqtt, rx, stats, in_flight, cx);
    Ok(())
}

struct Mqtt {
    target: Arc<Target>,
    tracker: TaskTracker,
}

/// One connection: the client, and the answers its event loop task resolves.
struct Link {
    client: Client,
    /// The largest PUBLISH packet this connection may carry, in bytes.
    max_packet: usize,
    answers: Arc<Mutex<Answers>>,
    /// Cancelled when the event loop task ended.
    ended: CancellationToken,
    task: tokio::task::AbortHandle,
}

/// Where each publish's answer goes.
#[derive(Default)]
struct Answers {
    /// Queued publishes not yet written, oldest first.
    unwritten: VecDeque<oneshot::Sender<Attempt>>,
    /// Written QoS 1 publishes awaiting their PUBACK, by packet id.
    awaiting: HashMap<u16, oneshot::Sender<Attempt>>,
    /// Why the connection is unusable, once it is.
    lost: Option<String>,
}

impl Answers {
    /// The connection is gone: nothing pending was confirmed.
    fn lose(&mut self, error: String) {
        let message = format!("MQTT connection lost before PUBACK: {error}");
        let pending = self
            .unwritten
            .drain(..)
            .chain(self.awaiting.drain().map(|(_, tx)| tx));
        for tx in pending {
            let _ = tx.send(Err(Refusal::retryable(message.clone())));
        }
        self.lost.get_or_insert(error);
    }
}

impl Link {
    fn lose(&self, error: String) {
        if let Ok(mut answers) = self.answers.lock() {
            answers.lose(error);
        }
    }
}

impl Publisher for Mqtt {
    type Link = Link;
    const KIND: &'static str = "MQTT";

    async fn connect(&self, lost: Option<&Link>) -> Result<Link, String> {
        if let Some(lost) = lost {
            lost.task.abort();
            lost.lose("reconnecting".into());
        }
        let target = &self.target;
        let (client, mut events) = client::new(&target.options);
        let broker_max = connect(&mut events, target.timeout).await?;
        tracing::info!(sink = %target.name, client_id = %target.options.client_id, "MQTT connected");
        // The largest packet either side accepts: a bigger one would fail at encoding (or
        // make the broker disconnect), taking every delivery in flight with it.
        let max_packet = broker_max.map_or(target.options.max_packet_bytes, |b| {
            b.min(target.options.max_packet_bytes)
        });
        let answers = Arc::new(Mutex::new(Answers::default()));
        let ended = CancellationToken::new();
        let task = self.tracker.spawn(
            answer(events, Arc::clone(&answers), ended.clone())
                .instrument(tracing::info_span!("sink", sink = %target.name)),
        );
        Ok(Link {
            client,
            max_packet: max_packet as usize,
            answers,
            ended,
            task: task.abort_handle(),
        })
    }

    fn is_open(&self, link: &Link) -> bool {
        link.answers.lock().is_ok_and(|a| a.lost.is_none())
    }

    fn publish(
        &self,
        link: &Arc<Link>,
        events: &[Arc<Envelope>],
    ) -> impl std::future::Future<Output = Vec<Attempt>> + Send + 'static {
        let answer = publish(&self.target, link, &events[0]);
        let (timeout, link) = (self.target.timeout, Arc::clone(link));
        async move {
            let attempt = match answer {
                Err(refusal) => Err(refusal),
                Ok(rx) => match tokio::time::timeout(timeout, rx).await {
                    Ok(Ok(attempt)) => attempt,
                    Ok(Err(_)) => Err(Refusal::retryable("MQTT connection lost before PUBACK")),
                    Err(_) => {
                        // A broker that does not answer in time: start over on a new connection.
                        let error = format!("no PUBACK within {} ms", timeout.as_millis());
                        link.lose(error.clone());
                        Err(Refusal::retryable(error))
                    }
                },
            };
            vec![attempt]
        }
    }

    async fn close(&self, link: Arc<Link>) {
        link.client.disconnect();
        let _ = tokio::time::timeout(Duration::from_secs(2), link.ended.cancelled()).await;
        link.task.abort();
    }
}

/// Waits for the CONNACK; returns the broker's Maximum Packet Size, if it set one.
async fn connect(events: &mut EventLoop, timeout: Duration) -> Result<Option<u32>, String> {
    tokio::time::timeout(timeout, async {
        loop {
            if let Wire::ConnAck {
                max_packet_size, ..
            } = events.poll().await?
            {
                return Ok(max_packet_size);
            }
        }
    })
    .await
    .map_err(|_| "no CONNACK in time".to_owned())?
}

/// Polls a connection's event loop and resolves the answers: written (QoS 0) or PUBACK
/// (QoS 1). rumqttc writes queued publishes strictly in order, so the oldest unwritten one
/// takes the packet id it reports.
async fn answer(mut events: EventLoop, answers: Arc<Mutex<Answers>>, ended: CancellationToken) {
    let error = loop {
        let wire = match events.poll().await {
            Ok(w) => w,
            Err(e) => break e,
        };
        let Ok(mut a) = answers.lock() else {
            break "poisoned".to_owned();
        };
        match wire {
            Wire::Published { pkid } => {
                let Some(tx) = a.unwritten.pop_front() else {
                    continue;
                };
                if pkid == 0 {
                    let _ = tx.send(Ok(()));
                } else {
                    a.awaiting.insert(pkid, tx);
                }
            }
            Wire::PubAck { pkid, refused } => {
                if let Some(tx) = a.awaiting.remove(&pkid) {
                    let attempt = match refused {
                        None => Ok(()),
                        Some(reason) => Err(Refusal::permanent(format!(
                            "broker refused the publish: {reason}"
                        ))),
                    };
                    let _ = tx.send(attempt);
                }
            }
            Wire::Disconnect(reason) => break format!("broker disconnected: {reason}"),
            _ => {}
        }
    };
    if let Ok(mut a) = answers.lock() {
        a.lose(error);
    }
    ended.cancel();
}

/// Hands one event to the client; its answer comes on the returned channel.
fn publish(
    t: &Target,
    link: &Link,
    envelope: &Envelope,
) -> Result<oneshot::Receiver<Attempt>, Refusal> {
    let signed = (t.signer.as_ref()).map(|s| s.sign_event(&envelope.event));
    let event = signed.as_ref().unwrap_or(&envelope.event);
    let rendered = t
        .topic
        .render_address(&template::MQTT_TOPIC, t.values, |n| {
            template::event_attribute(event, n)
        });
    let topic = match rendered {
        Ok(t) if t.len() > MAX_TOPIC_BYTES => {
            return Err(Refusal::permanent(format!(
                "the topic is {} bytes; MQTT allows {MAX_TOPIC_BYTES}",
                t.len()
            )));
        }
        Ok(t) if t.is_empty() || t.contains(['+', '#', '\0']) => {
            return Err(Refusal::permanent(format!(
                "topic {t:?} is not a valid topic name"
            )));
        }
        Ok(t) => t,
        Err(e) => return Err(Refusal::permanent(format!("topic: {e}"))),
    };
    let (payload, properties): (Bytes, Option<PublishProperties>) = match t.protocol {
        MqttProtocol::V5 => {
            let (payload, p) = ferry_mqtt::encode_v5(event, t.mode);
            (payload, Some(p))
        }
        MqttProtocol::V311 => (ferry_mqtt::encode_v311(event), None),
    };
    let size = packet_size(t.protocol, &topic, t.qos, &payload, properties.as_ref());
    if size > link.max_packet {
        return Err(Refusal::permanent(format!(
            "the PUBLISH packet would be {size} bytes; this connection takes at most {} (max_packet_bytes, or the broker's Maximum Packet Size)",
            link.max_packet
        )));
    }
    let Ok(mut answers) = link.answers.lock() else {
        return Err(Refusal::retryable("MQTT connection lost"));
    };
    if let Some(lost) = &answers.lost {
        return Err(Refusal::retryable(format!(
            "MQTT connection lost before PUBACK: {lost}"
        )));
    }
    // Under the lock: the event loop task matches writes to this queue in the same order.
    if let Err(e) = link
        .client
        .publish(topic, t.qos, t.retain, payload, properties)
    {
        answers.lose(e.clone());
        return Err(Refusal::retryable(format!("publish failed: {e}")));
    }
    let (tx, rx) = oneshot::channel();
    answers.unwritten.push_back(tx);
    Ok(rx)
}

/// The encoded size of a PUBLISH packet, as the client will write it.
fn packet_size(
    protocol: MqttProtocol,
    topic: &str,
    qos: u8,
    payload: &Bytes,
    properties: Option<&PublishProperties>,
) -> usize {
    use rumqttc::v5::mqttbytes::{v5::Publish, QoS};
    match protocol {
        MqttProtocol::V5 => Publish {
            qos: if qos == 0 {
                QoS::AtMostOnce
            } else {
                QoS::AtLeastOnce
            },
            topic: Bytes::copy_from_slice(topic.as_bytes()),
            // Any id: what matters is that QoS 1 carries one.
            pkid: 1,
            payload: payload.clone(),
            properties: properties.cloned(),
            ..Publish::default()
        }
        .size(),
        MqttProtocol::V311 => {
            // Topic (with its length), packet id for QoS 1, payload.
            let len = 2 + topic.len() + if qos == 0 { 0 } else { 2 } + payload.len();
            1 + varint_len(len) + len
        }
    }
}

/// Bytes of MQTT's variable-length integer for `n`.
fn varint_len(n: usize) -> usize {
    match n {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}
