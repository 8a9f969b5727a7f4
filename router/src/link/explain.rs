//! Turns a failed link attempt into words an operator understands, and decides whether the
//! failure is a refusal (the peer or our verifier said no: fix configuration) or a network
//! problem (retry and it may go away).

use std::error::Error as StdError;

use rustls::AlertDescription;
use skiff_certs::{CertError, SiteId};

/// Why the accepting side refused a link: the check that failed (a short word for the log's
/// `check=` field and for searching the docs) and the reason in words (what failed, why, what
/// to do), which the dialer is told and shows as its link's reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// `ca`, `expired`, `not-yet-valid`, `revoked`, `unknown-site`, `key`, `serial`,
    /// `version`, `hello-site`, `client-certificate`, `handshake-timeout`, `hello`, …
    pub(crate) check: &'static str,
    /// What failed, why, and what to do.
    pub(crate) reason: String,
}

impl Refusal {
    pub(crate) fn new(check: &'static str, reason: impl Into<String>) -> Self {
        Refusal {
            check,
            reason: reason.into(),
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

/// A refusal by the [`super::InboundPolicy`] of the site `peer` (its `admit`): `revoked` when
/// the policy says it revoked that site (with how to undo it), else `unknown-site`.
pub(crate) fn policy_refusal(
    policy: &dyn super::InboundPolicy,
    peer: SiteId,
    reason: String,
) -> Refusal {
    if policy.revoked(peer).is_some() {
        Refusal::new(
            "revoked",
            format!(
                "{reason}: its links are refused until the revocation is undone here (skiff \
                 link revoke {peer} --undo at the revoking site); if the link is no longer \
                 wanted, delete it at the dialing site (skiff link delete)"
            ),
        )
    } else {
        Refusal::new("unknown-site", reason)
    }
}

/// Why one connection attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AttemptError {
    /// The peer refused us, or we refused the peer's identity. Shown as `Refused`.
    Refused(String),
    /// The network or the peer's process failed; shown as `Connecting { last_error }`.
    Network(String),
}

impl AttemptError {
    pub(crate) fn text(&self) -> &str {
        match self {
            AttemptError::Refused(s) | AttemptError::Network(s) => s,
        }
    }

    pub(crate) fn is_refusal(&self) -> bool {
        matches!(self, AttemptError::Refused(_))
    }
}

impl std::fmt::Display for AttemptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.text())
    }
}

/// Classifies any error from dialing, the TLS/QUIC handshake or the hello exchange.
/// `endpoint` is the address dialled, `expected` the site the link names.
pub(crate) fn explain(
    err: &(dyn StdError + 'static),
    endpoint: &str,
    expected: SiteId,
) -> AttemptError {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(tls) = e.downcast_ref::<rustls::Error>()
            && let Some(refusal) = explain_rustls(tls, endpoint, expected)
        {
            return refusal;
        }
        if let Some(q) = e.downcast_ref::<quinn::ConnectionError>() {
            return explain_quic(q, endpoint, expected);
        }
        if let Some(quinn::ReadError::ConnectionLost(q)) = e.downcast_ref::<quinn::ReadError>() {
            return explain_quic(q, endpoint, expected);
        }
        if let Some(quinn::WriteError::ConnectionLost(q)) = e.downcast_ref::<quinn::WriteError>() {
            return explain_quic(q, endpoint, expected);
        }
        // io::Error hides its payload from `source()` in some constructions: look inside.
        cur = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner),
            None => e.source(),
        };
    }
    AttemptError::Network(format!("{endpoint}: {}", chain(err)))
}

/// An error and its causes as one line.
pub fn chain(err: &(dyn StdError + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = e.source();
    }
    out
}

