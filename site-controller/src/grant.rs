//! Token redemption and certificate renewal, both ends: the grant service a site runs on its
//! link port (HTTP/1.1 over TLS, ALPN `skiff-grant/1`) and the client `skiff token redeem` and
//! `skiff link renew` use.
//!
//! The redeeming site sends a CSR with the token's code; the issuer checks the grant, signs a
//! client certificate with its CA and answers with it and its link endpoints. The private key
//! never leaves the redeeming site. Redemptions are serialised by one lock, and the grant's use
//! count is spent only after signing succeeded, so two concurrent redemptions of a one-use
//! token: exactly one wins.
//!
//! A renewal (`POST /v1/renew`) carries the site id and a CSR for the key that site linked
//! with: the CSR's signature proves the requester holds that key, and the issuer signs a new
//! certificate only for the key recorded for the site id, never for a revoked site. The
//! certificate it replaces keeps linking for the site's overlap window
//! (`spec.certificateOverlap`), then only the new one does.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use skiff_certs::{AccessToken, SiteCa, SiteId};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::net::TcpStream;

use crate::SiteError;
use crate::folder::SiteFolder;
use crate::resources::{LinkedSite, LinkedSiteSpec};
use crate::site::{list_grants, save_grant, save_linked_site};

/// Path of the redemption request.
pub const REDEEM_PATH: &str = "/v1/redeem";
/// Path of the certificate renewal request.
pub const RENEW_PATH: &str = "/v1/renew";
/// Largest request or response body accepted.
const MAX_BODY: usize = 64 * 1024;
/// How long a client certificate issued by a redemption or renewal is valid (renewed
/// automatically when a third of it is left; docs/operations.md).
pub const LINK_CERT_VALIDITY: Duration = Duration::from_secs(5 * 365 * 24 * 3600);
/// How long a redemption may take end to end.
const REDEEM_TIMEOUT: Duration = Duration::from_secs(15);

/// Body of a redemption request. Its `Debug` hides the code.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RedeemRequest {
    /// The token's code.
    pub code: String,
    /// CSR (PEM) carrying the redeeming site's id as URI SAN.
    pub csr: String,
    /// The redeeming site's id (must match the CSR).
    pub site_id: SiteId,
    /// The redeeming site's name.
    pub site_name: String,
}

impl std::fmt::Debug for RedeemRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedeemRequest")
            .field("code", &"<redacted>")
            .field("site_id", &self.site_id)
            .field("site_name", &self.site_name)
            .finish_non_exhaustive()
    }
}

/// Body of a successful redemption.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RedeemResponse {
    /// The client certificate (PEM), signed by the issuer's CA.
    pub certificate: String,
    /// The issuer's site id.
    pub site_id: SiteId,
    /// The issuer's site name.
    pub site_name: String,
    /// `host:port` endpoints of the issuer's link access.
    pub endpoints: Vec<String>,
    /// The link cost the grant was issued with.
    pub link_cost: u32,
}

/// Body of a renewal request.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RenewRequest {
    /// The renewing site's id (must match the CSR).
    pub site_id: SiteId,
    /// CSR (PEM) signed with the key the site linked with.
    pub csr: String,
}

/// Body of a successful renewal.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RenewResponse {
    /// The new client certificate (PEM), signed by the issuer's CA.
    pub certificate: String,
    /// Its serial (hex).
    pub serial: String,
    /// Until when the certificate it replaces still links (RFC 3339 UTC).
    pub previous_serial_valid_until: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct ErrorBody {
    error: String,
}

/// The sites allowed to link in: those that redeemed a grant and are not revoked.
#[derive(Debug, Default)]
pub struct LinkedSites {
    sites: RwLock<HashMap<SiteId, LinkedSite>>,
    /// Held by whoever changes `peers/` and this set together (a redemption, a reload), so a
    /// reload never drops a site redeemed while it read the folder.
    pub update: tokio::sync::Mutex<()>,
}

impl LinkedSites {
    /// The ids admitted now.
    pub fn admitted(&self) -> std::collections::HashSet<SiteId> {
        self.sites
            .read()
            .unwrap()
            .values()
            .filter(|s| !s.spec.revoked)
            .map(|s| s.spec.site_id)
            .collect()
    }

