//! The log's in-memory state and its append path: writing a record at the end of the active
//! segment, rolling to a new segment, keeping the total under `max_bytes`, and deleting
//! segments nobody needs. All of it runs under the store's log mutex.
//!
//! A write is one `pwrite` at the published end of the active segment: one record, or a batch
//! of records that arrived together ([`Log::append_batch`]: one `pwrite` for all of them when
//! they fit the active segment and `max_bytes`, else one at a time). If it fails (disk full,
//! IO error) the file is cut back to that end before the error is returned, so no partial
//! record is ever followed by a good one; if even the cut fails, the next append retries it
//! first. A failed append consumes no seq.
//!
//! With the file system full (`ENOSPC`, `EDQUOT`) an append first tries to make space itself:
//! it seals the active segment (if it holds records) so that it can be reclaimed once
//! delivered, deletes every segment already done, and writes again once. If that fails too the
//! record is refused with [`StoreError::NoSpace`]; since checkpoints are overwritten in place,
//! delivery keeps moving them and housekeeping keeps reclaiming, so appends succeed again by
//! themselves as soon as space is freed.

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::checkpoint::Checkpoints;
use super::config::{FsyncPolicy, FullPolicy, StoreConfig};
use super::error::StoreError;
use super::record::{self, NewRecord};
use super::registry::ENDPOINTS_MAX;
use super::retention::SegmentSummary;
use super::segment::{self, as_u64, Segment, SegmentShared};
use super::stats::Counters;

/// One "dropped the oldest segment" line per interval: a small `max_bytes` under load would
/// otherwise write hundreds a second.
static DROPPED: tinyedge_platform::logger::RateLimit =
    tinyedge_platform::logger::RateLimit::new(tinyedge_platform::logger::RATE_LIMIT_INTERVAL);

/// What segment deletion consults: persisted checkpoints of the registered endpoints.
#[derive(Debug, Clone, Copy)]
pub struct Retention<'a> {
    pub checkpoints: &'a Checkpoints,
    pub registered: usize,
}

/// The segments and the file being appended to.
#[derive(Debug)]
pub struct Log {
    /// Oldest first; never empty; the last one is the active segment.
    pub segments: VecDeque<Segment>,
    /// The active segment's file.
    pub active: Arc<File>,
    pub next_seq: u64,
    /// Sum of the segments' file sizes.
    pub bytes: u64,
    /// Sealed segments whose data the sync thread has not fsynced yet.
    pub unsynced: Vec<(Arc<File>, PathBuf)>,
    /// A segment file was created since the directory was last fsynced.
    pub dir_unsynced: bool,
    /// Per endpoint id, the last seq routed to it (for pending estimates).
    pub last_routed: Vec<u64>,
    /// A failed write could not be cut back; retried before the next write.
    needs_truncate: bool,
    /// What is being written: one record, or one batch (bounded by the active segment). Handed
    /// to the tail cache after a write ([`Log::take_written`]), so a new one is made per append.
    encode_buf: Vec<u8>,
    /// Test hook: the next write stops after this many bytes and fails like a full disk.
    #[cfg(test)]
    pub fail_next_write_after: Option<usize>,
    /// Test hook: every write fails like a full disk.
    #[cfg(test)]
    pub fail_writes_no_space: bool,
}

/// Whether an IO error means the file system (or the user's quota) is full.
fn is_no_space(error: &std::io::Error) -> bool {
    const ENOSPC: i32 = 28;
    const EDQUOT: i32 = 122;
    matches!(error.raw_os_error(), Some(ENOSPC | EDQUOT)) || error.kind() == ErrorKind::StorageFull
}

impl Log {
    pub fn new(segments: VecDeque<Segment>, active: File, next_seq: u64, last_routed: Vec<u64>) -> Log {
        debug_assert!(!segments.is_empty());
        debug_assert_eq!(last_routed.len(), ENDPOINTS_MAX);
        let bytes = segments.iter().map(|segment| segment.file_bytes).sum();
        Log {
            segments,
            active: Arc::new(active),
            next_seq,
            bytes,
            unsynced: Vec::new(),
            dir_unsynced: false,
            last_routed,
            needs_truncate: false,
            encode_buf: Vec::new(),
            #[cfg(test)]
            fail_next_write_after: None,
            #[cfg(test)]
            fail_writes_no_space: false,
        }
    }

    /// The last seq appended (0 when none ever was).
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    fn active_segment(&self) -> &Segment {
        // The list is never empty: open creates an active segment and deletion spares it.
        &self.segments[self.segments.len() - 1]
    }

    fn active_len(&self) -> u64 {
        self.active_segment().shared.published_len()
    }

