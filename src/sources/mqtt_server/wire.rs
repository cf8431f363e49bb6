//! Packets on the wire, through rumqttc's MQTT 3.1.1 and 5.0 codecs. The session layer
//! speaks MQTT 5 packet types only: a 3.1.1 connection's packets are converted on the way in
//! and out here (no properties, no reason codes).
//!
//! Ferry frames each packet itself (fixed header and Remaining Length, §2.1) before handing
//! it to the codec, so that the Maximum Packet Size counts the whole packet, a complete frame
//! that does not parse is always an error (never "more bytes needed"), and the frame is
//! consumed either way. Two MQTT 5 DISCONNECT forms the codec does not read (no Remaining
//! Length, or a reason code alone, §3.14.2.1) are read here.

use bytes::{Buf, Bytes, BytesMut};
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5::{self as p5, Packet};
use rumqttc::v5::mqttbytes::QoS;

/// The protocol of a connection, from its CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Version {
    V311,
    V5,
}

/// Why the bytes at the front of the buffer are not a packet.
#[derive(Debug)]
pub(super) enum ReadError {
    /// The packet is larger than the limit (its whole size).
    TooLarge(usize),
    /// Not a well-formed packet (the frame was consumed).
    Malformed(String),
}

/// The size of the packet at the front of `buf` (fixed header included), `None` while its
/// fixed header is incomplete.
fn frame_len(buf: &[u8]) -> Result<Option<usize>, ReadError> {
    let mut remaining: usize = 0;
    for i in 0..4 {
        let Some(&byte) = buf.get(1 + i) else {
            return Ok(None);
        };
        remaining |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some(1 + (i + 1) + remaining));
        }
    }
    Err(ReadError::Malformed(
        "Remaining Length longer than 4 bytes".into(),
    ))
}

/// The protocol level a CONNECT at the front of `buf` asks for: `None` while incomplete;
/// an error when the first packet is not a CONNECT (§3.1: it must be).
pub(super) fn connect_level(buf: &[u8], max: usize) -> Result<Option<u8>, ReadError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    if first != 0x10 {
        return Err(ReadError::Malformed(
            "the first packet must be CONNECT".into(),
        ));
    }
    let Some(len) = frame_len(buf)? else {
        return Ok(None);
    };
    if len > max {
        return Err(ReadError::TooLarge(len));
    }
    let header = len - remaining_of(len, buf);
    // Protocol Name (a two-byte length and "MQTT"), then the level.
    let Some(name) = buf.get(header..header + 2) else {
        return Ok(None);
    };
    let at = header + 2 + usize::from(u16::from_be_bytes([name[0], name[1]]));
    Ok(buf.get(at).copied())
}

/// The Remaining Length of a frame of `len` bytes.
fn remaining_of(len: usize, buf: &[u8]) -> usize {
    let varint = buf[1..].iter().take_while(|b| *b & 0x80 != 0).count() + 1;
    len - 1 - varint
}

