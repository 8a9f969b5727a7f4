//! Outbound links: one dial loop per [`LinkSpec`], happy eyeballs between QUIC and TLS/TCP,
//! capped exponential backoff with jitter, and reconciling the set of specs.
//!
//! A dial loop never gives up: it connects, runs the link until it ends, and reconnects.
//! Network errors are retried from 100 ms, doubling to a 5 s cap; a refusal (the peer said no,
//! or its certificate is not the site the link names) is retried at the cap, because a
//! revocation may be undone or a peer repaired. The delay is drawn from the upper half of the
//! current step, so routers that lost a common peer do not re-dial in lockstep.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::driver::{Established, LinkCloser, run_link};
use super::explain::{AttemptError, chain, explain};
use super::handshake::dial_hello;
use super::mux::MuxConnection;
use super::proxy::{PROXY_TIMEOUT, ProxyConfig};
use super::router::Shared;
use super::table::{EntryId, UpLink, now_rfc3339};
use super::{Direction, LinkSpec, LinkState, LinkStatus, Transport, TransportChoice, quic, tls};

/// First reconnect delay.
pub(crate) const BACKOFF_INITIAL: Duration = Duration::from_millis(100);
/// Longest reconnect delay (also the retry interval of a refused link).
pub(crate) const BACKOFF_CAP: Duration = Duration::from_secs(5);
/// Retry interval of a link the peer refused because it revoked this site: a revocation is
/// not undone in seconds, and both ends log each attempt.
pub(crate) const REVOKED_BACKOFF: Duration = Duration::from_secs(180);
/// How often a link to a site revoked here checks whether the revocation was undone.
pub(crate) const REVOKED_HERE_RECHECK: Duration = Duration::from_secs(2);
/// Head start of QUIC over TLS/TCP with `auto`.
pub(crate) const HAPPY_EYEBALLS_DELAY: Duration = Duration::from_millis(250);
/// Time limit of one attempt: connect, TLS handshake and hello exchange.
pub(crate) const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Capped exponential backoff; jitter is supplied by the caller (`unit` in [0, 1]).
#[derive(Debug)]
pub(crate) struct Backoff {
    step: Duration,
}

impl Backoff {
    pub(crate) fn new() -> Self {
        Backoff {
            step: BACKOFF_INITIAL,
        }
    }

    /// The next delay: uniformly in the upper half of the current step. Doubles the step.
    pub(crate) fn next_delay(&mut self, unit: f64) -> Duration {
        let step = self.step;
        self.step = (step * 2).min(BACKOFF_CAP);
        step / 2 + step.mul_f64(unit.clamp(0.0, 1.0) / 2.0)
    }

    /// After a refusal: wait the cap.
    pub(crate) fn jump_to_cap(&mut self) {
        self.step = BACKOFF_CAP;
    }

    /// After a link was up: start over.
    pub(crate) fn reset(&mut self) {
        self.step = BACKOFF_INITIAL;
    }
}

fn jitter() -> f64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 4];
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        return 0.5;
    }
    f64::from(u32::from_le_bytes(b)) / f64::from(u32::MAX)
}

/// The difference between the running dialers and the desired specs, by name.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    /// New names.
    pub(crate) start: Vec<LinkSpec>,
    /// Names no longer wanted.
    pub(crate) stop: Vec<String>,
    /// Names whose spec changed.
    pub(crate) restart: Vec<LinkSpec>,
    /// Names whose client certificate or key alone changed (a renewal): the running dial
    /// loop takes them for its next dial and the established link stays up.
    pub(crate) renew: Vec<LinkSpec>,
}

/// Computes what to start, stop and restart. With duplicate names in `desired`, the last wins.
pub(crate) fn plan(current: &BTreeMap<String, LinkSpec>, desired: Vec<LinkSpec>) -> Plan {
    let desired: BTreeMap<String, LinkSpec> =
        desired.into_iter().map(|s| (s.name.clone(), s)).collect();
    let mut p = Plan::default();
    for name in current.keys() {
        if !desired.contains_key(name) {
            p.stop.push(name.clone());
        }
    }
    for (name, spec) in desired {
        match current.get(&name) {
            None => p.start.push(spec),
            Some(old) if *old == spec => {}
            Some(old) if old.same_but_credentials(&spec) => p.renew.push(spec),
            Some(_) => p.restart.push(spec),
        }
    }
    p
}

