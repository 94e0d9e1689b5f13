//! `cairn-image`: Cairn's flashable disk images. The [`plan`] (partitions, files) is computed
//! apart from its [`execute`]ion, so it can be read and tested; execution needs no root and no
//! loop mounts (the FAT and ext4 file systems are made in plain files by Debian's dosfstools,
//! mtools and e2fsprogs), and is reproducible: the same inputs give the same bytes.
//!
//! Layout (MBR, firmware/update/DESIGN.md): 1 MiB gap (the boot state, the slots' records) ·
//! entry 1 boot (FAT, bootable: `boot.scr`, the slot chooser) · entry 3 slot A (FAT: kernel,
//! initramfs, extlinux.conf, the system layer as `system.squashfs`) · entry 4 slot B (the same
//! size, an empty FAT until an update fills it) · entry 2 data (ext4, last on the card, grown
//! to fill it on first boot). The firmware itself lives in the initramfs: read-only by
//! construction, loaded whole into RAM (≈3 MiB).

pub mod bootscr;
pub mod cpio;
pub mod kernel;
pub mod system;
pub mod uboot_env;

use cairn_bsp::mbr::{self, SECTOR, SLOT_PARTITIONS};
use cairn_bsp::{board::Bootloader, Board};
use cairn_update::bootstate::{BootState, SlotRecord, COPY_SECTORS, RECORD_SECTORS};
use cpio::Entry;
use std::path::{Path, PathBuf};
use std::process::Command;

const MIB: u64 = 1 << 20;
/// Timestamps inside the image: fixed, for reproducible bytes.
pub const EPOCH: u64 = 1_700_000_000;
/// Fixed identities for the same reason (volume id, UUID, hash seed, disk signature).
const FAT_VOLUME_ID: &str = "CA1B0001";
const BOOT_VOLUME_ID: &str = "CA1B0000";
/// The boot partition: a boot script in a small FAT12.
const BOOT_MIB: u64 = 4;
/// The Pis' boot partition also holds their GPU firmware and u-boot (≈4 MiB on the Pi 3),
/// in a FAT16, which their boot ROM and firmware read (FAT12 they may not).
const RPI_BOOT_MIB: u64 = 32;
const EXT4_UUID: &str = "ca1b0000-0000-4000-8000-00000000da7a";
const EXT4_HASH_SEED: &str = "ca1b0000-0000-4000-8000-0000000005ed";
const DISK_ID: u32 = 0xCA1B_0001;

/// What goes into an image.
pub struct Inputs {
    /// The board the image is for.
    pub board: Board,
    /// The board file's text, bundled for init.
    pub board_text: String,
    /// The `cairn` binary built for the board's target.
    pub cairn: PathBuf,
    /// The kernel Image.
    pub kernel: PathBuf,
    /// Directories whose `*.toml` service manifests are bundled (later ones may add fixtures).
    pub services: Vec<PathBuf>,
    /// The system layer (squashfs of pinned Debian packages), if the image carries one.
    pub system: Option<PathBuf>,
    /// The board's card packages unpacked, one directory per package
    /// ([`system::unpack`]), where its bootloader goes on the card.
    pub boot_files: Option<PathBuf>,
    /// Extra kernel command-line words (test images use this).
    pub append: String,
    /// Size of each system slot, in MiB (an update must fit it too: leave room).
    pub slot_mib: u64,
    /// Size of the data partition as built (it grows to fill the card on first boot), in MiB.
    pub data_mib: u64,
    /// The public keys the image accepts updates from (`/etc/cairn/update-keys`).
    pub update_keys: cairn_update::keys::TrustedKeys,
    /// The build number (`/etc/cairn/build`): an update must be newer.
    pub build: u64,
    /// The version people read (`0.1.0-123`), recorded for slot A.
    pub version: String,
}

/// Bytes of a file to place, from disk or made here.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// The contents of a file on the host, read at execution.
    File(PathBuf),
    /// These bytes.
    Bytes(Vec<u8>),
}

