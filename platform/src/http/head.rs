//! The request head parser: request line and headers, checked before any body byte is read
//! (pure code, no IO).

use std::fmt;

/// Largest request head (request line and headers, without the blank line). Real heads are a
/// few hundred bytes (an SDK's SAS token is ~300); 8 KiB is what most servers allow.
pub const HEAD_BYTES_MAX: usize = 8 * 1024;
/// Most header lines in one head: clients send under 20; a flood of tiny headers is refused
/// before it costs more than one pass over [`HEAD_BYTES_MAX`] bytes.
pub const HEADERS_MAX: usize = 64;

/// A parsed request head: what the handlers of tinyedge's HTTP APIs read.
///
/// `Debug` never shows `authorization`: it holds a credential (a SAS token).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Head {
    /// `GET`, `PUT`, `POST`, …
    pub method: String,
    /// The path, still percent-encoded, without the query: `/twins/d/modules/m/methods`.
    pub path: String,
    /// The query after `?`, still percent-encoded (empty when there is none).
    pub query: String,
    /// `Content-Length` (0 when absent), at most the body limit given to [`parse_head`].
    pub content_length: usize,
    /// `Content-Type`, as sent.
    pub content_type: Option<String>,
    /// `Authorization`, as sent (`SharedAccessSignature sr=…`).
    pub authorization: Option<String>,
    /// `x-ms-edge-moduleId`: the calling module (`{device}/{module}`) in edgeHub's HTTP API.
    pub module_id: Option<String>,
    /// `Expect: 100-continue`: the client waits for `100 Continue` before sending the body.
    pub expect_continue: bool,
}

impl fmt::Debug for Head {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Head")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("query", &self.query)
            .field("content_length", &self.content_length)
            .field("content_type", &self.content_type)
            .field("authorization", &self.authorization.as_ref().map(|_| "<redacted>"))
            .field("module_id", &self.module_id)
            .field("expect_continue", &self.expect_continue)
            .finish()
    }
}

impl Head {
    /// A head for `method` and `target` (path and optional `?query`), no headers: for tests and
    /// for callers that build requests in process.
    pub fn new(method: &str, target: &str) -> Head {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        Head { method: method.to_owned(), path: path.to_owned(), query: query.to_owned(), ..Head::default() }
    }

    /// The raw (still percent-encoded) value of query parameter `name`; `Some("")` for `name=`
    /// or a bare `name`.
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (key == name).then_some(value)
        })
    }

    /// The path's segments between slashes, still percent-encoded: `/a/b` → `["a", "b"]`.
    pub fn segments(&self) -> Vec<&str> {
        self.path.trim_start_matches('/').split('/').collect()
    }
}

/// A request the server refuses before its handler sees it: the status and why, answered as
/// `{"code": status, "message": …}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpError {
    pub status: u16,
    pub message: String,
}

impl HttpError {
    pub fn bad_request(message: impl Into<String>) -> HttpError {
        HttpError { status: 400, message: message.into() }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status, self.message)
    }
}

impl std::error::Error for HttpError {}

/// Longest piece of peer input quoted in an error message: enough to recognise it.
const QUOTED_CHARS_MAX: usize = 64;

/// `text` quoted for an error message, cut at [`QUOTED_CHARS_MAX`] characters.
fn quoted(text: &str) -> String {
    let mut cut: String = text.chars().take(QUOTED_CHARS_MAX).collect();
    if cut.len() < text.len() {
        cut.push('…');
    }
    format!("{cut:?}")
}

