//! IoT Hub's rules for twin properties (pure), as edgeHub's `ReportedPropertiesValidator`
//! applies them (cloud-reference §A3), with one difference: values inside arrays are held to
//! the same rules as the others (edgeHub checks only values that are object members).
//!
//! Every message names the subject ("reported patch"), the place (`reported.a.b[2]`) and the
//! limit, on one line.

use std::fmt::{self, Write};

use serde_json::{Number, Value};

use super::json::{compact_len, document_len, kind, Document, READ_ONLY_KEYS};
use super::limits::{DEPTH_MAX, DOCUMENT_BYTES_MAX, INTEGER_MAX, INTEGER_MIN, KEY_BYTES_MAX, STRING_BYTES_MAX};

/// Characters of a property name shown in a message about it.
const KEY_CHARS_SHOWN: usize = 64;

/// Checks a reported-properties patch: an object of at most [`DOCUMENT_BYTES_MAX`] compact
/// bytes, no `$version`/`$metadata`, and every name and value within IoT Hub's rules (`null`
/// members delete, so they are allowed; `null` array elements are not).
pub fn validate_reported_patch(patch: &Value) -> Result<(), String> {
    let Value::Object(members) = patch else {
        return Err(format!("reported patch must be a JSON object, got {}", kind(patch)));
    };
    let subject = Subject { label: "reported patch", root: "reported" };
    if let Some(key) = READ_ONLY_KEYS.iter().find(|key| members.contains_key(**key)) {
        return Err(format!("reported patch: {key:?} is read-only (the hub sets it); remove it from the patch"));
    }
    subject.check_size(compact_len(patch))?;
    Walk { subject, path: Vec::new() }.members(members, 0)
}

/// Checks desired properties from a deployment (already without `$version`/`$metadata`) by
/// the same rules, under the name `label` (e.g. "desired properties of \"dev/mod\"").
pub fn validate_desired(label: &str, desired: &Document) -> Result<(), String> {
    let subject = Subject { label, root: "desired" };
    subject.check_size(document_len(desired))?;
    Walk { subject, path: Vec::new() }.members(desired, 0)
}

/// Checks that a whole merged document stays within [`DOCUMENT_BYTES_MAX`].
pub fn validate_document_size(label: &str, document: &Document) -> Result<(), String> {
    let bytes = document_len(document);
    if bytes > DOCUMENT_BYTES_MAX {
        return Err(format!(
            "{label} would be {bytes} bytes as compact JSON, over IoT Hub's limit of {DOCUMENT_BYTES_MAX}: \
             delete properties (set them to null) before adding more"
        ));
    }
    Ok(())
}

#[derive(Clone, Copy)]
struct Subject<'a> {
    /// What the messages call the document.
    label: &'a str,
    /// How paths inside it start.
    root: &'static str,
}

impl Subject<'_> {
    fn check_size(&self, bytes: usize) -> Result<(), String> {
        if bytes > DOCUMENT_BYTES_MAX {
            return Err(format!(
                "{} is {bytes} bytes as compact JSON, over IoT Hub's limit of {DOCUMENT_BYTES_MAX}",
                self.label
            ));
        }
        Ok(())
    }
}

enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// A walk through a document that knows where it is, for the messages.
struct Walk<'a, 'v> {
    subject: Subject<'a>,
    path: Vec<Step<'v>>,
}

impl<'v> Walk<'_, 'v> {
    fn members(&mut self, members: &'v Document, depth: usize) -> Result<(), String> {
        for (key, value) in members {
            self.key(key)?;
            self.path.push(Step::Key(key));
            self.value(value, depth, false)?;
            self.path.pop();
        }
        Ok(())
    }

    fn value(&mut self, value: &'v Value, depth: usize, in_array: bool) -> Result<(), String> {
        match value {
            Value::Null if in_array => Err(format!(
                "{}: {} is null: IoT Hub does not allow null inside arrays",
                self.subject.label,
                self.here()
            )),
            Value::Null | Value::Bool(_) => Ok(()),
            Value::Number(number) => self.number(number),
            Value::String(text) => self.string(text),
            Value::Array(items) => {
                self.nested(depth)?;
                for (index, item) in items.iter().enumerate() {
                    self.path.push(Step::Index(index));
                    self.value(item, depth + 1, true)?;
                    self.path.pop();
                }
                Ok(())
            }
            Value::Object(members) => {
                self.nested(depth)?;
                self.members(members, depth + 1)
            }
        }
    }

    fn key(&self, key: &str) -> Result<(), String> {
        if key.len() > KEY_BYTES_MAX {
            return Err(format!(
                "{}: the property name {} in {} is {} bytes, over IoT Hub's limit of {KEY_BYTES_MAX}",
                self.subject.label,
                Shown(key),
                self.here(),
                key.len()
            ));
        }
        match key.chars().find(|c| c.is_control() || c.is_whitespace() || matches!(c, '.' | '$' | '#')) {
            Some(bad) => Err(format!(
                "{}: the property name {} in {} contains {bad:?}: IoT Hub allows no control characters, \
                 whitespace, '.', '$' or '#' in property names",
                self.subject.label,
                Shown(key),
                self.here()
            )),
            None => Ok(()),
        }
    }

    fn number(&self, number: &Number) -> Result<(), String> {
        let in_range = match (number.as_i64(), number.as_u64()) {
            (Some(integer), _) => (INTEGER_MIN..=INTEGER_MAX).contains(&integer),
            (None, Some(_)) => false,
            (None, None) => true, // A float: IoT Hub stores doubles as they are.
        };
        if in_range {
            return Ok(());
        }
        Err(format!(
            "{}: {} is {number}, outside IoT Hub's integer range [{INTEGER_MIN}, {INTEGER_MAX}]: send it as a string",
            self.subject.label,
            self.here()
        ))
    }

    fn string(&self, text: &str) -> Result<(), String> {
        if text.len() <= STRING_BYTES_MAX {
            return Ok(());
        }
        Err(format!(
            "{}: the string at {} is {} bytes, over IoT Hub's limit of {STRING_BYTES_MAX}",
            self.subject.label,
            self.here(),
            text.len()
        ))
    }

    fn nested(&self, depth: usize) -> Result<(), String> {
        if depth < DEPTH_MAX {
            return Ok(());
        }
        Err(format!(
            "{}: {} nests objects or arrays deeper than IoT Hub's limit of {DEPTH_MAX} levels",
            self.subject.label,
            self.here()
        ))
    }

    /// The current place, e.g. `reported.a.b[2]`.
    fn here(&self) -> String {
        let mut text = self.subject.root.to_string();
        for step in &self.path {
            // Writing to a String cannot fail.
            let _ = match step {
                Step::Key(key) => write!(text, ".{key}"),
                Step::Index(index) => write!(text, "[{index}]"),
            };
        }
        text
    }
}

/// A property name in a message: quoted and escaped (so it stays on one line), cut after
/// [`KEY_CHARS_SHOWN`] characters.
struct Shown<'a>(&'a str);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.char_indices().nth(KEY_CHARS_SHOWN) {
            Some((cut, _)) => write!(f, "{:?}…", &self.0[..cut]),
            None => write!(f, "{:?}", self.0),
        }
    }
}
