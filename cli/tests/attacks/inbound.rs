//! The matrix against a site nobody has linked to yet, over TLS/TCP and over QUIC: each
//! hostile connection is refused (an error or a close, within milliseconds), the site's log
//! names the check that failed, and no link, peer record or grant use appears.

use std::sync::Arc;
use std::time::{Duration, Instant};

use skiff_certs::{SiteCa, SiteId, grant_client_config, link_client_config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::common::Site;
use super::hostile::{
    self, ANSWER_WITHIN, State, Target, Via, attempt, block_on, dial_as, expired, forge_link_cert,
    new_key, not_yet_valid, self_signed, target, valid_now, wait_log_line,
};

/// A running site with link access and one unredeemed token, before the attack.
struct Scene {
    west: Site,
    t: Target,
    before: State,
}

impl Scene {
    fn new() -> Scene {
        let mut west = Site::create("west", true);
        west.start();
        west.issue(&west.dir.with_file_name("unused.token"), &[]);
        let before = State::of(&west);
        assert_eq!(before.count("grants"), 1, "{before:?}");
        assert_eq!(before.count("peers"), 0, "{before:?}");
        let t = target(&west);
        Scene { west, t, before }
    }

    /// No link, no peer record, the token unspent; the log line giving the reason has every
    /// one of `log_says` (and names the transport when there is one).
    fn assert_untouched(&self, log_says: &[&str]) -> String {
        let line = wait_log_line(&self.west, log_says);
        assert!(
            self.west.links().is_empty(),
            "a refused connection made a link: {:?}",
            self.west.links()
        );
        assert_eq!(State::of(&self.west), self.before, "state was created");
        line
    }
}

over_both_transports!(
    wrong_alpn,
    no_client_certificate,
    self_signed_client_certificate,
    client_certificate_from_another_sites_ca,
    right_ca_for_a_site_that_never_redeemed,
    expired_client_certificate,
    not_yet_valid_client_certificate,
    client_that_pins_another_ca,
);

/// The log line's field naming the transport of the refused connection.
fn transport_words(via: Via) -> &'static str {
    match via {
        Via::Tls => "transport=tls",
        Via::Quic => "transport=quic",
    }
}

#[test]
fn plaintext_over_tcp() {
    let s = Scene::new();
    let start = Instant::now();
    let answer = block_on(async {
        let mut tcp = TcpStream::connect(s.t.addr).await.unwrap();
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        tokio::time::timeout(ANSWER_WITHIN, tcp.read_to_end(&mut buf))
            .await
            .expect("the site did not hang up on plaintext")
            .ok();
        buf
    });
    let took = start.elapsed();
    // rustls answers a non-TLS record with at most an alert record, never with HTTP.
    assert!(
        !String::from_utf8_lossy(&answer).contains("HTTP"),
        "{answer:?}"
    );
    assert!(answer.len() <= 7, "more than one alert record: {answer:?}");
    eprintln!("plaintext over TCP: closed after {took:?}");
    s.assert_untouched(&[
        "refused a connection on the link port",
        "transport=tls",
        "not TLS",
    ]);
}