/// The image as a plan: partitions and what each holds.
#[derive(Debug)]
pub struct Plan {
    /// The MBR's partitions, in order.
    pub partitions: Vec<mbr::Partition>,
    /// Files on the boot partition, by path there.
    pub boot_files: Vec<(String, Source)>,
    /// The boot partition's FAT size (`12` or `16`).
    pub boot_fat_bits: &'static str,
    /// Files in a system slot, by path there (the initramfs is made at execution).
    pub slot_files: Vec<(String, Source)>,
    /// The initramfs (files given by source, resolved at execution).
    pub initramfs: Vec<(Entry, Option<PathBuf>)>,
    /// Slot A's record in the gap before partition 1.
    pub record: SlotRecord,
    /// The bootloader the SoC's boot ROM loads from the gap before partition 1 (the
    /// Allwinner boards' SPL and u-boot), and its byte offset on the card.
    pub loader: Option<(u64, Source)>,
}

impl Plan {
    /// Size of the image file: up to the end of the last partition.
    pub fn total_bytes(&self) -> u64 {
        self.partitions
            .iter()
            .map(|p| (p.start + p.sectors) * SECTOR)
            .max()
            .unwrap_or(0)
    }
}

/// Works out the image for `inputs` without writing anything.
pub fn plan(inputs: &Inputs) -> anyhow::Result<Plan> {
    let board = &inputs.board;
    let rpi = matches!(board.bootloader, Bootloader::RpiFirmware { .. });
    // On the card: boot, slot A, slot B, data (last, so that it can grow); in the MBR data
    // keeps entry 2 and the slots take 3 and 4.
    let boot_start = MIB / SECTOR;
    let boot_sectors = if rpi { RPI_BOOT_MIB } else { BOOT_MIB } * MIB / SECTOR;
    let slot_sectors = inputs.slot_mib * MIB / SECTOR;
    let slot_a = boot_start + boot_sectors;
    let slot_b = slot_a + slot_sectors;
    let data_start = slot_b + slot_sectors;
    let fat = |start, sectors, bootable| mbr::Partition {
        start,
        sectors,
        kind: 0x0C,
        bootable,
    };
    let partitions = vec![
        fat(boot_start, boot_sectors, true),
        mbr::Partition {
            start: data_start,
            sectors: inputs.data_mib * MIB / SECTOR,
            kind: 0x83,
            bootable: false,
        },
        fat(slot_a, slot_sectors, false),
        fat(slot_b, slot_sectors, false),
    ];
    debug_assert_eq!(SLOT_PARTITIONS, [3, 4]);
    anyhow::ensure!(
        board.storage.data_partition == 2,
        "board {}: this layout puts the data partition at 2",
        board.name
    );
    let cmdline = [board.kernel.cmdline.as_str(), inputs.append.as_str()]
        .join(" ")
        .trim()
        .to_string();
    // The board's DTB goes into the slot (an update brings the kernel's own), and on the Pis
    // onto the boot partition too, for the GPU firmware (config.txt `device_tree=`).
    let dtb = kernel::dtb_path(board, &inputs.kernel);
    let dtb_name = dtb
        .as_ref()
        .and_then(|d| d.file_name())
        .map(|n| n.to_string_lossy().into_owned());
    // arm64's uncompressed Image (booti), 32-bit arm's zImage (bootz): sysboot picks by format.
    let kernel_name = kernel::make_target(&board.kernel.arch);
    let fdt = match &dtb_name {
        Some(name) => format!("  fdt /{name}\n"),
        None => String::new(), // u-boot hands over its own (QEMU's) device tree
    };
    // The same bytes in either slot: boot.scr sets cairn_slot, sysboot expands it.
    let extlinux = format!(
        "# Cairn boot menu, read by sysboot from boot.scr.\ndefault cairn\n\nlabel cairn\n  kernel /{kernel_name}\n{fdt}  initrd /initramfs.cpio\n  append {cmdline} cairn.slot=${{cairn_slot}}\n"
    );
    let mut slot_files = vec![
        (kernel_name.to_string(), Source::File(inputs.kernel.clone())),
        ("initramfs.cpio".to_string(), Source::Bytes(Vec::new())), // filled at execution
        (
            "extlinux/extlinux.conf".to_string(),
            Source::Bytes(extlinux.into_bytes()),
        ),
    ];
    if let (Some(dtb), Some(name)) = (&dtb, &dtb_name) {
        slot_files.push((name.clone(), Source::File(dtb.clone())));
    }
    if let Some(layer) = &inputs.system {
        slot_files.push((SYSTEM_FILE.to_string(), Source::File(layer.clone())));
    }
    let mut boot_files = vec![(
        "boot.scr".to_string(),
        Source::Bytes(bootscr::uimage(
            &bootscr::script(),
            "cairn slot chooser",
            EPOCH as u32,
        )),
    )];
    if let Bootloader::RpiFirmware {
        uboot, firmware, ..
    } = &board.bootloader
    {
        let dir = inputs.boot_files.as_ref().ok_or_else(|| {
            anyhow::anyhow!(
                "board {}: its bootloader goes on the card: give --boot-files (cairn-image boot-files)",
                board.name
            )
        })?;
        let (Some(dtb), Some(dtb_name)) = (&dtb, &dtb_name) else {
            anyhow::bail!(
                "board {}: a Raspberry Pi board needs [kernel] dtb",
                board.name
            );
        };
        for spec in firmware {
            let path = card_file(dir, spec)?;
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            boot_files.push((name, Source::File(path)));
        }
        boot_files.push(("u-boot.bin".into(), Source::File(card_file(dir, uboot)?)));
        boot_files.push((dtb_name.clone(), Source::File(dtb.clone())));
        let config = format!(
            "# Raspberry Pi firmware settings (made by cairn-image): start u-boot in 64-bit mode\n\
             # with the console on the mini UART (header pins 8/10); u-boot runs boot.scr.\n\
             arm_64bit=1\nenable_uart=1\nkernel=u-boot.bin\ndevice_tree={dtb_name}\n"
        );
        boot_files.push(("config.txt".into(), Source::Bytes(config.into_bytes())));
    }

    let mut loader = None;
    if let Bootloader::UBootSpl { binary, offset_kib } = &board.bootloader {
        let dir = inputs.boot_files.as_ref().ok_or_else(|| {
            anyhow::anyhow!(
                "board {}: its bootloader goes on the card: give --boot-files (cairn-image boot-files)",
                board.name
            )
        })?;
        let file = card_file(dir, binary)?;
        let start = offset_kib * 1024;
        let end = start + std::fs::metadata(&file)?.len();
        // Between the MBR and the slots' records (which lie below the boot state).
        let room = RECORD_SECTORS[0] * SECTOR;
        anyhow::ensure!(
            start >= SECTOR && end <= room,
            "board {}: {binary} ({start}..{end} on the card) does not fit between the MBR and \
             the slot records at {room}",
            board.name
        );
        loader = Some((start, Source::File(file)));
    }

    let dir = |p: &str| {
        (
            Entry::Dir {
                path: p.into(),
                mode: 0o755,
            },
            None,
        )
    };
    let text = |p: &str, s: String| {
        (
            Entry::File {
                path: p.into(),
                mode: 0o644,
                data: s.into_bytes(),
            },
            None,
        )
    };
    let mut initramfs = vec![
        dir("/bin"),
        dir("/dev"),
        (
            Entry::CharDev {
                path: "/dev/console".into(),
                mode: 0o600,
                major: 5,
                minor: 1,
            },
            None,
        ),
        (
            Entry::CharDev {
                path: "/dev/null".into(),
                mode: 0o666,
                major: 1,
                minor: 3,
            },
            None,
        ),
        dir("/etc"),
        dir("/etc/cairn"),
        dir("/etc/cairn/services"),
        dir("/data"),
        dir("/proc"),
        dir("/run"),
        dir("/sys"),
        (
            Entry::Dir {
                path: "/tmp".into(),
                mode: 0o1777,
            },
            None,
        ),
        (
            Entry::File {
                path: "/init".into(),
                mode: 0o755,
                data: Vec::new(),
            },
            Some(inputs.cairn.clone()),
        ),
        (
            Entry::Symlink {
                path: "/bin/cairn".into(),
                target: "/init".into(),
            },
            None,
        ),
        dir("/usr"),
        (
            // The system layer's libraries and dynamic loader, once it is mounted on /usr.
            Entry::Symlink {
                path: "/lib".into(),
                target: "usr/lib".into(),
            },
            None,
        ),
        dir("/etc/ssl"),
        dir("/etc/ssl/certs"),
        (
            // Where Debian's libcurl (snac's deliveries) and OpenSSL look for the certificates
            // they trust: the web composes them (the layer's roots, the plug's own, the
            // servers its owner trusts) in its share folder at each start and change.
            Entry::Symlink {
                path: "/etc/ssl/certs/ca-certificates.crt".into(),
                target: "/run/web/ca-certificates.crt".into(),
            },
            None,
        ),
        text("/etc/passwd", "root:x:0:0:root:/data:/bin/false\n".into()),
        text("/etc/group", "root:x:0:\n".into()),
        text("/etc/hostname", format!("{}\n", board.hostname)),
        text("/etc/cairn/board.toml", inputs.board_text.clone()),
        text("/etc/cairn/update-keys", inputs.update_keys.to_text()),
        text("/etc/cairn/build", format!("{}\n", inputs.build)),
    ];
    let mut seen = std::collections::BTreeSet::new();
    for dir in &inputs.services {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            // The system layer's pins live beside the manifests but are not one.
            .filter(|p| !p.ends_with(system::PINS))
            .collect();
        files.sort();
        for f in files {
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            anyhow::ensure!(
                seen.insert(name.clone()),
                "{}: a service named {name} is already bundled",
                f.display()
            );
            initramfs.push((
                Entry::File {
                    path: format!("/etc/cairn/services/{name}"),
                    mode: 0o644,
                    data: Vec::new(),
                },
                Some(f),
            ));
        }
    }
    Ok(Plan {
        partitions,
        boot_files,
        boot_fat_bits: if rpi { "16" } else { "12" },
        slot_files,
        initramfs,
        record: SlotRecord {
            version: inputs.version.clone(),
            build: inputs.build,
        },
        loader,
    })
}

