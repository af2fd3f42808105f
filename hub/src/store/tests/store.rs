//! The store's behaviour while running: reading across segments, checkpoints, deletion, the
//! disk bound under both full policies, expiry, failed writes and the endpoint registry.

use super::{append, append_at, open, payload, read_all, segment_files, small_config, TempDir};
use crate::store::config::{MAX_BYTES_MIN, SEGMENT_BYTES_MIN};
use crate::store::{EndpointRef, FullPolicy, NewRecord, Store, StoreConfig, StoreError, ENDPOINTS_MAX};

/// A store with "$upstream" as endpoint 0 and "module:filter/input1" as endpoint 1.
fn store_with_two_endpoints(config: &StoreConfig) -> Store {
    let store = open(config);
    assert_eq!(store.endpoint_id("$upstream").expect("register"), 0);
    assert_eq!(store.endpoint_id("module:filter/input1").expect("register"), 1);
    store
}

#[test]
fn appends_are_read_back_in_order_across_segment_rolls() {
    let dir = TempDir::new("rolls");
    let config = small_config(dir.path());
    let store = store_with_two_endpoints(&config);
    let routes: [&[u16]; 3] = [&[0], &[1], &[0, 1]];
    for index in 0..300u64 {
        let seq = append(&store, routes[usize::try_from(index % 3).expect("fits")], &payload(index, 1000));
        assert_eq!(seq, index + 1, "seqs start at 1 and have no gaps");
    }
    assert!(segment_files(dir.path()).len() >= 4, "300 KB in 64 KiB segments rolls");
    for endpoint in [0u16, 1] {
        let records = read_all(&store, endpoint);
        let expected: Vec<u64> =
            (0..300u64).filter(|index| routes[usize::try_from(index % 3).expect("fits")].contains(&endpoint)).collect();
        assert_eq!(records.len(), expected.len());
        for (record, index) in records.iter().zip(&expected) {
            assert_eq!(record.seq, index + 1);
            assert_eq!(record.payload, payload(*index, 1000));
            assert_eq!(record.source, "/messages/modules/m1/outputs/o1");
            assert_eq!(record.properties, "%24.mid=1&a=b");
        }
    }
    let stats = store.stats();
    assert_eq!((stats.first_seq, stats.last_seq, stats.records_appended), (Some(1), Some(300), 300));
}

#[test]
fn a_reader_at_the_end_continues_when_records_arrive() {
    let dir = TempDir::new("tail");
    let store = store_with_two_endpoints(&small_config(dir.path()));
    let mut reader = store.reader(0);
    assert!(reader.next(0).expect("read").is_none());
    let listener = store.appended().listen();
    append(&store, &[0], b"first");
    assert!(smol::block_on(async { notified_within_a_second(listener).await }), "append notifies readers");
    assert_eq!(reader.next(0).expect("read").expect("record").payload, "first");
    assert!(reader.next(0).expect("read").is_none());
    append(&store, &[1], b"not mine");
    append(&store, &[0], b"second");
    assert_eq!(reader.next(0).expect("read").expect("record").payload, "second");
    assert_eq!(reader.position(), 3);
}

/// Waits for an event listener, at most a second.
async fn notified_within_a_second(listener: event_listener::EventListener) -> bool {
    let timeout = async {
        smol::Timer::after(std::time::Duration::from_secs(1)).await;
        false
    };
    smol::future::or(
        async {
            listener.await;
            true
        },
        timeout,
    )
    .await
}

#[test]
fn checkpoints_persist_across_reopen() {
    let dir = TempDir::new("checkpoints");
    let config = small_config(dir.path());
    let store = store_with_two_endpoints(&config);
    for index in 0..10 {
        append(&store, &[0, 1], &payload(index, 10));
    }
    store.commit(0, 4);
    store.commit(0, 3); // never moves back
    store.commit(1, 9);
    store.close().expect("close");

    let (store, report) = Store::open(config).expect("reopen");
    assert_eq!(report.checkpoints, crate::store::CheckpointLoad::Loaded { endpoints: 2 });
    assert!(report.damage.is_empty());
    let seqs = |endpoint| read_all(&store, endpoint).iter().map(|record| record.seq).collect::<Vec<_>>();
    assert_eq!(seqs(0), [5, 6, 7, 8, 9, 10]);
    assert_eq!(seqs(1), [10]);
    let stats = store.stats();
    assert_eq!(stats.endpoints[0].checkpoint, 4);
    assert_eq!(stats.endpoints[0].persisted_checkpoint, 4);
    assert_eq!(stats.endpoints[0].pending_estimate, 6);
    assert_eq!(stats.endpoints[1].name, "module:filter/input1");
}