    /// The revoked sites, by name.
    pub fn revoked(&self) -> Vec<LinkedSite> {
        let mut out: Vec<LinkedSite> = self
            .sites
            .read()
            .unwrap()
            .values()
            .filter(|s| s.spec.revoked)
            .cloned()
            .collect();
        out.sort_by(|a, b| a.spec.site_name.cmp(&b.spec.site_name));
        out
    }

    /// Replaces the whole set (on start and reload).
    pub fn replace(&self, sites: Vec<LinkedSite>) {
        let map = sites.into_iter().map(|s| (s.spec.site_id, s)).collect();
        *self.sites.write().unwrap() = map;
    }

    /// The record of one site.
    pub fn get(&self, site: SiteId) -> Option<LinkedSite> {
        self.sites.read().unwrap().get(&site).cloned()
    }

    /// Adds or replaces one site.
    pub fn insert(&self, site: LinkedSite) {
        self.sites.write().unwrap().insert(site.spec.site_id, site);
    }
}

impl skiff_router::link::InboundPolicy for LinkedSites {
    fn admit(&self, peer: SiteId) -> Result<(), String> {
        match self.sites.read().unwrap().get(&peer) {
            Some(s) if s.spec.revoked => Err(format!(
                "site {} ({peer}) was revoked here",
                s.spec.site_name
            )),
            Some(_) => Ok(()),
            None => Err(format!(
                "site {peer} never redeemed a token here (or the site was re-created): redeem a new token"
            )),
        }
    }

    fn check_key(&self, peer: SiteId, key_fingerprint: &str) -> Result<(), String> {
        match self.sites.read().unwrap().get(&peer) {
            Some(s) if s.spec.key_fingerprint != key_fingerprint => Err(format!(
                "the certificate for site {peer} certifies a key other than the one that site linked with"
            )),
            _ => Ok(()),
        }
    }

    fn check_serial(&self, peer: SiteId, serial: &str) -> Result<(), String> {
        let sites = self.sites.read().unwrap();
        match sites.get(&peer) {
            Some(s) => serial_allowed(&s.spec, serial, OffsetDateTime::now_utc()),
            // Unknown sites are refused by `admit`.
            None => Ok(()),
        }
    }
}

/// Whether a linked site may link with the certificate of serial `serial` at `now`: any
/// certificate until it first renews; after that the current one, and the previous one until
/// the end of its overlap window.
pub fn serial_allowed(
    spec: &LinkedSiteSpec,
    serial: &str,
    now: OffsetDateTime,
) -> Result<(), String> {
    let Some(previous) = &spec.previous_certificate_serial else {
        return Ok(());
    };
    if serial == spec.certificate_serial {
        return Ok(());
    }
    let who = format!("site {} ({})", spec.site_name, spec.site_id);
    if serial == previous {
        let until = spec
            .previous_serial_valid_until
            .as_deref()
            .unwrap_or_default();
        match OffsetDateTime::parse(until, &Rfc3339) {
            Ok(end) if now < end => return Ok(()),
            _ => {
                return Err(format!(
                    "{who} presented its previous link certificate (serial {serial}): it was replaced by a renewal and its overlap window ended at {until}; that site must dial with its renewed certificate (skiff link renew there)"
                ));
            }
        }
    }
    Err(format!(
        "{who} presented a link certificate (serial {serial}) that was replaced by a renewal and no longer links here; that site must dial with its current certificate (skiff link renew there)"
    ))
}

/// Where a redemption is committed beyond the site folder before it is answered (a Kubernetes
/// site stores its grants and linked sites in Secrets: a pod lost right after answering must
/// not come back with the grant unspent).
pub trait CommitHook: Send + Sync + std::fmt::Debug {
    /// Stores what the folder now holds; `Err` says why it could not.
    fn commit(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + '_>>;
}

/// The grant service of one site.
pub struct GrantService {
    folder: SiteFolder,
    ca: SiteCa,
    site_id: SiteId,
    site_name: String,
    link_hosts: std::sync::RwLock<Vec<String>>,
    /// How long a renewed site's previous certificate keeps linking.
    overlap: std::sync::RwLock<Duration>,
    /// The bound link port, known once the router started.
    pub link_port: OnceLock<u16>,
    linked: Arc<LinkedSites>,
    commit_hook: OnceLock<Arc<dyn CommitHook>>,
}

impl GrantService {
    /// A grant service for a site.
    pub fn new(
        folder: SiteFolder,
        ca: SiteCa,
        site_id: SiteId,
        site_name: String,
        link_hosts: Vec<String>,
        linked: Arc<LinkedSites>,
    ) -> Self {
        GrantService {
            folder,
            ca,
            site_id,
            site_name,
            link_hosts: std::sync::RwLock::new(link_hosts),
            overlap: std::sync::RwLock::new(crate::resources::DEFAULT_CERTIFICATE_OVERLAP),
            link_port: OnceLock::new(),
            linked,
            commit_hook: OnceLock::new(),
        }
    }