/// The packages a board takes files from for the card (`PACKAGE:PATH` in its file).
pub fn card_packages(board: &Board) -> Vec<String> {
    let mut names: Vec<String> = match &board.bootloader {
        Bootloader::RpiFirmware {
            uboot, firmware, ..
        } => std::iter::once(uboot)
            .chain(firmware)
            .filter_map(|s| s.split_once(':').map(|(p, _)| p.to_string()))
            .collect(),
        Bootloader::UBootSpl { binary, .. } => binary
            .split_once(':')
            .map(|(p, _)| p.to_string())
            .into_iter()
            .collect(),
        Bootloader::UBootExtlinux { .. } => Vec::new(),
    };
    names.sort();
    names.dedup();
    names
}

/// `PACKAGE:PATH` in the unpacked packages `dir`, which must have it.
fn card_file(dir: &Path, spec: &str) -> anyhow::Result<PathBuf> {
    let (package, path) = spec
        .split_once(':')
        .ok_or_else(|| anyhow::anyhow!("{spec}: not PACKAGE:PATH"))?;
    let file = dir.join(package).join(path.trim_start_matches('/'));
    anyhow::ensure!(
        file.is_file(),
        "{spec}: no such file in {package} as pinned ({})",
        file.display()
    );
    Ok(file)
}

