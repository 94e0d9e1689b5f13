//! The foundation, as a person sees it: the image boots from its disk to `cairn: ready`, the
//! power button shuts it down cleanly, and the data partition fills a bigger card once.

use cairn_hil::{data_partition_sizes, image, Config, Qemu, BOOT_TIMEOUT, SHUTDOWN_TIMEOUT};

fn config() -> Config {
    Config::new(image("cairn-qemu-virt.img").unwrap())
}

#[test]
fn boots_from_disk_to_ready_without_errors() {
    let q = Qemu::boot(&config()).unwrap();
    q.wait_line("cairn: ready", BOOT_TIMEOUT).unwrap();
    let console = q.console();
    // The path a real board takes: u-boot runs boot.scr, which picks slot A (as flashed) and
    // reads its extlinux.conf from the disk.
    assert!(
        console.iter().any(|l| l.contains("U-Boot")),
        "no u-boot banner"
    );
    assert!(
        console
            .iter()
            .any(|l| l.contains("Retrieving file: /extlinux/extlinux.conf")
                || l.contains("extlinux.conf")),
        "u-boot did not read extlinux.conf"
    );
    assert!(
        console
            .iter()
            .any(|l| l.starts_with("cairn: boot: slot a ")),
        "boot.scr did not choose slot a"
    );
    let errors: Vec<_> = console
        .iter()
        .filter(|l| l.starts_with("cairn: error"))
        .collect();
    assert!(errors.is_empty(), "boot logged errors: {errors:#?}");
    assert!(console
        .iter()
        .any(|l| l.contains("data partition /dev/vda2") && l.contains("mounted on /data")));
}

#[test]
fn power_button_shuts_down_cleanly_and_qemu_exits_by_itself() {
    let mut q = Qemu::boot(&config()).unwrap();
    q.wait_line("cairn: ready", BOOT_TIMEOUT).unwrap();
    q.power_button().unwrap();
    let status = q.wait_exit(SHUTDOWN_TIMEOUT).unwrap();
    assert!(status.success(), "QEMU exit status {status}");
    let console = q.console().join("\n");
    assert!(console.contains("cairn: power button pressed"), "{console}");
    assert!(console.contains("cairn: stage 3: poweroff"), "{console}");
    assert!(!console.contains("Kernel panic"), "{console}");
}

#[test]
fn data_partition_grows_to_fill_the_disk_once() {
    let two_gib = 2u64 << 30;
    let mut cfg = config();
    cfg.disk_bytes = Some(two_gib);
    let (part_before, fs_before) = data_partition_sizes(&cfg.image).unwrap();
    assert!(
        part_before < 256 << 20,
        "the image's data partition starts small"
    );
    assert_eq!(part_before, fs_before);

    let mut q = Qemu::boot(&cfg).unwrap();
    let grew = q
        .wait_line("data partition /dev/vda2", BOOT_TIMEOUT)
        .unwrap();
    assert!(grew.contains("grew to"), "{grew}");
    q.wait_line("cairn: ready", BOOT_TIMEOUT).unwrap();
    q.power_button().unwrap();
    assert!(q.wait_exit(SHUTDOWN_TIMEOUT).unwrap().success());
    let (part, fs) = data_partition_sizes(&q.disk()).unwrap();
    // Everything before it stays: the gap, the boot partition and the system layer.
    let image_end = two_gib - cairn_hil::partition(&q.disk(), 2).unwrap().offset();
    assert!(
        part > image_end - (4 << 20) && part <= image_end,
        "partition {part} of {two_gib}"
    );
    assert!(
        fs > part - (4 << 20) && fs <= part,
        "ext4 {fs} in partition {part}"
    );

    // Second boot: already full size, nothing to grow.
    let mut q = Qemu::reboot_from(q, &cfg).unwrap();
    let line = q
        .wait_line("data partition /dev/vda2", BOOT_TIMEOUT)
        .unwrap();
    assert!(!line.contains("grew"), "grew again: {line}");
    q.wait_line("cairn: ready", BOOT_TIMEOUT).unwrap();
    q.power_button().unwrap();
    assert!(q.wait_exit(SHUTDOWN_TIMEOUT).unwrap().success());
    assert_eq!(data_partition_sizes(&q.disk()).unwrap(), (part, fs));
}
