//! The image builder end to end on plain files: same inputs give the same bytes, and the disk
//! has the layout the bootloader and init expect.

use cairn_image::{bundle, execute, load_board, plan, Inputs};
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
        append: "quiet".into(),
        boot_mib: 16,
        data_mib: 32,
        update_keys: TrustedKeys::default(),
        build: 7,
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
    assert_eq!(a.len() as u64, (1 + 16 + 32) << 20);
    assert_eq!(&a[510..512], &[0x55, 0xAA]);
    assert_eq!(a[446], 0x80, "boot partition is bootable");
    // FAT boot sector at 1 MiB, ext4 superblock magic in the data partition.
    assert_eq!(&a[(1 << 20) + 510..(1 << 20) + 512], &[0x55, 0xAA]);
    let sb = (17 << 20) + 1024;
    assert_eq!(&a[sb + 56..sb + 58], &0xEF53u16.to_le_bytes());
    // extlinux.conf carries the board's command line plus the extra words.
    let text = String::from_utf8_lossy(&a);
    assert!(text.contains("append console=ttyAMA0 panic=-1 quiet"));
}

#[test]
fn the_system_layer_lies_between_boot_and_data_as_partition_3() {
    let dir = tempfile::tempdir().unwrap();
    let layer = dir.path().join("layer.sqfs");
    // 1.5 MiB of layer: its partition is rounded up to 2 MiB.
    let mut bytes = b"hsqs".to_vec();
    bytes.resize(3 << 19, 0x5a);
    std::fs::write(&layer, &bytes).unwrap();
    let mut i = inputs(dir.path());
    i.system = Some(layer);
    let p = plan(&i).unwrap();
    let img = dir.path().join("s.img");
    execute(&p, &img).unwrap();
    let a = std::fs::read(img).unwrap();
    assert_eq!(a.len() as u64, (1 + 16 + 2 + 32) << 20);
    let entry = |n: usize| {
        let e = &a[446 + 16 * (n - 1)..446 + 16 * n];
        let start = u32::from_le_bytes(e[8..12].try_into().unwrap()) as usize * 512;
        let len = u32::from_le_bytes(e[12..16].try_into().unwrap()) as usize * 512;
        (start, len)
    };
    assert_eq!(
        entry(3),
        (17 << 20, 2 << 20),
        "system: after boot, whole MiBs"
    );
    assert_eq!(
        entry(2),
        (19 << 20, 32 << 20),
        "data: entry 2, last on the disk"
    );
    assert_eq!(&a[17 << 20..(17 << 20) + bytes.len()], &bytes[..]);
    let sb = (19 << 20) + 1024;
    assert_eq!(&a[sb + 56..sb + 58], &0xEF53u16.to_le_bytes());
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
    // Its boot part is the image's boot partition, byte for byte.
    let boot = &m.parts[0];
    assert_eq!((boot.name.as_str(), boot.size), ("boot", 16 << 20));
    let slot = std::fs::read(&slot_path).unwrap();
    assert!(slot[..16 << 20] == disk[1 << 20..17 << 20]);
    assert_eq!(m.parts[1].name, "system");
}