/// A dial loop's configuration that does not change between attempts.
struct DialConfig {
    tls: Arc<rustls::ClientConfig>,
    quic: quinn::ClientConfig,
}

fn dial_config(shared: &Shared, spec: &LinkSpec) -> Result<DialConfig, String> {
    let tls = skiff_certs::link_client_config(
        &spec.client_cert_pem,
        &spec.client_key_pem,
        &spec.peer_ca_pem,
        spec.peer_site_id,
    )
    .map_err(|e| format!("the link's credentials are unusable: {}", chain(&e)))?;
    let quic = quic::client_config(tls.clone(), shared.timing)
        .map_err(|e| format!("the link's TLS configuration cannot be used for QUIC: {e}"))?;
    Ok(DialConfig { tls, quic })
}

/// The dial loop of one outbound link; ends when `cancel` fires (link removed, changed, or
/// router shutdown), after closing the link with a Close frame. A spec sent on `renewals`
/// (new credentials only) is used from the next dial on; the link up now stays up.
pub(crate) async fn run_dialer(
    shared: Arc<Shared>,
    spec: LinkSpec,
    renewals: tokio::sync::watch::Receiver<LinkSpec>,
    cancel: CancellationToken,
) {
    let id = shared.table.insert(LinkStatus {
        name: spec.name.clone(),
        direction: Direction::Outbound,
        peer_site_id: Some(spec.peer_site_id),
        peer_site_name: spec.peer_site_name.clone(),
        transport: None,
        endpoint: None,
        proxy: spec.proxy.as_ref().map(ProxyConfig::address),
        cost: spec.cost,
        state: LinkState::Connecting { last_error: None },
        since: now_rfc3339(),
        bytes_sent: 0,
        bytes_received: 0,
        rtt_ms: None,
        ups: 0,
        rtt_samples: Default::default(),
        peer_label: spec
            .peer_site_name
            .clone()
            .unwrap_or_else(|| spec.peer_site_id.to_string()),
    });
    dial_forever(&shared, spec, renewals, &cancel, id).await;
    shared.table.remove(id);
}

