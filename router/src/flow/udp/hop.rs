//! One link hop of a UDP flow: the flow's stream on that link and, on a QUIC link, its
//! datagram channel. Every role (ingress, transit, egress) talks to its neighbours through
//! a [`Hop`] and never sees which transport carries a datagram.
//!
//! The rules that keep datagrams from arriving before the far end knows their channel:
//! - the router that **opens** the stream ([`Hop::opened`]) registers its channel before it
//!   writes the header, and sends datagrams as QUIC datagrams only once it has read an ok
//!   status ([`Hop::read_status`]): every router on the way registered its channel before
//!   the status passed it. Until then its datagrams travel as frames on the stream, after
//!   the header.
//! - the router that **accepted** the stream ([`Hop::accepted`]) registers its channel as it
//!   makes the hop, and sends QUIC datagrams once it has written its status
//!   ([`Hop::write_status`]).
//!
//! A datagram larger than a QUIC datagram can carry on this path travels whole as a frame
//! on the stream instead ([`Via::Stream`]); one the stream's queue has no room for (the
//! link is congested) or that quinn's send buffer cannot take is refused ([`Dropped`]) and
//! the caller counts it. Nothing here waits on a slow link: UDP's answer to congestion is
//! loss, counted.
//!
//! Frames are written by a task per hop from a queue of at most [`STREAM_QUEUE`] datagrams;
//! at most [`DATAGRAM_QUEUE`] received QUIC datagrams wait for the flow to take them.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::link::datagram::{ChannelRx, DatagramRefused, Datagrams};
use crate::link::{LinkStream, StreamReader};
use crate::wire::datagram::{decode_datagram, encode_datagram};
use crate::wire::{FlowStatusCode, FlowStatusFrame};

/// Datagrams waiting to be written on a hop's stream.
pub(crate) const STREAM_QUEUE: usize = 64;
/// QUIC datagrams received for a flow and not yet taken by it.
pub(crate) const DATAGRAM_QUEUE: usize = 256;
/// Frames the writer task puts in one write.
const WRITE_BATCH: usize = 32;

/// How a datagram went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Via {
    /// As a QUIC datagram.
    Datagram,
    /// As a frame on the flow's stream (a TLS/TCP link, before the status, or too large
    /// for a QUIC datagram on this path).
    Stream,
}

/// Why a datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dropped {
    /// The stream's queue is full: the link (or the next router) is slower than the client.
    Congested,
    /// The hop is closed (its stream failed or ended).
    Closed,
}

/// One hop of a UDP flow.
pub(crate) struct Hop {
    /// Encoded frames for the writer task; `None` once finished.
    to_stream: Option<mpsc::Sender<Bytes>>,
    reader: StreamReader,
    /// Bytes read from the stream and not yet decoded.
    buf: BytesMut,
    /// The link's datagrams and this flow's channel on them (QUIC links).
    datagrams: Option<(Arc<Datagrams>, ChannelRx)>,
    /// QUIC datagrams may be sent now (see the module's rules).
    datagrams_ok: bool,
    /// Set when the writer task hit a write error.
    write_failed: Arc<std::sync::atomic::AtomicBool>,
    /// Tells the writer task to reset the stream (a quinn stream dropped unfinished would
    /// end cleanly instead).
    reset: CancellationToken,
}

impl Hop {
    /// A hop on a stream this router opened; `first` (the encoded flow header) is written
    /// before anything else.
    pub(crate) fn opened(
        stream: LinkStream,
        datagrams: Option<Arc<Datagrams>>,
        first: Bytes,
    ) -> Hop {
        Hop::new(stream, datagrams, BytesMut::new(), Some(first))
    }

    /// A hop on a stream a peer opened, whose header was read; `leftover` holds the bytes
    /// read after the header.
    pub(crate) fn accepted(
        stream: LinkStream,
        datagrams: Option<Arc<Datagrams>>,
        leftover: BytesMut,
    ) -> Hop {
        Hop::new(stream, datagrams, leftover, None)
    }

    fn new(
        stream: LinkStream,
        datagrams: Option<Arc<Datagrams>>,
        buf: BytesMut,
        first: Option<Bytes>,
    ) -> Hop {
        let LinkStream {
            channel,
            reader,
            mut writer,
        } = stream;
        let datagrams = match (datagrams, channel) {
            (Some(d), Some(c)) => {
                let rx = d.register(c, DATAGRAM_QUEUE);
                Some((d, rx))
            }
            _ => None,
        };
        let (tx, mut rx) = mpsc::channel::<Bytes>(STREAM_QUEUE);
        if let Some(first) = first {
            // Room for it is certain: the queue is new.
            let _ = tx.try_send(first);
        }
        let write_failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let failed = write_failed.clone();
        let reset = CancellationToken::new();
        let cancel = reset.clone();
        tokio::spawn(async move {
            let write = async {
                let mut out = BytesMut::new();
                while let Some(first) = rx.recv().await {
                    if cancel.is_cancelled() {
                        break;
                    }
                    out.extend_from_slice(&first);
                    for _ in 1..WRITE_BATCH {
                        match rx.try_recv() {
                            Ok(more) => out.extend_from_slice(&more),
                            Err(_) => break,
                        }
                    }
                    writer.write_all(&out).await?;
                    writer.flush().await?;
                    out.clear();
                }
                // Finished: a clean end, after what was queued; unless the queue closed
                // because of a reset (reset() cancels before it closes the queue).
                if cancel.is_cancelled() {
                    return Err(std::io::ErrorKind::ConnectionReset.into());
                }
                writer.shutdown().await
            };
            let result = tokio::select! {
                biased;
                () = cancel.cancelled() => Err(std::io::ErrorKind::ConnectionReset.into()),
                r = write => r,
            };
            if result.is_err() {
                failed.store(true, std::sync::atomic::Ordering::Relaxed);
                writer.reset();
            }
        });
        Hop {
            to_stream: Some(tx),
            reader,
            buf,
            datagrams,
            datagrams_ok: false,
            write_failed,
            reset,
        }
    }

