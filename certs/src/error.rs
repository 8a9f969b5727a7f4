//! [`CertError`]: what went wrong in this crate, grouped by who is at fault.
//!
//! Each message describes this crate's layer only; the underlying cause (rcgen, rustls, PEM
//! parsing) is attached as `#[source]` so a front end can print the chain.

use std::error::Error as StdError;

use crate::SiteId;

/// A boxed underlying cause.
pub type BoxedCause = Box<dyn StdError + Send + Sync + 'static>;

/// Errors from the certs crate.
///
/// `Debug` prints the message followed by its source chain (`message: cause: cause`), because
/// rustls renders a verifier's error with `Debug` inside its own message.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    // ---- bad input from the user (files, flags, tokens) ----
    /// A user-supplied value (token file, grant file, site id, duration, host name) is malformed.
    ///
    /// `what` names the thing ("access token", "site id"), `reason` says what is wrong in the
    /// user's terms. Never contains a token's code.
    #[error("invalid {what}: {reason}")]
    InvalidInput {
        /// The kind of input, e.g. "access token".
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// PEM text (certificate or key) could not be read.
    #[error("{what} is not usable PEM: {reason}")]
    Pem {
        /// Which PEM item, e.g. "router certificate".
        what: &'static str,
        /// What is wrong with it.
        reason: String,
        /// The parser's error, if any.
        #[source]
        source: Option<BoxedCause>,
    },

    // ---- the peer misbehaved ----
    /// A linking peer's certificate signing request was refused.
    #[error("certificate signing request refused: {reason}")]
    InvalidCsr {
        /// Why it was refused.
        reason: String,
        /// rcgen's error, if the CSR failed to parse or verify.
        #[source]
        source: Option<rcgen::Error>,
    },
    /// A peer's certificate does not carry exactly one usable skiff site identity.
    #[error("peer certificate has no usable site identity: {reason}")]
    PeerIdentity {
        /// What is missing or ambiguous.
        reason: String,
    },
    /// The peer's certificate chains to the pinned CA but names another site.
    #[error("certificate is for site {presented}, but the token/link expects site {expected}")]
    SiteMismatch {
        /// The site id in the presented certificate.
        presented: SiteId,
        /// The site id the token or link was made for.
        expected: SiteId,
    },

    // ---- local failures ----
    /// Generating a key or signing a certificate failed locally.
    #[error("could not {action}")]
    Crypto {
        /// What was being done, e.g. "sign the router certificate".
        action: &'static str,
        /// The cause.
        #[source]
        source: rcgen::Error,
    },
    /// Building a rustls configuration failed (for instance the key does not match the
    /// certificate, or the CA cannot be used as a trust anchor).
    #[error("could not build the {what} TLS configuration")]
    TlsConfig {
        /// Which configuration.
        what: &'static str,
        /// The cause.
        #[source]
        source: BoxedCause,
    },
    /// The system random number generator failed.
    #[error("the system random number generator failed")]
    Random,
}

impl std::fmt::Debug for CertError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")?;
        let mut source = StdError::source(self);
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

impl CertError {
    pub(crate) fn input(what: &'static str, reason: impl Into<String>) -> Self {
        CertError::InvalidInput {
            what,
            reason: reason.into(),
        }
    }

    pub(crate) fn pem(what: &'static str, reason: impl Into<String>) -> Self {
        CertError::Pem {
            what,
            reason: reason.into(),
            source: None,
        }
    }

    pub(crate) fn crypto(action: &'static str) -> impl FnOnce(rcgen::Error) -> Self {
        move |source| CertError::Crypto { action, source }
    }

    /// Is this the user's fault (bad file, flag or token)?
    pub fn is_user_input(&self) -> bool {
        matches!(self, CertError::InvalidInput { .. } | CertError::Pem { .. })
    }

    /// Did the remote peer misbehave (bad CSR, wrong or missing identity)?
    pub fn is_peer_fault(&self) -> bool {
        matches!(
            self,
            CertError::InvalidCsr { .. }
                | CertError::PeerIdentity { .. }
                | CertError::SiteMismatch { .. }
        )
    }
}
