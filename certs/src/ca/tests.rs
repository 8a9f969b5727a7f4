//! Tests of the site CA: generation, loading, router certificates and CSR signing.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
    SanType,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer};
use x509_parser::extensions::GeneralName;

use super::*;
use crate::encode::pem;

fn der(pem_text: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem_text.as_bytes()).unwrap()
}

/// SANs of a certificate as text: `URI:..`, `DNS:..`, `IP:..`.
fn sans(cert: &CertificateDer<'_>) -> Vec<String> {
    let (_, x) = x509_parser::parse_x509_certificate(cert).unwrap();
    let Some(san) = x.subject_alternative_name().unwrap() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .map(|n| match n {
            GeneralName::URI(u) => format!("URI:{u}"),
            GeneralName::DNSName(d) => format!("DNS:{d}"),
            GeneralName::IPAddress(ip) => format!("IP:{ip:?}"),
            other => format!("{other:?}"),
        })
        .collect()
}

fn csr_with(site_uri_sans: &[&str], tweak: impl FnOnce(&mut CertificateParams)) -> String {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = site_uri_sans
        .iter()
        .map(|u| SanType::URI((*u).try_into().unwrap()))
        .collect();
    tweak(&mut params);
    params.serialize_request(&key).unwrap().pem().unwrap()
}

#[test]
fn ca_roundtrips_through_pem_and_checks_its_key() {
    let id = SiteId::random();
    let ca = SiteCa::generate("east", id).unwrap();
    assert_eq!(ca.site_id(), id);
    let loaded = SiteCa::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
    assert_eq!(loaded.site_id(), id);
    assert_eq!(sans(&der(ca.cert_pem())), vec![format!("URI:{}", id.uri())]);
    let ca_der = der(ca.cert_pem());
    let (_, x) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
    assert!(x.basic_constraints().unwrap().unwrap().value.ca);
    assert!(x.subject().to_string().contains("skiff site CA east"));

    // A certificate issued by the loaded CA chains to the original (same key and name).
    let issued = loaded.issue_router_cert(id, &[]).unwrap();
    let leaf_der = der(&issued.cert_pem);
    let (_, leaf) = x509_parser::parse_x509_certificate(&leaf_der).unwrap();
    assert!(leaf.verify_signature(Some(x.public_key())).is_ok());

    // Someone else's key is refused.
    let other = SiteCa::generate("west", SiteId::random()).unwrap();
    let e = SiteCa::from_pem(ca.cert_pem(), other.key_pem()).unwrap_err();
    assert!(e.to_string().contains("does not belong"), "{e}");
    // A router certificate is not a CA.
    let e = SiteCa::from_pem(&issued.cert_pem, issued.key_pem.as_deref().unwrap()).unwrap_err();
    assert!(e.to_string().contains("not a CA"), "{e}");
    // Not PEM at all.
    let e = SiteCa::from_pem("hello", ca.key_pem()).unwrap_err();
    assert!(e.is_user_input(), "{e}");
}

#[test]
fn router_cert_names_the_site_and_the_hosts() {
    let id = SiteId::random();
    let ca = SiteCa::generate("east", id).unwrap();
    let hosts = vec![
        "10.0.0.7".to_string(),
        "east.example.com".to_string(),
        "::1".to_string(),
    ];
    let issued = ca.issue_router_cert(id, &hosts).unwrap();
    let cert = der(&issued.cert_pem);
    let names = sans(&cert);
    assert_eq!(names[0], format!("URI:{}", id.uri()));
    assert_eq!(names[1], format!("DNS:{}", id.server_name()));
    assert!(
        names.contains(&"DNS:east.example.com".to_string()),
        "{names:?}"
    );
    assert!(
        names
            .iter()
            .any(|n| n.starts_with("IP:") && n.contains("10, 0, 0, 7")),
        "{names:?}"
    );
    assert_eq!(names.len(), 5, "{names:?}");
    assert_eq!(crate::peer_site_id(&cert).unwrap(), id);

    let (_, x) = x509_parser::parse_x509_certificate(&cert).unwrap();
    assert_eq!(crate::encode::hex(x.raw_serial()), issued.serial);
    let eku = x.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    assert!(!x.basic_constraints().unwrap().unwrap().value.ca);
    assert_eq!(
        x.validity().not_after.timestamp(),
        issued.not_after.unix_timestamp()
    );
    let days = (issued.not_after - OffsetDateTime::now_utc()).whole_days();
    assert!((364..=365).contains(&days), "{days}");

    let e = ca
        .issue_router_cert(id, &["not a host name!".to_string()])
        .unwrap_err();
    assert!(e.to_string().contains("not a host name!"), "{e}");
}

