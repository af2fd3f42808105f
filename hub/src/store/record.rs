//! The on-disk record: a fixed header, then the endpoints it is routed to, its source, its
//! property bag and its payload. Pure code over byte slices, no IO.
//!
//! ```text
//! offset size  field
//!      0    2  magic             0x7E01 (format version 1)
//!      2    2  flags             none defined yet; any set bit is refused
//!      4    4  body_len          bytes after the header
//!      8    4  crc32c            over bytes 0..8 and 12..28+body_len (all but itself)
//!     12    8  seq
//!     20    8  enqueued_unix_ms
//!     28       body: count u8, count × (endpoint id u16, priority u8, ttl_secs u32),
//!                    source (u32 len + UTF-8), properties (u32 len + UTF-8), payload (u32 len + bytes)
//! ```
//! All integers are little-endian. The checksum also covers magic, flags and length (not only the
//! bytes after it), and the body must end exactly at `body_len`, so a flipped length is caught by
//! either check rather than misframing the log.
//!
//! [`peek`] validates a whole record and borrows its fields (readers filter by endpoint without
//! allocating); [`decode`] copies them out. "Need more bytes" ([`DecodeError::Incomplete`]) is
//! kept apart from [`DecodeError::Corrupt`]: at the end of the last segment the first is a torn
//! write, anywhere else both mean damage.

use std::fmt;

use bytes::Bytes;

use super::crc32c::Crc32c;

/// First two bytes of every record; the low byte is the format version.
pub const MAGIC: u16 = 0x7E01;
/// Flag bits this version understands (none). A reader refuses records from a newer writer
/// rather than guessing at their layout.
pub const FLAGS_KNOWN: u16 = 0;
/// Size of the fixed header.
pub const HEADER_BYTES: usize = 28;
/// Size of one endpoint entry in the body (id u16, priority u8, ttl_secs u32).
pub const ENDPOINT_ENTRY_BYTES: usize = 7;
/// Most endpoints one record can be routed to: the count is a `u8` on disk. A message matching
/// more routes than this is a configuration no gateway runs (IoT Hub allows 100 routes in all).
pub const ENDPOINTS_PER_RECORD_MAX: usize = u8::MAX as usize;
/// Longest route source ("/messages/modules/{module id ≤ 64}/outputs/{output name}"): 1 KiB
/// leaves room for long output names and bounds what one record can make us allocate.
pub const SOURCE_BYTES_MAX: usize = 1024;
/// Longest property bag: the bag travels in the MQTT topic, which is at most `u16::MAX` bytes.
pub const PROPERTIES_BYTES_MAX: usize = 64 * 1024;
/// Largest payload: IoT Hub's 256 KiB device-to-cloud limit plus 64 KiB slack, so a hub
/// configured with a somewhat larger MQTT packet limit can still spill to the store.
pub const PAYLOAD_BYTES_MAX: usize = 256 * 1024 + 64 * 1024;
/// Largest record, header included. Checked before any buffer is sized from a length read
/// from disk, so a corrupt length costs at most this much memory.
pub const RECORD_BYTES_MAX: usize = 512 * 1024;
/// Largest body a header may announce.
pub const BODY_BYTES_MAX: usize = RECORD_BYTES_MAX - HEADER_BYTES;
/// Smallest body: one endpoint and three empty strings.
pub const BODY_BYTES_MIN: usize = 1 + ENDPOINT_ENTRY_BYTES + 3 * 4;

// The largest valid record must fit under the record limit.
const _: () = assert!(
    HEADER_BYTES
        + 1
        + ENDPOINTS_PER_RECORD_MAX * ENDPOINT_ENTRY_BYTES
        + 3 * 4
        + SOURCE_BYTES_MAX
        + PROPERTIES_BYTES_MAX
        + PAYLOAD_BYTES_MAX
        <= RECORD_BYTES_MAX
);
// body_len is a u32 on disk.
const _: () = assert!(BODY_BYTES_MAX <= u32::MAX as usize);

