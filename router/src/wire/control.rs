//! Frames of a link's control stream: hello, refusal, keepalive, close and link state.

use bytes::{BufMut, BytesMut};

use crate::routing::Advertisement;

use super::{
    ProtocolVersion, WireError, expect_end, get_bytes, get_string, get_u8, get_u16, get_u32,
    get_u64, put_frame, put_string, split_frame,
};

const HELLO: u8 = 0x01;
const REFUSED: u8 = 0x02;
const KEEPALIVE: u8 = 0x03;
const KEEPALIVE_ACK: u8 = 0x04;
const CLOSE: u8 = 0x05;
const LINK_STATE: u8 = 0x06;

/// Longest site name or reason text a control frame carries; longer text is cut.
pub const MAX_TEXT_LEN: usize = 1024;

/// Whether a router carries transit traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouterMode {
    /// Accepts links and carries transit traffic.
    Interior,
    /// Only dials out; never a transit hop.
    Edge,
}

impl RouterMode {
    pub(super) fn to_wire(self) -> u8 {
        match self {
            RouterMode::Interior => 0,
            RouterMode::Edge => 1,
        }
    }

    pub(super) fn from_wire(v: u8) -> Result<Self, WireError> {
        match v {
            0 => Ok(RouterMode::Interior),
            1 => Ok(RouterMode::Edge),
            other => Err(WireError::InvalidValue {
                field: "mode",
                value: other.into(),
            }),
        }
    }
}

impl std::fmt::Display for RouterMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RouterMode::Interior => "interior",
            RouterMode::Edge => "edge",
        })
    }
}

/// One frame on a link's control stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlFrame {
    /// First frame each side sends: who it is and what it speaks.
    Hello {
        /// The sender's protocol version.
        version: ProtocolVersion,
        /// The sender's 128-bit site id.
        site_id: [u8; 16],
        /// The sender's site name (for display).
        site_name: String,
        /// The sender's router mode.
        mode: RouterMode,
        /// The routing cost of this link as configured at the sender (the dialer's link spec;
        /// the acceptor sends 0 and uses the dialer's). Added in 1.1; a 1.0 hello without it
        /// decodes as cost 1.
        cost: u32,
    },
    /// The receiver of a hello will not use this link; the reason is for the operator.
    Refused {
        /// The refusing side's protocol version, so the other side can explain a mismatch.
        version: ProtocolVersion,
        /// Why, in words.
        reason: String,
    },
    /// Liveness probe; the peer answers with [`ControlFrame::KeepaliveAck`] and the same id.
    Keepalive {
        /// Probe number.
        id: u64,
    },
    /// Answer to a keepalive.
    KeepaliveAck {
        /// The probe number answered.
        id: u64,
    },
    /// The sender is closing the link on purpose.
    Close {
        /// Why, in words.
        reason: String,
    },
    /// A router's link-state advertisement, flooded by `router::routing` (encoding and
    /// limits: [`super::link_state`]).
    LinkState(Advertisement),
}

