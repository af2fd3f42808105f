//! Per-endpoint checkpoints: "every record up to and including this seq is done for this
//! endpoint". Commits are lock-free (one atomic max per call) and persisted lazily: the sync
//! thread writes the file at most once per [`HOUSEKEEPING_INTERVAL_MS`], and on close. After a
//! crash delivery resumes at the last persisted checkpoint, so at most that window is delivered
//! twice (at-least-once), never skipped.
//!
//! File `checkpoints.ckp`: magic `TECK`, version u16, count u16, count × (endpoint id u16,
//! seq u64), CRC-32C u32 of everything before it. Replaced atomically.
//!
//! [`HOUSEKEEPING_INTERVAL_MS`]: super::config::HOUSEKEEPING_INTERVAL_MS

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use super::crc32c;
use super::error::StoreError;
use super::fsio;
use super::registry::ENDPOINTS_MAX;

/// The checkpoint file's name in the store directory.
pub const CHECKPOINT_FILE: &str = "checkpoints.ckp";

const MAGIC: &[u8; 4] = b"TECK";
const VERSION: u16 = 1;
const ENTRY_BYTES: usize = 2 + 8;
const FILE_BYTES_MAX: usize = 4 + 2 + 2 + ENDPOINTS_MAX * ENTRY_BYTES + 4;

/// How the checkpoints were found on open.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum CheckpointLoad {
    /// Read back, for this many endpoints.
    Loaded { endpoints: usize },
    /// No file: every endpoint starts at the oldest record.
    #[default]
    Missing,
    /// The file was unreadable (the reason says why): every endpoint starts at the oldest
    /// record, so records may be delivered again but none is skipped.
    Corrupt(String),
}

/// Committed and persisted checkpoints of every endpoint id.
#[derive(Debug)]
pub struct Checkpoints {
    committed: Box<[AtomicU64]>,
    persisted: Box<[AtomicU64]>,
    dirty: AtomicBool,
    /// Serialises writers of the file (the sync thread and `flush_checkpoints` callers).
    flushing: Mutex<()>,
}

impl Checkpoints {
    pub fn new(entries: &[(u16, u64)]) -> Checkpoints {
        let checkpoints = Checkpoints {
            committed: (0..ENDPOINTS_MAX).map(|_| AtomicU64::new(0)).collect(),
            persisted: (0..ENDPOINTS_MAX).map(|_| AtomicU64::new(0)).collect(),
            dirty: AtomicBool::new(false),
            flushing: Mutex::new(()),
        };
        for &(id, seq) in entries {
            if let (Some(committed), Some(persisted)) =
                (checkpoints.committed.get(usize::from(id)), checkpoints.persisted.get(usize::from(id)))
            {
                committed.store(seq, Ordering::Relaxed);
                persisted.store(seq, Ordering::Relaxed);
            }
        }
        checkpoints
    }

    /// Reads the checkpoint file in `dir`; entries for ids at or above `registered` are dropped.
    pub fn load(dir: &Path, registered: usize) -> Result<(Vec<(u16, u64)>, CheckpointLoad), StoreError> {
        match fsio::read_bounded(&dir.join(CHECKPOINT_FILE), FILE_BYTES_MAX)? {
            None => Ok((Vec::new(), CheckpointLoad::Missing)),
            Some(bytes) => match decode(&bytes) {
                Ok(mut entries) => {
                    entries.retain(|&(id, _)| usize::from(id) < registered);
                    let endpoints = entries.len();
                    Ok((entries, CheckpointLoad::Loaded { endpoints }))
                }
                Err(reason) => Ok((Vec::new(), CheckpointLoad::Corrupt(reason.to_string()))),
            },
        }
    }

    /// Records that everything up to `seq` is done for `id` (never moves backwards).
    pub fn commit(&self, id: u16, seq: u64) {
        if let Some(committed) = self.committed.get(usize::from(id)) {
            if committed.fetch_max(seq, Ordering::AcqRel) < seq {
                self.dirty.store(true, Ordering::Release);
            }
        }
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

    /// Writes the committed checkpoints of the first `registered` ids if any changed since the
    /// last write; returns whether it wrote.
    pub fn flush(&self, dir: &Path, registered: usize) -> Result<bool, StoreError> {
        let _writer = self.flushing.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Cleared before the snapshot: a commit racing with it sets the flag again.
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(false);
        }
        let entries: Vec<(u16, u64)> = (0..registered.min(ENDPOINTS_MAX))
            .filter_map(|index| u16::try_from(index).ok())
            .map(|id| (id, self.committed(id)))
            .collect();
        if let Err(error) = fsio::replace_atomically(dir, CHECKPOINT_FILE, &encode(&entries)) {
            self.dirty.store(true, Ordering::Release);
            return Err(error);
        }
        for &(id, seq) in &entries {
            self.persisted[usize::from(id)].fetch_max(seq, Ordering::AcqRel);
        }
        Ok(true)
    }
}

/// Deletes the checkpoint file (when the endpoint ids it names are no longer valid).
pub fn discard(dir: &Path) -> Result<(), StoreError> {
    let path = dir.join(CHECKPOINT_FILE);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(StoreError::io("delete", &path, error)),
    }
}

pub fn encode(entries: &[(u16, u64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + entries.len() * ENTRY_BYTES);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&u16::try_from(entries.len()).unwrap_or(u16::MAX).to_le_bytes());
    for &(id, seq) in entries {
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&seq.to_le_bytes());
    }
    let crc = crc32c::checksum(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

pub fn decode(bytes: &[u8]) -> Result<Vec<(u16, u64)>, &'static str> {
    if bytes.len() > FILE_BYTES_MAX {
        return Err("checkpoint file too large");
    }
    if bytes.len() < 12 {
        return Err("checkpoint file truncated");
    }
    let (content, crc) = bytes.split_at(bytes.len() - 4);
    if crc32c::checksum(content) != u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]) {
        return Err("checkpoint checksum mismatch");
    }
    if &content[..4] != MAGIC {
        return Err("checkpoints: bad magic");
    }
    if u16::from_le_bytes([content[4], content[5]]) != VERSION {
        return Err("checkpoints: unknown version");
    }
    let count = usize::from(u16::from_le_bytes([content[6], content[7]]));
    let entries = &content[8..];
    if entries.len() != count * ENTRY_BYTES {
        return Err("checkpoints: count does not match the length");
    }
    Ok(entries
        .chunks_exact(ENTRY_BYTES)
        .map(|entry| {
            let mut seq = [0u8; 8];
            seq.copy_from_slice(&entry[2..]);
            (u16::from_le_bytes([entry[0], entry[1]]), u64::from_le_bytes(seq))
        })
        .collect())
}
