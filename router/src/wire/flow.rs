//! Frames that open a flow stream: the [`FlowHeader`] the opener sends first, and the
//! [`FlowStatusFrame`] the egress router answers before any payload byte flows back.
//!
//! A flow stream carries exactly one header frame, then raw payload bytes towards the egress;
//! the other direction carries exactly one status frame, then raw payload bytes back. Both
//! frames use the link frame layout (`type: u8 | length: u32 | payload`) so the same size limit
//! ([`super::MAX_FRAME_LEN`]) applies before anything is allocated.
//!
//! Header payload (version [`FLOW_HEADER_VERSION`]):
//! `version: u8 | protocol: u8 | hops: u8 | flow_id: u64 | origin: [u8; 16] |
//! destination: [u8; 16] | routing_key: u16 length + UTF-8 (at most [`MAX_ROUTING_KEY_LEN`])`,
//! then, since link protocol 1.3 and only when the ingress knows it, the client's address:
//! `family: u8 (4 or 6) | address: 4 or 16 bytes | port: u16`. A router sends that trailer
//! only on a link whose peer speaks 1.3 or later: an older decoder refuses bytes after the
//! key.
//! A header whose version is not [`FLOW_HEADER_VERSION`] decodes (up to its version byte) to
//! [`WireError::InvalidValue`] on field `flow_header.version`, so the receiver can answer
//! [`FlowStatusCode::Denied`] with a readable reason.
//!
//! Status payload: `code: u8 | message: u16 length + UTF-8 (at most 1024 bytes)`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::{Buf, BufMut, BytesMut};

use crate::routing::Protocol;

use super::{
    WireError, expect_end, get_bytes, get_string, get_u8, get_u16, get_u64, put_frame, put_string,
    split_frame,
};

const FLOW_HEADER: u8 = 0x10;
const FLOW_STATUS: u8 = 0x11;

/// The flow header layout this build writes and reads.
pub const FLOW_HEADER_VERSION: u8 = 1;
/// Longest routing key a header may carry.
pub const MAX_ROUTING_KEY_LEN: usize = 253;
/// Longest message a status frame carries; longer text is cut on encode.
pub const MAX_STATUS_MESSAGE_LEN: usize = 1024;

/// First frame on a flow stream: what the flow is for and where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowHeader {
    /// The routing key the client's listener sends to.
    pub routing_key: String,
    /// The router that must connect to a connector of the key (the egress).
    pub destination: [u8; 16],
    /// The router whose listener accepted the client (the ingress).
    pub origin: [u8; 16],
    /// Chosen by the origin; unique among its flows (for logs and status).
    pub flow_id: u64,
    /// What the egress speaks to the connector.
    pub protocol: Protocol,
    /// Routers the header has passed through before this one (the origin sends 0). A transit
    /// router refuses a header over its hop limit, so a transient routing loop cannot circle.
    pub hops: u8,
    /// The client's address at the ingress (link protocol 1.3): `None` when the ingress does
    /// not know it (an HTTP connection pooled between routers) or a router on the way speaks
    /// an older protocol.
    pub client: Option<SocketAddr>,
}

impl FlowHeader {
    /// Appends this header frame to `dst`. A routing key over [`MAX_ROUTING_KEY_LEN`] is a
    /// programming error (keys are validated when listeners and connectors are made).
    pub fn encode(&self, dst: &mut BytesMut) {
        debug_assert!(self.routing_key.len() <= MAX_ROUTING_KEY_LEN);
        let mut p = BytesMut::with_capacity(64 + self.routing_key.len());
        p.put_u8(FLOW_HEADER_VERSION);
        p.put_u8(self.protocol.to_wire());
        p.put_u8(self.hops);
        p.put_u64(self.flow_id);
        p.put_slice(&self.origin);
        p.put_slice(&self.destination);
        put_string(&mut p, &self.routing_key);
        match self.client.map(|c| (c.ip(), c.port())) {
            None => {}
            Some((IpAddr::V4(ip), port)) => {
                p.put_u8(4);
                p.put_slice(&ip.octets());
                p.put_u16(port);
            }
            Some((IpAddr::V6(ip), port)) => {
                p.put_u8(6);
                p.put_slice(&ip.octets());
                p.put_u16(port);
            }
        }
        put_frame(dst, FLOW_HEADER, &p);
    }