#[test]
fn segments_are_deleted_once_every_endpoint_in_them_is_past_them() {
    let dir = TempDir::new("deletion");
    let store = store_with_two_endpoints(&small_config(dir.path()));
    // First ~4 segments for both endpoints, then ~4 for endpoint 0 only.
    let mut last_shared = 0;
    for index in 0..200 {
        last_shared = append(&store, &[0, 1], &payload(index, 1000));
    }
    let mut last = 0;
    for index in 200..400 {
        last = append(&store, &[0], &payload(index, 1000));
    }
    let segments_before = store.stats().segments;
    assert!(segments_before >= 6);

    store.commit(0, last);
    let deleted = store.reclaim(0).expect("reclaim");
    assert!(deleted >= 2, "segments with only endpoint 0's records go ({deleted} deleted)");
    let stats = store.stats();
    assert_eq!(stats.segments, segments_before - deleted);
    assert_eq!(stats.first_seq, Some(1), "endpoint 1 still needs the shared segments");

    store.commit(1, last_shared);
    let deleted = store.reclaim(0).expect("reclaim");
    assert!(deleted >= 3);
    let stats = store.stats();
    assert_eq!(stats.segments, 1, "only the active segment is left");
    assert_eq!(segment_files(dir.path()).len(), 1);
    assert_eq!(stats.bytes_on_disk, std::fs::metadata(&segment_files(dir.path())[0]).expect("stat").len());
    assert_eq!(stats.dropped_full, 0, "nothing undelivered was dropped");
    assert!(read_all(&store, 0).is_empty());
}

#[test]
fn drop_oldest_keeps_the_store_under_max_bytes_and_counts_what_it_drops() {
    let dir = TempDir::new("drop-oldest");
    let store = store_with_two_endpoints(&small_config(dir.path()));
    let mut reader = store.reader(0);
    // Read a little, so the reader sits inside the oldest segment when it is dropped.
    let mut last = 0;
    for index in 0..10 {
        last = append(&store, &[0], &payload(index, 2000));
    }
    assert_eq!(reader.next(0).expect("read").expect("record").seq, 1);
    for index in 10..1600 {
        last = append(&store, &[0], &payload(index, 2000));
        let on_disk: u64 =
            segment_files(dir.path()).iter().map(|path| std::fs::metadata(path).map_or(0, |m| m.len())).sum();
        assert!(on_disk <= MAX_BYTES_MIN, "{on_disk} bytes on disk after record {index}");
        assert_eq!(store.stats().bytes_on_disk, on_disk);
    }
    let stats = store.stats();
    assert!(stats.dropped_full > 0 && stats.dropped_segments > 0);
    assert_eq!(stats.dropped_full + stats.records_stored, last, "every record is either stored or counted dropped");
    let first_kept = stats.first_seq.expect("records kept");
    let next = reader.next(0).expect("read").expect("record");
    assert_eq!(next.seq, first_kept, "the reader skips to the oldest kept record");
    assert_eq!(reader.stats().dropped_skipped, first_kept - 2, "it reports the positions it lost");
    assert_eq!(read_all(&store, 0).len(), usize::try_from(stats.records_stored).expect("fits"));
}

#[test]
fn reject_new_refuses_when_full_until_space_is_reclaimed() {
    let dir = TempDir::new("reject-new");
    let config = StoreConfig { when_full: FullPolicy::RejectNew, ..small_config(dir.path()) };
    let store = store_with_two_endpoints(&config);
    let endpoints = [EndpointRef { id: 0, priority: 0, ttl_secs: 0 }];
    let body = payload(0, 4000);
    let record = NewRecord { enqueued_unix_ms: 1, endpoints: &endpoints, source: "/s", properties: "", payload: &body };
    let mut accepted = 0u64;
    let refused = loop {
        match store.append(&record) {
            Ok(seq) => accepted = seq,
            Err(error) => break error,
        }
    };
    assert!(matches!(refused, StoreError::Full { max_bytes } if max_bytes == MAX_BYTES_MIN), "{refused}");
    assert!(store.append(&record).is_err());
    let stats = store.stats();
    assert_eq!((stats.rejected_full, stats.dropped_full), (2, 0));
    assert!(stats.bytes_on_disk <= MAX_BYTES_MIN);
    assert_eq!(read_all(&store, 0).len(), usize::try_from(accepted).expect("fits"), "nothing was dropped");

    store.commit(0, accepted / 2);
    store.flush_checkpoints().expect("flush");
    let seq = store.append(&record).expect("room after the delivered half is deleted");
    assert_eq!(seq, accepted + 1);
}

