//! The Raspberry Pi 3 image as a user flashes it: a copy of the real `cairn-rpi3.img` bytes,
//! grown like a bigger card, booted under QEMU's raspi3b by the u-boot on its own boot
//! partition (QEMU starts it in place of the GPU firmware), through boot.scr's slot choice, to
//! `cairn: ready` — with the data partition grown and the GPIO lines PID 1 took listed on the
//! console, and a DHCP lease on the Pi's Ethernet (QEMU's usb-net, plugged in once Linux's USB
//! host runs: `Qemu::plug_usb_net_into_linux` says why not from power-on); then an update's
//! first boot on that card (slot B on trial, the try counted by the card's u-boot, committed by
//! PID 1). Not yet: a clean power-off (raspi3b has no power button QEMU can press).

use cairn_hil::{
    check_card_boot, check_card_update_trial, check_grown_to_card, data_partition_sizes,
    emulated_card, image, Qemu, CARD_BYTES,
};
use std::time::Duration;

/// raspi3b emulates four Cortex-A53s in software and enumerates USB slowly: more time than
/// the virt board's.
const RPI_BOOT_TIMEOUT: Duration = Duration::from_secs(240);

/// From ready to the lease: the USB NIC comes late and DHCP may retry.
const LEASE_TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn rpi3_card_boots_through_its_own_uboot_to_ready_and_grows() {
    let flashed = image("cairn-rpi3.img").unwrap();
    let (part_before, _) = data_partition_sizes(&flashed).unwrap();
    // The card: the image's bytes on a bigger card, the watchdog disabled in this copy's DTB
    // (emulated_card says why); the image keeps it.
    let card_dir = tempfile::tempdir().unwrap();
    let cfg = emulated_card("rpi3", &flashed, card_dir.path()).unwrap();

    let mut q = Qemu::boot(&cfg).unwrap();
    q.wait_line("cairn: ready", RPI_BOOT_TIMEOUT).unwrap();
    let ready = q.time_of("cairn: ready").unwrap();
    eprintln!("rpi3: ready {:.1} s after power-on", ready.as_secs_f64());
    // The Pi's Ethernet (QEMU's usb-net, plugged in once Linux's USB runs) gets a DHCP lease
    // from QEMU's restricted user network.
    q.wait_line(
        "cairn: net: eth0 10.0.2.15/24 no router (lease 86400 s)",
        LEASE_TIMEOUT,
    )
    .unwrap();
    let console = q.console();
    let has = |needle: &str| console.iter().any(|l| l.contains(needle));
    // The card's own chain: u-boot, boot.scr choosing slot A, the slot's extlinux.conf with
    // the board's DTB, the kernel on the Pi 3's device tree; the data partition grown.
    check_card_boot(&console, "bcm2837-rpi-3-b.dtb", "Raspberry Pi 3 Model B").unwrap();
    // The lines of the SoC's GPIO controller, which QEMU emulates.
    assert!(has("cairn: board: setup button on pinctrl-bcm2835 line 17"));
    assert!(has("cairn: board: power button on pinctrl-bcm2835 line 3"));
    // QEMU's firmware mailbox does not answer the GPIO expander's requests, where the Pi 3's
    // ACT LED is: that one line is missing in emulation, and nothing else may fail.
    let errors: Vec<_> = console
        .iter()
        .filter(|l| l.starts_with("cairn: error"))
        .filter(|l| {
            !l.starts_with("cairn: error: status LED: GPIO chip 'raspberrypi-exp-gpio' line 2:")
        })
        .collect();
    assert!(errors.is_empty(), "boot logged errors: {errors:#?}");

    // raspi3b has no power button QEMU can press: pull the power, then read the card.
    q.pull_power();
    check_grown_to_card(&q.disk(), CARD_BYTES, part_before).unwrap();

    // An update's first boot on the same card, through the card's own u-boot and boot.scr.
    check_card_update_trial(&cfg, &q.disk(), RPI_BOOT_TIMEOUT).unwrap();
}
