//! One rumqttc connection behind one interface for MQTT 3.1.1 and 5, shared by the MQTT source
//! and sink. Each (re)connection is a fresh client and event loop: nothing queued for an old
//! connection (acks, publishes) leaks into the next one; the broker's session is what survives.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5;
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use rumqttc::Outgoing;

use crate::config::MqttProtocol;

/// How to connect.
pub(crate) struct Options {
    pub protocol: MqttProtocol,
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub clean_start: bool,
    /// MQTT 5 session expiry; ignored by 3.1.1 (its sessions do not expire).
    pub session_expiry_secs: u32,
    pub keep_alive: Duration,
    pub credentials: Option<(String, String)>,
    pub manual_acks: bool,
    /// Inbound window (MQTT 5 Receive Maximum); 3.1.1 leaves it to the broker.
    pub receive_maximum: Option<u16>,
    /// Outbound QoS 1 publishes awaiting their PUBACK at once.
    pub outgoing_inflight: u16,
    pub max_packet_bytes: u32,
    /// Capacity of the request channel between the client handle and the event loop.
    pub requests: usize,
    /// TLS (`mqtts://`); `None` is plain TCP.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// The client half: queues requests for the event loop without waiting.
pub(crate) enum Client {
    V311(rumqttc::AsyncClient),
    V5(v5::AsyncClient),
}

/// The connection half: must be polled to make progress.
pub(crate) enum EventLoop {
    V311(Box<rumqttc::EventLoop>),
    V5(Box<v5::EventLoop>),
}

/// An inbound PUBLISH.
#[derive(Debug, Clone)]
pub(crate) enum Message {
    V311(rumqttc::Publish),
    V5(v5::mqttbytes::v5::Publish),
}

/// What the connection reported, in protocol-neutral terms.
#[derive(Debug)]
pub(crate) enum Wire {
    ConnAck {
        session_present: bool,
        /// The broker's Maximum Packet Size (MQTT 5), if it set one.
        max_packet_size: Option<u32>,
    },
    Message(Message),
    /// The SUBACK: the filters the broker refused (with its reason), if any.
    SubAck {
        refused: Vec<String>,
    },
    /// One queued publish was written, in the order publishes were queued; `pkid` is 0 for
    /// QoS 0.
    Published {
        pkid: u16,
    },
    /// The broker's PUBACK; `refused` holds its reason when it is not a success (MQTT 5).
    PubAck {
        pkid: u16,
        refused: Option<String>,
    },
    /// The broker sent DISCONNECT (MQTT 5), with its reason.
    Disconnect(String),
    Other,
}

pub(crate) fn new(o: &Options) -> (Client, EventLoop) {
    match o.protocol {
        MqttProtocol::V311 => {
            let mut m = rumqttc::MqttOptions::new(&o.client_id, &o.host, o.port);
            m.set_keep_alive(o.keep_alive)
                .set_clean_session(o.clean_start)
                .set_manual_acks(o.manual_acks)
                .set_inflight(o.outgoing_inflight.max(1))
                .set_max_packet_size(o.max_packet_bytes as usize, o.max_packet_bytes as usize);
            if let Some((u, p)) = &o.credentials {
                m.set_credentials(u, p);
            }
            if let Some(tls) = o.tls.as_ref().map(transport) {
                m.set_transport(tls);
            }
            let (c, e) = rumqttc::AsyncClient::new(m, o.requests);
            (Client::V311(c), EventLoop::V311(Box::new(e)))
        }
        MqttProtocol::V5 => {
            let mut m = v5::MqttOptions::new(&o.client_id, &o.host, o.port);
            m.set_keep_alive(o.keep_alive)
                .set_clean_start(o.clean_start)
                .set_manual_acks(o.manual_acks)
                .set_outgoing_inflight_upper_limit(o.outgoing_inflight.max(1))
                .set_max_packet_size(Some(o.max_packet_bytes))
                .set_receive_maximum(o.receive_maximum);
            if !o.clean_start {
                m.set_session_expiry_interval(Some(o.session_expiry_secs));
            }
            if let Some((u, p)) = &o.credentials {
                m.set_credentials(u, p);
            }
            if let Some(tls) = o.tls.as_ref().map(transport) {
                m.set_transport(tls);
            }
            let (c, e) = v5::AsyncClient::new(m, o.requests);
            (Client::V5(c), EventLoop::V5(Box::new(e)))
        }
    }
}

fn transport(tls: &Arc<rustls::ClientConfig>) -> rumqttc::Transport {
    rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(Arc::clone(tls)))
}

