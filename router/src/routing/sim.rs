//! Deterministic simulator of many routers on a virtual clock (tests only).
