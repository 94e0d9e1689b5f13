//! A/B updates under the real u-boot (`-bios`, Debian's qemu_arm64 build) and real resets: the
//! boot script picks the good slot, boots a slot on trial a bounded number of times (the try
//! counted before it boots), PID 1 commits a slot that stays healthy, and a slot that does not
//! — a kernel that panics, a system not healthy by its deadline (the watchdog resets the
//! board), a system that never gets ready, a service that crash-loops — falls back to the good one by itself. Slot B is prepared here on the disk image as
//! an install leaves it (slot A's bytes, its extlinux.conf changed, "try once"), so each case
//! costs only its own boots.

use std::path::Path;
use std::time::{Duration, Instant};

use cairn_bsp::mbr::SLOT_PARTITIONS;
use cairn_hil::{image, partition, Config, FixturePort, Qemu, BOOT_TIMEOUT};
use cairn_update::bootstate::{Last, SlotName, SlotRecord, TRIES};
use cairn_update::disk::BootDisk;
use cairn_update::keys::SigningKey;

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
    cairn_hil::slot_b_on_trial(&config().image, dir, words, build).unwrap()
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

/// Boots a disk whose slot B (on trial, build `build`, `words` on its command line) runs one
/// more service, `name` with `manifest`, until that service has started.
fn boot_b_with_service(dir: &Path, words: &str, build: u64, name: &str, manifest: &str) -> Qemu {
    let disk = disk_with_b_on_trial(dir, words, build);
    let path = format!("/etc/cairn/services/{name}.toml");
    cairn_hil::add_to_slot_b_initramfs(&disk, dir, &[(&path, 0o644, manifest.as_bytes())]).unwrap();
    let q = boot(&disk);
    q.wait_line(&format!("cairn: {name}: started"), BOOT_TIMEOUT)
        .unwrap();
    q
}

/// Waits for the fallback to slot A after slot B's tries and for slot A's `ready`; checks that
/// slot B was never committed and the state says so. The console line of the fallback.
fn falls_back_to_a(q: &Qemu) -> usize {
    let (at, _) = q
        .wait_line_from(
            0,
            "cairn: update: fell back to slot a (slot b failed 3 tries)",
            FALLBACK_TIMEOUT,
        )
        .unwrap();
    q.wait_line_from(at, "cairn: ready", BOOT_TIMEOUT).unwrap();
    let console = q.console();
    assert!(
        !console
            .iter()
            .any(|l| l.contains("update: slot b committed")),
        "{console:#?}"
    );
    let state = BootDisk::new(&q.disk()).state().unwrap().unwrap();
    assert_eq!(
        (state.active, state.trying, state.last),
        (SlotName::A, None, Last::Fallback)
    );
    at
}

#[test]
fn a_slot_that_never_gets_ready_falls_back() {
    let t = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    // Slot B's extra service runs but never says it is ready (nothing listens on its port):
    // `cairn: ready` never comes, and PID 1 gives up at the deadline (20 s).
    let q = boot_b_with_service(
        dir.path(),
        "cairn.update_settle=3 cairn.update_deadline=20",
        90_005,
        "neverready",
        "name = \"neverready\"\nexec = [\"/bin/cairn\", \"fixture\", \"sleep\"]\nready = \"tcp:9\"\n",
    );
    q.wait_line(
        "cairn: update: slot b not healthy for 3 s within 20 s",
        BOOT_TIMEOUT,
    )
    .unwrap();
    let at = falls_back_to_a(&q);
    // Slot B never got ready in any of its tries: the only `ready` is slot A's.
    let readies: Vec<usize> = (q.console().iter().enumerate())
        .filter(|(_, l)| l.contains("cairn: ready"))
        .map(|(i, _)| i)
        .collect();
    assert!(
        readies.len() == 1 && readies[0] > at,
        "ready at lines {readies:?}, fallback at {at}"
    );
    eprintln!("update: never-ready fallback took {:?}", t.elapsed());
}

#[test]
fn a_slot_whose_service_crash_loops_falls_back() {
    let t = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    // Slot B's extra service exits a second after each start: ready comes, then the
    // supervisor sees a crash loop before the settle time (30 s) has passed, so PID 1 never
    // commits and gives up at the deadline (45 s).
    let q = boot_b_with_service(
        dir.path(),
        "cairn.update_settle=30 cairn.update_deadline=45",
        90_004,
        "crashloop",
        "name = \"crashloop\"\nexec = [\"/bin/cairn\", \"fixture\", \"exit\", \"--code\", \"1\", \"--after-ms\", \"1000\"]\n",
    );
    q.wait_line("cairn: update: slot b not healthy", BOOT_TIMEOUT)
        .unwrap();
    falls_back_to_a(&q);
    eprintln!("update: crash-loop fallback took {:?}", t.elapsed());
}

