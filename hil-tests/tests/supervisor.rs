//! The supervisor on the virtual board, with the test image's fixture services
//! (hil-tests/fixtures/services): a crashing service is restarted, a memory hog is OOM-killed
//! inside its own cgroup and restarted alone, a service ignoring SIGTERM is killed after its grace
//! and the shutdown completes, and `cairn ctl poweroff` powers QEMU off by itself.
//!
//! The `crasher` fixture takes commands on a virtio-serial port the test plugs in through QMP, so
//! the test can crash it and run `cairn ctl` inside the guest.

use cairn_hil::{image, Config, FixturePort, Qemu, BOOT_TIMEOUT, SHUTDOWN_TIMEOUT};
use serde_json::Value;
use std::time::Duration;

/// The harness's fixture port, unwrapping: a failure here fails the test with its message.
struct Port(FixturePort);

impl Port {
    fn plug(q: &mut Qemu) -> Port {
        Port(FixturePort::plug(q).unwrap())
    }

    fn send(&mut self, line: &str) {
        self.0.send(line).unwrap()
    }

    fn expect(&mut self, prefix: &str) -> String {
        self.0.expect(prefix).unwrap()
    }

    fn ctl(&mut self, args: &str) -> (String, i32) {
        self.0.ctl(args).unwrap()
    }

    fn status(&mut self) -> Vec<Value> {
        self.0.status().unwrap()
    }
}

fn service<'a>(status: &'a [Value], name: &str) -> &'a Value {
    cairn_hil::service(status, name).unwrap()
}

/// "started T pid P" → (T, P).
fn started(line: &str) -> (u64, u64) {
    let w: Vec<&str> = line.split_whitespace().collect();
    (w[0].parse().unwrap(), w[2].parse().unwrap())
}

fn boot() -> Qemu {
    let q = Qemu::boot(&Config::new(image("cairn-qemu-virt-test.img").unwrap())).unwrap();
    q.wait_line("cairn: crasher: ready", BOOT_TIMEOUT).unwrap();
    q
}

#[test]
fn crashed_service_is_restarted_and_memory_hog_is_killed_alone() {
    let mut q = boot();
    let mut port = Port::plug(&mut q);
    let (_, pid) = started(&port.expect("started"));
    port.send("crash");
    port.expect("crashing");
    let (_, new_pid) = started(&port.expect("started"));
    assert_ne!(pid, new_pid);
    q.wait_line(
        &format!("cairn: crasher: pid {pid} ended with signal 6"),
        Duration::from_secs(30),
    )
    .unwrap();

    // The hog grew past its 24 MiB cgroup limit: the kernel's memory-cgroup OOM killer took it,
    // and the supervisor started it again.
    let (i, killed) = q
        .wait_line_from(0, "cairn: hog: pid", BOOT_TIMEOUT)
        .unwrap();
    assert!(killed.ends_with("ended with signal 9"), "{killed}");
    q.wait_line_from(i, "cairn: hog: started", Duration::from_secs(30))
        .unwrap();
    let console = q.console();
    assert!(
        console
            .iter()
            .any(|l| l.contains("Memory cgroup out of memory")),
        "not a cgroup OOM kill:\n{}",
        console.join("\n")
    );
    // PID 1 holds the board's hardware watchdog (i6300esb) open, so it is armed: were the
    // pings to stop, the board would reset.
    port.send("fds 1");
    let fds = port.expect("fds");
    assert!(fds.split(' ').any(|f| f == "/dev/watchdog"), "{fds}");

    // "started" comes before the restarted hog says it is ready: wait for that, bounded.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        let status = port.status();
        if service(&status, "hog")["state"] == "ready" || std::time::Instant::now() > deadline {
            break status;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let hog = service(&status, "hog");
    assert_eq!(hog["state"], "ready");
    assert!(hog["restarts"].as_u64().unwrap() >= 1);
    assert!(hog["memory_bytes"].as_u64().unwrap() < 24 << 20);
    // Nobody else was taken down.
    assert_eq!(service(&status, "stubborn")["restarts"], 0);
    assert_eq!(service(&status, "stubborn")["state"], "ready");
    assert_eq!(service(&status, "crasher")["restarts"], 1);
    assert_eq!(service(&status, "crasher")["pid"], new_pid);
}

#[test]
fn ctl_poweroff_kills_the_term_ignoring_service_and_powers_off() {
    let mut q = boot();
    q.wait_line("cairn: stubborn: ready", BOOT_TIMEOUT).unwrap();
    let mut port = Port::plug(&mut q);
    port.expect("started");
    // The stubborn fixture runs as its own user, created at boot.
    let (logs, code) = port.ctl("logs stubborn");
    assert_eq!(code, 0, "{logs}");
    let uid: u32 = logs
        .lines()
        .find_map(|l| l.split(" uid ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|u| u.parse().ok())
        .unwrap_or_else(|| panic!("no uid in {logs}"));
    assert_ne!(uid, 0, "stubborn runs as root");
    port.send("ctl poweroff");
    let status = q.wait_exit(SHUTDOWN_TIMEOUT).unwrap();
    assert!(status.success(), "QEMU exit status {status}");
    let console = q.console();
    let text = console.join("\n");
    assert!(
        text.contains("cairn: poweroff requested by control socket"),
        "{text}"
    );
    assert!(
        text.contains("cairn: stubborn: still running after its grace period; killed"),
        "{text}"
    );
    assert!(text.contains("cairn: stage 3: poweroff"), "{text}");
    assert!(!text.contains("Kernel panic"), "{text}");
    // The log rings were saved to the data partition on the way down.
    let saved = read_data_file(&q.disk(), "/cairn/logs/stubborn.log");
    assert!(saved.contains("ignores SIGTERM"), "{saved}");
    assert!(
        saved.contains("stubborn: still running after its grace period; killed"),
        "{saved}"
    );
}

/// A file from the ext4 data partition (MBR entry 2) of a disk image, read with debugfs.
fn read_data_file(disk: &std::path::Path, path: &str) -> String {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(disk).unwrap();
    let data = cairn_hil::partition(disk, 2).unwrap();
    let (start, len) = (data.offset(), data.bytes());
    let dir = tempfile::tempdir().unwrap();
    let part = dir.path().join("data.img");
    let mut buf = vec![0u8; len as usize];
    f.read_exact_at(&mut buf, start).unwrap();
    std::fs::write(&part, &buf).unwrap();
    let out = std::process::Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat {path}"))
        .arg(&part)
        .output()
        .expect("debugfs (e2fsprogs)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_crash_loop_marks_the_service_failed_and_the_status_led_shows_amber_until_the_retry() {
    let mut q = boot();
    let mut port = Port::plug(&mut q);
    // Five failures within a minute: the supervisor stops restarting until its long retry.
    for _ in 0..5 {
        port.expect("started");
        port.send("crash");
        port.expect("crashing");
    }
    let (i, failed) = q
        .wait_line_from(0, "cairn: crasher: failed", Duration::from_secs(60))
        .unwrap();
    assert!(failed.contains("next try in 10m"), "{failed}");
    // Degraded (amber), not error: an unattended plug tries the service again by itself.
    q.wait_line_from(i, "cairn: leds: degraded", Duration::from_secs(30))
        .unwrap();
    // Nothing else went down with it.
    let console = q.console();
    assert!(
        !console
            .iter()
            .any(|l| l.starts_with("cairn: stubborn: failed")),
        "{}",
        console.join("\n")
    );
}
