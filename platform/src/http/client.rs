//! The blocking client the CLI uses on the runtime's Unix sockets.

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

/// Largest answer read: the reported document of a big deployment or a method response (128 KiB
/// payload) fit many times; a runaway server cannot fill the CLI's memory.
pub const ANSWER_BYTES_MAX: u64 = 16 * 1024 * 1024;

/// Sends one request on the Unix socket `socket` and returns the answer's `(status, body)`,
/// waiting at most `timeout` for each read.
///
/// # Errors
/// The socket is missing or refuses (the message names it; `tinyedge run` is not running), the
/// answer does not come in time or is not HTTP.
pub fn unix_request(
    socket: &Path,
    method: &str,
    target: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<(u16, Vec<u8>), String> {
    let what = format!("management socket {}", socket.display());
    let mut stream = std::os::unix::net::UnixStream::connect(socket)
        .map_err(|e| format!("{what}: {e} (is `tinyedge run` running with this config?)"))?;
    let _ = stream.set_read_timeout(Some(timeout));
    let head = format!(
        "{method} {target} HTTP/1.1\r\nHost: tinyedge\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(body)).map_err(|e| format!("{what}: {e}"))?;
    let mut answer = Vec::new();
    stream.take(ANSWER_BYTES_MAX).read_to_end(&mut answer).map_err(|e| match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            format!("{what}: no answer within {} s", timeout.as_secs())
        }
        _ => format!("{what}: {e}"),
    })?;
    parse_answer(&answer).map_err(|e| format!("{what}: {e}"))
}

/// `(status, body)` of a whole HTTP/1.1 answer (pure).
///
/// # Errors
/// No blank line after the head, or no numeric status.
pub fn parse_answer(answer: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let split = answer.windows(4).position(|w| w == b"\r\n\r\n").ok_or("not an HTTP answer")?;
    let status_line = String::from_utf8_lossy(&answer[..split]).lines().next().unwrap_or_default().to_owned();
    let code = status_line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    Ok((code, answer[split + 4..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_give_status_and_body() {
        assert_eq!(parse_answer(b"HTTP/1.1 404 Not Found\r\nA: b\r\n\r\n{}"), Ok((404, b"{}".to_vec())));
        assert!(parse_answer(b"HTTP/1.1 404").is_err());
        assert!(parse_answer(b"HTTP/1.1 x\r\n\r\n").is_err());
    }

    #[test]
    fn a_missing_socket_is_named() {
        let error = unix_request(Path::new("/nonexistent/mgmt.sock"), "GET", "/", b"", Duration::from_secs(1));
        assert!(error.unwrap_err().contains("/nonexistent/mgmt.sock"));
    }
}