/// One endpoint a record is routed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointRef {
    /// Id from the store's endpoint registry.
    pub id: u16,
    /// Route priority (0 is the highest, as in IoT Edge).
    pub priority: u8,
    /// Time to live for this endpoint; 0 means the store's default TTL.
    pub ttl_secs: u32,
}

/// A record to append; borrows everything so the broker's buffers are not copied twice.
#[derive(Debug, Clone, Copy)]
pub struct NewRecord<'a> {
    pub enqueued_unix_ms: u64,
    pub endpoints: &'a [EndpointRef],
    /// Route source path, e.g. "/messages/modules/m1/outputs/o1".
    pub source: &'a str,
    /// URL-encoded IoT Hub property bag, e.g. "%24.mid=1&a=b".
    pub properties: &'a str,
    pub payload: &'a [u8],
}

/// A record read back from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    pub seq: u64,
    pub enqueued_unix_ms: u64,
    pub endpoints: Vec<EndpointRef>,
    pub source: String,
    pub properties: String,
    pub payload: Bytes,
}

impl StoredRecord {
    /// This record's entry for `endpoint_id` (its priority and TTL), if it is routed there.
    pub fn endpoint(&self, endpoint_id: u16) -> Option<&EndpointRef> {
        self.endpoints.iter().find(|endpoint| endpoint.id == endpoint_id)
    }
}

/// A validated record borrowed from a buffer.
#[derive(Debug, Clone, Copy)]
pub struct RecordView<'a> {
    pub seq: u64,
    pub enqueued_unix_ms: u64,
    endpoints: &'a [u8],
    pub source: &'a str,
    pub properties: &'a str,
    pub payload: &'a [u8],
}

impl<'a> RecordView<'a> {
    /// The endpoints this record is routed to, in stored order.
    pub fn endpoints(&self) -> impl Iterator<Item = EndpointRef> + 'a {
        self.endpoints.chunks_exact(ENDPOINT_ENTRY_BYTES).map(|entry| EndpointRef {
            id: u16::from_le_bytes([entry[0], entry[1]]),
            priority: entry[2],
            ttl_secs: u32::from_le_bytes([entry[3], entry[4], entry[5], entry[6]]),
        })
    }

    /// This record's entry for `endpoint_id`, if it is routed there.
    pub fn endpoint(&self, endpoint_id: u16) -> Option<EndpointRef> {
        self.endpoints().find(|endpoint| endpoint.id == endpoint_id)
    }

    /// Copies the record out of the buffer.
    pub fn to_stored(&self) -> StoredRecord {
        StoredRecord {
            seq: self.seq,
            enqueued_unix_ms: self.enqueued_unix_ms,
            endpoints: self.endpoints().collect(),
            source: self.source.to_string(),
            properties: self.properties.to_string(),
            payload: Bytes::copy_from_slice(self.payload),
        }
    }
}

/// Why bytes are not a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// A valid prefix of a record: more bytes are needed (a torn write at the end of a log).
    Incomplete,
    /// Not a record: the reason names the check that failed.
    Corrupt(&'static str),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Incomplete => write!(f, "record: incomplete (torn write)"),
            DecodeError::Corrupt(reason) => write!(f, "record: corrupt ({reason})"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Why a record cannot be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EncodeError {
    NoEndpoints,
    TooManyEndpoints { count: usize },
    SourceTooLong { bytes: usize },
    PropertiesTooLong { bytes: usize },
    PayloadTooLarge { bytes: usize },
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::NoEndpoints => write!(f, "record: routed to no endpoint"),
            EncodeError::TooManyEndpoints { count } => {
                write!(f, "record: routed to {count} endpoints, at most {ENDPOINTS_PER_RECORD_MAX}")
            }
            EncodeError::SourceTooLong { bytes } => {
                write!(f, "record: source of {bytes} bytes, at most {SOURCE_BYTES_MAX}")
            }
            EncodeError::PropertiesTooLong { bytes } => {
                write!(f, "record: property bag of {bytes} bytes, at most {PROPERTIES_BYTES_MAX}")
            }
            EncodeError::PayloadTooLarge { bytes } => {
                write!(f, "record: payload of {bytes} bytes, at most {PAYLOAD_BYTES_MAX}")
            }
        }
    }
}

