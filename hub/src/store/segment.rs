//! Segment files: their names, the state shared between the appender and readers, and a
//! buffered cursor that walks the records of one file with positioned reads (`pread`), never
//! holding more than one chunk plus one record in memory.
//!
//! A segment `seg-{first_seq:020}.log` is records back to back, no file header: the record magic
//! carries the format version, and the name carries the first seq. The appender publishes the
//! length of the complete records in a segment after each write; readers never look past it,
//! so they cannot see a record that is still being written.

use std::fs::File;
use std::io::{self, ErrorKind};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use super::record::{self, DecodeError, RecordView, MAGIC, RECORD_BYTES_MAX};
use super::retention::SegmentSummary;

const PREFIX: &str = "seg-";
const SUFFIX: &str = ".log";
/// Digits of the seq in a segment name: u64::MAX has 20, and zero padding sorts names by seq.
const SEQ_DIGITS: usize = 20;
/// How much a cursor reads at a time: large enough that small records cost one `pread` per few
/// hundred, small enough for several readers on a gateway with tight memory.
pub const READ_CHUNK_BYTES: usize = 64 * 1024;
/// How much resynchronisation after damage scans per `pread`.
const RESYNC_WINDOW_BYTES: usize = 64 * 1024;

/// The file name of the segment whose first record has `first_seq`.
pub fn file_name(first_seq: u64) -> String {
    format!("{PREFIX}{first_seq:0SEQ_DIGITS$}{SUFFIX}")
}

/// Creates (or empties) the file of a new segment starting at `first_seq` in `dir`.
pub fn create(dir: &Path, first_seq: u64) -> Result<(PathBuf, File), super::StoreError> {
    let path = dir.join(file_name(first_seq));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map_err(|error| super::StoreError::io("create", &path, error))?;
    Ok((path, file))
}

/// The first seq named by a segment file name, or `None` for any other file.
pub fn parse_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    if digits.len() != SEQ_DIGITS || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// What the appender and readers share about one segment.
#[derive(Debug)]
pub struct SegmentShared {
    pub first_seq: u64,
    pub path: PathBuf,
    /// Bytes of complete records, published after each write.
    len: AtomicU64,
    /// No more records will be added (the log rolled past it).
    sealed: AtomicBool,
    /// The file was deleted: readers drop their handle so the disk space is really freed.
    deleted: AtomicBool,
}

impl SegmentShared {
    pub fn new(first_seq: u64, path: PathBuf, len: u64, sealed: bool) -> SegmentShared {
        SegmentShared {
            first_seq,
            path,
            len: AtomicU64::new(len),
            sealed: AtomicBool::new(sealed),
            deleted: AtomicBool::new(false),
        }
    }

    pub fn published_len(&self) -> u64 {
        self.len.load(Ordering::Acquire)
    }

    pub fn publish(&self, len: u64) {
        self.len.store(len, Ordering::Release);
    }

    pub fn is_sealed(&self) -> bool {
        self.sealed.load(Ordering::Acquire)
    }

    pub fn seal(&self) {
        self.sealed.store(true, Ordering::Release);
    }

    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    pub fn mark_deleted(&self) {
        self.deleted.store(true, Ordering::Release);
    }
}

/// One segment in the log's list.
#[derive(Debug)]
pub struct Segment {
    pub shared: Arc<SegmentShared>,
    pub summary: SegmentSummary,
    /// Size of the file on disk (more than the published length if recovery left damage in it).
    pub file_bytes: u64,
}

/// What a cursor found next.
#[derive(Debug)]
pub enum Step<T> {
    /// The visitor took a record.
    Found(T),
    /// Every byte up to the limit is a complete record.
    End,
    /// A record starting at `offset` runs past the limit.
    Torn { offset: u64 },
    /// The bytes at `offset` are not a record.
    Corrupt { offset: u64, reason: &'static str },
}

/// A forward cursor over the records of one segment file.
#[derive(Debug)]
pub struct SegmentCursor {
    file: File,
    /// Bytes read from the file; `buf[start..]` is not parsed yet.
    buf: Vec<u8>,
    start: usize,
    /// File offset of `buf[0]`.
    buf_offset: u64,
}

impl SegmentCursor {
    pub fn open(path: &Path) -> io::Result<SegmentCursor> {
        Ok(SegmentCursor { file: File::open(path)?, buf: Vec::new(), start: 0, buf_offset: 0 })
    }

    /// File offset of the next record.
    pub fn offset(&self) -> u64 {
        self.buf_offset + as_u64(self.start)
    }

    /// Continues at `offset` (after damage, or to skip what is known to be unreadable).
    pub fn seek(&mut self, offset: u64) {
        self.buf.clear();
        self.start = 0;
        self.buf_offset = offset;
    }