#[test]
fn garbage_datagrams_over_udp() {
    // A QUIC endpoint drops datagrams that are not QUIC before any connection exists: no
    // state, and nothing to log (a log line per spoofable datagram would let anyone flood the
    // log). What matters: nothing is created, nothing but a version negotiation or a
    // stateless reset answers (no amplification toward a spoofed source), and the endpoint
    // keeps serving.
    let s = Scene::new();
    // A well-formed long header of an unknown QUIC version (at most a version negotiation
    // may answer it), a malformed long header, a short header for no connection, plaintext.
    let mut unknown_version = vec![0xc0u8, 0x1a, 0x2a, 0x3a, 0x4a, 8];
    unknown_version.extend([7u8; 8]);
    unknown_version.push(8);
    unknown_version.extend([9u8; 8]);
    unknown_version.resize(1200, 0);
    let mut malformed = vec![0xc0u8, 0xde, 0xad, 0xbe, 0xef, 8];
    malformed.resize(1200, 0x5a);
    let datagrams: [&[u8]; 5] = [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        &[0u8; 1200],
        &[0x40u8; 64],
        &malformed,
        &unknown_version,
    ];
    let sent: usize = datagrams.iter().map(|d| d.len()).sum();
    let (replies, after) = block_on(async {
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for d in datagrams {
            udp.send_to(d, s.t.addr).await.unwrap();
        }
        let mut replies = Vec::new();
        let mut buf = [0u8; 2048];
        while let Ok(Ok((n, _))) =
            tokio::time::timeout(Duration::from_millis(300), udp.recv_from(&mut buf)).await
        {
            replies.push(buf[..n].to_vec());
            assert!(
                replies.len() <= datagrams.len(),
                "more replies than datagrams"
            );
        }
        // The endpoint still serves: a real handshake still gets its refusal.
        let mut cfg = (*grant_client_config(&s.t.ca_pem, s.t.id).unwrap()).clone();
        cfg.alpn_protocols = vec![skiff_certs::ALPN_LINK.to_vec()];
        (replies, attempt(&s.t, Via::Quic, Arc::new(cfg)).await)
    });
    let answered: usize = replies.iter().map(Vec::len).sum();
    eprintln!(
        "garbage over UDP: {} datagrams ({sent} bytes), {} replies ({answered} bytes)",
        datagrams.len(),
        replies.len()
    );
    for r in &replies {
        // Only a version negotiation (long header, version 0) or a stateless reset (short
        // header, RFC 9000 10.3: smaller than the packet that prompted it) may answer: never
        // an Initial, never a handshake.
        let version_negotiation = r[0] & 0x80 != 0 && r[1..5] == [0, 0, 0, 0];
        let stateless_reset = r[0] & 0xc0 == 0x40 && r.len() < 64;
        assert!(version_negotiation || stateless_reset, "reply {r:?}");
    }
    assert!(replies.len() <= 2, "{replies:?}");
    assert!(
        answered < sent / 10,
        "the endpoint amplifies: {answered} bytes for {sent}"
    );
    after.assert_refused();
    s.assert_untouched(&[
        "refused an inbound link",
        "transport=quic",
        "no client certificate",
    ]);
}

fn wrong_alpn(via: Via) {
    let s = Scene::new();
    let mut cfg = (*grant_client_config(&s.t.ca_pem, s.t.id).unwrap()).clone();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let a = block_on(attempt(&s.t, via, Arc::new(cfg)));
    a.assert_refused();
    assert!(
        matches!(a.seen, hostile::Seen::HandshakeFailed(_)),
        "no ALPN must fail the handshake: {a:?}"
    );
    let told = a.text().to_lowercase();
    assert!(
        told.contains("noapplicationprotocol") || told.contains("error 120"),
        "the client must be told by a no_application_protocol alert: {a:?}"
    );
    eprintln!("{via:?} wrong ALPN: refused after {:?}", a.took);
    s.assert_untouched(&[transport_words(via), "no common ALPN"]);
}

fn no_client_certificate(via: Via) {
    let s = Scene::new();
    let mut cfg = (*grant_client_config(&s.t.ca_pem, s.t.id).unwrap()).clone();
    cfg.alpn_protocols = vec![skiff_certs::ALPN_LINK.to_vec()];
    let a = block_on(attempt(&s.t, via, Arc::new(cfg)));
    a.assert_refused();
    if via == Via::Quic {
        assert!(
            a.text().contains("no client certificate"),
            "a QUIC client must be told why: {a:?}"
        );
    }
    eprintln!("{via:?} no client certificate: refused after {:?}", a.took);
    s.assert_untouched(&[transport_words(via), "no client certificate"]);
}

/// Asserts the client was told by TLS alert `alert` (`name` as rustls prints it, `code` as
/// quinn prints it).
fn assert_alert(a: &hostile::Attempt, name: &str, code: u8) {
    let told = a.text();
    assert!(
        told.contains(name) || told.contains(&format!("error {code}")),
        "the client must be told by a {name} alert: {a:?}"
    );
}

fn self_signed_client_certificate(via: Via) {
    let s = Scene::new();
    let (cert, key) = self_signed(SiteId::random());
    let cfg = link_client_config(&cert, &key, &s.t.ca_pem, s.t.id).unwrap();
    let a = block_on(attempt(&s.t, via, cfg));
    a.assert_refused();
    assert_alert(&a, "UnknownCA", 48);
    eprintln!("{via:?} self-signed: refused after {:?}", a.took);
    s.assert_untouched(&[transport_words(via), "not issued by this site's CA"]);
}

