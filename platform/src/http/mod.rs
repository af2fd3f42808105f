//! HTTP/1.1 as tinyedge's APIs serve it: the management socket, each module's workload socket,
//! and edgeHub's method API over TLS share this one implementation.
//!
//! One request per connection (`Connection: close`), bodies framed by `Content-Length`, JSON
//! answers. Everything a peer sends is bounded before it is buffered: connections served at
//! once, the head ([`HEAD_BYTES_MAX`], [`HEADERS_MAX`]), the body (per API), and the time to
//! send the request ([`REQUEST_TIMEOUT`] by default). A bad request gets a 400 that says what
//! is wrong; nothing a peer sends can panic.
//!
//! # Layout
//! - `head`: the pure request head parser ([`parse_head`] → [`Head`], or an [`HttpError`]).
//! - `serve`: the bounded request loop, generic over the byte stream ([`serve_connection`]),
//!   the connection [`Gate`], the Unix socket listener ([`serve_unix`], [`bind_unix`]) and the
//!   plain TCP one of `/metrics` ([`serve_tcp`]).
//! - `client`: the blocking Unix socket client of the CLI ([`unix_request`]).
//! - here: [`Response`], what handlers answer.

mod client;
mod head;
mod serve;

pub use client::{parse_answer, unix_request, ANSWER_BYTES_MAX};
pub use head::{parse_head, Head, HttpError, HEADERS_MAX, HEAD_BYTES_MAX};
pub use serve::{
    bind_unix, read_request, serve_connection, serve_tcp, serve_unix, within, Gate, Limits, Permit, Request,
    CONNECTIONS_MAX, REQUEST_TIMEOUT,
};

/// The runtime's management socket, under `data_dir` (`tinyedge deploy`, `list`, `twin show`,
/// `invoke`).
pub const MANAGEMENT_SOCKET_FILE: &str = "mgmt.sock";

/// An answer: a status and a JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// JSON text, unless `content_type` says otherwise.
    pub body: Vec<u8>,
    /// The `Content-Type` header ([`JSON_CONTENT_TYPE`] for every API but `/metrics`).
    pub content_type: &'static str,
}

/// What tinyedge's APIs answer.
pub const JSON_CONTENT_TYPE: &str = "application/json; charset=utf-8";

impl Response {
    /// `status` with the JSON text `body`.
    pub fn new(status: u16, body: Vec<u8>) -> Response {
        Response { status, body, content_type: JSON_CONTENT_TYPE }
    }

    /// `status` with `body` of the given type (the Prometheus text format, say).
    pub fn typed(status: u16, content_type: &'static str, body: Vec<u8>) -> Response {
        Response { status, body, content_type }
    }

    /// `status` with `value` as its body.
    pub fn json(status: u16, value: &serde_json::Value) -> Response {
        Response::new(status, value.to_string().into_bytes())
    }

    /// `{"code": status, "message": text}`: how tinyedge's local APIs say what went wrong (and,
    /// for deployments, what IoT Edge's code was).
    pub fn message(status: u16, text: &str) -> Response {
        Response::json(status, &serde_json::json!({"code": status, "message": text}))
    }

    /// The whole answer on the wire: status line, `Content-Type`, `Content-Length`,
    /// `Connection: close`, body.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len()
        )
        .into_bytes();
        out.extend_from_slice(&self.body);
        out
    }
}

/// The reason phrase of the statuses tinyedge answers.
fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        417 => "Expectation Failed",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_framed_json() {
        let bytes = Response::message(404, "no such endpoint /x").to_bytes();
        let (status, body) = parse_answer(&bytes).unwrap();
        assert_eq!(status, 404);
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"), "{text}");
        assert!(text.contains(&format!("\r\nContent-Length: {}\r\n", body.len())), "{text}");
        assert_eq!(body, br#"{"code":404,"message":"no such endpoint /x"}"#);
    }
}