/// Reads the packet at the front of `buf` if it is complete.
pub(super) fn read(
    version: Version,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Option<Packet>, ReadError> {
    let Some(len) = frame_len(buf)? else {
        return Ok(None);
    };
    if len > max {
        return Err(ReadError::TooLarge(len));
    }
    if buf.len() < len {
        buf.reserve(len - buf.len());
        return Ok(None);
    }
    if version == Version::V5 && buf[0] == 0xE0 && len <= 3 {
        let code = if len == 3 { buf[2] } else { 0 };
        buf.advance(len);
        return p5::DisconnectReasonCode::try_from(code)
            .map(|reason_code| {
                Some(Packet::Disconnect(p5::Disconnect {
                    reason_code,
                    properties: None,
                }))
            })
            .map_err(|_| ReadError::Malformed(format!("DISCONNECT reason code {code:#04x}")));
    }
    let mut frame = buf.split_to(len);
    let parsed = match version {
        Version::V5 => Packet::read(&mut frame, None).map_err(|e| e.to_string()),
        Version::V311 => v4::Packet::read(&mut frame, usize::MAX)
            .map_err(|e| e.to_string())
            .and_then(from_v4),
    };
    match parsed {
        // [MQTT-3.3.4-6]; this listener offers none (CONNACK Subscription Identifiers
        // Available = 0), and rumqttc does not write such a PUBLISH back as it read it.
        Ok(Packet::Publish(p))
            if p.properties
                .as_ref()
                .is_some_and(|p| !p.subscription_identifiers.is_empty()) =>
        {
            Err(ReadError::Malformed(
                "a PUBLISH from a client carries no Subscription Identifier".into(),
            ))
        }
        Ok(packet) if frame.is_empty() => Ok(Some(packet)),
        Ok(_) => Err(ReadError::Malformed("trailing bytes in a packet".into())),
        Err(e) => Err(ReadError::Malformed(e)),
    }
}

/// Writes `packet` for a connection of `version`. A packet 3.1.1 has no form for (an MQTT 5
/// DISCONNECT, a CONNACK refusal 3.1.1 has no return code for) writes nothing: the
/// connection just closes.
pub(super) fn write(version: Version, packet: &Packet, buf: &mut BytesMut) {
    let start = buf.len();
    let written = match version {
        Version::V5 => packet
            .write(buf, None)
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Version::V311 => match to_v4(packet) {
            Some(p) => p
                .write(buf, usize::MAX)
                .map(|_| ())
                .map_err(|e| e.to_string()),
            None => Ok(()),
        },
    };
    if let Err(e) = written {
        // A failed write may leave half a packet behind.
        buf.truncate(start);
        tracing::warn!(error = %e, "cannot encode an MQTT packet");
    }
}

/// The name of a packet type, for metrics and logs.
pub(super) fn kind(packet: &Packet) -> &'static str {
    match packet {
        Packet::Auth(_) => "auth",
        Packet::Connect(..) => "connect",
        Packet::ConnAck(_) => "connack",
        Packet::Publish(_) => "publish",
        Packet::PubAck(_) => "puback",
        Packet::PingReq(_) => "pingreq",
        Packet::PingResp(_) => "pingresp",
        Packet::Subscribe(_) => "subscribe",
        Packet::SubAck(_) => "suback",
        Packet::PubRec(_) => "pubrec",
        Packet::PubRel(_) => "pubrel",
        Packet::PubComp(_) => "pubcomp",
        Packet::Unsubscribe(_) => "unsubscribe",
        Packet::UnsubAck(_) => "unsuback",
        Packet::Disconnect(_) => "disconnect",
    }
}

/// Every packet type, for metrics created ahead.
pub(super) const KINDS: [&str; 15] = [
    "auth",
    "connect",
    "connack",
    "publish",
    "puback",
    "pingreq",
    "pingresp",
    "subscribe",
    "suback",
    "pubrec",
    "pubrel",
    "pubcomp",
    "unsubscribe",
    "unsuback",
    "disconnect",
];

fn qos_from_v4(q: rumqttc::mqttbytes::QoS) -> QoS {
    match q {
        rumqttc::mqttbytes::QoS::AtMostOnce => QoS::AtMostOnce,
        rumqttc::mqttbytes::QoS::AtLeastOnce => QoS::AtLeastOnce,
        rumqttc::mqttbytes::QoS::ExactlyOnce => QoS::ExactlyOnce,
    }
}

fn qos_to_v4(q: QoS) -> rumqttc::mqttbytes::QoS {
    match q {
        QoS::AtMostOnce => rumqttc::mqttbytes::QoS::AtMostOnce,
        QoS::AtLeastOnce => rumqttc::mqttbytes::QoS::AtLeastOnce,
        QoS::ExactlyOnce => rumqttc::mqttbytes::QoS::ExactlyOnce,
    }
}

/// A 3.1.1 packet a client sends, as its MQTT 5 form.
fn from_v4(packet: v4::Packet) -> Result<Packet, String> {
    Ok(match packet {
        v4::Packet::Connect(c) => Packet::Connect(
            p5::Connect {
                keep_alive: c.keep_alive,
                client_id: c.client_id,
                clean_start: c.clean_session,
                properties: None,
            },
            c.last_will.map(|w| p5::LastWill {
                topic: Bytes::from(w.topic),
                message: w.message,
                qos: qos_from_v4(w.qos),
                retain: w.retain,
                properties: None,
            }),
            c.login.map(|l| p5::Login {
                username: l.username,
                password: l.password,
            }),
        ),
        v4::Packet::Publish(p) => Packet::Publish(p5::Publish {
            dup: p.dup,
            qos: qos_from_v4(p.qos),
            retain: p.retain,
            topic: Bytes::from(p.topic),
            pkid: p.pkid,
            payload: p.payload,
            properties: None,
        }),
        v4::Packet::PubAck(a) => Packet::PubAck(p5::PubAck::new(a.pkid, None)),
        v4::Packet::PubRec(a) => Packet::PubRec(p5::PubRec::new(a.pkid, None)),
        v4::Packet::PubRel(a) => Packet::PubRel(p5::PubRel::new(a.pkid, None)),
        v4::Packet::PubComp(a) => Packet::PubComp(p5::PubComp::new(a.pkid, None)),
        v4::Packet::Subscribe(s) => Packet::Subscribe(p5::Subscribe {
            pkid: s.pkid,
            filters: s
                .filters
                .into_iter()
                .map(|f| p5::Filter::new(f.path, qos_from_v4(f.qos)))
                .collect(),
            properties: None,
        }),
        v4::Packet::Unsubscribe(u) => Packet::Unsubscribe(p5::Unsubscribe {
            pkid: u.pkid,
            filters: u.topics,
            properties: None,
        }),
        v4::Packet::PingReq => Packet::PingReq(p5::PingReq),
        v4::Packet::Disconnect => Packet::Disconnect(p5::Disconnect::new(
            p5::DisconnectReasonCode::NormalDisconnection,
        )),
        other => return Err(format!("a client does not send {other:?}")),
    })
}