fn cert_rejected_by_peer(endpoint: &str, alert: &str) -> String {
    if alert == "UnknownCA" {
        return format!(
            "peer {endpoint} refused this link: our link certificate was not issued by its CA \
             (TLS alert UnknownCA): the token or link file is from another network, or from \
             before that site was re-created; redeem a new token issued by that site"
        );
    }
    if alert == "CertificateExpired" {
        return format!(
            "peer {endpoint} rejected our link certificate as expired (TLS alert {alert}): renew \
             it at this site with skiff link renew (an expired certificate renews too), or check \
             the clocks of both sites"
        );
    }
    format!(
        "peer {endpoint} rejected our link certificate (TLS alert {alert}): it has expired (renew \
         it: skiff link renew), was not issued by that site's CA, or the site's CA was \
         re-created (redeem a new token from that site)"
    )
}

/// The dialer's words for a server certificate from another CA; the accepting side logs the
/// same situation as [`InboundRefusal::ClientDistrusts`].
fn not_pinned_ca(endpoint: &str) -> String {
    format!(
        "peer {endpoint} presents a certificate not signed by the CA pinned for this link (the \
         CA in the token): the token or link file is from another network, or from before that \
         site was re-created, or the address belongs to another site; redeem a new token from \
         the site you mean to link to"
    )
}

fn wrong_protocol(endpoint: &str) -> String {
    format!(
        "peer {endpoint} does not speak the skiff link protocol (no common ALPN, expected \
         skiff-link/1): is this the link port of a skiff router?"
    )
}

fn short(id: SiteId) -> String {
    let s = id.to_string();
    format!("{}…", &s[..8.min(s.len())])
}

fn site_mismatch(endpoint: &str, expected: SiteId, presented: &str) -> String {
    format!(
        "peer {endpoint} is not site {} named in the link (its certificate is for site \
         {presented}); the endpoint now belongs to another site or the link points at the \
         wrong address",
        short(expected)
    )
}

fn alert_is_about_our_cert(alert: AlertDescription) -> bool {
    matches!(
        alert,
        AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnknownCA
            | AlertDescription::AccessDenied
            | AlertDescription::DecryptError
            | AlertDescription::CertificateRequired
    )
}

fn explain_rustls(err: &rustls::Error, endpoint: &str, expected: SiteId) -> Option<AttemptError> {
    use rustls::CertificateError as C;
    let refused = |s: String| Some(AttemptError::Refused(s));
    match err {
        rustls::Error::InvalidCertificate(cert) => match cert {
            C::Other(other) => match other.0.downcast_ref::<CertError>() {
                Some(CertError::SiteMismatch { presented, .. }) => {
                    refused(site_mismatch(endpoint, expected, &short(*presented)))
                }
                Some(e) => refused(format!("peer {endpoint}: {e}")),
                None => refused(format!(
                    "peer {endpoint}'s certificate was rejected: {other}"
                )),
            },
            C::UnknownIssuer | C::BadSignature | C::BadEncoding => refused(not_pinned_ca(endpoint)),
            C::Expired
            | C::ExpiredContext { .. }
            | C::NotValidYet
            | C::NotValidYetContext { .. } => refused(peer_out_of_validity(
                endpoint,
                &InboundRefusal::from_rustls(err),
            )),
            C::NotValidForName | C::NotValidForNameContext { .. } => {
                refused(site_mismatch(endpoint, expected, "another site"))
            }
            other => refused(format!(
                "peer {endpoint}'s certificate was rejected: {other:?}"
            )),
        },
        rustls::Error::AlertReceived(AlertDescription::NoApplicationProtocol)
        | rustls::Error::NoApplicationProtocol => refused(wrong_protocol(endpoint)),
        rustls::Error::AlertReceived(alert) if alert_is_about_our_cert(*alert) => {
            refused(cert_rejected_by_peer(endpoint, &format!("{alert:?}")))
        }
        _ => None,
    }
}

