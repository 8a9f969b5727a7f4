//! Recent flow records: when a flow ends at this router (any role) it leaves one
//! [`FlowRecord`] in a bounded ring ([`RECENT_FLOWS`], newest last) with its key, ends, bytes,
//! duration, outcome and reason; it is counted in its key's statistics ([`super::stats`]); and
//! a failure an operator should act on is logged once, rate-limited per key.
//!
//! [`Flow`] follows one flow from its start to its end: [`Flow::connected`] when bytes may
//! move (it then shows among the active flows), [`Flow::fail`] or [`Flow::spliced`] for how
//! it ended; dropping it records it. A flow dropped without either (its task stopped) is
//! recorded as an error.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant, SystemTime};

use skiff_certs::SiteId;

use super::splice::{EndSide, SpliceEnd};
use super::stats::{KeyStats, MAX_KEYS, OTHER_KEY};
use super::{ActiveFlow, FlowRole, Flows};
use crate::wire::FlowStatusCode;

/// Ended flows kept for `GET /v1/flows`.
pub const RECENT_FLOWS: usize = 512;

/// Longest reason kept in a record, in bytes (cut at a character boundary, with `…`).
pub const MAX_REASON: usize = 256;

/// Log lines about failed flows: at most one per key per this interval; the next says how
/// many were suppressed.
pub const FLOW_LOG_EVERY: Duration = Duration::from_secs(1);

/// How a flow ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FlowOutcome {
    /// Both directions ended cleanly.
    Ok,
    /// No site could take it: no connector for the key, no path, or the egress's connectors
    /// were gone.
    NoRoute,
    /// The connector's backend refused the connection.
    ConnectRefused,
    /// The connector's backend did not accept in time.
    ConnectTimeout,
    /// A router refused it (policy, a bad header, an unsupported protocol).
    Denied,
    /// One end reset it (the client, the backend, or a router on the way).
    Reset,
    /// Any other failure (a lost link, no answer in time, the router stopping).
    Error,
}

impl FlowOutcome {
    /// Every outcome, in the order of [`FlowOutcome::index`].
    pub const ALL: [FlowOutcome; 7] = [
        FlowOutcome::Ok,
        FlowOutcome::NoRoute,
        FlowOutcome::ConnectRefused,
        FlowOutcome::ConnectTimeout,
        FlowOutcome::Denied,
        FlowOutcome::Reset,
        FlowOutcome::Error,
    ];

    /// Its word in JSON, labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            FlowOutcome::Ok => "ok",
            FlowOutcome::NoRoute => "no-route",
            FlowOutcome::ConnectRefused => "connect-refused",
            FlowOutcome::ConnectTimeout => "connect-timeout",
            FlowOutcome::Denied => "denied",
            FlowOutcome::Reset => "reset",
            FlowOutcome::Error => "error",
        }
    }

    pub(crate) fn index(self) -> usize {
        FlowOutcome::ALL
            .iter()
            .position(|o| *o == self)
            .unwrap_or(0)
    }

    /// The outcome an egress's status code means.
    pub(crate) fn of_code(code: FlowStatusCode) -> Self {
        match code {
            FlowStatusCode::Ok => FlowOutcome::Ok,
            FlowStatusCode::NoRoute => FlowOutcome::NoRoute,
            FlowStatusCode::ConnectRefused => FlowOutcome::ConnectRefused,
            FlowStatusCode::ConnectTimeout => FlowOutcome::ConnectTimeout,
            FlowStatusCode::Denied => FlowOutcome::Denied,
        }
    }
}

impl std::fmt::Display for FlowOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A site in a flow record.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FlowSite {
    /// Its site id.
    pub id: SiteId,
    /// Its name, when this router knows the site.
    pub name: Option<String>,
}

