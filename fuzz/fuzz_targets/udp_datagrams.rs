//! Fuzz target `udp_datagrams`: the decoders of UDP flows' datagrams (stream frames and the
//! QUIC datagram channel). The body and its properties are
//! `skiff_router::wire::fuzzing::udp_datagrams` (replayed on `fuzz/seeds/udp_datagrams/` by
//! `cargo test`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| skiff_router::wire::fuzzing::udp_datagrams(data));
