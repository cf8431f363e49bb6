//! The device listener (`type = "mqtt-server"`) over real sockets: MQTT 3.1.1 and 5.0 packets
//! written byte for byte with rumqttc's codecs (so each test controls exactly what the device
//! sends, DUP flags and malformed packets included), and rumqttc's own client for the
//! ordinary flows. Python paho-mqtt and mosquitto_pub run in the interop suite
//! (`tests/interop/py_mqtt_server.py`).

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::{until, Receiver, TestGateway};
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5::{self as p5, Packet};
use rumqttc::v5::mqttbytes::QoS;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(10);

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A device: a socket and the packets it reads.
struct Device {
    io: Box<dyn Io>,
    buf: BytesMut,
    v5: bool,
}

impl Device {
    async fn tcp(gw: &TestGateway, v5: bool) -> Device {
        let addr = gw.gateway.source_addr("devices").expect("listener");
        let io = tokio::net::TcpStream::connect(addr).await.expect("connect");
        Device {
            io: Box::new(io),
            buf: BytesMut::new(),
            v5,
        }
    }

    async fn send_bytes(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.expect("write");
    }

    async fn send(&mut self, packet: Packet) {
        let mut out = BytesMut::new();
        packet.write(&mut out, None).expect("encode");
        self.send_bytes(&out).await;
    }

    async fn send4(&mut self, packet: v4::Packet) {
        let mut out = BytesMut::new();
        packet.write(&mut out, usize::MAX).expect("encode");
        self.send_bytes(&out).await;
    }

