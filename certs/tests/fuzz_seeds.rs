//! Replays the committed seeds of the `token_yaml` and `renewal_csr` fuzz targets
//! (`fuzz/seeds/<target>/`) through the same checks the targets run (`skiff_certs::fuzzing`).

use std::fs;
use std::path::Path;

/// Replays `fuzz/seeds/<target>/` through `check` ([`skiff_certs::fuzzing::replay_seeds`]).
fn replay(target: &str, check: fn(&[u8])) {
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds");
    skiff_certs::fuzzing::replay_seeds(&seeds, target, check);
}

#[test]
fn token_yaml_seeds_hold() {
    replay("token_yaml", skiff_certs::fuzzing::token_yaml);
}

/// The token and grants `skiff token issue` wrote (copied into the seeds) still parse, so a
/// parser that came to refuse everything could not pass the replay by refusing the seeds too.
#[test]
fn files_written_by_skiff_still_parse() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/token_yaml");
    let read = |name: &str| fs::read_to_string(dir.join(name)).unwrap();
    let token = skiff_certs::AccessToken::from_yaml(&read("token-issued-by-skiff.yaml")).unwrap();
    assert_eq!(token.spec.link_cost, 5);
    for grant in ["grant-fresh.yaml", "grant-redeemed-once.yaml"] {
        skiff_certs::AccessGrant::from_yaml(&read(grant)).unwrap();
    }
}

#[test]
fn renewal_csr_seeds_hold() {
    replay("renewal_csr", skiff_certs::fuzzing::renewal_csr);
}

/// A real renewal CSR among the seeds (made by openssl) is accepted with its binding, and a
/// redemption CSR is not: the replay cannot pass with a parser that refuses everything.
#[test]
fn a_real_renewal_csr_among_the_seeds_binds_and_a_redemption_csr_does_not() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/renewal_csr");
    let read = |name: &str| fs::read_to_string(dir.join(name)).unwrap();
    let (issuer, at) = skiff_certs::renewal_csr_binding(&read("renewal.csr")).unwrap();
    assert_eq!(issuer.to_string(), "7f6a5924b77c4507275dd3090d58d0a3");
    assert_eq!(at, 1_795_651_200);
    assert!(skiff_certs::renewal_csr_binding(&read("redemption.csr")).is_err());
    assert!(skiff_certs::renewal_csr_binding(&read("bad-signature.csr")).is_err());
}

/// A real bound redemption CSR among the seeds (made by openssl) reads with its binding and is
/// no renewal CSR; the older redeemer's CSR reads as unbound; a renewal CSR is no redemption
/// one; a redemption subject without a valid time is refused.
#[test]
fn a_real_redemption_csr_among_the_seeds_binds_and_no_kind_passes_as_the_other() {
    use skiff_certs::{CsrBinding, csr_binding, renewal_csr_binding};
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/renewal_csr");
    let read = |name: &str| fs::read_to_string(dir.join(name)).unwrap();
    let bound = read("redemption-bound.csr");
    let CsrBinding::Redemption { issuer, at } = csr_binding(&bound).unwrap() else {
        panic!("redemption-bound.csr does not read as a redemption CSR")
    };
    assert_eq!(issuer.to_string(), "7f6a5924b77c4507275dd3090d58d0a3");
    assert_eq!(at, 1_795_651_200);
    assert!(renewal_csr_binding(&bound).is_err());
    assert_eq!(
        csr_binding(&read("redemption.csr")).unwrap(),
        CsrBinding::Unbound
    );
    assert!(matches!(
        csr_binding(&read("renewal.csr")).unwrap(),
        CsrBinding::Renewal { .. }
    ));
    // Refused for what is wrong with them, not for a bad signature or a missing subject.
    let cases = [
        (
            "redemption-no-time.csr",
            "its subject does not name the issuing site and a time",
        ),
        ("redemption-bad-time.csr", "its subject names no valid time"),
    ];
    for (bad, why) in cases {
        match csr_binding(&read(bad)) {
            Err(e) => assert!(e.to_string().contains(why), "{bad}: {e}"),
            Ok(b) => panic!("{bad} was accepted as {b:?}"),
        }
    }
    // The older skiff's unbound CSR is refused as a renewal with its own words.
    let e = renewal_csr_binding(&read("redemption.csr")).unwrap_err();
    assert!(e.to_string().contains("binds neither"), "{e}");
}
