//! Replays the committed seeds of the site controller's fuzz targets (`fuzz/seeds/<target>/`)
//! through the same checks the targets run (`skiff_site_controller::fuzzing`).

use std::fs;
use std::path::Path;

use skiff_site_controller::fuzzing;
use skiff_site_controller::grant::{RedeemRequest, RedeemResponse, RenewRequest, RenewResponse};
use skiff_site_controller::resources::{Connector, Link, LinkedSite, Listener, Site, from_yaml};

/// Replays `fuzz/seeds/<target>/` through `check` ([`skiff_certs::fuzzing::replay_seeds`]).
fn replay(target: &str, check: fn(&[u8])) {
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds");
    skiff_certs::fuzzing::replay_seeds(&seeds, target, check);
}

#[test]
fn resource_yaml_seeds_hold() {
    replay("resource_yaml", fuzzing::resource_yaml);
}

#[test]
fn grant_json_seeds_hold() {
    replay("grant_json", fuzzing::grant_json);
}

/// The resources and grant bodies skiff wrote (copied into the seeds) still parse, so a parser
/// that came to refuse everything could not pass the replay by refusing the seeds too.
#[test]
fn files_written_by_skiff_still_parse() {
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds");
    let read = |name: &str| fs::read_to_string(seeds.join(name)).unwrap();
    let parse = |name: &str| {
        let path = seeds.join(name);
        let text = read(name);
        match name
            .rsplit('/')
            .next()
            .unwrap()
            .split(['-', '.'])
            .next()
            .unwrap()
        {
            "site" => from_yaml::<Site>(&text, &path).map(|_| ()),
            "link" => from_yaml::<Link>(&text, &path).map(|_| ()),
            "linked" => from_yaml::<LinkedSite>(&text, &path).map(|_| ()),
            "listener" => from_yaml::<Listener>(&text, &path).map(|_| ()),
            "connector" => from_yaml::<Connector>(&text, &path).map(|_| ()),
            other => panic!("no resource kind for seed prefix {other}"),
        }
        .unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    for name in [
        "site-link-access.yaml",
        "site-edge.yaml",
        "link.yaml",
        "linked-site.yaml",
        "listener-http2.yaml",
        "listener-tcp.yaml",
        "listener-weighted.yaml",
        "connector.yaml",
    ] {
        parse(&format!("resource_yaml/{name}"));
    }
    let request: RedeemRequest =
        serde_json::from_slice(read("grant_json/request.json").as_bytes()).unwrap();
    assert_eq!(request.site_name, "east");
    let response: RedeemResponse =
        serde_json::from_slice(read("grant_json/response.json").as_bytes()).unwrap();
    assert_eq!(response.endpoints.len(), 3);
    let renew: RenewRequest =
        serde_json::from_slice(read("grant_json/renew-request.json").as_bytes()).unwrap();
    assert_eq!(renew.site_id, request.site_id);
    let renewed: RenewResponse =
        serde_json::from_slice(read("grant_json/renew-response.json").as_bytes()).unwrap();
    assert_eq!(renewed.certificate, response.certificate);
}
