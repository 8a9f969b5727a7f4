//! Resource shapes of the site folder (`apiVersion: skiff.io/v1alpha1`): Site, Link, and the
//! record of a site that redeemed a grant here (LinkedSite). Tokens and grants live in `certs`.

use serde::{Deserialize, Serialize};
use skiff_certs::{API_VERSION, SiteId};

use crate::SiteError;

/// Default port of link access (TCP for TLS links and grants, UDP for QUIC).
pub const DEFAULT_LINK_PORT: u16 = 45671;

/// Default cost of a link.
pub const DEFAULT_LINK_COST: u32 = 1;

/// `metadata` of every resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// The resource's name, unique among resources of its kind in the site.
    pub name: String,
}

/// The Site resource: this site's name, identity and link access.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Site {
    /// Always `skiff.io/v1alpha1`.
    pub api_version: String,
    /// Always `Site`.
    pub kind: String,
    /// The site's name.
    pub metadata: Metadata,
    /// What the site is.
    pub spec: SiteSpec,
}

/// `spec` of a Site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SiteSpec {
    /// The site's 128-bit id (in its certificates as `skiff://site/<id>`).
    pub id: SiteId,
    /// Whether the site accepts links (and serves token redemptions).
    #[serde(default)]
    pub link_access: bool,
    /// Host names or addresses other sites use to reach this site; tokens carry them.
    #[serde(default)]
    pub link_hosts: Vec<String>,
    /// Port of link access: TCP (TLS links, grants) and UDP (QUIC). 0 picks a free port at
    /// each start (tests); tokens then carry the port of the running site.
    #[serde(default = "default_link_port")]
    pub link_port: u16,
    /// An edge site only dials out and never carries transit traffic.
    #[serde(default)]
    pub edge: bool,
    /// How long a linked site's previous client certificate keeps linking after it renewed
    /// (`30s`, `24h`, ...); absent: [`DEFAULT_CERTIFICATE_OVERLAP`]. Longer tolerates a
    /// dialer that renewed but has not redialled (it still holds the old certificate in a
    /// process that was not reloaded); shorter shrinks the time a stolen old certificate
    /// still works.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_overlap: Option<String>,
}

/// Default overlap window of a renewed link client certificate: 24 h.
pub const DEFAULT_CERTIFICATE_OVERLAP: std::time::Duration =
    std::time::Duration::from_secs(24 * 3600);

impl SiteSpec {
    /// The certificate overlap window (`certificateOverlap`, or the default); `Err` names
    /// the bad value.
    pub fn certificate_overlap(&self) -> Result<std::time::Duration, SiteError> {
        match &self.certificate_overlap {
            None => Ok(DEFAULT_CERTIFICATE_OVERLAP),
            Some(text) => {
                let overlap = skiff_certs::parse_duration(text).map_err(|e| {
                    SiteError::InvalidArgument(format!(
                        "site.yaml spec.certificateOverlap {text:?} is not a duration like 30s, 10m or 24h: {e}"
                    ))
                })?;
                let most = crate::grant::LINK_CERT_VALIDITY;
                if overlap > most {
                    return Err(SiteError::InvalidArgument(format!(
                        "site.yaml spec.certificateOverlap {text:?} is longer than a link certificate is valid ({}): set at most that",
                        skiff_certs::format_duration(most)
                    )));
                }
                Ok(overlap)
            }
        }
    }
}

fn default_link_port() -> u16 {
    DEFAULT_LINK_PORT
}

/// The Link resource: a link this site dials, made by redeeming a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Link {
    /// Always `skiff.io/v1alpha1`.
    pub api_version: String,
    /// Always `Link`.
    pub kind: String,
    /// The link's name.
    pub metadata: Metadata,
    /// Where and how to dial.
    pub spec: LinkSpec,
}

