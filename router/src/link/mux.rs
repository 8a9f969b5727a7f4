//! The multiplexed link connection: one trait over QUIC and over TLS/TCP + yamux.
//!
//! Either side of a link may open streams; a stream is a pair of tokio byte halves. QUIC
//! (`quic.rs`) has native bidirectional streams. Over TLS/TCP the byte stream is multiplexed
//! with yamux (symmetric: both ends open streams); one task per connection polls the yamux
//! state machine, answers open requests and hands out inbound streams. Why yamux and not h2:
//! docs/benchmarks.md, "Link multiplexer over TLS/TCP".
//!
//! Resets: QUIC resets each direction on its own (`RESET_STREAM`, `STOP_SENDING`). yamux 0.13
//! has one `RST` for the whole stream, sent when a stream is dropped while open in both
//! directions, and reports a received `RST` as end-of-stream; the halves here turn an
//! end-of-stream on a stream that closed before we sent our FIN into a
//! [`io::ErrorKind::ConnectionReset`] error. The gap: once either direction has ended with a
//! FIN, yamux turns a drop into a FIN, so a reset after a half-close arrives as a clean end on
//! TLS/TCP links (docs/flows.md).
//!
//! Windows (the per-flow memory bound): yamux streams get [`YAMUX_STREAM_WINDOW`] each plus
//! an auto-tuned share of [`YAMUX_WINDOW_POOL`]; QUIC streams get a fixed
//! [`QUIC_STREAM_WINDOW`], and a QUIC link as a whole [`QUIC_CONNECTION_WINDOW`].

use std::future::Future as _;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::Poll;

use futures_util::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};

/// The receiving side of a link stream, with a way to abandon it.
pub trait LinkRead: AsyncRead + Send + Unpin {
    /// Stops receiving: the peer's writes fail (QUIC `STOP_SENDING`). On yamux, which has no
    /// per-direction stop, this resets the whole stream (see [`LinkWrite::reset`]).
    fn stop(&mut self);
}

/// The sending side of a link stream, with a way to abandon it.
pub trait LinkWrite: AsyncWrite + Send + Unpin {
    /// Abandons the stream's sending direction: the peer's reads fail with
    /// [`io::ErrorKind::ConnectionReset`] instead of ending cleanly (QUIC `RESET_STREAM`;
    /// yamux: an `RST` flag, which closes both directions; see the module docs for its limit).
    fn reset(&mut self);
}

/// The receiving half of a link stream. A read fails with
/// [`io::ErrorKind::ConnectionReset`] when the peer reset the stream, and with another error
/// when the link was lost; `Ok(0)` is always a clean end (the peer's FIN).
pub type StreamReader = Box<dyn LinkRead>;
/// The sending half of a link stream. `shutdown` sends a FIN (half-close).
pub type StreamWriter = Box<dyn LinkWrite>;

/// Application error code of a flow stream reset (QUIC `RESET_STREAM` / `STOP_SENDING`).
pub const FLOW_RESET_CODE: u32 = 1;

/// One bidirectional stream on a link.
pub struct LinkStream {
    /// QUIC links: the stream's id, the channel of its flow's datagrams
    /// ([`super::datagram`]); `None` on TLS/TCP links.
    pub channel: Option<u64>,
    /// Bytes from the peer.
    pub reader: StreamReader,
    /// Bytes to the peer.
    pub writer: StreamWriter,
}

impl LinkStream {
    /// Abandons both directions: the peer sees a reset, never a clean end.
    pub fn reset(&mut self) {
        self.writer.reset();
        self.reader.stop();
    }
}

impl std::fmt::Debug for LinkStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkStream")
    }
}