#[test]
fn expired_records_are_skipped_and_counted() {
    let dir = TempDir::new("ttl");
    let config = StoreConfig { default_ttl_secs: 60, ..small_config(dir.path()) };
    let store = store_with_two_endpoints(&config);
    let long_lived = [EndpointRef { id: 0, priority: 0, ttl_secs: 3600 }];
    append_at(&store, &[0], b"default ttl", 1_000);
    store
        .append(&NewRecord {
            enqueued_unix_ms: 1_000,
            endpoints: &long_lived,
            source: "/s",
            properties: "",
            payload: b"an hour",
        })
        .expect("append");
    append_at(&store, &[0, 1], b"default ttl too", 1_000);

    let mut reader = store.reader(0);
    assert_eq!(
        reader.next(61_000).expect("read").expect("not yet expired").payload,
        "default ttl",
        "expires after, not at, enqueued + ttl"
    );
    let mut reader = store.reader(0);
    let record = reader.next(61_001).expect("read").expect("the hour-long record");
    assert_eq!(record.payload, "an hour");
    assert_eq!(record.endpoint(0).map(|endpoint| endpoint.ttl_secs), Some(3600));
    assert!(reader.next(61_001).expect("read").is_none());
    assert_eq!(reader.stats().expired_skipped, 2);
    assert_eq!(store.stats().expired_skipped, 2);
}

#[test]
fn segments_whose_records_all_expired_are_deleted() {
    let dir = TempDir::new("ttl-delete");
    let config = StoreConfig { default_ttl_secs: 60, ..small_config(dir.path()) };
    let store = store_with_two_endpoints(&config);
    for index in 0..200 {
        append_at(&store, &[0], &payload(index, 1000), 1_000 + index);
    }
    let segments = store.stats().segments;
    assert_eq!(store.reclaim(61_000).expect("reclaim"), 0, "nothing expired yet");
    assert_eq!(store.reclaim(1_000_000).expect("reclaim"), segments - 1);
    assert_eq!(store.stats().reclaimed_segments, u64::try_from(segments - 1).expect("fits"));
}

#[test]
fn a_failed_write_leaves_no_torn_record_and_consumes_no_seq() {
    let dir = TempDir::new("disk-full");
    let config = small_config(dir.path());
    let store = store_with_two_endpoints(&config);
    append(&store, &[0], b"one");
    let file = segment_files(dir.path()).pop().expect("segment");
    let len_before = std::fs::metadata(&file).expect("stat").len();
    let record = NewRecord {
        enqueued_unix_ms: 1,
        endpoints: &[EndpointRef { id: 0, priority: 0, ttl_secs: 0 }],
        source: "/s",
        properties: "",
        payload: b"lost",
    };
    store.fail_writes_no_space(true);
    let message = store.append(&record).expect_err("the disk is full").to_string();
    assert!(message.contains("disk full") && message.contains("seg-"), "{message}");
    assert!(message.contains("No space left on device") && !message.contains('\n'), "{message}");
    assert_eq!(std::fs::metadata(&file).expect("stat").len(), len_before, "no partial record left");
    assert_eq!(store.stats().rejected_no_space, 1);
    store.fail_writes_no_space(false);
    // A write that fails half-way once: cut back, space made, written again.
    store.fail_next_write_after(10);
    assert_eq!(append(&store, &[0], b"two"), 2, "a refused append consumes no seq");
    assert_eq!(std::fs::metadata(&file).expect("stat").len(), len_before, "the partial record was cut off");
    store.close().expect("close");

    let (store, report) = Store::open(config).expect("reopen");
    assert!(report.damage.is_empty(), "{report:?}");
    let payloads: Vec<_> = read_all(&store, 0).into_iter().map(|record| record.payload).collect();
    assert_eq!(payloads, ["one", "two"]);
}

#[test]
fn endpoint_ids_are_stable_bounded_and_checked() {
    let dir = TempDir::new("registry");
    let config = small_config(dir.path());
    let store = store_with_two_endpoints(&config);
    assert_eq!(store.endpoint_id("$upstream").expect("known"), 0);
    assert!(matches!(store.endpoint_id(""), Err(StoreError::BadEndpointName(_))));
    assert!(matches!(store.endpoint_id(&"x".repeat(300)), Err(StoreError::BadEndpointName(_))));
    assert!(matches!(
        store.append(&NewRecord {
            enqueued_unix_ms: 0,
            endpoints: &[EndpointRef { id: 2, priority: 0, ttl_secs: 0 }],
            source: "",
            properties: "",
            payload: b""
        }),
        Err(StoreError::UnknownEndpoint(2))
    ));
    for index in 2..ENDPOINTS_MAX {
        assert_eq!(usize::from(store.endpoint_id(&format!("module:m{index}/in")).expect("register")), index);
    }
    assert!(matches!(store.endpoint_id("one too many"), Err(StoreError::TooManyEndpoints)));
    store.close().expect("close");

    let (store, report) = Store::open(config).expect("reopen");
    assert_eq!(report.registry, crate::store::RegistryLoad::Loaded { endpoints: ENDPOINTS_MAX });
    assert_eq!(store.endpoint_id("module:filter/input1").expect("known"), 1);
    assert_eq!(store.endpoint_name(1023).as_deref(), Some("module:m1023/in"));
}

