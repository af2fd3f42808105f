//! When records expire and when a segment may be deleted. Pure code: `now` is passed in.
//!
//! A segment is kept as a summary: its record count, last seq, latest expiry, and for each
//! endpoint its records are routed to, the last seq routed there. It may be deleted once every
//! one of those endpoints has a persisted checkpoint at or past its own last seq in the
//! segment, or once every record in it has expired. Only endpoints that appear in the segment
//! are consulted, and each only up to its own records, so neither an endpoint whose route was
//! removed nor an idle endpoint whose last record was delivered pins the disk (IoT Edge's
//! per-message reference counts reach the same result with one database row per message;
//! its issue #3981 is disk not reclaimed after delivery).
//!
//! Memory: 10 bytes per (segment, endpoint routed to in it), typically a handful per segment;
//! at worst `SEGMENTS_MAX × ENDPOINTS_MAX × 10` bytes.

/// When a record enqueued at `enqueued_unix_ms` with `ttl_secs` (0: `default_ttl_secs`;
/// a negative default: never) expires, in Unix ms; `u64::MAX` for never.
pub fn expires_at_ms(enqueued_unix_ms: u64, ttl_secs: u32, default_ttl_secs: i64) -> u64 {
    let ttl_secs = if ttl_secs != 0 {
        u64::from(ttl_secs)
    } else {
        match u64::try_from(default_ttl_secs) {
            Ok(secs) => secs,
            Err(_) => return u64::MAX,
        }
    };
    enqueued_unix_ms.saturating_add(ttl_secs.saturating_mul(1000))
}

/// Whether the record has expired at `now_unix_ms` (enqueued + ttl < now).
pub fn is_expired(enqueued_unix_ms: u64, ttl_secs: u32, default_ttl_secs: i64, now_unix_ms: u64) -> bool {
    expires_at_ms(enqueued_unix_ms, ttl_secs, default_ttl_secs) < now_unix_ms
}

/// What retention needs to know about one segment.
#[derive(Debug, Clone, Default)]
pub struct SegmentSummary {
    pub records: u64,
    pub last_seq: Option<u64>,
    /// (endpoint id, last seq routed to it in this segment), sorted by id.
    pub routed: Vec<(u16, u64)>,
    /// Latest expiry of any record for any of its endpoints (0 while empty).
    pub expires_at_ms: u64,
}

impl SegmentSummary {
    /// Accounts for one more record, given its seq, enqueue time and (id, ttl_secs) pairs.
    pub fn add(
        &mut self,
        seq: u64,
        enqueued_unix_ms: u64,
        endpoints: impl Iterator<Item = (u16, u32)>,
        default_ttl_secs: i64,
    ) {
        self.records += 1;
        self.last_seq = Some(self.last_seq.map_or(seq, |last| last.max(seq)));
        for (id, ttl_secs) in endpoints {
            match self.routed.binary_search_by_key(&id, |entry| entry.0) {
                Ok(index) => self.routed[index].1 = self.routed[index].1.max(seq),
                Err(index) => self.routed.insert(index, (id, seq)),
            }
            self.expires_at_ms = self.expires_at_ms.max(expires_at_ms(enqueued_unix_ms, ttl_secs, default_ttl_secs));
        }
    }

    /// Whether nothing in the segment is still owed to anyone: every endpoint in it has
    /// `checkpoint(id)` at or past its last seq here, or every record has expired. An empty
    /// segment is never reclaimable (it is the one being written).
    pub fn is_reclaimable(&self, checkpoint: impl Fn(u16) -> u64, now_unix_ms: u64) -> bool {
        if self.records == 0 {
            return false;
        }
        self.expires_at_ms < now_unix_ms || self.routed.iter().all(|&(id, last)| checkpoint(id) >= last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_zero_uses_the_default_and_a_negative_default_never_expires() {
        assert_eq!(expires_at_ms(1000, 0, 5), 6000);
        assert_eq!(expires_at_ms(1000, 2, 5), 3000);
        assert_eq!(expires_at_ms(1000, 0, -1), u64::MAX);
        assert!(!is_expired(1000, 0, 5, 6000), "expired only strictly after enqueued + ttl");
        assert!(is_expired(1000, 0, 5, 6001));
        assert!(!is_expired(u64::MAX - 1, u32::MAX, 5, u64::MAX - 1), "saturates instead of wrapping");
    }

    #[test]
    fn a_segment_is_reclaimable_when_its_endpoints_are_past_it_or_it_expired() {
        let mut summary = SegmentSummary::default();
        assert!(!summary.is_reclaimable(|_| u64::MAX, u64::MAX), "empty segments are kept");
        summary.add(10, 1000, [(1, 0), (3, 0)].into_iter(), 60);
        summary.add(11, 2000, [(3, 0)].into_iter(), 60);
        // (persisted checkpoints, now, reclaimable)
        type Row = (&'static [(u16, u64)], u64, bool);
        let table: &[Row] = &[
            (&[(1, 11), (3, 11)], 0, true),
            (&[(1, 10), (3, 11)], 0, true), // endpoint 1's last record here is seq 10
            (&[(1, 10), (3, 10)], 0, false),
            (&[(1, 9), (3, 11)], 0, false),
            (&[(3, 11)], 0, false),                 // endpoint 1 has read nothing
            (&[(1, 11), (3, 11), (7, 0)], 0, true), // endpoint 7 is not in this segment
            (&[], 62_000, false),                   // the last record expires at 62 000
            (&[], 62_001, true),
        ];
        for &(checkpoints, now, expected) in table {
            let checkpoint = |id: u16| checkpoints.iter().find(|entry| entry.0 == id).map_or(0, |entry| entry.1);
            assert_eq!(summary.is_reclaimable(checkpoint, now), expected, "checkpoints {checkpoints:?} at {now}");
        }
    }
}
