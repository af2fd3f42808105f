//! Typed reads from a `serde_json::Value` that name the JSON path of every failure.
//!
//! createOptions is parsed by hand (there is no serde derive in this crate) so that each error
//! says which field is wrong. Paths are plain dotted strings built only while walking keys that
//! exist, e.g. `HostConfig.Mounts[2].Source`. Keys and values come from the deployment author, so
//! everything echoed into a path or message is shortened and escaped: an error stays one line.

use serde_json::{Map, Value};

use super::CreateOptionsError;

/// Longest key or value echoed into a path or message; input is author-sized, lines are not.
const ECHO_CHARS_MAX: usize = 64;

/// A JSON object, as serde_json represents it.
pub(crate) type Object = Map<String, Value>;

/// An error at `path`.
pub(crate) fn error(path: &str, message: impl Into<String>) -> CreateOptionsError {
    CreateOptionsError { path: path.to_owned(), message: message.into() }
}

/// The path of `key` inside the object at `parent`. Plain keys are dotted; any other key is
/// quoted and escaped in brackets, so `\n` or `.` in a key cannot forge or break a path.
pub(crate) fn child(parent: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key.len() <= ECHO_CHARS_MAX
        && key.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '/' | '$'));
    match (parent.is_empty(), plain) {
        (true, true) => key.to_owned(),
        (false, true) => format!("{parent}.{key}"),
        (_, false) => format!("{parent}[{}]", quote(key)),
    }
}

/// The path of element `index` of the array at `parent`.
pub(crate) fn index(parent: &str, index: usize) -> String {
    format!("{parent}[{index}]")
}

/// `text` in double quotes, control characters escaped and shortened to [`ECHO_CHARS_MAX`].
pub(crate) fn quote(text: &str) -> String {
    let mut quoted = String::from("\"");
    for (count, character) in text.chars().enumerate() {
        if count == ECHO_CHARS_MAX {
            quoted.push('…');
            break;
        }
        quoted.extend(character.escape_debug());
    }
    quoted.push('"');
    quoted
}

/// What a value is, for "expected X, got Y" messages.
pub(crate) fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn expected(path: &str, what: &str, value: &Value) -> CreateOptionsError {
    error(path, format!("expected {what}, got {}", kind(value)))
}

/// The object at `path`.
pub(crate) fn object<'v>(value: &'v Value, path: &str) -> Result<&'v Object, CreateOptionsError> {
    value.as_object().ok_or_else(|| expected(path, "an object", value))
}

/// The array at `path`, refused when longer than `max` (a named limit of the caller).
pub(crate) fn array<'v>(value: &'v Value, path: &str, max: usize) -> Result<&'v [Value], CreateOptionsError> {
    let items = value.as_array().ok_or_else(|| expected(path, "an array", value))?;
    if items.len() > max {
        return Err(error(path, format!("{} entries, at most {max} are allowed", items.len())));
    }
    Ok(items)
}

/// The string at `path`. A NUL can never reach a process argument, path or environment
/// variable of a Linux process, so it is refused here rather than by runc later.
pub(crate) fn string(value: &Value, path: &str) -> Result<String, CreateOptionsError> {
    let text = value.as_str().ok_or_else(|| expected(path, "a string", value))?;
    if text.contains('\0') {
        return Err(error(path, "contains a NUL character"));
    }
    Ok(text.to_owned())
}

/// A list of strings; a single string counts as a one-element list, as Docker's `StrSlice`.
pub(crate) fn string_or_list(value: &Value, path: &str, max: usize) -> Result<Vec<String>, CreateOptionsError> {
    if value.is_string() {
        return Ok(vec![string(value, path)?]);
    }
    let items = array(value, path, max).map_err(|e| {
        if value.is_array() {
            e
        } else {
            expected(path, "a string or an array of strings", value)
        }
    })?;
    strings(items, path)
}

/// Every element of `items` as a string.
pub(crate) fn strings(items: &[Value], path: &str) -> Result<Vec<String>, CreateOptionsError> {
    items.iter().enumerate().map(|(position, item)| string(item, &index(path, position))).collect()
}

/// The boolean at `path`.
pub(crate) fn boolean(value: &Value, path: &str) -> Result<bool, CreateOptionsError> {
    value.as_bool().ok_or_else(|| expected(path, "true or false", value))
}

/// The integer at `path`. Docker's Go structs refuse `1.5` and `"1"` for integer fields; so do we.
pub(crate) fn integer(value: &Value, path: &str) -> Result<i64, CreateOptionsError> {
    value.as_i64().ok_or_else(|| expected(path, "an integer", value))
}

/// The non-negative integer at `path`.
pub(crate) fn unsigned(value: &Value, path: &str) -> Result<u64, CreateOptionsError> {
    let number = integer(value, path)?;
    u64::try_from(number).map_err(|_| error(path, format!("expected a non-negative integer, got {number}")))
}

/// An absolute path (starts with `/`), as Linux mount and device paths must be.
pub(crate) fn absolute_path(value: &Value, path: &str) -> Result<String, CreateOptionsError> {
    let text = string(value, path)?;
    if !text.starts_with('/') {
        return Err(error(path, format!("expected an absolute path, got {}", quote(&text))));
    }
    Ok(text)
}
