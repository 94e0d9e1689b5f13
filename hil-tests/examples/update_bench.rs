//! Update figures for `scripts/bench update` → target/bench/update.json, on the test image
//! (`scripts/bench.d/update` builds it and the test bundle):
//! - `apply_mb_s`: bundle bytes per second of `cairn update apply -` on the running device
//!   (the bundle streamed from a disk the host attached; verify, write, sync, read back);
//! - `apply_rss_mib`: the installer's peak RSS (the guest's `getrusage` of its children);
//! - `rollback_s`: power-on with slot B on trial and a kernel that panics → `cairn: ready` on
//!   slot A (three counted tries, each a panic and a reset, then the fallback).
//!
//! Usage: `update_bench [OUT.json]` (default target/bench/update.json).

use cairn_hil::{image, images_dir, write_bench, Config, FixturePort, Qemu, BOOT_TIMEOUT};
use std::time::{Duration, Instant};

fn main() -> anyhow::Result<()> {
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "target/bench/update.json".into());
    let dir = tempfile::tempdir()?;
    let bundles = images_dir().join("test-bundles");
    let bundle = std::fs::read_dir(&bundles)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "cupd"))
        .ok_or_else(|| anyhow::anyhow!("no bundle in {}", bundles.display()))?;
    let bytes = std::fs::metadata(&bundle)?.len();
    let shelf = dir.path().join("shelf.img");
    std::fs::copy(&bundle, &shelf)?;
    std::fs::File::options()
        .write(true)
        .open(&shelf)?
        .set_len(bytes.next_multiple_of(1 << 20))?;

    let mut cfg = Config::new(image("cairn-qemu-virt-test.img")?);
    cfg.second_disk = Some(cairn_hil::SecondDisk {
        file: shelf,
        serial: "bundle".into(),
        throttle: Default::default(),
    });
    let mut q = Qemu::boot(&cfg)?;
    q.wait_line("cairn: ready", BOOT_TIMEOUT)?;
    let mut port = FixturePort::plug(&mut q)?;
    let started = Instant::now();
    let (text, code) = port.update("apply -", Some(("/dev/vdb", 0, bytes)))?;
    let apply_s = started.elapsed().as_secs_f64();
    anyhow::ensure!(code == 0, "cairn update apply failed: {text}");
    let rss_kib = port
        .update_maxrss_kib
        .ok_or_else(|| anyhow::anyhow!("the guest reported no peak RSS"))?;
    drop(port);
    drop(q);
    eprintln!("update bench: applied {bytes} bytes in {apply_s:.2} s, peak RSS {rss_kib} KiB");

    let bad = cairn_hil::slot_b_on_trial(
        &image("cairn-qemu-virt-test.img")?,
        dir.path(),
        "rdinit=/no-such-init",
        999_999_998,
    )?;
    let mut cfg = Config::new(bad);
    cfg.reboot = true;
    let q = Qemu::boot(&cfg)?;
    let (at, _) = q.wait_line_from(
        0,
        "cairn: update: fell back to slot a",
        Duration::from_secs(420),
    )?;
    q.wait_line_from(at, "cairn: ready", BOOT_TIMEOUT)?;
    // The wait returns as the line arrives.
    let rollback_s = q.started.elapsed().as_secs_f64();
    drop(q);

    let r = |x: f64| (x * 100.0).round() / 100.0;
    write_bench(
        &out,
        &serde_json::json!({
            "apply_mb_s": r(bytes as f64 / 1e6 / apply_s),
            "apply_rss_mib": r(rss_kib as f64 / 1024.0),
            "rollback_s": r(rollback_s),
            "bundle_bytes": bytes,
            "targets": {"apply_rss_mib": 16},
        }),
    )
}
