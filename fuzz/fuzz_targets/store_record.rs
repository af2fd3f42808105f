//! Fuzz the offline store's record decoder: any bytes must give a record, "incomplete" or
//! "corrupt", never a panic; the consumed length never exceeds the input; a decoded record
//! re-encodes to exactly the bytes it came from (nothing is silently normalised); errors render
//! on one line.
#![no_main]

use tinyedge_hub::store::record::{decode, encode, NewRecord};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    match decode(data) {
        Ok((record, used)) => {
            assert!(used <= data.len());
            let again = NewRecord {
                enqueued_unix_ms: record.enqueued_unix_ms,
                endpoints: &record.endpoints,
                source: &record.source,
                properties: &record.properties,
                payload: &record.payload,
            };
            let mut encoded = Vec::new();
            encode(record.seq, &again, &mut encoded).expect("a decoded record is within the limits");
            assert_eq!(encoded, &data[..used]);
        }
        Err(error) => assert!(!error.to_string().contains('\n'), "multi-line error: {error}"),
    }
});
