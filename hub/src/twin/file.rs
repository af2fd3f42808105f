//! Twin files: their names and their format (pure).
//!
//! - **Names.** The twin of an identity lives in `{stem}.twin`. The stem is the identity with
//!   every byte outside `A-Z a-z 0-9 - _ . : + @ = , ( ) ! ' $` written as `%XX` (so `/`
//!   becomes `%2F`: `gw%2F$edgeHub.twin`). An identity whose stem would not fit a file name gets
//!   `~` and the 16 hex digits of its FNV-1a hash instead; every file names its identity, so a
//!   load checks that the file is the one that identity would have.
//! - **Format.** One line of compact JSON, then a checksum line `fnv1a64:{16 hex digits}` (the
//!   FNV-1a 64 hash of the JSON line), each ending in `\n`. A file without both, or whose hash
//!   does not match, is damaged. The JSON of a twin (keys sorted):
//!   `{"delivered":{"desired":{…},"version":2},"desired":{…},"desiredVersion":3,"format":1,
//!   "id":"gw/mod","reported":{…},"reportedVersion":7}`; `delivered` is `null` before the
//!   first delivery and leaves out `desired` when it is the current version.
//! - The `versions` file holds `{"ceiling":N,"format":1}` in the same envelope: every version
//!   in any twin file is below `N`.

use std::fmt::Write;
use std::sync::Arc;

use serde_json::{json, Value};

use super::json::{document_len, Document};
use super::limits::{DOCUMENT_BYTES_MAX, VERSION_LEASE, VERSION_MAX};
use super::model::{Snapshot, Twin};

/// Suffix of a twin file.
pub const TWIN_SUFFIX: &str = ".twin";
/// Suffix added to a file being replaced; left behind only by a crash mid-write.
pub const TEMP_SUFFIX: &str = ".tmp";
/// Suffix added to a damaged twin file when it is moved aside for inspection.
pub const DAMAGED_SUFFIX: &str = ".damaged";
/// The file holding the version ceiling.
pub const VERSIONS_FILE: &str = "versions";

const FORMAT: u64 = 1;
const CHECKSUM_PREFIX: &str = "fnv1a64:";
/// Bytes a file name may have (Linux `NAME_MAX`).
const NAME_BYTES_MAX: usize = 255;
/// Longest stem: room for the longest suffixes, `.twin.damaged`.
const STEM_BYTES_MAX: usize = NAME_BYTES_MAX - TWIN_SUFFIX.len() - DAMAGED_SUFFIX.len();
/// Bytes kept as they are in a stem, besides ASCII letters and digits.
const STEM_LITERAL: &[u8] = b"-_.:+@=,()!'$";

/// The file stem of an identity's twin.
pub fn file_stem(id: &str) -> String {
    let mut stem = String::with_capacity(id.len());
    for byte in id.bytes() {
        if byte.is_ascii_alphanumeric() || STEM_LITERAL.contains(&byte) {
            stem.push(char::from(byte));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(stem, "%{byte:02X}");
        }
    }
    if stem.len() > STEM_BYTES_MAX {
        return format!("~{:016x}", fnv1a64(id.as_bytes()));
    }
    stem
}

/// The file of one twin.
pub fn encode_twin(id: &str, twin: &Twin) -> Vec<u8> {
    let delivered = match &twin.delivered {
        None => Value::Null,
        Some(seen) if seen.version == twin.desired_version => json!({ "version": seen.version }),
        Some(seen) => json!({ "version": seen.version, "desired": Value::Object(Document::clone(&seen.desired)) }),
    };
    let body = json!({
        "format": FORMAT,
        "id": id,
        "desiredVersion": twin.desired_version,
        "desired": Value::Object(Document::clone(&twin.desired)),
        "reportedVersion": twin.reported_version,
        "reported": Value::Object(Document::clone(&twin.reported)),
        "delivered": delivered,
        "pendingUp": twin.pending_up.as_deref().map_or(Value::Null, |p| Value::Object(Document::clone(p))),
    });
    seal(&body)
}

