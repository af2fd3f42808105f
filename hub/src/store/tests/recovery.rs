//! Recovery on open: torn tails, garbage, bit flips in the middle and at the end, damaged
//! older segments, lost metadata files; what is kept, what is reported, and that seqs go on.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;

use super::{append, open, payload, read_all, segment_files, small_config, TempDir, XorShift};
use crate::store::record::{encoded_len, HEADER_BYTES};
use crate::store::{CheckpointLoad, EndpointRef, NewRecord, RegistryLoad, Store, StoreConfig};

const PAYLOAD_BYTES: usize = 100;

/// A closed store with `count` equal-sized records for endpoint 0; returns the record size.
fn store_with_records(config: &StoreConfig, count: u64) -> u64 {
    let store = open(config);
    assert_eq!(store.endpoint_id("$upstream").expect("register"), 0);
    for index in 0..count {
        append(&store, &[0], &payload(index, PAYLOAD_BYTES));
    }
    store.close().expect("close");
    let body = payload(0, PAYLOAD_BYTES);
    let record = NewRecord {
        enqueued_unix_ms: 0,
        endpoints: &[EndpointRef { id: 0, priority: 0, ttl_secs: 0 }],
        source: "/messages/modules/m1/outputs/o1",
        properties: "%24.mid=1&a=b",
        payload: &body,
    };
    u64::try_from(encoded_len(&record).expect("valid")).expect("fits")
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).expect("stat").len()
}

fn flip_byte(path: &Path, offset: u64) {
    let mut bytes = fs::read(path).expect("read");
    bytes[usize::try_from(offset).expect("fits")] ^= 0x20;
    fs::write(path, bytes).expect("write");
}

fn seqs(store: &Store) -> Vec<u64> {
    read_all(store, 0).iter().map(|record| record.seq).collect()
}

#[test]
fn a_clean_reopen_reports_nothing_and_everything_is_durable() {
    let dir = TempDir::new("clean");
    let config = small_config(dir.path());
    store_with_records(&config, 20);
    let (store, report) = Store::open(config).expect("reopen");
    assert_eq!((report.records, report.next_seq, report.damage_count), (20, 21, 0));
    assert_eq!(report.registry, RegistryLoad::Loaded { endpoints: 1 });
    assert_eq!(store.stats().durable_seq, 20);
    assert_eq!(seqs(&store), (1..=20).collect::<Vec<_>>());
}

#[test]
fn a_torn_tail_is_cut_and_appends_continue_after_it() {
    let dir = TempDir::new("torn");
    let config = small_config(dir.path());
    let size = store_with_records(&config, 20);
    let file = segment_files(dir.path()).pop().expect("segment");
    let len = file_len(&file);
    OpenOptions::new().write(true).open(&file).expect("open").set_len(len - 7).expect("cut mid-record");

    let (store, report) = Store::open(config.clone()).expect("reopen");
    assert_eq!(report.truncated_bytes, size - 7);
    // The lost seq is not reused: the head says it was appended.
    assert_eq!((report.records_lost, report.records, report.next_seq), (1, 19, 21));
    assert_eq!(report.damage[0].offset, len - size);
    assert_eq!(file_len(&file), len - size, "cut back to the end of the last whole record");
    assert_eq!(append(&store, &[0], b"after the crash"), 21);
    assert_eq!(seqs(&store), (1..=19).chain([21]).collect::<Vec<_>>());
    drop(store);
    let (_, report) = Store::open(config).expect("reopen again");
    assert_eq!((report.damage_count, report.records), (0, 20));
}

#[test]
fn garbage_after_the_last_record_is_cut_without_losing_records() {
    let dir = TempDir::new("garbage");
    let config = small_config(dir.path());
    store_with_records(&config, 20);
    let file = segment_files(dir.path()).pop().expect("segment");
    let mut garbage = XorShift::new(9).bytes(1000);
    garbage[0] = 0xEE;
    OpenOptions::new().append(true).open(&file).expect("open").write_all(&garbage).expect("append garbage");

    let (store, report) = Store::open(config).expect("reopen");
    assert_eq!((report.truncated_bytes, report.records_lost, report.records), (1000, 0, 20));
    assert_eq!(append(&store, &[0], b"next"), 21);
    assert_eq!(seqs(&store).len(), 21);
}

#[test]
fn a_flipped_byte_in_the_last_record_loses_only_that_record() {
    let dir = TempDir::new("flip-last");
    let config = small_config(dir.path());
    let size = store_with_records(&config, 20);
    let file = segment_files(dir.path()).pop().expect("segment");
    flip_byte(&file, file_len(&file) - 5);

    let (store, report) = Store::open(config).expect("reopen");
    assert_eq!((report.truncated_bytes, report.records_lost, report.records), (size, 1, 19));
    assert_eq!(append(&store, &[0], b"next"), 21);
}

