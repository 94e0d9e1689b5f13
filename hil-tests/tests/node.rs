//! The network and the storage node on the virtual board, as a person on the LAN sees them.
//!
//! The board's Ethernet is on QEMU's user-mode network, whose DHCP server leases 10.0.2.15/24.
//! QEMU runs it with `restrict=on` (nothing leaves the host), in which mode its server names no
//! router and no name server: the lease line says "no router".

use cairn_hil::{image, Config, Qemu, BOOT_TIMEOUT};

#[test]
fn ethernet_gets_its_address_by_dhcp_without_delaying_ready() {
    let q = Qemu::boot(&Config::new(image("cairn-qemu-virt.img").unwrap())).unwrap();
    let line = q.wait_line("cairn: net: eth0", BOOT_TIMEOUT).unwrap();
    assert_eq!(
        line,
        "cairn: net: eth0 10.0.2.15/24 no router (lease 86400 s)"
    );
    q.wait_line("cairn: ready", BOOT_TIMEOUT).unwrap();
}
