//! A module's `settings`: image, container create options (possibly chunked) and digest.
//!
//! Source: `edge-agent/src/Microsoft.Azure.Devices.Edge.Agent.Docker/DockerConfig.cs` (image
//! check, create-options reading) and `Agent.Docker/Constants.cs` (`TwinValueMaxSize = 512`,
//! `TwinValueMaxChunks = 100`). IoT Hub limits a twin string value, so edgeAgent splits long
//! create options into `createOptions`, `createOptions01`, … `createOptions99`, which we join
//! back in order.

use serde_json::Value;

use super::error::DeploymentError;
use super::json::{as_object, as_str, describe, field, required, Object, Path};

/// The base name of the create-options field and of its chunks.
const CREATE_OPTIONS: &str = "createOptions";
/// Fields per create-options value: the base plus `01`..`99` (`TwinValueMaxChunks`).
const CREATE_OPTIONS_CHUNKS_MAX: usize = 100;
/// Digits in a chunk suffix: `D2` formatting in `DockerConfig`'s writer.
const CHUNK_SUFFIX_DIGITS: usize = 2;
/// The only digest algorithm Docker and OCI registries use for image manifests.
const DIGEST_PREFIX: &str = "sha256:";
/// Hex digits in a sha256 digest.
const DIGEST_HEX_DIGITS: usize = 64;

/// A module's validated `settings`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Settings {
    pub(crate) image: String,
    pub(crate) create_options: String,
    pub(crate) digest: Option<String>,
}

/// Reads `settings` (an object at `path`).
pub(crate) fn parse(value: &Value, path: &Path) -> Result<Settings, DeploymentError> {
    let settings = as_object(value, path)?;
    let image = parse_image(required(settings, "image", path)?, &path.push("image"))?;
    let create_options = parse_create_options(settings, path)?;
    let digest = match field(settings, "digest") {
        None => None,
        Some(digest) => Some(parse_digest(digest, &path.push("digest"))?),
    };
    Ok(Settings { image, create_options, digest })
}

/// The image reference, trimmed, checked the way `DockerConfig.ValidateAndGetImage` does.
///
/// Kept as written otherwise: `$upstream` substitution and the default `:latest` tag are the
/// runtime's business, since both depend on where the image is pulled from.
fn parse_image(value: &Value, path: &Path) -> Result<String, DeploymentError> {
    let image = as_str(value, path)?.trim();
    check_image(image).map_err(|why| path.bad(format!("{why}, got {}", describe(value))))?;
    Ok(image.to_string())
}

/// `^(([^/]*/)*)([^/:]+)(:[^/:]+)?$` from `DockerConfig.cs`, extended to allow a digest after
/// the tag (`name:tag@sha256:…`, which Docker accepts and IoT Edge's pattern does not), plus
/// the `$upstream:<port>/…` form for nested edge.
fn check_image(image: &str) -> Result<(), &'static str> {
    if image.is_empty() {
        return Err("image must not be empty");
    }
    if image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("image references cannot contain whitespace");
    }
    if let Some(rest) = image.strip_prefix('$') {
        // ImageUpstreamRegexPattern: `^\$upstream(?<path>:[1-9].*)`.
        let port_start = rest.strip_prefix("upstream:").and_then(|port| port.chars().next());
        if !matches!(port_start, Some('1'..='9')) {
            return Err("the only variable allowed in an image is $upstream:<port>/…");
        }
    }
    let last_segment = image.rsplit('/').next().unwrap_or(image);
    let name_and_tag = match last_segment.split_once('@') {
        Some((name_and_tag, digest)) if !digest.is_empty() => name_and_tag,
        Some(_) => return Err("image digest after '@' is empty"),
        None => last_segment,
    };
    let (name, tag) = match name_and_tag.split_once(':') {
        Some((name, tag)) => (name, Some(tag)),
        None => (name_and_tag, None),
    };
    if name.is_empty() {
        return Err("image name after the last '/' is empty");
    }
    if let Some(tag) = tag {
        if tag.is_empty() || tag.contains(':') {
            return Err("image tag must be one non-empty ':tag' after the name");
        }
    }
    Ok(())
}

