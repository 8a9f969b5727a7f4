//! The bodies of the wire fuzz targets (`fuzz/fuzz_targets/`), shared with the seed replay
//! test (`router/tests/fuzz_seeds.rs`) so that `cargo test` checks the same properties on the
//! committed seeds (`fuzz/seeds/<target>/`) that the fuzzer checks on what it generates.
//!
//! Each function takes arbitrary bytes and panics when a property does not hold; not an API.

use bytes::{BufMut, BytesMut};

use super::{
    ControlFrame, FRAME_HEADER_LEN, FlowHeader, FlowStatusFrame, MAX_FRAME_LEN, MAX_TEXT_LEN,
    PROTOCOL_VERSION, WireError,
};

/// Frame type of a hello.
const HELLO: u8 = 0x01;
/// Frame type of a link-state advertisement.
const LINK_STATE: u8 = 0x06;

/// Most a decode buffer may hold after a call that asked for more bytes: what the caller
/// appended plus at most one whole frame, with the doubling a `BytesMut` may do on growth.
/// A declared length over the limit must never make the decoder reserve it.
fn capacity_bound(input_len: usize) -> usize {
    2 * (input_len + FRAME_HEADER_LEN + MAX_FRAME_LEN)
}

/// Encodes `frame` and checks that it decodes to the same value, consuming every byte.
fn assert_control_roundtrip(frame: &ControlFrame) -> BytesMut {
    let mut encoded = BytesMut::new();
    frame.encode(&mut encoded);
    let mut again = encoded.clone();
    assert_eq!(
        ControlFrame::decode(&mut again),
        Ok(Some(frame.clone())),
        "a decoded frame must re-encode to bytes that decode to the same frame"
    );
    assert!(again.is_empty(), "re-decoding left {} bytes", again.len());
    encoded
}

/// Decodes every control frame of `chunks` fed one after the other, as a link's read loop
/// does; checks that an incomplete frame consumes nothing and reserves no more than one frame.
fn decode_stream(chunks: &[&[u8]]) -> (Vec<ControlFrame>, Option<WireError>) {
    let total: usize = chunks.iter().map(|c| c.len()).sum();
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            let before = buf.clone();
            match ControlFrame::decode(&mut buf) {
                Ok(Some(frame)) => {
                    let consumed = &before[..before.len() - buf.len()];
                    assert!(!consumed.is_empty(), "a decoded frame consumed nothing");
                    let encoded = assert_control_roundtrip(&frame);
                    // Hellos and refusals may carry what a newer version appends; every other
                    // frame has one encoding, so a decoder that altered a value is caught even
                    // when the altered value roundtrips.
                    if !matches!(
                        frame,
                        ControlFrame::Hello { .. } | ControlFrame::Refused { .. }
                    ) {
                        assert_eq!(&encoded[..], consumed, "{frame:?} is not canonical");
                    }
                    frames.push(frame);
                }
                Ok(None) => {
                    assert_eq!(buf, before, "an incomplete frame consumed bytes");
                    assert!(
                        buf.capacity() <= capacity_bound(total),
                        "decoder reserved {} bytes for {total} input bytes",
                        buf.capacity()
                    );
                    break;
                }
                Err(e) => return (frames, Some(e)),
            }
        }
    }
    (frames, None)
}

/// Target `control_frame`: the input is a control stream. Every frame decoded re-encodes to
/// bytes that decode to the same frame, and to exactly the bytes it came from unless it is a
/// hello or a refusal (which may carry fields of a newer version: target `hello`); text fields stay within [`MAX_TEXT_LEN`]; the input
/// fed in two pieces (cut where the first byte says) gives the same frames and the same error
/// as fed at once; an incomplete frame consumes nothing and reserves at most one frame.
#[doc(hidden)]
pub fn control_frame(data: &[u8]) {
    let whole = decode_stream(&[data]);
    let cut = data
        .first()
        .map_or(0, |&b| usize::from(b) * data.len() / 256);
    let pieces = decode_stream(&[&data[..cut], &data[cut..]]);
    assert_eq!(whole, pieces, "decoding depends on how the bytes arrived");
    for frame in &whole.0 {
        match frame {
            ControlFrame::Hello { site_name: t, .. }
            | ControlFrame::Refused { reason: t, .. }
            | ControlFrame::Close { reason: t } => assert!(t.len() <= MAX_TEXT_LEN),
            _ => {}
        }
    }
}

