//! The router's table of links: the status operators see, and the handles of links that are
//! up (for opening streams and for closing them on revocation).
//!
//! Byte counts, `ups` and round-trip samples are cumulative per link as `/metrics` names it
//! ([`LinkStatus::metric_key`]: name, direction and the peer label of the configuration or of
//! the hello at accept): a connection's figures are folded into its entry when it goes down,
//! and a removed entry's totals pass to a live entry with the same key (two sites of one
//! name, a peer's new connection), or wait for the next one (an outbound link restarted by
//! a changed link file, a peer that dials again). So what `/metrics` sums per key never
//! decreases while the process lives.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use skiff_certs::SiteId;
use tokio::sync::watch;

use super::driver::LinkCloser;
use super::mux::{MuxConnection, WireBytes};
use super::rtt::{RttHistogram, RttSamples};
use super::{Direction, LinkState, LinkStatus, Transport};

/// A link that is up.
#[derive(Clone)]
pub(crate) struct UpLink {
    pub(crate) peer: SiteId,
    pub(crate) conn: Arc<dyn MuxConnection>,
    pub(crate) closer: LinkCloser,
    /// The link protocol the peer said it speaks in its hello.
    pub(crate) version: crate::wire::ProtocolVersion,
}

struct Entry {
    status: LinkStatus,
    up: Option<UpLink>,
    /// Bytes of this entry's earlier connections (and of retired entries it took over).
    before: WireBytes,
    /// Round-trip samples, kept across reconnects.
    rtt: Arc<RttSamples>,
    /// Round-trip samples of retired entries it took over.
    rtt_before: RttHistogram,
}

impl Entry {
    /// The status with its live figures filled in.
    fn status(&self) -> LinkStatus {
        let mut s = self.status.clone();
        let now = self.before
            + self
                .up
                .as_ref()
                .map(|u| u.conn.wire_bytes())
                .unwrap_or_default();
        s.bytes_sent = now.sent;
        s.bytes_received = now.received;
        s.rtt_ms = self.up.as_ref().and_then(|u| {
            let rtt = u.conn.transport_rtt().or_else(|| self.rtt.last())?;
            Some((rtt.as_micros() as f64 / 1000.0).max(0.001))
        });
        s.rtt_samples = self.rtt_before.clone();
        s.rtt_samples.merge(&self.rtt.histogram());
        // Up until its close was requested; from then on `closing` (since the request),
        // while it lingers for the peer to hang up.
        if let Some((reason, since)) = self.up.as_ref().and_then(|u| u.closer.requested_with()) {
            s.state = LinkState::Closing { reason };
            s.since = since;
        }
        s
    }

    /// Takes over the totals of a removed entry with the same key.
    fn inherit(&mut self, r: &Retired) {
        self.before = self.before + r.bytes;
        self.status.ups += r.ups;
        self.rtt_before.merge(&r.rtt);
    }

    /// Folds the current connection's bytes into `before` and forgets it.
    fn retire_connection(&mut self) {
        if let Some(up) = self.up.take() {
            self.before = self.before + up.conn.wire_bytes();
        }
    }
}

/// Totals of removed entries, waiting for the next entry with the same key.
#[derive(Default, Clone)]
struct Retired {
    bytes: WireBytes,
    ups: u64,
    rtt: RttHistogram,
}

impl Retired {
    fn add(&mut self, other: &Retired) {
        self.bytes = self.bytes + other.bytes;
        self.ups += other.ups;
        self.rtt.merge(&other.rtt);
    }
}

/// Most totals of removed links kept (one per link name and peer in practice).
const MAX_RETIRED: usize = 4096;

type RetiredKey = (String, Direction, String);

#[derive(Default)]
struct Inner {
    last_id: u64,
    entries: BTreeMap<u64, Entry>,
    retired: BTreeMap<RetiredKey, Retired>,
}