async fn dial_forever(
    shared: &Arc<Shared>,
    mut spec: LinkSpec,
    mut renewals: tokio::sync::watch::Receiver<LinkSpec>,
    cancel: &CancellationToken,
    id: EntryId,
) {
    let mut cfg = loop {
        match dial_config(shared, &spec) {
            Ok(cfg) => break cfg,
            Err(reason) => {
                tracing::warn!(link = %spec.name, peer = %spec.peer_site_id, check = %"credentials",
                    "link {} cannot be dialed: {reason}; fix or replace its link file (or redeem a new token), the site picks it up on reload", spec.name);
                shared.table.set_state(id, LinkState::Refused { reason });
                // Wait for usable credentials (or the end).
                tokio::select! {
                    () = cancel.cancelled() => return,
                    r = renewals.changed() => match r {
                        Ok(()) => spec = renewals.borrow_and_update().clone(),
                        Err(_) => { cancel.cancelled().await; return; }
                    },
                }
            }
        }
    };
    let mut backoff = Backoff::new();
    // Set when a renewal woke a wait; the receiver then no longer reports it as changed.
    let mut woken_by_renewal = false;
    let mut renewals_open = true;
    let mut revoked_here_logged = false;
    loop {
        if std::mem::take(&mut woken_by_renewal) || renewals.has_changed().unwrap_or(false) {
            let renewed = renewals.borrow_and_update().clone();
            match dial_config(shared, &renewed) {
                Ok(c) => {
                    tracing::info!(link = %spec.name, "link credentials renewed; the next dial uses them");
                    cfg = c;
                    spec = renewed;
                }
                Err(reason) => {
                    tracing::warn!(link = %spec.name, check = %"credentials",
                        "renewed credentials of link {} are unusable: {reason}; dialing with the previous ones until they are fixed (skiff link renew again)", spec.name)
                }
            }
        }
        // A site revoked here is not dialled either: the revocation would otherwise be undone
        // by this site's own outbound link to it.
        if let Some(why) = shared.policy.revoked(spec.peer_site_id) {
            if !std::mem::replace(&mut revoked_here_logged, true) {
                tracing::info!(link = %spec.name, peer = %spec.peer_site_id, check = %"revoked",
                    "not dialling link {}: {why}; delete the link (skiff link delete {}) or undo the revocation", spec.name, spec.name);
            }
            shared.table.set_state(
                id,
                LinkState::Refused {
                    reason: format!(
                        "not dialled: {why}; delete this link (skiff link delete {}) or undo the revocation",
                        spec.name
                    ),
                },
            );
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(REVOKED_HERE_RECHECK) => {}
            }
            continue;
        }
        revoked_here_logged = false;
        let spec = &spec;
        let attempt = tokio::select! {
            () = cancel.cancelled() => return,
            a = dial_once(shared, spec, &cfg, id) => a,
        };
        match attempt {
            Ok(link) => {
                let up_at = tokio::time::Instant::now();
                let end = run_up_link(shared, spec, cancel, id, link).await;
                if cancel.is_cancelled() {
                    return;
                }
                tracing::info!(link = %spec.name, peer = %spec.peer_site_id, reason = %end, ups = shared.table.ups(id),
                    "link down; reconnecting");
                shared.table.set_state(
                    id,
                    LinkState::Connecting {
                        last_error: Some(end),
                    },
                );
                // A link that drops right after coming up (a peer that accepts and then
                // fails) must not be re-dialled at the fastest pace forever.
                if up_at.elapsed() >= shared.timing.dead_after {
                    backoff.reset();
                }
            }
            Err(AttemptError::Refused(reason)) => {
                // A revocation, or a proxy refusing the link's credentials: only an operator
                // fixes either (a changed link spec restarts this loop at once).
                let slow =
                    refused_as_revoked(&reason) || super::proxy::refused_for_credentials(&reason);
                let retry = if slow { REVOKED_BACKOFF } else { BACKOFF_CAP };
                tracing::warn!(link = %spec.name, peer = %spec.peer_site_id,
                    "link refused: {reason}; retrying in {} s (or when its certificate is renewed or its link file changes)", retry.as_secs());
                shared.table.set_state(id, LinkState::Refused { reason });
                backoff.jump_to_cap();
                if slow {
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(REVOKED_BACKOFF) => {}
                        r = renewals.changed(), if renewals_open => match r {
                            Ok(()) => woken_by_renewal = true,
                            Err(_) => renewals_open = false,
                        },
                    }
                    continue;
                }
            }
            Err(AttemptError::Network(error)) => {
                tracing::debug!(link = %spec.name, cause = %error, "link attempt failed");
                shared.table.set_state(
                    id,
                    LinkState::Connecting {
                        last_error: Some(error),
                    },
                );
            }
        }
        let delay = backoff.next_delay(jitter());
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
            // New credentials are worth a dial at once (a refused certificate, renewed).
            r = renewals.changed(), if renewals_open => match r {
                Ok(()) => woken_by_renewal = true,
                Err(_) => renewals_open = false,
            },
        }
    }
}

/// Whether the peer's refusal says it revoked this site (see the site controller's
/// `InboundPolicy::admit`).
fn refused_as_revoked(reason: &str) -> bool {
    reason.contains("was revoked here")
}

/// Marks the link up and drives it until it ends; returns why it ended.
async fn run_up_link(
    shared: &Arc<Shared>,
    spec: &LinkSpec,
    cancel: &CancellationToken,
    id: EntryId,
    link: Established,
) -> String {
    let closer = LinkCloser::default();
    let transport = link.transport;
    let endpoint = link.endpoint.clone();
    let peer_name = link.peer.site_name.clone();
    shared.table.set_up(
        id,
        UpLink {
            peer: spec.peer_site_id,
            conn: link.conn.clone(),
            closer: closer.clone(),
            version: link.peer.version,
        },
        &peer_name,
        transport,
        &endpoint,
    );
    tracing::info!(link = %spec.name, %transport, addr = %endpoint, peer = %peer_name, "link up");
    let rtt = shared.table.rtt_samples(id);
    let run = run_link(
        link,
        &spec.name,
        closer.clone(),
        shared.timing,
        shared.sink.clone(),
        &shared.routes,
        &rtt,
    );
    tokio::pin!(run);
    let end = tokio::select! {
        end = &mut run => end,
        () = cancel.cancelled() => {
            closer.close(if shared.shutdown.is_cancelled() {
                "router shutting down"
            } else {
                "link removed or changed at the dialing site"
            });
            run.await
        }
    };
    end.to_string()
}

