//! The data partition: grown to fill the card on first boot, then mounted read-write at /data.
//!
//! Growing needs no e2fsprogs on the device: the MBR entry is rewritten, the kernel is told with
//! the BLKPG ioctl, and ext4 grows online with EXT4_IOC_RESIZE_FS. Each step checks what is
//! already done, so a power cut between them is finished on the next boot, and a partition that
//! already fills the disk is left alone.

use cairn_bsp::board::Storage;
use cairn_bsp::mbr::{self, SECTOR};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Grow only when at least this much would be gained: avoids rewriting the MBR for slack.
const GROW_MIN_SECTORS: u64 = 2048;

// BLKGETSIZE64 is `_IOR(0x12, 114, size_t)`: its number encodes the size of a `size_t` (4 on
// armv7, 8 on aarch64), although the kernel always writes a u64. `ioctl_read!(…, u64)` would
// encode 8 everywhere, a number the armv7 kernel does not know (ENOTTY).
nix::ioctl_read_bad!(
    blk_getsize64,
    nix::request_code_read!(0x12, 114, std::mem::size_of::<libc::size_t>()),
    u64
);
nix::ioctl_write_ptr_bad!(blkpg, nix::request_code_none!(0x12, 105), BlkpgIoctlArg);
nix::ioctl_write_ptr!(ext4_resize_fs, b'f', 16, u64);

#[repr(C)]
struct BlkpgIoctlArg {
    op: libc::c_int,
    flags: libc::c_int,
    datalen: libc::c_int,
    data: *mut libc::c_void,
}

#[repr(C)]
struct BlkpgPartition {
    start: libc::c_longlong,
    length: libc::c_longlong,
    pno: libc::c_int,
    devname: [libc::c_char; 64],
    volname: [libc::c_char; 64],
}

const BLKPG_RESIZE_PARTITION: libc::c_int = 3;

/// Partition device name: `/dev/vda` + 2 → `/dev/vda2`, `/dev/mmcblk0` + 2 → `/dev/mmcblk0p2`.
pub fn partition_device(disk: &str, n: u32) -> String {
    if disk.ends_with(|c: char| c.is_ascii_digit()) {
        format!("{disk}p{n}")
    } else {
        format!("{disk}{n}")
    }
}

/// The new sector count for partition `n` if it is the last one and the disk has room after it;
/// None if it already fills the disk. The end is kept 4 KiB-aligned for ext4's block size.
pub fn grown_count(mbr: &[u8; 512], n: u32, disk_sectors: u64) -> anyhow::Result<Option<u64>> {
    let mbr::Partition {
        start,
        sectors: count,
        ..
    } = mbr::partition(mbr, n)?;
    for other in (1..=mbr::ENTRIES).filter(|&o| o != n) {
        if let Ok(p) = mbr::partition(mbr, other) {
            if p.start > start {
                return Ok(None); // not the last partition: nothing to grow into
            }
        }
    }
    let max = disk_sectors.min(u32::MAX as u64).saturating_sub(start) / 8 * 8;
    Ok((max >= count + GROW_MIN_SECTORS).then_some(max))
}

/// ext4 superblock facts: (block size in bytes, blocks count).
pub fn ext4_geometry(sb: &[u8; 1024]) -> anyhow::Result<(u64, u64)> {
    let magic = u16::from_le_bytes([sb[56], sb[57]]);
    anyhow::ensure!(
        magic == 0xEF53,
        "not an ext4 file system (magic {magic:#x})"
    );
    let lo = u32::from_le_bytes(sb[4..8].try_into().unwrap()) as u64;
    let hi = u32::from_le_bytes(sb[0x150..0x154].try_into().unwrap()) as u64;
    let incompat = u32::from_le_bytes(sb[0x60..0x64].try_into().unwrap());
    let blocks = if incompat & 0x80 != 0 {
        lo | (hi << 32)
    } else {
        lo
    };
    let log = u32::from_le_bytes(sb[24..28].try_into().unwrap());
    anyhow::ensure!(log <= 6, "implausible ext4 block size (log {log})");
    Ok((1024 << log, blocks))
}

