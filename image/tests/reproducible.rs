//! The image builder end to end on plain files: same inputs give the same bytes, and the disk
//! has the layout the bootloader and init expect.

use cairn_image::{bundle, execute, load_board, plan, Inputs};
use cairn_update::bootstate::{BootState, SlotRecord, COPY_SECTORS, RECORD_SECTORS};
use cairn_update::install::{self, Policy};
use cairn_update::keys::{SigningKey, TrustedKeys};
use cairn_update::slot::FileSlot;
use std::path::Path;

fn inputs(dir: &Path) -> Inputs {
    let boards = Path::new(env!("CARGO_MANIFEST_DIR")).join("../board/boards");
    let (board, board_text) = load_board(&boards, "qemu-virt").unwrap();
    std::fs::write(dir.join("Image"), vec![0x4b; 300_000]).unwrap();
    std::fs::write(dir.join("cairn"), b"\x7fELF not really").unwrap();
    Inputs {
        board,
        board_text,
        cairn: dir.join("cairn"),
        kernel: dir.join("Image"),
        services: vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("../hil-tests/fixtures/services")],
        system: None,
        boot_files: None,
        append: "quiet".into(),
        slot_mib: 16,
        data_mib: 32,
        update_keys: TrustedKeys::default(),
        build: 7,
        version: "0.1.0-7".into(),
    }
}

#[test]
fn same_inputs_same_bytes_and_the_expected_layout() {
    let dir = tempfile::tempdir().unwrap();
    let p = plan(&inputs(dir.path())).unwrap();
    let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
    execute(&p, &a).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100)); // a clock tick must not matter
    execute(&plan(&inputs(dir.path())).unwrap(), &b).unwrap();
    let (a, b) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    assert!(a == b, "two builds differ");
    // 1 MiB gap, boot 4, slots 16 + 16, data 32.
    assert_eq!(a.len() as u64, (1 + 4 + 16 + 16 + 32) << 20);
    assert_eq!(&a[510..512], &[0x55, 0xAA]);
    let entry = |n: usize| {
        let e = &a[446 + 16 * (n - 1)..446 + 16 * n];
        let start = u32::from_le_bytes(e[8..12].try_into().unwrap()) as usize * 512;
        let len = u32::from_le_bytes(e[12..16].try_into().unwrap()) as usize * 512;
        (e[0], start, len)
    };
    assert_eq!(entry(1), (0x80, 1 << 20, 4 << 20), "boot: bootable, first");
    assert_eq!(entry(3), (0, 5 << 20, 16 << 20), "slot A after boot");
    assert_eq!(entry(4), (0, 21 << 20, 16 << 20), "slot B after A");
    assert_eq!(entry(2), (0, 37 << 20, 32 << 20), "data: entry 2, last");
    // FAT boot sectors, the ext4 superblock magic in the data partition.
    for at in [1 << 20, 5 << 20, 21 << 20] {
        assert_eq!(&a[at + 510..at + 512], &[0x55, 0xAA]);
    }
    let sb = (37 << 20) + 1024;
    assert_eq!(&a[sb + 56..sb + 58], &0xEF53u16.to_le_bytes());
    // As flashed: slot A good, nothing on trial; A's record names the build.
    let sector = |n: u64| &a[n as usize * 512..(n as usize + 1) * 512];
    let state = BootState::newest([sector(COPY_SECTORS[0]), sector(COPY_SECTORS[1])]).unwrap();
    assert_eq!(state, BootState::default());
    let record = SlotRecord::decode(sector(RECORD_SECTORS[0])).unwrap();
    assert_eq!((record.build, record.version.as_str()), (7, "0.1.0-7"));
    assert_eq!(SlotRecord::decode(sector(RECORD_SECTORS[1])), None);
    // boot.scr on the boot partition, a uImage script; extlinux.conf (slot A) carries the
    // board's command line, the extra words and the slot u-boot chose.
    let text = String::from_utf8_lossy(&a);
    assert!(text.contains("Cairn's slot chooser"));
    assert!(text.contains("append console=ttyAMA0 panic=-1 quiet cairn.slot=${cairn_slot}"));
}

