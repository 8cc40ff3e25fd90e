//! A connection's socket, reset instead of closed when its response cannot be told from a
//! whole one.
//!
//! An HTTP/1.0 client gets a body of unknown length (a stream) delimited by the close of the
//! connection: hyper writes the bytes and closes. When such a body fails half-way (its
//! stream panicked, [`BodyPanicked`](crate::panic::BodyPanicked), or returned an error), a
//! plain close looks exactly like the end of a whole response, and the client (or nginx in
//! front, which speaks HTTP/1.0 to its upstreams by default) takes the truncated body for
//! the answer. A reset (`SO_LINGER` 0, then the close sends `RST`) makes it an error, as a
//! missing last chunk is for HTTP/1.1. Only then: a reset also drops what the kernel has not
//! sent yet, so a connection that may have a good answer queued is closed as usual.

use std::io;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::Calls;

/// `io`, reset when dropped if its connection's [`Calls`] say so ([`Calls::reset_on_close`]).
pub(super) struct Socket<I: AsFd> {
    io: I,
    calls: Arc<Calls>,
}

impl<I: AsFd> Socket<I> {
    pub(super) fn new(io: I, calls: Arc<Calls>) -> Self {
        Socket { io, calls }
    }
}

impl<I: AsFd> Drop for Socket<I> {
    fn drop(&mut self) {
        if self.calls.reset.load(Ordering::Relaxed) {
            // Best effort: a socket that refuses it closes as usual.
            let _ = socket2::SockRef::from(&self.io).set_linger(Some(Duration::ZERO));
        }
    }
}

impl<I: AsFd + AsyncRead + Unpin> AsyncRead for Socket<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsFd + AsyncWrite + Unpin> AsyncWrite for Socket<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
