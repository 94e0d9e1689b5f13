//! The network and the storage node on the virtual board, as a person on the LAN sees them.
//!
//! The board's Ethernet is on QEMU's user-mode network, whose DHCP server leases 10.0.2.15/24.
//! QEMU runs it with `restrict=on` (nothing leaves the host), in which mode its server names no
//! router and no name server: the lease line says "no router". The node's TCP port 4001 is
//! forwarded from a free port on the host's loopback.
//!
//! Pairing: two boards joined by a virtual cable (no DHCP server: link-local addresses), both
//! buttons pressed, pair, and both front panels show the confirmation.

use cairn_bsp::panel::PanelLink;
use cairn_hil::{
    append_cmdline, claim_as, free_port, image, service, Config, Ethernet, FixturePort, Qemu,
    BOOT_TIMEOUT,
};
use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Bound for the LEDs to follow something the board did (generous for a loaded CI machine).
const REACT: Duration = Duration::from_secs(15);

/// libp2p's first words on a new connection (multistream-select 1.0: a varint length, then
/// the protocol line).
const MULTISTREAM: &[u8] = b"\x13/multistream/1.0.0\n";

#[test]
fn ethernet_gets_its_address_by_dhcp_and_the_node_serves_libp2p_on_it() {
    let port = free_port();
    let mut cfg = Config::new(image("cairn-qemu-virt-test.img").unwrap());
    cfg.tcp_forwards = vec![(port, 4001)];
    let mut q = Qemu::boot(&cfg).unwrap();
    let line = q.wait_line("cairn: net: eth0", BOOT_TIMEOUT).unwrap();
    assert_eq!(
        line,
        "cairn: net: eth0 10.0.2.15/24 no router (lease 86400 s)"
    );
    q.wait_line("cairn: ready", BOOT_TIMEOUT).unwrap();

    let mut fixture = FixturePort::plug(&mut q).unwrap();
    let status = fixture.status().unwrap();
    let node = service(&status, "node").unwrap();
    assert_eq!(node["state"], "ready", "{node}");
    assert_eq!(node["restarts"], 0, "{node}");
    // A libp2p peer on the LAN: the node answers the multistream-select greeting.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(MULTISTREAM).unwrap();
    let mut back = [0u8; MULTISTREAM.len()];
    s.read_exact(&mut back).unwrap();
    assert_eq!(&back[..], MULTISTREAM);
}

/// A copy of the test image whose pairing window lasts `window_s` (kernel command line),
/// claimed as `name` (only a claimed plug pairs).
fn image_with_window(dir: &Path, window_s: u64, name: &str) -> PathBuf {
    let disk = dir.join("disk.img");
    std::fs::copy(image("cairn-qemu-virt-test.img").unwrap(), &disk).unwrap();
    append_cmdline(&disk, &format!("cairn.pairing_window_s={window_s}")).unwrap();
    claim_as(&disk, name).unwrap();
    disk
}

/// A short press of the front panel's button.
fn press(panel: &PanelLink) {
    panel.press(Duration::from_millis(300)).unwrap();
}

#[test]
fn a_press_asks_the_node_to_pair_and_alone_on_the_lan_the_window_expires() {
    let dir = tempfile::tempdir().unwrap();
    let q = Qemu::boot(&Config::new(image_with_window(dir.path(), 5, "attic"))).unwrap();
    let panel = q.panel().unwrap();
    q.wait_line("cairn: ready", BOOT_TIMEOUT).unwrap();
    panel
        .wait_pattern(0, "healthy", BOOT_TIMEOUT)
        .expect("healthy");
    let seq = panel.cursor();
    let lines = q.line_count();
    press(&panel);
    let (_, open) = panel
        .wait_pattern(seq, "pairing-open", REACT)
        .expect("the window opens");
    q.wait_line_from(
        lines,
        "cairn: pairing: no other plug in pairing mode on this network",
        REACT + Duration::from_secs(5),
    )
    .unwrap();
    panel
        .wait_pattern(open, "healthy", REACT)
        .expect("back to healthy when the window expires");
    let console = q.console()[lines..].join("\n");
    assert!(!console.contains("confirmed"), "{console}");
}

/// Two free UDP ports on the host's loopback, for the two ends of a cable.
fn free_udp_ports() -> (u16, u16) {
    let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").unwrap();
    (
        a.local_addr().unwrap().port(),
        b.local_addr().unwrap().port(),
    )
}

/// The node's peer id, from its log (`cairn-node: PEERID starting, …`).
fn peer_id(q: &mut Qemu) -> String {
    let mut port = FixturePort::plug(q).unwrap();
    let (logs, code) = port.ctl("logs node").unwrap();
    assert_eq!(code, 0, "{logs}");
    logs.lines()
        .find_map(|l| {
            // Ed25519 peer ids all start so; the node names itself first thing.
            let id = l.strip_prefix("cairn-node: ")?.split(' ').next()?;
            id.starts_with("12D3KooW").then(|| id.to_string())
        })
        .unwrap_or_else(|| panic!("no peer id in {logs}"))
}

#[test]
fn two_plugs_on_one_cable_pair_when_both_buttons_are_pressed() {
    const WINDOW_S: u64 = 60;
    let (port_a, port_b) = free_udp_ports();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let ends = [
        (port_a, port_b, "52:54:00:00:00:0a"),
        (port_b, port_a, "52:54:00:00:00:0b"),
    ];
    let mut boards: Vec<Qemu> = dirs
        .iter()
        .zip(ends)
        .zip(["attic", "cellar"])
        .map(|((dir, (local_port, remote_port, mac)), name)| {
            let mut cfg = Config::new(image_with_window(dir.path(), WINDOW_S, name));
            cfg.ethernet = Ethernet::Cable {
                local_port,
                remote_port,
                mac: mac.into(),
            };
            Qemu::boot(&cfg).unwrap()
        })
        .collect();
    let panels: Vec<PanelLink> = boards.iter().map(|q| q.panel().unwrap()).collect();
    // No DHCP server on a cable: each board takes its link-local address.
    for q in &boards {
        q.wait_line("cairn: ready", BOOT_TIMEOUT).unwrap();
        let line = q.wait_line("cairn: net: eth0", BOOT_TIMEOUT).unwrap();
        assert!(line.contains(" 169.254."), "{line}");
        assert!(line.contains("/16 link-local"), "{line}");
    }
    let ids: Vec<String> = boards.iter_mut().map(peer_id).collect();
    assert_ne!(ids[0], ids[1]);

    let starts: Vec<(u64, usize)> = boards
        .iter()
        .zip(&panels)
        .map(|(q, p)| (p.cursor(), q.line_count()))
        .collect();
    for p in &panels {
        press(p);
    }
    let mut codes = Vec::new();
    for (i, (q, p)) in boards.iter().zip(&panels).enumerate() {
        let other = &ids[1 - i];
        let line = q
            .wait_line_from(
                starts[i].1,
                "cairn: pairing: ",
                Duration::from_secs(WINDOW_S) + REACT,
            )
            .unwrap()
            .1;
        // Both consoles show the same six digits, for the owners to compare.
        let code = line
            .strip_prefix(&format!("cairn: pairing: paired with {other}, code "))
            .unwrap_or_else(|| panic!("{line}"));
        codes.push(code.to_string());
        p.wait_pattern(starts[i].0, "confirmed", REACT)
            .unwrap_or_else(|| panic!("board {i}'s LEDs did not confirm"));
    }
    assert_eq!(codes[0], codes[1]);
    assert_eq!(codes[0].len(), 7, "{}", codes[0]);
}