/// A multiplexed, authenticated connection to a peer router: QUIC or TLS/TCP + yamux.
pub trait MuxConnection: Send + Sync + 'static {
    /// Opens a new stream to the peer. The peer sees it once the first bytes are written.
    fn open_stream(&self) -> BoxFuture<'_, io::Result<LinkStream>>;
    /// Waits for the next stream the peer opened; an error means the connection is gone.
    fn accept_stream(&self) -> BoxFuture<'_, io::Result<LinkStream>>;
    /// Closes the connection at once; `reason` is for logs (and QUIC's close frame).
    fn close(&self, reason: &str);
    /// Waits until the connection is closed, by either side or by a transport error.
    fn closed(&self) -> BoxFuture<'_, ()>;
    /// The error that ended the connection, when the transport hides it from the streams
    /// (yamux turns a TLS alert into end-of-stream). Set by the time [`Self::closed`] returns.
    fn failure(&self) -> Option<Arc<io::Error>> {
        None
    }
    /// A count that grows whenever the peer's router sends anything (bytes on TLS/TCP, STREAM
    /// frames on QUIC: flow data or control frames, not the transport's own pings and acks).
    /// A saturated link queues control frames behind flow data, so the driver takes this as a
    /// sign of life too, never only its keepalives.
    fn received(&self) -> u64;
    /// Bytes this connection has moved so far, each way (monotonic while it lives; still
    /// readable after it closed). QUIC: UDP payload bytes of the connection (packets with
    /// their headers, retransmissions and acks). TLS/TCP: bytes of the yamux session through
    /// the TLS stream: frames with their headers, not TLS's own record overhead (~22 bytes per
    /// 16 KiB record) or the handshake. Counted once per read or write call, not per frame.
    fn wire_bytes(&self) -> WireBytes;
    /// The transport's own round-trip estimate, where it keeps one (QUIC); `None` on TLS/TCP,
    /// whose round trips the driver measures with its keepalives.
    fn transport_rtt(&self) -> Option<std::time::Duration> {
        None
    }
    /// The link's datagrams, where the transport has them (QUIC).
    fn datagrams(&self) -> Option<Arc<super::datagram::Datagrams>> {
        None
    }
}

/// Bytes a link connection moved, each way ([`MuxConnection::wire_bytes`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WireBytes {
    /// Bytes sent to the peer.
    pub sent: u64,
    /// Bytes received from the peer.
    pub received: u64,
}

impl std::ops::Add for WireBytes {
    type Output = WireBytes;

    fn add(self, other: WireBytes) -> WireBytes {
        WireBytes {
            sent: self.sent.saturating_add(other.sent),
            received: self.received.saturating_add(other.received),
        }
    }
}

/// Most streams (flows plus the control stream) open at once on one yamux connection.
pub const YAMUX_MAX_STREAMS: usize = 32 * 1024;
/// Streams one side may have open at once on a yamux connection. yamux tears the whole
/// connection down when a side opens more than [`YAMUX_MAX_STREAMS`], so each side keeps to
/// a little under half of it (room for streams yamux has not yet collected after their drop);
/// an open beyond it fails at once.
pub const YAMUX_MAX_OUTBOUND: usize = YAMUX_MAX_STREAMS / 2 - 16;
/// Receive window every yamux stream starts with (the yamux specification's 256 KiB).
pub const YAMUX_STREAM_WINDOW: usize = 256 * 1024;
/// Receive window that yamux's auto-tuning may hand out on top of the 256 KiB each stream
/// starts with, shared by all streams of one connection. One stream's window is therefore at
/// most 256 KiB + 16 MiB, and all streams together hold at most 256 KiB per open stream +
/// 16 MiB, however many flows stall. 16 MiB per round trip is ~1.3 Gbit/s at 100 ms.
pub const YAMUX_WINDOW_POOL: usize = 16 * 1024 * 1024;

/// Receive window of one QUIC stream (fixed; quinn does not auto-tune). 2 MiB per round trip
/// is ~170 Mbit/s at 100 ms, ~1.7 Gbit/s at 10 ms. (4 MiB made a router hold 60 MiB under 8
/// parallel bulk flows: docs/benchmarks.md.)
pub const QUIC_STREAM_WINDOW: u32 = 2 * 1024 * 1024;