/// One attempt over the spec's endpoints, in order; the first that links wins.
async fn dial_once(
    shared: &Arc<Shared>,
    spec: &LinkSpec,
    cfg: &DialConfig,
    id: EntryId,
) -> Result<Established, AttemptError> {
    let mut errors: Vec<AttemptError> = Vec::new();
    for endpoint in &spec.endpoints {
        shared.table.set_endpoint(id, Some(endpoint.clone()));
        if let Some(proxy) = &spec.proxy {
            // The proxy resolves the endpoint's name; a tunnel carries TCP only.
            if spec.transport == TransportChoice::Quic {
                return Err(AttemptError::Refused(quic_through_proxy(&spec.name)));
            }
            let route = Route::Proxied { proxy, endpoint };
            match attempt(shared, spec, cfg, Transport::Tls, route).await {
                Ok(link) => return Ok(link),
                Err(e) => errors.push(e),
            }
            continue;
        }
        let addr = match resolve(endpoint).await {
            Ok(a) => a,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        let route = Route::Direct(addr);
        let result = match spec.transport {
            TransportChoice::Quic => attempt(shared, spec, cfg, Transport::Quic, route).await,
            TransportChoice::Tls => attempt(shared, spec, cfg, Transport::Tls, route).await,
            TransportChoice::Auto => {
                happy_eyeballs(
                    attempt(shared, spec, cfg, Transport::Quic, route),
                    attempt(shared, spec, cfg, Transport::Tls, route),
                    HAPPY_EYEBALLS_DELAY,
                )
                .await
            }
        };
        match result {
            Ok(link) => return Ok(link),
            Err(e) => errors.push(e),
        }
    }
    Err(summarize(errors))
}

/// One error for several: a refusal wins (it needs an operator); otherwise all network errors
/// in one line.
fn summarize(errors: Vec<AttemptError>) -> AttemptError {
    if let Some(refusal) = errors.iter().find(|e| e.is_refusal()) {
        return refusal.clone();
    }
    match errors.len() {
        0 => AttemptError::Network("the link has no endpoints".into()),
        1 => errors.into_iter().next().unwrap(),
        _ => AttemptError::Network(
            errors
                .iter()
                .map(AttemptError::text)
                .collect::<Vec<_>>()
                .join("; "),
        ),
    }
}

async fn resolve(endpoint: &str) -> Result<SocketAddr, AttemptError> {
    let mut addrs = tokio::net::lookup_host(endpoint).await.map_err(|e| {
        AttemptError::Network(format!("cannot resolve link endpoint {endpoint:?}: {e}"))
    })?;
    addrs
        .next()
        .ok_or_else(|| AttemptError::Network(format!("{endpoint:?} resolves to no address")))
}

/// Why a link with a proxy cannot be dialled over QUIC.
fn quic_through_proxy(name: &str) -> String {
    format!(
        "link {name} has transport quic and a proxy: an HTTP proxy tunnels TCP only and QUIC is \
         UDP; set the link's transport to tls (or auto), or remove its proxy"
    )
}

/// How an attempt reaches the peer.
#[derive(Clone, Copy)]
enum Route<'a> {
    /// Straight to this address.
    Direct(SocketAddr),
    /// Through an HTTP proxy's CONNECT tunnel to `endpoint` (`host:port`, resolved there).
    Proxied {
        proxy: &'a ProxyConfig,
        endpoint: &'a str,
    },
}

