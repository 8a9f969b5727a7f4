//! Fuzz target `renewal_csr`: the certificate signing request of a renewal or a redemption,
//! read by the grant service from anyone who reaches the link port. The body, and the
//! properties it checks, are `skiff_certs::fuzzing::renewal_csr` (replayed on
//! `fuzz/seeds/renewal_csr/` by `cargo test`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| skiff_certs::fuzzing::renewal_csr(data));
