//! The owner's first hour with a new plug, in a real browser against the booted qemu-virt image:
//! the console's address and fingerprint, the claim with the button (one browser, then two at
//! once), the setup form with bad and good values, the recovery key, files and a folder up and
//! a zip down, the owner's site (a zip leaving it refused on the page), a script's POST
//! without the form's token, the login's rate limit, the health API, and a reboot from the
//! dashboard. The browser trusts the device only by the fingerprint its console printed; the
//! button and LEDs are the qemu-virt board's front panel. Each step writes a screenshot
//! (`target/screens/web-*.png`).
//!
//! One boot carries every step, in order, as the person's hour goes: each step needs what the
//! one before left (a claimed device, a session).

use cairn_bsp::panel::PanelLink;
use cairn_bsp::pattern::{recognize, Pattern};
use cairn_hil::browser::{
    https_request, pin_from_fingerprint, Browser, Scope, SpkiPin, Viewport, WAITING,
};
use cairn_hil::{image, Config, Qemu, BOOT_TIMEOUT};
use std::time::Duration;

/// The owner's passphrase.
const PASSPHRASE: &str = "correct horse battery staple";
/// What the page says once two browsers waited for one press (the web's `claim::OVERLAP`).
const OVERLAP: &str =
    "more than one browser is trying to set up this device: close the others and press again";
/// A page's reaction to a click or a press on a loaded 2-core machine.
const REACT: Duration = Duration::from_secs(20);
/// A form whose answer hashes the passphrase (Argon2id, 19 MiB, on an emulated CPU).
const HASHING: Duration = Duration::from_secs(60);
/// A small upload through the vault and the storage node on an emulated board.
const UPLOAD: Duration = Duration::from_secs(90);
/// How far an LED spell may stray from the pattern's timing on an emulated board (as in
/// board.rs: patterns differ by at least 75 ms per spell).
const TOLERANCE_MS: u64 = 60;
/// Long enough to see a pattern repeat: setup-needed's cycle is 2 s.
const LED_WATCH: Duration = Duration::from_millis(4500);
/// How many times an LED is watched for its pattern before the test gives up.
const LED_LOOKS: usize = 3;
/// The disk the plug boots from: a 4 GiB card, so that the storage slider has room.
const DISK_BYTES: u64 = 4 << 30;
/// Wrong passphrases one address may try before the login refuses (the web's
/// `auth::CLIENT_FAILURES_MAX`).
const WRONG_PASSPHRASES_MAX: usize = 5;

/// The booted plug: its console, its front panel, and how a browser on this host reaches it.
struct Plug {
    q: Qemu,
    panel: PanelLink,
    /// The host port QEMU forwards to the plug's 443.
    port: u16,
}

/// What the console's `cairn: web:` line says.
struct Announcement {
    address: String,
    name: String,
    fingerprint: String,
}