/// Connect, handshake and hello over one transport, within [`ATTEMPT_TIMEOUT`].
async fn attempt(
    shared: &Arc<Shared>,
    spec: &LinkSpec,
    cfg: &DialConfig,
    transport: Transport,
    route: Route<'_>,
) -> Result<Established, AttemptError> {
    let (endpoint, label) = match route {
        Route::Direct(addr) => (addr.to_string(), format!("{addr} ({transport})")),
        Route::Proxied { proxy, endpoint } => (
            endpoint.to_string(),
            format!("{endpoint} ({transport} via proxy {proxy})"),
        ),
    };
    let work = async {
        let conn: Arc<dyn MuxConnection> = match (transport, route) {
            (Transport::Quic, Route::Direct(addr)) => Arc::new(
                shared
                    .quic_dialers
                    .connect(cfg.quic.clone(), addr, &spec.peer_site_id.server_name())
                    .await
                    .map_err(|e| explain(&*e, &label, spec.peer_site_id))?,
            ),
            (Transport::Quic, Route::Proxied { .. }) => {
                return Err(AttemptError::Refused(quic_through_proxy(&spec.name)));
            }
            (Transport::Tls, Route::Direct(addr)) => Arc::new(
                tls::dial(cfg.tls.clone(), addr, spec.peer_site_id)
                    .await
                    .map_err(|e| explain(&*e, &label, spec.peer_site_id))?,
            ),
            (Transport::Tls, Route::Proxied { proxy, endpoint }) => {
                let socket = proxy
                    .connect(endpoint, PROXY_TIMEOUT, tls::SOCKET_READ_BUFFER)
                    .await
                    .map_err(|e| {
                        if e.needs_operator() {
                            AttemptError::Refused(e.to_string())
                        } else {
                            AttemptError::Network(e.to_string())
                        }
                    })?;
                Arc::new(
                    tls::dial_over(cfg.tls.clone(), socket, spec.peer_site_id)
                        .await
                        .map_err(|e| explain(&*e, &label, spec.peer_site_id))?,
                )
            }
        };
        match dial_hello(&*conn, &shared.hello, spec.peer_site_id, &label, spec.cost).await {
            Ok((control, peer)) => Ok(Established {
                conn,
                control,
                peer,
                transport,
                endpoint: endpoint.clone(),
            }),
            Err(e) => {
                conn.close("hello failed");
                Err(e)
            }
        }
    };
    match tokio::time::timeout(ATTEMPT_TIMEOUT, work).await {
        Ok(r) => r,
        Err(_) => Err(AttemptError::Network(format!(
            "{label}: no link within {} s",
            ATTEMPT_TIMEOUT.as_secs()
        ))),
    }
}

type Attempt<'a> = Pin<Box<dyn Future<Output = Result<Established, AttemptError>> + Send + 'a>>;