fn client_certificate_from_another_sites_ca(via: Via) {
    let s = Scene::new();
    let stranger = SiteId::random();
    let other_ca = SiteCa::generate("mallory", stranger).unwrap();
    let key = new_key();
    let cert = forge_link_cert(
        other_ca.cert_pem(),
        other_ca.key_pem(),
        stranger,
        &key,
        valid_now(),
    );
    let a = block_on(attempt(
        &s.t,
        via,
        link_client_config(&cert, &key, &s.t.ca_pem, s.t.id).unwrap(),
    ));
    a.assert_refused();
    assert_alert(&a, "UnknownCA", 48);
    eprintln!("{via:?} another site's CA: refused after {:?}", a.took);
    s.assert_untouched(&[transport_words(via), "not issued by this site's CA"]);
}

fn right_ca_for_a_site_that_never_redeemed(via: Via) {
    // Whoever holds west's CA key can mint certificates; a site must also have redeemed a
    // grant. The intruder dials with a real router, so the refusal travels back as a reason.
    let s = Scene::new();
    let intruder = SiteId::random();
    let key = new_key();
    let cert = forge_link_cert(&s.t.ca_pem, &s.t.ca_key_pem, intruder, &key, valid_now());
    let (reason, took) = block_on(dial_as(&s.t, via, intruder, &cert, &key));
    assert!(
        reason.contains("never redeemed"),
        "the intruder must be told why: {reason}"
    );
    eprintln!("{via:?} right CA, never redeemed: refused after {took:?}");
    s.assert_untouched(&[
        "refused an inbound link",
        transport_words(via),
        "never redeemed",
    ]);
}

fn expired_client_certificate(via: Via) {
    let s = Scene::new();
    let key = new_key();
    let cert = forge_link_cert(
        &s.t.ca_pem,
        &s.t.ca_key_pem,
        SiteId::random(),
        &key,
        expired(),
    );
    let a = block_on(attempt(
        &s.t,
        via,
        link_client_config(&cert, &key, &s.t.ca_pem, s.t.id).unwrap(),
    ));
    a.assert_refused();
    assert_alert(&a, "CertificateExpired", 45);
    eprintln!("{via:?} expired: refused after {:?}", a.took);
    s.assert_untouched(&[transport_words(via), "client certificate expired at"]);
}

fn not_yet_valid_client_certificate(via: Via) {
    let s = Scene::new();
    let key = new_key();
    let cert = forge_link_cert(
        &s.t.ca_pem,
        &s.t.ca_key_pem,
        SiteId::random(),
        &key,
        not_yet_valid(),
    );
    let a = block_on(attempt(
        &s.t,
        via,
        link_client_config(&cert, &key, &s.t.ca_pem, s.t.id).unwrap(),
    ));
    a.assert_refused();
    assert_alert(&a, "CertificateExpired", 45);
    eprintln!("{via:?} not yet valid: refused after {:?}", a.took);
    s.assert_untouched(&[
        transport_words(via),
        "client certificate is not valid before",
    ]);
}

fn client_that_pins_another_ca(via: Via) {
    // A dialer that pinned another CA for this site id (a token of another site, edited):
    // it rejects the site's certificate. The site's log must say that the client distrusts
    // it, not blame the client.
    let s = Scene::new();
    let stale = SiteCa::generate("elsewhere", SiteId::random()).unwrap();
    let key = new_key();
    let cert = forge_link_cert(
        &s.t.ca_pem,
        &s.t.ca_key_pem,
        SiteId::random(),
        &key,
        valid_now(),
    );
    let a = block_on(attempt(
        &s.t,
        via,
        link_client_config(&cert, &key, stale.cert_pem(), s.t.id).unwrap(),
    ));
    assert!(
        matches!(a.seen, hostile::Seen::HandshakeFailed(_)),
        "the client must fail the handshake: {a:?}"
    );
    assert!(a.text().contains("UnknownIssuer"), "{a:?}");
    s.assert_untouched(&[
        transport_words(via),
        "the client aborted the handshake with TLS alert UnknownCA",
        "does not trust this router's certificate",
    ]);
}
