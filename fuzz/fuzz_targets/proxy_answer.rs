//! Fuzz target `proxy_answer`: an HTTP proxy's answer to CONNECT, read as a proxied link's dial
//! reads it. The body, and the properties it checks, are
//! `skiff_router::link::proxy::fuzz_answer` (replayed on `fuzz/seeds/proxy_answer/` by
//! `cargo test`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| skiff_router::link::proxy::fuzz_answer(data));
