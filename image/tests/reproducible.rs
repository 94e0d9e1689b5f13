//! The image builder end to end on plain files: same inputs give the same bytes, and the disk
//! has the layout the bootloader and init expect.

use cairn_image::{execute, load_board, plan, Inputs};
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