/// `spec` of a Link. A stored link has no private key here (it certifies the site's
/// `link.key`, or its own `links/NAME.key`, both 0600); an offline link file carries one in
/// `clientKey`, and a proxy URL may carry a password: `Debug` shows neither.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LinkSpec {
    /// The peer's site id; its certificate must carry it.
    pub peer_site_id: SiteId,
    /// The peer's site name, for display.
    #[serde(default)]
    pub peer_site_name: String,
    /// `host:port` endpoints of the peer's link access, tried in order.
    pub endpoints: Vec<String>,
    /// The peer's CA (PEM): the only CA trusted on this link.
    pub peer_ca: String,
    /// This site's client certificate for the link, signed by the peer's CA (PEM).
    pub client_certificate: String,
    /// Cost of the link for routing.
    #[serde(default = "default_cost")]
    pub cost: u32,
    /// `quic`, `tls` or `auto`.
    #[serde(default = "default_transport")]
    pub transport: String,
    /// The private key (PEM) of `clientCertificate`, only in an offline link file made by
    /// `skiff link generate`: when the link is installed it moves to `links/NAME.key` (0600)
    /// and is never written back into a resource (`skiff get links` does not show it). A link
    /// without it certifies the site's own `link.key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<String>,
    /// An HTTP proxy the link is dialled through with CONNECT: `http://host:port` or
    /// `http://user:password@host:port` (percent-encode `@`, `:` and `%` in them). A proxied
    /// link is TLS over TCP only: with `transport: quic` it is refused, `auto` dials TLS.
    /// Renewals of the link's certificate go through it too. A link file whose proxy carries
    /// credentials is written 0600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<String>,
}

impl std::fmt::Debug for LinkSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A proxy URL with a password shows its scheme and host only.
        let proxy = self.proxy.as_deref().map(|u| match u.rsplit_once('@') {
            Some((before, host)) => {
                let scheme = before.split_once("://").map_or("", |(s, _)| s);
                format!("{scheme}://<redacted>@{host}")
            }
            None => u.to_string(),
        });
        f.debug_struct("LinkSpec")
            .field("peer_site_id", &self.peer_site_id)
            .field("peer_site_name", &self.peer_site_name)
            .field("endpoints", &self.endpoints)
            .field("peer_ca", &self.peer_ca)
            .field("client_certificate", &self.client_certificate)
            .field("cost", &self.cost)
            .field("transport", &self.transport)
            .field(
                "client_key",
                &self.client_key.as_ref().map(|_| "<redacted private key>"),
            )
            .field("proxy", &proxy)
            .finish()
    }
}

impl Link {
    /// The link's proxy, checked: an `http://` URL with host and port and nothing after
    /// them, on a link whose transport is not `quic`. `Err` names the link and says what to
    /// change; it never repeats the password.
    pub fn proxy_config(&self) -> Result<Option<skiff_router::link::ProxyConfig>, SiteError> {
        let Some(url) = &self.spec.proxy else {
            return Ok(None);
        };
        let name = &self.metadata.name;
        let proxy = url
            .parse::<skiff_router::link::ProxyConfig>()
            .map_err(|e| SiteError::InvalidArgument(format!("link {name:?}: spec.proxy: {e}")))?;
        if self.spec.transport == "quic" {
            return Err(SiteError::InvalidArgument(format!(
                "link {name:?} has transport quic and a proxy: an HTTP proxy tunnels TCP only and \
                 QUIC is UDP; use transport tls (or auto, which then dials TLS), or remove the proxy"
            )));
        }
        Ok(Some(proxy))
    }

    /// Whether the link's proxy URL carries a user and password (its file is then 0600).
    pub fn proxy_has_credentials(&self) -> bool {
        // Also a URL that does not parse: it may still hold a password.
        self.spec.proxy.as_deref().is_some_and(|u| u.contains('@'))
    }
}

fn default_cost() -> u32 {
    DEFAULT_LINK_COST
}

fn default_transport() -> String {
    "auto".into()
}

/// A site that redeemed a grant here and may link in (until revoked).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LinkedSite {
    /// Always `skiff.io/v1alpha1`.
    pub api_version: String,
    /// Always `LinkedSite`.
    pub kind: String,
    /// Named by the site id.
    pub metadata: Metadata,
    /// What was granted.
    pub spec: LinkedSiteSpec,
}

