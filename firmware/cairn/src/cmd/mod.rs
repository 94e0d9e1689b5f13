//! The command lines of the `cairn` subcommands, one module each, over the libraries: `cairn ctl`
//! (the supervisor's control socket), `cairn vault`, `cairn node`, `cairn web`, `cairn prosody`, `cairn snac`, `cairn names`, `cairn backup`, `cairn update` and, in test builds
//! only (feature `test-fixtures`), `cairn fixture` and `cairn bench`. `cairn init` is [`crate::init`]. What the
//! service roles share (telling the supervisor they are ready) is here.

pub mod backup;
#[cfg(feature = "test-fixtures")]
pub mod bench;
#[cfg(feature = "test-fixtures")]
pub mod bench_link;
pub mod ctl;
#[cfg(feature = "test-fixtures")]
pub mod fixture;
pub mod names;
pub mod node;
pub mod prosody;
pub mod snac;
pub mod update;
pub mod vault;
pub mod web;

/// Tells the supervisor a service is ready: one line on `$NOTIFY_FD`, if set.
pub fn notify_ready() {
    use std::io::Write;
    use std::os::fd::FromRawFd;
    let Some(fd) = std::env::var("NOTIFY_FD")
        .ok()
        .and_then(|s| s.parse::<i32>().ok())
    else {
        return;
    };
    // SAFETY: the supervisor passes this descriptor for exactly this one line; we own it now.
    let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
    let _ = f.write_all(b"ready\n");
}
