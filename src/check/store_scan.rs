//! The store's files read without changing them, for `tinyedge check` while the runtime is not
//! running: every segment's records are framed and checksummed with the store's own decoder
//! (`tinyedge_hub::store::record::peek`), and their sequence numbers must rise. Opening the store
//! would run its recovery, which repairs what it finds — and the next start would then report
//! nothing — so the check only reads, and says what the next start will find.

use std::io::Read;
use std::path::{Path, PathBuf};

use tinyedge_hub::store::record::{self, DecodeError};

use super::Check;

/// `seg-{20 digits}.log`, as the store names its segments.
const SEGMENT_PREFIX: &str = "seg-";
const SEGMENT_SUFFIX: &str = ".log";
const SEGMENT_DIGITS: usize = 20;
/// Bytes read at a time (the store's own read chunk).
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// What is wrong in a segment, at which byte offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The segment ends inside a record (a write cut short): the next start cuts it off.
    TornTail { offset: u64, bytes: u64 },
    /// Bytes that are not a record (checksum, framing): the next start steps over them.
    Corrupt { offset: u64, reason: &'static str },
    /// A record whose sequence number does not follow the one before it.
    OutOfOrder { offset: u64, seq: u64, after: u64 },
}

/// One segment read through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentScan {
    pub records: u64,
    /// The first problem; the scan of the segment stops there.
    pub problem: Option<Problem>,
}

/// Reads the records of one segment whose first record has `first_seq` (pure over `input`).
pub fn scan_segment(mut input: impl Read, first_seq: u64) -> std::io::Result<SegmentScan> {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    let (mut start, mut offset, mut records, mut eof) = (0usize, 0u64, 0u64, false);
    let mut last_seq: Option<u64> = None;
    loop {
        let pending = &buf[start..];
        if pending.is_empty() && eof {
            return Ok(SegmentScan { records, problem: None });
        }
        match record::peek(pending) {
            Ok((view, len)) => {
                if view.seq < first_seq || last_seq.is_some_and(|last| view.seq <= last) {
                    let after = last_seq.unwrap_or(first_seq);
                    return Ok(SegmentScan {
                        records,
                        problem: Some(Problem::OutOfOrder { offset, seq: view.seq, after }),
                    });
                }
                last_seq = Some(view.seq);
                records += 1;
                start += len;
                offset += len as u64;
            }
            Err(DecodeError::Incomplete) if eof => {
                let bytes = pending.len() as u64;
                return Ok(SegmentScan { records, problem: Some(Problem::TornTail { offset, bytes }) });
            }
            Err(DecodeError::Incomplete) => {
                buf.drain(..start);
                start = 0;
                let got = input.read(&mut chunk)?;
                if got == 0 {
                    eof = true;
                } else {
                    buf.extend_from_slice(&chunk[..got]);
                }
            }
            Err(DecodeError::Corrupt(reason)) => {
                return Ok(SegmentScan { records, problem: Some(Problem::Corrupt { offset, reason }) });
            }
        }
    }
}

/// The first seq a segment file name gives, or `None` for other files.
fn segment_first_seq(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(SEGMENT_PREFIX)?.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != SEGMENT_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The whole store directory read through.
#[derive(Debug, Default)]
pub struct StoreScan {
    pub segments: usize,
    pub records: u64,
    /// Bytes of every file in the directory (segments, registry, checkpoints).
    pub bytes: u64,
    /// Problems by segment file, in seq order; `last` says whether it is the newest segment.
    pub problems: Vec<(PathBuf, Problem, bool)>,
}

/// Reads every segment of the store in `dir` (which must exist).
pub fn scan_dir(dir: &Path) -> Result<StoreScan, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut scan = StoreScan::default();
    let mut segments = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
        scan.bytes += entry.metadata().map_or(0, |m| m.len());
        if let Some(first_seq) = entry.file_name().to_str().and_then(segment_first_seq) {
            segments.push((first_seq, entry.path()));
        }
    }
    segments.sort_unstable();
    scan.segments = segments.len();
    for (index, (first_seq, path)) in segments.iter().enumerate() {
        let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let segment =
            scan_segment(std::io::BufReader::new(file), *first_seq).map_err(|e| format!("{}: {e}", path.display()))?;
        scan.records += segment.records;
        if let Some(problem) = segment.problem {
            scan.problems.push((path.clone(), problem, index + 1 == segments.len()));
        }
    }
    Ok(scan)
}