/// QUIC reports local TLS failures as a transport error whose reason is rustls's message,
/// and the peer's as a close frame with a crypto error code (0x100 + TLS alert).
fn explain_quic(err: &quinn::ConnectionError, endpoint: &str, expected: SiteId) -> AttemptError {
    use quinn::ConnectionError as Q;
    match err {
        Q::TransportError(te) if is_crypto(te.code) => {
            explain_local_tls_failure(&te.reason, endpoint, expected)
        }
        Q::ConnectionClosed(close) if is_crypto(close.error_code) => {
            let alert = AlertDescription::from((u64::from(close.error_code) & 0xff) as u8);
            if alert == AlertDescription::NoApplicationProtocol {
                AttemptError::Refused(wrong_protocol(endpoint))
            } else if alert_is_about_our_cert(alert) {
                AttemptError::Refused(cert_rejected_by_peer(endpoint, &format!("{alert:?}")))
            } else {
                AttemptError::Network(format!(
                    "peer {endpoint} aborted the QUIC handshake: {close}"
                ))
            }
        }
        Q::ApplicationClosed(close) => {
            let reason = String::from_utf8_lossy(&close.reason).into_owned();
            if close.error_code == REFUSED_CODE {
                AttemptError::Refused(format!("peer {endpoint} refused the link: {reason}"))
            } else {
                AttemptError::Network(format!("peer {endpoint} closed the connection: {reason}"))
            }
        }
        Q::TimedOut => AttemptError::Network(format!(
            "no answer from {endpoint} over QUIC (UDP): is the UDP port open?"
        )),
        other => AttemptError::Network(format!("{endpoint}: {other}")),
    }
}

/// A TLS failure seen locally during a QUIC handshake, of which quinn keeps only rustls's
/// message text.
fn explain_local_tls_failure(reason: &str, endpoint: &str, expected: SiteId) -> AttemptError {
    if let Some(presented) = presented_site(reason) {
        AttemptError::Refused(site_mismatch(endpoint, expected, &presented))
    } else if reason.contains("UnknownIssuer") || reason.contains("BadSignature") {
        AttemptError::Refused(not_pinned_ca(endpoint))
    } else if reason.contains("no application protocol")
        || reason.contains("NoApplicationProtocol")
        || reason.contains("doesn't support any known protocol")
    {
        AttemptError::Refused(wrong_protocol(endpoint))
    } else if reason.contains("certificate expired") || reason.contains("not valid yet") {
        let check = InboundRefusal::from_alert_text(AlertDescription::CertificateExpired, reason);
        AttemptError::Refused(peer_out_of_validity(endpoint, &check))
    } else {
        AttemptError::Refused(format!("peer {endpoint}: TLS handshake failed: {reason}"))
    }
}

/// QUIC application close code of a link the acceptor refused before any control stream
/// could carry a Refused frame (for instance: no client certificate).
pub(crate) const REFUSED_CODE: quinn::VarInt = quinn::VarInt::from_u32(2);

fn is_crypto(code: quinn::TransportErrorCode) -> bool {
    (0x100..0x200).contains(&u64::from(code))
}

/// The presented site id in a certs-crate "certificate is for site X" message, shortened.
fn presented_site(reason: &str) -> Option<String> {
    const MARK: &str = "certificate is for site ";
    let start = reason.find(MARK)? + MARK.len();
    let hex: String = reason[start..]
        .chars()
        .take_while(|c| c.is_ascii_hexdigit())
        .collect();
    let id: SiteId = hex.parse().ok()?;
    Some(short(id))
}

/// Why the link port refused a connection whose TLS handshake (over TCP, or inside QUIC)
/// failed, in words for the accepting site's log: which check failed and what to do.
pub(crate) fn inbound_handshake_failure(err: &(dyn StdError + 'static)) -> Refusal {
    let of = |r: InboundRefusal| Refusal::new(r.check(), r.to_string());
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return of(InboundRefusal::from_rustls(tls));
        }
        if let Some(q) = e.downcast_ref::<quinn::ConnectionError>() {
            return of(InboundRefusal::from_quic(q));
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if let Some(inner) = io.get_ref() {
                cur = Some(inner);
                continue;
            }
            if io.kind() == std::io::ErrorKind::UnexpectedEof {
                return Refusal::new(
                    "client-hung-up",
                    "the client hung up during the TLS handshake",
                );
            }
        }
        cur = e.source();
    }
    Refusal::new("tls", format!("TLS handshake failed: {}", chain(err)))
}

