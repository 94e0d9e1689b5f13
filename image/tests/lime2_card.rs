//! The lime2 card (Olimex A20-OLinuXino-LIME2), which no QEMU machine runs (its u-boot hangs
//! after "DRAM" in every emulated one), read back from the bytes `scripts/image lime2` wrote
//! (`target/images/cairn-lime2.img`, built before the tests): the partition table, the SPL and
//! u-boot at 8 KiB byte for byte what the pinned `u-boot-sunxi` ships, `boot.scr`, slot A's
//! extlinux.conf naming a zImage and the A20 DTB that are there, and the armv7 hard-float
//! static `cairn` as the initramfs's `/init`.

use cairn_bsp::board::Bootloader;
use cairn_bsp::mbr::{self, SECTOR};
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

/// The cache `scripts/image` used (the boot packages are unpacked there, found by their pins).
fn cache() -> PathBuf {
    if let Some(c) = std::env::var_os("CAIRN_CACHE") {
        return PathBuf::from(c);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache"));
    base.join("cairn")
}

/// `path` in the FAT of partition `p` of `img`, by mtools.
fn fat_file(img: &Path, p: &mbr::Partition, path: &str) -> Vec<u8> {
    let out = Command::new("mcopy")
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-i")
        .arg(format!("{}@@{}", img.display(), p.start * SECTOR))
        .arg(format!("::{path}"))
        .arg("-")
        .output()
        .expect("mcopy (mtools)");
    assert!(
        out.status.success(),
        "{path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The file at `name` in a newc cpio archive.
fn cpio_file<'a>(archive: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let hex = |b: &[u8]| usize::from_str_radix(std::str::from_utf8(b).unwrap(), 16).unwrap();
    let pad = |n: usize| (n + 3) & !3;
    let mut at = 0;
    while at + 110 <= archive.len() {
        let h = &archive[at..at + 110];
        assert_eq!(&h[..6], b"070701", "not a newc header at {at}");
        let size = hex(&h[54..62]);
        let name_len = hex(&h[94..102]);
        let path = &archive[at + 110..at + 110 + name_len - 1];
        let data = pad(at + 110 + name_len);
        if path == b"TRAILER!!!" {
            return None;
        }
        if path == name.as_bytes() {
            return Some(&archive[data..data + size]);
        }
        at = pad(data + size);
    }
    None
}

#[test]
fn lime2_card_holds_its_spl_kernel_dtb_and_an_armv7_cairn() {
    let img = root().join("target/images/cairn-lime2.img");
    let card = std::fs::read(&img)
        .unwrap_or_else(|e| panic!("{}: {e} (scripts/image lime2 builds it)", img.display()));
    let head: [u8; 512] = card[..512].try_into().unwrap();

    // The partition table: boot (FAT, bootable) at 1 MiB, the two slots, data last.
    let part = |n| mbr::partition(&head, n).unwrap();
    let (boot, data, a, b) = (part(1), part(2), part(3), part(4));
    assert_eq!((boot.start, boot.kind, boot.bootable), (2048, 0x0C, true));
    assert_eq!((a.kind, b.kind, a.sectors), (0x0C, 0x0C, b.sectors));
    assert!(boot.start + boot.sectors <= a.start && a.start + a.sectors <= b.start);
    assert_eq!(data.kind, 0x83);
    assert_eq!((data.start + data.sectors) * SECTOR, card.len() as u64);

    // The SPL and u-boot at 8 KiB: the pinned package's bytes, an eGON boot header first.
    let (board, _) = cairn_image::load_board(&root().join("board/boards"), "lime2").unwrap();
    let Bootloader::UBootSpl { binary, offset_kib } = &board.bootloader else {
        panic!("lime2's bootloader is not an SPL on the card");
    };
    assert_eq!(*offset_kib, 8);
    let pins = cairn_image::system::Pins::load(&root().join("board/boot-packages.toml")).unwrap();
    let unpacked = cairn_image::system::unpack(&pins, "armhf", &cache()).unwrap();
    let (package, path) = binary.split_once(':').unwrap();
    assert!(path.contains("A20-OLinuXino-Lime2"), "{binary}");
    let spl = std::fs::read(unpacked.join(package).join(path.trim_start_matches('/'))).unwrap();
    let at = 8 << 10;
    assert_eq!(
        &card[at + 4..at + 12],
        b"eGON.BT0",
        "no SPL header at 8 KiB"
    );
    assert!(
        card[at..at + spl.len()] == spl[..],
        "the card's bytes at 8 KiB are not {binary}"
    );
    assert!(
        at + spl.len() <= 2016 * SECTOR as usize,
        "SPL over the slot records"
    );

    // The slot chooser on the boot partition (a legacy uImage script).
    let scr = fat_file(&img, &boot, "boot.scr");
    assert_eq!(&scr[..4], &[0x27, 0x05, 0x19, 0x56]);

    // Slot A: extlinux.conf and what it names.
    let conf = String::from_utf8(fat_file(&img, &a, "extlinux/extlinux.conf")).unwrap();
    assert!(conf.contains("  kernel /zImage\n"), "{conf}");
    assert!(
        conf.contains("  fdt /sun7i-a20-olinuxino-lime2.dtb\n"),
        "{conf}"
    );
    assert!(conf.contains("console=ttyS0,115200"), "{conf}");
    let zimage = fat_file(&img, &a, "zImage");
    assert_eq!(
        &zimage[0x24..0x28],
        &0x016F_2818u32.to_le_bytes(),
        "not an arm zImage"
    );
    let dtb = fat_file(&img, &a, "sun7i-a20-olinuxino-lime2.dtb");
    assert_eq!(&dtb[..4], &[0xd0, 0x0d, 0xfe, 0xed], "not a DTB");
    assert!(
        dtb.windows(26).any(|w| w == b"olimex,a20-olinuxino-lime2"),
        "not the LIME2's DTB"
    );

    // The initramfs's /init: a static 32-bit little-endian ARM ELF for the hard-float ABI.
    let initramfs = fat_file(&img, &a, "initramfs.cpio");
    let init = cpio_file(&initramfs, "init").expect("no /init in the initramfs");
    assert_eq!(&init[..4], b"\x7fELF");
    assert_eq!((init[4], init[5]), (1, 1), "not ELF32 little-endian");
    assert_eq!(u16::from_le_bytes([init[18], init[19]]), 40, "not EM_ARM");
    let flags = u32::from_le_bytes(init[36..40].try_into().unwrap());
    assert_ne!(flags & 0x400, 0, "not EF_ARM_ABI_FLOAT_HARD ({flags:#x})");
    let (phoff, phentsize, phnum) = (
        u32::from_le_bytes(init[28..32].try_into().unwrap()) as usize,
        u16::from_le_bytes([init[42], init[43]]) as usize,
        u16::from_le_bytes([init[44], init[45]]) as usize,
    );
    let interp = (0..phnum).any(|i| {
        let ph = phoff + i * phentsize;
        u32::from_le_bytes(init[ph..ph + 4].try_into().unwrap()) == 3 // PT_INTERP
    });
    assert!(!interp, "/init asks for a dynamic loader");
    assert!(
        cpio_file(&initramfs, "etc/cairn/board.toml")
            .is_some_and(|b| b.windows(13).any(|w| w == b"name = \"lime2")),
        "not the lime2's board file"
    );
}
