//! The one bounded request loop: a connection cap, one request per connection read within a
//! deadline, head and body bounded before they are buffered; generic over the byte stream
//! (a Unix socket, or a TLS stream over TCP).

use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use smol::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::head::{parse_head, Head, HttpError, HEAD_BYTES_MAX};
use super::Response;

/// Most connections served at once per socket by default; more are answered 503. A local API
/// has a handful of callers; 16 bounds the memory of stuck ones to 16 heads and bodies.
pub const CONNECTIONS_MAX: usize = 16;
/// Default deadline for a client to send its whole request (answering may take longer: a
/// deployment waits for the agent, a method call for the module).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes read from the socket per call: a page-sized stack buffer.
const READ_CHUNK_BYTES: usize = 4096;
/// After an accept error (out of descriptors), wait this long before accepting again rather
/// than spin on the connection still in the backlog.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The bounds of one API's request loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once; more are refused (Unix sockets: 503; see the callers).
    pub connections_max: usize,
    /// Largest request head; at most [`HEAD_BYTES_MAX`], the parser's own bound.
    pub head_bytes_max: usize,
    /// Largest body (`Content-Length`).
    pub body_bytes_max: usize,
    /// From the first byte awaited to the last byte of the body. TLS listeners give the
    /// handshake before it a deadline of the same length.
    pub request_timeout: Duration,
}

impl Limits {
    /// The defaults ([`CONNECTIONS_MAX`], [`HEAD_BYTES_MAX`], [`REQUEST_TIMEOUT`]) with bodies
    /// of at most `body_bytes_max`.
    pub const fn with_body_max(body_bytes_max: usize) -> Limits {
        Limits {
            connections_max: CONNECTIONS_MAX,
            head_bytes_max: HEAD_BYTES_MAX,
            body_bytes_max,
            request_timeout: REQUEST_TIMEOUT,
        }
    }
}

/// A complete request as handlers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub head: Head,
    /// Exactly `head.content_length` bytes.
    pub body: Vec<u8>,
}

/// Counts the connections being served; [`Gate::enter`] refuses beyond the maximum.
#[derive(Debug, Clone)]
pub struct Gate {
    active: Arc<AtomicUsize>,
    max: usize,
}

/// One admitted connection; leaving (drop) frees its place, whatever way the task ends.
#[derive(Debug)]
pub struct Permit(Arc<AtomicUsize>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Gate {
    pub fn new(max: usize) -> Gate {
        Gate { active: Arc::new(AtomicUsize::new(0)), max }
    }

    /// A place for one more connection, or `None` when `max` are being served.
    pub fn enter(&self) -> Option<Permit> {
        self.active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.max).then_some(n + 1))
            .ok()
            .map(|_| Permit(self.active.clone()))
    }

    /// Connections being served now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }
}

/// `future`'s output, or `None` once `timeout` has passed.
pub async fn within<T>(timeout: Duration, future: impl Future<Output = T>) -> Option<T> {
    smol::future::or(async { Some(future.await) }, async {
        smol::Timer::after(timeout).await;
        None
    })
    .await
}