/// One ended flow, as `GET /v1/flows` shows it under `recent`.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FlowRecord {
    /// The flow id chosen by the origin (hex), the same at every router of the flow.
    pub id: String,
    /// The routing key.
    pub routing_key: String,
    /// The ingress router.
    pub origin: FlowSite,
    /// The egress router; `None` when no site was reached (no route).
    pub destination: Option<FlowSite>,
    /// What this router did in it.
    pub role: FlowRole,
    /// The client's address as the ingress saw it; at transit routers and the egress only
    /// when every router before them speaks link protocol 1.3 or later.
    pub client: Option<String>,
    /// The listener that accepted it, at the ingress.
    pub listener: Option<String>,
    /// The connector that reached the backend, at the egress (or an ingress with a local
    /// connector).
    pub connector: Option<String>,
    /// HTTP listeners (one record per client connection): the requests it made.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests: Option<u64>,
    /// HTTP listeners: of them, the ones answered by skiff (no backend's response).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_requests: Option<u64>,
    /// Bytes client to backend through this router.
    pub bytes_forward: u64,
    /// Bytes backend to client through this router.
    pub bytes_back: u64,
    /// When it started here (RFC 3339 UTC, milliseconds).
    pub started: String,
    /// How long it lasted here, in milliseconds.
    pub duration_ms: u64,
    /// How it ended.
    pub outcome: FlowOutcome,
    /// Why, unless it ended ok.
    pub reason: Option<String>,
}

/// An ended flow in the ring (site names are looked up when read).
#[derive(Debug)]
pub(crate) struct Ended {
    id: u64,
    key: Box<str>,
    origin: SiteId,
    destination: Option<SiteId>,
    role: FlowRole,
    client: Option<SocketAddr>,
    listener: Option<Arc<str>>,
    connector: Option<Arc<str>>,
    requests: Option<(u64, u64)>,
    forward: u64,
    back: u64,
    started: SystemTime,
    duration: Duration,
    outcome: FlowOutcome,
    reason: Option<Box<str>>,
}

/// `s` cut to at most [`MAX_REASON`] bytes.
pub(crate) fn cap(s: &str) -> Box<str> {
    if s.len() <= MAX_REASON {
        return s.into();
    }
    let mut end = MAX_REASON - '…'.len_utf8();
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end]).into()
}

/// RFC 3339 UTC with milliseconds, always three digits (so the strings sort by time).
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.format(&format).unwrap_or_default()
}

/// The recent ended flows, and the per-key log limits.
#[derive(Debug, Default)]
pub(crate) struct Recent {
    ring: std::sync::Mutex<VecDeque<Ended>>,
    /// Per key: when a line was last logged, and how many were suppressed since.
    log_limits: std::sync::Mutex<HashMap<Box<str>, (Instant, u64)>>,
}

impl Recent {
    fn push(&self, e: Ended) {
        let mut ring = self.ring.lock().unwrap();
        if ring.len() == RECENT_FLOWS {
            ring.pop_front();
        }
        ring.push_back(e);
    }

    /// How a failure of `key` is logged: WARN lines (`warn`) share one allowance per key
    /// per [`FLOW_LOG_EVERY`]; DEBUG lines are not limited, and take nothing from it.
    fn log_line(&self, key: &str, warn: bool, now: Instant) -> LogLine {
        if !warn {
            return LogLine::Debug;
        }
        match self.log_due(key, now) {
            Some(suppressed) => LogLine::Warn { suppressed },
            None => LogLine::Suppressed,
        }
    }

    /// Counts a WARN line of `key`; `Some(suppressed since the last line)` when a line is
    /// due.
    fn log_due(&self, key: &str, now: Instant) -> Option<u64> {
        let mut limits = self.log_limits.lock().unwrap();
        let slot = if limits.contains_key(key) || limits.len() < MAX_KEYS {
            key
        } else {
            OTHER_KEY
        };
        match limits.get_mut(slot) {
            Some((last, suppressed)) if now.duration_since(*last) < FLOW_LOG_EVERY => {
                *suppressed += 1;
                None
            }
            Some((last, suppressed)) => {
                *last = now;
                Some(std::mem::take(suppressed))
            }
            None => {
                limits.insert(slot.into(), (now, 0));
                Some(0)
            }
        }
    }