/// The check an inbound handshake failed, from the accepting side.
#[derive(Debug, Clone, PartialEq, Eq)]
enum InboundRefusal {
    /// The client certificate's validity ended (UNIX seconds, when known).
    Expired {
        not_after: Option<u64>,
        now: Option<u64>,
    },
    /// The client certificate's validity has not begun.
    NotYetValid {
        not_before: Option<u64>,
        now: Option<u64>,
    },
    /// The client certificate does not chain to this site's CA.
    NotOurCa,
    /// The client certificate is not a client (link) certificate.
    WrongPurpose,
    /// The client offered no ALPN this port serves.
    NoAlpn,
    /// The client did not speak TLS.
    NotTls,
    /// The client rejected this router's certificate (its TLS alert).
    ClientDistrusts(AlertDescription),
    /// The client aborted for another reason.
    ClientAborted(String),
    /// Anything else, in rustls's or quinn's words.
    Other(String),
}

impl InboundRefusal {
    /// The check's word for the log's `check=` field.
    fn check(&self) -> &'static str {
        match self {
            InboundRefusal::Expired { .. } => "expired",
            InboundRefusal::NotYetValid { .. } => "not-yet-valid",
            InboundRefusal::NotOurCa => "ca",
            InboundRefusal::WrongPurpose => "purpose",
            InboundRefusal::NoAlpn => "alpn",
            InboundRefusal::NotTls => "not-tls",
            InboundRefusal::ClientDistrusts(_) => "peer-distrusts-us",
            InboundRefusal::ClientAborted(_) => "client-aborted",
            InboundRefusal::Other(_) => "tls",
        }
    }

    fn from_rustls(err: &rustls::Error) -> Self {
        use rustls::CertificateError as C;
        match err {
            rustls::Error::InvalidCertificate(cert) => match cert {
                C::ExpiredContext { time, not_after } => InboundRefusal::Expired {
                    not_after: Some(not_after.as_secs()),
                    now: Some(time.as_secs()),
                },
                C::Expired => InboundRefusal::Expired {
                    not_after: None,
                    now: None,
                },
                C::NotValidYetContext { time, not_before } => InboundRefusal::NotYetValid {
                    not_before: Some(not_before.as_secs()),
                    now: Some(time.as_secs()),
                },
                C::NotValidYet => InboundRefusal::NotYetValid {
                    not_before: None,
                    now: None,
                },
                C::UnknownIssuer => InboundRefusal::NotOurCa,
                C::InvalidPurpose | C::InvalidPurposeContext { .. } => InboundRefusal::WrongPurpose,
                other => InboundRefusal::Other(format!("invalid client certificate: {other}")),
            },
            rustls::Error::NoApplicationProtocol => InboundRefusal::NoAlpn,
            rustls::Error::InvalidMessage(_) => InboundRefusal::NotTls,
            rustls::Error::AlertReceived(alert) if alert_is_about_our_cert(*alert) => {
                InboundRefusal::ClientDistrusts(*alert)
            }
            rustls::Error::AlertReceived(alert) => {
                InboundRefusal::ClientAborted(format!("TLS alert {alert:?}"))
            }
            other => InboundRefusal::Other(other.to_string()),
        }
    }

    fn from_quic(err: &quinn::ConnectionError) -> Self {
        use quinn::ConnectionError as Q;
        match err {
            // Our TLS stack refused: quinn keeps the alert and rustls's message.
            Q::TransportError(te) if is_crypto(te.code) => {
                Self::from_alert_text(alert_of(te.code), &te.reason)
            }
            Q::ConnectionClosed(close) if is_crypto(close.error_code) => {
                let alert = alert_of(close.error_code);
                if alert_is_about_our_cert(alert) {
                    InboundRefusal::ClientDistrusts(alert)
                } else {
                    InboundRefusal::ClientAborted(close.to_string())
                }
            }
            Q::TimedOut => {
                InboundRefusal::Other("the client went silent during the QUIC handshake".into())
            }
            other => InboundRefusal::Other(format!("QUIC handshake failed: {other}")),
        }
    }

    /// The same classification as [`InboundRefusal::from_rustls`], from the alert rustls
    /// sent and its error message (all that QUIC keeps of a local TLS failure).
    fn from_alert_text(alert: AlertDescription, reason: &str) -> Self {
        let number_after = |mark: &str| -> Option<u64> {
            let start = reason.find(mark)? + mark.len();
            reason[start..]
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        };
        let now = number_after("verification time ");
        match alert {
            AlertDescription::CertificateExpired => {
                if reason.contains("not valid yet") || reason.contains("NotValidYet") {
                    InboundRefusal::NotYetValid {
                        not_before: number_after("not valid before "),
                        now,
                    }
                } else {
                    InboundRefusal::Expired {
                        not_after: number_after("not valid after "),
                        now,
                    }
                }
            }
            AlertDescription::UnknownCA => InboundRefusal::NotOurCa,
            AlertDescription::UnsupportedCertificate => InboundRefusal::WrongPurpose,
            AlertDescription::NoApplicationProtocol => InboundRefusal::NoAlpn,
            _ => InboundRefusal::Other(reason.to_string()),
        }
    }
}

