//! Fuzz the twin patch path: any bytes must parse as a patch or give a one-line error, never a
//! panic; validation gives a one-line verdict; and merge and diff agree: the diff of a document
//! and the document merged with the patch, applied to the first, gives the second; merging the
//! same patch again changes nothing; a document diffed with itself is `{}`.
//!
//! Input: the old document, a NUL byte, the patch; without a NUL the whole input is the patch
//! and the old document is a fixed sample.
#![no_main]

use tinyedge_hub::twin::{diff, merge_patch, parse_patch, validate_reported_patch};

const SAMPLE: &[u8] = br#"{"a":1,"b":{"c":"x","d":[1,null,{"e":null}]},"f":{"g":{"h":true}},"i":[]}"#;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let (old, patch) = match data.iter().position(|byte| *byte == 0) {
        Some(split) => (&data[..split], &data[split + 1..]),
        None => (SAMPLE, data),
    };
    let patch = match parse_patch(patch) {
        Ok(patch) => patch,
        Err(error) => {
            assert!(!error.to_string().contains('\n'), "multi-line error: {error}");
            return;
        }
    };
    if let Err(reason) = validate_reported_patch(&patch) {
        assert!(!reason.contains('\n'), "multi-line verdict: {reason}");
    }
    let Ok(source) = parse_patch(old) else { return };
    // A twin document holds no null members: build the old one by merging into `{}`.
    let empty = parse_patch(b"{}").expect("{} is a patch");
    let mut old = empty.clone();
    merge_patch(&mut old, &source);

    let mut merged = old.clone();
    merge_patch(&mut merged, &patch);
    let mut twice = merged.clone();
    merge_patch(&mut twice, &patch);
    assert_eq!(twice, merged, "merging {patch} twice differs from once");

    let change = diff(&old, &merged);
    let mut applied = old.clone();
    merge_patch(&mut applied, &change);
    assert_eq!(applied, merged, "diff {change} of {old} does not give {merged}");
    assert_eq!(diff(&merged, &merged), empty);
});
