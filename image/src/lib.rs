//! `cairn-image`: Cairn's flashable disk images. The [`plan`] (partitions, files) is computed
//! apart from its [`execute`]ion, so it can be read and tested; execution needs no root and no
//! loop mounts (the FAT and ext4 file systems are made in plain files by Debian's dosfstools,
//! mtools and e2fsprogs), and is reproducible: the same inputs give the same bytes.
//!
//! Layout (MBR): 1 MiB gap · boot (FAT: kernel, initramfs, extlinux.conf) · data (ext4, grown
//! to fill the card on first boot). The firmware itself lives in the initramfs: read-only by
//! construction, loaded whole into RAM (≈3 MiB).

pub mod cpio;
pub mod kernel;
pub mod system;
pub mod uboot_env;

use cairn_bsp::mbr::{self, SECTOR};
use cairn_bsp::{board::Bootloader, Board};
use cpio::Entry;
use std::path::{Path, PathBuf};
use std::process::Command;

const MIB: u64 = 1 << 20;
/// Timestamps inside the image: fixed, for reproducible bytes.
pub const EPOCH: u64 = 1_700_000_000;
/// Fixed identities for the same reason (volume id, UUID, hash seed, disk signature).
const FAT_VOLUME_ID: &str = "CA1B0001";
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
    /// Extra kernel command-line words (test images use this).
    pub append: String,
    /// Size of the boot partition, in MiB.
    pub boot_mib: u64,
    /// Size of the data partition as built (it grows to fill the card on first boot), in MiB.
    pub data_mib: u64,
    /// The public keys the image accepts updates from (`/etc/cairn/update-keys`).
    pub update_keys: cairn_update::keys::TrustedKeys,
    /// The build number (`/etc/cairn/build`): an update must be newer.
    pub build: u64,
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
    /// The initramfs (files given by source, resolved at execution).
    pub initramfs: Vec<(Entry, Option<PathBuf>)>,
    /// The system layer, written raw to partition 3 (between boot and data on the disk).
    pub system: Option<PathBuf>,
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
    anyhow::ensure!(
        matches!(board.bootloader, Bootloader::UBootExtlinux { .. }),
        "board {}: only u-boot extlinux boards can be imaged so far",
        board.name
    );
    let boot_start = MIB / SECTOR;
    let boot_sectors = inputs.boot_mib * MIB / SECTOR;
    // The system layer sits between boot and data on the disk but is entry 3 in the MBR, so
    // the data partition keeps its number and stays last on the disk, where it can grow.
    let system_sectors = match &inputs.system {
        Some(f) => {
            let len = std::fs::metadata(f)
                .map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?
                .len();
            len.div_ceil(MIB) * MIB / SECTOR
        }
        None => 0,
    };
    let system_start = boot_start + boot_sectors;
    let data_start = system_start + system_sectors;
    let mut partitions = vec![
        mbr::Partition {
            start: boot_start,
            sectors: boot_sectors,
            kind: 0x0C,
            bootable: true,
        },
        mbr::Partition {
            start: data_start,
            sectors: inputs.data_mib * MIB / SECTOR,
            kind: 0x83,
            bootable: false,
        },
    ];
    if inputs.system.is_some() {
        partitions.push(mbr::Partition {
            start: system_start,
            sectors: system_sectors,
            kind: 0x83,
            bootable: false,
        });
    }
    anyhow::ensure!(
        board.storage.data_partition == 2,
        "board {}: this layout puts the data partition at 2",
        board.name
    );
    let cmdline = [board.kernel.cmdline.as_str(), inputs.append.as_str()]
        .join(" ")
        .trim()
        .to_string();
    let extlinux = format!(
        "# Cairn boot menu, read by the bootloader's distro boot.\ndefault cairn\n\nlabel cairn\n  kernel /Image\n  initrd /initramfs.cpio\n  append {cmdline}\n"
    );
    let boot_files = vec![
        ("Image".to_string(), Source::File(inputs.kernel.clone())),
        ("initramfs.cpio".to_string(), Source::Bytes(Vec::new())), // filled at execution
        (
            "extlinux/extlinux.conf".to_string(),
            Source::Bytes(extlinux.into_bytes()),
        ),
    ];

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
        initramfs,
        system: inputs.system.clone(),
    })
}

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

