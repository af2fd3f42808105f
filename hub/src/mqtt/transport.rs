//! The byte streams a connection runs on: plain TCP (shared by its reading and writing
//! halves without a lock) or TLS (split through a lock, as rustls needs one state), plus a
//! readiness probe so an idle plain connection holds no read buffer.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::BytesMut;
use smol::io::{AsyncRead, AsyncWrite};
use tinyedge_platform::rt::TcpSocket;

/// One half of a plain TCP connection; both halves share the socket.
#[derive(Debug, Clone)]
pub struct TcpHalf(pub Arc<TcpSocket>);

impl AsyncRead for TcpHalf {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let mut socket: &TcpSocket = &self.0;
        Pin::new(&mut socket).poll_read(cx, buf)
    }
}

impl AsyncWrite for TcpHalf {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let mut socket: &TcpSocket = &self.0;
        Pin::new(&mut socket).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.0.poll_write_vectored(cx, bufs)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut socket: &TcpSocket = &self.0;
        Pin::new(&mut socket).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut socket: &TcpSocket = &self.0;
        Pin::new(&mut socket).poll_close(cx)
    }
}

/// The reading half of a connection and, for plain TCP, a way to wait until bytes are there
/// before a read buffer is allocated.
pub struct Reader<R> {
    pub inner: R,
    pub probe: Option<Arc<TcpSocket>>,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    /// Reads up to `chunk` bytes into `buf` after its first `start` bytes and returns how many
    /// arrived; the caller truncates `buf` to `start + n`. On plain TCP the buffer only grows
    /// once the socket is readable, and is given back when a wake-up finds nothing to read, so
    /// an idle connection holds no read buffer. TLS reads directly (rustls keeps its own
    /// buffers, which dwarf this one).
    ///
    /// A poll, for a connection that waits on its socket, its timer and its kick at once
    /// without a future for each. On `Pending` the buffer is as it was.
    pub fn poll_read_into(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
        start: usize,
        chunk: usize,
    ) -> Poll<io::Result<usize>> {
        let Some(socket) = &self.probe else {
            buf.resize(start + chunk, 0);
            let read = Pin::new(&mut self.inner).poll_read(cx, &mut buf[start..]);
            if read.is_pending() {
                buf.truncate(start);
            }
            return read;
        };
        loop {
            std::task::ready!(socket.poll_readable(cx));
            buf.resize(start + chunk, 0);
            match socket.try_read(&mut buf[start..]) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {
                    buf.truncate(start);
                    if start == 0 {
                        *buf = BytesMut::new();
                    }
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}
