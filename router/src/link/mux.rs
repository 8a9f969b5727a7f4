//! The multiplexed link connection: one trait over QUIC and over TLS/TCP + yamux.
//!
//! Either side of a link may open streams; a stream is a pair of tokio byte halves. QUIC
//! (`quic.rs`) has native bidirectional streams. Over TLS/TCP the byte stream is multiplexed
//! with yamux (symmetric: both ends open streams); one task per connection polls the yamux
//! state machine, answers open requests and hands out inbound streams. Why yamux and not h2:
//! docs/benchmarks.md, "Link multiplexer over TLS/TCP".

use std::future::Future as _;
use std::io;
use std::sync::Arc;
use std::task::Poll;

use futures_util::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_util::compat::{FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};

/// The receiving half of a link stream.
pub type StreamReader = Box<dyn AsyncRead + Send + Unpin>;
/// The sending half of a link stream. `shutdown` sends a FIN (half-close).
pub type StreamWriter = Box<dyn AsyncWrite + Send + Unpin>;

/// One bidirectional stream on a link.
pub struct LinkStream {
    /// Bytes from the peer.
    pub reader: StreamReader,
    /// Bytes to the peer.
    pub writer: StreamWriter,
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
}

/// Receive window limit across all streams of one yamux connection (yamux needs at least
/// 256 KiB per allowed stream).
const YAMUX_MAX_STREAMS: usize = 1024;

fn yamux_config() -> yamux::Config {
    let mut cfg = yamux::Config::default();
    cfg.set_max_connection_receive_window(Some(YAMUX_MAX_STREAMS * 256 * 1024 * 2));
    cfg.set_max_num_streams(YAMUX_MAX_STREAMS);
    cfg.set_split_send_size(64 * 1024);
    cfg
}

type OpenReply = oneshot::Sender<io::Result<yamux::Stream>>;

/// A yamux session over any tokio byte stream (in practice a TLS stream).
pub struct YamuxConnection {
    open_tx: mpsc::UnboundedSender<OpenReply>,
    inbound: Mutex<mpsc::UnboundedReceiver<yamux::Stream>>,
    close_tx: std::sync::Mutex<Option<oneshot::Sender<()>>>,
    closed_rx: tokio::sync::watch::Receiver<bool>,
    failure: Arc<std::sync::Mutex<Option<Arc<io::Error>>>>,
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
        let conn = yamux::Connection::new(io.compat(), yamux_config(), mode);
        let (open_tx, open_rx) = mpsc::unbounded_channel();
        let (inbound_tx, inbound_rx) = mpsc::unbounded_channel();
        let (close_tx, close_rx) = oneshot::channel();
        let (closed_tx, closed_rx) = tokio::sync::watch::channel(false);
        let failure = Arc::new(std::sync::Mutex::new(None));
        let failure2 = failure.clone();
        tokio::spawn(async move {
            if let Err(e) = drive(conn, open_rx, inbound_tx, close_rx).await {
                *failure2.lock().unwrap() = Some(Arc::new(e));
            }
            let _ = closed_tx.send(true);
        });
        YamuxConnection {
            open_tx,
            inbound: Mutex::new(inbound_rx),
            close_tx: std::sync::Mutex::new(Some(close_tx)),
            closed_rx,
            failure,
        }
    }
}

fn split_yamux(stream: yamux::Stream) -> LinkStream {
    let (reader, writer) = tokio::io::split(stream.compat());
    LinkStream {
        reader: Box::new(reader),
        writer: Box::new(writer),
    }
}

fn closed_error() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "link connection closed")
}

impl MuxConnection for YamuxConnection {
    fn open_stream(&self) -> BoxFuture<'_, io::Result<LinkStream>> {
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            self.open_tx.send(tx).map_err(|_| closed_error())?;
            let stream = rx.await.map_err(|_| closed_error())??;
            Ok(split_yamux(stream))
        })
    }

    fn accept_stream(&self) -> BoxFuture<'_, io::Result<LinkStream>> {
        Box::pin(async move {
            let mut inbound = self.inbound.lock().await;
            inbound
                .recv()
                .await
                .map(split_yamux)
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
) -> io::Result<()>
where
    T: futures_util::io::AsyncRead + futures_util::io::AsyncWrite + Unpin,
{
    let mut waiting: Option<OpenReply> = None;
    // Ready(None): we close; Ready(Some(result)): the connection ended by itself.
    let ended = std::future::poll_fn(|cx| {
        loop {
            if std::pin::Pin::new(&mut close_rx).poll(cx).is_ready() {
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
                    tracing::debug!(cause = %e, "yamux connection failed");
                    return Poll::Ready(Some(Err(io_error(e))));
                }
                Poll::Ready(None) => return Poll::Ready(Some(Ok(()))),
                Poll::Pending => {}
            }
            if !progressed {
                return Poll::Pending;
            }
        }
    })
    .await;
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
}
