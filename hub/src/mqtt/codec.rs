//! Framing MQTT 3.1.1 packets: decoding through mqttbytes (`v4`), encoding the few packets the
//! hub sends. PUBLISH is encoded header-only so that the payload `Bytes` is appended once, at
//! the moment it is written to the socket buffer.

use bytes::{BufMut, BytesMut};
use mqttbytes::v4;
pub use mqttbytes::v4::Packet;
use mqttbytes::QoS;

/// Largest CONNECT accepted, checked before authentication on its fixed header. A CONNECT
/// carries only a client id (IoT Hub: 128 bytes), a username and a SAS token (4 KiB each, the
/// credential limit) and an optional will; 64 KiB holds all of them with a will message of
/// tens of KiB, and bounds what an unauthenticated peer can make the hub buffer to 64 KiB
/// instead of `max_packet_bytes`.
pub const CONNECT_BYTES_MAX: usize = 64 * 1024;

/// What is wrong with the bytes a client sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The packet announces more than the configured maximum; refused before buffering it.
    TooLarge { announced: usize, max: usize },
    /// A CONNECT announces more than [`CONNECT_BYTES_MAX`] (or the packet limit, if lower).
    ConnectTooLarge { announced: usize, max: usize },
    /// Fixed-header flags other than MQTT 3.1.1 §2.2.2 prescribes for the packet type.
    BadFlags { packet: &'static str, flags: u8, expected: u8 },
    /// A PUBLISH with both QoS bits set (§3.3.1.2: QoS 3 is malformed).
    PublishQos3,
    /// Packet type 0 or 15, reserved.
    ReservedType(u8),
    /// The first packet of a connection is not a CONNECT (MQTT-3.1.0-1); names its type.
    NotConnect(&'static str),
    /// A CONNECT whose protocol name is neither "MQTT" (3.1.1) nor "MQIsdp" (3.1).
    NotMqtt,
    /// Not a well-formed MQTT 3.1.1 packet.
    Malformed(String),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::TooLarge { announced, max } => {
                write!(f, "packet of {announced} bytes exceeds the limit of {max} bytes")
            }
            DecodeError::ConnectTooLarge { announced, max } => {
                write!(f, "CONNECT of {announced} bytes exceeds the limit of {max} bytes for a CONNECT")
            }
            DecodeError::BadFlags { packet, flags, expected } => {
                write!(f, "{packet} with fixed-header flags {flags:#06b}; MQTT 3.1.1 §2.2.2 requires {expected:#06b}")
            }
            DecodeError::PublishQos3 => f.write_str("PUBLISH with QoS 3 (both QoS bits set; MQTT 3.1.1 §3.3.1.2)"),
            DecodeError::ReservedType(kind) => write!(f, "packet of reserved type {kind}"),
            DecodeError::NotConnect(packet) => write!(f, "first packet is {packet}, not CONNECT"),
            DecodeError::NotMqtt => {
                f.write_str("not an MQTT CONNECT (the protocol name is neither \"MQTT\" nor \"MQIsdp\")")
            }
            DecodeError::Malformed(why) => write!(f, "malformed packet: {why}"),
        }
    }
}

/// The name of the packet type in a fixed header's first byte, as MQTT 3.1.1 spells it.
pub fn packet_name(first_byte: u8) -> &'static str {
    match first_byte >> 4 {
        1 => "CONNECT",
        2 => "CONNACK",
        3 => "PUBLISH",
        4 => "PUBACK",
        5 => "PUBREC",
        6 => "PUBREL",
        7 => "PUBCOMP",
        8 => "SUBSCRIBE",
        9 => "SUBACK",
        10 => "UNSUBSCRIBE",
        11 => "UNSUBACK",
        12 => "PINGREQ",
        13 => "PINGRESP",
        14 => "DISCONNECT",
        _ => "a packet of reserved type",
    }
}

