//! Black-box tests of offline links (`skiff link generate FILE`) through the real binary: a
//! link file made at the accepting site is installed at the other site with no network (the
//! accepting site stopped), links, carries a flow with its bytes intact, renews with the
//! link's own key and is closed by a revocation; a file for a new site id makes that site with
//! `site create --id`; and every misuse (another site, a swapped key, a tampered certificate,
//! no link access, a folder of another site) is refused with a clear message and nothing
//! written; an offline link goes through `apply -f`, `get links` (no key shown) and
//! `delete -f` (which says its key went too), and a generate whose reload failed keeps its
//! file.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Echo, Site, expose_echo, fails, ok, site_id, text};
use serde_json::Value;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// The files in a site's `links/` folder (none if it does not exist).
fn link_files(site: &Site) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(site.dir.join("links"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// `skiff link generate FILE ARGS --dir D` at `site`: (stdout, stderr).
fn generate(site: &Site, file: &Path, args: &[&str]) -> (String, String) {
    let mut a = vec!["link", "generate", file.to_str().unwrap()];
    a.extend_from_slice(args);
    a.extend(["--dir", site.d()]);
    let o = ok(&a);
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Sends 1 MiB of varied bytes through `addr` to the echo backend and back; returns how long
/// the round trip of all of it took. Panics unless every byte came back unchanged.
fn echo_one_mib(addr: &str) -> Duration {
    let data: Vec<u8> = (0u32..1024 * 1024)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let started = Instant::now();
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut w = c.try_clone().unwrap();
    let sent = data.clone();
    let writer = std::thread::spawn(move || w.write_all(&sent).unwrap());
    let mut back = vec![0u8; data.len()];
    c.read_exact(&mut back).unwrap();
    writer.join().unwrap();
    let took = started.elapsed();
    assert!(
        back == data,
        "bytes changed on the way through the offline link"
    );
    took
}

/// The serial a site's record of `id` names (`peers/ID.yaml`).
fn recorded_serial(site: &Site, id: &str) -> String {
    std::fs::read_to_string(site.dir.join("peers").join(format!("{id}.yaml")))
        .unwrap()
        .lines()
        .find_map(|l| l.trim().strip_prefix("certificateSerial:"))
        .unwrap()
        .trim()
        .trim_matches(['"', '\''])
        .to_string()
}

fn outbound_up(l: &Value) -> bool {
    l["direction"] == "outbound" && l["status"] == "up"
}

fn inbound_up(l: &Value) -> bool {
    l["direction"] == "inbound" && l["status"] == "up"
}

#[test]
fn an_offline_link_installed_while_the_issuer_is_stopped_links_carries_renews_and_revokes() {
    let echo = Echo::start();
    let mut a = Site::create_on_fixed_port("a");
    let mut b = Site::create("b", false);
    let b_id = site_id(&b);
    a.start();

    let file = a.dir.with_file_name("for-b.link.yaml");
    let (stdout, stderr) = generate(&a, &file, &["--site-id", &b_id]);
    assert!(stdout.is_empty(), "{stdout}");
    let warning = format!(
        "warning: {} contains a private key: anyone holding it can link to this site as {b_id} until it expires (",
        file.display()
    );
    assert!(stderr.starts_with(&warning), "{stderr}");
    let first = stderr.lines().next().unwrap();
    assert!(
        first.ends_with(&format!(
            ") or is revoked (skiff link revoke {b_id}); move it over a trusted channel and delete it after use"
        )),
        "{first}"
    );
    assert_eq!(mode(&file), 0o600);
    let content = std::fs::read_to_string(&file).unwrap();
    let comments: Vec<&str> = content.lines().take_while(|l| l.starts_with('#')).collect();
    assert!(comments.len() >= 3, "{content}");
    assert!(
        comments.iter().any(|l| l.contains("PRIVATE KEY"))
            && comments.iter().any(|l| l.contains(&b_id)),
        "{content}"
    );
    assert!(content.contains("kind: Link"), "{content}");
    assert!(content.contains("clientKey"), "{content}");
    assert_eq!(
        content.matches("kind:").count(),
        1,
        "one document: {content}"
    );
    let serial = recorded_serial(&a, &b_id);

    // The issuer stops: the other site installs the file with no one to talk to.
    assert!(a.stop().success(), "{}", a.log());
    let t0 = Instant::now();
    let out = ok(&["token", "redeem", file.to_str().unwrap(), "--dir", b.d()]);
    let installed_in = t0.elapsed();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(said.contains("link \"a\" to site \"a\" created"), "{said}");
    assert_eq!(link_files(&b), ["a.key", "a.yaml"]);
    assert_eq!(mode(&b.dir.join("links/a.key")), 0o600);
    let stored = std::fs::read_to_string(b.dir.join("links/a.yaml")).unwrap();
    assert!(
        !stored.contains("clientKey") && !stored.contains("PRIVATE KEY"),
        "links/a.yaml holds the key: {stored}"
    );

    // A backend at a, a listener at b: a flow crosses the offline link.
    expose_echo(&echo, &a, &b);
    a.start();
    let t1 = Instant::now();
    b.start();
    let out_link = b.wait_link(Duration::from_secs(10), "up to a", outbound_up);
    a.wait_link(Duration::from_secs(10), "up from b", inbound_up);
    let up_in = t1.elapsed();
    let addr = b.wait_listener_active("echo", Duration::from_secs(10));
    let flow_took = echo_one_mib(&addr);
    eprintln!(
        "offline install (issuer stopped) in {installed_in:?}; link up at both ends {up_in:?} after b started; 1 MiB echoed intact in {flow_took:?}"
    );

    // Renewal with the link's own key: a new serial, the link stays up, the key stays.
    let key_before = std::fs::read_to_string(b.dir.join("links/a.key")).unwrap();
    let renewed = ok(&["link", "renew", "--output", "json", "--dir", b.d()]);
    let v: Value = serde_json::from_slice(&renewed.stdout).unwrap();
    let r = &v[0];
    assert!(r["error"].is_null(), "{v:#}");
    let new_serial = r["serial"].as_str().unwrap();
    assert_ne!(new_serial, serial, "the renewal kept the serial");
    assert_eq!(recorded_serial(&a, &b_id), new_serial);
    assert_eq!(
        std::fs::read_to_string(b.dir.join("links/a.key")).unwrap(),
        key_before,
        "the renewal changed or dropped the link's own key"
    );
    std::thread::sleep(Duration::from_millis(500));
    let after = b.wait_link(Duration::from_secs(2), "still up to a", outbound_up);
    assert_eq!(
        after["since"], out_link["since"],
        "the renewal redialled: {after:#}"
    );
    // The renewed certificate links with the link's own key: b restarts and dials with it.
    assert!(b.stop().success(), "{}", b.log());
    let t2 = Instant::now();
    b.start();
    b.wait_link(
        Duration::from_secs(10),
        "up to a after renewal",
        outbound_up,
    );
    let relinked_in = t2.elapsed();
    // (The listener's port is taken afresh at each start.)
    let addr = b.wait_listener_active("echo", Duration::from_secs(10));
    let again_took = echo_one_mib(&addr);
    eprintln!(
        "renewed (serial {serial} -> {new_serial}); b restarted and relinked with it in {relinked_in:?}; 1 MiB echoed intact in {again_took:?}"
    );

    // Revocation at a closes the offline site's link.
    let t3 = Instant::now();
    ok(&["link", "revoke", &b_id, "--dir", a.d()]);
    let deadline = t3 + Duration::from_secs(5);
    while b.links().iter().any(outbound_up) {
        assert!(
            Instant::now() < deadline,
            "b's link stayed up after the revocation"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let down_in = t3.elapsed();
    eprintln!("revoked: b's link down {down_in:?} after skiff link revoke started");
    assert!(down_in < Duration::from_secs(2), "{down_in:?}");
    let refused = b.wait_link(Duration::from_secs(15), "refused", |l| {
        l["status"] == "refused"
    });
    assert!(
        refused["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("revoked"),
        "{refused:#}"
    );
}

#[test]
fn an_offline_link_for_a_new_site_id_makes_that_site_with_site_create_id() {
    let mut a = Site::create_on_fixed_port("a");
    a.start();
    let file = a.dir.with_file_name("new.link.yaml");
    let (_, stderr) = generate(&a, &file, &["--peer-name", "branch"]);
    let content = std::fs::read_to_string(&file).unwrap();
    let id = content
        .lines()
        .find_map(|l| l.split("skiff site create NAME --id ").nth(1))
        .unwrap_or_else(|| panic!("the file does not say how to create the site: {content}"))
        .trim()
        .to_string();
    assert_eq!(id.len(), 32, "{id}");
    assert!(
        stderr.contains(&format!("skiff site create NAME --id {id}")),
        "{stderr}"
    );
    let recorded = std::fs::read_to_string(a.dir.join("peers").join(format!("{id}.yaml"))).unwrap();
    assert!(
        recorded.contains("grant: offline") && recorded.contains("siteName: branch"),
        "{recorded}"
    );

    // A fresh folder: the site is made with that id.
    let tmp = tempfile::tempdir().unwrap();
    let b_dir = tmp.path().join("b");
    let b_d = b_dir.to_str().unwrap();
    let out = ok(&["site", "create", "b", "--id", &id, "--dir", b_d]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&id),
        "{}",
        text(&out)
    );
    // Again with the same id: an update, identity kept.
    ok(&["site", "create", "b", "--id", &id, "--dir", b_d]);
    // With another id: refused, naming both and the fix; nothing changes.
    let site_yaml = std::fs::read_to_string(b_dir.join("site.yaml")).unwrap();
    let other = "0123456789abcdef0123456789abcdef";
    let err = fails(&["site", "create", "b", "--id", other, "--dir", b_d]);
    assert!(
        err.contains(&id) && err.contains(other) && err.contains("another folder"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(b_dir.join("site.yaml")).unwrap(),
        site_yaml
    );
    // A folder holding a site of another name: refused too.
    let a_yaml = std::fs::read_to_string(a.dir.join("site.yaml")).unwrap();
    let err = fails(&["site", "create", "b", "--id", &id, "--dir", a.d()]);
    assert!(err.contains("already holds site \"a\""), "{err}");
    assert_eq!(
        std::fs::read_to_string(a.dir.join("site.yaml")).unwrap(),
        a_yaml
    );

    ok(&["token", "redeem", file.to_str().unwrap(), "--dir", b_d]);
    // The site runs from that folder (Site's own helpers need a Site, so run it by hand).
    let log = tmp.path().join("b.log");
    let child = std::process::Command::new(common::skiff_bin())
        .args(["site", "run", "--dir", b_d])
        .env("SKIFF_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let b_run = Child(Some(child));
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(15);
    loop {
        let o = ok(&["link", "list", "--output", "json", "--dir", b_d]);
        let links: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
        if links.as_array().is_some_and(|l| l.iter().any(outbound_up)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new site did not link: {links:#}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
    let inbound = a.wait_link(Duration::from_secs(5), "up from b", inbound_up);
    eprintln!(
        "new site {id} created with --id, installed, linked in {:?}",
        t0.elapsed()
    );
    assert_eq!(inbound["peer_site_id"], id.as_str(), "{inbound:#}");
    drop(b_run);
}

/// A `site run` we started, killed and reaped on drop.
struct Child(Option<std::process::Child>);

impl Drop for Child {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            common::terminate(c, Duration::from_secs(10));
        }
    }
}

/// Replaces one base64 character about `back` characters before `marker` (searched after
/// `after`) with another, keeping the text otherwise the same.
fn flip_before(text: &str, after: &str, marker: &str, back: usize) -> String {
    let from = text.find(after).unwrap();
    let end = from + text[from..].find(marker).unwrap();
    let mut bytes = text.as_bytes().to_vec();
    let mut i = end - back;
    while !bytes[i].is_ascii_alphanumeric() {
        i -= 1;
    }
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).unwrap()
}

/// The PEM block starting with `begin` in `text` (as the file spells it).
fn pem_block<'t>(text: &'t str, begin: &str, end: &str) -> &'t str {
    let s = text.find(begin).unwrap();
    let e = s + text[s..].find(end).unwrap() + end.len();
    &text[s..e]
}

#[test]
fn misused_offline_link_files_are_refused_and_nothing_is_written() {
    let a = Site::create_on_fixed_port("a");
    let b = Site::create("b", false);
    let c = Site::create("c", false);
    let (b_id, c_id) = (site_id(&b), site_id(&c));

    // A site without link access cannot make one.
    let none = c.dir.with_file_name("from-c.link.yaml");
    let err = fails(&["link", "generate", none.to_str().unwrap(), "--dir", c.d()]);
    assert!(
        err.contains("does not accept links") && err.contains("--enable-link-access"),
        "{err}"
    );
    assert!(!none.exists(), "a refused generate wrote its file");
    assert!(
        !c.dir.join("peers").exists()
            || std::fs::read_dir(c.dir.join("peers"))
                .unwrap()
                .next()
                .is_none()
    );

    // Nor for its own id.
    let own = a.dir.with_file_name("own.link.yaml");
    let err = fails(&[
        "link",
        "generate",
        own.to_str().unwrap(),
        "--site-id",
        &site_id(&a),
        "--dir",
        a.d(),
    ]);
    assert!(err.contains("this site's own id"), "{err}");
    assert!(!own.exists());

    let file = a.dir.with_file_name("for-b.link.yaml");
    generate(&a, &file, &["--site-id", &b_id]);
    let good = std::fs::read_to_string(&file).unwrap();

    // A second one for the same id: refused (the id is bound to the first file's key).
    let again = a.dir.with_file_name("again.link.yaml");
    let err = fails(&[
        "link",
        "generate",
        again.to_str().unwrap(),
        "--site-id",
        &b_id,
        "--dir",
        a.d(),
    ]);
    assert!(
        err.contains("linked here already") && err.contains("token"),
        "{err}"
    );
    assert!(!again.exists());

    // Installed at another site: refused, naming both ids and the fix.
    let err = fails(&["token", "redeem", file.to_str().unwrap(), "--dir", c.d()]);
    assert!(
        err.contains(&b_id) && err.contains(&c_id) && err.contains(&format!("--site-id {c_id}")),
        "{err}"
    );
    assert!(link_files(&c).is_empty(), "{:?}", link_files(&c));

    // The key swapped for another one: refused.
    let other_file = a.dir.with_file_name("other.link.yaml");
    generate(&a, &other_file, &[]);
    let other = std::fs::read_to_string(&other_file).unwrap();
    let (begin, end) = ("-----BEGIN PRIVATE KEY-----", "-----END PRIVATE KEY-----");
    let swapped = good.replace(pem_block(&good, begin, end), pem_block(&other, begin, end));
    assert_ne!(swapped, good);
    let swapped_file = a.dir.with_file_name("swapped.link.yaml");
    std::fs::write(&swapped_file, &swapped).unwrap();
    let err = fails(&[
        "token",
        "redeem",
        swapped_file.to_str().unwrap(),
        "--dir",
        b.d(),
    ]);
    assert!(
        err.contains("does not certify spec.clientKey") && err.contains("altered"),
        "{err}"
    );
    assert!(link_files(&b).is_empty(), "{:?}", link_files(&b));

    // The certificate tampered with (a character of its signature changed): refused.
    let tampered = flip_before(&good, "clientCertificate", "-----END CERTIFICATE-----", 12);
    assert_ne!(tampered, good);
    let tampered_file = a.dir.with_file_name("tampered.link.yaml");
    std::fs::write(&tampered_file, &tampered).unwrap();
    let err = fails(&[
        "token",
        "redeem",
        tampered_file.to_str().unwrap(),
        "--dir",
        b.d(),
    ]);
    assert!(err.contains("clientCertificate"), "{err}");
    eprintln!(
        "tampered certificate refused with: {}",
        err.lines().next().unwrap_or_default()
    );
    assert!(link_files(&b).is_empty(), "{:?}", link_files(&b));
    // apply -f names the field at fault: the certificate, not the CA that checks it.
    let err = fails(&[
        "apply",
        "-f",
        tampered_file.to_str().unwrap(),
        "--dir",
        b.d(),
    ]);
    assert!(
        err.contains(": spec.clientCertificate: ") && !err.contains(": spec.peerCa: "),
        "{err}"
    );
    assert!(link_files(&b).is_empty(), "{:?}", link_files(&b));

    // The untouched file still installs.
    ok(&["token", "redeem", file.to_str().unwrap(), "--dir", b.d()]);
    assert_eq!(link_files(&b), ["a.key", "a.yaml"]);
}

#[test]
fn an_offline_link_applied_read_back_and_deleted_and_a_generate_whose_reload_failed() {
    let mut a = Site::create_on_fixed_port("a");
    let mut b = Site::create("b", false);
    let b_id = site_id(&b);
    a.start();

    // A record the running site cannot read: its reload fails after generate recorded b.
    let peers = a.dir.join("peers");
    std::fs::create_dir_all(&peers).unwrap();
    let broken = peers.join("zz-broken.yaml");
    std::fs::write(&broken, "kind: [\n").unwrap();
    let file = a.dir.with_file_name("for-b.link.yaml");
    let (_, stderr) = generate(&a, &file, &["--site-id", &b_id]);
    assert!(
        stderr.contains(&format!("warning: site {b_id} is recorded here"))
            && stderr.contains("the running site did not reload")
            && stderr.contains("skiff site reload"),
        "{stderr}"
    );
    assert_eq!(mode(&file), 0o600, "the link file was not kept");
    assert!(peers.join(format!("{b_id}.yaml")).is_file());
    // A retry is refused (the id is recorded) and leaves the first file alone.
    let retry = a.dir.with_file_name("retry.link.yaml");
    let err = fails(&[
        "link",
        "generate",
        retry.to_str().unwrap(),
        "--site-id",
        &b_id,
        "--dir",
        a.d(),
    ]);
    assert!(err.contains("linked here already"), "{err}");
    assert!(file.is_file() && !retry.exists());
    std::fs::remove_file(&broken).unwrap();
    ok(&["site", "reload", "--dir", a.d()]);

    // apply -f installs the offline link file: its key apart (0600), the link comes up.
    let out = ok(&["apply", "-f", file.to_str().unwrap(), "--dir", b.d()]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "link/a created"
    );
    assert_eq!(link_files(&b), ["a.key", "a.yaml"]);
    assert_eq!(mode(&b.dir.join("links/a.key")), 0o600);
    let t0 = Instant::now();
    b.start();
    b.wait_link(Duration::from_secs(10), "up to a", outbound_up);
    let up_in = t0.elapsed();

    // get links shows neither the key nor a clientKey field.
    let got = String::from_utf8_lossy(&ok(&["get", "links", "-o", "yaml", "--dir", b.d()]).stdout)
        .into_owned();
    assert!(
        got.contains("kind: Link") && !got.contains("PRIVATE KEY") && !got.contains("clientKey"),
        "{got}"
    );
    let got_file = b.dir.with_file_name("links-of-b.yaml");
    std::fs::write(&got_file, &got).unwrap();

    // delete -f says the key went with it; applying get's output back then says why it fails.
    let out = ok(&["delete", "-f", got_file.to_str().unwrap(), "--dir", b.d()]);
    let note = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        note.contains("note: link/a was an offline link: its private key (")
            && note.contains("links/a.key) was deleted with it"),
        "{note}"
    );
    assert!(link_files(&b).is_empty(), "{:?}", link_files(&b));
    let err = fails(&["apply", "-f", got_file.to_str().unwrap(), "--dir", b.d()]);
    assert!(
        err.contains(
            ": spec.clientCertificate: link a is an offline link whose key (links/a.key) is gone"
        ) && err.contains(&format!(
            "ask site a ({}) to generate a new link file",
            site_id(&a)
        )),
        "{err}"
    );
    assert!(link_files(&b).is_empty(), "{:?}", link_files(&b));
    eprintln!("offline link applied with apply -f: up {up_in:?} after b started");
}

#[test]
fn a_bad_transport_is_refused_with_a_proxy_and_get_links_warns_of_a_proxy_password() {
    let a = Site::create_on_fixed_port("a");
    let b = Site::create("b", false);
    let file = a.dir.with_file_name("for-b.link.yaml");
    generate(&a, &file, &["--site-id", &site_id(&b)]);
    let f = file.to_str().unwrap();
    let proxy = "http://bob:s3cret@127.0.0.1:9";
    // With --proxy, an invalid --transport used to become tls.
    let err = fails(&[
        "token",
        "redeem",
        f,
        "--transport",
        "udp",
        "--proxy",
        proxy,
        "--dir",
        b.d(),
    ]);
    assert!(
        err.contains("--transport \"udp\" is not one of quic, tls, auto"),
        "{err}"
    );
    assert!(link_files(&b).is_empty(), "{:?}", link_files(&b));

    ok(&["token", "redeem", f, "--proxy", proxy, "--dir", b.d()]);
    let got = ok(&["get", "links", "-o", "yaml", "--dir", b.d()]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&got.stdout),
        String::from_utf8_lossy(&got.stderr),
    );
    assert!(stdout.contains("s3cret"), "{stdout}");
    assert!(
        stderr.contains("warning: link/a carries its proxy's password (spec.proxy)")
            && stderr.contains("umask 077"),
        "{stderr}"
    );
}