/// Grows (if needed) and mounts the data partition at `mountpoint`; returns a line for the log.
pub fn prepare(storage: &Storage, mountpoint: &Path) -> anyhow::Result<String> {
    let disk = &storage.device;
    let part = partition_device(disk, storage.data_partition);
    let disk_file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk)
        .map_err(|e| anyhow::anyhow!("{disk}: {e}"))?;
    let mut disk_bytes = 0u64;
    // SAFETY: BLKGETSIZE64 writes one u64 to `disk_bytes`; the fd is open until the end.
    unsafe { blk_getsize64(disk_file.as_raw_fd(), &mut disk_bytes) }
        .map_err(|e| anyhow::anyhow!("{disk}: size: {e}"))?;
    let mut mbr = [0u8; 512];
    disk_file
        .read_exact_at(&mut mbr, 0)
        .map_err(|e| anyhow::anyhow!("{disk}: reading the MBR: {e}"))?;
    let start = mbr::partition(&mbr, storage.data_partition)
        .map_err(|e| anyhow::anyhow!("{disk}: {e}"))?
        .start;
    let mut grew = false;
    if let Some(count) = grown_count(&mbr, storage.data_partition, disk_bytes / SECTOR)? {
        mbr::set_sectors(&mut mbr, storage.data_partition, count)?;
        disk_file
            .write_all_at(&mbr, 0)
            .and_then(|()| disk_file.sync_all())
            .map_err(|e| anyhow::anyhow!("{disk}: writing the MBR: {e}"))?;
        let mut p = BlkpgPartition {
            start: (start * SECTOR) as i64,
            length: (count * SECTOR) as i64,
            pno: storage.data_partition as i32,
            devname: [0; 64],
            volname: [0; 64],
        };
        let arg = BlkpgIoctlArg {
            op: BLKPG_RESIZE_PARTITION,
            flags: 0,
            datalen: std::mem::size_of::<BlkpgPartition>() as i32,
            data: &mut p as *mut _ as *mut libc::c_void,
        };
        // SAFETY: `arg` and the partition it points to outlive the ioctl, which only reads them.
        unsafe { blkpg(disk_file.as_raw_fd(), &arg) }
            .map_err(|e| anyhow::anyhow!("{part}: BLKPG resize: {e}"))?;
        grew = true;
    }
    drop(disk_file);

    std::fs::create_dir_all(mountpoint)?;
    mount(
        Some(part.as_str()),
        mountpoint,
        Some("ext4"),
        MsFlags::MS_NOATIME | MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
        None::<&str>,
    )
    .map_err(|e| anyhow::anyhow!("mount {part} on {}: {e}", mountpoint.display()))?;

    // The file system may lag the partition (first boot, or a power cut after the MBR write).
    let part_file = File::open(&part).map_err(|e| anyhow::anyhow!("{part}: {e}"))?;
    let mut part_bytes = 0u64;
    // SAFETY: as for the disk above.
    unsafe { blk_getsize64(part_file.as_raw_fd(), &mut part_bytes) }
        .map_err(|e| anyhow::anyhow!("{part}: size: {e}"))?;
    let mut sb = [0u8; 1024];
    part_file
        .read_exact_at(&mut sb, 1024)
        .map_err(|e| anyhow::anyhow!("{part}: reading the superblock: {e}"))?;
    let (block, blocks) = ext4_geometry(&sb).map_err(|e| anyhow::anyhow!("{part}: {e}"))?;
    let want = part_bytes / block;
    if want > blocks {
        let dir = File::open(mountpoint)?;
        // SAFETY: EXT4_IOC_RESIZE_FS reads one u64 from `want`, which outlives the call.
        unsafe { ext4_resize_fs(dir.as_raw_fd(), &want) }
            .map_err(|e| anyhow::anyhow!("{part}: growing ext4 to {want} blocks: {e}"))?;
        grew = true;
    }
    let mib = part_bytes >> 20;
    Ok(if grew {
        format!(
            "data partition {part}: grew to {mib} MiB, mounted on {}",
            mountpoint.display()
        )
    } else {
        format!(
            "data partition {part}: {mib} MiB, mounted on {}",
            mountpoint.display()
        )
    })
}