/// The name of a decoded packet's type: all a log line may say about a packet whose fields
/// (a CONNECT's password, a PUBLISH's payload) must stay out of the log.
pub fn packet_kind(packet: &Packet) -> &'static str {
    match packet {
        Packet::Connect(_) => "CONNECT",
        Packet::ConnAck(_) => "CONNACK",
        Packet::Publish(_) => "PUBLISH",
        Packet::PubAck(_) => "PUBACK",
        Packet::PubRec(_) => "PUBREC",
        Packet::PubRel(_) => "PUBREL",
        Packet::PubComp(_) => "PUBCOMP",
        Packet::Subscribe(_) => "SUBSCRIBE",
        Packet::SubAck(_) => "SUBACK",
        Packet::Unsubscribe(_) => "UNSUBSCRIBE",
        Packet::UnsubAck(_) => "UNSUBACK",
        Packet::PingReq => "PINGREQ",
        Packet::PingResp => "PINGRESP",
        Packet::Disconnect => "DISCONNECT",
    }
}

/// Checks the fixed header's first byte as MQTT 3.1.1 §2.2.2 says: PUBREL, SUBSCRIBE and
/// UNSUBSCRIBE carry flags 0b0010, PUBLISH its DUP/QoS/RETAIN (QoS 3 is malformed), every
/// other type 0b0000. mqttbytes 0.6 does not check them, so this runs on the first byte, as
/// soon as it arrives.
fn check_first_byte(first_byte: u8) -> Result<(), DecodeError> {
    let flags = first_byte & 0x0F;
    let expected = match first_byte >> 4 {
        kind @ (0 | 15) => return Err(DecodeError::ReservedType(kind)),
        3 if flags & 0b0110 == 0b0110 => return Err(DecodeError::PublishQos3),
        3 => return Ok(()),
        6 | 8 | 10 => 0b0010,
        _ => 0b0000,
    };
    if flags == expected {
        Ok(())
    } else {
        Err(DecodeError::BadFlags { packet: packet_name(first_byte), flags, expected })
    }
}

/// Takes the next whole packet off the front of `buf`. `Ok(None)`: more bytes are needed
/// (not an error). The first byte's flags are checked as soon as it is there, the size limit
/// on the fixed header, both before the body is buffered.
pub fn decode(buf: &mut BytesMut, max_packet_bytes: usize) -> Result<Option<Packet>, DecodeError> {
    let Some(&first_byte) = buf.first() else {
        return Ok(None);
    };
    check_first_byte(first_byte)?;
    match v4::read(buf, max_packet_bytes) {
        Ok(packet) => Ok(Some(packet)),
        Err(mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
        Err(mqttbytes::Error::PayloadSizeLimitExceeded(announced)) => {
            Err(DecodeError::TooLarge { announced, max: max_packet_bytes })
        }
        // mqttbytes' errors carry kinds and numbers, never packet content.
        Err(other) => Err(DecodeError::Malformed(format!("{other:?}"))),
    }
}

/// Bytes still missing from the packet begun at the front of `buf`, once its fixed header is
/// there (0: no packet begun, its length not yet known, or it is whole).
pub fn shortfall(buf: &[u8]) -> usize {
    let mut remaining = 0usize;
    for (index, byte) in buf.iter().skip(1).take(4).enumerate() {
        remaining |= usize::from(byte & 0x7F) << (7 * index);
        if byte & 0x80 == 0 {
            let total = 1 + (index + 1) + remaining;
            return total.saturating_sub(buf.len());
        }
    }
    0
}

/// What the first bytes of a connection show before its CONNECT is complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectStart {
    /// Nothing wrong so far; more bytes are needed to tell.
    Pending,
    /// An MQTT 3.1.1 CONNECT (protocol "MQTT", level 4) so far: decode it once it is whole.
    Mqtt311,
    /// A CONNECT of another protocol version: answered with CONNACK 1 "unacceptable protocol
    /// version" (MQTT-3.1.2-2). Checked before decoding, since mqttbytes' v4 reader would
    /// misread it (an MQTT 5 CONNECT's properties sit where 3.1.1 has the client id).
    Unsupported(ProtocolVersion),
}

/// A protocol other than MQTT 3.1.1, as its CONNECT names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProtocolVersion {
    /// Protocol name "MQIsdp" (MQTT 3.1) rather than "MQTT".
    pub mqisdp: bool,
    pub level: u8,
}

