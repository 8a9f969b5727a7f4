//! HTTP CONNECT proxies for outbound links and token redemptions: the proxy URL
//! (`http://[user:password@]host:port`) and the client side of the CONNECT tunnel.
//!
//! A proxied connection is plain TCP to the proxy, `CONNECT host:port HTTP/1.1`, the proxy's
//! answer (its head read up to [`MAX_RESPONSE_HEAD`] bytes), then TLS on the same socket from
//! the first byte after the head. Only a 2xx answer opens the tunnel; any other answer becomes
//! a [`ProxyError`] that names the proxy, the target and what to change. The password is
//! sent in `Proxy-Authorization: Basic` (RFC 7617) and never appears in an error or in
//! `Debug`/`Display` output.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Most bytes of the proxy's answer head (status line and headers) read before giving up.
pub const MAX_RESPONSE_HEAD: usize = 8 * 1024;

/// How long connecting to the proxy and its answer to CONNECT may take together. Shorter than
/// a link attempt's limit (10 s), so a proxy that does not answer is named as such.
pub const PROXY_TIMEOUT: Duration = Duration::from_secs(5);

/// An HTTP proxy that tunnels TCP with CONNECT, parsed from `http://[user:password@]host:port`.
/// `Display` shows `host:port` only; `Debug` leaves the password out.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    host: String,
    port: u16,
    credentials: Option<(String, String)>,
}

impl std::fmt::Debug for ProxyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.credentials.as_ref().map(|(u, _)| u))
            .finish_non_exhaustive()
    }
}

impl std::fmt::Display for ProxyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.address())
    }
}

/// Why a proxy URL cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyUrlError {
    /// Not `http://...`. The URL is not quoted: without its scheme, nothing tells a password
    /// apart from a host.
    #[error(
        "proxy URL must start with http:// (a proxy that tunnels with CONNECT, e.g. http://proxy.example:3128)"
    )]
    NoScheme,
    /// `https://`, `socks5://` and the like.
    #[error(
        "proxy scheme {scheme:?} is not supported: only http:// proxies (CONNECT over plain TCP; the link inside the tunnel is TLS end to end, so the proxy sees no link traffic)"
    )]
    Scheme {
        /// The scheme given.
        scheme: String,
    },
    /// No host before the port.
    #[error("proxy URL has no host: expected http://host:port")]
    NoHost,
    /// No `:port`.
    #[error("proxy URL names no port: expected http://HOST:PORT (e.g. port 3128 or 8080)")]
    NoPort,
    /// A port that is not 1 to 65535. Not quoted: in `http://user:password` (the host
    /// forgotten) the "port" is the password.
    #[error(
        "proxy port is not a number from 1 to 65535: expected http://[USER:PASSWORD@]HOST:PORT"
    )]
    BadPort,
    /// Anything after `host:port` but a single `/`. Not quoted: it may be the end of a
    /// password with an unencoded `/`, `?` or `#`.
    #[error(
        "proxy URL has a path, query or fragment after host:port: give http://[USER:PASSWORD@]HOST:PORT only (percent-encode a / ? or # in a password)"
    )]
    Path,
    /// `user:password@` without a password, with a bad `%` escape, or with an unencoded
    /// `/`, `?` or `#`.
    #[error(
        "proxy credentials must be user:password@ (percent-encode an @ : / ? # or % in them, e.g. %40 for @)"
    )]
    Credentials,
}

