//! Tests of the grant service: endpoint parsing, the serial rule and its overlap windows,
//! renewals (bound to this issuer, never locking out a held certificate) and redemptions
//! (bound to this issuer and a time; an older redeemer's unbound CSR only for a new site or
//! as its own retry; the record read from the folder; the CSR checked before any record).

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
            "binds neither the issuing site nor a time",
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

/// An issuing site y with a grant service and no linked site, for the redemption tests.
struct Issuer {
    _dir: tempfile::TempDir,
    folder: SiteFolder,
    id: SiteId,
    linked: Arc<LinkedSites>,
    svc: GrantService,
}

impl Issuer {
    fn new() -> Self {
        skiff_certs::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let folder = SiteFolder::new(dir.path().join("y"));
        folder.create_dirs().unwrap();
        let id = SiteId::random();
        let ca = SiteCa::generate("y", id).unwrap();
        let linked = Arc::new(LinkedSites::default());
        let svc = GrantService::new(folder.clone(), ca, id, "y".into(), vec![], linked.clone());
        Issuer {
            _dir: dir,
            folder,
            id,
            linked,
            svc,
        }
    }

    /// A one-use grant named `name`; returns its code.
    fn grant(&self, name: &str) -> String {
        let g = skiff_certs::AccessGrant::new(
            name,
            Duration::from_secs(600),
            1,
            1,
            OffsetDateTime::now_utc(),
        );
        save_grant(&self.folder, &g).unwrap();
        g.spec.code
    }

    async fn redeem(
        &self,
        code: &str,
        site_id: SiteId,
        csr: String,
    ) -> Result<RedeemResponse, (StatusCode, String)> {
        self.redeem_as(code, site_id, "c", csr).await
    }

    /// A redemption whose request names the site `site_name`.
    async fn redeem_as(
        &self,
        code: &str,
        site_id: SiteId,
        site_name: &str,
        csr: String,
    ) -> Result<RedeemResponse, (StatusCode, String)> {
        let req = RedeemRequest {
            code: code.into(),
            csr,
            site_id,
            site_name: site_name.into(),
        };
        self.svc.redeem(req, "127.0.0.1:1".parse().unwrap()).await
    }

    /// The bytes of `site`'s record in peers/.
    fn record_bytes(&self, site: SiteId) -> Vec<u8> {
        std::fs::read(self.folder.peers_dir().join(format!("{site}.yaml"))).unwrap()
    }

    fn record(&self, site: SiteId) -> Option<LinkedSite> {
        crate::site::load_linked_site(&self.folder, site).unwrap()
    }
}