/// Receive window of a whole QUIC link: bytes received on all its streams and not yet read
/// by the router. This is the per-link memory bound on QUIC: without it, 16 384 flows whose
/// clients never read could make a router hold 16 384 x 2 MiB = 32 GiB. The trade-off: a
/// stalled flow keeps its stream window's worth of this credit until it reads, so flows
/// that stall together share it with the moving ones. 256 MiB leaves a full
/// [`QUIC_SEND_WINDOW`] (all a peer can have in flight) to the moving flows while up to
/// 124 flows are stalled with full windows; beyond that they slow down, and with 128 stalled
/// flows they wait until one of those reads or ends (docs/flows.md).
pub const QUIC_CONNECTION_WINDOW: u32 = 256 * 1024 * 1024;

/// Bytes one QUIC link buffers for sending (unacknowledged, or not yet sent) over all its
/// streams: 8 MiB per round trip is ~670 Mbit/s at 100 ms.
pub const QUIC_SEND_WINDOW: u64 = 8 * 1024 * 1024;

/// Largest yamux data frame this side sends (yamux's default is 16 KiB; larger frames cost
/// fewer headers and wake-ups per byte, at up to this much head-of-line delay between
/// streams: 0.5 ms at 1 Gbit/s).
const FRAME_SIZE: usize = 64 * 1024;

/// Write buffer under yamux: frames sent in one pass of the driver go out together, up to
/// this much (a little over two whole frames, headers included).
const FRAME_WRITE_BUFFER: usize = 2 * FRAME_SIZE + 1024;

/// Bytes a held flush may leave waiting in [`Batched`]'s buffer.
const HELD_FLUSH_LIMIT: usize = 32 * 1024;

