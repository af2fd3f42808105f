//! Framing MQTT 3.1.1 packets: decoding through mqttbytes (`v4`), encoding the few packets the
//! hub sends. PUBLISH is encoded header-only so that the payload `Bytes` is appended once, at
//! the moment it is written to the socket buffer.

use bytes::{BufMut, BytesMut};
use mqttbytes::v4;
pub use mqttbytes::v4::Packet;
use mqttbytes::QoS;

/// What is wrong with the bytes a client sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The packet announces more than the configured maximum; refused before buffering it.
    TooLarge { announced: usize, max: usize },
    /// Not a well-formed MQTT 3.1.1 packet.
    Malformed(String),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::TooLarge { announced, max } => {
                write!(f, "packet of {announced} bytes exceeds the limit of {max} bytes")
            }
            DecodeError::Malformed(why) => write!(f, "malformed packet: {why}"),
        }
    }
}

/// Takes the next whole packet off the front of `buf`. `Ok(None)`: more bytes are needed
/// (not an error). The size limit is checked on the fixed header, before the body is buffered.
pub fn decode(buf: &mut BytesMut, max_packet_bytes: usize) -> Result<Option<Packet>, DecodeError> {
    if buf.is_empty() {
        return Ok(None);
    }
    match v4::read(buf, max_packet_bytes) {
        Ok(packet) => Ok(Some(packet)),
        Err(mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
        Err(mqttbytes::Error::PayloadSizeLimitExceeded(announced)) => {
            Err(DecodeError::TooLarge { announced, max: max_packet_bytes })
        }
        Err(other) => Err(DecodeError::Malformed(format!("{other:?}"))),
    }
}

/// The protocol level of a CONNECT at the front of `buf` (4 = MQTT 3.1.1, 5 = MQTT 5), once
/// enough bytes are there. mqttbytes' v4 reader would misread an MQTT 5 CONNECT (its properties
/// sit where 3.1.1 has the client id), so the level is checked first and answered with
/// CONNACK "unacceptable protocol version".
pub fn connect_protocol_level(buf: &[u8]) -> Option<u8> {
    if buf.first().map(|b| b >> 4) != Some(1) {
        return None;
    }
    // Skip the remaining-length bytes (at most 4, continuation bit 0x80).
    let len_bytes = buf.iter().skip(1).take(4).position(|b| b & 0x80 == 0)? + 1;
    let header = &buf[1 + len_bytes..];
    // Protocol name: u16 length (4) + "MQTT" (or 6 + "MQIsdp" for 3.1), then the level.
    let name_len = usize::from(u16::from_be_bytes([*header.first()?, *header.get(1)?]));
    header.get(2 + name_len).copied()
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
    let id_len = if qos == QoS::AtMostOnce { 0 } else { 2 };
    let remaining = 2 + topic.len() + id_len + payload.len();
    out.reserve(5 + remaining);
    out.put_u8(0b0011_0000 | ((qos as u8) << 1) | (u8::from(dup) << 3));
    put_remaining_length(out, remaining);
    // Topics are bounded by the packet size limit, far below u16::MAX (checked by the caller).
    out.put_u16(topic.len() as u16);
    out.put_slice(topic.as_bytes());
    if id_len > 0 {
        out.put_u16(pkid);
    }
    out.put_slice(payload);
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

    #[test]
    fn connect_protocol_level_is_read_before_parsing() {
        let mut out = BytesMut::new();
        mqttbytes::v4::Connect::new("c").write(&mut out).expect("encode");
        assert_eq!(connect_protocol_level(&out), Some(4));
        out[8] = 5;
        assert_eq!(connect_protocol_level(&out), Some(5));
        assert_eq!(connect_protocol_level(&out[..5]), None);
        assert_eq!(connect_protocol_level(&[0x30, 0x00]), None);
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
