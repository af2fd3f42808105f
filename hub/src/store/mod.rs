//! # The offline store
//!
//! A segmented, bounded, crash-safe append-only log that keeps messages for endpoints that are
//! offline (the cloud link, a module that is not running), in the spirit of IoT Edge's store
//! and forward but without its database: records are written once, read by one cursor per
//! endpoint, and deleted a whole segment at a time.
//!
//! - **Bounded**: the segment files never exceed `max_bytes`; at the limit the oldest segment
//!   is dropped (counted) or the new record refused, per [`FullPolicy`]. Segments every
//!   endpoint in them has passed, or whose records all expired, are deleted within a second.
//! - **Crash-safe**: every record carries a CRC-32C; on open a torn tail is cut off, damage in
//!   the middle is stepped over, and the recovery report says what was lost ([`recovery`]).
//! - **Group commit**: `append` only writes; a background thread fsyncs per [`FsyncPolicy`]
//!   and wakes whoever waits in [`Store::durable`], one fsync for all records written before it.
//! - **At-least-once**: endpoints commit checkpoints, persisted lazily; after a crash delivery
//!   resumes at the last persisted checkpoint.
//!
//! # Layout
//! - [`record`]: the record format (pure);
//! - [`config`]: configuration, defaults and limits;
//! - `segment`: segment files and the buffered cursor that reads them;
//! - `appender`: the log state and the append path (write, roll, bound, delete);
//! - [`recovery`]: rebuilding the log on open;
//! - `retention`: expiry and when a segment may go (pure);
//! - `writer`: the sync thread (group commit, housekeeping);
//! - `reader`: [`EndpointReader`];
//! - `registry`, `checkpoint`: endpoint ids and checkpoints, each one atomically replaced file;
//! - `crc32c`, `fsio`, `error`, `stats`: checksum, file helpers, errors, counters.
//!
//! # Priorities
//! Readers return records in log order. A record carries each endpoint's priority, so
//! priority scheduling can be built above this layer; the simplest faithful way is IoT Edge's
//! own: register one endpoint per (endpoint, priority), e.g. "$upstream#0", "$upstream#1", and
//! route each message to the one for its route's priority. Each then has its own cursor and
//! checkpoint, and the sender picks among them (with weighted fairness, so low priorities do not
//! starve as they do in IoT Edge). One checkpoint per endpoint cannot express out-of-order
//! delivery within one cursor, which is why this layer does not reorder.

pub mod config;
pub mod record;
pub mod recovery;

mod appender;
mod checkpoint;
mod crc32c;
mod error;
mod fsio;
mod meta;
mod reader;
mod registry;
mod retention;
mod segment;
mod stats;
mod tail;
mod writer;

#[cfg(test)]
mod tests;

use std::fs;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use event_listener::Event;

pub use self::checkpoint::{CheckpointLoad, PERSIST_LAG_SEQS, SENT_LEASE_SEQS};
pub use self::config::{FsyncPolicy, FullPolicy, StoreConfig};
pub use self::error::StoreError;
pub use self::reader::EndpointReader;
pub use self::record::{EndpointRef, NewRecord, StoredRecord};
pub use self::recovery::{Damage, RecoveryReport};
pub use self::registry::{RegistryLoad, ENDPOINTS_MAX, ENDPOINT_NAME_BYTES_MAX, PLACEHOLDER_PREFIX};
pub use self::stats::{EndpointStats, ReaderStats, StoreStats};

use self::appender::{Log, Retention};
use self::checkpoint::Checkpoints;
use self::registry::Registry;
use self::stats::Counters;
use self::writer::{lock, Durability, Signal};

/// The decoders of the store's metadata files (`endpoints.reg`, `checkpoints.ckp`), for the
/// `store_metadata` fuzz target: any bytes give a value or a refusal, never a panic.
#[doc(hidden)]
pub mod fuzzing {
    use super::{checkpoint, meta, registry::Registry};

