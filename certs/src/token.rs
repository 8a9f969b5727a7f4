//! Access tokens and grants, the YAML resources behind `skiff token issue` / `skiff token redeem`.
//!
//! An [`AccessGrant`] stays at the issuing site: the secret code, its expiry and how many
//! redemptions it allows. The matching [`AccessToken`] is the file handed to the other site: the
//! grant URL, the same code, the issuer's CA and site id. Redeeming sends a CSR plus the code to
//! the grant URL; the issuer checks the grant ([`AccessGrant::matches`],
//! [`AccessGrant::check`]), signs, then [`AccessGrant::spend`]s one redemption.
//!
//! Parsing errors never contain the code: a token file is a secret, and error messages end up
//! in logs and bug reports.

use std::fmt;
use std::time::Duration;

use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;

use crate::ca::first_cert;
use crate::encode::base64url;
use crate::{CertError, SiteId, peer_site_id};

/// The `apiVersion` of every skiff resource this crate reads and writes.
pub const API_VERSION: &str = "skiff.io/v1alpha1";
/// `kind` of an [`AccessToken`].
pub const ACCESS_TOKEN_KIND: &str = "AccessToken";
/// `kind` of an [`AccessGrant`].
pub const ACCESS_GRANT_KIND: &str = "AccessGrant";

/// Resource metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metadata {
    /// The resource's name (the grant's and token's name).
    pub name: String,
}

/// The file a site hands to another so that it can link: `kind: AccessToken`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessToken {
    /// Always [`API_VERSION`].
    pub api_version: String,
    /// Always `"AccessToken"`.
    pub kind: String,
    /// Name (same as the grant's).
    pub metadata: Metadata,
    /// The contents.
    pub spec: AccessTokenSpec,
}

/// What an [`AccessToken`] carries.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessTokenSpec {
    /// `https://HOST:PORT` of the issuer's link port. The grant is HTTP/1.1 over TLS with ALPN
    /// `skiff-grant/1` there.
    pub url: String,
    /// The secret redemption code.
    pub code: String,
    /// The issuer's CA certificate, PEM: the only CA the redeemer trusts for this issuer.
    pub ca: String,
    /// The issuer's site id: the identity its certificate must carry.
    pub site_id: SiteId,
    /// Cost of the link this token creates.
    pub link_cost: u32,
    /// When the grant expires, RFC 3339 (informational: the issuer decides).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

impl fmt::Debug for AccessTokenSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessTokenSpec")
            .field("url", &self.url)
            .field("code", &"<redacted>")
            .field("site_id", &self.site_id)
            .field("link_cost", &self.link_cost)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl AccessTokenSpec {
    /// Host (brackets removed from an IPv6 literal) and port of [`url`](Self::url).
    pub fn grant_address(&self) -> Result<(String, u16), CertError> {
        parse_https_url(&self.url).map_err(|r| CertError::input("access token", r))
    }
}

impl AccessToken {
    /// The token as a YAML document.
    pub fn to_yaml(&self) -> String {
        to_yaml(self)
    }

    /// Parses and validates a token file. Errors say what is wrong in the user's terms: not
    /// YAML, wrong `kind` or `apiVersion`, a missing or unknown field (named), `url` not
    /// `https://host:port`, `ca` not a PEM CA certificate (or of another site), a malformed site
    /// id. The code is never part of an error.
    pub fn from_yaml(text: &str) -> Result<Self, CertError> {
        Self::read_yaml(text).map_err(|e| redact_error(e, text))
    }

    fn read_yaml(text: &str) -> Result<Self, CertError> {
        const WHAT: &str = "access token";
        let token: AccessToken = parse_resource(text, WHAT, ACCESS_TOKEN_KIND)?;
        let spec = &token.spec;
        if spec.code.trim().is_empty() {
            return Err(CertError::input(WHAT, "spec.code is empty"));
        }
        parse_https_url(&spec.url).map_err(|r| CertError::input(WHAT, r))?;
        let ca = first_cert("CA certificate", &spec.ca)
            .map_err(|_| CertError::input(WHAT, "spec.ca is not a PEM certificate"))?;
        let (_, x509) = x509_parser::parse_x509_certificate(&ca)
            .map_err(|_| CertError::input(WHAT, "spec.ca is not a valid X.509 certificate"))?;
        let is_ca = x509
            .basic_constraints()
            .ok()
            .flatten()
            .is_some_and(|bc| bc.value.ca);
        if !is_ca {
            return Err(CertError::input(WHAT, "spec.ca is not a CA certificate"));
        }
        if let Ok(ca_site) = peer_site_id(&ca)
            && ca_site != spec.site_id
        {
            return Err(CertError::input(
                WHAT,
                format!(
                    "spec.ca belongs to site {ca_site}, but spec.siteId says {}",
                    spec.site_id
                ),
            ));
        }
        Ok(token)
    }
}

