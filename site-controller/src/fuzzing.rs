//! The bodies of the `resource_yaml` and `grant_json` fuzz targets (`fuzz/fuzz_targets/`),
//! shared with the seed replay test (`site-controller/tests/fuzz_seeds.rs`) so that
//! `cargo test` checks the same properties on the committed seeds (`fuzz/seeds/<target>/`)
//! that the fuzzer checks on what it generates.
//!
//! Each function takes arbitrary bytes and panics when a property does not hold; not an API.

use std::fmt::Debug;
use std::path::Path;

use crate::grant::{RedeemRequest, RedeemResponse, RenewRequest, RenewResponse};
use crate::resources::{
    Connector, Link, LinkedSite, Listener, Resource, Site, from_yaml, to_yaml, validate_name,
};
use crate::services::{connector_spec, listener_spec};

/// The file name the resource errors must name.
const FILE: &str = "fuzzed-resource.yaml";

/// Reads `text` as the folder reads a resource of type `R`. What parses must be written back
/// to YAML that parses to the same value; what does not must be refused with the file named.
fn resource_roundtrip<R: Resource + PartialEq + Debug>(text: &str) -> Option<R> {
    let path = Path::new(FILE);
    let resource = match from_yaml::<R>(text, path) {
        Ok(r) => r,
        Err(e) => {
            let message = e.to_string();
            assert!(
                message.contains(FILE),
                "error does not name the file: {message}"
            );
            return None;
        }
    };
    let written = to_yaml(&resource);
    let again = from_yaml::<R>(&written, path).unwrap_or_else(|e| {
        panic!(
            "a parsed {} does not parse once written: {e}\n{written}",
            R::KIND
        )
    });
    assert_eq!(again, resource, "{} changed through YAML", R::KIND);
    Some(resource)
}

/// Target `resource_yaml`: the input, as UTF-8 text, is read as each resource of the site
/// folder (Site, Link, LinkedSite, Listener, Connector), the way the site controller loads
/// `site.yaml`, `links/`, `peers/`, `listeners/` and `connectors/`, and a Listener or Connector
/// that parses is turned into the router's spec as a running site does.
///
/// Checks: a resource that parses is written back to YAML that parses to the same value; at
/// most one kind accepts a text; a refusal names the file; a connector spec that is accepted
/// has a port and a host; a name [`validate_name`] accepts is a plain file name.
#[doc(hidden)]
pub fn resource_yaml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let kinds = [
        resource_roundtrip::<Site>(text).is_some(),
        resource_roundtrip::<Link>(text).is_some(),
        resource_roundtrip::<LinkedSite>(text).is_some(),
        resource_roundtrip::<Listener>(text)
            .map(|l| listener_spec(&l))
            .is_some(),
        resource_roundtrip::<Connector>(text)
            .map(|c| {
                if let Ok(spec) = connector_spec(&c) {
                    assert!(spec.port != 0 && !spec.host.is_empty(), "{spec:?}");
                }
            })
            .is_some(),
    ];
    assert!(
        kinds.iter().filter(|&&k| k).count() <= 1,
        "one text parsed as several kinds: {kinds:?}"
    );
    for line in text.lines().take(16) {
        if validate_name("fuzzed name", line).is_ok() {
            let path = Path::new(line);
            assert!(
                path.file_name().is_some_and(|f| f == line),
                "{line:?} is not a plain file name"
            );
        }
    }
}

/// JSON of `value`, which always serializes.
fn json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("grant bodies always serialize")
}

/// Target `grant_json`: the input is the body of a redemption or renewal request (what the
/// grant service reads from anyone who reaches the link port) and of a redemption or renewal
/// response (what the redeeming or renewing site reads from the issuer).
///
/// Checks: a body that parses serializes to JSON that parses and serializes to the same bytes;
/// a request's `Debug` (what logs show) does not depend on its code.
#[doc(hidden)]
pub fn grant_json(data: &[u8]) {
    if let Ok(request) = serde_json::from_slice::<RedeemRequest>(data) {
        let bytes = json(&request);
        let again: RedeemRequest = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("a parsed request does not parse once written: {e}"));
        assert_eq!(json(&again), bytes, "request changed through JSON");
        let shown = format!("{request:?}");
        let recoded = RedeemRequest {
            code: format!("other-{}", request.code),
            ..again
        };
        assert_eq!(format!("{recoded:?}"), shown, "Debug shows the code");
    }
    if let Ok(response) = serde_json::from_slice::<RedeemResponse>(data) {
        let bytes = json(&response);
        let again: RedeemResponse = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("a parsed response does not parse once written: {e}"));
        assert_eq!(json(&again), bytes, "response changed through JSON");
    }
    if let Ok(request) = serde_json::from_slice::<RenewRequest>(data) {
        let bytes = json(&request);
        let again: RenewRequest = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!("a parsed renewal request does not parse once written: {e}")
        });
        assert_eq!(json(&again), bytes, "renewal request changed through JSON");
    }
    if let Ok(response) = serde_json::from_slice::<RenewResponse>(data) {
        let bytes = json(&response);
        let again: RenewResponse = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!("a parsed renewal response does not parse once written: {e}")
        });
        assert_eq!(json(&again), bytes, "renewal response changed through JSON");
    }
}