impl Plug {
    /// Boots a fresh copy of the product image, with the front panel connected from the start
    /// so that no LED change is missed.
    fn boot() -> Plug {
        let mut cfg = Config::new(image("cairn-qemu-virt.img").unwrap());
        cfg.disk_bytes = Some(DISK_BYTES);
        // A real plug comes back after a reboot: QEMU resets instead of exiting.
        cfg.reboot = true;
        let port = cairn_hil::free_port();
        cfg.https_port = Some(port);
        let q = Qemu::boot(&cfg).unwrap();
        let panel = q.panel().unwrap();
        Plug { q, panel, port }
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port)
    }

    /// The `cairn: web:` line after console line `from`, then `cairn: ready` after it.
    fn announcement(&self, from: usize) -> (usize, Announcement) {
        let (i, line) = self
            .q
            .wait_line_from(from, "cairn: web: https://", BOOT_TIMEOUT)
            .unwrap();
        self.q
            .wait_line_from(i, "cairn: ready", BOOT_TIMEOUT)
            .unwrap();
        (i, parse_announcement(&line))
    }

    /// The web's next `cairn: web:` line after console line `from` that names `name`: the
    /// certificate made anew for the name setup gave.
    fn announcement_of(&self, from: usize, name: &str) -> Announcement {
        let (_, line) = self
            .q
            .wait_line_from(from, &format!("/ ({name}) certificate SHA-256"), REACT)
            .unwrap();
        parse_announcement(&line)
    }

    /// A short press of the setup button, as a finger does it.
    fn press(&self) {
        self.panel.press(Duration::from_millis(300)).unwrap();
    }

    /// Waits for the board to announce `pattern` after panel message `from`; returns the
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

    /// Whether the status LED's blinking shows `pattern`, watched from now on for
    /// [`LED_WATCH`] at a time, up to [`LED_LOOKS`] times: an emulated board's LED thread can
    /// be late while the host starts a browser, and a spell stretched past the tolerance
    /// tells nothing, where a single clean cycle does.
    fn status_led_blinks(&self, pattern: Pattern) -> bool {
        let mut seen = Vec::new();
        for _ in 0..LED_LOOKS {
            let from = self.panel.cursor();
            std::thread::sleep(LED_WATCH);
            let changes = self.panel.led_changes(from, "status");
            if recognize(&changes, TOLERANCE_MS) == Some(pattern) {
                return true;
            }
            seen.push(changes);
        }
        eprintln!("the status LED's changes, (ms, lit), in each look: {seen:?}");
        false
    }

    /// Whether the status LED stays lit, as "healthy" is (a steady pattern has no rhythm to
    /// recognize), for [`LED_WATCH`] from panel message `from` on.
    fn status_led_steady_on(&self, from: u64) -> bool {
        std::thread::sleep(LED_WATCH);
        let lit = |c: &[(u64, bool)]| c.iter().all(|&(_, on)| on);
        lit(&self.panel.led_changes(from, "status"))
            && self
                .panel
                .led_changes(0, "status")
                .last()
                .is_some_and(|&(_, on)| on)
    }

    /// The console's lines from `from` on that start with `prefix`.
    fn lines_since(&self, from: usize, prefix: &str) -> Vec<String> {
        self.q.console()[from..]
            .iter()
            .filter(|l| l.starts_with(prefix))
            .cloned()
            .collect()
    }
}

/// A browser at `url`, pinned to the device's key.
fn browser_at(pin: &SpkiPin, viewport: Viewport, url: &str) -> Browser {
    let mut b = Browser::open(pin, viewport).unwrap();
    b.goto(url).unwrap();
    b
}

fn shot(b: &mut Browser, name: &str) {
    let path = b.screenshot(name).unwrap();
    eprintln!("screenshot: {}", path.display());
}