/// The 3.1.1 form of a packet the server sends, if it has one.
fn to_v4(packet: &Packet) -> Option<v4::Packet> {
    use p5::ConnectReturnCode as C5;
    use v4::ConnectReturnCode as C4;
    Some(match packet {
        Packet::ConnAck(a) => {
            let code = match a.code {
                C5::Success => C4::Success,
                C5::UnsupportedProtocolVersion => C4::RefusedProtocolVersion,
                C5::ClientIdentifierNotValid => C4::BadClientId,
                C5::BadUserNamePassword => C4::BadUserNamePassword,
                C5::NotAuthorized | C5::Banned => C4::NotAuthorized,
                C5::ServerUnavailable | C5::ServerBusy | C5::QuotaExceeded => {
                    C4::ServiceUnavailable
                }
                // 3.1.1 has no return code for it: close without a CONNACK (§3.2.2.3).
                _ => return None,
            };
            v4::Packet::ConnAck(v4::ConnAck::new(code, a.session_present))
        }
        Packet::Publish(p) => v4::Packet::Publish(v4::Publish {
            dup: p.dup,
            qos: qos_to_v4(p.qos),
            retain: p.retain,
            topic: String::from_utf8(p.topic.to_vec()).ok()?,
            pkid: p.pkid,
            payload: p.payload.clone(),
        }),
        Packet::PubAck(a) => v4::Packet::PubAck(v4::PubAck::new(a.pkid)),
        Packet::PubRec(a) => v4::Packet::PubRec(v4::PubRec::new(a.pkid)),
        Packet::PubRel(a) => v4::Packet::PubRel(v4::PubRel::new(a.pkid)),
        Packet::PubComp(a) => v4::Packet::PubComp(v4::PubComp::new(a.pkid)),
        Packet::SubAck(a) => v4::Packet::SubAck(v4::SubAck::new(
            a.pkid,
            a.return_codes
                .iter()
                .map(|c| match c {
                    p5::SubscribeReasonCode::Success(q) => {
                        v4::SubscribeReasonCode::Success(qos_to_v4(*q))
                    }
                    _ => v4::SubscribeReasonCode::Failure,
                })
                .collect(),
        )),
        Packet::UnsubAck(a) => v4::Packet::UnsubAck(v4::UnsubAck::new(a.pkid)),
        Packet::PingResp(_) => v4::Packet::PingResp,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by `scripts/fuzz` (mqtt_server_packets): a client PUBLISH with Subscription
    /// Identifiers was accepted, and written back it read as another packet.
    #[test]
    fn fuzz_a_client_publish_with_subscription_identifiers_is_refused() {
        let mut publish = p5::Publish::new("a/b", QoS::AtLeastOnce, "x", None);
        publish.pkid = 1;
        publish.properties = Some(p5::PublishProperties {
            subscription_identifiers: vec![11],
            ..Default::default()
        });
        let mut buf = BytesMut::new();
        Packet::Publish(publish).write(&mut buf, None).unwrap();
        match read(Version::V5, &mut buf, 1 << 16) {
            Err(ReadError::Malformed(m)) => assert!(m.contains("Subscription Identifier"), "{m}"),
            other => panic!("{other:?}"),
        }
        // The fuzzer's input, whole: every packet read writes back as it read.
        let input: &[u8] = &[
            0x3a, 0x09, 0x00, 0x01, 0x86, 0x89, 0x00, 0x01, 0x23, 0x4f, 0x01, 0x3a, 0x23, 0x00,
            0x01, 0x23, 0x0b, 0x0b, 0x0b, 0x0b, 0x0b, 0x0b, 0x0b, 0x0b, 0x0b, 0x0b, 0x0b, 0x0b,
            0x0b, 0x0b, 0x0b, 0x0b, 0x0b, 0x0b, 0x0b, 0x0b, 0x0b, 0x0b, 0x0b, 0x0b, 0x0b, 0x0b,
            0x0b, 0x0b, 0x0b, 0x0b, 0x0b, 0x0b, 0x0b, 0x0b, 0x0b, 0x0b, 0x0b, 0x0b, 0x00, 0x01,
            0x50, 0x03, 0x00, 0x01, 0x50, 0x03, 0x00, 0x00, 0x80, 0x50, 0x03, 0x00, 0x00, 0x80,
            0x50, 0x03, 0x01, 0x5c, 0x89, 0x00, 0x42, 0xab, 0x91, 0x1a, 0x80, 0x80, 0x00, 0x23,
            0x41,
        ];
        super::super::fuzz_packets(true, input, 64);
    }

    #[test]
    fn frames_are_counted_whole_and_consumed_on_error() {
        // PINGREQ
        let mut buf = BytesMut::from(&[0xC0, 0x00][..]);
        assert!(matches!(
            read(Version::V5, &mut buf, 2),
            Ok(Some(Packet::PingReq(_)))
        ));
        assert!(buf.is_empty());
        // A PUBLISH of 3 bytes over a limit of 4 counts its header: too large.
        let mut buf = BytesMut::from(&[0x30, 0x03, 0x00, 0x01, b'a'][..]);
        assert!(matches!(
            read(Version::V311, &mut buf, 4),
            Err(ReadError::TooLarge(5))
        ));
        // Incomplete: nothing consumed.
        let mut buf = BytesMut::from(&[0x30, 0x05, 0x00][..]);
        assert!(matches!(read(Version::V311, &mut buf, 100), Ok(None)));
        assert_eq!(buf.len(), 3);
        // A SUBSCRIBE with no filter is malformed, and consumed.
        let mut buf = BytesMut::from(&[0x82, 0x02, 0x00, 0x01, 0xC0, 0x00][..]);
        assert!(matches!(
            read(Version::V311, &mut buf, 100),
            Err(ReadError::Malformed(_))
        ));
        assert_eq!(&buf[..], &[0xC0, 0x00]);
        let mut buf = BytesMut::from(&[0xC0, 0x80, 0x80, 0x80, 0x80, 0x01][..]);
        assert!(matches!(
            read(Version::V5, &mut buf, 100),
            Err(ReadError::Malformed(_))
        ));
    }

    #[test]
    fn mqtt5_disconnect_without_properties() {
        for (bytes, code) in [
            (
                &[0xE0, 0x00][..],
                p5::DisconnectReasonCode::NormalDisconnection,
            ),
            (
                &[0xE0, 0x01, 0x04][..],
                p5::DisconnectReasonCode::DisconnectWithWillMessage,
            ),
        ] {
            let mut buf = BytesMut::from(bytes);
            match read(Version::V5, &mut buf, 100) {
                Ok(Some(Packet::Disconnect(d))) => assert_eq!(d.reason_code, code),
                other => panic!("{other:?}"),
            }
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn connect_level_is_read_before_the_codec_is_chosen() {
        // CONNECT, Protocol Name "MQTT", level 4.
        let connect = [0x10, 0x0C, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04];
        assert_eq!(connect_level(&connect, 100).unwrap(), Some(4));
        assert_eq!(connect_level(&connect[..6], 100).unwrap(), None);
        assert!(connect_level(&[0x30, 0x00], 100).is_err());
    }

    #[test]
    fn refusals_311_has_no_code_for_close_without_connack() {
        let refusal = Packet::ConnAck(p5::ConnAck {
            session_present: false,
            code: p5::ConnectReturnCode::PacketTooLarge,
            properties: None,
        });
        let mut buf = BytesMut::new();
        write(Version::V311, &refusal, &mut buf);
        assert!(buf.is_empty());
        let ok = Packet::ConnAck(p5::ConnAck {
            session_present: true,
            code: p5::ConnectReturnCode::NotAuthorized,
            properties: None,
        });
        write(Version::V311, &ok, &mut buf);
        assert_eq!(&buf[..], &[0x20, 0x02, 0x01, 0x05]);
    }
}