    /// Replaces the hosts that redeeming sites are told to dial (a Kubernetes site learns its
    /// load balancer's address after it started).
    pub fn set_link_hosts(&self, hosts: Vec<String>) {
        *self.link_hosts.write().unwrap() = hosts;
    }

    /// Sets the overlap window of renewed certificates (site.yaml `spec.certificateOverlap`).
    pub fn set_certificate_overlap(&self, overlap: Duration) {
        *self.overlap.write().unwrap() = overlap;
    }

    /// Sets where redemptions are committed besides the folder (once; later calls are
    /// ignored).
    pub fn set_commit_hook(&self, hook: Arc<dyn CommitHook>) {
        let _ = self.commit_hook.set(hook);
    }

    /// Handles one redemption; `Err` is (status, message for the redeeming user).
    pub async fn redeem(
        &self,
        req: RedeemRequest,
        peer: SocketAddr,
    ) -> Result<RedeemResponse, (StatusCode, String)> {
        // One redemption at a time, and never during a reload.
        let _one_at_a_time = self.linked.update.lock().await;
        let now = OffsetDateTime::now_utc();
        let internal = |e: SiteError| {
            tracing::error!(cause = %crate::error_chain(&e), "redemption failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the issuing site could not read or write its grants; see its log".to_string(),
            )
        };
        let grants = list_grants(&self.folder).map_err(internal)?;
        let Some(mut grant) = grants.into_iter().find(|g| g.matches(&req.code)) else {
            return Err((
                StatusCode::FORBIDDEN,
                skiff_certs::GrantRefusal::UnknownCode.to_string(),
            ));
        };
        if req.site_id == self.site_id {
            return Err((
                StatusCode::BAD_REQUEST,
                "a site cannot link to itself: redeem the token at another site".into(),
            ));
        }
        // Signing changes nothing yet; the checks that need the key come after it.
        let (csr_site, cert) = self
            .ca
            .sign_link_csr(&req.csr, LINK_CERT_VALIDITY)
            .map_err(|e| {
                (
                    StatusCode::BAD_REQUEST,
                    format!("bad certificate request: {e}"),
                )
            })?;
        if csr_site != req.site_id {
            return Err((
                StatusCode::BAD_REQUEST,
                format!(
                    "the certificate request is for site {csr_site}, but the request says {}",
                    req.site_id
                ),
            ));
        }
        let key = skiff_certs::key_fingerprint_pem(&cert.cert_pem)
            .map_err(|e| internal(SiteError::Cert(e)))?;
        let known = self.linked.get(req.site_id);
        if let Some(k) = &known {
            if k.spec.revoked {
                return Err((
                    StatusCode::FORBIDDEN,
                    format!("site {} was revoked here", req.site_id),
                ));
            }
            if k.spec.key_fingerprint != key {
                return Err((
                    StatusCode::CONFLICT,
                    format!(
                        "site id {} is already linked here by another site (its key differs): a site id belongs to the site that linked first; a re-created site has a new id",
                        req.site_id
                    ),
                ));
            }
        }
        // The same site retrying a redemption whose answer it never got: answer again, spend
        // nothing.
        let retry = known
            .as_ref()
            .is_some_and(|k| k.spec.grant == grant.metadata.name);
        if !retry {
            grant
                .check(now)
                .map_err(|r| (StatusCode::FORBIDDEN, r.to_string()))?;
        }
        // A site that renewed before keeps the serial rule: the certificate this one
        // replaces links on for the overlap window only.
        let (previous_certificate_serial, previous_serial_valid_until) = match &known {
            Some(k) if k.spec.previous_certificate_serial.is_some() => (
                Some(k.spec.certificate_serial.clone()),
                (now + *self.overlap.read().unwrap()).format(&Rfc3339).ok(),
            ),
            _ => (None, None),
        };
        let linked = LinkedSite::new(LinkedSiteSpec {
            site_id: req.site_id,
            site_name: req.site_name.chars().take(63).collect(),
            grant: grant.metadata.name.clone(),
            certificate_serial: cert.serial.clone(),
            key_fingerprint: key,
            linked_at: now.format(&Rfc3339).unwrap_or_default(),
            revoked: false,
            revoked_at: None,
            previous_certificate_serial,
            previous_serial_valid_until,
        });
        // Commit before answering: an answered redemption is never lost to a crash.
        save_linked_site(&self.folder, &linked).map_err(internal)?;
        if !retry {
            grant.spend();
            save_grant(&self.folder, &grant).map_err(internal)?;
        }
        // Known from here on (as in the folder), so a retry after a failed commit is
        // recognised as one and spends nothing.
        self.linked.insert(linked);
        if let Some(hook) = self.commit_hook.get() {
            // Not answered unless stored: the redeeming site retries, and a retry spends
            // nothing more.
            hook.commit().await.map_err(|why| {
                tracing::error!(cause = %why, "redemption not committed");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the issuing site could not store the redemption; try again shortly"
                        .to_string(),
                )
            })?;
        }
        tracing::info!(
            grant = %grant.metadata.name,
            peer_site = %req.site_id,
            peer_name = %req.site_name,
            %peer,
            retry,
            "token redeemed"
        );
        let port = self.link_port.get().copied().unwrap_or_default();
        Ok(RedeemResponse {
            certificate: cert.cert_pem,
            site_id: self.site_id,
            site_name: self.site_name.clone(),
            endpoints: self
                .link_hosts
                .read()
                .unwrap()
                .iter()
                .map(|h| join_host_port(h, port))
                .collect(),
            link_cost: grant.spec.link_cost,
        })
    }