/// Links by an internal id (inbound link names need not be unique).
pub(crate) struct LinkTable {
    inner: Mutex<Inner>,
    /// Bumped on every change, for [`LinkTable::subscribe`].
    changes: watch::Sender<u64>,
}

impl Default for LinkTable {
    fn default() -> Self {
        LinkTable {
            inner: Mutex::default(),
            changes: watch::Sender::new(0),
        }
    }
}

/// Key of one entry.
pub(crate) type EntryId = u64;

impl LinkTable {
    /// A receiver that sees a new value after every change of the table.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    /// Adds an entry; it takes over the totals left by removed entries with its key.
    pub(crate) fn insert(&self, status: LinkStatus) -> EntryId {
        let mut g = self.inner.lock().unwrap();
        g.last_id += 1;
        let id = g.last_id;
        let retired = g.retired.remove(&status.metric_key());
        let mut entry = Entry {
            status,
            up: None,
            before: WireBytes::default(),
            rtt: Arc::default(),
            rtt_before: RttHistogram::default(),
        };
        if let Some(r) = retired {
            entry.inherit(&r);
        }
        g.entries.insert(id, entry);
        drop(g);
        self.changed();
        id
    }

    /// Removes an entry. Its totals go to a live entry with the same key (the newest), or
    /// wait for the next one.
    pub(crate) fn remove(&self, id: EntryId) {
        let mut guard = self.inner.lock().unwrap();
        let g = &mut *guard;
        if let Some(mut gone) = g.entries.remove(&id) {
            gone.retire_connection();
            let key = gone.status.metric_key();
            let mut rtt = gone.rtt_before.clone();
            rtt.merge(&gone.rtt.histogram());
            let totals = Retired {
                bytes: gone.before,
                ups: gone.status.ups,
                rtt,
            };
            let heir = g
                .entries
                .values_mut()
                .rev()
                .find(|e| e.status.metric_key() == key);
            match heir {
                Some(heir) => heir.inherit(&totals),
                None if g.retired.len() < MAX_RETIRED || g.retired.contains_key(&key) => {
                    g.retired.entry(key).or_default().add(&totals);
                }
                None => {}
            }
        }
        drop(guard);
        self.changed();
    }

    /// How many times an entry's link came up.
    pub(crate) fn ups(&self, id: EntryId) -> u64 {
        let g = self.inner.lock().unwrap();
        g.entries.get(&id).map_or(0, |e| e.status.ups)
    }

    /// Another site's up inbound link named `name` (a site name two sites use), if any.
    pub(crate) fn inbound_name_taken(
        &self,
        name: &str,
        peer: skiff_certs::SiteId,
    ) -> Option<skiff_certs::SiteId> {
        let g = self.inner.lock().unwrap();
        g.entries.values().find_map(|e| {
            (e.status.direction == Direction::Inbound
                && e.status.name == name
                && e.up.is_some()
                && e.status.peer_site_id != Some(peer))
            .then_some(e.status.peer_site_id)
            .flatten()
        })
    }

    /// The round-trip samples of an entry, for its driver to record into.
    pub(crate) fn rtt_samples(&self, id: EntryId) -> Arc<RttSamples> {
        let g = self.inner.lock().unwrap();
        g.entries
            .get(&id)
            .map(|e| e.rtt.clone())
            .unwrap_or_default()
    }

    /// Sets the state; `since` moves only when the kind of state changes (a new error text
    /// while connecting keeps the time the link went down).
    pub(crate) fn set_state(&self, id: EntryId, state: LinkState) {
        let mut g = self.inner.lock().unwrap();
        if let Some(e) = g.entries.get_mut(&id) {
            if std::mem::discriminant(&e.status.state) != std::mem::discriminant(&state) {
                e.status.since = now_rfc3339();
            }
            e.status.state = state;
            if !matches!(e.status.state, LinkState::Up) {
                e.retire_connection();
            }
        }
        drop(g);
        self.changed();
    }

