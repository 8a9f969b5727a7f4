//! The router's table of links: the status operators see, and the handles of links that are
//! up (for opening streams and for closing them on revocation).
//!
//! Byte counts and `ups` are cumulative per link: a connection's bytes are folded into its
//! entry when it goes down, and an inbound entry's totals pass, when it is removed, to the
//! next inbound entry of the same name and peer site (a live one, or the next to come), so
//! that what `/metrics` sums per link never decreases while the process lives.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use skiff_certs::SiteId;
use tokio::sync::watch;

use super::driver::LinkCloser;
use super::mux::{MuxConnection, WireBytes};
use super::rtt::RttSamples;
use super::{Direction, LinkState, LinkStatus, Transport};

/// A link that is up.
#[derive(Clone)]
pub(crate) struct UpLink {
    pub(crate) peer: SiteId,
    pub(crate) conn: Arc<dyn MuxConnection>,
    pub(crate) closer: LinkCloser,
}

struct Entry {
    status: LinkStatus,
    up: Option<UpLink>,
    /// Bytes of this entry's earlier connections (and of retired entries it took over).
    before: WireBytes,
    /// Round-trip samples, kept across reconnects.
    rtt: Arc<RttSamples>,
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
        s.rtt_samples = self.rtt.histogram();
        s
    }

    /// Folds the current connection's bytes into `before` and forgets it.
    fn retire_connection(&mut self) {
        if let Some(up) = self.up.take() {
            self.before = self.before + up.conn.wire_bytes();
        }
    }
}

/// Totals of removed inbound entries, waiting for the next entry of the same link.
#[derive(Default, Clone, Copy)]
struct Retired {
    bytes: WireBytes,
    ups: u64,
}

/// Most (name, peer) totals of removed inbound links kept (one per peer site in practice).
const MAX_RETIRED: usize = 4096;

type RetiredKey = (String, Option<skiff_certs::SiteId>);

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

    pub(crate) fn insert(&self, mut status: LinkStatus) -> EntryId {
        let mut g = self.inner.lock().unwrap();
        g.last_id += 1;
        let id = g.last_id;
        let mut before = WireBytes::default();
        if status.direction == Direction::Inbound
            && let Some(r) = g
                .retired
                .remove(&(status.name.clone(), status.peer_site_id))
        {
            before = r.bytes;
            status.ups += r.ups;
        }
        g.entries.insert(
            id,
            Entry {
                status,
                up: None,
                before,
                rtt: Arc::default(),
            },
        );
        drop(g);
        self.changed();
        id
    }

    /// Removes an entry. An inbound entry's totals go to a live inbound entry of the same
    /// name and peer, or wait for the next one.
    pub(crate) fn remove(&self, id: EntryId) {
        let mut guard = self.inner.lock().unwrap();
        let g = &mut *guard;
        if let Some(mut gone) = g.entries.remove(&id)
            && gone.status.direction == Direction::Inbound
        {
            gone.retire_connection();
            let key = (gone.status.name.clone(), gone.status.peer_site_id);
            let heir = g.entries.values_mut().rev().find(|e| {
                e.status.direction == Direction::Inbound
                    && (&e.status.name, e.status.peer_site_id) == (&key.0, key.1)
            });
            match heir {
                Some(heir) => {
                    heir.before = heir.before + gone.before;
                    heir.status.ups += gone.status.ups;
                }
                None if g.retired.len() < MAX_RETIRED || g.retired.contains_key(&key) => {
                    let r = g.retired.entry(key).or_default();
                    r.bytes = r.bytes + gone.before;
                    r.ups += gone.status.ups;
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
            e.status.ups += 1;
            e.status.since = now_rfc3339();
            e.status.state = LinkState::Up;
            e.status.peer_site_id = Some(up.peer);
            e.status.peer_site_name = Some(peer_name.to_owned());
            e.status.transport = Some(transport);
            e.status.endpoint = Some(endpoint.to_owned());
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
    /// not over its previous run's connection until that one is declared dead.
    pub(crate) fn up_links(&self, peer: SiteId) -> Vec<(LinkStatus, UpLink)> {
        let g = self.inner.lock().unwrap();
        let mut out: Vec<(LinkStatus, UpLink)> = g
            .entries
            .values()
            .rev()
            .filter_map(|e| match &e.up {
                Some(up) if up.peer == peer => Some((e.status.clone(), up.clone())),
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

/// The current UTC time in RFC 3339 with milliseconds (`2026-11-25T14:49:38.123Z`): a link
/// that reconnects within the same second still shows a new `since`.
pub(crate) fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    let now = now.replace_millisecond(now.millisecond()).unwrap_or(now);
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