/// `spec` of a LinkedSite.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LinkedSiteSpec {
    /// The linked site's id.
    pub site_id: SiteId,
    /// The name it gave when redeeming.
    pub site_name: String,
    /// The grant it redeemed.
    pub grant: String,
    /// Serial of the client certificate issued to it last (hex).
    pub certificate_serial: String,
    /// SHA-256 of the key its certificates certify: the site id is bound to this key, so
    /// nobody else can claim that id with another token.
    pub key_fingerprint: String,
    /// When (RFC 3339 UTC).
    pub linked_at: String,
    /// A revoked site's links are closed and refused.
    #[serde(default)]
    pub revoked: bool,
    /// When it was revoked (RFC 3339 UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
    /// Set once the site has renewed: from then on only `certificateSerial`, and the
    /// replaced certificates in `replacedCertificates` until their end, may link.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub renewed: bool,
    /// The certificates renewals replaced that still link, each until its own end (at most
    /// [`MAX_REPLACED_CERTIFICATES`]; ended ones are dropped at the next renewal).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replaced_certificates: Vec<ReplacedCertificate>,
    /// Read from files of an earlier skiff (one slot): the serial the last renewal replaced.
    /// Counts as one more entry of `replacedCertificates`; the next renewal moves it there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_certificate_serial: Option<String>,
    /// Read from files of an earlier skiff: end of `previousCertificateSerial`'s window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_serial_valid_until: Option<String>,
}

/// How many replaced certificates a linked site's record keeps (the ones ending first go
/// beyond that).
pub const MAX_REPLACED_CERTIFICATES: usize = 16;

/// A certificate a renewal replaced, still linking until `validUntil`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReplacedCertificate {
    /// Its serial (hex).
    pub serial: String,
    /// End of its overlap window (RFC 3339 UTC).
    pub valid_until: String,
}

impl LinkedSiteSpec {
    /// Whether the site has renewed (the serial rule applies).
    pub fn has_renewed(&self) -> bool {
        self.renewed || self.previous_certificate_serial.is_some()
    }

    /// Every replaced certificate with its end, the one-slot field of old files included.
    pub fn replaced(&self) -> Vec<ReplacedCertificate> {
        let mut out = self.replaced_certificates.clone();
        if let Some(serial) = &self.previous_certificate_serial {
            out.push(ReplacedCertificate {
                serial: serial.clone(),
                valid_until: self.previous_serial_valid_until.clone().unwrap_or_default(),
            });
        }
        out
    }
}

impl Site {
    /// A new Site resource.
    pub fn new(name: &str, spec: SiteSpec) -> Self {
        Site {
            api_version: API_VERSION.into(),
            kind: "Site".into(),
            metadata: Metadata { name: name.into() },
            spec,
        }
    }
}

impl Link {
    /// A new Link resource.
    pub fn new(name: &str, spec: LinkSpec) -> Self {
        Link {
            api_version: API_VERSION.into(),
            kind: "Link".into(),
            metadata: Metadata { name: name.into() },
            spec,
        }
    }
}

impl LinkedSite {
    /// A new LinkedSite record.
    pub fn new(spec: LinkedSiteSpec) -> Self {
        LinkedSite {
            api_version: API_VERSION.into(),
            kind: "LinkedSite".into(),
            metadata: Metadata {
                name: spec.site_id.to_string(),
            },
            spec,
        }
    }
}

/// The Listener resource: accept connections on a port here and send them to a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Listener {
    /// Always `skiff.io/v1alpha1`.
    pub api_version: String,
    /// Always `Listener`.
    pub kind: String,
    /// The listener's name.
    pub metadata: Metadata,
    /// Where it listens and where connections go.
    pub spec: ListenerSpec,
}

/// `spec` of a Listener. Exactly one of `routingKey`, `priority` and `weighted` says where
/// connections go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListenerSpec {
    /// The key connections go to, balanced over every site that serves it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing_key: Option<String>,
    /// Keys in failover order: the first with a reachable connector takes the connection.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub priority: Vec<String>,
    /// Keys with weights: each connection picks a reachable key by weight.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub weighted: Vec<WeightedKey>,
    /// Bind address.
    #[serde(default = "default_listener_host")]
    pub host: String,
    /// Port (0: any free port, shown by `listener list`).
    pub port: u16,
    /// `tcp`, `http`, `http2` (docs/http.md) or `udp` (docs/udp.md).
    #[serde(default = "default_type", rename = "type")]
    pub protocol: String,
    /// What keeps a client on one site: `none` (the default), `client-ip`, or for HTTP
    /// listeners `header:NAME` or `cookie:NAME` (docs/affinity.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<String>,
}

/// One key of a weighted listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WeightedKey {
    /// The key.
    pub routing_key: String,
    /// Its weight (relative to the others).
    pub weight: u32,
}

