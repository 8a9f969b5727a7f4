//! Session affinity: keeping one client on one site while that site stays reachable, with
//! rendezvous (highest-random-weight) hashing, so that a site coming or going moves only the
//! clients it takes or had, and every ingress router picks the same site for a client.
//!
//! A listener's [`Affinity`] says what identifies a client: its IP address (`client-ip`, TCP
//! and UDP listeners), or an HTTP request header or cookie (`header:NAME`, `cookie:NAME`, HTTP
//! listeners). [`affinity_order`] then reorders the targets [`Topology::choose`] ranked: each
//! key's cheapest targets by the client's score at each site, best first; costlier targets
//! and other keys after, in their order, as the failover list. Outstanding flows, which the
//! ranking without affinity balances on, no longer matter: the point is to stay put.
//!
//! [`Topology::choose`]: super::Topology::choose

use std::fmt;

use skiff_certs::SiteId;

use super::Target;

/// What keeps a client on one site.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum Affinity {
    /// None: every connection (request, UDP flow) is balanced on its own.
    #[default]
    None,
    /// The client's IP address (TCP and UDP listeners).
    ClientIp,
    /// The value of this request header (HTTP listeners; lowercase name).
    Header(String),
    /// The value of this cookie (HTTP listeners).
    Cookie(String),
}

impl Affinity {
    /// Whether it applies to HTTP listeners only.
    pub fn is_http_only(&self) -> bool {
        matches!(self, Affinity::Header(_) | Affinity::Cookie(_))
    }
}

impl fmt::Display for Affinity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Affinity::None => f.write_str("none"),
            Affinity::ClientIp => f.write_str("client-ip"),
            Affinity::Header(h) => write!(f, "header:{h}"),
            Affinity::Cookie(c) => write!(f, "cookie:{c}"),
        }
    }
}

/// Characters of an HTTP token (RFC 9110 `tchar`): header and cookie names.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl std::str::FromStr for Affinity {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let expected = "expected none, client-ip, header:NAME or cookie:NAME";
        match s {
            "" | "none" => return Ok(Affinity::None),
            "client-ip" => return Ok(Affinity::ClientIp),
            _ => {}
        }
        let (kind, name) = s
            .split_once(':')
            .ok_or_else(|| format!("affinity {s:?}: {expected}"))?;
        if !is_token(name) {
            return Err(format!(
                "affinity {s:?}: {name:?} is not a header or cookie name (letters, digits and !#$%&'*+-.^_`|~, at most 128)"
            ));
        }
        match kind {
            "header" => Ok(Affinity::Header(name.to_ascii_lowercase())),
            "cookie" => Ok(Affinity::Cookie(name.to_owned())),
            _ => Err(format!("affinity {s:?}: {expected}")),
        }
    }
}

/// FNV-1a over `bytes`, then a final mix: a fixed hash (the same on every router and every
/// run, so every ingress picks the same site for a client). Not a defence against clients
/// that choose their values to crowd one site; they could as well pick their site's address.
fn fnv_mix(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    splitmix(h)
}

/// The splitmix64 finaliser: spreads every input bit over the output.
fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A client's hash from its IP address (an IPv4-mapped IPv6 address hashes as the IPv4 one).
pub fn client_ip_hash(ip: std::net::IpAddr) -> u64 {
    match ip.to_canonical() {
        std::net::IpAddr::V4(v4) => fnv_mix(4, &v4.octets()),
        std::net::IpAddr::V6(v6) => fnv_mix(6, &v6.octets()),
    }
}

/// A client's hash from a header or cookie value.
pub fn value_hash(value: &[u8]) -> u64 {
    fnv_mix(0, value)
}

