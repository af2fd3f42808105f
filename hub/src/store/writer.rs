//! Group commit and housekeeping: one background thread fsyncs what appenders wrote and
//! publishes the durable seq; it also persists checkpoints and deletes finished segments.
//!
//! Appenders never fsync. They write, then set a "pending" flag and wake the thread. The thread
//! takes the highest seq written so far, fsyncs the files holding it (outside the log lock, so
//! appends go on meanwhile), then publishes that seq as durable and notifies waiters. Whatever
//! is appended during one fsync is covered by the next, so N concurrent appenders share
//! ~N / (appends per fsync) fsyncs. `Always` starts the next fsync as soon as one is pending
//! (waiters wait for it: power-safe acknowledgements); `Background(n)` acknowledges at the
//! write and fsyncs at most once every n ms behind it, which bounds the fsync rate (SD card
//! wear) at 1000/n per second and what a power cut loses at about n ms.
//!
//! An fsync failure is never retried into a false success (after a failed fsync Linux may have
//! dropped the dirty pages and a second fsync reports nothing): every seq it covered is
//! reported as failed to its waiters, so the sender retries (at-least-once).

use std::collections::VecDeque;
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use event_listener::{Event, Listener};

use super::appender::Retention;
use super::config::{FsyncPolicy, HOUSEKEEPING_INTERVAL_MS};
use super::error::StoreError;
use super::fsio;
use super::Inner;

/// Failed fsync ranges remembered for waiters. When more fail, the two oldest merge into one
/// covering both (some waiters in between then see a failure for a durable record and retry:
/// a duplicate, never a loss).
const FAILED_RANGES_MAX: usize = 16;

/// Locks a mutex whose data stays consistent even if a holder panicked (every critical
/// section leaves it valid), so a poisoned lock is used as is.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Which seqs are durable, which failed, and the event their waiters listen on.
#[derive(Debug)]
pub struct Durability {
    durable_seq: AtomicU64,
    /// Every record up to this seq is fsynced (below `durable_seq` under `Background`, where
    /// records count as durable once written).
    synced_seq: AtomicU64,
    /// Highest seq ever appended, to refuse waits for seqs that will never come.
    appended_seq: AtomicU64,
    failed: Mutex<VecDeque<(u64, u64, Arc<str>)>>,
    any_failed: AtomicBool,
    event: Event,
}

impl Durability {
    pub fn new(durable_seq: u64) -> Durability {
        Durability {
            durable_seq: AtomicU64::new(durable_seq),
            synced_seq: AtomicU64::new(durable_seq),
            appended_seq: AtomicU64::new(durable_seq),
            failed: Mutex::new(VecDeque::new()),
            any_failed: AtomicBool::new(false),
            event: Event::new(),
        }
    }

    pub fn durable_seq(&self) -> u64 {
        self.durable_seq.load(Ordering::Acquire)
    }

    /// Highest seq appended so far.
    pub fn appended_seq(&self) -> u64 {
        self.appended_seq.load(Ordering::Acquire)
    }

    pub fn appended(&self, seq: u64) {
        self.appended_seq.fetch_max(seq, Ordering::AcqRel);
    }

    pub fn advance(&self, seq: u64) {
        self.durable_seq.fetch_max(seq, Ordering::AcqRel);
        self.event.notify(usize::MAX);
    }

    fn fail(&self, from: u64, through: u64, reason: Arc<str>) {
        let mut failed = lock(&self.failed);
        failed.push_back((from, through, reason));
        if failed.len() > FAILED_RANGES_MAX {
            if let (Some(first), Some(second)) = (failed.pop_front(), failed.pop_front()) {
                failed.push_front((first.0, second.1, second.2));
            }
        }
        self.any_failed.store(true, Ordering::Release);
        drop(failed);
        self.event.notify(usize::MAX);
    }

    /// The outcome for `seq` if it is decided.
    pub fn check(&self, seq: u64) -> Option<Result<(), StoreError>> {
        if self.any_failed.load(Ordering::Acquire) {
            let failed = lock(&self.failed);
            if let Some(range) = failed.iter().find(|range| range.0 <= seq && seq <= range.1) {
                return Some(Err(StoreError::Durability(range.2.clone())));
            }
        }
        if self.durable_seq() >= seq {
            return Some(Ok(()));
        }
        let last = self.appended_seq.load(Ordering::Acquire);
        if seq > last {
            return Some(Err(StoreError::NotAppended { seq, last }));
        }
        None
    }

    pub async fn wait(&self, seq: u64) -> Result<(), StoreError> {
        loop {
            if let Some(outcome) = self.check(seq) {
                return outcome;
            }
            let listener = self.event.listen();
            if let Some(outcome) = self.check(seq) {
                return outcome;
            }
            listener.await;
        }
    }

    pub fn wait_blocking(&self, seq: u64) -> Result<(), StoreError> {
        loop {
            if let Some(outcome) = self.check(seq) {
                return outcome;
            }
            let listener = self.event.listen();
            if let Some(outcome) = self.check(seq) {
                return outcome;
            }
            listener.wait();
        }
    }
}

/// How appenders and `close` wake the sync thread.
#[derive(Debug, Default)]
pub struct Signal {
    state: Mutex<SignalState>,
    wake: Condvar,
}

#[derive(Debug, Default)]
struct SignalState {
    pending: bool,
    stop: bool,
}

