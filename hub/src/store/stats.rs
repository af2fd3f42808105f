//! Counters of everything the store appended, dropped, refused, expired and reclaimed, and the
//! snapshot `Store::stats` returns.

use std::sync::atomic::{AtomicU64, Ordering};

/// Store-wide counters since open.
#[derive(Debug, Default)]
pub struct Counters {
    pub appended: AtomicU64,
    /// Records deleted by DropOldest before every endpoint had them.
    pub dropped_full: AtomicU64,
    pub dropped_segments: AtomicU64,
    /// Highest seq deleted by DropOldest: readers that jump over seqs up to it report them.
    pub dropped_through: AtomicU64,
    /// Appends refused by RejectNew.
    pub rejected_full: AtomicU64,
    /// Appends refused because the file system was full.
    pub rejected_no_space: AtomicU64,
    /// Records readers skipped because they had expired.
    pub expired_skipped: AtomicU64,
    /// Segments deleted because they were done or expired.
    pub reclaimed_segments: AtomicU64,
    /// Damaged regions readers stepped over while running.
    pub damaged_skipped: AtomicU64,
    /// Group commits done (each fsyncs every file holding unsynced records).
    pub fsyncs: AtomicU64,
}

impl Counters {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// A snapshot of the store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Bytes of segment files on disk (never above `max_bytes` after an append).
    pub bytes_on_disk: u64,
    pub segments: usize,
    /// Records appended since open.
    pub records_appended: u64,
    /// Records in the segments on disk.
    pub records_stored: u64,
    /// Records deleted by DropOldest before every endpoint had them, and their segments.
    pub dropped_full: u64,
    pub dropped_segments: u64,
    /// Appends refused by RejectNew.
    pub rejected_full: u64,
    /// Appends refused because the file system was full.
    pub rejected_no_space: u64,
    /// Records readers skipped because they had expired.
    pub expired_skipped: u64,
    /// Segments deleted because every endpoint was past them or all their records expired.
    pub reclaimed_segments: u64,
    /// Damaged regions readers stepped over since open (recovery reports its own).
    pub damaged_skipped: u64,
    /// Group commits done since open: far fewer than appends when appenders are concurrent.
    pub fsyncs: u64,
    /// Oldest seq still stored and last seq appended (`None` while the store is empty).
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// Every record up to this seq is durable per the fsync policy.
    pub durable_seq: u64,
    pub endpoints: Vec<EndpointStats>,
}

/// One registered endpoint's progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointStats {
    pub id: u16,
    pub name: String,
    /// Last seq committed, and the part of it already on disk.
    pub checkpoint: u64,
    pub persisted_checkpoint: u64,
    /// Upper bound of records still to deliver: seqs after the checkpoint up to the last seq
    /// routed to this endpoint (records routed elsewhere in between are counted too).
    pub pending_estimate: u64,
}

/// What one reader skipped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReaderStats {
    /// Records for this endpoint skipped because they had expired.
    pub expired_skipped: u64,
    /// Log positions jumped over because DropOldest deleted their segment before this reader
    /// got there (an upper bound of this endpoint's lost records).
    pub dropped_skipped: u64,
    /// Damaged regions stepped over.
    pub damaged_skipped: u64,
}
