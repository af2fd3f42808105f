//! Store benchmark: appends to tinyedge's offline log per fsync policy, against a plain
//! sequential write + fsync of the same bytes on the same disk in the same run, and replay of
//! a cold log.
//!
//! Run: `cargo run --release -p tinyedge-benches --bin store`. Appenders wait for durability in
//! groups of 16 (IoT Edge's in-flight window per client), with 4 concurrent appenders, as
//! publishers on a busy gateway would; the raw baseline writes the same record bytes and
//! fsyncs under the same grouping rule.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tinyedge_hub::store::{EndpointRef, FsyncPolicy, NewRecord, Store, StoreConfig};

const RECORDS_PER_APPENDER: usize = 5_000;
const APPENDERS: usize = 4;
/// Records an appender writes before waiting for them to be durable (a client's window).
const GROUP: usize = 16;

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tinyedge-store-bench-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("bench dir");
    dir
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

const PROPERTIES: &str = "%24.mid=123&%24.cdid=gw&%24.cmid=sensor&%24.on=out1";
const SOURCE: &str = "/messages/modules/sensor/outputs/out1";

/// Appends through the store; returns elapsed time and bytes of records appended.
fn store_run(dir: &Path, policy: FsyncPolicy, payload_bytes: usize) -> (Duration, u64, u64) {
    let mut config = StoreConfig::new(dir);
    config.fsync = policy;
    config.max_bytes = 1024 * 1024 * 1024;
    let (store, _) = Store::open(config).expect("open store");
    let store = Arc::new(store);
    let endpoint = store.endpoint_id("$upstream").expect("endpoint");
    let start = Instant::now();
    let threads: Vec<_> = (0..APPENDERS)
        .map(|_| {
            let store = store.clone();
            std::thread::spawn(move || {
                let payload = vec![b'p'; payload_bytes];
                let refs = [EndpointRef { id: endpoint, priority: 0, ttl_secs: 0 }];
                let mut last = 0;
                for i in 0..RECORDS_PER_APPENDER {
                    let record = NewRecord {
                        enqueued_unix_ms: now_ms(),
                        endpoints: &refs,
                        source: SOURCE,
                        properties: PROPERTIES,
                        payload: &payload,
                    };
                    last = store.append(&record).expect("append");
                    if (i + 1) % GROUP == 0 {
                        store.wait_durable_blocking(last).expect("durable");
                    }
                }
                store.wait_durable_blocking(last).expect("durable");
            })
        })
        .collect();
    for t in threads {
        t.join().expect("appender");
    }
    let elapsed = start.elapsed();
    let stats = store.stats();
    drop(store);
    (elapsed, stats.bytes_on_disk, stats.fsyncs)
}

/// The same bytes written to one file by 4 threads through a mutex, fsynced by a group rule
/// like the store's: `Always` — every group of 16 per thread; interval — at most every n ms;
/// never — not at all.
fn raw_run(dir: &Path, policy: FsyncPolicy, record_bytes: usize) -> Duration {
    let file = Arc::new(std::sync::Mutex::new(
        OpenOptions::new().create(true).append(true).open(dir.join("raw.log")).expect("raw file"),
    ));
    let last_sync = Arc::new(std::sync::Mutex::new(Instant::now() - Duration::from_secs(1)));
    let start = Instant::now();
    let threads: Vec<_> = (0..APPENDERS)
        .map(|_| {
            let file = file.clone();
            let last_sync = last_sync.clone();
            std::thread::spawn(move || {
                let record = vec![b'r'; record_bytes];
                for i in 0..RECORDS_PER_APPENDER {
                    let mut f = file.lock().expect("lock");
                    f.write_all(&record).expect("write");
                    if (i + 1) % GROUP == 0 {
                        match policy {
                            FsyncPolicy::Always => f.sync_data().expect("fsync"),
                            FsyncPolicy::Background(ms) => {
                                // The writer does not wait; an fsync at most every `ms`.
                                drop(f);
                                let mut last = last_sync.lock().expect("lock");
                                if last.elapsed() >= Duration::from_millis(ms) {
                                    file.lock().expect("lock").sync_data().expect("fsync");
                                    *last = Instant::now();
                                }
                            }
                            FsyncPolicy::Never => {}
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("raw appender");
    }
    start.elapsed()
}

/// Opens the log (recovery scan) and reads every record back.
fn replay(dir: &Path) -> (Duration, usize) {
    // Best effort: drop the page cache so the read is cold (needs root; otherwise warm).
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
    let start = Instant::now();
    let (store, _) = Store::open(StoreConfig::new(dir)).expect("reopen");
    let endpoint = store.endpoint_id("$upstream").expect("endpoint");
    let mut reader = store.reader(endpoint);
    let mut count = 0;
    while let Ok(Some(_)) = reader.next(now_ms()) {
        count += 1;
    }
    (start.elapsed(), count)
}

fn main() {
    let total = APPENDERS * RECORDS_PER_APPENDER;
    println!("Store benchmark: {APPENDERS} appenders × {RECORDS_PER_APPENDER} records, durability awaited every {GROUP} records per appender.\n");
    println!("| payload | fsync policy | tinyedge msgs/s | tinyedge MB/s | raw write+fsync msgs/s | ratio | fsyncs |");
    println!("|---|---|---|---|---|---|---|");
    let mut replay_rows = Vec::new();
    for payload in [64usize, 1024] {
        for (name, policy) in [
            ("always", FsyncPolicy::Always),
            ("background = 1000 ms", FsyncPolicy::Background(1000)),
            ("never", FsyncPolicy::Never),
        ] {
            let dir = temp_dir(&format!("{payload}-{}", name.replace(' ', "")));
            let (elapsed, bytes, fsyncs) = store_run(&dir.join("store"), policy, payload);
            let record_bytes = (bytes as usize / total).max(1);
            let raw = raw_run(&dir, policy, record_bytes);
            let rate = total as f64 / elapsed.as_secs_f64();
            let raw_rate = total as f64 / raw.as_secs_f64();
            println!(
                "| {payload} B | {name} | {rate:.0} | {:.1} | {raw_rate:.0} | {:.2} | {fsyncs} |",
                bytes as f64 / elapsed.as_secs_f64() / 1e6,
                rate / raw_rate
            );
            if name == "never" {
                let (t, count) = replay(&dir.join("store"));
                replay_rows.push((payload, count, t, bytes));
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    println!("\n| replay (open + read all) | records | time | msgs/s | MB/s |\n|---|---|---|---|---|");
    for (payload, count, t, bytes) in replay_rows {
        println!(
            "| {payload} B | {count} | {:.0} ms | {:.0} | {:.1} |",
            t.as_secs_f64() * 1000.0,
            count as f64 / t.as_secs_f64(),
            bytes as f64 / t.as_secs_f64() / 1e6
        );
    }
}
