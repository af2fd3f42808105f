//! The management API: HTTP/1.1 over a Unix socket under `data_dir` (mode 0600, so only root —
//! the runtime's user — can deploy), like aziot-edged's management socket.
//!
//! - `PUT /deployment` (or `POST`) with a deployment manifest: IoT Edge's codes — 200 accepted,
//!   400 invalid (naming the field), 412 unsupported schemaVersion, 417 no deployment, 500 the
//!   agent failed; the body is `{"code": …, "message": …}`. A rejected deployment changes
//!   nothing.
//! - `GET /modules`: the reported properties document ([`super::report`]).
//!
//! One request per connection (`Connection: close`); heads are bounded by [`HEAD_BYTES_MAX`],
//! bodies by [`crate::manifest::DEPLOYMENT_BYTES_MAX`], concurrent connections by
//! [`CONNECTIONS_MAX`].

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use smol::io::{AsyncReadExt, AsyncWriteExt};

use super::AgentHandle;
use crate::manifest::DEPLOYMENT_BYTES_MAX;

/// Largest request head (request line and headers).
pub const HEAD_BYTES_MAX: usize = 8 * 1024;
/// Most connections served at once per socket (management, or one module's workload API);
/// more are answered 503.
pub const CONNECTIONS_MAX: usize = 16;
/// A client must send its request within this time (answering may take longer: a deployment
/// waits for the agent, see `AgentHandle::deploy`).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The socket's path under `data_dir`.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("mgmt.sock")
}

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub method: String,
    pub path: String,
    pub content_length: usize,
}

/// Parses a request head (up to and excluding the blank line).
///
/// # Errors
/// A malformed request line, a non-HTTP/1.x version, a bad or oversized `Content-Length`.
pub fn parse_head(head: &[u8]) -> Result<Head, String> {
    let text = std::str::from_utf8(head).map_err(|_| "request head is not UTF-8".to_owned())?;
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(path), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(format!("malformed request line {request_line:?}"));
    };
    if !version.starts_with("HTTP/1.") || method.is_empty() || !path.starts_with('/') {
        return Err(format!("malformed request line {request_line:?}"));
    }
    let mut content_length = 0;
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':').ok_or_else(|| format!("malformed header {line:?}"))?;
        if name.trim().eq_ignore_ascii_case("content-length") {
            content_length = value.trim().parse().map_err(|_| format!("bad Content-Length {:?}", value.trim()))?;
            if content_length > DEPLOYMENT_BYTES_MAX {
                return Err(format!("body of {content_length} bytes, at most {DEPLOYMENT_BYTES_MAX}"));
            }
        }
    }
    Ok(Head { method: method.to_owned(), path: path.to_owned(), content_length })
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        412 => "Precondition Failed",
        417 => "Expectation Failed",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    }
}

