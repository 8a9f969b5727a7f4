//! Fuzz target `resource_yaml`: the site folder's resource YAML (Site, Link, LinkedSite, Listener,
//! Connector). The body, and the properties it checks, are
//! `skiff_site_controller::fuzzing::resource_yaml` (replayed on `fuzz/seeds/resource_yaml/` by
//! `cargo test`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| skiff_site_controller::fuzzing::resource_yaml(data));