/// The system layer's file in a slot (stage 1 mounts it through a loop device).
pub const SYSTEM_FILE: &str = "system.squashfs";

/// Loads a board with its file's text (bundled as is, so its comments reach the device).
pub fn load_board(boards_dir: &Path, name: &str) -> anyhow::Result<(Board, String)> {
    let board = Board::load(boards_dir, name)?;
    let path = boards_dir.join(format!("{name}.toml"));
    let text =
        std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok((board, text))
}

/// Writes the image to `out` (plus nothing else: see [`artifacts`]).
pub fn execute(plan: &Plan, out: &Path) -> anyhow::Result<()> {
    let work = tempfile_dir(out)?;
    let result = execute_in(plan, out, &work);
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn tempfile_dir(out: &Path) -> anyhow::Result<PathBuf> {
    let parent = out.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let work = parent.join(format!(".work-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    Ok(work)
}

fn read(src: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(src).map_err(|e| anyhow::anyhow!("{}: {e}", src.display()))
}

/// How a FAT is made: its label, FAT size and (fixed) volume id.
struct FatKind {
    label: &'static str,
    bits: &'static str,
    volume_id: &'static str,
}

/// The boot partition's (its FAT size is the plan's).
const BOOT_FAT: FatKind = FatKind {
    label: "CAIRN-BOOT",
    bits: "12",
    volume_id: BOOT_VOLUME_ID,
};
/// A system slot's, the same in A and B: a bundle's bytes go into either.
const SLOT_FAT: FatKind = FatKind {
    label: "CAIRN-SLOT",
    bits: "16",
    volume_id: FAT_VOLUME_ID,
};

/// The initramfs's bytes.
fn initramfs(plan: &Plan) -> anyhow::Result<Vec<u8>> {
    let mut entries = Vec::with_capacity(plan.initramfs.len());
    for (entry, src) in &plan.initramfs {
        let mut e = entry.clone();
        if let (Entry::File { data, .. }, Some(src)) = (&mut e, src) {
            *data = read(src)?;
        }
        entries.push(e);
    }
    let mut out = Vec::new();
    cpio::write(&mut out, &entries)?;
    Ok(out)
}

/// A FAT file system of `sectors` in `work/NAME.fat` holding `files` (staged with fixed
/// times); `initramfs` fills the file of that name.
fn fat(
    files: &[(String, Source)],
    initramfs: &[u8],
    sectors: u64,
    kind: &FatKind,
    work: &Path,
    name: &str,
) -> anyhow::Result<PathBuf> {
    let stage = work.join(name);
    std::fs::create_dir_all(&stage)?;
    for (path, src) in files {
        let dest = stage.join(path);
        std::fs::create_dir_all(dest.parent().unwrap())?;
        let bytes = match src {
            _ if path == "initramfs.cpio" => initramfs.to_vec(),
            Source::File(p) => read(p)?,
            Source::Bytes(b) => b.clone(),
        };
        std::fs::write(&dest, bytes)?;
    }
    set_times(&stage)?;
    let fat = work.join(format!("{name}.fat"));
    std::fs::File::create(&fat)?.set_len(sectors * SECTOR)?;
    run(
        Command::new("mkfs.vfat")
            .args(["--invariant", "-i", kind.volume_id, "-n", kind.label])
            .args(["-F", kind.bits])
            .arg(&fat),
        "mkfs.vfat",
    )?;
    let mut names: Vec<_> = std::fs::read_dir(&stage)?
        .flatten()
        .map(|e| e.path())
        .collect();
    names.sort();
    if !names.is_empty() {
        let mut mcopy = Command::new("mcopy");
        mcopy
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(&fat)
            .args(["-s", "-m", "-p", "-Q"]);
        mcopy.args(&names).arg("::");
        run(&mut mcopy, "mcopy")?;
    }
    Ok(fat)
}

/// A system slot's FAT (what slot A holds as built, and what a bundle installs).
fn slot_fat(plan: &Plan, work: &Path) -> anyhow::Result<PathBuf> {
    let sectors = plan.partitions[SLOT_PARTITIONS[0] as usize - 1].sectors;
    fat(
        &plan.slot_files,
        &initramfs(plan)?,
        sectors,
        &SLOT_FAT,
        work,
        "slot",
    )
}

fn execute_in(plan: &Plan, out: &Path, work: &Path) -> anyhow::Result<()> {
    let boot = fat(
        &plan.boot_files,
        &[],
        plan.partitions[0].sectors,
        &FatKind {
            bits: plan.boot_fat_bits,
            ..BOOT_FAT
        },
        work,
        "boot",
    )?;
    let slot_a = slot_fat(plan, work)?;
    // Slot B: a valid FAT with nothing to boot (boot.scr then boots A) until an update.
    let slot_b = fat(
        &[],
        &[],
        plan.partitions[SLOT_PARTITIONS[1] as usize - 1].sectors,
        &SLOT_FAT,
        work,
        "empty",
    )?;

    // data partition: empty (init creates what it needs); no `mke2fs -d`, whose inodes
    // would carry the staging files' ctimes and break reproducibility.
    let data = &plan.partitions[1];
    let ext4 = work.join("data.ext4");
    run(
        Command::new("mke2fs")
            .env("E2FSPROGS_FAKE_TIME", EPOCH.to_string())
            .args([
                "-q",
                "-F",
                "-t",
                "ext4",
                "-b",
                "4096",
                "-L",
                "cairn-data",
                "-U",
                EXT4_UUID,
            ])
            .args(["-E", &format!("hash_seed={EXT4_HASH_SEED},root_owner=0:0")])
            .args(["-O", "^metadata_csum_seed"])
            .arg(&ext4)
            .arg(format!("{}k", data.sectors * SECTOR / 1024)),
        "mke2fs",
    )?;

    // the disk: MBR, the boot state (slot A good) and slot A's record in the gap, then each
    // partition at its offset (the file stays sparse elsewhere)
    let tmp = out.with_extension("img.tmp");
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut disk = std::fs::File::create(&tmp)?;
        disk.set_len(plan.total_bytes())?;
        disk.write_all(&mbr::encode(&plan.partitions, DISK_ID)?)?;
        // Both copies, so that u-boot finds no bad CRC to complain of on the first boots.
        for sector in COPY_SECTORS {
            disk.seek(SeekFrom::Start(sector * SECTOR))?;
            disk.write_all(&BootState::default().encode())?;
        }
        disk.seek(SeekFrom::Start(RECORD_SECTORS[0] * SECTOR))?;
        disk.write_all(&plan.record.encode().map_err(anyhow::Error::msg)?)?;
        if let Some((offset, src)) = &plan.loader {
            disk.seek(SeekFrom::Start(*offset))?;
            disk.write_all(&match src {
                Source::File(p) => read(p)?,
                Source::Bytes(b) => b.clone(),
            })?;
        }
        for (p, file) in plan.partitions.iter().zip([&boot, &ext4, &slot_a, &slot_b]) {
            let bytes = read(file)?;
            anyhow::ensure!(
                bytes.len() as u64 <= p.sectors * SECTOR,
                "{} outgrew its partition",
                file.display()
            );
            // Zero runs stay holes: an empty slot costs nothing to copy.
            for (i, chunk) in bytes.chunks(64 << 10).enumerate() {
                if chunk.iter().any(|&b| b != 0) {
                    disk.seek(SeekFrom::Start(p.start * SECTOR + (i as u64) * (64 << 10)))?;
                    disk.write_all(chunk)?;
                }
            }
        }
        disk.sync_all()?;
    }
    std::fs::rename(&tmp, out)?;
    Ok(())
}

/// Writes the update bundle of `plan` into `out_dir` as `cairn-BOARD-VERSION.cupd`, signed
/// with `key`; returns its path. Its one part, `slot`, is the FAT of a system slot (kernel,
/// initramfs, extlinux.conf, system layer), byte for byte what the image's slot A holds. The
/// same inputs give the same bytes.
pub fn bundle(
    plan: &Plan,
    board: &str,
    version: &str,
    build: u64,
    key: &cairn_update::keys::SigningKey,
    out_dir: &Path,
) -> anyhow::Result<PathBuf> {
    let out = out_dir.join(format!("cairn-{board}-{version}.cupd"));
    let work = tempfile_dir(&out)?;
    let result = (|| {
        let fat = slot_fat(plan, &work)?;
        trim_zeros(&fat)?;
        let tmp = out.with_extension("cupd.tmp");
        let parts: Vec<(&str, &dyn cairn_update::bundle::PartSource)> = vec![("slot", &fat)];
        let mut file = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        cairn_update::bundle::write(&mut file, key, board, version, build, &parts)?;
        file.into_inner()
            .map_err(|e| anyhow::anyhow!("{}: {e}", tmp.display()))?
            .sync_all()?;
        std::fs::rename(&tmp, &out)?;
        Ok(out.clone())
    })();
    let _ = std::fs::remove_dir_all(&work);
    result
}

/// Cuts the zeros off the end of `file` (whole 64 KiB blocks): a FAT's free clusters need no
/// bytes, so a bundle carries only what the slot's files take.
fn trim_zeros(file: &Path) -> anyhow::Result<()> {
    let bytes = read(file)?;
    const BLOCK: usize = 64 << 10;
    let keep = bytes
        .chunks(BLOCK)
        .rposition(|c| c.iter().any(|&b| b != 0))
        .map_or(0, |i| (i + 1) * BLOCK)
        .min(bytes.len());
    std::fs::File::options()
        .write(true)
        .open(file)?
        .set_len(keep as u64)?;
    Ok(())
}

/// Every file and directory under `dir` gets the fixed timestamp.
fn set_times(dir: &Path) -> anyhow::Result<()> {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(EPOCH);
    let times = std::fs::FileTimes::new().set_accessed(t).set_modified(t);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)?.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p.clone());
            } else {
                std::fs::File::options()
                    .write(true)
                    .open(&p)?
                    .set_times(times)?;
            }
        }
        std::fs::File::open(&d)?.set_times(times)?;
    }
    Ok(())
}