/// "expired at <UTC> (N ago)" or "is not valid before <UTC> (N from now)", as far as known;
/// `None` for other checks.
fn validity_words(check: &InboundRefusal) -> Option<String> {
    Some(match check {
        InboundRefusal::Expired { not_after, now } => match (not_after, now) {
            (Some(end), Some(now)) => format!(
                "expired at {} ({} ago)",
                utc(*end),
                span(now.saturating_sub(*end))
            ),
            (Some(end), None) => format!("expired at {}", utc(*end)),
            _ => "has expired".into(),
        },
        InboundRefusal::NotYetValid { not_before, now } => match (not_before, now) {
            (Some(start), Some(now)) => format!(
                "is not valid before {} ({} from now)",
                utc(*start),
                span(start.saturating_sub(*now))
            ),
            (Some(start), None) => format!("is not valid before {}", utc(*start)),
            _ => "is not valid yet".into(),
        },
        _ => return None,
    })
}

/// A dialer's refusal of a server certificate outside its validity.
fn peer_out_of_validity(endpoint: &str, check: &InboundRefusal) -> String {
    let words = validity_words(check).unwrap_or_else(|| "is not valid now".into());
    let fix = match check {
        InboundRefusal::NotYetValid { .. } => "this machine's clock is behind (check NTP)",
        _ => "the peer must renew its router certificate, or this machine's clock is ahead",
    };
    format!("peer {endpoint}'s certificate {words}: {fix}")
}

