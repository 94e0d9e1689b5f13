//! The Raspberry Pi 4 image as a user flashes it: a copy of the real `cairn-rpi4.img` bytes,
//! grown like a bigger card, booted under QEMU's raspi4b by the u-boot on its own boot
//! partition (QEMU starts it in place of the GPU firmware, with the boot partition's DTB as
//! that firmware would hand it over), through boot.scr's slot choice, to `cairn: ready` — with
//! the data partition grown, the GPIO lines PID 1 took listed on the console, and a DHCP lease
//! on QEMU's usb-net (raspi4b has no GENET: the network comes through the SoC's DWC2 port,
//! the Pi 4's USB-C). An update's first boot is left to the Pi 3's test (rpi.rs): the same
//! boot.scr under the same u-boot release, and CI's time is short.
//!
//! The card's copy has the emulation-only device-tree changes `cairn_hil::RPI4_EMULATION`
//! lists (the image keeps the real DTB): QEMU lacks the Pi 4's PCIe, GENET, HDMI block and
//! RNG200, and puts the card on the Wi-Fi's SD controller instead of emmc2.
//! Not yet: a clean power-off (raspi4b has no power button QEMU can press).

use cairn_hil::{check_card_boot, PiCard};

#[test]
fn rpi4_card_boots_through_its_own_uboot_to_ready_and_grows() {
    let mut pi = PiCard::boot("rpi4").unwrap();
    // The card's own chain: the Pi 4's u-boot (its banner on the PL011, before it moves to
    // the mini UART), boot.scr choosing slot A, the slot's extlinux.conf with the board's DTB,
    // the kernel on the Pi 4's device tree; the data partition grown.
    let pl011 = pi.q.pl011_output().unwrap();
    assert!(
        pl011.contains("U-Boot 2023.01"),
        "no u-boot banner: {pl011}"
    );
    assert!(pl011.contains("RPI 4 Model B"), "{pl011}");
    check_card_boot(&pi.console, "bcm2711-rpi-4-b.dtb", "Raspberry Pi 4 Model B").unwrap();
    // The lines of the SoC's GPIO controller, which QEMU emulates.
    assert!(pi.has("cairn: board: status LED on pinctrl-bcm2711 line 42"));
    assert!(pi.has("cairn: board: setup button on pinctrl-bcm2711 line 17"));
    assert!(pi.has("cairn: board: power button on pinctrl-bcm2711 line 3"));
    // The Pi 4's red PWR LED is on the firmware's GPIO expander, which QEMU does not answer:
    // that one line is missing in emulation, and nothing else may fail.
    let errors = pi.errors_besides_expander_led("alert LED");
    assert!(errors.is_empty(), "boot logged errors: {errors:#?}");

    pi.pull_power_and_check_grown().unwrap();
}