impl std::str::FromStr for ProxyConfig {
    type Err = ProxyUrlError;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        let url = url.trim();
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(ProxyUrlError::NoScheme);
        };
        // Something like `user:password@http` is no scheme: never echo it.
        if !scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        {
            return Err(ProxyUrlError::NoScheme);
        }
        if !scheme.eq_ignore_ascii_case("http") {
            return Err(ProxyUrlError::Scheme {
                scheme: scheme.to_ascii_lowercase(),
            });
        }
        // The authority ends at the first `/`, `?` or `#`; only a lone `/` may follow.
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        if !tail.is_empty() && tail != "/" {
            // An unencoded `/`, `?` or `#` in the password ends the authority early: say so
            // without echoing what follows (part of the password).
            if tail.contains('@') {
                return Err(ProxyUrlError::Credentials);
            }
            return Err(ProxyUrlError::Path);
        }
        let (credentials, hostport) = match authority.rsplit_once('@') {
            Some((userinfo, hostport)) => {
                let (user, password) =
                    userinfo.split_once(':').ok_or(ProxyUrlError::Credentials)?;
                let user = percent_decode(user).ok_or(ProxyUrlError::Credentials)?;
                let password = percent_decode(password).ok_or(ProxyUrlError::Credentials)?;
                if user.is_empty() {
                    return Err(ProxyUrlError::Credentials);
                }
                (Some((user, password)), hostport)
            }
            None => (None, authority),
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or(ProxyUrlError::NoHost)?;
            (host, after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c.is_control()) {
            return Err(ProxyUrlError::NoHost);
        }
        let port = port.ok_or(ProxyUrlError::NoPort)?;
        let port = match port.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => return Err(ProxyUrlError::BadPort),
        };
        Ok(ProxyConfig {
            host: host.into(),
            port,
            credentials,
        })
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Standard base64 with padding (RFC 4648), for `Proxy-Authorization: Basic`.
fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

impl ProxyConfig {
    /// `host:port` of the proxy (IPv6 in brackets), without credentials.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Whether the URL carries a user and password.
    pub fn has_credentials(&self) -> bool {
        self.credentials.is_some()
    }

    /// The CONNECT request for `target` (`host:port`).
    fn request(&self, target: &str) -> String {
        let mut req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
        if let Some((user, password)) = &self.credentials {
            let token = base64(format!("{user}:{password}").as_bytes());
            req.push_str(&format!("Proxy-Authorization: Basic {token}\r\n"));
        }
        req.push_str("\r\n");
        req
    }

    /// Connects to the proxy and opens a tunnel to `target` (`host:port`; the proxy resolves
    /// the name). Returns the socket, buffered with `read_buffer` bytes, positioned at the
    /// first byte after the proxy's answer head. Connecting and the answer together take at
    /// most `timeout`.
    pub async fn connect(
        &self,
        target: &str,
        timeout: Duration,
        read_buffer: usize,
    ) -> Result<BufReader<TcpStream>, ProxyError> {
        if target.is_empty() || target.contains(|c: char| c.is_whitespace() || c.is_control()) {
            return Err(ProxyError::BadTarget {
                target: target.escape_debug().to_string(),
            });
        }
        let connected = std::sync::atomic::AtomicBool::new(false);
        let work = async {
            let tcp = TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|e| ProxyError::Unreachable {
                    proxy: self.address(),
                    why: describe_io(&e),
                })?;
            let _ = tcp.set_nodelay(true);
            let mut socket = BufReader::with_capacity(read_buffer.max(1024), tcp);
            connected.store(true, std::sync::atomic::Ordering::Relaxed);
            self.handshake(&mut socket, target).await?;
            Ok(socket)
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(ProxyError::Timeout {
                proxy: self.address(),
                target: target.into(),
                limit: timeout,
                connected: connected.load(std::sync::atomic::Ordering::Relaxed),
            }),
        }
    }

    /// Sends CONNECT on `socket` and reads the answer head; `Ok` on a 2xx.
    async fn handshake<S>(&self, socket: &mut BufReader<S>, target: &str) -> Result<(), ProxyError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let proxy = self.address();
        let lost = |e: std::io::Error| ProxyError::Closed {
            proxy: proxy.clone(),
            target: target.into(),
            why: describe_io(&e),
        };
        socket
            .get_mut()
            .write_all(self.request(target).as_bytes())
            .await
            .map_err(lost)?;
        let head = read_head(socket).await.map_err(|e| match e {
            HeadError::Io(e) => lost(e),
            HeadError::Eof { read } => ProxyError::Closed {
                proxy: proxy.clone(),
                target: target.into(),
                why: if read == 0 {
                    "it closed the connection without an answer".into()
                } else {
                    format!("it closed the connection after {read} bytes of an unfinished answer")
                },
            },
            HeadError::TooLarge => ProxyError::Malformed {
                proxy: proxy.clone(),
                what: format!("an answer head longer than {MAX_RESPONSE_HEAD} bytes"),
            },
        })?;
        let (status, reason) = parse_status_line(&head).ok_or_else(|| ProxyError::Malformed {
            proxy: proxy.clone(),
            what: format!("{:?}, not an HTTP answer", preview(&head)),
        })?;
        if (200..300).contains(&status) {
            return Ok(());
        }
        Err(ProxyError::Refused {
            proxy,
            target: target.into(),
            status,
            reason,
            user: self.credentials.as_ref().map(|(u, _)| u.clone()),
        })
    }
}