    /// The records, oldest first, with site names from `names`.
    pub(crate) fn records(&self, names: &HashMap<SiteId, String>) -> Vec<FlowRecord> {
        let site = |id: SiteId| FlowSite {
            id,
            name: names.get(&id).cloned(),
        };
        self.ring
            .lock()
            .unwrap()
            .iter()
            .map(|e| FlowRecord {
                id: format!("{:016x}", e.id),
                routing_key: e.key.to_string(),
                origin: site(e.origin),
                destination: e.destination.map(site),
                role: e.role,
                client: e.client.map(|a| a.to_string()),
                listener: e.listener.as_deref().map(str::to_owned),
                connector: e.connector.as_deref().map(str::to_owned),
                requests: e.requests.map(|r| r.0),
                failed_requests: e.requests.map(|r| r.1),
                bytes_forward: e.forward,
                bytes_back: e.back,
                started: rfc3339(e.started),
                duration_ms: u64::try_from(e.duration.as_millis()).unwrap_or(u64::MAX),
                outcome: e.outcome,
                reason: e.reason.as_deref().map(str::to_owned),
            })
            .collect()
    }
}

/// How one failed flow is logged.
#[derive(Debug, PartialEq, Eq)]
enum LogLine {
    /// At WARN, with the number of WARN lines of its key suppressed since the last.
    Warn { suppressed: u64 },
    /// At DEBUG (not rate-limited: off by default).
    Debug,
    /// Not at all: its key had a WARN line within [`FLOW_LOG_EVERY`].
    Suppressed,
}

/// The registration of a connected flow among the active ones.
struct Registered {
    registry_id: u64,
    active: Arc<ActiveFlow>,
    stats: Arc<KeyStats>,
}

/// One flow at this router from its start to its end; recorded when dropped.
pub(crate) struct Flow {
    flows: Arc<Flows>,
    id: u64,
    key: Box<str>,
    origin: SiteId,
    destination: Option<SiteId>,
    role: FlowRole,
    client: Option<SocketAddr>,
    listener: Option<Arc<str>>,
    connector: Option<Arc<str>>,
    requests: Option<(u64, u64)>,
    started: Instant,
    started_wall: SystemTime,
    registered: Option<Registered>,
    end: Option<(FlowOutcome, Option<String>)>,
    /// Neither recorded nor counted (a pooled HTTP/2 connection between routers).
    discarded: bool,
}

impl Flow {
    /// A flow with `id` for `key` from `origin`, in which this router has `role`.
    pub(crate) fn start(
        flows: &Arc<Flows>,
        id: u64,
        key: &str,
        origin: SiteId,
        role: FlowRole,
    ) -> Flow {
        Flow {
            flows: flows.clone(),
            id,
            key: key.into(),
            origin,
            destination: None,
            role,
            client: None,
            listener: None,
            connector: None,
            requests: None,
            started: Instant::now(),
            started_wall: SystemTime::now(),
            registered: None,
            end: None,
            discarded: false,
        }
    }

    /// The flow id (the origin's).
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// At the ingress: the client and the listener that accepted it.
    pub(crate) fn accepted(mut self, client: Option<SocketAddr>, listener: &str) -> Flow {
        self.client = client;
        self.listener = Some(listener.into());
        self
    }

    /// At a transit router or the egress: the client's address as the ingress gave it in
    /// the flow header (`None` when it did not, e.g. behind a router older than 1.3).
    pub(crate) fn with_client(mut self, client: Option<SocketAddr>) -> Flow {
        self.client = client;
        self
    }

    /// The client's address, where known.
    pub(crate) fn client(&self) -> Option<SocketAddr> {
        self.client
    }

