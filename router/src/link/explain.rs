//! Turns a failed link attempt into words an operator understands, and decides whether the
//! failure is a refusal (the peer or our verifier said no: fix configuration) or a network
//! problem (retry and it may go away).

use std::error::Error as StdError;

use rustls::AlertDescription;
use skiff_certs::{CertError, SiteId};

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
    format!(
        "peer {endpoint} rejected our link certificate (TLS alert {alert}): it was not issued by \
         that site's CA, has expired, or the site's CA was re-created; redeem a new token from \
         that site"
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
            C::UnknownIssuer | C::BadSignature | C::BadEncoding => refused(format!(
                "peer {endpoint} presents a certificate not signed by the CA pinned for this \
                 link (the CA in the token): the site's CA was re-created or the address \
                 belongs to another site; redeem a new token"
            )),
            C::Expired
            | C::ExpiredContext { .. }
            | C::NotValidYet
            | C::NotValidYetContext { .. } => refused(format!(
                "peer {endpoint}'s certificate is expired or not yet valid: check both \
                     machines' clocks and the peer's router certificate"
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
        AttemptError::Refused(format!(
            "peer {endpoint} presents a certificate not signed by the CA pinned for this link \
             (the CA in the token): the site's CA was re-created or the address belongs to \
             another site; redeem a new token"
        ))
    } else if reason.contains("no application protocol") || reason.contains("NoApplicationProtocol")
    {
        AttemptError::Refused(wrong_protocol(endpoint))
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
            got.text().contains("rejected our link certificate"),
            "{got}"
        );
    }

    #[test]
    fn connection_refused_is_a_network_error() {
        let err = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let got = explain(&err, "h:1", expected());
        assert!(!got.is_refusal());
        assert!(got.text().starts_with("h:1: "), "{got}");
    }
}
