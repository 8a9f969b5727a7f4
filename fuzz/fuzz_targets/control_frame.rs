//! Fuzz target `control_frame`: the link control-stream decoder (every frame type, hello and
//! keepalive included). The body, and the properties it checks, are
//! `skiff_router::wire::fuzzing::control_frame` (replayed on `fuzz/seeds/control_frame/` by `cargo
//! test`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| skiff_router::wire::fuzzing::control_frame(data));
