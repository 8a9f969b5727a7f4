//! [`SiteId`]: a site's random 128-bit identity, shown as 32 lowercase hex characters.
//!
//! It appears in certificates twice: as the URI SAN `skiff://site/<hex>` (the identity peers
//! check) and as the DNS SAN `<hex>.site.skiff.invalid` (the TLS server name dialers use, so
//! that NAT, port forwards and load balancers never matter).

use std::fmt;
use std::str::FromStr;

use ring::rand::{SecureRandom, SystemRandom};

use crate::CertError;
use crate::encode::{hex, hex_digit};

/// Prefix of a site URI.
pub(crate) const URI_PREFIX: &str = "skiff://site/";
/// Suffix of a site's TLS server name.
const SERVER_NAME_SUFFIX: &str = ".site.skiff.invalid";

/// A site's identity: 16 random bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SiteId([u8; 16]);

impl SiteId {
    /// A fresh random id from the system's secure random number generator.
    ///
    /// # Panics
    ///
    /// If the operating system's random number generator fails, which `ring` treats as fatal
    /// everywhere else too.
    pub fn random() -> Self {
        let mut b = [0u8; 16];
        SystemRandom::new()
            .fill(&mut b)
            .expect("the system random number generator failed");
        SiteId(b)
    }

    /// The id with these bytes.
    pub fn from_bytes(b: [u8; 16]) -> Self {
        SiteId(b)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// The URI SAN form: `skiff://site/<32 lowercase hex>`.
    pub fn uri(&self) -> String {
        format!("{URI_PREFIX}{self}")
    }

    /// The TLS server name: `<32 hex>.site.skiff.invalid`. Router certificates carry it as a
    /// DNS SAN; dialers use it as the `ServerName`, whatever address they dial.
    pub fn server_name(&self) -> String {
        format!("{self}{SERVER_NAME_SUFFIX}")
    }

    /// Parses the URI SAN form `skiff://site/<32 hex>`.
    pub fn from_uri(s: &str) -> Result<Self, CertError> {
        let Some(rest) = s.strip_prefix(URI_PREFIX) else {
            return Err(CertError::input(
                "site URI",
                format!("{s:?} does not start with {URI_PREFIX:?}"),
            ));
        };
        rest.parse()
    }
}

impl fmt::Display for SiteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl fmt::Debug for SiteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for SiteId {
    type Err = CertError;

    /// Accepts exactly 32 hex characters (either case).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let count = s.chars().count();
        if count != 32 {
            return Err(CertError::input(
                "site id",
                format!("expected 32 hexadecimal characters, got {count} characters"),
            ));
        }
        if let Some((i, c)) = s.chars().enumerate().find(|(_, c)| !c.is_ascii_hexdigit()) {
            return Err(CertError::input(
                "site id",
                format!("{c:?} at position {} is not a hexadecimal digit", i + 1),
            ));
        }
        // All 32 characters are ASCII hex digits now.
        let bytes = s.as_bytes();
        let mut out = [0u8; 16];
        for (i, pair) in bytes.chunks(2).enumerate() {
            let hi = hex_digit(pair[0]).unwrap_or(0);
            let lo = hex_digit(pair[1]).unwrap_or(0);
            out[i] = (hi << 4) | lo;
        }
        Ok(SiteId(out))
    }
}

impl serde::Serialize for SiteId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for SiteId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_forms_roundtrip() {
        let id = SiteId::from_bytes([
            0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0, 1, 2, 3, 4, 5, 6, 0xff,
        ]);
        assert_eq!(id.to_string(), "0123456789abcdef00010203040506ff");
        assert_eq!(format!("{id:?}"), id.to_string());
        assert_eq!(id.uri(), "skiff://site/0123456789abcdef00010203040506ff");
        assert_eq!(
            id.server_name(),
            "0123456789abcdef00010203040506ff.site.skiff.invalid"
        );
        assert_eq!(SiteId::from_uri(&id.uri()).unwrap(), id);
        assert_eq!(id.to_string().parse::<SiteId>().unwrap(), id);
        assert_eq!(
            "0123456789ABCDEF00010203040506FF"
                .parse::<SiteId>()
                .unwrap(),
            id
        );
    }

    #[test]
    fn random_ids_differ() {
        assert_ne!(SiteId::random(), SiteId::random());
    }

    #[test]
    fn malformed_ids_say_what_is_wrong() {
        let e = "abc".parse::<SiteId>().unwrap_err().to_string();
        assert!(e.contains("32 hexadecimal characters, got 3"), "{e}");
        let e = "0123456789abcdef00010203040506fg"
            .parse::<SiteId>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("'g' at position 32"), "{e}");
        let e = "ééééééééééééééee"
            .parse::<SiteId>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("got 16 characters"), "{e}");
        let e = "é".repeat(32).parse::<SiteId>().unwrap_err().to_string();
        assert!(e.contains("'é' at position 1"), "{e}");
        let e = SiteId::from_uri("https://x").unwrap_err().to_string();
        assert!(e.contains("skiff://site/"), "{e}");
    }
}
