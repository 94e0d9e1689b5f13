//! The Banana Pi M2 Ultra image as a user flashes it: a copy of the real `cairn-bpi-m2u.img`
//! bytes, grown like a bigger card, booted under QEMU's bpim2u by the card's own SPL and
//! u-boot (the emulated boot ROM loads the SPL from 8 KiB into the card; no firmware comes
//! from the host), through boot.scr's slot choice, to `cairn: ready` — with the data partition
//! grown, the GPIO lines PID 1 took listed on the console, Prosody from the armv7 system layer
//! (Debian's armhf packages) ready, and a DHCP lease on the board's GMAC from QEMU's user-mode
//! network (the card's kernel carries board/boards/sunxi/stmmac-keep-statistics.patch: without
//! it the first DMA interrupt oopses); then an update's first boot on that card as far as the
//! board's part goes (slot B on trial, the try counted on the card by its u-boot, slot B's
//! kernel, PID 1 on trial). The card's DTB gets QEMU's timer rate (`emulated_card` says why).
//! Not yet: a clean power-off (the board's power-off goes through the AXP221 PMIC, which QEMU
//! models without a power switch; bpim2u has no power button QEMU can press); the secondary
//! cores (QEMU's R40 does not start them: "CPU1: failed to come online", 3.5 s of the boot).

use cairn_hil::{
    check_card_boot, check_card_update_trial, check_grown_to_card, data_partition_sizes,
    emulated_card, image, Qemu, CARD_BYTES,
};
use std::time::Duration;

/// bpim2u emulates four Cortex-A7s in software: more time than the virt board's.
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

#[test]
fn bpim2u_card_boots_through_its_own_spl_to_ready_and_grows() {
    let flashed = image("cairn-bpi-m2u.img").unwrap();
    let (part_before, _) = data_partition_sizes(&flashed).unwrap();
    // The card: the image's bytes on a bigger card.
    let card_dir = tempfile::tempdir().unwrap();
    let cfg = emulated_card("bpi-m2u", &flashed, card_dir.path()).unwrap();

    let mut q = Qemu::boot(&cfg).unwrap();
    q.wait_line("cairn: ready", BOOT_TIMEOUT).unwrap();
    let ready = q.time_of("cairn: ready").unwrap();
    eprintln!("bpi-m2u: ready {:.1} s after power-on", ready.as_secs_f64());
    let console = q.console();
    let has = |needle: &str| console.iter().any(|l| l.contains(needle));
    // The card's own chain: the SPL (from 8 KiB), u-boot, boot.scr choosing slot A, the slot's
    // extlinux.conf with the board's DTB, the kernel on the M2 Ultra's device tree; the data
    // partition grown.
    assert!(has("U-Boot SPL 2023.01"), "no SPL banner");
    assert!(has("U-Boot 2023.01"), "no u-boot banner");
    check_card_boot(
        &console,
        "sun8i-r40-bananapi-m2-ultra.dtb",
        "Banana Pi BPI-M2-Ultra",
    )
    .unwrap();
    // The armv7 system layer (Debian's armhf packages), and Prosody from it.
    let layer = console
        .iter()
        .find(|l| l.starts_with("cairn: system layer "))
        .expect("no system layer line");
    assert!(layer.contains("mounted read-only on /usr"), "{layer}");
    q.wait_line("cairn: prosody: ready", BOOT_TIMEOUT).unwrap();
    // The lines of the R40's pin controller (QEMU maps its registers, so Linux drives it).
    assert!(has("cairn: board: status LED on 1c20800.pinctrl line 245"));
    assert!(has("cairn: board: alert LED on 1c20800.pinctrl line 244"));
    assert!(has(
        "cairn: board: setup button on 1c20800.pinctrl line 270"
    ));
    // Online through the GMAC: QEMU's DHCP server leases the address (with no router: the
    // test's user network is restricted to the host).
    let lease = q.wait_line("cairn: net: eth0", BOOT_TIMEOUT).unwrap();
    assert_eq!(
        lease, "cairn: net: eth0 10.0.2.15/24 no router (lease 86400 s)",
        "no DHCP lease"
    );
    let errors: Vec<_> = console
        .iter()
        .filter(|l| l.starts_with("cairn: error"))
        .collect();
    assert!(errors.is_empty(), "boot logged errors: {errors:#?}");

    // No power button QEMU can press, no power switch in its PMIC: pull the power, then read
    // the card.
    q.pull_power();
    check_grown_to_card(&q.disk(), CARD_BYTES, part_before).unwrap();

    // An update's first boot on the same card, through the card's own u-boot and boot.scr.
    check_card_update_trial(&cfg, &q.disk(), BOOT_TIMEOUT).unwrap();
}
