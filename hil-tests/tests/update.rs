//! A/B updates under the real u-boot (`-bios`, Debian's qemu_arm64 build) and real resets: the
//! boot script picks the good slot, boots a slot on trial a bounded number of times (the try
//! counted before it boots), PID 1 commits a slot that stays healthy, and a slot that does not
//! — a kernel that panics, a system not healthy by its deadline (the watchdog resets the
//! board) — falls back to the good one by itself. Slot B is prepared here on the disk image as
//! an install leaves it (slot A's bytes, its extlinux.conf changed, "try once"), so each case
//! costs only its own boots.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cairn_bsp::mbr::SLOT_PARTITIONS;
use cairn_hil::{image, partition, Config, FixturePort, Qemu, BOOT_TIMEOUT};
use cairn_update::bootstate::{Last, SlotName, SlotRecord, TRIES};
use cairn_update::disk::BootDisk;

/// Boots of a bad slot until the fallback, each a reset (panic=-1 or the watchdog's).
const FALLBACK_TIMEOUT: Duration = Duration::from_secs(420);

fn config() -> Config {
    let mut cfg = Config::new(image("cairn-qemu-virt-test.img").unwrap());
    // A reset (the watchdog's, a panic's) boots again, as on a plug.
    cfg.reboot = true;
    cfg
}

/// The test image copied into `dir`, slot B made from slot A with `words` added to its kernel
/// command line, recorded as build `build`, and put on trial as `cairn update apply` does.
fn disk_with_b_on_trial(dir: &Path, words: &str, build: u64) -> std::path::PathBuf {
    let disk = dir.join("disk.img");
    std::fs::copy(config().image, &disk).unwrap();
    let [a, b] = SLOT_PARTITIONS.map(|n| partition(&disk, n).unwrap());
    assert_eq!(a.bytes(), b.bytes());
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::options()
            .read(true)
            .write(true)
            .open(&disk)
            .unwrap();
        let mut buf = vec![0u8; 1 << 20];
        for at in (0..a.bytes()).step_by(buf.len()) {
            f.read_exact_at(&mut buf, a.offset() + at).unwrap();
            f.write_all_at(&buf, b.offset() + at).unwrap();
        }
    }
    let img = format!("{}@@{}", disk.display(), b.offset());
    let conf = mtools(Command::new("mtype").args(["-i", &img, "::/extlinux/extlinux.conf"]));
    let conf = conf.replace("  append ", &format!("  append {words} "));
    let local = dir.join("extlinux.conf");
    std::fs::write(&local, conf).unwrap();
    mtools(
        Command::new("mcopy")
            .args(["-o", "-i", &img])
            .arg(&local)
            .arg("::/extlinux/extlinux.conf"),
    );
    let d = BootDisk::new(&disk);
    let record = SlotRecord {
        version: format!("0.1.0-{build}"),
        build,
    };
    d.write_record(SlotName::B, Some(&record)).unwrap();
    let state = d.state().unwrap().unwrap_or_default();
    d.write_state(&state.installing(SlotName::B).try_once(SlotName::B))
        .unwrap();
    disk
}

