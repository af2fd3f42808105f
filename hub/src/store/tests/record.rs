//! The record format: round trips, torn writes, bit flips and garbage, property-style over
//! thousands of generated cases with a fixed seed.

use super::XorShift;
use crate::store::record::{
    decode, encode, encoded_len, peek, DecodeError, EncodeError, EndpointRef, NewRecord, StoredRecord,
    ENDPOINTS_PER_RECORD_MAX, HEADER_BYTES, PAYLOAD_BYTES_MAX, PROPERTIES_BYTES_MAX, RECORD_BYTES_MAX,
    SOURCE_BYTES_MAX,
};

/// An owned record to encode, generated at random.
struct Case {
    seq: u64,
    enqueued_unix_ms: u64,
    endpoints: Vec<EndpointRef>,
    source: String,
    properties: String,
    payload: Vec<u8>,
}

impl Case {
    fn random(rng: &mut XorShift, payload_max: usize) -> Case {
        let endpoints = (0..1 + rng.below(4))
            .map(|_| EndpointRef {
                id: u16::try_from(rng.below(1024)).expect("fits"),
                priority: u8::try_from(rng.below(10)).expect("fits"),
                ttl_secs: u32::try_from(rng.below(100_000)).expect("fits"),
            })
            .collect();
        let words = ["m1", "filter", "output1", "é", "温度", "$", "%24"];
        let source = format!("/messages/modules/{}/outputs/{}", words[rng.below(words.len())], rng.below(100));
        let properties =
            (0..rng.below(4)).map(|i| format!("k{i}={}", words[rng.below(words.len())])).collect::<Vec<_>>();
        let payload_len = rng.below(payload_max + 1);
        Case {
            seq: rng.next_u64(),
            enqueued_unix_ms: rng.next_u64() >> 20,
            endpoints,
            source,
            properties: properties.join("&"),
            payload: rng.bytes(payload_len),
        }
    }

    fn record(&self) -> NewRecord<'_> {
        NewRecord {
            enqueued_unix_ms: self.enqueued_unix_ms,
            endpoints: &self.endpoints,
            source: &self.source,
            properties: &self.properties,
            payload: &self.payload,
        }
    }

    fn encoded(&self) -> Vec<u8> {
        let mut out = Vec::new();
        encode(self.seq, &self.record(), &mut out).expect("within limits");
        out
    }

    fn expected(&self) -> StoredRecord {
        StoredRecord {
            seq: self.seq,
            enqueued_unix_ms: self.enqueued_unix_ms,
            endpoints: self.endpoints.clone(),
            source: self.source.clone(),
            properties: self.properties.clone(),
            payload: bytes::Bytes::from(self.payload.clone()),
        }
    }
}

#[test]
fn records_round_trip_and_report_their_length() {
    let mut rng = XorShift::new(1);
    for _ in 0..2000 {
        let case = Case::random(&mut rng, 300);
        let mut buf = vec![0xAB; 3]; // encode appends after what is there
        let written = encode(case.seq, &case.record(), &mut buf).expect("encode");
        assert_eq!(written, buf.len() - 3);
        assert_eq!(written, encoded_len(&case.record()).expect("len"));
        buf.extend_from_slice(b"next record");
        let (decoded, used) = decode(&buf[3..]).expect("decode");
        assert_eq!(used, written);
        assert_eq!(decoded, case.expected());
        let (view, _) = peek(&buf[3..]).expect("peek");
        for endpoint in &case.endpoints {
            assert!(view.endpoint(endpoint.id).is_some());
            assert!(decoded.endpoint(endpoint.id).is_some());
        }
    }
}

#[test]
fn every_truncation_of_a_valid_record_is_incomplete() {
    let mut rng = XorShift::new(2);
    for _ in 0..300 {
        let encoded = Case::random(&mut rng, 200).encoded();
        for len in 0..encoded.len() {
            assert_eq!(decode(&encoded[..len]).map(|_| ()), Err(DecodeError::Incomplete), "prefix of {len} bytes");
        }
    }
}