#[test]
fn signed_link_cert_is_client_only_with_the_requested_site() {
    let ca = SiteCa::generate("east", SiteId::random()).unwrap();
    let peer = SiteId::random();
    let (csr, key) = generate_link_csr(peer, "west").unwrap();
    assert!(key.contains("PRIVATE KEY"));
    let (id, issued) = ca.sign_link_csr(&csr, Duration::from_secs(3600)).unwrap();
    assert_eq!(id, peer);
    assert!(issued.key_pem.is_none());
    let cert = der(&issued.cert_pem);
    assert_eq!(sans(&cert), vec![format!("URI:{}", peer.uri())]);
    let (_, x) = x509_parser::parse_x509_certificate(&cert).unwrap();
    let eku = x.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth);
    let secs = issued.not_after.unix_timestamp() - OffsetDateTime::now_utc().unix_timestamp();
    assert!((3590..=3600).contains(&secs), "{secs}");
    let start = x.validity().not_before.timestamp();
    let skew = OffsetDateTime::now_utc().unix_timestamp() - start;
    assert!((290..=310).contains(&skew), "{skew}");
}

#[test]
fn serial_and_validity_read_back_from_the_certificate() {
    let ca = SiteCa::generate("east", SiteId::random()).unwrap();
    let (csr, _) = generate_link_csr(SiteId::random(), "west").unwrap();
    let (_, a) = ca.sign_link_csr(&csr, Duration::from_secs(3600)).unwrap();
    let (_, b) = ca.sign_link_csr(&csr, Duration::from_secs(3600)).unwrap();
    assert_eq!(certificate_serial(&der(&a.cert_pem)).unwrap(), a.serial);
    assert_eq!(certificate_serial_pem(&b.cert_pem).unwrap(), b.serial);
    assert_ne!(a.serial, b.serial);
    let (start, end) = certificate_validity_pem(&a.cert_pem).unwrap();
    assert_eq!(end, a.not_after);
    assert_eq!((end - start).whole_seconds(), 3600 + 300);
}

#[test]
fn csr_asking_for_ca_rights_gets_a_client_only_leaf() {
    let ca = SiteCa::generate("east", SiteId::random()).unwrap();
    let peer = SiteId::random();
    let csr = csr_with(&[&peer.uri()], |p| {
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::CodeSigning,
        ];
        p.subject_alt_names
            .push(SanType::DnsName("bank.example.com".try_into().unwrap()));
        p.subject_alt_names
            .push(SanType::IpAddress("10.1.1.1".parse().unwrap()));
    });
    let (id, issued) = ca.sign_link_csr(&csr, Duration::from_secs(600)).unwrap();
    assert_eq!(id, peer);
    let cert = der(&issued.cert_pem);
    let (_, x) = x509_parser::parse_x509_certificate(&cert).unwrap();
    let bc = x
        .basic_constraints()
        .unwrap()
        .expect("CA:FALSE is explicit");
    assert!(!bc.value.ca);
    let ku = x.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && !ku.key_cert_sign() && !ku.crl_sign());
    let eku = x.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth && !eku.code_signing);
    assert_eq!(sans(&cert), vec![format!("URI:{}", peer.uri())]);
}

#[test]
fn tampered_csr_is_rejected() {
    let ca = SiteCa::generate("east", SiteId::random()).unwrap();
    let (csr, _) = generate_link_csr(SiteId::random(), "west").unwrap();
    let mut bytes = CertificateSigningRequestDer::from_pem_slice(csr.as_bytes())
        .unwrap()
        .as_ref()
        .to_vec();
    // The last byte belongs to the signature's `s` value.
    *bytes.last_mut().unwrap() ^= 0x01;
    let tampered = pem("CERTIFICATE REQUEST", &bytes);
    // Sanity: untampered re-encoding is still accepted, so the test can fail.
    *bytes.last_mut().unwrap() ^= 0x01;
    assert!(
        ca.sign_link_csr(&pem("CERTIFICATE REQUEST", &bytes), Duration::from_secs(60))
            .is_ok()
    );
    let e = ca
        .sign_link_csr(&tampered, Duration::from_secs(60))
        .unwrap_err();
    assert!(matches!(e, CertError::InvalidCsr { .. }), "{e:?}");
    assert!(e.is_peer_fault());
    assert!(e.to_string().contains("signature does not verify"), "{e}");
}

#[test]
fn csr_without_exactly_one_skiff_uri_is_rejected() {
    let ca = SiteCa::generate("east", SiteId::random()).unwrap();
    let dns_only = csr_with(&[], |p| {
        p.subject_alt_names
            .push(SanType::DnsName("west.example.com".try_into().unwrap()));
    });
    let e = ca
        .sign_link_csr(&dns_only, Duration::from_secs(60))
        .unwrap_err();
    assert!(
        e.to_string().contains("no skiff://site/<id> URI SAN"),
        "{e}"
    );

    let other_uri = csr_with(&["https://west.example.com/"], |_| {});
    let e = ca
        .sign_link_csr(&other_uri, Duration::from_secs(60))
        .unwrap_err();
    assert!(e.to_string().contains("not a skiff site URI"), "{e}");

    let bad_id = csr_with(&["skiff://site/1234"], |_| {});
    let e = ca
        .sign_link_csr(&bad_id, Duration::from_secs(60))
        .unwrap_err();
    assert!(e.to_string().contains("32 hexadecimal characters"), "{e}");

    let two = csr_with(&[&SiteId::random().uri(), &SiteId::random().uri()], |_| {});
    let e = ca.sign_link_csr(&two, Duration::from_secs(60)).unwrap_err();
    assert!(e.to_string().contains("2 URI SANs"), "{e}");

    let e = ca
        .sign_link_csr("garbage", Duration::from_secs(60))
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("not a PEM certificate signing request"),
        "{e}"
    );
}

