//! Group commit: many threads appending at once all become durable, share fsyncs, and read
//! back in order; the async and blocking waits; waits that can never succeed.

use std::sync::Arc;

use super::TempDir;
use crate::store::{EndpointRef, FsyncPolicy, NewRecord, Store, StoreConfig, StoreError};

const THREADS: u64 = 4;
const APPENDS_PER_THREAD: u64 = 2500;
/// Each thread waits for durability after this many appends, like a broker acknowledging a
/// burst of QoS 1 publishes.
const BATCH: u64 = 50;

fn config(dir: &std::path::Path, fsync: FsyncPolicy) -> StoreConfig {
    StoreConfig { fsync, max_bytes: 16 << 20, segment_bytes: 256 << 10, default_ttl_secs: -1, ..StoreConfig::new(dir) }
}

fn concurrent_appends_become_durable_and_read_in_order(fsync: FsyncPolicy) {
    let dir = TempDir::new("group-commit");
    let store = Arc::new(Store::open(config(dir.path(), fsync)).expect("open").0);
    let endpoint = store.endpoint_id("$upstream").expect("register");
    let workers: Vec<_> = (0..THREADS)
        .map(|thread| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                let endpoints = [EndpointRef { id: endpoint, priority: 0, ttl_secs: 0 }];
                let mut batch = Vec::new();
                for index in 0..APPENDS_PER_THREAD {
                    let payload = format!("{thread}:{index}");
                    let record = NewRecord {
                        enqueued_unix_ms: 1,
                        endpoints: &endpoints,
                        source: "/s",
                        properties: "",
                        payload: payload.as_bytes(),
                    };
                    batch.push(store.append(&record).expect("append"));
                    if batch.len() as u64 == BATCH || index + 1 == APPENDS_PER_THREAD {
                        for seq in batch.drain(..) {
                            if thread == 0 {
                                smol::block_on(store.durable(seq)).expect("durable");
                            } else {
                                store.wait_durable_blocking(seq).expect("durable");
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("worker");
    }
    let total = THREADS * APPENDS_PER_THREAD;
    let stats = store.stats();
    assert!(stats.durable_seq >= total, "{fsync:?}: durable {} of {total}", stats.durable_seq);
    if fsync != FsyncPolicy::Never {
        assert!(stats.fsyncs > 0 && stats.fsyncs < total / 4, "{fsync:?}: {} fsyncs for {total} appends", stats.fsyncs);
    }

    let mut next_index = [0u64; THREADS as usize];
    let mut reader = store.reader(endpoint);
    let mut count = 0;
    while let Some(record) = reader.next(0).expect("read") {
        let text = std::str::from_utf8(&record.payload).expect("utf-8");
        let (thread, index) = text.split_once(':').expect("thread:index");
        let thread: usize = thread.parse().expect("thread");
        assert_eq!(index.parse::<u64>().expect("index"), next_index[thread], "{fsync:?}: per-thread order");
        next_index[thread] += 1;
        count += 1;
    }
    assert_eq!(count, total);
}

#[test]
fn background_fsync_acknowledges_at_the_write() {
    concurrent_appends_become_durable_and_read_in_order(FsyncPolicy::Background(10));
}

#[test]
fn group_commit_always() {
    concurrent_appends_become_durable_and_read_in_order(FsyncPolicy::Always);
}

#[test]
fn without_fsync_records_are_durable_once_written() {
    concurrent_appends_become_durable_and_read_in_order(FsyncPolicy::Never);
}

#[test]
fn waiting_for_a_seq_never_appended_fails_at_once() {
    let dir = TempDir::new("not-appended");
    let (store, _) = Store::open(config(dir.path(), FsyncPolicy::Always)).expect("open");
    store.endpoint_id("$upstream").expect("register");
    assert!(store.wait_durable_blocking(0).is_ok(), "seq 0 is nothing, always durable");
    assert!(matches!(store.wait_durable_blocking(1), Err(StoreError::NotAppended { seq: 1, last: 0 })));
    let endpoints = [EndpointRef { id: 0, priority: 0, ttl_secs: 0 }];
    let seq = store
        .append(&NewRecord { enqueued_unix_ms: 1, endpoints: &endpoints, source: "/s", properties: "", payload: b"x" })
        .expect("append");
    smol::block_on(store.durable(seq)).expect("durable");
    assert!(matches!(smol::block_on(store.durable(seq + 1)), Err(StoreError::NotAppended { .. })));
}

#[test]
fn closing_makes_pending_records_durable() {
    let dir = TempDir::new("close-durable");
    // An interval so long that only close can be what fsyncs the second record.
    let config = config(dir.path(), FsyncPolicy::Background(60_000));
    let (store, _) = Store::open(config.clone()).expect("open");
    store.endpoint_id("$upstream").expect("register");
    let endpoints = [EndpointRef { id: 0, priority: 0, ttl_secs: 0 }];
    let record = NewRecord { enqueued_unix_ms: 1, endpoints: &endpoints, source: "/s", properties: "", payload: b"x" };
    let first = store.append(&record).expect("append");
    store.wait_durable_blocking(first).expect("acknowledged at the write");
    let fsyncs_after_first = {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while store.stats().fsyncs == 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        store.stats().fsyncs
    };
    assert_eq!(fsyncs_after_first, 1, "the first background fsync does not wait for an interval");
    let second = store.append(&record).expect("append");
    store.wait_durable_blocking(second).expect("acknowledged at the write, no timer");
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(store.stats().fsyncs, 1, "the next background fsync waits for the interval");
    store.close().expect("close");
    let (store, report) = Store::open(config).expect("reopen");
    assert_eq!((report.records, store.stats().durable_seq), (2, 2));
}