    /// Decodes a header frame from the front of `src`, consuming it and nothing more (payload
    /// bytes that follow stay in `src`). `Ok(None)`: not whole yet, nothing consumed.
    pub fn decode(src: &mut BytesMut) -> Result<Option<Self>, WireError> {
        let Some((kind, mut p)) = split_frame(src)? else {
            return Ok(None);
        };
        if kind != FLOW_HEADER {
            return Err(WireError::UnknownFrameType(kind));
        }
        let version = get_u8(&mut p, "flow_header.version")?;
        if version != FLOW_HEADER_VERSION {
            return Err(WireError::InvalidValue {
                field: "flow_header.version",
                value: version.into(),
            });
        }
        let protocol = get_u8(&mut p, "flow_header.protocol")?;
        let protocol = Protocol::from_wire(protocol).ok_or(WireError::InvalidValue {
            field: "flow_header.protocol",
            value: protocol.into(),
        })?;
        let hops = get_u8(&mut p, "flow_header.hops")?;
        let flow_id = get_u64(&mut p, "flow_header.flow_id")?;
        let origin = get_bytes::<16>(&mut p, "flow_header.origin")?;
        let destination = get_bytes::<16>(&mut p, "flow_header.destination")?;
        let routing_key = get_string(&mut p, "flow_header.routing_key")?;
        if routing_key.is_empty() || routing_key.len() > MAX_ROUTING_KEY_LEN {
            return Err(WireError::InvalidValue {
                field: "flow_header.routing_key",
                value: routing_key.len() as u64,
            });
        }
        let client = if p.has_remaining() {
            let ip = match get_u8(&mut p, "flow_header.client")? {
                4 => IpAddr::V4(Ipv4Addr::from(get_bytes::<4>(
                    &mut p,
                    "flow_header.client",
                )?)),
                6 => IpAddr::V6(Ipv6Addr::from(get_bytes::<16>(
                    &mut p,
                    "flow_header.client",
                )?)),
                family => {
                    return Err(WireError::InvalidValue {
                        field: "flow_header.client",
                        value: family.into(),
                    });
                }
            };
            Some(SocketAddr::new(ip, get_u16(&mut p, "flow_header.client")?))
        } else {
            None
        };
        expect_end(&p)?;
        Ok(Some(FlowHeader {
            routing_key,
            destination,
            origin,
            flow_id,
            protocol,
            hops,
            client,
        }))
    }
}

/// The egress router's verdict on a flow, sent back before any payload byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowStatusCode {
    /// Connected to a connector; payload follows.
    Ok,
    /// A router on the way (or the destination) has no route or no connector for the key.
    NoRoute,
    /// The connector's backend refused the TCP connection.
    ConnectRefused,
    /// The connector's backend did not answer in time.
    ConnectTimeout,
    /// The flow is not allowed (policy, unsupported protocol or header version).
    Denied,
}

impl FlowStatusCode {
    fn to_wire(self) -> u8 {
        match self {
            FlowStatusCode::Ok => 0,
            FlowStatusCode::NoRoute => 1,
            FlowStatusCode::ConnectRefused => 2,
            FlowStatusCode::ConnectTimeout => 3,
            FlowStatusCode::Denied => 4,
        }
    }

    fn from_wire(v: u8) -> Result<Self, WireError> {
        Ok(match v {
            0 => FlowStatusCode::Ok,
            1 => FlowStatusCode::NoRoute,
            2 => FlowStatusCode::ConnectRefused,
            3 => FlowStatusCode::ConnectTimeout,
            4 => FlowStatusCode::Denied,
            other => {
                return Err(WireError::InvalidValue {
                    field: "flow_status.code",
                    value: other.into(),
                });
            }
        })
    }