/// The byte stream under yamux, with its writes batched. yamux writes a frame's 12-byte
/// header and its body in two writes and flushes after every frame, which over TLS made a
/// 12-byte record and a system call of their own for every header, and a system call for
/// every small frame. Here writes go to a buffer, and while the driver task holds `hold`
/// (during a pass over everything yamux has to do) a flush leaves them there; the driver
/// lets go and flushes once the pass is over. The frames of one pass (often the requests of
/// many flows) thus go out in one TLS write and one system call.
struct Batched<T> {
    io: tokio::io::BufWriter<T>,
    hold: Arc<AtomicBool>,
    /// Bytes read so far ([`MuxConnection::received`]).
    received: Arc<AtomicU64>,
    /// Bytes written so far ([`MuxConnection::wire_bytes`]).
    sent: Arc<AtomicU64>,
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for Batched<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.io).poll_read(cx, buf);
        let read = (buf.filled().len() - before) as u64;
        if read > 0 {
            self.received.fetch_add(read, Ordering::Relaxed);
        }
        polled
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Batched<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            self.sent.fetch_add(n as u64, Ordering::Relaxed);
        }
        polled
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<io::Result<()>> {
        // Held, small writes wait for the end of the pass; once HELD_FLUSH_LIMIT bytes are
        // waiting they go out at once, so a long pass cannot delay window updates and pongs.
        if self.hold.load(Ordering::Relaxed) && self.io.buffer().len() < HELD_FLUSH_LIMIT {
            return Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

fn yamux_config() -> yamux::Config {
    let mut cfg = yamux::Config::default();
    cfg.set_max_connection_receive_window(Some(
        YAMUX_MAX_STREAMS * YAMUX_STREAM_WINDOW + YAMUX_WINDOW_POOL,
    ));
    cfg.set_max_num_streams(YAMUX_MAX_STREAMS);
    cfg.set_split_send_size(FRAME_SIZE);
    cfg
}

type OpenReply = oneshot::Sender<io::Result<yamux::Stream>>;

/// A yamux session over any tokio byte stream (in practice a TLS stream).
pub struct YamuxConnection {
    open_tx: mpsc::UnboundedSender<OpenReply>,
    /// Streams this side may still open (see [`YAMUX_MAX_OUTBOUND`]).
    outbound: Arc<tokio::sync::Semaphore>,
    inbound: Mutex<mpsc::UnboundedReceiver<yamux::Stream>>,
    close_tx: std::sync::Mutex<Option<oneshot::Sender<()>>>,
    closed_rx: tokio::sync::watch::Receiver<bool>,
    failure: Arc<std::sync::Mutex<Option<Arc<io::Error>>>>,
    /// Set the moment the connection is found dead (or closed): an end-of-stream seen on
    /// one of its streams after that is a loss, not the peer's FIN.
    lost: Arc<LinkLoss>,
    /// Bytes read from the peer so far.
    received: Arc<AtomicU64>,
    /// Bytes written to the peer so far.
    sent: Arc<AtomicU64>,
}

impl YamuxConnection {
    /// Starts a yamux session on `io` and spawns the task that drives it. `dialer` is the side
    /// that opened the underlying connection (yamux client mode: odd stream ids).
    pub fn start<T>(io: T, dialer: bool) -> Self
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let mode = if dialer {
            yamux::Mode::Client
        } else {
            yamux::Mode::Server
        };
        let hold_flushes = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicU64::new(0));
        let sent = Arc::new(AtomicU64::new(0));
        let io = Batched {
            io: tokio::io::BufWriter::with_capacity(FRAME_WRITE_BUFFER, io),
            hold: hold_flushes.clone(),
            received: received.clone(),
            sent: sent.clone(),
        };
        let conn = yamux::Connection::new(io.compat(), yamux_config(), mode);
        let (open_tx, open_rx) = mpsc::unbounded_channel();
        let (inbound_tx, inbound_rx) = mpsc::unbounded_channel();
        let (close_tx, close_rx) = oneshot::channel();
        let (closed_tx, closed_rx) = tokio::sync::watch::channel(false);
        let failure = Arc::new(std::sync::Mutex::new(None));
        let failure2 = failure.clone();
        let lost = Arc::new(LinkLoss::default());
        let lost2 = lost.clone();
        tokio::spawn(async move {
            let result = drive(conn, open_rx, inbound_tx, close_rx, &lost2, &hold_flushes).await;
            lost2.set();
            if let Err(e) = result {
                *failure2.lock().unwrap() = Some(Arc::new(e));
            }
            let _ = closed_tx.send(true);
        });
        YamuxConnection {
            open_tx,
            outbound: Arc::new(tokio::sync::Semaphore::new(YAMUX_MAX_OUTBOUND)),
            inbound: Mutex::new(inbound_rx),
            close_tx: std::sync::Mutex::new(Some(close_tx)),
            closed_rx,
            failure,
            lost,
            received,
            sent,
        }
    }
}

/// Set the moment a yamux connection is found dead or closed, with the streams to wake then.
/// yamux wakes a stream's pending read or write when the connection fails, but not when it
/// is closed gracefully (by us, or after the peer's Close frame): without this, a flow
/// waiting to read from such a stream would wait forever instead of being reset.
#[derive(Default)]
struct LinkLoss {
    lost: AtomicBool,
    streams: std::sync::Mutex<Vec<std::sync::Weak<YamuxShared>>>,
}

impl LinkLoss {
    fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }

    /// Marks the connection lost and wakes every stream's pending read and write.
    fn set(&self) {
        self.lost.store(true, Ordering::Release);
        let streams = std::mem::take(&mut *self.streams.lock().unwrap());
        for s in streams.iter().filter_map(std::sync::Weak::upgrade) {
            s.wakers.wake_both();
        }
    }

    /// Remembers a stream to wake (dropped streams are pruned as the list doubles).
    fn register(&self, stream: &Arc<YamuxShared>) {
        let mut streams = self.streams.lock().unwrap();
        if streams.len() >= 64 && streams.len().is_power_of_two() {
            streams.retain(|w| w.strong_count() > 0);
        }
        streams.push(Arc::downgrade(stream));
    }
}