/// The issuing site's record of a token: `kind: AccessGrant`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessGrant {
    /// Always [`API_VERSION`].
    pub api_version: String,
    /// Always `"AccessGrant"`.
    pub kind: String,
    /// Name (same as the token's).
    pub metadata: Metadata,
    /// The contents.
    pub spec: AccessGrantSpec,
}

/// What an [`AccessGrant`] records.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessGrantSpec {
    /// The secret redemption code.
    pub code: String,
    /// The window the grant was issued with, e.g. `"15m"` (for messages).
    pub expiration_window: String,
    /// When it expires, RFC 3339 UTC.
    pub expires_at: String,
    /// How many redemptions it allows.
    pub redemptions_allowed: u32,
    /// How many have succeeded.
    pub redemptions_made: u32,
    /// Cost of links made with it.
    pub link_cost: u32,
}

impl fmt::Debug for AccessGrantSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessGrantSpec")
            .field("code", &"<redacted>")
            .field("expiration_window", &self.expiration_window)
            .field("expires_at", &self.expires_at)
            .field("redemptions_allowed", &self.redemptions_allowed)
            .field("redemptions_made", &self.redemptions_made)
            .field("link_cost", &self.link_cost)
            .finish()
    }
}

impl AccessGrant {
    /// A new grant with a fresh code, expiring `window` after `now`.
    pub fn new(
        name: &str,
        window: Duration,
        redemptions_allowed: u32,
        link_cost: u32,
        now: OffsetDateTime,
    ) -> Self {
        let now = now.to_offset(time::UtcOffset::UTC);
        let window_t = time::Duration::try_from(window).unwrap_or(time::Duration::MAX);
        let expires = now
            .checked_add(window_t)
            .unwrap_or(time::PrimitiveDateTime::MAX.assume_utc());
        let expires = expires.replace_nanosecond(0).unwrap_or(expires);
        AccessGrant {
            api_version: API_VERSION.into(),
            kind: ACCESS_GRANT_KIND.into(),
            metadata: Metadata { name: name.into() },
            spec: AccessGrantSpec {
                code: generate_code(),
                expiration_window: format_duration(window),
                expires_at: expires.format(&Rfc3339).unwrap_or_default(),
                redemptions_allowed,
                redemptions_made: 0,
                link_cost,
            },
        }
    }

    /// The grant as a YAML document.
    pub fn to_yaml(&self) -> String {
        to_yaml(self)
    }

    /// Parses and validates a grant file (same error style as [`AccessToken::from_yaml`]).
    pub fn from_yaml(text: &str) -> Result<Self, CertError> {
        Self::read_yaml(text).map_err(|e| redact_error(e, text))
    }

    fn read_yaml(text: &str) -> Result<Self, CertError> {
        const WHAT: &str = "access grant";
        let grant: AccessGrant = parse_resource(text, WHAT, ACCESS_GRANT_KIND)?;
        if grant.spec.code.trim().is_empty() {
            return Err(CertError::input(WHAT, "spec.code is empty"));
        }
        OffsetDateTime::parse(&grant.spec.expires_at, &Rfc3339).map_err(|_| {
            CertError::input(
                WHAT,
                format!(
                    "spec.expiresAt {:?} is not an RFC 3339 time",
                    grant.spec.expires_at
                ),
            )
        })?;
        parse_duration(&grant.spec.expiration_window)
            .map_err(|e| CertError::input(WHAT, format!("spec.expirationWindow: {e}")))?;
        Ok(grant)
    }

    /// Is `code` this grant's code? Constant time in the code's content.
    pub fn matches(&self, code: &str) -> bool {
        codes_match(&self.spec.code, code)
    }

