//! Crash-safe metadata files that can be rewritten with the disk full: two checksummed copies
//! ("slots") of the content in one preallocated file, overwritten in place, alternately.
//!
//! File: two slots of `slot_bytes` each (so the file is `2 × slot_bytes` long, which is how a
//! reader finds the slot size). Slot: magic `TESL`, version u16, reserved u16, generation u64,
//! payload length u32, payload, CRC-32C u32 of everything before it; the rest of the slot is
//! left as it was.
//!
//! - A write goes to the slot that does not hold the newest copy, with the next generation, so
//!   a torn or lost write leaves the previous copy intact: there is always a previous good copy.
//! - Writes never allocate: the slots are preallocated (zeroes written at creation), and an
//!   in-place `pwrite` into allocated blocks needs no free space. Only growing a slot (content
//!   larger than the slot) replaces the file, and only that can fail with the disk full.
//! - On open the valid slot with the highest generation wins; a damaged slot is repaired at
//!   once from the other (and reported), so one bit flip never costs the content.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::crc32c;
use super::error::StoreError;
use super::fsio;

const MAGIC: &[u8; 4] = b"TESL";
const VERSION: u16 = 1;
/// Magic, version, reserved, generation, length.
const HEADER_BYTES: usize = 4 + 2 + 2 + 8 + 4;
/// Header and trailing CRC.
pub const SLOT_OVERHEAD_BYTES: usize = HEADER_BYTES + 4;

/// How a slot file was found on open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotLoad {
    /// Both copies valid (or a fresh file).
    Intact,
    /// One copy was damaged (the reason says how) and was rewritten from the other.
    Repaired(String),
    /// Neither copy was valid (the reasons say why): the content is lost.
    Lost(String),
    /// No file: created empty.
    Created,
    /// A file in the format before slots, converted.
    Converted,
}

/// An open slot file.
#[derive(Debug)]
pub struct SlotFile {
    file: File,
    path: PathBuf,
    dir: PathBuf,
    name: &'static str,
    slot_bytes: usize,
    slot_bytes_max: usize,
    /// Slot holding the newest copy, and its generation (0: none written yet).
    newest: usize,
    generation: u64,
}

/// The decoded content of one slot.
pub(crate) struct Copy {
    generation: u64,
    pub(crate) payload: Vec<u8>,
}

pub(crate) fn decode_slot(slot: &[u8]) -> Result<Option<Copy>, String> {
    if slot.iter().all(|byte| *byte == 0) {
        return Ok(None); // Preallocated, never written.
    }
    if slot.len() < SLOT_OVERHEAD_BYTES {
        return Err("slot shorter than its header".to_string());
    }
    if &slot[..4] != MAGIC {
        return Err("bad magic".to_string());
    }
    if u16::from_le_bytes([slot[4], slot[5]]) != VERSION {
        return Err("unknown version".to_string());
    }
    let mut generation = [0u8; 8];
    generation.copy_from_slice(&slot[8..16]);
    let len = u32::from_le_bytes([slot[16], slot[17], slot[18], slot[19]]) as usize;
    let Some(end) = HEADER_BYTES.checked_add(len).filter(|end| end + 4 <= slot.len()) else {
        return Err(format!("length {len} does not fit the slot"));
    };
    let crc = u32::from_le_bytes([slot[end], slot[end + 1], slot[end + 2], slot[end + 3]]);
    if crc32c::checksum(&slot[..end]) != crc {
        return Err("checksum mismatch".to_string());
    }
    Ok(Some(Copy { generation: u64::from_le_bytes(generation), payload: slot[HEADER_BYTES..end].to_vec() }))
}