fn split_yamux(
    stream: yamux::Stream,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    lost: Arc<LinkLoss>,
) -> LinkStream {
    let shared = Arc::new(YamuxShared {
        stream: std::sync::Mutex::new(Some(stream.compat())),
        fin_sent: AtomicBool::new(false),
        lost,
        wakers: Arc::default(),
        _permit: permit,
    });
    shared.lost.register(&shared);
    LinkStream {
        channel: None,
        reader: Box::new(YamuxReader(shared.clone())),
        writer: Box::new(YamuxWriter(shared)),
    }
}

/// One yamux stream shared by its two halves. `None` once reset by us.
struct YamuxShared {
    stream: std::sync::Mutex<Option<Compat<yamux::Stream>>>,
    /// Our side began its FIN: a closed stream seen after this may be a clean close.
    fin_sent: AtomicBool,
    /// The connection's [`YamuxConnection::lost`].
    lost: Arc<LinkLoss>,
    /// The tasks of the two halves: woken when the connection is lost, so a pending read or
    /// write sees it, and whenever yamux wakes either half (see [`HalfWakers`]).
    wakers: Arc<HalfWakers>,
    /// Outbound streams hold one of [`YAMUX_MAX_OUTBOUND`] until both halves are dropped.
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl YamuxShared {
    /// Drops the stream while it is open, which makes yamux send `RST`.
    fn reset(&self) {
        drop(self.stream.lock().unwrap().take());
    }
}

fn reset_locally() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionReset,
        "stream reset by this router",
    )
}

/// The wakers of a yamux stream's two halves. yamux keeps one waker per stream for "room to
/// send a frame", and its reads ask for that room too (to send window updates): when the
/// halves are polled by two tasks, whichever asked last takes the wake-up, and the other
/// can sleep for good (a UDP hop's writer task stalled with its frames queued, while its
/// flow's task read). So yamux is polled with a waker that wakes both halves' tasks; a
/// spurious wake-up costs one poll.
#[derive(Default)]
struct HalfWakers {
    read: futures_util::task::AtomicWaker,
    write: futures_util::task::AtomicWaker,
}

impl HalfWakers {
    fn wake_both(&self) {
        self.read.wake();
        self.write.wake();
    }
}

impl std::task::Wake for HalfWakers {
    fn wake(self: Arc<Self>) {
        self.wake_both();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.wake_both();
    }
}

struct YamuxReader(Arc<YamuxShared>);
struct YamuxWriter(Arc<YamuxShared>);

impl AsyncRead for YamuxReader {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut g = self.0.stream.lock().unwrap();
        let Some(stream) = g.as_mut() else {
            return Poll::Ready(Err(reset_locally()));
        };
        let before = buf.filled().len();
        let wanted = buf.remaining() > 0;
        // Registered before polling, so a wake-up during the poll (or a loss right after)
        // reaches this task.
        self.0.wakers.read.register(cx.waker());
        let both = std::task::Waker::from(self.0.wakers.clone());
        if std::pin::Pin::new(&mut *stream)
            .poll_read(&mut std::task::Context::from_waker(&both), buf)?
            .is_pending()
        {
            if self.0.lost.is_lost() {
                return Poll::Ready(Err(link_lost()));
            }
            return Poll::Pending;
        }
        // yamux reports the peer's RST (and a lost connection) as end-of-stream. The stream
        // only reaches `Closed` on a clean end once we have sent our FIN too, so a closed
        // stream before that was reset.
        if wanted && buf.filled().len() == before && stream.get_ref().is_closed() {
            if self.0.lost.is_lost() {
                return Poll::Ready(Err(link_lost()));
            }
            if !self.0.fin_sent.load(Ordering::Acquire) {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "the peer reset the stream (or the link was lost)",
                )));
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl LinkRead for YamuxReader {
    fn stop(&mut self) {
        self.0.reset();
    }
}

