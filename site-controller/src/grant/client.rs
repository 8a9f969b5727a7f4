//! The client side of redemption and renewal: `skiff token redeem` and `skiff link renew`
//! talking to an issuer's grant endpoint over TLS (through a link's proxy when it has one),
//! and the words for what went wrong.

use super::*;

/// `host:port`, with brackets around an IPv6 address.
pub fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Redeems `token` for the local site `(site_id, site_name)` with `csr_pem`: connects to the
/// issuer over TLS (verified against the token's CA and site id), through `proxy`'s CONNECT
/// tunnel when given, and returns its answer.
pub async fn redeem_token(
    token: &AccessToken,
    site_id: SiteId,
    site_name: &str,
    csr_pem: &str,
    proxy: Option<&ProxyConfig>,
) -> Result<RedeemResponse, SiteError> {
    let url = token.spec.url.clone();
    let (host, port) = token.spec.grant_address().map_err(SiteError::BadToken)?;
    // A CA in the token that cannot be used is the token's fault, not the issuer's.
    skiff_certs::grant_client_config(&token.spec.ca, token.spec.site_id)
        .map_err(SiteError::BadToken)?;
    let body = RedeemRequest {
        code: token.spec.code.clone(),
        csr: csr_pem.into(),
        site_id,
        site_name: site_name.into(),
    };
    post_to_issuer(
        &token.spec.ca,
        token.spec.site_id,
        &host,
        port,
        REDEEM_PATH,
        &body,
        proxy,
    )
    .await
    .map_err(|e| match e {
        IssuerAnswer::Unreachable(reason) | IssuerAnswer::Unanswered(reason) => {
            SiteError::IssuerUnreachable { url, reason }
        }
        IssuerAnswer::Refused(reason) => SiteError::RedemptionRefused {
            issuer: url,
            reason,
        },
    })
}

/// Asks the issuer `issuer` (CA `issuer_ca_pem`, grant endpoint `endpoint` = `host:port`) for
/// a new client certificate for the local site `site_id`, certifying the key of `csr_pem`.
pub async fn renew_certificate(
    issuer_ca_pem: &str,
    issuer: SiteId,
    endpoint: &str,
    site_id: SiteId,
    csr_pem: &str,
) -> Result<RenewResponse, IssuerAnswer> {
    renew_certificate_through(issuer_ca_pem, issuer, endpoint, site_id, csr_pem, None).await
}

/// [`renew_certificate`] through `proxy`'s CONNECT tunnel when given (the link's proxy).
pub async fn renew_certificate_through(
    issuer_ca_pem: &str,
    issuer: SiteId,
    endpoint: &str,
    site_id: SiteId,
    csr_pem: &str,
    proxy: Option<&ProxyConfig>,
) -> Result<RenewResponse, IssuerAnswer> {
    let (host, port) = split_host_port(endpoint)
        .ok_or_else(|| IssuerAnswer::Unreachable(format!("{endpoint:?} is not host:port")))?;
    let body = RenewRequest {
        site_id,
        csr: csr_pem.into(),
    };
    post_to_issuer(issuer_ca_pem, issuer, &host, port, RENEW_PATH, &body, proxy)
        .await
        .map_err(|e| {
            match e {
            IssuerAnswer::Refused(r) if r == NO_SUCH_ENDPOINT => IssuerAnswer::Refused(
                "the issuing site does not serve renewals (a skiff older than this one): upgrade it"
                    .into(),
            ),
            other => other,
        }
        })
}

/// `host:port` (IPv6 in brackets) split.
pub(super) fn split_host_port(endpoint: &str) -> Option<(String, u16)> {
    let (host, port) = endpoint.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some((host.to_string(), port.parse().ok()?))
}

/// Why a request to an issuer's grant endpoint failed.
#[derive(Debug)]
pub enum IssuerAnswer {
    /// Not reached (nothing was sent): another endpoint may work.
    Unreachable(String),
    /// Sent, but no usable answer came back (none in time, the connection broke, or it
    /// failed on its side): it may have acted on the request. Trying again later may work.
    Unanswered(String),
    /// It answered and refused; its reason, verbatim.
    Refused(String),
}

impl std::fmt::Display for IssuerAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IssuerAnswer::Unreachable(r) => write!(f, "not reached: {r}"),
            IssuerAnswer::Unanswered(r) => write!(f, "no answer: {r}"),
            IssuerAnswer::Refused(r) => write!(f, "refused: {r}"),
        }
    }
}

