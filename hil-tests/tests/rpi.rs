//! The Raspberry Pi 3 image as a user flashes it: a copy of the real `cairn-rpi3.img` bytes,
//! grown like a bigger card, booted under QEMU's raspi3b by the u-boot on its own boot
//! partition (QEMU starts it in place of the GPU firmware), through boot.scr's slot choice, to
//! `cairn: ready` — with the data partition grown and the GPIO lines PID 1 took listed on the
//! console, and a DHCP lease on the Pi's Ethernet (QEMU's usb-net, plugged in once Linux's USB
//! host runs: `Qemu::plug_usb_net_into_linux` says why not from power-on); then an update's
//! first boot on that card as far as the board's part goes (slot B on trial, the try counted on
//! the card by its u-boot, slot B's kernel, PID 1 on trial). Not yet: a clean power-off (raspi3b has no power button QEMU can press).

use cairn_hil::{check_card_boot, check_card_update_trial, PiCard, PI_BOOT_TIMEOUT};

#[test]
fn rpi3_card_boots_through_its_own_uboot_to_ready_and_grows() {
    // The card: the image's bytes on a bigger card, the watchdog disabled in this copy's DTB
    // (emulated_card says why); the image keeps it. Booted to ready and the lease.
    let mut pi = PiCard::boot("rpi3").unwrap();
    // The card's own chain: u-boot, boot.scr choosing slot A, the slot's extlinux.conf with
    // the board's DTB, the kernel on the Pi 3's device tree; the data partition grown.
    assert!(pi.has("U-Boot 2023.01"), "no u-boot banner");
    check_card_boot(&pi.console, "bcm2837-rpi-3-b.dtb", "Raspberry Pi 3 Model B").unwrap();
    // The lines of the SoC's GPIO controller, which QEMU emulates.
    assert!(pi.has("cairn: board: setup button on pinctrl-bcm2835 line 17"));
    assert!(pi.has("cairn: board: power button on pinctrl-bcm2835 line 3"));
    // The Pi 3's ACT LED is on the firmware's GPIO expander, which QEMU does not answer: that
    // one line is missing in emulation, and nothing else may fail.
    let errors = pi.errors_besides_expander_led("status LED");
    assert!(errors.is_empty(), "boot logged errors: {errors:#?}");

    pi.pull_power_and_check_grown().unwrap();

    // An update's first boot on the same card, through the card's own u-boot and boot.scr.
    check_card_update_trial(&pi.cfg, &pi.q.disk(), PI_BOOT_TIMEOUT).unwrap();
}
