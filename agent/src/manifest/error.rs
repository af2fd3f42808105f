//! Deployment status codes and the error a rejected manifest produces.
//!
//! The codes are edgeAgent's `lastDesiredStatus.code` values
//! (`edge-agent/src/Microsoft.Azure.Devices.Edge.Agent.Core/DeploymentStatusCode.cs`), so the
//! runtime can report a rejection to IoT Hub exactly as edgeAgent would.

use std::fmt;

/// The outcome of applying a deployment, as reported in `lastDesiredStatus.code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum DeploymentStatus {
    /// The deployment was applied ("Successful").
    Ok = 200,
    /// The manifest is malformed: bad JSON, a missing field, a wrong type or value
    /// ("ConfigFormatError").
    BadRequest = 400,
    /// The agent cannot tell yet (not connected, shutting down) ("Unknown").
    NotAcceptable = 406,
    /// The manifest's `schemaVersion` is not one this runtime understands
    /// ("InvalidSchemaVersion").
    PreconditionFailed = 412,
    /// There is no deployment: an empty document or no `$edgeAgent` desired properties
    /// ("ConfigEmptyError").
    ExpectationFailed = 417,
    /// Applying a valid deployment failed ("Failed").
    Failed = 500,
}

impl DeploymentStatus {
    /// The numeric code reported in `lastDesiredStatus.code`.
    pub fn code(&self) -> u16 {
        *self as u16
    }
}

impl fmt::Display for DeploymentStatus {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}", self.code())
    }
}

/// Why a manifest was rejected: the status to report, where, and what to fix.
///
/// `path` names the offending field with dots, as written in the manifest, e.g.
/// `modulesContent.$edgeAgent.properties.desired.modules.tempSensor.restartPolicy`. It is empty
/// when the problem is the document as a whole (bad JSON, too large). Keys are escaped and
/// shortened when rendered so that the error always fits on one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentError {
    /// The code to report for this rejection.
    pub status: DeploymentStatus,
    /// Dotted path of the offending field; empty for the whole document.
    pub path: String,
    /// What is wrong, in words a user can act on.
    pub message: String,
}

impl DeploymentError {
    /// A 400: the manifest is malformed at `path`.
    pub(crate) fn bad_request(path: String, message: impl Into<String>) -> Self {
        Self { status: DeploymentStatus::BadRequest, path, message: message.into() }
    }

    /// A 412: the schema version at `path` is not supported.
    pub(crate) fn unsupported_schema(path: String, message: impl Into<String>) -> Self {
        Self { status: DeploymentStatus::PreconditionFailed, path, message: message.into() }
    }

    /// A 417: there is no deployment (nothing at `path`).
    pub(crate) fn empty(path: String, message: impl Into<String>) -> Self {
        Self { status: DeploymentStatus::ExpectationFailed, path, message: message.into() }
    }
}

impl fmt::Display for DeploymentError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(formatter, "{}: {}", self.status, self.message)
        } else {
            write!(formatter, "{} at {}: {}", self.status, self.path, self.message)
        }
    }
}

impl std::error::Error for DeploymentError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_edge_agent_deployment_status_codes() {
        let table = [
            (DeploymentStatus::Ok, 200),
            (DeploymentStatus::BadRequest, 400),
            (DeploymentStatus::NotAcceptable, 406),
            (DeploymentStatus::PreconditionFailed, 412),
            (DeploymentStatus::ExpectationFailed, 417),
            (DeploymentStatus::Failed, 500),
        ];
        for (status, code) in table {
            assert_eq!(status.code(), code);
        }
    }

    #[test]
    fn display_is_one_line_with_code_path_and_message() {
        let error = DeploymentError::bad_request("a.b".to_string(), "expected a string, got 5");
        assert_eq!(error.to_string(), "400 at a.b: expected a string, got 5");
        let whole = DeploymentError::bad_request(String::new(), "invalid JSON");
        assert_eq!(whole.to_string(), "400: invalid JSON");
    }
}