impl YamuxWriter {
    /// A write-side poll that gives up once the connection is lost (see [`LinkLoss`]).
    fn poll_unless_lost<R>(
        &self,
        cx: &mut std::task::Context<'_>,
        op: impl FnOnce(
            std::pin::Pin<&mut Compat<yamux::Stream>>,
            &mut std::task::Context<'_>,
        ) -> Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        let mut g = self.0.stream.lock().unwrap();
        let Some(s) = g.as_mut() else {
            return Poll::Ready(Err(reset_locally()));
        };
        self.0.wakers.write.register(cx.waker());
        let both = std::task::Waker::from(self.0.wakers.clone());
        let polled = op(
            std::pin::Pin::new(s),
            &mut std::task::Context::from_waker(&both),
        );
        if polled.is_pending() && self.0.lost.is_lost() {
            return Poll::Ready(Err(link_lost()));
        }
        polled
    }
}

impl AsyncWrite for YamuxWriter {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_unless_lost(cx, |s, cx| s.poll_write(cx, data))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<io::Result<()>> {
        self.poll_unless_lost(cx, |s, cx| s.poll_flush(cx))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<io::Result<()>> {
        self.0.fin_sent.store(true, Ordering::Release);
        self.poll_unless_lost(cx, |s, cx| s.poll_shutdown(cx))
    }
}

fn link_lost() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "the link was lost")
}

impl LinkWrite for YamuxWriter {
    fn reset(&mut self) {
        self.0.reset();
    }
}

fn closed_error() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "link connection closed")
}

impl MuxConnection for YamuxConnection {
    fn open_stream(&self) -> BoxFuture<'_, io::Result<LinkStream>> {
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            let permit = self.outbound.clone().try_acquire_owned().map_err(|_| {
                io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!("{YAMUX_MAX_OUTBOUND} streams already open on this link"),
                )
            })?;
            self.open_tx.send(tx).map_err(|_| closed_error())?;
            let stream = rx.await.map_err(|_| closed_error())??;
            Ok(split_yamux(stream, Some(permit), self.lost.clone()))
        })
    }

    fn accept_stream(&self) -> BoxFuture<'_, io::Result<LinkStream>> {
        Box::pin(async move {
            let mut inbound = self.inbound.lock().await;
            inbound
                .recv()
                .await
                .map(|s| split_yamux(s, None, self.lost.clone()))
                .ok_or_else(closed_error)
        })
    }

    fn close(&self, _reason: &str) {
        if let Some(tx) = self.close_tx.lock().unwrap().take() {
            let _ = tx.send(());
        }
    }

    fn closed(&self) -> BoxFuture<'_, ()> {
        let mut rx = self.closed_rx.clone();
        Box::pin(async move {
            let _ = rx.wait_for(|closed| *closed).await;
        })
    }

    fn failure(&self) -> Option<Arc<io::Error>> {
        self.failure.lock().unwrap().clone()
    }

    fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    fn wire_bytes(&self) -> WireBytes {
        WireBytes {
            sent: self.sent.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
        }
    }
}

fn io_error(e: yamux::ConnectionError) -> io::Error {
    match e {
        yamux::ConnectionError::Io(io) => io,
        other => io::Error::other(other),
    }
}

