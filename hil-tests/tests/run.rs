//! `scripts/run`, as a person types it: it builds what is missing and boots the device the
//! tests boot — online by DHCP, to `cairn: ready` — and the device's power button (QMP) shuts
//! it down cleanly, after which `scripts/run` ends by itself.

use cairn_hil::Qmp;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// scripts/run may have an image to build first (the cargo builds are warm in scripts/test).
const RUN_TIMEOUT: Duration = Duration::from_secs(900);

/// Kills the whole process group of `scripts/run` if the test ends early.
struct Group(Child);

impl Drop for Group {
    fn drop(&mut self) {
        let pgid = format!("-{}", self.0.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &pgid])
            .stderr(Stdio::null())
            .status();
        let _ = self.0.wait();
    }
}

#[test]
fn scripts_run_boots_online_to_ready_and_powers_off_cleanly() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = tempfile::tempdir().unwrap();
    let (port, xmpp) = (cairn_hil::free_port(), cairn_hil::free_port());
    let mut child = Command::new(root.join("scripts/run"))
        .current_dir(&root)
        .env("CAIRN_RUN_DIR", dir.path())
        .env("CAIRN_HTTPS_PORT", port.to_string())
        .env("CAIRN_XMPP_PORT", xmpp.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0)
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let mut run = Group(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + RUN_TIMEOUT;
    let mut seen = Vec::new();
    let mut wait_for = |needle: &str| -> String {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no '{needle}' from scripts/run; last lines:\n{}",
                    seen[seen.len().saturating_sub(30)..].join("\n")
                ),
            }
        }
    };
    // Online: QEMU's DHCP server leases the address and names its router.
    let lease = wait_for("cairn: net: eth0");
    assert!(
        lease.contains("10.0.2.15/24 via 10.0.2.2"),
        "no DHCP lease: {lease}"
    );
    wait_for("cairn: ready");
    // A Jabber client on this host reaches the device's Prosody through the forward.
    let mut xmpp_stream = std::net::TcpStream::connect(("127.0.0.1", xmpp)).unwrap();
    xmpp_stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    std::io::Write::write_all(
        &mut xmpp_stream,
        b"<?xml version='1.0'?><stream:stream to='cairn.local' version='1.0' \
          xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>",
    )
    .unwrap();
    let mut opening = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&opening).contains("</stream:features>") && opening.len() < 8192
    {
        match std::io::Read::read(&mut xmpp_stream, &mut buf).unwrap() {
            0 => break,
            n => opening.extend_from_slice(&buf[..n]),
        }
    }
    let opening = String::from_utf8_lossy(&opening);
    assert!(opening.contains("from='cairn.local'"), "{opening}");
    // The QMP socket sits beside the disk; the power button powers the device off.
    assert!(dir.path().join("disk.img").is_file());
    assert!(dir.path().join("panel.sock").exists());
    let mut qmp = Qmp::connect(&dir.path().join("qmp.sock")).unwrap();
    qmp.execute("system_powerdown", serde_json::json!({}))
        .unwrap();
    wait_for("cairn: stage 3: poweroff");
    let exit = loop {
        if let Some(s) = run.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "scripts/run did not end");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(exit.success(), "scripts/run ended with {exit}");
}