/// Next to `img`: `.img.xz` (for flashing tools), `.bmap` (bmaptool skips the empty parts),
/// `.sha256`.
pub fn artifacts(img: &Path) -> anyhow::Result<()> {
    let xz = PathBuf::from(format!("{}.xz", img.display()));
    let file = std::fs::File::create(&xz)?;
    run(
        Command::new("xz")
            .args(["-T0", "-6", "-c"])
            .arg(img)
            .stdout(file),
        "xz",
    )?;
    let bmap = img.with_extension("bmap");
    run(
        Command::new("bmaptool")
            .args(["-q", "create", "-o"])
            .arg(&bmap)
            .arg(img),
        "bmaptool create",
    )?;
    let sum = kernel::sha256_file(img)?;
    let name = img.file_name().unwrap().to_string_lossy();
    std::fs::write(img.with_extension("img.sha256"), format!("{sum}  {name}\n"))?;
    Ok(())
}

/// What a Raspberry Pi Imager entry says besides the image's own sizes and digests.
pub struct ImagerRelease<'a> {
    /// Where the `.img.xz` will be downloaded from (a placeholder until it is published).
    pub url: &'a str,
    /// `YYYY-MM-DD`.
    pub release_date: &'a str,
}

/// For a board the Raspberry Pi Imager knows (`imager_devices`), writes its `os_list` entry
/// next to `img` as `cairn-BOARD.rpi-imager.json` (after [`artifacts`]: it describes the
/// `.img.xz`). An owner adds it in Imager as a custom repository; a release publishes it with
/// the real URL. Returns its path, or `None` for other boards.
pub fn imager_entry(
    board: &Board,
    img: &Path,
    release: &ImagerRelease<'_>,
) -> anyhow::Result<Option<PathBuf>> {
    let Bootloader::RpiFirmware { imager_devices, .. } = &board.bootloader else {
        return Ok(None);
    };
    let xz = PathBuf::from(format!("{}.xz", img.display()));
    let entry = serde_json::json!({
        "os_list": [{
            "name": format!("Cairn ({})", board.description),
            "description": "Your own plug server: web site, chat, fediverse and a share in your friends' storage network.",
            "url": release.url,
            "release_date": release.release_date,
            "extract_size": std::fs::metadata(img)?.len(),
            "extract_sha256": kernel::sha256_file(img)?,
            "image_download_size": std::fs::metadata(&xz)
                .map_err(|e| anyhow::anyhow!("{}: {e} (artifacts first)", xz.display()))?
                .len(),
            "image_download_sha256": kernel::sha256_file(&xz)?,
            "devices": imager_devices,
            // Cairn is set up in the browser after the first boot, not by Imager's settings
            // (which write cloud-init or firstrun.sh files Cairn does not read).
            "init_format": "none",
        }]
    });
    let out = img.with_extension("rpi-imager.json");
    std::fs::write(&out, serde_json::to_string_pretty(&entry)? + "\n")?;
    Ok(Some(out))
}

/// Removes the artifacts of an earlier build of `img`, so none is left that does not match it.
pub fn remove_artifacts(img: &Path) -> anyhow::Result<()> {
    for p in [
        PathBuf::from(format!("{}.xz", img.display())),
        img.with_extension("bmap"),
        img.with_extension("img.sha256"),
        img.with_extension("rpi-imager.json"),
    ] {
        match std::fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(anyhow::anyhow!("{}: {e}", p.display()))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Runs `cmd`; its stderr in the error when it fails.
pub(crate) fn run(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let out = cmd.output().map_err(|e| {
        anyhow::anyhow!(
            "{what}: cannot run {:?} ({e}): run scripts/setup",
            cmd.get_program()
        )
    })?;
    anyhow::ensure!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}