pub(crate) fn response(code: u16, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reason(code),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

pub(crate) fn message(code: u16, text: &str) -> Vec<u8> {
    response(code, serde_json::json!({"code": code, "message": text}).to_string().as_bytes())
}

/// Binds the socket (replacing a stale one), makes it root-only, and serves until the process
/// ends.
///
/// # Errors
/// The socket cannot be bound.
pub fn bind(path: &Path) -> std::io::Result<smol::Async<std::os::unix::net::UnixListener>> {
    if path.exists() {
        // A live runtime would still answer; a stale file only blocks the bind.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("{} is in use by a running tinyedge", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = smol::Async::<std::os::unix::net::UnixListener>::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves the management API on `listener`.
pub async fn serve(listener: smol::Async<std::os::unix::net::UnixListener>, handle: AgentHandle) {
    serve_requests(listener, "management", move |head, body| {
        let handle = handle.clone();
        async move { answer(&head, &body, &handle).await }
    })
    .await;
}

/// Serves HTTP/1.1 requests on a Unix socket, one per connection: at most [`CONNECTIONS_MAX`]
/// at once (more are answered 503), each read within [`REQUEST_TIMEOUT`] and bounded as
/// [`read_request`] bounds it, then answered by `respond`. Shared by the management socket
/// and the workload API sockets (`what` names the socket in errors).
pub(crate) async fn serve_requests<F, Fut>(
    listener: smol::Async<std::os::unix::net::UnixListener>,
    what: &'static str,
    respond: F,
) where
    F: Fn(Head, Vec<u8>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Vec<u8>> + Send + 'static,
{
    let respond = Arc::new(respond);
    let active = Arc::new(AtomicUsize::new(0));
    loop {
        let (mut stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                log::warn!("{what} socket: {e}");
                smol::Timer::after(Duration::from_millis(100)).await;
                continue;
            }
        };
        if active.fetch_add(1, Ordering::SeqCst) >= CONNECTIONS_MAX {
            active.fetch_sub(1, Ordering::SeqCst);
            let _ = stream.write_all(&message(503, &format!("too many {what} connections"))).await;
            continue;
        }
        let (respond, active) = (respond.clone(), active.clone());
        smol::spawn(async move {
            let request = smol::future::or(async { Some(read_request(&mut stream).await) }, async {
                smol::Timer::after(REQUEST_TIMEOUT).await;
                None
            })
            .await;
            let answer = match request {
                None => message(400, "request not received in time"),
                Some(Err(answer)) => answer,
                Some(Ok((head, body))) => respond(head, body).await,
            };
            let _ = stream.write_all(&answer).await;
            let _ = stream.close().await;
            active.fetch_sub(1, Ordering::SeqCst);
        })
        .detach();
    }
}

/// Reads one request: its head and body, or the error answer.
async fn read_request(stream: &mut smol::Async<std::os::unix::net::UnixStream>) -> Result<(Head, Vec<u8>), Vec<u8>> {
    let mut buffer = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buffer.len() > HEAD_BYTES_MAX {
            return Err(message(400, &format!("request head longer than {HEAD_BYTES_MAX} bytes")));
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return Err(message(400, "connection closed before the request was complete")),
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    };
    let head = parse_head(&buffer[..head_end]).map_err(|e| message(400, &e))?;
    let mut body = buffer.split_off(head_end + 4);
    while body.len() < head.content_length {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return Err(message(400, "connection closed before the body was complete")),
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    body.truncate(head.content_length);
    Ok((head, body))
}

/// The answer to a complete request.
async fn answer(head: &Head, body: &[u8], handle: &AgentHandle) -> Vec<u8> {
    match (head.method.as_str(), head.path.as_str()) {
        ("PUT" | "POST", "/deployment") => {
            let (code, text) = handle.deploy(body).await;
            if code == 200 {
                log::info!("management API: deployment accepted");
            } else {
                log::warn!("management API: deployment rejected ({code}): {text}");
            }
            message(code, &text)
        }
        ("GET", "/modules") => response(200, handle.report().to_string().as_bytes()),
        (_, "/deployment" | "/modules") => message(405, &format!("{} is not allowed on {}", head.method, head.path)),
        _ => message(404, &format!("no such endpoint {}", head.path)),
    }
}

/// A blocking client call for the CLI: `(status, body)`.
///
/// # Errors
/// The socket is missing (the runtime is not running or the agent is disabled), or the answer
/// is not HTTP.
pub fn request(socket: &Path, method: &str, path: &str, body: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let mut stream = std::os::unix::net::UnixStream::connect(socket).map_err(|e| {
        format!("management socket {}: {e} (is `tinyedge run` running with the agent enabled?)", socket.display())
    })?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(120)));
    let head = format!("{method} {path} HTTP/1.1\r\nHost: tinyedge\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body))
        .map_err(|e| format!("management socket: {e}"))?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).map_err(|e| format!("management socket: {e}"))?;
    let split = answer.windows(4).position(|w| w == b"\r\n\r\n").ok_or("management socket: not an HTTP answer")?;
    let status_line = String::from_utf8_lossy(&answer[..split]).lines().next().unwrap_or_default().to_owned();
    let code = status_line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("management socket: bad status line {status_line:?}"))?;
    Ok((code, answer[split + 4..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads() {
        let h = parse_head(b"PUT /deployment HTTP/1.1\r\nContent-Length: 12\r\nHost: x").unwrap();
        assert_eq!((h.method.as_str(), h.path.as_str(), h.content_length), ("PUT", "/deployment", 12));
        for (bad, needle) in [
            (&b"GET"[..], "malformed request line"),
            (b"GET / HTTP/2", "malformed request line"),
            (b"GET / HTTP/1.1\r\nContent-Length: x", "bad Content-Length"),
            (b"GET / HTTP/1.1\r\nContent-Length: 99999999", "at most"),
            (b"GET / HTTP/1.1\r\nnocolon", "malformed header"),
            (b"\xff\xfe", "UTF-8"),
        ] {
            assert!(parse_head(bad).unwrap_err().contains(needle), "{bad:?}");
        }
    }
}
