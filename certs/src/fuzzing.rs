//! The bodies of the `token_yaml` and `renewal_csr` (renewal and redemption CSRs) fuzz targets
//! (`fuzz/fuzz_targets/`), shared with the seed replay test (`certs/tests/fuzz_seeds.rs`) so
//! that `cargo test` checks the same properties on the committed seeds (`fuzz/seeds/<target>/`)
//! that the fuzzer checks on what it generates, and [`replay_seeds`], the replay itself, shared
//! by the seed tests of every crate.
//!
//! Panics when a property does not hold; not an API.

use std::path::Path;

use serde::Deserialize;

use crate::{AccessGrant, AccessToken, format_duration, parse_duration};

/// A moment to check grants against (2026-11-26 00:00:00 UTC): fixed, so a seed's outcome
/// never depends on the day the test runs.
const NOW_UNIX: i64 = 1_795_651_200;

/// Shortest code the leak check looks for: a shorter one may appear in a message by chance.
const MIN_CODE_LEN: usize = 8;

/// `spec.code` of any document, read without validating anything else.
#[derive(Deserialize)]
struct AnyCode {
    spec: Option<AnySpec>,
}

#[derive(Deserialize)]
struct AnySpec {
    code: Option<String>,
}

fn code_of(text: &str) -> Option<String> {
    serde_saphyr::from_str::<AnyCode>(text)
        .ok()?
        .spec?
        .code
        .filter(|c| c.len() >= MIN_CODE_LEN)
}

/// The error as a user or a log would see it: message and `Debug` (which adds the causes).
fn shown<E: std::fmt::Display + std::fmt::Debug>(e: &E) -> String {
    format!("{e} {e:?}")
}

/// The code of `text` is never part of what `parse` reports when it refuses `text`.
///
/// A message may hold the code's characters by chance (fixed wording, another field's value),
/// so a message that holds them counts as a leak only when it stops holding them once that
/// one occurrence of the code in `text` is replaced by other letters of the same length.
fn assert_error_hides_code<T, E>(text: &str, parse: impl Fn(&str) -> Result<T, E>)
where
    E: std::fmt::Display + std::fmt::Debug,
{
    let Some(code) = code_of(text) else { return };
    let Err(e) = parse(text) else { return };
    let message = shown(&e);
    if !message.contains(&code) || text.matches(code.as_str()).count() != 1 {
        return;
    }
    let filler = if code.starts_with('q') { "z" } else { "q" };
    let other = text.replacen(&code, &filler.repeat(code.len()), 1);
    if code_of(&other).as_deref() != Some(&filler.repeat(code.len())[..]) {
        return; // the one occurrence was not the code's value
    }
    let other_message = parse(&other).err().map(|e| shown(&e)).unwrap_or_default();
    assert!(
        other_message.contains(&code),
        "an error shows the secret code {code:?}: {message}"
    );
}

/// Target `token_yaml`: the input, as UTF-8 text, is read as an access token file, as an access
/// grant file and as a duration.
///
/// Checks: a token or grant that parses serializes to YAML that parses to the same value; its
/// `Debug` does not depend on the code; an error never shows the code; the grant's checks
/// never panic and it matches its own code; a duration that parses formats to text that
/// parses to the same duration.
#[doc(hidden)]
pub fn token_yaml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };

    if let Ok(token) = AccessToken::from_yaml(text) {
        let again = AccessToken::from_yaml(&token.to_yaml())
            .unwrap_or_else(|e| panic!("a parsed token does not parse once written: {e:?}"));
        assert_eq!(again, token, "token changed through YAML");
        token
            .spec
            .grant_address()
            .expect("a parsed token has a usable grant address");
        let mut recoded = token.clone();
        recoded.spec.code = format!("other-{}", token.spec.code);
        assert_eq!(
            format!("{recoded:?}"),
            format!("{token:?}"),
            "Debug shows the code"
        );
    }
    assert_error_hides_code(text, AccessToken::from_yaml);

    if let Ok(grant) = AccessGrant::from_yaml(text) {
        let again = AccessGrant::from_yaml(&grant.to_yaml())
            .unwrap_or_else(|e| panic!("a parsed grant does not parse once written: {e:?}"));
        assert_eq!(again, grant, "grant changed through YAML");
        assert!(grant.matches(&grant.spec.code));
        let now = time::OffsetDateTime::from_unix_timestamp(NOW_UNIX).unwrap();
        let _ = grant.check(now);
        let mut spent = grant.clone();
        spent.spend();
        assert_eq!(
            spent.spec.redemptions_made,
            grant.spec.redemptions_made.saturating_add(1)
        );
        let mut recoded = grant.clone();
        recoded.spec.code = format!("other-{}", grant.spec.code);
        assert_eq!(
            format!("{recoded:?}"),
            format!("{grant:?}"),
            "Debug shows the code"
        );
    }
    assert_error_hides_code(text, AccessGrant::from_yaml);

    if let Ok(d) = parse_duration(text) {
        let formatted = format_duration(d);
        assert_eq!(
            parse_duration(&formatted).ok(),
            Some(d),
            "{text:?} formats as {formatted:?}"
        );
    }
}

