//! Sending a request to this router's connectors for a key: the least busy first, the next
//! when one cannot be reached, each in its backend's form (HTTP/1.1: origin-form target and
//! `Host`; HTTP/2: absolute URI).

use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Request, Response, Uri};

use super::backend::SendError;
use super::io::Body;
use crate::flow::Flows;
use crate::routing::RoutingKey;

/// Sends `req` (absolute URI, as the ingress made it) to a local connector of `key`.
pub(crate) async fn send(
    flows: &Arc<Flows>,
    key: &RoutingKey,
    mut req: Request<Body>,
) -> Result<Response<Body>, SendError> {
    let connectors = flows
        .config
        .connectors_for_family(key, crate::routing::Family::Http);
    if connectors.is_empty() {
        return Err(SendError::NotSent(
            req,
            format!("key {key}: no HTTP connector for it here"),
        ));
    }
    let mut last = String::new();
    let (uri, version) = (req.uri().clone(), req.version());
    for c in connectors {
        let Some(pool) = c.http_pool.clone() else {
            continue;
        };
        let active = c.counters.start();
        backend_form(&mut req, c.spec.protocol == crate::routing::Protocol::Http2);
        match pool.send(req).await {
            Ok(mut resp) => {
                c.backend_ok();
                // An HTTP/1.1 backend's framing headers end here (HTTP/2 forbids them), and
                // a backend never speaks for skiff.
                super::headers::strip_hop_by_hop(resp.headers_mut(), false);
                super::headers::strip_internal(resp.headers_mut());
                // Busy until the response body is done (least-busy choice, flow counts).
                return Ok(resp.map(|b| super::io::with_guard(b, active)));
            }
            Err(SendError::NotSent(r, why)) => {
                let why = naming(&pool.address(), why);
                c.backend_failed(&why);
                tracing::debug!(connector = %c.spec.name, reason = %why, "backend not reached");
                last = why;
                // Back to the form it came in, for the next connector (HTTP/1.1 and HTTP/2
                // ones want different forms).
                req = r;
                *req.uri_mut() = uri.clone();
                *req.version_mut() = version;
                req.headers_mut().remove(header::HOST);
            }
            Err(SendError::Failed(why)) => {
                let why = naming(&pool.address(), why);
                c.backend_failed(&why);
                return Err(SendError::Failed(why));
            }
            Err(SendError::TimedOut) => return Err(SendError::TimedOut),
        }
    }
    Err(SendError::NotSent(req, last))
}

/// `why` naming the backend at `address` (connect errors name it already).
fn naming(address: &str, why: String) -> String {
    if why.contains(address) {
        why
    } else {
        format!("backend {address}: {why}")
    }
}

/// Puts a request (absolute URI, as the ingress made it) in the form its backend takes.
pub(crate) fn backend_form(req: &mut Request<Body>, http2: bool) {
    if http2 {
        *req.version_mut() = http::Version::HTTP_2;
        return;
    }
    if let Some(auth) = req.uri().authority().cloned()
        && let Ok(v) = HeaderValue::from_str(auth.as_str())
    {
        req.headers_mut().insert(header::HOST, v);
    }
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    if let Ok(uri) = target.parse::<Uri>() {
        *req.uri_mut() = uri;
    }
    *req.version_mut() = http::Version::HTTP_11;
}
