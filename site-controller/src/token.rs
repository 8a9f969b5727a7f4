//! The verbs behind `skiff token issue` and `skiff token redeem`.

use std::time::Duration;

use skiff_certs::{API_VERSION, AccessGrant, AccessToken, AccessTokenSpec, SiteId};
use skiff_router::link::{ProxyConfig, TransportChoice};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::SiteError;
use crate::admin::admin_request;
use crate::folder::SiteFolder;
use crate::grant::{join_host_port, redeem_token};
use crate::resources::{Link, LinkSpec, validate_name};
use crate::site::{link_key, list_links, load_site, save_grant, save_link};

/// What `skiff token issue` was asked for.
#[derive(Debug, Clone)]
pub struct IssueOptions {
    /// How long the token may be redeemed.
    pub expiration_window: Duration,
    /// How many redemptions it allows.
    pub redemptions_allowed: u32,
    /// Cost of links made with it.
    pub cost: u32,
}

/// Creates a grant at the site in `folder` and returns the token that redeems it.
///
/// The token carries the port of the running site when it runs (a site configured with port 0
/// must be running), else the configured port.
pub async fn issue_token(
    folder: &SiteFolder,
    opts: &IssueOptions,
) -> Result<AccessToken, SiteError> {
    if opts.redemptions_allowed == 0 {
        return Err(SiteError::InvalidArgument(
            "--redemptions-allowed must be at least 1".into(),
        ));
    }
    if opts.expiration_window.is_zero() {
        return Err(SiteError::InvalidArgument(
            "--expiration-window must be longer than 0".into(),
        ));
    }
    let site = load_site(folder)?;
    let spec = &site.site.spec;
    if !spec.link_access {
        return Err(SiteError::NoLinkAccess {
            site: site.name().into(),
        });
    }
    let port = match admin_request(&folder.admin_socket(), http::Method::GET, "/v1/site").await {
        Ok(v) => v
            .get("linkPort")
            .and_then(|p| p.as_u64())
            .map(|p| p as u16)
            .unwrap_or(spec.link_port),
        Err(SiteError::NotRunning { .. }) if spec.link_port != 0 => spec.link_port,
        Err(e) => return Err(e),
    };
    let now = OffsetDateTime::now_utc();
    let grant_name = format!("grant-{}", &SiteId::random().to_string()[..12]);
    let grant = AccessGrant::new(
        &grant_name,
        opts.expiration_window,
        opts.redemptions_allowed,
        opts.cost,
        now,
    );
    save_grant(folder, &grant)?;
    let host = spec
        .link_hosts
        .first()
        .cloned()
        .unwrap_or_else(|| "127.0.0.1".into());
    let expires_at = (now + opts.expiration_window).format(&Rfc3339).ok();
    Ok(AccessToken {
        api_version: API_VERSION.into(),
        kind: "AccessToken".into(),
        metadata: skiff_certs::Metadata {
            name: format!("{}-{}", site.name(), grant_name),
        },
        spec: AccessTokenSpec {
            url: format!("https://{}", join_host_port(&host, port)),
            code: grant.spec.code.clone(),
            ca: site.ca.cert_pem().to_string(),
            site_id: site.id(),
            link_cost: opts.cost,
            expires_at,
        },
    })
}

/// What `skiff token redeem` was asked for.
#[derive(Debug, Clone, Default)]
pub struct RedeemOptions {
    /// Name of the link (default: the issuing site's name).
    pub name: Option<String>,
    /// Cost of the link (default: the token's).
    pub cost: Option<u32>,
    /// `quic`, `tls` or `auto` (default).
    pub transport: Option<String>,
    /// An HTTP proxy (`http://[user:password@]host:port`) the redemption and then the link go
    /// through: the link is TLS over TCP (`auto` becomes `tls`; `quic` is refused).
    pub proxy: Option<String>,
}

