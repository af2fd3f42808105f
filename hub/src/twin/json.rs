//! JSON merge patch (RFC 7386) and its inverse, the diff, over `serde_json` values (pure).
//!
//! Twin documents never hold `null` members: a merge patch deletes with `null`, so a document
//! built by merging cannot keep one. [`diff`] relies on that: a `null` member of the new
//! document reads as absent.

use std::io;

use serde_json::{Map, Value};

use super::error::TwinError;
use super::limits::PATCH_TEXT_BYTES_MAX;

/// A twin document (desired or reported properties, without `$version`).
pub type Document = Map<String, Value>;

/// Keys the hub owns in every section; a client may not set them.
pub const READ_ONLY_KEYS: [&str; 2] = ["$version", "$metadata"];

/// Parses a patch: at most [`PATCH_TEXT_BYTES_MAX`] bytes of JSON holding one object. The
/// error names the line and column of malformed JSON.
pub fn parse_patch(bytes: &[u8]) -> Result<Value, TwinError> {
    if bytes.len() > PATCH_TEXT_BYTES_MAX {
        return Err(TwinError::Invalid(format!(
            "patch is {} bytes, over the limit of {PATCH_TEXT_BYTES_MAX} bytes",
            bytes.len()
        )));
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(TwinError::Invalid("patch is empty: send a JSON object, such as {}".to_string()));
    }
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|error| TwinError::Invalid(format!("patch is not valid JSON: {error}")))?;
    if !value.is_object() {
        return Err(TwinError::Invalid(format!("patch must be a JSON object, got {}", kind(&value))));
    }
    Ok(value)
}

/// Applies `patch` to `target` as RFC 7386 says: members of an object patch are merged
/// recursively, `null` deletes, anything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(members) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(document) = target {
        merge_members(document, members);
    }
}

/// [`merge_patch`] of an object patch into a document.
pub fn merge_members(document: &mut Document, patch: &Document) {
    for (key, value) in patch {
        if value.is_null() {
            document.remove(key);
        } else {
            merge_patch(document.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

/// Merges patch into patch: like [`merge_members`], but a `null` member is kept (it still has
/// to delete the key where the result is applied).
pub fn merge_keeping_nulls(patch: &mut Document, later: &Document) {
    for (key, value) in later {
        match (patch.get_mut(key), value) {
            (Some(Value::Object(earlier)), Value::Object(members)) => merge_keeping_nulls(earlier, members),
            _ => {
                patch.insert(key.clone(), value.clone());
            }
        }
    }
}

/// The merge patch that turns `old` into `new`: changed and added members (recursively into
/// objects both sides have), `null` for removed ones; `{}` when they are equal. A non-object
/// on either side gives `new` itself (a patch that replaces).
///
/// ```
/// use serde_json::json;
/// use tinyedge_hub::twin::{diff, merge_patch};
///
/// let old = json!({"interval": 5, "limits": {"low": 1, "high": 9}});
/// let new = json!({"limits": {"low": 1, "high": 8}, "mode": "fast"});
/// let patch = diff(&old, &new);
/// assert_eq!(patch, json!({"interval": null, "limits": {"high": 8}, "mode": "fast"}));
/// let mut applied = old.clone();
/// merge_patch(&mut applied, &patch);
/// assert_eq!(applied, new);
/// ```
pub fn diff(old: &Value, new: &Value) -> Value {
    match (old, new) {
        (Value::Object(old), Value::Object(new)) => Value::Object(diff_members(old, new)),
        _ => new.clone(),
    }
}

/// [`diff`] of two documents.
pub fn diff_members(old: &Document, new: &Document) -> Document {
    let mut patch = Map::new();
    for key in old.keys() {
        if new.get(key).is_none_or(Value::is_null) {
            patch.insert(key.clone(), Value::Null);
        }
    }
    for (key, after) in new {
        match (old.get(key), after) {
            (_, Value::Null) => {}
            (Some(Value::Object(before)), Value::Object(after)) => {
                let inner = diff_members(before, after);
                if !inner.is_empty() {
                    patch.insert(key.clone(), Value::Object(inner));
                }
            }
            (Some(before), after) if before == after => {}
            _ => {
                patch.insert(key.clone(), after.clone());
            }
        }
    }
    patch
}

/// Bytes of `value` serialised as compact JSON, counted without building the text.
pub fn compact_len(value: &Value) -> usize {
    let mut counter = ByteCounter(0);
    match serde_json::to_writer(&mut counter, value) {
        Ok(()) => counter.0,
        // Serialising a `Value` cannot fail (its keys are strings); count it as huge.
        Err(_) => usize::MAX,
    }
}

/// [`compact_len`] of a document.
pub fn document_len(document: &Document) -> usize {
    let mut counter = ByteCounter(0);
    match serde_json::to_writer(&mut counter, document) {
        Ok(()) => counter.0,
        Err(_) => usize::MAX,
    }
}

/// A document from desired properties as a deployment states them: `$version`/`$metadata`
/// dropped and `null` members removed (merging into an empty document does both).
pub fn document_from(properties: &Document) -> Document {
    let mut document = Map::new();
    for (key, value) in properties {
        if !value.is_null() && !READ_ONLY_KEYS.contains(&key.as_str()) {
            merge_patch(document.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
    document
}

/// A section of a GET body: the document with its `$version`.
pub fn with_version(document: &Document, version: u64) -> Value {
    let mut section = document.clone();
    section.insert("$version".to_string(), Value::from(version));
    Value::Object(section)
}

/// What kind of JSON value this is, for messages.
pub fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

struct ByteCounter(usize);

impl io::Write for ByteCounter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0 = self.0.saturating_add(bytes.len());
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