enum HeadError {
    Io(std::io::Error),
    Eof { read: usize },
    TooLarge,
}

/// Reads up to and including the blank line that ends the answer head; bytes after it stay in
/// `socket`'s buffer (they belong to the tunnel).
async fn read_head<S>(socket: &mut BufReader<S>) -> Result<Vec<u8>, HeadError>
where
    S: tokio::io::AsyncRead + Unpin,
{
    let mut head: Vec<u8> = Vec::new();
    loop {
        let buf = socket.fill_buf().await.map_err(HeadError::Io)?;
        if buf.is_empty() {
            return Err(HeadError::Eof { read: head.len() });
        }
        let before = head.len();
        let take = buf.len().min(MAX_RESPONSE_HEAD - before);
        head.extend_from_slice(&buf[..take]);
        // The blank line may straddle two reads: search from 2 bytes back.
        if let Some(end) = head_end(&head, before.saturating_sub(2)) {
            socket.consume(end - before);
            head.truncate(end);
            return Ok(head);
        }
        socket.consume(take);
        if head.len() >= MAX_RESPONSE_HEAD {
            return Err(HeadError::TooLarge);
        }
    }
}

/// The length of the head in `head` (through its blank line, `\r\n\r\n` or, leniently as RFC
/// 9112 allows, `\n\n`), searching for the blank line's first `\n` from `from` on.
fn head_end(head: &[u8], from: usize) -> Option<usize> {
    (from..head.len()).find_map(|i| {
        if head[i] != b'\n' {
            return None;
        }
        match (head.get(i + 1), head.get(i + 2)) {
            (Some(b'\n'), _) => Some(i + 2),
            (Some(b'\r'), Some(b'\n')) => Some(i + 3),
            _ => None,
        }
    })
}

/// `HTTP/1.x SSS reason` → (SSS, reason).
fn parse_status_line(head: &[u8]) -> Option<(u16, String)> {
    let line = head.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
    let rest = line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| line.strip_prefix("HTTP/1.0 "))?;
    let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let code: u16 = code.parse().ok().filter(|c| (100..600).contains(c))?;
    let reason: String = reason
        .chars()
        .filter(|c| !c.is_control())
        .take(100)
        .collect();
    Some((code, reason))
}

/// The first bytes of an answer, for an error message.
fn preview(head: &[u8]) -> String {
    String::from_utf8_lossy(&head[..head.len().min(40)]).into_owned()
}

fn describe_io(e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused => "connection refused".into(),
        K::ConnectionReset => "connection reset".into(),
        K::TimedOut => "timed out".into(),
        _ => e.to_string(),
    }
}