fn mtools(cmd: &mut Command) -> String {
    let out = cmd.env("MTOOLS_SKIP_CHECK", "1").output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Boots `disk` (already in its own directory) as the tests do.
fn boot(disk: &Path) -> Qemu {
    let mut cfg = config();
    cfg.image = disk.to_path_buf();
    Qemu::boot(&cfg).unwrap()
}

#[test]
fn a_slot_on_trial_is_booted_counted_and_committed_once_healthy() {
    let t = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let disk = disk_with_b_on_trial(dir.path(), "cairn.update_settle=3", 90_001);
    let mut q = boot(&disk);
    // boot.scr counted the try down before booting B.
    q.wait_line(
        "cairn: boot: slot b (good a, on trial b, 2 tries left)",
        BOOT_TIMEOUT,
    )
    .unwrap();
    q.wait_line("cairn: update: slot b on trial (try 1 of 3)", BOOT_TIMEOUT)
        .unwrap();
    let kernel = q.wait_line("Kernel command line:", BOOT_TIMEOUT).unwrap();
    assert!(kernel.contains("cairn.slot=b"), "{kernel}");
    q.wait_line("cairn: ready", BOOT_TIMEOUT).unwrap();
    q.wait_line("cairn: update: slot b committed", BOOT_TIMEOUT)
        .unwrap();

    let mut port = FixturePort::plug(&mut q).unwrap();
    let (out, code) = port.update("status --json", None).unwrap();
    assert_eq!(code, 0, "{out}");
    let s: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(s["running"], "b", "{s}");
    assert_eq!(s["active"], "b", "{s}");
    assert_eq!(s["trying"], serde_json::Value::Null, "{s}");
    assert_eq!(s["last"], "good", "{s}");
    assert_eq!(s["slots"]["b"]["build"], 90_001, "{s}");
    assert!(
        s["slots"]["a"]["build"].is_u64(),
        "slot a keeps its record: {s}"
    );
    let (text, _) = port.update("status", None).unwrap();
    assert!(
        text.contains("slot b: 0.1.0-90001 (build 90001) [running, good]"),
        "{text}"
    );

    // A refusal on the running device: slot A (the fallback) is never written, nor the state.
    let before = std::fs::read(q.disk()).unwrap();
    let (out, code) = port.update("apply /etc/cairn/board.toml", None).unwrap();
    assert_ne!(code, 0);
    assert!(
        out.contains("update refused: not a Cairn update bundle"),
        "{out}"
    );
    assert_eq!(out.trim().lines().count(), 1, "{out}");
    q.pull_power();
    let after = std::fs::read(q.disk()).unwrap();
    let a = partition(&disk, SLOT_PARTITIONS[0]).unwrap();
    let span = a.offset() as usize..(a.offset() + a.bytes()) as usize;
    assert!(before[span.clone()] == after[span], "slot a changed");
    let state = BootDisk::new(&q.disk()).state().unwrap().unwrap();
    assert_eq!(
        (state.active, state.trying, state.last),
        (SlotName::B, None, Last::Good)
    );
    eprintln!("update: trial and commit took {:?}", t.elapsed());
}

#[test]
fn a_kernel_that_panics_falls_back_after_its_tries() {
    let t = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    // No init in the initramfs by that name: the kernel panics, panic=-1 resets at once.
    let disk = disk_with_b_on_trial(dir.path(), "rdinit=/no-such-init", 90_002);
    let q = boot(&disk);
    let (at, _) = q
        .wait_line_from(
            0,
            "cairn: update: fell back to slot a (slot b failed 3 tries)",
            FALLBACK_TIMEOUT,
        )
        .unwrap();
    q.wait_line_from(at, "cairn: ready", BOOT_TIMEOUT).unwrap();
    let console = q.console();
    let tries = console
        .iter()
        .filter(|l| l.starts_with("cairn: boot: slot b "))
        .count();
    assert_eq!(tries, TRIES as usize, "{console:#?}");
    assert!(console.iter().any(|l| l.contains("Kernel panic")));
    let state = BootDisk::new(&q.disk()).state().unwrap().unwrap();
    assert_eq!(
        (state.active, state.trying, state.last),
        (SlotName::A, None, Last::Fallback)
    );
    eprintln!("update: panic fallback took {:?}", t.elapsed());
}

#[test]
fn a_slot_not_healthy_by_its_deadline_is_reset_by_the_watchdog_and_falls_back() {
    let t = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    // Ready comes, but the settle time cannot pass before the deadline: PID 1 stops feeding
    // the watchdog, the i6300esb resets the board, u-boot counts the next try.
    let disk = disk_with_b_on_trial(
        dir.path(),
        "cairn.update_settle=600 cairn.update_deadline=15",
        90_003,
    );
    let q = boot(&disk);
    q.wait_line("cairn: update: slot b not healthy", BOOT_TIMEOUT)
        .unwrap();
    let (at, _) = q
        .wait_line_from(
            0,
            "cairn: update: fell back to slot a (slot b failed 3 tries)",
            FALLBACK_TIMEOUT,
        )
        .unwrap();
    q.wait_line_from(at, "cairn: ready", BOOT_TIMEOUT).unwrap();
    let state = BootDisk::new(&q.disk()).state().unwrap().unwrap();
    assert_eq!(
        (state.active, state.trying, state.last),
        (SlotName::A, None, Last::Fallback)
    );
    eprintln!("update: watchdog fallback took {:?}", t.elapsed());
}
