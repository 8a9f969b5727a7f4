//! The verbs behind `skiff token issue` and `skiff token redeem`.

use std::time::Duration;

use skiff_certs::{API_VERSION, AccessGrant, AccessToken, AccessTokenSpec, SiteId};
use skiff_router::link::TransportChoice;
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
}

/// Redeems the token `token_text` for the site in `folder`, stores the new link and, if the
/// site runs, asks it to dial. Returns the stored link.
pub async fn redeem(
    folder: &SiteFolder,
    token_text: &str,
    opts: &RedeemOptions,
) -> Result<Link, SiteError> {
    let token = AccessToken::from_yaml(token_text).map_err(SiteError::BadToken)?;
    let transport = opts.transport.clone().unwrap_or_else(|| "auto".into());
    transport.parse::<TransportChoice>().map_err(|_| {
        SiteError::InvalidArgument(format!(
            "--transport {transport:?} is not one of quic, tls, auto"
        ))
    })?;
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
    // the same site.
    let csr = skiff_certs::link_csr(site.id(), site.name(), &link_key(folder)?)?;
    let answer = redeem_token(&token, site.id(), site.name(), &csr).await?;
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
        },
    );
    save_link(folder, &link)?;
    reload_if_running(folder).await?;
    Ok(link)
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