/// An older redeemer c (unbound CSR) whose answer was lost: the commit (Kubernetes) failed
/// after the record was written and the one-use token spent, and c was answered 503. Its
/// retry is answered with a certificate that links here, and spends nothing. Everything else
/// an unbound CSR for c could be is refused as before, writing and spending nothing: another
/// key, another grant, c revoked (in the folder only), c renewed since.
#[tokio::test]
async fn an_older_redeemers_own_retry_is_answered_and_spends_nothing_and_the_rest_is_refused() {
    use skiff_router::link::InboundPolicy;
    let y = Issuer::new();
    let c = SiteId::random();
    let c_key = skiff_certs::generate_link_key().unwrap();
    let code = y.grant("g-c");
    let unbound = skiff_certs::link_csr(c, "c", &c_key).unwrap();

    let fail = Arc::new(std::sync::atomic::AtomicBool::new(true));
    y.svc.set_commit_hook(Arc::new(Hook(fail.clone())));
    let (status, e) = y.redeem(&code, c, unbound.clone()).await.unwrap_err();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{e}");
    // Recorded and spent, but c never got its certificate.
    let first = y.record(c).unwrap();
    assert_eq!(first.spec.site_name, "c");
    assert_eq!(redemptions_made(&y.folder), [("g-c".to_string(), 1)]);
    fail.store(false, std::sync::atomic::Ordering::Relaxed);

    // The same request naming another site: whoever holds c's old CSR and the spent code is
    // answered as c's retry, but cannot rename c's record or move the time it was linked.
    y.redeem_as(&code, c, "mallory", unbound.clone())
        .await
        .unwrap();
    let renamed = y.record(c).unwrap();
    assert_eq!(
        (
            renamed.spec.site_name.as_str(),
            renamed.spec.linked_at.as_str()
        ),
        ("c", first.spec.linked_at.as_str())
    );
    assert_eq!(redemptions_made(&y.folder), [("g-c".to_string(), 1)]);

    // c retries with the same request: answered, with a certificate for c's key that links.
    let answer = y.redeem(&code, c, unbound.clone()).await.unwrap();
    let fingerprint = skiff_certs::key_fingerprint_pem(&answer.certificate).unwrap();
    let serial = skiff_certs::certificate_serial_pem(&answer.certificate).unwrap();
    assert_eq!(
        fingerprint,
        skiff_certs::private_key_fingerprint(&c_key).unwrap()
    );
    y.linked.admit(c).unwrap();
    y.linked.check_key(c, &fingerprint).unwrap();
    y.linked.check_serial(c, &serial).unwrap();
    // Spent once, and the record is still c's: its key, its grant.
    assert_eq!(redemptions_made(&y.folder), [("g-c".to_string(), 1)]);
    let record = y.record(c).unwrap();
    assert_eq!(
        (
            record.spec.key_fingerprint.as_str(),
            record.spec.grant.as_str()
        ),
        (fingerprint.as_str(), "g-c")
    );

    // Not a retry of c's own redemption: refused, nothing written or spent.
    let other_key = skiff_certs::generate_link_key().unwrap();
    let other_code = y.grant("g-other");
    let bytes = y.record_bytes(c);
    let spent = redemptions_made(&y.folder);
    let refused = [
        (
            code.clone(),
            skiff_certs::link_csr(c, "c", &other_key).unwrap(),
            "another key",
        ),
        (other_code.clone(), unbound.clone(), "another grant"),
    ];
    for (code, csr, what) in refused {
        let (status, e) = y.redeem(&code, c, csr).await.unwrap_err();
        assert!(
            status == StatusCode::FORBIDDEN && e.contains("upgrade the redeeming skiff"),
            "{what}: {status} {e}"
        );
        assert_eq!(y.record_bytes(c), bytes, "{what}");
        assert_eq!(redemptions_made(&y.folder), spent, "{what}");
    }

    // c revoked a moment ago (`skiff link revoke` wrote the folder; memory not reloaded).
    let mut revoked = record.clone();
    revoked.spec.revoked = true;
    revoked.spec.revoked_at = Some(OffsetDateTime::now_utc().format(&Rfc3339).unwrap());
    save_linked_site(&y.folder, &revoked).unwrap();
    let revoked_bytes = y.record_bytes(c);
    let (status, e) = y.redeem(&code, c, unbound.clone()).await.unwrap_err();
    // Refused as an unbound request for a linked site (not a retry: c is revoked), before
    // the revocation check a bound request meets.
    assert_eq!(
        (status, e),
        (
            StatusCode::FORBIDDEN,
            format!(
                "the redemption request names no issuing site and no time (an older skiff makes it so), and site {c} is already linked here: only a request bound to this site and made now may change its record; upgrade the redeeming skiff and redeem again"
            )
        )
    );
    assert_eq!(y.record_bytes(c), revoked_bytes);
    save_linked_site(&y.folder, &record).unwrap();

    // c renewed since (with an upgraded skiff): its old unbound CSR is what a replay would
    // send, and is refused; the renewed record stays.
    let now = OffsetDateTime::now_utc();
    let csr = skiff_certs::renewal_csr(c, y.id, now, &c_key).unwrap();
    y.svc
        .renew(
            RenewRequest { site_id: c, csr },
            "127.0.0.1:1".parse().unwrap(),
        )
        .await
        .unwrap();
    let renewed_bytes = y.record_bytes(c);
    let (status, e) = y.redeem(&code, c, unbound).await.unwrap_err();
    assert!(
        status == StatusCode::FORBIDDEN && e.contains("upgrade the redeeming skiff"),
        "{status} {e}"
    );
    assert_eq!(y.record_bytes(c), renewed_bytes);
    assert_eq!(redemptions_made(&y.folder), spent);
}

