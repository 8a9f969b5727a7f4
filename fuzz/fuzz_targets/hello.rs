//! Fuzz target `hello`: the hello frame: inputs shaped into hello payloads, mostly of this major
//! version. The body, and the properties it checks, are `skiff_router::wire::fuzzing::hello`
//! (replayed on `fuzz/seeds/hello/` by `cargo test`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| skiff_router::wire::fuzzing::hello(data));
