//! The tail cache: the most recently appended records, kept in memory so that readers which
//! keep up with the log (a connected module, a live cloud link) get them without reading the
//! file back and decoding it. Readers that fall behind the cache read the disk as before.
//!
//! A cached record's payload is a slice of the buffer its record (or its batch) was encoded
//! and written from, not a copy: one copy of a message less per append. The bytes bound counts
//! whole encoded records, so what the cache keeps alive stays near it (a batch's buffer lives
//! until its last record leaves the cache).
//!
//! Bounded by records and bytes; the oldest go first. A record is cached when it is appended,
//! before readers are woken, so a reader that keeps up never misses one.

use std::collections::VecDeque;
use std::sync::Arc;

use super::record::{NewRecord, StoredRecord};

/// Records kept: a few seconds of a busy gateway, enough for readers woken by the append to
/// catch up from memory.
pub const TAIL_RECORDS_MAX: usize = 1024;
/// Bytes of encoded records kept (1 MiB): small next to a Pi's RAM, and it bounds a burst of large
/// messages.
pub const TAIL_BYTES_MAX: usize = 1024 * 1024;

#[derive(Debug, Default)]
pub struct TailCache {
    records: VecDeque<Arc<StoredRecord>>,
    /// The encoded length of each, in the same order.
    lens: VecDeque<usize>,
    bytes: usize,
}

/// What the cache knows about the records after a given seq.
pub enum Lookup<'a> {
    /// The cache holds every record after it: these (possibly none).
    Covered(&'a VecDeque<Arc<StoredRecord>>),
    /// Some of them are only on disk.
    Miss,
}

impl TailCache {
    /// Adds the record just appended as `seq` (seqs arrive in order), `encoded_len` bytes long
    /// in the log; `payload` holds its payload (a slice of the written buffer).
    pub fn push(&mut self, seq: u64, record: &NewRecord<'_>, encoded_len: usize, payload: bytes::Bytes) {
        let stored = StoredRecord {
            seq,
            enqueued_unix_ms: record.enqueued_unix_ms,
            endpoints: record.endpoints.to_vec(),
            source: record.source.to_string(),
            properties: record.properties.to_string(),
            payload,
        };
        debug_assert_eq!(&stored.payload[..], record.payload);
        self.bytes += encoded_len;
        self.records.push_back(Arc::new(stored));
        self.lens.push_back(encoded_len);
        while self.records.len() > TAIL_RECORDS_MAX || (self.bytes > TAIL_BYTES_MAX && self.records.len() > 1) {
            self.records.pop_front();
            if let Some(len) = self.lens.pop_front() {
                self.bytes -= len;
            }
        }
    }

    /// Everything after `scanned`, if the cache reaches back that far; `last_appended` tells
    /// whether the cache is current (it is, as long as every append went through `push`).
    pub fn after(&self, scanned: u64, last_appended: u64) -> Lookup<'_> {
        let newest = self.records.back().map_or(0, |r| r.seq);
        if newest != last_appended {
            return Lookup::Miss;
        }
        match self.records.front() {
            Some(oldest) if oldest.seq <= scanned + 1 => Lookup::Covered(&self.records),
            None if scanned >= last_appended => Lookup::Covered(&self.records),
            _ if scanned >= newest => Lookup::Covered(&self.records),
            _ => Lookup::Miss,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::record::EndpointRef;

    fn push(cache: &mut TailCache, seq: u64, payload: &[u8]) {
        let endpoints = [EndpointRef { id: 1, priority: 0, ttl_secs: 0 }];
        let record = NewRecord { enqueued_unix_ms: 0, endpoints: &endpoints, source: "s", properties: "p", payload };
        // Larger than a record may be: the bound is what is tested here.
        let len = crate::store::record::encoded_len(&record).unwrap_or(payload.len());
        cache.push(seq, &record, len, bytes::Bytes::copy_from_slice(payload));
    }

    #[test]
    fn covers_readers_that_keep_up_and_misses_those_behind() {
        let mut cache = TailCache::default();
        for seq in 10..20 {
            push(&mut cache, seq, b"x");
        }
        assert!(matches!(cache.after(9, 19), Lookup::Covered(_)));
        assert!(matches!(cache.after(15, 19), Lookup::Covered(_)));
        assert!(matches!(cache.after(19, 19), Lookup::Covered(_)));
        assert!(matches!(cache.after(8, 19), Lookup::Miss));
        // Something appended without the cache: never trust it.
        assert!(matches!(cache.after(15, 20), Lookup::Miss));
    }

    #[test]
    fn stays_within_its_bounds() {
        let mut cache = TailCache::default();
        for seq in 1..=(TAIL_RECORDS_MAX as u64 + 10) {
            push(&mut cache, seq, b"x");
        }
        assert_eq!(cache.records.len(), TAIL_RECORDS_MAX);
        let big = vec![0u8; TAIL_BYTES_MAX / 2 + 1];
        push(&mut cache, 5000, &big);
        push(&mut cache, 5001, &big);
        assert!(cache.bytes <= TAIL_BYTES_MAX);
        assert_eq!(cache.records.back().map(|r| r.seq), Some(5001));
    }
}
