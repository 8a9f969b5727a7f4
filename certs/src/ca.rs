//! [`SiteCa`]: a site's certificate authority. It issues the router's own certificate and signs
//! the client certificates of sites that redeem this site's tokens.
//!
//! Everything is ECDSA P-256 with SHA-256. Lifetimes (chosen here, documented on the items):
//!
//! | certificate | validity |
//! |---|---|
//! | site CA | 10 years ([`CA_VALIDITY`]) |
//! | router certificate | 1 year ([`ROUTER_CERT_VALIDITY`]); reissued by the controller, which holds the CA |
//! | link client certificate | as asked by the caller of [`SiteCa::sign_link_csr`] |
//!
//! Every issued certificate starts 5 minutes in the past ([`CLOCK_SKEW`]) to tolerate clock
//! skew between sites.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType, SerialNumber,
};
use ring::rand::{SecureRandom, SystemRandom};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use time::OffsetDateTime;

use crate::encode::hex;
use crate::id::URI_PREFIX;
use crate::{CertError, SiteId, peer_site_id};

/// Validity of a site CA certificate.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Validity of a router certificate.
pub const ROUTER_CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// How far in the past every issued certificate's validity starts.
pub const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// A certificate issued by a [`SiteCa`].
#[derive(Clone)]
pub struct IssuedCert {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its private key (PKCS#8 PEM) when the CA generated the key; `None` when it signed a CSR
    /// (the key stayed with the requester).
    pub key_pem: Option<String>,
    /// Serial number, lowercase hex (as printed by `openssl x509 -serial`, in lowercase).
    pub serial: String,
    /// End of validity (whole seconds).
    pub not_after: OffsetDateTime,
}

impl fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCert")
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .field("key_pem", &self.key_pem.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

/// A site's certificate authority: its certificate and signing key.
pub struct SiteCa {
    cert_pem: String,
    key_pem: String,
    site_id: SiteId,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for SiteCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SiteCa")
            .field("site_id", &self.site_id)
            .finish_non_exhaustive()
    }
}

impl SiteCa {
    /// Makes a new self-signed CA for a site: fresh P-256 key, CN `skiff site CA <name>`, URI
    /// SAN of the site id, valid for [`CA_VALIDITY`], may sign end-entity certificates only
    /// (path length 0).
    pub fn generate(site_name: &str, site_id: SiteId) -> Result<Self, CertError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(CertError::crypto("generate the site CA key"))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name(&format!("skiff site CA {site_name}"));
        params.subject_alt_names = vec![uri_san(site_id)?];
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let (not_before, not_after) = validity(CA_VALIDITY)?;
        params.not_before = not_before;
        params.not_after = not_after;
        params.serial_number = Some(random_serial()?.0);
        let cert = params
            .self_signed(&key)
            .map_err(CertError::crypto("self-sign the site CA certificate"))?;
        let key_pem = key.serialize_pem();
        Ok(SiteCa {
            cert_pem: cert.pem(),
            key_pem,
            site_id,
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads a CA saved with [`cert_pem`](Self::cert_pem) and [`key_pem`](Self::key_pem).
    /// Checks that the certificate is a CA carrying a site id and that the key is its P-256 key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CertError> {
        let der = first_cert("site CA certificate", cert_pem)?;
        let (_, x509) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| CertError::pem("site CA certificate", format!("not X.509: {e}")))?;
        let is_ca = x509
            .basic_constraints()
            .ok()
            .flatten()
            .is_some_and(|bc| bc.value.ca);
        if !is_ca {
            return Err(CertError::pem(
                "site CA certificate",
                "the certificate is not a CA certificate",
            ));
        }
        let site_id = peer_site_id(&der).map_err(|e| {
            CertError::pem("site CA certificate", format!("no site id in it ({e})"))
        })?;
        let key = KeyPair::from_pem(key_pem).map_err(|e| CertError::Pem {
            what: "site CA key",
            reason: "not a PKCS#8 private key".into(),
            source: Some(Box::new(e)),
        })?;
        if key.algorithm() != &PKCS_ECDSA_P256_SHA256 {
            return Err(CertError::pem("site CA key", "not an ECDSA P-256 key"));
        }
        if key.public_key_raw() != x509.public_key().subject_public_key.data.as_ref() {
            return Err(CertError::pem(
                "site CA key",
                "the key does not belong to the site CA certificate",
            ));
        }
        let issuer = Issuer::from_ca_cert_der(&der, key).map_err(|e| CertError::Pem {
            what: "site CA certificate",
            reason: "cannot be used as an issuer".into(),
            source: Some(Box::new(e)),
        })?;
        Ok(SiteCa {
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            site_id,
            issuer,
        })
    }