    /// Runs every metadata decoder over `bytes`; a registry that decodes re-encodes to the
    /// same names.
    pub fn metadata(bytes: &[u8]) {
        let half = bytes.len() / 2;
        for slot in [&bytes[..half], &bytes[half..]] {
            if let Ok(Some(copy)) = meta::decode_slot(slot) {
                let _ = Registry::decode(&copy.payload);
            }
        }
        for (index, cell) in bytes.chunks_exact(32).enumerate() {
            let _ = checkpoint::decode_cell(index, cell);
        }
        let _ = checkpoint::decode_legacy(bytes);
        if let Ok(registry) = Registry::decode(bytes) {
            let again = Registry::decode(&registry.encode()).expect("an encoded registry decodes");
            assert_eq!(again.len(), registry.len());
        }
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn random_and_truncated_metadata_never_panics() {
            let mut state = 0x2545_F491_4F6C_DD1Du64;
            let mut byte = || {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            };
            for len in [0usize, 1, 4, 31, 32, 64, 100, 4096] {
                for _ in 0..20 {
                    let bytes: Vec<u8> = (0..len).map(|_| byte()).collect();
                    super::metadata(&bytes);
                    super::metadata(b"TESL");
                }
            }
        }
    }
}

/// The offline store. `Send + Sync`: share it behind an `Arc`.
#[derive(Debug)]
pub struct Store {
    inner: Arc<Inner>,
    sync_thread: Option<JoinHandle<()>>,
}

// The store is shared across threads and tasks; readers move into tasks.
const _: () = {
    const fn shared_across_threads<T: Send + Sync>() {}
    shared_across_threads::<Store>();
    shared_across_threads::<EndpointReader>();
};

/// State shared by the store, its readers and its sync thread.
#[derive(Debug)]
struct Inner {
    /// Validated, with `segment_bytes` resolved.
    config: StoreConfig,
    log: Mutex<Log>,
    registry: Mutex<Registry>,
    /// Endpoints registered (ids below this are valid), readable without the registry lock.
    registered: AtomicUsize,
    checkpoints: Checkpoints,
    durability: Durability,
    signal: Signal,
    appended: Event,
    counters: Counters,
    /// The newest records, for readers that keep up (see `tail`).
    tail: Mutex<tail::TailCache>,
    /// What recovery found when the store was opened.
    report: RecoveryReport,
}

impl Store {
    /// Opens (creating if needed) the store in `config.dir` and recovers what is there.
    pub fn open(mut config: StoreConfig) -> Result<(Store, RecoveryReport), StoreError> {
        config.validate()?;
        config.segment_bytes = config.effective_segment_bytes();
        fs::create_dir_all(&config.dir).map_err(|error| StoreError::io("create", &config.dir, error))?;
        let mut report = RecoveryReport::default();
        let segments = recovery::list_segments(&config.dir, &mut report)?;
        let (mut registry, mut registry_load) = Registry::load(&config.dir)?;
        let opened = Checkpoints::open(&config.dir)?;
        let checkpoints = opened.checkpoints;
        let known = recovery::Known {
            checkpoint_max: opened.max_seq,
            checkpoint_min: (0..registry.len())
                .filter_map(|index| u16::try_from(index).ok())
                .map(|id| checkpoints.committed(id))
                .min()
                .unwrap_or(0),
            head: opened.head,
            checkpoint_of: &|id| checkpoints.committed(id),
        };
        let (log, pending) = recovery::recover(&config, segments, &known, &mut report)?;
        if registry_load == RegistryLoad::Created && log.last_routed.iter().any(|seq| *seq > 0) {
            registry_load = RegistryLoad::Lost {
                placeholders: 0,
                reason: "the registry file is missing but segments name endpoints".to_string(),
            };
        }
        if let RegistryLoad::Lost { reason, .. } = registry_load {
            // Names are gone but records are not: every id the segments name gets a
            // placeholder, so its records stay (and are counted) instead of being discarded.
            let ids = log.last_routed.iter().rposition(|seq| *seq > 0).map_or(0, |index| index + 1);
            let placeholders = registry.fill_placeholders(ids)?;
            report.deliveries_unattributable = pending.iter().take(ids).sum();
            registry_load = RegistryLoad::Lost { placeholders, reason };
        }
        checkpoints.forget_unregistered(registry.len())?;
        report.registry = registry_load;
        report.checkpoints = opened.load;
        log_report(&config, &report);
        let inner = Arc::new(Inner {
            durability: Durability::new(log.last_seq()),
            log: Mutex::new(log),
            registered: AtomicUsize::new(registry.len()),
            registry: Mutex::new(registry),
            checkpoints,
            signal: Signal::default(),
            appended: Event::new(),
            counters: Counters::default(),
            tail: Mutex::new(tail::TailCache::default()),
            report: report.clone(),
            config,
        });
        let thread_inner = Arc::clone(&inner);
        let sync_thread = std::thread::Builder::new()
            .name("store-sync".to_string())
            .spawn(move || writer::run(&thread_inner))
            .map_err(|error| StoreError::io("start the sync thread for", &inner.config.dir, error))?;
        Ok((Store { inner, sync_thread: Some(sync_thread) }, report))
    }

