//! HTTP and HTTP/2 flows: listeners and connectors of `--type http|http2`. The ingress
//! terminates the client's HTTP and routes each request on its own; between routers, requests
//! share pooled HTTP/2 connections carried in flow streams; the egress sends them to its
//! connectors' backends. docs/http.md describes the behaviour and its limits.
//!
//! # Layout
//! - `stack`: the ingress: the layers every request passes, built in one place.
//! - `egress`: the HTTP/2 server on a flow stream at the egress router.
//! - `local`: sending a request to this router's connectors (ingress and egress share it).
//! - `upgrade`: HTTP/1.1 upgrades (WebSocket) as two byte streams.
//! - `peers`: pooled HTTP/2 connections to egress routers.
//! - `backend`: connections to a connector's backend.
//! - `headers`: hop-by-hop headers, `Via`, smuggling shapes.
//! - `metrics`: per-key request metrics.
//! - `io`: link streams as hyper I/O; the body type.

mod backend;
mod egress;
mod headers;
mod io;
mod local;
pub mod metrics;
mod peers;
mod stack;
mod upgrade;

use std::time::Duration;

pub(crate) use backend::BackendPool;
pub(crate) use egress::serve_egress;
pub(crate) use peers::Peers;
pub(crate) use stack::serve_client;

/// How long a client may take to send a request head (slowloris), from the connection or the
/// previous response.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head accepted.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// HTTP/2 streams a client connection may have open at once.
pub const MAX_CLIENT_STREAMS: u32 = 100;
/// Resets a client connection may have pending before it is closed (rapid reset,
/// CVE-2023-44487).
pub const MAX_PENDING_RESETS: usize = 100;
/// How long the ingress waits for a response head.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// Targets one request is tried at (only while it was never sent).
pub const MAX_REQUEST_ATTEMPTS: usize = 3;

/// Response header naming why skiff answered instead of a backend.
pub const ERROR_HEADER: &str = "skiff-error";
/// Header between routers: the egress answered without sending the request anywhere.
const NOT_SENT_HEADER: &str = "skiff-not-sent";
/// Header between routers: an upgrade request, with the client's `Upgrade` value.
const UPGRADE_HEADER: &str = "skiff-upgrade";
/// Header between routers: the backend switched protocols.
const UPGRADED_HEADER: &str = "skiff-upgrade-status";
/// How long getting a connection for a request may take (a stream on the link, the egress's
/// answer, the HTTP/2 handshake); past it the request was never sent and the next site is
/// tried.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP client connections one listener serves at once; more are closed at once.
pub const MAX_CLIENT_CONNECTIONS: usize = 10_000;
/// Between routers: HTTP/2 stream receive window. With [`PEER_CONNECTION_WINDOW`] = streams x
/// this, a stream whose reader is slow never holds back another.
const PEER_STREAM_WINDOW: u32 = 256 * 1024;
/// Between routers and towards HTTP/2 backends: connection receive window.
const PEER_CONNECTION_WINDOW: u32 = 128 * PEER_STREAM_WINDOW;
/// Between routers: streams per connection (the ingress opens another connection past 100).
const PEER_MAX_STREAMS: u32 = 128;
/// Between routers: header list size (a 64 KiB head may grow with HPACK's Huffman code) and
/// frame size (so a large head needs few CONTINUATION frames).
const PEER_MAX_HEADER_LIST: u32 = 1024 * 1024;
const PEER_MAX_FRAME: u32 = 1024 * 1024;
