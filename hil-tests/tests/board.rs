//! The board's LEDs and setup button, as a person at the plug sees and presses them: through the
//! qemu-virt board's front panel (virtio-serial `cairn.panel`), whose button line and LED lines
//! are gpio-sim lines the firmware drives with its ordinary GPIO code.
//!
//! LED patterns are judged from the LED changes the board reports (their timing, with a
//! tolerance for an emulated CPU), not only from the pattern names it announces.

use cairn_bsp::panel::{PanelLink, ToGuest};
use cairn_bsp::pattern::{recognize, Pattern};
use cairn_hil::{append_cmdline, image, partition, Config, Qemu, BOOT_TIMEOUT, SHUTDOWN_TIMEOUT};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// The pairing window the test image asks for on its kernel command line (120 s by default).
const WINDOW_S: u64 = 5;
/// How far an LED spell may stray from the pattern's timing on an emulated board. Patterns
/// differ by at least 75 ms per spell, so this cannot mistake one for another.
const TOLERANCE_MS: u64 = 60;
/// Bound for a pattern to follow a press (generous for a loaded CI machine).
const REACT: Duration = Duration::from_secs(10);

/// A booted board with its front panel connected.
struct Board {
    q: Qemu,
    panel: PanelLink,
    _dir: tempfile::TempDir,
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The root directory of the data partition (ext4), as `debugfs` lists it.
fn data_root(disk: &Path) -> Vec<String> {
    let fs = format!(
        "{}?offset={}",
        disk.display(),
        partition(disk, 2).unwrap().offset()
    );
    run(Command::new("debugfs").args(["-R", "ls -l /", &fs]))
        .lines()
        .filter_map(|l| l.split_whitespace().last().map(String::from))
        .collect()
}

/// Puts a file in the data partition's root.
fn put_on_data(disk: &Path, name: &str) {
    let fs = format!(
        "{}?offset={}",
        disk.display(),
        partition(disk, 2).unwrap().offset()
    );
    let local = disk.with_file_name(name);
    std::fs::write(&local, b"the owner's data\n").unwrap();
    let cmd = format!("write {} {name}", local.display());
    run(Command::new("debugfs").args(["-w", "-R", &cmd, &fs]));
}

/// Boots the test image, prepared by `prepare` (given the disk copy), with the panel connected
/// from the start so nothing the board reports is missed.
fn boot(reboot: bool, prepare: impl FnOnce(&Path)) -> Board {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.img");
    std::fs::copy(image("cairn-qemu-virt.img").unwrap(), &disk).unwrap();
    append_cmdline(&disk, &format!("cairn.pairing_window_s={WINDOW_S}")).unwrap();
    prepare(&disk);
    let mut cfg = Config::new(disk);
    cfg.reboot = reboot;
    let q = Qemu::boot(&cfg).unwrap();
    let panel = q.panel().unwrap();
    Board {
        q,
        panel,
        _dir: dir,
    }
}

impl Board {
    /// Waits for the board to announce `pattern` (after message `from`); returns the
    /// announcement's sequence number.
    fn wait_pattern(&self, from: u64, pattern: Pattern, timeout: Duration) -> u64 {
        match self.panel.wait_pattern(from, pattern.name(), timeout) {
            Some((_, seq)) => seq,
            None => panic!(
                "no '{}' on the front panel in {timeout:?}; console:\n{}",
                pattern.name(),
                self.q.console().join("\n")
            ),
        }
    }

    /// Watches the status LED for `secs` from message `from` on, and says which pattern its
    /// blinking is.
    fn status_led_shows(&self, from: u64, secs: f64) -> Option<Pattern> {
        std::thread::sleep(Duration::from_secs_f64(secs));
        recognize(&self.panel.led_changes(from, "status"), TOLERANCE_MS)
    }

    /// Watches the status LED in windows of `secs`, at most `looks` of them, until one shows
    /// `want`, as a person looks again after a moment's doubt: a steady pattern must show
    /// within the tolerance in one whole window, but one stall of the loaded host (which
    /// stretches a spell past it) does not decide. `Err`: what each window showed.
    fn status_led_settles_on(
        &self,
        want: Pattern,
        secs: f64,
        looks: usize,
    ) -> Result<(), Vec<Option<Pattern>>> {
        let mut seen = Vec::new();
        for _ in 0..looks {
            let shown = self.status_led_shows(self.panel.cursor(), secs);
            if shown == Some(want) {
                return Ok(());
            }
            seen.push(shown);
        }
        Err(seen)
    }

    /// Pattern names announced from message `from` on.
    fn patterns_since(&self, from: u64) -> Vec<String> {
        self.panel
            .since(from)
            .into_iter()
            .filter_map(|m| match m {
                cairn_bsp::panel::ToHost::Pattern { name, .. } => Some(name),
                _ => None,
            })
            .collect()
    }

