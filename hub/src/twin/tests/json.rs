//! Merge patch, diff and patch parsing.

use serde_json::{Map, Value};

use super::j;
use crate::twin::json::{compact_len, document_from};
use crate::twin::limits::PATCH_TEXT_BYTES_MAX;
use crate::twin::{diff, merge_patch, parse_patch, TwinError};

#[test]
fn merge_patch_follows_rfc_7386_appendix_a() {
    let table = [
        (r#"{"a":"b"}"#, r#"{"a":"c"}"#, r#"{"a":"c"}"#),
        (r#"{"a":"b"}"#, r#"{"b":"c"}"#, r#"{"a":"b","b":"c"}"#),
        (r#"{"a":"b"}"#, r#"{"a":null}"#, r#"{}"#),
        (r#"{"a":"b","b":"c"}"#, r#"{"a":null}"#, r#"{"b":"c"}"#),
        (r#"{"a":["b"]}"#, r#"{"a":"c"}"#, r#"{"a":"c"}"#),
        (r#"{"a":"c"}"#, r#"{"a":["b"]}"#, r#"{"a":["b"]}"#),
        (r#"{"a":{"b":"c"}}"#, r#"{"a":{"b":"d","c":null}}"#, r#"{"a":{"b":"d"}}"#),
        (r#"{"a":[{"b":"c"}]}"#, r#"{"a":[1]}"#, r#"{"a":[1]}"#),
        (r#"["a","b"]"#, r#"["c","d"]"#, r#"["c","d"]"#),
        (r#"{"a":"b"}"#, r#"["c"]"#, r#"["c"]"#),
        (r#"{"a":"foo"}"#, r#"null"#, r#"null"#),
        (r#"{"a":"foo"}"#, r#""bar""#, r#""bar""#),
        (r#"{"e":null}"#, r#"{"a":1}"#, r#"{"e":null,"a":1}"#),
        (r#"[1,2]"#, r#"{"a":"b","c":null}"#, r#"{"a":"b"}"#),
        (r#"{}"#, r#"{"a":{"bb":{"ccc":null}}}"#, r#"{"a":{"bb":{}}}"#),
    ];
    for (target, patch, expected) in table {
        let mut merged = j(target);
        merge_patch(&mut merged, &j(patch));
        assert_eq!(merged, j(expected), "{target} + {patch}");
    }
}

#[test]
fn diff_gives_changed_and_added_keys_and_null_for_removed_ones() {
    let table = [
        (r#"{}"#, r#"{}"#, r#"{}"#),
        (r#"{"a":1}"#, r#"{"a":1}"#, r#"{}"#),
        (r#"{"a":1}"#, r#"{"a":2}"#, r#"{"a":2}"#),
        (r#"{"a":1}"#, r#"{}"#, r#"{"a":null}"#),
        (r#"{}"#, r#"{"a":{"b":1}}"#, r#"{"a":{"b":1}}"#),
        (r#"{"a":{"b":1,"c":2}}"#, r#"{"a":{"b":1,"c":3}}"#, r#"{"a":{"c":3}}"#),
        (r#"{"a":{"b":1}}"#, r#"{"a":{}}"#, r#"{"a":{"b":null}}"#),
        (r#"{"a":{"b":1}}"#, r#"{"a":5}"#, r#"{"a":5}"#),
        (r#"{"a":5}"#, r#"{"a":{"b":1}}"#, r#"{"a":{"b":1}}"#),
        (r#"{"a":[1,2]}"#, r#"{"a":[1,2]}"#, r#"{}"#),
        (r#"{"a":[1,2]}"#, r#"{"a":[2,1]}"#, r#"{"a":[2,1]}"#),
        (r#"{"a":1,"b":{"c":{"d":1}}}"#, r#"{"b":{"c":{"d":1,"e":[true]}}}"#, r#"{"a":null,"b":{"c":{"e":[true]}}}"#),
        (r#"{"a":1}"#, r#"{"a":null}"#, r#"{"a":null}"#),
        (r#"{"a":1}"#, r#"[1]"#, r#"[1]"#),
    ];
    for (old, new, expected) in table {
        assert_eq!(diff(&j(old), &j(new)), j(expected), "{old} -> {new}");
    }
}

/// Deterministic xorshift64* generator: a property test without a dependency.
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % bound
    }

    /// A random value, objects and arrays at most `depth` deep, from a small alphabet of keys
    /// so that old and new documents overlap.
    fn value(&mut self, depth: u64) -> Value {
        match self.below(if depth == 0 { 4 } else { 7 }) {
            0 => Value::Null,
            1 => Value::from(self.below(3)),
            2 => Value::from(["x", "y"][self.below(2) as usize]),
            3 => Value::Bool(self.below(2) == 0),
            4 => Value::Array((0..self.below(3)).map(|_| self.value(depth - 1)).collect()),
            _ => Value::Object(self.object(depth - 1)),
        }
    }

    fn object(&mut self, depth: u64) -> Map<String, Value> {
        (0..self.below(4)).map(|_| (["a", "b", "c"][self.below(3) as usize].to_string(), self.value(depth))).collect()
    }
}

#[test]
fn diff_applied_to_the_old_document_gives_the_new_one() {
    let mut random = XorShift(0x9e37_79b9_7f4a_7c15);
    for _ in 0..5000 {
        let old = Value::Object(document_from(&random.object(4)));
        let mut new = old.clone();
        merge_patch(&mut new, &Value::Object(random.object(4)));
        let patch = diff(&old, &new);
        let mut applied = old.clone();
        merge_patch(&mut applied, &patch);
        assert_eq!(applied, new, "old {old} patch {patch}");
        assert_eq!(diff(&new, &new), j("{}"));
    }
}

#[test]
fn desired_documents_lose_read_only_keys_and_null_members() {
    let properties = j(r#"{"$version":4,"$metadata":{},"a":null,"b":{"c":null,"d":[null]},"e":1}"#);
    let document = document_from(properties.as_object().expect("object"));
    assert_eq!(Value::Object(document), j(r#"{"b":{"d":[null]},"e":1}"#));
}

fn refusal(bytes: &[u8]) -> String {
    match parse_patch(bytes) {
        Err(TwinError::Invalid(reason)) => reason,
        other => panic!("{:?} parsed as {other:?}", String::from_utf8_lossy(bytes)),
    }
}

#[test]
fn malformed_patches_are_refused_with_the_position() {
    let table: [(&[u8], &str); 9] = [
        (b"", "patch is empty: send a JSON object, such as {}"),
        (b"  \n", "patch is empty"),
        (b"{\"a\":1", "patch is not valid JSON: EOF while parsing an object at line 1 column 6"),
        (b"{\"a\" 1}", "patch is not valid JSON: expected `:` at line 1 column 6"),
        (b"{\"a\":1}\n{}", "patch is not valid JSON: trailing characters at line 2 column 1"),
        (b"{\"a\":\"\xff\"}", "patch is not valid JSON: invalid unicode code point at line 1 column"),
        (b"[1]", "patch must be a JSON object, got an array"),
        (b"null", "patch must be a JSON object, got null"),
        (b"\"text\"", "patch must be a JSON object, got a string"),
    ];
    for (bytes, expected) in table {
        let reason = refusal(bytes);
        assert!(reason.starts_with(expected), "{bytes:?}: {reason}");
        assert!(!reason.contains('\n'), "{reason}");
    }
}

#[test]
fn patch_text_is_bounded_before_parsing() {
    let filler = " ".repeat(PATCH_TEXT_BYTES_MAX - 2);
    let at_limit = format!("{{{filler}}}");
    assert_eq!(parse_patch(at_limit.as_bytes()).expect("at the limit"), j("{}"));
    let over = format!("{{{filler} }}");
    assert!(
        refusal(over.as_bytes()).starts_with(&format!("patch is {} bytes, over the limit", PATCH_TEXT_BYTES_MAX + 1))
    );
}

#[test]
fn compact_length_is_the_serialised_length() {
    for text in [r#"{}"#, r#"{"a":[1,2.5,"é\n"],"b":{"c":null}}"#] {
        let value = j(text);
        assert_eq!(compact_len(&value), value.to_string().len());
    }
}