/// Races `first` (QUIC) against `second` (TLS), which starts after `delay` or as soon as
/// `first` fails with a network error. The first link to complete its hello wins; the other
/// attempt is dropped (its connection closes). A refusal from `first` is final: the peer would
/// refuse the same site over the other transport too.
pub(crate) async fn happy_eyeballs<'a>(
    first: impl Future<Output = Result<Established, AttemptError>> + Send + 'a,
    second: impl Future<Output = Result<Established, AttemptError>> + Send + 'a,
    delay: Duration,
) -> Result<Established, AttemptError> {
    let mut first: Attempt<'a> = Box::pin(first);
    let first_err = tokio::select! {
        r = &mut first => match r {
            Ok(link) => return Ok(link),
            Err(e) if e.is_refusal() => return Err(e),
            Err(e) => Some(e),
        },
        () = tokio::time::sleep(delay) => None,
    };
    let mut second: Attempt<'a> = Box::pin(second);
    let Some(first_err) = first_err else {
        // Both running: take the first success; if one fails, wait for the other.
        let (err, rest) = tokio::select! {
            r = &mut first => match r {
                Ok(link) => return Ok(link),
                Err(e) => (e, second),
            },
            r = &mut second => match r {
                Ok(link) => return Ok(link),
                Err(e) => (e, first),
            },
        };
        return match rest.await {
            Ok(link) => Ok(link),
            Err(other) => Err(summarize(vec![err, other])),
        };
    };
    second.await.map_err(|e| summarize(vec![first_err, e]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_certs::SiteId;

    fn spec(name: &str, cost: u32) -> LinkSpec {
        LinkSpec {
            name: name.into(),
            peer_site_id: SiteId::from_bytes([1; 16]),
            peer_site_name: None,
            peer_ca_pem: String::new(),
            endpoints: vec!["h:1".into()],
            client_cert_pem: String::new(),
            client_key_pem: String::new(),
            transport: TransportChoice::Auto,
            cost,
            proxy: None,
        }
    }

    #[test]
    fn plan_starts_stops_and_restarts_by_name() {
        let current: BTreeMap<String, LinkSpec> = [spec("a", 1), spec("b", 1), spec("c", 1)]
            .into_iter()
            .map(|s| (s.name.clone(), s))
            .collect();
        let p = plan(&current, vec![spec("a", 1), spec("b", 5), spec("d", 1)]);
        assert_eq!(p.start, vec![spec("d", 1)]);
        assert_eq!(p.stop, vec!["c".to_string()]);
        assert_eq!(p.restart, vec![spec("b", 5)]);
        assert!(p.renew.is_empty());
        // A new client certificate alone is a renewal, not a restart.
        let mut renewed = spec("a", 1);
        renewed.client_cert_pem = "new".into();
        let p = plan(&current, vec![renewed.clone(), spec("b", 1), spec("c", 1)]);
        assert_eq!(p.renew, vec![renewed]);
        assert!(p.restart.is_empty() && p.start.is_empty() && p.stop.is_empty());
        // Applying the same desired state again changes nothing.
        let after: BTreeMap<String, LinkSpec> = [spec("a", 1), spec("b", 5), spec("d", 1)]
            .into_iter()
            .map(|s| (s.name.clone(), s))
            .collect();
        assert_eq!(
            plan(&after, vec![spec("a", 1), spec("b", 5), spec("d", 1)]),
            Plan::default()
        );
    }

    #[test]
    fn a_changed_proxy_redials_that_link_only() {
        let current: BTreeMap<String, LinkSpec> = [spec("a", 1), spec("b", 1)]
            .into_iter()
            .map(|s| (s.name.clone(), s))
            .collect();
        let mut proxied = spec("a", 1);
        proxied.proxy = Some("http://127.0.0.1:3128".parse().unwrap());
        let p = plan(&current, vec![proxied.clone(), spec("b", 1)]);
        assert_eq!(p.restart, vec![proxied.clone()]);
        assert!(p.start.is_empty() && p.stop.is_empty() && p.renew.is_empty());
        // Another proxy, or new credentials for it: a redial too (the tunnel is made anew).
        let now: BTreeMap<String, LinkSpec> = [proxied.clone(), spec("b", 1)]
            .into_iter()
            .map(|s| (s.name.clone(), s))
            .collect();
        let mut other = proxied.clone();
        other.proxy = Some("http://u:p@127.0.0.1:3128".parse().unwrap());
        assert_eq!(
            plan(&now, vec![other.clone(), spec("b", 1)]).restart,
            vec![other]
        );
        assert_eq!(plan(&now, vec![proxied, spec("b", 1)]), Plan::default());
    }

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter_in_the_upper_half() {
        let mut b = Backoff::new();
        assert_eq!(b.next_delay(0.0), Duration::from_millis(50));
        assert_eq!(b.next_delay(1.0), Duration::from_millis(200));
        let mut last = Duration::ZERO;
        for _ in 0..10 {
            last = b.next_delay(1.0);
        }
        assert_eq!(last, BACKOFF_CAP);
        assert_eq!(b.next_delay(0.0), BACKOFF_CAP / 2);
        b.reset();
        assert_eq!(b.next_delay(1.0), BACKOFF_INITIAL);
        b.jump_to_cap();
        assert!(b.next_delay(0.3) >= BACKOFF_CAP / 2);
    }

    #[tokio::test(start_paused = true)]
    async fn happy_eyeballs_starts_the_second_after_the_delay_or_on_failure() {
        use std::sync::atomic::{AtomicBool, Ordering};
        // First never finishes: second starts after the delay and its error is reported.
        let started = AtomicBool::new(false);
        let t0 = tokio::time::Instant::now();
        let r = happy_eyeballs(
            async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Err(AttemptError::Network("quic".into()))
            },
            async {
                started.store(true, Ordering::SeqCst);
                Err(AttemptError::Network("tls".into()))
            },
            Duration::from_millis(250),
        )
        .await;
        assert_eq!(t0.elapsed(), Duration::from_secs(3600));
        assert!(started.load(Ordering::SeqCst));
        assert_eq!(r.err().unwrap().text(), "tls; quic");

        // First fails at once: second starts without waiting.
        let t0 = tokio::time::Instant::now();
        let r = happy_eyeballs(
            async { Err(AttemptError::Network("quic".into())) },
            async { Err(AttemptError::Network("tls".into())) },
            Duration::from_millis(250),
        )
        .await;
        assert_eq!(t0.elapsed(), Duration::ZERO);
        assert_eq!(r.err().unwrap().text(), "quic; tls");

        // A refusal from the first is final.
        let r = happy_eyeballs(
            async { Err(AttemptError::Refused("no".into())) },
            async { panic!("second attempt started after a refusal") },
            Duration::from_millis(250),
        )
        .await;
        assert_eq!(r.err().unwrap(), AttemptError::Refused("no".into()));
    }
}
