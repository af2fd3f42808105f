//! Typed reads from a `serde_json::Value` that name the JSON path of every failure.
//!
//! We parse by hand rather than with serde derive so that each error can say exactly which field
//! is wrong. Paths are a linked list of borrowed keys on the stack: walking the document
//! allocates nothing, and a path is rendered to text only when an error is built.
//!
//! Twin semantics: IoT Hub deletes a desired property by setting it to `null`, so a `null` field
//! is read as absent everywhere ([`field`]).

use serde_json::{Map, Value};
use std::fmt;

use super::error::DeploymentError;

/// Longest key echoed per path segment; keys are attacker-sized, error lines are not.
const PATH_KEY_CHARS_MAX: usize = 64;
/// Longest string value echoed back in an error message, for the same reason.
const ECHO_CHARS_MAX: usize = 64;

/// A JSON object, as serde_json represents it.
pub(crate) type Object = Map<String, Value>;

/// Where a value sits in the manifest: the keys from the document root, innermost last.
#[derive(Clone, Copy)]
pub(crate) struct Path<'p> {
    parent: Option<&'p Path<'p>>,
    key: &'p str,
}

impl Path<'static> {
    /// The document itself; renders as the empty string.
    pub(crate) fn root() -> Self {
        Path { parent: None, key: "" }
    }
}

impl<'p> Path<'p> {
    /// The path of `key` inside the value at `self`.
    pub(crate) fn push<'c>(&'c self, key: &'c str) -> Path<'c> {
        Path { parent: Some(self), key }
    }

    /// Dotted text, e.g. `modulesContent.$edgeAgent.properties.desired.modules.temp`.
    pub(crate) fn render(&self) -> String {
        let mut keys = Vec::new();
        let mut node = Some(self);
        while let Some(path) = node {
            // Only the root has no parent, and the root has no key of its own.
            if path.parent.is_some() {
                keys.push(path.key);
            }
            node = path.parent;
        }
        let mut text = String::new();
        for (index, key) in keys.iter().rev().enumerate() {
            if index > 0 {
                text.push('.');
            }
            push_key(&mut text, key);
        }
        text
    }

    /// A 400 at this path.
    pub(crate) fn bad(&self, message: impl Into<String>) -> DeploymentError {
        DeploymentError::bad_request(self.render(), message)
    }
}

/// Appends `key`, shortened and with control characters escaped, so an error stays one line.
fn push_key(text: &mut String, key: &str) {
    for (count, character) in key.chars().enumerate() {
        if count == PATH_KEY_CHARS_MAX {
            text.push('…');
            return;
        }
        if character.is_control() {
            text.extend(character.escape_default());
        } else {
            text.push(character);
        }
    }
}

/// A short description of `value` for "expected X, got Y" messages: scalars are echoed as JSON
/// (strings shortened), containers are named.
pub(crate) fn describe(value: &Value) -> String {
    match value {
        Value::String(text) => {
            let mut shortened: String = text.chars().take(ECHO_CHARS_MAX).collect();
            if shortened.len() < text.len() {
                shortened.push('…');
            }
            // Value's Display writes JSON, which quotes and escapes; it cannot fail.
            Value::String(shortened).to_string()
        }
        Value::Array(_) => "an array".to_string(),
        Value::Object(_) => "an object".to_string(),
        scalar => scalar.to_string(),
    }
}

/// `key` in `object`, with `null` read as absent (twin deletion semantics).
pub(crate) fn field<'v>(object: &'v Object, key: &str) -> Option<&'v Value> {
    object.get(key).filter(|value| !value.is_null())
}

/// `key` in `object`, or a 400 naming the missing field.
pub(crate) fn required<'v>(object: &'v Object, key: &str, path: &Path) -> Result<&'v Value, DeploymentError> {
    field(object, key).ok_or_else(|| path.push(key).bad("required field is missing"))
}

/// `value` as an object, or a 400.
pub(crate) fn as_object<'v>(value: &'v Value, path: &Path) -> Result<&'v Object, DeploymentError> {
    value.as_object().ok_or_else(|| path.bad(format!("expected an object, got {}", describe(value))))
}

/// `value` as a string, or a 400.
pub(crate) fn as_str<'v>(value: &'v Value, path: &Path) -> Result<&'v str, DeploymentError> {
    value.as_str().ok_or_else(|| path.bad(format!("expected a string, got {}", describe(value))))
}

