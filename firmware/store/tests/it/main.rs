//! The store's integration tests, in one test binary: each file below was its own, and each linked the whole
//! crate and its dependencies at opt-level 3 (minutes of CI on two cores).

mod api;
mod crash_sweep;
mod fuzz_bodies;
mod kill9;
