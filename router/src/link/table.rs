//! The router's table of links: the status operators see, and the handles of links that are
//! up (for opening streams and for closing them on revocation).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use skiff_certs::SiteId;
use tokio::sync::watch;

use super::driver::LinkCloser;
use super::mux::MuxConnection;
use super::{LinkState, LinkStatus, Transport};

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
}

/// Links by an internal id (inbound link names need not be unique).
pub(crate) struct LinkTable {
    inner: Mutex<(u64, BTreeMap<u64, Entry>)>,
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

    pub(crate) fn insert(&self, status: LinkStatus) -> EntryId {
        let mut g = self.inner.lock().unwrap();
        g.0 += 1;
        let id = g.0;
        g.1.insert(id, Entry { status, up: None });
        drop(g);
        self.changed();
        id
    }

    pub(crate) fn remove(&self, id: EntryId) {
        self.inner.lock().unwrap().1.remove(&id);
        self.changed();
    }

    /// Sets the state; `since` moves only when the kind of state changes (a new error text
    /// while connecting keeps the time the link went down).
    pub(crate) fn set_state(&self, id: EntryId, state: LinkState) {
        let mut g = self.inner.lock().unwrap();
        if let Some(e) = g.1.get_mut(&id) {
            if std::mem::discriminant(&e.status.state) != std::mem::discriminant(&state) {
                e.status.since = now_rfc3339();
            }
            e.status.state = state;
            if !matches!(e.status.state, LinkState::Up) {
                e.up = None;
            }
        }
        drop(g);
        self.changed();
    }

    /// Records the endpoint being tried or used.
    pub(crate) fn set_endpoint(&self, id: EntryId, endpoint: Option<String>) {
        let mut g = self.inner.lock().unwrap();
        if let Some(e) = g.1.get_mut(&id) {
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
        if let Some(e) = g.1.get_mut(&id) {
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
        let mut out: Vec<LinkStatus> = g.1.values().map(|e| e.status.clone()).collect();
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
        let mut out: Vec<(LinkStatus, UpLink)> =
            g.1.values()
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
        g.1.values()
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
