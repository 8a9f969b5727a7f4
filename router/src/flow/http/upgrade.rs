//! HTTP/1.1 upgrades (WebSocket): the upgrade request goes to one target; once the backend
//! answers `101 Switching Protocols`, the client's and the backend's connections are joined
//! as two byte streams. Between routers the two streams are the request and response bodies
//! of one HTTP/2 stream (headers `skiff-upgrade` / `skiff-upgrade-status`); a FIN on either
//! side ends its body, so half-close passes through, and an error on either side (a reset, a
//! lost link) ends both, so nobody waits on a dead peer. `Upgrade: h2c` is not an upgrade
//! here (RFC 9113 retired it): such requests are routed as ordinary ones.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Body as _, Frame, Incoming};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::backend::{SendError, sent};
use super::headers::{add_via, strip_hop_by_hop, strip_internal};
use super::io::{Body, BoxError, boxed, empty};
use super::stack::{ProxyError, normalise_response, rescue_response};
use super::{MAX_REQUEST_ATTEMPTS, NOT_SENT_HEADER, UPGRADE_HEADER, UPGRADED_HEADER};
use crate::flow::Flows;
use crate::routing::{Protocol, RoutingKey, Target};

/// Chunks queued from one side's connection to the other's HTTP/2 body.
const CHANNEL_CHUNKS: usize = 8;

/// Whether a request asks to switch protocols (to anything but h2c).
pub(crate) fn is_upgrade<B>(req: &Request<B>) -> bool {
    let wants = |v: &str| {
        v.split(',')
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
    };
    req.version() == http::Version::HTTP_11
        && req
            .headers()
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| !v.trim().eq_ignore_ascii_case("h2c"))
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(wants)
}

type Chunk = Result<Bytes, std::io::Error>;

/// A body fed by a channel (an error ends it as an error), and its sender.
fn channel_body() -> (tokio::sync::mpsc::Sender<Chunk>, Body) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Chunk>(CHANNEL_CHUNKS);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let item = rx.recv().await?;
        Some((item.map(Frame::data).map_err(BoxError::from), rx))
    });
    (tx, StreamBody::new(stream).boxed_unsync())
}

/// Copies `from` into the channel: `Ok` at EOF (the body then ends cleanly), `Err` when the
/// read failed (passed on, so the other side sees an error, not an end).
async fn pump_in(
    mut from: impl AsyncRead + Unpin,
    tx: tokio::sync::mpsc::Sender<Chunk>,
) -> Result<(), ()> {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    loop {
        buf.reserve(16 * 1024);
        match from.read_buf(&mut buf).await {
            Ok(0) => return Ok(()),
            Ok(_) => {
                if tx.send(Ok(buf.split().freeze())).await.is_err() {
                    return Err(());
                }
            }
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return Err(());
            }
        }
    }
}

/// Writes `body`'s data into `to` and half-closes it at the body's end; `Err` when the body
/// failed or the write did.
async fn pump_out(mut body: Body, mut to: impl AsyncWrite + Unpin) -> Result<(), ()> {
    while let Some(frame) = body.frame().await {
        let f = frame.map_err(|_| ())?;
        if let Some(d) = f.data_ref() {
            to.write_all(d).await.map_err(|_| ())?;
        }
    }
    to.shutdown().await.map_err(|_| ())
}

/// Runs both directions until both ended cleanly, either failed, or the router shuts down;
/// then everything is dropped (sockets closed, streams reset).
async fn join_both(
    inward: impl std::future::Future<Output = Result<(), ()>>,
    outward: impl std::future::Future<Output = Result<(), ()>>,
    shutdown: CancellationToken,
) {
    let (mut a, mut b) = (std::pin::pin!(inward), std::pin::pin!(outward));
    let (mut a_done, mut b_done) = (false, false);
    while !(a_done && b_done) {
        tokio::select! {
            () = shutdown.cancelled() => return,
            r = &mut a, if !a_done => { if r.is_err() { return } a_done = true; }
            r = &mut b, if !b_done => { if r.is_err() { return } b_done = true; }
        }
    }
}

/// The request to a backend: the client's headers (hop-by-hop ones out), with
/// `Connection: upgrade` and the `Upgrade` value, no body, in origin form.
fn backend_request(parts: &http::request::Parts, upgrade: &HeaderValue) -> Request<Body> {
    let mut req = Request::from_parts(parts.clone(), empty());
    let h = req.headers_mut();
    strip_internal(h);
    h.remove(header::CONTENT_LENGTH);
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, upgrade.clone());
    super::local::backend_form(&mut req, false);
    req
}

