//! The HTTP ingress: a client connection served by hyper (HTTP/1.1 or h2c), and the layers
//! every request passes, built here in one place (STYLE.md rule 5). From the client inwards:
//!
//! 1. **rescue** ([`handle`]): any error below becomes a response, 502 / 503 / 504 with a
//!    `skiff-error` header; metrics are counted here.
//! 2. **refuse** ([`proxy`]): request shapes that smuggle (400).
//! 3. **normalise** ([`normalise_request`], [`normalise_response`]): hop-by-hop headers out
//!    both ways, `Via` in, an absolute URI for the HTTP/2 leg.
//! 4. **route + retry** ([`route`]): targets for the listener's strategy (in the client's
//!    affinity order when the listener has one); the next one only while the request was
//!    never sent (and its body is empty, so it can be made again).
//! 5. **timeout**: [`RESPONSE_TIMEOUT`] for the response head of each attempt.
//! 6. **forward** ([`forward`]): the local connectors, or the pooled HTTP/2 connection to the
//!    target router.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::backend::{SendError, sent};
use super::headers::{add_via, affinity_hash, smuggling_shape, strip_hop_by_hop, strip_internal};
use super::io::{Body, boxed, full};
use super::{
    ERROR_HEADER, HEADER_READ_TIMEOUT, MAX_CLIENT_STREAMS, MAX_HEAD_BYTES, MAX_PENDING_RESETS,
    MAX_REQUEST_ATTEMPTS, NOT_SENT_HEADER, RESPONSE_TIMEOUT, local, upgrade,
};
use crate::flow::config::Listener;
use crate::flow::records::{Flow, FlowOutcome};
use crate::flow::{FlowRole, Flows};
use crate::routing::{RoutingKey, Target};
use skiff_certs::SiteId;

