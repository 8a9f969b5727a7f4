//! Header rules of the HTTP proxy: hop-by-hop headers stripped in both directions, `Via`
//! added, the request shapes refused as smuggling attempts, and what a request's session
//! affinity hashes (a header, a cookie or the client's IP). Pure functions, unit-tested.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// The `Via` value skiff adds.
pub(crate) const VIA: &str = "1.1 skiff";

/// Headers that describe one connection, never the message (RFC 9110 7.6.1), plus the
/// non-standard `Proxy-Connection` and `Keep-Alive`, and `HTTP2-Settings` of the h2c upgrade.
/// (`Trailer` is end to end: HTTP/1.1 encoders write only the trailers it declares.)
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "transfer-encoding",
    "upgrade",
    "http2-settings",
];

/// Headers skiff's routers use between themselves; never taken from a client or a backend.
pub(crate) const INTERNAL: [&str; 3] = [
    super::NOT_SENT_HEADER,
    super::UPGRADE_HEADER,
    super::UPGRADED_HEADER,
];

/// Removes skiff's internal headers (a client or backend could otherwise steer the routers:
/// fake "not sent" to cause a second send, or fake an upgrade).
pub(crate) fn strip_internal(headers: &mut HeaderMap) {
    for n in INTERNAL {
        headers.remove(n);
    }
}

/// Removes hop-by-hop headers and every header the `Connection` header names. `TE: trailers`
/// survives (gRPC needs it end to end) when `keep_te_trailers` is set.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, keep_te_trailers: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    let te_trailers = keep_te_trailers
        && headers
            .get_all(header::TE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("trailers"));
    for n in named {
        headers.remove(n);
    }
    for n in HOP_BY_HOP {
        headers.remove(n);
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Appends skiff to `Via`.
pub(crate) fn add_via(headers: &mut HeaderMap) {
    headers.append(header::VIA, HeaderValue::from_static(VIA));
}

/// Why a request head is refused before anything is sent on (400 Bad Request): the framing
/// shapes that let two parsers disagree about where a request ends. hyper already refuses
/// header folding, two different `Content-Length`s and bad chunk sizes; these are the ones it
/// would accept and normalise in a way a backend behind another proxy might not.
pub(crate) fn smuggling_shape(headers: &HeaderMap) -> Option<&'static str> {
    let te: Vec<&HeaderValue> = headers.get_all(header::TRANSFER_ENCODING).iter().collect();
    let cl: Vec<&HeaderValue> = headers.get_all(header::CONTENT_LENGTH).iter().collect();
    if !te.is_empty() && !cl.is_empty() {
        return Some("Content-Length together with Transfer-Encoding");
    }
    if te.len() > 1 {
        return Some("more than one Transfer-Encoding header");
    }
    if let Some(v) = te.first()
        && !v
            .to_str()
            .is_ok_and(|s| s.trim().eq_ignore_ascii_case("chunked"))
    {
        return Some("a Transfer-Encoding other than chunked");
    }
    if cl.len() > 1
        || cl
            .iter()
            .any(|v| !v.as_bytes().iter().all(u8::is_ascii_digit))
    {
        return Some("a Content-Length that is not one plain number");
    }
    None
}

/// The session-affinity hash of one request on a listener with `affinity`, from the client
/// connection's remote address `client`:
/// - `client-ip`: the connection's remote IP ([`client_ip_hash`]), the same for every request
///   of the connection;
/// - `header:NAME`: the value of the first `NAME` header ([`value_hash`]);
/// - `cookie:NAME`: the value of the first cookie `NAME` in the `Cookie` header(s)
///   ([`cookie_value`]);
/// - `none`: no hash.
///
/// A request without that header or cookie (or with an empty value) has no hash: it is
/// balanced like any request of a listener without affinity.
///
/// [`client_ip_hash`]: crate::routing::client_ip_hash
/// [`value_hash`]: crate::routing::value_hash
pub(crate) fn affinity_hash(
    affinity: &crate::routing::Affinity,
    headers: &HeaderMap,
    client: std::net::IpAddr,
) -> Option<u64> {
    use crate::routing::{Affinity, client_ip_hash, value_hash};
    let value = match affinity {
        Affinity::None => return None,
        Affinity::ClientIp => return Some(client_ip_hash(client)),
        Affinity::Header(name) => headers
            .get(name.as_str())
            .map(|v| v.as_bytes().trim_ascii()),
        Affinity::Cookie(name) => cookie_value(headers, name),
    };
    value.filter(|v| !v.is_empty()).map(value_hash)
}

