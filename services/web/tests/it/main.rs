//! The web service's integration tests, in one test binary: each file below was its own, and each linked the whole
//! crate and its dependencies at opt-level 3 (minutes of CI on two cores).

mod admin;
mod chat;
mod claim;
mod common;
mod files;
mod mdns;
mod recovery;
mod share;
mod site;
mod social;
mod storage;
mod system;
mod trust;
mod update;
