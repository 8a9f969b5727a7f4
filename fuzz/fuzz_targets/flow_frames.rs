//! Fuzz target `flow_frames`: the flow header and flow status frames at the start of a flow stream.
//! The body, and the properties it checks, are `skiff_router::wire::fuzzing::flow_frames` (replayed
//! on `fuzz/seeds/flow_frames/` by `cargo test`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| skiff_router::wire::fuzzing::flow_frames(data));