    /// The flow goes (or went) to `destination` for `key` (a listener with several keys
    /// learns the key with the target).
    pub(crate) fn towards(&mut self, key: &str, destination: SiteId) {
        if *self.key != *key {
            self.key = key.into();
        }
        self.destination = Some(destination);
    }

    /// The local connector that serves it.
    pub(crate) fn via_connector(&mut self, name: &str) {
        self.connector = Some(name.into());
    }

    /// HTTP listeners: the requests of the client connection, and how many skiff answered.
    pub(crate) fn set_requests(&mut self, total: u64, failed: u64) {
        self.requests = Some((total, failed));
    }

    /// The flow is connected to `destination` for `key`: it shows among the active flows,
    /// and at the ingress the setup time (since the start) is counted. Returns its byte
    /// counters (forward, back).
    pub(crate) fn connected(
        &mut self,
        key: &str,
        destination: SiteId,
    ) -> (Arc<AtomicU64>, Arc<AtomicU64>) {
        self.towards(key, destination);
        let counters = (Arc::default(), Arc::default());
        self.register_active(
            destination,
            Arc::clone(&counters.0),
            Arc::clone(&counters.1),
            true,
        );
        counters
    }

    /// Registers the flow among the active ones (listed in `GET /v1/flows` when `shown`),
    /// counted in its key's statistics; at the ingress the setup time of a shown flow is
    /// counted.
    fn register_active(
        &mut self,
        destination: SiteId,
        forward: Arc<AtomicU64>,
        back: Arc<AtomicU64>,
        shown: bool,
    ) {
        if self.registered.is_some() {
            return;
        }
        let stats = self.flows.stats.key(&self.key);
        if shown && self.role == FlowRole::Ingress {
            stats.setup.observe(self.started.elapsed());
        }
        let (registry_id, active) = self.flows.insert_active(ActiveFlow {
            id: self.id,
            key: self.key.to_string(),
            origin: self.origin,
            destination,
            role: self.role,
            started: self.started,
            counted: true,
            shown,
            forward,
            back,
        });
        self.registered = Some(Registered {
            registry_id,
            active,
            stats,
        });
    }

    /// [`Flow::connected`] to the destination set by [`Flow::towards`], counting with the
    /// given byte counters (forward, back), which may already hold bytes.
    pub(crate) fn connected_with(&mut self, forward: Arc<AtomicU64>, back: Arc<AtomicU64>) {
        let Some(destination) = self.destination else {
            return;
        };
        self.register_active(destination, forward, back, true);
    }

    /// This is no client flow (a pooled HTTP/2 connection between routers): it leaves no
    /// record and is not counted.
    pub(crate) fn discard(&mut self) {
        self.discarded = true;
    }

    /// A flow not listed among the active ones (an HTTP client connection) whose bytes these
    /// counters count (forward, back): its key's statistics include them while it runs (and
    /// count it as running), its record when it ends. No setup time: each of its requests
    /// finds its own way.
    pub(crate) fn count_bytes(&mut self, forward: Arc<AtomicU64>, back: Arc<AtomicU64>) {
        let destination = self.destination.unwrap_or(self.flows.me);
        self.register_active(destination, forward, back, false);
    }

    /// The flow failed with `outcome` for `reason`.
    pub(crate) fn fail(&mut self, outcome: FlowOutcome, reason: impl Into<String>) {
        self.end = Some((outcome, Some(reason.into())));
    }

    /// The flow ended cleanly.
    pub(crate) fn ok(&mut self) {
        self.end = Some((FlowOutcome::Ok, None));
    }

