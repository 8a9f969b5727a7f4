//! The link wire format: versioned, length-prefixed control frames; pure codec, no I/O.
//!
//! Every frame is `type: u8 | length: u32 (big-endian) | payload`. A decoder rejects a frame
//! whose declared length is over [`MAX_FRAME_LEN`] before it allocates anything, so a peer
//! cannot make a router buffer more than that per stream. Strings are `u16 length | UTF-8`.
//!
//! Frame types: `0x01` hello, `0x02` refused, `0x03` keepalive, `0x04` keepalive ack,
//! `0x05` close, `0x06` link state ([`link_state`]) on control streams; `0x10` flow header
//! ([`FlowHeader`]) and `0x11` flow status ([`FlowStatusFrame`]) at the start of flow streams;
//! `0x12` datagram ([`datagram`]) after them on the streams of UDP flows.
//!
//! Protocol 1.1 added the link cost to the hello (a 1.0 hello decodes with cost 1).
//! Protocol 1.2 added UDP keys and flows (protocol 3) and QUIC datagrams; a router sends
//! no UDP key in its link-state frames to a peer below 1.2 (whose decoder would refuse the
//! frame and drop the link), so such a peer never starts a UDP flow.
//! Protocol 1.3 added the client's address to the flow header, sent only to a peer of 1.3
//! or later (an older one refuses a header with it).
//!
//! The control stream of a link opens with a [`ControlFrame::Hello`] from each side. The
//! hello carries the [`ProtocolVersion`]; a peer whose major version differs is refused with
//! [`ControlFrame::Refused`] and the link is closed.

mod control;
pub mod datagram;
mod flow;
#[doc(hidden)]
pub mod fuzzing;
pub mod link_state;

pub use control::{ControlFrame, MAX_TEXT_LEN, RouterMode};
pub use flow::{
    FLOW_HEADER_VERSION, FlowHeader, FlowStatusCode, FlowStatusFrame, MAX_ROUTING_KEY_LEN,
    MAX_STATUS_MESSAGE_LEN,
};
pub use link_state::{MAX_KEYS_PER_AD, MAX_LINKS_PER_AD};

use bytes::{Buf, BufMut, BytesMut};

/// Largest payload a frame may declare. Larger frames are a protocol violation.
pub const MAX_FRAME_LEN: usize = 64 * 1024;

/// Length of the frame header: type byte plus 32-bit length.
pub const FRAME_HEADER_LEN: usize = 5;

/// The protocol version this build speaks on links.
pub const PROTOCOL_VERSION: ProtocolVersion = ProtocolVersion { major: 1, minor: 3 };

/// A link protocol version. Peers interoperate only when the major versions are equal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProtocolVersion {
    /// Incompatible changes bump this.
    pub major: u16,
    /// Compatible additions bump this.
    pub minor: u16,
}

impl std::fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// Why bytes could not be decoded. Every variant means the peer misbehaved or is incompatible.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// The frame declared a payload larger than the limit.
    #[error("frame of {len} bytes is over the {max} byte limit")]
    FrameTooLarge {
        /// Declared length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The frame type byte is not one this version knows.
    #[error("unknown frame type {0:#04x}")]
    UnknownFrameType(u8),
    /// The payload ended before a field was complete.
    #[error("frame payload truncated while reading {0}")]
    Truncated(&'static str),
    /// The payload had bytes left over after the last field.
    #[error("{0} trailing bytes after the frame's fields")]
    TrailingBytes(usize),
    /// A string field was not UTF-8.
    #[error("field {0} is not valid UTF-8")]
    InvalidUtf8(&'static str),
    /// A field held a value outside its range.
    #[error("field {field} has invalid value {value}")]
    InvalidValue {
        /// Field name.
        field: &'static str,
        /// The value seen.
        value: u64,
    },
}

/// Splits one whole frame off the front of `src`.
///
/// Returns `Ok(None)` when `src` does not yet hold a whole frame (read more and call again);
/// nothing is consumed then. On success the frame's bytes are consumed and its type and
/// payload returned.
pub fn split_frame(src: &mut BytesMut) -> Result<Option<(u8, BytesMut)>, WireError> {
    if src.len() < FRAME_HEADER_LEN {
        return Ok(None);
    }
    let kind = src[0];
    let len = u32::from_be_bytes([src[1], src[2], src[3], src[4]]) as usize;
    if len > MAX_FRAME_LEN {
        return Err(WireError::FrameTooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    if src.len() < FRAME_HEADER_LEN + len {
        src.reserve(FRAME_HEADER_LEN + len - src.len());
        return Ok(None);
    }
    src.advance(FRAME_HEADER_LEN);
    Ok(Some((kind, src.split_to(len))))
}

/// Appends a frame header and payload to `dst`. The payload must fit [`MAX_FRAME_LEN`].
pub(crate) fn put_frame(dst: &mut BytesMut, kind: u8, payload: &[u8]) {
    debug_assert!(payload.len() <= MAX_FRAME_LEN);
    dst.reserve(FRAME_HEADER_LEN + payload.len());
    dst.put_u8(kind);
    dst.put_u32(payload.len() as u32);
    dst.put_slice(payload);
}

pub(crate) fn get_u8(buf: &mut impl Buf, field: &'static str) -> Result<u8, WireError> {
    if buf.remaining() < 1 {
        return Err(WireError::Truncated(field));
    }
    Ok(buf.get_u8())
}

pub(crate) fn get_u16(buf: &mut impl Buf, field: &'static str) -> Result<u16, WireError> {
    if buf.remaining() < 2 {
        return Err(WireError::Truncated(field));
    }
    Ok(buf.get_u16())
}

pub(crate) fn get_u32(buf: &mut impl Buf, field: &'static str) -> Result<u32, WireError> {
    if buf.remaining() < 4 {
        return Err(WireError::Truncated(field));
    }
    Ok(buf.get_u32())
}

pub(crate) fn get_u64(buf: &mut impl Buf, field: &'static str) -> Result<u64, WireError> {
    if buf.remaining() < 8 {
        return Err(WireError::Truncated(field));
    }
    Ok(buf.get_u64())
}

pub(crate) fn get_bytes<const N: usize>(
    buf: &mut impl Buf,
    field: &'static str,
) -> Result<[u8; N], WireError> {
    if buf.remaining() < N {
        return Err(WireError::Truncated(field));
    }
    let mut out = [0u8; N];
    buf.copy_to_slice(&mut out);
    Ok(out)
}

/// Reads a `u16 length | UTF-8` string; the length is checked against what remains first.
pub(crate) fn get_string(buf: &mut impl Buf, field: &'static str) -> Result<String, WireError> {
    let len = get_u16(buf, field)? as usize;
    if buf.remaining() < len {
        return Err(WireError::Truncated(field));
    }
    let mut raw = vec![0u8; len];
    buf.copy_to_slice(&mut raw);
    String::from_utf8(raw).map_err(|_| WireError::InvalidUtf8(field))
}

/// Writes a `u16 length | UTF-8` string, cut at a character boundary below 64 KiB.
pub(crate) fn put_string(dst: &mut BytesMut, s: &str) {
    let mut end = s.len().min(u16::MAX as usize);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    dst.put_u16(end as u16);
    dst.put_slice(&s.as_bytes()[..end]);
}

pub(crate) fn expect_end(buf: &impl Buf) -> Result<(), WireError> {
    match buf.remaining() {
        0 => Ok(()),
        n => Err(WireError::TrailingBytes(n)),
    }
}