/// Polls the yamux state machine until the connection ends: serves open requests in order,
/// forwards inbound streams, and closes gracefully when asked (or when the handle is dropped).
/// Returns the error that ended the connection, if one did.
async fn drive<T>(
    mut conn: yamux::Connection<T>,
    mut open_rx: mpsc::UnboundedReceiver<OpenReply>,
    inbound_tx: mpsc::UnboundedSender<yamux::Stream>,
    mut close_rx: oneshot::Receiver<()>,
    lost: &LinkLoss,
    hold_flushes: &AtomicBool,
) -> io::Result<()>
where
    T: futures_util::io::AsyncRead + futures_util::io::AsyncWrite + Unpin,
{
    let mut waiting: Option<OpenReply> = None;
    // Ready(None): we close; Ready(Some(result)): the connection ended by itself.
    let ended = std::future::poll_fn(|cx| {
        // Frames written during the pass stay buffered (see `Batched`) ...
        hold_flushes.store(true, Ordering::Relaxed);
        let mut last_pass = false;
        loop {
            if std::pin::Pin::new(&mut close_rx).poll(cx).is_ready() {
                lost.set();
                return Poll::Ready(None);
            }
            let mut progressed = false;
            if waiting.is_none() {
                match open_rx.poll_recv(cx) {
                    Poll::Ready(Some(reply)) => waiting = Some(reply),
                    Poll::Ready(None) => return Poll::Ready(None),
                    Poll::Pending => {}
                }
            }
            if waiting.is_some() {
                match conn.poll_new_outbound(cx) {
                    Poll::Ready(Ok(stream)) => {
                        let _ = waiting.take().unwrap().send(Ok(stream));
                        progressed = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(io_error(e)))),
                    Poll::Pending => {}
                }
            }
            match conn.poll_next_inbound(cx) {
                Poll::Ready(Some(Ok(stream))) => {
                    // Nobody accepting any more: the stream is dropped (reset).
                    let _ = inbound_tx.send(stream);
                    progressed = true;
                }
                Poll::Ready(Some(Err(e))) => {
                    lost.set();
                    tracing::debug!(cause = %e, "yamux connection failed");
                    return Poll::Ready(Some(Err(io_error(e))));
                }
                Poll::Ready(None) => {
                    lost.set();
                    return Poll::Ready(Some(Ok(())));
                }
                Poll::Pending => {}
            }
            if !progressed {
                if last_pass {
                    return Poll::Pending;
                }
                // ... until yamux has nothing more to do: one more pass, which flushes.
                hold_flushes.store(false, Ordering::Relaxed);
                last_pass = true;
            }
        }
    })
    .await;
    hold_flushes.store(false, Ordering::Relaxed);
    if let Some(reply) = waiting {
        let _ = reply.send(Err(closed_error()));
    }
    match ended {
        None => {
            let _ = std::future::poll_fn(|cx| conn.poll_close(cx)).await;
            Ok(())
        }
        Some(result) => result,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn echo_once(conn: &dyn MuxConnection) {
        let mut s = conn.accept_stream().await.unwrap();
        let mut buf = Vec::new();
        s.reader.read_to_end(&mut buf).await.unwrap();
        s.writer.write_all(&buf).await.unwrap();
        s.writer.shutdown().await.unwrap();
    }

    async fn roundtrip(conn: &dyn MuxConnection, data: &[u8]) -> Vec<u8> {
        let mut s = conn.open_stream().await.unwrap();
        s.writer.write_all(data).await.unwrap();
        s.writer.shutdown().await.unwrap();
        let mut back = Vec::new();
        s.reader.read_to_end(&mut back).await.unwrap();
        back
    }

    #[tokio::test]
    async fn both_sides_open_streams_and_bytes_arrive_intact() {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let dialer = YamuxConnection::start(a, true);
        let acceptor = YamuxConnection::start(b, false);
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();

        let (_, back) = tokio::join!(echo_once(&acceptor), roundtrip(&dialer, &data));
        assert_eq!(back, data);
        let (_, back) = tokio::join!(echo_once(&dialer), roundtrip(&acceptor, &data));
        assert_eq!(back, data);
    }

    #[tokio::test]
    async fn a_reset_is_an_error_and_a_fin_a_clean_end() {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let dialer = YamuxConnection::start(a, true);
        let acceptor = YamuxConnection::start(b, false);
        for reset in [false, true] {
            let mut s = dialer.open_stream().await.unwrap();
            s.writer.write_all(b"hi").await.unwrap();
            let mut t = acceptor.accept_stream().await.unwrap();
            let mut two = [0u8; 2];
            t.reader.read_exact(&mut two).await.unwrap();
            if reset {
                s.reset();
            } else {
                s.writer.shutdown().await.unwrap();
            }
            let mut rest = Vec::new();
            let r = t.reader.read_to_end(&mut rest).await;
            if reset {
                assert_eq!(r.unwrap_err().kind(), io::ErrorKind::ConnectionReset);
            } else {
                assert_eq!(r.unwrap(), 0);
            }
        }
    }

    #[tokio::test]
    async fn a_link_lost_after_our_fin_is_an_error_not_a_clean_end() {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let dialer = YamuxConnection::start(a, true);
        let acceptor = YamuxConnection::start(b, false);
        let mut s = dialer.open_stream().await.unwrap();
        s.writer.write_all(b"request").await.unwrap();
        s.writer.shutdown().await.unwrap();
        let mut t = acceptor.accept_stream().await.unwrap();
        let mut req = Vec::new();
        t.reader.read_to_end(&mut req).await.unwrap();
        assert_eq!(req, b"request");
        t.writer.write_all(b"part of the rep").await.unwrap();
        let mut part = [0u8; 15];
        s.reader.read_exact(&mut part).await.unwrap();
        // The link dies mid-reply (the other side vanishes).
        drop(t);
        drop(acceptor);
        let mut rest = Vec::new();
        let r = s.reader.read_to_end(&mut rest).await;
        assert_eq!(
            r.map_err(|e| e.kind()),
            Err(io::ErrorKind::ConnectionAborted),
            "a cut-off reply must not look complete"
        );
    }

    #[tokio::test]
    async fn too_many_streams_fail_the_open_not_the_connection() {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let dialer = YamuxConnection::start(a, true);
        let acceptor = YamuxConnection::start(b, false);
        // The acceptor answers every stream (yamux holds back opens while 256 are
        // unacknowledged) and keeps it open.
        tokio::spawn(async move {
            let mut kept = Vec::new();
            while let Ok(mut s) = acceptor.accept_stream().await {
                let _ = s.writer.write_all(b"k").await;
                kept.push(s);
            }
        });
        let open_one = || async {
            let mut s = dialer.open_stream().await?;
            s.writer.write_all(b"x").await?;
            let mut k = [0u8; 1];
            s.reader.read_exact(&mut k).await?;
            io::Result::Ok(s)
        };
        let mut open = Vec::new();
        for _ in 0..YAMUX_MAX_OUTBOUND {
            open.push(open_one().await.unwrap());
        }
        assert!(open_one().await.is_err());
        open.pop();
        open_one().await.unwrap();
    }

    #[tokio::test]
    async fn close_ends_both_sides() {
        let (a, b) = tokio::io::duplex(1024);
        let dialer = YamuxConnection::start(a, true);
        let acceptor = YamuxConnection::start(b, false);
        dialer.close("test");
        dialer.closed().await;
        acceptor.closed().await;
        assert!(acceptor.accept_stream().await.is_err());
        assert!(dialer.open_stream().await.is_err());
    }

    #[tokio::test]
    async fn streams_waiting_to_read_fail_when_either_side_closes_the_link_gracefully() {
        // yamux does not wake streams on a graceful close; a flow waiting to read from one
        // (at the side that closed, or at the side that then closed on the peer's Close
        // frame) hung until its client gave up.
        for closing_side_waits in [true, false] {
            let (a, b) = tokio::io::duplex(64 * 1024);
            let dialer = YamuxConnection::start(a, true);
            let acceptor = YamuxConnection::start(b, false);
            let mut opened = dialer.open_stream().await.unwrap();
            opened.writer.write_all(b"x").await.unwrap();
            let mut accepted = acceptor.accept_stream().await.unwrap();
            let mut one = [0u8; 1];
            accepted.reader.read_exact(&mut one).await.unwrap();
            let (closer, mut waiting) = if closing_side_waits {
                (&dialer, opened)
            } else {
                (&acceptor, opened)
            };
            let read = tokio::spawn(async move {
                let mut buf = [0u8; 16];
                waiting.reader.read(&mut buf).await
            });
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            closer.close("test");
            let got = tokio::time::timeout(std::time::Duration::from_secs(2), read)
                .await
                .expect("the waiting read was never woken")
                .unwrap();
            // An error (the flow is reset), never a clean end.
            assert!(got.is_err(), "{got:?}");
            drop(accepted);
        }
    }
}
