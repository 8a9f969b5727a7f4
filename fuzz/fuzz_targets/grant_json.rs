//! Fuzz target `grant_json`: the grant endpoint's redemption request and response JSON. The body,
//! and the properties it checks, are `skiff_site_controller::fuzzing::grant_json` (replayed on
//! `fuzz/seeds/grant_json/` by `cargo test`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| skiff_site_controller::fuzzing::grant_json(data));
