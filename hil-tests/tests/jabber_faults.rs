//! Jabber's bad input and faults on the plug, seen from real clients (slixmpp) through QEMU's
//! forward of port 5222: wrong passwords refused and then throttled while the household's
//! other accounts still sign in, Prosody killed (the supervisor restarts it, the clients log in
//! again and chat), the data partition full (Prosody runs on, the message still goes through,
//! the dashboard says why), and Prosody's log through `cairn ctl logs prosody`.
//!
//! It boots the test image with the system layer (`scripts/image qemu-virt --test-layer`): the
//! product's services and Prosody, plus the fixture that kills a process and fills the disk
//! from inside. One boot carries every step.

use cairn_bsp::panel::PanelLink;
use cairn_hil::browser::{set_up_through_forward, Browser};
use cairn_hil::{free_port, image, service, Config, FixturePort, Qemu, BOOT_TIMEOUT};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The owner's passphrase.
const PASSPHRASE: &str = "correct horse battery staple";
/// A client step (each of the script's waits is bounded by 60 s inside).
const STEP: Duration = Duration::from_secs(180);
/// Prosody back after a kill: Lua starting on an emulated CPU.
const RESTART: Duration = Duration::from_secs(120);
/// A page's reaction to a click on a loaded 2-core machine.
const REACT: Duration = cairn_hil::browser::SETUP_REACT;
/// The dashboard catching up with what PID 1 and Prosody say.
const DASHBOARD: Duration = Duration::from_secs(60);

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/xmpp_faults.py")
}

fn client(mode: &str, xmpp: u16) -> Command {
    let mut c = Command::new("/usr/bin/python3");
    c.arg(script())
        .args([mode, "127.0.0.1", &xmpp.to_string(), "cairn.local"])
        .args(["alex", "alex's long password", "sam", "sam's long password"]);
    c
}

/// The JSON lines a client script prints, each within `STEP`.
struct Lines {
    child: Child,
    stdin: ChildStdin,
    rx: mpsc::Receiver<String>,
}

impl Lines {
    fn spawn(mut cmd: Command) -> Lines {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 with slixmpp (scripts/setup installs python3-slixmpp)");
        let stdin = child.stdin.take().unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let (tx, rx) = mpsc::sync_channel(16);
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines { child, stdin, rx }
    }

