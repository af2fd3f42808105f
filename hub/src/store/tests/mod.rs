//! Tests of the offline store, by concern, and the helpers they share.

mod crash;
mod durability;
mod record;
mod recovery;
mod store;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{EndpointRef, FsyncPolicy, FullPolicy, NewRecord, Store, StoreConfig};

/// A fresh directory under the system temp dir, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let unique = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("tinyedge-store-{name}-{}-{unique}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Deterministic xorshift64* generator: property tests without a dependency.
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> XorShift {
        XorShift(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-ish in `0..bound` (bound > 0).
    pub fn below(&mut self, bound: usize) -> usize {
        usize::try_from(self.next_u64() % u64::try_from(bound).expect("bound fits")).expect("fits")
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64().to_le_bytes()[0]).collect()
    }
}

/// The smallest store the limits allow: 1 MiB in 64 KiB segments, fsync off (tests that need
/// durability set it), records never expire unless a test says so.
pub fn small_config(dir: &Path) -> StoreConfig {
    StoreConfig {
        dir: dir.to_path_buf(),
        max_bytes: super::config::MAX_BYTES_MIN,
        segment_bytes: super::config::SEGMENT_BYTES_MIN,
        fsync: FsyncPolicy::Never,
        when_full: FullPolicy::DropOldest,
        default_ttl_secs: -1,
    }
}

pub fn open(config: &StoreConfig) -> Store {
    Store::open(config.clone()).expect("open store").0
}

/// Appends a record routed to `endpoints` (default priority and TTL) with `payload`.
pub fn append(store: &Store, endpoints: &[u16], payload: &[u8]) -> u64 {
    append_at(store, endpoints, payload, 1_000)
}

pub fn append_at(store: &Store, endpoints: &[u16], payload: &[u8], enqueued_unix_ms: u64) -> u64 {
    let endpoints: Vec<EndpointRef> =
        endpoints.iter().map(|&id| EndpointRef { id, priority: 0, ttl_secs: 0 }).collect();
    store
        .append(&NewRecord {
            enqueued_unix_ms,
            endpoints: &endpoints,
            source: "/messages/modules/m1/outputs/o1",
            properties: "%24.mid=1&a=b",
            payload,
        })
        .expect("append")
}

/// A payload that names its index, padded to `len`.
pub fn payload(index: u64, len: usize) -> Vec<u8> {
    let mut bytes = format!("message {index:08}").into_bytes();
    bytes.resize(len.max(bytes.len()), b'.');
    bytes
}

/// Every record the reader for `endpoint` returns until the end of the log.
pub fn read_all(store: &Store, endpoint: u16) -> Vec<super::StoredRecord> {
    let mut reader = store.reader(endpoint);
    let mut records = Vec::new();
    while let Some(record) = reader.next(2_000).expect("read") {
        records.push(super::StoredRecord::clone(&record));
    }
    records
}

/// The segment files in `dir`, oldest first.
pub fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("list")
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.file_name().and_then(|name| name.to_str()).is_some_and(|name| name.starts_with("seg-")))
        .collect();
    files.sort();
    files
}