impl std::fmt::Display for InboundRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InboundRefusal::Expired { .. } => write!(
                f,
                "the client certificate {}: the dialing site renews it with skiff link renew \
                 there (an expired certificate renews too), or this machine's clock is ahead",
                validity_words(self).unwrap_or_default()
            ),
            InboundRefusal::NotYetValid { .. } => write!(
                f,
                "the client certificate {}: this machine's clock is behind (check NTP), or the \
                 certificate was not issued by this site",
                validity_words(self).unwrap_or_default()
            ),
            InboundRefusal::NotOurCa => f.write_str(
                "the client certificate was not issued by this site's CA (self-signed, or the \
                 token or link file is from another network, or from before this site was \
                 re-created): the dialing site must redeem a new token issued by this site",
            ),
            InboundRefusal::WrongPurpose => f.write_str(
                "the client certificate is not for client authentication: links present the \
                 certificate a token redemption returned",
            ),
            InboundRefusal::NoAlpn => f.write_str(
                "no common ALPN (links offer skiff-link/1, token redemptions skiff-grant/1 over \
                 TCP): not a skiff router or token client",
            ),
            InboundRefusal::NotTls => f.write_str(
                "not TLS: the client sent plaintext or another protocol to the link port",
            ),
            InboundRefusal::ClientDistrusts(alert) => write!(
                f,
                "the client aborted the handshake with TLS alert {alert:?}: it does not trust \
                 this router's certificate (it pins another CA or expects another site id): its \
                 token or link file is from another network, or from before this site was \
                 re-created; the dialing site must redeem a new token from this site"
            ),
            InboundRefusal::ClientAborted(why) => write!(f, "the client aborted: {why}"),
            InboundRefusal::Other(why) => write!(f, "TLS handshake failed: {why}"),
        }
    }
}

fn alert_of(code: impl Into<u64>) -> AlertDescription {
    AlertDescription::from((code.into() & 0xff) as u8)
}

/// UNIX seconds as RFC 3339 UTC.
fn utc(secs: u64) -> String {
    i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{secs} (UNIX)"))
}