    /// Handles one renewal; `Err` is (status, message for the renewing site).
    pub async fn renew(
        &self,
        req: RenewRequest,
        peer: SocketAddr,
    ) -> Result<RenewResponse, (StatusCode, String)> {
        // One change of peers/ at a time, and never during a reload.
        let _one_at_a_time = self.linked.update.lock().await;
        let now = OffsetDateTime::now_utc();
        let internal = |e: SiteError| {
            tracing::error!(cause = %crate::error_chain(&e), "renewal failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the issuing site could not read or write its linked sites; see its log"
                    .to_string(),
            )
        };
        // The folder is the truth (a `skiff link revoke` may have written it a moment ago).
        let known = crate::site::load_linked_site(&self.folder, req.site_id)
            .map_err(internal)?
            .or_else(|| self.linked.get(req.site_id));
        let Some(known) = known else {
            return Err((
                StatusCode::FORBIDDEN,
                format!(
                    "site {} never linked here (or was forgotten): redeem a new token",
                    req.site_id
                ),
            ));
        };
        if known.spec.revoked {
            return Err((
                StatusCode::FORBIDDEN,
                format!(
                    "site {} ({}) was revoked here and cannot renew its link certificate",
                    known.spec.site_name, req.site_id
                ),
            ));
        }
        let (csr_site, cert) = self
            .ca
            .sign_link_csr(&req.csr, LINK_CERT_VALIDITY)
            .map_err(|e| {
                (
                    StatusCode::BAD_REQUEST,
                    format!("bad certificate request: {e}"),
                )
            })?;
        if csr_site != req.site_id {
            return Err((
                StatusCode::BAD_REQUEST,
                format!(
                    "the certificate request is for site {csr_site}, but the request says {}",
                    req.site_id
                ),
            ));
        }
        let key = skiff_certs::key_fingerprint_pem(&cert.cert_pem)
            .map_err(|e| internal(SiteError::Cert(e)))?;
        if key != known.spec.key_fingerprint {
            return Err((
                StatusCode::FORBIDDEN,
                format!(
                    "the certificate request certifies a key other than the one site {} linked with: a renewal keeps the site's link key (a site with a new key must redeem a new token)",
                    req.site_id
                ),
            ));
        }
        let until = (now + *self.overlap.read().unwrap())
            .format(&Rfc3339)
            .unwrap_or_default();
        let mut spec = known.spec.clone();
        let replaced = std::mem::replace(&mut spec.certificate_serial, cert.serial.clone());
        spec.previous_certificate_serial = Some(replaced.clone());
        spec.previous_serial_valid_until = Some(until.clone());
        let renewed = LinkedSite::new(spec);
        save_linked_site(&self.folder, &renewed).map_err(internal)?;
        self.linked.insert(renewed);
        if let Some(hook) = self.commit_hook.get() {
            hook.commit().await.map_err(|why| {
                tracing::error!(cause = %why, "renewal not committed");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the issuing site could not store the renewal; try again shortly".to_string(),
                )
            })?;
        }
        tracing::info!(
            peer_site = %req.site_id,
            peer_name = %known.spec.site_name,
            %peer,
            serial = %cert.serial,
            replaced_serial = %replaced,
            replaced_valid_until = %until,
            "link certificate renewed"
        );
        Ok(RenewResponse {
            certificate: cert.cert_pem,
            serial: cert.serial,
            previous_serial_valid_until: until,
        })
    }

    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<Full<Bytes>> {
        let renewal = req.uri().path() == RENEW_PATH;
        if req.method() != Method::POST || !(renewal || req.uri().path() == REDEEM_PATH) {
            return error_response(StatusCode::NOT_FOUND, NO_SUCH_ENDPOINT);
        }
        let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                return error_response(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!("request body refused: {e}"),
                );
            }
        };
        if renewal {
            let parsed: RenewRequest = match serde_json::from_slice(&body) {
                Ok(r) => r,
                Err(e) => {
                    return error_response(
                        StatusCode::BAD_REQUEST,
                        &format!("malformed request: {e}"),
                    );
                }
            };
            return match self.renew(parsed, peer).await {
                Ok(resp) => json_response(StatusCode::OK, &resp),
                Err((status, message)) => {
                    tracing::warn!(%peer, reason = %message, "certificate renewal refused");
                    error_response(status, &message)
                }
            };
        }
        let parsed: RedeemRequest = match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                return error_response(StatusCode::BAD_REQUEST, &format!("malformed request: {e}"));
            }
        };
        match self.redeem(parsed, peer).await {
            Ok(resp) => json_response(StatusCode::OK, &resp),
            Err((status, message)) => {
                tracing::warn!(%peer, reason = %message, "token redemption refused");
                error_response(status, &message)
            }
        }
    }
}

