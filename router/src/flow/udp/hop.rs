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
//! Frames are written by a task per hop from a queue of at most [`STREAM_QUEUE`] datagrams
//! and [`STREAM_QUEUE_BYTES`] bytes; at most [`DATAGRAM_QUEUE`] received QUIC datagrams wait
//! for the flow to take them.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

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
/// Bytes of frames waiting to be written on a hop's stream: without it, 64 datagrams of
/// 64 KiB (oversize ones, or any on a TLS/TCP link) could hold 4 MiB per flow and hop.
pub(crate) const STREAM_QUEUE_BYTES: usize = 256 * 1024;
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
    /// Bytes of frames queued for the writer task and not yet written.
    queued: Arc<AtomicUsize>,
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
        let queued = Arc::new(AtomicUsize::new(0));
        if let Some(first) = first {
            // Room for it is certain: the queue is new.
            queued.fetch_add(first.len(), Ordering::Relaxed);
            let _ = tx.try_send(first);
        }
        let written = queued.clone();
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
                    written.fetch_sub(out.len(), Ordering::Relaxed);
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
            queued,
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
        self.queued.fetch_add(out.len(), Ordering::Relaxed);
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
        let len = datagram.len() + 5;
        // An empty queue takes any datagram (at most 64 KiB, under the bound).
        let before = self.queued.fetch_add(len, Ordering::Relaxed);
        if before > 0 && before + len > STREAM_QUEUE_BYTES {
            self.queued.fetch_sub(len, Ordering::Relaxed);
            return Err(Dropped::Congested);
        }
        let mut out = BytesMut::with_capacity(len);
        encode_datagram(&mut out, datagram);
        let sent = tx.try_send(out.freeze());
        if sent.is_err() {
            self.queued.fetch_sub(len, Ordering::Relaxed);
        }
        match sent {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::mux::{MuxConnection, YamuxConnection};

    /// Sends datagrams of `len` bytes on `hop` until three rounds 20 ms apart take none;
    /// the bytes it took.
    async fn fill(hop: &Hop, len: usize) -> usize {
        let datagram = vec![0x5a; len];
        let (mut taken, mut idle_rounds) = (0, 0);
        while idle_rounds < 3 {
            let mut this_round = 0;
            while let Ok(via) = hop.send(&datagram) {
                assert_eq!(via, Via::Stream);
                this_round += len;
            }
            taken += this_round;
            idle_rounds = if this_round == 0 { idle_rounds + 1 } else { 0 };
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        taken
    }

    #[tokio::test]
    async fn a_stalled_hop_queues_a_bounded_number_of_bytes_and_loses_none_it_took() {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let dialer = YamuxConnection::start(a, true);
        let acceptor = YamuxConnection::start(b, false);
        let stream = dialer.open_stream().await.unwrap();
        let hop = Hop::opened(stream, None, Bytes::from_static(b"first"));
        let mut peer = acceptor.accept_stream().await.unwrap();
        // The peer reads nothing: the stream's window (256 KiB), the pipe (64 KiB) and the
        // hop's queue fill, then datagrams are refused as congested.
        let len = 60_000;
        let taken = fill(&hop, len).await;
        assert_eq!(hop.send(&vec![0; len]), Err(Dropped::Congested));
        eprintln!("a stalled hop took {taken} bytes of {len}-byte datagrams");
        // Without the byte bound the queue alone took 64 datagrams (3.8 MB).
        assert!(
            taken < 1536 * 1024,
            "a stalled hop took {taken} bytes of {len}-byte datagrams"
        );
        assert!(taken > STREAM_QUEUE_BYTES, "took only {taken} bytes");
        // The peer reads again: every datagram taken arrives, and the queue takes more.
        let mut got = BytesMut::new();
        let mut first = [0u8; 5];
        peer.reader.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"first");
        let mut arrived = 0;
        while arrived < taken {
            while let Some(d) = decode_datagram(&mut got).unwrap() {
                assert!(d.len() == len && d.iter().all(|&b| b == 0x5a));
                arrived += len;
            }
            if arrived < taken {
                assert!(peer.reader.read_buf(&mut got).await.unwrap() > 0);
            }
        }
        assert_eq!(arrived, taken);
        // Written bytes leave the count (a leak would refuse datagrams for good).
        let t0 = std::time::Instant::now();
        while hop.queued.load(Ordering::Relaxed) != 0 {
            assert!(
                t0.elapsed() < std::time::Duration::from_secs(5),
                "queue never drained"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(hop.send(&vec![0x5a; len]), Ok(Via::Stream));
    }
}