/// Joins `createOptions`, `createOptions01`, … and checks the result is a JSON object.
///
/// Returns `""` when there are no create options, including IoT Edge's spellings of none:
/// blank text and `"null"` (`DockerConfig.GetCreateOptions`). Otherwise the joined text is
/// returned verbatim, so the runtime sees exactly what the user wrote.
fn parse_create_options(settings: &Object, path: &Path) -> Result<String, DeploymentError> {
    let (text, chunk_count) = join_chunks(settings, path)?;
    let trimmed = text.trim();
    if trimmed.is_empty() || trimmed.eq_ignore_ascii_case("null") {
        return Ok(String::new());
    }
    let options_path = path.push(CREATE_OPTIONS);
    let where_ = if chunk_count > 1 { " (line and column of the joined chunks)" } else { "" };
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(_)) => Ok(text),
        Ok(other) => Err(options_path.bad(format!(
            "createOptions must be a JSON object (Docker's container create body), got {}",
            describe(&other)
        ))),
        Err(error) => Err(options_path.bad(format!("createOptions is not valid JSON: {error}{where_}"))),
    }
}

/// The create-options chunks in order, concatenated, and how many there were.
///
/// `ChunkedProperty` in `edge-util/src/Microsoft.Azure.Devices.Edge.Util/JsonEx.cs` requires the
/// i-th field to be numbered i; a gap or a chunk without the base field is an error there, and a
/// 400 here, naming the first missing field.
fn join_chunks(settings: &Object, path: &Path) -> Result<(String, usize), DeploymentError> {
    let mut chunks: [Option<&str>; CREATE_OPTIONS_CHUNKS_MAX] = [None; CREATE_OPTIONS_CHUNKS_MAX];
    for (key, value) in settings {
        let Some(index) = chunk_index(key, path)? else {
            continue;
        };
        if value.is_null() {
            continue;
        }
        chunks[index] = Some(as_str(value, &path.push(key))?);
    }
    let count = chunks.iter().rposition(Option::is_some).map_or(0, |last| last + 1);
    let mut text = String::new();
    for (index, chunk) in chunks[..count].iter().enumerate() {
        let Some(chunk) = chunk else {
            let missing = chunk_name(index);
            let last = chunk_name(count - 1);
            return Err(path.push(&missing).bad(format!(
                "missing chunk: create options split into chunks must be numbered without gaps \
                 from createOptions up to the last one ({last})"
            )));
        };
        text.push_str(chunk);
    }
    Ok((text, count))
}

/// `Some(i)` when `key` is the i-th create-options chunk field, `None` for unrelated fields.
fn chunk_index(key: &str, path: &Path) -> Result<Option<usize>, DeploymentError> {
    let Some(suffix) = key.strip_prefix(CREATE_OPTIONS) else {
        return Ok(None);
    };
    if suffix.is_empty() {
        return Ok(Some(0));
    }
    if !suffix.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(None);
    }
    match suffix.parse::<usize>() {
        Ok(index) if suffix.len() == CHUNK_SUFFIX_DIGITS && index > 0 => Ok(Some(index)),
        _ => Err(path.push(key).bad("create options chunks are named createOptions01 to createOptions99 (two digits)")),
    }
}

/// The field name of chunk `index`: `createOptions`, then `createOptions01`, ….
fn chunk_name(index: usize) -> String {
    if index == 0 {
        CREATE_OPTIONS.to_string()
    } else {
        format!("{CREATE_OPTIONS}{index:02}")
    }
}

