//! IoT Hub's limits, each just within and just over.

use serde_json::{json, Map, Value};

use super::{j, open, TempDir, MODULE};
use crate::twin::json::compact_len;
use crate::twin::limits::{DEPTH_MAX, DOCUMENT_BYTES_MAX, INTEGER_MAX, INTEGER_MIN, KEY_BYTES_MAX, STRING_BYTES_MAX};
use crate::twin::validate::validate_desired;
use crate::twin::{validate_reported_patch, TwinError};

fn refused(patch: &Value) -> String {
    let reason = validate_reported_patch(patch).expect_err("refused");
    assert!(!reason.contains('\n'), "{reason}");
    reason
}

fn accepted(patch: &Value) {
    if let Err(reason) = validate_reported_patch(patch) {
        panic!("{patch} refused: {reason}");
    }
}

/// An object whose compact JSON is exactly `bytes` long.
fn sized(bytes: usize) -> Value {
    let mut members = Map::new();
    let mut index = 0;
    while compact_len(&Value::Object(members.clone())) + 4000 < bytes {
        members.insert(format!("p{index:02}"), Value::from("x".repeat(3990)));
        index += 1;
    }
    members.insert("last".to_string(), Value::from(""));
    let short = bytes - compact_len(&Value::Object(members.clone()));
    members.insert("last".to_string(), Value::from("y".repeat(short)));
    let value = Value::Object(members);
    assert_eq!(compact_len(&value), bytes);
    value
}

#[test]
fn patch_size_is_limited_to_32_kib_of_compact_json() {
    accepted(&sized(DOCUMENT_BYTES_MAX));
    let reason = refused(&sized(DOCUMENT_BYTES_MAX + 1));
    assert_eq!(reason, "reported patch is 32769 bytes as compact JSON, over IoT Hub's limit of 32768");
}

/// `levels` objects (or arrays) nested below the root, the innermost holding a scalar.
fn nested(levels: usize, array: bool) -> Value {
    let mut value = Value::from(1);
    for _ in 0..levels {
        value = if array { Value::Array(vec![value]) } else { json!({ "n": value }) };
    }
    if array {
        json!({ "n": value })
    } else {
        value
    }
}

#[test]
fn depth_is_limited_to_ten_levels_of_objects_or_arrays() {
    // `nested(k, false)` is the root plus k - 1 nested objects; with arrays, k nested arrays.
    accepted(&nested(DEPTH_MAX + 1, false));
    let reason = refused(&nested(DEPTH_MAX + 2, false));
    let place = format!("reported{}", ".n".repeat(DEPTH_MAX + 1));
    assert!(reason.starts_with(&format!("reported patch: {place} nests objects or arrays deeper than")), "{reason}");
    accepted(&nested(DEPTH_MAX, true));
    let reason = refused(&nested(DEPTH_MAX + 1, true));
    assert!(reason.contains(&format!("reported.n{} nests", "[0]".repeat(DEPTH_MAX))), "{reason}");
}

#[test]
fn property_names_are_limited_to_1024_bytes() {
    for (name, ok) in [
        ("k".repeat(KEY_BYTES_MAX), true),
        ("k".repeat(KEY_BYTES_MAX + 1), false),
        ("é".repeat(KEY_BYTES_MAX / 2), true),
        ("é".repeat(KEY_BYTES_MAX / 2 + 1), false),
    ] {
        let patch = json!({ "outer": { name.clone(): 1 } });
        if ok {
            accepted(&patch);
        } else {
            let reason = refused(&patch);
            assert!(reason.contains("in reported.outer is"), "{reason}");
            assert!(reason.contains("over IoT Hub's limit of 1024"), "{reason}");
            assert!(reason.contains('…') && reason.len() < 400, "name not shortened: {reason}");
        }
    }
}

#[test]
fn property_names_may_not_hold_reserved_or_invisible_characters() {
    for bad in ['.', '$', '#', ' ', '\t', '\n', '\u{0}', '\u{7f}', '\u{85}', '\u{a0}', '\u{3000}'] {
        let name = format!("a{bad}b");
        let reason = refused(&json!({ "x": [{ name: 1 }] }));
        assert!(reason.contains(&format!("contains {bad:?}")), "{bad:?}: {reason}");
        assert!(reason.contains("in reported.x[0]"), "{reason}");
    }
    accepted(&json!({ "a-b_c:d": 1, "é😀": 2, "": 3, "A1": { "b": null } }));
}

