//! Fuzz target `token_yaml`: access token and access grant YAML files, and durations. The body, and
//! the properties it checks, are `skiff_certs::fuzzing::token_yaml` (replayed on
//! `fuzz/seeds/token_yaml/` by `cargo test`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| skiff_certs::fuzzing::token_yaml(data));