/// `settings.digest`: `sha256:` and 64 lowercase hex digits, the OCI form for sha256.
fn parse_digest(value: &Value, path: &Path) -> Result<String, DeploymentError> {
    let digest = as_str(value, path)?;
    let hex = digest.strip_prefix(DIGEST_PREFIX).unwrap_or("");
    let lower_hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
    if hex.len() != DIGEST_HEX_DIGITS || !hex.bytes().all(lower_hex) {
        return Err(
            path.bad(format!("expected \"sha256:\" followed by 64 lowercase hex digits, got {}", describe(value)))
        );
    }
    Ok(digest.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn settings(value: Value) -> Result<Settings, DeploymentError> {
        parse(&value, &Path::root().push("settings"))
    }

    #[test]
    fn image_is_trimmed_and_create_options_default_to_empty() {
        let parsed = settings(json!({"image": "  repo/img:1.0 "})).expect("valid settings");
        assert_eq!(parsed, Settings { image: "repo/img:1.0".into(), create_options: String::new(), digest: None });
    }

    #[test]
    fn image_references_follow_edge_agents_pattern() {
        let good = [
            "img",
            "mcr.microsoft.com/azureiotedge-agent:1.5",
            "localhost:5000/a/b:tag",
            "img@sha256:abc",
            "img:1.0@sha256:abc",
            "$upstream:443/azureiotedge-hub:1.5",
        ];
        for image in good {
            assert_eq!(check_image(image), Ok(()), "{image}");
        }
        let bad = ["", "repo/", "img:", ":tag", "img:a:b", "a b", "$other/img", "$upstream:0/x", "img@"];
        for image in bad {
            assert!(check_image(image).is_err(), "{image:?}");
        }
    }

    #[test]
    fn chunks_are_joined_in_numeric_order() {
        let parsed = settings(json!({
            "image": "img",
            "createOptions02": "\"b\"}",
            "createOptions": "{\"a\":",
            "createOptions01": "",
        }))
        .expect("chunks join to an object");
        assert_eq!(parsed.create_options, "{\"a\":\"b\"}");
    }

    #[test]
    fn a_gap_in_the_chunks_names_the_missing_field() {
        let error = settings(json!({"image": "img", "createOptions": "{", "createOptions02": "}"})).expect_err("gap");
        assert_eq!(error.path, "settings.createOptions01");
        let error = settings(json!({"image": "img", "createOptions01": "{}"})).expect_err("no base");
        assert_eq!(error.path, "settings.createOptions");
    }

    #[test]
    fn badly_numbered_chunks_are_refused() {
        for key in ["createOptions1", "createOptions00", "createOptions100", "createOptions001"] {
            let error = settings(json!({"image": "img", "createOptions": "{}", key: "x"})).expect_err(key);
            assert_eq!(error.path, format!("settings.{key}"));
        }
        // Not a chunk at all: an unknown field, ignored.
        assert!(settings(json!({"image": "img", "createOptionsNote": 5})).is_ok());
    }

    #[test]
    fn create_options_must_be_a_json_object() {
        let error = settings(json!({"image": "img", "createOptions": "{\"a\":"})).expect_err("bad JSON");
        assert_eq!(error.path, "settings.createOptions");
        assert!(error.message.starts_with("createOptions is not valid JSON: "), "{error}");
        assert!(error.message.contains("line 1 column"), "{error}");
        let error = settings(json!({"image": "img", "createOptions": "[1]"})).expect_err("array");
        assert!(error.message.ends_with("got an array"), "{error}");
        let error = settings(json!({"image": "img", "createOptions": 5})).expect_err("number");
        assert_eq!(error.message, "expected a string, got 5");
        for none in ["", "   ", "null", "NULL"] {
            let parsed = settings(json!({"image": "img", "createOptions": none})).expect(none);
            assert_eq!(parsed.create_options, "");
        }
    }

    #[test]
    fn digest_must_be_sha256_lowercase_hex() {
        let digest = format!("sha256:{}", "0123456789abcdef".repeat(4));
        let parsed = settings(json!({"image": "img", "digest": digest})).expect("valid digest");
        assert_eq!(parsed.digest.as_deref(), Some(digest.as_str()));
        let upper = digest.to_uppercase().replace("SHA256", "sha256");
        for bad in [json!("sha256:abc"), json!(upper), json!("md5:00"), json!(1)] {
            let error = settings(json!({"image": "img", "digest": bad})).expect_err("bad digest");
            assert_eq!(error.path, "settings.digest");
        }
    }

    #[test]
    fn image_is_required_and_must_be_a_non_empty_string() {
        let error = settings(json!({})).expect_err("missing image");
        assert_eq!((error.path.as_str(), error.message.as_str()), ("settings.image", "required field is missing"));
        let error = settings(json!({"image": " "})).expect_err("blank image");
        assert_eq!(error.message, "image must not be empty, got \" \"");
        let error = settings(json!({"image": 3})).expect_err("number image");
        assert_eq!(error.message, "expected a string, got 3");
    }
}