impl std::error::Error for EncodeError {}

/// Checks a record against the limits and returns its encoded size.
pub fn encoded_len(record: &NewRecord<'_>) -> Result<usize, EncodeError> {
    let count = record.endpoints.len();
    if count == 0 {
        return Err(EncodeError::NoEndpoints);
    }
    if count > ENDPOINTS_PER_RECORD_MAX {
        return Err(EncodeError::TooManyEndpoints { count });
    }
    if record.source.len() > SOURCE_BYTES_MAX {
        return Err(EncodeError::SourceTooLong { bytes: record.source.len() });
    }
    if record.properties.len() > PROPERTIES_BYTES_MAX {
        return Err(EncodeError::PropertiesTooLong { bytes: record.properties.len() });
    }
    if record.payload.len() > PAYLOAD_BYTES_MAX {
        return Err(EncodeError::PayloadTooLarge { bytes: record.payload.len() });
    }
    Ok(HEADER_BYTES
        + 1
        + count * ENDPOINT_ENTRY_BYTES
        + 3 * 4
        + record.source.len()
        + record.properties.len()
        + record.payload.len())
}

/// Appends the encoded record to `out` and returns how many bytes it added.
pub fn encode(seq: u64, record: &NewRecord<'_>, out: &mut Vec<u8>) -> Result<usize, EncodeError> {
    let total = encoded_len(record)?;
    let start = out.len();
    out.reserve(total);
    // Lengths below are bounded by the checks in encoded_len, far under u32::MAX.
    let body_len = u32::try_from(total - HEADER_BYTES).unwrap_or(u32::MAX);
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&FLAGS_KNOWN.to_le_bytes());
    out.extend_from_slice(&body_len.to_le_bytes());
    out.extend_from_slice(&[0; 4]); // checksum, filled in below
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&record.enqueued_unix_ms.to_le_bytes());
    out.push(u8::try_from(record.endpoints.len()).unwrap_or(u8::MAX));
    for endpoint in record.endpoints {
        out.extend_from_slice(&endpoint.id.to_le_bytes());
        out.push(endpoint.priority);
        out.extend_from_slice(&endpoint.ttl_secs.to_le_bytes());
    }
    for field in [record.source.as_bytes(), record.properties.as_bytes(), record.payload] {
        out.extend_from_slice(&u32::try_from(field.len()).unwrap_or(u32::MAX).to_le_bytes());
        out.extend_from_slice(field);
    }
    let crc = record_checksum(&out[start..]);
    out[start + 8..start + 12].copy_from_slice(&crc.to_le_bytes());
    debug_assert_eq!(out.len() - start, total);
    debug_assert!(peek(&out[start..]).is_ok(), "an encoded record must decode");
    Ok(total)
}

/// Validates the record at the start of `buf` and borrows its fields; also returns its length.
pub fn peek(buf: &[u8]) -> Result<(RecordView<'_>, usize), DecodeError> {
    let total = frame_len(buf)?;
    let record = &buf[..total];
    let stored_crc = u32::from_le_bytes([record[8], record[9], record[10], record[11]]);
    if record_checksum(record) != stored_crc {
        return Err(DecodeError::Corrupt("checksum mismatch"));
    }
    let seq = read_u64(record, 12);
    let enqueued_unix_ms = read_u64(record, 20);
    let mut body = Fields { rest: &record[HEADER_BYTES..] };
    let count = usize::from(body.take(1)?[0]);
    if count == 0 {
        return Err(DecodeError::Corrupt("no endpoints"));
    }
    let endpoints = body.take(count * ENDPOINT_ENTRY_BYTES)?;
    let source = body.string(SOURCE_BYTES_MAX, "source too long")?;
    let properties = body.string(PROPERTIES_BYTES_MAX, "properties too long")?;
    let payload = body.bytes(PAYLOAD_BYTES_MAX, "payload too large")?;
    if !body.rest.is_empty() {
        return Err(DecodeError::Corrupt("bytes after payload"));
    }
    Ok((RecordView { seq, enqueued_unix_ms, endpoints, source, properties, payload }, total))
}