/// The grant service shared by the router's accept loop.
#[derive(Clone)]
pub struct SharedGrantService(pub Arc<GrantService>);

impl skiff_router::link::GrantHandler for SharedGrantService {
    fn serve(
        &self,
        stream: tokio_rustls::server::TlsStream<skiff_router::link::LinkSocket>,
        peer: SocketAddr,
    ) -> futures_util::future::BoxFuture<'static, ()> {
        let service = self.0.clone();
        Box::pin(async move {
            let svc = hyper::service::service_fn(move |req| {
                let service = service.clone();
                async move { Ok::<_, std::convert::Infallible>(service.handle(req, peer).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc);
            match tokio::time::timeout(REDEEM_TIMEOUT, conn).await {
                Ok(Err(e)) => tracing::debug!(%peer, cause = %e, "grant connection ended"),
                Err(_) => tracing::warn!(%peer, "grant connection timed out"),
                Ok(Ok(())) => {}
            }
        })
    }
}

fn json_response<T: Serialize>(status: StatusCode, body: &T) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(
        serde_json::to_vec(body).unwrap_or_default(),
    )));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

fn error_response(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json_response(
        status,
        &ErrorBody {
            error: message.into(),
        },
    )
}

/// `host:port`, with brackets around an IPv6 address.
pub fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Redeems `token` for the local site `(site_id, site_name)` with `csr_pem`: connects to the
/// issuer over TLS (verified against the token's CA and site id) and returns its answer.
pub async fn redeem_token(
    token: &AccessToken,
    site_id: SiteId,
    site_name: &str,
    csr_pem: &str,
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
    )
    .await
    .map_err(|e| match e {
        IssuerAnswer::Unreachable(reason) => SiteError::IssuerUnreachable { url, reason },
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
    let (host, port) = split_host_port(endpoint)
        .ok_or_else(|| IssuerAnswer::Unreachable(format!("{endpoint:?} is not host:port")))?;
    let body = RenewRequest {
        site_id,
        csr: csr_pem.into(),
    };
    post_to_issuer(issuer_ca_pem, issuer, &host, port, RENEW_PATH, &body)
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

/// What the grant service answers for a path it does not serve.
const NO_SUCH_ENDPOINT: &str = "no such endpoint";

/// `host:port` (IPv6 in brackets) split.
fn split_host_port(endpoint: &str) -> Option<(String, u16)> {
    let (host, port) = endpoint.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some((host.to_string(), port.parse().ok()?))
}

/// Why a request to an issuer's grant endpoint failed.
#[derive(Debug)]
pub enum IssuerAnswer {
    /// Not reached, or it failed on its side: trying again later may work.
    Unreachable(String),
    /// It answered and refused; its reason, verbatim.
    Refused(String),
}

impl std::fmt::Display for IssuerAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IssuerAnswer::Unreachable(r) => write!(f, "not reached: {r}"),
            IssuerAnswer::Refused(r) => write!(f, "refused: {r}"),
        }
    }
}