#[test]
fn the_owners_first_hour_in_a_browser() {
    let plug = Plug::boot();

    // 1. The console says where the plug is and which certificate is its own; the browser
    // trusts that certificate's key and nothing else. The LEDs ask for setup.
    let (said, web) = plug.announcement(0);
    assert_eq!(
        web.address, "10.0.2.15",
        "the plug's address on the console"
    );
    assert_eq!(web.name, "cairn.local");
    let pin = pin_from_fingerprint("localhost", plug.port, &web.fingerprint).unwrap();
    plug.wait_pattern(0, Pattern::SetupNeeded, BOOT_TIMEOUT);
    assert!(plug.status_led_blinks(Pattern::SetupNeeded));

    // 2. Browser A, a phone: "Press the button". Nobody presses for 3 s: it still waits.
    let mut a = browser_at(&pin, Viewport::PHONE, &plug.url("/"));
    assert_eq!(a.text_of("h1").unwrap(), "Press the button on your Cairn");
    a.wait_for_text(Scope::Css("#status"), WAITING, REACT)
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(a.text_of("#status").unwrap(), WAITING);
    assert_eq!(a.url().unwrap(), plug.url("/"));
    shot(&mut a, "web-1-press-the-button");

    // 3. Browser B waits too; one press: both are refused, nobody is given the device, and
    // the window the press opened closes at once (the fast blink stops) so that the press
    // asked for next opens a new one.
    let mut b = browser_at(&pin, Viewport::DESKTOP, &plug.url("/"));
    assert_eq!(b.text_of("h1").unwrap(), "Press the button on your Cairn");
    b.wait_for_text(Scope::Css("#status"), WAITING, REACT)
        .unwrap();
    let seq = plug.panel.cursor();
    plug.press();
    let opened = plug.wait_pattern(seq, Pattern::PairingOpen, REACT);
    for (who, browser) in [("A", &mut a), ("B", &mut b)] {
        let status = browser
            .wait_for_text(Scope::Css("#status"), OVERLAP, REACT)
            .unwrap_or_else(|e| panic!("browser {who}: {e:#}"));
        assert_eq!(status, OVERLAP, "browser {who}");
        assert_eq!(browser.text_of("#again").unwrap(), "Try again");
    }
    shot(&mut a, "web-2-two-browsers-a");
    shot(&mut b, "web-2-two-browsers-b");
    plug.wait_pattern(opened, Pattern::SetupNeeded, REACT);
    plug.q
        .wait_line_from(said, "cairn: button: pairing window 1 closed", REACT)
        .unwrap();
    assert_eq!(
        plug.lines_since(said, "cairn: setup:"),
        Vec::<String>::new()
    );

    // 4. B closes; A tries again and the next press is A's alone: the setup form.
    drop(b);
    a.click("#again").unwrap();
    a.wait_for_text(Scope::Css("#status"), WAITING, REACT)
        .unwrap();
    plug.press();
    a.wait_for_text(Scope::Css("h1"), "Set up your Cairn", REACT)
        .unwrap();
    assert_eq!(a.url().unwrap(), plug.url("/setup"));
    shot(&mut a, "web-3-setup-form");

    // A device name of markup and passphrases that differ: each field says what is wrong
    // beside it, the name comes back as the text typed (no script of it runs), and nothing is
    // stored.
    let lines = plug.q.line_count();
    a.fill("#name", "<script>alert(1)</script>").unwrap();
    a.fill("#passphrase", PASSPHRASE).unwrap();
    a.fill("#passphrase2", "correct horse battery stapler")
        .unwrap();
    a.click_to_next_page("button[type=submit]", REACT).unwrap();
    assert_eq!(
        a.text_of("#name ~ p.error").unwrap(),
        "only lowercase letters a–z, digits and hyphens"
    );
    assert_eq!(
        a.text_of("#passphrase2 ~ p.error").unwrap(),
        "the two passphrases differ"
    );
    assert_eq!(a.value_of("#name").unwrap(), "<script>alert(1)</script>");
    assert_eq!(a.alert_text().unwrap(), None, "the name ran as a script");
    // The page's one script is its own file: the name added none.
    assert_eq!(a.count("script").unwrap(), 1);
    assert_eq!(a.count("script[src='/static/setup.js']").unwrap(), 1);
    shot(&mut a, "web-4-setup-errors");
    assert_eq!(
        plug.lines_since(lines, "cairn: setup:"),
        Vec::<String>::new()
    );
    let home = https_request(
        "localhost",
        plug.port,
        &web.fingerprint,
        "GET / HTTP/1.1",
        "",
    )
    .unwrap();
    assert!(
        home.body.contains("Press the button on your Cairn"),
        "set up after a refused form: {}",
        home.body
    );

    // Good values: the name, the passphrase twice, 2 GiB offered with the slider, no domain:
    // the owner's vault is made and its recovery key shown; once its last group is typed, the
    // dashboard, the console's word, and the LED goes from "setup needed" to steady.
    a.fill("#name", "attic").unwrap();
    a.fill("#passphrase", PASSPHRASE).unwrap();
    a.fill("#passphrase2", PASSPHRASE).unwrap();
    // Home, then two steps right: 2 GiB (the node's own default is 1).
    a.type_keys("#offer", "\u{E011}\u{E014}\u{E014}").unwrap();
    assert_eq!(a.text_of("#offer-value").unwrap(), "2 GiB");
    assert_eq!(a.value_of("#domain").unwrap(), "");
    a.click_to_next_page("button[type=submit]", HASHING)
        .unwrap();
    assert_eq!(a.text_of("h1").unwrap(), "Your recovery key");
    let key = a.text_of("#recovery-key").unwrap();
    assert!(key.starts_with("cairn-recovery-1 "), "{key}");
    shot(&mut a, "web-4b-recovery-key");
    // Not done until it is confirmed: the LED still asks for setup, the console says nothing.
    assert!(plug.status_led_blinks(Pattern::SetupNeeded));
    assert_eq!(
        plug.lines_since(lines, "cairn: setup: done"),
        Vec::<String>::new()
    );
    a.fill("#last", "WXYZ").unwrap();
    a.click_to_next_page("button[type=submit]", REACT).unwrap();
    assert!(a
        .text_of("p.error")
        .unwrap()
        .starts_with("That is not the key's last group"));
    let seq = plug.panel.cursor();
    let last = key.rsplit('-').next().unwrap();
    a.fill("#last", last).unwrap();
    a.click_to_next_page("button[type=submit]", REACT).unwrap();
    assert_eq!(a.url().unwrap(), plug.url("/admin/"));
    assert_eq!(a.text_of("h1").unwrap(), "attic");
    let dashboard = a.text_of("body").unwrap();
    assert!(dashboard.contains("Health: healthy"), "{dashboard}");
    // The storage node's own figures, through its socket (the web is in its group): no
    // partners and nothing stored yet on a new plug.
    assert!(
        dashboard.contains("Offered to friends: 2.0 GiB"),
        "{dashboard}"
    );
    assert!(dashboard.contains("Partners: 0."), "{dashboard}");
    assert!(
        dashboard.contains("Your data: nothing stored yet."),
        "{dashboard}"
    );
    shot(&mut a, "web-5-dashboard");
    plug.q
        .wait_line_from(lines, "cairn: setup: done; this device is attic", REACT)
        .unwrap();
    // The same key, certified anew for attic.local at once: the console says the new
    // certificate's fingerprint, which scripts pin from now on (the browsers pin the key).
    let named = plug.announcement_of(lines, "attic.local");
    assert_ne!(named.fingerprint, web.fingerprint);
    let healthy = plug.wait_pattern(seq, Pattern::Healthy, REACT);
    assert!(plug.status_led_steady_on(healthy));

    // 5. Another browser, after the owner: the owner's site, and /setup is the login. A press
    // now claims nothing.
    let lines = plug.q.line_count();
    let mut c = browser_at(&pin, Viewport::DESKTOP, &plug.url("/"));
    assert_eq!(c.text_of("h1").unwrap(), "attic — a Cairn plug");
    shot(&mut c, "web-6-owners-site");
    plug.press();
    c.goto(&plug.url("/setup")).unwrap();
    assert_eq!(c.url().unwrap(), plug.url("/admin/login"));
    assert_eq!(c.text_of("h1").unwrap(), "Log in to your Cairn");
    shot(&mut c, "web-7-setup-is-the-login");
    plug.q
        .wait_line_from(lines, "cairn: button: pairing window open", REACT)
        .unwrap();
    assert_eq!(
        plug.lines_since(lines, "cairn: setup:"),
        Vec::<String>::new()
    );

    // 5b. Storage: no partners yet; an invitation code from the real node, to pass on.
    a.goto(&plug.url("/admin/storage")).unwrap();
    assert!(a
        .text_of("#partners")
        .unwrap()
        .starts_with("No partners yet."));
    a.click_to_next_page("form[action='/admin/storage/invite'] button", REACT)
        .unwrap();
    let code = a.value_of("#invitation").unwrap();
    assert!(code.starts_with("cairn1-") && code.len() > 40, "{code}");
    shot(&mut a, "web-5b-invitation");

    // 5c. Files: a file chosen in the browser is uploaded into the vault (through the storage
    // node, which keeps the shards on this plug until partners come), listed, and downloaded
    // whole; the dashboard says the data is below target, held only here.
    let dir = tempfile::tempdir().unwrap();
    let letter = dir.path().join("letter.txt");
    let content: String = (0..300_000u32)
        .map(|i| char::from(b'a' + (i.wrapping_mul(2_654_435_761) >> 27) as u8 % 26))
        .collect();
    std::fs::write(&letter, &content).unwrap();
    a.goto(&plug.url("/admin/files")).unwrap();
    assert!(a
        .text_of("#files-empty")
        .unwrap()
        .starts_with("Nothing stored yet"));
    a.type_keys("#pick-files", &letter.display().to_string())
        .unwrap();
    let listed = a
        .wait_for_text(Scope::Css("#files"), "letter.txt", UPLOAD)
        .unwrap();
    assert!(listed.contains("293 KiB"), "{listed}");
    shot(&mut a, "web-5c-files");
    let session = a.cookie("cairn_session").unwrap().unwrap();
    let got = https_request(
        "localhost",
        plug.port,
        &named.fingerprint,
        &format!(
            "GET /admin/files/get?path=letter.txt HTTP/1.1\r\nCookie: cairn_session={session}"
        ),
        "",
    )
    .unwrap();
    assert_eq!(got.status, 200);
    assert!(got.body == content, "the download differs from the upload");
    // A whole folder chosen in the browser: one more snapshot, whatever its number of files.
    let trip = dir.path().join("trip");
    std::fs::create_dir_all(trip.join("photos")).unwrap();
    std::fs::write(trip.join("day 1.txt"), "rain, then sun").unwrap();
    std::fs::write(trip.join("photos").join("sea.txt"), &content[..100_000]).unwrap();
    a.type_keys("#pick-folder", &trip.display().to_string())
        .unwrap();
    a.wait_for_text(Scope::Css("#files"), "trip/", UPLOAD)
        .unwrap();
    let snapshots = a.text_of("#snap").unwrap();
    assert!(
        snapshots.starts_with("2 — ") && snapshots.contains("3 files"),
        "the folder is snapshot 2: {snapshots}"
    );
    // Everything back as one zip, downloaded by the browser; another reader checks it.
    a.click("#zip-folder").unwrap();
    let zipped = a.downloaded("attic.zip", UPLOAD).unwrap();
    let mut z = zip::ZipArchive::new(std::io::Cursor::new(zipped)).unwrap();
    let mut read = |name: &str| {
        let mut f = z.by_name(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut text = String::new();
        std::io::Read::read_to_string(&mut f, &mut text).unwrap();
        text
    };
    assert!(
        read("letter.txt") == content,
        "letter.txt differs in the zip"
    );
    assert_eq!(read("trip/day 1.txt"), "rain, then sun");
    assert!(
        read("trip/photos/sea.txt") == content[..100_000],
        "sea.txt differs"
    );
    // 5d. The owner's site: a zip whose names leave the site is refused whole, on the page;
    // a good one chosen on the Files page is served at / to anyone.
    let zip_of = |path: &std::path::Path, files: &[(&str, &[u8])]| {
        use std::io::Write as _;
        let mut w = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        for (name, bytes) in files {
            w.start_file(*name, opts).unwrap();
            w.write_all(bytes).unwrap();
        }
        w.finish().unwrap();
    };
    let evil = dir.path().join("evil.zip");
    zip_of(
        &evil,
        &[
            ("index.html", b"<h1>hi</h1>"),
            ("../../etc/cairn.html", b"<h1>out</h1>"),
        ],
    );
    a.type_keys("#pick-site", &evil.display().to_string())
        .unwrap();
    let refused = a
        .wait_for_text(Scope::Css("#site-status"), "the site is as it was", UPLOAD)
        .unwrap();
    assert!(refused.contains("../../etc/cairn.html"), "{refused}");
    shot(&mut a, "web-5d-zip-refused");
    let site = dir.path().join("site.zip");
    zip_of(
        &site,
        &[(
            "attic-site/index.html",
            b"<!doctype html><title>Attic</title><h1>The attic's own page</h1>",
        )],
    );
    a.type_keys("#pick-site", &site.display().to_string())
        .unwrap();
    a.wait_for_text(
        Scope::Css("#site-status"),
        "Your site is served: 1 files",
        UPLOAD,
    )
    .unwrap();
    let mut visitor = browser_at(&pin, Viewport::PHONE, &plug.url("/"));
    assert_eq!(visitor.text_of("h1").unwrap(), "The attic's own page");
    shot(&mut visitor, "web-5d-owners-site");
    drop(visitor);

    a.goto(&plug.url("/admin/")).unwrap();
    let redundancy = a.text_of("#redundancy").unwrap();
    assert!(
        redundancy.contains("below its redundancy target")
            && redundancy.contains("only on this plug"),
        "{redundancy}"
    );

    // 6. A script with A's session but not its form's token: refused, nothing done. With the
    // token (read from A's dashboard), the same client gets past that check.
    let session = a
        .cookie("cairn_session")
        .unwrap()
        .expect("A's session cookie");
    let lines = plug.q.line_count();
    let post = |path: &str, body: &str| {
        https_request(
            "localhost",
            plug.port,
            &named.fingerprint,
            &format!(
                "POST {path} HTTP/1.1\r\nCookie: cairn_session={session}\r\n\
                 Content-Type: application/x-www-form-urlencoded"
            ),
            body,
        )
        .unwrap()
    };
    let forged = post("/admin/reboot", "");
    assert_eq!(forged.status, 403, "{forged:?}");
    assert!(
        forged.body.contains("This form is out of date"),
        "{}",
        forged.body
    );
    let csrf = a.value_of("input[name=csrf]").unwrap();
    let checked = post("/admin/restart", &format!("csrf={csrf}&service="));
    assert_eq!(checked.status, 400, "{checked:?}");
    assert!(checked.body.contains("Which service?"), "{}", checked.body);
    a.goto(&plug.url("/admin/")).unwrap();
    assert_eq!(a.text_of("h1").unwrap(), "attic");
    let after = plug.q.console()[lines..].join("\n");
    assert!(
        !after.contains("reboot") && !after.contains("stage 3"),
        "{after}"
    );

    // 7. Wrong passphrases in C, until the login refuses to check more (429). They came from
    // the address every browser here has (QEMU's NAT): the owner's browser, known since setup,
    // still logs out and in.
    for _ in 0..WRONG_PASSPHRASES_MAX {
        c.fill("#passphrase", "not the passphrase").unwrap();
        c.click_to_next_page("button[type=submit]", HASHING)
            .unwrap();
        assert_eq!(c.text_of("p.error").unwrap(), "Wrong passphrase.");
    }
    c.fill("#passphrase", PASSPHRASE).unwrap();
    c.click_to_next_page("button[type=submit]", REACT).unwrap();
    assert_eq!(
        c.text_of("p.error").unwrap(),
        "too many wrong passphrases from your address: try again in 15 minutes"
    );
    shot(&mut c, "web-8-rate-limited");
    a.click_to_next_page("form[action='/admin/logout'] button", REACT)
        .unwrap();
    assert_eq!(a.text_of("h1").unwrap(), "Log in to your Cairn");
    a.fill("#passphrase", PASSPHRASE).unwrap();
    a.click_to_next_page("button[type=submit]", HASHING)
        .unwrap();
    assert_eq!(a.text_of("h1").unwrap(), "attic");
    assert!(a.cookie("cairn_session").unwrap().is_some());
    assert_ne!(a.cookie("cairn_session").unwrap(), Some(session));

    // 8. The health API, as a browser shows it: the node and the web are ready.
    a.goto(&plug.url("/api/health")).unwrap();
    let health: serde_json::Value = serde_json::from_str(&a.text_of("body").unwrap()).unwrap();
    for name in ["node", "web"] {
        let s = health["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {health}"));
        assert_eq!(s["state"], "ready", "{health}");
    }
    assert_eq!(health["health"], "healthy", "{health}");
    shot(&mut a, "web-9-health");

    // 9. Reboot from the dashboard: the plug comes back as attic, its LED steady, no setup,
    // and the owner logs in. Its certificate is new (it names attic.local now): the console
    // says which, and a browser pinned to it is used.
    a.goto(&plug.url("/admin/")).unwrap();
    a.click("details summary").unwrap();
    let lines = plug.q.line_count();
    let seq = plug.panel.cursor();
    a.click_to_next_page("form[action='/admin/reboot'] button", REACT)
        .unwrap();
    assert_eq!(a.text_of("h1").unwrap(), "Rebooting");
    shot(&mut a, "web-10-rebooting");
    drop((a, c));
    let (_, again) = plug.announcement(lines);
    assert_eq!(again.name, "attic.local");
    assert_ne!(again.fingerprint, web.fingerprint);
    let pin = pin_from_fingerprint("localhost", plug.port, &again.fingerprint).unwrap();
    // From the new boot's first pattern on (the window step 5's press opened may have closed
    // into "healthy" before the reboot).
    let booting = plug.wait_pattern(seq, Pattern::Booting, BOOT_TIMEOUT);
    let healthy = plug.wait_pattern(booting, Pattern::Healthy, BOOT_TIMEOUT);
    assert!(plug.status_led_steady_on(healthy));
    // The owner's site is still served (its copy is on the data partition).
    let mut d = browser_at(&pin, Viewport::PHONE, &plug.url("/"));
    assert_eq!(d.text_of("h1").unwrap(), "The attic's own page");
    d.goto(&plug.url("/setup")).unwrap();
    assert_eq!(d.text_of("h1").unwrap(), "Log in to your Cairn");
    d.fill("#passphrase", PASSPHRASE).unwrap();
    d.click_to_next_page("button[type=submit]", HASHING)
        .unwrap();
    assert_eq!(d.text_of("h1").unwrap(), "attic");
    shot(&mut d, "web-11-after-reboot");
    assert_eq!(
        plug.lines_since(lines, "cairn: setup:"),
        Vec::<String>::new()
    );

    // 10. Factory reset from System: the passphrase, then a press of the button. The plug wipes
    // itself, reboots, and is new again: "Press the button", the LED asking for setup.
    d.goto(&plug.url("/admin/system")).unwrap();
    d.click("details:last-of-type summary").unwrap();
    d.fill("#reset-passphrase", PASSPHRASE).unwrap();
    let lines = plug.q.line_count();
    let seq = plug.panel.cursor();
    d.click_to_next_page("form[action='/admin/reset'] button", HASHING)
        .unwrap();
    assert_eq!(d.text_of("h1").unwrap(), "Press the button now");
    shot(&mut d, "web-12-reset-press-now");
    plug.q
        .wait_line_from(
            lines,
            "cairn: factory reset: asked from the owner's page",
            REACT,
        )
        .unwrap();
    plug.press();
    plug.q
        .wait_line_from(lines, "cairn: factory reset: data wiped; rebooting", REACT)
        .unwrap();
    drop(d);
    let (_, fresh) = plug.announcement(lines);
    assert_eq!(fresh.name, "cairn.local");
    let booting = plug.wait_pattern(seq, Pattern::Booting, BOOT_TIMEOUT);
    plug.wait_pattern(booting, Pattern::SetupNeeded, BOOT_TIMEOUT);
    let pin = pin_from_fingerprint("localhost", plug.port, &fresh.fingerprint).unwrap();
    let mut e = browser_at(&pin, Viewport::PHONE, &plug.url("/"));
    assert_eq!(e.text_of("h1").unwrap(), "Press the button on your Cairn");
    shot(&mut e, "web-13-new-again");
}

/// `cairn: web: https://10.0.2.15/ (cairn.local) certificate SHA-256 AB:CD:…`, read.
fn parse_announcement(line: &str) -> Announcement {
    let rest = line.split_once("https://").unwrap().1;
    let (address, rest) = rest.split_once("/ (").unwrap_or_else(|| panic!("{line}"));
    let (name, rest) = rest.split_once(") ").unwrap_or_else(|| panic!("{line}"));
    let fingerprint = rest
        .strip_prefix("certificate SHA-256 ")
        .unwrap_or_else(|| panic!("{line}"));
    Announcement {
        address: address.to_string(),
        name: name.to_string(),
        fingerprint: fingerprint.to_string(),
    }
}
