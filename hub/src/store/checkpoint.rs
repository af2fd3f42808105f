//! Per-endpoint checkpoints ("every record up to and including this seq is done for this
//! endpoint"), the log's head (the last seq appended), and how far each endpoint may have been
//! sent — kept in one preallocated file of fixed cells, overwritten in place.
//!
//! - **Written as acknowledgements arrive**: a commit that moves an endpoint's checkpoint
//!   [`PERSIST_LAG_SEQS`] or more past the one in the file writes its cell at once (one
//!   32-byte `pwrite`; the page cache is enough to survive a crash of the process), the rest
//!   within a housekeeping interval. So after a SIGKILL fewer than `PERSIST_LAG_SEQS`
//!   acknowledged deliveries per endpoint are sent again (none at 1), plus those in flight.
//! - **The head** is written after every append, so recovery knows exactly how many records a
//!   cut tail took with it.
//! - **Sent leases**: before a record past an endpoint's lease is handed to a client, the lease
//!   is moved [`SENT_LEASE_SEQS`] ahead and written; after a restart every record up to the
//!   lease found on disk may have been sent before, and is sent again flagged as a duplicate.
//! - **Two cells per entry**, each with a generation and a CRC: a write goes over the older
//!   cell, so a torn write or a flipped bit leaves the previous value; if both cells are
//!   damaged the endpoint restarts from its oldest record (duplicates, never a loss).
//! - **No new space needed**: the file is written with zeroes at creation, and cells are
//!   overwritten in place, so checkpoints move (and delivered segments are reclaimed) with the
//!   disk full.
//!
//! File `checkpoints.ckp`: a 64-byte header (magic `TECP`, version u16, entries u16, CRC-32C at
//! the end), then `(1 + ENDPOINTS_MAX) × 2` cells of 32 bytes: tag u16, entry index u16,
//! generation u32, seq u64, sent lease u64, reserved u32, CRC-32C u32 of the 28 bytes before.
//! Entry 0 is the head; entry `1 + id` is endpoint `id`. (The format before cells — magic
//! `TECK` — is converted on open.)

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use super::crc32c;
use super::error::StoreError;
use super::fsio;
use super::meta;
use super::registry::ENDPOINTS_MAX;
use super::writer::lock;

/// The checkpoint file's name in the store directory.
pub const CHECKPOINT_FILE: &str = "checkpoints.ckp";
/// How far (in seqs) a committed checkpoint may run ahead of the file before a commit writes
/// it. 1: every commit that moves a checkpoint writes it (one 32-byte `pwrite` into the page
/// cache), so after a crash only deliveries still in flight are sent again — at most the
/// in-flight window, as the fault suite checks.
pub const PERSIST_LAG_SEQS: u64 = 1;
/// How far (in seqs) a sent lease reaches past the record that moved it: one write per this
/// many seqs sent, and at most this many records flagged as duplicates after a restart beyond
/// those really sent.
pub const SENT_LEASE_SEQS: u64 = 64;

const MAGIC: &[u8; 4] = b"TECP";
const VERSION: u16 = 2;
const HEADER_BYTES: usize = 64;
const CELL_BYTES: usize = 32;
const CELL_TAG: u16 = 0x4354;
const ENTRIES: usize = 1 + ENDPOINTS_MAX;
/// The whole file.
pub const FILE_BYTES: usize = HEADER_BYTES + ENTRIES * 2 * CELL_BYTES;
const HEAD_ENTRY: usize = 0;

const _: () = assert!(ENTRIES <= u16::MAX as usize);
const _: () = assert!(PERSIST_LAG_SEQS >= 1 && SENT_LEASE_SEQS >= 1);

const LEGACY_MAGIC: &[u8; 4] = b"TECK";
const LEGACY_ENTRY_BYTES: usize = 2 + 8;