impl EventLoop {
    /// The next event; `Err` means the connection is gone (this event loop is then dropped).
    pub(crate) async fn poll(&mut self) -> Result<Wire, String> {
        match self {
            EventLoop::V311(e) => {
                use rumqttc::{Event, Packet, SubscribeReasonCode};
                Ok(match e.poll().await.map_err(|e| e.to_string())? {
                    Event::Incoming(Packet::ConnAck(c)) => Wire::ConnAck {
                        session_present: c.session_present,
                        max_packet_size: None,
                    },
                    Event::Incoming(Packet::Publish(p)) => Wire::Message(Message::V311(p)),
                    Event::Incoming(Packet::SubAck(s)) => Wire::SubAck {
                        refused: s
                            .return_codes
                            .iter()
                            .filter(|c| matches!(c, SubscribeReasonCode::Failure))
                            .map(|c| format!("{c:?}"))
                            .collect(),
                    },
                    Event::Incoming(Packet::PubAck(a)) => Wire::PubAck {
                        pkid: a.pkid,
                        refused: None,
                    },
                    Event::Outgoing(Outgoing::Publish(pkid)) => Wire::Published { pkid },
                    _ => Wire::Other,
                })
            }
            EventLoop::V5(e) => {
                use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason, SubscribeReasonCode};
                use rumqttc::v5::Event;
                Ok(match e.poll().await.map_err(|e| e.to_string())? {
                    Event::Incoming(Packet::ConnAck(c)) => Wire::ConnAck {
                        session_present: c.session_present,
                        max_packet_size: c.properties.and_then(|p| p.max_packet_size),
                    },
                    Event::Incoming(Packet::Publish(p)) => Wire::Message(Message::V5(p)),
                    Event::Incoming(Packet::SubAck(s)) => Wire::SubAck {
                        refused: s
                            .return_codes
                            .iter()
                            .filter(|c| !matches!(c, SubscribeReasonCode::Success(_)))
                            .map(|c| format!("{c:?}"))
                            .collect(),
                    },
                    Event::Incoming(Packet::PubAck(a)) => Wire::PubAck {
                        pkid: a.pkid,
                        refused: match a.reason {
                            PubAckReason::Success | PubAckReason::NoMatchingSubscribers => None,
                            other => Some(format!("{other:?}")),
                        },
                    },
                    Event::Incoming(Packet::Disconnect(d)) => {
                        Wire::Disconnect(format!("{:?}", d.reason_code))
                    }
                    Event::Outgoing(Outgoing::Publish(pkid)) => Wire::Published { pkid },
                    _ => Wire::Other,
                })
            }
        }
    }
}

fn qos_v311(qos: u8) -> rumqttc::QoS {
    if qos == 0 {
        rumqttc::QoS::AtMostOnce
    } else {
        rumqttc::QoS::AtLeastOnce
    }
}

fn qos_v5(qos: u8) -> v5::mqttbytes::QoS {
    if qos == 0 {
        v5::mqttbytes::QoS::AtMostOnce
    } else {
        v5::mqttbytes::QoS::AtLeastOnce
    }
}

impl Client {
    /// Queues a PUBLISH. `properties` are dropped on 3.1.1, which has none.
    pub(crate) fn publish(
        &self,
        topic: String,
        qos: u8,
        retain: bool,
        payload: Bytes,
        properties: Option<PublishProperties>,
    ) -> Result<(), String> {
        match self {
            Client::V311(c) => c.try_publish(topic, qos_v311(qos), retain, payload),
            Client::V5(c) => {
                return match properties {
                    Some(p) => {
                        c.try_publish_with_properties(topic, qos_v5(qos), retain, payload, p)
                    }
                    None => c.try_publish(topic, qos_v5(qos), retain, payload),
                }
                .map_err(|e| e.to_string())
            }
        }
        .map_err(|e| e.to_string())
    }

    /// Queues one SUBSCRIBE for all filters.
    pub(crate) fn subscribe(&self, filters: &[String], qos: u8) -> Result<(), String> {
        match self {
            Client::V311(c) => c
                .try_subscribe_many(
                    filters
                        .iter()
                        .map(|f| rumqttc::SubscribeFilter::new(f.clone(), qos_v311(qos))),
                )
                .map_err(|e| e.to_string()),
            Client::V5(c) => c
                .try_subscribe_many(
                    filters
                        .iter()
                        .map(|f| v5::mqttbytes::v5::Filter::new(f.clone(), qos_v5(qos))),
                )
                .map_err(|e| e.to_string()),
        }
    }

    /// Queues the PUBACK of an inbound QoS 1 message (nothing for QoS 0).
    pub(crate) fn ack(&self, message: &Message) -> Result<(), String> {
        match (self, message) {
            (Client::V311(c), Message::V311(p)) => c.try_ack(p).map_err(|e| e.to_string()),
            (Client::V5(c), Message::V5(p)) => c.try_ack(p).map_err(|e| e.to_string()),
            _ => Err("message from another protocol version".into()),
        }
    }

    /// Queues a DISCONNECT (the session is kept when it is persistent).
    pub(crate) fn disconnect(&self) {
        let _ = match self {
            Client::V311(c) => c.try_disconnect().map_err(|e| e.to_string()),
            Client::V5(c) => c.try_disconnect().map_err(|e| e.to_string()),
        };
    }
}

impl Message {
    pub(crate) fn topic(&self) -> String {
        match self {
            Message::V311(p) => p.topic.clone(),
            Message::V5(p) => String::from_utf8_lossy(&p.topic).into_owned(),
        }
    }

    pub(crate) fn payload(&self) -> &Bytes {
        match self {
            Message::V311(p) => &p.payload,
            Message::V5(p) => &p.payload,
        }
    }

    pub(crate) fn properties(&self) -> Option<&PublishProperties> {
        match self {
            Message::V311(_) => None,
            Message::V5(p) => p.properties.as_ref(),
        }
    }

    /// Whether the broker awaits a PUBACK (and redelivers without one).
    pub(crate) fn needs_ack(&self) -> bool {
        match self {
            Message::V311(p) => p.qos != rumqttc::QoS::AtMostOnce,
            Message::V5(p) => p.qos != v5::mqttbytes::QoS::AtMostOnce,
        }
    }
}
