//! `cairn-hil run [--fresh]`: boots the qemu-virt image for a person, as `scripts/run` promises —
//! the same QEMU command line the tests boot ([`cairn_hil::command`]), with the console on this
//! terminal, the user-mode network (DHCP, and the device's 443 at `https://localhost:8443`), the
//! front panel socket and u-boot's environment.
//!
//! The disk (`target/run/disk.img`, 2 GiB) is kept between runs like a real card; it is made
//! anew from the image when the image is newer, or with `--fresh`. `CAIRN_RUN_DIR` and
//! `CAIRN_HTTPS_PORT` move the run directory and the HTTPS port (tests use both);
//! `CAIRN_XMPP_PORT` the host port forwarded to the device's Jabber (5222).

use anyhow::Context;
use cairn_hil::{command, image, Config, Console, Files};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;

/// The card a person "flashes": big enough that the data partition grows on first boot.
const DISK_BYTES: u64 = 2 << 30;

fn main() {
    if let Err(e) = run() {
        eprintln!("cairn-hil: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let fresh = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["run"] => false,
        ["run", "--fresh"] => true,
        _ => anyhow::bail!("usage: cairn-hil run [--fresh]"),
    };
    let dir = std::env::var_os("CAIRN_RUN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/run"));
    let port: u16 = match std::env::var("CAIRN_HTTPS_PORT") {
        Ok(p) => p
            .parse()
            .with_context(|| format!("CAIRN_HTTPS_PORT={p} is not a port"))?,
        Err(_) => 8443,
    };
    // Jabber clients on this host reach the device's Prosody here (its port 5222).
    let xmpp: u16 = match std::env::var("CAIRN_XMPP_PORT") {
        Ok(p) => p
            .parse()
            .with_context(|| format!("CAIRN_XMPP_PORT={p} is not a port"))?,
        Err(_) => 5222,
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("{}", dir.display()))?;
    let img = image("cairn-qemu-virt.img")?;
    let files = Files::in_dir(&dir, dir.join("disk.img"));
    let newer = |a: &PathBuf, b: &PathBuf| -> bool {
        let m = |p: &PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        matches!((m(a), m(b)), (Some(x), Some(y)) if x > y)
    };
    if fresh || !files.disk.is_file() || newer(&img, &files.disk) {
        std::fs::copy(&img, &files.disk)
            .with_context(|| format!("copying {} to {}", img.display(), files.disk.display()))?;
        std::fs::OpenOptions::new()
            .write(true)
            .open(&files.disk)?
            .set_len(DISK_BYTES)?;
    }
    for sock in [&files.panel, &files.qmp] {
        let _ = std::fs::remove_file(sock); // left by a QEMU that was killed
    }
    let mut cfg = Config::new(img);
    cfg.https_port = Some(port);
    cfg.tcp_forwards.push((xmpp, 5222));
    cfg.reboot = true;
    cfg.console = Console::Terminal;
    cfg.internet = true;
    let mut cmd = command(&cfg, &files)?;
    eprintln!(
        "run: booting {} (quit: Ctrl-A X; front panel: scripts/panel {}; https://localhost:{port}; Jabber: localhost:{xmpp})",
        files.disk.display(),
        files.panel.display()
    );
    Err(cmd.exec()).context("starting qemu-system-aarch64 (run scripts/setup)")
}