/// The Connector resource: traffic for a key goes to host:port here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Connector {
    /// Always `skiff.io/v1alpha1`.
    pub api_version: String,
    /// Always `Connector`.
    pub kind: String,
    /// The connector's name.
    pub metadata: Metadata,
    /// The key and the backend.
    pub spec: ConnectorSpec,
}

/// `spec` of a Connector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectorSpec {
    /// The key it serves.
    pub routing_key: String,
    /// The backend's host name or address.
    #[serde(default = "default_connector_host")]
    pub host: String,
    /// The backend's port.
    pub port: u16,
    /// The port other sites advertise to their consumers, when it is not the backend's port
    /// (a Kubernetes Service port in front of pods listening on another).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertised_port: Option<u16>,
    /// `tcp`, `http` (an HTTP/1.1 backend), `http2` (an HTTP/2 backend) or `udp`.
    #[serde(default = "default_type", rename = "type")]
    pub protocol: String,
}

/// Default bind address of a listener.
pub const DEFAULT_LISTENER_HOST: &str = "0.0.0.0";
/// Default backend host of a connector.
pub const DEFAULT_CONNECTOR_HOST: &str = "127.0.0.1";

fn default_listener_host() -> String {
    DEFAULT_LISTENER_HOST.into()
}

fn default_connector_host() -> String {
    DEFAULT_CONNECTOR_HOST.into()
}

fn default_type() -> String {
    "tcp".into()
}

impl Listener {
    /// A new Listener resource.
    pub fn new(name: &str, spec: ListenerSpec) -> Self {
        Listener {
            api_version: API_VERSION.into(),
            kind: "Listener".into(),
            metadata: Metadata { name: name.into() },
            spec,
        }
    }
}

impl Connector {
    /// A new Connector resource.
    pub fn new(name: &str, spec: ConnectorSpec) -> Self {
        Connector {
            api_version: API_VERSION.into(),
            kind: "Connector".into(),
            metadata: Metadata { name: name.into() },
            spec,
        }
    }
}

/// What every resource type offers to the folder code.
pub trait Resource: Serialize + for<'de> Deserialize<'de> {
    /// The `kind` value.
    const KIND: &'static str;
    /// Its apiVersion and kind, for checking.
    fn type_meta(&self) -> (&str, &str);
    /// Its name.
    fn name(&self) -> &str;
}

macro_rules! resource {
    ($t:ty, $kind:literal) => {
        impl Resource for $t {
            const KIND: &'static str = $kind;
            fn type_meta(&self) -> (&str, &str) {
                (&self.api_version, &self.kind)
            }
            fn name(&self) -> &str {
                &self.metadata.name
            }
        }
    };
}
resource!(Site, "Site");
resource!(Link, "Link");
resource!(LinkedSite, "LinkedSite");
resource!(Listener, "Listener");
resource!(Connector, "Connector");

/// Serialises a resource as YAML.
pub fn to_yaml<R: Resource>(r: &R) -> String {
    serde_saphyr::to_string(r).expect("resources always serialise")
}

/// Parses a resource from YAML and checks its apiVersion and kind; `origin` names the file in
/// errors.
pub fn from_yaml<R: Resource>(text: &str, origin: &std::path::Path) -> Result<R, SiteError> {
    let r: R = serde_saphyr::from_str(text).map_err(|e| SiteError::BadResource {
        path: origin.to_path_buf(),
        reason: e.to_string(),
    })?;
    let (api, kind) = r.type_meta();
    if api != API_VERSION || kind != R::KIND {
        return Err(SiteError::BadResource {
            path: origin.to_path_buf(),
            reason: format!(
                "expected apiVersion {API_VERSION} kind {}, found {api} {kind}",
                R::KIND
            ),
        });
    }
    Ok(r)
}