/// Target `hello`: the input, after a selector byte, is the payload of a hello frame (when the
/// selector is even its first two bytes are set to this build's major version, so most inputs
/// reach the fields after the version).
///
/// Checks: the frame decodes to a hello or an error, never to another frame; a hello of
/// another major version keeps only its version; one of this major version re-encodes to the
/// payload it came from, up to what the decoder may drop or add (fields appended by a newer
/// minor version, the cost of 1 that a 1.0 hello implies); and it roundtrips.
#[doc(hidden)]
pub fn hello(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    if rest.len() > MAX_FRAME_LEN {
        return;
    }
    let mut payload = rest.to_vec();
    if selector % 2 == 0 && payload.len() >= 2 {
        payload[..2].copy_from_slice(&PROTOCOL_VERSION.major.to_be_bytes());
    }
    let mut buf = BytesMut::with_capacity(FRAME_HEADER_LEN + payload.len());
    buf.put_u8(HELLO);
    buf.put_u32(payload.len() as u32);
    buf.put_slice(&payload);
    let frame = match ControlFrame::decode(&mut buf) {
        Ok(Some(frame)) => frame,
        Ok(None) => panic!("a whole hello frame decoded as incomplete"),
        Err(_) => return,
    };
    assert!(buf.is_empty(), "a hello left {} bytes", buf.len());
    let ControlFrame::Hello {
        version,
        ref site_id,
        ref site_name,
        cost,
        ..
    } = frame
    else {
        panic!("a hello frame decoded as {frame:?}");
    };
    let encoded = assert_control_roundtrip(&frame);
    let enc = &encoded[FRAME_HEADER_LEN..];
    if version.major != PROTOCOL_VERSION.major {
        assert_eq!(
            (site_id, site_name.as_str(), cost),
            (&[0u8; 16], "", 1),
            "a hello of major version {} kept fields it cannot read",
            version.major
        );
        return;
    }
    assert!(site_name.len() <= MAX_TEXT_LEN);
    // The 1.0 form has no cost: the re-encoding appends the implied cost of 1.
    let cost_len = 4;
    let implied_cost = enc.len() == payload.len() + cost_len && enc[..payload.len()] == payload[..];
    if implied_cost {
        assert_eq!(cost, 1);
        assert_eq!(&enc[payload.len()..], &1u32.to_be_bytes());
    } else if version.minor <= PROTOCOL_VERSION.minor {
        assert_eq!(enc, &payload[..], "hello encoding is not canonical");
    } else {
        // A newer minor version may append fields; they are dropped.
        assert!(
            payload.starts_with(enc),
            "hello of version {version} re-encoded to other bytes"
        );
    }
}

/// Target `link_state`: the input is the payload of a link-state frame. An advertisement the
/// decoder accepts re-encodes to exactly the bytes it came from (the encoding is canonical),
/// and `encoded_len` agrees with its length and says it fits.
#[doc(hidden)]
pub fn link_state(data: &[u8]) {
    if data.len() > MAX_FRAME_LEN {
        return;
    }
    let mut buf = BytesMut::with_capacity(data.len() + FRAME_HEADER_LEN);
    buf.put_u8(LINK_STATE);
    buf.put_u32(data.len() as u32);
    buf.put_slice(data);
    let original = buf.clone();
    if let Ok(Some(frame)) = ControlFrame::decode(&mut buf) {
        let ControlFrame::LinkState(ad) = &frame else {
            panic!("a link-state frame decoded as {frame:?}");
        };
        assert_eq!(ad.encoded_len(), (data.len(), true));
        let mut again = BytesMut::new();
        frame.encode(&mut again);
        assert_eq!(again, original, "link-state encoding is not canonical");
    }
}

/// Target `flow_frames`: the input is the start of a flow stream, tried as a flow header and
/// as a flow status. A frame the decoder accepts re-encodes to exactly its own bytes, and the
/// bytes after it (the flow's payload) stay in the buffer untouched.
#[doc(hidden)]
pub fn flow_frames(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    if let Ok(Some(header)) = FlowHeader::decode(&mut buf) {
        let consumed = data.len() - buf.len();
        assert_eq!(
            &buf[..],
            &data[consumed..],
            "payload after the header changed"
        );
        let mut again = BytesMut::new();
        header.encode(&mut again);
        assert_eq!(
            &again[..],
            &data[..consumed],
            "header encoding is not canonical"
        );
    } else {
        assert!(buf.capacity() <= capacity_bound(data.len()));
    }
    let mut buf = BytesMut::from(data);
    if let Ok(Some(status)) = FlowStatusFrame::decode(&mut buf) {
        let consumed = data.len() - buf.len();
        assert_eq!(
            &buf[..],
            &data[consumed..],
            "payload after the status changed"
        );
        let mut again = BytesMut::new();
        status.encode(&mut again);
        assert_eq!(
            &again[..],
            &data[..consumed],
            "status encoding is not canonical"
        );
    } else {
        assert!(buf.capacity() <= capacity_bound(data.len()));
    }
}

/// Fuzz target `udp_datagrams`: the decoders of a UDP flow's datagrams (frames on the flow's
/// stream, and the channel in front of a QUIC datagram). Properties: no panic; a decoded
/// frame leaves the bytes after it untouched and re-encodes to the bytes it came from; a
/// declared length never makes the decoder reserve more than one frame; a decoded channel
/// re-encodes to the bytes it took.
pub fn udp_datagrams(data: &[u8]) {
    use super::datagram::{decode_datagram, encode_datagram, put_channel, take_channel};
    let mut buf = BytesMut::from(data);
    loop {
        let before = buf.clone();
        match decode_datagram(&mut buf) {
            Ok(Some(payload)) => {
                let consumed = before.len() - buf.len();
                assert_eq!(
                    &buf[..],
                    &before[consumed..],
                    "bytes after the frame changed"
                );
                let mut again = BytesMut::new();
                encode_datagram(&mut again, &payload);
                assert_eq!(
                    &again[..],
                    &before[..consumed],
                    "frame encoding is not canonical"
                );
            }
            Ok(None) | Err(_) => {
                assert!(buf.capacity() <= capacity_bound(data.len()));
                break;
            }
        }
    }
    let mut d = bytes::Bytes::copy_from_slice(data);
    if let Ok(channel) = take_channel(&mut d) {
        let taken = data.len() - d.len();
        assert_eq!(
            &d[..],
            &data[taken..],
            "the payload after the channel changed"
        );
        let mut again = BytesMut::new();
        put_channel(&mut again, channel);
        // A channel may arrive in a longer form than needed; it must read back the same.
        let mut re = again.freeze();
        assert_eq!(take_channel(&mut re), Ok(channel));
        assert!((1..=8).contains(&taken));
    }
}