/// Unmounts the data partition; if something still holds it, remounts it read-only instead,
/// which flushes the journal just the same.
pub fn unmount(mountpoint: &Path) -> anyhow::Result<()> {
    match umount2(mountpoint, MntFlags::empty()) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(_) => mount(
            None::<&str>,
            mountpoint,
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(|e| anyhow::anyhow!("remount {} read-only: {e}", mountpoint.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(parts: &[(u64, u64)]) -> [u8; 512] {
        let parts: Vec<mbr::Partition> = parts
            .iter()
            .map(|&(start, sectors)| mbr::Partition {
                start,
                sectors,
                kind: 0x83,
                bootable: false,
            })
            .collect();
        mbr::encode(&parts, 0).unwrap()
    }

    /// (first sector, sector count) of entry `n`.
    fn mbr_entry(m: &[u8; 512], n: u32) -> Result<(u64, u64), mbr::MbrError> {
        mbr::partition(m, n).map(|p| (p.start, p.sectors))
    }

    #[test]
    fn partition_names() {
        assert_eq!(partition_device("/dev/vda", 2), "/dev/vda2");
        assert_eq!(partition_device("/dev/mmcblk0", 2), "/dev/mmcblk0p2");
        assert_eq!(partition_device("/dev/sda", 1), "/dev/sda1");
    }

    #[test]
    fn grows_the_last_partition_to_the_end_of_the_disk_once() {
        let mut m = table(&[(2048, 65536), (67584, 131072)]);
        let disk = 2 * 1024 * 1024 * 2; // 2 GiB in sectors
        let count = grown_count(&m, 2, disk).unwrap().unwrap();
        assert_eq!(count, disk - 67584);
        mbr::set_sectors(&mut m, 2, count).unwrap();
        assert_eq!(mbr_entry(&m, 2).unwrap(), (67584, count));
        assert_eq!(
            grown_count(&m, 2, disk).unwrap(),
            None,
            "second boot grows again"
        );
    }

    #[test]
    fn does_not_grow_into_a_later_partition_or_for_slack() {
        let m = table(&[(2048, 65536), (67584, 1000), (100_000, 1000)]);
        assert_eq!(grown_count(&m, 2, 1 << 22).unwrap(), None);
        let m = table(&[(2048, 65536), (67584, 131072)]);
        assert_eq!(grown_count(&m, 2, 67584 + 131072 + 100).unwrap(), None);
    }

    #[test]
    fn bad_tables_are_clear_errors() {
        let mut m = table(&[(2048, 65536)]);
        assert_eq!(
            mbr_entry(&m, 2).unwrap_err().to_string(),
            "partition 2 is empty in the MBR"
        );
        assert!(mbr_entry(&m, 5)
            .unwrap_err()
            .to_string()
            .contains("not an MBR primary"));
        m[510] = 0;
        assert_eq!(
            mbr_entry(&m, 1).unwrap_err().to_string(),
            "no MBR signature"
        );
    }

    #[test]
    fn ext4_superblock_geometry() {
        let mut sb = [0u8; 1024];
        sb[56..58].copy_from_slice(&0xEF53u16.to_le_bytes());
        sb[24..28].copy_from_slice(&2u32.to_le_bytes());
        sb[4..8].copy_from_slice(&16384u32.to_le_bytes());
        assert_eq!(ext4_geometry(&sb).unwrap(), (4096, 16384));
        sb[56] = 0;
        assert!(ext4_geometry(&sb).is_err());
    }
}