/// Target `renewal_csr`: the CSR of a renewal or a redemption request, which the grant
/// service reads from anyone who reaches the link port ([`crate::csr_binding`], and
/// [`crate::renewal_csr_binding`] on top of it).
///
/// Checks: no panic; the same input gives the same answer; an accepted CSR is a PEM CSR; a CSR
/// passes as a renewal exactly when it reads as one (so a redemption CSR, bound or from an older
/// skiff, never passes as a renewal, and a renewal CSR never as a redemption); an error message
/// stays short (it never echoes the input).
#[doc(hidden)]
pub fn renewal_csr(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let first = crate::csr_binding(text);
    let again = crate::csr_binding(text);
    match (&first, &again) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a, b, "the same CSR bound to two answers");
            assert!(
                text.contains("BEGIN CERTIFICATE REQUEST"),
                "accepted without a PEM CSR"
            );
        }
        (Err(a), Err(b)) => {
            let (a, b) = (a.to_string(), b.to_string());
            assert_eq!(a, b, "the same CSR refused with two reasons");
            assert!(
                a.len() <= 512,
                "a refusal echoes its input: {} bytes",
                a.len()
            );
        }
        _ => panic!("the same CSR accepted once and refused once"),
    }
    let renewal = crate::renewal_csr_binding(text);
    match (&first, &renewal) {
        (Ok(crate::CsrBinding::Renewal { issuer, at }), Ok(r)) => {
            assert_eq!(&(*issuer, *at), r, "a renewal CSR read two ways")
        }
        (Ok(crate::CsrBinding::Renewal { .. }), Err(e)) => {
            panic!("a renewal CSR refused as a renewal: {e}")
        }
        (_, Ok(r)) => panic!("a CSR that is no renewal CSR passed as one, bound to {r:?}"),
        (_, Err(e)) => {
            let e = e.to_string();
            assert!(
                e.len() <= 512,
                "a refusal echoes its input: {} bytes",
                e.len()
            );
        }
    }
}

/// Runs `check` on every file of `<seeds>/<target>/` (the replay tests of every crate pass
/// `fuzz/seeds`), naming each seed that fails; fails
/// when the folder is missing or empty, so the replay can never pass by testing nothing.
#[doc(hidden)]
pub fn replay_seeds(seeds: &Path, target: &str, check: fn(&[u8])) {
    let dir = seeds.join(target);
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| {
        panic!(
            "seed folder {} of fuzz target {target} is missing ({e}); it must hold the target's seeds",
            dir.display()
        )
    });
    let mut seeds: Vec<std::path::PathBuf> = entries
        .map(|e| e.expect("seed folder entry").path())
        .filter(|p| p.is_file())
        .collect();
    seeds.sort();
    assert!(
        !seeds.is_empty(),
        "seed folder {} is empty: run the fuzz target and add seeds (docs/fuzzing.md)",
        dir.display()
    );
    let mut failed = Vec::new();
    for seed in &seeds {
        let data =
            std::fs::read(seed).unwrap_or_else(|e| panic!("reading {}: {e}", seed.display()));
        if std::panic::catch_unwind(|| check(&data)).is_err() {
            failed.push(seed.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} seeds of {target} fail their check (reproduce with `cargo fuzz run -s none {target} SEED`): {failed:#?}",
        failed.len(),
        seeds.len()
    );
}
