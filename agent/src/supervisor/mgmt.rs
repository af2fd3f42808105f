//! The agent's side of the management API. The socket, `{data_dir}/mgmt.sock` (mode 0600, so
//! only root — the runtime's user — can deploy, like aziot-edged's management socket), is
//! served by the runtime whether or not the agent runs (`src/mgmt.rs`), over
//! [`tinyedge_platform::http`]; with the agent enabled it hands these requests here:
//!
//! - `PUT /deployment` (or `POST`) with a deployment manifest ([`deploy`]): IoT Edge's codes —
//!   200 accepted, 400 invalid (naming the field), 412 unsupported schemaVersion, 417 no
//!   deployment, 500 the agent failed; the body is `{"code": …, "message": …}`. A rejected
//!   deployment changes nothing.
//! - `GET /modules` ([`modules`]): the reported properties document ([`super::report`]).
//!
//! Bodies are bounded by [`crate::manifest::DEPLOYMENT_BYTES_MAX`] ([`LIMITS`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use tinyedge_platform::http::{self, Head, HttpError, Limits, Response};

use super::AgentHandle;
use crate::manifest::DEPLOYMENT_BYTES_MAX;

/// The management socket's bounds: the platform's defaults, bodies up to a deployment.
pub const LIMITS: Limits = Limits::with_body_max(DEPLOYMENT_BYTES_MAX);
/// How long the CLI waits for an answer: a deployment may wait for the agent (see
/// `AgentHandle::deploy`).
pub const CLI_ANSWER_TIMEOUT: Duration = Duration::from_secs(120);

/// The socket's path under `data_dir`.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(http::MANAGEMENT_SOCKET_FILE)
}

/// Parses a management request head ([`http::parse_head`] with bodies up to a deployment).
///
/// # Errors
/// As [`http::parse_head`].
pub fn parse_head(head: &[u8]) -> Result<Head, HttpError> {
    http::parse_head(head, LIMITS.body_bytes_max)
}

/// `PUT /deployment`: validates `body` and hands it to the agent; IoT Edge's code and message.
pub async fn deploy(handle: &AgentHandle, body: &[u8]) -> Response {
    let (code, text) = handle.deploy(body).await;
    if code == 200 {
        log::info!("management API: deployment accepted");
    } else {
        log::warn!("management API: deployment rejected ({code}): {text}");
    }
    Response::message(code, &text)
}

/// `GET /modules`: the reported properties document.
pub fn modules(handle: &AgentHandle) -> Response {
    Response::json(200, &handle.report())
}

/// A blocking client call for the CLI: `(status, body)`.
///
/// # Errors
/// The socket is missing (the runtime is not running), or the answer is not HTTP.
pub fn request(socket: &Path, method: &str, path: &str, body: &[u8]) -> Result<(u16, Vec<u8>), String> {
    http::unix_request(socket, method, path, body, CLI_ANSWER_TIMEOUT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn management_heads_are_bounded_by_the_deployment_size() {
        let h = parse_head(b"PUT /deployment HTTP/1.1\r\nContent-Length: 12\r\nHost: x").unwrap();
        assert_eq!((h.method.as_str(), h.path.as_str(), h.content_length), ("PUT", "/deployment", 12));
        let too_big = format!("PUT /deployment HTTP/1.1\r\nContent-Length: {}", DEPLOYMENT_BYTES_MAX + 1);
        assert!(parse_head(too_big.as_bytes()).unwrap_err().message.contains("at most"));
    }
}