/// The test bundle `scripts/image qemu-virt --test --bundle` wrote (a higher CAIRN_BUILD than
/// the test image's, settle time 3 s).
fn test_bundle() -> std::path::PathBuf {
    let dir = cairn_hil::images_dir().join("test-bundles");
    let mut found: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e}: run scripts/image qemu-virt --test --bundle",
                dir.display()
            )
        })
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "cupd"))
        .collect();
    assert_eq!(found.len(), 1, "one bundle in {}: {found:?}", dir.display());
    found.remove(0)
}

/// A bundle of one small part signed with `key`.
fn small_bundle(dir: &Path, key: &SigningKey, board: &str, build: u64) -> Vec<u8> {
    let part = dir.join("part");
    std::fs::write(&part, vec![0x5a; 4096]).unwrap();
    let mut out = Vec::new();
    cairn_update::bundle::write(
        &mut out,
        key,
        board,
        &format!("0.1.0-{build}"),
        build,
        &[("slot", &part)],
    )
    .unwrap();
    out
}

/// The bundles a test hands the guest, at 1 MiB-aligned offsets of one disk.
struct Shelf {
    file: std::path::PathBuf,
    spans: Vec<(u64, u64)>,
}

impl Shelf {
    fn new(dir: &Path, bundles: &[Vec<u8>]) -> Shelf {
        let file = dir.join("shelf.img");
        let mut bytes = Vec::new();
        let mut spans = Vec::new();
        for b in bundles {
            spans.push((bytes.len() as u64, b.len() as u64));
            bytes.extend_from_slice(b);
            bytes.resize(bytes.len().next_multiple_of(1 << 20), 0);
        }
        std::fs::write(&file, bytes).unwrap();
        Shelf { file, spans }
    }

    /// `cairn update apply -` with bundle `i` on standard input.
    fn apply(&self, port: &mut FixturePort, i: usize) -> (String, i32) {
        let (at, n) = self.spans[i];
        port.update("apply -", Some(("/dev/vdb", at, n))).unwrap()
    }
}

/// Slot A's bytes on a disk image.
fn slot_a(disk: &Path) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let a = partition(disk, SLOT_PARTITIONS[0]).unwrap();
    let mut buf = vec![0u8; a.bytes() as usize];
    std::fs::File::open(disk)
        .unwrap()
        .read_exact_at(&mut buf, a.offset())
        .unwrap();
    buf
}