/// Reads one request (no deadline: see [`serve_connection`]). Bytes after the body are ignored:
/// each connection carries one request.
///
/// # Errors
/// What to answer instead: 400 (or the parser's status) for a malformed or oversized head or
/// body, or a connection that ended early.
pub async fn read_request<S>(stream: &mut S, limits: &Limits) -> Result<Request, HttpError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let head_bytes_max = limits.head_bytes_max.min(HEAD_BYTES_MAX);
    let mut buffer = Vec::with_capacity(READ_CHUNK_BYTES);
    let mut chunk = [0u8; READ_CHUNK_BYTES];
    let mut searched = 0;
    let head_end = loop {
        // Only the new bytes (and the three before them) can complete the blank line.
        if let Some(i) = buffer[searched..].windows(4).position(|w| w == b"\r\n\r\n") {
            break searched + i;
        }
        searched = buffer.len().saturating_sub(3);
        if buffer.len() > head_bytes_max + 3 {
            return Err(HttpError::bad_request(format!("request head longer than {head_bytes_max} bytes")));
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return Err(HttpError::bad_request("connection closed before the request was complete")),
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    };
    if head_end > head_bytes_max {
        return Err(HttpError::bad_request(format!("request head longer than {head_bytes_max} bytes")));
    }
    let head = parse_head(&buffer[..head_end], limits.body_bytes_max)?;
    let mut body = buffer.split_off(head_end + 4);
    body.truncate(head.content_length);
    if head.expect_continue && body.len() < head.content_length {
        stream
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .map_err(|_| HttpError::bad_request("connection closed before the body was sent"))?;
    }
    // The body grows as bytes arrive: a Content-Length is never allocated up front.
    while body.len() < head.content_length {
        let want = (head.content_length - body.len()).min(chunk.len());
        match stream.read(&mut chunk[..want]).await {
            Ok(0) | Err(_) => return Err(HttpError::bad_request("connection closed before the body was complete")),
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    Ok(Request { head, body })
}

/// Serves one connection: reads a request within `limits.request_timeout`, answers it with
/// `respond` (or the error), and closes the stream.
pub async fn serve_connection<S, F, Fut>(mut stream: S, limits: &Limits, respond: &F)
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: Fn(Request) -> Fut,
    Fut: Future<Output = Response>,
{
    let response = match within(limits.request_timeout, read_request(&mut stream, limits)).await {
        None => Response::message(408, "request not received in time"),
        Some(Err(error)) => Response::message(error.status, &error.message),
        Some(Ok(request)) => respond(request).await,
    };
    let _ = stream.write_all(&response.to_bytes()).await;
    let _ = stream.close().await;
}

/// Serves HTTP/1.1 on a Unix socket until the task is dropped: at most
/// `limits.connections_max` connections at once (more are answered 503), each served by
/// [`serve_connection`]. `what` names the socket in log lines and answers.
pub async fn serve_unix<F, Fut>(
    listener: smol::Async<std::os::unix::net::UnixListener>,
    what: &'static str,
    limits: Limits,
    respond: F,
) where
    F: Fn(Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response> + Send + 'static,
{
    accept_loop(|| async { listener.accept().await.map(|(stream, _)| stream) }, what, limits, respond).await;
}

/// Serves HTTP/1.1 on a plain TCP listener until the task is dropped, with the same bounds as
/// [`serve_unix`] (at most `limits.connections_max` at once, more answered 503). Only for
/// read-only, unauthenticated answers such as `/metrics`.
pub async fn serve_tcp<F, Fut>(
    listener: smol::Async<std::net::TcpListener>,
    what: &'static str,
    limits: Limits,
    respond: F,
) where
    F: Fn(Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response> + Send + 'static,
{
    accept_loop(|| async { listener.accept().await.map(|(stream, _)| stream) }, what, limits, respond).await;
}

/// The accept loop of [`serve_unix`] and [`serve_tcp`]: the connection gate, 503 beyond it, one
/// task per connection, a back-off after a failed accept.
async fn accept_loop<S, A, AFut, F, Fut>(mut accept: A, what: &'static str, limits: Limits, respond: F)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    A: FnMut() -> AFut,
    AFut: Future<Output = std::io::Result<S>>,
    F: Fn(Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response> + Send + 'static,
{
    let respond = Arc::new(respond);
    let limits = Arc::new(limits);
    let gate = Gate::new(limits.connections_max);
    loop {
        let mut stream = match accept().await {
            Ok(stream) => stream,
            Err(e) => {
                log::warn!("{what} listener: {e}");
                smol::Timer::after(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Some(permit) = gate.enter() else {
            // A fresh socket's send buffer takes the short answer at once.
            let busy = Response::message(503, &format!("too many {what} connections (at most {})", gate.max));
            let _ = stream.write_all(&busy.to_bytes()).await;
            continue;
        };
        let (respond, limits) = (respond.clone(), limits.clone());
        crate::rt::spawn(async move {
            serve_connection(stream, &limits, &*respond).await;
            drop(permit);
        })
        .detach();
    }
}

/// Binds a Unix socket at `path` with permissions `mode` (replacing a stale socket file; a
/// live one, answered by another process, is an error).
///
/// # Errors
/// The path is in use by a running server, or the socket cannot be bound.
pub fn bind_unix(path: &Path, mode: u32) -> std::io::Result<smol::Async<std::os::unix::net::UnixListener>> {
    use std::os::unix::fs::PermissionsExt;
    if path.exists() {
        // A live server would still answer; a stale file only blocks the bind.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("{} is in use by a running tinyedge", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = smol::Async::<std::os::unix::net::UnixListener>::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream that yields `input` in `step`-byte pieces and records what is written.
    struct Scripted {
        input: Vec<u8>,
        at: usize,
        step: usize,
        written: Vec<u8>,
    }

    impl Scripted {
        fn new(input: &[u8], step: usize) -> Scripted {
            Scripted { input: input.to_vec(), at: 0, step, written: Vec::new() }
        }
    }

    impl AsyncRead for Scripted {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            out: &mut [u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            let n = self.step.min(out.len()).min(self.input.len() - self.at);
            out[..n].copy_from_slice(&self.input[self.at..self.at + n]);
            self.at += n;
            std::task::Poll::Ready(Ok(n))
        }
    }

    impl AsyncWrite for Scripted {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            data: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            self.written.extend_from_slice(data);
            std::task::Poll::Ready(Ok(data.len()))
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_close(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    fn read(input: &[u8], step: usize, limits: &Limits) -> (Result<Request, HttpError>, Vec<u8>) {
        let mut stream = Scripted::new(input, step);
        let result = smol::block_on(read_request(&mut stream, limits));
        (result, stream.written)
    }

    #[test]
    fn a_request_arrives_whole_however_it_is_cut() {
        let input = b"PUT /deployment HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello and more";
        for step in [1, 2, 3, 7, 4096] {
            let (request, _) = read(input, step, &Limits::with_body_max(10));
            let request = request.unwrap();
            assert_eq!((request.head.path.as_str(), request.body.as_slice()), ("/deployment", &b"hello"[..]));
        }
    }

    #[test]
    fn expect_100_continue_is_answered_before_the_body() {
        let input = b"POST /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok";
        let (request, written) = read(input, 1, &Limits::with_body_max(10));
        assert_eq!(request.unwrap().body, b"ok");
        assert_eq!(written, b"HTTP/1.1 100 Continue\r\n\r\n");
        let (_, written) = read(input, 4096, &Limits::with_body_max(10));
        assert!(written.is_empty(), "the body came with the head: nothing to wait for");
    }

    #[test]
    fn heads_and_bodies_are_bounded() {
        let limits = Limits { head_bytes_max: 64, ..Limits::with_body_max(10) };
        let long = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(100));
        for step in [1, 4096] {
            let error = read(long.as_bytes(), step, &limits).0.unwrap_err();
            assert!(error.message.contains("longer than 64 bytes"), "{error}");
        }
        let endless = "a".repeat(10_000);
        assert!(read(endless.as_bytes(), 4096, &limits).0.unwrap_err().message.contains("longer than 64"));
        let big = read(b"PUT / HTTP/1.1\r\nContent-Length: 11\r\n\r\n", 4096, &limits).0.unwrap_err();
        assert!(big.message.contains("at most 10"), "{big}");
    }

    #[test]
    fn a_connection_closed_early_is_named() {
        let limits = Limits::with_body_max(10);
        let (error, _) = read(b"GET / HTTP/1.1\r\n", 4096, &limits);
        assert!(error.unwrap_err().message.contains("before the request was complete"));
        let (error, _) = read(b"PUT / HTTP/1.1\r\nContent-Length: 5\r\n\r\nab", 4096, &limits);
        assert!(error.unwrap_err().message.contains("before the body was complete"));
    }

    #[test]
    fn serving_answers_errors_with_their_status() {
        let mut stream = Scripted::new(b"GET / HTTP/2\r\n\r\n", 4096);
        smol::block_on(serve_connection(&mut stream, &Limits::with_body_max(10), &|_| async {
            Response::message(200, "unreachable")
        }));
        let text = String::from_utf8(stream.written).unwrap();
        assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
        assert!(
            text.ends_with(r#"{"code":400,"message":"malformed request line \"GET / HTTP/2\": HTTP/1.1 only"}"#),
            "{text}"
        );
    }

    #[test]
    fn the_gate_admits_at_most_its_maximum() {
        let gate = Gate::new(2);
        let (a, b) = (gate.enter().unwrap(), gate.enter().unwrap());
        assert!(gate.enter().is_none());
        drop(a);
        let c = gate.enter();
        assert!(c.is_some());
        assert_eq!(gate.active(), 2);
        drop((b, c));
        assert_eq!(gate.active(), 0);
    }
}