/// Why a tunnel through a proxy was not opened. Every message names the proxy by `host:port`
/// (never its password).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// The target is not a `host:port` that can go into a request line.
    #[error(
        "link endpoint {target:?} cannot be sent to a proxy (no spaces or control characters in host:port)"
    )]
    BadTarget {
        /// The endpoint, escaped.
        target: String,
    },
    /// No TCP connection to the proxy.
    #[error(
        "proxy {proxy} unreachable: {why} (is the proxy running, and is the link's proxy URL right?)"
    )]
    Unreachable {
        /// `host:port` of the proxy.
        proxy: String,
        /// Why, in words.
        why: String,
    },
    /// The proxy closed or broke the connection before a complete answer.
    #[error("proxy {proxy} gave no answer to CONNECT to {target}: {why}")]
    Closed {
        /// `host:port` of the proxy.
        proxy: String,
        /// The target asked for.
        target: String,
        /// Why, in words.
        why: String,
    },
    /// Connecting or the answer took too long.
    #[error("proxy {proxy} {} within {} s", waited_for(*.connected, target), .limit.as_secs_f32())]
    Timeout {
        /// `host:port` of the proxy.
        proxy: String,
        /// The target asked for.
        target: String,
        /// The limit.
        limit: Duration,
        /// Whether the TCP connection was made (then the answer was missing).
        connected: bool,
    },
    /// The answer is not HTTP, or its head is too long.
    #[error("proxy {proxy} answered {what}: is it an HTTP proxy? check the link's proxy URL")]
    Malformed {
        /// `host:port` of the proxy.
        proxy: String,
        /// What came back.
        what: String,
    },
    /// The proxy answered with a status other than 2xx.
    #[error("proxy {proxy} {} {status} {reason}{}", answered(*.status, target), refusal_hint(*.status, user.as_deref()))]
    Refused {
        /// `host:port` of the proxy.
        proxy: String,
        /// The target asked for.
        target: String,
        /// The HTTP status.
        status: u16,
        /// Its reason phrase.
        reason: String,
        /// The user the link authenticated as, if any.
        user: Option<String>,
    },
}

fn waited_for(connected: bool, target: &str) -> String {
    if connected {
        format!("did not answer CONNECT to {target}")
    } else {
        "did not accept a connection".into()
    }
}

/// "refused CONNECT to T:" for a 4xx (the proxy said no), "answered CONNECT to T with" for
/// anything else (a 5xx: the proxy could not do it).
fn answered(status: u16, target: &str) -> String {
    if (400..500).contains(&status) {
        format!("refused CONNECT to {target}:")
    } else {
        format!("answered CONNECT to {target} with")
    }
}

/// Starts of the hints of a refusal for missing or wrong credentials (401, 407), which
/// [`refused_for_credentials`] looks for.
const NO_CREDENTIALS: &str = " (the proxy wants credentials and the link has none";
const BAD_CREDENTIALS: &str = " (the proxy did not accept the credentials of user";

/// Whether a link's refusal text is a proxy refusing its credentials (401, 407): only an
/// operator fixes that, and retrying every few seconds only fills the proxy's log (and may
/// lock the account), so the dialer waits as long as after a revocation.
pub(crate) fn refused_for_credentials(reason: &str) -> bool {
    reason.contains(NO_CREDENTIALS) || reason.contains(BAD_CREDENTIALS)
}

fn refusal_hint(status: u16, user: Option<&str>) -> String {
    match (status, user) {
        // tinyproxy answers a wrong password with 401, a missing one with 407.
        (401 | 407, None) => format!("{NO_CREDENTIALS}: give them in the proxy URL, http://USER:PASSWORD@host:port)"),
        (401 | 407, Some(user)) => format!("{BAD_CREDENTIALS} {user:?}: check the user and password in the link's proxy URL)"),
        (403 | 405, _) => " (allow this port in the proxy, e.g. tinyproxy ConnectPort / squid SSL_ports, or allow CONNECT to this host)".into(),
        (500 | 502..=504, _) => " (the proxy could not reach the peer: check that the link endpoint is reachable from the proxy)".into(),
        _ => String::new(),
    }
}