/// Why skiff answers a request itself.
#[derive(Debug)]
pub(crate) enum ProxyError {
    /// The request is malformed or smuggles (400).
    BadRequest(&'static str),
    /// No site serves the key, or none could be reached (503); the `skiff-error` reason
    /// (`no-route`, or `connect-refused` when backends refused) and the detail.
    NoRoute(&'static str, String),
    /// The request was sent and failed on the way or at the backend (502).
    Failed(String),
    /// No response head in time (504).
    Timeout,
    /// A request skiff does not proxy (501).
    NotImplemented(&'static str),
}

impl ProxyError {
    fn status(&self) -> (StatusCode, &'static str) {
        match self {
            ProxyError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad-request"),
            ProxyError::NoRoute(reason, _) => (StatusCode::SERVICE_UNAVAILABLE, *reason),
            ProxyError::Failed(_) => (StatusCode::BAD_GATEWAY, "backend-failed"),
            ProxyError::Timeout => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
            ProxyError::NotImplemented(_) => (StatusCode::NOT_IMPLEMENTED, "not-proxied"),
        }
    }

    fn detail(&self) -> String {
        match self {
            ProxyError::BadRequest(why) | ProxyError::NotImplemented(why) => (*why).to_owned(),
            ProxyError::NoRoute(_, why) | ProxyError::Failed(why) => why.clone(),
            ProxyError::Timeout => {
                format!("no response head within {} s", RESPONSE_TIMEOUT.as_secs())
            }
        }
    }
}

/// The response for an error: its status, `skiff-error: <reason>`, and a one-line body.
pub(crate) fn rescue(e: &ProxyError) -> Response<Body> {
    let (status, reason) = e.status();
    rescue_response(status, reason, &e.detail())
}

/// A response skiff makes: `status`, `skiff-error: reason`, a one-line body.
pub(crate) fn rescue_response(status: StatusCode, reason: &str, detail: &str) -> Response<Body> {
    let text = format!("skiff: {reason}: {detail}\n");
    let len = text.len();
    let mut resp = Response::new(full(text));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Ok(v) = HeaderValue::from_str(reason) {
        h.insert(HeaderName::from_static(ERROR_HEADER), v);
    }
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    add_via(h);
    resp
}

/// What every request of one client connection shares.
struct Ingress {
    flows: Arc<Flows>,
    listener: Arc<Listener>,
    /// The client connection's remote address: what `--affinity client-ip` hashes.
    remote: std::net::SocketAddr,
    /// For the connection's flow record: requests, those skiff answered, the last failure
    /// (outcome, reason) and the last target (key, site).
    requests: std::sync::atomic::AtomicU64,
    failed: std::sync::atomic::AtomicU64,
    last_failure: std::sync::Mutex<Option<(FlowOutcome, String)>>,
    last_target: LastTarget,
}

/// The last target a request of a client connection went to, for its record: set per request
/// without a lock or a copy (two atomics), read when the connection ends.
#[derive(Default)]
struct LastTarget {
    /// The index of its key among the listener's keys, plus one (0: none yet).
    key: std::sync::atomic::AtomicUsize,
    /// The first 8 bytes of its router's site id (one atomic: never torn between two
    /// targets of concurrent requests; site ids are random, so 8 bytes tell them apart).
    site: std::sync::atomic::AtomicU64,
}

impl LastTarget {
    fn set(&self, strategy: &crate::routing::Strategy, target: &Target) {
        use std::sync::atomic::Ordering::Relaxed;
        if let Some(i) = key_index(strategy, &target.key) {
            self.key.store(i + 1, Relaxed);
        }
        self.site.store(site_prefix(target.router), Relaxed);
    }

    /// The key and the site, if a request had a target (and the site is still known).
    fn get<'a>(
        &self,
        strategy: &'a crate::routing::Strategy,
        flows: &Flows,
    ) -> Option<(&'a RoutingKey, SiteId)> {
        use crate::routing::Strategy;
        use std::sync::atomic::Ordering::Relaxed;
        let i = self.key.load(Relaxed).checked_sub(1)?;
        let key = match strategy {
            Strategy::Balanced(k) => (i == 0).then_some(k),
            Strategy::Priority(keys) => keys.get(i),
            Strategy::Weighted(keys) => keys.get(i).map(|(k, _)| k),
        }?;
        let prefix = self.site.load(Relaxed);
        let names = flows.site_names();
        let site = std::iter::once(flows.me)
            .chain(names.keys().copied())
            .find(|id| site_prefix(*id) == prefix)?;
        Some((key, site))
    }
}

fn key_index(strategy: &crate::routing::Strategy, key: &RoutingKey) -> Option<usize> {
    use crate::routing::Strategy;
    match strategy {
        Strategy::Balanced(k) => (k == key).then_some(0),
        Strategy::Priority(keys) => keys.iter().position(|k| k == key),
        Strategy::Weighted(keys) => keys.iter().position(|(k, _)| k == key),
    }
}

fn site_prefix(id: SiteId) -> u64 {
    let b = id.as_bytes();
    u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

impl ProxyError {
    /// The flow outcome of a request skiff answered.
    fn outcome(&self) -> FlowOutcome {
        match self {
            ProxyError::NoRoute("connect-refused", _) => FlowOutcome::ConnectRefused,
            ProxyError::NoRoute(..) => FlowOutcome::NoRoute,
            ProxyError::BadRequest(_) | ProxyError::NotImplemented(_) => FlowOutcome::Denied,
            ProxyError::Failed(_) | ProxyError::Timeout => FlowOutcome::Error,
        }
    }
}

/// Serves one client connection of an HTTP listener until it ends. One flow record per client
/// connection (not per request), with its requests counted and the last failure as reason.
pub(crate) async fn serve_client(
    flows: Arc<Flows>,
    listener: Arc<Listener>,
    client: TcpStream,
    remote: std::net::SocketAddr,
) {
    let key = crate::flow::config::first_key(&listener);
    let mut flow = Flow::start(
        &flows,
        flows.new_flow_id(),
        key,
        flows.me,
        FlowRole::Ingress,
    )
    .accepted(Some(remote), &listener.spec.name);
    let Ok(_slot) = listener.http_slots.clone().try_acquire_owned() else {
        flow.fail(
            FlowOutcome::Denied,
            format!(
                "the HTTP listener is at its limit of {} client connections",
                super::MAX_CLIENT_CONNECTIONS
            ),
        );
        // The flow record's WARN line says it (one line per event).
        listener.counters.fail();
        return;
    };
    super::super::tcp::configure_accepted(&client);
    let _active = listener.counters.start();
    let first = first_bytes(&client).await;
    if !matches!(first, FirstBytes::Request) {
        flow.set_requests(0, 0);
    }
    match first {
        FirstBytes::Request => {}
        // A TCP health check (connect, then close): nothing went wrong.
        FirstBytes::Closed => {
            tracing::debug!(%remote, "a client closed its connection without a request");
            flow.ok();
            return;
        }
        FirstBytes::Failed(e) => {
            flow.fail(
                FlowOutcome::Reset,
                format!("the client's connection failed before a request: {e}"),
            );
            return;
        }
        FirstBytes::Silent => {
            flow.fail(
                FlowOutcome::Error,
                format!(
                    "the client sent no request within {} s; its connection was closed",
                    HEADER_READ_TIMEOUT.as_secs()
                ),
            );
            return;
        }
    }
    let shutdown = flows.shutdown.clone();
    let client = super::io::CountedIo::new(client);
    flow.count_bytes(client.read.clone(), client.written.clone());
    let ingress = Arc::new(Ingress {
        flows,
        listener,
        remote,
        requests: Default::default(),
        failed: Default::default(),
        last_failure: Default::default(),
        last_target: Default::default(),
    });
    let i = ingress.clone();
    let service = hyper::service::service_fn(move |req| handle(i.clone(), req));
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CLIENT_STREAMS)
        .max_pending_accept_reset_streams(MAX_PENDING_RESETS)
        .max_local_error_reset_streams(MAX_PENDING_RESETS)
        .max_header_list_size(MAX_HEAD_BYTES as u32)
        .keep_alive_interval(Some(std::time::Duration::from_secs(30)))
        .keep_alive_timeout(std::time::Duration::from_secs(10));
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(client), service);
    let ended = tokio::select! {
        () = shutdown.cancelled() => Err("the router is shutting down".to_owned()),
        r = conn => r.map_err(|e| {
            tracing::debug!(cause = %e, "HTTP client connection ended with an error");
            format!("the client connection failed: {e}")
        }),
    };
    use std::sync::atomic::Ordering::Relaxed;
    let (n, failed) = (ingress.requests.load(Relaxed), ingress.failed.load(Relaxed));
    flow.set_requests(n, failed);
    if let Some((key, site)) = ingress
        .last_target
        .get(&ingress.listener.spec.strategy, &ingress.flows)
    {
        flow.towards(key.as_str(), site);
    }
    let last_failure = ingress.last_failure.lock().unwrap().take();
    match (last_failure, ended) {
        (Some((outcome, why)), _) => flow.fail(
            outcome,
            format!("{failed} of {n} requests failed; the last: {why}"),
        ),
        (None, Err(why)) => flow.fail(FlowOutcome::Error, why),
        (None, Ok(())) => flow.ok(),
    }
}

/// The HTTP/2 connection preface; hyper reads up to its length, with no timeout, to tell
/// HTTP/1.1 from HTTP/2.
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How a client connection began.
enum FirstBytes {
    /// Enough of a request for hyper to tell the protocol.
    Request,
    /// The client closed it without sending anything (a TCP health check).
    Closed,
    /// Reading failed (the client reset it).
    Failed(std::io::Error),
    /// Nothing, or a piece of the HTTP/2 preface and then nothing, within
    /// [`HEADER_READ_TIMEOUT`].
    Silent,
}

/// Whether the client shows enough of a request within [`HEADER_READ_TIMEOUT`] for hyper to
/// tell the protocol (after that hyper's own timeouts apply): a connection that sends nothing,
/// or a piece of the HTTP/2 preface and then nothing, is closed.
async fn first_bytes(tcp: &TcpStream) -> FirstBytes {
    let deadline = tokio::time::Instant::now() + HEADER_READ_TIMEOUT;
    let mut buf = [0u8; 24];
    loop {
        let n = match tokio::time::timeout_at(deadline, tcp.peek(&mut buf)).await {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return FirstBytes::Failed(e),
            Err(_) => return FirstBytes::Silent,
        };
        if n == 0 {
            return FirstBytes::Closed;
        }
        if n >= PREFACE.len() || buf[..n] != PREFACE[..n] {
            return FirstBytes::Request;
        }
        // Part of the preface: look again shortly.
        if tokio::time::timeout_at(
            deadline,
            tokio::time::sleep(std::time::Duration::from_millis(20)),
        )
        .await
        .is_err()
        {
            return FirstBytes::Silent;
        }
    }
}

/// Layer 1, rescue: every request gets a response; metrics per key.
async fn handle(
    ingress: Arc<Ingress>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let (key, result) = proxy(&ingress, req).await;
    let key = key
        .or_else(|| first_key(&ingress.listener))
        .map(|k| k.as_str().to_owned())
        .unwrap_or_default();
    let metrics = ingress.flows.http_metrics.key(&key);
    ingress
        .requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let failed = |outcome: FlowOutcome, why: String| {
        ingress
            .failed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        *ingress.last_failure.lock().unwrap() = Some((outcome, why));
    };
    let resp = match result {
        // Answered by a skiff router on the way (an egress's rescue): an error, not the
        // backend's status.
        Ok(resp) if resp.headers().contains_key(ERROR_HEADER) => {
            metrics.record(None, started.elapsed());
            let word = resp.headers()[ERROR_HEADER].to_str().unwrap_or("error");
            let outcome = match word {
                "connect-refused" => FlowOutcome::ConnectRefused,
                "no-route" => FlowOutcome::NoRoute,
                _ => FlowOutcome::Error,
            };
            failed(
                outcome,
                format!("the egress site answered {word} ({})", resp.status()),
            );
            resp
        }
        Ok(resp) => {
            metrics.record(Some(resp.status().as_u16()), started.elapsed());
            resp
        }
        Err(e) => {
            tracing::debug!(error = ?e, "request answered by skiff");
            metrics.record(None, started.elapsed());
            failed(e.outcome(), e.detail());
            rescue(&e)
        }
    };
    let counted = metrics.clone();
    Ok(resp.map(|b| {
        b.map_frame(move |f| {
            if let Some(d) = f.data_ref() {
                counted.add_out(d.len());
            }
            f
        })
        .boxed_unsync()
    }))
}

fn first_key(listener: &Listener) -> Option<RoutingKey> {
    use crate::routing::Strategy;
    match &listener.spec.strategy {
        Strategy::Balanced(k) => Some(k.clone()),
        Strategy::Priority(keys) => keys.first().cloned(),
        Strategy::Weighted(keys) => keys.first().map(|(k, _)| k.clone()),
    }
}

/// Layers 2 to 6 for one request; also says which key served it.
async fn proxy(
    ingress: &Ingress,
    req: Request<Incoming>,
) -> (Option<RoutingKey>, Result<Response<Body>, ProxyError>) {
    if let Some(why) = smuggling_shape(req.headers()) {
        return (None, Err(ProxyError::BadRequest(why)));
    }
    // Session affinity: the hash of the listener's header, cookie or the connection's remote
    // IP (none when the request lacks them); the targets then come in the client's affinity
    // order, so the retries below (and an upgrade's) go to its next site by score.
    let client_hash = affinity_hash(
        &ingress.listener.spec.affinity,
        req.headers(),
        ingress.remote.ip(),
    );
    let targets = ingress.flows.choose_family(
        &ingress.listener.spec.strategy,
        crate::routing::Family::Http,
        client_hash,
    );
    if targets.is_empty() {
        let why = crate::flow::config::no_target_reason(&ingress.flows, &ingress.listener);
        return (None, Err(ProxyError::NoRoute("no-route", why)));
    }
    ingress
        .last_target
        .set(&ingress.listener.spec.strategy, &targets[0]);
    if upgrade::is_upgrade(&req) {
        let key = targets[0].key.clone();
        return (
            Some(key),
            upgrade::ingress(&ingress.flows, targets, req).await,
        );
    }
    let metrics = ingress.flows.http_metrics.key(targets[0].key.as_str());
    let req = match normalise_request(req) {
        Ok(r) => r,
        Err(e) => return (None, Err(e)),
    };
    // A request that fails because the client's body is malformed (a bad chunk size) is the
    // client's fault: 400, not 502.
    let client_body_failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = client_body_failed.clone();
    let req = req.map(|b| {
        b.map_frame(move |f| {
            if let Some(d) = f.data_ref() {
                metrics.add_in(d.len());
            }
            f
        })
        .map_err(move |e| {
            flag.store(true, std::sync::atomic::Ordering::Relaxed);
            e
        })
        .boxed_unsync()
    });
    let (key, result) = route(ingress, targets, req).await;
    let result = match result {
        Err(ProxyError::Failed(_))
            if client_body_failed.load(std::sync::atomic::Ordering::Relaxed) =>
        {
            Err(ProxyError::BadRequest("the request body is malformed"))
        }
        other => other,
    };
    (key, result.map(normalise_response))
}

/// Layer 3 (request side): hop-by-hop headers out, `Via` in, the absolute URI the HTTP/2 leg
/// needs (from `Host` for HTTP/1.1 clients).
pub(crate) fn normalise_request(req: Request<Incoming>) -> Result<Request<Body>, ProxyError> {
    let (mut parts, body) = req.into_parts();
    if parts.method == http::Method::CONNECT {
        return Err(ProxyError::NotImplemented("CONNECT is not proxied"));
    }
    if parts.uri == "*" {
        return Err(ProxyError::NotImplemented(
            "a request for * (OPTIONS *) is not proxied",
        ));
    }
    let authority = parts
        .uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        });
    let authority = match authority {
        Some(a) => a,
        // HTTP/1.1 requires Host (RFC 9112 3.2); an HTTP/1.0 client may omit it.
        None if parts.version == http::Version::HTTP_11 => {
            return Err(ProxyError::BadRequest("an HTTP/1.1 request without Host"));
        }
        None => "localhost".into(),
    };
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    parts.uri = format!("http://{authority}{path}")
        .parse::<Uri>()
        .map_err(|_| ProxyError::BadRequest("a Host or request target that is not a URI"))?;
    parts.headers.remove(header::HOST);
    strip_hop_by_hop(&mut parts.headers, true);
    strip_internal(&mut parts.headers);
    add_via(&mut parts.headers);
    parts.version = http::Version::HTTP_2;
    Ok(Request::from_parts(parts, boxed(body)))
}