/// How the checkpoints were found on open.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum CheckpointLoad {
    /// Read back, with this many endpoints holding a checkpoint.
    Loaded { endpoints: usize },
    /// Read back; damaged cells were repaired from their second copy, and endpoints whose two
    /// copies were both damaged restart from their oldest record (the reason says what).
    Repaired { endpoints: usize, cells_repaired: usize, endpoints_reset: usize, reason: String },
    /// No file: every endpoint starts at the oldest record.
    #[default]
    Missing,
    /// The file was unreadable as a whole (the reason says why): every endpoint starts at the
    /// oldest record, so records may be delivered again but none is skipped.
    Corrupt(String),
}

/// One cell's content.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Value {
    seq: u64,
    sent: u64,
}

fn encode_cell(index: usize, generation: u32, value: Value) -> [u8; CELL_BYTES] {
    let mut cell = [0u8; CELL_BYTES];
    cell[0..2].copy_from_slice(&CELL_TAG.to_le_bytes());
    cell[2..4].copy_from_slice(&u16::try_from(index).unwrap_or(u16::MAX).to_le_bytes());
    cell[4..8].copy_from_slice(&generation.to_le_bytes());
    cell[8..16].copy_from_slice(&value.seq.to_le_bytes());
    cell[16..24].copy_from_slice(&value.sent.to_le_bytes());
    let crc = crc32c::checksum(&cell[..28]);
    cell[28..32].copy_from_slice(&crc.to_le_bytes());
    cell
}

/// `Ok(None)`: never written; `Ok(Some)`: generation and value; `Err`: damaged.
pub(crate) fn decode_cell(index: usize, cell: &[u8]) -> Result<Option<(u32, Value)>, &'static str> {
    if cell.iter().all(|byte| *byte == 0) {
        return Ok(None);
    }
    let word = |at: usize| u64::from_le_bytes([0, 1, 2, 3, 4, 5, 6, 7].map(|i| cell[at + i]));
    if crc32c::checksum(&cell[..28]) != u32::from_le_bytes([cell[28], cell[29], cell[30], cell[31]]) {
        return Err("checksum mismatch");
    }
    if u16::from_le_bytes([cell[0], cell[1]]) != CELL_TAG
        || usize::from(u16::from_le_bytes([cell[2], cell[3]])) != index
    {
        return Err("cell in the wrong place");
    }
    let generation = u32::from_le_bytes([cell[4], cell[5], cell[6], cell[7]]);
    Ok(Some((generation, Value { seq: word(8), sent: word(16) })))
}

fn header() -> [u8; HEADER_BYTES] {
    let mut header = [0u8; HEADER_BYTES];
    header[..4].copy_from_slice(MAGIC);
    header[4..6].copy_from_slice(&VERSION.to_le_bytes());
    header[6..8].copy_from_slice(&u16::try_from(ENTRIES).unwrap_or(u16::MAX).to_le_bytes());
    let crc = crc32c::checksum(&header[..HEADER_BYTES - 4]);
    header[HEADER_BYTES - 4..].copy_from_slice(&crc.to_le_bytes());
    header
}

/// The open file and each entry's two cell generations (0: empty or damaged).
#[derive(Debug)]
struct CellFile {
    file: File,
    path: PathBuf,
    generations: Vec<[u32; 2]>,
    /// Written since the last fsync.
    unsynced: bool,
}

/// Whether generation `a` is newer than `b`, in serial-number arithmetic, so a cell written
/// more than 2^32 times keeps alternating correctly; 0 is "never written" and newer than nothing.
fn newer(a: u32, b: u32) -> bool {
    a != 0 && (b == 0 || (a.wrapping_sub(b) as i32) > 0)
}

/// The generation after `generation`, skipping 0.
fn next_generation(generation: u32) -> u32 {
    match generation.wrapping_add(1) {
        0 => 1,
        next => next,
    }
}

impl CellFile {
    fn write(&mut self, entry: usize, value: Value) -> Result<(), StoreError> {
        let generations = self.generations[entry];
        // Over the older (or empty) cell, with the generation after the newer one.
        let newest = usize::from(newer(generations[1], generations[0]));
        let target = 1 - newest;
        let generation = next_generation(generations[newest]);
        let cell = encode_cell(entry, generation, value);
        let offset = HEADER_BYTES + (entry * 2 + target) * CELL_BYTES;
        self.file.write_all_at(&cell, offset as u64).map_err(|error| StoreError::io("write", &self.path, error))?;
        self.generations[entry][target] = generation;
        self.unsynced = true;
        Ok(())
    }
}