impl std::fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.mqisdp, self.level) {
            (true, 3) => f.write_str("MQTT 3.1 (protocol level 3) is not supported; use MQTT 3.1.1"),
            (false, 5) => f.write_str("MQTT 5 is not supported (protocol level 5; IoT Hub speaks MQTT 3.1.1)"),
            (mqisdp, level) => write!(
                f,
                "protocol {:?} level {level} is not supported; use MQTT 3.1.1 (\"MQTT\" level 4)",
                if mqisdp { "MQIsdp" } else { "MQTT" }
            ),
        }
    }
}

/// The protocol name fields (u16 length, then the name) a CONNECT's variable header may start
/// with: MQTT 3.1.1 and 5, and MQTT 3.1.
const MQTT_NAME: &[u8] = b"\x00\x04MQTT";
const MQISDP_NAME: &[u8] = b"\x00\x06MQIsdp";

/// Checks the start of the first packet of a connection, on every read until the CONNECT is
/// whole, so bytes that cannot begin a CONNECT are refused as soon as they arrive instead of
/// being buffered until the connect timeout: the packet type and flags, the announced length
/// (at most `max_bytes`), the protocol name and level.
pub fn connect_start(buf: &[u8], max_bytes: usize) -> Result<ConnectStart, DecodeError> {
    let Some(&first_byte) = buf.first() else {
        return Ok(ConnectStart::Pending);
    };
    if first_byte >> 4 != 1 {
        return Err(DecodeError::NotConnect(packet_name(first_byte)));
    }
    check_first_byte(first_byte)?;
    // The remaining length: at most 4 bytes, continuation bit 0x80.
    let mut remaining = 0usize;
    let mut length_bytes = 0;
    loop {
        let Some(&byte) = buf.get(1 + length_bytes) else {
            return Ok(ConnectStart::Pending);
        };
        remaining |= usize::from(byte & 0x7F) << (7 * length_bytes);
        length_bytes += 1;
        if byte & 0x80 == 0 {
            break;
        }
        if length_bytes == 4 {
            return Err(DecodeError::Malformed("remaining length longer than 4 bytes".into()));
        }
    }
    if remaining > max_bytes {
        return Err(DecodeError::ConnectTooLarge { announced: remaining, max: max_bytes });
    }
    let body = &buf[1 + length_bytes..];
    let body = &body[..body.len().min(remaining)];
    let whole = body.len() == remaining;
    let name = [MQTT_NAME, MQISDP_NAME].into_iter().find(|name| body.starts_with(&name[..name.len().min(body.len())]));
    let Some(name) = name else {
        return Err(DecodeError::NotMqtt);
    };
    match body.get(name.len()) {
        Some(&4) if name == MQTT_NAME => Ok(ConnectStart::Mqtt311),
        Some(&level) => Ok(ConnectStart::Unsupported(ProtocolVersion { mqisdp: name == MQISDP_NAME, level })),
        None if whole => Err(DecodeError::Malformed("CONNECT shorter than its protocol name and level".into())),
        None => Ok(ConnectStart::Pending),
    }
}

/// Variable-length "remaining length" of MQTT; `len` is at most 268,435,455 (checked by callers
/// through the packet size limit).
fn put_remaining_length(out: &mut BytesMut, mut len: usize) {
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if len == 0 {
            break;
        }
    }
}

/// Appends a whole PUBLISH: header, topic, packet id (QoS 1), then the payload.
pub fn put_publish(out: &mut BytesMut, topic: &str, qos: QoS, pkid: u16, dup: bool, payload: &[u8]) {
    put_publish_parts(out, &[topic], qos, pkid, dup, payload);
}

/// As [`put_publish`], with the topic given as pieces written one after the other: a delivery's
/// topic goes straight into the buffer, without a string built for it per message.
pub fn put_publish_parts(out: &mut BytesMut, topic: &[&str], qos: QoS, pkid: u16, dup: bool, payload: &[u8]) {
    put_publish_head(out, topic, qos, pkid, dup, payload.len(), payload.len());
    out.put_slice(payload);
}

