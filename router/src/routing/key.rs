//! What a router advertises: [`RoutingKey`], [`Protocol`], [`KeyAd`] and the whole
//! [`Advertisement`] it floods.

use std::fmt;
use std::str::FromStr;

use skiff_certs::SiteId;

use crate::wire::RouterMode;

/// Longest routing key, in characters (a DNS name's limit, so a key can name a Service).
pub const MAX_KEY_LEN: usize = 253;

/// The name of a service on the network (`backend`, `db.v2`): 1 to 253 characters of
/// `a-z`, `0-9`, `.`, `_` and `-`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoutingKey(String);

/// A string that is not a valid [`RoutingKey`]; the message states the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid routing key {key:?}: a routing key is 1 to {MAX_KEY_LEN} characters of a-z, 0-9, '.', '_' and '-'"
)]
pub struct InvalidRoutingKey {
    /// The rejected text (cut to 300 bytes so errors stay readable).
    pub key: String,
}

impl RoutingKey {
    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn is_valid(s: &str) -> bool {
        (1..=MAX_KEY_LEN).contains(&s.len())
            && s.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
            })
    }
}

impl TryFrom<String> for RoutingKey {
    type Error = InvalidRoutingKey;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        if RoutingKey::is_valid(&s) {
            Ok(RoutingKey(s))
        } else {
            let mut end = s.len().min(300);
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            Err(InvalidRoutingKey {
                key: s[..end].to_owned(),
            })
        }
    }
}

impl FromStr for RoutingKey {
    type Err = InvalidRoutingKey;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RoutingKey::try_from(s.to_owned())
    }
}

impl fmt::Display for RoutingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl serde::Serialize for RoutingKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for RoutingKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        RoutingKey::try_from(s).map_err(serde::de::Error::custom)
    }
}

/// How consumers talk to a key's connectors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Opaque TCP byte streams.
    Tcp,
    /// HTTP/1.1, routed per request.
    Http,
    /// HTTP/2, routed per request.
    Http2,
    /// UDP datagrams: one flow per client address (docs/udp.md).
    Udp,
}

/// Which listeners a connector's protocol can serve: a flow only goes to a connector of its
/// listener's family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    /// `tcp`: byte streams.
    Tcp,
    /// `http` and `http2`: requests.
    Http,
    /// `udp`: datagrams.
    Udp,
}

impl Protocol {
    /// Whether requests are routed one by one (`http`, `http2`), not connections.
    pub fn is_http(self) -> bool {
        matches!(self, Protocol::Http | Protocol::Http2)
    }

    /// Its family.
    pub fn family(self) -> Family {
        match self {
            Protocol::Tcp => Family::Tcp,
            Protocol::Http | Protocol::Http2 => Family::Http,
            Protocol::Udp => Family::Udp,
        }
    }

    pub(crate) fn to_wire(self) -> u8 {
        match self {
            Protocol::Tcp => 0,
            Protocol::Http => 1,
            Protocol::Http2 => 2,
            Protocol::Udp => 3,
        }
    }

    pub(crate) fn from_wire(v: u8) -> Option<Self> {
        match v {
            0 => Some(Protocol::Tcp),
            1 => Some(Protocol::Http),
            2 => Some(Protocol::Http2),
            3 => Some(Protocol::Udp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Http => "http",
            Protocol::Http2 => "http2",
            Protocol::Udp => "udp",
        })
    }
}

/// One routing key a router serves: how many connectors it has for it, their protocol and
/// the port consumers expect (so a Kubernetes site can create a matching Service).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct KeyAd {
    /// The service.
    pub key: RoutingKey,
    /// Connectors for the key at this router; 0 means none (no targets here).
    pub connectors: u32,
    /// The connectors' protocol.
    pub protocol: Protocol,
    /// The port consumers expect.
    pub port: u16,
}

/// A router's link-state advertisement: who it is, its links and its keys. Flooded to every
/// router; a higher `seq` from the same `origin` replaces a lower one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Advertisement {
    /// The router that made it.
    pub origin: SiteId,
    /// Its site name, for display.
    pub site_name: String,
    /// Interior or edge (edge routers are never transit hops).
    pub mode: RouterMode,
    /// Sequence number; higher wins.
    pub seq: u64,
    /// Its up links: neighbour and cost.
    pub links: Vec<(SiteId, u32)>,
    /// The keys it has connectors for.
    pub keys: Vec<KeyAd>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_rule() {
        for ok in ["a", "backend", "db.v2", "x_y-z.0", &"a".repeat(253)] {
            assert_eq!(ok.parse::<RoutingKey>().unwrap().as_str(), ok);
        }
        for bad in ["", "Backend", "a b", "é", "a/b", &"a".repeat(254)] {
            let err = bad.parse::<RoutingKey>().unwrap_err();
            assert!(err.to_string().contains("1 to 253 characters"), "{err}");
        }
    }

    #[test]
    fn key_serde_is_a_validated_string() {
        let k: RoutingKey = serde_json::from_str("\"db\"").unwrap();
        assert_eq!(serde_json::to_string(&k).unwrap(), "\"db\"");
        assert!(serde_json::from_str::<RoutingKey>("\"DB\"").is_err());
        assert_eq!(
            serde_json::to_string(&Protocol::Http2).unwrap(),
            "\"http2\""
        );
    }
}