    /// The id of endpoint `name`, registering it (durably) if it is new.
    pub fn endpoint_id(&self, name: &str) -> Result<u16, StoreError> {
        let mut registry = lock(&self.inner.registry);
        let id = registry.register(name)?;
        self.inner.registered.store(registry.len(), Ordering::Release);
        Ok(id)
    }

    /// The name of a registered endpoint id.
    pub fn endpoint_name(&self, id: u16) -> Option<String> {
        lock(&self.inner.registry).name(id).map(str::to_string)
    }

    /// Appends a record and returns its seq. Does not wait for durability (see
    /// [`Store::durable`]). Every endpoint id must come from [`Store::endpoint_id`].
    pub fn append(&self, record: &NewRecord<'_>) -> Result<u64, StoreError> {
        let inner = &*self.inner;
        let registered = inner.registered.load(Ordering::Acquire);
        if let Some(unknown) = record.endpoints.iter().find(|endpoint| usize::from(endpoint.id) >= registered) {
            return Err(StoreError::UnknownEndpoint(unknown.id));
        }
        let len = record::encoded_len(record)?;
        let retention = Retention { checkpoints: &inner.checkpoints, registered };
        let seq = {
            let mut log = lock(&inner.log);
            let seq = log.append(&inner.config, retention, &inner.counters, record, len)?;
            inner.durability.appended(seq);
            // The head tells recovery how many records a cut tail took (a failed write of it
            // only makes that count an estimate).
            if let Err(error) = inner.checkpoints.note_head(seq) {
                log::debug!("{error} (log head)");
            }
            // Under the log lock, so the cache receives seqs in order. The payload is the end
            // of the record just written.
            let written = log.take_written();
            let payload = written.slice(len - record.payload.len()..len);
            lock(&inner.tail).push(seq, record, len, payload);
            seq
        };
        inner.counters.appended.fetch_add(1, Ordering::Relaxed);
        self.written(seq);
        Ok(seq)
    }

