//! Which keys served elsewhere keep a listener and a Service here: every key a reachable site
//! serves now, and for a while ([`DEFAULT_KEY_HOLD`]) the keys of a site that became
//! unreachable (it restarts, a link flaps) and the keys of the Services found at start (before
//! the links are up). Deleting a Service costs its clients their DNS name and ClusterIP, so a
//! key goes at once only when a site that is reachable stops serving it.
//!
//! Pure: the loop feeds it the router's view and the time.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use skiff_certs::SiteId;

use super::desired::RemoteKey;

/// How long a key of an unreachable site, or of a Service found at start, is kept.
pub const DEFAULT_KEY_HOLD: Duration = Duration::from_secs(120);

/// Keys seen, by key and serving site (`None`: found at start, site unknown).
#[derive(Debug, Clone)]
pub struct KeyHold {
    seen: BTreeMap<(String, Option<SiteId>), (RemoteKey, Instant)>,
    hold: Duration,
}

impl KeyHold {
    /// An empty hold keeping keys for `hold`.
    pub fn new(hold: Duration) -> Self {
        KeyHold {
            seen: BTreeMap::new(),
            hold,
        }
    }

    /// Keys whose Services exist at start: kept until a site serves them or `hold` passes.
    pub fn seed(&mut self, keys: impl IntoIterator<Item = RemoteKey>, now: Instant) {
        for k in keys {
            self.seen.insert((k.key.clone(), None), (k, now));
        }
    }

    /// Takes the router's view (`live`: keys of reachable sites; `reachable`: those sites)
    /// and gives the keys to serve, sorted by key.
    pub fn update(
        &mut self,
        live: &[(SiteId, RemoteKey)],
        reachable: &BTreeSet<SiteId>,
        now: Instant,
    ) -> Vec<RemoteKey> {
        let live_set: BTreeSet<(&str, SiteId)> =
            live.iter().map(|(s, k)| (k.key.as_str(), *s)).collect();
        let live_keys: BTreeSet<&str> = live.iter().map(|(_, k)| k.key.as_str()).collect();
        let hold = self.hold;
        self.seen.retain(|(key, site), (_, at)| match site {
            // Withdrawn by a site we can reach: gone now.
            Some(s) if reachable.contains(s) => live_set.contains(&(key.as_str(), *s)),
            // A seed is replaced by a site that serves the key.
            None if live_keys.contains(key.as_str()) => false,
            _ => now.duration_since(*at) < hold,
        });
        for (site, k) in live {
            self.seen
                .insert((k.key.clone(), Some(*site)), (k.clone(), now));
        }
        let mut out: BTreeMap<&str, &RemoteKey> = BTreeMap::new();
        for ((key, _), (k, _)) in &self.seen {
            out.entry(key.as_str())
                .and_modify(|cur| {
                    if k.port < cur.port {
                        *cur = k
                    }
                })
                .or_insert(k);
        }
        out.into_values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rk(key: &str, port: u16) -> RemoteKey {
        RemoteKey {
            key: key.into(),
            port,
            protocol: "tcp".into(),
        }
    }

    fn keys(v: &[RemoteKey]) -> Vec<&str> {
        v.iter().map(|k| k.key.as_str()).collect()
    }

    #[test]
    fn a_key_withdrawn_by_a_reachable_site_goes_at_once() {
        let (east, t0) = (SiteId::random(), Instant::now());
        let mut h = KeyHold::new(DEFAULT_KEY_HOLD);
        let up = BTreeSet::from([east]);
        assert_eq!(
            keys(&h.update(&[(east, rk("backend", 8080))], &up, t0)),
            ["backend"]
        );
        assert!(h.update(&[], &up, t0 + Duration::from_secs(1)).is_empty());
    }

    #[test]
    fn keys_of_an_unreachable_site_are_held_then_dropped() {
        let (east, t0) = (SiteId::random(), Instant::now());
        let mut h = KeyHold::new(Duration::from_secs(120));
        h.update(&[(east, rk("backend", 8080))], &BTreeSet::from([east]), t0);
        let gone = BTreeSet::new();
        let t = t0 + Duration::from_secs(60);
        assert_eq!(
            keys(&h.update(&[], &gone, t)),
            ["backend"],
            "a restart of east"
        );
        // East is back and serves it again: kept without a gap.
        let back = h.update(&[(east, rk("backend", 8080))], &BTreeSet::from([east]), t);
        assert_eq!(keys(&back), ["backend"]);
        // Gone for longer than the hold: dropped.
        let late = t + Duration::from_secs(121);
        assert!(h.update(&[], &gone, late).is_empty());
    }

    #[test]
    fn services_found_at_start_are_kept_until_the_network_is_known() {
        let (east, t0) = (SiteId::random(), Instant::now());
        let mut h = KeyHold::new(Duration::from_secs(120));
        h.seed([rk("backend", 8080), rk("old", 80)], t0);
        // Links not up yet: both kept, with their ports.
        let v = h.update(&[], &BTreeSet::new(), t0 + Duration::from_secs(2));
        assert_eq!(keys(&v), ["backend", "old"]);
        assert_eq!(v[0].port, 8080);
        // East serves backend: the seed is replaced; "old" waits out its hold.
        let up = BTreeSet::from([east]);
        let t = t0 + Duration::from_secs(5);
        assert_eq!(
            keys(&h.update(&[(east, rk("backend", 8080))], &up, t)),
            ["backend", "old"]
        );
        let late = t0 + Duration::from_secs(121);
        assert_eq!(
            keys(&h.update(&[(east, rk("backend", 8080))], &up, late)),
            ["backend"]
        );
    }

    #[test]
    fn two_sites_serving_a_key_give_one_entry_with_the_lowest_port() {
        let (a, b, t0) = (SiteId::random(), SiteId::random(), Instant::now());
        let mut h = KeyHold::new(DEFAULT_KEY_HOLD);
        let v = h.update(
            &[(a, rk("db", 5433)), (b, rk("db", 5432))],
            &BTreeSet::from([a, b]),
            t0,
        );
        assert_eq!(v, vec![rk("db", 5432)]);
        // One of them withdraws: still served by the other.
        let v = h.update(&[(a, rk("db", 5433))], &BTreeSet::from([a, b]), t0);
        assert_eq!(v, vec![rk("db", 5433)]);
    }
}
