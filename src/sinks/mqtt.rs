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

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

use bytes::Bytes;
use ferry_core::FailureKind;
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use tokio::time::Instant;

use super::{SinkContext, SinkError, SinkStats};
use crate::backoff::Backoff;
use crate::config::{MqttProtocol, MqttSinkConfig};
use crate::mqtt_client::{self as client, Client, EventLoop, Options, Wire};
use crate::pipeline::Delivery;
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
    let err = |(key, message): (Vec<String>, String)| SinkError::Config {
        sink: name.to_string(),
        message: format!("{}: {message}", key.join(".")),
    };
    config.check().map_err(err)?;
    let (host, port) = config
        .broker_address()
        .map_err(|m| err((vec!["url".into()], m)))?;
    let password = crate::config::mqtt_password(config.password.as_ref()).map_err(err)?;
    let tls = crate::config::mqtt_client_tls(&config.url, config.tls.as_ref()).map_err(err)?;
    let topic = Template::parse(&config.topic).map_err(|m| err((vec!["topic".into()], m)))?;
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
            .map_err(|(k, m)| err((vec!["sign".into(), k], m)))?,
    };
    cx.tracker.spawn(
        run(target, rx, stats, cx.clone()).instrument(tracing::info_span!("sink", sink = %name)),
    );
    Ok(())
}

