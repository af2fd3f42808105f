//! Recovery on open: rebuild the log's state from the segment files and repair what a crash or
//! bad storage left behind, reporting every byte it gives up on.
//!
//! - Every segment is scanned record by record (checksum, structure, and seqs increasing within
//!   the range its name and the next segment's name allow).
//! - Damage followed by valid records (a bit flip, or a page the kernel wrote back before the
//!   pages before it) is stepped over by scanning for the next valid record, so one bad record
//!   does not take the rest of its segment with it; the records lost are counted exactly from
//!   the seq gap.
//! - Damage at the end of the last segment (a torn write) is cut off, so new appends follow the
//!   last valid record. At the end of an older segment it is left in the file but never read.
//! - Records missing at the end of the log (a cut or torn tail) are counted exactly from the log
//!   head the checkpoint file keeps (the last seq appended): everything after the last valid
//!   record up to it is lost.
//! - The next seq follows the highest valid seq, the highest checkpoint and the head, so a record
//!   that was delivered before a crash and then lost can never have its seq reused (an endpoint
//!   past it would silently skip the new record).
//! - Everything kept is fsynced before it is reported durable.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::appender::Log;
use super::checkpoint::CheckpointLoad;
use super::config::StoreConfig;
use super::error::StoreError;
use super::fsio;
use super::record::{RecordView, MAGIC};
use super::registry::{RegistryLoad, ENDPOINTS_MAX};
use super::retention::SegmentSummary;
use super::segment::{self, read_at_most, Segment, SegmentCursor, SegmentShared, Step};

/// Most damaged regions listed one by one in a report; the rest are only counted.
pub const DAMAGE_REPORTED_MAX: usize = 64;

/// What recovery found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segments kept, the valid records in them, and the bytes of their files.
    pub segments: usize,
    pub records: u64,
    pub bytes: u64,
    /// The seq the next append gets.
    pub next_seq: u64,
    /// Bytes cut off the end of the last segment.
    pub truncated_bytes: u64,
    /// Records known to be lost: exact for damage between valid records (from the seq gap) and
    /// at the end of the log (from the head); without a head, one per torn record at the end.
    pub records_lost: u64,
    /// Deliveries kept but undeliverable: records of endpoints whose names were lost with both
    /// copies of the registry (they carry placeholder names until their TTL).
    pub deliveries_unattributable: u64,
    /// Damaged regions (at most [`DAMAGE_REPORTED_MAX`]) and how many there were in all.
    pub damage: Vec<Damage>,
    pub damage_count: u64,
    pub registry: RegistryLoad,
    pub checkpoints: CheckpointLoad,
    /// Leftover temporary files of interrupted metadata writes, removed.
    pub temp_files_removed: usize,
    /// Segments deleted because they held no valid record or could not be attributed.
    pub segments_removed: usize,
}

/// One damaged region of a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    pub segment: PathBuf,
    pub offset: u64,
    pub bytes: u64,
    pub records_lost: u64,
    pub reason: String,
}

impl RecoveryReport {
    fn damaged(&mut self, damage: Damage) {
        log::warn!(
            "store: {} damaged at offset {} ({} bytes, {} records lost): {}",
            damage.segment.display(),
            damage.offset,
            damage.bytes,
            damage.records_lost,
            damage.reason
        );
        self.records_lost += damage.records_lost;
        self.damage_count += 1;
        if self.damage.len() < DAMAGE_REPORTED_MAX {
            self.damage.push(damage);
        }
    }
}

/// Segment files (by first seq, ascending) in `dir`; removes leftover temporary files.
pub(crate) fn list_segments(dir: &Path, report: &mut RecoveryReport) -> Result<Vec<(u64, PathBuf)>, StoreError> {
    let mut segments = Vec::new();
    let entries = fs::read_dir(dir).map_err(|error| StoreError::io("list", dir, error))?;
    for entry in entries {
        let entry = entry.map_err(|error| StoreError::io("list", dir, error))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(first_seq) = segment::parse_file_name(name) {
            segments.push((first_seq, entry.path()));
        } else if name.ends_with(fsio::TEMP_SUFFIX) {
            fs::remove_file(entry.path()).map_err(|error| StoreError::io("delete", &entry.path(), error))?;
            report.temp_files_removed += 1;
        }
    }
    segments.sort_unstable();
    Ok(segments)
}