#[test]
fn every_single_bit_flip_is_detected() {
    let mut rng = XorShift::new(3);
    for _ in 0..60 {
        let case = Case::random(&mut rng, 64);
        let encoded = case.encoded();
        for bit in 0..encoded.len() * 8 {
            let mut flipped = encoded.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            // Exactly the record: a flip that lengthens body_len asks for more bytes (that is
            // all a torn write looks like); everything else is corrupt.
            let outcome = decode(&flipped).map(|_| ());
            let lengthened = (4..8).contains(&(bit / 8)) && flipped[bit / 8] > encoded[bit / 8];
            if lengthened {
                assert!(outcome.is_err(), "bit {bit}: {outcome:?}");
            } else {
                assert!(matches!(outcome, Err(DecodeError::Corrupt(_))), "bit {bit}: {outcome:?}");
            }
            // With the rest of a segment after it, every flip is corrupt.
            if lengthened {
                flipped.resize(RECORD_BYTES_MAX + 8, 0);
                let outcome = decode(&flipped).map(|_| ());
                assert!(matches!(outcome, Err(DecodeError::Corrupt(_))), "bit {bit} padded: {outcome:?}");
            }
        }
    }
}

#[test]
fn random_damage_never_decodes_to_wrong_data() {
    let mut rng = XorShift::new(4);
    for _ in 0..3000 {
        let case = Case::random(&mut rng, 128);
        let mut damaged = case.encoded();
        let len = damaged.len();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(len);
            damaged[at] ^= u8::try_from(1 + rng.below(255)).expect("fits");
        }
        damaged.extend_from_slice(&[0u8; 64]);
        if let Ok((decoded, _)) = decode(&damaged) {
            assert_eq!(decoded, case.expected(), "damage must never decode to other data");
        }
    }
}

#[test]
fn garbage_is_refused_without_panicking() {
    let mut rng = XorShift::new(5);
    for round in 0..20_000 {
        let len = rng.below(256);
        let mut garbage = rng.bytes(len);
        if round % 2 == 0 && garbage.len() >= 8 {
            // A plausible header in front makes the parser go deeper.
            garbage[..2].copy_from_slice(&0x7E01u16.to_le_bytes());
            garbage[2..4].copy_from_slice(&[0, 0]);
        }
        let _ = decode(&garbage);
    }
    assert_eq!(
        decode(&[0x01, 0x7E, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF]).map(|_| ()),
        Err(DecodeError::Corrupt("body too long"))
    );
    assert_eq!(decode(&[0, 0]).map(|_| ()), Err(DecodeError::Corrupt("bad magic")));
    assert_eq!(decode(&[0x01, 0x7E, 1, 0]).map(|_| ()), Err(DecodeError::Corrupt("unknown flags")));
    assert_eq!(decode(&[0x01]).map(|_| ()), Err(DecodeError::Incomplete));
}

#[test]
fn limits_are_enforced_when_encoding() {
    let one = [EndpointRef { id: 1, priority: 0, ttl_secs: 0 }];
    let many = vec![one[0]; ENDPOINTS_PER_RECORD_MAX + 1];
    let source = "s".repeat(SOURCE_BYTES_MAX + 1);
    let properties = "p".repeat(PROPERTIES_BYTES_MAX + 1);
    let payload = vec![0u8; PAYLOAD_BYTES_MAX + 1];
    let base = NewRecord { enqueued_unix_ms: 0, endpoints: &one, source: "", properties: "", payload: b"" };
    let cases = [
        (NewRecord { endpoints: &[], ..base }, EncodeError::NoEndpoints),
        (NewRecord { endpoints: &many, ..base }, EncodeError::TooManyEndpoints { count: ENDPOINTS_PER_RECORD_MAX + 1 }),
        (NewRecord { source: &source, ..base }, EncodeError::SourceTooLong { bytes: SOURCE_BYTES_MAX + 1 }),
        (
            NewRecord { properties: &properties, ..base },
            EncodeError::PropertiesTooLong { bytes: PROPERTIES_BYTES_MAX + 1 },
        ),
        (NewRecord { payload: &payload, ..base }, EncodeError::PayloadTooLarge { bytes: PAYLOAD_BYTES_MAX + 1 }),
    ];
    let mut out = Vec::new();
    for (record, expected) in cases {
        assert_eq!(encode(1, &record, &mut out), Err(expected));
    }
    assert!(out.is_empty(), "a refused record writes nothing");

    // The largest record every limit allows fits under RECORD_BYTES_MAX and decodes.
    let largest = NewRecord {
        enqueued_unix_ms: 0,
        endpoints: &many[1..],
        source: &source[1..],
        properties: &properties[1..],
        payload: &payload[1..],
    };
    let written = encode(7, &largest, &mut out).expect("largest record");
    assert!(written <= RECORD_BYTES_MAX && written > HEADER_BYTES);
    assert_eq!(decode(&out).expect("decode").0.payload.len(), PAYLOAD_BYTES_MAX);
}
