//! Datagrams of UDP flows on the wire: as frames on the flow's stream, and as QUIC datagrams
//! tagged with the flow's channel. Pure codec, no I/O.
//!
//! A UDP flow's stream opens like any flow stream ([`super::FlowHeader`] one way, then
//! [`super::FlowStatusFrame`] back). After them, each direction carries datagram frames:
//! `0x12 | length: u32 | payload`, one client datagram each, never split or merged.
//!
//! On a QUIC link a datagram may instead travel as a QUIC DATAGRAM frame (RFC 9221):
//! `channel: QUIC variable-length integer | payload`, the channel being the QUIC stream id of
//! the flow's stream on that link, which both ends know. docs/udp.md says when each is used.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::{WireError, put_frame, split_frame};

/// Frame type of a datagram on a UDP flow's stream.
const DATAGRAM: u8 = 0x12;

/// Largest datagram skiff carries: the largest UDP payload over IPv6 without jumbograms
/// (65 535 - 8). An IPv4 socket refuses more than 65 507 bytes; that is counted where it
/// happens (`too-large`).
pub const MAX_DATAGRAM: usize = 65_527;

/// Appends one datagram frame. `payload` must be at most [`MAX_DATAGRAM`] bytes.
pub fn encode_datagram(dst: &mut BytesMut, payload: &[u8]) {
    debug_assert!(payload.len() <= MAX_DATAGRAM);
    put_frame(dst, DATAGRAM, payload);
}

/// Splits one datagram frame off the front of `src`. `Ok(None)`: not whole yet, nothing
/// consumed. Any other frame type, or a datagram over [`MAX_DATAGRAM`], is an error.
pub fn decode_datagram(src: &mut BytesMut) -> Result<Option<Bytes>, WireError> {
    let Some((kind, payload)) = split_frame(src)? else {
        return Ok(None);
    };
    if kind != DATAGRAM {
        return Err(WireError::UnknownFrameType(kind));
    }
    if payload.len() > MAX_DATAGRAM {
        return Err(WireError::FrameTooLarge {
            len: payload.len(),
            max: MAX_DATAGRAM,
        });
    }
    Ok(Some(payload.freeze()))
}

/// Bytes the channel takes in front of a QUIC datagram's payload.
pub fn channel_len(channel: u64) -> usize {
    match channel {
        0..=63 => 1,
        64..=16_383 => 2,
        16_384..=1_073_741_823 => 4,
        _ => 8,
    }
}

/// Appends `channel` as a QUIC variable-length integer (RFC 9000, 16). Channels are QUIC
/// stream ids, which are below 2^62.
pub fn put_channel(dst: &mut BytesMut, channel: u64) {
    debug_assert!(channel < 1 << 62);
    match channel_len(channel) {
        1 => dst.put_u8(channel as u8),
        2 => dst.put_u16(0x4000 | channel as u16),
        4 => dst.put_u32(0x8000_0000 | channel as u32),
        _ => dst.put_u64(0xc000_0000_0000_0000 | channel),
    }
}

/// Takes the channel off the front of a QUIC datagram, leaving the payload.
pub fn take_channel(datagram: &mut Bytes) -> Result<u64, WireError> {
    if datagram.is_empty() {
        return Err(WireError::Truncated("datagram.channel"));
    }
    let len = 1usize << (datagram[0] >> 6);
    if datagram.len() < len {
        return Err(WireError::Truncated("datagram.channel"));
    }
    let mut v = u64::from(datagram.get_u8() & 0x3f);
    for _ in 1..len {
        v = (v << 8) | u64::from(datagram.get_u8());
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn datagram_frames_keep_boundaries() {
        let mut buf = BytesMut::new();
        for d in [&b""[..], b"a", &[7u8; MAX_DATAGRAM]] {
            encode_datagram(&mut buf, d);
        }
        let half = buf.split_to(3);
        let mut partial = half.clone();
        assert_eq!(decode_datagram(&mut partial), Ok(None));
        let mut all = half;
        all.unsplit(buf);
        assert_eq!(decode_datagram(&mut all).unwrap().unwrap(), &b""[..]);
        assert_eq!(decode_datagram(&mut all).unwrap().unwrap(), &b"a"[..]);
        assert_eq!(
            decode_datagram(&mut all).unwrap().unwrap().len(),
            MAX_DATAGRAM
        );
        assert!(all.is_empty());
    }

    #[test]
    fn an_oversize_or_foreign_frame_is_refused() {
        let mut buf = BytesMut::new();
        put_frame(&mut buf, DATAGRAM, &[0u8; MAX_DATAGRAM + 1]);
        assert!(matches!(
            decode_datagram(&mut buf),
            Err(WireError::FrameTooLarge { .. })
        ));
        let mut buf = BytesMut::new();
        put_frame(&mut buf, 0x11, b"x");
        assert_eq!(
            decode_datagram(&mut buf),
            Err(WireError::UnknownFrameType(0x11))
        );
    }

    proptest! {
        #[test]
        fn channels_round_trip(channel in 0u64..(1 << 62), payload in proptest::collection::vec(any::<u8>(), 0..40)) {
            let mut buf = BytesMut::new();
            put_channel(&mut buf, channel);
            prop_assert_eq!(buf.len(), channel_len(channel));
            buf.extend_from_slice(&payload);
            let mut d = buf.freeze();
            prop_assert_eq!(take_channel(&mut d).unwrap(), channel);
            prop_assert_eq!(&d[..], &payload[..]);
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..20)) {
            let mut d = Bytes::from(data.clone());
            let _ = take_channel(&mut d);
            let _ = decode_datagram(&mut BytesMut::from(&data[..]));
        }
    }
}