/// The boot partition's FAT file system, made in `work`: the initramfs, then the staged files
/// with fixed times.
fn boot_fat(plan: &Plan, work: &Path) -> anyhow::Result<PathBuf> {
    // 1. initramfs
    let mut entries = Vec::with_capacity(plan.initramfs.len());
    for (entry, src) in &plan.initramfs {
        let mut e = entry.clone();
        if let (Entry::File { data, .. }, Some(src)) = (&mut e, src) {
            *data = read(src)?;
        }
        entries.push(e);
    }
    let mut initramfs = Vec::new();
    cpio::write(&mut initramfs, &entries)?;

    // 2. boot partition: staged files with fixed times, then a FAT made and filled in a file
    let stage = work.join("boot");
    for (path, src) in &plan.boot_files {
        let dest = stage.join(path);
        std::fs::create_dir_all(dest.parent().unwrap())?;
        let bytes = match src {
            _ if path == "initramfs.cpio" => initramfs.clone(),
            Source::File(p) => read(p)?,
            Source::Bytes(b) => b.clone(),
        };
        std::fs::write(&dest, bytes)?;
    }
    set_times(&stage)?;
    let boot = &plan.partitions[0];
    let fat = work.join("boot.fat");
    std::fs::File::create(&fat)?.set_len(boot.sectors * SECTOR)?;
    run(
        Command::new("mkfs.vfat")
            .args([
                "--invariant",
                "-i",
                FAT_VOLUME_ID,
                "-n",
                "CAIRN-BOOT",
                "-F",
                "16",
            ])
            .arg(&fat),
        "mkfs.vfat",
    )?;
    let mut names: Vec<_> = std::fs::read_dir(&stage)?
        .flatten()
        .map(|e| e.path())
        .collect();
    names.sort();
    let mut mcopy = Command::new("mcopy");
    mcopy
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-i")
        .arg(&fat)
        .args(["-s", "-m", "-p", "-Q"]);
    mcopy.args(&names).arg("::");
    run(&mut mcopy, "mcopy")?;
    Ok(fat)
}

fn execute_in(plan: &Plan, out: &Path, work: &Path) -> anyhow::Result<()> {
    let fat = boot_fat(plan, work)?;

    // 3. data partition: empty (init creates what it needs); no `mke2fs -d`, whose inodes
    //    would carry the staging files' ctimes and break reproducibility.
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

    // 4. the disk: MBR, then each partition at its offset (the file stays sparse elsewhere)
    let tmp = out.with_extension("img.tmp");
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut disk = std::fs::File::create(&tmp)?;
        disk.set_len(plan.total_bytes())?;
        disk.write_all(&mbr::encode(&plan.partitions, DISK_ID)?)?;
        let files = [Some(&fat), Some(&ext4), plan.system.as_ref()];
        for (p, file) in plan.partitions.iter().zip(files.into_iter().flatten()) {
            let bytes = read(file)?;
            anyhow::ensure!(
                bytes.len() as u64 <= p.sectors * SECTOR,
                "{} outgrew its partition",
                file.display()
            );
            disk.seek(SeekFrom::Start(p.start * SECTOR))?;
            disk.write_all(&bytes)?;
        }
        disk.sync_all()?;
    }
    std::fs::rename(&tmp, out)?;
    Ok(())
}

/// Writes the update bundle of `plan` into `out_dir` as `cairn-BOARD-VERSION.cupd`, signed
/// with `key`; returns its path. Its parts are what the image's partitions hold: `boot` (the
/// FAT with kernel, initramfs and extlinux.conf) and, where the image has one, `system` (the
/// layer). The same inputs give the same bytes.
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
        let fat = boot_fat(plan, &work)?;
        let tmp = out.with_extension("cupd.tmp");
        let mut parts: Vec<(&str, &dyn cairn_update::bundle::PartSource)> = vec![("boot", &fat)];
        if let Some(system) = &plan.system {
            parts.push(("system", system));
        }
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

/// Removes the artifacts of an earlier build of `img`, so none is left that does not match it.
pub fn remove_artifacts(img: &Path) -> anyhow::Result<()> {
    for p in [
        PathBuf::from(format!("{}.xz", img.display())),
        img.with_extension("bmap"),
        img.with_extension("img.sha256"),
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
