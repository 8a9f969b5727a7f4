//! Token redemption and certificate renewal, both ends: the grant service a site runs on its
//! link port (HTTP/1.1 over TLS, ALPN `skiff-grant/1`) and the client `skiff token redeem` and
//! `skiff link renew` use.
//!
//! The redeeming site sends a CSR with the token's code; the issuer checks the grant, signs a
//! client certificate with its CA and answers with it and its link endpoints. The private key
//! never leaves the redeeming site. The CSR names the issuer and the moment it was made (in
//! its subject, which the key signs), so a CSR one issuer saw cannot be redeemed at another:
//! the issuer refuses one bound to another site or more than [`CSR_FRESHNESS`] from its
//! clock, and takes the unbound CSR of an older redeemer only for a site id it has no record
//! of, or as that site's own retry of the redemption recorded (same key and grant, never
//! renewed, not revoked). Every request is read against the record in the folder, not memory.
//! Redemptions are serialised by one lock, and the grant's use
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
use skiff_router::link::ProxyConfig;
use skiff_router::link::proxy::PROXY_TIMEOUT;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::net::TcpStream;

use crate::SiteError;
use crate::folder::SiteFolder;
use crate::resources::{
    LinkedSite, LinkedSiteSpec, MAX_REPLACED_CERTIFICATES, ReplacedCertificate,
};
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
    /// CSR (PEM) carrying the redeeming site's id as URI SAN, its subject naming the issuer
    /// and the moment it was made ([`skiff_certs::redemption_csr`]).
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

    fn revoked(&self, peer: SiteId) -> Option<String> {
        match self.sites.read().unwrap().get(&peer) {
            Some(s) if s.spec.revoked => Some(format!(
                "site {} ({peer}) was revoked at this site",
                s.spec.site_name
            )),
            _ => None,
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
/// certificate until it first renews; after that the current one, and each replaced one until
/// the end of its own overlap window.
pub fn serial_allowed(
    spec: &LinkedSiteSpec,
    serial: &str,
    now: OffsetDateTime,
) -> Result<(), String> {
    if !spec.has_renewed() || serial == spec.certificate_serial {
        return Ok(());
    }
    let who = format!("site {} ({})", spec.site_name, spec.site_id);
    if let Some(old) = spec.replaced().into_iter().find(|r| r.serial == serial) {
        let until = old.valid_until;
        return match OffsetDateTime::parse(&until, &Rfc3339) {
            Ok(end) if now < end => Ok(()),
            _ => Err(format!(
                "{who} presented a replaced link certificate (serial {serial}): a renewal replaced it and its overlap window ended at {until}; that site must dial with its renewed certificate (skiff link renew there)"
            )),
        };
    }
    Err(format!(
        "{who} presented a link certificate (serial {serial}) that was replaced by a renewal and no longer links here; that site must dial with its current certificate (skiff link renew there)"
    ))
}

/// The replaced certificates of `spec` after `serial` is replaced at `now` with an overlap
/// window ending at `until`: the ones still in their window, plus `serial`, at most
/// [`MAX_REPLACED_CERTIFICATES`] (those ending first go). No entry's end is shortened.
fn replaced_after_renewal(
    spec: &LinkedSiteSpec,
    serial: &str,
    now: OffsetDateTime,
    until: OffsetDateTime,
) -> Vec<ReplacedCertificate> {
    let mut kept: Vec<(OffsetDateTime, ReplacedCertificate)> = spec
        .replaced()
        .into_iter()
        .filter_map(|r| {
            let end = OffsetDateTime::parse(&r.valid_until, &Rfc3339).ok()?;
            (end > now && r.serial != serial).then_some((end, r))
        })
        .collect();
    kept.push((
        until,
        ReplacedCertificate {
            serial: serial.to_string(),
            valid_until: until.format(&Rfc3339).unwrap_or_default(),
        },
    ));
    kept.sort_by_key(|k| std::cmp::Reverse(k.0));
    kept.truncate(MAX_REPLACED_CERTIFICATES);
    kept.into_iter().map(|(_, r)| r).collect()
}

/// `now` plus the overlap window, or why that is not a time.
fn overlap_end(now: OffsetDateTime, overlap: Duration) -> Result<OffsetDateTime, String> {
    time::Duration::try_from(overlap)
        .ok()
        .and_then(|d| now.checked_add(d))
        .ok_or_else(|| {
            format!(
                "site.yaml spec.certificateOverlap ({}s) reaches beyond any representable time: set at most {}",
                overlap.as_secs(),
                skiff_certs::format_duration(LINK_CERT_VALIDITY)
            )
        })
}

/// Whether an older redeemer's unbound CSR (naming no issuer and no time) may redeem for the
/// site of record `spec`, with the key of fingerprint `key` and the grant named `grant`: only
/// as that site's own retry of the redemption recorded (its answer lost), with the same key
/// and grant, not revoked, and never renewed since. Such a retry spends nothing and leaves the
/// record that site's; an unbound CSR another issuer saw could otherwise be replayed to turn
/// a renewed site's serial over and get its held certificate refused.
fn unbound_retry_allowed(spec: &LinkedSiteSpec, key: &str, grant: &str) -> bool {
    spec.key_fingerprint == key && spec.grant == grant && !spec.revoked && !spec.has_renewed()
}

/// How far the time a renewal or redemption CSR names may be from the issuer's clock.
pub const CSR_FRESHNESS: Duration = Duration::from_secs(5 * 60);

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
    /// Rate limits of the WARN lines any client can cause.
    log_limits: LogLimits,
}

/// How often at most the grant service logs one kind of refusal at WARN level.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// Per kind of log line: the first is logged, then one per [`REFUSAL_LOG_EVERY`] with a
/// count; anyone can make the grant service refuse, so refusals must not flood the log.
#[derive(Debug, Default)]
struct LogLimits {
    kinds: std::sync::Mutex<HashMap<&'static str, (Option<std::time::Instant>, u64)>>,
}

impl LogLimits {
    /// Counts one event of `kind`; `Some(events since the last line)` when it is logged.
    fn due(&self, kind: &'static str) -> Option<u64> {
        let mut kinds = self
            .kinds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (last, count) = kinds.entry(kind).or_default();
        *count += 1;
        if last.is_some_and(|t| t.elapsed() < REFUSAL_LOG_EVERY) {
            return None;
        }
        *last = Some(std::time::Instant::now());
        Some(std::mem::take(count))
    }
}

impl GrantService {
    /// Signs `csr` for `site_id` (refused unless the CSR is for that site); returns the
    /// certificate and the fingerprint of the key it certifies. Changes nothing yet.
    fn sign_for(
        &self,
        csr: &str,
        site_id: SiteId,
    ) -> Result<(skiff_certs::IssuedCert, String), (StatusCode, String)> {
        let (csr_site, cert) = self
            .ca
            .sign_link_csr(csr, LINK_CERT_VALIDITY)
            .map_err(|e| {
                (
                    StatusCode::BAD_REQUEST,
                    format!("bad certificate request: {e}"),
                )
            })?;
        if csr_site != site_id {
            return Err((
                StatusCode::BAD_REQUEST,
                format!(
                    "the certificate request is for site {csr_site}, but the request says {site_id}"
                ),
            ));
        }
        let key = skiff_certs::key_fingerprint_pem(&cert.cert_pem).map_err(|e| {
            tracing::error!(cause = %e, "the certificate just signed does not read back");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the issuing site could not read the certificate it signed; see its log"
                    .to_string(),
            )
        })?;
        Ok((cert, key))
    }

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
            log_limits: LogLimits::default(),
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
        // The CSR must be meant for this issuer, now: one another issuer saw (a redemption or
        // a renewal there) cannot redeem here. An older redeemer's CSR names no issuer and no
        // time; what it may do is decided below, against the record.
        let bound = match skiff_certs::csr_binding(&req.csr) {
            Ok(skiff_certs::CsrBinding::Redemption { issuer, at }) => {
                self.check_binding("redemption", "skiff token redeem", issuer, at, now)?;
                true
            }
            Ok(skiff_certs::CsrBinding::Unbound) => false,
            Ok(skiff_certs::CsrBinding::Renewal { .. }) => {
                return Err((
                    StatusCode::BAD_REQUEST,
                    "bad redemption request: its certificate request is a renewal request (skiff link renew makes those), not a redemption one".into(),
                ));
            }
            Err(e) => {
                return Err((
                    StatusCode::BAD_REQUEST,
                    format!("bad certificate request: {e}"),
                ));
            }
        };
        // The CSR is for the site id the request names (signature, key and URI SAN checked)
        // before any record is looked at, so no answer says whether some other site id is
        // linked here. Signing changes nothing yet.
        let (cert, key) = self.sign_for(&req.csr, req.site_id)?;
        // The folder is the truth, for every kind of request: a record written a moment ago
        // (an offline link, a `skiff link revoke`) counts before the reload that brings it
        // into memory, and a deleted one stays deleted.
        let known = crate::site::load_linked_site(&self.folder, req.site_id).map_err(internal)?;
        if let Some(k) = &known
            && !bound
            && !unbound_retry_allowed(&k.spec, &key, &grant.metadata.name)
        {
            return Err((
                StatusCode::FORBIDDEN,
                format!(
                    "the redemption request names no issuing site and no time (an older skiff makes it so), and site {} is already linked here: only a request bound to this site and made now may change its record; upgrade the redeeming skiff and redeem again",
                    req.site_id
                ),
            ));
        }
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
        let (renewed, replaced_certificates) = match &known {
            Some(k) if k.spec.has_renewed() => {
                let until = overlap_end(now, *self.overlap.read().unwrap()).map_err(|e| {
                    tracing::error!(cause = %e, "redemption failed");
                    (StatusCode::INTERNAL_SERVER_ERROR, e)
                })?;
                (
                    true,
                    replaced_after_renewal(&k.spec, &k.spec.certificate_serial, now, until),
                )
            }
            _ => (false, Vec::new()),
        };
        // A retry answers the redemption already recorded: the name and the time stay as
        // they were (the grant is not checked again, so a replayed request must not rename
        // the site); only the new certificate's serial changes.
        let (site_name, linked_at) = match &known {
            Some(k) if retry => (k.spec.site_name.clone(), k.spec.linked_at.clone()),
            _ => (
                req.site_name.chars().take(63).collect(),
                now.format(&Rfc3339).unwrap_or_default(),
            ),
        };
        let linked = LinkedSite::new(LinkedSiteSpec {
            site_id: req.site_id,
            site_name,
            grant: grant.metadata.name.clone(),
            certificate_serial: cert.serial.clone(),
            key_fingerprint: key,
            linked_at,
            revoked: false,
            revoked_at: None,
            renewed,
            replaced_certificates,
            previous_certificate_serial: None,
            previous_serial_valid_until: None,
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
        // The CSR must be meant for this issuer, now: one made for another issuer (a
        // redemption or a renewal there) cannot renew here.
        let (bound_to, at) = skiff_certs::renewal_csr_binding(&req.csr)
            .map_err(|e| (StatusCode::BAD_REQUEST, format!("bad renewal request: {e}")))?;
        self.check_binding("renewal", "skiff link renew", bound_to, at, now)?;
        // The CSR is for the site id the request names before any record is looked at, so no
        // answer says whether some other site id is linked or revoked here. Signing changes
        // nothing yet.
        let (cert, key) = self.sign_for(&req.csr, req.site_id)?;
        // The folder is the truth (a `skiff link revoke` may have written it a moment ago; a
        // deleted record stays deleted).
        let known = crate::site::load_linked_site(&self.folder, req.site_id).map_err(internal)?;
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
        if key != known.spec.key_fingerprint {
            return Err((
                StatusCode::FORBIDDEN,
                format!(
                    "the certificate request certifies a key other than the one site {} linked with: a renewal keeps the site's link key (a site with a new key must redeem a new token)",
                    req.site_id
                ),
            ));
        }
        let until_time = overlap_end(now, *self.overlap.read().unwrap()).map_err(|e| {
            tracing::error!(cause = %e, "renewal failed");
            (StatusCode::INTERNAL_SERVER_ERROR, e)
        })?;
        let until = until_time.format(&Rfc3339).unwrap_or_default();
        let mut spec = known.spec.clone();
        let replaced = std::mem::replace(&mut spec.certificate_serial, cert.serial.clone());
        // Every replaced certificate keeps its own window: two renewals in a row (the first
        // answer lost) do not lock out the certificate the dialer still holds.
        spec.replaced_certificates =
            replaced_after_renewal(&known.spec, &replaced, now, until_time);
        spec.renewed = true;
        spec.previous_certificate_serial = None;
        spec.previous_serial_valid_until = None;
        let renewed = LinkedSite::new(spec);
        save_linked_site(&self.folder, &renewed).map_err(internal)?;
        self.linked.insert(renewed);
        if let Some(hook) = self.commit_hook.get()
            && let Err(why) = hook.commit().await
        {
            tracing::error!(cause = %why, "renewal not committed; rolled back");
            self.roll_back_renewal(known, &cert.serial);
            return Err((
                StatusCode::SERVICE_UNAVAILABLE,
                "the issuing site could not store the renewal (nothing changed); try again shortly"
                    .to_string(),
            ));
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

    /// Refuses a `what` ("renewal", "redemption") request whose CSR is bound to another
    /// issuer than this site, or to a time more than [`CSR_FRESHNESS`] from `now`; `again` is
    /// the command that makes a new request.
    fn check_binding(
        &self,
        what: &str,
        again: &str,
        issuer: SiteId,
        at: i64,
        now: OffsetDateTime,
    ) -> Result<(), (StatusCode, String)> {
        if issuer != self.site_id {
            return Err((
                StatusCode::FORBIDDEN,
                format!(
                    "the {what} request is for issuing site {issuer}, not this one ({}): a {what} request is made for one issuer, so one sent to another site cannot be used here; make a new one for this site ({again})",
                    self.site_id
                ),
            ));
        }
        let skew = now.unix_timestamp().abs_diff(at);
        if skew > CSR_FRESHNESS.as_secs() {
            return Err((
                StatusCode::FORBIDDEN,
                format!(
                    "the {what} request was made {skew}s away from this site's clock (at most {}s are accepted): make a new one ({again}), and check the clocks of both sites",
                    CSR_FRESHNESS.as_secs()
                ),
            ));
        }
        Ok(())
    }

    /// Puts back the record a renewal replaced (its commit failed, so the renewing site never
    /// got the new certificate), keeping a revocation written meanwhile.
    fn roll_back_renewal(&self, mut old: LinkedSite, new_serial: &str) {
        match crate::site::load_linked_site(&self.folder, old.spec.site_id) {
            Ok(Some(now)) if now.spec.certificate_serial == new_serial => {
                old.spec.revoked = now.spec.revoked;
                old.spec.revoked_at = now.spec.revoked_at;
                if let Err(e) = save_linked_site(&self.folder, &old) {
                    tracing::error!(cause = %crate::error_chain(&e), "renewal roll-back failed");
                }
                self.linked.insert(old);
            }
            // Gone or rewritten by someone else since: theirs stands.
            Ok(_) => {}
            Err(e) => {
                tracing::error!(cause = %crate::error_chain(&e), "renewal roll-back failed");
            }
        }
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
                    match self.log_limits.due("renewal-refused") {
                        Some(count) => {
                            tracing::warn!(%peer, reason = %message, count, "certificate renewal refused")
                        }
                        None => {
                            tracing::debug!(%peer, reason = %message, "certificate renewal refused")
                        }
                    }
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
                match self.log_limits.due("redemption-refused") {
                    Some(count) => {
                        tracing::warn!(%peer, reason = %message, count, "token redemption refused")
                    }
                    None => tracing::debug!(%peer, reason = %message, "token redemption refused"),
                }
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
        let service_log = self.0.clone();
        Box::pin(async move {
            let svc = hyper::service::service_fn(move |req| {
                let service = service.clone();
                async move { Ok::<_, std::convert::Infallible>(service.handle(req, peer).await) }
            });
            // One request per connection: a client cannot hold one open for many.
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), svc);
            match tokio::time::timeout(REDEEM_TIMEOUT, conn).await {
                Ok(Err(e)) => tracing::debug!(%peer, cause = %e, "grant connection ended"),
                Err(_) => match service_log.log_limits.due("grant-timeout") {
                    Some(count) => tracing::warn!(%peer, count, "grant connection timed out"),
                    None => tracing::debug!(%peer, "grant connection timed out"),
                },
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

/// What the grant service answers for a path it does not serve.
const NO_SUCH_ENDPOINT: &str = "no such endpoint";

#[cfg(test)]
use client::split_host_port;
pub use client::{
    IssuerAnswer, describe_tls_error, join_host_port, redeem_token, renew_certificate,
    renew_certificate_through,
};

mod client;
#[cfg(test)]
mod tests;
