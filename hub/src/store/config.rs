//! What the store may use (disk bytes, segment size) and how it trades durability for wear,
//! with the limits it enforces and the timing constants of its background work.

use std::path::PathBuf;

use super::error::StoreError;
use super::record::RECORD_BYTES_MAX;

/// When appended records are forced to stable storage, and what an acknowledgement waits for.
/// No policy makes an acknowledgement wait for a timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// The default. A record counts as durable once written to the OS (so a crash, SIGKILL or
    /// OOM kill of tinyedge loses nothing acknowledged), and the sync thread fsyncs in the
    /// background at most once per interval while anything is unsynced (counted): a power cut
    /// or kernel crash loses at most about the interval of acknowledged records.
    Background(u64),
    /// Power-safe: a record counts as durable once fsynced. The sync thread starts an fsync as
    /// soon as the previous one ends and one covers everything appended meanwhile (natural group
    /// commit; no interval wait).
    Always,
    /// Never fsync: durable once written to the OS; a power cut may lose whatever the kernel had
    /// not written back (seconds).
    Never,
}

impl Default for FsyncPolicy {
    fn default() -> FsyncPolicy {
        FsyncPolicy::Background(BACKGROUND_FSYNC_INTERVAL_MS_DEFAULT)
    }
}

/// Default background fsync interval: at most one fsync a second however busy the store (SD
/// card wear), so a power cut loses at most about a second of acknowledged messages.
pub const BACKGROUND_FSYNC_INTERVAL_MS_DEFAULT: u64 = 1000;

/// What `append` does when the store holds `max_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FullPolicy {
    /// Delete the oldest segment even if endpoints have not read it (counted and logged).
    #[default]
    DropOldest,
    /// Refuse the new record with [`StoreError::Full`] (counted).
    RejectNew,
}

/// The store's configuration. [`StoreConfig::new`] gives the defaults for a directory.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Directory of segments, endpoint registry and checkpoints (created if missing).
    pub dir: PathBuf,
    /// Most bytes of segment files on disk. Default 256 MiB.
    pub max_bytes: u64,
    /// Segment size at which the log rolls to a new file. 0 picks the default:
    /// min(16 MiB, max_bytes / 8), at least 64 KiB and at least max_bytes / [`SEGMENTS_MAX`].
    pub segment_bytes: u64,
    pub fsync: FsyncPolicy,
    pub when_full: FullPolicy,
    /// Time to live of records whose endpoint entry says 0; negative means they never expire.
    /// Default 7200 s, IoT Edge's `timeToLiveSecs`.
    pub default_ttl_secs: i64,
}

/// Default `max_bytes`: a quarter of the smallest SD cards still sold leaves room for images.
pub const MAX_BYTES_DEFAULT: u64 = 256 * 1024 * 1024;
/// Smallest `max_bytes`: two largest records, so DropOldest can always make room for one.
pub const MAX_BYTES_MIN: u64 = 2 * RECORD_BYTES_MAX as u64;
/// Largest default segment: deleting one reclaims at most this much, and recovery rescans at
/// most this much of a damaged segment.
pub const SEGMENT_BYTES_DEFAULT_MAX: u64 = 16 * 1024 * 1024;
/// Smallest segment: below this, file-system metadata and per-segment bookkeeping dominate.
pub const SEGMENT_BYTES_MIN: u64 = 64 * 1024;
/// Most segments: each costs ~200 bytes of memory (its endpoint set) and one directory entry.
pub const SEGMENTS_MAX: u64 = 1024;
/// Longest fsync interval: a loss window longer than a minute is `Never` in disguise.
pub const FSYNC_INTERVAL_MS_MAX: u64 = 60_000;
/// Default time to live, as IoT Edge's `storeAndForwardConfiguration.timeToLiveSecs`.
pub const DEFAULT_TTL_SECS: i64 = 7200;
/// How often the sync thread persists changed checkpoints and deletes finished or expired
/// segments: at most one small checkpoint write per second, so a crash replays at most about a
/// second of deliveries (at-least-once), and disk is reclaimed within a second.
pub const HOUSEKEEPING_INTERVAL_MS: u64 = 1000;

const _: () = assert!(SEGMENT_BYTES_MIN * 2 <= MAX_BYTES_MIN);
const _: () = assert!(MAX_BYTES_MIN <= MAX_BYTES_DEFAULT);

impl StoreConfig {
    /// The defaults, storing in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> StoreConfig {
        StoreConfig {
            dir: dir.into(),
            max_bytes: MAX_BYTES_DEFAULT,
            segment_bytes: 0,
            fsync: FsyncPolicy::default(),
            when_full: FullPolicy::default(),
            default_ttl_secs: DEFAULT_TTL_SECS,
        }
    }

    /// The segment size in force: `segment_bytes`, or the default derived from `max_bytes`.
    pub fn effective_segment_bytes(&self) -> u64 {
        if self.segment_bytes != 0 {
            return self.segment_bytes;
        }
        (self.max_bytes / 8)
            .clamp(SEGMENT_BYTES_MIN, SEGMENT_BYTES_DEFAULT_MAX)
            .max(self.max_bytes.div_ceil(SEGMENTS_MAX))
    }

    /// Checks the limits against each other.
    pub fn validate(&self) -> Result<(), StoreError> {
        let segment_bytes = self.effective_segment_bytes();
        if self.max_bytes < MAX_BYTES_MIN {
            return Err(StoreError::Config(format!("max_bytes {} is below {MAX_BYTES_MIN}", self.max_bytes)));
        }
        if segment_bytes < SEGMENT_BYTES_MIN {
            return Err(StoreError::Config(format!("segment_bytes {segment_bytes} is below {SEGMENT_BYTES_MIN}")));
        }
        if segment_bytes > self.max_bytes / 2 {
            return Err(StoreError::Config(format!(
                "segment_bytes {segment_bytes} is more than half of max_bytes {}",
                self.max_bytes
            )));
        }
        if self.max_bytes.div_ceil(segment_bytes) > SEGMENTS_MAX {
            return Err(StoreError::Config(format!("max_bytes / segment_bytes is more than {SEGMENTS_MAX} segments")));
        }
        if let FsyncPolicy::Background(interval) = self.fsync {
            if interval > FSYNC_INTERVAL_MS_MAX {
                return Err(StoreError::Config(format!(
                    "fsync interval {interval} ms is above {FSYNC_INTERVAL_MS_MAX} ms"
                )));
            }
        }
        Ok(())
    }
}
