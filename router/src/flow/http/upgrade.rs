//! HTTP/1.1 upgrades (WebSocket): the upgrade request goes to one target; once the backend
//! answers `101 Switching Protocols`, the client's and the backend's connections are joined
//! as two byte streams. Between routers the two streams are the request and response bodies
//! of one HTTP/2 stream (headers `skiff-upgrade` / `skiff-upgrade-status`); a FIN on either
//! side ends its body, so half-close passes through.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::backend::SendError;
use super::headers::{add_via, strip_hop_by_hop};
use super::io::{Body, BoxError, boxed, empty};
use super::stack::{ProxyError, rescue_response};
use super::{MAX_REQUEST_ATTEMPTS, RESPONSE_TIMEOUT, UPGRADE_HEADER, UPGRADED_HEADER, local};
use crate::flow::Flows;
use crate::routing::{RoutingKey, Target};

/// Chunks queued from one side's connection to the other's HTTP/2 body.
const CHANNEL_CHUNKS: usize = 8;

/// Whether a request asks to switch protocols.
pub(crate) fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == http::Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// A body fed by a channel, and its sender.
fn channel_body() -> (tokio::sync::mpsc::Sender<Bytes>, Body) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(CHANNEL_CHUNKS);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, BoxError>(Frame::data(b)), rx))
    });
    (tx, StreamBody::new(stream).boxed_unsync())
}

/// Copies `from` into the channel until EOF (then the body ends) or the receiver is gone.
async fn pump_in(mut from: impl AsyncRead + Unpin, tx: tokio::sync::mpsc::Sender<Bytes>) {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    loop {
        buf.reserve(16 * 1024);
        match from.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                if tx.send(buf.split().freeze()).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Writes `body`'s data into `to`, then half-closes it.
async fn pump_out(mut body: Body, mut to: impl AsyncWrite + Unpin) {
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Some(d) = f.data_ref()
                    && to.write_all(d).await.is_err()
                {
                    return;
                }
            }
            Err(_) => return,
        }
    }
    let _ = to.shutdown().await;
}

/// The request to a backend: the client's headers (hop-by-hop ones out), with
/// `Connection: upgrade` and the `Upgrade` value, in origin form.
fn backend_request(parts: &http::request::Parts, upgrade: &HeaderValue) -> Request<Body> {
    let mut req = Request::from_parts(parts.clone(), empty());
    req.headers_mut().remove(UPGRADE_HEADER);
    req.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    req.headers_mut().insert(header::UPGRADE, upgrade.clone());
    local::backend_form(&mut req, false);
    req
}

/// The 101 to the client, from the backend's answer (headers as they came, hop-by-hop ones
/// replaced by the upgrade's own).
fn switching(headers: &http::HeaderMap, upgrade: &HeaderValue) -> Response<Body> {
    let mut resp = Response::new(empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    for (k, v) in headers {
        if k != UPGRADED_HEADER && k != UPGRADE_HEADER && k != header::CONTENT_LENGTH {
            h.append(k.clone(), v.clone());
        }
    }
    strip_hop_by_hop(h, false);
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
        let _outstanding = flows.hold(target.router);
        let attempt = if target.next_hop.is_none() {
            local_upgrade(flows, &target.key, &parts, &upgrade).await
        } else {
            remote_upgrade(flows, &target, &parts, &upgrade).await
        };
        match attempt {
            Ok(Joined::Switched(resp, Side::Local(backend))) => {
                tokio::spawn(async move {
                    let (Ok(client), Ok(backend)) = (client_side.await, backend.await) else {
                        return;
                    };
                    let (mut c, mut b) = (TokioIo::new(client), TokioIo::new(backend));
                    let _ = tokio::io::copy_bidirectional(&mut c, &mut b).await;
                });
                return Ok(resp);
            }
            Ok(Joined::Switched(resp, Side::Remote(tx, body))) => {
                tokio::spawn(async move {
                    let Ok(client) = client_side.await else {
                        return;
                    };
                    let (r, w) = tokio::io::split(TokioIo::new(client));
                    tokio::join!(pump_in(r, tx), pump_out(body, w));
                });
                return Ok(resp);
            }
            Ok(Joined::Answered(resp)) => return Ok(resp),
            Err(Attempt::NotSent(why)) => last = why,
            Err(Attempt::Failed(why)) => return Err(ProxyError::Failed(why)),
        }
    }
    Err(ProxyError::NoRoute(last))
}

