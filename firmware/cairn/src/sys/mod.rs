//! What PID 1's parts share: where things live, the console, and how helper threads start.
//! `init` (the stages) and `board` (LEDs, button, front panel) both build on this module and
//! never on each other's insides, so the two stay free of a module cycle.

pub mod helpers;

/// Where things live on the device (the initramfs holds /etc/cairn; /data is the data partition).
pub mod paths {
    pub const BOARD: &str = "/etc/cairn/board.toml";
    /// The public keys this image accepts update bundles from (written by cairn-image).
    pub const UPDATE_KEYS: &str = "/etc/cairn/update-keys";
    /// This image's build number, decimal (written by cairn-image): updates must be newer.
    pub const BUILD: &str = "/etc/cairn/build";
    pub const SERVICES: &str = "/etc/cairn/services";
    pub const DATA: &str = "/data";
    pub const STATE: &str = "/data/cairn";
    /// Where services' runtime directories go (`runtime_dir`: `/run/NAME`), remade each boot.
    pub const RUN: &str = "/run";
    /// PID 1's control socket: one constant, the supervisor's.
    pub const SOCKET: &str = cairn_supervisor::DEFAULT_SOCKET;
    /// The storage node's control socket, as `services/node.toml` sets it (`--control`): in
    /// the node's runtime directory, which its group (the web joins it) may reach.
    pub const NODE_SOCKET: &str = "/run/node/node.sock";
}

/// Log one of init's own lines on the console (PID 1's stdout), through [`console`] so a failing
/// console is ignored instead of panicking as `println!` does. The supervisor's lines are `tracing` events, on stderr (`crate::logging`); both
/// streams are the console on the device, and the host tests read each where it has always been.
macro_rules! log {
    ($($arg:tt)*) => { $crate::sys::console(&format!($($arg)*)) };
}
pub(crate) use log;

/// Signals PID 1 handles itself (the supervisor's set): blocked from the start so none is lost
/// before stage 2 reads them.
pub(crate) use cairn_supervisor::handled_signals;

/// A console line that never panics (`println!` does when the console fails, and a panic inside
/// the panic hook aborts PID 1).
pub(crate) fn console(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "cairn: {line}");
    let _ = out.flush();
}