/// Committed and persisted checkpoints of every endpoint id, their sent leases, and the head.
#[derive(Debug)]
pub struct Checkpoints {
    committed: Box<[AtomicU64]>,
    /// What the file holds.
    persisted: Box<[AtomicU64]>,
    sent_lease: Box<[AtomicU64]>,
    /// The leases found on open: records up to them may have been sent before the restart.
    sent_at_open: Box<[u64]>,
    dirty: AtomicBool,
    file: Mutex<CellFile>,
}

/// What [`Checkpoints::open`] found.
#[derive(Debug)]
pub struct Opened {
    pub checkpoints: Checkpoints,
    pub load: CheckpointLoad,
    /// The last seq appended before the store closed or crashed, if the file knew it.
    pub head: Option<u64>,
    /// The highest checkpoint of any endpoint.
    pub max_seq: u64,
}

impl Checkpoints {
    /// Opens (creating or converting) the checkpoint file in `dir`.
    pub fn open(dir: &Path) -> Result<Opened, StoreError> {
        let path = dir.join(CHECKPOINT_FILE);
        let bytes = fsio::read_bounded(&path, FILE_BYTES)?;
        let mut values = vec![None::<Value>; ENTRIES];
        let mut generations = vec![[0u32; 2]; ENTRIES];
        let mut repairs: Vec<usize> = Vec::new();
        let mut resets = 0;
        let mut reasons: Vec<String> = Vec::new();
        let mut converted = false;
        let load = match bytes {
            None => CheckpointLoad::Missing,
            Some(bytes) if bytes.starts_with(LEGACY_MAGIC) => match decode_legacy(&bytes) {
                Ok(entries) => {
                    for (id, seq) in entries {
                        if let Some(value) = values.get_mut(1 + usize::from(id)) {
                            *value = Some(Value { seq, sent: 0 });
                        }
                    }
                    converted = true;
                    CheckpointLoad::Loaded { endpoints: 0 }
                }
                Err(reason) => CheckpointLoad::Corrupt(reason.to_string()),
            },
            Some(bytes) if bytes.len() != FILE_BYTES => {
                CheckpointLoad::Corrupt(format!("{} bytes long, expected {FILE_BYTES}", bytes.len()))
            }
            Some(bytes) => {
                if bytes[..HEADER_BYTES] != header() {
                    reasons.push("header damaged".to_string());
                }
                for entry in 0..ENTRIES {
                    let cells = [0, 1].map(|cell| {
                        let at = HEADER_BYTES + (entry * 2 + cell) * CELL_BYTES;
                        decode_cell(entry, &bytes[at..at + CELL_BYTES])
                    });
                    let good: Vec<(u32, Value)> = cells.iter().filter_map(|c| c.ok().flatten()).collect();
                    for (cell, decoded) in cells.iter().enumerate() {
                        if let Ok(Some((generation, _))) = decoded {
                            generations[entry][cell] = *generation;
                        }
                    }
                    let damaged = cells.iter().filter(|cell| cell.is_err()).count();
                    values[entry] =
                        good.iter().copied().reduce(|a, b| if newer(b.0, a.0) { b } else { a }).map(|(_, value)| value);
                    if damaged > 0 && values[entry].is_some() {
                        repairs.push(entry);
                    } else if damaged > 0 {
                        resets += 1;
                        reasons.push(if entry == HEAD_ENTRY {
                            "log head lost".to_string()
                        } else {
                            format!("endpoint {} restarts from its oldest record", entry - 1)
                        });
                    }
                }
                let endpoints = values[1..].iter().filter(|value| value.is_some()).count();
                if repairs.is_empty() && resets == 0 && reasons.is_empty() {
                    CheckpointLoad::Loaded { endpoints }
                } else {
                    if !repairs.is_empty() {
                        reasons.insert(0, format!("{} damaged cells repaired from their second copy", repairs.len()));
                    }
                    CheckpointLoad::Repaired {
                        endpoints,
                        cells_repaired: repairs.len(),
                        endpoints_reset: resets,
                        reason: reasons.join("; "),
                    }
                }
            }
        };
        let rewrite = converted
            || !matches!(load, CheckpointLoad::Loaded { .. } | CheckpointLoad::Repaired { .. })
            || reasons.iter().any(|reason| reason == "header damaged");
        let mut file = if rewrite {
            // A new file (zeroes, preallocated) replaces a missing, legacy or unreadable one;
            // the values read are written into it below.
            let temp = dir.join(format!("{CHECKPOINT_FILE}{}", fsio::TEMP_SUFFIX));
            let mut file = meta::preallocate(&temp, FILE_BYTES)?;
            file_write_header(&mut file, &temp)?;
            std::fs::rename(&temp, &path).map_err(|error| StoreError::io("rename", &temp, error))?;
            fsio::sync_dir(dir)?;
            CellFile { file, path, generations: vec![[0u32; 2]; ENTRIES], unsynced: false }
        } else {
            let file =
                OpenOptions::new().read(true).write(true).open(&path).map_err(|e| StoreError::io("open", &path, e))?;
            CellFile { file, path, generations, unsynced: false }
        };
        // Every value read gets two good cells again: both cells in a new file, the damaged
        // one (generation 0, so the next write goes to it) in a repaired entry.
        for (entry, value) in values.iter().enumerate() {
            let Some(value) = value else { continue };
            let writes = if rewrite { 2 } else { usize::from(repairs.contains(&entry)) };
            for _ in 0..writes {
                file.write(entry, *value)?;
            }
        }
        if rewrite || !repairs.is_empty() {
            file.file.sync_data().map_err(|error| StoreError::io("fsync", &file.path, error))?;
            file.unsynced = false;
        }
        let load = match load {
            CheckpointLoad::Loaded { .. } => {
                CheckpointLoad::Loaded { endpoints: values[1..].iter().filter(|value| value.is_some()).count() }
            }
            other => other,
        };
        let endpoint_value = |id: usize| values[1 + id].unwrap_or_default();
        let head = values[HEAD_ENTRY].map(|value| value.seq);
        let max_seq = (0..ENDPOINTS_MAX).map(|id| endpoint_value(id).seq).max().unwrap_or(0);
        let checkpoints = Checkpoints {
            committed: (0..ENDPOINTS_MAX).map(|id| AtomicU64::new(endpoint_value(id).seq)).collect(),
            persisted: (0..ENDPOINTS_MAX).map(|id| AtomicU64::new(endpoint_value(id).seq)).collect(),
            sent_lease: (0..ENDPOINTS_MAX).map(|id| AtomicU64::new(endpoint_value(id).sent)).collect(),
            sent_at_open: (0..ENDPOINTS_MAX).map(|id| endpoint_value(id).sent).collect(),
            dirty: AtomicBool::new(false),
            file: Mutex::new(file),
        };
        Ok(Opened { checkpoints, load, head, max_seq })
    }