/// Every redemption reads the site's record from the folder, as a renewal does: a revocation
/// written a moment ago (not reloaded into memory) refuses a bound redemption of that site,
/// which stays revoked; an offline link record on disk only refuses a bound redemption of its
/// id with another key. And a CSR for another site id than the request names is refused for
/// that, before any record is read, in a redemption (unbound or bound) and in a renewal: the
/// answer does not say whether the named id is linked, revoked or unknown.
#[tokio::test]
async fn redemptions_read_the_record_from_the_folder_and_check_the_csr_first() {
    let y = Issuer::new();
    let now = OffsetDateTime::now_utc();
    let f = SiteId::random();
    let f_key = skiff_certs::generate_link_key().unwrap();
    let f_code = y.grant("g-f");
    let bound = |site: SiteId, key: &str| {
        skiff_certs::redemption_csr(site, y.id, OffsetDateTime::now_utc(), key).unwrap()
    };
    y.redeem(&f_code, f, bound(f, &f_key)).await.unwrap();

    // `skiff link revoke f` wrote the folder; the reload has not run.
    let mut record = y.record(f).unwrap();
    record.spec.revoked = true;
    record.spec.revoked_at = Some(now.format(&Rfc3339).unwrap());
    save_linked_site(&y.folder, &record).unwrap();
    assert!(!y.linked.get(f).unwrap().spec.revoked);
    let revoked = y.record_bytes(f);
    let another = y.grant("g-f2");
    for code in [&f_code, &another] {
        let (status, e) = y.redeem(code, f, bound(f, &f_key)).await.unwrap_err();
        assert!(
            status == StatusCode::FORBIDDEN && e.contains("was revoked here"),
            "{status} {e}"
        );
        assert_eq!(y.record_bytes(f), revoked);
    }
    assert!(y.record(f).unwrap().spec.revoked);

    // An offline link record, on disk only: its id is taken by the key it names.
    let g = SiteId::random();
    save_linked_site(
        &y.folder,
        &LinkedSite::new(LinkedSiteSpec {
            site_id: g,
            ..spec()
        }),
    )
    .unwrap();
    assert!(y.linked.get(g).is_none());
    let offline = y.record_bytes(g);
    let spent = redemptions_made(&y.folder);
    let g_key = skiff_certs::generate_link_key().unwrap();
    let (status, e) = y.redeem(&another, g, bound(g, &g_key)).await.unwrap_err();
    assert!(
        status == StatusCode::CONFLICT && e.contains("already linked here by another site"),
        "{status} {e}"
    );
    assert_eq!(y.record_bytes(g), offline);
    assert_eq!(redemptions_made(&y.folder), spent);

    // A CSR for a site id other than the one the request names (linked f, offline g): the
    // answer is about the CSR, whatever the record of the named id.
    let t = SiteId::random();
    let t_key = skiff_certs::generate_link_key().unwrap();
    for (named, csr) in [
        (f, skiff_certs::link_csr(t, "t", &t_key).unwrap()),
        (g, skiff_certs::link_csr(t, "t", &t_key).unwrap()),
        (f, bound(t, &t_key)),
        (g, bound(t, &t_key)),
    ] {
        let (status, e) = y.redeem(&another, named, csr).await.unwrap_err();
        assert!(
            status == StatusCode::BAD_REQUEST
                && e.contains(&format!("the certificate request is for site {t}")),
            "{status} {e}"
        );
    }
    // A renewal too: its CSR for t, named as revoked f, offline g or an id never seen.
    for named in [f, g, SiteId::random()] {
        let csr = skiff_certs::renewal_csr(t, y.id, OffsetDateTime::now_utc(), &t_key).unwrap();
        let (status, e) = y
            .svc
            .renew(
                RenewRequest {
                    site_id: named,
                    csr,
                },
                "127.0.0.1:1".parse().unwrap(),
            )
            .await
            .unwrap_err();
        assert!(
            status == StatusCode::BAD_REQUEST
                && e.contains(&format!("the certificate request is for site {t}")),
            "{status} {e}"
        );
    }
    assert_eq!(y.record_bytes(f), revoked);
    assert_eq!(y.record_bytes(g), offline);
    assert_eq!(redemptions_made(&y.folder), spent);
    assert_eq!(std::fs::read_dir(y.folder.peers_dir()).unwrap().count(), 2);
}
