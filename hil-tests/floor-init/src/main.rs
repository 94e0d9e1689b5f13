//! The floor of `scripts/bench boot`: a `/init` that prints one ready line at once and idles.
//! Booted by the same bootloader and kernel as the Cairn image (`cairn-image build --cairn
//! floor-init`), it times everything a boot costs before any of Cairn's own work; the bench
//! reports Cairn's boot as a multiple of it.

use std::io::Write;

/// What the bench waits for on the console.
const READY: &str = "floor: ready";

fn main() {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{READY}");
    let _ = out.flush();
    // PID 1 must never exit (the kernel would panic); the bench pulls the power. Run anywhere
    // else (a host build, by hand), it exits.
    if std::process::id() == 1 {
        loop {
            std::thread::park();
        }
    }
}
