//! UDP flows: each client address a UDP listener hears from becomes a flow to one connector
//! of the key, carried datagram by datagram (never split or merged) as QUIC datagrams on
//! QUIC links and as frames on the flow's stream on TLS/TCP links ([`hop`]), through as many
//! routers as the routes need. docs/udp.md is the operator's side of this.
//!
//! Roles, as for TCP flows:
//! - **ingress** (`ingress`): the listener's socket; a flow per client address, created on
//!   its first datagram (target chosen as for a TCP connection, with `client-ip` affinity if
//!   asked), ended after [`IDLE_TIMEOUT`] without a datagram either way ([`ONE_SHOT_IDLE`]
//!   after its reply for a flow of a single client datagram). Replies go back to the
//!   client's address from the listener's socket, from the address the client sent to.
//! - **transit** (`transit`): datagrams pass from one hop to the next, each hop choosing QUIC
//!   datagrams or stream frames on its own link.
//! - **egress** (`egress`): one connected UDP socket to the connector's backend per flow.
//!
//! Every datagram that does not make it is counted where it was lost ([`UdpStats`], `reason`
//! words in [`DropReason`]); a datagram a QUIC link loses shows as the difference between
//! what one router sent and the next received.

pub(crate) mod egress;
pub(crate) mod hop;
pub(crate) mod ingress;
mod stats;
pub(crate) mod transit;

pub(crate) use stats::{Direction, UdpKeyCounters, UdpStats, socket_inode};

use std::time::Duration;

/// A UDP flow ends after this long without a datagram in either direction (at the ingress,
/// which then ends it at every router on the way; the egress also ends a flow idle for
/// [`EGRESS_IDLE_TIMEOUT`], in case the ingress vanished with its link).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A flow that carried a single datagram from its client (a DNS query from a stub resolver,
/// which takes a new source port per query) ends after this long without a datagram once
/// it had its reply, instead of [`IDLE_TIMEOUT`]: a listener can then take about
/// [`MAX_FLOWS_PER_LISTENER`] / 5 s = 800 such clients a second before `flow-limit`. A
/// second datagram from the client makes it a conversation, with the full idle timeout.
pub const ONE_SHOT_IDLE: Duration = Duration::from_secs(5);
/// Bytes of client datagrams one UDP listener holds at most for its flows, waiting in their
/// queues or kept for a retry while a site answers; more are dropped (reason `congested`),
/// so a listener's memory is bounded by bytes, not only by datagram counts.
pub const MAX_QUEUED_BYTES: usize = 16 << 20;
/// The egress's own idle limit (longer than the ingress's, so the ingress decides).
pub const EGRESS_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Client addresses one UDP listener keeps flows for at once; datagrams from further new
/// addresses are dropped (reason `flow-limit`) until a flow ends.
pub const MAX_FLOWS_PER_LISTENER: usize = 4096;
/// Datagrams from a client waiting for its flow's task (while it sets up the flow, or when
/// the client sends faster than the path carries); more are dropped (reason `congested`).
pub const CLIENT_QUEUE: usize = 256;

/// Why a datagram was dropped: the `reason` label of `skiff_udp_dropped_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DropReason {
    /// No site could take the flow (no target, or every target refused it).
    NoRoute,
    /// The listener already has [`MAX_FLOWS_PER_LISTENER`] flows.
    FlowLimit,
    /// A queue on the way was full: the client sends faster than the path carries.
    Congested,
    /// The flow's link stream or socket failed or ended while the datagram was on its way.
    Closed,
    /// The local socket refused it as too large (`EMSGSIZE`).
    TooLarge,
    /// The local socket refused it for another reason (e.g. the backend's port is closed:
    /// ICMP port unreachable).
    SocketError,
    /// It arrived on a link for a channel no flow has (its flow had ended).
    NoFlow,
    /// The kernel dropped it: the listener's receive buffer was full.
    SocketBuffer,
}

impl DropReason {
    /// Every reason, for exporting zeros.
    pub const ALL: [DropReason; 8] = [
        DropReason::NoRoute,
        DropReason::FlowLimit,
        DropReason::Congested,
        DropReason::Closed,
        DropReason::TooLarge,
        DropReason::SocketError,
        DropReason::NoFlow,
        DropReason::SocketBuffer,
    ];

    /// Its label value.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::NoRoute => "no-route",
            DropReason::FlowLimit => "flow-limit",
            DropReason::Congested => "congested",
            DropReason::Closed => "closed",
            DropReason::TooLarge => "too-large",
            DropReason::SocketError => "socket-error",
            DropReason::NoFlow => "no-flow",
            DropReason::SocketBuffer => "socket-buffer",
        }
    }
}

/// The datagram counts of one routing key at this router (`Router::udp_stats`), for
/// `/metrics`. Keys are bounded as for flow statistics (`MAX_KEYS`, then `OTHER_KEY`). Drops
/// that belong to no key (a link's `no-flow`) are under the key `""`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct UdpKeyStats {
    /// The routing key.
    pub key: String,
    /// Datagrams this router passed on towards the backend, by its role in their flows
    /// (`ingress`, `transit`, `egress`): at the egress, those sent to the backend.
    pub forward: Vec<(super::FlowRole, u64)>,
    /// Datagrams this router passed on towards the client, by role: at the ingress, those
    /// sent to the client.
    pub back: Vec<(super::FlowRole, u64)>,
    /// Datagrams that went whole as frames on a flow's stream on a QUIC link, because a QUIC
    /// datagram on that path was too small for them.
    pub oversize: u64,
    /// Dropped datagrams by reason.
    pub dropped: Vec<(DropReason, u64)>,
}
