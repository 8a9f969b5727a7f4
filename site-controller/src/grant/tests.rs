//! Tests of the grant service: endpoint parsing, the serial rule and its overlap windows,
//! renewals (bound to this issuer, never locking out a held certificate) and redemptions
//! (bound to this issuer and a time; an older redeemer's unbound CSR only for a new site).

use super::*;

#[test]
fn endpoints() {
    assert_eq!(join_host_port("::1", 5), "[::1]:5");
    assert_eq!(join_host_port("a.b", 5), "a.b:5");
    assert_eq!(split_host_port("[::1]:5"), Some(("::1".into(), 5)));
    assert_eq!(split_host_port("a.b:7"), Some(("a.b".into(), 7)));
    assert_eq!(split_host_port("a.b"), None);
}

fn spec() -> LinkedSiteSpec {
    LinkedSiteSpec {
        site_id: SiteId::random(),
        site_name: "b".into(),
        grant: "g".into(),
        certificate_serial: "51".into(),
        key_fingerprint: "k".into(),
        linked_at: String::new(),
        revoked: false,
        revoked_at: None,
        renewed: false,
        replaced_certificates: Vec::new(),
        previous_certificate_serial: None,
        previous_serial_valid_until: None,
    }
}

#[test]
fn after_a_renewal_only_the_current_and_the_previous_within_its_window_link() {
    let now = OffsetDateTime::now_utc();
    let mut spec = spec();
    // Never renewed: any serial our CA issued with the right key.
    assert!(serial_allowed(&spec, "42", now).is_ok());
    // A record written by an earlier skiff (one slot) still reads the same.
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

/// Two renewals in a row whose answers were lost: the certificate the dialer still holds
/// (the one before both) keeps linking for its window; ended entries go, and the list is
/// bounded.
#[test]
fn every_replaced_certificate_keeps_its_own_window() {
    let now = OffsetDateTime::now_utc();
    let mut spec = spec();
    spec.certificate_serial = "a".into();
    let until = now + Duration::from_secs(60);
    // Renewal 1 replaces a with b, renewal 2 replaces b with c.
    spec.replaced_certificates = replaced_after_renewal(&spec, "a", now, until);
    spec.renewed = true;
    spec.certificate_serial = "b".into();
    spec.replaced_certificates = replaced_after_renewal(&spec, "b", now, until);
    spec.certificate_serial = "c".into();
    for serial in ["a", "b", "c"] {
        assert!(serial_allowed(&spec, serial, now).is_ok(), "{serial}");
    }
    let late = now + Duration::from_secs(61);
    assert!(serial_allowed(&spec, "a", late).is_err());
    assert!(serial_allowed(&spec, "c", late).is_ok());
    // Ended entries are dropped at the next renewal; the list never grows past the cap.
    let after = replaced_after_renewal(&spec, "c", late, late + Duration::from_secs(60));
    assert_eq!(after.len(), 1);
    for i in 0..100 {
        spec.replaced_certificates = replaced_after_renewal(&spec, &format!("s{i}"), now, until);
    }
    assert_eq!(spec.replaced_certificates.len(), MAX_REPLACED_CERTIFICATES);
}

#[test]
fn an_overlap_beyond_any_time_is_an_error_not_a_panic() {
    let now = OffsetDateTime::now_utc();
    let err = overlap_end(now, Duration::from_secs(3_000_000 * 86_400 * 1000)).unwrap_err();
    assert!(err.contains("certificateOverlap"), "{err}");
    assert!(overlap_end(now, LINK_CERT_VALIDITY).is_ok());
}

#[derive(Debug)]
struct Hook(Arc<std::sync::atomic::AtomicBool>);

impl CommitHook for Hook {
    fn commit(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + '_>> {
        let fail = self.0.load(std::sync::atomic::Ordering::Relaxed);
        Box::pin(async move {
            if fail {
                Err("the API server is down".into())
            } else {
                Ok(())
            }
        })
    }
}

/// The grant service's renewal end to end (no network): bound to this issuer, every
/// replaced certificate keeps linking, a failed commit changes nothing, a deleted record
/// is not brought back.
#[tokio::test]
async fn renewals_are_bound_to_this_issuer_and_never_lock_out_a_held_certificate() {
    use skiff_router::link::InboundPolicy;
    skiff_certs::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let folder = SiteFolder::new(dir.path().join("x"));
    folder.create_dirs().unwrap();
    let xid = SiteId::random();
    let ca = SiteCa::generate("x", xid).unwrap();
    let b = SiteId::random();
    let key = skiff_certs::generate_link_key().unwrap();
    let redemption_csr =
        skiff_certs::redemption_csr(b, xid, OffsetDateTime::now_utc(), &key).unwrap();
    let (_, first) = ca
        .sign_link_csr(&redemption_csr, Duration::from_secs(3600))
        .unwrap();
    let record = LinkedSite::new(LinkedSiteSpec {
        certificate_serial: first.serial.clone(),
        key_fingerprint: skiff_certs::key_fingerprint_pem(&first.cert_pem).unwrap(),
        site_id: b,
        ..spec()
    });
    save_linked_site(&folder, &record).unwrap();
    let linked = Arc::new(LinkedSites::default());
    linked.replace(vec![record]);
    let svc = GrantService::new(folder.clone(), ca, xid, "x".into(), vec![], linked.clone());
    let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let now = OffsetDateTime::now_utc();
    let fresh = || RenewRequest {
        site_id: b,
        csr: skiff_certs::renewal_csr(b, xid, OffsetDateTime::now_utc(), &key).unwrap(),
    };

    // What another issuer saw from b cannot renew here.
    let replays = [
        (redemption_csr.clone(), "not a renewal request"),
        (
            skiff_certs::link_csr(b, "b", &key).unwrap(),
            "not a renewal request",
        ),
        (
            skiff_certs::renewal_csr(b, SiteId::random(), now, &key).unwrap(),
            "is for issuing site",
        ),
        (
            skiff_certs::renewal_csr(b, xid, now - Duration::from_secs(301), &key).unwrap(),
            "away from this site's clock",
        ),
    ];
    for (csr, why) in replays {
        let (status, e) = svc
            .renew(RenewRequest { site_id: b, csr }, peer)
            .await
            .unwrap_err();
        assert!(e.contains(why) && status.is_client_error(), "{status} {e}");
    }
    assert_eq!(linked.get(b).unwrap().spec.certificate_serial, first.serial);

    // Two renewals whose answers were lost: the certificate b holds still links.
    let r1 = svc.renew(fresh(), peer).await.unwrap();
    let r2 = svc.renew(fresh(), peer).await.unwrap();
    for serial in [&first.serial, &r1.serial, &r2.serial] {
        linked.check_serial(b, serial).unwrap();
    }

    // A failed commit: refused, and the record is what it was, on disk and in memory.
    let fail = Arc::new(std::sync::atomic::AtomicBool::new(true));
    svc.set_commit_hook(Arc::new(Hook(fail.clone())));
    let before = crate::site::load_linked_site(&folder, b).unwrap();
    let (status, e) = svc.renew(fresh(), peer).await.unwrap_err();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{e}");
    assert_eq!(crate::site::load_linked_site(&folder, b).unwrap(), before);
    assert_eq!(linked.get(b), before);
    fail.store(false, std::sync::atomic::Ordering::Relaxed);

    // Its record deleted: refused, not brought back from memory.
    std::fs::remove_file(folder.peers_dir().join(format!("{b}.yaml"))).unwrap();
    let (_, e) = svc.renew(fresh(), peer).await.unwrap_err();
    assert!(e.contains("never linked here"), "{e}");
    assert!(crate::site::load_linked_site(&folder, b).unwrap().is_none());
}

/// What each grant file of `folder` holds, by name: the redemptions made of it.
fn redemptions_made(folder: &SiteFolder) -> Vec<(String, u32)> {
    let mut made: Vec<(String, u32)> = list_grants(folder)
        .unwrap()
        .into_iter()
        .map(|g| (g.metadata.name, g.spec.redemptions_made))
        .collect();
    made.sort();
    made
}

/// Site b redeemed a token at y and renewed there. Site x, which saw b's redemption CSR and
/// holds a token of y, replays it at y: every form (bound to x, bound to y but stale, the
/// unbound form of an older skiff, a renewal CSR) is refused, b's record and the token stay
/// as they were; the token still serves a new site of an older skiff (unbound, unknown id),
/// and a redemption CSR does not pass as a renewal.
#[tokio::test]
async fn redemptions_are_bound_to_this_issuer_and_a_replayed_one_changes_nothing() {
    skiff_certs::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let folder = SiteFolder::new(dir.path().join("y"));
    folder.create_dirs().unwrap();
    let (xid, yid, b) = (SiteId::random(), SiteId::random(), SiteId::random());
    let ca = SiteCa::generate("y", yid).unwrap();
    let linked = Arc::new(LinkedSites::default());
    let svc = GrantService::new(folder.clone(), ca, yid, "y".into(), vec![], linked.clone());
    let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let grant = |name: &str| {
        let g = skiff_certs::AccessGrant::new(
            name,
            Duration::from_secs(600),
            1,
            1,
            OffsetDateTime::now_utc(),
        );
        save_grant(&folder, &g).unwrap();
        g.spec.code
    };
    let redeem = |code: &str, site_id: SiteId, csr: String| RedeemRequest {
        code: code.into(),
        csr,
        site_id,
        site_name: "b".into(),
    };

    // b redeems its own token at y, then renews there.
    let key = skiff_certs::generate_link_key().unwrap();
    let now = OffsetDateTime::now_utc();
    let own = grant("g-b");
    let csr = skiff_certs::redemption_csr(b, yid, now, &key).unwrap();
    svc.redeem(redeem(&own, b, csr), peer).await.unwrap();
    let csr = skiff_certs::renewal_csr(b, yid, now, &key).unwrap();
    svc.renew(RenewRequest { site_id: b, csr }, peer)
        .await
        .unwrap();
    let record_file = folder.peers_dir().join(format!("{b}.yaml"));
    let record = std::fs::read(&record_file).unwrap();
    let in_memory = linked.get(b);
    assert!(in_memory.as_ref().unwrap().spec.has_renewed());

    // x holds a token of y and what b sent x.
    let xs = grant("g-x");
    let grants_before = redemptions_made(&folder);
    let replays = [
        (
            skiff_certs::redemption_csr(b, xid, now, &key).unwrap(),
            StatusCode::FORBIDDEN,
            "is for issuing site",
        ),
        (
            skiff_certs::redemption_csr(b, yid, now - Duration::from_secs(301), &key).unwrap(),
            StatusCode::FORBIDDEN,
            "away from this site's clock",
        ),
        (
            skiff_certs::redemption_csr(b, yid, now + Duration::from_secs(301), &key).unwrap(),
            StatusCode::FORBIDDEN,
            "away from this site's clock",
        ),
        (
            skiff_certs::link_csr(b, "b", &key).unwrap(),
            StatusCode::FORBIDDEN,
            "upgrade the redeeming skiff",
        ),
        (
            skiff_certs::renewal_csr(b, yid, now, &key).unwrap(),
            StatusCode::BAD_REQUEST,
            "is a renewal request",
        ),
    ];
    for (csr, status, why) in replays {
        let (got, e) = svc.redeem(redeem(&xs, b, csr), peer).await.unwrap_err();
        assert!(
            got == status && e.contains(why),
            "{got} {e} (expected {why})"
        );
        assert_eq!(std::fs::read(&record_file).unwrap(), record, "{why}");
        assert_eq!(linked.get(b), in_memory, "{why}");
        assert_eq!(redemptions_made(&folder), grants_before, "{why}");
    }
    // Nothing else was written either.
    assert_eq!(std::fs::read_dir(folder.peers_dir()).unwrap().count(), 1);

    // A redemption CSR, bound to y and fresh, is no renewal request.
    let csr = skiff_certs::redemption_csr(b, yid, now, &key).unwrap();
    let (_, e) = svc
        .renew(RenewRequest { site_id: b, csr }, peer)
        .await
        .unwrap_err();
    assert!(e.contains("not a renewal request"), "{e}");
    assert_eq!(std::fs::read(&record_file).unwrap(), record);

    // An older skiff's site, new here: its unbound CSR redeems x's token, which was unspent.
    let c = SiteId::random();
    let c_key = skiff_certs::generate_link_key().unwrap();
    let csr = skiff_certs::link_csr(c, "c", &c_key).unwrap();
    svc.redeem(redeem(&xs, c, csr), peer).await.unwrap();
    assert!(crate::site::load_linked_site(&folder, c).unwrap().is_some());
    assert!(
        redemptions_made(&folder)
            .iter()
            .any(|(name, made)| name == "g-x" && *made == 1),
        "{:?}",
        redemptions_made(&folder)
    );

    // A record in the folder that memory does not hold yet (an offline link made a moment
    // ago) counts as known: the unbound CSR is refused.
    let d = SiteId::random();
    let d_key = skiff_certs::generate_link_key().unwrap();
    save_linked_site(
        &folder,
        &LinkedSite::new(LinkedSiteSpec {
            site_id: d,
            ..spec()
        }),
    )
    .unwrap();
    let ds = grant("g-d");
    let csr = skiff_certs::link_csr(d, "d", &d_key).unwrap();
    let (_, e) = svc.redeem(redeem(&ds, d, csr), peer).await.unwrap_err();
    assert!(e.contains("upgrade the redeeming skiff"), "{e}");
}