async fn run(target: Target, mut rx: super::SinkQueue, stats: SinkStats, cx: SinkContext) {
    let mut backoff = Backoff::reconnect();
    loop {
        let (client, mut events) = client::new(&target.options);
        let broker_max = tokio::select! {
            r = connect(&mut events, target.timeout) => r,
            // Shutdown while the broker is away: queued deliveries are dropped undelivered.
            () = closed(&rx) => return,
        };
        let broker_max = match broker_max {
            Ok(max) => max,
            Err(e) => {
                tracing::warn!(sink = %target.name, error = %e, "MQTT connection failed");
                tokio::select! {
                    () = tokio::time::sleep(backoff.next_delay()) => continue,
                    () = closed(&rx) => return,
                }
            }
        };
        tracing::info!(sink = %target.name, client_id = %target.options.client_id, "MQTT connected");
        backoff.reset();
        cx.set_ready(&target.name, true);
        // The largest packet either side accepts: a bigger one would fail at encoding (or
        // make the broker disconnect), taking every delivery in flight with it.
        let max_packet = broker_max.map_or(target.options.max_packet_bytes, |b| {
            b.min(target.options.max_packet_bytes)
        });
        let mut session = Session::new(&target, &stats, max_packet as usize);
        let result = session.run(&client, &mut events, &mut rx).await;
        cx.set_ready(&target.name, false);
        match result {
            Ok(()) => {
                client.disconnect();
                let _ = tokio::time::timeout(Duration::from_secs(2), async {
                    while events.poll().await.is_ok() {}
                })
                .await;
                tracing::info!(sink = %target.name, "MQTT sink closed");
                return;
            }
            Err(e) => {
                session.fail_all(&e);
                tracing::warn!(sink = %target.name, error = %e, "MQTT connection lost");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

/// Resolves once the queue is closed and empty (shutdown with nothing left to deliver).
async fn closed(rx: &super::SinkQueue) {
    loop {
        if rx.is_closed() && rx.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
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

/// The deliveries of one connection.
struct Session<'a> {
    target: &'a Target,
    stats: &'a SinkStats,
    /// The largest PUBLISH packet this connection may carry, in bytes.
    max_packet: usize,
    /// Queued publishes not yet written, oldest first, with their deadline.
    unwritten: VecDeque<(Delivery, Instant)>,
    /// Written QoS 1 publishes awaiting their PUBACK, by packet id.
    awaiting: HashMap<u16, (Delivery, Instant)>,
}

impl<'a> Session<'a> {
    fn new(target: &'a Target, stats: &'a SinkStats, max_packet: usize) -> Self {
        Session {
            target,
            stats,
            max_packet,
            unwritten: VecDeque::new(),
            awaiting: HashMap::new(),
        }
    }

    fn pending(&self) -> usize {
        self.unwritten.len() + self.awaiting.len()
    }

    /// Delivers until the queue closes and everything pending is confirmed (`Ok`), or the
    /// connection is lost (`Err`, pending deliveries are left for [`Self::fail_all`]).
    async fn run(
        &mut self,
        client: &Client,
        events: &mut EventLoop,
        rx: &mut super::SinkQueue,
    ) -> Result<(), String> {
        let mut rx_open = true;
        loop {
            if !rx_open && self.pending() == 0 {
                return Ok(());
            }
            let deadline = self
                .unwritten
                .front()
                .map(|(_, d)| *d)
                .into_iter()
                .chain(self.awaiting.values().map(|(_, d)| *d))
                .min();
            tokio::select! {
                d = rx.recv(), if rx_open && self.pending() < self.target.in_flight => match d {
                    Some(d) => self.publish(client, d)?,
                    None => rx_open = false,
                },
                ev = events.poll() => match ev? {
                    Wire::Published { pkid } => self.written(pkid),
                    Wire::PubAck { pkid, refused } => self.acked(pkid, refused),
                    Wire::Disconnect(reason) => return Err(format!("broker disconnected: {reason}")),
                    _ => {}
                },
                () = sleep_until(deadline), if deadline.is_some() => {
                    return Err(format!("no PUBACK within {} ms", self.target.timeout.as_millis()));
                }
            }
        }
    }

    fn publish(&mut self, client: &Client, delivery: Delivery) -> Result<(), String> {
        let signed = (self.target.signer.as_ref()).map(|s| s.sign_event(&delivery.envelope.event));
        let event = signed.as_ref().unwrap_or(&delivery.envelope.event);
        let t = self.target;
        let rendered = t
            .topic
            .render_address(&template::MQTT_TOPIC, t.values, |n| {
                template::event_attribute(event, n)
            });
        let topic = match rendered {
            Ok(t) if t.len() > MAX_TOPIC_BYTES => {
                let message = format!(
                    "the topic is {} bytes; MQTT allows {MAX_TOPIC_BYTES}",
                    t.len()
                );
                self.stats.fail(delivery, FailureKind::Permanent, message);
                return Ok(());
            }
            Ok(t) if t.is_empty() || t.contains(['+', '#', '\0']) => {
                let message = format!("topic {t:?} is not a valid topic name");
                self.stats.fail(delivery, FailureKind::Permanent, message);
                return Ok(());
            }
            Ok(t) => t,
            Err(e) => {
                self.stats
                    .fail(delivery, FailureKind::Permanent, format!("topic: {e}"));
                return Ok(());
            }
        };
        let (payload, properties): (Bytes, Option<PublishProperties>) = match t.protocol {
            MqttProtocol::V5 => {
                let (payload, p) = ferry_mqtt::encode_v5(event, t.mode);
                (payload, Some(p))
            }
            MqttProtocol::V311 => (ferry_mqtt::encode_v311(event), None),
        };
        let size = packet_size(t.protocol, &topic, t.qos, &payload, properties.as_ref());
        if size > self.max_packet {
            let message = format!(
                "the PUBLISH packet would be {size} bytes; this connection takes at most {} (max_packet_bytes, or the broker's Maximum Packet Size)",
                self.max_packet
            );
            self.stats.fail(delivery, FailureKind::Permanent, message);
            return Ok(());
        }
        if let Err(e) = client.publish(topic, t.qos, t.retain, payload, properties) {
            self.stats.fail(
                delivery,
                FailureKind::Retryable,
                format!("publish failed: {e}"),
            );
            return Err(e);
        }
        self.stats.in_flight.inc();
        self.unwritten
            .push_back((delivery, Instant::now() + t.timeout));
        Ok(())
    }

    fn written(&mut self, pkid: u16) {
        let Some((delivery, deadline)) = self.unwritten.pop_front() else {
            return;
        };
        if pkid == 0 {
            self.stats.in_flight.dec();
            self.stats.confirm(delivery);
        } else {
            self.awaiting.insert(pkid, (delivery, deadline));
        }
    }

    fn acked(&mut self, pkid: u16, refused: Option<String>) {
        let Some((delivery, _)) = self.awaiting.remove(&pkid) else {
            return;
        };
        self.stats.in_flight.dec();
        match refused {
            None => self.stats.confirm(delivery),
            Some(reason) => self.stats.fail(
                delivery,
                FailureKind::Permanent,
                format!("broker refused the publish: {reason}"),
            ),
        }
    }

    /// The connection is gone: nothing pending was confirmed.
    fn fail_all(&mut self, error: &str) {
        let pending = self
            .unwritten
            .drain(..)
            .chain(self.awaiting.drain().map(|(_, v)| v));
        for (delivery, _) in pending {
            self.stats.in_flight.dec();
            self.stats.fail(
                delivery,
                FailureKind::Retryable,
                format!("MQTT connection lost before PUBACK: {error}"),
            );
        }
    }
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

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