/// Layer 3 (response side).
pub(crate) fn normalise_response(mut resp: Response<Body>) -> Response<Body> {
    let h = resp.headers_mut();
    strip_hop_by_hop(h, false);
    h.remove(NOT_SENT_HEADER);
    add_via(h);
    resp
}

/// Layers 4 and 5: each target in turn while the request was never sent.
async fn route(
    ingress: &Ingress,
    targets: Vec<Target>,
    req: Request<Body>,
) -> (Option<RoutingKey>, Result<Response<Body>, ProxyError>) {
    let flows = &ingress.flows;
    // A request without a body can be made again after an egress answered "not sent".
    let replayable = req.body().is_end_stream();
    let (parts, body) = req.into_parts();
    let mut body = Some(body);
    let mut last = String::from("no target");
    let mut reason = "no-route";
    let mut last_key = None;
    for target in targets.into_iter().take(MAX_REQUEST_ATTEMPTS) {
        let b = match body.take() {
            Some(b) => b,
            None if replayable => super::io::empty(),
            None => break,
        };
        let req = Request::from_parts(parts.clone(), b);
        last_key = Some(target.key.clone());
        ingress
            .last_target
            .set(&ingress.listener.spec.strategy, &target);
        // Counts against the target until the response body is done (balancing).
        let outstanding = flows.hold(target.router);
        match forward(flows, &target, req).await {
            Ok(resp) if resp.headers().contains_key(NOT_SENT_HEADER) && replayable => {
                // The egress's backends refused it.
                reason = "connect-refused";
                let site = flows.site_name(target.router);
                last = format!("at {site}: {}", rescue_detail(resp).await);
            }
            Ok(resp) => {
                let resp = resp.map(|b| super::io::with_guard(b, outstanding));
                return (last_key, Ok(resp));
            }
            Err(SendError::NotSent(req, why)) => {
                body = Some(req.into_body());
                // Here: the local backends refused; elsewhere: the way to the site failed.
                reason = if target.next_hop.is_none() {
                    "connect-refused"
                } else {
                    "no-route"
                };
                last = why;
            }
            Err(SendError::Failed(why)) => return (last_key, Err(ProxyError::Failed(why))),
            Err(SendError::TimedOut) => return (last_key, Err(ProxyError::Timeout)),
        }
        tracing::debug!(reason = %last, "target not reached; trying the next");
    }
    (last_key, Err(ProxyError::NoRoute(reason, last)))
}