/// The value of the first cookie called `name` (case-sensitive, RFC 6265 5.4) in the request's
/// `Cookie` headers (`a=b; c=d`; HTTP/2 clients may send one header per cookie), trimmed of
/// spaces; `None` if no cookie has that name.
pub(crate) fn cookie_value<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h [u8]> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|&b| b == b'=')?;
            (pair[..eq].trim_ascii() == name.as_bytes()).then(|| pair[eq + 1..].trim_ascii())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        m
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = map(&[
            ("connection", "close, X-Secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("te", "trailers, deflate"),
            ("x-end-to-end", "kept"),
            ("proxy-authorization", "Basic x"),
            ("trailer", "grpc-status"),
            ("http2-settings", "AAMAAABkAAQAoAAAAAIAAAAA"),
        ]);
        strip_hop_by_hop(&mut h, true);
        let mut names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(
            names,
            ["proxy-authorization", "te", "trailer", "x-end-to-end"]
        );
        assert_eq!(h["te"], "trailers");
        let mut h = map(&[("te", "deflate")]);
        strip_hop_by_hop(&mut h, true);
        assert!(h.is_empty());
    }

    #[test]
    fn internal_headers_never_come_from_outside() {
        let mut h = map(&[
            ("skiff-not-sent", "1"),
            ("skiff-upgrade", "websocket"),
            ("skiff-upgrade-status", "101"),
            ("skiff-error", "kept: it only informs"),
        ]);
        strip_internal(&mut h);
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["skiff-error"]);
    }

    #[test]
    fn via_is_appended() {
        let mut h = map(&[("via", "1.0 fred")]);
        add_via(&mut h);
        let v: Vec<&str> = h
            .get_all("via")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(v, ["1.0 fred", "1.1 skiff"]);
    }

    #[test]
    fn smuggling_shapes_are_named() {
        let ok = [
            map(&[("content-length", "10")]),
            map(&[("transfer-encoding", "chunked")]),
            map(&[("transfer-encoding", "Chunked")]),
            map(&[]),
        ];
        for h in ok {
            assert_eq!(smuggling_shape(&h), None, "{h:?}");
        }
        let bad = [
            map(&[("content-length", "10"), ("transfer-encoding", "chunked")]),
            map(&[
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", "chunked"),
            ]),
            map(&[("transfer-encoding", "xchunked")]),
            map(&[("transfer-encoding", "chunked, identity")]),
            map(&[("transfer-encoding", "identity, chunked")]),
            map(&[("content-length", "10"), ("content-length", "10")]),
            map(&[("content-length", "+10")]),
        ];
        for h in bad {
            assert!(smuggling_shape(&h).is_some(), "{h:?}");
        }
    }

    #[test]
    fn cookies_are_found_among_others_first_match_wins() {
        let h = map(&[
            ("cookie", "theme=dark; session=abc123 ;lang=en"),
            ("cookie", "session=later; x=1"),
        ]);
        assert_eq!(cookie_value(&h, "session"), Some(&b"abc123"[..]));
        assert_eq!(cookie_value(&h, "lang"), Some(&b"en"[..]));
        assert_eq!(cookie_value(&h, "x"), Some(&b"1"[..]));
        // Names match exactly: no prefix, suffix or case-insensitive match.
        assert_eq!(cookie_value(&h, "Session"), None);
        assert_eq!(cookie_value(&h, "sess"), None);
        assert_eq!(cookie_value(&h, "ession"), None);
        // A value may hold '='; a pair without one is no cookie.
        let h = map(&[("cookie", "flag; token=a=b==")]);
        assert_eq!(cookie_value(&h, "token"), Some(&b"a=b=="[..]));
        assert_eq!(cookie_value(&h, "flag"), None);
        assert_eq!(cookie_value(&map(&[]), "session"), None);
    }

    #[test]
    fn the_affinity_hash_comes_from_the_configured_source() {
        use crate::routing::{Affinity, client_ip_hash, value_hash};
        let ip: std::net::IpAddr = "10.0.0.7".parse().unwrap();
        let h = map(&[
            ("x-user", " alice "),
            ("x-user", "bob"),
            ("cookie", "a=1; sid=s-42"),
            ("x-empty", ""),
        ]);
        let hash = |a: &str| affinity_hash(&a.parse::<Affinity>().unwrap(), &h, ip);
        assert_eq!(hash("none"), None);
        assert_eq!(hash("client-ip"), Some(client_ip_hash(ip)));
        assert_eq!(hash("header:X-User"), Some(value_hash(b"alice")));
        assert_eq!(hash("cookie:sid"), Some(value_hash(b"s-42")));
        // Absent or empty: no affinity for this request.
        assert_eq!(hash("header:x-other"), None);
        assert_eq!(hash("header:x-empty"), None);
        assert_eq!(hash("cookie:other"), None);
        assert_ne!(hash("header:x-user"), hash("cookie:sid"));
    }
}
