//! A cursor over the log for one endpoint: returns the records routed to it in log order,
//! skipping (and counting) expired ones, reading segment files through a bounded buffer.
//!
//! The reader holds at most one segment file open. It reads only up to the length the appender
//! published, so it never sees a record being written. When the segment it is in is deleted
//! (DropOldest), it lets go of the file at once (an open handle would keep the disk space in
//! use) and continues in the next segment, counting the positions it jumped over. Damage found
//! while running is stepped over like recovery does, by scanning for the next valid record.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::error::StoreError;
use super::record::StoredRecord;
use super::retention::is_expired;
use super::segment::{SegmentCursor, SegmentShared, Step};
use super::stats::ReaderStats;
use super::tail::Lookup;
use super::writer::lock;
use super::Inner;

/// How many times one call tries to open a segment that keeps being deleted under it before
/// returning "nothing now"; deletions are finite, so this only bounds a pathological race.
const OPEN_ATTEMPTS_MAX: usize = 8;

/// A cursor for one endpoint; see [`Store::reader`](super::Store::reader).
#[derive(Debug)]
pub struct EndpointReader {
    inner: Arc<Inner>,
    endpoint_id: u16,
    /// Seq of the last record returned (or the checkpoint the reader started from).
    position: u64,
    /// Seq of the last record passed over, for this endpoint or not.
    scanned: u64,
    current: Option<OpenSegment>,
    /// First seq of the segment last finished or abandoned: the next one comes after it.
    after_segment: Option<u64>,
    stats: ReaderStats,
}

#[derive(Debug)]
struct OpenSegment {
    shared: Arc<SegmentShared>,
    cursor: SegmentCursor,
}

impl EndpointReader {
    pub(super) fn new(inner: Arc<Inner>, endpoint_id: u16) -> EndpointReader {
        let start = inner.checkpoints.committed(endpoint_id);
        EndpointReader {
            inner,
            endpoint_id,
            position: start,
            scanned: start,
            current: None,
            after_segment: None,
            stats: ReaderStats::default(),
        }
    }

    pub fn endpoint_id(&self) -> u16 {
        self.endpoint_id
    }

    /// Seq of the last record returned (at first: the committed checkpoint it started after).
    pub fn position(&self) -> u64 {
        self.position
    }

    /// What this reader skipped so far.
    pub fn stats(&self) -> ReaderStats {
        self.stats
    }

    /// Continues after `seq` (e.g. back to the checkpoint, to deliver again after a failure).
    pub fn seek_after(&mut self, seq: u64) {
        self.position = seq;
        self.scanned = seq;
        self.current = None;
        self.after_segment = None;
    }

    /// The next record routed to this endpoint with seq > position that has not expired at
    /// `now_unix_ms`; `None` at the end of the log (wait on [`Store::appended`] for more).
    ///
    /// [`Store::appended`]: super::Store::appended
    pub fn next(&mut self, now_unix_ms: u64) -> Result<Option<Arc<StoredRecord>>, StoreError> {
        if let Some(answer) = self.from_tail(now_unix_ms) {
            return Ok(answer);
        }
        loop {
            if self.current.as_ref().is_some_and(|open| open.shared.is_deleted()) {
                self.abandon_current();
            }
            if self.current.is_none() {
                match self.open_next()? {
                    Some(open) => self.current = Some(open),
                    None => return Ok(None),
                }
            }
            let Some(open) = self.current.as_mut() else {
                return Ok(None);
            };
            // Sealed is read before the length: if sealed, the length read after it is final.
            let sealed = open.shared.is_sealed();
            let limit = open.shared.published_len();
            let endpoint_id = self.endpoint_id;
            let default_ttl_secs = self.inner.config.default_ttl_secs;
            let scanned = &mut self.scanned;
            let mut expired = 0u64;
            let step = open
                .cursor
                .next(limit, |view, _offset| {
                    if view.seq <= *scanned {
                        return None;
                    }
                    *scanned = view.seq;
                    let endpoint = view.endpoint(endpoint_id)?;
                    if is_expired(view.enqueued_unix_ms, endpoint.ttl_secs, default_ttl_secs, now_unix_ms) {
                        expired += 1;
                        return None;
                    }
                    Some(Arc::new(view.to_stored()))
                })
                .map_err(|error| StoreError::io("read", &open.shared.path, error))?;
            self.stats.expired_skipped += expired;
            self.inner.counters.expired_skipped.fetch_add(expired, Ordering::Relaxed);
            match step {
                Step::Found(record) => {
                    self.position = record.seq;
                    return Ok(Some(record));
                }
                Step::End if sealed => self.abandon_current(),
                Step::End => return Ok(None),
                Step::Torn { offset } | Step::Corrupt { offset, .. } => {
                    self.stats.damaged_skipped += 1;
                    self.inner.counters.damaged_skipped.fetch_add(1, Ordering::Relaxed);
                    let floor = self.scanned;
                    let resumed = open
                        .cursor
                        .resync(offset + 1, limit, |view| view.seq > floor)
                        .map_err(|error| StoreError::io("read", &open.shared.path, error))?;
                    log::warn!(
                        "store: {} damaged at offset {offset}; reader for endpoint {endpoint_id} skips it",
                        open.shared.path.display()
                    );
                    open.cursor.seek(resumed.map_or(limit, |(resume_at, _)| resume_at));
                }
            }
        }
    }