    /// The flow's splice ended; `a` and `b` name its two ends in words ("the client",
    /// "the backend 127.0.0.1:6379", "the stream from east").
    pub(crate) fn spliced(&mut self, end: &SpliceEnd, a: &str, b: &str) {
        match end {
            SpliceEnd::Clean => self.ok(),
            SpliceEnd::Aborted(side, e) => {
                let who = match side {
                    EndSide::A => a,
                    EndSide::B => b,
                    EndSide::Router => "",
                };
                let (outcome, reason) = match (side, e.kind()) {
                    (EndSide::Router, _) => (FlowOutcome::Error, format!("{e}")),
                    (
                        _,
                        std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::BrokenPipe,
                    ) => (FlowOutcome::Reset, format!("{who} reset the flow ({e})")),
                    _ => (FlowOutcome::Error, format!("{who} failed: {e}")),
                };
                self.fail(outcome, reason);
            }
        }
    }

    /// The name of the site on the other end of the flow, for a log line.
    fn other_site(&self) -> String {
        let other = match self.role {
            FlowRole::Ingress => self.destination,
            FlowRole::Transit | FlowRole::Egress => Some(self.origin),
        };
        match other {
            None => "none".to_owned(),
            Some(id) => self.flows.site_name(id),
        }
    }

    /// Logs a failure, at warn when an operator can do something about it.
    fn log_failure(&self, outcome: FlowOutcome, reason: &str) {
        log_failure(
            &self.flows,
            &self.key,
            self.role,
            self.client,
            || self.other_site(),
            outcome,
            reason,
        );
    }
}

/// Logs a failed flow (or, at an HTTP egress, a request its backends failed) of `key` in
/// which this router had `role`: at WARN when an operator can do something about it, at most
/// once per key per [`FLOW_LOG_EVERY`]; `site` names the other end.
pub(crate) fn log_failure(
    flows: &Flows,
    key: &str,
    role: FlowRole,
    client: Option<SocketAddr>,
    site: impl FnOnce() -> String,
    outcome: FlowOutcome,
    reason: &str,
) {
    let operator = match outcome {
        FlowOutcome::Ok | FlowOutcome::Reset | FlowOutcome::Error => false,
        FlowOutcome::NoRoute => role == FlowRole::Ingress,
        FlowOutcome::ConnectRefused | FlowOutcome::ConnectTimeout | FlowOutcome::Denied => {
            role != FlowRole::Transit
        }
    };
    let line = flows.recent.log_line(key, operator, Instant::now());
    // A DEBUG line nobody will see costs no name lookup (failures can come per request).
    if line == LogLine::Suppressed
        || (line == LogLine::Debug && !tracing::enabled!(tracing::Level::DEBUG))
    {
        return;
    }
    let site = site();
    let client = client.map(|c| c.to_string()).unwrap_or_else(|| "-".into());
    let role = role.as_str();
    let hint = match outcome {
        FlowOutcome::NoRoute => {
            "no site could take it: create a connector for the key, or check the links \
             (skiff network status)"
        }
        FlowOutcome::ConnectRefused => {
            "the backend refused it: check that the backend runs and listens on the \
             connector's host and port"
        }
        FlowOutcome::ConnectTimeout => {
            "the backend did not answer: check the backend's host, and firewalls between \
             the connector's site and it"
        }
        FlowOutcome::Denied => "a router refused it: see the reason",
        FlowOutcome::Reset | FlowOutcome::Error | FlowOutcome::Ok => "",
    };
    if let LogLine::Warn { suppressed } = line {
        tracing::warn!(%key, %site, %client, %role, %outcome, %reason, suppressed,
            "flow failed: {hint}");
    } else {
        tracing::debug!(%key, %site, %client, %role, %outcome, %reason,
            "flow ended without success");
    }
}

