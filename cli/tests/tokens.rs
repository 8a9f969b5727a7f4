//! Black-box tests of bad tokens through the real `skiff` binary: each is refused with a
//! message that says why, and leaves no link behind at the redeeming site.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Site, fails, is_link, ok, set_field};

/// West accepts links and runs; east is the redeemer.
fn pair() -> (Site, Site) {
    let mut west = Site::create("west", true);
    west.start();
    let east = Site::create("east", false);
    (west, east)
}

fn token_path(site: &Site, name: &str) -> PathBuf {
    site.dir.with_file_name(name)
}

fn redeem_fails(east: &Site, token: &Path) -> String {
    let err = fails(&[
        "token",
        "redeem",
        token.to_str().unwrap(),
        "--dir",
        east.d(),
    ]);
    assert!(
        east.links().is_empty(),
        "a refused redemption left a link: {:?}",
        east.links()
    );
    let link_files = std::fs::read_dir(east.dir.join("links"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(link_files, 0, "a refused redemption left files in links/");
    err
}

#[test]
fn an_expired_token_is_refused_with_its_expiry_time() {
    let (west, east) = pair();
    let token = token_path(&west, "t.yaml");
    west.issue(&token, &["--expiration-window", "10m"]);
    // Age the grant at the issuer: its expiry moves into the past.
    let grants = west.dir.join("grants");
    let grant = std::fs::read_dir(&grants)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    set_field(&grant, "expiresAt", "2020-01-02T03:04:05Z");
    let err = redeem_fails(&east, &token);
    assert!(err.contains("expired at"), "{err}");
    assert!(
        err.contains("03:04:05"),
        "the message must name the expiry time: {err}"
    );
    assert!(
        err.contains("10m"),
        "the message must name the window: {err}"
    );
    assert!(err.contains("skiff token issue"), "{err}");
}

#[test]
fn a_used_up_token_is_refused_and_concurrent_redemptions_have_one_winner() {
    let (west, east) = pair();
    let token = token_path(&west, "t.yaml");
    west.issue(&token, &[]);
    let north = Site::create("north", false);
    let south = Site::create("south", false);
    // Three sites redeem the one-use token at the same moment.
    let children: Vec<_> = [&east, &north, &south]
        .iter()
        .map(|s| {
            std::process::Command::new(common::skiff_bin())
                .args(["token", "redeem", token.to_str().unwrap(), "--dir", s.d()])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outputs: Vec<_> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let winners = outputs.iter().filter(|o| o.status.success()).count();
    assert_eq!(winners, 1, "exactly one redemption must win: {outputs:#?}");
    for o in outputs.iter().filter(|o| !o.status.success()) {
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("already redeemed (1 of 1"), "{err}");
    }
}

#[test]
fn a_tampered_code_is_refused() {
    let (west, east) = pair();
    let token = token_path(&west, "t.yaml");
    west.issue(&token, &[]);
    set_field(
        &token,
        "code",
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    );
    let err = redeem_fails(&east, &token);
    assert!(err.contains("not recognised"), "{err}");
    // The real grant was not spent by the failed attempt.
    let grants = std::fs::read_dir(west.dir.join("grants"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let g = std::fs::read_to_string(grants).unwrap();
    assert!(g.contains("redemptionsMade: 0"), "{g}");
}

#[test]
fn a_token_pointing_at_another_site_is_refused() {
    let (west, east) = pair();
    let mut south = Site::create("south", true);
    south.start();
    let token = token_path(&west, "t.yaml");
    west.issue(&token, &[]);
    let south_token = token_path(&south, "s.yaml");
    south.issue(&south_token, &[]);
    let south_url = std::fs::read_to_string(&south_token)
        .unwrap()
        .lines()
        .find(|l| l.trim_start().starts_with("url:"))
        .unwrap()
        .to_string();
    // West's token, but its URL leads to south: south cannot prove it is west.
    set_field(
        &token,
        "url",
        south_url.trim().trim_start_matches("url:").trim(),
    );
    let err = redeem_fails(&east, &token);
    assert!(err.contains("not site"), "{err}");
    assert!(err.contains("CA in the token"), "{err}");
}

#[test]
fn a_token_naming_another_site_id_is_refused() {
    let (west, east) = pair();
    let token = token_path(&west, "t.yaml");
    west.issue(&token, &[]);
    let other = "0123456789abcdef0123456789abcdef";
    set_field(&token, "siteId", other);
    let err = redeem_fails(&east, &token);
    assert!(
        err.contains(other),
        "the message names the site expected: {err}"
    );
}

#[test]
fn garbage_and_missing_token_files_are_refused() {
    let (west, east) = pair();
    let garbage = token_path(&west, "garbage.yaml");
    std::fs::write(&garbage, "\u{0}\u{1}not a token at all: [").unwrap();
    let err = redeem_fails(&east, &garbage);
    assert!(err.contains("token"), "{err}");
    let wrong_kind = token_path(&west, "kind.yaml");
    std::fs::write(
        &wrong_kind,
        "apiVersion: skiff.io/v1alpha1\nkind: Site\nmetadata:\n  name: x\nspec: {}\n",
    )
    .unwrap();
    let err = redeem_fails(&east, &wrong_kind);
    assert!(err.contains("AccessToken"), "{err}");
    let err = redeem_fails(&east, &token_path(&west, "missing.yaml"));
    assert!(err.contains("missing.yaml"), "{err}");
}

#[test]
fn a_token_redeemed_at_its_own_site_is_refused() {
    let (west, _east) = pair();
    let token = token_path(&west, "t.yaml");
    west.issue(&token, &[]);
    let err = fails(&[
        "token",
        "redeem",
        token.to_str().unwrap(),
        "--dir",
        west.d(),
    ]);
    assert!(err.contains("this very site"), "{err}");
}

#[test]
fn a_token_from_stdin_links_and_a_deleted_link_goes_down() {
    let (west, mut east) = pair();
    east.start();
    let out = ok(&["token", "issue", "-", "--dir", west.d()]);
    let mut child = std::process::Command::new(common::skiff_bin())
        .args([
            "token",
            "redeem",
            "-",
            "--name",
            "to-west",
            "--dir",
            east.d(),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(&out.stdout).unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", common::text(&o));
    let l = east.wait_link(Duration::from_secs(5), "up", is_link("up", "west"));
    assert_eq!(l["name"], "to-west");
    ok(&["link", "delete", "to-west", "--dir", east.d()]);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !east.links().is_empty() || west.links().iter().any(is_link("up", "east")) {
        assert!(
            std::time::Instant::now() < deadline,
            "the deleted link is still there: east {:?} west {:?}",
            east.links(),
            west.links()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
    let err = fails(&["link", "delete", "to-west", "--dir", east.d()]);
    assert!(err.contains("no link named"), "{err}");
}

#[test]
fn a_site_not_running_says_so_and_how_to_start_it() {
    let east = Site::create("east", false);
    let err = fails(&["site", "status", "--dir", east.d()]);
    assert!(err.contains("not running"), "{err}");
    assert!(err.contains("skiff site run"), "{err}");
    let nothing = tempfile::tempdir().unwrap();
    let err = fails(&["link", "list", "--dir", nothing.path().to_str().unwrap()]);
    assert!(err.contains("no site in"), "{err}");
    assert!(err.contains("skiff site create"), "{err}");
}

#[test]
fn a_site_id_already_linked_cannot_be_claimed_by_another_site() {
    let (west, mut east) = pair();
    let token = token_path(&west, "a.yaml");
    west.issue(&token, &[]);
    ok(&[
        "token",
        "redeem",
        token.to_str().unwrap(),
        "--dir",
        east.d(),
    ]);
    // North pretends to be east: same site id, its own key.
    let north = Site::create("north", false);
    let east_yaml = std::fs::read_to_string(east.dir.join("site.yaml")).unwrap();
    let east_id = east_yaml
        .lines()
        .find_map(|l| l.trim().strip_prefix("id: "))
        .unwrap()
        .to_string();
    set_field(&north.dir.join("site.yaml"), "id", &east_id);
    let second = token_path(&west, "b.yaml");
    west.issue(&second, &[]);
    let err = redeem_fails(&north, &second);
    assert!(err.contains("already linked here by another site"), "{err}");
    // The real east still links.
    east.start();
    east.wait_link(Duration::from_secs(5), "up", is_link("up", "west"));
}

#[test]
fn retrying_an_answered_redemption_links_and_spends_nothing_more() {
    let (west, east) = pair();
    let token = token_path(&west, "t.yaml");
    west.issue(&token, &[]);
    ok(&[
        "token",
        "redeem",
        token.to_str().unwrap(),
        "--name",
        "w",
        "--dir",
        east.d(),
    ]);
    // As if east had died before storing the link: the answer is lost, the token spent.
    std::fs::remove_file(east.dir.join("links/w.yaml")).unwrap();
    ok(&[
        "token",
        "redeem",
        token.to_str().unwrap(),
        "--name",
        "w",
        "--dir",
        east.d(),
    ]);
    assert!(east.dir.join("links/w.yaml").is_file());
    let grant = std::fs::read_dir(west.dir.join("grants"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let g = std::fs::read_to_string(grant).unwrap();
    assert!(g.contains("redemptionsMade: 1"), "{g}");
    // Another site still cannot use the spent token.
    let north = Site::create("north", false);
    let err = redeem_fails(&north, &token);
    assert!(err.contains("already redeemed"), "{err}");
}

#[test]
fn a_token_written_to_a_bare_file_name_lands_in_the_current_folder() {
    let (west, _east) = pair();
    let cwd = tempfile::tempdir().unwrap();
    let o = std::process::Command::new(common::skiff_bin())
        .args(["token", "issue", "t.token", "--dir", west.d()])
        .current_dir(cwd.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", common::text(&o));
    assert!(cwd.path().join("t.token").is_file());
}

/// The token in `file`, parsed.
fn read_token(file: &Path) -> skiff_certs::AccessToken {
    skiff_certs::AccessToken::from_yaml(&std::fs::read_to_string(file).unwrap()).unwrap()
}

/// How many redemptions the grant of `token` at `issuer` has made.
fn redemptions_made(issuer: &Site, token: &skiff_certs::AccessToken) -> u32 {
    let grants: Vec<skiff_certs::AccessGrant> = std::fs::read_dir(issuer.dir.join("grants"))
        .unwrap()
        .flatten()
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .filter_map(|t| skiff_certs::AccessGrant::from_yaml(&t).ok())
        .filter(|g| g.matches(&token.spec.code))
        .collect();
    assert_eq!(grants.len(), 1, "one grant per token expected");
    grants[0].spec.redemptions_made
}

/// Site b redeemed tokens at x and at y and renewed its certificate at y. x holds a token of
/// y and what b sent x, and replays it at y over TLS, as `skiff token redeem` talks, twice per
/// form: b's CSR bound to x, one bound to y but 10 min old, the unbound CSR of an older skiff
/// (b is known at y), a renewal CSR. y refuses each with words saying why, writes nothing
/// (b's record is the same bytes) and spends nothing: the same one-use token then links a new
/// site c with `skiff token redeem`, and b, restarted, still links to y with the certificate it
/// holds. An older skiff's unbound CSR for a site id y never saw still redeems.
#[test]
fn a_redemption_request_replayed_at_another_issuer_is_refused_and_spends_nothing() {
    use skiff_site_controller::SiteError;
    let mut x = Site::create("x", true);
    let mut y = Site::create_on_fixed_port("y");
    let mut b = Site::create("b", false);
    x.start();
    y.start();
    b.start();
    common::link(&b, &x);
    common::link(&b, &y);
    b.wait_link(Duration::from_secs(5), "up to y", is_link("up", "y"));
    ok(&["link", "renew", "y", "--dir", b.d()]);
    let bid: skiff_certs::SiteId = common::site_id(&b).parse().unwrap();
    let xid: skiff_certs::SiteId = common::site_id(&x).parse().unwrap();
    let yid: skiff_certs::SiteId = common::site_id(&y).parse().unwrap();
    let record_file = y.dir.join("peers").join(format!("{bid}.yaml"));
    let record = std::fs::read_to_string(&record_file).unwrap();
    assert!(record.contains("renewed: true"), "{record}");

    let token_file = token_path(&y, "y-for-x.yaml");
    y.issue(&token_file, &[]);
    let token = read_token(&token_file);
    let key = std::fs::read_to_string(b.dir.join("link.key")).unwrap();
    let now = time::OffsetDateTime::now_utc();
    let cases = [
        (
            skiff_certs::redemption_csr(bid, xid, now, &key).unwrap(),
            "is for issuing site",
        ),
        (
            skiff_certs::redemption_csr(bid, yid, now - Duration::from_secs(600), &key).unwrap(),
            "away from this site's clock",
        ),
        (
            skiff_certs::link_csr(bid, "b", &key).unwrap(),
            "upgrade the redeeming skiff",
        ),
        (
            skiff_certs::renewal_csr(bid, yid, now, &key).unwrap(),
            "is a renewal request",
        ),
    ];
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let redeem = |csr: &str, site: skiff_certs::SiteId, token: &skiff_certs::AccessToken| {
        rt.block_on(skiff_site_controller::grant::redeem_token(
            token, site, "b", csr, None,
        ))
    };
    let t0 = std::time::Instant::now();
    for (csr, expected) in &cases {
        for _ in 0..2 {
            match redeem(csr, bid, &token) {
                Err(SiteError::RedemptionRefused { reason, .. }) => {
                    assert!(reason.contains(expected), "{reason}")
                }
                other => panic!("y answered a replayed redemption with {other:?}"),
            }
        }
    }
    eprintln!(
        "{} replayed redemptions refused in {:?}",
        cases.len() * 2,
        t0.elapsed()
    );
    assert_eq!(std::fs::read_to_string(&record_file).unwrap(), record);
    assert_eq!(redemptions_made(&y, &token), 0);
    let records = std::fs::read_dir(y.dir.join("peers")).unwrap().count();
    assert_eq!(records, 1, "a refused redemption wrote a record at y");

    // The token was not spent: a new site links with it, end to end.
    let mut c = Site::create("c", false);
    ok(&[
        "token",
        "redeem",
        token_file.to_str().unwrap(),
        "--dir",
        c.d(),
    ]);
    c.start();
    c.wait_link(Duration::from_secs(5), "c up to y", is_link("up", "y"));
    assert_eq!(redemptions_made(&y, &token), 1);

    // b redials y with the certificate it holds: still admitted.
    b.kill();
    b.start();
    b.wait_link(
        Duration::from_secs(10),
        "b up to y after the replays",
        is_link("up", "y"),
    );

    // An older skiff's site, new at y: its unbound CSR still redeems.
    let old_file = token_path(&y, "y-for-old.yaml");
    y.issue(&old_file, &[]);
    let old_token = read_token(&old_file);
    let old = skiff_certs::SiteId::random();
    let old_key = skiff_certs::generate_link_key().unwrap();
    let csr = skiff_certs::link_csr(old, "old", &old_key).unwrap();
    let answer = redeem(&csr, old, &old_token).unwrap();
    assert_eq!(answer.site_id, yid);
    assert!(y.dir.join("peers").join(format!("{old}.yaml")).exists());
    assert_eq!(redemptions_made(&y, &old_token), 1);
}

/// A site of an older skiff redeems with an unbound CSR (`CN=skiff link <name>`) and loses
/// the answer (its process died, or the issuer answered 503 after storing the redemption): it
/// retries the same request over TLS. y answers again with a certificate for the same key, the
/// one-use token is spent once only (another site then finds it spent), and the site, given
/// the retry's certificate, links to y. An unbound CSR for that site id with another key is
/// still refused.
#[test]
fn an_older_redeemers_retry_after_a_lost_answer_is_answered_spends_nothing_and_links() {
    use skiff_site_controller::SiteError;
    use skiff_site_controller::resources::{Link, LinkSpec};
    let mut y = Site::create("y", true);
    y.start();
    let mut old = Site::create("old", false);
    let token_file = token_path(&y, "y-for-old.yaml");
    y.issue(&token_file, &[]);
    let token = read_token(&token_file);
    let oid: skiff_certs::SiteId = common::site_id(&old).parse().unwrap();
    let key = std::fs::read_to_string(old.dir.join("link.key")).unwrap();
    let csr = skiff_certs::link_csr(oid, "old", &key).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let redeem = |csr: &str| {
        rt.block_on(skiff_site_controller::grant::redeem_token(
            &token, oid, "old", csr, None,
        ))
    };
    // The first answer is lost.
    redeem(&csr).unwrap();
    assert_eq!(redemptions_made(&y, &token), 1);
    let t0 = std::time::Instant::now();
    let retry = match redeem(&csr) {
        Ok(answer) => answer,
        Err(e) => panic!("y refused an older redeemer's own retry: {e:?}"),
    };
    eprintln!("the retry was answered in {:?}", t0.elapsed());
    assert_eq!(
        skiff_certs::key_fingerprint_pem(&retry.certificate).unwrap(),
        skiff_certs::private_key_fingerprint(&key).unwrap()
    );
    assert_eq!(redemptions_made(&y, &token), 1);

    // Another key for the same site id is no retry: refused, nothing spent.
    let other = skiff_certs::generate_link_key().unwrap();
    match redeem(&skiff_certs::link_csr(oid, "old", &other).unwrap()) {
        Err(SiteError::RedemptionRefused { reason, .. }) => {
            assert!(reason.contains("upgrade the redeeming skiff"), "{reason}")
        }
        other => panic!("y answered another key for a linked site id with {other:?}"),
    }
    assert_eq!(redemptions_made(&y, &token), 1);
    // The token is spent: another site cannot use it.
    let north = Site::create("north", false);
    let err = redeem_fails(&north, &token_file);
    assert!(err.contains("already redeemed"), "{err}");

    // The older site, given the retry's certificate, links to y.
    let link = Link::new(
        "y",
        LinkSpec {
            peer_site_id: retry.site_id,
            peer_site_name: retry.site_name.clone(),
            endpoints: retry.endpoints.clone(),
            peer_ca: token.spec.ca.clone(),
            client_certificate: retry.certificate.clone(),
            cost: retry.link_cost,
            transport: "auto".into(),
            client_key: None,
            proxy: None,
        },
    );
    let folder = skiff_site_controller::folder::SiteFolder::new(old.dir.clone());
    skiff_site_controller::site::save_link(&folder, &link).unwrap();
    old.start();
    old.wait_link(
        Duration::from_secs(10),
        "the older site up to y with the retry's certificate",
        is_link("up", "y"),
    );
}