    fn press(&self, hold: Duration) {
        self.panel.press(hold).unwrap();
    }
}

#[test]
fn first_boot_says_setup_needed_and_the_button_works() {
    let b = boot(false, |_| {});

    // First boot: "setup needed", and the status LED really double-flashes.
    b.wait_pattern(0, Pattern::SetupNeeded, BOOT_TIMEOUT);
    b.status_led_settles_on(Pattern::SetupNeeded, 4.5, 3)
        .unwrap_or_else(|seen| panic!("the status LED showed {seen:?}, not setup-needed"));
    assert!(b.panel.bad_lines().is_empty(), "{:?}", b.panel.bad_lines());

    // Contact bounce, far shorter than the debounce time: nothing happens.
    let lines = b.q.line_count();
    let seq = b.panel.cursor();
    let bounce = [ToGuest::ButtonDown, ToGuest::ButtonUp];
    b.panel
        .send_burst(&[bounce, bounce, bounce].concat())
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(b.patterns_since(seq), Vec::<String>::new());
    let console = b.q.console()[lines..].join("\n");
    assert!(
        !console.contains("cairn: button"),
        "a bounce counted:\n{console}"
    );

    // A short press opens the pairing window: a fast blink …
    let seq = b.panel.cursor();
    b.press(Duration::from_millis(300));
    let opened = b.wait_pattern(seq, Pattern::PairingOpen, REACT);
    assert_eq!(b.status_led_shows(opened, 2.0), Some(Pattern::PairingOpen));
    let line =
        b.q.wait_line_from(lines, "cairn: button: pairing window open", REACT)
            .unwrap();
    assert!(
        line.1.ends_with(&format!("open for {WINDOW_S} s")),
        "{}",
        line.1
    );
    // … that ends by itself after the window's time, back to "setup needed".
    let closed = b.wait_pattern(
        opened,
        Pattern::SetupNeeded,
        Duration::from_secs(WINDOW_S + 10),
    );
    let when = |seq: u64| match &b.panel.since(seq)[0] {
        cairn_bsp::panel::ToHost::Pattern { ms, .. } => *ms,
        other => panic!("{other:?}"),
    };
    let open_ms = when(closed) - when(opened);
    assert!(
        (WINDOW_S * 1000 - 100..=WINDOW_S * 1000 + 1000).contains(&open_ms),
        "the window stayed open {open_ms} ms, not {WINDOW_S} s"
    );

    // Held 5 s: the factory-reset countdown, which releasing cancels.
    let lines = b.q.line_count();
    let seq = b.panel.cursor();
    b.panel.send(ToGuest::ButtonDown).unwrap();
    // Held under 4 s from the board's view (it learns of the press after we send it).
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(b.patterns_since(seq), Vec::<String>::new(), "too early");
    let countdown = b.wait_pattern(seq, Pattern::ResetCountdown, REACT);
    assert_eq!(
        b.status_led_shows(countdown, 2.2),
        Some(Pattern::ResetCountdown)
    );
    b.panel.send(ToGuest::ButtonUp).unwrap();
    b.wait_pattern(countdown, Pattern::SetupNeeded, REACT);
    b.q.wait_line_from(
        lines,
        "cairn: button: released before 10 s: factory reset cancelled",
        REACT,
    )
    .unwrap();
    assert!(!b.patterns_since(seq).contains(&"release-now".to_string()));
    let console = b.q.console()[lines..].join("\n");
    assert!(
        !console.contains("stage 3"),
        "a cancelled reset rebooted:\n{console}"
    );
}

#[test]
fn holding_10_s_wipes_the_data_partition_and_reboots() {
    let b = boot(true, |disk| {
        put_on_data(disk, "marker");
        assert!(data_root(disk).contains(&"marker".to_string()));
    });
    let mut b = b;
    b.wait_pattern(0, Pattern::SetupNeeded, BOOT_TIMEOUT);
    b.q.wait_line("cairn: ready", BOOT_TIMEOUT).unwrap();

    let seq = b.panel.cursor();
    b.panel.send(ToGuest::ButtonDown).unwrap();
    let countdown = b.wait_pattern(seq, Pattern::ResetCountdown, REACT);
    // At 10 s: "release now", a frantic flicker.
    let release = b.wait_pattern(countdown, Pattern::ReleaseNow, REACT);
    assert_eq!(b.status_led_shows(release, 1.0), Some(Pattern::ReleaseNow));
    let lines = b.q.line_count();
    b.panel.send(ToGuest::ButtonUp).unwrap();

    // The device wipes itself, reboots, and comes back as new.
    b.q.wait_line_from(lines, "cairn: factory reset: data wiped; rebooting", REACT)
        .unwrap();
    let (again, _) =
        b.q.wait_line_from(lines, "cairn: stage 1: starting", BOOT_TIMEOUT)
            .unwrap();
    // The next boot wipes again before any service starts (what services wrote while
    // stopping goes too).
    b.q.wait_line_from(
        again,
        "cairn: factory reset: finishing the wipe",
        BOOT_TIMEOUT,
    )
    .unwrap();
    b.q.wait_line_from(again, "cairn: ready", BOOT_TIMEOUT)
        .unwrap();
    b.wait_pattern(release, Pattern::SetupNeeded, BOOT_TIMEOUT);

    b.q.power_button().unwrap();
    assert!(b.q.wait_exit(SHUTDOWN_TIMEOUT).unwrap().success());
    let root = data_root(&b.q.disk());
    assert!(
        !root.contains(&"marker".to_string()),
        "the owner's file survived: {root:?}"
    );
    assert!(root.contains(&"lost+found".to_string()), "{root:?}");
}
