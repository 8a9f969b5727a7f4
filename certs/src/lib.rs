//! Site identity and trust: CA, certificates, CSR signing, tokens, grants and TLS configs.