    fn next(&mut self) -> serde_json::Value {
        let line = self.rx.recv_timeout(STEP).unwrap_or_else(|e| {
            let _ = self.child.kill();
            panic!("no line from the client in {STEP:?}: {e}")
        });
        let v: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("the client's line is not JSON ({e}): {line}"));
        assert!(v.get("error").is_none(), "{v:#}");
        v
    }

    fn tell(&mut self, what: &str) {
        writeln!(self.stdin, "{what}").unwrap();
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn prosody(port: &mut FixturePort) -> serde_json::Value {
    service(&port.status().unwrap(), "prosody").unwrap().clone()
}

/// Waits (at most [`RESTART`]) until Prosody is ready as another process than `pid`;
/// returns its status.
fn prosody_back(port: &mut FixturePort, pid: Option<u64>) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let p = prosody(port);
        if p["state"] == "ready" && p["pid"].as_u64() != pid {
            return p;
        }
        assert!(start.elapsed() < RESTART, "Prosody not back: {p}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The fixture's next answer.
fn answer(port: &mut FixturePort) -> String {
    port.answer(STEP).unwrap()
}

/// Waits until the dashboard's Jabber part (`#jabber` and what follows) says `text`.
fn dashboard_says(b: &mut Browser, origin: &str, text: &str) -> String {
    b.reload_until(&format!("{origin}/admin/"), text, DASHBOARD)
        .unwrap()
}

#[test]
fn prosody_weathers_wrong_passwords_a_kill_and_a_full_disk() {
    let mut cfg = Config::new(image("cairn-qemu-virt-test-layer.img").unwrap());
    let (https, xmpp) = (free_port(), free_port());
    cfg.https_port = Some(https);
    cfg.tcp_forwards.push((xmpp, 5222));
    let mut q = Qemu::boot(&cfg).unwrap();
    let web = q.wait_line("cairn: web: https://", BOOT_TIMEOUT).unwrap();
    q.wait_line("cairn: ready", BOOT_TIMEOUT).unwrap();
    let mut port = FixturePort::plug(&mut q).unwrap();
    let panel: PanelLink = q.panel().unwrap();
    assert_eq!(prosody(&mut port)["state"], "ready");

    // 1. Two household accounts (through Prosody's admin socket, as the Chat page makes them).
    for (name, password) in [
        ("alex", "alex's long password"),
        ("sam", "sam's long password"),
    ] {
        // Prosody listens on 5222 (ready) a moment before its admin socket is there.
        let start = Instant::now();
        loop {
            port.send(&format!("xmpp-account {name} cairn.local {password}"))
                .unwrap();
            let said = answer(&mut port);
            if said == format!("account {name}@cairn.local") {
                break;
            }
            assert!(
                said.contains("Jabber is not running") && start.elapsed() < STEP,
                "{said}"
            );
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    // 2. The owner sets the plug up as "cairn" (the same Jabber domain). Setup publishes the
    // names to the services anew and restarts Prosody: the throttle below waits for that, as a
    // restart in its middle would drop its connections.
    let unclaimed = prosody(&mut port)["pid"].as_u64();
    let origin = format!("https://localhost:{https}");
    let mut b = set_up_through_forward(&web, https, &panel, "cairn", PASSPHRASE).unwrap();
    prosody_back(&mut port, unclaimed);

    // Wrong passwords for alex: refused, then throttled; sam behind the same address still
    // signs in; alex's right password works once the wait the plug named has passed.
    let mut throttle = Lines::spawn(client("throttle", xmpp));
    let seen = throttle.next();
    eprintln!("throttle: {seen}");
    assert!(seen.get("wrong_accepted").is_none(), "{seen:#}");
    // 10 at once; more only if the host was so slow that a try came back meanwhile.
    let failures = seen["wrong_failures"].as_u64().unwrap();
    assert!(
        failures >= 10,
        "throttled before the 10th failure: {seen:#}"
    );
    let text = seen["throttled_text"].as_str().unwrap_or_default();
    assert!(
        text.starts_with("too many wrong passwords: try again in "),
        "{seen:#}"
    );
    assert!(
        ["temporary-auth-failure", "session after the wait"]
            .contains(&seen["right_while_throttled"].as_str().unwrap_or_default()),
        "{seen:#}"
    );
    assert_eq!(seen["other_logged_in"], true, "{seen:#}");
    assert_eq!(seen["right_after_wait"], true, "{seen:#}");
    drop(throttle);

    // 3. The dashboard: Prosody running with its accounts (the owner's, made at setup, too).
    let dash = dashboard_says(&mut b, &origin, "Jabber: running, 3 accounts");
    assert!(!dash.contains("data partition is full"), "{dash}");

    // 4. Prosody killed under two connected clients: the supervisor starts it again, the
    // clients log in again and a message goes through.
    let mut chat = Lines::spawn(client("survive", xmpp));
    let first = chat.next();
    assert_eq!(first["delivered_from"], "alex@cairn.local", "{first:#}");
    let before = prosody(&mut port);
    let pid = before["pid"].as_u64().unwrap();
    port.send(&format!("kill {pid}")).unwrap();
    assert_eq!(answer(&mut port), format!("killed {pid}"));
    let after = prosody_back(&mut port, Some(pid));
    assert_eq!(
        after["restarts"].as_u64(),
        before["restarts"].as_u64().map(|r| r + 1),
        "{after}"
    );
    chat.tell("killed");
    let back = chat.next();
    assert_eq!(back["reconnected"], true, "{back:#}");
    assert_eq!(back["delivered_from"], "alex@cairn.local", "{back:#}");

    // 5. The data partition full: Prosody runs on (no restart), the logged-in clients still
    // chat, and the dashboard says why Jabber cannot keep anything.
    port.send("fill /data").unwrap();
    let filled = answer(&mut port);
    let bytes = filled
        .strip_prefix("filled ")
        .unwrap_or_else(|| panic!("{filled}"));
    assert!(bytes.parse::<u64>().unwrap() > 0, "{filled}");
    chat.tell("full");
    let full = chat.next();
    assert_eq!(full["still_connected"], true, "{full:#}");
    assert_eq!(full["delivered_from"], "alex@cairn.local", "{full:#}");
    let dash = dashboard_says(&mut b, &origin, "The data partition is full: Jabber cannot");
    assert!(dash.contains("Jabber: running"), "{dash}");
    let still = prosody(&mut port);
    assert_eq!(
        (&still["state"], &still["pid"], &still["restarts"]),
        (&after["state"], &after["pid"], &after["restarts"]),
        "Prosody did not run on through the full disk"
    );
    let path = b.screenshot("jabber-faults-full").unwrap();
    eprintln!("screenshot: {}", path.display());
    // A new account cannot be kept: the Chat page says so, and lists no half-made one.
    b.goto(&format!("{origin}/admin/chat")).unwrap();
    b.fill("#new-account input[name=name]", "kim").unwrap();
    b.fill("#new-account input[name=password]", "kim's long password")
        .unwrap();
    b.click_to_next_page("#new-account button[type=submit]", REACT)
        .unwrap();
    let said = b.text_of("#chat-note").unwrap();
    eprintln!("a new account on a full disk: {said}");
    assert!(
        said.starts_with("kim@cairn.local: ") && said.contains("The data partition is full"),
        "{said}"
    );
    assert!(!b.text_of("#accounts").unwrap().contains("kim@"));
    port.send("unfill /data").unwrap();
    assert_eq!(answer(&mut port), "unfilled /data");
    let dash = dashboard_says(&mut b, &origin, "Jabber: running");
    assert!(!dash.contains("data partition is full"), "{dash}");
    chat.tell("done");
    assert_eq!(chat.next()["done"], true);

    // 6. Its log, as `cairn ctl logs prosody` shows it: Prosody's own lines, the throttle's.
    let (log, code) = port.ctl("logs prosody").unwrap();
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("Prosody version 0.12"), "{log}");
    assert!(
        log.contains("refused a login from") && log.contains("too many wrong passwords"),
        "{log}"
    );
}