    /// Whether the ingress may try the next target: nothing reached a backend.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            FlowStatusCode::NoRoute
                | FlowStatusCode::ConnectRefused
                | FlowStatusCode::ConnectTimeout
        )
    }
}

impl std::fmt::Display for FlowStatusCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FlowStatusCode::Ok => "ok",
            FlowStatusCode::NoRoute => "no-route",
            FlowStatusCode::ConnectRefused => "connect-refused",
            FlowStatusCode::ConnectTimeout => "connect-timeout",
            FlowStatusCode::Denied => "denied",
        })
    }
}

/// Status frame: a code and, unless ok, a reason for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowStatusFrame {
    /// The verdict.
    pub code: FlowStatusCode,
    /// Why, in words (empty for ok).
    pub message: String,
}

impl FlowStatusFrame {
    /// The ok status.
    pub fn ok() -> Self {
        FlowStatusFrame {
            code: FlowStatusCode::Ok,
            message: String::new(),
        }
    }

    /// A failure with a reason.
    pub fn fail(code: FlowStatusCode, message: impl Into<String>) -> Self {
        FlowStatusFrame {
            code,
            message: message.into(),
        }
    }

    /// Appends this status frame to `dst`; the message is cut at [`MAX_STATUS_MESSAGE_LEN`].
    pub fn encode(&self, dst: &mut BytesMut) {
        let mut end = self.message.len().min(MAX_STATUS_MESSAGE_LEN);
        while !self.message.is_char_boundary(end) {
            end -= 1;
        }
        let mut p = BytesMut::with_capacity(3 + end);
        p.put_u8(self.code.to_wire());
        put_string(&mut p, &self.message[..end]);
        put_frame(dst, FLOW_STATUS, &p);
    }

