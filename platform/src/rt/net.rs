//! TCP sockets on the executor thread's reactor: non-blocking, registered once, read and
//! written through `&TcpSocket` (so the reading and writing halves of a connection share one
//! socket without a lock).

use std::io::{self, IoSlice, Read as _, Write as _};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use smol::io::{AsyncRead, AsyncWrite};

use super::reactor::{short_of, Direction, Source};

/// A connected TCP socket.
pub struct TcpSocket {
    stream: std::net::TcpStream,
    source: Arc<Source>,
}

impl std::fmt::Debug for TcpSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("TcpSocket").field(&self.stream).finish()
    }
}

impl TcpSocket {
    /// Makes `stream` non-blocking and registers it.
    pub fn new(stream: std::net::TcpStream) -> io::Result<TcpSocket> {
        stream.set_nonblocking(true)?;
        let source = super::reactor().register(stream.as_fd())?;
        Ok(TcpSocket { stream, source })
    }

    /// The socket itself (for addresses, options and `shutdown`; it is non-blocking).
    pub fn get_ref(&self) -> &std::net::TcpStream {
        &self.stream
    }

    /// `Ready` when a read may find bytes (or the end); no buffer is needed to wait.
    pub fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.source.poll_ready(Direction::Read, cx)
    }

    /// A read that does not wait; `WouldBlock`, or fewer bytes than `buf` holds (the socket's
    /// queue is drained), makes [`TcpSocket::poll_readable`] wait for the next bytes.
    pub fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        let len = buf.len();
        self.source.try_io(Direction::Read, || (&self.stream).read(buf), short_of(len))
    }

    pub fn poll_read(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let len = buf.len();
        self.source.poll_io(Direction::Read, cx, || (&self.stream).read(buf), short_of(len))
    }

    pub fn poll_write(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.source.poll_io(Direction::Write, cx, || (&self.stream).write(buf), short_of(buf.len()))
    }

    /// One `writev` of `bufs` (a header and a payload shared with other connections, say).
    pub fn poll_write_vectored(&self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let len = bufs.iter().map(|b| b.len()).sum();
        self.source.poll_io(Direction::Write, cx, || (&self.stream).write_vectored(bufs), short_of(len))
    }

    /// Shuts the writing direction down (what `close` means for a TCP stream's half).
    pub fn poll_close(&self) -> Poll<io::Result<()>> {
        Poll::Ready(match self.stream.shutdown(Shutdown::Write) {
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
            other => other,
        })
    }
}

impl Drop for TcpSocket {
    fn drop(&mut self) {
        super::reactor().deregister(&self.source, self.stream.as_fd());
    }
}

/// `AsyncRead` and `AsyncWrite` for the socket and for a shared reference to it (the two halves
/// of a connection each hold one), both through the methods above.
macro_rules! async_io_impls {
    ($($socket:ty),*) => {$(
        impl AsyncRead for $socket {
            fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
                TcpSocket::poll_read(&self, cx, buf)
            }
        }

        impl AsyncWrite for $socket {
            fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
                TcpSocket::poll_write(&self, cx, buf)
            }

            fn poll_write_vectored(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                TcpSocket::poll_write_vectored(&self, cx, bufs)
            }

            fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }

            fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                TcpSocket::poll_close(&self)
            }
        }
    )*};
}

async_io_impls!(TcpSocket, &TcpSocket);

/// A listening TCP socket; accepted streams come back as plain `std` streams, for the caller
/// to wrap (a [`TcpSocket`], or `smol::Async` for the listeners that stay on async-io).
pub struct TcpListener {
    listener: std::net::TcpListener,
    source: Arc<Source>,
}

impl std::fmt::Debug for TcpListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("TcpListener").field(&self.listener).finish()
    }
}

impl TcpListener {
    /// Binds `addr` (with the standard library's backlog of 128) and registers the socket.
    pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
        TcpListener::new(std::net::TcpListener::bind(addr)?)
    }

    /// Makes `listener` non-blocking and registers it.
    pub fn new(listener: std::net::TcpListener) -> io::Result<TcpListener> {
        listener.set_nonblocking(true)?;
        let source = super::reactor().register(listener.as_fd())?;
        Ok(TcpListener { listener, source })
    }

    pub fn get_ref(&self) -> &std::net::TcpListener {
        &self.listener
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The next connection; the stream returned is in blocking mode, as `accept` gives it.
    pub async fn accept(&self) -> io::Result<(std::net::TcpStream, SocketAddr)> {
        std::future::poll_fn(|cx| self.source.poll_io(Direction::Read, cx, || self.listener.accept(), |_| false)).await
    }
}

impl Drop for TcpListener {
    fn drop(&mut self) {
        super::reactor().deregister(&self.source, self.listener.as_fd());
    }
}