    /// The CA certificate, PEM. This is what peers pin (it goes into access tokens).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key, PKCS#8 PEM. Store with mode 0600 or in a Secret.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The site id in the CA certificate's URI SAN.
    pub fn site_id(&self) -> SiteId {
        self.site_id
    }

    /// Issues the router's own certificate (serverAuth + clientAuth) with a fresh P-256 key:
    /// URI SAN `skiff://site/<id>`, DNS SAN [`SiteId::server_name`], plus one SAN per entry of
    /// `hosts` (an IP SAN if it parses as an IP address, else a DNS SAN). Valid for
    /// [`ROUTER_CERT_VALIDITY`]. `key_pem` is `Some`.
    pub fn issue_router_cert(
        &self,
        site_id: SiteId,
        hosts: &[String],
    ) -> Result<IssuedCert, CertError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(CertError::crypto("generate the router key"))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name(&format!("skiff router {site_id}"));
        params.subject_alt_names = vec![uri_san(site_id)?, dns_san(&site_id.server_name())?];
        for host in hosts {
            let san = match host.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => dns_san(host)?,
            };
            if !params.subject_alt_names.contains(&san) {
                params.subject_alt_names.push(san);
            }
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let (not_before, not_after) = validity(ROUTER_CERT_VALIDITY)?;
        params.not_before = not_before;
        params.not_after = not_after;
        let (serial, serial_hex) = random_serial()?;
        params.serial_number = Some(serial);
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(CertError::crypto("sign the router certificate"))?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: Some(key.serialize_pem()),
            serial: serial_hex,
            not_after,
        })
    }

    /// Signs a linking peer's CSR (a grant redemption) and returns the peer's site id with the
    /// certificate.
    ///
    /// The CSR's signature is checked (proof the peer holds the key) and its key must be P-256.
    /// It must carry exactly one URI SAN, a skiff site URI. Nothing else the CSR asks for is
    /// copied: the certificate is built from scratch as a non-CA (`CA:FALSE`),
    /// digitalSignature, clientAuth-only certificate with only that URI SAN, valid from 5
    /// minutes ago until `validity` from now, with a random serial. `key_pem` is `None`.
    pub fn sign_link_csr(
        &self,
        csr_pem: &str,
        validity_period: Duration,
    ) -> Result<(SiteId, IssuedCert), CertError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| {
            let reason = match e {
                rcgen::Error::InvalidCertificationRequestSignature => {
                    "its signature does not verify (tampered, or not made with the key it names)"
                }
                rcgen::Error::UnsupportedExtension => "it asks for an unsupported extension",
                _ => "it is not a PEM certificate signing request",
            };
            CertError::InvalidCsr {
                reason: reason.into(),
                source: Some(e),
            }
        })?;
        let raw = csr.public_key.der_bytes();
        if csr.public_key.algorithm() != &PKCS_ECDSA_P256_SHA256 || raw.len() != 65 || raw[0] != 4 {
            return Err(CertError::InvalidCsr {
                reason: "its key is not an ECDSA P-256 key".into(),
                source: None,
            });
        }
        let uris: Vec<&str> = csr
            .params
            .subject_alt_names
            .iter()
            .filter_map(|san| match san {
                SanType::URI(u) => Some(u.as_str()),
                _ => None,
            })
            .collect();
        let site_id = match uris.as_slice() {
            [one] => SiteId::from_uri(one).map_err(|e| CertError::InvalidCsr {
                reason: format!("its URI SAN is not a skiff site URI ({e})"),
                source: None,
            })?,
            [] => {
                return Err(CertError::InvalidCsr {
                    reason: format!("it carries no {URI_PREFIX}<id> URI SAN"),
                    source: None,
                });
            }
            _ => {
                return Err(CertError::InvalidCsr {
                    reason: format!("it carries {} URI SANs; exactly one is allowed", uris.len()),
                    source: None,
                });
            }
        };

        let mut params = CertificateParams::default();
        params.distinguished_name = common_name(&format!("skiff link {site_id}"));
        params.subject_alt_names = vec![uri_san(site_id)?];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let (not_before, not_after) = validity(validity_period)?;
        params.not_before = not_before;
        params.not_after = not_after;
        let (serial, serial_hex) = random_serial()?;
        params.serial_number = Some(serial);
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(CertError::crypto("sign the link client certificate"))?;
        Ok((
            site_id,
            IssuedCert {
                cert_pem: cert.pem(),
                key_pem: None,
                serial: serial_hex,
                not_after,
            },
        ))
    }
}