/// A twin file read back: the identity it names and the twin, or why it is damaged.
pub fn decode_twin(bytes: &[u8]) -> Result<(String, Twin), String> {
    let mut fields = unseal(bytes)?;
    let id = match fields.remove("id") {
        Some(Value::String(id)) => id,
        _ => return Err("no identity".to_string()),
    };
    let desired_version = take_version(&fields, "desiredVersion")?;
    let desired = Arc::new(take_document(&mut fields, "desired")?);
    let reported_version = take_version(&fields, "reportedVersion")?;
    let reported = Arc::new(take_document(&mut fields, "reported")?);
    let delivered = match fields.remove("delivered") {
        None | Some(Value::Null) => None,
        Some(Value::Object(mut seen)) => Some(take_snapshot(&mut seen, desired_version, &desired)?),
        Some(_) => return Err("\"delivered\" is not an object".to_string()),
    };
    // Absent in files written before the cloud side existed. One that is not a bounded object
    // is dropped (logged), not a reason to lose the twin: the reported properties it was
    // merged from are in the file.
    let pending_up = match fields.remove("pendingUp") {
        Some(Value::Object(pending)) if document_len(&pending) <= DOCUMENT_BYTES_MAX => Some(Arc::new(pending)),
        None | Some(Value::Null) => None,
        Some(_) => {
            log::warn!("twin of {id}: its pending reported changes are unreadable; the whole reported document is sent instead");
            Some(Arc::new(Document::clone(&reported)))
        }
    };
    let twin = Twin { desired, desired_version, reported, reported_version, delivered, previous: None, pending_up };
    Ok((id, twin))
}

/// The `versions` file.
pub fn encode_versions(ceiling: u64) -> Vec<u8> {
    seal(&json!({ "format": FORMAT, "ceiling": ceiling }))
}

/// The ceiling read back from the `versions` file, or why it is damaged.
pub fn decode_versions(bytes: &[u8]) -> Result<u64, String> {
    let fields = unseal(bytes)?;
    match fields.get("ceiling").and_then(Value::as_u64) {
        Some(ceiling) if ceiling <= VERSION_MAX + VERSION_LEASE => Ok(ceiling),
        _ => Err("no valid \"ceiling\"".to_string()),
    }
}

/// FNV-1a, 64 bits: not cryptographic; catches torn, truncated and flipped bytes.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(PRIME))
}

/// A sealed file: the body as one line of compact JSON, then `fnv1a64:{16 lower-case hex}` of
/// that line. Shared by the twin files and the device-scope cache (`crate::cloud::scope`).
pub fn seal(body: &Value) -> Vec<u8> {
    // Compact JSON escapes newlines inside strings, so the body is one line.
    let line = body.to_string();
    let hash = fnv1a64(line.as_bytes());
    format!("{line}\n{CHECKSUM_PREFIX}{hash:016x}\n").into_bytes()
}

/// The JSON object inside a sealed file, after checking its envelope and format.
pub fn unseal(bytes: &[u8]) -> Result<Document, String> {
    let Some(text) = bytes.strip_suffix(b"\n") else {
        return Err("no final newline (a write cut short?)".to_string());
    };
    let Some(split) = text.iter().rposition(|byte| *byte == b'\n') else {
        return Err("no checksum line".to_string());
    };
    let (line, trailer) = (&text[..split], &text[split + 1..]);
    let expected = trailer
        .strip_prefix(CHECKSUM_PREFIX.as_bytes())
        // Lower-case only (as `seal` writes it), so every flipped bit of the line is a mismatch.
        .filter(|hex| hex.len() == 16 && hex.iter().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b)))
        .and_then(|hex| std::str::from_utf8(hex).ok())
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        .ok_or_else(|| "malformed checksum line".to_string())?;
    if fnv1a64(line) != expected {
        return Err("checksum mismatch".to_string());
    }
    let fields = match serde_json::from_slice(line) {
        Ok(Value::Object(fields)) => fields,
        Ok(_) => return Err("not a JSON object".to_string()),
        Err(error) => return Err(format!("not JSON: {error}")),
    };
    match fields.get("format").and_then(Value::as_u64) {
        Some(FORMAT) => Ok(fields),
        _ => Err(format!("not format {FORMAT}")),
    }
}

fn take_version(fields: &Document, name: &str) -> Result<u64, String> {
    match fields.get(name).and_then(Value::as_u64) {
        Some(version) if (1..=VERSION_MAX).contains(&version) => Ok(version),
        _ => Err(format!("no valid {name:?}")),
    }
}

fn take_document(fields: &mut Document, name: &str) -> Result<Document, String> {
    match fields.remove(name) {
        Some(Value::Object(document)) if document_len(&document) <= DOCUMENT_BYTES_MAX => Ok(document),
        Some(Value::Object(_)) => Err(format!("{name:?} is over {DOCUMENT_BYTES_MAX} bytes")),
        _ => Err(format!("no {name:?} object")),
    }
}

fn take_snapshot(seen: &mut Document, desired_version: u64, desired: &Arc<Document>) -> Result<Snapshot, String> {
    let version = take_version(seen, "version")?;
    if version > desired_version {
        return Err(format!("delivered version {version} is above the desired version {desired_version}"));
    }
    if version == desired_version {
        return Ok(Snapshot { version, desired: Arc::clone(desired) });
    }
    Ok(Snapshot { version, desired: Arc::new(take_document(seen, "desired")?) })
}