impl Signal {
    /// Records were written and wait for an fsync.
    pub fn pending(&self) {
        let mut state = lock(&self.state);
        if !state.pending {
            state.pending = true;
            self.wake.notify_one();
        }
    }

    pub fn stop(&self) {
        lock(&self.state).stop = true;
        self.wake.notify_one();
    }
}

/// The sync thread's loop; returns when the store closes (the final sync is the closer's).
pub fn run(inner: &Inner) {
    let interval = match inner.config.fsync {
        FsyncPolicy::Always => Some(Duration::ZERO),
        FsyncPolicy::Background(ms) => Some(Duration::from_millis(ms)),
        FsyncPolicy::Never => None,
    };
    let housekeeping_every = Duration::from_millis(HOUSEKEEPING_INTERVAL_MS);
    let mut last_sync: Option<Instant> = None;
    let mut next_housekeeping = Instant::now() + housekeeping_every;
    loop {
        let mut state = lock(&inner.signal.state);
        let (sync_due, housekeeping_due) = loop {
            let now = Instant::now();
            let sync_at = match (state.pending, interval) {
                (true, Some(interval)) => Some(last_sync.map_or(now, |last| last + interval)),
                _ => None,
            };
            let sync_due = sync_at.is_some_and(|at| at <= now);
            let housekeeping_due = next_housekeeping <= now;
            if state.stop || sync_due || housekeeping_due {
                break (sync_due, housekeeping_due);
            }
            let deadline = sync_at.map_or(next_housekeeping, |at| at.min(next_housekeeping));
            state = inner.signal.wake.wait_timeout(state, deadline - now).unwrap_or_else(PoisonError::into_inner).0;
        };
        if state.stop {
            return;
        }
        if sync_due {
            state.pending = false;
        }
        drop(state);
        if sync_due {
            last_sync = Some(Instant::now());
            // The error is logged and handed to the waiters of the seqs it covered.
            let _ = sync_now(inner);
        }
        if housekeeping_due {
            housekeeping(inner);
            next_housekeeping = Instant::now() + housekeeping_every;
        }
    }
}

/// Fsyncs everything written so far and publishes it as durable.
pub fn sync_now(inner: &Inner) -> Result<(), StoreError> {
    let (target, files, dir_unsynced) = {
        let mut log = lock(&inner.log);
        let target = log.last_seq();
        if target <= inner.durability.synced_seq.load(Ordering::Acquire) && log.unsynced.is_empty() && !log.dir_unsynced
        {
            return Ok(());
        }
        let mut files: Vec<(Arc<File>, PathBuf)> = std::mem::take(&mut log.unsynced);
        if let Some(active) = log.segments.back() {
            files.push((Arc::clone(&log.active), active.shared.path.clone()));
        }
        (target, files, std::mem::take(&mut log.dir_unsynced))
    };
    let from = inner.durability.synced_seq.load(Ordering::Acquire) + 1;
    let synced = files
        .iter()
        .try_for_each(|(file, path)| file.sync_data().map_err(|error| StoreError::io("fsync", path, error)))
        .and_then(|()| if dir_unsynced { fsio::sync_dir(&inner.config.dir) } else { Ok(()) });
    match synced {
        Ok(()) => {
            inner.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
            inner.durability.synced_seq.fetch_max(target, Ordering::AcqRel);
            inner.durability.advance(target);
            Ok(())
        }
        Err(error) => {
            log::error!("{error}; records {from}..={target} may be lost");
            inner.durability.fail(from, target, Arc::from(error.to_string()));
            // Later records are judged by later fsyncs; these are reported failed, not retried.
            inner.durability.synced_seq.fetch_max(target, Ordering::AcqRel);
            inner.durability.advance(target);
            Err(error)
        }
    }
}

/// Persists changed checkpoints, then deletes segments that are done or expired at
/// `now_unix_ms`; returns how many it deleted.
pub fn reclaim_now(inner: &Inner, now_unix_ms: u64) -> Result<usize, StoreError> {
    let registered = inner.registered.load(Ordering::Acquire);
    // Checkpoints are overwritten in place (no new space needed), so this works with the disk
    // full; a failure is logged and reclaiming goes on with what the file already holds.
    if let Err(error) = inner.checkpoints.flush(registered, inner.config.fsync != FsyncPolicy::Never) {
        static FAILED: tinyedge_platform::logger::RateLimit =
            tinyedge_platform::logger::RateLimit::new(tinyedge_platform::logger::RATE_LIMIT_INTERVAL);
        tinyedge_platform::log_limited!(
            FAILED,
            log::Level::Warn,
            "{error}; checkpoints will be written again within a second"
        );
    }
    let retention = Retention { checkpoints: &inner.checkpoints, registered };
    lock(&inner.log).reclaim(retention, &inner.counters, now_unix_ms)
}

fn housekeeping(inner: &Inner) {
    match reclaim_now(inner, unix_now_ms()) {
        Ok(0) => {}
        Ok(count) => log::debug!("store: deleted {count} segments that were delivered or expired"),
        Err(error) => {
            static FAILED: tinyedge_platform::logger::RateLimit =
                tinyedge_platform::logger::RateLimit::new(tinyedge_platform::logger::RATE_LIMIT_INTERVAL);
            tinyedge_platform::log_limited!(FAILED, log::Level::Warn, "{error}; will retry");
        }
    }
}

/// Wall-clock time for expiry (records carry Unix times).
pub fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
}
