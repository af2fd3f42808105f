//! `schemaVersion` checks for the `$edgeAgent` and `$edgeHub` desired properties.
//!
//! IoT Edge parses the text with .NET `System.Version` and decides on major and minor only:
//! - edgeAgent, `EdgeAgentConnection.ValidateSchemaVersion`
//!   (`edge-agent/src/Microsoft.Azure.Devices.Edge.Agent.IoTHub/EdgeAgentConnection.cs`): major
//!   must be 1 and minor 0 or 1 (`ExpectedSchemaVersion = 1.1.0`), else `InvalidSchemaVersion`;
//! - edgeHub, `EdgeHubConfigParser.GetEdgeHubConfig`
//!   (`edge-hub/core/src/Microsoft.Azure.Devices.Edge.Hub.Core/config/EdgeHubConfigParser.cs`):
//!   major 1, minor 0 to 3, each minor with its own DTO.
//!
//! A build or revision component ("1.1.0", "1.0.7") is accepted and ignored, as `Version` allows.
//! Text that is not a version at all is a 412 too, as in IoT Edge; only a missing or non-string
//! `schemaVersion` is a 400 (the C# DTO cannot be built without it).

use super::error::DeploymentError;
use super::json::{as_str, describe, required, Object, Path};

/// The parts of a schema version that decide compatibility.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SchemaVersion {
    pub(crate) major: u32,
    pub(crate) minor: u32,
}

/// Which twin's rules to apply.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Twin {
    Agent,
    Hub,
}

impl Twin {
    /// Highest supported minor version of major 1.
    fn minor_max(self) -> u32 {
        match self {
            Twin::Agent => 1,
            Twin::Hub => 3,
        }
    }

    fn accepted(self) -> &'static str {
        match self {
            Twin::Agent => "$edgeAgent accepts \"1.0\" and \"1.1\"",
            Twin::Hub => "$edgeHub accepts \"1.0\" to \"1.3\"",
        }
    }
}

/// `System.Version` syntax: two to four dot-separated non-negative decimal int32 components.
pub(crate) fn parse(text: &str) -> Option<SchemaVersion> {
    let mut components = Vec::with_capacity(4);
    for part in text.split('.') {
        if components.len() == 4 || part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        // Digits only, so no sign: the int32 is non-negative and `unsigned_abs` is exact.
        let number: i32 = part.parse().ok()?;
        components.push(number.unsigned_abs());
    }
    match components[..] {
        [major, minor, ..] => Some(SchemaVersion { major, minor }),
        _ => None,
    }
}

/// Reads and checks `schemaVersion` from a twin's desired properties at `path`; returns the
/// parsed version and the text as written.
pub(crate) fn read<'v>(
    desired: &'v Object,
    path: &Path,
    twin: Twin,
) -> Result<(SchemaVersion, &'v str), DeploymentError> {
    let version_path = path.push("schemaVersion");
    let value = required(desired, "schemaVersion", path)
        .map_err(|error| DeploymentError { message: format!("{}; {}", error.message, twin.accepted()), ..error })?;
    let text = as_str(value, &version_path)?;
    let refuse = |why: &str| {
        DeploymentError::unsupported_schema(
            version_path.render(),
            format!("{why} {}; {}", describe(value), twin.accepted()),
        )
    };
    let version = parse(text).ok_or_else(|| refuse("schema version is not a version number:"))?;
    if version.major != 1 || version.minor > twin.minor_max() {
        return Err(refuse("unsupported schema version"));
    }
    Ok((version, text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::error::DeploymentStatus;
    use serde_json::{json, Value};

    fn check(twin: Twin, version: Value) -> Result<SchemaVersion, DeploymentError> {
        let desired = json!({ "schemaVersion": version });
        let desired = desired.as_object().expect("object literal");
        read(desired, &Path::root(), twin).map(|(version, _)| version)
    }

    #[test]
    fn parse_follows_system_version_syntax() {
        assert_eq!(parse("1.0"), Some(SchemaVersion { major: 1, minor: 0 }));
        assert_eq!(parse("1.1.0"), Some(SchemaVersion { major: 1, minor: 1 }));
        assert_eq!(parse("1.1.0.7"), Some(SchemaVersion { major: 1, minor: 1 }));
        for bad in ["", "1", "1.", ".1", "1.0.0.0.0", "a.b", "1.-1", "1. 0", "+1.0", "1.99999999999"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn agent_accepts_major_one_minor_zero_and_one() {
        for good in ["1.0", "1.1", "1.0.0", "1.1.0"] {
            assert!(check(Twin::Agent, json!(good)).is_ok(), "{good}");
        }
        for bad in ["1.2", "2.0", "0.1", "1", "", "latest"] {
            let error = check(Twin::Agent, json!(bad)).expect_err(bad);
            assert_eq!(error.status, DeploymentStatus::PreconditionFailed, "{bad}");
            assert_eq!(error.path, "schemaVersion");
        }
    }

    #[test]
    fn hub_accepts_minor_zero_to_three() {
        for good in ["1.0", "1.1", "1.2", "1.3"] {
            assert!(check(Twin::Hub, json!(good)).is_ok(), "{good}");
        }
        for bad in ["1.4", "2.0", "0.9"] {
            let error = check(Twin::Hub, json!(bad)).expect_err(bad);
            assert_eq!(error.status, DeploymentStatus::PreconditionFailed, "{bad}");
        }
    }

    #[test]
    fn missing_or_mistyped_schema_version_is_a_format_error() {
        let error = read(&Object::new(), &Path::root(), Twin::Agent).expect_err("missing");
        assert_eq!(error.status, DeploymentStatus::BadRequest);
        assert_eq!(error.path, "schemaVersion");
        let error = check(Twin::Hub, json!(1.0)).expect_err("a number");
        assert_eq!(error.status, DeploymentStatus::BadRequest);
        assert_eq!(error.message, "expected a string, got 1.0");
    }
}
