//! The network and the storage node on the virtual board, as a person on the LAN sees them.
//!
//! The board's Ethernet is on QEMU's user-mode network, whose DHCP server leases 10.0.2.15/24.
//! QEMU runs it with `restrict=on` (nothing leaves the host), in which mode its server names no
//! router and no name server: the lease line says "no router". The node's TCP port 4001 is
//! forwarded from a free port on the host's loopback.

use cairn_hil::{image, service, Config, FixturePort, Qemu, BOOT_TIMEOUT};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

/// A TCP port free on the host's loopback right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

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