/// A fresh P-256 key and an unbound CSR ([`link_csr`]) carrying the URI SAN [`SiteId::uri`],
/// for a CA that signs it at once (tests, examples). Returns `(csr_pem, key_pem)`.
pub fn generate_link_csr(site_id: SiteId, site_name: &str) -> Result<(String, String), CertError> {
    let key_pem = generate_link_key()?;
    Ok((link_csr(site_id, site_name, &key_pem)?, key_pem))
}

/// A new P-256 private key (PEM) for a site's link identity.
pub fn generate_link_key() -> Result<String, CertError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(CertError::crypto("generate the link key"))?;
    Ok(key.serialize_pem())
}

/// A CSR for `site_id` signed with the site's existing link key `key_pem`, with the common name
/// `skiff link <site_name>`: bound to no issuer and no time ([`CsrBinding::Unbound`]). This is
/// the redemption CSR of skiff before redemptions were bound ([`redemption_csr`] replaced it);
/// it remains for CSRs a CA signs at once without sending them anywhere (tests, examples).
pub fn link_csr(site_id: SiteId, site_name: &str, key_pem: &str) -> Result<String, CertError> {
    let key = KeyPair::from_pem(key_pem).map_err(|e| CertError::Pem {
        what: "link key",
        reason: "not a P-256 private key".into(),
        source: Some(Box::new(e)),
    })?;
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name(&format!("skiff link {site_name}"));
    params.subject_alt_names = vec![uri_san(site_id)?];
    let csr = params
        .serialize_request(&key)
        .map_err(CertError::crypto("make the certificate signing request"))?;
    csr.pem()
        .map_err(CertError::crypto("encode the certificate signing request"))
}

/// Common-name prefix of a renewal CSR (`skiff renew <issuer id> <unix seconds>`).
pub const RENEWAL_CN_PREFIX: &str = "skiff renew ";
/// Common-name prefix of a redemption CSR (`skiff redeem <issuer id> <unix seconds>`). The
/// prefixes differ, so a renewal CSR never passes as a redemption one, nor the other way round.
pub const REDEMPTION_CN_PREFIX: &str = "skiff redeem ";
/// Common-name prefix of the redemption CSR of a skiff from before redemptions were bound
/// (`skiff link <site name>`): bound to no issuer and no time.
pub const UNBOUND_CN_PREFIX: &str = "skiff link ";

/// What a link CSR is for, read from its subject (which the link key signs) by
/// [`csr_binding`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CsrBinding {
    /// A renewal request ([`renewal_csr`]) made for the issuing site `issuer` at `at` (unix
    /// seconds).
    Renewal {
        /// The issuing site it was made for.
        issuer: SiteId,
        /// When it was made (unix seconds).
        at: i64,
    },
    /// A redemption request ([`redemption_csr`]) made for the issuing site `issuer` at `at`
    /// (unix seconds).
    Redemption {
        /// The issuing site it was made for.
        issuer: SiteId,
        /// When it was made (unix seconds).
        at: i64,
    },
    /// The redemption request of an older skiff ([`link_csr`]): bound to no issuer and no
    /// time.
    Unbound,
}

/// A renewal CSR for `site_id`, signed with the site's link key `key_pem`, bound to the
/// issuing site `issuer` and the moment `at` (both in the subject, which the key signs): an
/// issuer can check it is meant for it and fresh, so a CSR seen by one issuer (a redemption,
/// or a renewal there) cannot renew at another.
pub fn renewal_csr(
    site_id: SiteId,
    issuer: SiteId,
    at: OffsetDateTime,
    key_pem: &str,
) -> Result<String, CertError> {
    bound_csr(RENEWAL_CN_PREFIX, site_id, issuer, at, key_pem)
}

/// A redemption CSR for `site_id`, signed with the site's link key `key_pem`, bound to the
/// issuing site `issuer` (the token's site id) and the moment `at`, as [`renewal_csr`] is: a
/// CSR one issuer saw cannot be redeemed at another, nor later. The redeeming site's name
/// travels in the request body, not in the CSR.
pub fn redemption_csr(
    site_id: SiteId,
    issuer: SiteId,
    at: OffsetDateTime,
    key_pem: &str,
) -> Result<String, CertError> {
    bound_csr(REDEMPTION_CN_PREFIX, site_id, issuer, at, key_pem)
}