#[test]
fn an_update_is_refused_or_installed_survives_power_cuts_and_is_committed() {
    let t = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read(test_bundle()).unwrap();
    // The key scripts/image signed the test image's build with (it trusts that one).
    let key_file = std::env::var_os("CAIRN_SIGNING_KEY")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            // As scripts/image finds the cache.
            let cache = std::env::var_os("CAIRN_CACHE")
                .map(std::path::PathBuf::from)
                .unwrap_or_else(|| {
                    std::env::var_os("XDG_CACHE_HOME")
                        .map(std::path::PathBuf::from)
                        .unwrap_or_else(|| {
                            std::path::PathBuf::from(std::env::var_os("HOME").unwrap())
                                .join(".cache")
                        })
                        .join("cairn")
                });
            cache.join("update-dev-key.pk8")
        });
    let dev_key = SigningKey::from_pkcs8(&std::fs::read(&key_file).unwrap()).unwrap();
    let stranger = SigningKey::from_pkcs8(&SigningKey::generate_pkcs8().unwrap()).unwrap();
    let mut flipped = good.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x01;
    let refusals = [
        (flipped, "corrupt bundle"),
        (
            small_bundle(dir.path(), &stranger, "qemu-virt", 900_100),
            "signed by an unknown key",
        ),
        (
            small_bundle(dir.path(), &dev_key, "rpi4", 900_100),
            "bundle is for board rpi4",
        ),
        (
            small_bundle(dir.path(), &dev_key, "qemu-virt", 1),
            "build 1 is not newer",
        ),
        (good[..good.len() / 3].to_vec(), "truncated bundle"),
    ];
    let mut bundles: Vec<Vec<u8>> = refusals.iter().map(|(b, _)| b.clone()).collect();
    bundles.push(good.clone());
    let shelf = Shelf::new(dir.path(), &bundles);
    // Slot B's record says something, so that the host sees the install begin (it clears
    // the record before its first write).
    let mut cfg = config();
    let disk = dir.path().join("disk.img");
    std::fs::copy(&cfg.image, &disk).unwrap();
    let earlier = SlotRecord {
        version: "0.1.0-1".into(),
        build: 1,
    };
    BootDisk::new(&disk)
        .write_record(SlotName::B, Some(&earlier))
        .unwrap();
    cfg.image = disk;
    cfg.second_disk = Some(cairn_hil::SecondDisk {
        file: shelf.file.clone(),
        serial: "bundles".into(),
        throttle: Default::default(),
    });
    let good_i = bundles.len() - 1;

    // 1. Refusals: one line each, slot A and the boot state untouched.
    let mut q = Qemu::boot(&cfg).unwrap();
    q.wait_line("cairn: ready", BOOT_TIMEOUT).unwrap();
    let a_before = slot_a(&q.disk());
    let mut port = FixturePort::plug(&mut q).unwrap();
    let (out, _) = port.update("status --json", None).unwrap();
    let s: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let old_build = s["slots"]["a"]["build"].as_u64().unwrap();
    for (i, (_, why)) in refusals.iter().enumerate() {
        let started = Instant::now();
        let (out, code) = shelf.apply(&mut port, i);
        assert_ne!(code, 0, "{why}: {out}");
        assert_eq!(out.trim().lines().count(), 1, "{why}: {out}");
        assert!(out.contains("update refused: "), "{out}");
        assert!(out.contains(why), "{why}: {out}");
        eprintln!("update: refusal '{why}' in {:?}", started.elapsed());
    }
    let state = BootDisk::new(&q.disk()).state().unwrap().unwrap();
    assert_eq!((state.active, state.trying), (SlotName::A, None));

    // 2. A power cut during the install: the device comes back on slot A, B not on trial.
    port.send(&format!(
        "update-from /dev/vdb {} {} apply -",
        shelf.spans[good_i].0, shelf.spans[good_i].1
    ))
    .unwrap();
    let deadline = Instant::now() + BOOT_TIMEOUT;
    while BootDisk::new(&q.disk())
        .record(SlotName::B)
        .unwrap()
        .is_some()
    {
        assert!(Instant::now() < deadline, "the install never began");
        std::thread::sleep(Duration::from_millis(10));
    }
    q.pull_power();
    let state = BootDisk::new(&q.disk()).state().unwrap().unwrap();
    assert_eq!(
        (state.active, state.trying),
        (SlotName::A, None),
        "the cut came after the install"
    );
    let mut q = Qemu::reboot_from(q, &cfg).unwrap();
    q.wait_line("cairn: boot: slot a (good a, on trial none", BOOT_TIMEOUT)
        .unwrap();
    q.wait_line("cairn: ready", BOOT_TIMEOUT).unwrap();

    // 3. The install, whole: B on trial with the bundle's build.
    let mut port = FixturePort::plug(&mut q).unwrap();
    let started = Instant::now();
    let (out, code) = shelf.apply(&mut port, good_i);
    let apply_s = started.elapsed();
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("into slot b (/dev/vda4) and read it back"),
        "{out}"
    );
    eprintln!("update: apply of {} bytes in {apply_s:?}", good.len());
    let (out, _) = port.update("status --json", None).unwrap();
    let s: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (s["trying"].as_str(), s["tries_left"].as_u64()),
        (Some("b"), Some(u64::from(TRIES))),
        "{s}"
    );
    let new_build = s["slots"]["b"]["build"].as_u64().unwrap();
    assert!(new_build > old_build, "{s}");
    assert!(slot_a(&q.disk()) == a_before, "slot a changed");

    // 4. A power cut during B's first boot counts as a failed try; the second try commits.
    q.pull_power();
    let q = Qemu::reboot_from(q, &cfg).unwrap();
    q.wait_line("cairn: update: slot b on trial (try 1 of 3)", BOOT_TIMEOUT)
        .unwrap();
    let mut q = q;
    q.pull_power();
    let mut q = Qemu::reboot_from(q, &cfg).unwrap();
    q.wait_line(
        "cairn: boot: slot b (good a, on trial b, 1 tries left)",
        BOOT_TIMEOUT,
    )
    .unwrap();
    q.wait_line("cairn: update: slot b on trial (try 2 of 3)", BOOT_TIMEOUT)
        .unwrap();
    q.wait_line("cairn: ready", BOOT_TIMEOUT).unwrap();
    q.wait_line("cairn: update: slot b committed", BOOT_TIMEOUT)
        .unwrap();
    let mut port = FixturePort::plug(&mut q).unwrap();
    port.send("read /etc/cairn/build").unwrap();
    assert_eq!(port.expect("file").unwrap(), new_build.to_string());
    let (out, _) = port.update("status --json", None).unwrap();
    let s: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (
            s["running"].as_str(),
            s["active"].as_str(),
            s["last"].as_str()
        ),
        (Some("b"), Some("b"), Some("good")),
        "{s}"
    );
    assert_eq!(
        s["slots"]["a"]["build"].as_u64(),
        Some(old_build),
        "the old slot stays: {s}"
    );
    assert!(slot_a(&q.disk()) == a_before, "slot a changed");
    eprintln!(
        "update: refusals, cuts, install and commit took {:?}",
        t.elapsed()
    );
}