    /// Walks records up to file offset `limit`, offering each to `visit` with its offset, until
    /// `visit` takes one (returns `Some`) or the records end.
    pub fn next<T>(
        &mut self,
        limit: u64,
        mut visit: impl FnMut(&RecordView<'_>, u64) -> Option<T>,
    ) -> io::Result<Step<T>> {
        loop {
            let offset = self.offset();
            let parsed = record::peek(&self.buf[self.start..]).map(|(view, used)| (used, visit(&view, offset)));
            match parsed {
                Ok((used, taken)) => {
                    self.start += used;
                    if let Some(value) = taken {
                        return Ok(Step::Found(value));
                    }
                }
                Err(DecodeError::Incomplete) => {
                    if self.fill(limit)? == 0 {
                        let at_end = self.start == self.buf.len();
                        return Ok(if at_end { Step::End } else { Step::Torn { offset } });
                    }
                }
                Err(DecodeError::Corrupt(reason)) => return Ok(Step::Corrupt { offset, reason }),
            }
        }
    }

    /// Reads more of the file (below `limit`) after the unparsed bytes; returns how many.
    fn fill(&mut self, limit: u64) -> io::Result<usize> {
        let end = self.buf_offset + as_u64(self.buf.len());
        if end >= limit {
            return Ok(0);
        }
        self.buf.drain(..self.start);
        self.buf_offset += as_u64(self.start);
        self.start = 0;
        let pending = self.buf.len();
        // A large record is read whole in one go; the announced length is at most
        // RECORD_BYTES_MAX, so the buffer never exceeds that plus one chunk.
        let record_rest = record::announced_len(&self.buf).map_or(0, |total| total.saturating_sub(pending));
        let wanted = READ_CHUNK_BYTES.max(record_rest);
        let wanted = usize::try_from((limit - end).min(as_u64(wanted))).unwrap_or(READ_CHUNK_BYTES);
        if pending + wanted <= READ_CHUNK_BYTES && self.buf.capacity() > 2 * READ_CHUNK_BYTES {
            self.buf.shrink_to(READ_CHUNK_BYTES);
        }
        self.buf.resize(pending + wanted, 0);
        let got = read_at_most(&self.file, &mut self.buf[pending..], end)?;
        self.buf.truncate(pending + got);
        Ok(got)
    }

    /// The offset and seq of the first valid record in `from..limit` that `accept` takes,
    /// scanning for the record magic. Used to step over damage without losing the records
    /// after it; `accept` rejects records that cannot follow the last good one (a stale copy,
    /// or a record-shaped payload whose seq does not fit).
    pub fn resync(
        &mut self,
        from: u64,
        limit: u64,
        accept: impl Fn(&RecordView<'_>) -> bool,
    ) -> io::Result<Option<(u64, u64)>> {
        let magic = MAGIC.to_le_bytes();
        let mut window = vec![0u8; RESYNC_WINDOW_BYTES];
        let mut candidate = Vec::new();
        let mut position = from;
        while position < limit {
            let wanted = usize::try_from((limit - position).min(as_u64(window.len()))).unwrap_or(0);
            let got = read_at_most(&self.file, &mut window[..wanted], position)?;
            if got < 2 {
                break;
            }
            for index in 0..got - 1 {
                if window[index..index + 2] == magic {
                    let offset = position + as_u64(index);
                    if let Some(seq) = self.record_at(offset, limit, &mut candidate, &accept)? {
                        return Ok(Some((offset, seq)));
                    }
                }
            }
            // Overlap one byte, in case the magic straddles two windows.
            position += as_u64(got - 1);
        }
        Ok(None)
    }

    fn record_at(
        &self,
        offset: u64,
        limit: u64,
        scratch: &mut Vec<u8>,
        accept: &impl Fn(&RecordView<'_>) -> bool,
    ) -> io::Result<Option<u64>> {
        let mut header = [0u8; 8];
        if read_at_most(&self.file, &mut header, offset)? < header.len() {
            return Ok(None);
        }
        let Ok(total) = record::announced_len(&header) else {
            return Ok(None);
        };
        if offset + as_u64(total) > limit {
            return Ok(None);
        }
        debug_assert!(total <= RECORD_BYTES_MAX);
        scratch.resize(total, 0);
        if read_at_most(&self.file, scratch, offset)? < total {
            return Ok(None);
        }
        Ok(record::peek(scratch).ok().filter(|(view, _)| accept(view)).map(|(view, _)| view.seq))
    }
}

/// Reads into `buf` at `offset` until it is full or the file ends; returns how many bytes.
pub fn read_at_most(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + as_u64(done)) {
            Ok(0) => break,
            Ok(count) => done += count,
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(done)
}

/// Buffer lengths and offsets within one segment fit in a u64 on every supported target.
pub fn as_u64(count: usize) -> u64 {
    u64::try_from(count).unwrap_or(u64::MAX)
}