/// RFC 9110 `tchar`: what method and header names are made of.
fn is_token(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A header value may hold visible characters, spaces and tabs (and UTF-8 beyond ASCII), never
/// control characters: a stray CR or LF would be a second header in disguise.
fn is_field_value(text: &str) -> bool {
    !text.chars().any(|c| c.is_control() && c != '\t')
}

/// Parses a request head (up to and excluding the blank line); `body_bytes_max` bounds
/// `Content-Length`.
///
/// Only what tinyedge's APIs need is accepted: an origin-form target (`/path?query`),
/// HTTP/1.0 or 1.1, bodies framed by `Content-Length` (no `Transfer-Encoding`).
///
/// # Errors
/// 400 naming what is wrong: the request line, a header, a `Content-Length` that is not a
/// number, given twice with different values, or over `body_bytes_max`, a `Transfer-Encoding`,
/// too many headers, a repeated header among those read; 417 for an `Expect` other than
/// `100-continue`.
pub fn parse_head(head: &[u8], body_bytes_max: usize) -> Result<Head, HttpError> {
    if head.len() > HEAD_BYTES_MAX {
        return Err(HttpError::bad_request(format!("request head longer than {HEAD_BYTES_MAX} bytes")));
    }
    let text = std::str::from_utf8(head).map_err(|_| HttpError::bad_request("request head is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let mut parsed = parse_request_line(lines.next().unwrap_or_default())?;
    let mut content_length = None;
    for (index, line) in lines.enumerate() {
        if index >= HEADERS_MAX {
            return Err(HttpError::bad_request(format!("more than {HEADERS_MAX} headers")));
        }
        let (name, value) = parse_header(line)?;
        if name.eq_ignore_ascii_case("content-length") {
            let length = parse_content_length(value, body_bytes_max)?;
            if content_length.is_some_and(|previous| previous != length) {
                return Err(HttpError::bad_request("two different Content-Length headers"));
            }
            content_length = Some(length);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HttpError::bad_request(
                "Transfer-Encoding is not supported: send the body with a Content-Length",
            ));
        } else if name.eq_ignore_ascii_case("expect") {
            if !value.eq_ignore_ascii_case("100-continue") {
                return Err(HttpError { status: 417, message: format!("Expect {} is not supported", quoted(value)) });
            }
            parsed.expect_continue = true;
        } else {
            let slot = if name.eq_ignore_ascii_case("content-type") {
                &mut parsed.content_type
            } else if name.eq_ignore_ascii_case("authorization") {
                &mut parsed.authorization
            } else if name.eq_ignore_ascii_case("x-ms-edge-moduleid") {
                &mut parsed.module_id
            } else {
                continue;
            };
            if slot.replace(value.to_owned()).is_some() {
                return Err(HttpError::bad_request(format!("header {name} appears twice")));
            }
        }
    }
    parsed.content_length = content_length.unwrap_or(0);
    Ok(parsed)
}

/// `METHOD SP /path[?query] SP HTTP/1.x`.
fn parse_request_line(line: &str) -> Result<Head, HttpError> {
    let malformed = || HttpError::bad_request(format!("malformed request line {}", quoted(line)));
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed());
    };
    if !is_token(method) || !target.starts_with('/') || !target.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(malformed());
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(HttpError::bad_request(format!("malformed request line {}: HTTP/1.1 only", quoted(line))));
    }
    Ok(Head::new(method, target))
}

/// `name: value` with the value's surrounding spaces and tabs trimmed.
fn parse_header(line: &str) -> Result<(&str, &str), HttpError> {
    if line.starts_with([' ', '\t']) {
        return Err(HttpError::bad_request(format!("folded header line {} (obsolete line folding)", quoted(line))));
    }
    let (name, value) =
        line.split_once(':').ok_or_else(|| HttpError::bad_request(format!("malformed header {}", quoted(line))))?;
    let value = value.trim_matches([' ', '\t']);
    if !is_token(name) || !is_field_value(value) {
        return Err(HttpError::bad_request(format!("malformed header {}", quoted(line))));
    }
    Ok((name, value))
}