/// Redeems the token `token_text` for the site in `folder`, stores the new link and, if the
/// site runs, asks it to dial. Returns the stored link. An offline link file (`kind: Link`,
/// made by `skiff link generate`) is installed instead ([`crate::offline::install`]).
pub async fn redeem(
    folder: &SiteFolder,
    token_text: &str,
    opts: &RedeemOptions,
) -> Result<Link, SiteError> {
    // An offline link file (`skiff link generate`) is installed as it is, without a network.
    if crate::offline::is_link_file(token_text) {
        let (text, transport) = match &opts.proxy {
            None => (token_text.to_string(), opts.transport.clone()),
            // `--proxy` goes into the file's Link, with its transport made TLS.
            Some(url) => {
                let origin = std::path::Path::new("the link file");
                let mut link: Link = crate::resources::from_yaml(token_text, origin)?;
                let asked = (opts.transport.clone()).unwrap_or_else(|| link.spec.transport.clone());
                let (transport, _) = redeem_transport(asked, Some(url))?;
                link.spec.proxy = Some(url.clone());
                (crate::resources::to_yaml(&link), Some(transport))
            }
        };
        let install = crate::offline::InstallOptions {
            name: opts.name.clone(),
            cost: opts.cost,
            transport,
        };
        return crate::offline::install(folder, &text, &install).await;
    }
    let token = AccessToken::from_yaml(token_text).map_err(SiteError::BadToken)?;
    let transport = opts.transport.clone().unwrap_or_else(|| "auto".into());
    let (transport, proxy) = redeem_transport(transport, opts.proxy.as_deref())?;
    if let Some(n) = &opts.name {
        validate_name("link", n)?;
    }
    let site = load_site(folder)?;
    if token.spec.site_id == site.id() {
        return Err(SiteError::InvalidArgument(
            "this token was issued by this very site: redeem it at another site".into(),
        ));
    }
    let existing = list_links(folder)?;
    if let Some(n) = &opts.name
        && let Some((l, _)) = existing.iter().find(|(l, _)| &l.metadata.name == n)
        && l.spec.peer_site_id != token.spec.site_id
    {
        return Err(SiteError::Exists {
            what: "link",
            name: n.clone(),
        });
    }
    // The site's own link key: a retry, or a new link to a site linked before, proves it is
    // the same site. Bound to the issuer the token names and to now, so the issuer cannot
    // redeem it elsewhere.
    let csr = skiff_certs::redemption_csr(
        site.id(),
        token.spec.site_id,
        OffsetDateTime::now_utc(),
        &link_key(folder)?,
    )?;
    let answer = redeem_token(&token, site.id(), site.name(), &csr, proxy.as_ref()).await?;
    if answer.site_id != token.spec.site_id || answer.endpoints.is_empty() {
        return Err(SiteError::IssuerUnreachable {
            url: token.spec.url.clone(),
            reason: format!(
                "the answer names site {} and {} endpoints; expected site {} and at least one",
                answer.site_id,
                answer.endpoints.len(),
                token.spec.site_id
            ),
        });
    }
    let name = match &opts.name {
        Some(n) => n.clone(),
        None => free_link_name(&answer.site_name, token.spec.site_id, &existing),
    };
    let link = Link::new(
        &name,
        LinkSpec {
            peer_site_id: answer.site_id,
            peer_site_name: answer.site_name.clone(),
            endpoints: answer.endpoints,
            peer_ca: token.spec.ca.clone(),
            client_certificate: answer.certificate,
            cost: opts.cost.unwrap_or(token.spec.link_cost),
            transport,
            client_key: None,
            proxy: opts.proxy.clone(),
        },
    );
    save_link(folder, &link)?;
    reload_if_running(folder).await?;
    Ok(link)
}

/// `transport`, if it is one of quic, tls, auto.
fn checked_transport(transport: String) -> Result<String, SiteError> {
    match transport.parse::<TransportChoice>() {
        Ok(_) => Ok(transport),
        Err(_) => Err(SiteError::InvalidArgument(format!(
            "--transport {transport:?} is not one of quic, tls, auto"
        ))),
    }
}