/// The other end once switched.
enum Side {
    /// A local backend's upgraded connection.
    Local(hyper::upgrade::OnUpgrade),
    /// The HTTP/2 stream to the egress: our request body's sender, its response body.
    Remote(tokio::sync::mpsc::Sender<Bytes>, Body),
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
}

async fn local_upgrade(
    flows: &Arc<Flows>,
    key: &RoutingKey,
    parts: &http::request::Parts,
    upgrade: &HeaderValue,
) -> Result<Joined, Attempt> {
    let mut last = format!("key {key}: no HTTP connector for it here");
    for c in flows.config.connectors_for_family(key, true) {
        let Some(pool) = c.http_pool.clone() else {
            continue;
        };
        let _active = c.counters.start();
        let req = backend_request(parts, upgrade);
        match tokio::time::timeout(RESPONSE_TIMEOUT, pool.upgrade(req)).await {
            Err(_) => return Err(Attempt::Failed("no response head in time".into())),
            Ok(Ok((resp, Some(on)))) => {
                let resp = switching(resp.headers(), upgrade_of(resp.headers(), upgrade));
                return Ok(Joined::Switched(resp, Side::Local(on)));
            }
            Ok(Ok((resp, None))) => return Ok(Joined::Answered(resp)),
            Ok(Err(SendError::NotSent(_, why))) => {
                c.counters.fail();
                last = why;
            }
            Ok(Err(SendError::Failed(why))) => return Err(Attempt::Failed(why)),
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
    req.headers_mut()
        .insert(HeaderName::from_static(UPGRADE_HEADER), upgrade.clone());
    let mut sender = conn.sender();
    let resp = match tokio::time::timeout(RESPONSE_TIMEOUT, sender.try_send_request(req)).await {
        Err(_) => return Err(Attempt::Failed("no response head in time".into())),
        Ok(Ok(resp)) => resp,
        Ok(Err(mut e)) => {
            return Err(match e.take_message() {
                Some(_) => Attempt::NotSent(e.into_error().to_string()),
                None => Attempt::Failed(e.into_error().to_string()),
            });
        }
    };
    if resp.headers().contains_key(super::NOT_SENT_HEADER) {
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
    let mut last = format!("key {key}: no HTTP connector for it here");
    for c in flows.config.connectors_for_family(key, true) {
        let Some(pool) = c.http_pool.clone() else {
            continue;
        };
        let _active = c.counters.start();
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
                h.insert(
                    HeaderName::from_static(UPGRADED_HEADER),
                    HeaderValue::from_static("101"),
                );
                h.insert(HeaderName::from_static(UPGRADE_HEADER), upgraded_to);
                let client_bytes = boxed(client_bytes);
                tokio::spawn(async move {
                    let Ok(backend) = on.await else {
                        return;
                    };
                    let (r, w) = tokio::io::split(TokioIo::new(backend));
                    tokio::join!(pump_in(r, tx), pump_out(client_bytes, w));
                });
                return answer;
            }
            Ok((resp, None)) => return resp,
            Err(SendError::NotSent(_, why)) => {
                c.counters.fail();
                last = why;
            }
            Err(SendError::Failed(why)) => {
                return rescue_response(StatusCode::BAD_GATEWAY, "backend-failed", &why);
            }
        }
    }
    let mut r = rescue_response(StatusCode::SERVICE_UNAVAILABLE, "connect-refused", &last);
    r.headers_mut().insert(
        HeaderName::from_static(super::NOT_SENT_HEADER),
        HeaderValue::from_static("1"),
    );
    r
}