fn parse_content_length(value: &str, body_bytes_max: usize) -> Result<usize, HttpError> {
    // `usize::from_str` would accept a leading '+'; a length is plain digits.
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HttpError::bad_request(format!("bad Content-Length {}", quoted(value))));
    }
    match value.parse::<usize>() {
        Ok(length) if length <= body_bytes_max => Ok(length),
        _ => Err(HttpError::bad_request(format!(
            "body of {} bytes, at most {body_bytes_max}",
            value.trim_start_matches('0')
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY_MAX: usize = 1000;

    #[test]
    fn a_head_gives_method_path_query_and_the_headers_the_apis_read() {
        let head = parse_head(
            b"POST /twins/gw/modules/m%2F1/methods?api-version=2020-09-30&x HTTP/1.1\r\n\
              Host: gw\r\ncontent-length:  12 \r\nContent-Type: application/json; charset=utf-8\r\n\
              Authorization: SharedAccessSignature sr=a&sig=b&se=1\r\nx-ms-edge-moduleId: gw/caller\r\n\
              Expect: 100-continue",
            BODY_MAX,
        )
        .unwrap();
        assert_eq!(head.method, "POST");
        assert_eq!(head.path, "/twins/gw/modules/m%2F1/methods");
        assert_eq!(head.segments(), ["twins", "gw", "modules", "m%2F1", "methods"]);
        assert_eq!(head.query_param("api-version"), Some("2020-09-30"));
        assert_eq!(head.query_param("x"), Some(""));
        assert_eq!(head.query_param("y"), None);
        assert_eq!(head.content_length, 12);
        assert_eq!(head.content_type.as_deref(), Some("application/json; charset=utf-8"));
        assert_eq!(head.authorization.as_deref(), Some("SharedAccessSignature sr=a&sig=b&se=1"));
        assert_eq!(head.module_id.as_deref(), Some("gw/caller"));
        assert!(head.expect_continue);
    }

    #[test]
    fn defaults_without_headers() {
        let head = parse_head(b"GET /modules HTTP/1.0", BODY_MAX).unwrap();
        assert_eq!(head, Head::new("GET", "/modules"));
        assert_eq!(head.content_length, 0);
        assert_eq!(head.query, "");
        let same = parse_head(b"PUT /d HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5", BODY_MAX).unwrap();
        assert_eq!(same.content_length, 5, "a repeated equal length is harmless");
    }

    #[test]
    fn debug_never_shows_the_authorization_header() {
        let head = parse_head(b"GET / HTTP/1.1\r\nAuthorization: SharedAccessSignature sig=secret", BODY_MAX).unwrap();
        let shown = format!("{head:?}");
        assert!(!shown.contains("secret") && shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn bad_heads_are_refused_with_what_is_wrong() {
        let long_head = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(HEAD_BYTES_MAX));
        let many_headers = format!("GET / HTTP/1.1{}", "\r\nX: 1".repeat(HEADERS_MAX + 1));
        let cases: Vec<(&[u8], u16, &str)> = vec![
            (b"", 400, "malformed request line"),
            (b"GET", 400, "malformed request line"),
            (b"GET /  HTTP/1.1", 400, "malformed request line"),
            (b"GET / HTTP/1.1 x", 400, "malformed request line"),
            (b"GET x HTTP/1.1", 400, "malformed request line"),
            (b"GET http://h/ HTTP/1.1", 400, "malformed request line"),
            (b"G(T / HTTP/1.1", 400, "malformed request line"),
            (b"GET /\x01 HTTP/1.1", 400, "malformed request line"),
            (b"GET / HTTP/2", 400, "HTTP/1.1 only"),
            (b"GET / HTTP/1.2", 400, "HTTP/1.1 only"),
            (b"GET / HTTP/1.1\r\nContent-Length: x", 400, "bad Content-Length"),
            (b"GET / HTTP/1.1\r\nContent-Length: +5", 400, "bad Content-Length"),
            (b"GET / HTTP/1.1\r\nContent-Length: -1", 400, "bad Content-Length"),
            (b"GET / HTTP/1.1\r\nContent-Length:", 400, "bad Content-Length"),
            (b"GET / HTTP/1.1\r\nContent-Length: 1001", 400, "body of 1001 bytes, at most 1000"),
            (b"GET / HTTP/1.1\r\nContent-Length: 99999999999999999999999", 400, "at most 1000"),
            (b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2", 400, "two different Content-Length"),
            (b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked", 400, "Transfer-Encoding is not supported"),
            (b"GET / HTTP/1.1\r\nExpect: something", 417, "Expect \"something\""),
            (b"GET / HTTP/1.1\r\nnocolon", 400, "malformed header"),
            (b"GET / HTTP/1.1\r\n: empty name", 400, "malformed header"),
            (b"GET / HTTP/1.1\r\nA B: c", 400, "malformed header"),
            (b"GET / HTTP/1.1\r\nA: b\nC: d", 400, "malformed header"),
            (b"GET / HTTP/1.1\r\nA: b\r\n folded", 400, "folded header"),
            (b"GET / HTTP/1.1\r\n\r\nA: b", 400, "malformed header"),
            (b"GET / HTTP/1.1\r\nAuthorization: a\r\nauthorization: b", 400, "appears twice"),
            (b"GET / HTTP/1.1\r\nx-ms-edge-moduleId: a\r\nX-MS-EDGE-MODULEID: b", 400, "appears twice"),
            (b"\xff\xfe", 400, "UTF-8"),
            (long_head.as_bytes(), 400, "longer than 8192 bytes"),
            (many_headers.as_bytes(), 400, "more than 64 headers"),
        ];
        for (head, status, needle) in cases {
            let error = parse_head(head, BODY_MAX).unwrap_err();
            assert_eq!(error.status, status, "{:?}: {error}", String::from_utf8_lossy(head));
            assert!(error.message.contains(needle), "{:?}: {error}", String::from_utf8_lossy(head));
        }
    }

    #[test]
    fn quoted_input_is_cut() {
        let error = parse_head(format!("GET {} HTTP/1.1\r\nnocolon{}", "/a", "x".repeat(500)).as_bytes(), BODY_MAX)
            .unwrap_err();
        assert!(error.message.len() < 200, "{error}");
    }
}