    /// Appends records that arrived together (e.g. the PUBLISHes of one socket read), pushing
    /// each one's outcome onto `seqs` in order: one write, one head note and one wake-up of
    /// readers for the batch when it fits the active segment and `max_bytes`; otherwise each
    /// is appended as by [`Store::append`], with its own outcome.
    pub fn append_many(&self, records: &[NewRecord<'_>], seqs: &mut Vec<Result<u64, StoreError>>) {
        if records.len() < 2 {
            seqs.extend(records.iter().map(|record| self.append(record)));
            return;
        }
        let inner = &*self.inner;
        let registered = inner.registered.load(Ordering::Acquire);
        let known =
            records.iter().all(|record| record.endpoints.iter().all(|endpoint| usize::from(endpoint.id) < registered));
        let lens: Option<Vec<usize>> = records.iter().map(|record| record::encoded_len(record).ok()).collect();
        let (Some(lens), true) = (lens, known) else {
            seqs.extend(records.iter().map(|record| self.append(record)));
            return;
        };
        let first = {
            let mut log = lock(&inner.log);
            let first = log.append_batch(&inner.config, records, &lens);
            if let Some(first) = first {
                let last = first + (records.len() as u64 - 1);
                inner.durability.appended(last);
                if let Err(error) = inner.checkpoints.note_head(last) {
                    log::debug!("{error} (log head)");
                }
                let written = log.take_written();
                let mut tail = lock(&inner.tail);
                let mut end = 0;
                for (index, (record, len)) in records.iter().zip(&lens).enumerate() {
                    end += len;
                    let payload = written.slice(end - record.payload.len()..end);
                    tail.push(first + index as u64, record, *len, payload);
                }
            }
            first
        };
        let Some(first) = first else {
            seqs.extend(records.iter().map(|record| self.append(record)));
            return;
        };
        let last = first + (records.len() as u64 - 1);
        inner.counters.appended.fetch_add(records.len() as u64, Ordering::Relaxed);
        self.written(last);
        seqs.extend((first..=last).map(Ok));
    }

    /// Everything up to `seq` is written: per the policy, durable now or after the next fsync;
    /// readers are woken.
    fn written(&self, seq: u64) {
        let inner = &*self.inner;
        match inner.config.fsync {
            FsyncPolicy::Never => inner.durability.advance(seq),
            // Acknowledged once written; the fsync follows in the background.
            FsyncPolicy::Background(_) => {
                inner.durability.advance(seq);
                inner.signal.pending();
            }
            FsyncPolicy::Always => inner.signal.pending(),
        }
        inner.appended.notify(usize::MAX);
    }

    /// Resolves when `seq` is durable per the fsync policy (`Background`, `Never`: written to
    /// the OS; `Always`: fsynced). Fails if the fsync covering it failed.
    pub async fn durable(&self, seq: u64) -> Result<(), StoreError> {
        self.inner.durability.wait(seq).await
    }

    /// The outcome for `seq` if it is decided (durable, or its fsync failed), without waiting.
    pub fn durable_outcome(&self, seq: u64) -> Option<Result<(), StoreError>> {
        self.inner.durability.check(seq)
    }

    /// Every record up to this seq is durable per the fsync policy (a cheap atomic read).
    pub fn durable_seq(&self) -> u64 {
        self.inner.durability.durable_seq()
    }

    /// [`Store::durable`] for threads.
    pub fn wait_durable_blocking(&self, seq: u64) -> Result<(), StoreError> {
        self.inner.durability.wait_blocking(seq)
    }

    /// A cursor for `endpoint_id`, positioned after its committed checkpoint.
    pub fn reader(&self, endpoint_id: u16) -> EndpointReader {
        EndpointReader::new(Arc::clone(&self.inner), endpoint_id)
    }

    /// Everything up to and including `seq` is done for `endpoint_id`. Written to the checkpoint
    /// file (in place, no fsync) once it is [`PERSIST_LAG_SEQS`] ahead of it, so after a crash
    /// no acknowledged record is sent again; fsynced with housekeeping. A seq past the last
    /// appended one is clamped to it.
    pub fn commit(&self, endpoint_id: u16, seq: u64) {
        let last = self.inner.durability.appended_seq();
        debug_assert!(seq <= last, "commit of seq {seq} past the last appended {last}");
        if usize::from(endpoint_id) < self.inner.registered.load(Ordering::Acquire) {
            self.inner.checkpoints.commit(endpoint_id, seq.min(last));
        }
    }

    /// Record `seq` of `endpoint_id` is about to be sent to a client: recorded (ahead, in
    /// leases) so that after a crash it is re-sent flagged as a possible duplicate.
    pub fn note_sent(&self, endpoint_id: u16, seq: u64) {
        self.inner.checkpoints.note_sent(endpoint_id, seq);
    }

    /// Whether record `seq` of `endpoint_id` may have been sent before this process opened the
    /// store (so a delivery of it must be flagged as a duplicate).
    pub fn maybe_sent_before(&self, endpoint_id: u16, seq: u64) -> bool {
        self.inner.checkpoints.maybe_sent_before(endpoint_id, seq)
    }

    /// Notified on every append; readers at the end of the log wait on it.
    pub fn appended(&self) -> &Event {
        &self.inner.appended
    }

    /// Persists committed checkpoints now.
    pub fn flush_checkpoints(&self) -> Result<(), StoreError> {
        let registered = self.inner.registered.load(Ordering::Acquire);
        let sync = self.inner.config.fsync != FsyncPolicy::Never;
        self.inner.checkpoints.flush(registered, sync).map(|_| ())
    }

    /// Persists checkpoints, then deletes the segments that every endpoint has passed or whose
    /// records all expired at `now_unix_ms`; returns how many. The sync thread does this every
    /// second on its own; call it to reclaim space at once.
    pub fn reclaim(&self, now_unix_ms: u64) -> Result<usize, StoreError> {
        writer::reclaim_now(&self.inner, now_unix_ms)
    }

    /// What recovery found and did when the store was opened.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.inner.report
    }