/// A CSR for `site_id` with the common name `<prefix><issuer> <unix seconds of at>` (at most
/// 13 + 32 + 1 + 11 characters, within X.520's 64).
fn bound_csr(
    prefix: &str,
    site_id: SiteId,
    issuer: SiteId,
    at: OffsetDateTime,
    key_pem: &str,
) -> Result<String, CertError> {
    let key = KeyPair::from_pem(key_pem).map_err(|e| CertError::Pem {
        what: "link key",
        reason: "not a P-256 private key".into(),
        source: Some(Box::new(e)),
    })?;
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name(&format!("{prefix}{issuer} {}", at.unix_timestamp()));
    params.subject_alt_names = vec![uri_san(site_id)?];
    let csr = params
        .serialize_request(&key)
        .map_err(CertError::crypto("make the certificate signing request"))?;
    csr.pem()
        .map_err(CertError::crypto("encode the certificate signing request"))
}

/// What a link CSR is bound to, from its subject, after checking its signature. `Err` for a
/// CSR that is neither a renewal nor a redemption request (bound or from an older skiff).
pub fn csr_binding(csr_pem: &str) -> Result<CsrBinding, CertError> {
    let bad = |reason: &str| CertError::InvalidCsr {
        reason: reason.into(),
        source: None,
    };
    let csr =
        CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| CertError::InvalidCsr {
            reason: "it is not a PEM certificate signing request with a valid signature".into(),
            source: Some(e),
        })?;
    let cn = match csr.params.distinguished_name.get(&DnType::CommonName) {
        Some(rcgen::DnValue::Utf8String(s)) => s.clone(),
        Some(rcgen::DnValue::PrintableString(s)) => s.as_str().to_string(),
        _ => return Err(bad("its subject has no common name")),
    };
    let (rest, renewal) = if let Some(rest) = cn.strip_prefix(RENEWAL_CN_PREFIX) {
        (rest, true)
    } else if let Some(rest) = cn.strip_prefix(REDEMPTION_CN_PREFIX) {
        (rest, false)
    } else if cn.starts_with(UNBOUND_CN_PREFIX) {
        return Ok(CsrBinding::Unbound);
    } else {
        return Err(bad(
            "it is no skiff renewal or redemption request (its subject names neither)",
        ));
    };
    let (issuer, at) = rest
        .split_once(' ')
        .ok_or_else(|| bad("its subject does not name the issuing site and a time"))?;
    let issuer: SiteId = issuer
        .parse()
        .map_err(|_| bad("its subject names no valid issuing site id"))?;
    let at: i64 = at
        .parse()
        .map_err(|_| bad("its subject names no valid time"))?;
    Ok(if renewal {
        CsrBinding::Renewal { issuer, at }
    } else {
        CsrBinding::Redemption { issuer, at }
    })
}

/// What a renewal CSR is bound to: `(issuer, unix seconds)` from its subject, after checking
/// its signature. `Err` for a CSR that is not a renewal CSR: a redemption CSR, or the unbound
/// CSR an older skiff sent to renew as well as to redeem (its own wording: upgrade it).
pub fn renewal_csr_binding(csr_pem: &str) -> Result<(SiteId, i64), CertError> {
    match csr_binding(csr_pem)? {
        CsrBinding::Renewal { issuer, at } => Ok((issuer, at)),
        CsrBinding::Redemption { .. } => Err(CertError::InvalidCsr {
            reason:
                "it is not a renewal request but a redemption one (skiff token redeem makes those)"
                    .into(),
            source: None,
        }),
        CsrBinding::Unbound => Err(CertError::InvalidCsr {
            reason: "it binds neither the issuing site nor a time, as the requests of a skiff \
                     older than this issuer do: upgrade the renewing site's skiff, whose renewal \
                     requests then name this issuer and the time"
                .into(),
            source: None,
        }),
    }
}

/// SHA-256 (hex) of a certificate's subject public key: what ties a site id to the key of
/// the site that first redeemed a token with it.
pub fn key_fingerprint(cert: &CertificateDer<'_>) -> Result<String, CertError> {
    let (_, x509) =
        x509_parser::parse_x509_certificate(cert).map_err(|e| CertError::PeerIdentity {
            reason: format!("the certificate is not valid X.509 ({e})"),
        })?;
    let key = &x509.public_key().subject_public_key.data;
    Ok(hex(
        ring::digest::digest(&ring::digest::SHA256, key).as_ref()
    ))
}

/// [`key_fingerprint`] of the public half of a private key (PEM): whether a key file goes with
/// a certificate.
pub fn private_key_fingerprint(key_pem: &str) -> Result<String, CertError> {
    let key = KeyPair::from_pem(key_pem).map_err(|e| CertError::Pem {
        what: "private key",
        reason: "not a P-256 private key".into(),
        source: Some(Box::new(e)),
    })?;
    Ok(hex(ring::digest::digest(
        &ring::digest::SHA256,
        key.public_key_raw(),
    )
    .as_ref()))
}