/// Checks a name given for a site, link or grant: it becomes a file name, so 1-63 of
/// `a-z 0-9 -`, starting and ending with a letter or digit (a Kubernetes DNS label).
pub fn validate_name(what: &'static str, name: &str) -> Result<(), SiteError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(SiteError::InvalidName {
            what,
            name: name.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn a_link_spec_debug_shows_no_private_key_and_no_proxy_password() {
        let spec = LinkSpec {
            peer_site_id: SiteId::random(),
            peer_site_name: "a".into(),
            endpoints: vec!["a.example:45671".into()],
            peer_ca: "CA".into(),
            client_certificate: "CERT".into(),
            cost: 1,
            transport: "tls".into(),
            client_key: Some("-----BEGIN PRIVATE KEY-----\nSECRETKEY\n".into()),
            proxy: Some("http://bob:hunter2@proxy.example:3128".into()),
        };
        let shown = format!("{spec:?}");
        assert!(
            !shown.contains("SECRETKEY") && !shown.contains("PRIVATE KEY"),
            "{shown}"
        );
        assert!(
            !shown.contains("hunter2") && !shown.contains("bob"),
            "{shown}"
        );
        assert!(shown.contains("proxy.example:3128"), "{shown}");
        assert!(shown.contains("a.example:45671"), "{shown}");
    }

    #[test]
    fn site_roundtrips_and_defaults_apply() {
        let site = Site::new(
            "west",
            SiteSpec {
                id: SiteId::random(),
                link_access: true,
                link_hosts: vec!["10.0.0.1".into()],
                link_port: 0,
                edge: false,
                certificate_overlap: Some("90s".into()),
            },
        );
        let back: Site = from_yaml(&to_yaml(&site), Path::new("site.yaml")).unwrap();
        assert_eq!(back, site);

        let id = SiteId::random();
        let minimal = format!(
            "apiVersion: skiff.io/v1alpha1\nkind: Site\nmetadata:\n  name: east\nspec:\n  id: {id}\n"
        );
        let s: Site = from_yaml(&minimal, Path::new("site.yaml")).unwrap();
        assert_eq!(s.spec.link_port, DEFAULT_LINK_PORT);
        assert!(!s.spec.link_access);
        assert_eq!(
            s.spec.certificate_overlap().unwrap(),
            DEFAULT_CERTIFICATE_OVERLAP
        );
        assert_eq!(
            back.spec.certificate_overlap().unwrap(),
            std::time::Duration::from_secs(90)
        );
        // Far beyond a link certificate's validity: refused by name, not a panic at the
        // first renewal.
        let mut huge = back.clone();
        huge.spec.certificate_overlap = Some("3000000d".into());
        let err = huge.spec.certificate_overlap().unwrap_err().to_string();
        assert!(
            err.contains("spec.certificateOverlap")
                && err.contains("longer than a link certificate"),
            "{err}"
        );
        huge.spec.certificate_overlap = Some("1825d".into());
        assert!(huge.spec.certificate_overlap().is_ok());
    }

    /// A linked site record of an earlier skiff (one replaced-certificate slot) still loads.
    #[test]
    fn an_old_linked_site_record_loads() {
        let id = SiteId::random();
        let text = format!(
            "apiVersion: skiff.io/v1alpha1\nkind: LinkedSite\nmetadata:\n  name: {id}\nspec:\n  siteId: {id}\n  siteName: b\n  grant: g\n  certificateSerial: '51'\n  keyFingerprint: k\n  linkedAt: ''\n  previousCertificateSerial: '50'\n  previousSerialValidUntil: '2999-01-01T00:00:00Z'\n"
        );
        let s: LinkedSite = from_yaml(&text, Path::new("peers/x.yaml")).unwrap();
        assert!(s.spec.has_renewed());
        assert_eq!(s.spec.replaced().len(), 1);
    }

    #[test]
    fn wrong_kind_and_unknown_fields_are_refused_with_the_file_named() {
        let id = SiteId::random();
        let wrong = format!(
            "apiVersion: skiff.io/v1alpha1\nkind: Link\nmetadata:\n  name: east\nspec:\n  id: {id}\n"
        );
        let err = from_yaml::<Site>(&wrong, Path::new("/x/site.yaml")).unwrap_err();
        assert!(err.to_string().contains("/x/site.yaml"), "{err}");
        assert!(err.to_string().contains("kind Site"), "{err}");
        let extra = format!(
            "apiVersion: skiff.io/v1alpha1\nkind: Site\nmetadata:\n  name: e\nspec:\n  id: {id}\n  colour: red\n"
        );
        let err = from_yaml::<Site>(&extra, Path::new("site.yaml")).unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
    }

    #[test]
    fn names_are_dns_labels() {
        assert!(validate_name("site", "west-1").is_ok());
        for bad in ["", "West", "-a", "a-", "a/b", "..", &"x".repeat(64)] {
            assert!(validate_name("site", bad).is_err(), "{bad:?}");
        }
    }
}
