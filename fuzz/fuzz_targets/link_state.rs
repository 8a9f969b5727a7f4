//! Fuzz target `link_state`: the link-state advertisement: inputs are link-state frame payloads.
//! The body, and the properties it checks, are `skiff_router::wire::fuzzing::link_state` (replayed
//! on `fuzz/seeds/link_state/` by `cargo test`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| skiff_router::wire::fuzzing::link_state(data));