    /// The answer from the tail cache when it reaches back to this reader (`None`: read the
    /// disk). Records passed over here are skipped on disk too, by their seq.
    fn from_tail(&mut self, now_unix_ms: u64) -> Option<Option<Arc<StoredRecord>>> {
        let last_appended = self.inner.durability.appended_seq();
        let tail = lock(&self.inner.tail);
        let records = match tail.after(self.scanned, last_appended) {
            Lookup::Covered(records) => records,
            Lookup::Miss => return None,
        };
        let default_ttl_secs = self.inner.config.default_ttl_secs;
        let mut expired = 0u64;
        let mut found = None;
        // Cached seqs are consecutive (every append goes through the cache), so the first
        // record after `scanned` is found by index, not by a scan.
        let skip = records
            .front()
            .map_or(0, |front| usize::try_from((self.scanned + 1).saturating_sub(front.seq)).unwrap_or(usize::MAX));
        let start = self.scanned;
        for record in records.iter().skip(skip).filter(|r| r.seq > start) {
            self.scanned = record.seq;
            let Some(endpoint) = record.endpoint(self.endpoint_id) else { continue };
            if is_expired(record.enqueued_unix_ms, endpoint.ttl_secs, default_ttl_secs, now_unix_ms) {
                expired += 1;
                continue;
            }
            self.position = record.seq;
            // Shared with the cache and every other reader: no copy of the record per delivery.
            found = Some(Arc::clone(record));
            break;
        }
        drop(tail);
        self.stats.expired_skipped += expired;
        self.inner.counters.expired_skipped.fetch_add(expired, Ordering::Relaxed);
        Some(found)
    }

    fn abandon_current(&mut self) {
        if let Some(open) = self.current.take() {
            self.after_segment = Some(open.shared.first_seq);
        }
    }

    /// Opens the first segment after the one last finished that holds seqs past `scanned`.
    fn open_next(&mut self) -> Result<Option<OpenSegment>, StoreError> {
        for _ in 0..OPEN_ATTEMPTS_MAX {
            let chosen = {
                let log = lock(&self.inner.log);
                let active = log.segments.len() - 1;
                log.segments
                    .iter()
                    .enumerate()
                    .find(|(index, segment)| {
                        self.after_segment.map_or(true, |after| segment.shared.first_seq > after)
                            && (*index == active || segment.summary.last_seq.is_some_and(|last| last > self.scanned))
                    })
                    .map(|(_, segment)| Arc::clone(&segment.shared))
            };
            let Some(shared) = chosen else {
                return Ok(None);
            };
            if shared.first_seq > self.scanned + 1 {
                // Nothing between scanned and this segment exists any more; what DropOldest
                // deleted of it is counted (what was reclaimed was done or expired).
                let dropped_through = self.inner.counters.dropped_through.load(Ordering::Acquire);
                let dropped = dropped_through.min(shared.first_seq - 1).saturating_sub(self.scanned);
                self.stats.dropped_skipped += dropped;
                self.scanned = shared.first_seq - 1;
            }
            match SegmentCursor::open(&shared.path) {
                Ok(cursor) => return Ok(Some(OpenSegment { shared, cursor })),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                    self.after_segment = Some(shared.first_seq);
                }
                Err(error) => return Err(StoreError::io("open", &shared.path, error)),
            }
        }
        Ok(None)
    }
}
