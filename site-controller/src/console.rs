//! The web console: a live picture of the network, served by the admin API at `/` from files
//! built into the binary (no CDN: sites often have no internet).
//!
//! The page (console/index.html) loads console.css and console.js from here; the script polls
//! the JSON endpoints (`/v1/site`, `/v1/network`, `/v1/links`, `/v1/flows`, `/v1/listeners`,
//! `/v1/connectors`) every 2 s. Every asset is sent with a Content-Security-Policy that allows
//! only this origin and no inline script, so a site name or reason crafted as markup cannot run.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;

/// The console's files: path, content type, body.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "/",
        "text/html; charset=utf-8",
        include_str!("console/index.html"),
    ),
    (
        "/console.js",
        "text/javascript; charset=utf-8",
        include_str!("console/console.js"),
    ),
    (
        "/console.css",
        "text/css; charset=utf-8",
        include_str!("console/console.css"),
    ),
    (
        "/favicon.svg",
        "image/svg+xml",
        include_str!("console/favicon.svg"),
    ),
];

/// Scripts, styles, images and fetches from this origin only; no inline script, no frames,
/// no forms, no `<base>`.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; object-src 'none'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

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
    headers.insert(
        http::header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        http::header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_served_with_its_type_and_the_policy() {
        for (path, content_type, body) in ASSETS {
            let r = asset(path).unwrap_or_else(|| panic!("{path} not served"));
            assert_eq!(r.status(), StatusCode::OK);
            assert_eq!(r.headers()[http::header::CONTENT_TYPE], *content_type);
            let csp = r.headers()[http::header::CONTENT_SECURITY_POLICY]
                .to_str()
                .unwrap();
            assert!(csp.starts_with("default-src 'self';"), "{csp}");
            assert!(!csp.contains("unsafe"), "{csp}");
            assert!(!body.is_empty(), "{path} is empty");
        }
        assert!(asset("/v1/site").is_none());
        assert!(asset("/console.js.map").is_none());
    }

    #[test]
    fn the_page_loads_nothing_from_elsewhere_and_has_no_inline_script() {
        for (path, _, body) in ASSETS {
            for needle in ["http://", "https://", "//cdn", "@import"] {
                // The SVG namespace URI is a name, not a fetch.
                let outside = body
                    .match_indices(needle)
                    .any(|(i, _)| !body[i..].starts_with("http://www.w3.org/2000/svg"));
                assert!(!outside, "{path} refers to {needle}");
            }
        }
        let html = ASSETS[0].2;
        assert!(!html.contains("<script>"), "inline script in the page");
        let handler = html.match_indices(" on").any(|(i, _)| {
            let rest = &html[i + 3..];
            let name = rest.bytes().take_while(u8::is_ascii_lowercase).count();
            name > 0 && rest[name..].starts_with('=')
        });
        assert!(!handler, "inline event handler in the page");
        let js = ASSETS[1].2;
        assert!(!js.contains("innerHTML"), "console.js writes markup");
        assert!(!js.contains("eval("), "console.js evaluates strings");
    }
}