    /// May the grant be redeemed at `now`? Changes nothing.
    pub fn check(&self, now: OffsetDateTime) -> Result<(), GrantRefusal> {
        let expired = |expired_at: String| GrantRefusal::Expired {
            expired_at,
            window: self.spec.expiration_window.clone(),
        };
        match OffsetDateTime::parse(&self.spec.expires_at, &Rfc3339) {
            Ok(at) if now < at => {}
            Ok(at) => return Err(expired(human_time(at))),
            Err(_) => return Err(expired(self.spec.expires_at.clone())),
        }
        if self.spec.redemptions_made >= self.spec.redemptions_allowed {
            return Err(GrantRefusal::UsedUp {
                allowed: self.spec.redemptions_allowed,
            });
        }
        Ok(())
    }

    /// Spends one redemption. Call only after the CSR was signed successfully.
    pub fn spend(&mut self) {
        self.spec.redemptions_made = self.spec.redemptions_made.saturating_add(1);
    }
}

/// Why a grant refused a redemption. The messages are shown to the redeeming user.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GrantRefusal {
    /// The grant's window has passed.
    #[error(
        "token expired at {expired_at} ({window} window); issue a new one with: skiff token issue"
    )]
    Expired {
        /// When it expired, e.g. `2026-11-03 12:03:11 UTC`.
        expired_at: String,
        /// The window it was issued with, e.g. `15m`.
        window: String,
    },
    /// Every allowed redemption has been made.
    #[error(
        "token already redeemed ({allowed} of {allowed} redemptions used); issue a new one with: skiff token issue"
    )]
    UsedUp {
        /// How many redemptions were allowed.
        allowed: u32,
    },
    /// No grant has this code.
    #[error(
        "token code not recognised by this site (tampered, revoked, or issued by another site)"
    )]
    UnknownCode,
}

/// A fresh redemption code: 192 random bits as 32 URL-safe base64 characters.
///
/// # Panics
///
/// If the operating system's random number generator fails.
pub fn generate_code() -> String {
    let mut b = [0u8; 24];
    SystemRandom::new()
        .fill(&mut b)
        .expect("the system random number generator failed");
    base64url(&b)
}

/// Are two codes equal? Constant time over the bytes (the length is not secret).
pub fn codes_match(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let diff = a
        .iter()
        .zip(b)
        .fold(0u8, |acc, (x, y)| std::hint::black_box(acc | (x ^ y)));
    diff == 0
}

/// Parses a duration such as `90s`, `15m`, `2h`, `1d` or `1h30m` (units `d`, `h`, `m`, `s`).
pub fn parse_duration(s: &str) -> Result<Duration, CertError> {
    const WHAT: &str = "duration";
    const HINT: &str = "use a number and a unit (s, m, h, d), e.g. 90s, 15m, 1h30m";
    let text = s.trim();
    if text.is_empty() {
        return Err(CertError::input(WHAT, format!("empty; {HINT}")));
    }
    let mut total: u64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(CertError::input(
                WHAT,
                format!("{text:?}: expected a number at {rest:?}; {HINT}"),
            ));
        }
        let (number, after) = rest.split_at(digits);
        let mut chars = after.chars();
        let unit = match chars.next() {
            Some('s') => 1,
            Some('m') => 60,
            Some('h') => 3600,
            Some('d') => 86_400,
            Some(c) => {
                return Err(CertError::input(
                    WHAT,
                    format!("{text:?}: unknown unit {c:?}; {HINT}"),
                ));
            }
            None => {
                return Err(CertError::input(
                    WHAT,
                    format!("{text:?}: missing unit after {number}; {HINT}"),
                ));
            }
        };
        let value = number
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(unit))
            .and_then(|n| total.checked_add(n))
            .ok_or_else(|| CertError::input(WHAT, format!("{text:?} is too long")))?;
        total = value;
        rest = chars.as_str();
    }
    Ok(Duration::from_secs(total))
}

/// Formats a duration the way [`parse_duration`] reads it, e.g. `15m`, `1h30m`, `1d`; `0s` for
/// zero. Fractions of a second are dropped.
pub fn format_duration(d: Duration) -> String {
    let mut secs = d.as_secs();
    if secs == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, len) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if secs >= len {
            out.push_str(&format!("{}{unit}", secs / len));
            secs %= len;
        }
    }
    out
}

/// `2026-11-03 12:03:11 UTC`.
fn human_time(t: OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .format(format_description!(
            "[year]-[month]-[day] [hour]:[minute]:[second] UTC"
        ))
        .unwrap_or_else(|_| t.to_string())
}