impl ControlFrame {
    /// Appends this frame, header included, to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        let mut payload = BytesMut::new();
        let kind = match self {
            ControlFrame::Hello {
                version,
                site_id,
                site_name,
                mode,
                cost,
            } => {
                payload.put_u16(version.major);
                payload.put_u16(version.minor);
                payload.put_slice(site_id);
                put_string(&mut payload, truncate(site_name));
                payload.put_u8(mode.to_wire());
                payload.put_u32(*cost);
                HELLO
            }
            ControlFrame::Refused { version, reason } => {
                payload.put_u16(version.major);
                payload.put_u16(version.minor);
                put_string(&mut payload, truncate(reason));
                REFUSED
            }
            ControlFrame::Keepalive { id } => {
                payload.put_u64(*id);
                KEEPALIVE
            }
            ControlFrame::KeepaliveAck { id } => {
                payload.put_u64(*id);
                KEEPALIVE_ACK
            }
            ControlFrame::Close { reason } => {
                put_string(&mut payload, truncate(reason));
                CLOSE
            }
            ControlFrame::LinkState(ad) => {
                super::link_state::encode(ad, &mut payload);
                LINK_STATE
            }
        };
        put_frame(dst, kind, &payload);
    }

    /// Decodes one frame from the front of `src`, consuming it.
    ///
    /// `Ok(None)`: not a whole frame yet, nothing consumed. An error means the stream is
    /// unusable (the peer misbehaved); close it.
    pub fn decode(src: &mut BytesMut) -> Result<Option<Self>, WireError> {
        let Some((kind, mut p)) = split_frame(src)? else {
            return Ok(None);
        };
        let frame = match kind {
            HELLO => {
                let version = get_version(&mut p)?;
                if version.major != super::PROTOCOL_VERSION.major {
                    // Another major version may lay the rest out differently: keep only the
                    // version, so the handshake can refuse the peer by naming both versions.
                    return Ok(Some(ControlFrame::Hello {
                        version,
                        site_id: [0; 16],
                        site_name: String::new(),
                        mode: RouterMode::Interior,
                        cost: 1,
                    }));
                }
                let site_id = get_bytes::<16>(&mut p, "site_id")?;
                let site_name = get_text(&mut p, "site_name")?;
                let mode = RouterMode::from_wire(get_u8(&mut p, "mode")?)?;
                // 1.0 hellos end here: their link cost is 1.
                let cost = if bytes::Buf::remaining(&p) == 0 {
                    1
                } else {
                    get_u32(&mut p, "cost")?
                };
                // A newer minor version may append fields; they are ignored here.
                if version.minor <= super::PROTOCOL_VERSION.minor {
                    expect_end(&p)?;
                }
                ControlFrame::Hello {
                    version,
                    site_id,
                    site_name,
                    mode,
                    cost,
                }
            }
            REFUSED => {
                let version = get_version(&mut p)?;
                let reason = get_text(&mut p, "reason")?;
                ControlFrame::Refused { version, reason }
            }
            KEEPALIVE => {
                let id = get_u64(&mut p, "id")?;
                expect_end(&p)?;
                ControlFrame::Keepalive { id }
            }
            KEEPALIVE_ACK => {
                let id = get_u64(&mut p, "id")?;
                expect_end(&p)?;
                ControlFrame::KeepaliveAck { id }
            }
            CLOSE => {
                let reason = get_text(&mut p, "reason")?;
                expect_end(&p)?;
                ControlFrame::Close { reason }
            }
            LINK_STATE => ControlFrame::LinkState(super::link_state::decode(&mut p)?),
            other => return Err(WireError::UnknownFrameType(other)),
        };
        Ok(Some(frame))
    }
}

fn get_version(p: &mut BytesMut) -> Result<ProtocolVersion, WireError> {
    Ok(ProtocolVersion {
        major: get_u16(p, "version.major")?,
        minor: get_u16(p, "version.minor")?,
    })
}

pub(super) fn get_text(p: &mut BytesMut, field: &'static str) -> Result<String, WireError> {
    let s = get_string(p, field)?;
    if s.len() > MAX_TEXT_LEN {
        return Err(WireError::InvalidValue {
            field,
            value: s.len() as u64,
        });
    }
    Ok(s)
}