    /// A snapshot of sizes, counters and per-endpoint progress.
    pub fn stats(&self) -> StoreStats {
        let inner = &*self.inner;
        let counters = &inner.counters;
        let names: Vec<String> = {
            let registry = lock(&inner.registry);
            (0..registry.len())
                .filter_map(|index| u16::try_from(index).ok())
                .map(|id| registry.name(id).unwrap_or_default().to_string())
                .collect()
        };
        let log = lock(&inner.log);
        let records_stored: u64 = log.segments.iter().map(|segment| segment.summary.records).sum();
        let last_seq = log.last_seq();
        let first_seq =
            log.segments.iter().find(|segment| segment.summary.records > 0).map(|segment| segment.shared.first_seq);
        let endpoints = names
            .into_iter()
            .enumerate()
            .filter_map(|(index, name)| Some((u16::try_from(index).ok()?, name)))
            .map(|(id, name)| {
                let checkpoint = inner.checkpoints.committed(id);
                let last_routed = log.last_routed.get(usize::from(id)).copied().unwrap_or(0);
                EndpointStats {
                    id,
                    name,
                    checkpoint,
                    persisted_checkpoint: inner.checkpoints.persisted(id),
                    pending_estimate: last_routed.saturating_sub(checkpoint),
                }
            })
            .collect();
        StoreStats {
            bytes_on_disk: log.bytes,
            segments: log.segments.len(),
            records_appended: Counters::get(&counters.appended),
            records_stored,
            dropped_full: Counters::get(&counters.dropped_full),
            dropped_segments: Counters::get(&counters.dropped_segments),
            rejected_full: Counters::get(&counters.rejected_full),
            rejected_no_space: Counters::get(&counters.rejected_no_space),
            expired_skipped: Counters::get(&counters.expired_skipped),
            reclaimed_segments: Counters::get(&counters.reclaimed_segments),
            damaged_skipped: Counters::get(&counters.damaged_skipped),
            fsyncs: Counters::get(&counters.fsyncs),
            first_seq: if records_stored > 0 { first_seq } else { None },
            last_seq: if records_stored > 0 { Some(last_seq) } else { None },
            durable_seq: inner.durability.durable_seq(),
            endpoints,
        }
    }

    /// Stops the sync thread, makes everything appended durable (unless the policy is `Never`)
    /// and persists checkpoints, reporting the first failure. Dropping the store does the same
    /// and logs failures.
    pub fn close(mut self) -> Result<(), StoreError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), StoreError> {
        let Some(thread) = self.sync_thread.take() else {
            return Ok(());
        };
        self.inner.signal.stop();
        if thread.join().is_err() {
            log::error!("store: the sync thread panicked");
        }
        let synced = match self.inner.config.fsync {
            FsyncPolicy::Never => Ok(()),
            FsyncPolicy::Always | FsyncPolicy::Background(_) => writer::sync_now(&self.inner),
        };
        let flushed = self.flush_checkpoints();
        synced.and(flushed)
    }

    /// Test hook: the next segment write stops after `bytes` bytes and fails like a full disk.
    #[cfg(test)]
    fn fail_next_write_after(&self, bytes: usize) {
        lock(&self.inner.log).fail_next_write_after = Some(bytes);
    }

    /// Test hook: every segment write fails like a full disk (until called with `false`).
    #[cfg(test)]
    fn fail_writes_no_space(&self, failing: bool) {
        lock(&self.inner.log).fail_writes_no_space = failing;
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Err(error) = self.shutdown() {
            log::error!("{error} (while closing the store)");
        }
    }
}

fn log_report(config: &StoreConfig, report: &RecoveryReport) {
    log::info!(
        "store: opened {} ({} segments, {} records, {} bytes; next seq {})",
        config.dir.display(),
        report.segments,
        report.records,
        report.bytes,
        report.next_seq
    );
    if report.damage_count > 0 {
        log::warn!(
            "store: recovery found {} damaged regions, cut {} bytes, lost {} records",
            report.damage_count,
            report.truncated_bytes,
            report.records_lost
        );
    }
    match &report.checkpoints {
        CheckpointLoad::Corrupt(reason) => {
            log::warn!("store: checkpoints unreadable ({reason}); endpoints restart from the oldest record");
        }
        CheckpointLoad::Repaired { reason, .. } => log::warn!("store: checkpoints repaired: {reason}"),
        CheckpointLoad::Loaded { .. } | CheckpointLoad::Missing => {}
    }
    match &report.registry {
        RegistryLoad::Repaired { reason, .. } => {
            log::warn!("store: endpoint registry repaired from its second copy ({reason}); nothing lost");
        }
        RegistryLoad::Lost { placeholders, reason } => log::error!(
            "store: both copies of the endpoint registry unreadable ({reason}); {placeholders} endpoint ids kept \
             under placeholder names ({PLACEHOLDER_PREFIX}N); {} deliveries kept but undeliverable until their TTL",
            report.deliveries_unattributable
        ),
        RegistryLoad::Loaded { .. } | RegistryLoad::Created => {}
    }
}