/// The verdict on a scanned store bounded at `max_bytes`: a torn tail or damage is a warning
/// (the next start repairs it and reports what was lost), not a failure.
pub fn verdict(dir: &Path, scan: &StoreScan, max_bytes: u64) -> Check {
    let detail = format!(
        "{}: {} records in {} segments, {} bytes (bound {max_bytes})",
        dir.display(),
        scan.records,
        scan.segments,
        scan.bytes
    );
    let Some((path, problem, last)) = scan.problems.first() else {
        return Check::pass("store", format!("{detail}; every record reads back"));
    };
    let name = path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
    let found = match problem {
        Problem::TornTail { offset, bytes } => {
            format!("{name} ends in a torn record ({bytes} bytes at offset {offset})")
        }
        Problem::Corrupt { offset, reason } => format!("{name} is damaged at offset {offset} ({reason})"),
        Problem::OutOfOrder { offset, seq, after } => format!("{name}: seq {seq} after {after} at offset {offset}"),
    };
    let more = match scan.problems.len() {
        1 => String::new(),
        n => format!(" and {} more segment(s)", n - 1),
    };
    let hint = if *last && matches!(problem, Problem::TornTail { .. }) && scan.problems.len() == 1 {
        "a write was cut short (crash or power cut); the next start cuts it off and counts what was lost in `tinyedge store stats`"
    } else {
        "the store's files are damaged (disk error?); the next start steps over the damage and counts what was lost in `tinyedge store stats`"
    };
    Check::warn("store", format!("{detail}; {found}{more}"), hint)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tinyedge_hub::store::record::{EndpointRef, NewRecord};

    fn segment(first_seq: u64, count: u64) -> Vec<u8> {
        let mut out = Vec::new();
        let endpoints = [EndpointRef { id: 0, priority: 0, ttl_secs: 0 }];
        for seq in first_seq..first_seq + count {
            let payload = vec![b'x'; 100 + seq as usize];
            let record = NewRecord {
                enqueued_unix_ms: 1,
                endpoints: &endpoints,
                source: "m",
                properties: "",
                payload: &payload,
            };
            record::encode(seq, &record, &mut out).expect("encode");
        }
        out
    }

    #[test]
    fn a_clean_segment_reads_through() {
        let bytes = segment(5, 40);
        assert_eq!(scan_segment(&bytes[..], 5).expect("scan"), SegmentScan { records: 40, problem: None });
        assert_eq!(scan_segment(&[][..], 1).expect("scan"), SegmentScan { records: 0, problem: None });
    }

    #[test]
    fn a_torn_tail_is_found_at_the_last_whole_record() {
        let bytes = segment(1, 3);
        let whole = segment(1, 2).len();
        let cut = &bytes[..bytes.len() - 7];
        let scan = scan_segment(cut, 1).expect("scan");
        assert_eq!(scan.records, 2);
        assert_eq!(scan.problem, Some(Problem::TornTail { offset: whole as u64, bytes: (cut.len() - whole) as u64 }));
    }

    #[test]
    fn a_flipped_byte_is_damage_at_its_record() {
        let mut bytes = segment(1, 3);
        let second = segment(1, 1).len();
        bytes[second + 40] ^= 0x55;
        let scan = scan_segment(&bytes[..], 1).expect("scan");
        assert_eq!(scan.records, 1);
        assert!(matches!(scan.problem, Some(Problem::Corrupt { offset, .. }) if offset == second as u64), "{scan:?}");
    }

    #[test]
    fn sequence_numbers_must_rise_from_the_segments_first() {
        let mut bytes = segment(10, 2);
        bytes.extend(segment(3, 1));
        let scan = scan_segment(&bytes[..], 10).expect("scan");
        assert_eq!(scan.records, 2);
        assert!(matches!(scan.problem, Some(Problem::OutOfOrder { seq: 3, after: 11, .. })), "{scan:?}");
        assert!(matches!(
            scan_segment(&segment(3, 1)[..], 10).expect("scan").problem,
            Some(Problem::OutOfOrder { .. })
        ));
    }

    #[test]
    fn segment_names_are_the_stores() {
        assert_eq!(segment_first_seq("seg-00000000000000000042.log"), Some(42));
        assert_eq!(segment_first_seq("seg-42.log"), None);
        assert_eq!(segment_first_seq("endpoints.reg"), None);
    }

    #[test]
    fn verdicts_warn_on_problems() {
        let dir = Path::new("/data/store");
        let clean = StoreScan { segments: 1, records: 3, bytes: 999, problems: Vec::new() };
        assert_eq!(verdict(dir, &clean, 1 << 20).outcome, super::super::Outcome::Pass);
        let torn = StoreScan {
            problems: vec![(dir.join("seg-1.log"), Problem::TornTail { offset: 10, bytes: 5 }, true)],
            ..clean
        };
        let check = verdict(dir, &torn, 1 << 20);
        assert_eq!(check.outcome, super::super::Outcome::Warn);
        assert!(check.detail.contains("seg-1.log ends in a torn record (5 bytes at offset 10)"), "{}", check.detail);
        assert!(check.hint.as_deref().is_some_and(|h| h.contains("cut short")));
    }
}