#[test]
fn csr_with_a_non_p256_key_is_rejected() {
    let ca = SiteCa::generate("east", SiteId::random()).unwrap();
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(SiteId::random().uri().try_into().unwrap())];
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    let e = ca.sign_link_csr(&csr, Duration::from_secs(60)).unwrap_err();
    assert!(e.to_string().contains("not an ECDSA P-256 key"), "{e}");
}

/// A renewal CSR names the issuer and the moment it was made, signed by the link key; a
/// redemption CSR of the same key does not pass as one.
#[test]
fn a_renewal_csr_is_bound_to_its_issuer_and_time_and_a_redemption_csr_is_not_one() {
    crate::install_crypto_provider();
    let site = SiteId::random();
    let issuer = SiteId::random();
    let key = generate_link_key().unwrap();
    let at = time::OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
    let csr = renewal_csr(site, issuer, at, &key).unwrap();
    assert_eq!(renewal_csr_binding(&csr).unwrap(), (issuer, 1_800_000_000));
    // The issuer signs it like any link CSR: the certificate certifies the site's id.
    let ca = SiteCa::generate("x", issuer).unwrap();
    let (id, _) = ca.sign_link_csr(&csr, Duration::from_secs(60)).unwrap();
    assert_eq!(id, site);
    // The unbound CSR an older skiff sent to redeem and to renew: refused with words for the
    // older renewer (upgrade), not as a redemption request.
    let older = link_csr(site, "b", &key).unwrap();
    let e = renewal_csr_binding(&older).unwrap_err().to_string();
    assert!(
        e.contains("binds neither the issuing site nor a time")
            && e.contains("older than this issuer")
            && e.contains("upgrade the renewing site's skiff")
            && !e.contains("redemption"),
        "{e}"
    );
    // A site named like a renewal subject cannot make its CSR pass either: site names have no
    // spaces, and the prefix differs.
    let e = renewal_csr_binding(&link_csr(site, "renew", &key).unwrap()).unwrap_err();
    assert!(e.to_string().contains("binds neither"), "{e}");
}

/// A redemption CSR names the issuer and the moment it was made; it never passes as a
/// renewal CSR nor a renewal CSR as one; the CSR of an older redeemer reads as unbound.
#[test]
fn a_redemption_csr_is_bound_to_its_issuer_and_time_and_is_no_renewal_csr() {
    crate::install_crypto_provider();
    let site = SiteId::random();
    let issuer = SiteId::random();
    let key = generate_link_key().unwrap();
    let at = time::OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
    let redemption = redemption_csr(site, issuer, at, &key).unwrap();
    assert_eq!(
        csr_binding(&redemption).unwrap(),
        CsrBinding::Redemption {
            issuer,
            at: 1_800_000_000
        }
    );
    let e = renewal_csr_binding(&redemption).unwrap_err();
    assert!(e.to_string().contains("not a renewal request"), "{e}");
    let renewal = renewal_csr(site, issuer, at, &key).unwrap();
    assert_eq!(
        csr_binding(&renewal).unwrap(),
        CsrBinding::Renewal {
            issuer,
            at: 1_800_000_000
        }
    );
    assert_eq!(
        csr_binding(&link_csr(site, "b", &key).unwrap()).unwrap(),
        CsrBinding::Unbound
    );
    // Its common name fits X.520's 64 characters, even at the largest time a CSR can name.
    let far = time::OffsetDateTime::from_unix_timestamp(-377_705_116_800).unwrap();
    let csr = redemption_csr(site, issuer, far, &key).unwrap();
    let parsed = rcgen::CertificateSigningRequestParams::from_pem(&csr).unwrap();
    let Some(rcgen::DnValue::Utf8String(cn)) =
        parsed.params.distinguished_name.get(&DnType::CommonName)
    else {
        panic!("no common name")
    };
    assert!(cn.len() <= 64, "{cn}: {} characters", cn.len());
    // The signed certificate is the same for both: it certifies the site's id.
    let ca = SiteCa::generate("x", issuer).unwrap();
    let (id, _) = ca
        .sign_link_csr(&redemption, Duration::from_secs(60))
        .unwrap();
    assert_eq!(id, site);
}
