//! QUIC datagrams of one link (RFC 9221): sending a UDP flow's datagrams tagged with its
//! channel, and handing the ones that arrive to the flow that registered their channel.
//!
//! A channel is the QUIC stream id of the flow's stream on this link
//! ([`super::LinkStream::channel`]); the format is in [`crate::wire::datagram`]. Nothing here
//! waits or queues without bound: a datagram that cannot go at once (quinn's send buffer is
//! full, it is larger than the path takes, the link is gone) is refused to the caller, which
//! counts it or sends it another way; one that arrives for no registered channel (its flow
//! ended, or never was) or for a flow whose queue is full is dropped and counted here.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

use crate::wire::datagram::{channel_len, put_channel, take_channel};

/// Why a datagram was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatagramRefused {
    /// Larger than a QUIC datagram on this path can carry now.
    TooLarge,
    /// quinn's send buffer is full (the link is congested): sending would drop older ones.
    Busy,
    /// The peer does not take datagrams (the flow's stream carries them instead).
    Unavailable,
    /// The link is gone (closed or lost): nothing more goes on it.
    Gone,
}

/// What the router's QUIC links did with datagrams since the router started: one set shared
/// by every link ([`super::router::Shared::datagram_counters`]), so a link that reconnects
/// does not lose its counts.
#[derive(Debug, Default)]
pub struct DatagramCounters {
    /// Sent to the peer.
    pub sent: AtomicU64,
    /// Received from the peer and handed to a flow.
    pub received: AtomicU64,
    /// Received for a channel no flow has (ended flows' late datagrams; garbage).
    pub no_flow: AtomicU64,
    /// Received for a flow whose queue was full.
    pub queue_full: AtomicU64,
}

/// The datagram side of one QUIC link.
pub struct Datagrams {
    conn: quinn::Connection,
    channels: Mutex<HashMap<u64, mpsc::Sender<Bytes>>>,
    reading: AtomicBool,
    /// The router's counters (shared by every link).
    pub counters: Arc<DatagramCounters>,
}

impl std::fmt::Debug for Datagrams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datagrams")
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl Datagrams {
    /// The datagrams of link connection `conn`, counted in `counters` (the router's).
    pub(crate) fn new(conn: quinn::Connection, counters: Arc<DatagramCounters>) -> Arc<Self> {
        Arc::new(Datagrams {
            conn,
            channels: Mutex::default(),
            reading: AtomicBool::new(false),
            counters,
        })
    }

    /// The largest payload a datagram on `channel` can carry now; `None` when the peer takes
    /// no datagrams. It follows quinn's path MTU estimate (about 1.1 to 1.4 KiB on Ethernet
    /// paths), so it may change while the link lives.
    pub fn max_payload(&self, channel: u64) -> Option<usize> {
        self.conn
            .max_datagram_size()
            .map(|m| m.saturating_sub(channel_len(channel)))
    }

    /// Sends one datagram on `channel` now, or refuses it; it never waits and never pushes an
    /// older queued datagram out (which quinn would do silently when its buffer is full).
    pub fn send(&self, channel: u64, payload: &[u8]) -> Result<(), DatagramRefused> {
        if self.conn.close_reason().is_some() {
            return Err(DatagramRefused::Gone);
        }
        let max = self
            .max_payload(channel)
            .ok_or(DatagramRefused::Unavailable)?;
        if payload.len() > max {
            return Err(DatagramRefused::TooLarge);
        }
        let len = channel_len(channel) + payload.len();
        if self.conn.datagram_send_buffer_space() < len {
            return Err(DatagramRefused::Busy);
        }
        let mut d = BytesMut::with_capacity(len);
        put_channel(&mut d, channel);
        d.extend_from_slice(payload);
        match self.conn.send_datagram(d.freeze()) {
            Ok(()) => {
                self.counters.sent.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(quinn::SendDatagramError::TooLarge) => Err(DatagramRefused::TooLarge),
            Err(quinn::SendDatagramError::ConnectionLost(_)) => Err(DatagramRefused::Gone),
            Err(_) => Err(DatagramRefused::Unavailable),
        }
    }

    /// Hands the datagrams that arrive on `channel` to the returned receiver (at most
    /// `capacity` waiting; more are dropped and counted) until it is dropped. The first
    /// registration starts the link's reading task, which ends with the link.
    pub fn register(self: &Arc<Self>, channel: u64, capacity: usize) -> ChannelRx {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        self.channels.lock().unwrap().insert(channel, tx);
        if !self.reading.swap(true, Ordering::AcqRel) {
            let me = self.clone();
            tokio::spawn(async move { me.read().await });
        }
        ChannelRx {
            rx,
            owner: self.clone(),
            channel,
        }
    }

    async fn read(&self) {
        while let Ok(mut d) = self.conn.read_datagram().await {
            let Ok(channel) = take_channel(&mut d) else {
                self.counters.no_flow.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let tx = self.channels.lock().unwrap().get(&channel).cloned();
            // Counted before it is handed over: the flow may take it (and a reader of the
            // counters see the reply it caused) before this task runs on.
            self.counters.received.fetch_add(1, Ordering::Relaxed);
            let refused = match tx.map(|tx| tx.try_send(d)) {
                Some(Ok(())) => None,
                Some(Err(mpsc::error::TrySendError::Full(_))) => Some(&self.counters.queue_full),
                Some(Err(mpsc::error::TrySendError::Closed(_))) | None => {
                    Some(&self.counters.no_flow)
                }
            };
            if let Some(counter) = refused {
                counter.fetch_add(1, Ordering::Relaxed);
                self.counters.received.fetch_sub(1, Ordering::Relaxed);
            }
        }
        // The link is gone: the flows' receivers end.
        self.channels.lock().unwrap().clear();
    }
}

/// The datagrams arriving on one channel; dropping it unregisters the channel.
pub struct ChannelRx {
    rx: mpsc::Receiver<Bytes>,
    owner: Arc<Datagrams>,
    channel: u64,
}

impl ChannelRx {
    /// The next datagram; `None` once the link is gone.
    pub async fn recv(&mut self) -> Option<Bytes> {
        self.rx.recv().await
    }

    /// The channel.
    pub fn channel(&self) -> u64 {
        self.channel
    }
}

impl Drop for ChannelRx {
    fn drop(&mut self) {
        self.owner.channels.lock().unwrap().remove(&self.channel);
    }
}