/// What recovery knows from the checkpoint file.
pub(crate) struct Known<'a> {
    /// The highest checkpoint of any endpoint.
    pub checkpoint_max: u64,
    /// The lowest checkpoint of any registered endpoint: records at or below it were
    /// delivered everywhere, so losing them loses nothing.
    pub checkpoint_min: u64,
    /// The last seq appended before the crash or close, if known.
    pub head: Option<u64>,
    /// An endpoint's checkpoint (records at or below it are done for it).
    pub checkpoint_of: &'a dyn Fn(u16) -> u64,
}

/// Per endpoint id: the last seq routed to it, and how many of its records are pending (past
/// its checkpoint).
pub(crate) struct Routed {
    pub last: Vec<u64>,
    pub pending: Vec<u64>,
}

/// Rebuilds the log from `segments`.
pub(crate) fn recover(
    config: &StoreConfig,
    segments: Vec<(u64, PathBuf)>,
    known: &Known<'_>,
    report: &mut RecoveryReport,
) -> Result<(Log, Vec<u64>), StoreError> {
    let mut kept: VecDeque<Segment> = VecDeque::new();
    let mut routed = Routed { last: vec![0u64; ENDPOINTS_MAX], pending: vec![0u64; ENDPOINTS_MAX] };
    let count = segments.len();
    let mut tail_counted = false;
    let mut tail_floor = 0;
    for (index, (first_seq, path)) in segments.iter().enumerate() {
        let upper = segments.get(index + 1).map_or(u64::MAX, |next| next.0);
        let is_last = index + 1 == count;
        let scanned = scan(config, *first_seq, upper, path, is_last, known, &mut routed, report)?;
        if is_last {
            tail_counted = scanned.tail_cut;
            tail_floor = scanned.summary.last_seq.unwrap_or(first_seq.saturating_sub(1));
        }
        if scanned.summary.records == 0 && !is_last {
            fs::remove_file(path).map_err(|error| StoreError::io("delete", path, error))?;
            report.segments_removed += 1;
            continue;
        }
        let shared = SegmentShared::new(*first_seq, path.clone(), scanned.good_end, !is_last);
        kept.push_back(Segment { shared: Arc::new(shared), summary: scanned.summary, file_bytes: scanned.file_bytes });
    }
    let highest = kept.iter().filter_map(|segment| segment.summary.last_seq).max().unwrap_or(0);
    if let (Some(head), false) = (known.head, tail_counted) {
        let floor = tail_floor.max(highest).max(known.checkpoint_min);
        if head > floor {
            let segment = segments.last().map(|(_, path)| path.clone()).unwrap_or_else(|| config.dir.clone());
            let offset = kept.back().map_or(0, |last| last.file_bytes);
            report.damaged(Damage {
                segment,
                offset,
                bytes: 0,
                records_lost: head - floor,
                reason: format!("the log ends at seq {} but seq {head} was appended", tail_floor.max(highest)),
            });
        }
    }
    let mut next_seq = highest.max(known.checkpoint_max).max(known.head.unwrap_or(0)).saturating_add(1);
    if let Some(last) = kept.back() {
        if last.summary.records == 0 {
            next_seq = next_seq.max(last.shared.first_seq);
        }
    }
    let active = open_active(config, &mut kept, next_seq, report)?;
    for segment in &kept {
        File::open(&segment.shared.path)
            .and_then(|file| file.sync_data())
            .map_err(|error| StoreError::io("fsync", &segment.shared.path, error))?;
    }
    fsio::sync_dir(&config.dir)?;
    report.segments = kept.len();
    report.records = kept.iter().map(|segment| segment.summary.records).sum();
    report.bytes = kept.iter().map(|segment| segment.file_bytes).sum();
    report.next_seq = next_seq;
    Ok((Log::new(kept, active, next_seq, routed.last), routed.pending))
}

/// Reopens the last segment for appending if the next seq follows it, otherwise starts a new
/// one (so seqs within a segment stay consecutive).
fn open_active(
    config: &StoreConfig,
    kept: &mut VecDeque<Segment>,
    next_seq: u64,
    report: &mut RecoveryReport,
) -> Result<File, StoreError> {
    if let Some(last) = kept.back() {
        let follows = last.summary.last_seq.map_or(last.shared.first_seq == next_seq, |seq| seq + 1 == next_seq);
        let damaged_tail = last.file_bytes != last.shared.published_len();
        if follows && !damaged_tail {
            let path = &last.shared.path;
            return OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .map_err(|error| StoreError::io("open", path, error));
        }
        last.shared.seal();
        if last.summary.records == 0 {
            let path = last.shared.path.clone();
            fs::remove_file(&path).map_err(|error| StoreError::io("delete", &path, error))?;
            report.segments_removed += 1;
            kept.pop_back();
        }
    }
    let (path, file) = segment::create(&config.dir, next_seq)?;
    kept.push_back(Segment {
        shared: Arc::new(SegmentShared::new(next_seq, path, 0, false)),
        summary: SegmentSummary::default(),
        file_bytes: 0,
    });
    Ok(file)
}