    /// The next packet from Ferry (MQTT 5 form), `None` when the connection closed.
    async fn recv(&mut self) -> Option<Packet> {
        tokio::time::timeout(WAIT, async {
            loop {
                if !self.buf.is_empty() {
                    if self.v5 {
                        match Packet::read(&mut self.buf, None) {
                            Ok(p) => return Some(p),
                            Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => {}
                            Err(e) => panic!("Ferry sent a malformed packet: {e}"),
                        }
                    } else {
                        match v4::Packet::read(&mut self.buf, usize::MAX) {
                            Ok(p) => return Some(from_v4(p)),
                            Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
                            Err(e) => panic!("Ferry sent a malformed packet: {e}"),
                        }
                    }
                }
                match self.io.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await
        .expect("a packet or the end of the connection in time")
    }

    /// Reads until the connection closes; the packets read meanwhile.
    async fn until_closed(&mut self) -> Vec<Packet> {
        let mut packets = Vec::new();
        while let Some(p) = self.recv().await {
            packets.push(p);
        }
        packets
    }

    /// CONNECT and the CONNACK.
    async fn connect(&mut self, client_id: &str, login: Option<(&str, &str)>) -> p5::ConnAck {
        self.connect_with(client_id, login, true, None, None).await
    }

    async fn connect_with(
        &mut self,
        client_id: &str,
        login: Option<(&str, &str)>,
        clean: bool,
        properties: Option<p5::ConnectProperties>,
        will: Option<p5::LastWill>,
    ) -> p5::ConnAck {
        if self.v5 {
            let connect = p5::Connect {
                keep_alive: 30,
                client_id: client_id.into(),
                clean_start: clean,
                properties,
            };
            let login = login.map(|(u, p)| p5::Login::new(u, p));
            self.send(Packet::Connect(connect, will, login)).await;
        } else {
            let mut connect = v4::Connect::new(client_id);
            connect.clean_session = clean;
            connect.keep_alive = 30;
            if let Some((u, p)) = login {
                connect.set_login(u, p);
            }
            connect.last_will = will.map(|w| {
                v4::LastWill::new(
                    String::from_utf8(w.topic.to_vec()).unwrap(),
                    w.message.to_vec(),
                    rumqttc::mqttbytes::QoS::AtMostOnce,
                    false,
                )
            });
            self.send4(v4::Packet::Connect(connect)).await;
        }
        match self.recv().await {
            Some(Packet::ConnAck(a)) => a,
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    async fn publish(&mut self, topic: &str, qos: QoS, pkid: u16, payload: &[u8]) {
        self.publish_with(topic, qos, pkid, payload, None, false)
            .await
    }

    async fn publish_with(
        &mut self,
        topic: &str,
        qos: QoS,
        pkid: u16,
        payload: &[u8],
        properties: Option<p5::PublishProperties>,
        dup: bool,
    ) {
        if self.v5 {
            let mut p = p5::Publish::new(topic, qos, Bytes::copy_from_slice(payload), properties);
            p.pkid = pkid;
            p.dup = dup;
            self.send(Packet::Publish(p)).await;
        } else {
            let qos4 = match qos {
                QoS::AtMostOnce => rumqttc::mqttbytes::QoS::AtMostOnce,
                QoS::AtLeastOnce => rumqttc::mqttbytes::QoS::AtLeastOnce,
                QoS::ExactlyOnce => rumqttc::mqttbytes::QoS::ExactlyOnce,
            };
            let mut p = v4::Publish::new(topic, qos4, payload.to_vec());
            p.pkid = pkid;
            p.dup = dup;
            self.send4(v4::Packet::Publish(p)).await;
        }
    }

    async fn puback(&mut self) -> p5::PubAck {
        match self.recv().await {
            Some(Packet::PubAck(a)) => a,
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
}

/// A TLS connection to `addr` trusting the dev CA in `pki`, presenting the dev client
/// certificate when `client_cert`; `Err` when the handshake fails.
async fn tls_device(
    addr: std::net::SocketAddr,
    pki: &std::path::Path,
    client_cert: bool,
) -> std::io::Result<Device> {
    let roots = ferry::tls::load_roots(&pki.join("ca.pem")).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(ferry::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = if client_cert {
        let certs = ferry::tls::load_certs(&pki.join("client.pem")).unwrap();
        let key = ferry::tls::load_key(&pki.join("client.key")).unwrap();
        builder.with_client_auth_cert(certs, key).unwrap()
    } else {
        builder.with_no_client_auth()
    };
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let io = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?;
    Ok(Device {
        io: Box::new(io),
        buf: BytesMut::new(),
        v5: true,
    })
}

fn from_v4(p: v4::Packet) -> Packet {
    match p {
        v4::Packet::ConnAck(a) => Packet::ConnAck(p5::ConnAck {
            session_present: a.session_present,
            code: match a.code {
                v4::ConnectReturnCode::Success => p5::ConnectReturnCode::Success,
                v4::ConnectReturnCode::RefusedProtocolVersion => {
                    p5::ConnectReturnCode::UnsupportedProtocolVersion
                }
                v4::ConnectReturnCode::BadClientId => {
                    p5::ConnectReturnCode::ClientIdentifierNotValid
                }
                v4::ConnectReturnCode::ServiceUnavailable => {
                    p5::ConnectReturnCode::ServerUnavailable
                }
                v4::ConnectReturnCode::BadUserNamePassword => {
                    p5::ConnectReturnCode::BadUserNamePassword
                }
                v4::ConnectReturnCode::NotAuthorized => p5::ConnectReturnCode::NotAuthorized,
            },
            properties: None,
        }),
        v4::Packet::PubAck(a) => Packet::PubAck(p5::PubAck::new(a.pkid, None)),
        v4::Packet::PubRec(a) => Packet::PubRec(p5::PubRec::new(a.pkid, None)),
        v4::Packet::PubComp(a) => Packet::PubComp(p5::PubComp::new(a.pkid, None)),
        v4::Packet::SubAck(a) => Packet::SubAck(p5::SubAck {
            pkid: a.pkid,
            return_codes: a
                .return_codes
                .into_iter()
                .map(|c| match c {
                    v4::SubscribeReasonCode::Success(q) => p5::SubscribeReasonCode::Success(
                        rumqttc::v5::mqttbytes::qos(q as u8).unwrap(),
                    ),
                    v4::SubscribeReasonCode::Failure => p5::SubscribeReasonCode::Failure,
                })
                .collect(),
            properties: None,
        }),
        v4::Packet::PingResp => Packet::PingResp(p5::PingResp),
        v4::Packet::Publish(p) => Packet::Publish(p5::Publish {
            dup: p.dup,
            qos: rumqttc::v5::mqttbytes::qos(p.qos as u8).unwrap(),
            retain: p.retain,
            topic: Bytes::from(p.topic),
            pkid: p.pkid,
            payload: p.payload,
            properties: None,
        }),
        other => panic!("unexpected packet from Ferry: {other:?}"),
    }
}

fn event(id: &str, ty: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "specversion": "1.0", "id": id, "source": "/thermo", "type": ty,
        "datacontenttype": "application/json", "data": {"celsius": 21.5}
    }))
    .unwrap()
}

/// The events the file sink wrote.
fn events(gw: &TestGateway) -> Vec<Value> {
    gw.lines("events.jsonl")
}

const CONFIG: &str = r#"
[admin]
listen = "127.0.0.1:0"

[sources.devices]
type = "mqtt-server"
listen = "127.0.0.1:0"
topics = ["devices/+/telemetry", "devices/+/events"]
acl = { publish = ["devices/{client_id}/#"], subscribe = ["commands/{client_id}/#"] }
normalize = { type = "com.example.device.{mqtt.topic.2}", source = "mqtt://devices/{mqtt.topic.1}", subject = "{mqtt.topic.1}" }
keep_alive_max_secs = 300

[sources.devices.auth]
mode = "any"
passwords = { "thermo-7" = "s3cret", "thermo-8" = "other" }

[sinks.archive]
type = "file"
path = "{dir}/events.jsonl"

[routes.all]
from = ["devices"]
to = ["archive"]
"#;

#[tokio::test]
async fn mqtt5_publish_is_acknowledged_after_the_sink_and_carries_principal_and_metadata() {
    let gw = TestGateway::start(CONFIG).await;
    let mut d = Device::tcp(&gw, true).await;
    let ack = d.connect("thermo-7", Some(("thermo-7", "s3cret"))).await;
    assert_eq!(ack.code, p5::ConnectReturnCode::Success);
    let props = ack.properties.expect("CONNACK properties");
    assert_eq!(props.receive_max, Some(64));
    assert_eq!(props.max_packet_size, Some(1_048_576));
    assert_eq!(props.shared_subscription_available, Some(0));
    d.publish(
        "devices/thermo-7/telemetry",
        QoS::AtLeastOnce,
        1,
        &event("e1", "com.example.t"),
    )
    .await;
    let ack = d.puback().await;
    assert_eq!((ack.pkid, ack.reason), (1, p5::PubAckReason::Success));
    // The PUBACK came after the file sink wrote and flushed the event.
    let lines = events(&gw);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["id"], "e1");
    assert_eq!(lines[0]["authtype"], "user");
    assert_eq!(lines[0]["authid"], "thermo-7");
    // A raw payload becomes an event through `normalize`, from the topic's levels.
    d.publish(
        "devices/thermo-7/events",
        QoS::AtLeastOnce,
        2,
        br#"{"door":"open"}"#,
    )
    .await;
    assert_eq!(d.puback().await.reason, p5::PubAckReason::Success);
    let lines = events(&gw);
    assert_eq!(lines[1]["type"], "com.example.device.events");
    assert_eq!(lines[1]["source"], "mqtt://devices/thermo-7");
    assert_eq!(lines[1]["subject"], "thermo-7");
    assert_eq!(lines[1]["data"], json!({"door": "open"}));
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains(
            r#"ferry_mqtt_server_packets_total{source="devices",type="publish",direction="in"} 2"#
        ),
        "{metrics}"
    );
    assert!(metrics.contains(r#"ferry_mqtt_server_connections{source="devices"} 1"#));
}

#[tokio::test]
async fn mqtt311_publish_and_acl_and_invalid_events() {
    let gw = TestGateway::start(CONFIG).await;
    let mut d = Device::tcp(&gw, false).await;
    let ack = d.connect("thermo-8", Some(("thermo-8", "other"))).await;
    assert_eq!(ack.code, p5::ConnectReturnCode::Success);
    d.publish(
        "devices/thermo-8/telemetry",
        QoS::AtLeastOnce,
        7,
        &event("a", "t"),
    )
    .await;
    assert_eq!(d.puback().await.pkid, 7);
    // Another device's topic: refused for good, which 3.1.1 can only acknowledge; nothing
    // is delivered, and the refusal is counted.
    d.publish(
        "devices/thermo-7/telemetry",
        QoS::AtLeastOnce,
        8,
        &event("b", "t"),
    )
    .await;
    assert_eq!(d.puback().await.pkid, 8);
    // QoS 0 to a topic outside `topics`.
    d.publish("elsewhere", QoS::AtMostOnce, 0, &event("c", "t"))
        .await;
    d.publish(
        "devices/thermo-8/telemetry",
        QoS::AtLeastOnce,
        9,
        &event("d", "t"),
    )
    .await;
    assert_eq!(d.puback().await.pkid, 9);
    let ids: Vec<Value> = events(&gw).iter().map(|e| e["id"].clone()).collect();
    assert_eq!(ids, vec![json!("a"), json!("d")]);
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains(
            r#"ferry_mqtt_server_publish_refused_total{source="devices",reason="forbidden"} 2"#
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn mqtt5_refusals_carry_reason_codes_and_strings() {
    let gw = TestGateway::start(CONFIG).await;
    let mut d = Device::tcp(&gw, true).await;
    d.connect("thermo-7", Some(("thermo-7", "s3cret"))).await;
    d.publish(
        "devices/thermo-8/telemetry",
        QoS::AtLeastOnce,
        1,
        &event("x", "t"),
    )
    .await;
    let ack = d.puback().await;
    assert_eq!(ack.reason, p5::PubAckReason::NotAuthorized);
    let reason = ack.properties.unwrap().reason_string.unwrap();
    assert!(reason.contains("devices/thermo-8/telemetry"), "{reason}");
    // An event with an invalid attribute: 0x99, naming it.
    let bad = br#"{"specversion":"1.0","id":"","source":"/s","type":"t"}"#;
    d.publish("devices/thermo-7/telemetry", QoS::AtLeastOnce, 2, bad)
        .await;
    let ack = d.puback().await;
    assert_eq!(ack.reason, p5::PubAckReason::PayloadFormatInvalid);
    let reason = ack.properties.unwrap().reason_string.unwrap();
    assert!(reason.contains("`id`"), "{reason}");
    assert!(events(&gw).is_empty());
}

#[tokio::test]
async fn connect_authentication_answers_with_the_right_codes_in_both_versions() {
    let gw = TestGateway::start(CONFIG).await;
    for v5 in [true, false] {
        let mut d = Device::tcp(&gw, v5).await;
        let ack = d.connect("thermo-7", Some(("thermo-7", "wrong"))).await;
        assert_eq!(
            ack.code,
            p5::ConnectReturnCode::BadUserNamePassword,
            "v5 {v5}"
        );
        assert!(d.until_closed().await.is_empty());
        let mut d = Device::tcp(&gw, v5).await;
        let ack = d.connect("thermo-7", None).await;
        assert_eq!(ack.code, p5::ConnectReturnCode::NotAuthorized, "v5 {v5}");
        let mut d = Device::tcp(&gw, v5).await;
        let ack = d.connect("nobody", Some(("nobody", "x"))).await;
        assert_eq!(
            ack.code,
            p5::ConnectReturnCode::BadUserNamePassword,
            "v5 {v5}"
        );
    }
    // 3.1.1: a zero-length client id needs clean session.
    let mut d = Device::tcp(&gw, false).await;
    let ack = d
        .connect_with("", Some(("thermo-7", "s3cret")), false, None, None)
        .await;
    assert_eq!(ack.code, p5::ConnectReturnCode::ClientIdentifierNotValid);
    // MQTT 5: an empty client id gets one assigned.
    let mut d = Device::tcp(&gw, true).await;
    let ack = d.connect("", Some(("thermo-7", "s3cret"))).await;
    assert_eq!(ack.code, p5::ConnectReturnCode::Success);
    assert!(ack
        .properties
        .unwrap()
        .assigned_client_identifier
        .is_some_and(|id| id.starts_with("ferry-")));
}

#[tokio::test]
async fn protocol_level_and_first_packet_are_checked() {
    let gw = TestGateway::start(CONFIG).await;
    // MQTT 3.1 (`MQIsdp`, level 3): CONNACK return code 1, then close.
    let mut d = Device::tcp(&gw, false).await;
    let mut connect = vec![0x10, 0x0F, 0x00, 0x06];
    connect.extend_from_slice(b"MQIsdp");
    connect.extend_from_slice(&[0x03, 0x02, 0x00, 0x1E, 0x00, 0x01, b'x']);
    d.send_bytes(&connect).await;
    match d.recv().await {
        Some(Packet::ConnAck(a)) => {
            assert_eq!(a.code, p5::ConnectReturnCode::UnsupportedProtocolVersion)
        }
        other => panic!("{other:?}"),
    }
    assert!(d.until_closed().await.is_empty());
    // A PUBLISH before CONNECT closes the connection without an answer.
    let mut d = Device::tcp(&gw, false).await;
    d.publish("devices/x/telemetry", QoS::AtMostOnce, 0, b"{}")
        .await;
    assert!(d.until_closed().await.is_empty());
}

#[tokio::test]
async fn malformed_and_oversized_packets_close_with_reason_codes() {
    let gw = TestGateway::start(&CONFIG.replace(
        "keep_alive_max_secs = 300",
        "keep_alive_max_secs = 300\nmax_packet_bytes = 512",
    ))
    .await;
    let mut d = Device::tcp(&gw, true).await;
    d.connect("thermo-7", Some(("thermo-7", "s3cret"))).await;
    // SUBSCRIBE with no topic filter is malformed [MQTT-3.8.3-2].
    d.send_bytes(&[0x82, 0x03, 0x00, 0x01, 0x00]).await;
    match d.until_closed().await.as_slice() {
        [Packet::Disconnect(x)] => {
            assert_eq!(x.reason_code, p5::DisconnectReasonCode::MalformedPacket)
        }
        other => panic!("{other:?}"),
    }
    let mut d = Device::tcp(&gw, true).await;
    d.connect("thermo-7", Some(("thermo-7", "s3cret"))).await;
    d.publish(
        "devices/thermo-7/telemetry",
        QoS::AtLeastOnce,
        1,
        &[b'x'; 600],
    )
    .await;
    match d.until_closed().await.as_slice() {
        [Packet::Disconnect(x)] => {
            assert_eq!(x.reason_code, p5::DisconnectReasonCode::PacketTooLarge)
        }
        other => panic!("{other:?}"),
    }
    assert!(events(&gw).is_empty());
}

#[tokio::test]
async fn qos2_is_delivered_exactly_once_and_released() {
    let gw = TestGateway::start(CONFIG).await;
    for v5 in [true, false] {
        let mut d = Device::tcp(&gw, v5).await;
        d.connect("thermo-7", Some(("thermo-7", "s3cret"))).await;
        let id = format!("q2-{v5}");
        d.publish(
            "devices/thermo-7/telemetry",
            QoS::ExactlyOnce,
            5,
            &event(&id, "t"),
        )
        .await;
        match d.recv().await {
            Some(Packet::PubRec(r)) => {
                assert_eq!((r.pkid, r.reason), (5, p5::PubRecReason::Success))
            }
            other => panic!("{other:?}"),
        }
        // The device did not see the PUBREC and sends the publish again, DUP set: answered
        // again, not delivered again.
        d.publish_with(
            "devices/thermo-7/telemetry",
            QoS::ExactlyOnce,
            5,
            &event(&id, "t"),
            None,
            true,
        )
        .await;
        match d.recv().await {
            Some(Packet::PubRec(r)) => assert_eq!(r.pkid, 5),
            other => panic!("{other:?}"),
        }
        if v5 {
            d.send(Packet::PubRel(p5::PubRel::new(5, None))).await;
        } else {
            d.send4(v4::Packet::PubRel(v4::PubRel::new(5))).await;
        }
        match d.recv().await {
            Some(Packet::PubComp(c)) => {
                assert_eq!((c.pkid, c.reason), (5, p5::PubCompReason::Success))
            }
            other => panic!("{other:?}"),
        }
        let n = events(&gw)
            .iter()
            .filter(|e| e["id"] == id.as_str())
            .count();
        assert_eq!(n, 1, "v5 {v5}");
    }
}

#[tokio::test]
async fn acknowledgements_wait_for_a_sink_that_is_down_then_one_event_arrives() {
    let receiver = Receiver::start().await;
    receiver.set_status(503);
    let mut receiver = receiver;
    let config = format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[sources.devices]
type = "mqtt-server"
listen = "127.0.0.1:0"
topics = ["devices/#"]
ack_timeout_ms = 30000

[sinks.web]
type = "http"
url = "http://{}/hook"
retry = {{ max_attempts = 100, initial_backoff_ms = 50, max_backoff_ms = 100 }}

[routes.all]
from = ["devices"]
to = ["web"]
"#,
        receiver.addr
    );
    let gw = TestGateway::start(&config).await;
    let mut d = Device::tcp(&gw, true).await;
    d.connect("d1", None).await;
    d.publish("devices/d1", QoS::AtLeastOnce, 1, &event("down-1", "t"))
        .await;
    // Two failed attempts reach the receiver while the device waits for its PUBACK.
    for _ in 0..2 {
        tokio::time::timeout(WAIT, receiver.rx.recv())
            .await
            .unwrap()
            .unwrap();
    }
    let no_ack = tokio::time::timeout(Duration::from_millis(300), d.recv()).await;
    assert!(
        no_ack.is_err(),
        "no PUBACK while the sink is down: {no_ack:?}"
    );
    receiver.set_status(200);
    let ack = d.puback().await;
    assert_eq!(ack.reason, p5::PubAckReason::Success);
    // The last request the receiver got is the one it accepted; nothing follows it.
    let mut accepted = 0;
    while let Ok(r) = receiver.rx.try_recv() {
        let _ = r;
        accepted += 1;
    }
    assert!(accepted >= 1);
    let none = tokio::time::timeout(Duration::from_millis(300), receiver.rx.recv()).await;
    assert!(none.is_err(), "one delivery once the sink is back");
}

#[tokio::test]
async fn mqtt311_device_is_disconnected_without_puback_when_a_sink_fails() {
    let receiver = Receiver::start().await;
    receiver.set_status(503);
    let config = format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[sources.devices]
type = "mqtt-server"
listen = "127.0.0.1:0"
topics = ["devices/#"]

[sinks.web]
type = "http"
url = "http://{}/hook"

[routes.all]
from = ["devices"]
to = ["web"]
"#,
        receiver.addr
    );
    let gw = TestGateway::start(&config).await;
    let mut d = Device::tcp(&gw, false).await;
    d.connect("d2", None).await;
    d.publish("devices/d2", QoS::AtLeastOnce, 3, &event("fail", "t"))
        .await;
    // No PUBACK: the connection closes so the device sends the publish again.
    assert!(d.until_closed().await.is_empty());
    // MQTT 5 is told: 0x80 with the sink's failure.
    let mut d = Device::tcp(&gw, true).await;
    d.connect("d3", None).await;
    d.publish("devices/d3", QoS::AtLeastOnce, 4, &event("fail5", "t"))
        .await;
    let ack = d.puback().await;
    assert_eq!(ack.reason, p5::PubAckReason::UnspecifiedError);
    let reason = ack.properties.unwrap().reason_string.unwrap();
    assert!(reason.contains("web"), "{reason}");
}

#[tokio::test]
async fn keep_alive_is_enforced_and_takeover_disconnects_the_old_connection() {
    let gw =
        TestGateway::start(&CONFIG.replace("keep_alive_max_secs = 300", "keep_alive_max_secs = 1"))
            .await;
    let mut first = Device::tcp(&gw, true).await;
    let ack = first
        .connect("thermo-7", Some(("thermo-7", "s3cret")))
        .await;
    // The device asked for 30 s; the server keeps it at 1 s and says so.
    assert_eq!(ack.properties.unwrap().server_keep_alive, Some(1));
    let mut second = Device::tcp(&gw, true).await;
    second
        .connect("thermo-7", Some(("thermo-7", "s3cret")))
        .await;
    match first.until_closed().await.as_slice() {
        [Packet::Disconnect(x)] => {
            assert_eq!(x.reason_code, p5::DisconnectReasonCode::SessionTakenOver)
        }
        other => panic!("{other:?}"),
    }
    // PINGREQ keeps a connection open; silence for 1.5 × keep-alive ends it.
    second.send(Packet::PingReq(p5::PingReq)).await;
    assert!(matches!(second.recv().await, Some(Packet::PingResp(_))));
    let started = std::time::Instant::now();
    match second.until_closed().await.as_slice() {
        [Packet::Disconnect(x)] => {
            assert_eq!(x.reason_code, p5::DisconnectReasonCode::KeepAliveTimeout)
        }
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() >= Duration::from_millis(1400));
}

#[tokio::test]
async fn subscriptions_follow_the_acl_and_persistent_sessions_are_resumed() {
    let gw = TestGateway::start(CONFIG).await;
    let mut d = Device::tcp(&gw, true).await;
    let props = p5::ConnectProperties {
        session_expiry_interval: Some(60),
        ..Default::default()
    };
    let ack = d
        .connect_with(
            "thermo-7",
            Some(("thermo-7", "s3cret")),
            true,
            Some(props.clone()),
            None,
        )
        .await;
    assert!(!ack.session_present);
    let subscribe = p5::Subscribe::new_many(
        [
            p5::Filter::new("commands/thermo-7/#", QoS::ExactlyOnce),
            p5::Filter::new("commands/thermo-8/#", QoS::AtLeastOnce),
            p5::Filter::new("$share/g/commands/thermo-7/x", QoS::AtLeastOnce),
            p5::Filter::new("commands/#/x", QoS::AtLeastOnce),
        ],
        None,
    );
    let mut subscribe = subscribe;
    subscribe.pkid = 10;
    d.send(Packet::Subscribe(subscribe)).await;
    match d.recv().await {
        Some(Packet::SubAck(a)) => assert_eq!(
            a.return_codes,
            vec![
                p5::SubscribeReasonCode::Success(QoS::AtLeastOnce),
                p5::SubscribeReasonCode::NotAuthorized,
                p5::SubscribeReasonCode::SharedSubscriptionsNotSupported,
                p5::SubscribeReasonCode::TopicFilterInvalid,
            ]
        ),
        other => panic!("{other:?}"),
    }
    d.send(Packet::Disconnect(p5::Disconnect::new(
        p5::DisconnectReasonCode::NormalDisconnection,
    )))
    .await;
    assert!(d.until_closed().await.is_empty());
    // Back within the expiry, clean start 0: the session is there.
    let mut d = Device::tcp(&gw, true).await;
    let ack = d
        .connect_with(
            "thermo-7",
            Some(("thermo-7", "s3cret")),
            false,
            Some(props),
            None,
        )
        .await;
    assert!(ack.session_present);
    let mut unsubscribe = p5::Unsubscribe {
        pkid: 11,
        filters: vec!["commands/thermo-7/#".into(), "nothing".into()],
        properties: None,
    };
    unsubscribe.pkid = 11;
    d.send(Packet::Unsubscribe(unsubscribe)).await;
    match d.recv().await {
        Some(Packet::UnsubAck(a)) => assert_eq!(
            a.reasons,
            vec![
                p5::UnsubAckReason::Success,
                p5::UnsubAckReason::NoSubscriptionExisted
            ]
        ),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn will_is_routed_when_the_connection_ends_abnormally_and_topic_aliases_resolve() {
    let gw = TestGateway::start(CONFIG).await;
    let mut d = Device::tcp(&gw, true).await;
    let will = p5::LastWill::new(
        "devices/thermo-7/events",
        event("will-1", "com.example.offline"),
        QoS::AtLeastOnce,
        false,
        None,
    );
    d.connect_with(
        "thermo-7",
        Some(("thermo-7", "s3cret")),
        true,
        None,
        Some(will),
    )
    .await;
    // Topic alias 1 set with the first publish, used alone by the second.
    let alias = |a| p5::PublishProperties {
        topic_alias: Some(a),
        ..Default::default()
    };
    d.publish_with(
        "devices/thermo-7/telemetry",
        QoS::AtLeastOnce,
        1,
        &event("a1", "t"),
        Some(alias(1)),
        false,
    )
    .await;
    assert_eq!(d.puback().await.reason, p5::PubAckReason::Success);
    d.publish_with(
        "",
        QoS::AtLeastOnce,
        2,
        &event("a2", "t"),
        Some(alias(1)),
        false,
    )
    .await;
    assert_eq!(d.puback().await.reason, p5::PubAckReason::Success);
    drop(d);
    until(WAIT, "the will to be delivered", || async {
        events(&gw).iter().any(|e| e["id"] == "will-1")
    })
    .await;
    let lines = events(&gw);
    assert_eq!(lines[0]["id"], "a1");
    assert_eq!(lines[1]["id"], "a2");
    // A normal DISCONNECT discards the will.
    let mut d = Device::tcp(&gw, true).await;
    let will = p5::LastWill::new(
        "devices/thermo-7/events",
        event("will-2", "t"),
        QoS::AtMostOnce,
        false,
        None,
    );
    d.connect_with(
        "thermo-7",
        Some(("thermo-7", "s3cret")),
        true,
        None,
        Some(will),
    )
    .await;
    d.send_bytes(&[0xE0, 0x00]).await;
    assert!(d.until_closed().await.is_empty());
    d = Device::tcp(&gw, true).await;
    d.connect("thermo-8", Some(("thermo-8", "other"))).await;
    d.publish(
        "devices/thermo-8/telemetry",
        QoS::AtLeastOnce,
        1,
        &event("after", "t"),
    )
    .await;
    d.puback().await;
    assert!(!events(&gw).iter().any(|e| e["id"] == "will-2"));
}

#[tokio::test]
async fn mqtt5_receive_maximum_exceeded_disconnects() {
    let receiver = Receiver::start().await;
    receiver.set_delay_ms(2000);
    let config = format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[sources.devices]
type = "mqtt-server"
listen = "127.0.0.1:0"
topics = ["devices/#"]
receive_maximum = 2

[sinks.web]
type = "http"
url = "http://{}/hook"

[routes.all]
from = ["devices"]
to = ["web"]
"#,
        receiver.addr
    );
    let gw = TestGateway::start(&config).await;
    let mut d = Device::tcp(&gw, true).await;
    let ack = d.connect("d1", None).await;
    assert_eq!(ack.properties.unwrap().receive_max, Some(2));
    for pkid in 1..=3 {
        d.publish(
            "devices/d1",
            QoS::AtLeastOnce,
            pkid,
            &event(&format!("r{pkid}"), "t"),
        )
        .await;
    }
    let packets = d.until_closed().await;
    assert!(
        matches!(packets.last(), Some(Packet::Disconnect(x)) if x.reason_code == p5::DisconnectReasonCode::ReceiveMaximumExceeded),
        "{packets:?}"
    );
}

#[tokio::test]
async fn jwt_passwords_and_mtls_principals_and_token_expiry() {
    let dir = tempfile::tempdir().unwrap();
    ferry::certs::generate_dev(dir.path()).unwrap();
    let d = dir.path().display();
    let config = format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[sources.devices]
type = "mqtt-server"
listen = "127.0.0.1:0"
topics = ["devices/#"]
tls = {{ cert = "{d}/server.pem", key = "{d}/server.key", client_ca = "{d}/ca.pem", client_auth = "optional" }}

[sources.devices.auth]
mode = "any"
mtls = true
jwt = {{ secrets = ["device-secret-0123456789abcdef-0123456789"], audience = "ferry-devices", leeway_secs = 0 }}

[sinks.archive]
type = "file"
path = "{{dir}}/events.jsonl"

[routes.all]
from = ["devices"]
to = ["archive"]
"#
    );
    let gw = TestGateway::start(&config).await;
    let addr = gw.gateway.source_addr("devices").unwrap();
    let open = |client_cert: bool| {
        let pki = dir.path().to_owned();
        async move { tls_device(addr, &pki, client_cert).await.expect("TLS") }
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = |sub: &str, exp: u64| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &json!({"sub": sub, "aud": "ferry-devices", "exp": exp}),
            &jsonwebtoken::EncodingKey::from_secret(b"device-secret-0123456789abcdef-0123456789"),
        )
        .unwrap()
    };
    // A client certificate: principal mtls:<identity>.
    let mut dev = open(true).await;
    assert_eq!(
        dev.connect("c1", None).await.code,
        p5::ConnectReturnCode::Success
    );
    dev.publish("devices/c1", QoS::AtLeastOnce, 1, &event("m1", "t"))
        .await;
    dev.puback().await;
    // A JWT as the password: principal jwt:<sub>.
    let mut dev = open(false).await;
    let t = token("sensor-9", now + 3600);
    assert_eq!(
        dev.connect("c2", Some(("any", &t))).await.code,
        p5::ConnectReturnCode::Success
    );
    dev.publish("devices/c2", QoS::AtLeastOnce, 1, &event("j1", "t"))
        .await;
    dev.puback().await;
    let lines = events(&gw);
    assert_eq!(lines[0]["authid"], ferry::certs::CLIENT_IDENTITY);
    assert_eq!(lines[1]["authid"], "sensor-9");
    // An expired token: 0x86.
    let mut dev = open(false).await;
    let t = token("sensor-9", now - 3600);
    assert_eq!(
        dev.connect("c3", Some(("any", &t))).await.code,
        p5::ConnectReturnCode::BadUserNamePassword
    );
    // A token that expires during the session ends it.
    let mut dev = open(false).await;
    let t = token("sensor-9", now + 2);
    dev.connect("c4", Some(("any", &t))).await;
    match dev.until_closed().await.as_slice() {
        [Packet::Disconnect(x)] => {
            assert_eq!(x.reason_code, p5::DisconnectReasonCode::NotAuthorized)
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn mqtt_over_websocket() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;
    let ws_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let config = CONFIG.replace(
        "keep_alive_max_secs = 300",
        &format!("keep_alive_max_secs = 300\nwebsocket = {{ listen = \"127.0.0.1:{ws_port}\", path = \"/mqtt\" }}"),
    );
    let gw = TestGateway::start(&config).await;
    let mut request = format!("ws://127.0.0.1:{ws_port}/mqtt")
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("sec-websocket-protocol", "mqtt".parse().unwrap());
    let (mut ws, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(response.headers()["sec-websocket-protocol"], "mqtt");
    let mut out = BytesMut::new();
    Packet::Connect(
        p5::Connect {
            keep_alive: 30,
            client_id: "thermo-7".into(),
            clean_start: true,
            properties: None,
        },
        None,
        Some(p5::Login::new("thermo-7", "s3cret")),
    )
    .write(&mut out, None)
    .unwrap();
    let mut publish = p5::Publish::new(
        "devices/thermo-7/telemetry",
        QoS::AtLeastOnce,
        event("w1", "t"),
        None,
    );
    publish.pkid = 1;
    Packet::Publish(publish).write(&mut out, None).unwrap();
    // CONNECT and PUBLISH split across frames where they do not end.
    let cut = 10;
    ws.send(Message::Binary(out.split_to(cut).freeze()))
        .await
        .unwrap();
    ws.send(Message::Binary(out.freeze())).await.unwrap();
    let mut buf = BytesMut::new();
    let mut packets = Vec::new();
    while packets.len() < 2 {
        match tokio::time::timeout(WAIT, ws.next()).await.unwrap() {
            Some(Ok(Message::Binary(b))) => buf.extend_from_slice(&b),
            other => panic!("{other:?}"),
        }
        while let Ok(p) = Packet::read(&mut buf, None) {
            packets.push(p);
        }
    }
    assert!(matches!(&packets[0], Packet::ConnAck(a) if a.code == p5::ConnectReturnCode::Success));
    assert!(matches!(&packets[1], Packet::PubAck(a) if a.reason == p5::PubAckReason::Success));
    assert_eq!(events(&gw)[0]["id"], "w1");
    // Without the `mqtt` subprotocol the upgrade is refused.
    let plain = format!("ws://127.0.0.1:{ws_port}/mqtt")
        .into_client_request()
        .unwrap();
    assert!(tokio_tungstenite::connect_async(plain).await.is_err());
}

#[tokio::test]
async fn reload_disconnects_a_device_whose_password_was_removed_and_keeps_the_others() {
    let gw = TestGateway::start(CONFIG).await;
    let mut kept = Device::tcp(&gw, true).await;
    kept.connect("thermo-7", Some(("thermo-7", "s3cret"))).await;
    let mut revoked = Device::tcp(&gw, true).await;
    revoked
        .connect("thermo-8", Some(("thermo-8", "other")))
        .await;
    let text = CONFIG
        .replace(r#", "thermo-8" = "other""#, "")
        .replace("{dir}", gw.dir.path().to_str().unwrap());
    let config =
        ferry::Config::from_str_at(&text, std::path::Path::new("test.toml"), &|_| None).unwrap();
    gw.gateway.reloader().reload(config).await.expect("reload");
    match revoked.until_closed().await.as_slice() {
        [Packet::Disconnect(x)] => {
            assert_eq!(x.reason_code, p5::DisconnectReasonCode::NotAuthorized)
        }
        other => panic!("{other:?}"),
    }
    kept.publish(
        "devices/thermo-7/telemetry",
        QoS::AtLeastOnce,
        1,
        &event("kept", "t"),
    )
    .await;
    assert_eq!(kept.puback().await.reason, p5::PubAckReason::Success);
}

#[tokio::test]
async fn rate_limit_answers_quota_exceeded() {
    let gw = TestGateway::start(&CONFIG.replace(
        "keep_alive_max_secs = 300",
        "keep_alive_max_secs = 300\nrate_limit = { per_second = 1, burst = 2, key = \"principal\" }",
    ))
    .await;
    let mut d = Device::tcp(&gw, true).await;
    d.connect("thermo-7", Some(("thermo-7", "s3cret"))).await;
    let mut reasons = Vec::new();
    for pkid in 1..=4 {
        d.publish(
            "devices/thermo-7/telemetry",
            QoS::AtLeastOnce,
            pkid,
            &event(&format!("r{pkid}"), "t"),
        )
        .await;
        reasons.push(d.puback().await.reason);
    }
    assert_eq!(
        &reasons[..2],
        &[p5::PubAckReason::Success, p5::PubAckReason::Success]
    );
    assert_eq!(reasons[3], p5::PubAckReason::QuotaExceeded);
}

const COMMANDS: &str = r#"
[admin]
listen = "127.0.0.1:0"

[sources.devices]
type = "mqtt-server"
listen = "127.0.0.1:0"
topics = ["devices/+/telemetry"]
acl = { publish = ["devices/{client_id}/#"], subscribe = ["commands/{client_id}/#"] }

[sources.api]
type = "http"
listen = "127.0.0.1:0"
path = "/commands"

[sinks.commands]
type = "mqtt-server"
server = "devices"
topic = "commands/{subject}"
qos = 1
mode = "binary"
ack_timeout_ms = 2000

[routes.commands]
from = ["api"]
to = ["commands"]
"#;

/// Posts a command event for `subject`; the answer's status.
async fn command(gw: &TestGateway, id: &str, subject: &str) -> u16 {
    reqwest::Client::new()
        .post(gw.url("api", "/commands"))
        .header("ce-specversion", "1.0")
        .header("ce-id", id)
        .header("ce-source", "/ops")
        .header("ce-type", "com.example.command.set")
        .header("ce-subject", subject)
        .header("content-type", "application/json")
        .body(r#"{"setpoint":19}"#)
        .send()
        .await
        .expect("request")
        .status()
        .as_u16()
}

async fn subscribe(d: &mut Device, filter: &str, qos: QoS) {
    if d.v5 {
        let mut s = p5::Subscribe::new(p5::Filter::new(filter, qos), None);
        s.pkid = 1;
        d.send(Packet::Subscribe(s)).await;
    } else {
        let q = rumqttc::mqttbytes::QoS::AtLeastOnce;
        let mut s = v4::Subscribe::new(filter, q);
        s.pkid = 1;
        d.send4(v4::Packet::Subscribe(s)).await;
    }
    match d.recv().await {
        Some(Packet::SubAck(a)) => assert!(
            matches!(a.return_codes[0], p5::SubscribeReasonCode::Success(_)),
            "{a:?}"
        ),
        other => panic!("{other:?}"),
    }
}

async fn next_publish(d: &mut Device) -> p5::Publish {
    match d.recv().await {
        Some(Packet::Publish(p)) => p,
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}

#[tokio::test]
async fn commands_reach_subscribed_devices_and_wait_for_their_pubacks() {
    let gw = TestGateway::start(COMMANDS).await;
    let mut d5 = Device::tcp(&gw, true).await;
    d5.connect("thermo-7", None).await;
    subscribe(&mut d5, "commands/thermo-7/#", QoS::AtLeastOnce).await;
    let mut d3 = Device::tcp(&gw, false).await;
    d3.connect("thermo-8", None).await;
    subscribe(&mut d3, "commands/thermo-8/#", QoS::AtLeastOnce).await;
    // A command for thermo-7: binary mode, attributes as user properties.
    let post = tokio::spawn({
        let url = gw.url("api", "/commands");
        async move {
            reqwest::Client::new()
                .post(url)
                .header("ce-specversion", "1.0")
                .header("ce-id", "c-1")
                .header("ce-source", "/ops")
                .header("ce-type", "com.example.command.set")
                .header("ce-subject", "thermo-7")
                .header("content-type", "application/json")
                .body(r#"{"setpoint":19}"#)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    });
    let p = next_publish(&mut d5).await;
    assert_eq!(&p.topic[..], b"commands/thermo-7");
    assert_eq!(p.qos, QoS::AtLeastOnce);
    assert_eq!(&p.payload[..], br#"{"setpoint":19}"#);
    let props = p.properties.clone().unwrap();
    assert_eq!(props.content_type.as_deref(), Some("application/json"));
    assert!(props.user_properties.contains(&("id".into(), "c-1".into())));
    // The HTTP request waits for the device's PUBACK.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!post.is_finished(), "answered before the device's PUBACK");
    d5.send(Packet::PubAck(p5::PubAck::new(p.pkid, None))).await;
    assert_eq!(post.await.unwrap(), 202);
    // A 3.1.1 device gets the structured form.
    let post = tokio::spawn({
        let gw_url = gw.url("api", "/commands");
        async move {
            reqwest::Client::new()
                .post(gw_url)
                .header("content-type", "application/cloudevents+json")
                .body(r#"{"specversion":"1.0","id":"c-2","source":"/ops","type":"set","subject":"thermo-8","data":{"on":true}}"#)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    });
    let p = next_publish(&mut d3).await;
    let event: Value = serde_json::from_slice(&p.payload).unwrap();
    assert_eq!(event["id"], "c-2");
    assert_eq!(event["data"], json!({"on": true}));
    d3.send4(v4::Packet::PubAck(v4::PubAck::new(p.pkid))).await;
    assert_eq!(post.await.unwrap(), 202);
    // No session subscribes: confirmed (require_subscriber = false).
    assert_eq!(command(&gw, "c-3", "nobody").await, 202);
}

#[tokio::test]
async fn commands_fail_without_a_puback_or_a_subscriber_when_required_and_wait_in_away_sessions() {
    let gw = TestGateway::start(&COMMANDS.replace(
        "ack_timeout_ms = 2000",
        "ack_timeout_ms = 300\nrequire_subscriber = true",
    ))
    .await;
    assert_ne!(
        command(&gw, "n-1", "thermo-7").await / 100,
        2,
        "no subscriber"
    );
    // A device that never PUBACKs: the delivery fails after ack_timeout_ms.
    let mut d = Device::tcp(&gw, true).await;
    d.connect("thermo-7", None).await;
    subscribe(&mut d, "commands/thermo-7/#", QoS::AtLeastOnce).await;
    assert_ne!(command(&gw, "n-2", "thermo-7").await / 100, 2, "no PUBACK");
    assert_eq!(
        next_publish(&mut d).await.topic,
        Bytes::from_static(b"commands/thermo-7")
    );
    drop(d);
    // A persistent session keeps commands while its device is away.
    let props = p5::ConnectProperties {
        session_expiry_interval: Some(60),
        ..Default::default()
    };
    let mut d = Device::tcp(&gw, true).await;
    d.connect_with("thermo-9", None, true, Some(props.clone()), None)
        .await;
    subscribe(&mut d, "commands/thermo-9/#", QoS::AtLeastOnce).await;
    d.send_bytes(&[0xE0, 0x00]).await;
    assert!(d.until_closed().await.is_empty());
    until(WAIT, "the session to be kept", || async {
        gw.metrics()
            .await
            .contains(r#"ferry_mqtt_server_connections{source="devices"} 0"#)
    })
    .await;
    assert_eq!(command(&gw, "away-1", "thermo-9").await, 202);
    let mut d = Device::tcp(&gw, true).await;
    let ack = d
        .connect_with("thermo-9", None, false, Some(props), None)
        .await;
    assert!(ack.session_present);
    let p = next_publish(&mut d).await;
    assert_eq!(&p.topic[..], b"commands/thermo-9");
    assert!(p
        .properties
        .unwrap()
        .user_properties
        .contains(&("id".into(), "away-1".into())));
}

/// The config of the device listener's documentation, exactly as written there.
#[test]
fn the_documented_config_is_accepted() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/mqtt-server.md"))
        .unwrap();
    let start = doc
        .find("```toml\n[sources.devices]")
        .expect("the config block")
        + 8;
    let end = start + doc[start..].find("```").unwrap();
    let text = format!(
        "{}\n[routes.telemetry]\nfrom = [\"devices\"]\nto = [\"commands\"]\n",
        &doc[start..end]
    );
    // The files it names: the dev PKI of `ferry certs dev --out certs/dev`, and a JWKS.
    let dir = tempfile::tempdir().unwrap();
    ferry::certs::generate_dev(&dir.path().join("certs/dev")).unwrap();
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/keys/jwks.json"),
        dir.path().join("certs/jwks.json"),
    )
    .unwrap();
    let text = text.replace("\"certs/", &format!("\"{}/certs/", dir.path().display()));
    let lookup = |name: &str| (name == "THERMO7_PASSWORD").then(|| "pw".to_owned());
    let config = ferry::Config::from_str_at(&text, std::path::Path::new("ferry.toml"), &lookup);
    assert!(config.is_ok(), "{:?}", config.err());
}

/// Two instances, each serving its own devices: a command posted to one reaches a device
/// connected to the other, through NATS (the pattern of docs/mqtt-server.md).
#[tokio::test]
async fn commands_reach_a_device_through_the_instance_it_is_connected_to() {
    let subject = format!("ferry-test-commands.{}", common::suffix());
    let instance = |api: bool| {
        let mut text = format!(
            r#"
[admin]
listen = "127.0.0.1:0"

[sources.devices]
type = "mqtt-server"
listen = "127.0.0.1:0"
topics = ["devices/#"]

[sources.bus]
type = "nats"
url = "nats://127.0.0.1:4222"
subject = "{subject}"

[sinks.commands]
type = "mqtt-server"
server = "devices"
topic = "commands/{{subject}}"

[routes.commands]
from = ["bus"]
to = ["commands"]
"#
        );
        if api {
            text.push_str(&format!(
                r#"
[sources.api]
type = "http"
listen = "127.0.0.1:0"
path = "/commands"

[sinks.bus-out]
type = "nats"
url = "nats://127.0.0.1:4222"
subject = "{subject}"

[routes.publish]
from = ["api"]
to = ["bus-out"]
"#
            ));
        }
        text
    };
    let a = TestGateway::start(&instance(true)).await;
    let b = TestGateway::start(&instance(false)).await;
    common::ready(&a, WAIT).await;
    common::ready(&b, WAIT).await;
    let mut on_b = Device::tcp(&b, true).await;
    on_b.connect("thermo-42", None).await;
    subscribe(&mut on_b, "commands/thermo-42", QoS::AtLeastOnce).await;
    assert_eq!(command(&a, "x-1", "thermo-42").await, 202);
    let p = next_publish(&mut on_b).await;
    assert_eq!(&p.topic[..], b"commands/thermo-42");
    assert!(p
        .properties
        .unwrap()
        .user_properties
        .contains(&("id".into(), "x-1".into())));
    on_b.send(Packet::PubAck(p5::PubAck::new(p.pkid, None)))
        .await;
}

/// `client_auth = "required"`: a device without a certificate fails the TLS handshake; one
/// with a certificate connects as `mtls:<identity>`.
#[tokio::test]
async fn required_client_certificates_refuse_devices_without_one() {
    let dir = tempfile::tempdir().unwrap();
    ferry::certs::generate_dev(dir.path()).unwrap();
    let d = dir.path().display();
    let gw = TestGateway::start(&format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[sources.devices]
type = "mqtt-server"
listen = "127.0.0.1:0"
topics = ["devices/#"]
tls = {{ cert = "{d}/server.pem", key = "{d}/server.key", client_ca = "{d}/ca.pem", client_auth = "required" }}
auth = {{ mtls = true }}

[sinks.archive]
type = "file"
path = "{{dir}}/events.jsonl"

[routes.all]
from = ["devices"]
to = ["archive"]
"#
    ))
    .await;
    let addr = gw.gateway.source_addr("devices").unwrap();
    // Without a certificate: the handshake (or the first read after it, in TLS 1.3) fails.
    if let Ok(mut dev) = tls_device(addr, dir.path(), false).await {
        dev.send(Packet::Connect(
            p5::Connect {
                keep_alive: 30,
                client_id: "x".into(),
                clean_start: true,
                properties: None,
            },
            None,
            None,
        ))
        .await;
        assert!(
            dev.until_closed().await.is_empty(),
            "no CONNACK without a certificate"
        );
    }
    let mut dev = tls_device(addr, dir.path(), true)
        .await
        .expect("TLS with a certificate");
    assert_eq!(
        dev.connect("c1", None).await.code,
        p5::ConnectReturnCode::Success
    );
    dev.publish("devices/c1", QoS::AtLeastOnce, 1, &event("tls-1", "t"))
        .await;
    assert_eq!(dev.puback().await.reason, p5::PubAckReason::Success);
    assert_eq!(events(&gw)[0]["authid"], ferry::certs::CLIENT_IDENTITY);
}