#[test]
fn contradictory_limits_are_refused() {
    let dir = TempDir::new("config");
    let base = small_config(dir.path());
    for config in [
        StoreConfig { max_bytes: MAX_BYTES_MIN - 1, ..base.clone() },
        StoreConfig { segment_bytes: SEGMENT_BYTES_MIN - 1, ..base.clone() },
        StoreConfig { segment_bytes: MAX_BYTES_MIN, ..base.clone() },
        StoreConfig { max_bytes: 1 << 40, segment_bytes: SEGMENT_BYTES_MIN, ..base.clone() },
        StoreConfig { fsync: crate::store::FsyncPolicy::Background(3_600_000), ..base.clone() },
    ] {
        assert!(matches!(Store::open(config), Err(StoreError::Config(_))));
    }
    let defaults = StoreConfig::new(dir.path());
    assert_eq!(defaults.effective_segment_bytes(), 16 * 1024 * 1024);
    assert_eq!(StoreConfig { max_bytes: 4 << 20, ..defaults.clone() }.effective_segment_bytes(), 512 * 1024);
    assert_eq!(StoreConfig { max_bytes: 1 << 20, ..defaults.clone() }.effective_segment_bytes(), 128 * 1024);
    assert!(defaults.validate().is_ok());
}

#[test]
fn a_batch_is_appended_in_order_and_one_that_does_not_fit_or_fails_goes_record_by_record() {
    let dir = TempDir::new("batch");
    let config = small_config(dir.path());
    let store = store_with_two_endpoints(&config);
    let payloads: Vec<Vec<u8>> = (0..80u64).map(|index| payload(index, 1000)).collect();
    let endpoints = [EndpointRef { id: 0, priority: 0, ttl_secs: 0 }, EndpointRef { id: 1, priority: 0, ttl_secs: 0 }];
    let records: Vec<NewRecord<'_>> = payloads
        .iter()
        .map(|payload| NewRecord {
            enqueued_unix_ms: 1_000,
            endpoints: &endpoints,
            source: "/messages/modules/m1/outputs/o1",
            properties: "%24.mid=1&a=b",
            payload,
        })
        .collect();
    // 40 KB fit the first 64 KiB segment in one write; the next 40 cross into a new segment,
    // so they go one at a time (rolling on the way).
    let mut seqs = Vec::new();
    store.append_many(&records[..40], &mut seqs);
    store.append_many(&records[40..], &mut seqs);
    let seqs: Vec<u64> = seqs.into_iter().map(|seq| seq.expect("appended")).collect();
    assert_eq!(seqs, (1..=80).collect::<Vec<u64>>());
    assert!(segment_files(dir.path()).len() >= 2, "the second batch rolled");
    for endpoint in [0u16, 1] {
        let read: Vec<Vec<u8>> = read_all(&store, endpoint).into_iter().map(|r| r.payload.to_vec()).collect();
        assert_eq!(read, payloads, "endpoint {endpoint}");
    }
    assert_eq!(store.stats().records_appended, 80);

    // A full disk refuses every record of a batch and consumes no seq.
    store.fail_writes_no_space(true);
    let mut refused = Vec::new();
    store.append_many(&records[..3], &mut refused);
    assert_eq!(refused.len(), 3);
    assert!(refused.iter().all(|r| matches!(r, Err(StoreError::NoSpace { .. }))), "{refused:?}");
    store.fail_writes_no_space(false);
    // A batch write that fails half-way is cut back; its records are then written one by one.
    store.fail_next_write_after(1500);
    let mut again = Vec::new();
    store.append_many(&records[..3], &mut again);
    let again: Vec<u64> = again.into_iter().map(|seq| seq.expect("appended")).collect();
    assert_eq!(again, [81, 82, 83], "a refused batch consumed no seq");
    store.close().expect("close");

    let (store, report) = Store::open(config).expect("reopen");
    assert!(report.damage.is_empty(), "no torn record left: {report:?}");
    let read: Vec<u64> = read_all(&store, 0).into_iter().map(|r| r.seq).collect();
    assert_eq!(read, (1..=83).collect::<Vec<u64>>());
}