fn to_yaml<T: Serialize>(value: &T) -> String {
    serde_saphyr::to_string(value).expect("plain resource structs always serialize to YAML")
}

/// The fields every resource starts with, read leniently to report a wrong kind before any
/// field-level error.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Header {
    api_version: Option<String>,
    kind: Option<String>,
}

/// Parses a resource of `kind`, checking `kind` and `apiVersion` first.
fn parse_resource<T: serde::de::DeserializeOwned>(
    text: &str,
    what: &'static str,
    kind: &str,
) -> Result<T, CertError> {
    let options = serde_saphyr::options! { with_snippet: false };
    let header: Header =
        serde_saphyr::from_str_with_options(text, options.clone()).map_err(|e| {
            CertError::input(
                what,
                format!(
                    "not a YAML {kind} resource ({})",
                    redact(&e.to_string(), text)
                ),
            )
        })?;
    match header.kind.as_deref() {
        Some(k) if k == kind => {}
        Some(other) => {
            return Err(CertError::input(
                what,
                format!("kind is {other:?}, expected {kind:?}"),
            ));
        }
        None => return Err(CertError::input(what, "missing field `kind`")),
    }
    match header.api_version.as_deref() {
        Some(API_VERSION) => {}
        Some(other) => {
            return Err(CertError::input(
                what,
                format!("apiVersion is {other:?}; this skiff reads {API_VERSION:?}"),
            ));
        }
        None => return Err(CertError::input(what, "missing field `apiVersion`")),
    }
    serde_saphyr::from_str_with_options(text, options)
        .map_err(|e| CertError::input(what, redact(&e.to_string(), text)))
}

/// `spec.code` of `text` read leniently (aliases resolved, every other field ignored).
fn lenient_code(text: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Doc {
        spec: Option<Spec>,
    }
    #[derive(Deserialize)]
    struct Spec {
        code: Option<String>,
    }
    let options = serde_saphyr::options! { with_snippet: false };
    serde_saphyr::from_str_with_options::<Doc>(text, options)
        .ok()?
        .spec?
        .code
}

/// `e` with the code of `text` taken out of its reason: a YAML alias can make the code the
/// value of another field, which a message may quote (`expiresAt: *code`).
fn redact_error(e: CertError, text: &str) -> CertError {
    match e {
        CertError::InvalidInput { what, reason } => CertError::InvalidInput {
            what,
            reason: redact(&reason, text),
        },
        other => other,
    }
}

/// Removes from `message` any value of a `code:` key found in `text`, and the value of
/// `spec.code` as YAML reads it, so that an error quoting the input cannot leak the secret.
fn redact(message: &str, text: &str) -> String {
    let mut out = message.to_owned();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        if key.trim().trim_matches(['"', '\'']) != "code" {
            continue;
        }
        let value = value.trim().trim_matches(['"', '\'']);
        if value.len() >= 4 {
            out = out.replace(value, "<redacted>");
        }
    }
    if let Some(code) = lenient_code(text).filter(|c| c.len() >= 4) {
        out = out.replace(&code, "<redacted>");
    }
    out
}

/// `https://HOST:PORT` → (host, port); the error says what is wrong.
fn parse_https_url(url: &str) -> Result<(String, u16), String> {
    const SHAPE: &str = "spec.url must look like https://HOST:PORT";
    let Some(rest) = url.strip_prefix("https://") else {
        return Err(format!("{SHAPE} (got {url:?}: not https://)"));
    };
    if rest.contains(['/', '?', '#', '@']) {
        return Err(format!("{SHAPE} with no path (got {url:?})"));
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("{SHAPE} (got {url:?}: unclosed '[')"))?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("{SHAPE} (got {url:?}: bad IPv6 address)"));
        }
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| format!("{SHAPE} (got {url:?}: no port)"))?;
        (host, port)
    } else {
        rest.rsplit_once(':')
            .ok_or_else(|| format!("{SHAPE} (got {url:?}: no port)"))?
    };
    if host.is_empty() || (host.contains(':') && !rest.starts_with('[')) {
        return Err(format!("{SHAPE} (got {url:?}: bad host)"));
    }
    match port.parse::<u16>() {
        Ok(p) if p != 0 => Ok((host.to_owned(), p)),
        _ => Err(format!("{SHAPE} (got {url:?}: bad port)")),
    }
}

#[cfg(test)]
mod tests;