#[test]
fn read_only_keys_are_refused() {
    for key in ["$version", "$metadata"] {
        let reason = refused(&json!({ key: 1 }));
        assert_eq!(reason, format!("reported patch: {key:?} is read-only (the hub sets it); remove it from the patch"));
    }
    assert!(refused(&json!({ "a": { "$version": 1 } })).contains("contains '$'"));
}

#[test]
fn string_values_are_limited_to_4096_bytes_also_in_arrays() {
    accepted(&json!({ "s": "x".repeat(STRING_BYTES_MAX), "l": ["é".repeat(STRING_BYTES_MAX / 2)] }));
    let reason = refused(&json!({ "s": "x".repeat(STRING_BYTES_MAX + 1) }));
    assert_eq!(reason, "reported patch: the string at reported.s is 4097 bytes, over IoT Hub's limit of 4096");
    let reason = refused(&json!({ "l": [1, "é".repeat(STRING_BYTES_MAX / 2) + "x"] }));
    assert!(reason.contains("reported.l[1] is 4097 bytes"), "{reason}");
}

#[test]
fn integers_are_limited_to_plus_minus_2_to_the_52() {
    for (value, ok) in [
        (j(&INTEGER_MAX.to_string()), true),
        (j(&INTEGER_MIN.to_string()), true),
        (j(&(INTEGER_MAX + 1).to_string()), false),
        (j(&(INTEGER_MIN - 1).to_string()), false),
        (j(&u64::MAX.to_string()), false),
        (j("4503599627370496.0"), true),
        (j("1e300"), true),
        (j("-0.5"), true),
    ] {
        let patch = json!({ "n": [value.clone()] });
        if ok {
            accepted(&patch);
        } else {
            let reason = refused(&patch);
            assert!(reason.starts_with(&format!("reported patch: reported.n[0] is {value}, outside")), "{reason}");
        }
    }
}

#[test]
fn null_deletes_but_may_not_sit_in_an_array() {
    accepted(&json!({ "a": null, "b": { "c": null }, "d": [{ "e": null }] }));
    assert_eq!(
        refused(&json!({ "a": [1, null] })),
        "reported patch: reported.a[1] is null: IoT Hub does not allow null inside arrays"
    );
    assert!(refused(&json!({ "a": [[null]] })).contains("reported.a[0][0] is null"));
}

#[test]
fn a_patch_must_be_an_object() {
    assert_eq!(refused(&json!([1])), "reported patch must be a JSON object, got an array");
}

#[test]
fn desired_properties_follow_the_same_rules() {
    let label = "desired properties of \"gw/filter\"";
    let document = json!({ "a": { "b.c": 1 } });
    let reason = validate_desired(label, document.as_object().expect("object")).expect_err("refused");
    assert!(
        reason.starts_with("desired properties of \"gw/filter\": the property name \"b.c\" in desired.a"),
        "{reason}"
    );
    let big = sized(DOCUMENT_BYTES_MAX + 1);
    let reason = validate_desired(label, big.as_object().expect("object")).expect_err("refused");
    assert!(reason.ends_with("is 32769 bytes as compact JSON, over IoT Hub's limit of 32768"), "{reason}");
}

#[test]
fn the_merged_reported_document_is_limited_to_32_kib() {
    let dir = TempDir::new("merged-size");
    let (twins, _) = open(&dir, &[MODULE]);
    let half = |prefix: &str| {
        let members: Map<String, Value> =
            (0..4).map(|index| (format!("{prefix}{index}"), Value::from("x".repeat(4000)))).collect();
        Value::Object(members).to_string()
    };
    assert_eq!(twins.patch_reported(MODULE, half("a").as_bytes()).expect("first half"), 2);
    assert_eq!(twins.patch_reported(MODULE, half("b").as_bytes()).expect("second half"), 3);
    let third = half("c");
    match twins.patch_reported(MODULE, third.as_bytes()) {
        Err(TwinError::Invalid(reason)) => {
            assert!(reason.starts_with("the reported properties of \"gw/filter\" would be"), "{reason}");
            assert!(reason.contains("over IoT Hub's limit of 32768"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    // Deleting makes room again, and the refused patch changed nothing.
    assert_eq!(twins.patch_reported(MODULE, br#"{"a0":null,"a1":null,"a2":null,"a3":null}"#).expect("delete"), 4);
    assert_eq!(twins.patch_reported(MODULE, third.as_bytes()).expect("fits now"), 5);
}
