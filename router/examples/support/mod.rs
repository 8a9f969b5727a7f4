//! Shared by the router examples: two sites with their own CAs, and a router for each.

use std::sync::Arc;

use skiff_certs::{SiteCa, SiteId};
use skiff_router::link::{InboundPolicy, Router, RouterConfig};
use skiff_router::wire::RouterMode;

/// Admits every site (the examples link sites they made themselves).
pub struct AllowAll;
impl InboundPolicy for AllowAll {
    fn admit(&self, _: SiteId) -> Result<(), String> {
        Ok(())
    }
}

/// A site's identity: id, CA and router certificate.
pub struct Site {
    pub id: SiteId,
    pub ca: SiteCa,
    pub cert: String,
    pub key: String,
}

/// A new site identity.
pub fn site(name: &str) -> Site {
    let id = SiteId::random();
    let ca = SiteCa::generate(name, id).unwrap();
    let issued = ca.issue_router_cert(id, &[]).unwrap();
    Site {
        id,
        cert: issued.cert_pem,
        key: issued.key_pem.unwrap(),
        ca,
    }
}

/// A router for `s`, accepting links on a free loopback port when `listen`.
pub async fn router(s: &Site, name: &str, listen: bool) -> Router {
    let mut cfg = RouterConfig::new(
        s.id,
        name,
        RouterMode::Interior,
        s.cert.clone(),
        s.key.clone(),
        s.ca.cert_pem(),
    );
    if listen {
        cfg.link_listen = Some("127.0.0.1:0".parse().unwrap());
    }
    Router::start(cfg, Arc::new(AllowAll), None).await.unwrap()
}
