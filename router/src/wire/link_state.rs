//! The link-state frame ([`ControlFrame::LinkState`](super::ControlFrame::LinkState)): one
//! router's [`Advertisement`], flooded over control streams.
//!
//! Payload, all integers big-endian:
//!
//! ```text
//! origin [16] | site_name: u16 len | UTF-8 (<= 1024 bytes) | mode u8 | seq u64
//! | link_count u16 | link_count x (peer [16] | cost u32)
//! | key_count u16  | key_count  x (key: u16 len | ASCII (1..=253) | connectors u32 | protocol u8 | port u16)
//! ```
//!
//! # Limits
//!
//! A frame holds at most [`MAX_LINKS_PER_AD`] links and [`MAX_KEYS_PER_AD`] keys, and the
//! whole payload must fit [`MAX_FRAME_LEN`] (64 KiB). A link takes 20
//! bytes and a key 9 bytes plus its length, after at most 1 055 bytes of fixed fields. So
//! 1 024 links leave room for 1 024 keys of up to 33 characters, or 167 keys of the longest
//! (253 characters). [`Advertisement::encoded_len`] says whether an advertisement fits;
//! `router::routing` never originates one that does not. Should one reach the encoder anyway,
//! it is cut deterministically: links past the limit are dropped from the end, then keys from
//! the end until the rest fits.
//!
//! The decoder checks every count against the bytes that remain before it allocates.

use bytes::{Buf, BufMut, BytesMut};
use skiff_certs::SiteId;

use super::control::{get_text, truncate};
use super::{
    MAX_FRAME_LEN, WireError, expect_end, get_bytes, get_string, get_u8, get_u16, get_u64,
};
use crate::routing::{Advertisement, KeyAd, Protocol, RoutingKey};

/// Most links one advertisement carries.
pub const MAX_LINKS_PER_AD: usize = 1024;
/// Most routing keys one advertisement carries (fewer when keys are long: see the module docs).
pub const MAX_KEYS_PER_AD: usize = 1024;

const LINK_LEN: usize = 16 + 4;
const KEY_FIXED_LEN: usize = 2 + 4 + 1 + 2;
const MIN_KEY_LEN: usize = KEY_FIXED_LEN + 1;

fn get_u32(buf: &mut impl Buf, field: &'static str) -> Result<u32, WireError> {
    if buf.remaining() < 4 {
        return Err(WireError::Truncated(field));
    }
    Ok(buf.get_u32())
}

fn fixed_len(ad: &Advertisement) -> usize {
    16 + 2 + truncate(&ad.site_name).len() + 1 + 8 + 2 + 2
}

fn key_len(k: &KeyAd) -> usize {
    KEY_FIXED_LEN + k.key.as_str().len()
}

/// How many links and keys of `ad` the encoder keeps (all of them when it fits).
fn kept(ad: &Advertisement) -> (usize, usize) {
    let links = ad.links.len().min(MAX_LINKS_PER_AD);
    let mut used = fixed_len(ad) + links * LINK_LEN;
    let mut keys = 0;
    for k in ad.keys.iter().take(MAX_KEYS_PER_AD) {
        if used + key_len(k) > MAX_FRAME_LEN {
            break;
        }
        used += key_len(k);
        keys += 1;
    }
    (links, keys)
}

impl Advertisement {
    /// Payload length of this advertisement's link-state frame if nothing had to be cut, and
    /// whether it fits (at most [`MAX_LINKS_PER_AD`] links, [`MAX_KEYS_PER_AD`] keys and
    /// [`MAX_FRAME_LEN`] bytes).
    pub fn encoded_len(&self) -> (usize, bool) {
        let len = fixed_len(self)
            + self.links.len() * LINK_LEN
            + self.keys.iter().map(key_len).sum::<usize>();
        let fits = len <= MAX_FRAME_LEN
            && self.links.len() <= MAX_LINKS_PER_AD
            && self.keys.len() <= MAX_KEYS_PER_AD;
        (len, fits)
    }
}

