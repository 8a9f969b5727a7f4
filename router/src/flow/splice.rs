//! Copying a flow's bytes both ways between two ends (TCP sockets or link streams), with
//! bounded buffers, backpressure, half-close and reset propagation.
//!
//! Each direction is a [`Pump`] with one buffer of [`COPY_BUFFER`] bytes: it reads only when
//! its buffer has been written out, so a slow writer stops the reads (and, through TCP and the
//! link streams' windows, the sender). A clean end of input (FIN) becomes a `shutdown` of the
//! other end's writing side, so half-close is carried through and the other direction keeps
//! flowing. Any error on either end (a reset by the peer, a lost link, a failed write)
//! [aborts](FlowEnd::abort) both ends, so the far side sees a reset, never a clean close.
//!
//! A pump holds its buffer only while bytes move: when its source has nothing to read, the
//! buffer goes back to a small per-thread stock ([`take_buffer`], [`give_back`]). An idle
//! flow therefore holds no copy buffer at all, and a busy router reuses a few warm buffers
//! instead of asking the allocator for fresh ones.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::link::LinkStream;

/// Bytes one direction of a flow holds in a router at most (one buffer per direction).
pub const COPY_BUFFER: usize = 64 * 1024;

/// Buffers one pump moves in one poll before yielding to other tasks.
const BURST: usize = 16;

/// Spare copy buffers kept per worker thread (1 MiB).
const SPARE_BUFFERS: usize = 16;

thread_local! {
    static SPARE: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

/// A copy buffer of [`COPY_BUFFER`] bytes: a spare one of this thread, else a new one.
fn take_buffer() -> Box<[u8]> {
    SPARE
        .try_with(|s| s.borrow_mut().pop())
        .ok()
        .flatten()
        .unwrap_or_else(|| vec![0u8; COPY_BUFFER].into_boxed_slice())
}

/// Returns a buffer from [`take_buffer`] to this thread's spares (freed if there are enough;
/// an empty one, i.e. none, is ignored).
fn give_back(buf: Box<[u8]>) {
    if buf.len() != COPY_BUFFER {
        return;
    }
    let _ = SPARE.try_with(|s| {
        let mut spare = s.borrow_mut();
        if spare.len() < SPARE_BUFFERS {
            spare.push(buf);
        }
    });
}

/// One end of a flow: bytes in, bytes out, and a way to abandon it with a reset.
pub(crate) trait FlowEnd: AsyncRead + AsyncWrite + Send + Unpin {
    /// Abandons the end: its peer sees a reset (TCP RST, link stream reset).
    fn abort(&mut self);
}

impl FlowEnd for TcpStream {
    fn abort(&mut self) {
        // With a zero linger time, closing the socket (when the flow drops it) sends RST.
        let _ = socket2::SockRef::from(&*self).set_linger(Some(Duration::ZERO));
    }
}

impl AsyncRead for LinkStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.reader).poll_read(cx, buf)
    }
}

impl AsyncWrite for LinkStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.writer).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.writer).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.writer).poll_shutdown(cx)
    }
}

impl FlowEnd for LinkStream {
    fn abort(&mut self) {
        self.reset();
    }
}

/// One direction of a flow.
pub(crate) struct Pump {
    /// Bytes to write before anything read (already read from the source earlier).
    prefix: Bytes,
    buf: Box<[u8]>,
    pos: usize,
    cap: usize,
    /// The source ended cleanly.
    eof: bool,
    /// The end of input has been passed on (shutdown done): this direction is finished.
    done: bool,
    /// Bytes written since the last flush.
    unflushed: bool,
    /// Bytes moved in this direction (shown in flow status).
    count: Arc<AtomicU64>,
}

impl Pump {
    /// A direction that first writes `prefix`; `eof` when its source has already ended.
    pub(crate) fn new(prefix: Bytes, eof: bool, count: Arc<AtomicU64>) -> Self {
        Pump {
            prefix,
            buf: Vec::new().into_boxed_slice(),
            pos: 0,
            cap: 0,
            eof,
            done: false,
            unflushed: false,
            count,
        }
    }

    /// Gives the copy buffer back (nothing in it is waiting to be written).
    fn release(&mut self) {
        debug_assert_eq!(self.pos, self.cap);
        give_back(std::mem::take(&mut self.buf));
        self.pos = 0;
        self.cap = 0;
    }

    /// A direction that is already finished (its FIN was passed on before the splice).
    pub(crate) fn finished(count: Arc<AtomicU64>) -> Self {
        let mut p = Pump::new(Bytes::new(), true, count);
        p.done = true;
        p
    }