    /// Appends `record`, whose encoded size is `len`, and returns its seq.
    pub fn append(
        &mut self,
        config: &StoreConfig,
        retention: Retention<'_>,
        counters: &Counters,
        record: &NewRecord<'_>,
        len: usize,
    ) -> Result<u64, StoreError> {
        self.repair_failed_write()?;
        self.make_room(config, retention, counters, as_u64(len), record.enqueued_unix_ms)?;
        if self.active_len() > 0 && self.active_len() + as_u64(len) > config.segment_bytes {
            self.roll(config)?;
        }
        let seq = self.next_seq;
        self.encode_buf.clear();
        record::encode(seq, record, &mut self.encode_buf)?;
        debug_assert_eq!(self.encode_buf.len(), len);
        let mut offset = self.active_len();
        if let Err(error) = self.write_or_cut(offset) {
            if !is_no_space(&error) {
                return Err(StoreError::io("append to", &self.active_segment().shared.path, error));
            }
            self.free_space(config, retention, counters, record.enqueued_unix_ms);
            offset = self.active_len();
            if let Err(error) = self.write_or_cut(offset) {
                counters.rejected_no_space.fetch_add(1, Ordering::Relaxed);
                let path = self.active_segment().shared.path.clone();
                return Err(if is_no_space(&error) {
                    StoreError::NoSpace { path, source: error }
                } else {
                    StoreError::io("append to", &path, error)
                });
            }
        }
        let len = as_u64(len);
        let active = self.segments.len() - 1;
        let segment = &mut self.segments[active];
        segment.shared.publish(offset + len);
        segment.file_bytes = offset + len;
        let endpoints = record.endpoints.iter().map(|endpoint| (endpoint.id, endpoint.ttl_secs));
        segment.summary.add(seq, record.enqueued_unix_ms, endpoints, config.default_ttl_secs);
        for endpoint in record.endpoints {
            if let Some(last) = self.last_routed.get_mut(usize::from(endpoint.id)) {
                *last = seq;
            }
        }
        self.bytes += len;
        self.next_seq += 1;
        Ok(seq)
    }

