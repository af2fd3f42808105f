//! AMQP 1.0 framing, with no IO: the 8-byte protocol header, frames split out of a byte buffer
//! (size checked before anything is buffered past the 8-byte frame header), performatives
//! decoded by `serde_amqp` into `fe2o3-amqp-types`, and frames encoded back.
//!
//! A frame (AMQP 1.0 part 2.3) is `size:u32 doff:u8 type:u8 channel:u16`, an extended header of
//! `doff * 4 - 8` bytes (skipped), then the body: nothing (a heartbeat), or a performative (a
//! described list) followed, for a transfer, by the message bytes.

use bytes::{Buf, BytesMut};
use fe2o3_amqp_types::performatives::Performative;

/// The plain AMQP protocol header (the C# and Node SDKs send it: no SASL layer).
pub const HEADER_AMQP: [u8; 8] = *b"AMQP\x00\x01\x00\x00";
/// The SASL protocol header (the C SDK, with mechanism `MSSBCBS`).
pub const HEADER_SASL: [u8; 8] = *b"AMQP\x03\x01\x00\x00";
/// Bytes of the fixed frame header.
pub const FRAME_HEADER_BYTES: usize = 8;
/// A frame of type AMQP (0) or SASL (1).
const TYPE_AMQP: u8 = 0;
const TYPE_SASL: u8 = 1;

/// What the first 8 bytes of a connection asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    Amqp,
    Sasl,
}

/// Why bytes are not AMQP as the hub serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The first 8 bytes are no AMQP 1.0 or SASL header (TLS header included: TLS is on the
    /// socket, not negotiated in AMQP).
    BadHeader([u8; 8]),
    /// A frame's size field is below 8 or its data offset points outside it.
    BadFrame(&'static str),
    /// A frame larger than the limit (`max`), refused before it is buffered.
    TooLarge { size: usize, max: usize },
    /// A frame type other than AMQP and SASL.
    UnknownType(u8),
    /// The body is no performative `serde_amqp` can read.
    Decode(String),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::BadHeader(h) => write!(f, "not an AMQP 1.0 protocol header: {h:02x?}"),
            FrameError::BadFrame(why) => write!(f, "malformed frame: {why}"),
            FrameError::TooLarge { size, max } => write!(f, "frame of {size} bytes, over the limit of {max}"),
            FrameError::UnknownType(t) => write!(f, "unknown frame type {t}"),
            FrameError::Decode(e) => write!(f, "undecodable performative: {e}"),
        }
    }
}

/// Reads the protocol header once 8 bytes are there (`Ok(None)`: not yet). An early
/// mismatch is refused as soon as a byte differs.
pub fn header(buf: &[u8]) -> Result<Option<Header>, FrameError> {
    let have = buf.len().min(8);
    let mut got = [0u8; 8];
    got[..have].copy_from_slice(&buf[..have]);
    let prefix_of = |h: &[u8; 8]| h[..have] == buf[..have];
    if !prefix_of(&HEADER_AMQP) && !prefix_of(&HEADER_SASL) {
        return Err(FrameError::BadHeader(got));
    }
    if have < 8 {
        return Ok(None);
    }
    Ok(Some(if got == HEADER_AMQP { Header::Amqp } else { Header::Sasl }))
}

/// One frame: its type, channel and body (performative plus payload), header stripped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    pub sasl: bool,
    pub channel: u16,
    /// Empty for a heartbeat.
    pub body: bytes::Bytes,
}

/// Splits one complete frame off the front of `buf` (`Ok(None)`: incomplete). `max_bytes`
/// bounds the size field, checked from the first 4 bytes before the rest is waited for.
pub fn split(buf: &mut BytesMut, max_bytes: usize) -> Result<Option<RawFrame>, FrameError> {
    if buf.len() < FRAME_HEADER_BYTES {
        return Ok(None);
    }
    let size = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    let doff = usize::from(buf[4]) * 4;
    let kind = buf[5];
    if size < FRAME_HEADER_BYTES {
        return Err(FrameError::BadFrame("size below 8"));
    }
    if size > max_bytes {
        return Err(FrameError::TooLarge { size, max: max_bytes });
    }
    if doff < FRAME_HEADER_BYTES || doff > size {
        return Err(FrameError::BadFrame("data offset outside the frame"));
    }
    if kind != TYPE_AMQP && kind != TYPE_SASL {
        return Err(FrameError::UnknownType(kind));
    }
    if buf.len() < size {
        return Ok(None);
    }
    let channel = u16::from_be_bytes([buf[6], buf[7]]);
    let mut frame = buf.split_to(size);
    frame.advance(doff);
    Ok(Some(RawFrame { sasl: kind == TYPE_SASL, channel, body: frame.freeze() }))
}