/// The optional string `key` of `object`; `None` when absent, a 400 when not a string.
pub(crate) fn optional_str<'v>(object: &'v Object, key: &str, path: &Path) -> Result<Option<&'v str>, DeploymentError> {
    field(object, key).map(|value| as_str(value, &path.push(key))).transpose()
}

/// `value` as an integer in `min..=max`, or a 400 that states the range.
///
/// Floats are refused even when whole (`5.0`): every integer field in the manifest is an
/// integer in IoT Edge's C# model.
pub(crate) fn integer<T>(value: &Value, path: &Path, min: T, max: T) -> Result<T, DeploymentError>
where
    T: Copy + fmt::Display + Into<i128> + TryFrom<i128>,
{
    let refuse = || path.bad(format!("expected an integer from {min} to {max}, got {}", describe(value)));
    let number = match value {
        Value::Number(number) => number.as_i64().map(i128::from).or_else(|| number.as_u64().map(i128::from)),
        _ => None,
    };
    let number = number.ok_or_else(refuse)?;
    if number < min.into() || number > max.into() {
        return Err(refuse());
    }
    T::try_from(number).map_err(|_| refuse())
}

/// `value` as one of the named `choices`, or a 400 that lists them.
pub(crate) fn one_of<T: Copy>(value: &Value, path: &Path, choices: &[(&str, T)]) -> Result<T, DeploymentError> {
    if let Value::String(text) = value {
        if let Some((_, choice)) = choices.iter().find(|(name, _)| name == text) {
            return Ok(*choice);
        }
    }
    let names: Vec<String> = choices.iter().map(|(name, _)| format!("\"{name}\"")).collect();
    Err(path.bad(format!("expected one of {}, got {}", names.join(", "), describe(value))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn path_renders_dotted_keys_without_the_root() {
        let root = Path::root();
        assert_eq!(root.render(), "");
        let content = root.push("modulesContent");
        let agent = content.push("$edgeAgent");
        let desired = agent.push("properties.desired");
        assert_eq!(desired.render(), "modulesContent.$edgeAgent.properties.desired");
    }

    #[test]
    fn path_escapes_control_characters_and_shortens_long_keys() {
        let root = Path::root();
        assert_eq!(root.push("a\nb").render(), "a\\nb");
        let long = "k".repeat(1000);
        let rendered = root.push(&long).render();
        assert_eq!(rendered.chars().count(), PATH_KEY_CHARS_MAX + 1);
        assert!(rendered.ends_with('…'));
    }

    #[test]
    fn describe_echoes_scalars_as_json_and_names_containers() {
        assert_eq!(describe(&json!("sometimes")), "\"sometimes\"");
        assert_eq!(describe(&json!(5)), "5");
        assert_eq!(describe(&json!(true)), "true");
        assert_eq!(describe(&json!(null)), "null");
        assert_eq!(describe(&json!([1])), "an array");
        assert_eq!(describe(&json!({})), "an object");
        let long = describe(&json!("x".repeat(500)));
        assert!(long.len() < 80 && long.ends_with("…\""));
    }

    #[test]
    fn null_fields_read_as_absent() {
        let object = json!({"a": null, "b": 1});
        let object = object.as_object().expect("object literal");
        assert!(field(object, "a").is_none());
        assert!(field(object, "b").is_some());
        let error = required(object, "a", &Path::root()).expect_err("null is missing");
        assert_eq!(error.path, "a");
        assert_eq!(error.message, "required field is missing");
    }

    #[test]
    fn integer_checks_type_and_range() {
        let root = Path::root();
        assert_eq!(integer(&json!(7), &root, 0u8, 9), Ok(7u8));
        assert_eq!(integer(&json!(4294967295u64), &root, 0u32, u32::MAX), Ok(u32::MAX));
        let table = [json!(10), json!(-1), json!(5.0), json!("5"), json!(u64::MAX)];
        for value in table {
            let error = integer(&value, &root, 0u8, 9).expect_err("out of range or not an integer");
            assert!(error.message.starts_with("expected an integer from 0 to 9, got "), "{error}");
        }
    }

    #[test]
    fn one_of_lists_the_choices() {
        let choices = [("never", 0), ("always", 3)];
        assert_eq!(one_of(&json!("always"), &Path::root(), &choices), Ok(3));
        let error = one_of(&json!("sometimes"), &Path::root(), &choices).expect_err("not a choice");
        assert_eq!(error.message, r#"expected one of "never", "always", got "sometimes""#);
    }
}
