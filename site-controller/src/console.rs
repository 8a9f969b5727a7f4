//! The web console: a live picture of the network, served by the admin API at `/` from files
//! built into the binary (no CDN: sites often have no internet).

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;

/// The console's files: path, content type, body.
const ASSETS: &[(&str, &str, &str)] = &[(
    "/",
    "text/html; charset=utf-8",
    include_str!("console/index.html"),
)];

/// The console file at `path`, if there is one.
pub fn asset(path: &str) -> Option<Response<Full<Bytes>>> {
    let (_, content_type, body) = ASSETS.iter().find(|(p, _, _)| *p == path)?;
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = StatusCode::OK;
    let headers = r.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    headers.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache"),
    );
    Some(r)
}