    /// Forgets the checkpoints of ids at or above `registered` (left by a registry that lost
    /// names before they were written): a new endpoint given such an id starts afresh.
    pub fn forget_unregistered(&self, registered: usize) -> Result<(), StoreError> {
        let mut file = lock(&self.file);
        for id in registered..ENDPOINTS_MAX {
            let value = Value {
                seq: self.committed[id].load(Ordering::Acquire),
                sent: self.sent_lease[id].load(Ordering::Acquire),
            };
            if value != Value::default() {
                self.committed[id].store(0, Ordering::Release);
                self.persisted[id].store(0, Ordering::Release);
                self.sent_lease[id].store(0, Ordering::Release);
                file.write(1 + id, Value::default())?;
            }
        }
        Ok(())
    }

    /// Records that everything up to `seq` is done for `id` (never moves backwards); writes it
    /// to the file once it runs [`PERSIST_LAG_SEQS`] ahead of what the file holds.
    pub fn commit(&self, id: u16, seq: u64) {
        let index = usize::from(id);
        let Some(committed) = self.committed.get(index) else { return };
        if committed.fetch_max(seq, Ordering::AcqRel) >= seq {
            return;
        }
        self.dirty.store(true, Ordering::Release);
        if seq >= self.persisted[index].load(Ordering::Acquire).saturating_add(PERSIST_LAG_SEQS) {
            if let Err(error) = self.persist(index) {
                // Retried by the next commit and by housekeeping; a crash meanwhile re-sends.
                log::debug!("{error} (checkpoint of endpoint {id})");
            }
        }
    }