#[test]
fn the_system_layer_is_a_file_in_slot_a() {
    let dir = tempfile::tempdir().unwrap();
    let layer = dir.path().join("layer.sqfs");
    let mut bytes = b"hsqs".to_vec();
    bytes.resize(3 << 19, 0x5a);
    std::fs::write(&layer, &bytes).unwrap();
    let mut i = inputs(dir.path());
    i.system = Some(layer);
    let img = dir.path().join("s.img");
    execute(&plan(&i).unwrap(), &img).unwrap();
    let a = std::fs::read(&img).unwrap();
    assert_eq!(a.len() as u64, (1 + 4 + 16 + 16 + 32) << 20);
    let out = std::process::Command::new("mdir")
        .env("MTOOLS_SKIP_CHECK", "1")
        .args(["-b", "-i", &format!("{}@@{}", img.display(), 5 << 20), "::"])
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(list.contains("system.squashfs"), "{list}");
    assert!(a[5 << 20..21 << 20]
        .windows(bytes.len())
        .any(|w| w == &bytes[..]));
}

#[test]
fn an_unknown_board_names_the_known_ones() {
    let boards = Path::new(env!("CARGO_MANIFEST_DIR")).join("../board/boards");
    let e = load_board(&boards, "toaster").unwrap_err().to_string();
    assert!(
        e.contains("unknown board 'toaster'") && e.contains("qemu-virt"),
        "{e}"
    );
}

#[test]
fn the_bundle_is_reproducible_trusted_by_its_image_and_holds_its_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::from_pkcs8(&SigningKey::generate_pkcs8().unwrap()).unwrap();
    let mut i = inputs(dir.path());
    i.update_keys.add(key.public(), "build").unwrap();
    i.build = 8;
    let layer = dir.path().join("layer.sqfs");
    std::fs::write(&layer, b"hsqs and more").unwrap();
    i.system = Some(layer);
    let p = plan(&i).unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    let fa = bundle(&p, "qemu-virt", "0.1.0-8", 8, &key, &a).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100)); // a clock tick must not matter
    let fb = bundle(&plan(&i).unwrap(), "qemu-virt", "0.1.0-8", 8, &key, &b).unwrap();
    assert_eq!(fa.file_name().unwrap(), "cairn-qemu-virt-0.1.0-8.cupd");
    let bytes = std::fs::read(&fa).unwrap();
    assert!(bytes == std::fs::read(&fb).unwrap(), "two bundles differ");

    // The image trusts the key and knows its build; an image of build 7 takes the bundle.
    let img = dir.path().join("i.img");
    execute(&p, &img).unwrap();
    let disk = std::fs::read(&img).unwrap();
    let text = String::from_utf8_lossy(&disk);
    assert!(text.contains(&format!("{} build", hex::encode(key.public()))));
    let keys = TrustedKeys::parse(&i.update_keys.to_text()).unwrap();
    let slot_path = dir.path().join("slot");
    std::fs::File::create(&slot_path)
        .unwrap()
        .set_len(20 << 20)
        .unwrap();
    let policy = Policy {
        keys: &keys,
        board: "qemu-virt",
        running_build: 7,
        allow_downgrade: false,
    };
    let m = install::apply(
        &bytes[..],
        &policy,
        &mut FileSlot::open(&slot_path).unwrap(),
    )
    .unwrap();
    // Its one part is slot A as the image holds it, its trailing zeros cut.
    let part = &m.parts[0];
    assert_eq!(part.name, "slot");
    assert!(part.size <= 16 << 20 && part.size.is_multiple_of(64 << 10));
    let slot = std::fs::read(&slot_path).unwrap();
    let n = part.size as usize;
    assert!(slot[..n] == disk[5 << 20..(5 << 20) + n]);
    assert!(disk[(5 << 20) + n..21 << 20].iter().all(|&b| b == 0));
    assert_eq!(m.parts.len(), 1);
}