#[test]
fn damage_between_valid_records_is_stepped_over() {
    let dir = TempDir::new("flip-middle");
    let config = small_config(dir.path());
    let size = store_with_records(&config, 20);
    let file = segment_files(dir.path()).pop().expect("segment");
    // Record 5 (seq 5) gets a flipped payload byte; records 6..=20 follow it intact.
    flip_byte(&file, 4 * size + u64::try_from(HEADER_BYTES).expect("fits") + 40);

    let (store, report) = Store::open(config).expect("reopen");
    assert_eq!((report.truncated_bytes, report.records_lost, report.records), (0, 1, 19));
    assert_eq!((report.damage[0].offset, report.damage[0].bytes), (4 * size, size));
    assert_eq!(report.next_seq, 21, "seqs continue after the highest valid one");
    let expected: Vec<u64> = (1..=20).filter(|&seq| seq != 5).collect();
    let mut reader = store.reader(0);
    let mut read = Vec::new();
    while let Some(record) = reader.next(0).expect("read") {
        read.push(record.seq);
    }
    assert_eq!(read, expected);
    assert_eq!(reader.stats().damaged_skipped, 1);
    assert_eq!(append(&store, &[0], b"next"), 21);
}

#[test]
fn a_damaged_older_segment_loses_only_its_damaged_part() {
    let dir = TempDir::new("older");
    let config = small_config(dir.path());
    let size = store_with_records(&config, 1500);
    let files = segment_files(dir.path());
    assert!(files.len() >= 3);
    let per_segment = file_len(&files[0]) / size;
    // The first segment loses its last record to a torn write; the second gets a bit flip in
    // its third record.
    OpenOptions::new().write(true).open(&files[0]).expect("open").set_len(file_len(&files[0]) - 3).expect("cut");
    flip_byte(&files[1], 2 * size + 30);

    let (store, report) = Store::open(config).expect("reopen");
    assert_eq!(report.damage_count, 2);
    assert_eq!(report.records_lost, 2);
    assert_eq!(report.truncated_bytes, 0, "older segments are not rewritten");
    assert_eq!(report.records, 1498);
    let lost = [per_segment, per_segment + 3];
    let expected: Vec<u64> = (1..=1500).filter(|seq| !lost.contains(seq)).collect();
    assert_eq!(seqs(&store), expected);
}

#[test]
fn a_missing_or_corrupt_checkpoint_file_restarts_from_the_oldest_record() {
    let dir = TempDir::new("checkpoint-lost");
    let config = small_config(dir.path());
    store_with_records(&config, 5);
    let (store, _) = Store::open(config.clone()).expect("reopen");
    store.commit(0, 5);
    store.close().expect("close");
    fs::write(dir.path().join("checkpoints.ckp"), b"not a checkpoint file").expect("corrupt it");

    let (store, report) = Store::open(config.clone()).expect("reopen");
    assert!(matches!(report.checkpoints, CheckpointLoad::Corrupt(_)), "{:?}", report.checkpoints);
    assert_eq!(seqs(&store), [1, 2, 3, 4, 5], "at-least-once: delivered again, none skipped");
    drop(store);
    fs::remove_file(dir.path().join("checkpoints.ckp")).expect("remove");
    let (store, report) = Store::open(config).expect("reopen");
    assert_eq!(report.checkpoints, CheckpointLoad::Missing);
    assert_eq!(seqs(&store).len(), 5);
}

#[test]
fn seqs_never_go_back_below_a_checkpoint() {
    let dir = TempDir::new("seq-floor");
    let config = small_config(dir.path());
    let size = store_with_records(&config, 10);
    let (store, _) = Store::open(config.clone()).expect("reopen");
    store.commit(0, 10);
    store.close().expect("close");
    // The last three records were delivered, then lost (never fsynced before a power cut).
    let file = segment_files(dir.path()).pop().expect("segment");
    OpenOptions::new().write(true).open(&file).expect("open").set_len(7 * size).expect("cut");

    let (store, report) = Store::open(config).expect("reopen");
    assert_eq!((report.records, report.next_seq), (7, 11));
    assert_eq!(append(&store, &[0], b"new"), 11, "a new record is never hidden behind the checkpoint");
    assert_eq!(seqs(&store), [11]);
    assert_eq!(segment_files(dir.path()).len(), 2, "a new segment starts at the new seq");
}

#[test]
fn leftover_temp_files_are_removed() {
    let dir = TempDir::new("temp-files");
    let config = small_config(dir.path());
    store_with_records(&config, 1);
    fs::write(dir.path().join("checkpoints.ckp.tmp"), b"half written").expect("write");
    let (_, report) = Store::open(config).expect("reopen");
    assert_eq!(report.temp_files_removed, 1);
    assert!(!dir.path().join("checkpoints.ckp.tmp").exists());
}