pub(super) fn truncate(s: &str) -> &str {
    let mut end = s.len().min(MAX_TEXT_LEN);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{MAX_FRAME_LEN, PROTOCOL_VERSION};
    use proptest::prelude::*;

    fn roundtrip(f: ControlFrame) {
        let mut buf = BytesMut::new();
        f.encode(&mut buf);
        let total = buf.len();
        // Every strict prefix is incomplete and consumes nothing.
        for cut in 0..total {
            let mut part = BytesMut::from(&buf[..cut]);
            assert_eq!(
                ControlFrame::decode(&mut part).unwrap(),
                None,
                "cut at {cut}"
            );
            assert_eq!(part.len(), cut);
        }
        assert_eq!(ControlFrame::decode(&mut buf).unwrap(), Some(f));
        assert!(buf.is_empty());
    }

    #[test]
    fn every_frame_roundtrips() {
        roundtrip(ControlFrame::Hello {
            version: PROTOCOL_VERSION,
            site_id: [7; 16],
            site_name: "west-é".into(),
            mode: RouterMode::Edge,
            cost: 70_000,
        });
        roundtrip(ControlFrame::Refused {
            version: PROTOCOL_VERSION,
            reason: "no".into(),
        });
        roundtrip(ControlFrame::Keepalive { id: u64::MAX });
        roundtrip(ControlFrame::KeepaliveAck { id: 3 });
        roundtrip(ControlFrame::Close {
            reason: String::new(),
        });
    }

    #[test]
    fn a_1_0_hello_without_cost_decodes_as_cost_1() {
        let mut p = BytesMut::new();
        p.put_u16(1);
        p.put_u16(0);
        p.put_slice(&[5; 16]);
        put_string(&mut p, "old");
        p.put_u8(0);
        let mut buf = BytesMut::new();
        put_frame(&mut buf, HELLO, &p);
        let Some(ControlFrame::Hello { cost, version, .. }) =
            ControlFrame::decode(&mut buf).unwrap()
        else {
            panic!("not a hello");
        };
        assert_eq!((cost, version.minor), (1, 0));
    }

    #[test]
    fn hellos_of_a_newer_minor_or_another_major_version_decode_to_their_version() {
        // 1.9 appends a field this build does not know: ignored.
        let mut payload = BytesMut::new();
        payload.put_u16(PROTOCOL_VERSION.major);
        payload.put_u16(9);
        payload.put_slice(&[3; 16]);
        put_string(&mut payload, "west");
        payload.put_u8(0);
        payload.put_u32(5);
        payload.put_u64(42);
        let mut buf = BytesMut::new();
        put_frame(&mut buf, HELLO, &payload);
        let Some(ControlFrame::Hello { version, cost, .. }) =
            ControlFrame::decode(&mut buf).unwrap()
        else {
            panic!("not a hello");
        };
        assert_eq!((version.minor, cost), (9, 5));

        // 2.0 with a layout this build cannot read: the version still comes through.
        let mut payload = BytesMut::new();
        payload.put_u16(PROTOCOL_VERSION.major + 1);
        payload.put_u16(0);
        payload.put_slice(b"something else entirely");
        let mut buf = BytesMut::new();
        put_frame(&mut buf, HELLO, &payload);
        let Some(ControlFrame::Hello { version, .. }) = ControlFrame::decode(&mut buf).unwrap()
        else {
            panic!("not a hello");
        };
        assert_eq!(version.major, PROTOCOL_VERSION.major + 1);
        assert!(buf.is_empty());
    }

    #[test]
    fn oversize_length_is_rejected_before_the_payload_arrives() {
        let mut buf = BytesMut::new();
        buf.put_u8(HELLO);
        buf.put_u32((MAX_FRAME_LEN + 1) as u32);
        assert_eq!(
            ControlFrame::decode(&mut buf),
            Err(WireError::FrameTooLarge {
                len: MAX_FRAME_LEN + 1,
                max: MAX_FRAME_LEN
            })
        );
    }

    #[test]
    fn unknown_type_and_trailing_bytes_are_errors() {
        let mut buf = BytesMut::new();
        put_frame(&mut buf, 0x7f, b"");
        assert_eq!(
            ControlFrame::decode(&mut buf),
            Err(WireError::UnknownFrameType(0x7f))
        );
        let mut buf = BytesMut::new();
        put_frame(&mut buf, KEEPALIVE, &[0; 9]);
        assert_eq!(
            ControlFrame::decode(&mut buf),
            Err(WireError::TrailingBytes(1))
        );
    }

    #[test]
    fn long_text_is_cut_on_encode() {
        let mut buf = BytesMut::new();
        ControlFrame::Close {
            reason: "é".repeat(MAX_TEXT_LEN),
        }
        .encode(&mut buf);
        let Some(ControlFrame::Close { reason }) = ControlFrame::decode(&mut buf).unwrap() else {
            panic!("not a close frame");
        };
        assert!(reason.len() <= MAX_TEXT_LEN);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut buf = BytesMut::from(&data[..]);
            while let Ok(Some(_)) = ControlFrame::decode(&mut buf) {}
        }
    }
}