/// Decodes the record at the start of `buf`; also returns how many bytes it took.
pub fn decode(buf: &[u8]) -> Result<(StoredRecord, usize), DecodeError> {
    peek(buf).map(|(view, used)| (view.to_stored(), used))
}

/// The total record length the header at the start of `buf` announces. Magic, flags and the
/// length bounds are checked as soon as their bytes are present, so garbage is `Corrupt`
/// without waiting for more bytes; fewer than 8 bytes of a valid prefix are `Incomplete`.
pub fn announced_len(buf: &[u8]) -> Result<usize, DecodeError> {
    if buf.len() >= 2 && u16::from_le_bytes([buf[0], buf[1]]) != MAGIC {
        return Err(DecodeError::Corrupt("bad magic"));
    }
    if buf.len() >= 4 && u16::from_le_bytes([buf[2], buf[3]]) & !FLAGS_KNOWN != 0 {
        return Err(DecodeError::Corrupt("unknown flags"));
    }
    if buf.len() < 8 {
        return Err(DecodeError::Incomplete);
    }
    let body_len = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let body_len = usize::try_from(body_len).map_err(|_| DecodeError::Corrupt("body too long"))?;
    if body_len > BODY_BYTES_MAX {
        return Err(DecodeError::Corrupt("body too long"));
    }
    if body_len < BODY_BYTES_MIN {
        return Err(DecodeError::Corrupt("body too short"));
    }
    Ok(HEADER_BYTES + body_len)
}

/// The length of the record at the start of `buf` once all of it is present.
fn frame_len(buf: &[u8]) -> Result<usize, DecodeError> {
    let total = announced_len(buf)?;
    if buf.len() < total {
        return Err(DecodeError::Incomplete);
    }
    Ok(total)
}

/// CRC-32C of a whole record except its checksum field.
fn record_checksum(record: &[u8]) -> u32 {
    let mut crc = Crc32c::new();
    crc.update(&record[..8]);
    crc.update(&record[12..]);
    crc.finish()
}

fn read_u64(buf: &[u8], at: usize) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(bytes)
}

/// The not yet parsed part of a body whose checksum already matched. Lengths are still checked
/// against both the remaining bytes and the field's limit: a checksum only proves the bytes are
/// what some writer wrote, not that the writer obeyed the limits.
struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    fn take(&mut self, count: usize) -> Result<&'a [u8], DecodeError> {
        if count > self.rest.len() {
            return Err(DecodeError::Corrupt("field runs past the body"));
        }
        let (taken, rest) = self.rest.split_at(count);
        self.rest = rest;
        Ok(taken)
    }

    fn bytes(&mut self, max: usize, too_long: &'static str) -> Result<&'a [u8], DecodeError> {
        let len = self.take(4)?;
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]);
        let len = usize::try_from(len).map_err(|_| DecodeError::Corrupt(too_long))?;
        if len > max {
            return Err(DecodeError::Corrupt(too_long));
        }
        self.take(len)
    }

    fn string(&mut self, max: usize, too_long: &'static str) -> Result<&'a str, DecodeError> {
        let bytes = self.bytes(max, too_long)?;
        std::str::from_utf8(bytes).map_err(|_| DecodeError::Corrupt("string is not UTF-8"))
    }
}