    /// Writes endpoint `index`'s committed checkpoint and lease.
    fn persist(&self, index: usize) -> Result<(), StoreError> {
        let mut file = lock(&self.file);
        let value = Value {
            seq: self.committed[index].load(Ordering::Acquire),
            sent: self.sent_lease[index].load(Ordering::Acquire),
        };
        if value.seq <= self.persisted[index].load(Ordering::Acquire) {
            return Ok(());
        }
        file.write(1 + index, value)?;
        self.persisted[index].fetch_max(value.seq, Ordering::AcqRel);
        Ok(())
    }

    /// Record `seq` is about to be handed to a client of endpoint `id`: moves the sent lease
    /// past it (and writes it) first, so a restart knows it may have been sent.
    pub fn note_sent(&self, id: u16, seq: u64) {
        let index = usize::from(id);
        let Some(lease) = self.sent_lease.get(index) else { return };
        if seq <= lease.load(Ordering::Acquire) {
            return;
        }
        let mut file = lock(&self.file);
        if seq <= lease.load(Ordering::Acquire) {
            return;
        }
        let value =
            Value { seq: self.committed[index].load(Ordering::Acquire), sent: seq.saturating_add(SENT_LEASE_SEQS) };
        match file.write(1 + index, value) {
            Ok(()) => {
                lease.store(value.sent, Ordering::Release);
                self.persisted[index].fetch_max(value.seq, Ordering::AcqRel);
            }
            Err(error) => log::debug!("{error} (sent lease of endpoint {id})"),
        }
    }

    /// Whether record `seq` of endpoint `id` may have been sent before this process started.
    pub fn maybe_sent_before(&self, id: u16, seq: u64) -> bool {
        self.sent_at_open.get(usize::from(id)).is_some_and(|lease| seq <= *lease)
    }

    /// Records the log's last appended seq.
    pub fn note_head(&self, seq: u64) -> Result<(), StoreError> {
        lock(&self.file).write(HEAD_ENTRY, Value { seq, sent: 0 })
    }

    pub fn committed(&self, id: u16) -> u64 {
        self.committed.get(usize::from(id)).map_or(0, |seq| seq.load(Ordering::Acquire))
    }

    pub fn persisted(&self, id: u16) -> u64 {
        self.persisted.get(usize::from(id)).map_or(0, |seq| seq.load(Ordering::Acquire))
    }

    /// What retention may assume is done for `id`: its persisted checkpoint, or everything for
    /// an id the registry never handed out (records naming one came from damage or a bug).
    pub fn persisted_or_done(&self, id: u16, registered: usize) -> u64 {
        if usize::from(id) >= registered {
            return u64::MAX;
        }
        self.persisted(id)
    }

    /// Writes the committed checkpoints of the first `registered` ids that are ahead of the
    /// file; fsyncs the file if `sync` and anything was written since the last fsync. Returns
    /// whether it wrote.
    pub fn flush(&self, registered: usize, sync: bool) -> Result<bool, StoreError> {
        let mut wrote = false;
        // Cleared before the pass: a commit racing with it sets the flag again.
        if self.dirty.swap(false, Ordering::AcqRel) {
            for index in 0..registered.min(ENDPOINTS_MAX) {
                if self.committed[index].load(Ordering::Acquire) > self.persisted[index].load(Ordering::Acquire) {
                    if let Err(error) = self.persist(index) {
                        self.dirty.store(true, Ordering::Release);
                        return Err(error);
                    }
                    wrote = true;
                }
            }
        }
        let mut file = lock(&self.file);
        if sync && file.unsynced {
            file.file.sync_data().map_err(|error| StoreError::io("fsync", &file.path, error))?;
            file.unsynced = false;
        }
        Ok(wrote)
    }
}

