//! The router's table of links: the status operators see, and the handles of links that are
//! up (for opening streams and for closing them on revocation).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

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

    /// The up links to `peer`, cheapest first.
    pub(crate) fn up_links(&self, peer: SiteId) -> Vec<(LinkStatus, UpLink)> {
        let g = self.inner.lock().unwrap();
        let mut out: Vec<(LinkStatus, UpLink)> =
            g.1.values()
                .filter_map(|e| match &e.up {
                    Some(up) if up.peer == peer => Some((e.status.clone(), up.clone())),
                    _ => None,
                })
                .collect();
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

/// The current UTC time as `YYYY-MM-DDTHH:MM:SSZ`.
pub(crate) fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    rfc3339(secs)
}

fn rfc3339(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let rem = unix % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_800_000_000), "2027-01-15T08:00:00Z");
    }
}