/// The 101 to the client, from the backend's answer (headers as they came, hop-by-hop and
/// internal ones replaced by the upgrade's own).
fn switching(headers: &http::HeaderMap, upgrade: &HeaderValue) -> Response<Body> {
    let mut resp = Response::new(empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    for (k, v) in headers {
        if k != header::CONTENT_LENGTH {
            h.append(k.clone(), v.clone());
        }
    }
    strip_hop_by_hop(h, false);
    strip_internal(h);
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, upgrade.clone());
    add_via(h);
    resp
}

/// The ingress side: the first target that takes the request.
pub(crate) async fn ingress(
    flows: &Arc<Flows>,
    targets: Vec<Target>,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, ProxyError> {
    if !req.body().is_end_stream() && req.headers().contains_key(header::CONTENT_LENGTH) {
        return Err(ProxyError::BadRequest("an upgrade request with a body"));
    }
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .cloned()
        .ok_or(ProxyError::BadRequest(
            "an upgrade without an Upgrade header",
        ))?;
    let client_side = hyper::upgrade::on(&mut req);
    let (parts, _) = super::stack::normalise_request(req)?.into_parts();
    let mut last = String::from("no target");
    for target in targets.into_iter().take(MAX_REQUEST_ATTEMPTS) {
        let outstanding = flows.hold(target.router);
        let attempt = if target.next_hop.is_none() {
            local_upgrade(flows, &target.key, &parts, &upgrade).await
        } else {
            remote_upgrade(flows, &target, &parts, &upgrade).await
        };
        match attempt {
            Ok(Joined::Switched(resp, side)) => {
                let shutdown = flows.shutdown.clone();
                flows.tasks.spawn(async move {
                    let _counted = outstanding;
                    let Ok(client) = client_side.await else {
                        return;
                    };
                    let (r, w) = tokio::io::split(TokioIo::new(client));
                    match side {
                        Side::Local(backend) => {
                            let Ok(backend) = backend.await else {
                                return;
                            };
                            let (br, bw) = tokio::io::split(TokioIo::new(backend));
                            join_both(copy_half(r, bw), copy_half(br, w), shutdown).await;
                        }
                        Side::Remote(tx, body) => {
                            join_both(pump_in(r, tx), pump_out(body, w), shutdown).await;
                        }
                    }
                });
                return Ok(resp);
            }
            Ok(Joined::Answered(resp)) => return Ok(normalise_response(resp)),
            Err(Attempt::NotSent(why)) => last = why,
            Err(Attempt::Failed(why)) => return Err(ProxyError::Failed(why)),
            Err(Attempt::TimedOut) => return Err(ProxyError::Timeout),
        }
    }
    Err(ProxyError::NoRoute("no-route", last))
}

/// Copies one direction between two sockets, half-closing the writer at EOF.
async fn copy_half(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
) -> Result<(), ()> {
    tokio::io::copy(&mut from, &mut to).await.map_err(|_| ())?;
    to.shutdown().await.map_err(|_| ())
}

/// The other end once switched.
enum Side {
    /// A local backend's upgraded connection.
    Local(hyper::upgrade::OnUpgrade),
    /// The HTTP/2 stream to the egress: our request body's sender, its response body.
    Remote(tokio::sync::mpsc::Sender<Chunk>, Body),
}

enum Joined {
    /// The backend switched: the 101 for the client, and the other end.
    Switched(Response<Body>, Side),
    /// The backend answered without switching: the answer as it is.
    Answered(Response<Body>),
}

enum Attempt {
    NotSent(String),
    Failed(String),
    TimedOut,
}

/// The `http` (HTTP/1.1) connectors of a key: an upgrade needs a backend that speaks it.
fn upgrade_connectors(flows: &Flows, key: &RoutingKey) -> Vec<Arc<crate::flow::config::Connector>> {
    flows
        .config
        .connectors_for_family(key, crate::routing::Family::Http)
        .into_iter()
        .filter(|c| c.spec.protocol == Protocol::Http)
        .collect()
}

async fn local_upgrade(
    flows: &Arc<Flows>,
    key: &RoutingKey,
    parts: &http::request::Parts,
    upgrade: &HeaderValue,
) -> Result<Joined, Attempt> {
    let mut last = format!("key {key}: no http (HTTP/1.1) connector here to upgrade with");
    for c in upgrade_connectors(flows, key) {
        let Some(pool) = c.http_pool.clone() else {
            continue;
        };
        let _active = c.counters.start();
        match pool.upgrade(backend_request(parts, upgrade)).await {
            Ok((resp, Some(on))) => {
                let resp = switching(resp.headers(), upgrade_of(resp.headers(), upgrade));
                return Ok(Joined::Switched(resp, Side::Local(on)));
            }
            Ok((mut resp, None)) => {
                strip_internal(resp.headers_mut());
                return Ok(Joined::Answered(resp));
            }
            Err(SendError::NotSent(_, why)) => {
                c.counters.fail();
                last = why;
            }
            Err(SendError::Failed(why)) => return Err(Attempt::Failed(why)),
            Err(SendError::TimedOut) => return Err(Attempt::TimedOut),
        }
    }
    Err(Attempt::NotSent(last))
}

fn upgrade_of<'a>(headers: &'a http::HeaderMap, asked: &'a HeaderValue) -> &'a HeaderValue {
    headers.get(header::UPGRADE).unwrap_or(asked)
}

async fn remote_upgrade(
    flows: &Arc<Flows>,
    target: &Target,
    parts: &http::request::Parts,
    upgrade: &HeaderValue,
) -> Result<Joined, Attempt> {
    let conn = flows
        .http_peers
        .get(flows, target)
        .await
        .map_err(Attempt::NotSent)?;
    let (tx, body) = channel_body();
    let mut req = Request::from_parts(parts.clone(), body);
    req.headers_mut().remove(header::CONTENT_LENGTH);
    req.headers_mut()
        .insert(HeaderName::from_static(UPGRADE_HEADER), upgrade.clone());
    let mut sender = conn.sender();
    let resp = match sent(sender.try_send_request(req)).await {
        Ok(resp) => resp,
        Err(SendError::NotSent(_, why)) => return Err(Attempt::NotSent(why)),
        Err(SendError::Failed(why)) => return Err(Attempt::Failed(why)),
        Err(SendError::TimedOut) => return Err(Attempt::TimedOut),
    };
    if resp.headers().contains_key(NOT_SENT_HEADER) {
        return Err(Attempt::NotSent("the egress reached no backend".into()));
    }
    let switched = resp.headers().get(UPGRADED_HEADER).is_some();
    let (head, body) = resp.into_parts();
    let body = super::io::with_guard(boxed(body), conn);
    if !switched {
        return Ok(Joined::Answered(Response::from_parts(head, body)));
    }
    let upgraded_to = head.headers.get(UPGRADE_HEADER).unwrap_or(upgrade).clone();
    Ok(Joined::Switched(
        switching(&head.headers, &upgraded_to),
        Side::Remote(tx, body),
    ))
}

/// The egress side: the upgrade request to a local backend; on 101, the answer (200 with
/// `skiff-upgrade-status`) streams the backend's bytes while the request body feeds it.
pub(crate) async fn egress(
    flows: &Arc<Flows>,
    key: &RoutingKey,
    req: Request<Incoming>,
) -> Response<Body> {
    let Some(upgrade) = req.headers().get(UPGRADE_HEADER).cloned() else {
        return rescue_response(StatusCode::BAD_REQUEST, "bad-request", "no upgrade value");
    };
    let (parts, client_bytes) = req.into_parts();
    let mut last = format!("key {key}: no http (HTTP/1.1) connector here to upgrade with");
    for c in upgrade_connectors(flows, key) {
        let Some(pool) = c.http_pool.clone() else {
            continue;
        };
        let active = c.counters.start();
        match pool.upgrade(backend_request(&parts, &upgrade)).await {
            Ok((resp, Some(on))) => {
                let upgraded_to = upgrade_of(resp.headers(), &upgrade).clone();
                let (tx, body) = channel_body();
                let mut answer = Response::new(body);
                let h = answer.headers_mut();
                for (k, v) in resp.headers() {
                    h.append(k.clone(), v.clone());
                }
                strip_hop_by_hop(h, false);
                strip_internal(h);
                h.insert(
                    HeaderName::from_static(UPGRADED_HEADER),
                    HeaderValue::from_static("101"),
                );
                h.insert(HeaderName::from_static(UPGRADE_HEADER), upgraded_to);
                let client_bytes = boxed(client_bytes);
                let shutdown = flows.shutdown.clone();
                flows.tasks.spawn(async move {
                    let _active = active;
                    let Ok(backend) = on.await else {
                        return;
                    };
                    let (r, w) = tokio::io::split(TokioIo::new(backend));
                    join_both(pump_in(r, tx), pump_out(client_bytes, w), shutdown).await;
                });
                return answer;
            }
            Ok((mut resp, None)) => {
                strip_internal(resp.headers_mut());
                return resp;
            }
            Err(SendError::NotSent(_, why)) => {
                c.counters.fail();
                last = why;
            }
            Err(SendError::Failed(why)) => {
                return rescue_response(StatusCode::BAD_GATEWAY, "backend-failed", &why);
            }
            Err(SendError::TimedOut) => {
                return rescue_response(
                    StatusCode::GATEWAY_TIMEOUT,
                    "timeout",
                    "no response head in time",
                );
            }
        }
    }
    let mut r = rescue_response(StatusCode::SERVICE_UNAVAILABLE, "connect-refused", &last);
    r.headers_mut().insert(
        HeaderName::from_static(NOT_SENT_HEADER),
        HeaderValue::from_static("1"),
    );
    r
}