/// The transport and proxy of a redeemed link (`transport` refused unless it is one of quic,
/// tls, auto): with a proxy, TLS over TCP (an HTTP proxy
/// tunnels TCP, QUIC is UDP): `auto` becomes `tls`, `quic` is refused.
fn redeem_transport(
    transport: String,
    proxy: Option<&str>,
) -> Result<(String, Option<ProxyConfig>), SiteError> {
    let transport = checked_transport(transport)?;
    let Some(url) = proxy else {
        return Ok((transport, None));
    };
    let proxy = url
        .parse::<ProxyConfig>()
        .map_err(|e| SiteError::InvalidArgument(format!("--proxy: {e}")))?;
    match transport.as_str() {
        "quic" => Err(SiteError::InvalidArgument(
            "--transport quic cannot go through --proxy: an HTTP proxy tunnels TCP (CONNECT) \
             and QUIC is UDP; use --transport tls (or auto), or redeem without --proxy"
                .into(),
        )),
        _ => Ok(("tls".into(), Some(proxy))),
    }
}

/// A link name for a peer: its site name, unless a link to another site has it already.
fn free_link_name(peer_name: &str, peer: SiteId, existing: &[(Link, String)]) -> String {
    let base = if validate_name("link", peer_name).is_ok() {
        peer_name.to_string()
    } else {
        format!("site-{}", &peer.to_string()[..8])
    };
    let taken = |n: &str| {
        existing
            .iter()
            .any(|(l, _)| l.metadata.name == n && l.spec.peer_site_id != peer)
    };
    if !taken(&base) {
        return base;
    }
    (2..)
        .map(|i| format!("{base}-{i}"))
        .find(|n| !taken(n))
        .expect("a free name")
}