/// A PUBLISH up to its payload, for a payload of `payload_len` bytes the caller writes after it
/// (from its own buffer, in the same `writev`); `reserve_payload` more bytes are reserved.
pub fn put_publish_head(
    out: &mut BytesMut,
    topic: &[&str],
    qos: QoS,
    pkid: u16,
    dup: bool,
    payload_len: usize,
    reserve_payload: usize,
) {
    let id_len = if qos == QoS::AtMostOnce { 0 } else { 2 };
    let topic_len: usize = topic.iter().map(|part| part.len()).sum();
    let remaining = 2 + topic_len + id_len + payload_len;
    out.reserve(5 + remaining - payload_len + reserve_payload);
    out.put_u8(0b0011_0000 | ((qos as u8) << 1) | (u8::from(dup) << 3));
    put_remaining_length(out, remaining);
    // Topics are bounded by the packet size limit, far below u16::MAX (checked by the caller).
    out.put_u16(topic_len as u16);
    for part in topic {
        out.put_slice(part.as_bytes());
    }
    if id_len > 0 {
        out.put_u16(pkid);
    }
}

/// Longest topic the hub will build for a delivery (MQTT's 16-bit length prefix).
pub const TOPIC_BYTES_MAX: usize = u16::MAX as usize;

pub fn put_puback(out: &mut BytesMut, pkid: u16) {
    out.put_slice(&[0x40, 0x02]);
    out.put_u16(pkid);
}

pub fn put_pingresp(out: &mut BytesMut) {
    out.put_slice(&[0xD0, 0x00]);
}

pub fn put_unsuback(out: &mut BytesMut, pkid: u16) {
    out.put_slice(&[0xB0, 0x02]);
    out.put_u16(pkid);
}

/// SUBACK with one return code per filter: 0x00/0x01 granted QoS, 0x80 failure.
pub fn put_suback(out: &mut BytesMut, pkid: u16, codes: &[u8]) {
    out.put_u8(0x90);
    put_remaining_length(out, 2 + codes.len());
    out.put_u16(pkid);
    out.put_slice(codes);
}