    /// Opener: waits for the egress's status (the caller bounds the wait). An ok status
    /// turns QUIC datagrams on. Datagrams that arrive meanwhile wait their turn.
    pub(crate) async fn read_status(&mut self) -> Result<FlowStatusFrame, String> {
        loop {
            match FlowStatusFrame::decode(&mut self.buf) {
                Ok(Some(status)) => {
                    if status.code == FlowStatusCode::Ok {
                        self.datagrams_ok = true;
                    }
                    return Ok(status);
                }
                Ok(None) => {}
                Err(e) => return Err(format!("bad status frame: {e}")),
            }
            match self.reader.read_buf(&mut self.buf).await {
                Ok(0) => return Err("the stream ended before the egress answered".into()),
                Ok(_) => {}
                Err(e) => return Err(format!("the stream failed before the egress answered: {e}")),
            }
        }
    }

    /// Acceptor: queues the status back (waiting for room, which a new hop has), then turns
    /// QUIC datagrams on when it is ok.
    pub(crate) async fn write_status(&mut self, status: &FlowStatusFrame) -> Result<(), Dropped> {
        let mut out = BytesMut::new();
        status.encode(&mut out);
        let tx = self.to_stream.as_ref().ok_or(Dropped::Closed)?;
        tx.send(out.freeze()).await.map_err(|_| Dropped::Closed)?;
        if status.code == FlowStatusCode::Ok {
            self.datagrams_ok = true;
        }
        Ok(())
    }

    /// Whether datagrams may go as QUIC datagrams on this hop now (a QUIC link, after the
    /// status): a [`Via::Stream`] then means the datagram was too large for one (count it as
    /// `oversize`).
    pub(crate) fn quic_datagrams(&self) -> bool {
        self.datagrams_ok && self.datagrams.is_some()
    }

    /// Sends one datagram now, or says why not. Never waits.
    pub(crate) fn send(&self, datagram: &[u8]) -> Result<Via, Dropped> {
        if self.datagrams_ok
            && let Some((d, rx)) = &self.datagrams
        {
            match d.send(rx.channel(), datagram) {
                Ok(()) => return Ok(Via::Datagram),
                Err(DatagramRefused::Busy) => return Err(Dropped::Congested),
                // The link is gone: so is the flow's stream on it.
                Err(DatagramRefused::Gone) => return Err(Dropped::Closed),
                // Too large for this path now, or no datagrams: whole, on the stream.
                Err(DatagramRefused::TooLarge | DatagramRefused::Unavailable) => {}
            }
        }
        if self.write_failed.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(Dropped::Closed);
        }
        let tx = self.to_stream.as_ref().ok_or(Dropped::Closed)?;
        let mut out = BytesMut::with_capacity(datagram.len() + 5);
        encode_datagram(&mut out, datagram);
        match tx.try_send(out.freeze()) {
            Ok(()) => Ok(Via::Stream),
            Err(mpsc::error::TrySendError::Full(_)) => Err(Dropped::Congested),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Dropped::Closed),
        }
    }

    /// The next datagram from the peer, from the stream or the datagram channel. `Ok(None)`:
    /// the peer ended the stream cleanly (the flow is over); `Err`: the stream failed or
    /// carried something else than datagram frames. Cancel-safe.
    pub(crate) async fn recv(&mut self) -> Result<Option<Bytes>, String> {
        let Hop {
            reader,
            buf,
            datagrams,
            ..
        } = self;
        loop {
            if let Some(d) = decode_datagram(buf).map_err(|e| format!("bad frame: {e}"))? {
                return Ok(Some(d));
            }
            let from_channel = async {
                match datagrams {
                    Some((_, rx)) => rx.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = reader.read_buf(buf) => match r {
                    Ok(0) => {
                        if !buf.is_empty() {
                            return Err("the stream ended inside a datagram frame".into());
                        }
                        return Ok(None);
                    }
                    Ok(_) => {}
                    Err(e) => return Err(format!("the stream failed: {e}")),
                },
                Some(d) = from_channel => return Ok(Some(d)),
            }
        }
    }

    /// Ends the hop cleanly: what is queued is written, then the stream's end (the peer's
    /// [`Hop::recv`] answers `Ok(None)` once it has read the rest).
    pub(crate) fn finish(&mut self) {
        self.to_stream = None;
    }

    /// Ends the hop with a reset (a failure): the peer's [`Hop::recv`] fails.
    pub(crate) fn reset(&mut self) {
        // Cancel first: the writer task must not take the closed queue for a finish.
        self.reset.cancel();
        self.to_stream = None;
        self.reader.stop();
    }
}

impl Drop for Hop {
    fn drop(&mut self) {
        // A hop dropped without finish() is a failure.
        if self.to_stream.is_some() {
            self.reset.cancel();
        }
    }
}