impl ProxyError {
    /// Whether only an operator can fix it (a refusal, a URL that is not a proxy); `false` for
    /// what may pass by itself (proxy down, peer unreachable from the proxy, a timeout).
    pub fn needs_operator(&self) -> bool {
        match self {
            ProxyError::BadTarget { .. } | ProxyError::Malformed { .. } => true,
            ProxyError::Refused { status, .. } => !(500..600).contains(status),
            ProxyError::Unreachable { .. }
            | ProxyError::Closed { .. }
            | ProxyError::Timeout { .. } => false,
        }
    }
}

/// The body of the fuzz target `proxy_answer` (`fuzz/fuzz_targets/`), replayed on
/// `fuzz/seeds/proxy_answer/` by `router/tests/fuzz_seeds.rs`: a proxy's answer to CONNECT, read
/// in reads of 1 to 64 bytes (the first byte says how many), as a dial reads it. Panics when
/// a property does not hold; not an API.
#[doc(hidden)]
pub fn fuzz_answer(data: &[u8]) {
    use futures_util::FutureExt;
    let Some((&first, answer)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(first % 64) + 1;
    let mut reader = BufReader::with_capacity(chunk, answer);
    let read = read_head(&mut reader)
        .now_or_never()
        .expect("reading from memory never waits");
    let blank = head_end(answer, 0);
    match read {
        Ok(head) => {
            // The head is the answer up to and including its first blank line, within the
            // bound; every byte after it stays for the tunnel.
            assert_eq!(
                Some(head.len()),
                blank,
                "the head ends at the first blank line"
            );
            assert!(head.len() <= MAX_RESPONSE_HEAD);
            assert_eq!(
                reader.buffer(),
                &answer[head.len()..][..reader.buffer().len()]
            );
            let left = reader.buffer().len() + reader.into_inner().len();
            assert_eq!(
                head.len() + left,
                answer.len(),
                "bytes after the head were lost"
            );
            if let Some((status, reason)) = parse_status_line(&head) {
                assert!((100..600).contains(&status));
                assert!(reason.chars().count() <= 100 && !reason.contains(char::is_control));
                let refused = ProxyError::Refused {
                    proxy: "proxy:1".into(),
                    target: "peer:2".into(),
                    status,
                    reason,
                    user: Some("u".into()),
                };
                let text = refused.to_string();
                assert!(!text.contains(char::is_control) && text.len() < 1024);
            }
        }
        Err(HeadError::TooLarge) => {
            assert!(
                answer.len() >= MAX_RESPONSE_HEAD,
                "a short answer was called too large"
            );
            assert!(blank.is_none_or(|end| end > MAX_RESPONSE_HEAD));
        }
        Err(HeadError::Eof { read }) => {
            assert!(blank.is_none() && read == answer.len() && read < MAX_RESPONSE_HEAD);
        }
        Err(HeadError::Io(e)) => panic!("reading from memory failed: {e}"),
    }
    // Whatever the answer, an error built from it shows no control characters.
    let garbage = ProxyError::Malformed {
        proxy: "proxy:1".into(),
        what: format!("{:?}, not an HTTP answer", preview(answer)),
    };
    assert!(!garbage.to_string().contains(char::is_control));
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn url(s: &str) -> Result<ProxyConfig, ProxyUrlError> {
        s.parse()
    }

    #[test]
    fn urls_parse_and_bad_ones_say_why() {
        let p = url("http://127.0.0.1:8888").unwrap();
        assert_eq!(p.address(), "127.0.0.1:8888");
        assert!(!p.has_credentials());
        assert_eq!(
            url("HTTP://proxy.corp:3128/").unwrap().to_string(),
            "proxy.corp:3128"
        );
        assert_eq!(url("http://[::1]:3128").unwrap().address(), "[::1]:3128");
        let p = url("http://al%40ice:p%3Ass@proxy:3128").unwrap();
        assert_eq!(p.credentials, Some(("al@ice".into(), "p:ss".into())));
        assert!(!format!("{p:?}{p}").contains("p:ss"));

        assert!(
            matches!(url("https://proxy:3128"), Err(ProxyUrlError::Scheme { scheme }) if scheme == "https")
        );
        assert!(matches!(
            url("socks5://proxy:1080"),
            Err(ProxyUrlError::Scheme { .. })
        ));
        assert!(matches!(url("proxy:3128"), Err(ProxyUrlError::NoScheme)));
        assert!(matches!(url("http://proxy"), Err(ProxyUrlError::NoPort)));
        assert!(matches!(url("http://:3128"), Err(ProxyUrlError::NoHost)));
        assert!(matches!(url("http://proxy:0"), Err(ProxyUrlError::BadPort)));
        assert!(matches!(
            url("http://proxy:99999"),
            Err(ProxyUrlError::BadPort)
        ));
        assert!(matches!(
            url("http://proxy:3128/path"),
            Err(ProxyUrlError::Path)
        ));
        assert!(matches!(
            url("http://proxy:3128?x"),
            Err(ProxyUrlError::Path)
        ));
        assert!(matches!(
            url("http://user@proxy:3128"),
            Err(ProxyUrlError::Credentials)
        ));
        // No error echoes a password, however the URL is malformed.
        for bad in [
            "secret:pw@proxy:3128",
            "u:pw@http://proxy:3128",
            "http://u:p/w@proxy:3128",
            "http://u:p?w@proxy:3128",
            "http://u:p#w@proxy:3128",
            "http://u:p%zzw@proxy:3128",
            // The host forgotten: the password is where the port should be.
            "http://alice:s3cretpw",
            // The scheme forgotten: nothing tells the password from a port.
            "alice:s3cretpw",
            "alice:s3cretpw@proxy:3128",
            // An unencoded / in a password without a host.
            "http://alice:s3/cretpw",
            "http://[alice:s3cretpw]",
        ] {
            let e = url(bad).unwrap_err().to_string();
            assert!(
                !e.contains("pw") && !e.contains("w@") && !e.contains("s3"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn an_answer_head_of_8192_bytes_is_read_and_one_of_8193_is_too_large() {
        use futures_util::FutureExt;
        let head_of = |len: usize| {
            let mut h = b"HTTP/1.1 200 OK\r\nX-Pad: ".to_vec();
            h.resize(len - 4, b'a');
            h.extend_from_slice(b"\r\n\r\ntunnel");
            h
        };
        let read = |answer: &[u8]| {
            let mut r = BufReader::with_capacity(7, answer);
            read_head(&mut r).now_or_never().unwrap()
        };
        let ok = read(&head_of(MAX_RESPONSE_HEAD));
        assert_eq!(ok.ok().map(|h| h.len()), Some(MAX_RESPONSE_HEAD));
        assert!(matches!(
            read(&head_of(MAX_RESPONSE_HEAD + 1)),
            Err(HeadError::TooLarge)
        ));
    }

    #[test]
    fn only_a_refusal_of_the_credentials_is_retried_slowly() {
        let refusal = |status, user: Option<&str>| {
            ProxyError::Refused {
                proxy: "proxy:3128".into(),
                target: "peer:45671".into(),
                status,
                reason: "No".into(),
                user: user.map(str::to_string),
            }
            .to_string()
        };
        for status in [401, 407] {
            assert!(refused_for_credentials(&refusal(status, None)));
            assert!(refused_for_credentials(&refusal(status, Some("alice"))));
        }
        for status in [403, 405, 502] {
            assert!(!refused_for_credentials(&refusal(status, Some("alice"))));
        }
    }

    #[test]
    fn basic_credentials_are_rfc_7617_base64() {
        assert_eq!(
            base64(b"Aladdin:open sesame"),
            "QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        let p = url("http://Aladdin:open%20sesame@h:1").unwrap();
        assert_eq!(
            p.request("peer:45671"),
            "CONNECT peer:45671 HTTP/1.1\r\nHost: peer:45671\r\nProxy-Authorization: Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==\r\n\r\n"
        );
    }

    /// A local TCP listener that reads one request head, answers `answer` and then echoes
    /// whatever comes after (the tunnel). Returns the proxy URL and the request it saw.
    async fn fake_proxy(
        answer: Vec<u8>,
        then_close: bool,
    ) -> (String, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut req = Vec::new();
            let mut b = [0u8; 1];
            while !req.ends_with(b"\r\n\r\n") && req.len() < 4096 {
                if s.read(&mut b).await.unwrap_or(0) == 0 {
                    break;
                }
                req.push(b[0]);
            }
            let _ = s.write_all(&answer).await;
            if !then_close {
                let mut buf = [0u8; 64];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
            req
        });
        (format!("http://u:secret-pw@{addr}"), task)
    }

    async fn dial(url: &str) -> Result<BufReader<TcpStream>, ProxyError> {
        let p: ProxyConfig = url.parse().unwrap();
        p.connect("10.0.0.5:45671", Duration::from_secs(5), 4096)
            .await
    }

    #[tokio::test]
    async fn a_200_opens_the_tunnel_and_bytes_after_the_head_stay_in_it() {
        // The answer and the first tunnel bytes arrive in one segment.
        let (url, seen) = fake_proxy(
            b"HTTP/1.1 200 Connection established\r\nProxy-agent: x\r\n\r\nEARLY".to_vec(),
            false,
        )
        .await;
        let mut s = dial(&url).await.unwrap();
        let mut early = [0u8; 5];
        s.read_exact(&mut early).await.unwrap();
        assert_eq!(&early, b"EARLY");
        s.get_mut().write_all(b"ping").await.unwrap();
        let mut back = [0u8; 4];
        s.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"ping");
        drop(s);
        let req = String::from_utf8(seen.await.unwrap()).unwrap();
        assert!(req.starts_with("CONNECT 10.0.0.5:45671 HTTP/1.1\r\nHost: 10.0.0.5:45671\r\n"));
        assert!(req.contains(&format!(
            "Proxy-Authorization: Basic {}\r\n",
            base64(b"u:secret-pw")
        )));
    }

    #[tokio::test]
    async fn the_head_ends_at_its_blank_line_wherever_the_reads_split_it() {
        // Reads of 1 to 7 bytes: the blank line straddles reads in every way; what follows it
        // stays in the buffer for the tunnel.
        for answer in [
            &b"HTTP/1.1 200 OK\r\nVia: x\r\n\r\nTLS"[..],
            b"HTTP/1.0 200 OK\n\nTLS",
        ] {
            for chunk in 1..8 {
                let mut r = BufReader::with_capacity(chunk, answer);
                let head = read_head(&mut r).await.ok().unwrap();
                assert_eq!(head, &answer[..answer.len() - 3], "reads of {chunk}");
                let mut rest = Vec::new();
                r.read_to_end(&mut rest).await.unwrap();
                assert_eq!(rest, b"TLS", "reads of {chunk}");
            }
        }
        assert_eq!(head_end(b"HTTP/1.1 200 OK\r\nVia: x\r\n", 0), None);
    }

    #[tokio::test]
    async fn a_403_is_a_refusal_that_says_what_to_allow() {
        let (url, _) = fake_proxy(b"HTTP/1.0 403 Access violation\r\n\r\n".to_vec(), true).await;
        let e = dial(&url).await.unwrap_err();
        let text = e.to_string();
        assert!(e.needs_operator());
        assert!(
            text.contains("refused CONNECT to 10.0.0.5:45671: 403 Access violation")
                && text.contains("ConnectPort"),
            "{text}"
        );
        assert!(!text.contains("secret-pw"), "{text}");
    }

    #[tokio::test]
    async fn a_407_says_the_credentials_were_not_accepted_without_the_password() {
        let (url, _) = fake_proxy(
            b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"x\"\r\n\r\n".to_vec(),
            true,
        )
        .await;
        let e = dial(&url).await.unwrap_err();
        let text = e.to_string();
        assert!(e.needs_operator());
        assert!(text.contains("407 Proxy Authentication Required"), "{text}");
        assert!(
            text.contains("did not accept the credentials of user \"u\""),
            "{text}"
        );
        assert!(!text.contains("secret-pw") && !format!("{e:?}").contains("secret-pw"));
        // tinyproxy answers a wrong password with 401: the same words.
        let (url, _) = fake_proxy(b"HTTP/1.0 401 Unauthorized\r\n\r\n".to_vec(), true).await;
        let text = dial(&url).await.unwrap_err().to_string();
        assert!(
            text.contains("401 Unauthorized (the proxy did not accept the credentials"),
            "{text}"
        );
        // Without credentials: it says they are missing.
        let (url, _) = fake_proxy(
            b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n".to_vec(),
            true,
        )
        .await;
        let url = url.replace("u:secret-pw@", "");
        let text = dial(&url).await.unwrap_err().to_string();
        assert!(
            text.contains("wants credentials and the link has none"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn garbage_an_oversized_head_and_an_early_close_are_named() {
        let (url, _) = fake_proxy(b"SSH-2.0-OpenSSH_9.2\r\n\r\n".to_vec(), true).await;
        let e = dial(&url).await.unwrap_err();
        assert!(e.needs_operator());
        assert!(
            e.to_string().contains("SSH-2.0-OpenSSH_9.2")
                && e.to_string().contains("not an HTTP answer"),
            "{e}"
        );

        // A head that never ends within 8 KiB: refused after reading at most 8 KiB.
        let mut big = b"HTTP/1.1 200 OK\r\n".to_vec();
        while big.len() < 3 * MAX_RESPONSE_HEAD {
            big.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        let (url, _) = fake_proxy(big, false).await;
        let e = dial(&url).await.unwrap_err();
        assert!(e.to_string().contains("longer than 8192 bytes"), "{e}");

        // Closed before any answer, and in the middle of one.
        let (url, _) = fake_proxy(Vec::new(), true).await;
        let e = dial(&url).await.unwrap_err();
        assert!(!e.needs_operator());
        assert!(
            e.to_string()
                .contains("closed the connection without an answer"),
            "{e}"
        );
        let (url, _) = fake_proxy(b"HTTP/1.1 200 Connection est".to_vec(), true).await;
        let e = dial(&url).await.unwrap_err();
        assert!(
            e.to_string()
                .contains("after 27 bytes of an unfinished answer"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_stopped_proxy_is_unreachable_and_a_silent_one_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let e = dial(&format!("http://{addr}")).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "proxy {addr} unreachable: connection refused (is the proxy running, and is the link's proxy URL right?)"
            )
        );
        assert!(!e.needs_operator());

        // Accepts, never answers.
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let p: ProxyConfig = format!("http://{}", silent.local_addr().unwrap())
            .parse()
            .unwrap();
        let t0 = std::time::Instant::now();
        let e = p
            .connect("peer:1", Duration::from_millis(300), 4096)
            .await
            .unwrap_err();
        assert!(t0.elapsed() < Duration::from_secs(3));
        assert!(
            e.to_string()
                .contains("did not answer CONNECT to peer:1 within 0.3 s"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_target_with_a_line_break_is_not_sent() {
        let p: ProxyConfig = "http://127.0.0.1:9".parse().unwrap();
        let e = p
            .connect("peer:1\r\nX-Injected: 1", Duration::from_secs(1), 4096)
            .await
            .unwrap_err();
        assert!(matches!(e, ProxyError::BadTarget { .. }));
    }
}