    /// Moves bytes from `r` to `w`; an error says whether reading (`Source`) or writing
    /// (`Sink`) failed.
    fn poll_pump<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        r: &mut R,
        w: &mut W,
    ) -> Poll<Result<(), (PumpSide, io::Error)>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        let mut bursts = 0;
        loop {
            while !self.prefix.is_empty() {
                let n = ready!(Pin::new(&mut *w).poll_write(cx, &self.prefix)).map_err(sink)?;
                if n == 0 {
                    return Poll::Ready(Err(sink(io::ErrorKind::WriteZero.into())));
                }
                self.prefix.advance(n);
                self.count.fetch_add(n as u64, Ordering::Relaxed);
                self.unflushed = true;
            }
            if self.pos == self.cap && !self.eof {
                if bursts == BURST {
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                if self.buf.is_empty() {
                    self.buf = take_buffer();
                }
                let mut rb = ReadBuf::new(&mut self.buf);
                match Pin::new(&mut *r).poll_read(cx, &mut rb) {
                    Poll::Pending => {
                        // Nothing to read: the buffer is empty, let another flow use it.
                        self.release();
                        if self.unflushed {
                            ready!(Pin::new(&mut *w).poll_flush(cx)).map_err(sink)?;
                            self.unflushed = false;
                        }
                        return Poll::Pending;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err((PumpSide::Source, e))),
                    Poll::Ready(Ok(())) => {
                        let n = rb.filled().len();
                        if n == 0 {
                            self.eof = true;
                        } else {
                            self.pos = 0;
                            self.cap = n;
                            bursts += 1;
                        }
                    }
                }
            }
            while self.pos < self.cap {
                let n = ready!(Pin::new(&mut *w).poll_write(cx, &self.buf[self.pos..self.cap]))
                    .map_err(sink)?;
                if n == 0 {
                    return Poll::Ready(Err(sink(io::ErrorKind::WriteZero.into())));
                }
                self.pos += n;
                self.count.fetch_add(n as u64, Ordering::Relaxed);
                self.unflushed = true;
            }
            if self.eof && self.pos == self.cap {
                ready!(Pin::new(&mut *w).poll_shutdown(cx)).map_err(sink)?;
                self.done = true;
                // The direction is over: give the buffer back now, not at flow end.
                self.release();
                return Poll::Ready(Ok(()));
            }
        }
    }
}

/// Which end of a pump failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PumpSide {
    /// Reading from its source.
    Source,
    /// Writing to its sink.
    Sink,
}

fn sink(e: io::Error) -> (PumpSide, io::Error) {
    (PumpSide::Sink, e)
}

impl Drop for Pump {
    fn drop(&mut self) {
        give_back(std::mem::take(&mut self.buf));
    }
}

/// How a splice ended.
#[derive(Debug)]
pub(crate) enum SpliceEnd {
    /// Both directions ended cleanly.
    Clean,
    /// An end failed (or was reset), or the router stopped; both were aborted.
    Aborted(EndSide, io::Error),
}

/// Where a splice failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EndSide {
    /// Reading from or writing to the first end (`a`).
    A,
    /// Reading from or writing to the second end (`b`).
    B,
    /// Neither: the router is stopping.
    Router,
}

/// Copies `a`'s input to `b` with `forward` and `b`'s input to `a` with `back`, until both
/// directions have ended cleanly or one end fails; on failure, or when `cancel` fires (router
/// shutdown), both ends are aborted.
pub(crate) async fn splice<A, B>(
    a: &mut A,
    b: &mut B,
    mut forward: Pump,
    mut back: Pump,
    cancel: &CancellationToken,
) -> SpliceEnd
where
    A: FlowEnd + ?Sized,
    B: FlowEnd + ?Sized,
{
    let copy = poll_fn(|cx| {
        // Forward reads a and writes b; back reads b and writes a.
        let f = forward.poll_pump(cx, a, b);
        if let Poll::Ready(Err((side, e))) = f {
            let end = if side == PumpSide::Source {
                EndSide::A
            } else {
                EndSide::B
            };
            return Poll::Ready(Err((end, e)));
        }
        let k = back.poll_pump(cx, b, a);
        if let Poll::Ready(Err((side, e))) = k {
            let end = if side == PumpSide::Source {
                EndSide::B
            } else {
                EndSide::A
            };
            return Poll::Ready(Err((end, e)));
        }
        if forward.done && back.done {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    });
    let result = tokio::select! {
        r = copy => r,
        () = cancel.cancelled() => Err((EndSide::Router, io::Error::new(io::ErrorKind::ConnectionAborted, "the router is shutting down"))),
    };
    match result {
        Ok(()) => SpliceEnd::Clean,
        Err((side, e)) => {
            a.abort();
            b.abort();
            SpliceEnd::Aborted(side, e)
        }
    }
}