/// Asks the running site (if any) to re-read its folder. Not running is fine: it reads the
/// folder when it starts.
pub async fn reload_if_running(folder: &SiteFolder) -> Result<bool, SiteError> {
    if !folder.is_locked() {
        return Ok(false);
    }
    match admin_request(&folder.admin_socket(), http::Method::POST, "/v1/reload").await {
        Ok(_) => Ok(true),
        Err(SiteError::NotRunning { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Which outbound links a renewal is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenewSelection<'a> {
    /// Every outbound link.
    All,
    /// The links to the peer of this link.
    Link(&'a str),
    /// The links whose certificate has less than a third of its validity left.
    Due,
}

/// The outcome of renewing the client certificate of the links to one peer.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LinkRenewal {
    /// The links to that peer (all get the new certificate).
    pub links: Vec<String>,
    /// The peer's site name.
    pub peer_site_name: String,
    /// The peer's site id.
    pub peer_site_id: SiteId,
    /// The new certificate's serial, when renewed.
    pub serial: Option<String>,
    /// When the new certificate expires (RFC 3339 UTC), when renewed.
    pub expires: Option<String>,
    /// Until when the issuer still accepts the replaced certificate, when renewed.
    pub previous_valid_until: Option<String>,
    /// Why it was not renewed.
    pub error: Option<String>,
}

/// Whether a certificate has less than a third of its validity left at `now` (or cannot be
/// read, which a renewal repairs).
pub fn renewal_due(cert_pem: &str, now: OffsetDateTime) -> bool {
    match skiff_certs::certificate_validity_pem(cert_pem) {
        Ok((start, end)) => (end - now) * 3 < end - start,
        Err(_) => true,
    }
}

/// Renews the client certificates of the selected outbound links at their issuers and stores
/// them (one atomic write per link file). One request per peer site: every link to that peer
/// gets the new certificate, because the issuer keeps one current certificate per site. The
/// running site is not asked to reload; the caller does that (a certificate change does not
/// redial an established link). A link that cannot be renewed keeps its certificate.
pub async fn renew_links(
    folder: &SiteFolder,
    selection: RenewSelection<'_>,
) -> Result<Vec<LinkRenewal>, SiteError> {
    let site = load_site(folder)?;
    // One renewal at a time per folder; the link files are read under the lock.
    let locking = folder.clone();
    let _renewing = tokio::task::spawn_blocking(move || locking.lock_renewals())
        .await
        .map_err(|e| {
            SiteError::InvalidArgument(format!("waiting for the renewal lock failed: {e}"))
        })??;
    let links = list_links(folder)?;
    let now = OffsetDateTime::now_utc();
    let peers: Vec<SiteId> = match selection {
        RenewSelection::All => links.iter().map(|(l, _)| l.spec.peer_site_id).collect(),
        RenewSelection::Link(name) => {
            validate_name("link", name)?;
            let (l, _) = links
                .iter()
                .find(|(l, _)| l.metadata.name == name)
                .ok_or_else(|| SiteError::NotFound {
                    what: "link",
                    name: name.into(),
                })?;
            vec![l.spec.peer_site_id]
        }
        RenewSelection::Due => links
            .iter()
            .filter(|(l, _)| renewal_due(&l.spec.client_certificate, now))
            .map(|(l, _)| l.spec.peer_site_id)
            .collect(),
    };
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for peer in peers {
        if !seen.insert(peer) {
            continue;
        }
        let group: Vec<&(Link, String)> = links
            .iter()
            .filter(|(l, _)| l.spec.peer_site_id == peer)
            .collect();
        out.push(renew_peer(folder, &site, &group).await?);
    }
    Ok(out)
}

/// Renews the certificate of the links `group` (all to one peer, each with the key its
/// certificate certifies: the site's `link.key`, or an offline link's own key). The renewal
/// is made with the first link's key; the links holding another key keep their certificate.
async fn renew_peer(
    folder: &SiteFolder,
    site: &crate::site::LoadedSite,
    group: &[&(Link, String)],
) -> Result<LinkRenewal, SiteError> {
    let (first, key) = group[0];
    let mut outcome = LinkRenewal {
        links: group.iter().map(|(l, _)| l.metadata.name.clone()).collect(),
        peer_site_name: first.spec.peer_site_name.clone(),
        peer_site_id: first.spec.peer_site_id,
        serial: None,
        expires: None,
        previous_valid_until: None,
        error: None,
    };
    // Bound to this issuer and this moment: it cannot renew at another issuer, nor later.
    let csr = skiff_certs::renewal_csr(
        site.id(),
        first.spec.peer_site_id,
        OffsetDateTime::now_utc(),
        key,
    )?;
    let mut endpoints: Vec<&String> = Vec::new();
    for (l, _) in group {
        for e in &l.spec.endpoints {
            if !endpoints.contains(&e) {
                endpoints.push(e);
            }
        }
    }
    // Through the link's proxy, as the link is dialled (links to one peer share it).
    let proxy = match first.proxy_config() {
        Ok(p) => p,
        Err(e) => {
            outcome.error = Some(e.to_string());
            return Ok(outcome);
        }
    };
    let mut failures = Vec::new();
    let mut answer = None;
    for endpoint in endpoints {
        match crate::grant::renew_certificate_through(
            &first.spec.peer_ca,
            first.spec.peer_site_id,
            endpoint,
            site.id(),
            &csr,
            proxy.as_ref(),
        )
        .await
        {
            Ok(a) => {
                answer = Some(a);
                break;
            }
            Err(crate::grant::IssuerAnswer::Refused(reason)) => {
                // A refusal is the issuer's decision; other endpoints are the same issuer.
                failures = vec![format!("refused by the issuer: {reason}")];
                break;
            }
            Err(crate::grant::IssuerAnswer::Unreachable(reason)) => {
                failures.push(format!("{endpoint}: {reason}"));
            }
            Err(crate::grant::IssuerAnswer::Unanswered(reason)) => {
                // The issuer may have renewed without our hearing it: asking again at once
                // would replace that certificate too. The link keeps its certificate, which
                // still links for the issuer's overlap window; renew again later.
                failures.push(format!(
                    "{endpoint}: {reason} (the issuer may have renewed without answering; the link keeps its certificate, which still links for the issuer's overlap window: run skiff link renew again later)"
                ));
                break;
            }
        }
    }
    let Some(answer) = answer else {
        outcome.error = Some(if failures.is_empty() {
            "the link has no endpoints".into()
        } else {
            failures.join("; ")
        });
        return Ok(outcome);
    };
    // The issuer must certify our key and our id, or the link would stop working.
    let ours = skiff_certs::key_fingerprint_pem(&first.spec.client_certificate).ok();
    let theirs = skiff_certs::key_fingerprint_pem(&answer.certificate).ok();
    let cert_site = skiff_certs::first_certificate(&answer.certificate)
        .ok()
        .and_then(|der| skiff_certs::peer_site_id(&der).ok());
    if theirs.is_none() || theirs != ours || cert_site != Some(site.id()) {
        outcome.error = Some(
            "the issuer answered with a certificate for another key or site; the link keeps its certificate"
                .into(),
        );
        return Ok(outcome);
    }
    // Each link file as it is now (the round trip took a while; a link deleted or edited
    // meanwhile stays deleted or keeps its edit): only its client certificate changes.
    let mut stored = Vec::new();
    for (l, _) in group {
        let Some((mut now, now_key)) = list_links(folder)?
            .into_iter()
            .find(|(n, _)| n.metadata.name == l.metadata.name)
        else {
            continue;
        };
        // Only a link holding the key just certified (a link with another key would stop
        // working with this certificate).
        if now.spec.peer_site_id != l.spec.peer_site_id || &now_key != key {
            continue;
        }
        now.spec.client_certificate = answer.certificate.clone();
        // save_link rewrites links/NAME.key from clientKey, and deletes it when clientKey is
        // None: a link with its own key (an offline link) must be given it back.
        if folder.link_own_key_file(&now.metadata.name).is_file() {
            now.spec.client_key = Some(now_key);
        }
        save_link(folder, &now)?;
        stored.push(now.metadata.name.clone());
    }
    outcome.links = stored;
    outcome.expires = skiff_certs::certificate_validity_pem(&answer.certificate)
        .ok()
        .and_then(|(_, end)| end.format(&Rfc3339).ok());
    outcome.serial = Some(answer.serial);
    outcome.previous_valid_until = Some(answer.previous_serial_valid_until);
    tracing::info!(
        peer = %first.spec.peer_site_id,
        links = ?outcome.links,
        serial = ?outcome.serial,
        "link certificate renewed"
    );
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_due_with_a_third_left() {
        skiff_certs::install_crypto_provider();
        let ca = skiff_certs::SiteCa::generate("east", SiteId::random()).unwrap();
        let (csr, _) = skiff_certs::generate_link_csr(SiteId::random(), "west").unwrap();
        let (_, cert) = ca.sign_link_csr(&csr, Duration::from_secs(3000)).unwrap();
        let now = OffsetDateTime::now_utc();
        // Valid from now - 300 s to now + 3000 s: a third (1100 s) is left at now + 1900 s.
        assert!(!renewal_due(&cert.cert_pem, now));
        assert!(!renewal_due(
            &cert.cert_pem,
            now + Duration::from_secs(1890)
        ));
        assert!(renewal_due(&cert.cert_pem, now + Duration::from_secs(1910)));
        assert!(renewal_due("not a certificate", now));
    }
}

/// What `skiff link revoke` did.
#[derive(Debug, Clone)]
pub struct Revoked {
    /// The revoked site's record.
    pub site: crate::resources::LinkedSite,
    /// `false`: it was revoked before (with `--undo`: it was not revoked).
    pub newly: bool,
    /// Whether a running site applied it now (else it applies at the next start).
    pub applied: bool,
}

/// How long a revocation waits for a site that is starting (folder locked, admin API not up
/// yet) to answer its reload.
pub const RELOAD_WAIT: Duration = Duration::from_secs(15);

/// Asks the site in `folder` to re-read its folder. A site that is starting (it holds the
/// folder but does not answer yet) is asked again until it answers, for up to
/// [`RELOAD_WAIT`]: it may have read `peers/` before the change. `Ok(false)`: not running.
pub async fn reload_waiting_for_start(folder: &SiteFolder) -> Result<bool, SiteError> {
    let deadline = tokio::time::Instant::now() + RELOAD_WAIT;
    loop {
        if !folder.is_locked() {
            return Ok(false);
        }
        match admin_request(&folder.admin_socket(), http::Method::POST, "/v1/reload").await {
            Ok(_) => return Ok(true),
            Err(SiteError::NotRunning { .. }) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(SiteError::NotRunning { .. }) => {
                return Err(SiteError::InvalidArgument(format!(
                    "the site holds its folder but its admin API did not answer within {} s (starting or stopping)",
                    RELOAD_WAIT.as_secs()
                )));
            }
            Err(e) => return Err(e),
        }
    }
}

/// The error of a revocation (or its undoing) that was recorded but not applied.
fn not_applied(site: &crate::resources::LinkedSite, what: &str, e: &SiteError) -> SiteError {
    SiteError::InvalidArgument(format!(
        "site {} ({}) {what}: recorded in peers/{}.yaml, not yet applied to the running site: {}. Run the same command again once the site answers (skiff site status), or restart the site: it applies it when it starts",
        site.spec.site_name,
        site.spec.site_id,
        site.spec.site_id,
        crate::error_chain(e)
    ))
}

/// Revokes the linked site `who` (name, id or id prefix) at this site: records it in
/// `peers/`, and if the site runs (or is starting), reloads it, which closes that site's
/// links at once and stops this site's own links to it; its re-dials and renewals are
/// refused from then on. Idempotent.
pub async fn revoke(folder: &SiteFolder, who: &str) -> Result<Revoked, SiteError> {
    load_site(folder)?;
    let (mut site, newly) = crate::site::revoke_linked_site(folder, who)?;
    let mut applied = reload_waiting_for_start(folder)
        .await
        .map_err(|e| not_applied(&site, "revoked", &e))?;
    // A redemption or renewal answered while we wrote may have stored the record again
    // without the mark; the running site then still admits it. Mark again until it holds
    // (each pass is one write and one reload).
    for _ in 0..5 {
        match crate::site::load_linked_site(folder, site.spec.site_id)? {
            Some(now) if now.spec.revoked => {
                site = now;
                return Ok(Revoked {
                    site,
                    newly,
                    applied,
                });
            }
            _ => {
                let (again, _) =
                    crate::site::revoke_linked_site(folder, &site.spec.site_id.to_string())?;
                site = again;
                applied = reload_waiting_for_start(folder)
                    .await
                    .map_err(|e| not_applied(&site, "revoked", &e))?;
            }
        }
    }
    Err(SiteError::InvalidArgument(format!(
        "site {} ({}) could not be kept revoked: its record was rewritten five times while revoking (is another skiff changing this folder?)",
        site.spec.site_name, site.spec.site_id
    )))
}

/// Undoes the revocation of the linked site `who` (`skiff link revoke --undo`): it may link
/// and renew again, and this site dials it again. Idempotent.
pub async fn unrevoke(folder: &SiteFolder, who: &str) -> Result<Revoked, SiteError> {
    load_site(folder)?;
    let mut site = crate::site::find_linked_site(folder, who)?;
    let newly = site.spec.revoked;
    if newly {
        site.spec.revoked = false;
        site.spec.revoked_at = None;
        crate::site::save_linked_site(folder, &site)?;
    }
    let applied = reload_waiting_for_start(folder)
        .await
        .map_err(|e| not_applied(&site, "is no longer revoked", &e))?;
    Ok(Revoked {
        site,
        newly,
        applied,
    })
}