/// The client's score for a key of weight `weight` (> 0) of a weighted listener: the highest
/// wins (weighted rendezvous hashing: a key is picked with probability weight / sum of
/// weights, and a key coming or going moves only the clients it takes or had).
pub(crate) fn key_score(client: u64, key: &super::RoutingKey, weight: u32) -> f64 {
    let x = splitmix(client ^ fnv_mix(2, key.as_str().as_bytes()));
    // A uniform number in (0, 1), never 0.
    let u = ((x >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -f64::from(weight) / u.ln()
}

/// The client's score at a site: the highest score wins (rendezvous hashing).
fn score(client: u64, site: SiteId) -> u64 {
    splitmix(client ^ fnv_mix(1, site.as_bytes()))
}

/// Reorders ranked targets for a client with hash `client`: within each run of targets of
/// one key, those at the run's lowest path cost come first, ordered by the client's score at
/// their site (best first); the rest of the run follows in its order. Runs stay in their
/// order (priority and weighted listeners fail over down the list as before).
pub fn affinity_order(targets: &mut [Target], client: u64) {
    let mut start = 0;
    while start < targets.len() {
        let key = targets[start].key.clone();
        let mut end = start + 1;
        while end < targets.len() && targets[end].key == key {
            end += 1;
        }
        let run = &mut targets[start..end];
        let cheapest = run.iter().map(|t| t.cost).min().unwrap_or(0);
        // Cheapest first (stable: the rest keep their ranking), then the cheapest by score.
        run.sort_by_key(|t| t.cost != cheapest);
        let n = run.iter().take_while(|t| t.cost == cheapest).count();
        run[..n].sort_by_key(|t| std::cmp::Reverse(score(client, t.router)));
        start = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::RoutingKey;

    fn site(n: u8) -> SiteId {
        SiteId::from_bytes([n; 16])
    }

    fn target(key: &str, n: u8, cost: u32) -> Target {
        Target {
            key: key.parse::<RoutingKey>().unwrap(),
            router: site(n),
            next_hop: Some(site(n)),
            cost,
            connectors: 1,
        }
    }

    fn first(targets: &[Target], client: u64) -> SiteId {
        let mut t = targets.to_vec();
        affinity_order(&mut t, client);
        t[0].router
    }

    #[test]
    fn parse_and_display_round_trip() {
        for s in ["none", "client-ip", "header:x-user", "cookie:SESSION"] {
            assert_eq!(s.parse::<Affinity>().unwrap().to_string(), s);
        }
        assert_eq!(
            "header:X-User".parse::<Affinity>().unwrap(),
            Affinity::Header("x-user".into())
        );
        for bad in ["ip", "header:", "cookie:a b", "hdr:x", "header:é"] {
            let e = bad.parse::<Affinity>().unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn a_client_keeps_its_site_whatever_the_ranking() {
        let sites = [target("k", 1, 1), target("k", 2, 1), target("k", 3, 1)];
        for c in 0..200u64 {
            let client = value_hash(&c.to_be_bytes());
            let mut reversed = sites.clone();
            reversed.reverse();
            assert_eq!(first(&sites, client), first(&reversed, client));
        }
    }

    #[test]
    fn clients_spread_and_a_lost_site_moves_only_its_own_clients() {
        let three = [target("k", 1, 1), target("k", 2, 1), target("k", 3, 1)];
        let two = [target("k", 1, 1), target("k", 3, 1)];
        let mut per_site = std::collections::HashMap::new();
        for c in 0..3000u64 {
            let client = value_hash(&c.to_be_bytes());
            let before = first(&three, client);
            *per_site.entry(before).or_insert(0) += 1;
            let after = first(&two, client);
            if before != site(2) {
                assert_eq!(before, after, "client {c} moved though its site stayed");
            }
        }
        for (s, n) in per_site {
            assert!((800..1200).contains(&n), "{s}: {n} of 3000 clients");
        }
    }

    #[test]
    fn cheaper_targets_and_earlier_keys_stay_first() {
        let t = [
            target("a", 5, 1),
            target("a", 4, 1),
            target("a", 3, 3),
            target("b", 1, 1),
        ];
        for c in 0..50u64 {
            let mut got = t.to_vec();
            affinity_order(&mut got, value_hash(&c.to_be_bytes()));
            let order: Vec<(String, u32)> = got
                .iter()
                .map(|t| (t.key.as_str().to_owned(), t.cost))
                .collect();
            assert_eq!(
                order,
                [
                    ("a".into(), 1),
                    ("a".into(), 1),
                    ("a".into(), 3),
                    ("b".into(), 1)
                ]
            );
        }
    }

    fn best_key(keys: &[(&'static str, u32)], client: u64) -> &'static str {
        let key = |s: &str| s.parse::<RoutingKey>().unwrap();
        keys.iter()
            .max_by(|a, b| {
                key_score(client, &key(a.0), a.1).total_cmp(&key_score(client, &key(b.0), b.1))
            })
            .unwrap()
            .0
    }

    #[test]
    fn weighted_keys_follow_their_weights_and_a_lost_key_moves_only_its_clients() {
        let three = [("a", 1), ("b", 1), ("c", 2)];
        let two = [("a", 1), ("b", 1)];
        let mut count = std::collections::HashMap::new();
        for c in 0..4000u64 {
            let client = value_hash(&c.to_be_bytes());
            let before = best_key(&three, client);
            *count.entry(before).or_insert(0) += 1;
            if before != "c" {
                assert_eq!(
                    best_key(&two, client),
                    before,
                    "client {c} moved between a and b"
                );
            }
        }
        assert!((800..1200).contains(&count["a"]), "{count:?}");
        assert!((1800..2200).contains(&count["c"]), "{count:?}");
    }

    #[test]
    fn ipv4_mapped_addresses_hash_as_ipv4() {
        let v4: std::net::IpAddr = "10.1.2.3".parse().unwrap();
        let mapped: std::net::IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(client_ip_hash(v4), client_ip_hash(mapped));
    }
}