    /// Decodes a status frame from the front of `src`, consuming it and nothing more.
    /// `Ok(None)`: not whole yet, nothing consumed.
    pub fn decode(src: &mut BytesMut) -> Result<Option<Self>, WireError> {
        let Some((kind, mut p)) = split_frame(src)? else {
            return Ok(None);
        };
        if kind != FLOW_STATUS {
            return Err(WireError::UnknownFrameType(kind));
        }
        let code = FlowStatusCode::from_wire(get_u8(&mut p, "flow_status.code")?)?;
        let message = get_string(&mut p, "flow_status.message")?;
        if message.len() > MAX_STATUS_MESSAGE_LEN {
            return Err(WireError::InvalidValue {
                field: "flow_status.message",
                value: message.len() as u64,
            });
        }
        expect_end(&p)?;
        Ok(Some(FlowStatusFrame { code, message }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header() -> FlowHeader {
        FlowHeader {
            routing_key: "backend-é".into(),
            destination: [9; 16],
            origin: [3; 16],
            flow_id: u64::MAX - 1,
            protocol: Protocol::Tcp,
            hops: 2,
            client: None,
        }
    }

    #[test]
    fn a_header_carries_the_clients_address_of_either_family_or_none() {
        for client in [
            None,
            Some("10.1.2.3:40000".parse().unwrap()),
            Some("[2001:db8::7]:1".parse().unwrap()),
            Some("[::ffff:192.0.2.1]:65535".parse().unwrap()),
        ] {
            let h = FlowHeader { client, ..header() };
            let mut buf = BytesMut::new();
            h.encode(&mut buf);
            let total = buf.len();
            for cut in 0..total {
                let mut part = BytesMut::from(&buf[..cut]);
                assert_eq!(FlowHeader::decode(&mut part).unwrap(), None, "cut at {cut}");
            }
            buf.extend_from_slice(b"payload");
            assert_eq!(FlowHeader::decode(&mut buf).unwrap(), Some(h));
            assert_eq!(&buf[..], b"payload");
        }
        // Without a client the bytes are those of protocol 1.2, which older routers read.
        let mut old = BytesMut::new();
        header().encode(&mut old);
        assert_eq!(old.len(), 5 + 3 + 8 + 32 + 2 + "backend-é".len());
    }

    #[test]
    fn a_bad_client_trailer_is_refused() {
        let with = |tail: &[u8]| {
            let mut p = BytesMut::new();
            header().encode(&mut p);
            let mut payload = p.split_off(5);
            payload.extend_from_slice(tail);
            let mut buf = BytesMut::new();
            put_frame(&mut buf, FLOW_HEADER, &payload);
            FlowHeader::decode(&mut buf)
        };
        assert_eq!(
            with(&[5, 1, 2, 3, 4, 0, 80]),
            Err(WireError::InvalidValue {
                field: "flow_header.client",
                value: 5
            })
        );
        assert!(with(&[4, 1, 2, 3]).is_err(), "a cut address");
        assert!(with(&[4, 1, 2, 3, 4, 0]).is_err(), "a cut port");
        assert!(
            with(&[4, 1, 2, 3, 4, 0, 80, 9]).is_err(),
            "a byte after the port"
        );
        assert_eq!(
            with(&[4, 1, 2, 3, 4, 0, 80]).unwrap().unwrap().client,
            Some("1.2.3.4:80".parse().unwrap())
        );
    }

    #[test]
    fn header_roundtrips_and_leaves_payload_in_place() {
        let mut buf = BytesMut::new();
        header().encode(&mut buf);
        let total = buf.len();
        for cut in 0..total {
            let mut part = BytesMut::from(&buf[..cut]);
            assert_eq!(FlowHeader::decode(&mut part).unwrap(), None, "cut at {cut}");
            assert_eq!(part.len(), cut);
        }
        buf.extend_from_slice(b"payload");
        assert_eq!(FlowHeader::decode(&mut buf).unwrap(), Some(header()));
        assert_eq!(&buf[..], b"payload");
    }

    #[test]
    fn status_roundtrips_and_cuts_long_messages() {
        for s in [
            FlowStatusFrame::ok(),
            FlowStatusFrame::fail(FlowStatusCode::ConnectRefused, "10.0.0.1:80 refused"),
            FlowStatusFrame::fail(FlowStatusCode::Denied, "é".repeat(MAX_STATUS_MESSAGE_LEN)),
        ] {
            let mut buf = BytesMut::new();
            s.encode(&mut buf);
            buf.extend_from_slice(b"x");
            let got = FlowStatusFrame::decode(&mut buf).unwrap().unwrap();
            assert_eq!(got.code, s.code);
            assert!(s.message.starts_with(&got.message));
            assert!(got.message.len() <= MAX_STATUS_MESSAGE_LEN);
            assert_eq!(&buf[..], b"x");
        }
    }

    #[test]
    fn wrong_kind_version_and_key_are_rejected() {
        let mut buf = BytesMut::new();
        FlowStatusFrame::ok().encode(&mut buf);
        assert_eq!(
            FlowHeader::decode(&mut buf),
            Err(WireError::UnknownFrameType(FLOW_STATUS))
        );
        let mut buf = BytesMut::new();
        header().encode(&mut buf);
        buf[5] = 2; // version byte
        assert_eq!(
            FlowHeader::decode(&mut buf),
            Err(WireError::InvalidValue {
                field: "flow_header.version",
                value: 2
            })
        );
        let mut h = header();
        h.routing_key = String::new();
        let mut buf = BytesMut::new();
        h.encode(&mut buf);
        assert!(FlowHeader::decode(&mut buf).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut a = BytesMut::from(&data[..]);
            let _ = FlowHeader::decode(&mut a);
            let mut b = BytesMut::from(&data[..]);
            let _ = FlowStatusFrame::decode(&mut b);
        }
    }
}