/// What a scan of one segment found.
struct Scanned {
    summary: SegmentSummary,
    /// End of the last valid record: readers never read past it.
    good_end: u64,
    file_bytes: u64,
    /// The tail of the last segment was cut, and its loss counted.
    tail_cut: bool,
}

fn scan(
    config: &StoreConfig,
    first_seq: u64,
    upper: u64,
    path: &Path,
    is_last: bool,
    known: &Known<'_>,
    routed: &mut Routed,
    report: &mut RecoveryReport,
) -> Result<Scanned, StoreError> {
    let io_error = |error| StoreError::io("read", path, error);
    let mut cursor = SegmentCursor::open(path).map_err(io_error)?;
    let file_len = fs::metadata(path).map_err(io_error)?.len();
    let mut summary = SegmentSummary::default();
    let mut previous: Option<u64> = None;
    loop {
        let step = cursor
            .next(file_len, |view, offset| {
                let in_order = previous.map_or(view.seq >= first_seq, |seq| view.seq > seq) && view.seq < upper;
                if !in_order {
                    return Some(offset);
                }
                previous = Some(view.seq);
                let endpoints = view.endpoints().map(|endpoint| (endpoint.id, endpoint.ttl_secs));
                summary.add(view.seq, view.enqueued_unix_ms, endpoints, config.default_ttl_secs);
                for endpoint in view.endpoints() {
                    let id = usize::from(endpoint.id);
                    if let (Some(last), Some(pending)) = (routed.last.get_mut(id), routed.pending.get_mut(id)) {
                        *last = (*last).max(view.seq);
                        if view.seq > (known.checkpoint_of)(endpoint.id) {
                            *pending += 1;
                        }
                    }
                }
                None
            })
            .map_err(io_error)?;
        let (offset, reason) = match step {
            Step::End => return Ok(Scanned { summary, good_end: file_len, file_bytes: file_len, tail_cut: false }),
            Step::Found(offset) => (offset, "seq out of order"),
            Step::Torn { offset } => (offset, "incomplete record"),
            Step::Corrupt { offset, reason } => (offset, reason),
        };
        let floor = previous.unwrap_or(first_seq.saturating_sub(1));
        let accept = |view: &RecordView<'_>| view.seq > floor && view.seq >= first_seq && view.seq < upper;
        if let Some((next_offset, next_seq)) = cursor.resync(offset + 1, file_len, accept).map_err(io_error)? {
            report.damaged(Damage {
                segment: path.to_path_buf(),
                offset,
                bytes: next_offset - offset,
                records_lost: next_seq - floor - 1,
                reason: reason.to_string(),
            });
            cursor.seek(next_offset);
            continue;
        }
        let tail_bytes = file_len - offset;
        if is_last {
            let mut start = [0u8; 2];
            let torn_record =
                read_at_most(&File::open(path).map_err(io_error)?, &mut start, offset).map_err(io_error)? == 2
                    && start == MAGIC.to_le_bytes();
            OpenOptions::new()
                .write(true)
                .open(path)
                .and_then(|file| file.set_len(offset))
                .map_err(|error| StoreError::io("truncate", path, error))?;
            report.truncated_bytes += tail_bytes;
            report.damaged(Damage {
                segment: path.to_path_buf(),
                offset,
                bytes: tail_bytes,
                // Exact with the head; without it, the torn record is all that is known.
                records_lost: known.head.map_or(u64::from(torn_record), |head| {
                    // A head left behind by a failed write still counts the torn record.
                    head.saturating_sub(floor.max(known.checkpoint_min)).max(u64::from(torn_record))
                }),
                reason: reason.to_string(),
            });
            return Ok(Scanned { summary, good_end: offset, file_bytes: offset, tail_cut: true });
        }
        report.damaged(Damage {
            segment: path.to_path_buf(),
            offset,
            bytes: tail_bytes,
            records_lost: upper.saturating_sub(floor).saturating_sub(1),
            reason: reason.to_string(),
        });
        return Ok(Scanned { summary, good_end: offset, file_bytes: file_len, tail_cut: false });
    }
}