/// A certificate's serial number in the form [`IssuedCert::serial`] uses (lowercase hex of
/// its DER integer bytes): what a site records to tell the certificates it issued apart.
pub fn certificate_serial(cert: &CertificateDer<'_>) -> Result<String, CertError> {
    let (_, x509) =
        x509_parser::parse_x509_certificate(cert).map_err(|e| CertError::PeerIdentity {
            reason: format!("the certificate is not valid X.509 ({e})"),
        })?;
    Ok(hex(x509.raw_serial()))
}

/// The validity period `(not_before, not_after)` of the first certificate in a PEM text.
pub fn certificate_validity_pem(
    cert_pem: &str,
) -> Result<(OffsetDateTime, OffsetDateTime), CertError> {
    let der = first_cert("certificate", cert_pem)?;
    let (_, x509) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| CertError::pem("certificate", format!("not valid X.509 ({e})")))?;
    let v = x509.validity();
    Ok((v.not_before.to_datetime(), v.not_after.to_datetime()))
}

/// The first certificate (DER) in a PEM text.
pub fn first_certificate(cert_pem: &str) -> Result<CertificateDer<'static>, CertError> {
    first_cert("certificate", cert_pem)
}

/// [`certificate_serial`] of the first certificate in a PEM text.
pub fn certificate_serial_pem(cert_pem: &str) -> Result<String, CertError> {
    let der = first_cert("certificate", cert_pem)?;
    certificate_serial(&der).map_err(|e| CertError::pem("certificate", e.to_string()))
}

/// [`key_fingerprint`] of the first certificate in a PEM text.
pub fn key_fingerprint_pem(cert_pem: &str) -> Result<String, CertError> {
    key_fingerprint(&first_cert("certificate", cert_pem)?)
}

/// The first certificate in `pem`.
pub(crate) fn first_cert(
    what: &'static str,
    pem: &str,
) -> Result<CertificateDer<'static>, CertError> {
    match CertificateDer::pem_slice_iter(pem.as_bytes()).next() {
        Some(Ok(der)) => Ok(der),
        Some(Err(e)) => Err(CertError::Pem {
            what,
            reason: "malformed PEM".into(),
            source: Some(Box::new(e)),
        }),
        None => Err(CertError::pem(what, "no CERTIFICATE block found")),
    }
}

fn common_name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

fn uri_san(site_id: SiteId) -> Result<SanType, CertError> {
    let uri = site_id
        .uri()
        .try_into()
        .map_err(CertError::crypto("encode the site URI"))?;
    Ok(SanType::URI(uri))
}

/// Whether a router certificate can name `host` (a link host): an IP address, or a DNS name
/// (ASCII labels). What [`SiteCa::issue_router_cert`] accepts, for checking settings before
/// anything is written.
pub fn certifiable_host(host: &str) -> bool {
    host.parse::<IpAddr>().is_ok()
        || (host.is_ascii() && rustls_pki_types::DnsName::try_from(host).is_ok())
}

fn dns_san(host: &str) -> Result<SanType, CertError> {
    let valid = rustls_pki_types::DnsName::try_from(host).is_ok();
    let name = host.try_into().ok().filter(|_| valid).ok_or_else(|| {
        CertError::input(
            "host name",
            format!("{host:?} is neither an IP address nor a DNS name"),
        )
    })?;
    Ok(SanType::DnsName(name))
}

/// `(now - CLOCK_SKEW, now + period)`, in whole seconds.
fn validity(period: Duration) -> Result<(OffsetDateTime, OffsetDateTime), CertError> {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let at = |secs: i64| {
        OffsetDateTime::from_unix_timestamp(secs)
            .map_err(|_| CertError::input("validity", "the end of validity is out of range"))
    };
    let period = i64::try_from(period.as_secs()).unwrap_or(i64::MAX);
    Ok((
        at(now - CLOCK_SKEW.as_secs() as i64)?,
        at(now.saturating_add(period))?,
    ))
}

/// A random positive 127-bit serial with no leading zero byte, and its hex form (which then
/// matches what certificate parsers print).
fn random_serial() -> Result<(SerialNumber, String), CertError> {
    let mut b = [0u8; 16];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| CertError::Random)?;
    b[0] = (b[0] & 0x7f) | 0x40;
    Ok((SerialNumber::from_slice(&b), hex(&b)))
}

#[cfg(test)]
mod tests;