#[test]
fn a_lost_registry_keeps_the_records_under_placeholder_names() {
    let dir = TempDir::new("registry-lost");
    let config = small_config(dir.path());
    store_with_records(&config, 5);
    let (store, _) = Store::open(config.clone()).expect("reopen");
    store.commit(0, 2);
    store.close().expect("close");
    fs::write(dir.path().join("endpoints.reg"), b"garbage").expect("corrupt it");

    let (store, report) = Store::open(config.clone()).expect("reopen");
    assert!(matches!(&report.registry, RegistryLoad::Lost { placeholders: 1, .. }), "{:?}", report.registry);
    assert_eq!((report.records, report.deliveries_unattributable), (5, 3), "nothing discarded, 3 undeliverable");
    assert_eq!(store.endpoint_name(0).as_deref(), Some("lost-endpoint-0"));
    assert_eq!(store.endpoint_id("module:other/input").expect("register"), 1, "a new endpoint gets a new id");
    assert_eq!(seqs(&store), [3, 4, 5], "id 0 keeps its records and its checkpoint");
    drop(store);

    fs::remove_file(dir.path().join("endpoints.reg")).expect("remove it");
    let (store, report) = Store::open(config).expect("reopen");
    assert!(matches!(&report.registry, RegistryLoad::Lost { placeholders: 1, .. }), "{:?}", report.registry);
    assert_eq!(seqs(&store), [3, 4, 5], "a deleted registry file is a lost registry, not an empty store");
}

#[test]
fn one_damaged_registry_copy_is_repaired_from_the_other() {
    let dir = TempDir::new("registry-flip");
    let config = small_config(dir.path());
    store_with_records(&config, 5);
    let path = dir.path().join("endpoints.reg");
    let len = file_len(&path);
    for offset in [10, len / 2 + 10] {
        flip_byte(&path, offset);
        let (store, report) = Store::open(config.clone()).expect("reopen");
        assert!(matches!(&report.registry, RegistryLoad::Repaired { endpoints: 1, .. }), "{:?}", report.registry);
        assert_eq!((report.records, report.records_lost), (5, 0));
        assert_eq!(seqs(&store), [1, 2, 3, 4, 5]);
    }
    let (_, report) = Store::open(config).expect("reopen");
    assert_eq!(report.registry, RegistryLoad::Loaded { endpoints: 1 }, "both copies good again");
}

#[test]
fn a_damaged_checkpoint_cell_falls_back_to_its_other_copy() {
    let dir = TempDir::new("checkpoint-flip");
    let config = small_config(dir.path());
    store_with_records(&config, 20);
    let (store, _) = Store::open(config.clone()).expect("reopen");
    for seq in 1..=20 {
        store.commit(0, seq);
    }
    store.close().expect("close");
    // Endpoint 0's two cells follow the header (64 bytes) and the head's two cells.
    let path = dir.path().join("checkpoints.ckp");
    let cells = 64 + 2 * 32;
    let (store, report) = Store::open(config.clone()).expect("reopen");
    assert_eq!(report.checkpoints, CheckpointLoad::Loaded { endpoints: 1 });
    drop(store);
    flip_byte(&path, cells + 9);
    let (store, report) = Store::open(config.clone()).expect("reopen");
    assert!(matches!(&report.checkpoints, CheckpointLoad::Repaired { cells_repaired: 1, endpoints_reset: 0, .. }));
    let left = seqs(&store);
    assert!(left.len() < 20 && left.last() == Some(&20) || left.is_empty(), "an older checkpoint at worst: {left:?}");
    drop(store);
    flip_byte(&path, cells + 9);
    flip_byte(&path, cells + 32 + 9);
    let (store, report) = Store::open(config).expect("reopen");
    assert!(
        matches!(&report.checkpoints, CheckpointLoad::Repaired { endpoints_reset: 1, .. }),
        "{:?}",
        report.checkpoints
    );
    assert_eq!(seqs(&store).len(), 20, "both copies damaged: from the oldest record, none skipped");
}

#[test]
fn a_cut_tail_is_counted_exactly_from_the_head() {
    let dir = TempDir::new("tail-cut");
    let config = small_config(dir.path());
    let size = store_with_records(&config, 50);
    let file = segment_files(dir.path()).pop().expect("segment");
    // A cut at a record boundary leaves no torn record to see; the head still tells.
    OpenOptions::new().write(true).open(&file).expect("open").set_len(20 * size).expect("cut");
    let (store, report) = Store::open(config.clone()).expect("reopen");
    assert_eq!((report.records, report.records_lost, report.next_seq), (20, 30, 51));
    drop(store);

    let dir = TempDir::new("tail-torn");
    let config = small_config(dir.path());
    let size = store_with_records(&config, 50);
    let file = segment_files(dir.path()).pop().expect("segment");
    OpenOptions::new().write(true).open(&file).expect("open").set_len(10 * size + 7).expect("cut");
    let (_, report) = Store::open(config).expect("reopen");
    assert_eq!((report.records, report.records_lost), (10, 40), "a torn cut: exact too");
}