/// What an egress's rescue response says (its one-line body, `skiff: <reason>: <detail>`),
/// read with a bound of 1 KiB and 1 s; else its `skiff-error` word.
async fn rescue_detail(resp: Response<Body>) -> String {
    let word = resp
        .headers()
        .get(ERROR_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("not sent")
        .to_owned();
    let mut body = resp.into_body();
    let read = async {
        let mut text = Vec::new();
        while text.len() < 1024 {
            match body.frame().await {
                Some(Ok(f)) => {
                    if let Some(d) = f.data_ref() {
                        text.extend_from_slice(d);
                    }
                }
                _ => break,
            }
        }
        text.truncate(1024);
        text
    };
    let text = tokio::time::timeout(std::time::Duration::from_secs(1), read)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let text = text.trim();
    let text = text.strip_prefix("skiff: ").unwrap_or(text);
    if text.is_empty() {
        word
    } else {
        text.to_owned()
    }
}

/// Layer 6: the local connectors, or the target router over a pooled HTTP/2 connection.
async fn forward(
    flows: &Arc<Flows>,
    target: &Target,
    req: Request<Body>,
) -> Result<Response<Body>, SendError> {
    if target.next_hop.is_none() {
        return local::send(flows, &target.key, req).await;
    }
    let conn = match flows.http_peers.get(flows, target).await {
        Ok(c) => c,
        Err(why) => return Err(SendError::NotSent(req, why)),
    };
    let mut sender = conn.sender();
    match sent(sender.try_send_request(req)).await {
        // The request counts on its connection until its response body is done.
        Ok(resp) => Ok(resp.map(move |b| super::io::with_guard(boxed(b), conn))),
        Err(e) => Err(e),
    }
}