impl Drop for Flow {
    fn drop(&mut self) {
        if self.discarded {
            if let Some(r) = self.registered.take() {
                self.flows.active.lock().unwrap().remove(&r.registry_id);
            }
            return;
        }
        let (outcome, reason) = self.end.take().unwrap_or_else(|| {
            (
                FlowOutcome::Error,
                Some("its task was stopped (the router is stopping)".to_owned()),
            )
        });
        let duration = self.started.elapsed();
        let (stats, forward, back) = match self.registered.take() {
            Some(r) => {
                let (f, b) = self.flows.remove_active(r.registry_id, &r.stats);
                r.stats.duration.observe(duration);
                drop(r.active);
                (r.stats, f, b)
            }
            None => (self.flows.stats.key(&self.key), 0, 0),
        };
        if let Some(reason) = reason.as_deref()
            && outcome != FlowOutcome::Ok
        {
            self.log_failure(outcome, reason);
        }
        stats.count_end(self.role, outcome);
        self.flows.recent.push(Ended {
            id: self.id,
            key: std::mem::take(&mut self.key),
            origin: self.origin,
            destination: self.destination,
            role: self.role,
            client: self.client,
            listener: self.listener.take(),
            connector: self.connector.take(),
            requests: self.requests,
            forward,
            back,
            started: self.started_wall,
            duration,
            outcome,
            reason: reason.as_deref().map(cap),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_have_three_digits_of_milliseconds() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(86_400_000 + 5);
        assert_eq!(rfc3339(t), "1970-01-02T00:00:00.005Z");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn reasons_are_capped_at_a_character_boundary() {
        let long = "é".repeat(300);
        let c = cap(&long);
        assert!(c.len() <= MAX_REASON, "{}", c.len());
        assert!(c.ends_with('…'));
        assert_eq!(&*cap("short"), "short");
    }

    #[test]
    fn one_log_line_per_key_per_interval_with_the_suppressed_count() {
        let r = Recent::default();
        let t0 = Instant::now();
        assert_eq!(r.log_due("redis", t0), Some(0));
        for i in 1..=5 {
            assert_eq!(r.log_due("redis", t0 + Duration::from_millis(i * 10)), None);
        }
        // Another key has its own allowance.
        assert_eq!(r.log_due("web", t0), Some(0));
        assert_eq!(r.log_due("redis", t0 + FLOW_LOG_EVERY), Some(5));
        assert_eq!(r.log_due("redis", t0 + FLOW_LOG_EVERY), None);
    }

    #[test]
    fn debug_lines_take_nothing_from_the_warn_allowance() {
        let r = Recent::default();
        let t0 = Instant::now();
        // A client's reset (DEBUG), then a refused flow of the same key within the second.
        assert_eq!(r.log_line("redis", false, t0), LogLine::Debug);
        assert_eq!(
            r.log_line("redis", true, t0 + Duration::from_millis(10)),
            LogLine::Warn { suppressed: 0 }
        );
        // DEBUG lines stay unlimited, and do not count as suppressed.
        for i in 2..=5 {
            assert_eq!(
                r.log_line("redis", false, t0 + Duration::from_millis(i * 10)),
                LogLine::Debug
            );
        }
        assert_eq!(
            r.log_line("redis", true, t0 + Duration::from_millis(100)),
            LogLine::Suppressed
        );
        assert_eq!(
            r.log_line(
                "redis",
                true,
                t0 + Duration::from_millis(10) + FLOW_LOG_EVERY
            ),
            LogLine::Warn { suppressed: 1 }
        );
    }

    #[test]
    fn the_ring_keeps_the_newest() {
        let r = Recent::default();
        let id = SiteId::from_bytes([1; 16]);
        for i in 0..(RECENT_FLOWS as u64 + 100) {
            r.push(Ended {
                id: i,
                key: "k".into(),
                origin: id,
                destination: None,
                role: FlowRole::Ingress,
                client: None,
                listener: None,
                connector: None,
                requests: None,
                forward: 0,
                back: 0,
                started: SystemTime::now(),
                duration: Duration::ZERO,
                outcome: FlowOutcome::NoRoute,
                reason: None,
            });
        }
        let recs = r.records(&HashMap::new());
        assert_eq!(recs.len(), RECENT_FLOWS);
        assert_eq!(recs[0].id, format!("{:016x}", 100));
        assert_eq!(
            recs.last().unwrap().id,
            format!("{:016x}", RECENT_FLOWS + 99)
        );
    }
}