/// The length of the described list at the start of `body` (a performative or SASL frame
/// body), so a transfer's payload can be told apart from it.
pub fn described_len(body: &[u8]) -> Result<usize, FrameError> {
    let bad = |why| FrameError::BadFrame(why);
    if body.first() != Some(&0x00) {
        return Err(bad("body is no described type"));
    }
    let descriptor = match body.get(1) {
        Some(0x53) => 3,
        Some(0x80) => 10,
        Some(0xa3) => 3 + usize::from(*body.get(2).ok_or(bad("truncated descriptor"))?),
        _ => return Err(bad("unknown descriptor encoding")),
    };
    let rest = body.get(descriptor..).ok_or(bad("truncated descriptor"))?;
    let value = match rest.first() {
        Some(0x45) => 1,
        Some(0xc0) => 2 + usize::from(*rest.get(1).ok_or(bad("truncated list"))?),
        Some(0xd0) => {
            let size = rest.get(1..5).ok_or(bad("truncated list"))?;
            5 + u32::from_be_bytes([size[0], size[1], size[2], size[3]]) as usize
        }
        _ => return Err(bad("performative is no list")),
    };
    let len = descriptor.checked_add(value).ok_or(bad("list length overflows"))?;
    if len > body.len() {
        return Err(bad("list longer than the frame"));
    }
    Ok(len)
}

/// Decodes an AMQP frame body into its performative and the payload after it (a transfer's
/// message bytes; empty otherwise).
pub fn performative(body: &bytes::Bytes) -> Result<(Performative, bytes::Bytes), FrameError> {
    let len = described_len(body)?;
    let performative: Performative =
        serde_amqp::from_slice(&body[..len]).map_err(|e| FrameError::Decode(e.to_string()))?;
    Ok((performative, body.slice(len..)))
}

/// Appends one frame: `body` (an encoded performative or SASL body) and `payload`.
pub fn put_frame(out: &mut BytesMut, sasl: bool, channel: u16, body: &[u8], payload: &[u8]) {
    let size = FRAME_HEADER_BYTES + body.len() + payload.len();
    // Frames the hub writes are bounded by the peer's max-frame-size (transfers are split by
    // the caller) and never near 4 GiB.
    let size = u32::try_from(size).unwrap_or(u32::MAX);
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(&[2, if sasl { TYPE_SASL } else { TYPE_AMQP }]);
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(body);
    out.extend_from_slice(payload);
}

/// Appends a performative frame (a transfer's `payload` after it).
pub fn put_performative(out: &mut BytesMut, channel: u16, performative: &Performative, payload: &[u8]) {
    // Serializing the crate's own performative types into a Vec cannot fail.
    let body = serde_amqp::to_vec(performative).unwrap_or_default();
    put_frame(out, false, channel, &body, payload);
}

/// Appends an empty frame (a heartbeat, AMQP 1.0 2.4.5).
pub fn put_heartbeat(out: &mut BytesMut) {
    put_frame(out, false, 0, &[], &[]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use fe2o3_amqp_types::performatives::Close;

    #[test]
    fn header_is_recognized_early_and_refused_early() {
        assert_eq!(header(b"AMQ"), Ok(None));
        assert_eq!(header(&HEADER_AMQP), Ok(Some(Header::Amqp)));
        assert_eq!(header(&HEADER_SASL), Ok(Some(Header::Sasl)));
        assert!(header(b"AMQP\x02").is_err());
        assert!(header(b"\x10\x20").is_err());
    }

    #[test]
    fn frames_round_trip_and_split_in_pieces() {
        let mut out = BytesMut::new();
        put_performative(&mut out, 3, &Performative::Close(Close { error: None }), b"");
        put_heartbeat(&mut out);
        let bytes = out.clone();
        for cut in 0..bytes.len() {
            let mut buf = BytesMut::from(&bytes[..cut]);
            while let Ok(Some(_)) = split(&mut buf, 512) {}
        }
        let mut buf = out;
        let frame = split(&mut buf, 512).unwrap().unwrap();
        assert_eq!(frame.channel, 3);
        let (p, payload) = performative(&frame.body).unwrap();
        assert!(matches!(p, Performative::Close(_)));
        assert!(payload.is_empty());
        let beat = split(&mut buf, 512).unwrap().unwrap();
        assert!(beat.body.is_empty());
        assert_eq!(split(&mut buf, 512), Ok(None));
    }

    #[test]
    fn oversized_and_malformed_frames_are_refused_before_buffering() {
        let mut buf = BytesMut::from(&[0u8, 1, 0, 0, 2, 0, 0, 0][..]);
        assert!(matches!(split(&mut buf, 512), Err(FrameError::TooLarge { .. })));
        let mut buf = BytesMut::from(&[0u8, 0, 0, 4, 2, 0, 0, 0][..]);
        assert!(split(&mut buf, 512).is_err());
        let mut buf = BytesMut::from(&[0u8, 0, 0, 8, 9, 0, 0, 0][..]);
        assert!(split(&mut buf, 512).is_err());
        let mut buf = BytesMut::from(&[0u8, 0, 0, 8, 2, 7, 0, 0][..]);
        assert_eq!(split(&mut buf, 512), Err(FrameError::UnknownType(7)));
        assert!(performative(&bytes::Bytes::from_static(&[0x00, 0x53, 0x18, 0xd0, 0xff, 0xff, 0xff, 0xff])).is_err());
        assert!(performative(&bytes::Bytes::from_static(&[0x00, 0x53, 0x99, 0x45])).is_err());
    }
}