    /// Records the endpoint being tried or used.
    pub(crate) fn set_endpoint(&self, id: EntryId, endpoint: Option<String>) {
        let mut g = self.inner.lock().unwrap();
        if let Some(e) = g.entries.get_mut(&id) {
            e.status.endpoint = endpoint;
        }
        drop(g);
        self.changed();
    }

    /// Marks the link up on `transport` at `endpoint`.
    pub(crate) fn set_up(
        &self,
        id: EntryId,
        up: UpLink,
        peer_name: &str,
        transport: Transport,
        endpoint: &str,
    ) {
        let mut g = self.inner.lock().unwrap();
        if let Some(e) = g.entries.get_mut(&id) {
            e.retire_connection();
            // The previous connection's round trip is not this one's.
            e.rtt.forget_last();
            e.status.ups += 1;
            e.status.since = now_rfc3339();
            e.status.state = LinkState::Up;
            e.status.peer_site_id = Some(up.peer);
            e.status.peer_site_name = Some(peer_name.to_owned());
            e.status.transport = Some(transport);
            e.status.endpoint = Some(endpoint.to_owned());
            // A close request shows at once (`closing`) to those watching the table.
            up.closer.notify(self.changes.clone());
            e.up = Some(up);
        }
        drop(g);
        self.changed();
    }

    /// All links, sorted by name (then by direction).
    pub(crate) fn snapshot(&self) -> Vec<LinkStatus> {
        let g = self.inner.lock().unwrap();
        let mut out: Vec<LinkStatus> = g.entries.values().map(Entry::status).collect();
        out.sort_by(|a, b| {
            (&a.name, a.direction as u8, &a.since).cmp(&(&b.name, b.direction as u8, &b.since))
        });
        out
    }

    /// The up links to `peer`, cheapest first; among equally cheap ones the newest entry first
    /// (an inbound connection is a new entry; a dialer keeps its own across reconnects). A
    /// peer that restarted and dialed again is so reached over its new connection at once,
    /// not over its previous run's connection until that one is declared dead. Links being
    /// closed are left out.
    pub(crate) fn up_links(&self, peer: SiteId) -> Vec<(LinkStatus, UpLink)> {
        let g = self.inner.lock().unwrap();
        let mut out: Vec<(LinkStatus, UpLink)> = g
            .entries
            .values()
            .rev()
            .filter_map(|e| match &e.up {
                // A link whose close was requested (removed, changed, revoked, shutting
                // down) lingers until the peer hangs up: no new stream goes on it.
                Some(up) if up.peer == peer && !up.closer.is_requested() => {
                    Some((e.status.clone(), up.clone()))
                }
                _ => None,
            })
            .collect();
        // Stable: equal costs keep the newest-first order.
        out.sort_by_key(|(s, _)| s.cost);
        out
    }

    /// Closers of every up link, optionally only those to `peer`.
    pub(crate) fn closers(&self, peer: Option<SiteId>) -> Vec<LinkCloser> {
        let g = self.inner.lock().unwrap();
        g.entries
            .values()
            .filter_map(|e| e.up.as_ref())
            .filter(|up| peer.is_none_or(|p| up.peer == p))
            .map(|up| up.closer.clone())
            .collect()
    }
}