/// CONNACK; `code` 0 accepted, 1 bad protocol, 2 bad client id, 3 unavailable, 4 bad
/// username/password, 5 not authorized.
pub fn put_connack(out: &mut BytesMut, session_present: bool, code: u8) {
    out.put_slice(&[0x20, 0x02, u8::from(session_present), code]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn a_publish_from_topic_pieces_is_the_publish_of_the_whole_topic() {
        for (qos, pkid) in [(QoS::AtMostOnce, 0), (QoS::AtLeastOnce, 7)] {
            let payload = vec![0xA5; 200];
            let (mut whole, mut pieces) = (BytesMut::new(), BytesMut::new());
            put_publish(&mut whole, "devices/gw/modules/m/inputs/in/a=b", qos, pkid, true, &payload);
            put_publish_parts(
                &mut pieces,
                &["devices/gw", "/modules/m", "", "/inputs/in/", "a=b"],
                qos,
                pkid,
                true,
                &payload,
            );
            assert_eq!(whole, pieces);
            // A third-party decoder reads it back.
            let mut bytes = pieces.clone();
            match mqttbytes::v4::read(&mut bytes, 1 << 20).expect("decodes") {
                mqttbytes::v4::Packet::Publish(publish) => {
                    assert_eq!(publish.topic, "devices/gw/modules/m/inputs/in/a=b");
                    assert_eq!(publish.payload.len(), 200);
                    assert_eq!(publish.pkid, pkid);
                }
                other => panic!("not a PUBLISH: {other:?}"),
            }
        }
    }

    #[test]
    fn shortfall_is_what_the_begun_packet_still_needs() {
        assert_eq!(shortfall(&[]), 0);
        assert_eq!(shortfall(&[0x30]), 0, "length not there yet");
        // PUBLISH with remaining length 10: 12 bytes in all.
        assert_eq!(shortfall(&[0x30, 10, 0, 1]), 8);
        assert_eq!(shortfall(&[0x30, 10, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9]), 0, "whole");
        // A remaining length in three bytes (16 KiB of payload and more).
        let mut out = BytesMut::new();
        put_publish(&mut out, "t", QoS::AtLeastOnce, 1, false, &vec![0u8; 16_384]);
        assert_eq!(out.len(), 1 + 3 + 3 + 2 + 16_384);
        assert_eq!(shortfall(&out[..100]), out.len() - 100);
        assert_eq!(shortfall(&[0x30, 0x80, 0x80]), 0, "length bytes still coming");
    }

    #[test]
    fn publish_round_trips_through_mqttbytes() {
        let mut out = BytesMut::new();
        put_publish(&mut out, "devices/d/modules/m/inputs/i/", QoS::AtLeastOnce, 7, true, b"hello");
        let Some(Packet::Publish(p)) = decode(&mut out, 1024).expect("valid") else { panic!("not a publish") };
        assert_eq!(
            (p.topic.as_str(), p.qos, p.pkid, p.dup),
            ("devices/d/modules/m/inputs/i/", QoS::AtLeastOnce, 7, true)
        );
        assert_eq!(p.payload, Bytes::from_static(b"hello"));
        assert!(out.is_empty());
    }

    #[test]
    fn long_payload_uses_multi_byte_length() {
        let payload = vec![7u8; 200_000];
        let mut out = BytesMut::new();
        put_publish(&mut out, "t", QoS::AtMostOnce, 0, false, &payload);
        let Some(Packet::Publish(p)) = decode(&mut out, 300_000).expect("valid") else { panic!("not a publish") };
        assert_eq!(p.payload.len(), 200_000);
    }

    #[test]
    fn partial_packet_needs_more_bytes() {
        let mut out = BytesMut::new();
        put_publish(&mut out, "topic", QoS::AtMostOnce, 0, false, b"payload");
        let mut partial = out.split_to(out.len() - 1);
        assert_eq!(decode(&mut partial, 1024), Ok(None));
    }

    #[test]
    fn oversized_packet_is_refused_from_its_header() {
        // Only the fixed header of a 1 MiB publish: refused without the body being present.
        let mut buf = BytesMut::from(&[0x30u8, 0x80, 0x80, 0x40][..]);
        assert!(matches!(decode(&mut buf, 256 * 1024), Err(DecodeError::TooLarge { .. })));
    }

    fn connect_bytes(connect: &mqttbytes::v4::Connect) -> BytesMut {
        let mut out = BytesMut::new();
        connect.write(&mut out).expect("encode");
        out
    }

    #[test]
    fn connect_start_reads_the_protocol_before_the_whole_packet() {
        let mut out = connect_bytes(&mqttbytes::v4::Connect::new("c"));
        assert_eq!(connect_start(&out, 1024), Ok(ConnectStart::Mqtt311));
        for len in 0..8 {
            assert_eq!(connect_start(&out[..len], 1024), Ok(ConnectStart::Pending), "{len} bytes");
        }
        out[8] = 5;
        let v5 = ProtocolVersion { mqisdp: false, level: 5 };
        assert_eq!(connect_start(&out, 1024), Ok(ConnectStart::Unsupported(v5)));
        assert!(v5.to_string().contains("MQTT 5 is not supported"));
        // MQTT 3.1: protocol name "MQIsdp", level 3.
        let v31 = [0x10, 0x0F, 0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3, 0x02, 0, 60, 0, 1, b'c'];
        let version = ProtocolVersion { mqisdp: true, level: 3 };
        assert_eq!(connect_start(&v31, 1024), Ok(ConnectStart::Unsupported(version)));
        assert_eq!(version.to_string(), "MQTT 3.1 (protocol level 3) is not supported; use MQTT 3.1.1");
        assert_eq!(connect_start(&v31[..6], 1024), Ok(ConnectStart::Pending));
    }

    #[test]
    fn bytes_that_cannot_be_a_connect_are_refused_early() {
        let table: [(&[u8], DecodeError); 7] = [
            (&[0x30, 0x00], DecodeError::NotConnect("PUBLISH")),
            (&[0x82], DecodeError::NotConnect("SUBSCRIBE")),
            (&[0x11], DecodeError::BadFlags { packet: "CONNECT", flags: 1, expected: 0 }),
            // Announced 64 KiB + 1 with nothing else there yet.
            (&[0x10, 0x81, 0x80, 0x04], DecodeError::ConnectTooLarge { announced: 65_537, max: 65_536 }),
            (&[0x10, 0xFF, 0xFF, 0xFF, 0xFF], DecodeError::Malformed("remaining length longer than 4 bytes".into())),
            (&[0x10, 0x20, 0x00, 0x05], DecodeError::NotMqtt),
            (&[0x10, 0x20, 0x00, 0x04, b'M', b'Q', b'T', b'X'], DecodeError::NotMqtt),
        ];
        for (bytes, expected) in table {
            assert_eq!(connect_start(bytes, CONNECT_BYTES_MAX), Err(expected), "{bytes:?}");
        }
        let short = [0x10, 0x03, 0x00, 0x04, b'M'];
        assert!(matches!(connect_start(&short, 1024), Err(DecodeError::Malformed(_))));
        // 4 KiB of random bytes after 0x10 are refused on the bytes at hand, whatever length
        // they announce (the protocol name would have to match by chance).
        let mut state: u64 = 0x2545_F491_4F6C_DD1D;
        let mut refused = 0;
        for _ in 0..1000 {
            let mut bytes = vec![0x10u8];
            for _ in 0..4096 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                bytes.push(state as u8);
            }
            if connect_start(&bytes, CONNECT_BYTES_MAX).is_err() {
                refused += 1;
            }
        }
        assert_eq!(refused, 1000);
    }

    #[test]
    fn fixed_header_flags_are_checked_on_the_first_byte() {
        let bad: [(u8, &str); 9] = [
            (0x80, "SUBSCRIBE"),
            (0x83, "SUBSCRIBE"),
            (0xA0, "UNSUBSCRIBE"),
            (0x60, "PUBREL"),
            (0x41, "PUBACK"),
            (0xC2, "PINGREQ"),
            (0xE1, "DISCONNECT"),
            (0x18, "CONNECT"),
            (0x92, "SUBACK"),
        ];
        for (first_byte, packet) in bad {
            let mut buf = BytesMut::from(&[first_byte][..]);
            match decode(&mut buf, 1024) {
                Err(DecodeError::BadFlags { packet: p, .. }) => assert_eq!(p, packet),
                other => panic!("{first_byte:#04x}: {other:?}"),
            }
        }
        let mut qos3 = BytesMut::from(&[0x36u8][..]);
        assert_eq!(decode(&mut qos3, 1024), Err(DecodeError::PublishQos3));
        let mut reserved = BytesMut::from(&[0xF0u8, 0x00][..]);
        assert_eq!(decode(&mut reserved, 1024), Err(DecodeError::ReservedType(15)));
        // Valid first bytes are waited on, not refused.
        for first_byte in [0x10, 0x30, 0x3B, 0x32, 0x40, 0x62, 0x82, 0xA2, 0xC0, 0xE0] {
            let mut buf = BytesMut::from(&[first_byte][..]);
            assert_eq!(decode(&mut buf, 1024), Ok(None), "{first_byte:#04x}");
        }
        let error = DecodeError::BadFlags { packet: "SUBSCRIBE", flags: 0, expected: 2 };
        assert_eq!(error.to_string(), "SUBSCRIBE with fixed-header flags 0b0000; MQTT 3.1.1 §2.2.2 requires 0b0010");
    }

    #[test]
    fn packet_kinds_name_the_type_only() {
        let mut connect = mqttbytes::v4::Connect::new("c");
        connect.set_login("user", "SharedAccessSignature sr=x&sig=secret&se=1");
        let mut bytes = connect_bytes(&connect);
        let packet = decode(&mut bytes, 1024).expect("valid").expect("whole");
        assert_eq!(packet_kind(&packet), "CONNECT");
        assert_eq!(packet_name(0x82), "SUBSCRIBE");
        assert_eq!(packet_name(0xF0), "a packet of reserved type");
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        // A deterministic xorshift stream of random packets: decode must never panic.
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..20_000 {
            let mut bytes = BytesMut::new();
            let len = (state % 64) as usize;
            for _ in 0..len {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                bytes.put_u8(state as u8);
            }
            while let Ok(Some(_)) = decode(&mut bytes, 1024) {}
        }
    }
}
