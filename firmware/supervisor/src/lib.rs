//! Cairn's supervisor: the part of PID 1 that runs the services.
//!
//! - [`manifest`]: service manifests, parsed and validated with one-line errors.
//! - [`machine`]: the deterministic state machine (start order, readiness, backoff, crash loops,
//!   stop and shutdown order) over the [`machine::Clock`] and [`machine::Spawner`] traits.
//! - [`spawn`] and [`runtime`]: the Linux side — processes, signals, reaping, log rings, the
//!   control socket, the watchdog — behind one entry point, [`run`].
//! - [`proto`]: the control socket's requests and answers (the `cairn ctl` client and the test
//!   services, `cairn fixture …`, live in the `cairn` binary).

pub mod logbuf;
pub mod machine;
pub mod manifest;
pub mod proto;
pub mod runtime;
pub mod spawn;
pub mod users;

pub use runtime::{
    block_signals, handled_signals, run, Extension, Handoff, Notice, RunConfig, Shutdown,
};

/// Where the control socket lives on the device.
pub const DEFAULT_SOCKET: &str = "/run/cairn/control.sock";