/// The Pi 3's card: the GPU firmware, u-boot, config.txt and the DTB on a FAT16 boot partition
/// of 32 MiB, the DTB in the slot too, named by its extlinux.conf.
#[test]
fn a_pi_card_carries_its_firmware_uboot_and_dtb() {
    let dir = tempfile::tempdir().unwrap();
    let mut inputs = inputs(dir.path());
    let boards = Path::new(env!("CARGO_MANIFEST_DIR")).join("../board/boards");
    (inputs.board, inputs.board_text) = load_board(&boards, "rpi3").unwrap();
    let dtbs = dir.path().join("dtbs/broadcom");
    std::fs::create_dir_all(&dtbs).unwrap();
    std::fs::write(dtbs.join("bcm2837-rpi-3-b.dtb"), b"dtb").unwrap();
    let pkgs = dir.path().join("pkgs");
    for f in [
        "raspi-firmware/usr/lib/raspi-firmware/bootcode.bin",
        "raspi-firmware/usr/lib/raspi-firmware/start.elf",
        "raspi-firmware/usr/lib/raspi-firmware/fixup.dat",
        "u-boot-rpi/usr/lib/u-boot/rpi_3/u-boot.bin",
    ] {
        std::fs::create_dir_all(pkgs.join(f).parent().unwrap()).unwrap();
        std::fs::write(pkgs.join(f), f).unwrap();
    }
    // Without the packages the plan names what is missing.
    let e = plan(&inputs).unwrap_err().to_string();
    assert!(e.contains("--boot-files"), "{e}");
    inputs.boot_files = Some(pkgs);
    let p = plan(&inputs).unwrap();
    let names: Vec<&str> = p.boot_files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "boot.scr",
            "bootcode.bin",
            "start.elf",
            "fixup.dat",
            "u-boot.bin",
            "bcm2837-rpi-3-b.dtb",
            "config.txt"
        ]
    );
    assert_eq!(p.boot_fat_bits, "16");
    assert_eq!(p.partitions[0].sectors * 512, 32 << 20);
    let text = |files: &[(String, cairn_image::Source)], name: &str| match &files
        .iter()
        .find(|(n, _)| n == name)
        .unwrap()
        .1
    {
        cairn_image::Source::Bytes(b) => String::from_utf8(b.clone()).unwrap(),
        other => panic!("{other:?}"),
    };
    let config = text(&p.boot_files, "config.txt");
    assert!(config.contains("arm_64bit=1\nenable_uart=1\nkernel=u-boot.bin\n"));
    assert!(config.contains("device_tree=bcm2837-rpi-3-b.dtb\n"));
    let extlinux = text(&p.slot_files, "extlinux/extlinux.conf");
    assert!(
        extlinux.contains("  fdt /bcm2837-rpi-3-b.dtb\n"),
        "{extlinux}"
    );
    assert!(p.slot_files.iter().any(|(n, _)| n == "bcm2837-rpi-3-b.dtb"));
    // The card builds (mkfs.vfat, mcopy) with a FAT16 boot partition.
    execute(&p, &dir.path().join("rpi3.img")).unwrap();
}

/// A Pi card's Raspberry Pi Imager entry describes the `.img.xz` an owner downloads and the
/// card it expands to, and offers it for that Pi only; other boards get none.
#[test]
fn a_pi_card_gets_a_raspberry_pi_imager_entry() {
    use cairn_image::{artifacts, imager_entry, ImagerRelease};
    let sha256 = |p: &Path| {
        hex::encode(ring::digest::digest(
            &ring::digest::SHA256,
            &std::fs::read(p).unwrap(),
        ))
    };
    let dir = tempfile::tempdir().unwrap();
    let boards = Path::new(env!("CARGO_MANIFEST_DIR")).join("../board/boards");
    let img = dir.path().join("cairn-rpi3.img");
    std::fs::write(
        &img,
        (0..1u32 << 18)
            .flat_map(u32::to_le_bytes)
            .collect::<Vec<u8>>(),
    )
    .unwrap();
    let release = ImagerRelease {
        url: "https://example.org/cairn-rpi3.img.xz",
        release_date: "2026-12-06",
    };
    let (rpi3, _) = load_board(&boards, "rpi3").unwrap();
    // Before the .img.xz exists, the entry says what it needs.
    let e = imager_entry(&rpi3, &img, &release).unwrap_err().to_string();
    assert!(
        e.contains("cairn-rpi3.img.xz") && e.contains("artifacts first"),
        "{e}"
    );
    artifacts(&img).unwrap();
    let out = imager_entry(&rpi3, &img, &release).unwrap().unwrap();
    assert_eq!(out, dir.path().join("cairn-rpi3.rpi-imager.json"));
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let entry = &doc["os_list"][0];
    let xz = dir.path().join("cairn-rpi3.img.xz");
    assert_eq!(entry["extract_size"], 1 << 20);
    assert_eq!(entry["extract_sha256"], sha256(&img));
    assert_eq!(
        entry["image_download_size"],
        std::fs::metadata(&xz).unwrap().len()
    );
    assert_eq!(entry["image_download_sha256"], sha256(&xz));
    assert_eq!(entry["devices"], serde_json::json!(["pi3-64bit"]));
    assert_eq!(entry["url"], release.url);
    assert_eq!(entry["release_date"], "2026-12-06");
    assert_eq!(entry["name"], "Cairn (Raspberry Pi 3 Model B)");
    let (virt, _) = load_board(&boards, "qemu-virt").unwrap();
    assert!(imager_entry(&virt, &img, &release).unwrap().is_none());
}