/// Appends the payload of `ad`, cut as the module docs say if it does not fit.
pub(super) fn encode(ad: &Advertisement, p: &mut BytesMut) {
    let (links, keys) = kept(ad);
    p.put_slice(ad.origin.as_bytes());
    super::put_string(p, truncate(&ad.site_name));
    p.put_u8(ad.mode.to_wire());
    p.put_u64(ad.seq);
    p.put_u16(links as u16);
    for (peer, cost) in &ad.links[..links] {
        p.put_slice(peer.as_bytes());
        p.put_u32(*cost);
    }
    p.put_u16(keys as u16);
    for k in &ad.keys[..keys] {
        super::put_string(p, k.key.as_str());
        p.put_u32(k.connectors);
        p.put_u8(k.protocol.to_wire());
        p.put_u16(k.port);
    }
    debug_assert!(p.len() <= MAX_FRAME_LEN);
}

/// Highest sequence number an advertisement may carry.
pub const MAX_SEQ: u64 = u64::MAX / 2;

/// Decodes a whole link-state payload.
pub(super) fn decode(p: &mut BytesMut) -> Result<Advertisement, WireError> {
    let origin = SiteId::from_bytes(get_bytes::<16>(p, "origin")?);
    let site_name = get_text(p, "site_name")?;
    let mode = super::RouterMode::from_wire(get_u8(p, "mode")?)?;
    let seq = get_u64(p, "seq")?;
    // A router counts up from 1 by one per change or refresh (every 30 s): half of u64 is
    // never reached honestly, and refusing the rest keeps `seq + 1` from wrapping anywhere.
    if seq > MAX_SEQ {
        return Err(WireError::InvalidValue {
            field: "seq",
            value: seq,
        });
    }

    let link_count = get_u16(p, "link_count")? as usize;
    if link_count > MAX_LINKS_PER_AD {
        return Err(WireError::InvalidValue {
            field: "link_count",
            value: link_count as u64,
        });
    }
    if link_count * LINK_LEN > p.remaining() {
        return Err(WireError::Truncated("links"));
    }
    let mut links = Vec::with_capacity(link_count);
    for _ in 0..link_count {
        let peer = SiteId::from_bytes(get_bytes::<16>(p, "link.peer")?);
        let cost = get_u32(p, "link.cost")?;
        links.push((peer, cost));
    }

    let key_count = get_u16(p, "key_count")? as usize;
    if key_count > MAX_KEYS_PER_AD {
        return Err(WireError::InvalidValue {
            field: "key_count",
            value: key_count as u64,
        });
    }
    if key_count * MIN_KEY_LEN > p.remaining() {
        return Err(WireError::Truncated("keys"));
    }
    let mut keys = Vec::with_capacity(key_count);
    for _ in 0..key_count {
        let raw = get_string(p, "key.key")?;
        let raw_len = raw.len() as u64;
        let key = RoutingKey::try_from(raw).map_err(|_| WireError::InvalidValue {
            field: "key.key (length)",
            value: raw_len,
        })?;
        let connectors = get_u32(p, "key.connectors")?;
        let proto = get_u8(p, "key.protocol")?;
        let protocol = Protocol::from_wire(proto).ok_or(WireError::InvalidValue {
            field: "key.protocol",
            value: proto.into(),
        })?;
        let port = get_u16(p, "key.port")?;
        keys.push(KeyAd {
            key,
            connectors,
            protocol,
            port,
        });
    }
    expect_end(p)?;
    Ok(Advertisement {
        origin,
        site_name,
        mode,
        seq,
        links,
        keys,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{ControlFrame, MAX_TEXT_LEN, RouterMode, put_frame};
    use proptest::prelude::*;

    fn id(n: u8) -> SiteId {
        SiteId::from_bytes([n; 16])
    }

    fn key(s: &str) -> RoutingKey {
        s.parse().unwrap()
    }

    #[test]
    fn a_sequence_number_past_the_limit_is_refused() {
        let mut ad = sample();
        ad.seq = MAX_SEQ + 1;
        let mut buf = BytesMut::new();
        ControlFrame::LinkState(ad).encode(&mut buf);
        let err = ControlFrame::decode(&mut buf).unwrap_err();
        assert!(
            matches!(err, WireError::InvalidValue { field: "seq", .. }),
            "{err:?}"
        );
    }

    fn sample() -> Advertisement {
        Advertisement {
            origin: id(1),
            site_name: "west-é".into(),
            mode: RouterMode::Edge,
            seq: MAX_SEQ,
            links: vec![(id(2), 1), (id(3), u32::MAX)],
            keys: vec![
                KeyAd {
                    key: key("backend"),
                    connectors: 3,
                    protocol: Protocol::Tcp,
                    port: 8080,
                },
                KeyAd {
                    key: key(&"z".repeat(253)),
                    connectors: 0,
                    protocol: Protocol::Http2,
                    port: 0,
                },
            ],
        }
    }

    fn roundtrip(ad: Advertisement) {
        let frame = ControlFrame::LinkState(ad);
        let mut buf = BytesMut::new();
        frame.encode(&mut buf);
        let total = buf.len();
        for cut in [0, 1, 4, 5, total / 2, total - 1] {
            let mut part = BytesMut::from(&buf[..cut]);
            assert_eq!(ControlFrame::decode(&mut part).unwrap(), None, "cut {cut}");
        }
        assert_eq!(ControlFrame::decode(&mut buf).unwrap(), Some(frame));
        assert!(buf.is_empty());
    }

    #[test]
    fn link_state_roundtrips() {
        roundtrip(sample());
        roundtrip(Advertisement {
            links: vec![],
            keys: vec![],
            site_name: String::new(),
            ..sample()
        });
    }

    #[test]
    fn largest_fitting_ad_roundtrips_and_says_it_fits() {
        let ad = Advertisement {
            site_name: "n".repeat(MAX_TEXT_LEN),
            links: (0..MAX_LINKS_PER_AD)
                .map(|i| (SiteId::from_bytes([(i % 251) as u8; 16]), i as u32))
                .collect(),
            keys: (0..MAX_KEYS_PER_AD)
                .map(|i| KeyAd {
                    key: key(&format!("{i:0>33}")),
                    connectors: 1,
                    protocol: Protocol::Tcp,
                    port: 1,
                })
                .collect(),
            ..sample()
        };
        let (len, fits) = ad.encoded_len();
        assert!(fits, "{len}");
        roundtrip(ad);
    }

    #[test]
    fn oversize_ad_is_cut_deterministically_from_the_end() {
        let ad = Advertisement {
            site_name: "n".repeat(MAX_TEXT_LEN),
            links: (0..MAX_LINKS_PER_AD + 5)
                .map(|i| (SiteId::from_bytes([(i % 251) as u8; 16]), i as u32))
                .collect(),
            keys: (0..400)
                .map(|i| KeyAd {
                    key: key(&format!("{i:0>253}")),
                    connectors: 1,
                    protocol: Protocol::Tcp,
                    port: 1,
                })
                .collect(),
            ..sample()
        };
        assert!(!ad.encoded_len().1);
        let mut buf = BytesMut::new();
        ControlFrame::LinkState(ad.clone()).encode(&mut buf);
        assert!(buf.len() <= MAX_FRAME_LEN + crate::wire::FRAME_HEADER_LEN);
        let Some(ControlFrame::LinkState(got)) = ControlFrame::decode(&mut buf).unwrap() else {
            panic!("not a link-state frame");
        };
        assert_eq!(got.links[..], ad.links[..MAX_LINKS_PER_AD]);
        // 64 KiB - longest fixed fields - 1024 links leaves room for 167 keys of 253 characters.
        assert_eq!(got.keys.len(), 167);
        assert_eq!(got.keys[..], ad.keys[..167]);
        assert!(got.encoded_len().1);
    }

    #[test]
    fn counts_that_cannot_fit_are_rejected_before_allocating() {
        let mut p = BytesMut::new();
        p.put_slice(&[1; 16]);
        p.put_u16(0);
        p.put_u8(0);
        p.put_u64(1);
        let head = p.clone();
        // 1000 links declared, none present.
        p.put_u16(1000);
        let mut buf = BytesMut::new();
        put_frame(&mut buf, 0x06, &p);
        assert_eq!(
            ControlFrame::decode(&mut buf),
            Err(WireError::Truncated("links"))
        );
        // Over the per-ad cap.
        let mut p = head.clone();
        p.put_u16((MAX_LINKS_PER_AD + 1) as u16);
        let mut buf = BytesMut::new();
        put_frame(&mut buf, 0x06, &p);
        assert!(matches!(
            ControlFrame::decode(&mut buf),
            Err(WireError::InvalidValue {
                field: "link_count",
                ..
            })
        ));
        // Keys declared but not present.
        let mut p = head.clone();
        p.put_u16(0);
        p.put_u16(500);
        p.put_slice(&[0; 100]);
        let mut buf = BytesMut::new();
        put_frame(&mut buf, 0x06, &p);
        assert_eq!(
            ControlFrame::decode(&mut buf),
            Err(WireError::Truncated("keys"))
        );
    }

    #[test]
    fn invalid_key_and_protocol_are_rejected() {
        let encode_with = |k: &str, proto: u8| {
            let mut p = BytesMut::new();
            p.put_slice(&[1; 16]);
            p.put_u16(0);
            p.put_u8(0);
            p.put_u64(1);
            p.put_u16(0);
            p.put_u16(1);
            crate::wire::put_string(&mut p, k);
            p.put_u32(1);
            p.put_u8(proto);
            p.put_u16(80);
            let mut buf = BytesMut::new();
            put_frame(&mut buf, 0x06, &p);
            ControlFrame::decode(&mut buf)
        };
        assert!(matches!(encode_with("ok", 0), Ok(Some(_))));
        assert!(matches!(
            encode_with("Not-OK", 0),
            Err(WireError::InvalidValue { .. })
        ));
        // UDP (3) is known since protocol 1.2; the next value is not.
        assert!(matches!(encode_with("ok", 3), Ok(Some(_))));
        assert!(matches!(
            encode_with("ok", 4),
            Err(WireError::InvalidValue {
                field: "key.protocol",
                value: 4
            })
        ));
    }

    fn arb_key() -> impl Strategy<Value = KeyAd> {
        ("[a-z0-9._-]{1,40}", any::<u32>(), 0u8..4, any::<u16>()).prop_map(|(k, c, p, port)| {
            KeyAd {
                key: key(&k),
                connectors: c,
                protocol: Protocol::from_wire(p).unwrap(),
                port,
            }
        })
    }

    fn arb_ad() -> impl Strategy<Value = Advertisement> {
        (
            any::<[u8; 16]>(),
            ".{0,40}",
            any::<bool>(),
            0..=MAX_SEQ,
            proptest::collection::vec((any::<[u8; 16]>(), any::<u32>()), 0..50),
            proptest::collection::vec(arb_key(), 0..50),
        )
            .prop_map(|(o, name, edge, seq, links, keys)| Advertisement {
                origin: SiteId::from_bytes(o),
                site_name: name,
                mode: if edge {
                    RouterMode::Edge
                } else {
                    RouterMode::Interior
                },
                seq,
                links: links
                    .into_iter()
                    .map(|(p, c)| (SiteId::from_bytes(p), c))
                    .collect(),
                keys,
            })
    }

    proptest! {
        #[test]
        fn arbitrary_ads_roundtrip(ad in arb_ad()) {
            let frame = ControlFrame::LinkState(ad);
            let mut buf = BytesMut::new();
            frame.encode(&mut buf);
            prop_assert_eq!(ControlFrame::decode(&mut buf).unwrap(), Some(frame));
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn arbitrary_link_state_payloads_never_panic(
            data in proptest::collection::vec(any::<u8>(), 0..600)
        ) {
            let mut buf = BytesMut::new();
            put_frame(&mut buf, 0x06, &data);
            if let Ok(Some(frame)) = ControlFrame::decode(&mut buf) {
                let mut again = BytesMut::new();
                frame.encode(&mut again);
                prop_assert_eq!(&again[5..], &data[..]);
            }
        }
    }
}
