//! mDNS on the LAN, as another machine sees it: two plugs on one virtual cable (no DHCP server:
//! link-local addresses). Plug A was set up as `attic`, plug B as `cellar` (their data
//! partitions carry the claim marker `cairn/claimed` naming them); B asks the LAN for
//! `attic.local` with its test fixture (`resolve attic`, an mDNS query from B's guest) and gets
//! A's address.
//!
//! Port 5353 is shared on each plug: on A by the web (user `web`) and the storage node's libp2p
//! mDNS (user `node`); on B by those two and the fixture (root). The name resolving proves the
//! web's side; the two nodes pairing afterwards, which needs them to find each other by libp2p's
//! mDNS, proves the node's.

use cairn_bsp::panel::PanelLink;
use cairn_hil::{
    append_cmdline, claim_as, image, Config, Ethernet, FixturePort, Qemu, BOOT_TIMEOUT,
};
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The pairing window (kernel command line), long enough for both presses on a loaded machine.
const WINDOW_S: u64 = 60;
/// Without a DHCP server a plug takes its link-local address after 30 s; the web looks at its
/// addresses when the kernel reports it and then probes its names (~1 s): generous for two
/// emulated boards.
const NAMED_MAX: Duration = Duration::from_secs(90);
/// Bound for the LEDs and the console to follow a press.
const REACT: Duration = Duration::from_secs(15);

/// Two free UDP ports on the host's loopback, for the two ends of the cable.
fn free_udp_ports() -> (u16, u16) {
    let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").unwrap();
    (
        a.local_addr().unwrap().port(),
        b.local_addr().unwrap().port(),
    )
}

/// A copy of the test image in `dir` with the pairing window of [`WINDOW_S`].
fn disk_in(dir: &Path) -> PathBuf {
    let disk = dir.join("disk.img");
    std::fs::copy(image("cairn-qemu-virt-test.img").unwrap(), &disk).unwrap();
    append_cmdline(&disk, &format!("cairn.pairing_window_s={WINDOW_S}")).unwrap();
    disk
}

/// The plug's link-local address, from its console (`cairn: net: eth0 169.254.X.Y/16 link-local`).
fn link_local(q: &Qemu) -> String {
    let line = q.wait_line("cairn: net: eth0", BOOT_TIMEOUT).unwrap();
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_suffix("/16"))
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    assert!(addr.starts_with("169.254."), "{line}");
    addr.to_string()
}

/// Asks B's fixture to resolve `name` until it answers an address, at most [`NAMED_MAX`].
fn resolve(port: &mut FixturePort, name: &str) -> String {
    let deadline = Instant::now() + NAMED_MAX;
    let mut last = String::new();
    while Instant::now() < deadline {
        port.send(&format!("resolve {name}")).unwrap();
        // Other lines (the fixture's greeting) are skipped.
        last = loop {
            let line = port.expect("").unwrap();
            if line.starts_with(&format!("resolved {name} "))
                || line.starts_with(&format!("unresolved {name}"))
            {
                break line;
            }
        };
        if let Some(addr) = last.strip_prefix(&format!("resolved {name} ")) {
            return addr.to_string();
        }
    }
    panic!("{name}.local did not resolve within {NAMED_MAX:?}: {last}");
}

/// Waits, at most [`NAMED_MAX`], for the web's log (through PID 1) to hold `line`.
fn wait_logged(port: &mut FixturePort, line: &str) {
    let deadline = Instant::now() + NAMED_MAX;
    loop {
        let (logs, code) = port.ctl("logs web").unwrap();
        assert_eq!(code, 0, "{logs}");
        if logs.contains(line) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{line:?} not logged within {NAMED_MAX:?}:\n{logs}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// A short press of the front panel's button.
fn press(panel: &PanelLink) {
    panel.press(Duration::from_millis(300)).unwrap();
}

#[test]
fn a_plug_named_attic_is_found_as_attic_local_from_the_other_plug_on_the_cable() {
    let (port_a, port_b) = free_udp_ports();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let disks: Vec<PathBuf> = dirs.iter().map(|d| disk_in(d.path())).collect();
    claim_as(&disks[0], "attic").unwrap();
    // Only a claimed plug pairs (the presses at the end).
    claim_as(&disks[1], "cellar").unwrap();
    let ends = [
        (port_a, port_b, "52:54:00:00:00:1a"),
        (port_b, port_a, "52:54:00:00:00:1b"),
    ];
    let mut boards: Vec<Qemu> = disks
        .into_iter()
        .zip(ends)
        .map(|(disk, (local_port, remote_port, mac))| {
            let mut cfg = Config::new(disk);
            cfg.ethernet = Ethernet::Cable {
                local_port,
                remote_port,
                mac: mac.into(),
            };
            Qemu::boot(&cfg).unwrap()
        })
        .collect();
    let panels: Vec<PanelLink> = boards.iter().map(|q| q.panel().unwrap()).collect();
    for q in &boards {
        q.wait_line("cairn: ready", BOOT_TIMEOUT).unwrap();
        // The web runs on the image and told the console where it is.
        q.wait_line("cairn: web: https://", BOOT_TIMEOUT).unwrap();
    }
    let a_addr = link_local(&boards[0]);
    let b_addr = link_local(&boards[1]);
    assert_ne!(a_addr, b_addr);

    let mut b_port = FixturePort::plug(&mut boards[1]).unwrap();
    assert_eq!(resolve(&mut b_port, "attic"), a_addr);

    // A's web says what it publishes (its log, through PID 1): both names, the address.
    let mut a_port = FixturePort::plug(&mut boards[0]).unwrap();
    wait_logged(
        &mut a_port,
        &format!(
            "web: mdns: cairn.local and attic.local (_https._tcp.local. port 443) at {a_addr}"
        ),
    );

    // B publishes its own name. Its web may not yet have looked at its addresses since the
    // IPv4 one came (it looks every 5 s), so the line is waited for, bounded.
    wait_logged(
        &mut b_port,
        &format!(
            "web: mdns: cairn.local and cellar.local (_https._tcp.local. port 443) at {b_addr}"
        ),
    );

    // The nodes still find each other by libp2p's mDNS on the same port: both presses pair.
    let starts: Vec<usize> = boards.iter().map(Qemu::line_count).collect();
    for p in &panels {
        press(p);
    }
    for (q, from) in boards.iter().zip(starts) {
        let line = q
            .wait_line_from(
                from,
                "cairn: pairing: ",
                Duration::from_secs(WINDOW_S) + REACT,
            )
            .unwrap()
            .1;
        assert!(line.starts_with("cairn: pairing: paired with "), "{line}");
    }
}