/// POSTs `body` as JSON to `path` on the grant endpoint of site `issuer` at `host:port`, over
/// TLS verified against `issuer_ca_pem` and `issuer`, and parses the JSON answer.
async fn post_to_issuer<Req: Serialize, Resp: serde::de::DeserializeOwned>(
    issuer_ca_pem: &str,
    issuer: SiteId,
    host: &str,
    port: u16,
    path: &str,
    body: &Req,
) -> Result<Resp, IssuerAnswer> {
    let unreachable = IssuerAnswer::Unreachable;
    let config = skiff_certs::grant_client_config(issuer_ca_pem, issuer)
        .map_err(|e| unreachable(format!("the issuer's CA is unusable: {e}")))?;
    let server_name = rustls_pki_types::ServerName::try_from(issuer.server_name())
        .map_err(|e| unreachable(e.to_string()))?;
    let work = async {
        let tcp = TcpStream::connect((host, port))
            .await
            .map_err(|e| unreachable(describe_connect_error(&e)))?;
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
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| unreachable(format!("no answer: {e}")))?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| unreachable(format!("answer unreadable: {e}")))?
            .to_bytes();
        if status.is_success() {
            serde_json::from_slice::<Resp>(&body)
                .map_err(|e| unreachable(format!("malformed answer: {e}")))
        } else {
            let reason = serde_json::from_slice::<ErrorBody>(&body)
                .map(|b| b.error)
                .unwrap_or_else(|_| format!("HTTP {status}"));
            if status.is_server_error() {
                // The issuer's own trouble, not a refusal: trying again may work.
                return Err(unreachable(format!("it answered {status}: {reason}")));
            }
            Err(IssuerAnswer::Refused(reason))
        }
    };
    tokio::time::timeout(REDEEM_TIMEOUT, work)
        .await
        .map_err(|_| unreachable(format!("no answer within {}s", REDEEM_TIMEOUT.as_secs())))?
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(join_host_port("::1", 5), "[::1]:5");
        assert_eq!(join_host_port("a.b", 5), "a.b:5");
        assert_eq!(split_host_port("[::1]:5"), Some(("::1".into(), 5)));
        assert_eq!(split_host_port("a.b:7"), Some(("a.b".into(), 7)));
        assert_eq!(split_host_port("a.b"), None);
    }

    #[test]
    fn after_a_renewal_only_the_current_and_the_previous_within_its_window_link() {
        let now = OffsetDateTime::now_utc();
        let mut spec = LinkedSiteSpec {
            site_id: SiteId::random(),
            site_name: "b".into(),
            grant: "g".into(),
            certificate_serial: "51".into(),
            key_fingerprint: "k".into(),
            linked_at: String::new(),
            revoked: false,
            revoked_at: None,
            previous_certificate_serial: None,
            previous_serial_valid_until: None,
        };
        // Never renewed: any serial our CA issued with the right key.
        assert!(serial_allowed(&spec, "42", now).is_ok());
        spec.previous_certificate_serial = Some("50".into());
        spec.previous_serial_valid_until = (now + Duration::from_secs(60)).format(&Rfc3339).ok();
        assert!(serial_allowed(&spec, "51", now).is_ok());
        assert!(serial_allowed(&spec, "50", now).is_ok());
        let late = now + Duration::from_secs(61);
        let err = serial_allowed(&spec, "50", late).unwrap_err();
        assert!(err.contains("overlap window ended"), "{err}");
        assert!(serial_allowed(&spec, "51", late).is_ok());
        let err = serial_allowed(&spec, "42", now).unwrap_err();
        assert!(
            err.contains("serial 42") && err.contains("replaced by a renewal"),
            "{err}"
        );
    }
}