/// A duration in its largest whole unit: `3 days`, `5 h`, `12 min`, `40 s`.
fn span(secs: u64) -> String {
    match secs {
        s if s >= 2 * 86_400 => format!("{} days", s / 86_400),
        s if s >= 2 * 3600 => format!("{} h", s / 3600),
        s if s >= 2 * 60 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn expected() -> SiteId {
        SiteId::from_bytes([0x3f; 16])
    }

    #[test]
    fn site_mismatch_names_both_sites() {
        let presented = SiteId::from_bytes([0x99; 16]);
        let err = rustls::Error::InvalidCertificate(rustls::CertificateError::Other(
            rustls::OtherError(Arc::new(CertError::SiteMismatch {
                presented,
                expected: expected(),
            })),
        ));
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, err.clone());
        let got = explain(&io, "127.0.0.1:4000", expected());
        assert_eq!(
            got.text(),
            "peer 127.0.0.1:4000 is not site 3f3f3f3f… named in the link (its certificate is \
             for site 99999999…); the endpoint now belongs to another site or the link points \
             at the wrong address"
        );
        // The same through QUIC, where only rustls's message survives.
        assert_eq!(
            explain_local_tls_failure(&err.to_string(), "127.0.0.1:4000", expected()),
            got
        );
    }

    #[test]
    fn peer_alerts_about_our_certificate_are_refusals() {
        let err = rustls::Error::AlertReceived(AlertDescription::UnknownCA);
        let got = explain(&err, "h:1", expected());
        assert!(got.is_refusal());
        assert!(
            got.text()
                .contains("refused this link: our link certificate was not issued by its CA"),
            "{got}"
        );
        let got = explain(
            &rustls::Error::AlertReceived(AlertDescription::BadCertificate),
            "h:1",
            expected(),
        );
        assert!(got.is_refusal());
        assert!(
            got.text().contains("rejected our link certificate"),
            "{got}"
        );
    }

    #[test]
    fn inbound_refusals_read_the_same_over_tls_and_quic() {
        use rustls::CertificateError as C;
        use rustls_pki_types::UnixTime;
        let at = |s| UnixTime::since_unix_epoch(std::time::Duration::from_secs(s));
        let cases = [
            C::ExpiredContext {
                time: at(1_795_656_084),
                not_after: at(1_795_569_684),
            },
            C::NotValidYetContext {
                time: at(1_795_656_084),
                not_before: at(1_795_742_484),
            },
            C::UnknownIssuer,
            C::InvalidPurpose,
        ];
        for c in cases {
            let alert = AlertDescription::from(c.clone());
            let err = rustls::Error::InvalidCertificate(c);
            // QUIC keeps only the alert and rustls's message.
            assert_eq!(
                InboundRefusal::from_alert_text(alert, &err.to_string()),
                InboundRefusal::from_rustls(&err),
                "{err}"
            );
        }
        let err = rustls::Error::NoApplicationProtocol;
        assert_eq!(
            InboundRefusal::from_alert_text(
                AlertDescription::NoApplicationProtocol,
                &err.to_string()
            ),
            InboundRefusal::NoAlpn
        );
    }

    #[test]
    fn an_expired_server_certificate_reads_the_same_over_tls_and_quic() {
        use rustls::CertificateError as C;
        use rustls_pki_types::UnixTime;
        let at = |s| UnixTime::since_unix_epoch(std::time::Duration::from_secs(s));
        for c in [
            C::ExpiredContext {
                time: at(1_795_656_084),
                not_after: at(1_795_569_684),
            },
            C::NotValidYetContext {
                time: at(1_795_656_084),
                not_before: at(1_795_742_484),
            },
        ] {
            let err = rustls::Error::InvalidCertificate(c);
            let over_tls = explain(&err, "h:1", expected());
            assert!(over_tls.is_refusal());
            assert!(
                over_tls.text().contains("2026-11-25T01:21:24Z (24 h ago)")
                    || over_tls
                        .text()
                        .contains("2026-11-27T01:21:24Z (24 h from now)"),
                "{over_tls}"
            );
            assert_eq!(
                explain_local_tls_failure(&err.to_string(), "h:1", expected()),
                over_tls
            );
        }
    }

    #[test]
    fn inbound_refusals_name_the_check_and_the_dates() {
        use rustls::CertificateError as C;
        use rustls_pki_types::UnixTime;
        let at = |s| UnixTime::since_unix_epoch(std::time::Duration::from_secs(s));
        // As tokio-rustls reports it: inside an io::Error.
        let expired = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(C::ExpiredContext {
                time: at(1_795_656_084),
                not_after: at(1_795_569_684),
            }),
        );
        assert_eq!(inbound_handshake_failure(&expired).check, "expired");
        assert_eq!(
            inbound_handshake_failure(&expired).reason,
            "the client certificate expired at 2026-11-25T01:21:24Z (24 h ago): the dialing site \
             renews it with skiff link renew there (an expired certificate renews too), or this \
             machine's clock is ahead"
        );
        let early = rustls::Error::InvalidCertificate(C::NotValidYetContext {
            time: at(1_795_656_084),
            not_before: at(1_795_742_484),
        });
        assert!(
            inbound_handshake_failure(&early).reason.starts_with(
                "the client certificate is not valid before 2026-11-27T01:21:24Z (24 h from now)"
            ),
            "{}",
            inbound_handshake_failure(&early)
        );
        let plaintext = rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType);
        assert!(
            inbound_handshake_failure(&plaintext)
                .reason
                .starts_with("not TLS")
        );
        assert_eq!(inbound_handshake_failure(&plaintext).check, "not-tls");
        let eof = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
        assert_eq!(
            inbound_handshake_failure(&eof).reason,
            "the client hung up during the TLS handshake"
        );
    }

    #[test]
    fn connection_refused_is_a_network_error() {
        let err = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let got = explain(&err, "h:1", expected());
        assert!(!got.is_refusal());
        assert!(got.text().starts_with("h:1: "), "{got}");
    }

    #[test]
    fn a_client_certificate_refused_as_expired_advises_renewing_it() {
        let said = cert_rejected_by_peer("127.0.0.1:1", "CertificateExpired");
        assert!(said.contains("skiff link renew"), "{said}");
        assert!(!said.contains("redeem a new token"), "{said}");
        let other = cert_rejected_by_peer("127.0.0.1:1", "UnknownCA");
        assert!(other.contains("redeem a new token"), "{other}");
    }
}