/// POSTs `body` as JSON to `path` on the grant endpoint of site `issuer` at `host:port`, over
/// TLS verified against `issuer_ca_pem` and `issuer` (through `proxy` when given), and parses
/// the JSON answer.
async fn post_to_issuer<Req: Serialize, Resp: serde::de::DeserializeOwned>(
    issuer_ca_pem: &str,
    issuer: SiteId,
    host: &str,
    port: u16,
    path: &str,
    body: &Req,
    proxy: Option<&ProxyConfig>,
) -> Result<Resp, IssuerAnswer> {
    let unreachable = IssuerAnswer::Unreachable;
    let config = skiff_certs::grant_client_config(issuer_ca_pem, issuer)
        .map_err(|e| unreachable(format!("the issuer's CA is unusable: {e}")))?;
    let server_name = rustls_pki_types::ServerName::try_from(issuer.server_name())
        .map_err(|e| unreachable(e.to_string()))?;
    // Set once the request may have reached the issuer: failures after it are ambiguous.
    let sent = std::sync::atomic::AtomicBool::new(false);
    let unanswered = IssuerAnswer::Unanswered;
    let work = async {
        let tcp = match proxy {
            None => tokio::io::BufReader::new(
                TcpStream::connect((host, port))
                    .await
                    .map_err(|e| unreachable(describe_connect_error(&e)))?,
            ),
            // Nothing reaches the issuer before the tunnel is open: any failure is "not
            // reached", and the proxy's words say why.
            Some(proxy) => proxy
                .connect(&join_host_port(host, port), PROXY_TIMEOUT, 16 * 1024)
                .await
                .map_err(|e| unreachable(e.to_string()))?,
        };
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(server_name, tcp)
            .await
            .map_err(|e| unreachable(describe_tls_error(&e, issuer)))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| unreachable(format!("HTTP handshake failed: {e}")))?;
        tokio::spawn(conn);
        let body = serde_json::to_vec(body).expect("request serialises");
        let req = Request::post(path)
            .header(http::header::HOST, join_host_port(host, port))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .expect("valid request");
        sent.store(true, std::sync::atomic::Ordering::Relaxed);
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| unanswered(format!("no answer: {e}")))?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| unanswered(format!("answer unreadable: {e}")))?
            .to_bytes();
        if status.is_success() {
            serde_json::from_slice::<Resp>(&body)
                .map_err(|e| unanswered(format!("malformed answer: {e}")))
        } else {
            let reason = serde_json::from_slice::<ErrorBody>(&body)
                .map(|b| b.error)
                .unwrap_or_else(|_| format!("HTTP {status}"));
            if status.is_server_error() {
                // The issuer's own trouble, not a refusal: trying again may work.
                return Err(unanswered(format!("it answered {status}: {reason}")));
            }
            Err(IssuerAnswer::Refused(reason))
        }
    };
    tokio::time::timeout(REDEEM_TIMEOUT, work)
        .await
        .map_err(|_| {
            let why = format!("no answer within {}s", REDEEM_TIMEOUT.as_secs());
            if sent.load(std::sync::atomic::Ordering::Relaxed) {
                unanswered(why)
            } else {
                unreachable(why)
            }
        })?
}

fn describe_connect_error(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => {
            "connection refused: nothing listens there (is the site running with link access?)"
                .into()
        }
        _ => format!("could not connect: {e}"),
    }
}

/// Turns a TLS failure while talking to an issuer or peer into words.
pub fn describe_tls_error(e: &std::io::Error, expected: SiteId) -> String {
    let inner = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
    match inner {
        Some(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)) => {
            format!(
                "the site there is not site {expected}: its certificate is not signed by the CA in the token (a token for another site, or the site was re-created)"
            )
        }
        Some(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(o))) => {
            format!("the site there is not the one in the token: {o}")
        }
        Some(rustls::Error::InvalidCertificate(c)) => {
            format!("the site's certificate was refused: {c:?}")
        }
        Some(other) => format!("TLS failed: {other}"),
        None if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            "the peer closed the connection during the TLS handshake (not a skiff link port?)"
                .into()
        }
        None => format!("TLS failed: {e}"),
    }
}