fn encode_slot(generation: u64, payload: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&generation.to_le_bytes());
    out.extend_from_slice(&u32::try_from(payload.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(payload);
    let crc = crc32c::checksum(out);
    out.extend_from_slice(&crc.to_le_bytes());
}

impl SlotFile {
    /// Opens `dir/name`, creating it (slots of `slot_bytes_min`) if missing. Returns the newest
    /// valid content (`None` if there is none) and how the file was found. `legacy` converts a
    /// whole file in an older format into content, or says it is not one.
    pub fn open(
        dir: &Path,
        name: &'static str,
        slot_bytes_min: usize,
        slot_bytes_max: usize,
        legacy: impl Fn(&[u8]) -> Option<Vec<u8>>,
    ) -> Result<(SlotFile, Option<Vec<u8>>, SlotLoad), StoreError> {
        let path = dir.join(name);
        let Some(bytes) = fsio::read_bounded(&path, 2 * slot_bytes_max)? else {
            let file = SlotFile::create(dir, name, slot_bytes_min, slot_bytes_max, None)?;
            return Ok((file, None, SlotLoad::Created));
        };
        if let Some(payload) = legacy(&bytes) {
            let file = SlotFile::create(dir, name, slot_bytes_min, slot_bytes_max, Some(&payload))?;
            return Ok((file, Some(payload), SlotLoad::Converted));
        }
        let slot_bytes = bytes.len() / 2;
        let (first, second) = bytes.split_at(slot_bytes);
        let copies = [decode_slot(first), decode_slot(&second[..slot_bytes])];
        let valid = |index: usize| copies[index].as_ref().ok().and_then(Option::as_ref);
        let newest = match (valid(0), valid(1)) {
            (Some(a), Some(b)) => Some(usize::from(b.generation > a.generation)),
            (Some(_), None) => Some(0),
            (None, Some(_)) => Some(1),
            (None, None) => None,
        };
        let reasons: Vec<String> = copies
            .iter()
            .enumerate()
            .filter_map(|(index, copy)| copy.as_ref().err().map(|reason| format!("copy {}: {reason}", index + 1)))
            .collect();
        let Some(newest) = newest else {
            let any_written = copies.iter().any(|copy| !matches!(copy, Ok(None)));
            let file = SlotFile::create(dir, name, slot_bytes_min.max(slot_bytes), slot_bytes_max, None)?;
            let load = if any_written {
                SlotLoad::Lost(if reasons.is_empty() { "file too short".to_string() } else { reasons.join("; ") })
            } else {
                SlotLoad::Intact
            };
            return Ok((file, None, load));
        };
        let Some(Copy { generation, payload }) = copies.into_iter().nth(newest).and_then(Result::ok).flatten() else {
            unreachable!("newest is a valid copy");
        };
        let file =
            OpenOptions::new().read(true).write(true).open(&path).map_err(|e| StoreError::io("open", &path, e))?;
        let mut slots =
            SlotFile { file, path, dir: dir.to_path_buf(), name, slot_bytes, slot_bytes_max, newest, generation };
        let load = if reasons.is_empty() {
            SlotLoad::Intact
        } else {
            // Two good copies again before anything else can go wrong.
            slots.write(&payload, true)?;
            SlotLoad::Repaired(reasons.join("; "))
        };
        Ok((slots, Some(payload), load))
    }

    /// Writes a new file (atomically replacing any old one) with slots of `slot_bytes`, both
    /// holding `payload` if given.
    fn create(
        dir: &Path,
        name: &'static str,
        slot_bytes: usize,
        slot_bytes_max: usize,
        payload: Option<&[u8]>,
    ) -> Result<SlotFile, StoreError> {
        let path = dir.join(name);
        let mut content = vec![0u8; 2 * slot_bytes];
        let mut generation = 0;
        if let Some(payload) = payload {
            let mut slot = Vec::new();
            for index in 0..2 {
                generation += 1;
                encode_slot(generation, payload, &mut slot);
                if slot.len() > slot_bytes {
                    return Err(StoreError::Config(format!(
                        "{name}: content of {} bytes exceeds its slot",
                        slot.len()
                    )));
                }
                content[index * slot_bytes..index * slot_bytes + slot.len()].copy_from_slice(&slot);
            }
        }
        fsio::replace_atomically(dir, name, &content)?;
        let file =
            OpenOptions::new().read(true).write(true).open(&path).map_err(|e| StoreError::io("open", &path, e))?;
        Ok(SlotFile { file, path, dir: dir.to_path_buf(), name, slot_bytes, slot_bytes_max, newest: 1, generation })
    }

    /// Writes `payload` as the newest copy, over the older one; fsyncs it if `sync`. Needs no
    /// free space unless the payload outgrows the slot (then the file is replaced with slots
    /// twice as large, up to the maximum).
    pub fn write(&mut self, payload: &[u8], sync: bool) -> Result<(), StoreError> {
        let needed = payload.len() + SLOT_OVERHEAD_BYTES;
        if needed > self.slot_bytes {
            if needed > self.slot_bytes_max {
                return Err(StoreError::Config(format!(
                    "{}: content of {needed} bytes exceeds the largest slot ({} bytes)",
                    self.name, self.slot_bytes_max
                )));
            }
            let grown = needed.next_power_of_two().max(2 * self.slot_bytes).min(self.slot_bytes_max);
            let generation = self.generation;
            *self = SlotFile::create(&self.dir, self.name, grown, self.slot_bytes_max, Some(payload))?;
            self.generation += generation;
            return Ok(());
        }
        let target = 1 - self.newest;
        let mut slot = Vec::with_capacity(needed);
        encode_slot(self.generation + 1, payload, &mut slot);
        let offset = (target * self.slot_bytes) as u64;
        self.file.write_all_at(&slot, offset).map_err(|e| StoreError::io("write", &self.path, e))?;
        if sync {
            self.file.sync_data().map_err(|e| StoreError::io("fsync", &self.path, e))?;
        }
        self.newest = target;
        self.generation += 1;
        Ok(())
    }
}

impl SlotFile {
    /// Writes `payload` into both slots, one after the other, each fsynced: for content where
    /// the previous copy is not good enough (a registry whose newest name must not be lost).
    /// A crash in between leaves one old and one new copy, both valid.
    pub fn write_both(&mut self, payload: &[u8]) -> Result<(), StoreError> {
        self.write(payload, true)?;
        self.write(payload, true)
    }
}

/// Writes a zero-filled file of `bytes` (preallocating its blocks) and fsyncs it.
pub fn preallocate(path: &Path, bytes: usize) -> Result<File, StoreError> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(|e| StoreError::io("create", path, e))?;
    file.write_all(&vec![0u8; bytes]).and_then(|()| file.sync_all()).map_err(|e| StoreError::io("write", path, e))?;
    Ok(file)
}