    /// Appends `records` (their encoded sizes in `lens`) with one write, if they all fit the
    /// active segment and `max_bytes` as they are and the write succeeds; returns the first
    /// seq. `None`: nothing was appended (nothing consumed, the file as before), so the caller
    /// appends them one at a time, which rolls, makes room and handles a full disk per record.
    pub fn append_batch(&mut self, config: &StoreConfig, records: &[NewRecord<'_>], lens: &[usize]) -> Option<u64> {
        let total: u64 = lens.iter().map(|len| as_u64(*len)).sum();
        let offset = self.active_len();
        let fits = !self.needs_truncate
            && self.bytes + total <= config.max_bytes
            && (offset + total <= config.segment_bytes || offset == 0 && records.len() == 1);
        if !fits {
            return None;
        }
        self.encode_buf.clear();
        for (index, record) in records.iter().enumerate() {
            record::encode(self.next_seq + as_u64(index), record, &mut self.encode_buf).ok()?;
        }
        debug_assert_eq!(as_u64(self.encode_buf.len()), total);
        if self.write_or_cut(offset).is_err() {
            // Cut back (or marked for it); the per-record path reports and handles it.
            return None;
        }
        let first = self.next_seq;
        let active = self.segments.len() - 1;
        let segment = &mut self.segments[active];
        segment.shared.publish(offset + total);
        segment.file_bytes = offset + total;
        for (index, record) in records.iter().enumerate() {
            let seq = first + as_u64(index);
            let endpoints = record.endpoints.iter().map(|endpoint| (endpoint.id, endpoint.ttl_secs));
            segment.summary.add(seq, record.enqueued_unix_ms, endpoints, config.default_ttl_secs);
            for endpoint in record.endpoints {
                if let Some(last) = self.last_routed.get_mut(usize::from(endpoint.id)) {
                    *last = seq;
                }
            }
        }
        self.bytes += total;
        self.next_seq += as_u64(records.len());
        Some(first)
    }

    /// The bytes of what the last successful append wrote (one record, or a batch in order),
    /// handed over without a copy: the tail cache keeps slices of them.
    pub fn take_written(&mut self) -> bytes::Bytes {
        bytes::Bytes::from(std::mem::take(&mut self.encode_buf))
    }

    /// Writes the encoded record at `offset`; on failure cuts the file back to `offset`.
    fn write_or_cut(&mut self, offset: u64) -> std::io::Result<()> {
        let Err(error) = self.write(offset) else { return Ok(()) };
        if let Err(cut) = self.active.set_len(offset) {
            log::error!(
                "store: cannot cut {} back after a failed write: {cut}",
                self.active_segment().shared.path.display()
            );
            self.needs_truncate = true;
        }
        Err(error)
    }

    /// With the disk full: seals the active segment if it holds records (so it can go once
    /// delivered) and deletes what is done. Failures here are part of being full; the retried
    /// write reports.
    fn free_space(&mut self, config: &StoreConfig, retention: Retention<'_>, counters: &Counters, now_unix_ms: u64) {
        if self.active_len() > 0 {
            if let Err(error) = self.roll(config) {
                log::debug!("{error} (sealing the active segment with the disk full)");
            }
        }
        if let Err(error) = self.reclaim(retention, counters, now_unix_ms) {
            log::debug!("{error} (reclaiming with the disk full)");
        }
    }

    fn write(&mut self, offset: u64) -> std::io::Result<()> {
        #[cfg(test)]
        if self.fail_writes_no_space {
            return Err(std::io::Error::from_raw_os_error(28)); // ENOSPC
        }
        #[cfg(test)]
        if let Some(prefix) = self.fail_next_write_after.take() {
            let prefix = prefix.min(self.encode_buf.len());
            self.active.write_all_at(&self.encode_buf[..prefix], offset)?;
            return Err(std::io::Error::from_raw_os_error(28)); // ENOSPC
        }
        self.active.write_all_at(&self.encode_buf, offset)
    }

    fn repair_failed_write(&mut self) -> Result<(), StoreError> {
        if self.needs_truncate {
            let len = self.active_len();
            self.active
                .set_len(len)
                .map_err(|error| StoreError::io("truncate", &self.active_segment().shared.path, error))?;
            self.needs_truncate = false;
        }
        Ok(())
    }

    /// Makes the total fit `len` more bytes under `max_bytes`: first by deleting segments nobody
    /// needs, then per the full policy. The new record's enqueue time stands in for "now" when
    /// judging expiry (same clock, and it keeps this path free of clock reads).
    fn make_room(
        &mut self,
        config: &StoreConfig,
        retention: Retention<'_>,
        counters: &Counters,
        len: u64,
        now_unix_ms: u64,
    ) -> Result<(), StoreError> {
        if self.bytes + len <= config.max_bytes {
            return Ok(());
        }
        self.reclaim(retention, counters, now_unix_ms)?;
        if self.bytes + len <= config.max_bytes {
            return Ok(());
        }
        if config.when_full == FullPolicy::RejectNew {
            counters.rejected_full.fetch_add(1, Ordering::Relaxed);
            return Err(StoreError::Full { max_bytes: config.max_bytes });
        }
        while self.bytes + len > config.max_bytes {
            if self.segments.len() == 1 {
                if self.active_len() == 0 {
                    break; // Cannot happen: a record is at most half of max_bytes (validated).
                }
                self.roll(config)?;
            }
            let dropped = self.delete_front()?;
            let records = dropped.summary.records;
            counters.dropped_full.fetch_add(records, Ordering::Relaxed);
            counters.dropped_segments.fetch_add(1, Ordering::Relaxed);
            if let Some(last_seq) = dropped.summary.last_seq {
                counters.dropped_through.fetch_max(last_seq, Ordering::AcqRel);
            }
            tinyedge_platform::log_limited!(
                DROPPED,
                log::Level::Warn,
                "store: full at {} bytes; dropped {} with {records} records (seq {}..={})",
                config.max_bytes,
                dropped.shared.path.display(),
                dropped.shared.first_seq,
                dropped.summary.last_seq.unwrap_or(0),
            );
        }
        Ok(())
    }

    /// Deletes every sealed segment whose records are all done (per persisted checkpoints) or
    /// expired; returns how many.
    pub fn reclaim(
        &mut self,
        retention: Retention<'_>,
        counters: &Counters,
        now_unix_ms: u64,
    ) -> Result<usize, StoreError> {
        let mut deleted = 0;
        let mut index = 0;
        while index + 1 < self.segments.len() {
            let summary = &self.segments[index].summary;
            let done_through = |id| retention.checkpoints.persisted_or_done(id, retention.registered);
            if summary.is_reclaimable(done_through, now_unix_ms) {
                self.delete_at(index)?;
                counters.reclaimed_segments.fetch_add(1, Ordering::Relaxed);
                deleted += 1;
            } else {
                index += 1;
            }
        }
        Ok(deleted)
    }

    fn delete_front(&mut self) -> Result<Segment, StoreError> {
        self.delete_at(0)
    }

    fn delete_at(&mut self, index: usize) -> Result<Segment, StoreError> {
        assert!(index + 1 < self.segments.len(), "the active segment is never deleted");
        let path = &self.segments[index].shared.path;
        match fs::remove_file(path) {
            Ok(()) => {}
            Err(error) if error.kind() == ErrorKind::NotFound => {}
            Err(error) => return Err(StoreError::io("delete", path, error)),
        }
        let Some(segment) = self.segments.remove(index) else {
            unreachable!("index checked above");
        };
        segment.shared.mark_deleted();
        self.bytes -= segment.file_bytes;
        Ok(segment)
    }

    /// Seals the active segment and starts a new one at `next_seq`.
    pub fn roll(&mut self, config: &StoreConfig) -> Result<(), StoreError> {
        let (path, file) = segment::create(&config.dir, self.next_seq)?;
        self.active_segment().shared.seal();
        let sealed_path = self.active_segment().shared.path.clone();
        let sealed = std::mem::replace(&mut self.active, Arc::new(file));
        if config.fsync != FsyncPolicy::Never {
            self.unsynced.push((sealed, sealed_path));
            self.dir_unsynced = true;
        }
        self.segments.push_back(Segment {
            shared: Arc::new(SegmentShared::new(self.next_seq, path, 0, false)),
            summary: SegmentSummary::default(),
            file_bytes: 0,
        });
        Ok(())
    }
}