/// The current UTC time in RFC 3339 with milliseconds (`2026-11-25T14:49:38.120Z`): a link
/// that reconnects within the same second still shows a new `since`. Always three digits, so
/// the strings sort by time (the well-known format trims `.120` to `.12`, which sorts after
/// `.123`).
pub(crate) fn now_rfc3339() -> String {
    crate::flow::records::rfc3339(std::time::SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::mux::YamuxConnection;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn inbound(peer: SiteId, name: &str) -> LinkStatus {
        LinkStatus {
            name: format!("from-{name}"),
            direction: Direction::Inbound,
            peer_site_id: Some(peer),
            peer_site_name: Some(name.into()),
            transport: Some(Transport::Tls),
            endpoint: None,
            proxy: None,
            cost: 1,
            state: LinkState::Connecting { last_error: None },
            since: now_rfc3339(),
            bytes_sent: 0,
            bytes_received: 0,
            rtt_ms: None,
            ups: 0,
            rtt_samples: RttHistogram::default(),
            peer_label: name.into(),
        }
    }

    /// A real yamux connection over an in-memory pipe that has moved `n` bytes one way; the
    /// other end is returned too, to be kept alive.
    async fn connection(n: usize) -> (Arc<YamuxConnection>, Arc<YamuxConnection>) {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let dialer = Arc::new(YamuxConnection::start(a, true));
        let acceptor = Arc::new(YamuxConnection::start(b, false));
        let data = vec![7u8; n];
        let mut s = dialer.open_stream().await.unwrap();
        let (_, got) = tokio::join!(
            async {
                s.writer.write_all(&data).await.unwrap();
                s.writer.shutdown().await.unwrap();
            },
            async {
                let mut t = acceptor.accept_stream().await.unwrap();
                let mut got = Vec::new();
                t.reader.read_to_end(&mut got).await.unwrap();
                got
            }
        );
        assert_eq!(got.len(), n);
        (dialer, acceptor)
    }

    /// (bytes sent, ups, rtt samples) summed over the entries labelled like `/metrics` does.
    fn series(t: &LinkTable, name: &str) -> (u64, u64, u64) {
        t.snapshot()
            .iter()
            .filter(|l| l.name == name)
            .fold((0, 0, 0), |(b, u, r), l| {
                (b + l.bytes_sent, u + l.ups, r + l.rtt_samples.count())
            })
    }

    #[tokio::test]
    async fn two_sites_of_one_name_sum_to_a_series_that_never_decreases() {
        let t = LinkTable::default();
        let (one, two) = (SiteId::from_bytes([1; 16]), SiteId::from_bytes([2; 16]));
        let mut keep = Vec::new();
        let mut ids = Vec::new();
        for (peer, n) in [(one, 100_000), (two, 50_000)] {
            let id = t.insert(inbound(peer, "east"));
            let (conn, other) = connection(n).await;
            t.set_up(
                id,
                UpLink {
                    peer,
                    conn: conn.clone(),
                    closer: LinkCloser::default(),
                    version: crate::wire::PROTOCOL_VERSION,
                },
                "east",
                Transport::Tls,
                "127.0.0.1:1",
            );
            t.rtt_samples(id)
                .record(std::time::Duration::from_millis(1));
            keep.push((conn, other));
            ids.push(id);
        }
        let before = series(&t, "from-east");
        assert!(before.0 >= 150_000, "{before:?}");
        assert_eq!((before.1, before.2), (2, 2));
        // The first site goes away while the other stays: the summed series does not drop.
        t.remove(ids[0]);
        let after = series(&t, "from-east");
        assert_eq!(after, before, "one of two sites named east left");
        // The second goes too, and comes back: its new entry starts from both totals.
        t.remove(ids[1]);
        assert_eq!(series(&t, "from-east"), (0, 0, 0), "no entry, no series");
        let id = t.insert(inbound(two, "east"));
        let again = series(&t, "from-east");
        assert_eq!(again, before, "totals carried to the next entry");
        // Another name's entry takes nothing.
        t.insert(inbound(one, "north"));
        assert_eq!(series(&t, "from-north"), (0, 0, 0));
        t.remove(id);
    }

    #[tokio::test]
    async fn a_link_being_closed_is_offered_to_no_new_flow() {
        let t = LinkTable::default();
        let peer = SiteId::from_bytes([3; 16]);
        let mut keep = Vec::new();
        let mut closers = Vec::new();
        for _ in 0..2 {
            let id = t.insert(inbound(peer, "east"));
            let (conn, other) = connection(1).await;
            let closer = LinkCloser::default();
            t.set_up(
                id,
                UpLink {
                    peer,
                    conn: conn.clone(),
                    closer: closer.clone(),
                    version: crate::wire::PROTOCOL_VERSION,
                },
                "east",
                Transport::Tls,
                "127.0.0.1:1",
            );
            keep.push((conn, other));
            closers.push(closer);
        }
        let newest = |t: &LinkTable| t.up_links(peer).first().map(|(_, up)| up.conn.clone());
        let is = |c: Option<Arc<dyn MuxConnection>>, i: usize| {
            c.is_some_and(|c| Arc::ptr_eq(&c, &(keep[i].0.clone() as Arc<dyn MuxConnection>)))
        };
        assert_eq!(t.up_links(peer).len(), 2);
        assert!(is(newest(&t), 1), "the newest connection first");
        // The newest one is being closed (its file deleted): the other one carries new flows.
        closers[1].close("link removed");
        assert_eq!(t.up_links(peer).len(), 1);
        assert!(is(newest(&t), 0), "a closing link was offered");
        closers[0].close("link removed");
        assert!(t.up_links(peer).is_empty(), "a closing link was offered");
    }

    #[tokio::test]
    async fn a_link_being_closed_shows_closing_at_once_and_its_watchers_hear_of_it() {
        let t = LinkTable::default();
        let peer = SiteId::from_bytes([4; 16]);
        let id = t.insert(inbound(peer, "east"));
        let (conn, _other) = connection(1).await;
        let closer = LinkCloser::default();
        let up = UpLink {
            peer,
            conn: conn.clone(),
            closer: closer.clone(),
            version: crate::wire::PROTOCOL_VERSION,
        };
        t.set_up(id, up, "east", Transport::Tls, "127.0.0.1:1");
        let up_since = t.snapshot()[0].since.clone();
        // Three digits of milliseconds always, or `.96Z` would sort after `.962Z`.
        assert_eq!(
            up_since.len(),
            "2026-11-25T14:49:38.960Z".len(),
            "{up_since}"
        );
        assert_eq!(t.snapshot()[0].state, LinkState::Up);
        let mut changes = t.subscribe();
        changes.borrow_and_update();
        std::thread::sleep(std::time::Duration::from_millis(2));
        closer.close("link removed");
        closer.close("a second reason");
        assert!(changes.has_changed().unwrap(), "watchers were not told");
        let s = &t.snapshot()[0];
        assert_eq!(
            s.state,
            LinkState::Closing {
                reason: "link removed".into()
            }
        );
        assert!(s.since > up_since, "since {} not after {up_since}", s.since);
        // Still counted until the peer hangs up: its `ups` and bytes (one byte and yamux
        // framing) stay.
        assert_eq!(s.ups, 1);
        assert!(s.bytes_sent > 1, "{s:?}");
        let v = serde_json::to_value(s).unwrap();
        assert_eq!(
            (&v["status"], &v["reason"]),
            (&"closing".into(), &"link removed".into())
        );
    }

    #[tokio::test]
    async fn a_new_connection_has_no_round_trip_until_its_first_sample() {
        let t = LinkTable::default();
        let peer = SiteId::from_bytes([3; 16]);
        let id = t.insert(inbound(peer, "east"));
        let mut keep = Vec::new();
        for round in 0..2 {
            let (conn, other) = connection(10).await;
            t.set_up(
                id,
                UpLink {
                    peer,
                    conn: conn.clone(),
                    closer: LinkCloser::default(),
                    version: crate::wire::PROTOCOL_VERSION,
                },
                "east",
                Transport::Tls,
                "127.0.0.1:1",
            );
            let l = &t.snapshot()[0];
            assert_eq!(l.rtt_ms, None, "round {round}: {l:?}");
            t.rtt_samples(id)
                .record(std::time::Duration::from_millis(40));
            let l = &t.snapshot()[0];
            assert_eq!(l.rtt_ms, Some(40.0), "round {round}");
            assert_eq!(l.rtt_samples.count(), round + 1, "samples are kept");
            t.set_state(id, LinkState::Connecting { last_error: None });
            keep.push((conn, other));
        }
    }
}