fn file_write_header(file: &mut File, path: &Path) -> Result<(), StoreError> {
    file.write_all_at(&header(), 0)
        .and_then(|()| file.sync_data())
        .map_err(|error| StoreError::io("write", path, error))
}

/// Reads the format before cells: magic `TECK`, version 1, count u16, count × (id u16,
/// seq u64), CRC-32C.
pub(crate) fn decode_legacy(bytes: &[u8]) -> Result<Vec<(u16, u64)>, &'static str> {
    if bytes.len() < 12 {
        return Err("checkpoint file truncated");
    }
    let (content, crc) = bytes.split_at(bytes.len() - 4);
    if crc32c::checksum(content) != u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]) {
        return Err("checkpoint checksum mismatch");
    }
    if u16::from_le_bytes([content[4], content[5]]) != 1 {
        return Err("checkpoints: unknown version");
    }
    let count = usize::from(u16::from_le_bytes([content[6], content[7]]));
    let entries = &content[8..];
    if entries.len() != count * LEGACY_ENTRY_BYTES {
        return Err("checkpoints: count does not match the length");
    }
    Ok(entries
        .chunks_exact(LEGACY_ENTRY_BYTES)
        .map(|entry| {
            let mut seq = [0u8; 8];
            seq.copy_from_slice(&entry[2..]);
            (u16::from_le_bytes([entry[0], entry[1]]), u64::from_le_bytes(seq))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cell_round_trips_and_any_flipped_bit_is_detected() {
        let value = Value { seq: 1234, sent: 99 };
        let cell = encode_cell(7, 3, value);
        assert_eq!(decode_cell(7, &cell), Ok(Some((3, value))));
        assert!(decode_cell(8, &cell).is_err(), "a cell read at another entry is refused");
        for bit in 0..CELL_BYTES * 8 {
            let mut flipped = cell;
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_cell(7, &flipped).is_err(), "bit {bit}");
        }
        assert_eq!(decode_cell(7, &[0u8; CELL_BYTES]), Ok(None));
    }

    #[test]
    fn generations_alternate_across_the_wrap() {
        assert!(newer(1, u32::MAX) && !newer(u32::MAX, 1));
        assert!(newer(5, 4) && !newer(4, 5) && newer(1, 0) && !newer(0, 1));
        assert_eq!(next_generation(u32::MAX), 1);
        let path = std::env::temp_dir().join(format!("tinyedge-cells-{}", std::process::id()));
        let file = std::fs::File::create(&path).expect("file");
        let mut cells =
            CellFile { file, path: path.clone(), generations: vec![[u32::MAX - 1, u32::MAX]], unsynced: false };
        for seq in 1..=4 {
            let before = cells.generations[0];
            cells.write(0, Value { seq, sent: 0 }).expect("write");
            let after = cells.generations[0];
            assert_eq!(after.iter().filter(|g| !before.contains(g)).count(), 1, "exactly one cell rewritten");
            let newest = if newer(after[0], after[1]) { after[0] } else { after[1] };
            assert!(newer(newest, before[0]) && newer(newest, before[1]), "{before:?} -> {after:?}");
        }
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn legacy_files_decode() {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(LEGACY_MAGIC);
        bytes.extend_from_slice(&1u16.to_le_bytes());
        bytes.extend_from_slice(&1u16.to_le_bytes());
        bytes.extend_from_slice(&3u16.to_le_bytes());
        bytes.extend_from_slice(&42u64.to_le_bytes());
        let crc = crc32c::checksum(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        assert_eq!(decode_legacy(&bytes), Ok(vec![(3, 42)]));
    }
}
